//! The `Connection` handle on a real server: IDs, addresses and properties, send
//! and try_send (order, a full queue, a slow reader), close from a handler, close
//! callbacks, and replies to a peer that half-closed.

mod support;

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use bytes::Bytes;
use support::{RawClient, TestServer, config, within};
use tokio::sync::mpsc;
use zinx::{Config, Error, Layout, Request, Router, Server};

#[derive(Clone, Debug, PartialEq)]
struct Nick(String);

#[tokio::test]
async fn ids_addresses_and_typed_properties() {
    let router = Router::new()
        .route(1, |req: Request| async move {
            let nick = String::from_utf8_lossy(req.data()).into_owned();
            req.conn().insert_property(Nick(nick));
        })
        .route(2, |req: Request| async move {
            let conn = req.conn();
            let text = format!(
                "{} {} {} {:?}",
                conn.id(),
                conn.peer_addr(),
                conn.local_addr(),
                conn.property::<Nick>().map(|n| n.0)
            );
            conn.send(2, text).await
        });
    let server = TestServer::start(Server::builder(config()).router(router)).await;
    let mut a = server.connect(Layout::Tlv).await;
    let mut b = server.connect(Layout::Tlv).await;
    a.send(1, "alice").await;
    let reply_a = String::from_utf8(a.roundtrip(2, "").await.data.to_vec()).unwrap();
    let reply_b = String::from_utf8(b.roundtrip(2, "").await.data.to_vec()).unwrap();
    let a_local = a.writer.local_addr().unwrap();
    assert!(reply_a.contains(&a_local.to_string()), "{reply_a}");
    assert!(reply_a.contains(&server.addr.to_string()), "{reply_a}");
    assert!(reply_a.ends_with("Some(\"alice\")"), "{reply_a}");
    assert!(
        reply_b.ends_with("None"),
        "properties are per connection: {reply_b}"
    );
    let id_a = reply_a.split(' ').next().unwrap();
    let id_b = reply_b.split(' ').next().unwrap();
    assert_ne!(id_a, id_b);
    server.stop().await;
}

#[tokio::test]
async fn replies_keep_order_across_send_and_try_send() {
    let router = Router::new().route(1, |req: Request| async move {
        // Five replies per request, alternating the two send paths.
        for i in 0..5u8 {
            let mut data = req.data().to_vec();
            data.push(i);
            if i % 2 == 0 {
                req.conn().send(1, data).await?;
            } else {
                req.conn().try_send(1, data)?;
            }
        }
        Ok::<(), Error>(())
    });
    let server = TestServer::start(Server::builder(config()).router(router)).await;
    let mut client = server.connect(Layout::Tlv).await;
    for n in 0..50u8 {
        client.send(1, [n]).await;
    }
    for n in 0..50u8 {
        for i in 0..5u8 {
            assert_eq!(&client.recv().await.data[..], &[n, i]);
        }
    }
    server.stop().await;
}

#[tokio::test]
async fn try_send_reports_queue_full_and_loses_nothing_it_accepted() {
    // The peer does not read while the handler floods it: the socket fills, the
    // writer blocks, the 8-slot queue fills, and try_send fails fast.
    let (report_tx, mut report_rx) = mpsc::channel::<(usize, bool)>(1);
    let router = Router::new().route(1, move |req: Request| {
        let report = report_tx.clone();
        async move {
            let payload = Bytes::from(vec![7u8; 4000]);
            let mut accepted = 0usize;
            let mut saw_full = false;
            for _ in 0..200_000 {
                match req.conn().try_send(1, payload.clone()) {
                    Ok(()) => accepted += 1,
                    Err(e) => {
                        saw_full = e.is_queue_full();
                        break;
                    }
                }
            }
            let _ = report.send((accepted, saw_full)).await;
        }
    });
    let cfg = Config {
        max_msg_chan_len: 8,
        ..config()
    };
    let server = TestServer::start(Server::builder(cfg).router(router)).await;
    let mut client = server.connect(Layout::Tlv).await;
    client.send(1, "flood").await;
    let (accepted, saw_full) = within("flood report", report_rx.recv()).await.unwrap();
    assert!(
        saw_full,
        "try_send must fail with QueueFull, not another error"
    );
    for _ in 0..accepted {
        assert_eq!(client.recv().await.data.len(), 4000);
    }
    server.stop().await;
}

