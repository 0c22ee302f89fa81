//! The connection engine: a connection's life from set-up to clean-up, shared
//! by the server and the client.
//!
//! [`Engine::setup`] sets a connection up (handle, worker lane, manager entry, a
//! writer that starts with the first message queued); [`Engine::run`] runs it from
//! `on_connect` to fully cleaned up: read until the end, then close, wait for the
//! writer to flush, release the lane, the registration and the caller's guard (a
//! `MaxConn` permit), and only then run `on_disconnect` and the close callbacks.
//! The two are split so the set-up's inputs (addresses, socket halves) are not
//! kept in the long-lived future of every connection.

pub(crate) mod reader;

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use tokio::io::AsyncWrite;
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::config::{Config, SendQueueFull, WorkerMode};
use crate::conn::writer::Writer;
use crate::conn::{Connection, Parts};
use crate::engine::reader::{ReadEnd, ReadSettings, ReadSource, Timeout};
use crate::faults::{Fault, Faults};
use crate::framing::Framing;
use crate::heartbeat::Heartbeat;
use crate::hooks::Hooks;
use crate::limit::RateLimit;
use crate::manager::{ConnManager, Registration};
use crate::message::ConnId;
use crate::observe::Observer;
use crate::router::Dispatcher;
use crate::worker::{Lane, WorkerPool};

/// What a connection's limits are, from the config: read once, for servers
/// and clients alike.
#[derive(Debug, Clone)]
pub(crate) struct Limits {
    pub(crate) read: ReadSettings,
    /// `MaxMsgChanLen`.
    pub(crate) send_queue: usize,
    /// `MaxMsgChanBytes` (`usize::MAX`: none).
    pub(crate) send_queue_bytes: usize,
    pub(crate) send_queue_full: SendQueueFull,
    /// The rate limit each connection starts with (`MaxMsgRate`, `MaxMsgBurst`).
    pub(crate) rate: Option<RateLimit>,
}

impl Limits {
    pub(crate) fn from_config(config: &Config) -> Limits {
        let to_usize = |n: u32| usize::try_from(n).unwrap_or(usize::MAX);
        Limits {
            read: ReadSettings {
                chunk: to_usize(config.io_read_buff_size).max(crate::codec::HEADER_LEN),
                frame_timeout: config.frame_timeout(),
                idle_timeout: config.idle_timeout(),
            },
            send_queue: to_usize(config.max_msg_chan_len).max(1),
            send_queue_bytes: match config.max_msg_chan_bytes {
                0 => usize::MAX,
                n => n,
            },
            send_queue_full: config.send_queue_full,
            rate: RateLimit::new(config.max_msg_rate, config.max_msg_burst),
        }
    }
}

/// Everything the connections of one server (or one client) share.
pub(crate) struct Engine<F> {
    pub(crate) framing: F,
    pub(crate) limits: Limits,
    pub(crate) linger: Duration,
    pub(crate) hooks: Hooks,
    pub(crate) manager: ConnManager,
    pub(crate) heartbeat: Option<Heartbeat>,
    /// Where peers' faults are counted and summed up in the log.
    pub(crate) faults: Arc<Faults>,
    /// Where the data path reports what it does (metrics).
    pub(crate) observer: Observer,
    pub(crate) pool: Arc<WorkerPool>,
    pub(crate) tracker: TaskTracker,
    /// Cancelled when the server (or client) stops: a connection that starts
    /// after that closes at once; those already open are closed by the stopper.
    pub(crate) stop: CancellationToken,
}

impl<F: Framing> Engine<F> {
    /// The engine for `config`: built the same way for a server and a client,
    /// which differ in their workers (`(mode, size)`), manager and metrics.
    pub(crate) fn new(
        config: &Config,
        framing: F,
        hooks: Hooks,
        heartbeat: Option<Heartbeat>,
        linger: Duration,
        dispatcher: Dispatcher,
        workers: (WorkerMode, usize),
    ) -> Engine<F> {
        let (mode, size) = workers;
        let ops = usize::try_from(config.max_worker_task_len).unwrap_or(usize::MAX);
        let manager = ConnManager::new();
        manager.set_encoder(crate::conn::outgoing::Encoder::new(&framing));
        Engine {
            framing,
            limits: Limits::from_config(config),
            linger,
            hooks,
            manager,
            heartbeat,
            faults: Arc::default(),
            observer: Observer::default(),
            pool: WorkerPool::new(mode, size, ops, Arc::new(dispatcher)),
            tracker: TaskTracker::new(),
            stop: CancellationToken::new(),
        }
    }
}

