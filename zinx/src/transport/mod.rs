//! Transports: how a connection's bytes travel: TCP; TLS over TCP (feature
//! `tls`); WebSocket, ws or wss (feature `ws`).
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
#[cfg(feature = "tls")]
pub mod tls;
#[cfg(feature = "ws")]
pub mod ws;

use std::future::Future;
use std::io;
use std::net::SocketAddr;

use tokio::io::AsyncWrite;

use crate::config::Config;
use crate::engine::reader::ReadSource;
use crate::error::Error;

/// A listener the server accepts connections on. Made from a bound listener
/// (`tokio::net::TcpListener` converts into one; `Listener::tls` for TLS) or
/// by [`bind_listeners`] (which [`Server::serve`](crate::Server::serve) uses)
/// from the config.
#[non_exhaustive]
pub enum Listener {
    /// Plain TCP.
    Tcp(tokio::net::TcpListener),
    /// TLS over TCP (feature `tls`): each connection's handshake runs in its
    /// own task under `HandshakeTimeout`.
    #[cfg(feature = "tls")]
    Tls(tokio::net::TcpListener, tls::TlsServer),
    /// WebSocket over TCP, ws or wss (feature `ws`): each connection's upgrade
    /// (after its TLS handshake, for wss) runs in its own task under
    /// `HandshakeTimeout`.
    #[cfg(feature = "ws")]
    Ws(tokio::net::TcpListener, ws::WsServer),
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
            #[cfg(feature = "tls")]
            Listener::Tls(l, _) => l.local_addr(),
            #[cfg(feature = "ws")]
            Listener::Ws(l, _) => l.local_addr(),
        }
    }

    /// The transport's name, for logs.
    #[must_use]
    pub fn transport(&self) -> &'static str {
        match self {
            Listener::Tcp(_) => "tcp",
            #[cfg(feature = "tls")]
            Listener::Tls(..) => "tls",
            #[cfg(feature = "ws")]
            Listener::Ws(_, ws) if ws.is_tls() => "wss",
            #[cfg(feature = "ws")]
            Listener::Ws(..) => "ws",
        }
    }

    /// The path a WebSocket listener serves (`WsPath`); `None` for others.
    #[must_use]
    pub fn ws_path(&self) -> Option<&str> {
        match self {
            #[cfg(feature = "ws")]
            Listener::Ws(_, ws) => Some(ws.path()),
            _ => None,
        }
    }

    /// A listener speaking TLS on a bound TCP listener (feature `tls`).
    ///
    /// # Examples
    ///
    /// ```no_run
    /// use zinx::transport::Listener;
    /// use zinx::transport::tls::TlsServer;
    /// use zinx::{Config, Server};
    ///
    /// # async fn demo() -> Result<(), zinx::Error> {
    /// let tcp = tokio::net::TcpListener::bind("0.0.0.0:8443").await?;
    /// let listener = Listener::tls(tcp, TlsServer::from_pem_files("cert.pem", "key.pem")?);
    /// let server = Server::builder(Config::default()).build();
    /// server.run(listener, async { let _ = tokio::signal::ctrl_c().await; }).await
    /// # }
    /// ```
    #[cfg(feature = "tls")]
    #[must_use]
    pub fn tls(listener: tokio::net::TcpListener, tls: tls::TlsServer) -> Listener {
        Listener::Tls(listener, tls)
    }

    /// A listener speaking WebSocket (ws, or wss when `ws` has TLS) on a bound
    /// TCP listener (feature `ws`). See [`WsServer`](ws::WsServer).
    #[cfg(feature = "ws")]
    #[must_use]
    pub fn ws(listener: tokio::net::TcpListener, ws: ws::WsServer) -> Listener {
        Listener::Ws(listener, ws)
    }
}

/// The transports `Mode` asks for.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
struct Modes {
    tcp: bool,
    websocket: bool,
    kcp: bool,
}

impl Modes {
    /// Reads `Mode`: `"tcp"`, `"websocket"`, `"kcp"`, a comma list of them
    /// (any combination), or empty for TCP and WebSocket together, as Go Zinx
    /// has it. Names are read without regard to case or spaces around them.
    fn parse(mode: &str) -> Result<Modes, Error> {
        let mut modes = Modes::default();
        if mode.trim().is_empty() {
            modes.tcp = true;
            modes.websocket = true;
            return Ok(modes);
        }
        for name in mode.split(',').map(str::trim) {
            match name.to_ascii_lowercase().as_str() {
                "tcp" => modes.tcp = true,
                "websocket" => modes.websocket = true,
                "kcp" => modes.kcp = true,
                _ => {
                    return Err(Error::ConfigValue {
                        key: "Mode",
                        message: format!(
                            "unknown transport {name:?} in {mode:?}: \"tcp\", \"websocket\", \
                             \"kcp\", a comma list of them, or empty for tcp and websocket"
                        ),
                    });
                }
            }
        }
        Ok(modes)
    }
}

