//! The server: one core, any number of listeners.
//!
//! [`ServerBuilder::build`] makes what every connection shares once: the engine
//! (framing, router, workers, hooks, heartbeat), the connection manager (which
//! hands out connection IDs: one ID space), admission (`MaxConn` and
//! `MaxConnPerIP` across every listener) and metrics. [`Server::run_all`] runs
//! an accept loop per listener against that core until its shutdown future
//! completes; [`Server::run`] and [`Server::serve`] are the one-listener forms.
//!
//! For every accepted connection the accept loop takes a `MaxConn` permit and a
//! `MaxConnPerIP` slot (over a limit the connection is closed at once and the
//! refusal counted), then opens it: at once for TCP, else in the connection's
//! own task under `HandshakeTimeout` (see [`transport`](crate::transport)), so no
//! peer can stall the loop. The connection's task runs `on_connect`, then reads
//! until the connection ends, writing what is queued. Cleanup happens in a fixed
//! order: writer flushed, worker lane released, manager entry and slots dropped
//! (guards, so a panic cannot skip them), then `on_disconnect` and the close
//! callbacks.
//!
//! Shutdown stops every accept loop, cancels the engine's stop token and closes
//! every registered connection (a connection registering afterwards sees the
//! token and closes itself); the run returns when the [`TaskTracker`] holding
//! every connection and async-op task is empty.

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use tokio::io::AsyncWrite;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::Instrument;

use crate::codec::{Codec, Layout};
use crate::config::Config;
use crate::conn::Connection;
use crate::engine::reader::ReadSource;
use crate::engine::{Endpoint, Engine};
use crate::error::Error;
use crate::faults::Fault;
use crate::framing::Framing;
use crate::heartbeat::Heartbeat;
use crate::hooks::{self, Hooks};
use crate::limit::{IpSlot, PerIp};
use crate::manager::ConnManager;
use crate::router::Router;
use crate::transport::tcp::Tcp;
use crate::transport::{Accept, Listener, Open, OpenNow, Opened};

pub use crate::transport::bind_listeners;
pub use crate::transport::tcp::{bind_tcp, listen_backlog};

/// Default time the writer may spend flushing queued messages when a connection
/// closes.
pub const DEFAULT_CLOSE_LINGER: Duration = Duration::from_secs(5);

/// Longest pause after a failing `accept` (for example out of file descriptors).
const MAX_ACCEPT_BACKOFF: Duration = Duration::from_secs(1);

/// Builds a [`Server`] from a [`Config`], a [`Router`] and hooks.
///
/// # Examples
///
/// ```
/// use zinx::{Config, Layout, Router, Server};
///
/// let server = Server::builder(Config::default())
///     .router(Router::new())
///     .layout(Layout::Ltv)
///     .on_connect(|conn| async move { tracing::info!(id = %conn.id(), "hello") })
///     .build();
/// # let _ = server;
/// ```
#[must_use]
pub struct ServerBuilder<F = Codec> {
    config: Config,
    router: Arc<Router>,
    framing: F,
    hooks: Hooks,
    linger: Duration,
    heartbeat: Option<Heartbeat>,
    /// Count metrics even without `MetricsAddr` (for an application's registry).
    #[cfg(feature = "metrics")]
    metrics: bool,
    /// The auth hook of WebSocket listeners that have none of their own.
    #[cfg(feature = "ws")]
    ws_auth: Option<crate::transport::ws::WsAuth>,
}

impl ServerBuilder<Codec> {
    /// Sets the Zinx packet layout (default: TLV big-endian, like Go Zinx), with
    /// the config's `MaxPacketSize`.
    pub fn layout(mut self, layout: Layout) -> Self {
        self.framing = Codec::new(layout, self.config.max_packet_size);
        self
    }
}

impl<F: Framing> ServerBuilder<F> {
    /// Sets the router (default: an empty one). Pass an `Arc<Router>` to share one
    /// router between several servers.
    pub fn router(mut self, router: impl Into<Arc<Router>>) -> Self {
        self.router = router.into();
        self
    }