/// Who a new connection is.
pub(crate) struct Endpoint {
    pub(crate) id: ConnId,
    pub(crate) peer: SocketAddr,
    pub(crate) local: SocketAddr,
}

/// Logs why a connection's reader stopped (a peer's fault through `faults`);
/// only the word is kept across the awaits that follow (the error is large, and
/// would be held by every reader).
fn log_end(end: ReadEnd, conn: &Connection, faults: &Faults, observer: &Observer) -> &'static str {
    let peer = conn.peer_addr();
    match &end {
        ReadEnd::Failed(e) if e.is_protocol() => faults.record(Fault::Protocol, peer, e),
        ReadEnd::Failed(e) => tracing::debug!(error = %e, "read failed, closing connection"),
        ReadEnd::TimedOut(Timeout::Frame) => {
            faults.record(Fault::FrameTimeout, peer, &"a frame left unfinished");
        }
        ReadEnd::TimedOut(Timeout::Idle) => {
            faults.record(Fault::IdleTimeout, peer, &"nothing received");
        }
        ReadEnd::PeerClosed | ReadEnd::Cancelled => {}
    }
    observer.closed(end.label());
    end.reason()
}

/// A connection set up by [`Engine::setup`], ready to be run.
pub(crate) struct Prepared<R> {
    r: R,
    conn: Connection,
    lane: Lane,
    registration: Registration,
}

impl<F: Framing> Engine<F> {
    /// Sets a connection up: creates its handle, registers it with the manager
    /// and prepares its writer, which is made with the first message queued (so
    /// an idle connection holds none). Runs in the caller's span.
    pub(crate) fn setup<R, W>(&self, mut r: R, w: W, endpoint: Endpoint) -> Prepared<R>
    where
        R: ReadSource,
        W: AsyncWrite + Unpin + Send + 'static,
    {
        let Endpoint { id, peer, local } = endpoint;
        let lane = self.pool.assign(id);
        let conn = Connection::new(Parts {
            id,
            peer,
            local,
            max_data_len: self.framing.max_data_len(),
            send_queue: self.limits.send_queue,
            send_queue_bytes: self.limits.send_queue_bytes,
            send_queue_full: self.limits.send_queue_full,
            encoder: crate::conn::outgoing::Encoder::new(&self.framing),
            manager: self.manager.downgrade(),
            jobs: self.pool.callback_queue(),
            tracker: Some(self.tracker.clone()),
            observer: self.observer.clone(),
        });
        r.opened(&conn);
        let registration = self.manager.register(conn.clone());
        let linger = self.linger;
        conn.set_writer(Box::new(move || Box::new(Writer::new(w, linger))));
        Prepared {
            r,
            conn,
            lane,
            registration,
        }
    }

    /// Runs an opened connection to its end: `on_connect`, read until the end,
    /// then close, wait for the writer to flush, release the lane and the
    /// registration and the caller's `guard` (a `MaxConn` permit), and only then
    /// run `on_disconnect` and the close callbacks. `current`, if given, holds
    /// the live connection while it is open (the client's view of it).
    ///
    /// A function returning an `async move` block rather than an `async fn`, which
    /// would store its arguments twice in every connection's task.
    #[allow(
        clippy::manual_async_fn,
        reason = "an async fn stores its arguments twice"
    )]
    pub(crate) fn run<'a, E, R, G>(
        engine: E,
        prepared: Prepared<R>,
        guard: G,
        current: Option<&'a watch::Sender<Option<Connection>>>,
    ) -> impl Future<Output = ()> + 'a
    where
        E: std::ops::Deref<Target = Self> + 'a,
        R: ReadSource,
        G: 'a,
    {
        let Prepared {
            r,
            conn,
            lane,
            registration,
        } = prepared;
        async move {
            tracing::debug!("connection opened");
            if let Some(current) = current {
                current.send_replace(Some(conn.clone()));
            }
            // Checked after registering and publishing, so a stop either finds
            // this connection to close or is seen here.
            if engine.stop.is_cancelled() {
                conn.close();
            }

            WithWriter::new(&conn, engine.hooks.connect(&conn)).await;
            let reason = log_end(
                WithWriter::new(
                    &conn,
                    reader::run(
                        r,
                        &conn,
                        &lane,
                        engine.framing.clone(),
                        &engine.limits.read,
                        reader::Extras::new(
                            engine.heartbeat.as_ref(),
                            engine.limits.rate.clone(),
                            &engine.observer,
                            &engine.limits.read,
                        ),
                    ),
                )
                .await,
                &conn,
                &engine.faults,
                &engine.observer,
            );
            conn.close();
            if let Some(current) = current {
                current.send_replace(None);
            }
            // The final flush (bounded by the linger time), and the socket's
            // shutdown.
            std::future::poll_fn(|cx| conn.poll_writer(cx)).await;
            drop(lane);
            drop(registration);
            drop(guard);
            tracing::debug!(reason, "connection closed");
            engine.hooks.disconnect(&conn).await;
            conn.run_close_callbacks();
        }
    }
}

