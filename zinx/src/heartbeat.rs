//! Heartbeat: keep-alive messages out, dead-peer detection in (Zinx's
//! `StartHeartBeat` / `HeartBeatOption`).
//!
//! The connection's reader (on the connection's task) owns the heartbeat: every `interval` it checks how
//! long the peer has been silent and, if less than the limit, queues a heartbeat
//! message (fail-fast, so a peer that never reads cannot make it wait or grow
//! memory). **Any** bytes received count as activity, so peers that only receive
//! and answer nothing but data are not killed. A peer silent for longer than the
//! limit is dead: the `on_dead` callback runs (default: close the connection). The
//! check runs at each tick, so detection happens between `limit` and
//! `limit + interval` after the last message.
//!
//! Inbound heartbeat messages are routed like any other message; when the router
//! has no route for the heartbeat ID, a default one logs them at debug level.

use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;

use crate::conn::Connection;
use crate::message::MsgId;

/// Zinx's default heartbeat message ID.
pub const DEFAULT_HEARTBEAT_ID: MsgId = MsgId(99999);

type Payload = Arc<dyn Fn(&Connection) -> Bytes + Send + Sync>;
type OnDead = Arc<dyn Fn(&Connection) + Send + Sync>;

/// Heartbeat settings for a server's or a client's connections.
///
/// # Examples
///
/// ```
/// use std::time::Duration;
/// use zinx::Heartbeat;
///
/// let hb = Heartbeat::new(Duration::from_secs(3))
///     .max_silence(Duration::from_secs(10))
///     .payload(|_conn| bytes::Bytes::from_static(b"ping"))
///     .on_dead(|conn| {
///         tracing::warn!(id = %conn.id(), "peer is gone");
///         conn.close();
///     });
/// # let _ = hb;
/// ```
#[derive(Clone)]
#[must_use]
pub struct Heartbeat {
    pub(crate) interval: Duration,
    pub(crate) max_silence: Option<Duration>,
    pub(crate) msg_id: MsgId,
    pub(crate) payload: Payload,
    pub(crate) on_dead: OnDead,
}

impl fmt::Debug for Heartbeat {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Heartbeat")
            .field("interval", &self.interval)
            .field("max_silence", &self.max_silence)
            .field("msg_id", &self.msg_id)
            .finish_non_exhaustive()
    }
}

impl Heartbeat {
    /// Sends a heartbeat every `interval` (at least 1 ms). The silence limit
    /// defaults to the config's `HeartbeatMax`, the message ID to 99999.
    pub fn new(interval: Duration) -> Self {
        Heartbeat {
            interval: interval.max(Duration::from_millis(1)),
            max_silence: None,
            msg_id: DEFAULT_HEARTBEAT_ID,
            payload: Arc::new(|conn: &Connection| {
                Bytes::from(format!(
                    "heartbeat [{}->{}]",
                    conn.local_addr(),
                    conn.peer_addr()
                ))
            }),
            on_dead: Arc::new(|conn: &Connection| {
                tracing::info!(conn_id = %conn.id(), "peer silent past the heartbeat limit, closing");
                conn.close();
            }),
        }
    }

    /// How long a peer may stay silent before it counts as dead.
    pub fn max_silence(mut self, limit: Duration) -> Self {
        self.max_silence = Some(limit);
        self
    }

    /// The message ID of outgoing heartbeats (and of the default inbound route).
    pub fn msg_id(mut self, id: impl Into<MsgId>) -> Self {
        self.msg_id = id.into();
        self
    }

    /// Builds each heartbeat's data (Zinx's `MakeMsg`).
    pub fn payload(mut self, make: impl Fn(&Connection) -> Bytes + Send + Sync + 'static) -> Self {
        self.payload = Arc::new(make);
        self
    }

    /// Replaces what happens to a dead peer (Zinx's `OnRemoteNotAlive`; default:
    /// close the connection). The callback runs on the connection's task:
    /// keep it short.
    pub fn on_dead(mut self, callback: impl Fn(&Connection) + Send + Sync + 'static) -> Self {
        self.on_dead = Arc::new(callback);
        self
    }

    /// Fills in the silence limit from `HeartbeatMax` seconds if none was set.
    pub(crate) fn with_default_limit(mut self, heartbeat_max_secs: u64) -> Self {
        if self.max_silence.is_none() {
            self.max_silence = Some(Duration::from_secs(heartbeat_max_secs));
        }
        self
    }

    pub(crate) fn limit(&self) -> Duration {
        self.max_silence.unwrap_or(Duration::from_secs(10))
    }
}