    /// Replaces the framing (default: Zinx TLV with `MaxPacketSize`), for example
    /// with [`HtlvCrcCodec`](crate::framing::HtlvCrcCodec) or a
    /// [`LengthFieldCodec`](crate::framing::LengthFieldCodec) and a mapper.
    pub fn framing<G: Framing>(self, framing: G) -> ServerBuilder<G> {
        ServerBuilder {
            config: self.config,
            router: self.router,
            framing,
            hooks: self.hooks,
            linger: self.linger,
            heartbeat: self.heartbeat,
            #[cfg(feature = "metrics")]
            metrics: self.metrics,
            #[cfg(feature = "ws")]
            ws_auth: self.ws_auth,
        }
    }

    /// Sends heartbeats and closes silent peers (Zinx's `StartHeartBeat`). Unless
    /// the heartbeat sets its own limit, the config's `HeartbeatMax` applies.
    pub fn heartbeat(mut self, heartbeat: Heartbeat) -> Self {
        self.heartbeat = Some(heartbeat.with_default_limit(self.config.heartbeat_max));
        self
    }

    /// Runs `hook` once for every new connection, before its first message is read.
    pub fn on_connect<H, Fut>(mut self, hook: H) -> Self
    where
        H: Fn(Connection) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = ()> + Send + 'static,
    {
        self.hooks.set_on_connect(hooks::boxed(hook));
        self
    }

    /// Runs `hook` once for every connection that ended, after its queued writes
    /// were flushed. Its properties are still readable.
    pub fn on_disconnect<H, Fut>(mut self, hook: H) -> Self
    where
        H: Fn(Connection) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = ()> + Send + 'static,
    {
        self.hooks.set_on_disconnect(hooks::boxed(hook));
        self
    }

    /// Counts the server's metrics even when `MetricsAddr` is empty, so that
    /// [`Server::register_metrics`] can put them in the application's own
    /// registry (feature `metrics`).
    #[cfg(feature = "metrics")]
    pub fn with_metrics(mut self) -> Self {
        self.metrics = true;
        self
    }

    /// Asks `auth` before every WebSocket upgrade on this server's WebSocket
    /// listeners (those whose [`WsServer`](crate::transport::ws::WsServer)
    /// has no hook of its own), as Go Zinx's `SetWebsocketAuth` does: it sees
    /// the request's path, query, headers and the peer's address, and
    /// `Err(status)` refuses the upgrade with that HTTP status (Go Zinx
    /// refuses with 401). Feature `ws`.
    ///
    /// # Examples
    ///
    /// ```
    /// use zinx::{Config, Server};
    ///
    /// let server = Server::builder(Config::default())
    ///     .ws_auth(|req| match req.query.as_deref() {
    ///         Some("token=secret") => Ok(()),
    ///         _ => Err(401),
    ///     })
    ///     .build();
    /// # let _ = server;
    /// ```
    #[cfg(feature = "ws")]
    pub fn ws_auth(
        mut self,
        auth: impl Fn(&crate::transport::ws::WsRequest) -> Result<(), u16> + Send + Sync + 'static,
    ) -> Self {
        self.ws_auth = Some(Arc::new(auth));
        self
    }

    /// How long a closing connection may spend writing what is still queued
    /// (default [`DEFAULT_CLOSE_LINGER`]). A peer that does not read within it is
    /// cut off.
    pub fn close_linger(mut self, linger: Duration) -> Self {
        self.linger = linger;
        self
    }

    /// Finishes the server: builds what its connections share (the engine,
    /// the connection manager, admission, metrics), once for every listener it
    /// will run. Nothing runs until [`Server::serve`] or [`Server::run`].
    pub fn build(self) -> Server<F> {
        let config = self.config;
        let to_usize = |n: u32| usize::try_from(n).unwrap_or(usize::MAX);
        let hb_id = self.heartbeat.as_ref().map(|hb| hb.msg_id);
        #[cfg_attr(not(feature = "metrics"), allow(unused_mut))]
        let mut engine = Engine::new(
            &config,
            self.framing,
            self.hooks,
            self.heartbeat,
            self.linger,
            self.router.compile(hb_id, None),
            (config.worker_mode, to_usize(config.worker_pool_size)),
        );
        #[cfg(feature = "metrics")]
        if self.metrics || !config.metrics_addr.is_empty() {
            let mut metrics = crate::observe::Metrics::new(self.router.route_ids().chain(hb_id));
            let gauges = crate::metrics::Gauges::new(engine.manager.clone());
            metrics.registry.register_collector(Box::new(gauges));
            engine.observer = crate::observe::Observer::new(Some(Arc::new(metrics)));
        }
        engine.manager.set_states(self.router.states().clone());
        let limit = (config.max_conn > 0).then(|| Arc::new(Semaphore::new(config.max_conn)));
        let handle = ServerHandle {
            manager: engine.manager.clone(),
            tracker: engine.tracker.clone(),
            limit: limit.clone(),
            #[cfg(feature = "metrics")]
            metrics_addr: Arc::default(),
        };
        let core = Core {
            limit,
            per_ip: PerIp::default(),
            max_conn_per_ip: config.max_conn_per_ip,
            handshake: Duration::from_secs(config.handshake_timeout.max(1)),
            engine: Arc::new(engine),
        };
        Server {
            config,
            core: Arc::new(core),
            handle,
            #[cfg(feature = "ws")]
            ws_auth: self.ws_auth,
        }
    }
}