pin_project_lite::pin_project! {
    /// Polls `fut`, then the connection's writer: what `fut` queued is written in
    /// the same turn of the connection's task. While `fut` runs the send queue is
    /// quiet (a send does not wake the task, which is running and checks the
    /// queue next).
    pub(crate) struct WithWriter<'a, F> {
        conn: &'a Connection,
        #[pin]
        fut: F,
    }
}

impl<'a, F: Future> WithWriter<'a, F> {
    pub(crate) fn new(conn: &'a Connection, fut: F) -> Self {
        WithWriter { conn, fut }
    }
}

impl<F: Future> Future for WithWriter<'_, F> {
    type Output = F::Output;

    fn poll(
        self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<F::Output> {
        let this = self.project();
        let queue = this.conn.send_queue();
        queue.quiet(true);
        let out = this.fut.poll(cx);
        queue.quiet(false);
        // A writer that finishes closes the connection, which wakes `fut`.
        let _ = this.conn.poll_writer(cx);
        out
    }
}

#[cfg(test)]
mod tests {
    use bytes::BytesMut;
    use tokio::io::{AsyncReadExt, AsyncWriteExt, DuplexStream};
    use tokio_util::codec::Encoder;

    use super::*;
    use crate::codec::Codec;
    use crate::config::WorkerMode;
    use crate::message::Message;
    use crate::request::Request;
    use crate::router::Router;

    fn engine(heartbeat: Option<Heartbeat>, router: Router) -> Engine<Codec> {
        engine_with(
            Config {
                frame_timeout: 0,
                ..Config::default()
            },
            heartbeat,
            router,
        )
    }

    /// An engine with the limits of `config` (but a send queue of 16).
    fn engine_with(config: Config, heartbeat: Option<Heartbeat>, router: Router) -> Engine<Codec> {
        let hb_id = heartbeat.as_ref().map(|hb| hb.msg_id);
        let config = Config {
            max_msg_chan_len: 16,
            ..config
        };
        Engine::new(
            &config,
            Codec::default(),
            Hooks::default(),
            heartbeat,
            Duration::from_secs(1),
            router.compile(hb_id, None),
            (WorkerMode::Hash, 0),
        )
    }

    /// Drives a connection over an in-memory pipe; returns the peer's end.
    fn start(engine: Arc<Engine<Codec>>) -> (DuplexStream, tokio::task::JoinHandle<()>) {
        start_with_pipe(engine, 64 * 1024)
    }

    /// As [`start`], with a pipe buffer of `pipe` bytes.
    fn start_with_pipe(
        engine: Arc<Engine<Codec>>,
        pipe: usize,
    ) -> (DuplexStream, tokio::task::JoinHandle<()>) {
        let (peer, io) = tokio::io::duplex(pipe);
        let addr: SocketAddr = "127.0.0.1:9".parse().unwrap();
        let task = tokio::spawn(async move {
            let (r, w) = tokio::io::split(io);
            let endpoint = Endpoint {
                id: ConnId(1),
                peer: addr,
                local: addr,
            };
            let prepared = engine.setup(r, w, endpoint);
            Engine::run(engine, prepared, (), None).await;
        });
        (peer, task)
    }

