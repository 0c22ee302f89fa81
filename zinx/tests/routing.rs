//! Routing by message ID to async fns and Zinx-style routers, the fallback,
//! duplicate registration, and middleware, groups and interceptors on a real
//! server.

mod support;

use std::sync::{Arc, Mutex};

use support::{TestServer, config};
use zinx::{Layout, Request, Router, Server, ZinxRouter};

/// Zinx's classic router: replies with the steps it ran.
struct Steps {
    log: Arc<Mutex<Vec<String>>>,
}

impl ZinxRouter for Steps {
    async fn pre_handle(&self, req: &Request) {
        self.log
            .lock()
            .unwrap()
            .push(format!("pre {}", req.msg_id()));
    }
    async fn handle(&self, req: &Request) {
        self.log
            .lock()
            .unwrap()
            .push(format!("handle {}", req.msg_id()));
        let _ = req.conn().send(200, "handled").await;
    }
    async fn post_handle(&self, req: &Request) {
        self.log
            .lock()
            .unwrap()
            .push(format!("post {}", req.msg_id()));
        let _ = req.conn().send(201, "post").await;
    }
}

async fn upper(req: Request) -> Result<(), zinx::Error> {
    let up = req.data().to_ascii_uppercase();
    req.conn().send(req.msg_id(), up).await
}

#[tokio::test]
async fn routes_async_fns_and_zinx_routers_by_id() {
    let log = Arc::new(Mutex::new(Vec::new()));
    let router = Router::new()
        .route(1, upper)
        .add_router(2, Steps { log: log.clone() });
    let server = TestServer::start(Server::builder(config()).router(router)).await;
    let mut client = server.connect(Layout::Tlv).await;

    let m = client.roundtrip(1, "abc").await;
    assert_eq!((m.id.0, &m.data[..]), (1, &b"ABC"[..]));

    client.send(2, "x").await;
    assert_eq!(client.recv().await.id.0, 200);
    assert_eq!(client.recv().await.id.0, 201);
    assert_eq!(*log.lock().unwrap(), ["pre 2", "handle 2", "post 2"]);
    server.stop().await;
}

#[tokio::test]
async fn unknown_id_goes_to_default_fallback_and_connection_stays_open() {
    let server =
        TestServer::start(Server::builder(config()).router(Router::new().route(1, upper))).await;
    let mut client = server.connect(Layout::Tlv).await;
    client.send(12345, "nobody home").await;
    // Still open and still in order: the next message is answered.
    assert_eq!(&client.roundtrip(1, "still").await.data[..], b"STILL");
    assert_eq!(server.handle.manager().len(), 1);
    server.stop().await;
}

#[tokio::test]
async fn custom_fallback_sees_unknown_ids() {
    let router = Router::new()
        .route(1, upper)
        .fallback(|req: Request| async move {
            let text = format!("unknown {}", req.msg_id());
            req.conn().send(0, text).await
        });
    let server = TestServer::start(Server::builder(config()).router(router)).await;
    let mut client = server.connect(Layout::Tlv).await;
    let m = client.roundtrip(99, "?").await;
    assert_eq!((m.id.0, &m.data[..]), (0, &b"unknown 99"[..]));
    server.stop().await;
}

#[test]
fn registering_an_id_twice_panics_naming_it() {
    let result = std::panic::catch_unwind(|| Router::new().route(42, upper).route(42, upper));
    let panic = result.unwrap_err();
    let text = panic.downcast_ref::<String>().cloned().unwrap_or_default();
    assert!(text.contains("42"), "{text}");
}

#[tokio::test]
async fn middleware_groups_and_interceptors_on_a_real_server() {
    use zinx::Next;

    #[derive(Clone)]
    struct Authed(String);

    let router = Router::new()
        // Interceptor: a message whose data starts with '!' is dropped before routing.
        .intercept(|req: Request, next: Next| async move {
            if !req.data().starts_with(b"!") {
                next.run(req).await;
            }
        })
        .route(1, upper)
        .group(100..=199, |g| {
            // The group requires "user:" data and passes the user down the chain.
            g.middleware(|mut req: Request, next: Next| async move {
                if let Some(user) = req.data().strip_prefix(b"user:") {
                    let user = String::from_utf8_lossy(user).into_owned();
                    req.extensions_mut().insert(Authed(user));
                    next.run(req).await;
                } else {
                    let _ = req.conn().send(403, "denied").await;
                }
            })
            .route(100, |req: Request| async move {
                let user = req.extensions().get::<Authed>().map(|a| a.0.clone());
                req.conn().send(100, user.unwrap_or_default()).await
            })
        });
    let server = TestServer::start(Server::builder(config()).router(router)).await;
    let mut client = server.connect(Layout::Tlv).await;
    client.send(1, "!dropped").await;
    client.send(100, "nobody").await;
    let m = client.roundtrip(100, "user:bob").await;
    assert_eq!((m.id.0, &m.data[..]), (403, &b"denied"[..]));
    let m = client.recv().await;
    assert_eq!((m.id.0, &m.data[..]), (100, &b"bob"[..]));
    let m = client.roundtrip(1, "ok").await;
    assert_eq!(
        &m.data[..],
        b"OK",
        "the intercepted message produced no reply"
    );
    server.stop().await;
}
