//! The `Client` against our server: request/response, routing of pushed messages,
//! hooks, reconnect with on_connect firing again, timeouts, heartbeats; the
//! `client` example against an echo server and a corrupting one; and a client
//! flooding a server with small queues.

mod support;

use std::path::PathBuf;
use std::process::Command;
use std::time::Duration;

use bytes::Bytes;
use support::{TestServer, config, echo, within};
use tokio::sync::mpsc;
use zinx::{Client, Connection, Heartbeat, Layout, Reconnect, Request, Router, Server};

const T: Duration = Duration::from_secs(10);

#[tokio::test]
async fn request_response_in_both_layouts() {
    for layout in [Layout::Tlv, Layout::Ltv] {
        let server = TestServer::start(
            Server::builder(config())
                .router(Router::new().route(1, echo))
                .layout(layout),
        )
        .await;
        let client = Client::builder(server.addr.to_string())
            .layout(layout)
            .connect()
            .await
            .unwrap();
        for size in [0usize, 1, 100, 4000] {
            let data = Bytes::from(vec![size as u8; size]);
            let reply = client.request(1, data.clone(), 1, T).await.unwrap();
            assert_eq!(reply.data, data, "{layout:?} {size}");
        }
        client.close().await;
        server.stop().await;
    }
}

#[tokio::test]
async fn pushed_messages_are_routed_and_hooks_run() {
    let (pushed_tx, mut pushed_rx) = mpsc::channel::<String>(8);
    let (hook_tx, mut hook_rx) = mpsc::channel::<&'static str>(8);
    let server =
        TestServer::start(Server::builder(config()).router(Router::new().route(1, echo))).await;
    let (c, d) = (hook_tx.clone(), hook_tx);
    let client = Client::builder(server.addr.to_string())
        .router(Router::new().route(50, move |req: Request| {
            let pushed = pushed_tx.clone();
            async move {
                let text = String::from_utf8_lossy(req.data()).into_owned();
                let _ = pushed.send(text).await;
            }
        }))
        .on_connect(move |conn: Connection| {
            let c = c.clone();
            async move {
                conn.insert_property(7u32);
                let _ = c.send("connect").await;
            }
        })
        .on_disconnect(move |conn: Connection| {
            let d = d.clone();
            async move {
                assert_eq!(conn.property::<u32>(), Some(7));
                let _ = d.send("disconnect").await;
            }
        })
        .connect()
        .await
        .unwrap();
    assert_eq!(within("on_connect", hook_rx.recv()).await, Some("connect"));
    // The server pushes to every connection; the client routes it to its handler.
    let delivery = server.handle.manager().broadcast(50, "news");
    assert_eq!(delivery.delivered, 1);
    assert_eq!(within("push", pushed_rx.recv()).await.unwrap(), "news");
    // A request's reply is taken by the request, not routed.
    let reply = client.request(1, "mine", 1, T).await.unwrap();
    assert_eq!(&reply.data[..], b"mine");
    client.close().await;
    assert_eq!(
        within("on_disconnect", hook_rx.recv()).await,
        Some("disconnect")
    );
    assert!(client.send(1, "after close").await.unwrap_err().is_closed());
    server.stop().await;
}

#[tokio::test]
async fn request_times_out_without_a_reply_and_the_late_reply_is_routed() {
    let (late_tx, mut late_rx) = mpsc::channel::<()>(1);
    let server = TestServer::start(Server::builder(config()).router(Router::new().route(
        1,
        |req: Request| async move {
            // Answer with another ID first, then (after a second message) the awaited one.
            if req.data().as_ref() == b"second" {
                req.conn().send(2, "late").await?;
            }
            Ok::<(), zinx::Error>(())
        },
    )))
    .await;
    let client = Client::builder(server.addr.to_string())
        .router(Router::new().route(2, move |_req: Request| {
            let late = late_tx.clone();
            async move {
                let _ = late.send(()).await;
            }
        }))
        .connect()
        .await
        .unwrap();
    let err = client
        .request(1, "first", 2, Duration::from_millis(50))
        .await
        .unwrap_err();
    assert!(err.is_timeout(), "{err}");
    // The timed-out waiter does not swallow later messages: they are routed.
    client.send(1, "second").await.unwrap();
    within("late reply routed", late_rx.recv()).await.unwrap();
    client.close().await;
    server.stop().await;
}

#[tokio::test]
async fn reconnects_after_the_server_kicks_it_and_on_connect_fires_again() {
    let server =
        TestServer::start(Server::builder(config()).router(Router::new().route(1, echo))).await;
    let (tx, mut connects) = mpsc::channel::<()>(8);
    let client = Client::builder(server.addr.to_string())
        .reconnect(Reconnect::new(
            Duration::from_millis(5),
            Duration::from_millis(50),
        ))
        .on_connect(move |_conn: Connection| {
            let tx = tx.clone();
            async move {
                let _ = tx.send(()).await;
            }
        })
        .connect()
        .await
        .unwrap();
    within("first connect", connects.recv()).await.unwrap();
    support::reconnect_rounds(&client, &server.handle.manager(), &mut connects, 3).await;
    client.close().await;
    server.stop().await;
}

