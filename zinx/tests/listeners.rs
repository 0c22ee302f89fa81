//! One server, several listeners: one connection manager (one ID space), one
//! `MaxConn` across all of them, one shutdown that closes them all.

mod support;

use support::{RawClient, config, echo, within};
use tokio::net::TcpListener;
use tokio::sync::oneshot;
use zinx::transport::Listener;
use zinx::{Config, Layout, Router, Server};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_tcp_listeners_share_one_manager_one_max_conn_and_one_shutdown() {
    let server = Server::builder(Config {
        max_conn: 2,
        ..config()
    })
    .router(Router::new().route(1, echo))
    .build();
    let handle = server.handle();
    let a = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let b = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let (addr_a, addr_b) = (a.local_addr().unwrap(), b.local_addr().unwrap());
    let (stop, stopped) = oneshot::channel::<()>();
    let running = tokio::spawn(server.run_all(
        [Listener::from(a), Listener::from(b)],
        async move {
            let _ = stopped.await;
        },
    ));

    let mut on_a = RawClient::connect(addr_a, Layout::Tlv).await;
    let mut on_b = RawClient::connect(addr_b, Layout::Tlv).await;
    assert_eq!(&on_a.roundtrip(1, "a").await.data[..], b"a");
    assert_eq!(&on_b.roundtrip(1, "b").await.data[..], b"b");
    // One ID space: the two connections got IDs 1 and 2, in one manager.
    let mut ids: Vec<u64> = handle
        .manager()
        .connections()
        .iter()
        .map(|c| c.id().0)
        .collect();
    ids.sort_unstable();
    assert_eq!(ids, [1, 2]);
    // One MaxConn: both slots are taken, so a third is refused on either port.
    assert_eq!(handle.free_slots(), Some(0));
    for addr in [addr_a, addr_b] {
        assert!(RawClient::connect(addr, Layout::Tlv).await.read_eof().await);
    }
    // One shutdown closes the connections of both listeners.
    let _ = stop.send(());
    assert!(on_a.recv_until_closed().await.is_empty());
    assert!(on_b.recv_until_closed().await.is_empty());
    within("the server to stop", running)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(handle.task_count(), 0);
}
