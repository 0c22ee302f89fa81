//! WebSocket (feature `ws`): Zinx frames over WebSocket messages, as Go Zinx
//! carries them, on a [`Listener::ws`](crate::transport::Listener::ws) with a
//! [`WsServer`]'s settings (or from the config's `Mode`, `WsPort` and
//! `WsPath`), and from a client with
//! [`ClientBuilder::ws`](crate::ClientBuilder::ws).
//!
//! Inbound, every binary (or text) message is bytes of one stream for the
//! server's framing: a frame may span messages and a message may hold several
//! frames. Outbound, every frame is one binary message: the bytes the
//! connection's writer writes are cut at frame boundaries, which the framing
//! tells ([`Framing::frame_len`](crate::Framing::frame_len)); with
//! [`WsServer::pack`], a writer's whole batch goes as one message instead.
//! tungstenite does the rest of the protocol: pings answered, the close
//! handshake, masking, and the message and frame size limits, which the open
//! step derives from `MaxPacketSize` so a peer cannot make the server buffer a
//! huge message.
//!
//! The upgrade runs in the connection's own task within `HandshakeTimeout`
//! (after the TLS handshake, for wss). It is refused with an HTTP status: 404
//! on another path, 503 at `MaxConn`, 429 over `MaxConnPerIP`, or what the
//! auth hook ([`WsServer::auth`], [`ServerBuilder::ws_auth`]) answers.
//!
//! [`ServerBuilder::ws_auth`]: crate::ServerBuilder::ws_auth

use std::io;
use std::pin::Pin;
use std::task::{Context, Poll, ready};

use bytes::{Buf, Bytes, BytesMut};
use futures_util::stream::{SplitSink, SplitStream};
use futures_util::{Sink, Stream, StreamExt};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio_tungstenite::WebSocketStream;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::handshake::server::{ErrorResponse, Request, Response};
use tokio_tungstenite::tungstenite::http;
use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;

use std::net::SocketAddr;

use tokio::net::TcpStream;

use crate::engine::reader::ReadSource;
use crate::faults::Fault;
use crate::transport::{Open, Opened, Refusal, tcp};

/// Finds the length of the first frame in encoded bytes (see
/// [`Framing::frame_len`](crate::Framing::frame_len)).
pub(crate) type FrameLen = std::sync::Arc<dyn Fn(&[u8]) -> Option<usize> + Send + Sync>;

/// What either end of a WebSocket connection needs of its framing: where a
/// frame ends, and the size limits its `max_data_len` sets.
pub(crate) fn for_framing<F: crate::Framing>(framing: &F) -> (FrameLen, WebSocketConfig) {
    let framing = framing.clone();
    let config = config(framing.max_data_len());
    let frame_len: FrameLen = std::sync::Arc::new(move |encoded: &[u8]| framing.frame_len(encoded));
    (frame_len, config)
}

/// How much tungstenite reads from the socket at a time; its read buffer
/// starts this large (tungstenite's default, 128 KiB, would be what an idle
/// connection costs).
const READ_BUFFER: usize = 8 * 1024;

/// How much tungstenite gathers before writing to the socket (the writer
/// flushes after each batch, so this only joins a batch's messages).
const WRITE_BUFFER: usize = 64 * 1024;

/// The message size limit for a framing without a limit of its own
/// (`MaxPacketSize` 0).
const DEFAULT_LIMIT: usize = 16 << 20;

/// The message and frame size limits for a framing whose frames carry at
/// most `max_data` bytes (`None`: no limit of the framing's, then 16 MiB):
/// one frame plus room for a header, at least 64 KiB, so one message never
/// costs more than about a frame. The read buffer starts small, and the
/// write buffer is bounded too (tungstenite's default is unbounded).
pub(crate) fn config(max_data: Option<usize>) -> WebSocketConfig {
    let limit = max_data.map_or(DEFAULT_LIMIT, |max| max.saturating_add(64).max(64 * 1024));
    WebSocketConfig::default()
        .read_buffer_size(READ_BUFFER)
        .write_buffer_size(WRITE_BUFFER)
        .max_write_buffer_size(WRITE_BUFFER + 2 * limit)
        .max_message_size(Some(limit))
        .max_frame_size(Some(limit))
}

/// Splits an upgraded connection into the engine's read source and write sink.
pub(crate) fn split<S>(
    ws: WebSocketStream<S>,
    frame_len: FrameLen,
    pack: bool,
) -> (WsRead<S>, WsWrite<S>)
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    let max_message = ws
        .get_config()
        .max_message_size
        .unwrap_or(DEFAULT_LIMIT)
        .max(1);
    let (sink, stream) = ws.split();
    (
        WsRead {
            stream,
            pending: Bytes::new(),
            request: None,
        },
        WsWrite {
            sink,
            buf: BytesMut::new(),
            frame_len,
            pack,
            max_message,
            closed: false,
        },
    )
}

