//! The client: one connection to a Zinx server (ours or Go Zinx), driven by the
//! same engine as a server's connections.
//!
//! A [`Client`] uses the same framing, [`Router`], hooks, properties and
//! [`Connection`] handle as the server side: inbound messages are routed to
//! handlers, `on_connect` runs for every connection. Beyond Go Zinx:
//!
//! - **reconnect** (opt-in, [`Reconnect`]): when the connection ends the client
//!   dials again with capped exponential backoff, and `on_connect` fires again;
//! - **request/response** ([`Client::request`]): send a message and await the next
//!   message with a given ID, with a timeout. Replies awaited this way are taken
//!   before routing; other messages are routed as usual.

use std::collections::{HashMap, HashSet, VecDeque};
use std::fmt;
use std::future::Future;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::{mpsc, oneshot, watch};
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use tracing::Instrument;

use crate::codec::{Codec, Layout};
use crate::config::{Config, WorkerMode};
use crate::conn::Connection;
use crate::engine::{Endpoint, Engine};
use crate::error::Error;
use crate::framing::Framing;
use crate::heartbeat::Heartbeat;
use crate::hooks::{self, Hooks};
use crate::message::{ConnId, Message, MsgId, Payload};
use crate::request::Request;
use crate::router::{Middleware, Next, Router};
use crate::server::DEFAULT_CLOSE_LINGER;
use crate::transport::tcp::TcpConnector;
use crate::transport::{Connect, Dialled};

/// Capped exponential backoff between reconnect attempts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Reconnect {
    initial: Duration,
    max: Duration,
}

impl Reconnect {
    /// Waits `initial` before the first attempt, doubling after each failure up to
    /// `max`; a successful connection resets the delay.
    #[must_use]
    pub fn new(initial: Duration, max: Duration) -> Self {
        let initial = initial.max(Duration::from_millis(1));
        Reconnect {
            initial,
            max: max.max(initial),
        }
    }

    fn next(&self, delay: Duration) -> Duration {
        (delay * 2).min(self.max)
    }
}

impl Default for Reconnect {
    /// 100 ms, doubling up to 10 s.
    fn default() -> Self {
        Reconnect::new(Duration::from_millis(100), Duration::from_secs(10))
    }
}

/// Builds a [`Client`].
#[must_use]
pub struct ClientBuilder<F = Codec> {
    addr: String,
    config: Config,
    layout: Layout,
    framing: F,
    router: Arc<Router>,
    hooks: Hooks,
    heartbeat: Option<Heartbeat>,
    reconnect: Option<Reconnect>,
    /// TLS over TCP instead of plain TCP (feature `tls`).
    #[cfg(feature = "tls")]
    tls: Option<crate::transport::tls::TlsClient>,
    /// WebSocket at this path instead of plain TCP (feature `ws`).
    #[cfg(feature = "ws")]
    ws_path: Option<String>,
    /// KCP over UDP instead of TCP (feature `kcp`).
    #[cfg(feature = "kcp")]
    kcp: Option<crate::transport::kcp::KcpSettings>,
}

impl ClientBuilder<Codec> {
    /// The Zinx packet layout (default TLV).
    pub fn layout(mut self, layout: Layout) -> Self {
        self.layout = layout;
        self.framing = Codec::new(layout, self.config.max_packet_size);
        self
    }

    /// The connection's limits from a config (default: Zinx's defaults): the
    /// send queue (`MaxMsgChanLen`, `MaxMsgChanBytes`, `SendQueueFull`),
    /// `MaxPacketSize`, `IOReadBuffSize`, `HeartbeatMax`, `MaxMsgRate` /
    /// `MaxMsgBurst`, `FrameTimeout`, `IdleTimeout`, `MaxWorkerTaskLen` and
    /// `HandshakeTimeout` (for TLS and WebSocket).
    pub fn config(mut self, config: Config) -> Self {
        self.framing = Codec::new(self.layout, config.max_packet_size);
        self.config = config;
        self
    }
}

impl<F: Framing> ClientBuilder<F> {
    /// Replaces the framing.
    pub fn framing<G: Framing>(self, framing: G) -> ClientBuilder<G> {
        ClientBuilder {
            addr: self.addr,
            config: self.config,
            layout: self.layout,
            framing,
            router: self.router,
            hooks: self.hooks,
            heartbeat: self.heartbeat,
            reconnect: self.reconnect,
            #[cfg(feature = "tls")]
            tls: self.tls,
            #[cfg(feature = "ws")]
            ws_path: self.ws_path,
            #[cfg(feature = "kcp")]
            kcp: self.kcp,
        }
    }

