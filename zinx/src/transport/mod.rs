//! Transports: how a connection's bytes travel (TCP only today; a TLS or
//! WebSocket transport adds an open step, KCP a listener of its own).
//!
//! A transport is a **listener**, which accepts raw connections and their peer
//! addresses, and an **open step**, which turns a raw connection into the read
//! source and write sink the engine runs (a TLS handshake, a WebSocket upgrade;
//! nothing for TCP). The server's accept loop only accepts and admits
//! (`MaxConn`, `MaxConnPerIP`); the open step may await, so it runs in the
//! connection's own task, after admission, under `HandshakeTimeout`: a peer that
//! never finishes its handshake holds one slot for at most that long and never
//! stalls the accept loop or anyone else. An open step that needs no waiting
//! (TCP) is done by the accept loop at once, so a TCP connection's task is
//! exactly the engine's.
//!
//! The client side is a **connector**: it dials and opens in one step.

pub mod tcp;

use std::future::Future;
use std::io;
use std::net::SocketAddr;

use tokio::io::AsyncWrite;

use crate::engine::reader::ReadSource;
use crate::error::Error;

/// A listener the server accepts connections on. Made from a bound listener
/// (`tokio::net::TcpListener` converts into one) or by
/// [`Server::serve`](crate::Server::serve) from the config.
#[non_exhaustive]
pub enum Listener {
    /// Plain TCP.
    Tcp(tokio::net::TcpListener),
}

impl Listener {
    /// The address it listens on.
    ///
    /// # Errors
    ///
    /// What the socket reports.
    pub fn local_addr(&self) -> io::Result<SocketAddr> {
        match self {
            Listener::Tcp(l) => l.local_addr(),
        }
    }

    /// The transport's name, for logs.
    #[must_use]
    pub fn transport(&self) -> &'static str {
        match self {
            Listener::Tcp(_) => "tcp",
        }
    }
}

impl From<tokio::net::TcpListener> for Listener {
    fn from(listener: tokio::net::TcpListener) -> Self {
        Listener::Tcp(listener)
    }
}

impl std::fmt::Debug for Listener {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Listener")
            .field("transport", &self.transport())
            .field("addr", &self.local_addr().ok())
            .finish()
    }
}

/// A connection ready for the engine: its two halves and its local address.
pub(crate) struct Opened<R, W> {
    pub(crate) read: R,
    pub(crate) write: W,
    pub(crate) local: SocketAddr,
}

/// What [`Open::open_now`] did.
pub(crate) enum OpenNow<R, W, Raw> {
    /// Opened: ready for the engine.
    Opened(Opened<R, W>),
    /// The connection failed while being opened.
    Failed(io::Error),
    /// It needs [`Open::open`], in the connection's own task.
    Later(Raw),
}

/// Accepts raw connections.
pub(crate) trait Accept: Send + 'static {
    /// A connection as accepted, before its open step.
    type Raw: Send + 'static;

    /// The next connection and its peer's address. Cancel-safe: a connection
    /// is not lost if the future is dropped.
    fn accept(&mut self) -> impl Future<Output = io::Result<(Self::Raw, SocketAddr)>> + Send;
}

/// The open step of a transport.
pub(crate) trait Open<Raw>: Send + Sync + 'static {
    type Read: ReadSource;
    type Write: AsyncWrite + Unpin + Send + 'static;

    /// Opens at once when there is nothing to wait for (TCP); otherwise hands
    /// the connection back for [`open`](Self::open).
    fn open_now(&self, raw: Raw) -> OpenNow<Self::Read, Self::Write, Raw> {
        OpenNow::Later(raw)
    }

    /// Opens `raw` (handshake, upgrade). Run under the handshake timeout.
    fn open(
        &self,
        raw: Raw,
        peer: SocketAddr,
    ) -> impl Future<Output = Result<Opened<Self::Read, Self::Write>, Error>> + Send;
}

/// A connection the client dialled, ready for the engine.
pub(crate) struct Dialled<R, W> {
    pub(crate) opened: Opened<R, W>,
    pub(crate) peer: SocketAddr,
}

/// Dials a server and opens the connection (the client's side of a transport).
pub(crate) trait Connect: Send + Sync + 'static {
    type Read: ReadSource;
    type Write: AsyncWrite + Unpin + Send + 'static;

    /// Where it dials, for logs.
    fn target(&self) -> &str;

    /// Dials and opens one connection.
    fn connect(
        &self,
    ) -> impl Future<Output = Result<Dialled<Self::Read, Self::Write>, Error>> + Send;
}
