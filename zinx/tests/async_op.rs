//! `Connection::async_op`: blocking work off the runtime, results delivered back to
//! the connection's handler context in the order the ops started, without blocking
//! the connection's other messages; shutdown waits for running ops, and the ops in
//! flight per connection are bounded.

mod support;

use std::sync::{Arc, Mutex};

use support::{TestServer, config};
use tokio::sync::oneshot;
use zinx::{Config, Layout, Request, Router, Server, WorkerMode};

type Gates = Arc<Mutex<Vec<Option<oneshot::Receiver<()>>>>>;

/// Message 1 with data `[i]` starts a blocking op that waits for gate `i`, then
/// replies `[i]` as message 3 from its callback; message 2 is answered at once.
fn router(gates: Gates) -> Router {
    Router::new()
        .route(1, move |req: Request| {
            let gates = gates.clone();
            async move {
                let i = req.data()[0];
                let gate = gates.lock().unwrap()[usize::from(i)].take();
                req.conn().async_op(
                    move || {
                        // Real blocking work: parks this blocking-pool thread.
                        if let Some(gate) = gate {
                            let _ = gate.blocking_recv();
                        }
                        i
                    },
                    |conn, i| async move {
                        let _ = conn.send(3, vec![i]).await;
                    },
                )
            }
        })
        .route(2, |req: Request| async move {
            req.conn().send(2, "quick").await
        })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn results_come_back_in_start_order_without_blocking_other_messages() {
    for (mode, pool) in [
        (WorkerMode::Hash, 2u32),
        (WorkerMode::Hash, 0),
        (WorkerMode::Bind, 2),
        (WorkerMode::DynamicBind, 1),
    ] {
        let mut releases = Vec::new();
        let gates: Gates = Arc::default();
        for _ in 0..3 {
            let (tx, rx) = oneshot::channel();
            releases.push(Some(tx));
            gates.lock().unwrap().push(Some(rx));
        }
        let cfg = Config {
            worker_mode: mode,
            worker_pool_size: pool,
            ..config()
        };
        let server = TestServer::start(Server::builder(cfg).router(router(gates))).await;
        let mut client = server.connect(Layout::Tlv).await;
        for i in 0..3u8 {
            client.send(1, [i]).await;
        }
        // All three ops are blocked; the connection still answers.
        let quick = client.roundtrip(2, "").await;
        assert_eq!(
            (quick.id.0, &quick.data[..]),
            (2, &b"quick"[..]),
            "{mode:?} {pool}"
        );
        // Finish them in reverse order: results still arrive 0, 1, 2.
        for i in (0..3).rev() {
            releases[i].take().unwrap().send(()).unwrap();
        }
        for i in 0..3u8 {
            let m = client.recv().await;
            assert_eq!((m.id.0, &m.data[..]), (3, &[i][..]), "{mode:?} {pool}");
        }
        server.stop().await;
    }
}

#[tokio::test]
async fn shutdown_waits_for_running_ops_and_drops_late_results() {
    let gates: Gates = Arc::default();
    let (release, gate) = oneshot::channel();
    gates.lock().unwrap().push(Some(gate));
    let server = TestServer::start(Server::builder(config()).router(router(gates))).await;
    let mut client = server.connect(Layout::Tlv).await;
    client.send(1, [0]).await;
    assert_eq!(client.roundtrip(2, "").await.id.0, 2);
    let handle = server.handle.clone();
    let stopping = tokio::spawn(server.stop());
    // The op is still running: the connection closes without its result.
    assert!(client.recv_until_closed().await.is_empty());
    release.send(()).unwrap();
    support::within("shutdown", stopping).await.unwrap();
    assert_eq!(handle.task_count(), 0);
}

#[tokio::test]
async fn ops_in_flight_per_connection_are_bounded() {
    // MaxWorkerTaskLen 2: with two ops blocked, a third is refused with QueueFull
    // (reported back as message 9 with data [1]); message 1 starts a gated op.
    let gates: Gates = Arc::default();
    let mut releases = Vec::new();
    for _ in 0..2 {
        let (tx, rx) = oneshot::channel();
        releases.push(tx);
        gates.lock().unwrap().push(Some(rx));
    }
    let router = router(gates).route(9, |req: Request| async move {
        let outcome = req.conn().async_op(|| 0u8, |_conn, _v| async {});
        let full = outcome.is_err_and(|e| e.is_queue_full());
        req.conn().send(9, vec![u8::from(full)]).await
    });
    let cfg = Config {
        max_worker_task_len: 2,
        ..config()
    };
    let server = TestServer::start(Server::builder(cfg).router(router)).await;
    let mut client = server.connect(Layout::Tlv).await;
    client.send(1, [0]).await;
    client.send(1, [1]).await;
    let m = client.roundtrip(9, "").await;
    assert_eq!((m.id.0, &m.data[..]), (9, &[1][..]), "third op refused");
    for release in releases {
        release.send(()).unwrap();
    }
    // Both gated ops deliver, and then there is room again.
    for i in 0..2u8 {
        let m = client.recv().await;
        assert_eq!((m.id.0, &m.data[..]), (3, &[i][..]));
    }
    let m = client.roundtrip(9, "").await;
    assert_eq!(&m.data[..], &[0], "room again once delivered");
    server.stop().await;
}
