//! What peers did wrong, counted and logged as at most one summary line per
//! interval.
//!
//! A connection refused by `MaxConn` or `MaxConnPerIP`, a protocol error, a frame
//! or idle timeout and a failed handshake are each a peer's doing, and a hostile
//! peer can cause thousands a second. Each is counted (and logged at DEBUG with
//! its peer); at WARN, the first one is logged at once and later ones are summed
//! up in one line when the next one comes after [`SUMMARY_INTERVAL`], so a flood
//! of reconnects costs the log one line per interval, not one per connection.
//! What is still counted when the server stops is logged then.

use std::fmt::Display;
use std::net::SocketAddr;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use tokio::time::Instant;

/// At most one summary line per this much time.
pub(crate) const SUMMARY_INTERVAL: Duration = Duration::from_secs(10);

/// A kind of fault.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Fault {
    /// Refused at accept: `MaxConn` connections are open.
    MaxConn,
    /// Refused at accept: `MaxConnPerIP` connections from that address are open.
    MaxConnPerIp,
    /// Closed for breaking the framing protocol.
    Protocol,
    /// Closed: a frame was started and not finished within `FrameTimeout`.
    FrameTimeout,
    /// Closed: nothing was received within `IdleTimeout`.
    IdleTimeout,
    /// Closed: the transport's handshake failed or timed out.
    Handshake,
}

impl Fault {
    const ALL: [Fault; 6] = [
        Fault::MaxConn,
        Fault::MaxConnPerIp,
        Fault::Protocol,
        Fault::FrameTimeout,
        Fault::IdleTimeout,
        Fault::Handshake,
    ];

    /// The fault's name in logs (and, for refusals, the metrics label).
    pub(crate) fn name(self) -> &'static str {
        match self {
            Fault::MaxConn => "max_conn",
            Fault::MaxConnPerIp => "max_conn_per_ip",
            Fault::Protocol => "protocol",
            Fault::FrameTimeout => "frame_timeout",
            Fault::IdleTimeout => "idle_timeout",
            Fault::Handshake => "handshake",
        }
    }
}

/// The counts of one server (or client).
#[derive(Debug)]
pub(crate) struct Faults {
    /// Since the last summary line, by [`Fault`].
    pending: [AtomicU64; Fault::ALL.len()],
    /// Since the start, by [`Fault`].
    total: [AtomicU64; Fault::ALL.len()],
    /// When the next summary line may be written (`None`: at once).
    next_line: Mutex<Option<Instant>>,
}

impl Default for Faults {
    fn default() -> Self {
        Faults {
            pending: Default::default(),
            total: Default::default(),
            next_line: Mutex::new(None),
        }
    }
}

impl Faults {
    /// Counts one fault of `peer`; writes a summary line if the interval since
    /// the last one has passed.
    pub(crate) fn record(&self, fault: Fault, peer: SocketAddr, detail: &dyn Display) {
        tracing::debug!(%peer, fault = fault.name(), "{detail}");
        self.pending[fault as usize].fetch_add(1, Ordering::Relaxed);
        self.total[fault as usize].fetch_add(1, Ordering::Relaxed);
        let now = Instant::now();
        // Whoever holds the lock is writing the line that covers this fault.
        let Ok(mut next) = self.next_line.try_lock() else {
            return;
        };
        if next.is_some_and(|at| now < at) {
            return;
        }
        *next = Some(now + SUMMARY_INTERVAL);
        drop(next);
        self.summarize(Some((peer, detail)));
    }

    /// Writes what was counted since the last line, if anything (the server
    /// calls this when it stops).
    pub(crate) fn flush(&self) {
        self.summarize(None);
    }

    /// Faults of `kind` since the start.
    #[cfg(test)]
    pub(crate) fn total(&self, kind: Fault) -> u64 {
        self.total[kind as usize].load(Ordering::Relaxed)
    }

    fn summarize(&self, latest: Option<(SocketAddr, &dyn Display)>) {
        let counts: Vec<(Fault, u64)> = Fault::ALL
            .iter()
            .map(|&f| (f, self.pending[f as usize].swap(0, Ordering::Relaxed)))
            .filter(|&(_, n)| n > 0)
            .collect();
        if counts.is_empty() {
            return;
        }
        let summary = counts
            .iter()
            .map(|(f, n)| format!("{}={n}", f.name()))
            .collect::<Vec<_>>()
            .join(" ");
        match latest {
            Some((peer, detail)) => tracing::warn!(
                counts = %summary,
                latest_peer = %peer,
                latest = %detail,
                "peer faults (one line per {}s at most)",
                SUMMARY_INTERVAL.as_secs()
            ),
            None => tracing::warn!(counts = %summary, "peer faults since the last line"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_distinct() {
        let mut names: Vec<_> = Fault::ALL.iter().map(|f| f.name()).collect();
        names.sort_unstable();
        names.dedup();
        assert_eq!(names.len(), Fault::ALL.len());
    }

    #[tokio::test(start_paused = true)]
    async fn one_line_per_interval_and_totals_kept() {
        let faults = Faults::default();
        let peer: SocketAddr = "127.0.0.1:1".parse().unwrap_or_else(|_| unreachable!());
        for _ in 0..1000 {
            faults.record(Fault::MaxConn, peer, &"refused");
        }
        assert_eq!(faults.total(Fault::MaxConn), 1000);
        // The first was written at once; 999 wait for the next line.
        assert_eq!(
            faults.pending[Fault::MaxConn as usize].load(Ordering::Relaxed),
            999
        );
        tokio::time::advance(SUMMARY_INTERVAL).await;
        faults.record(Fault::Protocol, peer, &"bad frame");
        assert_eq!(
            faults.pending[Fault::MaxConn as usize].load(Ordering::Relaxed),
            0
        );
        faults.record(Fault::Protocol, peer, &"bad frame");
        faults.flush();
        assert_eq!(
            faults.pending[Fault::Protocol as usize].load(Ordering::Relaxed),
            0
        );
        assert_eq!(faults.total(Fault::Protocol), 2);
    }
}
