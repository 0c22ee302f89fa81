//! on_connect / on_disconnect run exactly once per connection, hold no framework
//! lock, and on_disconnect can still read properties; a panicking hook harms
//! nothing else.

mod support;

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use support::{TestServer, config, echo, within};
use tokio::sync::mpsc;
use zinx::{ConnId, Connection, Layout, Request, Router, Server};

#[derive(Clone, Debug)]
struct Greeting(String);

#[tokio::test]
async fn hooks_run_once_per_connection_and_see_properties() {
    let events: Arc<Mutex<HashMap<ConnId, Vec<String>>>> = Arc::default();
    let (gone_tx, mut gone_rx) = mpsc::channel::<ConnId>(64);
    let on_connect_events = events.clone();
    let on_disconnect_events = events.clone();
    let router = Router::new().route(1, |req: Request| async move {
        let g = req
            .conn()
            .property::<Greeting>()
            .map(|g| g.0)
            .unwrap_or_default();
        req.conn().send(1, g).await
    });
    let server = TestServer::start(
        Server::builder(config())
            .router(router)
            .on_connect(move |conn: Connection| {
                let events = on_connect_events.clone();
                async move {
                    // Using the manager here must not deadlock: no framework lock is held.
                    let live = conn.manager().map(|m| m.len()).unwrap_or(0);
                    conn.insert_property(Greeting(format!("hello {}", conn.id())));
                    // on_connect may send: the writer is already running.
                    let _ = conn.send(100, "welcome").await;
                    events
                        .lock()
                        .unwrap()
                        .entry(conn.id())
                        .or_default()
                        .push(format!("connect live>={}", live >= 1));
                }
            })
            .on_disconnect(move |conn: Connection| {
                let events = on_disconnect_events.clone();
                let gone = gone_tx.clone();
                async move {
                    let greeting = conn.property::<Greeting>().map(|g| g.0);
                    let in_manager = conn.manager().is_some_and(|m| m.get(conn.id()).is_some());
                    events
                        .lock()
                        .unwrap()
                        .entry(conn.id())
                        .or_default()
                        .push(format!("disconnect {greeting:?} registered={in_manager}"));
                    let _ = gone.send(conn.id()).await;
                }
            }),
    )
    .await;

    let mut clients = Vec::new();
    for _ in 0..5 {
        let mut c = server.connect(Layout::Tlv).await;
        assert_eq!(&c.recv().await.data[..], b"welcome");
        let reply = c.roundtrip(1, "").await;
        assert!(reply.data.starts_with(b"hello "));
        clients.push(c);
    }
    drop(clients);
    let mut gone = Vec::new();
    for _ in 0..5 {
        gone.push(within("on_disconnect", gone_rx.recv()).await.unwrap());
    }
    server.stop().await;
    assert!(gone_rx.try_recv().is_err(), "no hook runs twice");

    let events = events.lock().unwrap();
    assert_eq!(events.len(), 5);
    for id in gone {
        let expected_greeting = format!("Some(\"hello {id}\")");
        assert_eq!(
            events[&id],
            [
                "connect live>=true".to_owned(),
                format!("disconnect {expected_greeting} registered=false")
            ]
        );
    }
}

#[tokio::test]
async fn a_panicking_hook_harms_nothing_else() {
    let (gone_tx, mut gone_rx) = mpsc::channel::<()>(4);
    let first = Arc::new(std::sync::atomic::AtomicBool::new(true));
    let server = TestServer::start(
        Server::builder(config())
            .router(Router::new().route(1, echo))
            .on_connect(move |_conn: Connection| {
                let first = first.swap(false, std::sync::atomic::Ordering::SeqCst);
                async move {
                    assert!(!first, "on_connect bug on the first connection");
                }
            })
            .on_disconnect(move |_conn: Connection| {
                let gone = gone_tx.clone();
                async move {
                    let _ = gone.send(()).await;
                    panic!("on_disconnect bug");
                }
            }),
    )
    .await;
    // The first connection's on_connect panics: that connection is closed...
    let mut first = server.connect(Layout::Tlv).await;
    first.expect_closed().await;
    within("on_disconnect", gone_rx.recv()).await.unwrap();
    // ...and the server goes on; a panicking on_disconnect harms nothing either.
    let mut c = server.connect(Layout::Tlv).await;
    assert_eq!(&c.roundtrip(1, "ok").await.data[..], b"ok");
    drop(c);
    within("on_disconnect", gone_rx.recv()).await.unwrap();
    let mut c = server.connect(Layout::Tlv).await;
    assert_eq!(&c.roundtrip(1, "again").await.data[..], b"again");
    server.stop().await;
}