    /// Routes messages from the server (default: none; unknown IDs are logged).
    pub fn router(mut self, router: impl Into<Arc<Router>>) -> Self {
        self.router = router.into();
        self
    }

    /// Runs `hook` after every (re)connect.
    pub fn on_connect<H, Fut>(mut self, hook: H) -> Self
    where
        H: Fn(Connection) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = ()> + Send + 'static,
    {
        self.hooks.set_on_connect(hooks::boxed(hook));
        self
    }

    /// Runs `hook` after every disconnect.
    pub fn on_disconnect<H, Fut>(mut self, hook: H) -> Self
    where
        H: Fn(Connection) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = ()> + Send + 'static,
    {
        self.hooks.set_on_disconnect(hooks::boxed(hook));
        self
    }

    /// Sends heartbeats and treats a silent server as dead. Unless the heartbeat
    /// sets its own limit, the config's `HeartbeatMax` applies.
    pub fn heartbeat(mut self, heartbeat: Heartbeat) -> Self {
        self.heartbeat = Some(heartbeat.with_default_limit(self.config.heartbeat_max));
        self
    }

    /// Reconnects with `backoff` whenever the connection ends (default: off).
    pub fn reconnect(mut self, backoff: Reconnect) -> Self {
        self.reconnect = Some(backoff);
        self
    }

    /// Speaks TLS (feature `tls`), trusting what `tls` trusts, on every
    /// connection and reconnection. The server's certificate is checked
    /// against the host of the address (a DNS name or an IP address) unless
    /// [`TlsClient::server_name`](crate::transport::tls::TlsClient::server_name)
    /// names another; the handshake may take `HandshakeTimeout`.
    ///
    /// # Examples
    ///
    /// ```no_run
    /// use zinx::Client;
    /// use zinx::transport::tls::TlsClient;
    ///
    /// # async fn demo() -> Result<(), zinx::Error> {
    /// let client = Client::builder("127.0.0.1:8443")
    ///     .tls(TlsClient::trust_pem_file("cert.pem")?)
    ///     .connect()
    ///     .await?;
    /// # let _ = client;
    /// # Ok(())
    /// # }
    /// ```
    #[cfg(feature = "tls")]
    pub fn tls(mut self, tls: crate::transport::tls::TlsClient) -> Self {
        self.tls = Some(tls);
        self
    }

    /// Speaks WebSocket (feature `ws`): upgrades at `path` of the address
    /// (`ws://addr/path`), or over TLS (wss) when `tls` (feature `tls`) is set
    /// too; within `HandshakeTimeout`. Every frame goes as one binary message;
    /// what the server sends is read as one byte stream, as Go Zinx does.
    ///
    /// # Examples
    ///
    /// ```no_run
    /// use zinx::Client;
    ///
    /// # async fn demo() -> Result<(), zinx::Error> {
    /// let client = Client::builder("127.0.0.1:9000").ws("/").connect().await?;
    /// # let _ = client;
    /// # Ok(())
    /// # }
    /// ```
    #[cfg(feature = "ws")]
    pub fn ws(mut self, path: impl Into<String>) -> Self {
        let mut path = path.into();
        if !path.starts_with('/') {
            path.insert(0, '/');
        }
        self.ws_path = Some(path);
        self
    }

    /// Speaks KCP over UDP (feature `kcp`) with `settings` (a Go Zinx KCP
    /// server's are [`KcpSettings::from_config`] of its zinx.json) on every
    /// connection and reconnection: each is a new session under a random
    /// conversation ID. There is no handshake, so connecting succeeds at once;
    /// a server that never answers is noticed by the heartbeat, or by the
    /// session's idle timeout.
    ///
    /// [`KcpSettings::from_config`]: crate::transport::kcp::KcpSettings::from_config
    ///
    /// # Examples
    ///
    /// ```no_run
    /// use zinx::Client;
    /// use zinx::transport::kcp::KcpSettings;
    ///
    /// # async fn demo() -> Result<(), zinx::Error> {
    /// let client = Client::builder("127.0.0.1:9001")
    ///     .kcp(KcpSettings::default())
    ///     .connect()
    ///     .await?;
    /// # let _ = client;
    /// # Ok(())
    /// # }
    /// ```
    #[cfg(feature = "kcp")]
    pub fn kcp(mut self, settings: crate::transport::kcp::KcpSettings) -> Self {
        self.kcp = Some(settings);
        self
    }