/// What an upgrade request showed: the auth hook sees it, and it is then a
/// property of the connection (`conn.property::<WsRequest>()`, in
/// `on_connect` and every handler), so the path, a token in the query or a
/// header can pick the user or the room.
#[derive(Debug, Clone)]
pub struct WsRequest {
    /// The request's path (`WsPath` matched already).
    pub path: String,
    /// The query string, if any (`token=...`).
    pub query: Option<String>,
    /// The request's headers.
    pub headers: http::HeaderMap,
    /// The peer's address.
    pub peer: std::net::SocketAddr,
}

/// Decides whether an upgrade may go ahead: `Err(status)` refuses it with that
/// HTTP status (401, 403, ...; a status outside 400 to 599 is sent as 403). A
/// hook that panics refuses with 500. It runs inside the upgrade, so it must
/// not block: an asynchronous check (a database, another service) belongs in
/// `on_connect` or the first message's handler, which read the request as the
/// connection's [`WsRequest`] property.
pub type WsAuth = std::sync::Arc<dyn Fn(&WsRequest) -> Result<(), u16> + Send + Sync>;

/// Whether a request for `path` is served at `pattern` (`WsPath`), as Go's
/// HTTP mux decides it for Go Zinx: a pattern ending in `/` takes every path
/// under it (so `/`, the default, takes every path), any other pattern only
/// itself.
fn path_matches(pattern: &str, path: &str) -> bool {
    if pattern.ends_with('/') {
        path.starts_with(pattern)
    } else {
        path == pattern
    }
}

/// A WebSocket listener's settings (feature `ws`): the path it serves, an
/// auth hook, whether a batch of frames may go as one message, and TLS (wss).
///
/// # Examples
///
/// ```no_run
/// use zinx::transport::Listener;
/// use zinx::transport::ws::WsServer;
/// use zinx::{Config, Server};
///
/// # async fn demo() -> Result<(), zinx::Error> {
/// let tcp = tokio::net::TcpListener::bind("0.0.0.0:9000").await?;
/// let ws = WsServer::new("/game").auth(|req| match req.query.as_deref() {
///     Some(q) if q.starts_with("token=") => Ok(()),
///     _ => Err(401),
/// });
/// let server = Server::builder(Config::default()).build();
/// server.run(Listener::ws(tcp, ws), async { let _ = tokio::signal::ctrl_c().await; }).await
/// # }
/// ```
#[derive(Clone)]
pub struct WsServer {
    path: String,
    auth: Option<WsAuth>,
    pack: bool,
    #[cfg(feature = "tls")]
    tls: Option<crate::transport::tls::TlsServer>,
}

impl WsServer {
    /// Serves upgrades on `path` (`WsPath`; a path ending in `/` takes every
    /// path under it, as Go's HTTP mux does, so `/` takes all); any other path
    /// is refused with 404. A path without its leading `/` gets one.
    #[must_use]
    pub fn new(path: impl Into<String>) -> WsServer {
        let mut path = path.into();
        if !path.starts_with('/') {
            path.insert(0, '/');
        }
        WsServer {
            path,
            auth: None,
            pack: false,
            #[cfg(feature = "tls")]
            tls: None,
        }
    }

    /// Asks `auth` before each upgrade (Go Zinx's `SetWebsocketAuth`): it sees
    /// the request's path, query, headers and the peer's address, and
    /// `Err(status)` refuses the upgrade with that HTTP status (401, 403...).
    /// It runs in the connection's task, within `HandshakeTimeout`; it should
    /// not block.
    #[must_use]
    pub fn auth(
        mut self,
        auth: impl Fn(&WsRequest) -> Result<(), u16> + Send + Sync + 'static,
    ) -> WsServer {
        self.auth = Some(std::sync::Arc::new(auth));
        self
    }

    /// Sends what the writer has at once as one binary message, instead of
    /// one message per frame (Go Zinx's way, the default). Fewer messages
    /// under load; the peer must read a message as a byte stream (as
    /// `zinx.js` and Go Zinx do).
    #[must_use]
    pub fn pack(mut self, pack: bool) -> WsServer {
        self.pack = pack;
        self
    }

    /// Speaks wss: the TLS handshake, then the upgrade, both within
    /// `HandshakeTimeout` (feature `tls`).
    #[cfg(feature = "tls")]
    #[must_use]
    pub fn tls(mut self, tls: crate::transport::tls::TlsServer) -> WsServer {
        self.tls = Some(tls);
        self
    }

    /// The path it serves.
    #[must_use]
    pub fn path(&self) -> &str {
        &self.path
    }

    /// Whether it speaks wss.
    #[must_use]
    pub fn is_tls(&self) -> bool {
        #[cfg(feature = "tls")]
        return self.tls.is_some();
        #[cfg(not(feature = "tls"))]
        false
    }

