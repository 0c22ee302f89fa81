//! Several servers in one process, sharing a router or not.

mod support;

use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering};

use support::{TestServer, config};
use zinx::{Layout, Request, Router, Server};

#[tokio::test]
async fn servers_on_several_ports_share_or_own_routers() {
    let hits = Arc::new(AtomicU32::new(0));
    let counted = hits.clone();
    let shared = Arc::new(Router::new().route(1, move |req: Request| {
        let n = counted.fetch_add(1, Ordering::SeqCst) + 1;
        async move { req.conn().send(1, format!("shared {n}")).await }
    }));
    let own = Router::new().route(
        1,
        |req: Request| async move { req.conn().send(1, "own").await },
    );

    let tlv = TestServer::start(Server::builder(config()).router(shared.clone())).await;
    let ltv = TestServer::start(Server::builder(config()).router(shared).layout(Layout::Ltv)).await;
    let other = TestServer::start(Server::builder(config()).router(own)).await;
    assert_ne!(tlv.addr, ltv.addr);

    let mut a = tlv.connect(Layout::Tlv).await;
    let mut b = ltv.connect(Layout::Ltv).await;
    let mut c = other.connect(Layout::Tlv).await;
    assert_eq!(&a.roundtrip(1, "").await.data[..], b"shared 1");
    assert_eq!(&b.roundtrip(1, "").await.data[..], b"shared 2");
    assert_eq!(&c.roundtrip(1, "").await.data[..], b"own");
    assert_eq!(&a.roundtrip(1, "").await.data[..], b"shared 3");
    // Each server has its own connections.
    assert_eq!(tlv.handle.manager().len(), 1);
    assert_eq!(other.handle.manager().len(), 1);
    // Stopping one leaves the others serving.
    tlv.stop().await;
    assert!(a.recv_until_closed().await.is_empty());
    assert_eq!(&b.roundtrip(1, "").await.data[..], b"shared 4");
    assert_eq!(hits.load(Ordering::SeqCst), 4);
    ltv.stop().await;
    other.stop().await;
}