#[tokio::test]
async fn reconnects_to_a_restarted_server() {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let (stop1, rx1) = tokio::sync::oneshot::channel::<()>();
    let first = tokio::spawn(
        Server::builder(config())
            .router(Router::new().route(1, echo))
            .build()
            .run(listener, async move {
                let _ = rx1.await;
            }),
    );
    let client = Client::builder(addr.to_string())
        .reconnect(Reconnect::new(
            Duration::from_millis(5),
            Duration::from_millis(40),
        ))
        .connect()
        .await
        .unwrap();
    assert_eq!(
        &client.request(1, "one", 1, T).await.unwrap().data[..],
        b"one"
    );
    let old = client.connection().await.unwrap();
    stop1.send(()).unwrap();
    within("first server stop", first).await.unwrap().unwrap();
    // A request racing the close would fail with Closed; wait for the client to see it.
    within("client sees the close", old.closed()).await;
    // The client backs off while nothing listens, then finds the new server.
    let listener = tokio::net::TcpListener::bind(addr).await.unwrap();
    let (stop2, rx2) = tokio::sync::oneshot::channel::<()>();
    let second = tokio::spawn(
        Server::builder(config())
            .router(Router::new().route(1, echo))
            .build()
            .run(listener, async move {
                let _ = rx2.await;
            }),
    );
    let reply = within("request after restart", client.request(1, "two", 1, T))
        .await
        .unwrap();
    assert_eq!(&reply.data[..], b"two");
    client.close().await;
    stop2.send(()).unwrap();
    within("second server stop", second).await.unwrap().unwrap();
}

#[tokio::test]
async fn without_reconnect_the_client_stops_when_kicked() {
    let server = TestServer::start(Server::builder(config())).await;
    let client = Client::builder(server.addr.to_string())
        .connect()
        .await
        .unwrap();
    let conn = client.connection().await.unwrap();
    for c in server.handle.manager().connections() {
        c.close();
    }
    within("close seen", conn.closed()).await;
    assert!(
        within("connection()", client.connection())
            .await
            .unwrap_err()
            .is_closed()
    );
    server.stop().await;
}

#[tokio::test]
async fn client_and_server_heartbeats_over_real_sockets() {
    // The client sends heartbeats; the server routes them to a counting handler.
    let (beats_tx, mut beats) = mpsc::channel::<()>(64);
    let server = TestServer::start(
        Server::builder(config())
            .router(Router::new().route(99999, move |_req: Request| {
                let tx = beats_tx.clone();
                async move {
                    let _ = tx.try_send(());
                }
            }))
            .heartbeat(
                Heartbeat::new(Duration::from_millis(20)).max_silence(Duration::from_secs(30)),
            ),
    )
    .await;
    let client = Client::builder(server.addr.to_string())
        .heartbeat(Heartbeat::new(Duration::from_millis(20)).max_silence(Duration::from_secs(30)))
        .connect()
        .await
        .unwrap();
    for _ in 0..3 {
        within("client heartbeat at the server", beats.recv())
            .await
            .unwrap();
    }
    client.close().await;

    // A silent raw peer is closed by the server's heartbeat.
    let strict = TestServer::start(Server::builder(config()).heartbeat(
        Heartbeat::new(Duration::from_millis(20)).max_silence(Duration::from_millis(100)),
    ))
    .await;
    let mut silent = strict.connect(Layout::Tlv).await;
    let heard = silent.recv_until_closed().await;
    assert!(
        heard.iter().all(|m| m.id.0 == 99999),
        "only heartbeats before the close"
    );
    strict.stop().await;
    server.stop().await;
}

fn example(name: &str) -> PathBuf {
    let exe = std::env::current_exe().unwrap();
    exe.parent()
        .and_then(|d| d.parent())
        .unwrap()
        .join("examples")
        .join(name)
}

