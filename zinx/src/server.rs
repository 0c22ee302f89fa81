//! The server: accepts connections and runs each one until it ends.
//!
//! [`Server::run`] accepts on a listener until its shutdown future completes. For
//! every accepted socket it takes a `MaxConn` permit (over the limit the socket is
//! closed at once), registers a [`Connection`] with the [`ConnManager`] and spawns
//! the connection's task, which runs `on_connect`, then reads until the connection
//! ends, writing what is queued (its writer is made with the first message). Cleanup
//! happens in a fixed order: writer flushed, worker lane released, manager entry and
//! permit dropped (guards, so a panic cannot skip them), then `on_disconnect` and
//! the close callbacks.
//!
//! Shutdown cancels the server's stop token and closes every registered
//! connection (a connection registering afterwards sees the token and closes
//! itself); `run` returns when the [`TaskTracker`] holding every connection, writer
//! and async-op task is empty.

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use tokio::net::TcpListener;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::Instrument;

use crate::codec::{Codec, Layout};
use crate::config::Config;
use crate::conn::Connection;
use crate::conn::driver::{Endpoint, Engine, Limits};
use crate::error::Error;
use crate::faults::{Fault, Faults};
use crate::framing::Framing;
use crate::heartbeat::Heartbeat;
use crate::hooks::{self, Hooks};
use crate::limit::{IpSlot, PerIp};
use crate::manager::ConnManager;
use crate::message::ConnId;
use crate::router::Router;
use crate::worker::WorkerPool;

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

    /// How long a closing connection may spend writing what is still queued
    /// (default [`DEFAULT_CLOSE_LINGER`]). A peer that does not read within it is
    /// cut off.
    pub fn close_linger(mut self, linger: Duration) -> Self {
        self.linger = linger;
        self
    }

    /// Finishes the server. Nothing runs until [`Server::run`].
    pub fn build(self) -> Server<F> {
        let limit =
            (self.config.max_conn > 0).then(|| Arc::new(Semaphore::new(self.config.max_conn)));
        Server {
            handle: ServerHandle {
                manager: ConnManager::new(),
                tracker: TaskTracker::new(),
                limit,
                faults: Arc::default(),
                #[cfg(feature = "metrics")]
                metrics_addr: Arc::default(),
            },
            router: self.router,
            framing: self.framing,
            hooks: self.hooks,
            linger: self.linger,
            heartbeat: self.heartbeat,
            config: self.config,
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
    router: Arc<Router>,
    framing: F,
    hooks: Hooks,
    linger: Duration,
    heartbeat: Option<Heartbeat>,
    handle: ServerHandle,
}

/// A cheap clonable view of a server, usable while it runs: its connections and
/// what it holds.
#[derive(Clone)]
pub struct ServerHandle {
    manager: ConnManager,
    tracker: TaskTracker,
    limit: Option<Arc<Semaphore>>,
    faults: Arc<Faults>,
    #[cfg(feature = "metrics")]
    metrics_addr: Arc<std::sync::OnceLock<std::net::SocketAddr>>,
}

impl ServerHandle {
    /// The server's connection manager.
    #[must_use]
    pub fn manager(&self) -> ConnManager {
        self.manager.clone()
    }

    /// Tasks the server is running: one per connection, and its writer once
    /// something was sent (plus the metrics endpoint, when served).
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

    /// Binds `Host:TCPPort` from the config (see [`bind_tcp`]) and runs until
    /// `shutdown` completes.
    ///
    /// # Errors
    ///
    /// [`Error::Listen`] if the address cannot be bound.
    pub async fn serve(self, shutdown: impl Future<Output = ()>) -> Result<(), Error> {
        let listener = bind_tcp(&self.config).await?;
        self.run(listener, shutdown).await
    }

    /// Accepts connections on `listener` until `shutdown` completes, then closes
    /// every connection (flushing what each has queued and running
    /// `on_disconnect`) and returns once every task the server started has ended.
    ///
    /// # Errors
    ///
    /// None at present: accept errors are logged and retried with a backoff. The
    /// `Result` leaves room for transports whose setup can fail.
    pub async fn run(
        self,
        listener: TcpListener,
        shutdown: impl Future<Output = ()>,
    ) -> Result<(), Error> {
        let Server {
            config,
            router,
            framing,
            hooks,
            linger,
            heartbeat,
            handle,
        } = self;
        let tracker = handle.tracker.clone();
        let root = CancellationToken::new();
        let to_usize = |n: u32| usize::try_from(n).unwrap_or(usize::MAX);
        #[cfg(feature = "metrics")]
        let metrics = if config.metrics_addr.is_empty() {
            None
        } else {
            let ids = router
                .route_ids()
                .chain(heartbeat.as_ref().map(|hb| hb.msg_id));
            let metrics = Arc::new(crate::metrics::Metrics::new(ids));
            let (scrapes, addr) = crate::metrics::bind(&config.metrics_addr).await?;
            let _ = handle.metrics_addr.set(addr);
            tracing::info!(%addr, "serving metrics at /metrics");
            tracker.spawn(crate::metrics::serve(
                scrapes,
                metrics.clone(),
                handle.manager.clone(),
                root.clone(),
                tracker.clone(),
            ));
            Some(metrics)
        };
        #[cfg(not(feature = "metrics"))]
        if !config.metrics_addr.is_empty() {
            tracing::warn!("MetricsAddr is set but zinx was built without the `metrics` feature");
        }
        let pool = WorkerPool::new(
            config.worker_mode,
            to_usize(config.worker_pool_size),
            to_usize(config.max_worker_task_len),
            Arc::new(router.compile(heartbeat.as_ref().map(|hb| hb.msg_id), None)),
        );
        let faults = handle.faults.clone();
        let engine = Arc::new(Engine {
            framing,
            limits: Limits::from_config(&config),
            linger,
            hooks,
            manager: handle.manager.clone(),
            heartbeat,
            faults: faults.clone(),
            #[cfg(feature = "metrics")]
            metrics: metrics.clone(),
            pool,
            tracker: tracker.clone(),
            stop: root.clone(),
        });
        let local = listener.local_addr()?;
        tracing::info!(name = %config.name, addr = %local, "server started");

        let mut next_id = 0u64;
        let mut backoff = Duration::ZERO;
        let per_ip = PerIp::default();
        tokio::pin!(shutdown);
        loop {
            let accepted = tokio::select! {
                biased;
                () = &mut shutdown => break,
                // Cancel-safe: TcpListener::accept loses no connection when dropped.
                accepted = listener.accept() => accepted,
            };
            let (stream, peer) = match accepted {
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
                        () = &mut shutdown => break,
                        () = tokio::time::sleep(backoff) => continue,
                    }
                }
            };
            let slots = match admit(
                handle.limit.as_ref(),
                &per_ip,
                config.max_conn_per_ip,
                peer.ip(),
            ) {
                Ok(slots) => slots,
                Err(limit) => {
                    faults.record(limit, peer, &"connection limit reached, closed at accept");
                    #[cfg(feature = "metrics")]
                    if let Some(m) = &metrics {
                        m.rejected(limit.name());
                    }
                    drop(stream);
                    continue;
                }
            };
            #[cfg(feature = "metrics")]
            if let Some(m) = &metrics {
                m.accepted();
            }
            next_id += 1;
            let id = ConnId(next_id);
            let span = tracing::info_span!("conn", conn_id = id.0, %peer);
            let _ = stream.set_nodelay(true);
            let local = stream.local_addr().unwrap_or(local);
            let (r, w) = stream.into_split();
            let endpoint = Endpoint { id, peer, local };
            let opened = span.in_scope(|| engine.open(r, w, endpoint));
            // The slots are given back with the connection's other resources,
            // before on_disconnect.
            let run = Engine::run(engine.clone(), opened, slots, None);
            // Without a subscriber for the span (logging above INFO), no wrapper:
            // it would be polled on every turn of the task for nothing.
            if span.is_disabled() {
                tracker.spawn(run);
            } else {
                tracker.spawn(run.instrument(span));
            }
        }

        drop(listener);
        tracing::info!(
            connections = handle.manager.len(),
            "server shutting down: closing connections"
        );
        // Connections starting from now close at once (the engine checks `root`
        // after registering); those already registered are closed here.
        root.cancel();
        for conn in handle.manager.connections() {
            conn.close();
        }
        drop(engine);
        tracker.close();
        tracker.wait().await;
        faults.flush();
        tracing::info!("server stopped");
        Ok(())
    }
}

