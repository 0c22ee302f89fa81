//! The Prometheus endpoint (feature `metrics`): counters move with the traffic,
//! unrouted IDs share one series, and only `GET /metrics` is served.
#![cfg(feature = "metrics")]

mod support;

use std::net::SocketAddr;

use support::{TestServer, config, echo, within};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use zinx::{Config, Layout, Router, Server};

/// One HTTP exchange; what the server answered, empty if it closed (or reset) the
/// connection without an answer.
async fn get(addr: SocketAddr, path: &str) -> String {
    let mut s = within("metrics connect", TcpStream::connect(addr))
        .await
        .unwrap();
    let mut out = String::new();
    let request = format!("GET {path} HTTP/1.1\r\nHost: x\r\n\r\n");
    if s.write_all(request.as_bytes()).await.is_ok() {
        let _ = within("metrics response", s.read_to_string(&mut out)).await;
    }
    out
}

/// Where the server serves its metrics, once it has bound the port.
async fn metrics_addr(handle: &zinx::ServerHandle) -> SocketAddr {
    within("metrics endpoint", async {
        loop {
            if let Some(addr) = handle.metrics_addr() {
                return addr;
            }
            tokio::time::sleep(std::time::Duration::from_millis(5)).await;
        }
    })
    .await
}

fn value(text: &str, series: &str) -> Option<f64> {
    text.lines()
        .find(|l| l.starts_with(series) && l[series.len()..].starts_with(' '))
        .and_then(|l| l[series.len() + 1..].trim().parse().ok())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_follow_the_traffic() {
    let server = TestServer::start(
        Server::builder(Config {
            metrics_addr: "127.0.0.1:0".into(),
            max_packet_size: 64,
            ..config()
        })
        .router(Router::new().route(1, echo)),
    )
    .await;
    let addr = metrics_addr(&server.handle).await;

    let mut a = server.connect(Layout::Tlv).await;
    for _ in 0..3 {
        a.roundtrip(1, "hello").await;
    }
    // An ID with no route: counted as "other".
    a.send(77, "??").await;
    // A frame over MaxPacketSize: a protocol error closes that connection.
    let mut b = server.connect(Layout::Tlv).await;
    b.send(1, [0u8; 65]).await;
    b.expect_closed().await;
    a.roundtrip(1, "sync").await;

    // The peer sees EOF before the server has released the connection: scrape
    // until the count shows it.
    let text = within("the closed connection to be released", async {
        loop {
            let text = get(addr, "/metrics").await;
            if value(&text, "zinx_connections") == Some(1.0) {
                return text;
            }
            tokio::time::sleep(std::time::Duration::from_millis(5)).await;
        }
    })
    .await;
    assert!(text.starts_with("HTTP/1.1 200 OK\r\n"), "{text}");
    assert!(text.contains("application/openmetrics-text"), "{text}");
    for (series, want) in [
        ("zinx_connections", 1.0),
        ("zinx_connections_accepted_total", 2.0),
        (r#"zinx_connections_closed_total{reason="protocol"}"#, 1.0),
        (r#"zinx_messages_in_total{msg_id="1"}"#, 4.0),
        (r#"zinx_bytes_in_total{msg_id="1"}"#, 19.0),
        (r#"zinx_messages_in_total{msg_id="other"}"#, 1.0),
        (r#"zinx_messages_out_total{msg_id="1"}"#, 4.0),
        (r#"zinx_bytes_out_total{msg_id="1"}"#, 19.0),
        ("zinx_handler_seconds_count", 5.0),
        ("zinx_send_queue_messages", 0.0),
    ] {
        assert_eq!(value(&text, series), Some(want), "{series} in\n{text}");
    }

    let other = get(addr, "/").await;
    assert!(other.starts_with("HTTP/1.1 404"), "{other}");
    drop(a);
    server.stop().await;
}

#[tokio::test]
async fn sends_that_fail_are_counted_by_reason() {
    let server = TestServer::start(
        Server::builder(Config {
            metrics_addr: "127.0.0.1:0".into(),
            ..config()
        })
        .router(Router::new().route(1, |req: zinx::Request| async move {
            // Too large for MaxPacketSize (4096): refused, counted.
            let _ = req.conn().try_send(1, vec![0u8; 5000]);
            req.conn().try_send(1, "ok")
        })),
    )
    .await;
    let addr = metrics_addr(&server.handle).await;
    let mut c = server.connect(Layout::Tlv).await;
    assert_eq!(&c.roundtrip(1, "x").await.data[..], b"ok");
    let text = get(addr, "/metrics").await;
    assert_eq!(
        value(&text, r#"zinx_send_failures_total{reason="too_large"}"#),
        Some(1.0),
        "{text}"
    );
    drop(c);
    server.stop().await;
}

#[tokio::test]
async fn idle_scrape_connections_are_bounded() {
    let server = TestServer::start(
        Server::builder(Config {
            metrics_addr: "127.0.0.1:0".into(),
            ..config()
        })
        .router(Router::new().route(1, echo)),
    )
    .await;
    let addr = metrics_addr(&server.handle).await;
    // Sixteen connections that never send a request hold every scrape slot...
    let mut idle = Vec::new();
    for _ in 0..16 {
        idle.push(within("connect", TcpStream::connect(addr)).await.unwrap());
    }
    // ...so one more is closed without an answer (the server takes them in order).
    let refused = get(addr, "/metrics").await;
    assert!(refused.is_empty(), "{refused}");
    // Once they go away, scrapes are answered again.
    drop(idle);
    within("a scrape answered again", async {
        while !get(addr, "/metrics").await.starts_with("HTTP/1.1 200") {
            tokio::time::sleep(std::time::Duration::from_millis(5)).await;
        }
    })
    .await;
    server.stop().await;
}

/// An application can register the server's metrics in its own registry and
/// serve them itself: counters and gauges appear there, under `zinx_`, beside
/// the application's own.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_metrics_go_into_an_applications_own_registry() {
    use zinx::prometheus_client::encoding::text::encode;
    use zinx::prometheus_client::metrics::counter::Counter;
    use zinx::prometheus_client::registry::Registry;

    let mut registry = Registry::with_prefix("game");
    let own = Counter::<u64>::default();
    registry.register("matches", "Matches played", own.clone());
    let server = Server::builder(config())
        .router(Router::new().route(1, echo))
        .with_metrics()
        .build();
    assert!(server.register_metrics(&mut registry));
    let handle = server.handle();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let running = tokio::spawn(server.run(listener, async move {
        let _ = stopped.await;
    }));
    let mut client = support::RawClient::connect(addr, Layout::Tlv).await;
    client.roundtrip(1, "hello").await;
    own.inc();
    let mut text = String::new();
    encode(&mut text, &registry).unwrap();
    assert_eq!(value(&text, "game_matches_total"), Some(1.0), "{text}");
    assert_eq!(
        value(&text, "game_zinx_messages_in_total{msg_id=\"1\"}"),
        Some(1.0),
        "{text}"
    );
    assert_eq!(value(&text, "game_zinx_connections"), Some(1.0), "{text}");
    assert!(
        handle.metrics_addr().is_none(),
        "no endpoint without MetricsAddr"
    );
    drop(client);
    let _ = stop.send(());
    within("the server to stop", running)
        .await
        .unwrap()
        .unwrap();
    // Without metrics counted there is nothing to register.
    let plain = Server::builder(config()).build();
    assert!(!plain.register_metrics(&mut Registry::default()));
}