/// A Zinx server.
///
/// # Examples
///
/// ```no_run
/// use zinx::{Config, Request, Router, Server};
///
/// # async fn demo() -> Result<(), zinx::Error> {
/// let router = Router::new().route(1, |req: Request| async move {
///     req.conn().send(1, req.data()).await
/// });
/// let server = Server::builder(Config::load()?).router(router).build();
/// server.serve(async { let _ = tokio::signal::ctrl_c().await; }).await
/// # }
/// ```
pub struct Server<F = Codec> {
    config: Config,
    core: Arc<Core<F>>,
    handle: ServerHandle,
    /// The auth hook of WebSocket listeners that have none of their own.
    #[cfg(feature = "ws")]
    ws_auth: Option<crate::transport::ws::WsAuth>,
}

/// What every listener of a server shares: the engine (and through it the
/// manager, which hands out connection IDs, the task tracker and the stop
/// token) and admission.
struct Core<F> {
    engine: Arc<Engine<F>>,
    /// `MaxConn`, across every listener.
    limit: Option<Arc<Semaphore>>,
    /// `MaxConnPerIP`, across every listener.
    per_ip: PerIp,
    max_conn_per_ip: usize,
    /// `HandshakeTimeout`: how long an open step may take.
    handshake: Duration,
}

/// A cheap clonable view of a server, usable while it runs: its connections and
/// what it holds.
#[derive(Clone)]
pub struct ServerHandle {
    manager: ConnManager,
    tracker: TaskTracker,
    limit: Option<Arc<Semaphore>>,
    #[cfg(feature = "metrics")]
    metrics_addr: Arc<std::sync::OnceLock<std::net::SocketAddr>>,
}

impl ServerHandle {
    /// The server's connection manager.
    #[must_use]
    pub fn manager(&self) -> ConnManager {
        self.manager.clone()
    }

    /// Tasks the server is running: one per connection (plus the metrics
    /// endpoint, when served, and async ops in flight).
    #[must_use]
    pub fn task_count(&self) -> usize {
        self.tracker.len()
    }

    /// Free `MaxConn` slots (`None` without a limit).
    #[must_use]
    pub fn free_slots(&self) -> Option<usize> {
        self.limit.as_ref().map(|s| s.available_permits())
    }

    /// Where the metrics are served (`MetricsAddr`, with the port it got), once
    /// the server runs.
    #[cfg(feature = "metrics")]
    #[must_use]
    pub fn metrics_addr(&self) -> Option<std::net::SocketAddr> {
        self.metrics_addr.get().copied()
    }
}

impl std::fmt::Debug for ServerHandle {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ServerHandle")
            .field("connections", &self.manager.len())
            .field("tasks", &self.task_count())
            .field("free_slots", &self.free_slots())
            .finish()
    }
}

impl Server {
    /// Starts building a server with Zinx TLV framing.
    pub fn builder(config: Config) -> ServerBuilder {
        ServerBuilder {
            framing: Codec::new(Layout::Tlv, config.max_packet_size),
            config,
            router: Arc::new(Router::new()),
            hooks: Hooks::default(),
            linger: DEFAULT_CLOSE_LINGER,
            heartbeat: None,
            #[cfg(feature = "metrics")]
            metrics: false,
            #[cfg(feature = "ws")]
            ws_auth: None,
        }
    }
}

impl<F: Framing> Server<F> {
    /// The configuration the server was built with.
    #[must_use]
    pub fn config(&self) -> &Config {
        &self.config
    }

