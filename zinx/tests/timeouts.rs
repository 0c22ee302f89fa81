//! Half-sent frames and silent peers cannot hold a connection slot forever:
//! `FrameTimeout` (on by default) and `IdleTimeout` close them, with no
//! heartbeat needed, and their slots serve others again.

mod support;

use std::time::{Duration, Instant};

use support::{RawClient, TestServer, config, echo, within};
use zinx::{Config, Layout, Router, Server};

async fn wait_for(what: &str, mut done: impl FnMut() -> bool) {
    within(what, async {
        while !done() {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    })
    .await;
}

/// A server of `MaxConn` 2 with the given timeouts (seconds).
async fn server(frame_timeout: u64, idle_timeout: u64) -> TestServer {
    TestServer::start(
        Server::builder(Config {
            max_conn: 2,
            frame_timeout,
            idle_timeout,
            ..config()
        })
        .router(Router::new().route(1, echo)),
    )
    .await
}

/// Waits for both `MaxConn` slots to come back, then checks a new client is
/// served, and stops the server.
async fn slots_serve_again(server: TestServer) {
    wait_for("the slots to come back", || {
        server.handle.free_slots() == Some(2)
    })
    .await;
    let mut client = server.connect(Layout::Tlv).await;
    assert_eq!(&client.roundtrip(1, "served").await.data[..], b"served");
    drop(client);
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn peers_that_send_half_a_header_lose_their_slots_at_the_frame_timeout() {
    let server = server(1, 0).await;
    let started = Instant::now();
    let mut half = Vec::new();
    for _ in 0..2 {
        let mut peer = server.connect(Layout::Tlv).await;
        peer.write_raw(&[0, 0, 0, 1]).await;
        half.push(peer);
    }
    let manager = server.handle.manager();
    wait_for("both registered", || manager.len() == 2).await;
    // MaxConn is full: a third peer is closed at accept...
    assert!(server.connect(Layout::Tlv).await.read_eof().await);
    // ...until the frame timeout closes the half-sent ones.
    for peer in half {
        assert!(peer.read_eof().await);
    }
    assert!(started.elapsed() >= Duration::from_secs(1));
    slots_serve_again(server).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn silent_peers_lose_their_slots_at_the_idle_timeout() {
    let server = server(0, 1).await;
    let started = Instant::now();
    let silent: Vec<RawClient> = vec![
        server.connect(Layout::Tlv).await,
        server.connect(Layout::Tlv).await,
    ];
    for peer in silent {
        assert!(peer.read_eof().await);
    }
    assert!(started.elapsed() >= Duration::from_secs(1));
    slots_serve_again(server).await;
}