    #[tokio::test]
    async fn an_async_op_result_wakes_the_reader_and_its_queue_comes_with_the_first_op() {
        let (tx, mut had_queue) = tokio::sync::mpsc::unbounded_channel();
        let router = Router::new().route(1, move |req: Request| {
            let _ = tx.send(req.conn().jobs().is_some());
            let started = req.conn().async_op(
                || 41,
                |conn, value| async move {
                    let _ = conn.send(2, (value + 1).to_string()).await;
                },
            );
            let _ = tx.send(req.conn().jobs().is_some());
            async move { started }
        });
        let (mut peer, task) = start(Arc::new(engine(None, router)));
        peer.write_all(&frame(1, "x")).await.unwrap();
        // The reader waits for bytes when the result comes: only the wake of
        // the close signal's reader slot gets it run.
        let reply = tokio::time::timeout(Duration::from_secs(10), read_frame(&mut peer))
            .await
            .expect("the result was run");
        assert_eq!(reply, Message::new(2, "42"));
        assert_eq!(had_queue.recv().await, Some(false), "none before the op");
        assert_eq!(had_queue.recv().await, Some(true));
        drop(peer);
        task.await.unwrap();
    }

    async fn read_frame(peer: &mut DuplexStream) -> Message {
        let mut header = [0u8; 8];
        peer.read_exact(&mut header).await.unwrap();
        let id = u32::from_be_bytes(header[..4].try_into().unwrap());
        let len = u32::from_be_bytes(header[4..].try_into().unwrap()) as usize;
        let mut data = vec![0u8; len];
        peer.read_exact(&mut data).await.unwrap();
        Message::new(id, data)
    }

    fn frame(id: u32, data: &'static str) -> Vec<u8> {
        let mut buf = BytesMut::new();
        Codec::default()
            .encode(Message::new(id, data), &mut buf)
            .unwrap();
        buf.to_vec()
    }