    /// A handle for watching the server while it runs.
    #[must_use]
    pub fn handle(&self) -> ServerHandle {
        self.handle.clone()
    }

    /// The connection manager.
    #[must_use]
    pub fn manager(&self) -> ConnManager {
        self.handle.manager()
    }

    /// Registers the server's metrics (every metric of docs/METRICS.md, named
    /// `zinx_*` under `registry`'s own prefix) in an application's
    /// `prometheus-client` registry, to be served with its own metrics. The
    /// gauges are read when that registry is encoded. False when the server
    /// counts no metrics: enable them with [`ServerBuilder::with_metrics`] (or
    /// `MetricsAddr`).
    ///
    /// # Examples
    ///
    /// ```
    /// use zinx::prometheus_client::registry::Registry;
    /// use zinx::{Config, Server};
    ///
    /// let mut registry = Registry::default();
    /// let server = Server::builder(Config::default()).with_metrics().build();
    /// assert!(server.register_metrics(&mut registry));
    /// ```
    #[cfg(feature = "metrics")]
    pub fn register_metrics(&self, registry: &mut prometheus_client::registry::Registry) -> bool {
        let Some(metrics) = self.core.engine.observer.metrics() else {
            return false;
        };
        let registry = registry.sub_registry_with_prefix("zinx");
        metrics.register(registry);
        let gauges = crate::metrics::Gauges::new(self.handle.manager());
        registry.register_collector(Box::new(gauges));
        true
    }

    /// Binds the listeners the config asks for (`Host:TCPPort`, speaking TLS
    /// when `CertFile` and `PrivateKeyFile` are set: see [`bind_listeners`])
    /// and runs until `shutdown` completes.
    ///
    /// # Errors
    ///
    /// As [`bind_listeners`]: [`Error::Listen`] if an address cannot be bound,
    /// [`Error::Tls`] or [`Error::ConfigValue`] if the config asks for TLS that
    /// cannot be served.
    pub async fn serve(self, shutdown: impl Future<Output = ()>) -> Result<(), Error> {
        let listeners = bind_listeners(&self.config).await?;
        self.run_all(listeners, shutdown).await
    }

    /// Accepts connections on `listener` until `shutdown` completes, then closes
    /// every connection (flushing what each has queued and running
    /// `on_disconnect`) and returns once every task the server started has ended.
    ///
    /// # Errors
    ///
    /// As [`run_all`](Self::run_all).
    pub async fn run(
        self,
        listener: impl Into<Listener>,
        shutdown: impl Future<Output = ()>,
    ) -> Result<(), Error> {
        self.run_all([listener.into()], shutdown).await
    }

