//! The one public error type of the crate.
//!
//! Every fallible public function of the server, client, connections and config
//! returns [`Error`] (a few accessors return what they wrap: `io::Result` for a
//! listener's address, `TryRecvError` for an `Outbox`). It is `#[non_exhaustive]` so
//! new failure kinds can be added without breaking callers; match the variants you
//! care about and keep a wildcard arm, or use the `is_*` predicates.

use std::path::PathBuf;

/// Everything that can go wrong in `zinx`.
#[non_exhaustive]
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A frame header announced more data than the configured `MaxPacketSize`.
    /// The connection that sent it is closed; nothing of that size was allocated.
    #[error("frame announces {len} data bytes, more than the maximum of {max}")]
    FrameTooLarge {
        /// The data length announced by the peer.
        len: u64,
        /// The configured maximum.
        max: u64,
    },

    /// The peer closed the stream in the middle of a frame.
    #[error("peer closed the stream in the middle of a frame ({buffered} bytes buffered)")]
    TruncatedFrame {
        /// How many bytes of the unfinished frame had arrived.
        buffered: usize,
    },

    /// A frame that the framing cannot accept (for example an adjusted length
    /// shorter than its own header, or a message ID out of the protocol's range).
    #[error("bad frame: {reason}")]
    BadFrame {
        /// What is wrong with it.
        reason: String,
    },

    /// The connection's send queue is full (the fail-fast send, Zinx's `SendBuffMsg`).
    #[error("the connection's send queue is full")]
    QueueFull,

    /// The connection is closed: nothing more can be sent on it.
    #[error("the connection is closed")]
    Closed,

    /// No live connection for the given connection ID or user.
    #[error("no live connection for that target")]
    NotConnected,

    /// A request got no reply in time.
    #[error("no reply within {0:?}")]
    Timeout(std::time::Duration),

    /// An I/O error from the socket or a file.
    #[error("I/O error: {0}")]
    Io(#[from] std::io::Error),

    /// A listener could not be opened: the address does not resolve, is in use,
    /// or is not this host's.
    #[error("cannot listen on {addr} ({keys}): {source}")]
    Listen {
        /// The address, as configured.
        addr: String,
        /// The config keys it comes from (e.g. `Host, TCPPort`).
        keys: &'static str,
        /// Why not.
        source: std::io::Error,
    },

    /// A configuration file could not be read.
    #[error("cannot read config file {}: {source}", path.display())]
    ConfigRead {
        /// The file that was being read.
        path: PathBuf,
        /// Why it could not be read.
        source: std::io::Error,
    },

    /// A configuration file (or string) is not valid zinx.json.
    #[error("invalid config {}: {message} at line {line}, column {column}", path.display())]
    ConfigParse {
        /// The file that was parsed (`<string>` when parsed from memory).
        path: PathBuf,
        /// Line of the error, 1-based.
        line: usize,
        /// Column of the error, 1-based.
        column: usize,
        /// What is wrong.
        message: String,
    },

    /// TLS could not be set up (a certificate or key file that cannot be read
    /// or used, no trusted roots) or a TLS handshake failed (the server's
    /// certificate is not trusted or does not name the host dialled, the peer
    /// does not speak TLS, the handshake took longer than `HandshakeTimeout`).
    #[error("TLS: {context}: {source}")]
    Tls {
        /// What failed: a file and the config key it comes from, or a
        /// handshake and its peer.
        context: String,
        /// Why.
        source: Box<dyn std::error::Error + Send + Sync>,
    },

    /// A WebSocket upgrade failed: refused by the server (`status`: 404 for a
    /// wrong path, 401 or what the auth hook chose, 503 or 429 at a connection
    /// limit), or the peer did not speak WebSocket.
    #[error("WebSocket: {context}: {source}")]
    WebSocket {
        /// What failed: the upgrade and its URL or peer.
        context: String,
        /// The HTTP status of a refused upgrade, on the client's side.
        status: Option<u16>,
        /// Why.
        source: Box<dyn std::error::Error + Send + Sync>,
    },

    /// A configuration value is out of range or names an unknown option.
    #[error("invalid config value for {key}: {message}")]
    ConfigValue {
        /// The configuration key.
        key: &'static str,
        /// What is wrong with it.
        message: String,
    },
}

impl Error {
    /// True for [`Error::Closed`].
    #[must_use]
    pub fn is_closed(&self) -> bool {
        matches!(self, Error::Closed)
    }

    /// True for [`Error::Timeout`].
    #[must_use]
    pub fn is_timeout(&self) -> bool {
        matches!(self, Error::Timeout(_))
    }

    /// True for [`Error::QueueFull`].
    #[must_use]
    pub fn is_queue_full(&self) -> bool {
        matches!(self, Error::QueueFull)
    }

    /// True for errors caused by a peer breaking the framing protocol
    /// ([`Error::FrameTooLarge`], [`Error::TruncatedFrame`], [`Error::BadFrame`]).
    #[must_use]
    pub fn is_protocol(&self) -> bool {
        matches!(
            self,
            Error::FrameTooLarge { .. } | Error::TruncatedFrame { .. } | Error::BadFrame { .. }
        )
    }

    /// True for [`Error::Tls`]: TLS could not be set up, or a handshake failed.
    #[must_use]
    pub fn is_tls(&self) -> bool {
        matches!(self, Error::Tls { .. })
    }

    /// A read source's error: an [`Error`] a transport wrapped in the
    /// `io::Error` (a peer breaking the WebSocket protocol, say) is that
    /// error again, anything else [`Error::Io`].
    pub(crate) fn from_read(e: std::io::Error) -> Error {
        e.downcast::<Error>().unwrap_or_else(Error::Io)
    }

    /// True for [`Error::WebSocket`]: an upgrade failed or was refused.
    #[must_use]
    pub fn is_websocket(&self) -> bool {
        matches!(self, Error::WebSocket { .. })
    }

    /// True for configuration errors (reading, parsing or validating).
    #[must_use]
    pub fn is_config(&self) -> bool {
        matches!(
            self,
            Error::ConfigRead { .. } | Error::ConfigParse { .. } | Error::ConfigValue { .. }
        )
    }
}

/// Shorthand for `std::result::Result<T, zinx::Error>`.
pub type Result<T, E = Error> = std::result::Result<T, E>;