/// Binds the listeners the config asks for, by `Mode` (`"tcp"` by default;
/// `"websocket"`, `"kcp"`, a comma list such as `"tcp,websocket"`, or empty
/// for TCP and WebSocket together, as Go Zinx has it):
///
/// - TCP on `Host:TCPPort` (see [`bind_tcp`](tcp::bind_tcp)), speaking TLS
///   when `CertFile` and `PrivateKeyFile` are both set, as in Go Zinx
///   (feature `tls`);
/// - WebSocket on `Host:WsPort` at `WsPath` (feature `ws`), speaking wss
///   when the certificate is set.
///
/// The certificate and key are read before anything is bound.
///
/// # Errors
///
/// [`Error::ConfigValue`] when `Mode` names an unknown transport or one this
/// build cannot serve (its cargo feature is off), when only one of
/// `CertFile` and `PrivateKeyFile` is set, or either is set and zinx was
/// built without the `tls` feature (never plain TCP instead); [`Error::Tls`]
/// naming the file and its key when the certificate or key cannot be read or
/// used; [`Error::Listen`] when an address cannot be bound.
pub async fn bind_listeners(config: &Config) -> Result<Vec<Listener>, Error> {
    let modes = Modes::parse(&config.mode)?;
    if modes.websocket && !cfg!(feature = "ws") {
        return Err(missing_feature("websocket", "ws"));
    }
    if modes.kcp {
        return Err(missing_feature("kcp", "kcp"));
    }
    let (cert, key) = (&config.cert_file, &config.private_key_file);
    let tls = match (cert.is_empty(), key.is_empty()) {
        (true, true) => None,
        (false, true) => {
            return Err(Error::ConfigValue {
                key: "PrivateKeyFile",
                message: format!("empty, but CertFile is set ({cert:?}): TLS needs both"),
            });
        }
        (true, false) => {
            return Err(Error::ConfigValue {
                key: "CertFile",
                message: format!("empty, but PrivateKeyFile is set ({key:?}): TLS needs both"),
            });
        }
        (false, false) => Some(tls_server(config)?),
    };
    let mut listeners = Vec::new();
    if modes.tcp {
        let tcp = tcp::bind_tcp(config).await?;
        // Without `tls`, `tls` is an `Option` of nothing, which is `Copy`.
        #[cfg_attr(not(feature = "tls"), allow(clippy::clone_on_copy))]
        listeners.push(match tls.clone() {
            None => Listener::Tcp(tcp),
            #[cfg(feature = "tls")]
            Some(tls) => Listener::Tls(tcp, tls),
            #[cfg(not(feature = "tls"))]
            Some(never) => match never {},
        });
    }
    #[cfg(feature = "ws")]
    if modes.websocket {
        let addr = config.addr(config.ws_port);
        let tcp = tcp::bind(&addr, config.listen_backlog, "Host, WsPort").await?;
        let ws = ws::WsServer::new(config.ws_path.as_str());
        listeners.push(Listener::Ws(
            tcp,
            match tls {
                None => ws,
                #[cfg(feature = "tls")]
                Some(tls) => ws.tls(tls),
                #[cfg(not(feature = "tls"))]
                Some(never) => match never {},
            },
        ));
    }
    Ok(listeners)
}

/// `Mode` names a transport whose cargo feature is off.
fn missing_feature(mode: &str, feature: &str) -> Error {
    Error::ConfigValue {
        key: "Mode",
        message: format!(
            "names {mode:?}, but zinx was built without its `{feature}` feature: enable it to \
             serve {mode}"
        ),
    }
}

/// The config's certificate and key.
#[cfg(feature = "tls")]
fn tls_server(config: &Config) -> Result<tls::TlsServer, Error> {
    tls::TlsServer::from_pem_files(&config.cert_file, &config.private_key_file)
}

/// Without the `tls` feature, certificate files are an error: serving plain
/// TCP where the config asks for TLS would expose what it meant to protect.
#[cfg(not(feature = "tls"))]
fn tls_server(_: &Config) -> Result<std::convert::Infallible, Error> {
    Err(Error::ConfigValue {
        key: "CertFile",
        message: "set, but zinx was built without its `tls` feature: enable it to serve TLS"
            .to_owned(),
    })
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

/// A refusal in progress: answering a connection the server cannot admit.
pub(crate) type Refusal = std::pin::Pin<Box<dyn Future<Output = ()> + Send>>;

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

    /// Answers a connection the server does not admit (`limit` is full) when
    /// the transport can say why (WebSocket: an HTTP status, so a browser
    /// learns why); `None`, the default, closes it. The refusal is run bounded
    /// in time and in how many run at once.
    fn refuse(&self, raw: Raw, limit: crate::faults::Fault) -> Option<Refusal> {
        let _ = (raw, limit);
        None
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

#[cfg(test)]
mod tests {
    use super::*;

    fn with(cert: &str, key: &str) -> Config {
        Config {
            host: "127.0.0.1".into(),
            tcp_port: 0,
            cert_file: cert.into(),
            private_key_file: key.into(),
            ..Config::default()
        }
    }

    async fn refusal(config: Config) -> String {
        match bind_listeners(&config).await {
            Ok(listeners) => panic!("bound {listeners:?}"),
            Err(e) => format!("{e}"),
        }
    }

    #[tokio::test]
    async fn certificate_keys_are_never_ignored() {
        let text = refusal(with("cert.pem", "")).await;
        assert!(
            text.contains("PrivateKeyFile") && text.contains("needs both"),
            "{text}"
        );
        let text = refusal(with("", "key.pem")).await;
        assert!(
            text.contains("CertFile") && text.contains("needs both"),
            "{text}"
        );
        // Both set: TLS, or an error saying why not, never plain TCP.
        let text = refusal(with("/nonexistent/cert.pem", "/nonexistent/key.pem")).await;
        #[cfg(feature = "tls")]
        assert!(text.contains("cannot read CertFile"), "{text}");
        #[cfg(not(feature = "tls"))]
        assert!(text.contains("without its `tls` feature"), "{text}");
    }
}