    /// Takes `auth` (the server's hook) unless it has a hook of its own.
    pub(crate) fn default_auth(&mut self, auth: Option<&WsAuth>) {
        if self.auth.is_none() {
            self.auth = auth.cloned();
        }
    }

    /// The open step for connections of `framing` (TLS, if set, is taken
    /// apart with [`take_tls`](Self::take_tls)).
    pub(crate) fn into_open<F: crate::Framing>(self, framing: &F) -> WsOpen {
        let (frame_len, config) = for_framing(framing);
        WsOpen {
            path: self.path,
            config,
            frame_len,
            pack: self.pack,
            auth: self.auth,
        }
    }

    #[cfg(feature = "tls")]
    pub(crate) fn take_tls(&mut self) -> Option<crate::transport::tls::TlsServer> {
        self.tls.take()
    }
}

impl std::fmt::Debug for WsServer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("WsServer")
            .field("path", &self.path)
            .field("auth", &self.auth.is_some())
            .field("pack", &self.pack)
            .field("tls", &self.is_tls())
            .finish()
    }
}

/// The HTTP status an upgrade the server cannot admit gets: 503 at `MaxConn`,
/// 429 over `MaxConnPerIP`.
fn refusal_status(limit: Fault) -> u16 {
    match limit {
        Fault::MaxConnPerIp => 429,
        _ => 503,
    }
}

impl Open<TcpStream> for WsOpen {
    type Read = WsRead<TcpStream>;
    type Write = WsWrite<TcpStream>;

    async fn open(
        &self,
        raw: TcpStream,
        peer: SocketAddr,
    ) -> Result<Opened<Self::Read, Self::Write>, crate::Error> {
        let local = tcp::prepare(&raw)?;
        self.upgrade(raw, peer, local).await
    }

    fn refuse(&self, raw: TcpStream, limit: Fault) -> Option<Refusal> {
        Some(Box::pin(refuse(raw, refusal_status(limit))))
    }
}

/// The open step for wss: the TLS handshake, then the upgrade.
#[cfg(feature = "tls")]
pub(crate) struct WssOpen {
    pub(crate) tls: crate::transport::tls::TlsServer,
    pub(crate) ws: WsOpen,
}

#[cfg(feature = "tls")]
type ServerStream = crate::transport::tls::ServerStream;

#[cfg(feature = "tls")]
impl Open<TcpStream> for WssOpen {
    type Read = WsRead<ServerStream>;
    type Write = WsWrite<ServerStream>;

    async fn open(
        &self,
        raw: TcpStream,
        peer: SocketAddr,
    ) -> Result<Opened<Self::Read, Self::Write>, crate::Error> {
        let local = tcp::prepare(&raw)?;
        let stream = self.tls.accept(raw).await?;
        self.ws.upgrade(stream, peer, local).await
    }

    fn refuse(&self, raw: TcpStream, limit: Fault) -> Option<Refusal> {
        let tls = self.tls.clone();
        Some(Box::pin(async move {
            // The refusal's whole time bound: the handshake's share of it.
            let handshake = tokio::time::timeout(REFUSAL_TIME, tls.accept(raw));
            if let Ok(Ok(stream)) = handshake.await {
                refuse(stream, refusal_status(limit)).await;
            }
        }))
    }
}

/// How long refusing a connection may take, in each of its steps.
const REFUSAL_TIME: std::time::Duration = std::time::Duration::from_secs(2);

/// The server's open step for WebSocket over a plain stream: the upgrade, on
/// `path` only (anything else is refused with 404), after the auth hook.
pub(crate) struct WsOpen {
    pub(crate) path: String,
    pub(crate) config: WebSocketConfig,
    pub(crate) frame_len: FrameLen,
    pub(crate) pack: bool,
    pub(crate) auth: Option<WsAuth>,
}

impl WsOpen {
    /// Upgrades `stream` from `peer`.
    pub(crate) async fn upgrade<S>(
        &self,
        stream: S,
        peer: SocketAddr,
        local: SocketAddr,
    ) -> Result<Opened<WsRead<S>, WsWrite<S>>, crate::Error>
    where
        S: AsyncRead + AsyncWrite + Unpin,
    {
        let mut request = None;
        let check = |req: &Request, resp: Response| -> Result<Response, ErrorResponse> {
            if !path_matches(&self.path, req.uri().path()) {
                return Err(refusal(404));
            }
            let seen = WsRequest {
                path: req.uri().path().to_owned(),
                query: req.uri().query().map(str::to_owned),
                headers: req.headers().clone(),
                peer,
            };
            if let Some(auth) = &self.auth {
                let asked = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| auth(&seen)));
                match asked {
                    Ok(Ok(())) => {}
                    Ok(Err(status)) => return Err(refusal(refusal_code(status))),
                    Err(_) => {
                        tracing::error!(%peer, "the WebSocket auth hook panicked; refused with 500");
                        return Err(refusal(500));
                    }
                }
            }
            request = Some(seen);
            Ok(resp)
        };
        let ws = tokio_tungstenite::accept_hdr_async_with_config(stream, check, Some(self.config))
            .await
            .map_err(|e| ws_error("upgrade failed", e))?;
        let (mut read, write) = split(ws, self.frame_len.clone(), self.pack);
        read.request = request;
        Ok(Opened { read, write, local })
    }
}

