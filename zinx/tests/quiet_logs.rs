//! A flood of refused connections and protocol errors costs the log a summary
//! line per interval, not a line per connection, and the counts add up.

mod support;

use support::{Captured, TestServer, config, echo};
use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;
use zinx::{Config, Layout, Router, Server};

/// The count of `name` in every summary line of `text`.
fn counted(text: &str, name: &str) -> u64 {
    text.lines()
        .filter(|l| l.contains("peer faults"))
        .flat_map(|l| l.split_whitespace())
        .map(|word| word.strip_prefix("counts=").unwrap_or(word))
        .filter_map(|word| word.strip_prefix(&format!("{name}=")))
        .map(|n| n.parse::<u64>().unwrap())
        .sum()
}

// One thread: the subscriber set for this test sees the server's tasks.
#[tokio::test]
async fn refusals_and_protocol_errors_are_summed_up_not_logged_one_by_one() {
    let logs = Captured::default();
    let subscriber = tracing_subscriber::fmt()
        .with_writer(logs.clone())
        .with_ansi(false)
        .with_max_level(tracing::Level::INFO)
        .finish();
    let _guard = tracing::subscriber::set_default(subscriber);
    let server = TestServer::start(
        Server::builder(Config {
            max_conn: 2,
            ..config()
        })
        .router(Router::new().route(1, echo)),
    )
    .await;
    let mut held = server.connect(Layout::Tlv).await;
    assert_eq!(&held.roundtrip(1, "x").await.data[..], b"x");
    // 100 peers that announce too long a frame: closed for a protocol error.
    for _ in 0..100 {
        let mut peer = TcpStream::connect(server.addr).await.unwrap();
        peer.write_all(&[0, 0, 0, 1, 0xFF, 0xFF, 0xFF, 0xFF])
            .await
            .unwrap();
        let closed = support::RawClient::from_stream(peer, Layout::Tlv);
        assert!(closed.read_eof().await);
    }
    // 500 connections over MaxConn: the second slot is taken and held.
    let _second = server.connect(Layout::Tlv).await;
    for _ in 0..500 {
        let peer = server.connect(Layout::Tlv).await;
        assert!(peer.read_eof().await);
    }
    drop(held);
    server.stop().await;
    let text = logs.text();
    let lines = text.lines().filter(|l| l.contains("peer faults")).count();
    assert!((1..=3).contains(&lines), "{lines} summary lines:\n{text}");
    let warnings = text.lines().filter(|l| l.contains("WARN")).count();
    assert!(warnings <= 3, "{warnings} warnings:\n{text}");
    assert_eq!(counted(&text, "protocol"), 100, "{text}");
    assert_eq!(counted(&text, "max_conn"), 500, "{text}");
}