/// Binds a TCP listener on the config's `Host:TCPPort` with its
/// `ListenBacklog` (0: the system's limit, see [`listen_backlog`]), so a burst
/// of connects waits in the kernel's queue instead of being refused. (tokio's
/// `TcpListener::bind` uses 128.)
///
/// # Errors
///
/// [`Error::Listen`], naming the address and its config keys, when `Host` does
/// not resolve or no address of it can be bound.
pub async fn bind_tcp(config: &Config) -> Result<TcpListener, Error> {
    let addr = config.tcp_addr();
    let failed = |source| Error::Listen {
        addr: addr.clone(),
        keys: "Host, TCPPort",
        source,
    };
    let backlog = match config.listen_backlog {
        0 => listen_backlog(),
        n => n,
    };
    let mut last = None;
    for resolved in tokio::net::lookup_host(&addr).await.map_err(failed)? {
        let socket = if resolved.is_ipv4() {
            tokio::net::TcpSocket::new_v4()
        } else {
            tokio::net::TcpSocket::new_v6()
        };
        let bound = socket.and_then(|socket| {
            // As tokio and Go do: a restarted server can bind at once.
            #[cfg(unix)]
            socket.set_reuseaddr(true)?;
            socket.bind(resolved)?;
            socket.listen(backlog)
        });
        match bound {
            Ok(listener) => return Ok(listener),
            Err(e) => last = Some(e),
        }
    }
    Err(failed(last.unwrap_or_else(|| {
        std::io::Error::new(std::io::ErrorKind::NotFound, "no address found")
    })))
}

/// The system's limit on a listen queue: `net.core.somaxconn` on Linux (read
/// as Go reads it), else 4096; at most 65,535.
#[must_use]
pub fn listen_backlog() -> u32 {
    std::fs::read_to_string("/proc/sys/net/core/somaxconn")
        .ok()
        .and_then(|text| text.trim().parse::<u32>().ok())
        .filter(|&n| n > 0)
        .unwrap_or(4096)
        .min(65_535)
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

fn is_per_connection(e: &std::io::Error) -> bool {
    use std::io::ErrorKind::{ConnectionAborted, ConnectionReset, Interrupted};
    matches!(e.kind(), ConnectionAborted | ConnectionReset | Interrupted)
}