/// An HTTP refusal of an upgrade.
fn refusal(status: u16) -> ErrorResponse {
    let mut refusal = ErrorResponse::new(None);
    *refusal.status_mut() =
        http::StatusCode::from_u16(status).unwrap_or(http::StatusCode::FORBIDDEN);
    refusal
}

/// The status an auth hook's refusal is sent with: its own if it is a
/// client or server error (400 to 599), else 403 (a status like 101 or 200
/// would not read as a refusal).
fn refusal_code(status: u16) -> u16 {
    if (400..=599).contains(&status) {
        status
    } else {
        403
    }
}

/// Refuses an upgrade request with an HTTP status (503 when the server is at
/// `MaxConn`, 429 over `MaxConnPerIP`): a browser then sees why, where a dropped
/// connection would only be a network error. The request head is read first
/// (at most 8 KiB, within 2 s), so closing does not reset the connection under
/// the response. Never upgraded, so it costs no connection slot.
pub(crate) async fn refuse<S: AsyncRead + AsyncWrite + Unpin>(mut stream: S, status: u16) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let reason = http::StatusCode::from_u16(status)
        .ok()
        .and_then(|s| s.canonical_reason())
        .unwrap_or("Refused");
    let exchange = async {
        let mut head = Vec::with_capacity(1024);
        let mut chunk = [0u8; 1024];
        // Only the new bytes (and the three before them) are searched for the
        // head's end, so a peer sending a byte at a time costs no more.
        let mut searched = 0;
        while head.len() < 8 * 1024 {
            let n = stream.read(&mut chunk).await?;
            if n == 0 {
                break;
            }
            head.extend_from_slice(&chunk[..n]);
            if head[searched..].windows(4).any(|w| w == b"\r\n\r\n") {
                break;
            }
            searched = head.len().saturating_sub(3);
        }
        let response =
            format!("HTTP/1.1 {status} {reason}\r\nContent-Length: 0\r\nConnection: close\r\n\r\n");
        stream.write_all(response.as_bytes()).await?;
        stream.shutdown().await
    };
    let _ = tokio::time::timeout(REFUSAL_TIME, exchange).await;
}

/// Dials a WebSocket server (`ws://host:port/path`) over TCP: the client's
/// side of the transport, with the same byte-stream halves.
pub(crate) struct WsConnector {
    /// `host:port`, dialled over TCP.
    pub(crate) addr: String,
    /// The URL asked for in the upgrade (`ws://host:port/path`).
    pub(crate) url: String,
    pub(crate) config: WebSocketConfig,
    pub(crate) frame_len: FrameLen,
    pub(crate) pack: bool,
    /// How long the upgrade may take (`HandshakeTimeout`).
    pub(crate) handshake: std::time::Duration,
}

impl crate::transport::Connect for WsConnector {
    type Read = WsRead<tokio::net::TcpStream>;
    type Write = WsWrite<tokio::net::TcpStream>;

    fn target(&self) -> &str {
        &self.url
    }

    async fn connect(
        &self,
    ) -> Result<crate::transport::Dialled<Self::Read, Self::Write>, crate::Error> {
        let (stream, peer, local) = tcp::dial(&self.addr).await?;
        self.upgrade(stream, peer, local).await
    }
}

impl WsConnector {
    /// Upgrades a dialled stream.
    async fn upgrade<S: AsyncRead + AsyncWrite + Unpin>(
        &self,
        stream: S,
        peer: SocketAddr,
        local: SocketAddr,
    ) -> Result<crate::transport::Dialled<WsRead<S>, WsWrite<S>>, crate::Error> {
        let upgrade = tokio_tungstenite::client_async_with_config(
            self.url.as_str(),
            stream,
            Some(self.config),
        );
        let context = || format!("upgrade at {}", self.url);
        let (ws, _) = match tokio::time::timeout(self.handshake, upgrade).await {
            Ok(upgraded) => upgraded.map_err(|e| ws_error(context(), e))?,
            Err(_) => {
                return Err(crate::Error::WebSocket {
                    context: context(),
                    status: None,
                    source: format!("not done within {:?} (HandshakeTimeout)", self.handshake)
                        .into(),
                });
            }
        };
        let (read, write) = split(ws, self.frame_len.clone(), self.pack);
        Ok(crate::transport::Dialled {
            opened: crate::transport::Opened { read, write, local },
            peer,
        })
    }
}

