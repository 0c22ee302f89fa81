//! The worker pool in every mode: per-connection order, parallelism across
//! connections, and backpressure instead of drops or unbounded memory.

mod support;

use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

use support::{RawClient, TestServer, config, frame, within};
use tokio::io::AsyncWriteExt;
use tokio::sync::{Semaphore, mpsc};
use zinx::{Config, Layout, Request, Router, Server, WorkerMode};

fn modes() -> Vec<(&'static str, Config)> {
    let with = |mode, size| Config {
        worker_mode: mode,
        worker_pool_size: size,
        ..config()
    };
    vec![
        ("Task (default)", config()),
        ("Hash", with(WorkerMode::Hash, 4)),
        ("Bind", with(WorkerMode::Bind, 4)),
        ("DynamicBind", with(WorkerMode::DynamicBind, 2)),
        ("no pool", with(WorkerMode::Hash, 0)),
    ]
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn messages_of_a_connection_are_handled_in_arrival_order_in_every_mode() {
    for (name, cfg) in modes() {
        let router = Router::new().route(1, |req: Request| async move {
            // Uneven handler durations, so any reordering would show.
            let n = u32::from_be_bytes(req.data()[..4].try_into().unwrap());
            for _ in 0..(n % 5) {
                tokio::task::yield_now().await;
            }
            req.conn().send(1, req.data()).await
        });
        let server = TestServer::start(Server::builder(cfg).router(router)).await;
        let mut tasks = Vec::new();
        for _ in 0..6 {
            let mut client = RawClient::connect(server.addr, Layout::Tlv).await;
            tasks.push(tokio::spawn(async move {
                let mut wire = Vec::new();
                for i in 0..300u32 {
                    wire.extend(frame(Layout::Tlv, 1, &i.to_be_bytes()));
                }
                client.write_raw(&wire).await;
                for i in 0..300u32 {
                    let m = client.recv().await;
                    assert_eq!(&m.data[..], &i.to_be_bytes(), "out of order");
                }
            }));
        }
        for t in tasks {
            within(name, t).await.unwrap();
        }
        server.stop().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn different_connections_run_in_parallel_in_every_mode() {
    for (name, cfg) in modes() {
        // Message 1 waits for a permit that only message 2, sent by another
        // connection, adds. Serialised handling would deadlock here.
        let gate = Arc::new(Semaphore::new(0));
        let (g1, g2) = (gate.clone(), gate.clone());
        let router = Router::new()
            .route(1, move |req: Request| {
                let gate = g1.clone();
                async move {
                    let _permit = gate.acquire().await.unwrap();
                    req.conn().send(1, "released").await
                }
            })
            .route(2, move |req: Request| {
                let gate = g2.clone();
                async move {
                    gate.add_permits(1);
                    req.conn().send(2, "opened").await
                }
            });
        let server = TestServer::start(Server::builder(cfg).router(router)).await;
        let mut a = server.connect(Layout::Tlv).await;
        let mut b = server.connect(Layout::Tlv).await;
        a.send(1, "").await;
        b.send(2, "").await;
        assert_eq!(b.recv().await.id.0, 2, "{name}");
        assert_eq!(a.recv().await.id.0, 1, "{name}");
        server.stop().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_blocked_handler_stops_the_reader_and_drops_nothing() {
    // 128 frames of 1 MiB: 128 MiB, far more than the kernel's socket buffers hold.
    const FRAMES: u32 = 128;
    const PAYLOAD: usize = 1 << 20;
    let gate = Arc::new(Semaphore::new(0));
    let handled = Arc::new(AtomicU32::new(0));
    let (entered_tx, mut entered_rx) = mpsc::channel::<()>(1);
    let (g, h) = (gate.clone(), handled.clone());
    let router = Router::new()
        .route(1, move |req: Request| {
            let (gate, handled, entered) = (g.clone(), h.clone(), entered_tx.clone());
            async move {
                let n = u32::from_be_bytes(req.data()[..4].try_into().unwrap());
                if n == 0 {
                    let _ = entered.send(()).await;
                    gate.acquire().await.unwrap().forget();
                }
                // Count only in order: a skipped or reordered message breaks the chain.
                let _ = handled.compare_exchange(n, n + 1, Ordering::SeqCst, Ordering::SeqCst);
            }
        })
        .route(2, move |req: Request| {
            let handled = handled.clone();
            async move {
                let n = handled.load(Ordering::SeqCst);
                req.conn().send(2, n.to_be_bytes().to_vec()).await
            }
        });
    let cfg = Config {
        worker_pool_size: 1,
        max_packet_size: 0,
        ..config()
    };
    let server = TestServer::start(Server::builder(cfg).router(router)).await;
    let mut client = server.connect(Layout::Tlv).await;
    let mut writer = client.writer;
    let mut write_task = tokio::spawn(async move {
        let mut data = vec![0u8; PAYLOAD];
        for i in 0..FRAMES {
            data[..4].copy_from_slice(&i.to_be_bytes());
            writer
                .write_all(&frame(Layout::Tlv, 1, &data))
                .await
                .unwrap();
        }
        writer.write_all(&frame(Layout::Tlv, 2, b"")).await.unwrap();
        writer
    });
    within("first handler", entered_rx.recv()).await.unwrap();
    // With the handler blocked, the reader must stop taking frames off the socket,
    // so the peer cannot finish writing. (If it could, the server would be
    // buffering over 100 MiB.) This window can only hide a failure, never invent one.
    let stalled = tokio::time::timeout(Duration::from_secs(1), &mut write_task).await;
    assert!(
        stalled.is_err(),
        "peer wrote 128 MiB while the handler was blocked"
    );
    gate.add_permits(1);
    client.writer = within("peer write", write_task).await.unwrap();
    let reply = client.recv().await;
    assert_eq!(
        &reply.data[..],
        &FRAMES.to_be_bytes(),
        "every frame handled, in order"
    );
    server.stop().await;
}

/// Under the default mode, handlers of different connections that await run
/// at the same time: 20 connections whose handlers all wait at one barrier
/// for 20 get through it (with a shared worker, two connections hashed to the
/// same worker would wait for each other forever, and the barrier with them).
/// Under Hash (10 workers, Go Zinx's default) they cannot.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn awaiting_handlers_of_different_connections_overlap_under_the_default_mode() {
    async fn through_barrier(cfg: Config) -> bool {
        let barrier = Arc::new(tokio::sync::Barrier::new(20));
        // Lets stuck handlers go once the test has its answer, so the server stops.
        let release = tokio_util::sync::CancellationToken::new();
        let gate = release.clone();
        let router = Router::new().route(1, move |req: Request| {
            let (barrier, gate) = (barrier.clone(), gate.clone());
            async move {
                tokio::select! {
                    _ = barrier.wait() => {}
                    () = gate.cancelled() => {}
                }
                req.conn().send(1, req.data()).await
            }
        });
        let server = TestServer::start(Server::builder(cfg).router(router)).await;
        let mut clients = Vec::new();
        for _ in 0..20 {
            let mut client = RawClient::connect(server.addr, Layout::Tlv).await;
            client.send(1, "x").await;
            clients.push(client);
        }
        let replies = async {
            for client in &mut clients {
                client.recv().await;
            }
        };
        let passed = tokio::time::timeout(Duration::from_secs(2), replies)
            .await
            .is_ok();
        release.cancel();
        drop(clients);
        server.stop().await;
        passed
    }
    assert!(through_barrier(config()).await, "the default mode overlaps");
    let hash = Config {
        worker_mode: WorkerMode::Hash,
        ..config()
    };
    assert!(
        !through_barrier(hash).await,
        "Hash serialises shared workers"
    );
}