    /// Accepts connections on every listener until `shutdown` completes: one
    /// connection manager (one ID space), one `MaxConn` and `MaxConnPerIP`
    /// across all of them, one shutdown. Then closes every connection as
    /// [`run`](Self::run) does.
    ///
    /// # Errors
    ///
    /// [`Error::Listen`] if the metrics endpoint (`MetricsAddr`) cannot be
    /// bound, [`Error::Io`] if a listener's address cannot be read. Accept errors
    /// are logged and retried with a backoff.
    pub async fn run_all(
        self,
        listeners: impl IntoIterator<Item = Listener>,
        shutdown: impl Future<Output = ()>,
    ) -> Result<(), Error> {
        let Server {
            config,
            core,
            handle,
            #[cfg(feature = "ws")]
            ws_auth,
        } = self;
        let engine = core.engine.clone();
        #[cfg(feature = "metrics")]
        if let Some(metrics) = engine
            .observer
            .metrics()
            .filter(|_| !config.metrics_addr.is_empty())
        {
            let (scrapes, addr) =
                crate::metrics::bind(&config.metrics_addr)
                    .await
                    .map_err(|source| Error::Listen {
                        addr: config.metrics_addr.clone(),
                        keys: "MetricsAddr",
                        source,
                    })?;
            let _ = handle.metrics_addr.set(addr);
            tracing::info!(%addr, "serving metrics at /metrics");
            engine.tracker.spawn(crate::metrics::serve(
                scrapes,
                metrics.clone(),
                engine.stop.clone(),
                engine.tracker.clone(),
            ));
        }
        #[cfg(not(feature = "metrics"))]
        if !config.metrics_addr.is_empty() {
            tracing::warn!("MetricsAddr is set but zinx was built without the `metrics` feature");
        }

        let stop_accepting = CancellationToken::new();
        let mut accepting = Vec::new();
        for listener in listeners {
            let addr = listener.local_addr()?;
            let transport = listener.transport();
            tracing::info!(name = %config.name, %addr, transport, "server started");
            let stop = stop_accepting.clone();
            accepting.push(match listener {
                Listener::Tcp(tcp) => tokio::spawn(accept(core.clone(), tcp, Arc::new(Tcp), stop)),
                // The handshake is the open step: in each connection's task.
                #[cfg(feature = "tls")]
                Listener::Tls(tcp, tls) => {
                    tokio::spawn(accept(core.clone(), tcp, Arc::new(tls), stop))
                }
                // The upgrade (after the TLS handshake, for wss) is the open step.
                #[cfg(feature = "ws")]
                #[cfg_attr(not(feature = "tls"), allow(unused_mut))]
                Listener::Ws(tcp, mut ws) => {
                    ws.default_auth(ws_auth.as_ref());
                    #[cfg(feature = "tls")]
                    let tls = ws.take_tls();
                    let open = ws.into_open(&engine.framing);
                    #[cfg(feature = "tls")]
                    let task = match tls {
                        Some(tls) => {
                            let wss = crate::transport::ws::WssOpen { tls, ws: open };
                            tokio::spawn(accept(core.clone(), tcp, Arc::new(wss), stop))
                        }
                        None => tokio::spawn(accept(core.clone(), tcp, Arc::new(open), stop)),
                    };
                    #[cfg(not(feature = "tls"))]
                    let task = tokio::spawn(accept(core.clone(), tcp, Arc::new(open), stop));
                    task
                }
                // No handshake: opened by the accept loop, as TCP.
                #[cfg(feature = "kcp")]
                Listener::Kcp(kcp) => tokio::spawn(accept(
                    core.clone(),
                    kcp,
                    Arc::new(crate::transport::kcp::KcpOpen),
                    stop,
                )),
            });
        }
        drop(core);
        shutdown.await;
        stop_accepting.cancel();
        for task in accepting {
            if let Err(e) = task.await {
                tracing::error!(error = %e, "accept loop failed");
            }
        }

        tracing::info!(
            connections = handle.manager.len(),
            "server shutting down: closing connections"
        );
        // Connections starting from now close at once (the engine checks its
        // stop token after registering); those already registered are closed here.
        engine.stop.cancel();
        for conn in handle.manager.connections() {
            conn.close();
        }
        let (tracker, faults) = (engine.tracker.clone(), engine.faults.clone());
        drop(engine);
        tracker.close();
        tracker.wait().await;
        faults.flush();
        tracing::info!("server stopped");
        Ok(())
    }
}

/// Accepts on one listener until `stop`: admits each connection, then opens it
/// (at once for TCP, else in the connection's own task under the handshake
/// timeout) and runs it on the engine.
async fn accept<F, L, O>(
    core: Arc<Core<F>>,
    mut listener: L,
    opener: Arc<O>,
    stop: CancellationToken,
) where
    F: Framing,
    L: Accept,
    O: Open<L::Raw>,
{
    let mut backoff = Duration::ZERO;
    let refusing = Arc::new(Semaphore::new(MAX_REFUSING));
    loop {
        let accepted = tokio::select! {
            biased;
            () = stop.cancelled() => break,
            // Cancel-safe: see Accept::accept.
            accepted = listener.accept() => accepted,
        };
        let (raw, peer) = match accepted {
            Ok(pair) => {
                backoff = Duration::ZERO;
                pair
            }
            Err(e) if is_per_connection(&e) => continue,
            Err(e) => {
                backoff = (backoff * 2).clamp(Duration::from_millis(1), MAX_ACCEPT_BACKOFF);
                tracing::warn!(error = %e, ?backoff, "accept failed, backing off");
                // Cancel-safe: dropping an unfinished sleep only shortens the pause.
                tokio::select! {
                    biased;
                    () = stop.cancelled() => break,
                    () = tokio::time::sleep(backoff) => continue,
                }
            }
        };
        let slots = match core.admit(peer) {
            Ok(slots) => slots,
            Err(limit) => {
                if let Some(refusal) = opener.refuse(raw, limit) {
                    refuse(&core.engine, &refusing, refusal);
                }
                continue;
            }
        };
        let id = core.engine.manager.next_id();
        let span = tracing::info_span!("conn", conn_id = id.0, %peer);
        match opener.open_now(raw) {
            OpenNow::Opened(opened) => {
                let endpoint = Endpoint {
                    id,
                    peer,
                    local: opened.local,
                };
                core.start(opened, endpoint, slots, span);
            }
            OpenNow::Failed(e) => tracing::debug!(%peer, error = %e, "connection lost at accept"),
            OpenNow::Later(raw) => {
                let core = core.clone();
                let opener = opener.clone();
                let tracker = core.engine.tracker.clone();
                tracker.spawn(
                    async move {
                        let opened = match tokio::time::timeout(
                            core.handshake,
                            opener.open(raw, peer),
                        )
                        .await
                        {
                            Ok(Ok(opened)) => opened,
                            Ok(Err(e)) => return core.handshake_failed(peer, &e),
                            Err(_) => {
                                let timeout = core.handshake;
                                let why = format!("handshake not done within {timeout:?}");
                                return core.handshake_failed(peer, &why);
                            }
                        };
                        let endpoint = Endpoint {
                            id,
                            peer,
                            local: opened.local,
                        };
                        let prepared = core.engine.setup(opened.read, opened.write, endpoint);
                        Engine::run(core.engine.clone(), prepared, slots, None).await;
                    }
                    .instrument(span),
                );
            }
        }
    }
}