#[tokio::test]
async fn client_example_checks_every_reply() {
    let good =
        TestServer::start(Server::builder(config()).router(Router::new().route(1, echo))).await;
    let addr = good.addr.to_string();
    let out = within(
        "client example",
        tokio::task::spawn_blocking(move || {
            Command::new(example("client"))
                .args(["--addr", &addr, "--count", "200"])
                .output()
                .unwrap()
        }),
    )
    .await
    .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{stdout}");
    assert!(stdout.contains("200 ok, 0 mismatched"), "{stdout}");

    // An "echo" server that flips a byte in long replies: the client must notice.
    let bad = TestServer::start(Server::builder(config()).router(Router::new().route(
        1,
        |req: Request| async move {
            let mut data = req.data().to_vec();
            if data.len() > 1000 {
                data[500] ^= 1;
            }
            req.conn().send(1, data).await
        },
    )))
    .await;
    let addr = bad.addr.to_string();
    let out = within(
        "client example",
        tokio::task::spawn_blocking(move || {
            Command::new(example("client"))
                .args(["--addr", &addr, "--count", "50", "--format", "tlv"])
                .output()
                .unwrap()
        }),
    )
    .await
    .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(!out.status.success(), "{stdout}");
    assert!(stdout.contains("mismatch"), "{stdout}");
    good.stop().await;
    bad.stop().await;
}

#[tokio::test]
async fn a_client_flooding_a_server_with_small_queues_gets_every_reply() {
    // Both ends have 4-message send queues, and 80 MB go each way. The client
    // queues 20,000 requests of 4 KiB (waiting for room) while the server answers
    // each with 4 KiB from a synchronous route: its replies overshoot its queue
    // and its reader waits for its writer. The client's reader keeps taking
    // replies while the client's own send queue is full (its handler sends
    // nothing), so neither end waits on the other for long.
    const COUNT: usize = 20_000;
    let small = zinx::Config {
        max_msg_chan_len: 4,
        ..config()
    };
    let server = TestServer::start(Server::builder(small.clone()).router(
        Router::new().route_sync(1, |req: &Request| {
            req.conn().try_send(2, Bytes::from(vec![7u8; 4096]))
        }),
    ))
    .await;
    let (done_tx, mut done_rx) = mpsc::channel::<()>(1);
    let replies = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let counted = replies.clone();
    let client = Client::builder(server.addr.to_string())
        .config(small)
        .router(Router::new().route_sync(2, move |_req: &Request| {
            if counted.fetch_add(1, std::sync::atomic::Ordering::SeqCst) + 1 == COUNT {
                let _ = done_tx.try_send(());
            }
        }))
        .connect()
        .await
        .unwrap();
    let conn = client.connection().await.unwrap();
    let request = Bytes::from(vec![1u8; 4096]);
    within("every request queued", async {
        for _ in 0..COUNT {
            conn.send(1, request.clone()).await.unwrap();
        }
    })
    .await;
    within("every reply", done_rx.recv()).await;
    assert_eq!(replies.load(std::sync::atomic::Ordering::SeqCst), COUNT);
    client.close().await;
    server.stop().await;
}

/// Messages no route takes come out of `Client::messages`, in order, while
/// routed ones still go to their route; `request_matching` claims the first
/// message its predicate accepts and leaves the others to the stream.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_reads_unrouted_messages_as_a_stream_and_matches_replies_by_predicate() {
    use std::sync::Arc;
    use std::sync::atomic::{AtomicU32, Ordering};

    use futures_util::StreamExt;
    use zinx::Message;

    // The server answers 1 with three messages: 7 "a", 8 "b", then 9 "seq=<data>".
    let server = TestServer::start(Server::builder(config()).router(Router::new().route(
        1,
        |req: Request| async move {
            req.conn().send(7, "a").await?;
            req.conn().send(8, "b").await?;
            let seq = String::from_utf8_lossy(req.data()).into_owned();
            req.conn().send(9, format!("seq={seq}")).await
        },
    )))
    .await;
    let routed = Arc::new(AtomicU32::new(0));
    let counted = routed.clone();
    let client = Client::builder(server.addr.to_string())
        .router(Router::new().route(8, move |_req: Request| {
            counted.fetch_add(1, Ordering::SeqCst);
            async {}
        }))
        .connect()
        .await
        .unwrap();
    let mut stream = client.messages();
    let reply = client
        .request_matching(
            1,
            "42",
            |m: &Message| m.id.0 == 9 && m.data.ends_with(b"42"),
            Duration::from_secs(10),
        )
        .await
        .unwrap();
    assert_eq!(&reply.data[..], b"seq=42");
    // 7 was not routed and not claimed: the stream has it; 8 went to its route.
    let first = within("the stream", stream.next()).await.unwrap();
    assert_eq!((first.id.0, &first.data[..]), (7, &b"a"[..]));
    client.send(1, "43").await.unwrap();
    let next: Vec<Message> = within("two more", (&mut stream).take(2).collect()).await;
    let ids: Vec<u32> = next.iter().map(|m| m.id.0).collect();
    assert_eq!(
        ids,
        [7, 9],
        "unclaimed replies stay on the stream, in order"
    );
    assert_eq!(routed.load(Ordering::SeqCst), 2);
    client.close().await;
    assert!(within("the end", stream.recv()).await.is_none());
    server.stop().await;
}
