//! Prometheus metrics (feature `metrics`): what a server is doing, scraped from
//! `MetricsAddr` in the Prometheus/OpenMetrics text format.
//!
//! Every metric, its labels and what it counts are listed in docs/METRICS.md.
//! `msg_id` labels are bounded: IDs without a route share the series `other`, so a
//! peer cannot create series at will.

use std::collections::HashMap;
use std::fmt;
use std::net::SocketAddr;
use std::time::Duration;

use prometheus_client::encoding::text::encode;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::manager::ConnManager;
use crate::message::IdHasher;
use crate::message::MsgId;

type Reason = [(&'static str, &'static str); 1];
type ById = [(&'static str, String); 1];

/// Counters of one message ID (or of all unrouted ones).
#[derive(Clone, Default)]
struct IdCounters {
    msgs_in: Counter,
    bytes_in: Counter,
    msgs_out: Counter,
    bytes_out: Counter,
}

/// The metrics of one server.
pub(crate) struct Metrics {
    registry: Registry,
    connections: Gauge,
    accepted: Counter,
    rejected: Family<Reason, Counter>,
    closed: Family<Reason, Counter>,
    send_failures: Family<Reason, Counter>,
    queued: Gauge,
    queue_max: Gauge,
    handler_seconds: Histogram,
    /// Looked up for every message in and out: keyed like the route table.
    by_id: HashMap<MsgId, IdCounters, IdHasher>,
    other: IdCounters,
}

impl fmt::Debug for Metrics {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Metrics").finish_non_exhaustive()
    }
}

impl Metrics {
    /// The metrics, with a `msg_id` series for each of `ids`.
    pub(crate) fn new(ids: impl IntoIterator<Item = MsgId>) -> Metrics {
        let mut registry = Registry::with_prefix("zinx");
        let connections = Gauge::default();
        registry.register("connections", "Connections open now", connections.clone());
        let accepted = Counter::default();
        registry.register(
            "connections_accepted",
            "Connections accepted",
            accepted.clone(),
        );
        let rejected = Family::<Reason, Counter>::default();
        registry.register(
            "connections_rejected",
            "Connections closed right after accept, by limit",
            rejected.clone(),
        );
        let closed = Family::<Reason, Counter>::default();
        registry.register(
            "connections_closed",
            "Connections ended, by reason",
            closed.clone(),
        );
        let send_failures = Family::<Reason, Counter>::default();
        registry.register(
            "send_failures",
            "Sends that did not queue their message, by reason",
            send_failures.clone(),
        );
        let queued = Gauge::default();
        registry.register(
            "send_queue_messages",
            "Messages waiting in all send queues",
            queued.clone(),
        );
        let queue_max = Gauge::default();
        registry.register(
            "send_queue_max_messages",
            "Messages in the longest send queue",
            queue_max.clone(),
        );
        // 10 µs to about 10 s.
        let handler_seconds = Histogram::new(exponential_buckets(1e-5, 4.0, 11));
        registry.register(
            "handler_seconds",
            "Time from a message's dispatch to its handler's end",
            handler_seconds.clone(),
        );
        let families: [Family<ById, Counter>; 4] = Default::default();
        for (family, (name, help)) in families.iter().zip([
            ("messages_in", "Messages received, by message ID"),
            ("bytes_in", "Data bytes received, by message ID"),
            (
                "messages_out",
                "Messages sent (queued for writing), by message ID",
            ),
            (
                "bytes_out",
                "Data bytes sent (queued for writing), by message ID",
            ),
        ]) {
            registry.register(name, help, family.clone());
        }
        let counters = |label: String| {
            let labels = [("msg_id", label)];
            IdCounters {
                msgs_in: families[0].get_or_create_owned(&labels),
                bytes_in: families[1].get_or_create_owned(&labels),
                msgs_out: families[2].get_or_create_owned(&labels),
                bytes_out: families[3].get_or_create_owned(&labels),
            }
        };
        let by_id = ids
            .into_iter()
            .map(|id| (id, counters(id.0.to_string())))
            .collect();
        let other = counters("other".to_owned());
        Metrics {
            registry,
            connections,
            accepted,
            rejected,
            closed,
            send_failures,
            queued,
            queue_max,
            handler_seconds,
            by_id,
            other,
        }
    }

    fn id(&self, id: MsgId) -> &IdCounters {
        self.by_id.get(&id).unwrap_or(&self.other)
    }

    pub(crate) fn received(&self, id: MsgId, len: usize) {
        let c = self.id(id);
        c.msgs_in.inc();
        c.bytes_in.inc_by(len as u64);
    }

    pub(crate) fn sent(&self, id: MsgId, len: usize) {
        let c = self.id(id);
        c.msgs_out.inc();
        c.bytes_out.inc_by(len as u64);
    }

    pub(crate) fn handled(&self, took: Duration) {
        self.handler_seconds.observe(took.as_secs_f64());
    }

    pub(crate) fn accepted(&self) {
        self.accepted.inc();
    }

    pub(crate) fn rejected(&self, reason: &'static str) {
        self.rejected.get_or_create(&[("reason", reason)]).inc();
    }

    pub(crate) fn closed(&self, reason: &'static str) {
        self.closed.get_or_create(&[("reason", reason)]).inc();
    }

    pub(crate) fn send_failed(&self, reason: &'static str) {
        self.send_failures
            .get_or_create(&[("reason", reason)])
            .inc();
    }

    /// The text exposition, with the gauges read from `manager` now.
    pub(crate) fn render(&self, manager: &ConnManager) -> String {
        let conns = manager.connections();
        let depths = conns.iter().map(crate::Connection::queue_len);
        let (sum, max) = depths.fold((0, 0), |(s, m), d| (s + d, m.max(d)));
        self.connections
            .set(i64::try_from(conns.len()).unwrap_or(i64::MAX));
        self.queued.set(i64::try_from(sum).unwrap_or(i64::MAX));
        self.queue_max.set(i64::try_from(max).unwrap_or(i64::MAX));
        let mut out = String::new();
        // Writing to a String cannot fail.
        let _ = encode(&mut out, &self.registry);
        out
    }
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
            metrics.render(manager),
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