/// How many refusals (answers to connections over a limit, see
/// [`Open::refuse`]) one listener runs at once; beyond that, a connection over
/// a limit is just closed.
const MAX_REFUSING: usize = 64;

/// Runs a refusal in its own task, if fewer than [`MAX_REFUSING`] run; it
/// ends at shutdown too.
fn refuse<F>(engine: &Engine<F>, refusing: &Arc<Semaphore>, refusal: crate::transport::Refusal) {
    let Ok(permit) = refusing.clone().try_acquire_owned() else {
        return;
    };
    let stop = engine.stop.clone();
    engine.tracker.spawn(async move {
        let _permit = permit;
        tokio::select! {
            () = stop.cancelled() => {}
            () = refusal => {}
        }
    });
}

impl<F: Framing> Core<F> {
    /// Takes a `MaxConn` permit and a `MaxConnPerIP` slot (where set) for a new
    /// connection from `peer`, or names the limit that is full (the fault
    /// counted).
    fn admit(&self, peer: std::net::SocketAddr) -> Result<Slots, Fault> {
        let admitted = admit(
            self.limit.as_ref(),
            &self.per_ip,
            self.max_conn_per_ip,
            peer.ip(),
        );
        match admitted {
            Ok(_) => self.engine.observer.accepted(),
            Err(limit) => {
                let faults = &self.engine.faults;
                faults.record(limit, peer, &"connection limit reached, closed at accept");
                self.engine.observer.rejected(limit.name());
            }
        }
        admitted
    }

    /// A connection whose open step failed or timed out: counted and summed up
    /// as a peer's fault, and in the metrics as refused for `handshake`.
    fn handshake_failed(&self, peer: std::net::SocketAddr, why: &dyn std::fmt::Display) {
        self.engine.faults.record(Fault::Handshake, peer, why);
        self.engine.observer.rejected(Fault::Handshake.name());
    }

    /// Sets up an opened connection in the accept loop and spawns its task.
    fn start<R: ReadSource, W: AsyncWrite + Unpin + Send + 'static>(
        &self,
        opened: Opened<R, W>,
        endpoint: Endpoint,
        slots: Slots,
        span: tracing::Span,
    ) {
        let engine = &self.engine;
        let prepared = span.in_scope(|| engine.setup(opened.read, opened.write, endpoint));
        // The slots are given back with the connection's other resources,
        // before on_disconnect.
        let run = Engine::run(engine.clone(), prepared, slots, None);
        // Without a subscriber for the span (logging above INFO), no wrapper:
        // it would be polled on every turn of the task for nothing.
        if span.is_disabled() {
            engine.tracker.spawn(run);
        } else {
            engine.tracker.spawn(run.instrument(span));
        }
    }
}

/// What a connection holds of the server's limits, given back when it ends.
type Slots = (Option<OwnedSemaphorePermit>, Option<Box<IpSlot>>);

