//! The connection manager (count, get, iterate, broadcast) and MaxConn.

mod support;

use support::{TestServer, config, echo, within};
use tokio::sync::mpsc;
use zinx::{Config, ConnId, Connection, Layout, Request, Router, Server};

#[tokio::test]
async fn count_get_iterate_and_broadcast() {
    let router = Router::new()
        // Message 1: reply with my connection ID.
        .route(1, |req: Request| async move {
            let id = req.conn().id().0;
            req.conn().send(1, id.to_be_bytes().to_vec()).await
        })
        // Message 2: broadcast the data to everybody, reply with the delivery count.
        .route(2, |req: Request| async move {
            let Some(manager) = req.conn().manager() else {
                return Ok(());
            };
            let delivery = manager.broadcast(3, req.data().clone());
            req.conn()
                .send(4, (delivery.delivered as u32).to_be_bytes().to_vec())
                .await
        });
    let server = TestServer::start(Server::builder(config()).router(router)).await;
    let manager = server.handle.manager();
    let mut clients = Vec::new();
    let mut ids = Vec::new();
    for _ in 0..4 {
        let mut c = server.connect(Layout::Tlv).await;
        let reply = c.roundtrip(1, "").await;
        ids.push(ConnId(u64::from_be_bytes(
            reply.data[..].try_into().unwrap(),
        )));
        clients.push(c);
    }
    assert_eq!(manager.len(), 4);
    for id in &ids {
        assert_eq!(manager.get(*id).map(|c| c.id()), Some(*id));
    }
    assert!(manager.get(ConnId(9999)).is_none());
    let mut listed: Vec<ConnId> = manager.connections().iter().map(Connection::id).collect();
    listed.sort();
    let mut expected = ids.clone();
    expected.sort();
    assert_eq!(listed, expected);

    clients[0].send(2, "news").await;
    // The sender gets the broadcast and the report (either order is fine:
    // the broadcast is queued before the report, so it comes first).
    let first = clients[0].recv().await;
    assert_eq!((first.id.0, &first.data[..]), (3, &b"news"[..]));
    let report = clients[0].recv().await;
    assert_eq!(
        (report.id.0, &report.data[..]),
        (4, &4u32.to_be_bytes()[..])
    );
    for c in &mut clients[1..] {
        let m = c.recv().await;
        assert_eq!((m.id.0, &m.data[..]), (3, &b"news"[..]));
    }

    // Broadcast from outside any handler too.
    let delivery = manager.broadcast(5, "from outside");
    assert_eq!((delivery.delivered, delivery.failed), (4, 0));
    for c in &mut clients {
        assert_eq!(c.recv().await.id.0, 5);
    }
    server.stop().await;
    assert!(manager.is_empty());
}

#[tokio::test]
async fn max_conn_closes_the_extra_connection_and_frees_slots() {
    let (gone_tx, mut gone_rx) = mpsc::channel::<ConnId>(8);
    let cfg = Config {
        max_conn: 2,
        ..config()
    };
    let server = TestServer::start(
        Server::builder(cfg)
            .router(Router::new().route(1, echo))
            .on_disconnect(move |conn: Connection| {
                let gone = gone_tx.clone();
                async move {
                    let _ = gone.send(conn.id()).await;
                }
            }),
    )
    .await;
    let mut a = server.connect(Layout::Tlv).await;
    let mut b = server.connect(Layout::Tlv).await;
    assert_eq!(&a.roundtrip(1, "a").await.data[..], b"a");
    assert_eq!(&b.roundtrip(1, "b").await.data[..], b"b");
    assert_eq!(server.handle.free_slots(), Some(0));

    // Connection 3 is accepted by the kernel, then closed by the server at once.
    let mut c = server.connect(Layout::Tlv).await;
    c.send(1, "c").await;
    c.expect_closed().await;
    // The earlier two are unaffected.
    assert_eq!(&a.roundtrip(1, "a2").await.data[..], b"a2");
    assert_eq!(&b.roundtrip(1, "b2").await.data[..], b"b2");
    assert_eq!(server.handle.manager().len(), 2);

    // A freed slot can be used again.
    drop(a);
    within("disconnect", gone_rx.recv()).await.unwrap();
    assert_eq!(server.handle.free_slots(), Some(1));
    let mut d = server.connect(Layout::Tlv).await;
    assert_eq!(&d.roundtrip(1, "d").await.data[..], b"d");
    assert_eq!(&b.roundtrip(1, "b3").await.data[..], b"b3");
    server.stop().await;
}
