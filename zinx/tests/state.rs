//! Application state and the manager, as handlers and hooks reach them:
//! `Router::with_state`, `Request::state`, `Request::manager`, `Connection::state`.

mod support;

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use support::{TestServer, config};
use zinx::{Layout, Request, Router, Server};

/// A counter shared by every connection of the server.
struct Hits(AtomicU64);

/// A second state type, read by a hook.
struct Greeting(&'static str);

#[tokio::test]
async fn handlers_and_hooks_share_the_routers_state_and_reach_the_manager() {
    let router = Router::new()
        .with_state(Hits(AtomicU64::new(0)))
        .with_state(Greeting("welcome"))
        .route_sync(1, |req: &Request| {
            let n = req.state::<Hits>().0.fetch_add(1, Ordering::SeqCst) + 1;
            // The manager is always there: no Option.
            let live = req.manager().len();
            req.conn().try_send(1, format!("{n} of {live}"))
        })
        .route_sync(2, |req: &Request| {
            let missing = req.try_state::<String>().is_none();
            req.conn()
                .try_send(2, if missing { "none" } else { "some" })
        });
    let server = TestServer::start(Server::builder(config()).router(router).on_connect(
        |conn| async move {
            let greeting = conn.state::<Greeting>().map(|g| g.0).unwrap_or("?");
            let _ = conn.send(9, greeting).await;
        },
    ))
    .await;
    let mut a = server.connect(Layout::Tlv).await;
    assert_eq!(&a.recv().await.data[..], b"welcome");
    let mut b = server.connect(Layout::Tlv).await;
    assert_eq!(&b.recv().await.data[..], b"welcome");
    assert_eq!(&a.roundtrip(1, "").await.data[..], b"1 of 2");
    assert_eq!(&b.roundtrip(1, "").await.data[..], b"2 of 2");
    assert_eq!(&a.roundtrip(2, "").await.data[..], b"none");
    drop((a, b));
    server.stop().await;
}

#[test]
fn a_detached_connection_has_an_empty_manager_and_no_state() {
    let (conn, _outbox) = zinx::Connection::detached(4);
    let req = Request::new(conn, zinx::Message::new(1, ""));
    assert!(req.manager().is_empty());
    assert!(req.try_state::<Arc<Hits>>().is_none());
}