/// Takes a `MaxConn` permit and a `MaxConnPerIP` slot (where set) for a new
/// connection from `ip`, or names the limit that is full.
fn admit(
    limit: Option<&Arc<Semaphore>>,
    per_ip: &PerIp,
    max_per_ip: usize,
    ip: std::net::IpAddr,
) -> Result<Slots, Fault> {
    let permit = match limit {
        None => None,
        Some(limit) => Some(
            limit
                .clone()
                .try_acquire_owned()
                .map_err(|_| Fault::MaxConn)?,
        ),
    };
    let slot = match max_per_ip {
        0 => None,
        max => Some(per_ip.try_take(ip, max).ok_or(Fault::MaxConnPerIp)?),
    };
    Ok((permit, slot))
}

/// Errors of one incoming connection that say nothing about the listener.
fn is_per_connection(e: &std::io::Error) -> bool {
    use std::io::ErrorKind::{ConnectionAborted, ConnectionReset, Interrupted};
    matches!(e.kind(), ConnectionAborted | ConnectionReset | Interrupted)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use std::net::SocketAddr;

    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};
    use tokio::net::{TcpListener, TcpStream};

    use super::*;
    use crate::request::Request;

    /// A transport whose handshake is one byte, `!`, from the peer.
    struct Bang;

    impl Open<TcpStream> for Bang {
        type Read = OwnedReadHalf;
        type Write = OwnedWriteHalf;

        async fn open(
            &self,
            mut raw: TcpStream,
            _peer: SocketAddr,
        ) -> Result<Opened<OwnedReadHalf, OwnedWriteHalf>, Error> {
            let mut byte = [0u8; 1];
            raw.read_exact(&mut byte).await?;
            if byte != *b"!" {
                return Err(Error::BadFrame {
                    reason: "no bang".into(),
                });
            }
            Ok(crate::transport::tcp::open(raw)?)
        }
    }

    fn frame(id: u32, data: &[u8]) -> Vec<u8> {
        let mut wire = bytes::BytesMut::new();
        Codec::default()
            .encode_into(crate::MsgId(id), data, &mut wire)
            .unwrap();
        wire.to_vec()
    }

    /// Sends the handshake and one echo; returns the reply's data.
    async fn echo_after_bang(addr: SocketAddr) -> Vec<u8> {
        let mut peer = TcpStream::connect(addr).await.unwrap();
        peer.write_all(b"!").await.unwrap();
        peer.write_all(&frame(1, b"hi")).await.unwrap();
        let mut reply = [0u8; 10];
        peer.read_exact(&mut reply).await.unwrap();
        reply[8..].to_vec()
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_stalled_handshake_holds_one_slot_until_the_timeout_and_stalls_nobody() {
        let server = Server::builder(Config {
            max_conn: 2,
            handshake_timeout: 1,
            ..Config::default()
        })
        .router(Router::new().route_sync(1, |req: &Request| req.conn().try_send(1, req.data())))
        .build();
        let (core, handle) = (server.core.clone(), server.handle());
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let stop = CancellationToken::new();
        let accepting = tokio::spawn(accept(core, listener, Arc::new(Bang), stop.clone()));

        // A peer that connects and never sends its handshake...
        let mut stalled = TcpStream::connect(addr).await.unwrap();
        // ...does not keep the next one from being accepted, opened and served.
        let started = std::time::Instant::now();
        let reply = tokio::time::timeout(Duration::from_secs(5), echo_after_bang(addr))
            .await
            .unwrap();
        assert_eq!(reply, b"hi");
        assert!(started.elapsed() < Duration::from_secs(1));
        // The stalled one holds its slot (admitted before its open step) until
        // the handshake timeout closes it; it never reached the manager.
        let stalled_addr = stalled.local_addr().unwrap();
        let registered = handle.manager().connections();
        assert!(registered.iter().all(|c| c.peer_addr() != stalled_addr));
        let mut rest = Vec::new();
        let closed = tokio::time::timeout(Duration::from_secs(5), stalled.read_to_end(&mut rest))
            .await
            .unwrap();
        assert!(closed.is_ok() && rest.is_empty());
        assert!(started.elapsed() >= Duration::from_millis(900));
        for _ in 0..100 {
            if handle.free_slots() == Some(2) {
                break;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        assert_eq!(handle.free_slots(), Some(2), "both slots are back");
        stop.cancel();
        accepting.await.unwrap();
        assert_eq!(server.core.engine.faults.total(Fault::Handshake), 1);
    }
}