    /// Connects and starts the client.
    ///
    /// # Errors
    ///
    /// [`Error::Io`] if the first connection attempt fails (reconnects apply only
    /// after a connection was made); [`Error::Tls`] if its TLS handshake fails
    /// (the server's certificate is not trusted or does not name the host);
    /// [`Error::WebSocket`] if the upgrade is refused (with its HTTP status) or
    /// fails.
    #[cfg_attr(
        not(any(feature = "tls", feature = "ws", feature = "kcp")),
        allow(unused_mut)
    )]
    pub async fn connect(mut self) -> Result<Client, Error> {
        #[cfg(feature = "kcp")]
        if let Some(settings) = self.kcp.take() {
            let addr = std::mem::take(&mut self.addr);
            let connector = crate::transport::kcp::KcpConnector { addr, settings };
            return self.start(connector).await;
        }
        #[cfg(feature = "ws")]
        if let Some(path) = self.ws_path.take() {
            return self.connect_ws(&path).await;
        }
        #[cfg(feature = "tls")]
        if let Some(tls) = self.tls.take() {
            let handshake = Duration::from_secs(self.config.handshake_timeout.max(1));
            let connector = tls.connector(std::mem::take(&mut self.addr), handshake)?;
            return self.start(connector).await;
        }
        let connector = TcpConnector {
            addr: std::mem::take(&mut self.addr),
        };
        self.start(connector).await
    }

    /// Connects over WebSocket at `path`, over TLS if set.
    #[cfg(feature = "ws")]
    async fn connect_ws(mut self, path: &str) -> Result<Client, Error> {
        use crate::transport::ws;
        let handshake = Duration::from_secs(self.config.handshake_timeout.max(1));
        let addr = std::mem::take(&mut self.addr);
        let (frame_len, config) = ws::for_framing(&self.framing);
        #[cfg_attr(not(feature = "tls"), allow(unused_mut))]
        let mut connector = ws::WsConnector {
            url: format!("ws://{addr}{path}"),
            addr,
            config,
            frame_len,
            pack: false,
            handshake,
        };
        #[cfg(feature = "tls")]
        if let Some(tls) = self.tls.take() {
            connector.url = connector.url.replacen("ws://", "wss://", 1);
            let tls = tls.connector(connector.addr.clone(), handshake)?;
            return self.start(ws::WssConnector { tls, ws: connector }).await;
        }
        self.start(connector).await
    }

    /// Dials the first connection with `connector` and starts the client's task.
    async fn start<C: Connect>(self, connector: C) -> Result<Client, Error> {
        let first = connector.connect().await?;
        let waiters = Arc::new(Waiters::default());
        let inbox = Arc::new(Inbox::default());
        let first_layer = {
            let (waiters, inbox) = (waiters.clone(), inbox.clone());
            let routed: HashSet<MsgId> = self.router.route_ids().collect();
            Middleware::from_fn(move |req: Request, next: Next| {
                let unclaimed = waiters.deliver(req);
                // What no request claimed and no route takes goes to the stream
                // of messages, if someone listens.
                let to_stream = unclaimed
                    .as_ref()
                    .filter(|req| !routed.contains(&req.msg_id()))
                    .and_then(|_| inbox.sender());
                async move {
                    let Some(req) = unclaimed else { return };
                    let req = match to_stream {
                        // Waits while the stream is full: the reader waits with it,
                        // so the server is slowed, and nothing is dropped.
                        Some(tx) => {
                            let (conn, msg) = req.into_parts();
                            match tx.send(msg).await {
                                Ok(()) => return,
                                // Nobody listens any more: routed as before.
                                Err(back) => Request::new(conn, back.0),
                            }
                        }
                        None => req,
                    };
                    next.run(req).await;
                }
            })
        };
        let dispatcher = self.router.compile(
            self.heartbeat.as_ref().map(|hb| hb.msg_id),
            Some(&first_layer),
        );
        // A client's one connection handles its own messages: no worker pool.
        let engine = Engine::new(
            &self.config,
            self.framing,
            self.hooks,
            self.heartbeat,
            DEFAULT_CLOSE_LINGER,
            dispatcher,
            (WorkerMode::Hash, 0),
        );
        engine.manager.set_states(self.router.states().clone());
        let stop = engine.stop.clone();
        let (current, _) = watch::channel(None);
        let shared = Arc::new(ClientShared {
            current,
            stop,
            waiters,
            inbox,
            inbox_len: usize::try_from(self.config.max_msg_chan_len)
                .unwrap_or(usize::MAX)
                .max(1),
            next_id: AtomicU64::new(0),
        });
        let task = tokio::spawn(
            run(shared.clone(), engine, connector, self.reconnect, first).in_current_span(),
        );
        Ok(Client {
            shared,
            task: Mutex::new(Some(task)),
        })
    }
}

