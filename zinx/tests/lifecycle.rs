//! A server's and a connection's life: graceful shutdown (queued writes flushed,
//! on_disconnect for every connection, handlers waiting on their connection woken,
//! nothing left behind after many cycles), a handler's panic closing only its
//! connection, and a connection as one task whose writer starts with the first
//! message.

mod support;

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use bytes::Bytes;
use support::{TestServer, config, echo, within};
use tokio::sync::{Semaphore, mpsc};
use zinx::{Config, Connection, Layout, Request, Router, Server, WorkerMode};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_flushes_queued_writes_and_runs_on_disconnect_for_all() {
    const CONNS: usize = 8;
    const QUEUED: usize = 50;
    let disconnects = Arc::new(AtomicUsize::new(0));
    let (ready_tx, mut ready_rx) = mpsc::channel::<()>(CONNS);
    let d = disconnects.clone();
    // Each connection gets 50 messages queued while its peer is not reading yet.
    let router = Router::new().route(1, move |req: Request| {
        let ready = ready_tx.clone();
        async move {
            for i in 0..QUEUED as u32 {
                req.conn().send(1, Bytes::from(vec![i as u8; 1000])).await?;
            }
            let _ = ready.send(()).await;
            Ok::<(), zinx::Error>(())
        }
    });
    let server = TestServer::start(Server::builder(config()).router(router).on_disconnect(
        move |_conn: Connection| {
            let d = d.clone();
            async move {
                d.fetch_add(1, Ordering::SeqCst);
            }
        },
    ))
    .await;
    let mut clients = Vec::new();
    for _ in 0..CONNS {
        let mut c = server.connect(Layout::Tlv).await;
        c.send(1, "").await;
        clients.push(c);
    }
    for _ in 0..CONNS {
        within("handlers", ready_rx.recv()).await.unwrap();
    }
    let handle = server.handle.clone();
    server.stop().await;
    assert_eq!(disconnects.load(Ordering::SeqCst), CONNS);
    assert_eq!(handle.task_count(), 0, "run returned with tasks left");
    assert!(handle.manager().is_empty());
    for mut c in clients {
        let msgs = c.recv_until_closed().await;
        assert_eq!(
            msgs.len(),
            QUEUED,
            "every queued message reaches the peer before EOF"
        );
        for (i, m) in msgs.iter().enumerate() {
            assert_eq!(m.data[0], i as u8);
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn many_connect_disconnect_cycles_leave_nothing_behind() {
    for (mode, pool) in [
        (WorkerMode::Hash, 3u32),
        (WorkerMode::Bind, 3),
        (WorkerMode::DynamicBind, 2),
        (WorkerMode::Hash, 0),
    ] {
        let (gone_tx, mut gone_rx) = mpsc::channel::<()>(64);
        let cfg = Config {
            max_conn: 16,
            worker_mode: mode,
            worker_pool_size: pool,
            ..config()
        };
        let server = TestServer::start(
            Server::builder(cfg)
                .router(Router::new().route(1, echo))
                .on_disconnect(move |_conn: Connection| {
                    let gone = gone_tx.clone();
                    async move {
                        let _ = gone.send(()).await;
                    }
                }),
        )
        .await;
        for round in 0..20 {
            let mut batch = Vec::new();
            for _ in 0..10 {
                let mut c = server.connect(Layout::Tlv).await;
                assert_eq!(&c.roundtrip(1, "x").await.data[..], b"x");
                batch.push(c);
            }
            // Half close themselves, half are closed by the peer vanishing mid-stream.
            for (i, mut c) in batch.into_iter().enumerate() {
                if i % 2 == 0 {
                    c.send(1, "unanswered").await;
                }
                drop(c);
            }
            for _ in 0..10 {
                within("on_disconnect", gone_rx.recv()).await.unwrap();
            }
            let handle = &server.handle;
            assert!(handle.manager().is_empty(), "{mode:?} round {round}");
            assert_eq!(handle.free_slots(), Some(16), "{mode:?} round {round}");
        }
        // The connection tasks end right after on_disconnect; wait for them.
        let handle = server.handle.clone();
        within("tasks to end", async {
            while handle.task_count() > 0 {
                tokio::task::yield_now().await;
            }
        })
        .await;
        assert_eq!(
            handle.task_count(),
            0,
            "{mode:?}: no connection task remains"
        );
        server.stop().await;
        assert_eq!(handle.task_count(), 0);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_panicking_handler_closes_only_its_connection() {
    for pool in [1u32, 0] {
        let cfg = Config {
            worker_pool_size: pool,
            ..config()
        };
        let router = Router::new()
            .route(1, echo)
            .route(66, |req: Request| async move {
                if req.data().is_empty() {
                    panic!("handler bug");
                }
            });
        let server = TestServer::start(Server::builder(cfg).router(router)).await;
        // With one worker, the victim and the bystander share it.
        let mut bystander = server.connect(Layout::Tlv).await;
        let mut victim = server.connect(Layout::Tlv).await;
        victim.send(66, "").await;
        victim.expect_closed().await;
        assert_eq!(&bystander.roundtrip(1, "alive").await.data[..], b"alive");
        let mut newcomer = server.connect(Layout::Tlv).await;
        assert_eq!(&newcomer.roundtrip(1, "new").await.data[..], b"new");
        server.stop().await;
    }
}

#[tokio::test]
async fn shutdown_wakes_handlers_waiting_on_their_connection() {
    // A handler waiting for something that never comes can watch its connection:
    // shutdown closes it, the handler returns, and `run` can finish.
    let gate = Arc::new(Semaphore::new(0));
    let g = gate.clone();
    let router = Router::new().route(1, move |req: Request| {
        let gate = g.clone();
        async move {
            tokio::select! {
                _ = gate.acquire() => {}
                () = req.conn().closed() => {}
            }
        }
    });
    let server = TestServer::start(Server::builder(config()).router(router)).await;
    let mut c = server.connect(Layout::Tlv).await;
    c.send(1, "").await;
    c.send(1, "").await;
    server.stop().await;
    assert!(c.recv_until_closed().await.is_empty());
}

/// A connection is one task: its reader and its writer (made with the first
/// message queued) are polled by it. One that never sent anything still gets a
/// clean close (EOF).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_connection_is_one_task_and_its_writer_starts_with_the_first_message() {
    let (connected_tx, mut connected_rx) = mpsc::channel::<Connection>(2);
    let server = TestServer::start(
        Server::builder(config())
            .router(Router::new().route(1, echo))
            .on_connect(move |conn: Connection| {
                let tx = connected_tx.clone();
                async move {
                    let _ = tx.send(conn).await;
                }
            }),
    )
    .await;
    let handle = server.handle.clone();

    let mut talker = server.connect(Layout::Tlv).await;
    within("on_connect", connected_rx.recv()).await.unwrap();
    assert_eq!(handle.task_count(), 1, "an idle connection runs one task");

    // The first reply makes the writer, in the same task.
    let reply = talker.roundtrip(1, "hello").await;
    assert_eq!(&reply.data[..], b"hello");
    assert_eq!(handle.task_count(), 1, "replying adds no task");

    // Closing a connection that never sent: its writer is made only to shut the
    // socket down, and the peer sees EOF.
    let silent = server.connect(Layout::Tlv).await;
    let conn = within("on_connect", connected_rx.recv()).await.unwrap();
    assert_eq!(handle.task_count(), 2);
    conn.close();
    assert!(within("EOF", silent.read_eof()).await);
    server.stop().await;
    assert_eq!(handle.task_count(), 0);
}

/// The writer runs while `on_connect` is still running: a hook that sends a
/// greeting and then waits for the peer to have it (here: for the test, which
/// signals once it read the greeting) is not stuck behind its own task.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_writer_runs_while_on_connect_waits() {
    let greeted = Arc::new(tokio::sync::Notify::new());
    let hook_greeted = greeted.clone();
    let server = TestServer::start(
        Server::builder(config())
            .router(Router::new().route(1, echo))
            .on_connect(move |conn: Connection| {
                let greeted = hook_greeted.clone();
                async move {
                    conn.send(9, "hello").await.unwrap();
                    greeted.notified().await;
                }
            }),
    )
    .await;
    let mut client = server.connect(Layout::Tlv).await;
    let greeting = within("the greeting, sent from on_connect", client.recv()).await;
    assert_eq!((greeting.id.0, &greeting.data[..]), (9, &b"hello"[..]));
    greeted.notify_one();
    let reply = within("the echo after on_connect", client.roundtrip(1, "after")).await;
    assert_eq!(&reply.data[..], b"after");
    server.stop().await;
}

/// The first message may come from a thread outside the runtime: it wakes the
/// connection's task, which makes the writer and writes it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_first_message_from_a_plain_thread_starts_the_writer() {
    let (connected_tx, mut connected_rx) = mpsc::channel::<Connection>(1);
    let server = TestServer::start(Server::builder(config()).on_connect(
        move |conn: Connection| {
            let tx = connected_tx.clone();
            async move {
                let _ = tx.send(conn).await;
            }
        },
    ))
    .await;
    let mut client = server.connect(Layout::Tlv).await;
    let conn = within("on_connect", connected_rx.recv()).await.unwrap();
    let sent = std::thread::spawn(move || conn.try_send(7, "from a thread"))
        .join()
        .unwrap();
    assert!(sent.is_ok(), "{sent:?}");
    let msg = client.recv().await;
    assert_eq!((msg.id.0, &msg.data[..]), (7, &b"from a thread"[..]));
    drop(client);
    server.stop().await;
}
