//! Prometheus metrics (feature `metrics`): what a server is doing, scraped from
//! `MetricsAddr` in the Prometheus/OpenMetrics text format.
//!
//! Every metric, its labels and what it counts are listed in docs/METRICS.md.
//! `msg_id` labels are bounded: IDs without a route share the series `other`, so a
//! peer cannot create series at will.

use std::net::SocketAddr;
use std::time::Duration;

use prometheus_client::encoding::text::encode;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::manager::ConnManager;
use crate::observe::Metrics;

/// The text exposition of `metrics`, with the gauges read from `manager` now.
pub(crate) fn render(metrics: &Metrics, manager: &ConnManager) -> String {
    let conns = manager.connections();
    let depths = conns.iter().map(crate::Connection::queue_len);
    let (sum, max) = depths.fold((0, 0), |(s, m), d| (s + d, m.max(d)));
    metrics
        .connections
        .set(i64::try_from(conns.len()).unwrap_or(i64::MAX));
    metrics.queued.set(i64::try_from(sum).unwrap_or(i64::MAX));
    metrics
        .queue_max
        .set(i64::try_from(max).unwrap_or(i64::MAX));
    let mut out = String::new();
    // Writing to a String cannot fail.
    let _ = encode(&mut out, &metrics.registry);
    out
}

/// Longest request head the scrape endpoint reads.
const MAX_REQUEST: usize = 8 * 1024;

/// How long a scraper may take to send its request.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(5);

/// Scrapes answered at once; connections beyond are closed at once.
const MAX_SCRAPES: usize = 16;

/// Serves `GET /metrics` on `listener` until `stop`, one short HTTP/1.1 exchange
/// per connection (all a Prometheus scraper needs; anything else gets a 404), each
/// on `tracker`, so the server's shutdown waits for scrapes in progress; at most
/// `MAX_SCRAPES` at once, each bounded by `REQUEST_TIMEOUT`.
pub(crate) async fn serve(
    listener: TcpListener,
    metrics: std::sync::Arc<Metrics>,
    manager: ConnManager,
    stop: CancellationToken,
    tracker: TaskTracker,
) {
    let scrapes = std::sync::Arc::new(tokio::sync::Semaphore::new(MAX_SCRAPES));
    loop {
        let stream = tokio::select! {
            biased;
            () = stop.cancelled() => return,
            // Cancel-safe: accept loses no connection when dropped.
            accepted = listener.accept() => match accepted {
                Ok((stream, _)) => stream,
                Err(e) => {
                    tracing::debug!(error = %e, "metrics: accept failed");
                    tokio::time::sleep(Duration::from_millis(10)).await;
                    continue;
                }
            },
        };
        let Ok(slot) = scrapes.clone().try_acquire_owned() else {
            tracing::debug!("metrics: too many scrapes at once, connection closed");
            continue;
        };
        let (metrics, manager) = (metrics.clone(), manager.clone());
        tracker.spawn(async move {
            let _slot = slot;
            if let Err(e) = answer(stream, &metrics, &manager).await {
                tracing::debug!(error = %e, "metrics: scrape failed");
            }
        });
    }
}

async fn answer(
    mut stream: TcpStream,
    metrics: &Metrics,
    manager: &ConnManager,
) -> std::io::Result<()> {
    let mut head = Vec::with_capacity(512);
    let read = async {
        let mut chunk = [0u8; 512];
        while !head.windows(4).any(|w| w == b"\r\n\r\n") && head.len() < MAX_REQUEST {
            let n = stream.read(&mut chunk).await?;
            if n == 0 {
                break;
            }
            head.extend_from_slice(&chunk[..n]);
        }
        Ok::<_, std::io::Error>(())
    };
    tokio::time::timeout(REQUEST_TIMEOUT, read)
        .await
        .map_err(|_| std::io::Error::from(std::io::ErrorKind::TimedOut))??;
    let line = head.split(|&b| b == b'\r').next().unwrap_or_default();
    let is_scrape = line.starts_with(b"GET /metrics ") || line == b"GET /metrics";
    let (status, content_type, body) = if is_scrape {
        (
            "200 OK",
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
            render(metrics, manager),
        )
    } else {
        ("404 Not Found", "text/plain", "not found\n".to_owned())
    };
    let response = format!(
        "HTTP/1.1 {status}\r\nContent-Type: {content_type}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    );
    stream.write_all(response.as_bytes()).await?;
    stream.shutdown().await
}

/// Binds the scrape endpoint.
pub(crate) async fn bind(addr: &str) -> std::io::Result<(TcpListener, SocketAddr)> {
    let listener = TcpListener::bind(addr).await?;
    let local = listener.local_addr()?;
    Ok((listener, local))
}