/// A connected client. Dropping it closes the connection and stops reconnecting.
pub struct Client {
    shared: Arc<ClientShared>,
    task: Mutex<Option<JoinHandle<()>>>,
}

struct ClientShared {
    current: watch::Sender<Option<Connection>>,
    stop: CancellationToken,
    waiters: Arc<Waiters>,
    inbox: Arc<Inbox>,
    /// The bound of the stream of messages (`MaxMsgChanLen`).
    inbox_len: usize,
    next_id: AtomicU64,
}

/// Where messages no route takes go, once someone listens ([`Client::messages`]).
#[derive(Default)]
struct Inbox {
    tx: Mutex<Option<mpsc::Sender<Message>>>,
}

impl Inbox {
    /// The listener's end, unless there is none (or it was dropped).
    fn sender(&self) -> Option<mpsc::Sender<Message>> {
        let mut tx = crate::util::lock(&self.tx);
        if tx.as_ref().is_some_and(mpsc::Sender::is_closed) {
            *tx = None;
        }
        tx.clone()
    }
}

/// The messages from the server that no route takes and no request claims, in
/// the order they arrived (see [`Client::messages`]). A `Stream`, or
/// [`recv`](Self::recv) one at a time.
#[derive(Debug)]
pub struct Messages {
    rx: mpsc::Receiver<Message>,
}

impl Messages {
    /// The next message; `None` once the client has stopped (or another
    /// `Messages` took over).
    pub async fn recv(&mut self) -> Option<Message> {
        self.rx.recv().await
    }
}

impl futures_util::Stream for Messages {
    type Item = Message;

    fn poll_next(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Message>> {
        self.rx.poll_recv(cx)
    }
}

impl fmt::Debug for Client {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Client")
            .field("connection", &*self.shared.current.borrow())
            .field("stopped", &self.shared.stop.is_cancelled())
            .finish()
    }
}

impl Client {
    /// Starts building a client for `addr` (`host:port`) with Zinx TLV framing.
    pub fn builder(addr: impl Into<String>) -> ClientBuilder {
        let config = Config::default();
        ClientBuilder {
            addr: addr.into(),
            framing: Codec::new(Layout::Tlv, config.max_packet_size),
            layout: Layout::Tlv,
            config,
            router: Arc::new(Router::new()),
            hooks: Hooks::default(),
            heartbeat: None,
            reconnect: None,
            #[cfg(feature = "tls")]
            tls: None,
            #[cfg(feature = "ws")]
            ws_path: None,
            #[cfg(feature = "kcp")]
            kcp: None,
        }
    }

    /// The live connection, if the client is connected right now.
    #[must_use]
    pub fn conn(&self) -> Option<Connection> {
        self.shared.current.borrow().clone()
    }

    /// The live connection, waiting for one while the client reconnects.
    ///
    /// # Errors
    ///
    /// [`Error::Closed`] once the client has stopped for good.
    pub async fn connection(&self) -> Result<Connection, Error> {
        let mut rx = self.shared.current.subscribe();
        tokio::select! {
            biased;
            () = self.shared.stop.cancelled() => Err(Error::Closed),
            // Cancel-safe: wait_for only observes the watch.
            conn = rx.wait_for(|c| c.as_ref().is_some_and(|c| !c.is_closed())) => match conn {
                Ok(conn) => conn.clone().ok_or(Error::Closed),
                Err(_) => Err(Error::Closed),
            },
        }
    }

    /// Sends a message on the live connection (waiting for one while reconnecting).
    ///
    /// # Errors
    ///
    /// As [`Connection::send`], and [`Error::Closed`] once the client stopped.
    pub async fn send(&self, id: impl Into<MsgId>, data: impl Payload) -> Result<(), Error> {
        self.connection().await?.send(id, data).await
    }

