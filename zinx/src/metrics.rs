//! Prometheus metrics (feature `metrics`): what a server is doing, scraped from
//! `MetricsAddr` in the Prometheus/OpenMetrics text format. Off the data path: a
//! task `Server::run_all` starts serves the counters `observe` keeps.
//!
//! Every metric, its labels and what it counts are listed in docs/METRICS.md.
//! `msg_id` labels are bounded: IDs without a route share the series `other`, so a
//! peer cannot create series at will.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::header::{CONTENT_TYPE, HeaderValue};
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::{TokioIo, TokioTimer};
use prometheus_client::collector::Collector;
use prometheus_client::encoding::text::encode;
use prometheus_client::encoding::{DescriptorEncoder, EncodeMetric};
use prometheus_client::metrics::gauge::ConstGauge;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::manager::ConnManager;
use crate::observe::Metrics;

/// The gauges, read from the connection manager on every scrape.
#[derive(Debug)]
pub(crate) struct Gauges {
    manager: ConnManager,
}

impl Gauges {
    pub(crate) fn new(manager: ConnManager) -> Self {
        Gauges { manager }
    }
}

impl Collector for Gauges {
    fn encode(&self, mut encoder: DescriptorEncoder<'_>) -> Result<(), std::fmt::Error> {
        let conns = self.manager.connections();
        let depths = conns.iter().map(crate::Connection::queue_len);
        let (sum, max) = depths.fold((0, 0), |(s, m), d| (s + d, m.max(d)));
        let as_i64 = |n: usize| i64::try_from(n).unwrap_or(i64::MAX);
        for (name, help, value) in [
            ("connections", "Connections open now", conns.len()),
            (
                "send_queue_messages",
                "Messages waiting in all send queues",
                sum,
            ),
            (
                "send_queue_max_messages",
                "Messages in the longest send queue",
                max,
            ),
        ] {
            let gauge = ConstGauge::new(as_i64(value));
            let metric = encoder.encode_descriptor(name, help, None, gauge.metric_type())?;
            gauge.encode(metric)?;
        }
        Ok(())
    }
}

/// The text exposition of `metrics`.
pub(crate) fn render(metrics: &Metrics) -> String {
    let mut out = String::new();
    // Writing to a String cannot fail.
    let _ = encode(&mut out, &metrics.registry);
    out
}

/// How long a scraper may take to send its request.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(5);

/// Scrapes answered at once; connections beyond are closed at once.
const MAX_SCRAPES: usize = 16;

/// Serves `GET /metrics` on `listener` until `stop` with hyper's HTTP/1.1
/// server, one exchange per connection (all a Prometheus scraper needs;
/// anything else gets a 404), each on `tracker`, so the server's shutdown waits
/// for scrapes in progress; at most `MAX_SCRAPES` at once, each bounded by
/// `REQUEST_TIMEOUT` for its request head and twice that in all.
pub(crate) async fn serve(
    listener: TcpListener,
    metrics: Arc<Metrics>,
    stop: CancellationToken,
    tracker: TaskTracker,
) {
    let scrapes = Arc::new(tokio::sync::Semaphore::new(MAX_SCRAPES));
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
        let metrics = metrics.clone();
        tracker.spawn(async move {
            let _slot = slot;
            let service = service_fn(move |request: Request<Incoming>| {
                let response = answer(&request, &metrics);
                async move { Ok::<_, Infallible>(response) }
            });
            let exchange = http1::Builder::new()
                .timer(TokioTimer::new())
                .header_read_timeout(REQUEST_TIMEOUT)
                .keep_alive(false)
                .serve_connection(TokioIo::new(stream), service);
            match tokio::time::timeout(2 * REQUEST_TIMEOUT, exchange).await {
                Ok(Ok(())) => {}
                Ok(Err(e)) => tracing::debug!(error = %e, "metrics: scrape failed"),
                Err(_) => tracing::debug!("metrics: scrape took too long"),
            }
        });
    }
}

/// The response to one request: the metrics for `GET /metrics`, else 404.
fn answer(request: &Request<Incoming>, metrics: &Metrics) -> Response<Full<Bytes>> {
    let (status, content_type, body) =
        if request.method() == Method::GET && request.uri().path() == "/metrics" {
            (
                StatusCode::OK,
                "application/openmetrics-text; version=1.0.0; charset=utf-8",
                render(metrics),
            )
        } else {
            (
                StatusCode::NOT_FOUND,
                "text/plain",
                "not found\n".to_owned(),
            )
        };
    let mut response = Response::new(Full::new(Bytes::from(body)));
    *response.status_mut() = status;
    response
        .headers_mut()
        .insert(CONTENT_TYPE, HeaderValue::from_static(content_type));
    response
}

/// Binds the scrape endpoint.
pub(crate) async fn bind(addr: &str) -> std::io::Result<(TcpListener, SocketAddr)> {
    let listener = TcpListener::bind(addr).await?;
    let local = listener.local_addr()?;
    Ok((listener, local))
}