    /// Every idle connection holds this future in its task: tokio's cell is a
    /// 32-byte header, the future with 72 bytes around it (span, tracker,
    /// scheduler, task ID) and a 48-byte trailer, rounded up to 128 bytes. Up to
    /// 488 bytes of future that is 640 bytes; one byte more and it is 768.
    #[tokio::test]
    async fn a_connection_task_future_stays_small() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let client = tokio::net::TcpStream::connect(listener.local_addr().unwrap());
        let (client, accepted) = tokio::join!(client, listener.accept());
        let (stream, peer) = accepted.unwrap();
        let (r, w) = stream.into_split();
        let engine = Arc::new(engine(None, Router::new()));
        let endpoint = Endpoint {
            id: ConnId(1),
            peer,
            local: peer,
        };
        let prepared = engine.setup(r, w, endpoint);
        let permit: Option<tokio::sync::OwnedSemaphorePermit> = None;
        let guard = (permit, None::<Box<crate::limit::IpSlot>>);
        let run = Engine::run(engine.clone(), prepared, guard, None);
        let size = std::mem::size_of_val(&run);
        assert!(size <= 488, "connection future is {size} bytes");
        drop((run, client));
    }

    /// An echo server with `FrameTimeout` and `IdleTimeout` (seconds, 0: off).
    fn timeouts(frame: u64, idle: u64) -> Arc<Engine<Codec>> {
        let router =
            Router::new().route_sync(1, |req: &Request| req.conn().try_send(1, req.data()));
        let config = Config {
            frame_timeout: frame,
            idle_timeout: idle,
            ..Config::default()
        };
        Arc::new(engine_with(config, None, router))
    }

    /// Waits for the connection's task to end: a minute of paused time at most.
    async fn ended(task: tokio::task::JoinHandle<()>) {
        tokio::time::timeout(Duration::from_secs(60), task)
            .await
            .expect("the connection was closed")
            .unwrap();
    }

    #[tokio::test(start_paused = true)]
    async fn a_frame_left_unfinished_is_closed_at_the_frame_timeout() {
        // Half a header, then nothing.
        let (mut peer, task) = start(timeouts(5, 0));
        let began = tokio::time::Instant::now();
        peer.write_all(&frame(1, "abc")[..4]).await.unwrap();
        ended(task).await;
        assert_eq!(began.elapsed().as_secs(), 5, "{:?}", began.elapsed());

        // A frame trickled a byte a second: the time counts from its first byte.
        let (mut peer, task) = start(timeouts(5, 0));
        let began = tokio::time::Instant::now();
        let wire = frame(1, "0123456789");
        for byte in &wire {
            if task.is_finished() {
                break;
            }
            let _ = peer.write_all(std::slice::from_ref(byte)).await;
            tokio::time::sleep(Duration::from_secs(1)).await;
        }
        assert!(task.is_finished(), "still open after {:?}", began.elapsed());
        ended(task).await;
        assert!(
            began.elapsed() <= Duration::from_secs(6),
            "{:?}",
            began.elapsed()
        );
    }

    #[tokio::test(start_paused = true)]
    async fn whole_frames_and_quick_halves_never_trip_the_frame_timeout() {
        let (mut peer, task) = start(timeouts(5, 0));
        for i in 0..6 {
            // A frame in two halves 2 s apart, then 10 s of quiet.
            let wire = frame(1, "hello");
            peer.write_all(&wire[..6]).await.unwrap();
            tokio::time::sleep(Duration::from_secs(2)).await;
            peer.write_all(&wire[6..]).await.unwrap();
            assert_eq!(read_frame(&mut peer).await, Message::new(1, "hello"), "{i}");
            tokio::time::sleep(Duration::from_secs(10)).await;
            assert!(!task.is_finished(), "closed at round {i}");
        }
        drop(peer);
        ended(task).await;
    }

    #[tokio::test(start_paused = true)]
    async fn a_silent_peer_is_closed_at_the_idle_timeout_without_a_heartbeat() {
        let (mut peer, task) = start(timeouts(0, 3));
        // A message every 2 s keeps it open...
        for _ in 0..10 {
            tokio::time::sleep(Duration::from_secs(2)).await;
            peer.write_all(&frame(1, "x")).await.unwrap();
            assert_eq!(read_frame(&mut peer).await, Message::new(1, "x"));
        }
        assert!(!task.is_finished());
        // ...and 3 s of silence closes it.
        let silent_from = tokio::time::Instant::now();
        ended(task).await;
        assert_eq!(
            silent_from.elapsed().as_secs(),
            3,
            "{:?}",
            silent_from.elapsed()
        );

        // A peer that never sends anything is closed too.
        let (_peer, task) = start(timeouts(0, 3));
        let began = tokio::time::Instant::now();
        ended(task).await;
        assert_eq!(began.elapsed().as_secs(), 3);
    }

    #[tokio::test(start_paused = true)]
    async fn a_rate_limited_peer_is_handled_at_the_rate_after_a_burst() {
        use std::sync::Mutex;
        let times = Arc::new(Mutex::new(Vec::new()));
        let t = times.clone();
        let router = Router::new().route(1, move |_req: Request| {
            t.lock().unwrap().push(tokio::time::Instant::now());
            async {}
        });
        let mut engine = engine(None, router);
        engine.limits.rate = crate::limit::RateLimit::new(10, 5);
        let (mut peer, task) = start(Arc::new(engine));
        let start = tokio::time::Instant::now();
        // Twenty messages in one write: five at once, then five per half second.
        let wire: Vec<u8> = (0..20).flat_map(|_| frame(1, "x")).collect();
        peer.write_all(&wire).await.unwrap();
        drop(peer);
        task.await.unwrap();
        let offsets: Vec<u128> = times
            .lock()
            .unwrap()
            .iter()
            .map(|t| (*t - start).as_millis())
            .collect();
        let expected: Vec<u128> = (0..20).map(|i| (i / 5) * 500).collect();
        assert_eq!(offsets, expected);
    }

    #[tokio::test(start_paused = true)]
    async fn heartbeats_are_sent_every_interval() {
        let hb = Heartbeat::new(Duration::from_secs(1))
            .max_silence(Duration::from_secs(60))
            .payload(|_| bytes::Bytes::from_static(b"hb"));
        let (mut peer, task) = start(Arc::new(engine(Some(hb), Router::new())));
        let start = tokio::time::Instant::now();
        for n in 1..=3u64 {
            let msg = read_frame(&mut peer).await;
            assert_eq!((msg.id.0, &msg.data[..]), (99999, &b"hb"[..]));
            assert_eq!(start.elapsed(), Duration::from_secs(n));
        }
        drop(peer);
        task.await.unwrap();
    }

    #[tokio::test(start_paused = true)]
    async fn a_silent_peer_is_closed_after_the_limit() {
        let hb = Heartbeat::new(Duration::from_secs(1)).max_silence(Duration::from_secs(5));
        let (mut peer, task) = start(Arc::new(engine(Some(hb), Router::new())));
        let start = tokio::time::Instant::now();
        // Read (and ignore) heartbeats until the server closes: the peer is silent.
        let mut sink = Vec::new();
        peer.read_to_end(&mut sink).await.unwrap();
        task.await.unwrap();
        let waited = start.elapsed();
        assert!(
            waited > Duration::from_secs(5) && waited <= Duration::from_secs(6),
            "closed after {waited:?}"
        );
    }

    #[tokio::test(start_paused = true)]
    async fn a_peer_that_stops_reading_is_declared_dead_while_its_replies_wait() {
        let hb = Heartbeat::new(Duration::from_secs(1)).max_silence(Duration::from_secs(3));
        let router =
            Router::new().route_sync(1, |req: &Request| req.conn().try_send(1, req.data()));
        let (peer, task) = start_with_pipe(Arc::new(engine(Some(hb), router)), 64);
        // The peer sends and never reads: the send queue fills and the reader
        // waits for room, reading nothing more.
        let (_unread, mut peer_w) = tokio::io::split(peer);
        let writing = tokio::spawn(async move {
            for _ in 0..10_000 {
                if peer_w.write_all(&frame(1, "data")).await.is_err() {
                    break;
                }
            }
        });
        let start = tokio::time::Instant::now();
        tokio::time::timeout(Duration::from_secs(60), task)
            .await
            .expect("the stuck peer is closed")
            .unwrap();
        // The limit, at most one interval to notice, then the 1 s linger for
        // the writer that cannot flush.
        assert!(
            start.elapsed() <= Duration::from_secs(5),
            "closed after {:?}",
            start.elapsed()
        );
        writing.abort();
    }

    #[tokio::test(start_paused = true)]
    async fn any_inbound_message_counts_as_activity() {
        let hb = Heartbeat::new(Duration::from_secs(1)).max_silence(Duration::from_secs(3));
        let router = Router::new().route(1, |_req: Request| async {});
        let (peer, task) = start(Arc::new(engine(Some(hb), router)));
        let (mut peer_r, mut peer_w) = tokio::io::split(peer);
        // Drain heartbeats in the background.
        let reader = tokio::spawn(async move {
            let mut sink = Vec::new();
            let _ = peer_r.read_to_end(&mut sink).await;
        });
        // A data message (not a heartbeat) every 2 s keeps the connection alive
        // for 20 s, far past the 3 s limit.
        for _ in 0..10 {
            tokio::time::sleep(Duration::from_secs(2)).await;
            peer_w.write_all(&frame(1, "data")).await.unwrap();
            assert!(!task.is_finished(), "closed while the peer was talking");
        }
        // Then silence: closed within the limit plus one interval.
        let silent_from = tokio::time::Instant::now();
        task.await.unwrap();
        assert!(silent_from.elapsed() <= Duration::from_secs(4));
        reader.await.unwrap();
    }

    #[tokio::test(start_paused = true)]
    async fn on_dead_replaces_close_and_inbound_heartbeats_are_routed() {
        use std::sync::atomic::{AtomicUsize, Ordering};
        let dead_calls = Arc::new(AtomicUsize::new(0));
        let calls = dead_calls.clone();
        let hb = Heartbeat::new(Duration::from_secs(1))
            .max_silence(Duration::from_secs(2))
            .on_dead(move |conn| {
                if calls.fetch_add(1, Ordering::SeqCst) == 2 {
                    conn.close();
                }
            });
        let (mut peer, task) = start(Arc::new(engine(Some(hb), Router::new())));
        // An inbound heartbeat goes to the default route (logged, no reply) and
        // counts as activity; nothing else is sent by the peer.
        peer.write_all(&frame(99999, "ping")).await.unwrap();
        let mut sink = Vec::new();
        peer.read_to_end(&mut sink).await.unwrap();
        task.await.unwrap();
        assert_eq!(
            dead_calls.load(Ordering::SeqCst),
            3,
            "callback ran each tick until it closed"
        );
    }

    #[tokio::test(start_paused = true)]
    async fn heartbeats_to_a_peer_that_never_reads_stay_bounded_and_harmless() {
        let hb = Heartbeat::new(Duration::from_millis(10))
            .max_silence(Duration::from_secs(3600))
            .payload(|_| bytes::Bytes::from(vec![0u8; 1000]));
        let engine = Arc::new(engine(Some(hb), Router::new()));
        let manager = engine.manager.clone();
        // A 64-byte pipe the peer never reads: the writer blocks almost at once.
        let (peer, task) = start_with_pipe(engine, 64);
        // 100 s of heartbeats at 10 ms: 10,000 ticks against a 16-slot queue.
        tokio::time::sleep(Duration::from_secs(100)).await;
        let conn = manager.get(ConnId(1)).expect("still connected");
        assert!(!task.is_finished());
        assert!(
            conn.try_send(1, "x").unwrap_err().is_queue_full(),
            "queue at its bound"
        );
        drop(peer);
        conn.close();
        task.await.unwrap();
    }
}