    /// Sends a message and waits for the next message with ID `reply_id`, which is
    /// then returned instead of routed.
    ///
    /// # Errors
    ///
    /// [`Error::Timeout`] if no such message arrives within `timeout`,
    /// [`Error::Closed`] if the connection ends first, and the errors of
    /// [`send`](Self::send).
    pub async fn request(
        &self,
        id: impl Into<MsgId>,
        data: impl Payload,
        reply_id: impl Into<MsgId>,
        timeout: Duration,
    ) -> Result<Message, Error> {
        let conn = self.connection().await?;
        let reply = self.shared.waiters.register(reply_id.into());
        conn.send(id, data).await?;
        match tokio::time::timeout(timeout, reply).await {
            Ok(Ok(msg)) => Ok(msg),
            Ok(Err(_)) => Err(Error::Closed),
            Err(_) => Err(Error::Timeout(timeout)),
        }
    }

    /// Sends a message and waits for the next message `matches` accepts (a
    /// reply carrying the request's sequence number, say), which is then
    /// returned instead of routed. Messages it refuses are routed as usual.
    ///
    /// # Errors
    ///
    /// As [`request`](Self::request).
    pub async fn request_matching(
        &self,
        id: impl Into<MsgId>,
        data: impl Payload,
        matches: impl Fn(&Message) -> bool + Send + 'static,
        timeout: Duration,
    ) -> Result<Message, Error> {
        let conn = self.connection().await?;
        let reply = self.shared.waiters.register_matching(Box::new(matches));
        conn.send(id, data).await?;
        match tokio::time::timeout(timeout, reply).await {
            Ok(Ok(msg)) => Ok(msg),
            Ok(Err(_)) => Err(Error::Closed),
            Err(_) => Err(Error::Timeout(timeout)),
        }
    }

    /// The stream of messages from the server that no route takes (and no
    /// request claims), beside the routes: for a client that reads replies
    /// in a loop instead of handling them in callbacks. Bounded by
    /// `MaxMsgChanLen`: while it is full the client reads nothing more from the
    /// server (nothing is dropped). Calling it again replaces the previous
    /// stream, which ends; dropping it sends such messages to the router's
    /// fallback again.
    #[must_use]
    pub fn messages(&self) -> Messages {
        let (tx, rx) = mpsc::channel(self.shared.inbox_len);
        *crate::util::lock(&self.shared.inbox.tx) = Some(tx);
        Messages { rx }
    }

    /// Closes the connection, stops reconnecting, and waits until the client's
    /// tasks (including `on_disconnect`) have finished.
    pub async fn close(&self) {
        self.shared.stop();
        let task = crate::util::lock(&self.task).take();
        if let Some(task) = task
            && let Err(e) = task.await
        {
            tracing::error!(error = %e, "client task failed");
        }
    }
}

impl Drop for Client {
    fn drop(&mut self) {
        self.shared.stop();
    }
}

impl ClientShared {
    /// Stops reconnecting and closes the live connection (one that opens after
    /// this sees the stop token and closes itself).
    fn stop(&self) {
        self.stop.cancel();
        // The stream of messages ends with the client.
        *crate::util::lock(&self.inbox.tx) = None;
        if let Some(conn) = self.current.borrow().clone() {
            conn.close();
        }
    }
}

/// The client's connection loop: drive, then reconnect while allowed.
async fn run<F: Framing, C: Connect>(
    shared: Arc<ClientShared>,
    engine: Engine<F>,
    connector: C,
    reconnect: Option<Reconnect>,
    first: Dialled<C::Read, C::Write>,
) {
    let mut dialled = Some(first);
    while let Some(Dialled { opened, peer }) = dialled.take() {
        let id = ConnId(shared.next_id.fetch_add(1, Ordering::Relaxed) + 1);
        let endpoint = Endpoint {
            id,
            peer,
            local: opened.local,
        };
        let span = tracing::info_span!("client", conn_id = id.0, %peer);
        let prepared = span.in_scope(|| engine.setup(opened.read, opened.write, endpoint));
        Engine::run(&engine, prepared, (), Some(&shared.current))
            .instrument(span)
            .await;
        // Pending requests fail now instead of at their timeouts.
        shared.waiters.clear();
        let Some(backoff) = reconnect else { break };
        dialled = redial(&shared.stop, &connector, backoff).await;
    }
    shared.stop.cancel();
    *crate::util::lock(&shared.inbox.tx) = None;
    let tracker = engine.tracker.clone();
    drop(engine);
    tracker.close();
    tracker.wait().await;
}

