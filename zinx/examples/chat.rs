//! A chat server on 127.0.0.1:9010: application state, rooms, a broadcast to
//! a room, and a notice when someone leaves.
//!
//! ```text
//! cargo run --example chat          # or: cargo run --example chat -- PORT
//! cargo run -p zinx-cli -- --addr 127.0.0.1:9010 repl
//!   1 alice        (your name)
//!   2 lobby        (join a room)
//!   3 hello all    (say it to the room; the others get message 10)
//! ```

use std::sync::atomic::{AtomicU64, Ordering};

use zinx::manager::RoomId;
use zinx::{Config, Request, Router, Server};

/// Shared by every connection: what the server has relayed.
struct Stats {
    said: AtomicU64,
}

/// A connection's name, a typed property.
#[derive(Clone)]
struct Name(String);

/// The room a connection is in (one at a time here).
#[derive(Clone)]
struct InRoom(RoomId);

fn text(req: &Request) -> String {
    String::from_utf8_lossy(req.data()).trim().to_owned()
}

fn name(conn: &zinx::Connection) -> String {
    conn.property::<Name>()
        .map_or_else(|| format!("guest-{}", conn.id()), |n| n.0)
}

#[tokio::main]
async fn main() -> Result<(), zinx::Error> {
    let router = Router::new()
        .with_state(Stats {
            said: AtomicU64::new(0),
        })
        // 1: set your name.
        .route_sync(1, |req: &Request| {
            req.conn().insert_property(Name(text(req)));
            req.conn().try_send(1, format!("you are {}", text(req)))
        })
        // 2: join a room, leaving the one you were in (and tell its members).
        .route_sync(2, |req: &Request| {
            let (room, me) = (RoomId::from(text(req)), req.conn().id());
            let manager = req.manager();
            if let Some(InRoom(old)) = req.conn().insert_property(InRoom(room.clone())) {
                manager.leave(&old, me);
            }
            manager.join(room.clone(), me)?;
            let notice = format!("{} joined {room}", name(req.conn()));
            manager.try_send_to_room(&room, Some(me), 11, notice);
            req.conn().try_send(2, format!("in {room}"))
        })
        // 3: say something to your room; the frame is encoded once for all.
        .route_sync(3, |req: &Request| {
            let Some(InRoom(room)) = req.conn().property::<InRoom>() else {
                return req.conn().try_send(3, "join a room first (message 2)");
            };
            let line = format!("{}: {}", name(req.conn()), text(req));
            req.manager()
                .try_send_to_room(&room, Some(req.conn().id()), 10, &line);
            let n = req.state::<Stats>().said.fetch_add(1, Ordering::Relaxed) + 1;
            req.conn()
                .try_send(3, format!("said ({n} lines relayed so far)"))
        });
    // Its own port, so it runs beside the echo server (8999); another as the
    // first argument (0 picks a free one).
    let port = std::env::args()
        .nth(1)
        .and_then(|p| p.parse().ok())
        .unwrap_or(9010);
    let config = Config {
        host: "127.0.0.1".into(),
        tcp_port: port,
        ..Config::default()
    };
    let listener = zinx::server::bind_tcp(&config).await?;
    #[allow(clippy::print_stdout)]
    {
        println!("chat listening on {}", listener.local_addr()?);
    }
    Server::builder(config)
        .router(router)
        // The connection has left its room by now: tell those still in it.
        .on_disconnect(|conn| async move {
            if let (Some(manager), Some(InRoom(room))) = (conn.manager(), conn.property()) {
                let notice = format!("{} left", name(&conn));
                manager.try_send_to_room(&room, None, 11, notice);
            }
        })
        .build()
        .run(listener, async {
            let _ = tokio::signal::ctrl_c().await;
        })
        .await
}