#[tokio::test]
async fn send_waits_for_a_slow_reader_and_delivers_everything() {
    let router = Router::new().route(1, |req: Request| async move {
        let payload = Bytes::from(vec![1u8; 4096]);
        for _ in 0..2000 {
            req.conn().send(1, payload.clone()).await?;
        }
        req.conn().send(2, "done").await
    });
    let cfg = Config {
        max_msg_chan_len: 4,
        ..config()
    };
    let server = TestServer::start(Server::builder(cfg).router(router)).await;
    let mut client = server.connect(Layout::Tlv).await;
    client.send(1, "go").await;
    for _ in 0..2000 {
        assert_eq!(client.recv().await.id.0, 1);
    }
    assert_eq!(client.recv().await.id.0, 2);
    server.stop().await;
}

#[tokio::test]
async fn a_sync_route_replies_to_every_pipelined_request_through_a_small_queue() {
    // Each request is answered with 4 KiB by `try_send` into a 4-message queue:
    // a read brings hundreds of requests, so only the reader waiting for room
    // (SendQueueFull = "wait", the default) keeps the replies from being refused.
    let router = Router::new().route_sync(1, |req: &Request| {
        let mut reply = vec![0u8; 4096];
        reply[..4].copy_from_slice(&req.data()[..4]);
        req.conn().try_send(1, reply)
    });
    let cfg = Config {
        max_msg_chan_len: 4,
        ..config()
    };
    let server = TestServer::start(Server::builder(cfg).router(router)).await;
    let mut client = server.connect(Layout::Tlv).await;
    let requests: Vec<u8> = (0..2000u32)
        .flat_map(|seq| support::frame(Layout::Tlv, 1, &seq.to_be_bytes()))
        .collect();
    client.write_raw(&requests).await;
    for seq in 0..2000u32 {
        let reply = client.recv().await;
        assert_eq!(
            (reply.data.len(), &reply.data[..4]),
            (4096, &seq.to_be_bytes()[..])
        );
    }
    server.stop().await;
}

#[tokio::test]
async fn handler_can_close_after_replying_and_later_sends_fail() {
    let (tx, mut rx) = mpsc::channel::<bool>(1);
    let router = Router::new().route(1, move |req: Request| {
        let tx = tx.clone();
        async move {
            req.conn().send(1, "bye").await.unwrap();
            req.conn().close();
            let after = req.conn().send(1, "too late").await;
            let _ = tx.send(after.is_err_and(|e| e.is_closed())).await;
        }
    });
    let server = TestServer::start(Server::builder(config()).router(router)).await;
    let mut client = server.connect(Layout::Tlv).await;
    client.send(1, "").await;
    let msgs = client.recv_until_closed().await;
    assert_eq!(msgs.len(), 1, "the reply queued before close is flushed");
    assert_eq!(&msgs[0].data[..], b"bye");
    assert!(within("handler", rx.recv()).await.unwrap());
    server.stop().await;
}

#[tokio::test]
async fn close_callbacks_run_once_after_close() {
    let calls = Arc::new(AtomicUsize::new(0));
    let (done_tx, mut done_rx) = mpsc::channel::<()>(4);
    let counted = calls.clone();
    let router = Router::new().route(1, move |req: Request| {
        let counted = counted.clone();
        let done = done_tx.clone();
        async move {
            req.conn().add_close_callback(move || {
                counted.fetch_add(1, Ordering::SeqCst);
                let _ = done.try_send(());
            });
        }
    });
    let server = TestServer::start(Server::builder(config()).router(router)).await;
    let mut client = server.connect(Layout::Tlv).await;
    // Two requests, two callbacks. Closing right after sending is safe: on the
    // peer's EOF the server finishes handling what it read before closing.
    client.send(1, "").await;
    client.send(1, "").await;
    drop(client);
    within("close callback", done_rx.recv()).await.unwrap();
    within("second close callback", done_rx.recv())
        .await
        .unwrap();
    assert_eq!(calls.load(Ordering::SeqCst), 2);
    server.stop().await;
    assert_eq!(calls.load(Ordering::SeqCst), 2);
}

#[tokio::test]
async fn peer_half_close_still_gets_every_reply() {
    // The peer sends its requests, shuts down its write side, then reads: the
    // replies for everything it sent arrive before the server closes.
    let router = Router::new().route(1, |req: Request| async move {
        tokio::task::yield_now().await;
        req.conn().send(1, req.data()).await
    });
    let server = TestServer::start(Server::builder(config()).router(router)).await;
    let mut client = RawClient::connect(server.addr, Layout::Tlv).await;
    for i in 0..100u32 {
        client.send(1, i.to_be_bytes()).await;
    }
    use tokio::io::AsyncWriteExt;
    within("shutdown", client.writer.shutdown()).await.unwrap();
    let msgs = client.recv_until_closed().await;
    assert_eq!(msgs.len(), 100);
    for (i, m) in msgs.iter().enumerate() {
        assert_eq!(&m.data[..], &(i as u32).to_be_bytes());
    }
    server.stop().await;
}