/// Dials until it connects or the client stops.
async fn redial<C: Connect>(
    stop: &CancellationToken,
    connector: &C,
    backoff: Reconnect,
) -> Option<Dialled<C::Read, C::Write>> {
    let mut delay = backoff.initial;
    let target = connector.target();
    loop {
        tokio::select! {
            biased;
            () = stop.cancelled() => return None,
            // Cancel-safe: an abandoned sleep or connect attempt has no effect.
            () = tokio::time::sleep(delay) => {}
        }
        let attempt = tokio::select! {
            biased;
            () = stop.cancelled() => return None,
            attempt = connector.connect() => attempt,
        };
        match attempt {
            Ok(dialled) => {
                tracing::info!(%target, "reconnected");
                return Some(dialled);
            }
            Err(e) => {
                tracing::debug!(%target, error = %e, ?delay, "reconnect failed");
                delay = backoff.next(delay);
            }
        }
    }
}

/// Decides whether a message is the reply a request waits for.
type Matcher = Box<dyn Fn(&Message) -> bool + Send>;

/// Requests waiting for a reply: by reply ID, or by a predicate.
#[derive(Default)]
struct Waiters {
    /// Fast path: no lock on the inbound path while nobody waits.
    pending: AtomicUsize,
    inner: Mutex<Waiting>,
}

#[derive(Default)]
struct Waiting {
    by_id: HashMap<MsgId, VecDeque<oneshot::Sender<Message>>>,
    /// In the order the requests were made; the first that matches takes it.
    matching: VecDeque<(Matcher, oneshot::Sender<Message>)>,
}

impl Waiting {
    fn count(&self) -> usize {
        self.by_id.values().map(VecDeque::len).sum::<usize>() + self.matching.len()
    }
}

impl Waiters {
    fn lock(&self) -> std::sync::MutexGuard<'_, Waiting> {
        crate::util::lock(&self.inner)
    }

    fn register(&self, id: MsgId) -> oneshot::Receiver<Message> {
        let (tx, rx) = oneshot::channel();
        let mut waiting = self.lock();
        let queue = waiting.by_id.entry(id).or_default();
        // Drop waiters that timed out, so the queue stays as long as what is live.
        queue.retain(|w| !w.is_closed());
        queue.push_back(tx);
        self.pending.store(waiting.count(), Ordering::Release);
        rx
    }

    fn register_matching(&self, matches: Matcher) -> oneshot::Receiver<Message> {
        let (tx, rx) = oneshot::channel();
        let mut waiting = self.lock();
        waiting.matching.retain(|(_, w)| !w.is_closed());
        waiting.matching.push_back((matches, tx));
        self.pending.store(waiting.count(), Ordering::Release);
        rx
    }

    /// Hands the message to the oldest live waiter for its ID, else to the
    /// first live one whose predicate accepts it; returns the request if
    /// nobody claimed it.
    fn deliver(&self, req: Request) -> Option<Request> {
        if self.pending.load(Ordering::Acquire) == 0 {
            return Some(req);
        }
        let (conn, mut msg) = req.into_parts();
        let mut waiting = self.lock();
        let unclaimed = 'claim: {
            if let Some(queue) = waiting.by_id.get_mut(&msg.id) {
                while let Some(waiter) = queue.pop_front() {
                    match waiter.send(msg) {
                        Ok(()) => break 'claim None,
                        Err(back) => msg = back,
                    }
                }
            }
            waiting.matching.retain(|(_, w)| !w.is_closed());
            if let Some(at) = waiting.matching.iter().position(|(m, _)| m(&msg))
                && let Some((_, waiter)) = waiting.matching.remove(at)
            {
                match waiter.send(msg) {
                    Ok(()) => break 'claim None,
                    Err(back) => msg = back,
                }
            }
            Some(msg)
        };
        self.pending.store(waiting.count(), Ordering::Release);
        drop(waiting);
        unclaimed.map(|msg| Request::new(conn, msg))
    }

    fn clear(&self) {
        *self.lock() = Waiting::default();
        self.pending.store(0, Ordering::Release);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_doubles_up_to_the_cap() {
        let b = Reconnect::new(Duration::from_millis(10), Duration::from_millis(50));
        let mut d = b.initial;
        let mut seen = vec![d];
        for _ in 0..5 {
            d = b.next(d);
            seen.push(d);
        }
        let ms: Vec<u128> = seen.iter().map(Duration::as_millis).collect();
        assert_eq!(ms, [10, 20, 40, 50, 50, 50]);
        // A cap below the start is raised to it; zero is raised to 1 ms.
        let b = Reconnect::new(Duration::ZERO, Duration::ZERO);
        assert_eq!(
            (b.initial, b.max),
            (Duration::from_millis(1), Duration::from_millis(1))
        );
    }
}
