//! The data path's one view of metrics. Every place that counts something
//! (a connection accepted or refused, a message in or out, a failed send, a
//! handler's time, a connection's end) calls an [`Observer`] method. Without
//! the `metrics` feature the observer is an empty struct and its methods are
//! empty, so they compile to nothing; with it, an observer without metrics
//! (`MetricsAddr` empty) costs one branch.
//!
//! The counters live here; `metrics` renders them with the gauges read from the
//! connection manager and serves them.

#[cfg(feature = "metrics")]
use std::collections::HashMap;
#[cfg(feature = "metrics")]
use std::fmt;
#[cfg(feature = "metrics")]
use std::sync::Arc;
#[cfg(feature = "metrics")]
use std::time::Instant;

#[cfg(feature = "metrics")]
use prometheus_client::metrics::counter::Counter;
#[cfg(feature = "metrics")]
use prometheus_client::metrics::family::Family;
#[cfg(feature = "metrics")]
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
#[cfg(feature = "metrics")]
use prometheus_client::registry::Registry;

#[cfg(feature = "metrics")]
use crate::message::IdHasher;
use crate::message::MsgId;

/// Where a server's (or client's) data path reports what it does.
#[derive(Clone, Default)]
pub(crate) struct Observer {
    #[cfg(feature = "metrics")]
    metrics: Option<Arc<Metrics>>,
}

impl Observer {
    /// An observer reporting to `metrics`.
    #[cfg(feature = "metrics")]
    pub(crate) fn new(metrics: Option<Arc<Metrics>>) -> Self {
        Observer { metrics }
    }

    /// The metrics reported to, if any.
    #[cfg(feature = "metrics")]
    pub(crate) fn metrics(&self) -> Option<&Arc<Metrics>> {
        self.metrics.as_ref()
    }

    /// True when something is reported (the reader then keeps state for it).
    #[inline]
    pub(crate) fn is_on(&self) -> bool {
        #[cfg(feature = "metrics")]
        return self.metrics.is_some();
        #[cfg(not(feature = "metrics"))]
        false
    }

    /// A connection was admitted.
    #[inline]
    pub(crate) fn accepted(&self) {
        #[cfg(feature = "metrics")]
        if let Some(m) = &self.metrics {
            m.accepted.inc();
        }
    }

    /// A connection was refused at accept by the limit named `reason`.
    #[inline]
    pub(crate) fn rejected(&self, reason: &'static str) {
        #[cfg(feature = "metrics")]
        if let Some(m) = &self.metrics {
            m.rejected.get_or_create(&[("reason", reason)]).inc();
        }
        let _ = reason;
    }

    /// A connection ended, for `reason`.
    #[inline]
    pub(crate) fn closed(&self, reason: &'static str) {
        #[cfg(feature = "metrics")]
        if let Some(m) = &self.metrics {
            m.closed.get_or_create(&[("reason", reason)]).inc();
        }
        let _ = reason;
    }

    /// A message of `len` data bytes arrived.
    #[inline]
    pub(crate) fn received(&self, id: MsgId, len: usize) {
        #[cfg(feature = "metrics")]
        if let Some(m) = &self.metrics {
            let c = m.id(id);
            c.msgs_in.inc();
            c.bytes_in.inc_by(len as u64);
        }
        let _ = (id, len);
    }

    /// A message of `len` data bytes was queued for sending.
    #[inline]
    pub(crate) fn sent(&self, id: MsgId, len: usize) {
        #[cfg(feature = "metrics")]
        if let Some(m) = &self.metrics {
            let c = m.id(id);
            c.msgs_out.inc();
            c.bytes_out.inc_by(len as u64);
        }
        let _ = (id, len);
    }

    /// A send did not queue its message, for `reason`.
    #[inline]
    pub(crate) fn send_failed(&self, reason: &'static str) {
        #[cfg(feature = "metrics")]
        if let Some(m) = &self.metrics {
            m.send_failures.get_or_create(&[("reason", reason)]).inc();
        }
        let _ = reason;
    }

    /// When a handler starts, if its time is reported.
    #[inline]
    pub(crate) fn start(&self) -> Started {
        Started {
            #[cfg(feature = "metrics")]
            at: self.is_on().then(Instant::now),
        }
    }

