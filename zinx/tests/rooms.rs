//! Rooms: connections join and leave named groups; a send to a room reaches its
//! members (but the one excepted), encoded once; a closed connection leaves
//! every room it was in.

mod support;

use std::time::Duration;

use support::{RawClient, TestServer, config, within};
use zinx::manager::RoomId;
use zinx::{Layout, Request, Router, Server};

/// Message 1 joins the room named by its data; 2 says its data to the room
/// (the sender excepted) and replies with how many got it; 3 leaves the room.
fn chat() -> Router {
    Router::new()
        .route_sync(1, |req: &Request| {
            let room = RoomId::from(String::from_utf8_lossy(req.data()).into_owned());
            req.manager().join(room, req.conn().id())?;
            req.conn().try_send(1, "joined")
        })
        .route_sync(2, |req: &Request| {
            let manager = req.manager();
            let mut told = 0;
            for room in manager.rooms_of(req.conn().id()) {
                let delivery =
                    manager.try_send_to_room(&room, Some(req.conn().id()), 20, req.data());
                told += delivery.delivered;
            }
            req.conn().try_send(2, told.to_string())
        })
        .route_sync(3, |req: &Request| {
            let room = RoomId::from(String::from_utf8_lossy(req.data()).into_owned());
            let left = req.manager().leave(&room, req.conn().id());
            req.conn().try_send(3, left.to_string())
        })
}

async fn join(client: &mut RawClient, room: &str) {
    assert_eq!(&client.roundtrip(1, room).await.data[..], b"joined");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_room_reaches_its_members_but_the_sender_and_forgets_closed_ones() {
    let server = TestServer::start(Server::builder(config()).router(chat())).await;
    let manager = server.handle.manager();
    let mut alice = server.connect(Layout::Tlv).await;
    let mut bob = server.connect(Layout::Tlv).await;
    let mut carol = server.connect(Layout::Tlv).await;
    let mut dave = server.connect(Layout::Tlv).await;
    for c in [&mut alice, &mut bob, &mut carol] {
        join(c, "lobby").await;
    }
    join(&mut dave, "elsewhere").await;
    assert_eq!(manager.members(&RoomId::from("lobby")).len(), 3);

    // Alice speaks: Bob and Carol hear it, Alice only gets her count, Dave nothing.
    assert_eq!(&alice.roundtrip(2, "hi all").await.data[..], b"2");
    for c in [&mut bob, &mut carol] {
        let m = c.recv().await;
        assert_eq!((m.id.0, &m.data[..]), (20, &b"hi all"[..]));
    }

    // Carol leaves; Bob closes: the room has only Alice, whose message reaches no one.
    assert_eq!(&carol.roundtrip(3, "lobby").await.data[..], b"true");
    assert_eq!(&carol.roundtrip(3, "lobby").await.data[..], b"false");
    let bob_id = manager
        .members(&RoomId::from("lobby"))
        .into_iter()
        .find(|&id| {
            manager
                .get(id)
                .is_some_and(|c| c.peer_addr() == bob.writer.local_addr().unwrap())
        })
        .unwrap();
    drop(bob);
    within("bob to leave the room", async {
        while manager.members(&RoomId::from("lobby")).contains(&bob_id) {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    })
    .await;
    assert!(manager.rooms_of(bob_id).is_empty());
    assert_eq!(&alice.roundtrip(2, "anyone?").await.data[..], b"0");
    // A room whose last member left is gone.
    assert_eq!(&alice.roundtrip(3, "lobby").await.data[..], b"true");
    assert!(manager.members(&RoomId::from("lobby")).is_empty());
    assert!(
        manager
            .join("x", zinx::ConnId(999))
            .unwrap_err()
            .to_string()
            .contains("no live")
    );
    drop((alice, carol, dave));
    server.stop().await;
}

/// A broadcast of a short message is encoded once and copied into each queue;
/// every receiver decodes the same frame, in both layouts.
#[tokio::test]
async fn broadcasts_and_room_sends_arrive_intact_in_both_layouts() {
    for layout in [Layout::Tlv, Layout::Ltv] {
        let server =
            TestServer::start(Server::builder(config()).router(chat()).layout(layout)).await;
        let mut a = server.connect(layout).await;
        let mut b = server.connect(layout).await;
        join(&mut a, "r").await;
        join(&mut b, "r").await;
        let manager = server.handle.manager();
        let long = vec![7u8; 2000];
        assert!(manager.broadcast(5, "short").is_complete());
        assert!(manager.broadcast(6, &long[..]).is_complete());
        let delivery = manager
            .send_to_room(&RoomId::from("r"), None, 7, "room")
            .await;
        assert_eq!(delivery.delivered, 2);
        for c in [&mut a, &mut b] {
            let m = c.recv().await;
            assert_eq!((m.id.0, &m.data[..]), (5, &b"short"[..]));
            let m = c.recv().await;
            assert_eq!((m.id.0, m.data.len()), (6, 2000));
            let m = c.recv().await;
            assert_eq!((m.id.0, &m.data[..]), (7, &b"room"[..]));
        }
        drop((a, b));
        server.stop().await;
    }
}