/// Dials a wss server: TLS, then the upgrade.
#[cfg(feature = "tls")]
pub(crate) struct WssConnector {
    pub(crate) tls: crate::transport::tls::TlsConnector,
    pub(crate) ws: WsConnector,
}

#[cfg(feature = "tls")]
type ClientStream = crate::transport::tls::ClientStream;

#[cfg(feature = "tls")]
impl crate::transport::Connect for WssConnector {
    type Read = WsRead<ClientStream>;
    type Write = WsWrite<ClientStream>;

    fn target(&self) -> &str {
        &self.ws.url
    }

    async fn connect(
        &self,
    ) -> Result<crate::transport::Dialled<Self::Read, Self::Write>, crate::Error> {
        let (stream, peer, local) = self.tls.dial().await?;
        self.ws.upgrade(stream, peer, local).await
    }
}

/// The read half: WebSocket messages as one byte stream.
pub(crate) struct WsRead<S> {
    stream: SplitStream<WebSocketStream<S>>,
    /// What is left of the last message.
    pending: Bytes,
    /// The upgrade request (server side), kept as a property of the
    /// connection when it is set up.
    request: Option<WsRequest>,
}

/// A WebSocket read error as the engine sees it: the peer's close or a lost
/// connection as the end or the socket's error, a broken protocol or a message
/// over the limit as a protocol error of the peer's (counted as such).
fn read_error(e: tokio_tungstenite::tungstenite::Error) -> Option<io::Error> {
    use tokio_tungstenite::tungstenite::Error as WsError;
    match e {
        WsError::ConnectionClosed | WsError::AlreadyClosed => None,
        WsError::Io(e) => Some(e),
        e @ (WsError::Capacity(_) | WsError::Protocol(_) | WsError::Utf8(_)) => {
            let reason = format!("WebSocket: {e}");
            Some(io::Error::new(
                io::ErrorKind::InvalidData,
                crate::Error::BadFrame { reason },
            ))
        }
        e => Some(io::Error::other(e)),
    }
}

impl<S: AsyncRead + AsyncWrite + Unpin> AsyncRead for WsRead<S> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        loop {
            if !self.pending.is_empty() {
                let n = self.pending.len().min(buf.remaining());
                buf.put_slice(&self.pending[..n]);
                self.pending.advance(n);
                return Poll::Ready(Ok(()));
            }
            match ready!(Pin::new(&mut self.stream).poll_next(cx)) {
                // The end of the stream, or the peer's close: the end of the bytes.
                None | Some(Ok(Message::Close(_))) => return Poll::Ready(Ok(())),
                Some(Ok(Message::Binary(data))) => self.pending = data,
                Some(Ok(Message::Text(text))) => self.pending = Bytes::from(text),
                // Pings are answered by tungstenite; pongs and raw frames carry
                // no data.
                Some(Ok(_)) => {}
                Some(Err(e)) => {
                    return Poll::Ready(read_error(e).map_or(Ok(()), Err));
                }
            }
        }
    }
}

impl<S: AsyncRead + AsyncWrite + Unpin + Send + 'static> ReadSource for WsRead<S> {
    fn opened(&mut self, conn: &crate::Connection) {
        if let Some(request) = self.request.take() {
            conn.insert_property(request);
        }
    }
}

/// The write half: the writer's bytes, one binary message per frame.
pub(crate) struct WsWrite<S> {
    sink: SplitSink<WebSocketStream<S>, Message>,
    /// Bytes written and not yet sent as a message (at most the writer's
    /// batch: it is written and flushed before the next).
    buf: BytesMut,
    frame_len: FrameLen,
    /// One message per write instead of one per frame.
    pack: bool,
    /// The largest message to send (the peer's limit, if it is a zinx peer
    /// with the same config): a longer frame, or batch, goes in pieces.
    max_message: usize,
    /// The peer closed: what is written is dropped, as a socket's peer that
    /// has gone away drops it, and the flush sends the close's reply.
    closed: bool,
}

/// Whether a write error means the peer's close (tungstenite then refuses
/// to send more, and has the close's reply queued).
fn peer_closed(e: &tokio_tungstenite::tungstenite::Error) -> bool {
    use tokio_tungstenite::tungstenite::Error as WsError;
    use tokio_tungstenite::tungstenite::error::ProtocolError;
    matches!(
        e,
        WsError::ConnectionClosed
            | WsError::AlreadyClosed
            | WsError::Protocol(ProtocolError::SendAfterClosing)
    )
}