    /// A handler that started at `started` (from [`start`](Self::start)) ended.
    #[inline]
    pub(crate) fn handled(&self, started: Started) {
        #[cfg(feature = "metrics")]
        if let (Some(m), Some(at)) = (&self.metrics, started.at) {
            m.handler_seconds.observe(at.elapsed().as_secs_f64());
        }
        let _ = started;
    }
}

/// When a handler started, kept across its await: nothing at all without the
/// `metrics` feature, so the connection's future does not grow.
#[derive(Clone, Copy, Default)]
pub(crate) struct Started {
    #[cfg(feature = "metrics")]
    at: Option<Instant>,
}

#[cfg(feature = "metrics")]
type Reason = [(&'static str, &'static str); 1];
#[cfg(feature = "metrics")]
type ById = [(&'static str, String); 1];

/// Counters of one message ID (or of all unrouted ones).
#[cfg(feature = "metrics")]
#[derive(Clone, Default)]
pub(crate) struct IdCounters {
    msgs_in: Counter,
    bytes_in: Counter,
    msgs_out: Counter,
    bytes_out: Counter,
}

/// The metrics of one server: the counters the data path moves, registered
/// in the server's own registry (what `MetricsAddr` serves) and, on request, in
/// an application's (see `Server::register_metrics`).
#[cfg(feature = "metrics")]
pub(crate) struct Metrics {
    pub(crate) registry: Registry,
    accepted: Counter,
    rejected: Family<Reason, Counter>,
    closed: Family<Reason, Counter>,
    send_failures: Family<Reason, Counter>,
    handler_seconds: Histogram,
    /// messages in, bytes in, messages out, bytes out, by message ID.
    by_id_families: [Family<ById, Counter>; 4],
    /// Looked up for every message in and out: keyed like the route table.
    by_id: HashMap<MsgId, IdCounters, IdHasher>,
    other: IdCounters,
}

#[cfg(feature = "metrics")]
impl fmt::Debug for Metrics {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Metrics").finish_non_exhaustive()
    }
}

#[cfg(feature = "metrics")]
impl Metrics {
    /// The metrics, with a `msg_id` series for each of `ids`.
    pub(crate) fn new(ids: impl IntoIterator<Item = MsgId>) -> Metrics {
        let by_id_families: [Family<ById, Counter>; 4] = Default::default();
        let counters = |label: String| {
            let labels = [("msg_id", label)];
            IdCounters {
                msgs_in: by_id_families[0].get_or_create_owned(&labels),
                bytes_in: by_id_families[1].get_or_create_owned(&labels),
                msgs_out: by_id_families[2].get_or_create_owned(&labels),
                bytes_out: by_id_families[3].get_or_create_owned(&labels),
            }
        };
        let by_id = ids
            .into_iter()
            .map(|id| (id, counters(id.0.to_string())))
            .collect();
        let other = counters("other".to_owned());
        let mut metrics = Metrics {
            registry: Registry::with_prefix("zinx"),
            accepted: Counter::default(),
            rejected: Family::default(),
            closed: Family::default(),
            send_failures: Family::default(),
            // 10 µs to about 10 s.
            handler_seconds: Histogram::new(exponential_buckets(1e-5, 4.0, 11)),
            by_id_families,
            by_id,
            other,
        };
        let mut registry = std::mem::take(&mut metrics.registry);
        metrics.register(&mut registry);
        metrics.registry = registry;
        metrics
    }

    /// Registers every counter in `registry` (whose prefix the names get);
    /// the gauges, read from the connection manager when scraped, are a
    /// collector the caller adds.
    pub(crate) fn register(&self, registry: &mut Registry) {
        registry.register(
            "connections_accepted",
            "Connections accepted",
            self.accepted.clone(),
        );
        registry.register(
            "connections_rejected",
            "Connections closed right after accept, by limit",
            self.rejected.clone(),
        );
        registry.register(
            "connections_closed",
            "Connections ended, by reason",
            self.closed.clone(),
        );
        registry.register(
            "send_failures",
            "Sends that did not queue their message, by reason",
            self.send_failures.clone(),
        );
        registry.register(
            "handler_seconds",
            "Time from a message's dispatch to its handler's end",
            self.handler_seconds.clone(),
        );
        for (family, (name, help)) in self.by_id_families.iter().zip([
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
    }

    fn id(&self, id: MsgId) -> &IdCounters {
        self.by_id.get(&id).unwrap_or(&self.other)
    }
}
