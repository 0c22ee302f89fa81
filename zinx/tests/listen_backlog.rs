//! A burst of connects waits in the kernel's listen queue, which is the
//! system's limit by default (`ListenBacklog` 0), not tokio's 128.
#![cfg(target_os = "linux")]

mod support;

use std::time::Duration;

use support::config;
use tokio::net::TcpStream;
use zinx::Config;

/// Connects `n` clients to a listener that does not accept; returns how many
/// got through within `wait` (the rest wait for a queue slot that never comes).
async fn burst(backlog: u32, n: usize, wait: Duration) -> usize {
    let listener = zinx::server::bind_tcp(&Config {
        listen_backlog: backlog,
        ..config()
    })
    .await
    .unwrap();
    let addr = listener.local_addr().unwrap();
    let connects: Vec<_> = (0..n)
        .map(|_| tokio::spawn(tokio::time::timeout(wait, TcpStream::connect(addr))))
        .collect();
    let mut through = 0;
    let mut streams = Vec::new();
    for connect in connects {
        if let Ok(Ok(stream)) = connect.await.unwrap() {
            through += 1;
            streams.push(stream);
        }
    }
    drop(listener);
    through
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_burst_beyond_128_connects_and_the_backlog_key_is_applied() {
    let limit = zinx::server::listen_backlog();
    assert!(limit > 600, "this system's somaxconn is {limit}");
    assert_eq!(burst(0, 600, Duration::from_secs(5)).await, 600);
    // An explicit small backlog holds about that many (Linux queues one more).
    let through = burst(16, 100, Duration::from_millis(500)).await;
    assert!((10..=40).contains(&through), "{through} of 100 through");
}