impl<S: AsyncRead + AsyncWrite + Unpin> WsWrite<S> {
    /// The length of the next message to send from `buf`, once it holds it
    /// whole: a frame (where the framing tells its length; else what there
    /// is), or all of it with `pack`, and never more than `max_message`.
    fn next_message(&self) -> io::Result<Option<usize>> {
        if self.buf.is_empty() {
            return Ok(None);
        }
        let len = if self.pack {
            Some(self.buf.len())
        } else {
            (self.frame_len)(&self.buf)
        };
        match len {
            Some(0) => Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                "the framing found a frame of length 0",
            )),
            // A frame too long for one message goes in pieces of the
            // largest size, each sent once it is all there.
            Some(len) => {
                let len = len.min(self.max_message);
                Ok((len <= self.buf.len()).then_some(len))
            }
            None => Ok(None),
        }
    }

    /// Sends every whole frame in `buf` as a message of its own.
    fn poll_send_frames(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        while let Some(len) = self.next_message()? {
            if self.closed {
                self.buf.clear();
                break;
            }
            match ready!(Pin::new(&mut self.sink).poll_ready(cx)) {
                Err(e) if peer_closed(&e) => self.closed = true,
                Err(e) => return Poll::Ready(Err(to_io(e))),
                Ok(()) => {
                    let frame = self.buf.split_to(len).freeze();
                    match Pin::new(&mut self.sink).start_send(Message::Binary(frame)) {
                        Err(e) if peer_closed(&e) => self.closed = true,
                        Err(e) => return Poll::Ready(Err(to_io(e))),
                        Ok(()) => {}
                    }
                }
            }
        }
        Poll::Ready(Ok(()))
    }

    /// Takes `data` (after sending what the last write left), then sends as
    /// far as the sink takes it.
    fn poll_take(
        &mut self,
        cx: &mut Context<'_>,
        data: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        // What the last write left is sent first: the sink's readiness is the
        // backpressure.
        ready!(self.poll_send_frames(cx))?;
        let mut taken = 0;
        for slice in data {
            self.buf.extend_from_slice(slice);
            taken += slice.len();
        }
        // The rest goes on the next call or the flush.
        let _ = self.poll_send_frames(cx)?;
        Poll::Ready(Ok(taken))
    }
}

impl<S: AsyncRead + AsyncWrite + Unpin> AsyncWrite for WsWrite<S> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        data: &[u8],
    ) -> Poll<io::Result<usize>> {
        self.get_mut().poll_take(cx, &[io::IoSlice::new(data)])
    }

    /// A header and its data written apart (the writer does so for large
    /// data) are taken together, so that `pack` sends them as one message.
    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        data: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        self.get_mut().poll_take(cx, data)
    }

    fn is_write_vectored(&self) -> bool {
        true
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        ready!(self.poll_send_frames(cx))?;
        // After the peer's close, this sends the close's reply.
        Pin::new(&mut self.sink).poll_flush(cx).map_err(to_io)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        ready!(self.as_mut().poll_flush(cx))?;
        // Sends the close frame (or, after the peer's, nothing more); the
        // connection then ends without waiting for the peer's reply.
        Pin::new(&mut self.sink).poll_close(cx).map_err(to_io)
    }
}

/// An upgrade's error, with the HTTP status of a refusal.
fn ws_error(context: impl Into<String>, e: tokio_tungstenite::tungstenite::Error) -> crate::Error {
    let status = match &e {
        tokio_tungstenite::tungstenite::Error::Http(response) => Some(response.status().as_u16()),
        _ => None,
    };
    crate::Error::WebSocket {
        context: context.into(),
        status,
        source: Box::new(e),
    }
}

