//! The manager's notify API on a real server: users log in (bind), push to a user
//! from a handler and from outside, bindings end with the connection.

mod support;

use support::{TestServer, config, within};
use tokio::sync::mpsc;
use zinx::{Connection, Layout, Request, Router, Server, UserId};

fn chat_router() -> Router {
    Router::new()
        // 1: log in as the user named by the data.
        .route(1, |req: Request| async move {
            let user = String::from_utf8_lossy(req.data()).into_owned();
            let Some(manager) = req.conn().manager() else {
                return Ok(());
            };
            manager.bind_user(user, req.conn().id())?;
            req.conn().send(1, "ok").await
        })
        // 2: "user:text" sends text to that user; the sender gets "sent" or "offline".
        .route(2, |req: Request| async move {
            let Some(manager) = req.conn().manager() else {
                return Ok(());
            };
            let text = String::from_utf8_lossy(req.data()).into_owned();
            let (to, body) = text.split_once(':').unwrap_or((&text, ""));
            let status = match manager.try_send_to_user(&UserId::from(to), 3, body.to_owned()) {
                Ok(()) => "sent",
                Err(zinx::Error::NotConnected) => "offline",
                Err(_) => "failed",
            };
            req.conn().send(2, status).await
        })
}

#[tokio::test]
async fn push_to_users_by_id_across_connections() {
    let (gone_tx, mut gone_rx) = mpsc::channel::<()>(4);
    let server = TestServer::start(
        Server::builder(config())
            .router(chat_router())
            .on_disconnect(move |_conn: Connection| {
                let gone = gone_tx.clone();
                async move {
                    let _ = gone.send(()).await;
                }
            }),
    )
    .await;
    let manager = server.handle.manager();
    let mut alice = server.connect(Layout::Tlv).await;
    let mut bob = server.connect(Layout::Tlv).await;
    assert_eq!(&alice.roundtrip(1, "alice").await.data[..], b"ok");
    assert_eq!(&bob.roundtrip(1, "bob").await.data[..], b"ok");

    assert_eq!(&alice.roundtrip(2, "bob:hello bob").await.data[..], b"sent");
    let m = bob.recv().await;
    assert_eq!((m.id.0, &m.data[..]), (3, &b"hello bob"[..]));

    // From outside any handler, waiting variant.
    manager
        .send_to_user(&UserId::from("alice"), 3, "from the server")
        .await
        .unwrap();
    assert_eq!(&alice.recv().await.data[..], b"from the server");

    // Bob leaves: his binding goes with his connection.
    drop(bob);
    within("bob's disconnect", gone_rx.recv()).await.unwrap();
    assert_eq!(
        &alice.roundtrip(2, "bob:are you there").await.data[..],
        b"offline"
    );
    assert!(manager.user_conn(&UserId::from("bob")).is_none());
    let d = manager.broadcast(4, "to all");
    assert_eq!((d.delivered, d.failed, d.missing), (1, 0, 0));
    server.stop().await;
}