fn to_io(e: tokio_tungstenite::tungstenite::Error) -> io::Error {
    io::Error::other(e)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use std::sync::Arc;

    use futures_util::SinkExt;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    use super::*;
    use crate::codec::{Codec, Layout};
    use crate::framing::Framing;
    use crate::message::MsgId;

    /// A server-side stream and the client's, over an in-memory pipe.
    async fn pair() -> (
        WebSocketStream<tokio::io::DuplexStream>,
        WebSocketStream<tokio::io::DuplexStream>,
    ) {
        let (a, b) = tokio::io::duplex(64 * 1024);
        let server = tokio_tungstenite::accept_async_with_config(a, Some(config(Some(4096))));
        let client = tokio_tungstenite::client_async("ws://127.0.0.1/", b);
        let (server, client) = tokio::join!(server, client);
        (server.unwrap(), client.unwrap().0)
    }

    fn frame(id: u32, data: &[u8]) -> Vec<u8> {
        let mut out = BytesMut::new();
        Codec::new(Layout::Tlv, 0)
            .encode_into(MsgId(id), data, &mut out)
            .unwrap();
        out.to_vec()
    }

    fn zinx_frame_len() -> FrameLen {
        let codec = Codec::new(Layout::Tlv, 4096);
        Arc::new(move |b: &[u8]| codec.frame_len(b))
    }

    #[tokio::test]
    async fn messages_are_one_byte_stream_in_both_directions_of_cutting() {
        let (server, mut client) = pair().await;
        let (mut read, _write) = split(server, zinx_frame_len(), false);
        let mut wire = frame(1, b"one");
        wire.extend(frame(2, b"two"));
        // Two frames in one message, then one frame over three messages.
        client
            .send(Message::Binary(wire.clone().into()))
            .await
            .unwrap();
        let three = frame(3, b"three");
        for piece in [&three[..3], &three[3..9], &three[9..]] {
            client.send(Message::binary(piece.to_vec())).await.unwrap();
        }
        client.send(Message::text("text counts too")).await.unwrap();
        let mut expected = wire;
        expected.extend(&three);
        expected.extend(b"text counts too");
        let mut got = vec![0u8; expected.len()];
        read.read_exact(&mut got).await.unwrap();
        assert_eq!(got, expected);
        client.close(None).await.unwrap();
        assert_eq!(
            read.read(&mut [0u8; 8]).await.unwrap(),
            0,
            "close is the end"
        );
    }

    #[tokio::test]
    async fn every_frame_goes_as_a_binary_message_of_its_own_or_a_batch_as_one() {
        for pack in [false, true] {
            let (server, mut client) = pair().await;
            let (_read, mut write) = split(server, zinx_frame_len(), pack);
            let frames = [frame(1, b"a"), frame(2, &[7u8; 600]), frame(3, b"tail")];
            // As the writer does: a batch in one write, then a header and its
            // data as two slices of one vectored write.
            write
                .write_all(&[&frames[0][..], &frames[1][..]].concat())
                .await
                .unwrap();
            let (header, data) = frames[2].split_at(8);
            let slices = [io::IoSlice::new(header), io::IoSlice::new(data)];
            let n = write.write_vectored(&slices).await.unwrap();
            assert_eq!(n, frames[2].len(), "both slices taken");
            write.flush().await.unwrap();
            let mut messages = Vec::new();
            let want = if pack { 2 } else { 3 };
            while messages.len() < want {
                match client.next().await.unwrap().unwrap() {
                    Message::Binary(data) => messages.push(data.to_vec()),
                    other => panic!("{other:?}"),
                }
            }
            if pack {
                assert_eq!(messages[0], [&frames[0][..], &frames[1][..]].concat());
                assert_eq!(messages[1], frames[2]);
            } else {
                assert_eq!(messages, frames);
                // A header written and flushed alone waits for its data.
                let last = frame(4, b"late data");
                write.write_all(&last[..8]).await.unwrap();
                write.flush().await.unwrap();
                write.write_all(&last[8..]).await.unwrap();
                write.flush().await.unwrap();
                let Some(Ok(Message::Binary(data))) = client.next().await else {
                    panic!("no message")
                };
                assert_eq!(&data[..], &last[..]);
            }
            write.shutdown().await.unwrap();
            assert!(matches!(client.next().await, Some(Ok(Message::Close(_)))));
        }
    }

    #[tokio::test]
    async fn a_message_over_the_limit_is_refused_without_being_buffered() {
        let (server, mut client) = pair().await;
        let (mut read, _write) = split(server, zinx_frame_len(), false);
        // The limit for MaxPacketSize 4096 is 64 KiB: 70 KiB is refused as
        // soon as its frame header is read.
        let sending = client.send(Message::binary(vec![0u8; 70 * 1024]));
        let mut scratch = [0u8; 8];
        let reading = read.read(&mut scratch);
        let (_, read) = tokio::time::timeout(std::time::Duration::from_secs(5), async {
            tokio::join!(sending, reading)
        })
        .await
        .expect("refused without waiting for the whole message");
        let err = read.unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::InvalidData, "{err}");
    }

    fn opener(auth: Option<WsAuth>) -> WsOpen {
        WsOpen {
            path: "/game".into(),
            config: config(Some(4096)),
            frame_len: zinx_frame_len(),
            pack: false,
            auth,
        }
    }

    /// Upgrades one connection on 127.0.0.1 with `open`, the client asking for
    /// `url`; the client's result.
    async fn upgrade(
        open: WsOpen,
        url: &str,
    ) -> Result<WebSocketStream<tokio::net::TcpStream>, tokio_tungstenite::tungstenite::Error> {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let server = async {
            let (stream, peer) = listener.accept().await.unwrap();
            let local = stream.local_addr().unwrap();
            open.upgrade(stream, peer, local).await.map(|opened| {
                // Kept open until the client is done.
                std::mem::forget(opened);
            })
        };
        let client = async {
            let stream = tokio::net::TcpStream::connect(addr).await.unwrap();
            tokio_tungstenite::client_async(url.replace("ADDR", &addr.to_string()), stream).await
        };
        let (_, client) = tokio::join!(server, client);
        client.map(|(ws, _)| ws)
    }

    fn status(e: &tokio_tungstenite::tungstenite::Error) -> Option<u16> {
        match e {
            tokio_tungstenite::tungstenite::Error::Http(resp) => Some(resp.status().as_u16()),
            _ => None,
        }
    }

    #[tokio::test]
    async fn the_upgrade_takes_only_its_path_and_asks_the_auth_hook() {
        assert!(upgrade(opener(None), "ws://ADDR/game").await.is_ok());
        let wrong = upgrade(opener(None), "ws://ADDR/other").await.unwrap_err();
        assert_eq!(status(&wrong), Some(404), "{wrong}");
        let auth: WsAuth = Arc::new(|req: &WsRequest| match req.query.as_deref() {
            Some("token=ok") if req.peer.ip().is_loopback() => Ok(()),
            _ => Err(401),
        });
        assert!(
            upgrade(opener(Some(auth.clone())), "ws://ADDR/game?token=ok")
                .await
                .is_ok()
        );
        let refused = upgrade(opener(Some(auth)), "ws://ADDR/game?token=no")
            .await
            .unwrap_err();
        assert_eq!(status(&refused), Some(401), "{refused}");
    }

    #[tokio::test]
    async fn the_connector_and_the_open_step_carry_frames_both_ways() {
        use crate::transport::Connect;

        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let connector = WsConnector {
            addr: addr.to_string(),
            url: format!("ws://{addr}/game"),
            config: config(Some(4096)),
            frame_len: zinx_frame_len(),
            pack: false,
            handshake: std::time::Duration::from_secs(5),
        };
        let server = async {
            let (stream, peer) = listener.accept().await.unwrap();
            let local = stream.local_addr().unwrap();
            let Opened {
                mut read,
                mut write,
                ..
            } = opener(None).upgrade(stream, peer, local).await.unwrap();
            let mut got = [0u8; 11];
            read.read_exact(&mut got).await.unwrap();
            write.write_all(&got).await.unwrap();
            write.flush().await.unwrap();
        };
        let client = async {
            let dialled = connector.connect().await.unwrap();
            assert_eq!(dialled.peer, addr);
            let crate::transport::Opened {
                mut read,
                mut write,
                ..
            } = dialled.opened;
            write.write_all(&frame(4, b"abc")).await.unwrap();
            write.flush().await.unwrap();
            let mut back = [0u8; 11];
            read.read_exact(&mut back).await.unwrap();
            back
        };
        let ((), back) = tokio::join!(server, client);
        assert_eq!(&back[..], &frame(4, b"abc")[..]);
    }

    #[tokio::test]
    async fn a_refused_upgrade_gets_its_http_status() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let server = async {
            let (stream, _) = listener.accept().await.unwrap();
            refuse(stream, 503).await;
        };
        let client = async {
            let stream = tokio::net::TcpStream::connect(addr).await.unwrap();
            tokio_tungstenite::client_async(format!("ws://{addr}/"), stream).await
        };
        let ((), refused) = tokio::join!(server, client);
        assert_eq!(status(&refused.unwrap_err()), Some(503));
    }

    #[test]
    fn broken_websocket_is_a_protocol_error_and_a_lost_connection_the_end() {
        use tokio_tungstenite::tungstenite::Error as WsError;
        use tokio_tungstenite::tungstenite::error::CapacityError;
        let too_long = WsError::Capacity(CapacityError::MessageTooLong {
            size: 1 << 20,
            max_size: 64 << 10,
        });
        let error = crate::Error::from_read(read_error(too_long).unwrap());
        assert!(error.is_protocol(), "{error}");
        assert!(read_error(WsError::ConnectionClosed).is_none());
        let reset = io::Error::from(io::ErrorKind::ConnectionReset);
        let error = crate::Error::from_read(read_error(WsError::Io(reset)).unwrap());
        assert!(!error.is_protocol(), "{error}");
    }

    #[tokio::test]
    async fn a_ping_is_answered() {
        let (server, mut client) = pair().await;
        let (mut read, _write) = split(server, zinx_frame_len(), false);
        client
            .send(Message::Ping(Bytes::from_static(b"hi")))
            .await
            .unwrap();
        client.send(Message::binary(frame(1, b"x"))).await.unwrap();
        let mut got = [0u8; 9];
        read.read_exact(&mut got).await.unwrap();
        // The pong comes back while the server reads.
        let pong = tokio::time::timeout(std::time::Duration::from_secs(5), client.next())
            .await
            .unwrap();
        assert!(
            matches!(&pong, Some(Ok(Message::Pong(p))) if &p[..] == b"hi"),
            "{pong:?}"
        );
    }
}
