//! KCP (feature `kcp`): reliable UDP, wire-compatible with kcp-go v5 as Go
//! Zinx runs it (no FEC, no encryption).
//!
//! Every datagram carries plain KCP segments, each behind ikcp's 24-byte
//! little-endian header:
//!
//! ```text
//! 0       4   5   6       8           12          16          20          24
//! +-------+---+---+-------+-----------+-----------+-----------+-----------+------
//! | conv  |cmd|frg|  wnd  |    ts     |    sn     |    una    |    len    | data
//! +-------+---+---+-------+-----------+-----------+-----------+-----------+------
//!  cmd: 81 push (data), 82 ack, 83 window probe, 84 window size
//! ```
//!
//! The protocol itself (windows, acknowledgements, retransmission) is the
//! [`kcp`] crate's control block; the **session layer** is here. One task, the
//! *driver*, owns the UDP socket and a table of sessions keyed by the peer's
//! address, as kcp-go keys them:
//!
//! - it parses each datagram's headers before the control block sees it, drops
//!   (and counts) what is not well-formed KCP of one conversation (or carries
//!   fragments no control block delivers: any in stream mode, as kcp-go sends
//!   none there; in message mode, a message longer than the receive window),
//!   and feeds the rest to its session's control block;
//! - a datagram from an unknown address starts a session only if it carries
//!   data; the session is handed to the server's accept loop (and so to
//!   `MaxConn` and `MaxConnPerIP`) once its control block has delivered the
//!   first bytes. Until then it is *pending*: at most
//!   [`KcpSettings::max_pending`] sessions are, each for at most
//!   [`KcpSettings::pending_timeout`], taking only push segments with
//!   sequence numbers below 32 (a real client's first ones);
//! - a datagram from a known address with another conversation ID and sequence
//!   number 0 replaces that address's session (the old connection ends), as
//!   kcp-go does;
//! - every session's clock is driven from one timer queue, at the times its
//!   control block's `check()` names; a session with nothing in flight is not
//!   in the queue at all. No session has a task or a timer of its own;
//! - once a second it closes sessions that received nothing for
//!   [`KcpSettings::idle_timeout`] (KCP has no close handshake), and pending
//!   sessions past their time. A session whose control block reports a dead
//!   link (a segment sent 20 times) is closed at once.
//!
//! A session's two halves are what the engine reads and writes, as a TCP
//! connection's: the read half hands out the bytes the control block delivers
//! (its receive window is the bound: a reader that does not read closes the
//! window and the peer stops sending); the write half queues bytes in the
//! control block while it holds less than a send window of segments, else it
//! waits for acknowledgements, so the engine's send queue fills and its
//! `SendQueueFull` policy applies as on TCP. Written bytes are sent on the
//! engine's flush, at once (as kcp-go writes without delay). Shutting the
//! write half down waits until the peer acknowledged everything (the engine
//! bounds that wait by its close linger).
//!
//! The client ([`ClientBuilder::kcp`](crate::ClientBuilder::kcp)) runs the same
//! driver over a connected socket with one session, under a random
//! conversation ID.

use std::collections::HashMap;
use std::io;
use std::net::SocketAddr;
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll, Waker};
use std::time::Duration;

use bytes::{Buf, BytesMut};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::UdpSocket;
use tokio::sync::mpsc;
use tokio::time::Instant;
use tokio_util::time::{DelayQueue, delay_queue};

use crate::config::Config;
use crate::engine::reader::ReadSource;
use crate::error::Error;
use crate::transport::{Accept, Connect, Dialled, Listener, Open, OpenNow, Opened};
use crate::util::{lock, panic_message};

/// The size of a KCP segment header.
const HEADER: usize = 24;
/// Segment commands.
const CMD_PUSH: u8 = 81;
const CMD_ACK: u8 = 82;
const CMD_WASK: u8 = 83;
const CMD_WINS: u8 = 84;
/// kcp-go's MTU: datagrams it sends are at most this long.
const MTU: usize = 1400;
/// The largest datagram read (kcp-go's `mtuLimit`): longer ones are cut and
/// then fail to parse.
const RECV_BUFFER: usize = 1500;
/// The largest window accepted from the config, in segments.
const MAX_WINDOW: u32 = 1024;
/// ikcp refuses a write of this many segments or more.
const MAX_SEGMENTS_PER_WRITE: usize = 127;
/// An acknowledgement claiming a round trip longer than this (in ms) is not
/// one of ours: the datagram is dropped. (The control block's RTT arithmetic
/// would overflow on such values.)
const MAX_RTT_MS: i32 = 1 << 20;
/// A pending session takes only push segments below this sequence number
/// (a real client's first segments: kcp-go's default send window is 32), so
/// it holds at most this many segments.
const PENDING_MAX_SN: u32 = 32;
/// The longest a session may stay pending from the config's
/// `HandshakeTimeout`.
const MAX_PENDING_TIMEOUT: Duration = Duration::from_secs(3);
/// ikcp's smallest receive window (the control block takes at least this).
const MIN_RECV_WINDOW: u16 = 128;
/// Sessions handed over but not yet taken by the accept loop.
const ACCEPT_BACKLOG: usize = 128;
/// How often idle and pending sessions are looked at.
const SWEEP: Duration = Duration::from_secs(1);
/// At most one summary line of dropped datagrams per this much time.
const REPORT_EVERY: Duration = Duration::from_secs(10);

/// KCP's settings for every session: Go Zinx's `Kcp*` keys, and the session
/// layer's limits.
///
/// # Examples
///
/// ```
/// use zinx::Config;
/// use zinx::transport::kcp::KcpSettings;
///
/// let mut settings = KcpSettings::from_config(&Config::default()).unwrap();
/// assert_eq!((settings.send_window, settings.interval_ms), (32, 10));
/// settings.max_pending = 64;
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub struct KcpSettings {
    /// `KcpNoDelay` != 0: ikcp's "nodelay" (a 30 ms minimum RTO, slower
    /// backoff).
    pub nodelay: bool,
    /// `KcpInterval`: the control block's internal clock tick in ms (ikcp
    /// clamps it to 10..=5000).
    pub interval_ms: u32,
    /// `KcpResend`: resend a segment after this many later segments were
    /// acknowledged (0: no fast resend).
    pub resend: u32,
    /// `KcpNc` != 0: no congestion window.
    pub no_congestion: bool,
    /// `KcpSendWindow`: segments in flight (and queued) per session.
    pub send_window: u16,
    /// `KcpRecvWindow`: segments received ahead of the reader (ikcp uses at
    /// least 128).
    pub recv_window: u16,
    /// `KcpStreamMode`: a byte stream (segments filled up), not messages.
    pub stream: bool,
    /// `KcpACKNoDelay`: acknowledge every datagram at once instead of on the
    /// next tick.
    pub ack_nodelay: bool,
    /// A session that receives nothing for this long is closed: `IdleTimeout`
    /// when set, else 60 s.
    pub idle_timeout: Duration,
    /// A session that has not been handed to the accept loop within this
    /// long is dropped: `HandshakeTimeout`, at least 1 s and at most 3 s.
    pub pending_timeout: Duration,
    /// Sessions not yet handed to the accept loop, at most (a server's;
    /// 256). Each takes only push segments with sequence numbers below 32.
    pub max_pending: usize,
}

/// The idle timeout when `IdleTimeout` is 0.
pub const DEFAULT_IDLE_TIMEOUT: Duration = Duration::from_secs(60);
/// The bound on pending sessions from [`KcpSettings::from_config`].
pub const DEFAULT_MAX_PENDING: usize = 256;

/// A pending session's time from `HandshakeTimeout` (seconds): at least
/// 1 s, at most 3 s.
fn pending_timeout(handshake_timeout: u64) -> Duration {
    Duration::from_secs(handshake_timeout.max(1)).min(MAX_PENDING_TIMEOUT)
}

impl KcpSettings {
    /// The settings the config's `Kcp*` keys name (Go Zinx's defaults:
    /// nodelay 1, interval 10, resend 2, nc 1, windows 32/32, stream mode,
    /// no ack-nodelay), with `IdleTimeout` (else 60 s) and `HandshakeTimeout`
    /// (at most 3 s for a pending session).
    ///
    /// # Errors
    ///
    /// [`Error::ConfigValue`] for non-zero `KcpFecDataShards` or
    /// `KcpFecParityShards` (FEC is not implemented: never silently plain
    /// KCP instead), and for a `KcpSendWindow` or `KcpRecvWindow` of 0 or
    /// above 1024.
    pub fn from_config(config: &Config) -> Result<KcpSettings, Error> {
        for (key, shards) in [
            ("KcpFecDataShards", config.kcp_fec_data_shards),
            ("KcpFecParityShards", config.kcp_fec_parity_shards),
        ] {
            if shards != 0 {
                return Err(Error::ConfigValue {
                    key,
                    message: format!(
                        "{shards}: forward error correction is not implemented; set \
                         KcpFecDataShards and KcpFecParityShards to 0"
                    ),
                });
            }
        }
        let window = |key: &'static str, n: u32| match u16::try_from(n) {
            Ok(n) if (1..=MAX_WINDOW).contains(&u32::from(n)) => Ok(n),
            _ => Err(Error::ConfigValue {
                key,
                message: format!("{n}: a window is 1 to {MAX_WINDOW} segments"),
            }),
        };
        Ok(KcpSettings {
            nodelay: config.kcp_no_delay != 0,
            interval_ms: config.kcp_interval,
            resend: config.kcp_resend,
            no_congestion: config.kcp_nc != 0,
            send_window: window("KcpSendWindow", config.kcp_send_window)?,
            recv_window: window("KcpRecvWindow", config.kcp_recv_window)?,
            stream: config.kcp_stream_mode,
            ack_nodelay: config.kcp_ack_no_delay,
            idle_timeout: config.idle_timeout().unwrap_or(DEFAULT_IDLE_TIMEOUT),
            pending_timeout: pending_timeout(config.handshake_timeout),
            max_pending: DEFAULT_MAX_PENDING,
        })
    }

    /// A control block with these settings.
    fn control_block(&self, conv: u32, output: Emit) -> kcp::Kcp<Emit> {
        let mut kcp = if self.stream {
            kcp::Kcp::new_stream(conv, output)
        } else {
            kcp::Kcp::new(conv, output)
        };
        let interval = i32::try_from(self.interval_ms).unwrap_or(i32::MAX);
        let resend = i32::try_from(self.resend).unwrap_or(i32::MAX);
        kcp.set_nodelay(self.nodelay, interval, resend, self.no_congestion);
        kcp.set_wndsize(self.send_window, self.recv_window);
        // MTU is kcp-go's default; a valid size cannot fail.
        let _ = kcp.set_mtu(MTU);
        kcp
    }
}

impl Default for KcpSettings {
    /// Go Zinx's defaults (those of [`Config::default`]).
    fn default() -> Self {
        let defaults = Config::default();
        KcpSettings {
            nodelay: true,
            interval_ms: defaults.kcp_interval,
            resend: defaults.kcp_resend,
            no_congestion: true,
            send_window: 32,
            recv_window: 32,
            stream: defaults.kcp_stream_mode,
            ack_nodelay: defaults.kcp_ack_no_delay,
            idle_timeout: DEFAULT_IDLE_TIMEOUT,
            pending_timeout: pending_timeout(defaults.handshake_timeout),
            max_pending: DEFAULT_MAX_PENDING,
        }
    }
}

/// Counts of a KCP listener's driver, readable while it runs. Cheap to clone.
#[derive(Debug, Clone, Default)]
pub struct KcpStats(Arc<Counts>);

#[derive(Debug, Default)]
struct Counts {
    sessions: AtomicUsize,
    pending: AtomicUsize,
    dropped: AtomicU64,
    refused: AtomicU64,
    broken: AtomicU64,
}

impl KcpStats {
    /// Sessions in the table (pending ones included).
    #[must_use]
    pub fn sessions(&self) -> usize {
        self.0.sessions.load(Ordering::Relaxed)
    }

    /// Sessions that have not yet delivered bytes.
    #[must_use]
    pub fn pending(&self) -> usize {
        self.0.pending.load(Ordering::Relaxed)
    }

    /// Datagrams dropped: not KCP, another conversation's, or not starting a
    /// session.
    #[must_use]
    pub fn dropped_datagrams(&self) -> u64 {
        self.0.dropped.load(Ordering::Relaxed)
    }

    /// New sessions refused because [`KcpSettings::max_pending`] were pending.
    #[must_use]
    pub fn refused_sessions(&self) -> u64 {
        self.0.refused.load(Ordering::Relaxed)
    }

    /// Sessions dropped because their control block panicked on a peer's
    /// numbers (its arithmetic overflowing in a build with overflow checks):
    /// a protocol fault of that peer's; the other sessions go on.
    #[must_use]
    pub fn broken_sessions(&self) -> u64 {
        self.0.broken.load(Ordering::Relaxed)
    }
}

/// A KCP listener: a UDP socket and the driver task that serves its sessions.
/// Made by [`bind_kcp`] from the config, or [`KcpListener::bind`]; converts
/// into a [`Listener`].
pub struct KcpListener {
    local: SocketAddr,
    accepted: mpsc::Receiver<(KcpStream, SocketAddr)>,
    stats: KcpStats,
}

impl KcpListener {
    /// Binds a UDP socket on `addr` and starts its driver (so it needs a tokio
    /// runtime). Sessions are handed over once a server runs the listener.
    ///
    /// # Errors
    ///
    /// [`Error::Listen`] when `addr` does not resolve or cannot be bound.
    pub async fn bind(addr: &str, settings: KcpSettings) -> Result<KcpListener, Error> {
        KcpListener::bind_as(addr, "address", settings).await
    }

    async fn bind_as(
        addr: &str,
        keys: &'static str,
        settings: KcpSettings,
    ) -> Result<KcpListener, Error> {
        let failed = |source| Error::Listen {
            addr: addr.to_owned(),
            keys,
            source,
        };
        let socket = UdpSocket::bind(addr).await.map_err(failed)?;
        let local = socket.local_addr().map_err(failed)?;
        let (tx, accepted) = mpsc::channel(ACCEPT_BACKLOG);
        let stats = KcpStats::default();
        let driver = Driver::new(Arc::new(socket), local, settings, Some(tx), stats.clone());
        tokio::spawn(driver.run());
        Ok(KcpListener {
            local,
            accepted,
            stats,
        })
    }

    /// The address it listens on.
    #[must_use]
    pub fn local_addr(&self) -> SocketAddr {
        self.local
    }

    /// Its driver's counts.
    #[must_use]
    pub fn stats(&self) -> KcpStats {
        self.stats.clone()
    }
}

impl std::fmt::Debug for KcpListener {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("KcpListener")
            .field("local", &self.local)
            .field("stats", &self.stats)
            .finish_non_exhaustive()
    }
}

impl From<KcpListener> for Listener {
    fn from(listener: KcpListener) -> Self {
        Listener::Kcp(listener)
    }
}

/// Binds the config's `Host:KcpPort` for KCP with the settings of its `Kcp*`
/// keys (see [`KcpSettings::from_config`]).
///
/// # Errors
///
/// [`Error::ConfigValue`] for settings that cannot be served (FEC, windows),
/// [`Error::Listen`] naming the address and `Host, KcpPort`.
pub async fn bind_kcp(config: &Config) -> Result<Listener, Error> {
    let settings = KcpSettings::from_config(config)?;
    let addr = config.addr(config.kcp_port);
    Ok(KcpListener::bind_as(&addr, "Host, KcpPort", settings)
        .await?
        .into())
}

impl Accept for KcpListener {
    type Raw = KcpStream;

    /// Cancel-safe: `recv` loses nothing when dropped.
    async fn accept(&mut self) -> io::Result<(KcpStream, SocketAddr)> {
        self.accepted
            .recv()
            .await
            .ok_or_else(|| io::Error::other("the KCP driver has stopped"))
    }
}

/// The open step of KCP: none (no handshake), done by the accept loop.
#[derive(Debug, Clone, Copy, Default)]
pub(crate) struct KcpOpen;

impl Open<KcpStream> for KcpOpen {
    type Read = KcpRead;
    type Write = KcpWrite;

    fn open_now(&self, raw: KcpStream) -> OpenNow<KcpRead, KcpWrite, KcpStream> {
        OpenNow::Opened(raw.opened())
    }

    async fn open(
        &self,
        raw: KcpStream,
        _peer: SocketAddr,
    ) -> Result<Opened<KcpRead, KcpWrite>, Error> {
        Ok(raw.opened())
    }
}

/// A KCP session's two halves: a byte stream over UDP. The server's accept
/// loop gets one per session; [`KcpStream::connect`] dials one (what
/// [`ClientBuilder::kcp`](crate::ClientBuilder::kcp) does, for raw bytes).
///
/// # Examples
///
/// ```no_run
/// use tokio::io::{AsyncReadExt, AsyncWriteExt};
/// use zinx::transport::kcp::{KcpSettings, KcpStream};
///
/// # async fn demo() -> Result<(), Box<dyn std::error::Error>> {
/// let mut stream = KcpStream::connect("127.0.0.1:9001", KcpSettings::default()).await?;
/// // A Zinx TLV frame: ID 1, 2 bytes of data.
/// stream.write_all(&[0, 0, 0, 1, 0, 0, 0, 2, b'h', b'i']).await?;
/// stream.flush().await?;
/// let mut reply = [0u8; 10];
/// stream.read_exact(&mut reply).await?;
/// # Ok(())
/// # }
/// ```
pub struct KcpStream {
    read: KcpRead,
    write: KcpWrite,
    local: SocketAddr,
    peer: SocketAddr,
}

impl KcpStream {
    fn new(session: &Arc<Session>, local: SocketAddr, peer: SocketAddr) -> KcpStream {
        lock(&session.state).halves = 2;
        KcpStream {
            read: KcpRead {
                session: session.clone(),
            },
            write: KcpWrite {
                session: session.clone(),
            },
            local,
            peer,
        }
    }

    /// Dials `addr` (`host:port`): a UDP socket connected to it and one session
    /// under a random conversation ID, driven by a task of its own (so it
    /// needs a tokio runtime). Nothing is sent until something is written.
    ///
    /// # Errors
    ///
    /// [`Error::Io`] when `addr` does not resolve or no socket can be bound.
    pub async fn connect(addr: &str, settings: KcpSettings) -> Result<KcpStream, Error> {
        let peer = tokio::net::lookup_host(addr)
            .await?
            .next()
            .ok_or_else(|| io::Error::new(io::ErrorKind::NotFound, "no address found"))?;
        let any: SocketAddr = if peer.is_ipv4() {
            (std::net::Ipv4Addr::UNSPECIFIED, 0).into()
        } else {
            (std::net::Ipv6Addr::UNSPECIFIED, 0).into()
        };
        let socket = UdpSocket::bind(any).await?;
        socket.connect(peer).await?;
        let local = socket.local_addr()?;
        let socket = Arc::new(socket);
        let mut driver = Driver::new(socket.clone(), local, settings, None, KcpStats::default());
        let output = Emit {
            socket,
            peer,
            connected: true,
        };
        let session = Arc::new(Session::new(
            1,
            random_conv(),
            output,
            &settings,
            driver.wake_tx.clone(),
            Instant::now(),
        ));
        driver.insert(peer, session.clone(), None);
        let stream = KcpStream::new(&session, local, peer);
        tokio::spawn(driver.run());
        Ok(stream)
    }

    /// The local address of its UDP socket.
    #[must_use]
    pub fn local_addr(&self) -> SocketAddr {
        self.local
    }

    /// The peer's address.
    #[must_use]
    pub fn peer_addr(&self) -> SocketAddr {
        self.peer
    }

    /// Its read and write halves, for two tasks.
    #[must_use]
    pub fn into_split(self) -> (KcpRead, KcpWrite) {
        (self.read, self.write)
    }

    fn opened(self) -> Opened<KcpRead, KcpWrite> {
        Opened {
            read: self.read,
            write: self.write,
            local: self.local,
        }
    }
}

impl std::fmt::Debug for KcpStream {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("KcpStream")
            .field("local", &self.local)
            .field("peer", &self.peer)
            .field("conv", &self.read.session.conv)
            .finish()
    }
}

impl AsyncRead for KcpStream {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.read).poll_read(cx, buf)
    }
}

impl AsyncWrite for KcpStream {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        data: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.write).poll_write(cx, data)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.write).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.write).poll_shutdown(cx)
    }
}

/// The control block's output: each datagram is sent at once, without
/// waiting. A full socket buffer drops it, as the network might: KCP sends it
/// again.
struct Emit {
    socket: Arc<UdpSocket>,
    peer: SocketAddr,
    /// The socket is connected to `peer` (a client's): datagrams go out with
    /// `send`, as BSD and macOS refuse `send_to` on a connected socket
    /// (`EISCONN`).
    connected: bool,
}

impl io::Write for Emit {
    fn write(&mut self, datagram: &[u8]) -> io::Result<usize> {
        #[cfg(test)]
        tests::maybe_panic(self.peer);
        let _ = if self.connected {
            self.socket.try_send(datagram)
        } else {
            self.socket.try_send_to(datagram, self.peer)
        };
        Ok(datagram.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

/// What a session's halves ask of the driver. At most one `Schedule` is
/// outstanding per session (see [`State::scheduled`]), one `Gone` and one `Broken`, so the
/// channel holds at most three messages per session.
#[derive(Debug, Clone, Copy)]
enum Wake {
    /// Bytes were queued (or the receive window reopened): run the clock,
    /// and send what is owed now.
    Schedule(u64),
    /// Both halves were dropped: forget the session.
    Gone(u64),
    /// Its control block panicked (once per session): drop it.
    Broken(u64),
}

/// One KCP session, shared by the driver and the connection's halves.
struct Session {
    id: u64,
    conv: u32,
    /// The control block's clock counts milliseconds from here.
    born: Instant,
    send_window: usize,
    /// The most one write hands the control block.
    max_write: usize,
    state: Mutex<State>,
    wake: mpsc::UnboundedSender<Wake>,
}

struct State {
    kcp: kcp::Kcp<Emit>,
    /// Closed by the driver (idle, dead link, replaced) or by the listener
    /// stopping: reads see the end, writes fail.
    closed: bool,
    /// The rest of a delivered message the reader's buffer could not take.
    leftover: BytesMut,
    reader: Option<Waker>,
    writer: Option<Waker>,
    /// The driver runs this session's clock (it has a timer for it, or is
    /// about to). Set by whoever asks for it, cleared by the driver.
    scheduled: bool,
    /// Its control block panicked: it is never called again, the reader
    /// sees a protocol error, the writer fails.
    broken: bool,
    /// The reader took bytes: the session was admitted (not refused by the
    /// accept loop's `MaxConn` or `MaxConnPerIP`).
    taken: bool,
    /// Halves alive.
    halves: u8,
    /// When the last valid datagram came.
    last_input: Instant,
}

impl Session {
    fn new(
        id: u64,
        conv: u32,
        output: Emit,
        settings: &KcpSettings,
        wake: mpsc::UnboundedSender<Wake>,
        now: Instant,
    ) -> Session {
        let kcp = settings.control_block(conv, output);
        let segments = (usize::from(settings.send_window)).min(MAX_SEGMENTS_PER_WRITE);
        Session {
            id,
            conv,
            born: now,
            send_window: usize::from(settings.send_window),
            max_write: segments * kcp.mss(),
            state: Mutex::new(State {
                kcp,
                closed: false,
                leftover: BytesMut::new(),
                reader: None,
                writer: None,
                scheduled: false,
                broken: false,
                taken: false,
                halves: 0,
                last_input: now,
            }),
            wake,
        }
    }

    /// The control block's clock at `now` (ms since the session began; ikcp's
    /// clock wraps).
    fn ms(&self, now: Instant) -> u32 {
        now.saturating_duration_since(self.born).as_millis() as u32
    }

    /// Sends what the control block holds now (the half's side: the driver
    /// then keeps the clock running while anything is in flight).
    fn flush_now(&self, st: &mut State) {
        self.send_all(st);
        self.keep_clock(st);
    }

    /// Brings the control block's clock to now and sends what it holds:
    /// owed acknowledgements, window updates, queued segments. False if the
    /// control block broke.
    fn send_all(&self, st: &mut State) -> bool {
        let ms = self.ms(Instant::now());
        self.guarded(st, |kcp| {
            let _ = kcp.update(ms);
            let _ = kcp.flush();
        })
        .is_some()
    }

    /// Runs `f` on the control block; `None` if the session is broken, or
    /// breaks now. kcp 0.6's arithmetic (`timediff`, its clock) overflows on a
    /// peer's numbers in a build with overflow checks, and panics: the panic
    /// ends this session (its halves see a protocol error and a failed
    /// write, the driver drops it) instead of the task running every session
    /// of the socket.
    fn guarded<R>(&self, st: &mut State, f: impl FnOnce(&mut kcp::Kcp<Emit>) -> R) -> Option<R> {
        if st.broken {
            return None;
        }
        match catch_unwind(AssertUnwindSafe(|| f(&mut st.kcp))) {
            Ok(r) => Some(r),
            Err(panic) => {
                tracing::debug!(
                    conv = self.conv,
                    panic = %panic_message(&*panic),
                    "KCP control block panicked on a peer's numbers: dropping the session"
                );
                st.broken = true;
                st.close();
                let _ = self.wake.send(Wake::Broken(self.id));
                None
            }
        }
    }

    /// Asks the driver to run the clock, unless it does already.
    fn keep_clock(&self, st: &mut State) {
        if !st.scheduled {
            st.scheduled = true;
            let _ = self.wake.send(Wake::Schedule(self.id));
        }
    }
}

impl State {
    /// Ends the session: the reader sees the end, the writer fails.
    fn close(&mut self) {
        self.closed = true;
        wake(&mut self.reader);
        wake(&mut self.writer);
    }
}

fn wake(waker: &mut Option<Waker>) {
    if let Some(waker) = waker.take() {
        waker.wake();
    }
}

/// The error of a write to a closed session.
fn closed() -> io::Error {
    io::Error::new(io::ErrorKind::BrokenPipe, "the KCP session is closed")
}

/// The read error of a session whose control block broke: a protocol error
/// of the peer's, counted as such.
fn broken() -> io::Error {
    io::Error::new(
        io::ErrorKind::InvalidData,
        Error::BadFrame {
            reason: "KCP: the peer's segments broke the session's control block".to_owned(),
        },
    )
}

/// A KCP session's read half: the bytes its control block delivers, in
/// order; the end of the stream once the session is closed (idle, dead link,
/// replaced, or its listener gone).
pub struct KcpRead {
    session: Arc<Session>,
}

impl AsyncRead for KcpRead {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let session = &self.session;
        let mut st = lock(&session.state);
        let st = &mut *st;
        let before = buf.filled().len();
        let mut received = false;
        while buf.remaining() > 0 {
            if !st.leftover.is_empty() {
                let n = buf.remaining().min(st.leftover.len());
                buf.put_slice(&st.leftover[..n]);
                st.leftover.advance(n);
                continue;
            }
            if st.broken {
                break;
            }
            let Ok(size) = st.kcp.peeksize() else { break };
            if size <= buf.remaining() {
                let into = buf.initialize_unfilled_to(size);
                let Some(Ok(n)) = session.guarded(st, |kcp| kcp.recv(into)) else {
                    break;
                };
                buf.advance(n);
            } else {
                // A message larger than the buffer (ikcp hands out whole
                // messages): kept for the next reads, bounded by the window.
                let mut leftover = std::mem::take(&mut st.leftover);
                leftover.resize(size, 0);
                let Some(Ok(n)) = session.guarded(st, |kcp| kcp.recv(&mut leftover)) else {
                    break;
                };
                leftover.truncate(n);
                st.leftover = leftover;
            }
            received = true;
        }
        if received {
            st.taken = true;
            // Taking segments may reopen the receive window: the driver tells
            // the peer at once (see `Driver::on_wake`).
            session.keep_clock(st);
        }
        if buf.filled().len() > before {
            return Poll::Ready(Ok(()));
        }
        if st.broken {
            return Poll::Ready(Err(broken()));
        }
        if st.closed {
            return Poll::Ready(Ok(()));
        }
        st.reader = Some(cx.waker().clone());
        Poll::Pending
    }
}

impl ReadSource for KcpRead {}

impl Drop for KcpRead {
    fn drop(&mut self) {
        release(&self.session);
    }
}

/// A KCP session's write half: bytes go into the control block while it
/// holds less than a send window of segments (else the write waits for
/// acknowledgements), and out on flush.
pub struct KcpWrite {
    session: Arc<Session>,
}

impl AsyncWrite for KcpWrite {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        data: &[u8],
    ) -> Poll<io::Result<usize>> {
        let session = &self.session;
        let mut st = lock(&session.state);
        if st.closed {
            return Poll::Ready(Err(closed()));
        }
        if st.kcp.wait_snd() >= session.send_window {
            // Full: send what waits, and wait for acknowledgements.
            session.flush_now(&mut st);
            st.writer = Some(cx.waker().clone());
            return Poll::Pending;
        }
        let n = data.len().min(session.max_write);
        match session.guarded(&mut st, |kcp| kcp.send(&data[..n])) {
            Some(Ok(n)) => Poll::Ready(Ok(n)),
            Some(Err(e)) => Poll::Ready(Err(e.into())),
            None => Poll::Ready(Err(closed())),
        }
    }

    fn poll_flush(self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let session = &self.session;
        let mut st = lock(&session.state);
        if st.closed {
            return Poll::Ready(Err(closed()));
        }
        session.flush_now(&mut st);
        Poll::Ready(Ok(()))
    }

    /// Sends what is queued and waits until the peer acknowledged all of it
    /// (the engine bounds the wait by its close linger).
    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let session = &self.session;
        let mut st = lock(&session.state);
        if st.closed || st.kcp.wait_snd() == 0 {
            return Poll::Ready(Ok(()));
        }
        session.flush_now(&mut st);
        st.writer = Some(cx.waker().clone());
        Poll::Pending
    }
}

impl Drop for KcpWrite {
    fn drop(&mut self) {
        release(&self.session);
    }
}

/// A half is gone; with both gone, the driver forgets the session.
fn release(session: &Session) {
    let mut st = lock(&session.state);
    st.halves = st.halves.saturating_sub(1);
    if st.halves == 0 {
        let _ = session.wake.send(Wake::Gone(session.id));
    }
}

/// One segment header's fields the session layer looks at.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Header {
    conv: u32,
    cmd: u8,
    frg: u8,
    ts: u32,
    sn: u32,
}

/// The headers of a datagram's segments, in order; `None` (then nothing more)
/// where a segment is cut short or has an unknown command.
fn headers(datagram: &[u8]) -> impl Iterator<Item = Option<Header>> + '_ {
    let mut rest = Some(datagram);
    std::iter::from_fn(move || {
        let bytes = rest.take().filter(|bytes| !bytes.is_empty())?;
        let Some(mut header) = bytes.get(..HEADER) else {
            return Some(None);
        };
        let conv = header.get_u32_le();
        let cmd = header.get_u8();
        let frg = header.get_u8();
        let _wnd = header.get_u16_le();
        let ts = header.get_u32_le();
        let sn = header.get_u32_le();
        let _una = header.get_u32_le();
        let len = usize::try_from(header.get_u32_le()).unwrap_or(usize::MAX);
        let known = matches!(cmd, CMD_PUSH | CMD_ACK | CMD_WASK | CMD_WINS);
        let end = HEADER.checked_add(len).filter(|&end| end <= bytes.len());
        match end {
            Some(end) if known => {
                rest = bytes.get(end..);
                Some(Some(Header {
                    conv,
                    cmd,
                    frg,
                    ts,
                    sn,
                }))
            }
            _ => Some(None),
        }
    })
}

/// What a well-formed datagram says: its conversation, its first segment's
/// sequence number, and the highest sequence number of its push segments
/// (`None`: it carries no data).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Scan {
    conv: u32,
    first_sn: u32,
    last_push: Option<u32>,
}

impl Scan {
    fn has_data(&self) -> bool {
        self.last_push.is_some()
    }
}

/// A datagram made of whole KCP segments of one conversation, whose push
/// segments are fragments a control block of `recv_window` segments can
/// deliver (in `stream` mode none: kcp-go never sends a fragment there; in
/// message mode fewer than `recv_window`, and than 255, more of a message);
/// `None` for anything else.
fn scan(datagram: &[u8], stream: bool, recv_window: u16) -> Option<Scan> {
    let mut scan: Option<Scan> = None;
    for header in headers(datagram) {
        let header = header?;
        let push = header.cmd == CMD_PUSH;
        // The kcp crate counts a message's fragments as `frg + 1` in a `u8`:
        // 255 overflows it, whatever the window.
        let undeliverable = if stream {
            header.frg != 0
        } else {
            u16::from(header.frg) >= recv_window.min(255)
        };
        if push && undeliverable {
            return None;
        }
        let sn = push.then_some(header.sn);
        match &mut scan {
            None => {
                scan = Some(Scan {
                    conv: header.conv,
                    first_sn: header.sn,
                    last_push: sn,
                });
            }
            Some(scan) if scan.conv == header.conv => scan.last_push = scan.last_push.max(sn),
            Some(_) => return None,
        }
    }
    scan
}

/// Whether every acknowledgement in the datagram names a send time no further
/// back than [`MAX_RTT_MS`] from `now_ms` (a time in the future is ignored by
/// the control block).
fn acks_plausible(datagram: &[u8], now_ms: u32) -> bool {
    headers(datagram)
        .flatten()
        .filter(|h| h.cmd == CMD_ACK)
        .all(|h| (now_ms.wrapping_sub(h.ts) as i32) <= MAX_RTT_MS)
}

/// A session in the driver's table.
struct Entry {
    session: Arc<Session>,
    /// Not yet handed to the accept loop: since when.
    pending_since: Option<Instant>,
    /// Its place in the timer queue, and when it fires.
    timer: Option<(delay_queue::Key, Instant)>,
}

/// The task that owns a UDP socket and its sessions (see the module docs).
struct Driver {
    socket: Arc<UdpSocket>,
    local: SocketAddr,
    settings: KcpSettings,
    sessions: HashMap<SocketAddr, Entry>,
    /// Session ID to address (an address's session may be replaced).
    ids: HashMap<u64, SocketAddr>,
    timers: DelayQueue<u64>,
    wake_tx: mpsc::UnboundedSender<Wake>,
    wake_rx: mpsc::UnboundedReceiver<Wake>,
    /// Where new sessions go (a server's; `None` for a client, or once the
    /// listener is gone).
    accept: Option<mpsc::Sender<(KcpStream, SocketAddr)>>,
    next_id: u64,
    pending: usize,
    stats: KcpStats,
    /// Dropped datagrams already reported, and when the next report may come.
    reported: (u64, Instant),
}

impl Driver {
    fn new(
        socket: Arc<UdpSocket>,
        local: SocketAddr,
        settings: KcpSettings,
        accept: Option<mpsc::Sender<(KcpStream, SocketAddr)>>,
        stats: KcpStats,
    ) -> Driver {
        let (wake_tx, wake_rx) = mpsc::unbounded_channel();
        Driver {
            socket,
            local,
            settings,
            sessions: HashMap::new(),
            ids: HashMap::new(),
            timers: DelayQueue::new(),
            wake_tx,
            wake_rx,
            accept,
            next_id: 0,
            pending: 0,
            stats,
            reported: (0, Instant::now()),
        }
    }

    /// Runs until no session is left and no new one can come (the listener
    /// is gone, or for a client its one session ended).
    async fn run(mut self) {
        let mut datagram = vec![0u8; RECV_BUFFER];
        let mut sweep = tokio::time::interval(SWEEP);
        sweep.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        while self.accept.is_some() || !self.sessions.is_empty() {
            tokio::select! {
                biased;
                // Cancel-safe: `recv` loses nothing when dropped. Never `None`:
                // the driver holds a sender.
                Some(wake) = self.wake_rx.recv() => self.on_wake(wake),
                // Cancel-safe: an expired entry is only taken when returned.
                Some(expired) = std::future::poll_fn(|cx| self.timers.poll_expired(cx)) => {
                    self.on_timer(expired.into_inner());
                }
                // Cancel-safe: a missed tick comes on the next poll.
                _ = sweep.tick() => self.sweep(),
                // Cancel-safe: `closed` only watches.
                () = accept_closed(self.accept.as_ref()), if self.accept.is_some() => {
                    self.stop_accepting();
                }
                // Cancel-safe: tokio's `recv_from` takes nothing until ready.
                received = self.socket.recv_from(&mut datagram) => match received {
                    Ok((n, peer)) => self.on_datagram(datagram.get(..n).unwrap_or_default(), peer),
                    // Errors of one datagram (an ICMP error reported on a
                    // client's connected socket): KCP resends.
                    Err(e) => tracing::trace!(error = %e, "KCP receive failed"),
                },
            }
        }
        tracing::debug!(local = %self.local, "KCP driver stopped");
    }

    fn on_wake(&mut self, wake: Wake) {
        match wake {
            Wake::Schedule(id) => {
                if let Some(&peer) = self.ids.get(&id) {
                    // What is owed goes out now, not on the next tick: a
                    // reader that drained a full receive window owes the
                    // peer a window update, which `update` alone sends only
                    // if a tick is due (else the peer waits for its window
                    // probe, seconds).
                    self.run_clock(peer, true);
                }
            }
            Wake::Gone(id) => {
                if let Some(&peer) = self.ids.get(&id) {
                    // The acknowledgements it owes go out first: the peer then
                    // does not resend what was received, nor wait for it.
                    // Not for a session whose reader never took a byte (the
                    // accept loop refused it): acknowledged, its first bytes
                    // would be lost to the peer, whose next segments could
                    // only start sessions that never deliver.
                    if let Some(entry) = self.sessions.get(&peer) {
                        let session = &entry.session;
                        let mut st = lock(&session.state);
                        if st.taken {
                            let _ = session.send_all(&mut st);
                        }
                    }
                    self.remove(peer);
                }
            }
            Wake::Broken(id) => {
                if let Some(&peer) = self.ids.get(&id) {
                    self.drop_broken(peer);
                }
            }
        }
    }

    /// Drops `peer`'s session, whose control block broke: a protocol fault
    /// of that peer's (its reader reports it as one).
    fn drop_broken(&mut self, peer: SocketAddr) {
        tracing::debug!(%peer, "KCP session broken by its peer's segments: dropping it");
        self.stats.0.broken.fetch_add(1, Ordering::Relaxed);
        self.remove(peer);
    }

    /// A session's time came: runs its clock, then schedules the next tick
    /// while anything is in flight.
    fn on_timer(&mut self, id: u64) {
        let Some(&peer) = self.ids.get(&id) else {
            return;
        };
        let Some(entry) = self.sessions.get_mut(&peer) else {
            return;
        };
        entry.timer = None;
        self.run_clock(peer, false);
    }

    /// Runs `peer`'s clock (and, if `flush`, sends what its control block
    /// owes now), then schedules the next tick while anything is in flight.
    fn run_clock(&mut self, peer: SocketAddr, flush: bool) {
        let Some(entry) = self.sessions.get(&peer) else {
            return;
        };
        let session = entry.session.clone();
        let now = Instant::now();
        let ms = session.ms(now);
        let mut st = lock(&session.state);
        let Some(next) = session.guarded(&mut st, |kcp| {
            let _ = kcp.update(ms);
            // `update` flushes only on its tick; a segment whose resend time
            // came before it makes `check` say "now" until then, which would
            // run this clock every millisecond: it is resent now instead.
            if flush || kcp.check(ms) == 0 {
                let _ = kcp.flush();
            }
            // At least a millisecond ahead, whatever the control block says.
            kcp.check(ms).max(1)
        }) else {
            drop(st);
            return self.drop_broken(peer);
        };
        if st.kcp.is_dead_link() {
            drop(st);
            tracing::debug!(%peer, "KCP peer stopped acknowledging: closing the session");
            self.remove(peer);
            return;
        }
        if st.kcp.wait_snd() > 0 {
            let next = now + Duration::from_millis(u64::from(next));
            drop(st);
            self.schedule(peer, next);
        } else {
            st.scheduled = false;
        }
    }

    /// A datagram from `peer`.
    fn on_datagram(&mut self, datagram: &[u8], peer: SocketAddr) {
        let Some(scan) = scan(datagram, self.settings.stream, self.recv_window()) else {
            return self.drop_datagram();
        };
        // A session not yet handed over takes only a real client's first
        // segments: a spoofed one holds at most `PENDING_MAX_SN` of them.
        let early = scan.last_push.is_none_or(|sn| sn < PENDING_MAX_SN);
        if let Some(entry) = self.sessions.get(&peer) {
            if entry.session.conv == scan.conv {
                if entry.pending_since.is_some() && !early {
                    return self.drop_datagram();
                }
                let delivered = self.input(peer, datagram);
                if delivered {
                    self.hand_over(peer);
                }
                return;
            }
            // Another conversation from the same address: a new session if
            // it starts at sequence number 0, as kcp-go decides.
            if self.accept.is_none() || scan.first_sn != 0 || !scan.has_data() || !early {
                return self.drop_datagram();
            }
            tracing::debug!(%peer, conv = scan.conv, "KCP conversation replaced");
            self.remove(peer);
        }
        if self.accept.is_none() || !scan.has_data() || !early {
            return self.drop_datagram();
        }
        self.start(peer, scan.conv, datagram);
    }

    /// A new session from `peer`, started by `datagram`.
    fn start(&mut self, peer: SocketAddr, conv: u32, datagram: &[u8]) {
        let now = Instant::now();
        self.next_id += 1;
        let id = self.next_id;
        let output = Emit {
            socket: self.socket.clone(),
            peer,
            connected: false,
        };
        let session = Session::new(id, conv, output, &self.settings, self.wake_tx.clone(), now);
        self.insert(peer, Arc::new(session), Some(now));
        let delivered = self.input(peer, datagram);
        if delivered {
            self.hand_over(peer);
        }
        let pending = self
            .sessions
            .get(&peer)
            .is_some_and(|e| e.pending_since.is_some());
        if pending && self.pending > self.settings.max_pending {
            self.stats.0.refused.fetch_add(1, Ordering::Relaxed);
            self.remove(peer);
        }
    }

    fn insert(&mut self, peer: SocketAddr, session: Arc<Session>, pending: Option<Instant>) {
        self.ids.insert(session.id, peer);
        self.sessions.insert(
            peer,
            Entry {
                session,
                pending_since: pending,
                timer: None,
            },
        );
        if pending.is_some() {
            self.pending += 1;
        }
        self.count();
    }

    /// Feeds `datagram` to `peer`'s session; true if the session now has bytes
    /// for its reader.
    fn input(&mut self, peer: SocketAddr, datagram: &[u8]) -> bool {
        let Some(entry) = self.sessions.get(&peer) else {
            return false;
        };
        let session = entry.session.clone();
        let now = Instant::now();
        let ms = session.ms(now);
        if !acks_plausible(datagram, ms) {
            self.drop_datagram();
            return false;
        }
        let mut st = lock(&session.state);
        let ack_nodelay = self.settings.ack_nodelay;
        let fed = session.guarded(&mut st, |kcp| {
            // The clock first: round trips are measured against it.
            let _ = kcp.update(ms);
            let fed = kcp.input(datagram).is_ok();
            // The acknowledgements go out now, not on the next tick (the
            // crate's `flush_ack` only encodes them; `flush` sends them, with
            // whatever else is due, as kcp-go's ACK-no-delay flush does).
            if fed && ack_nodelay {
                let _ = kcp.flush();
            }
            fed.then(|| kcp.check(ms))
        });
        let next = match fed {
            Some(Some(next)) => next,
            Some(None) => {
                drop(st);
                self.drop_datagram();
                return false;
            }
            None => {
                drop(st);
                self.drop_broken(peer);
                return false;
            }
        };
        st.last_input = now;
        let delivered = st.kcp.peeksize().is_ok();
        if delivered {
            wake(&mut st.reader);
        }
        if st.kcp.wait_snd() < session.send_window {
            wake(&mut st.writer);
        }
        // Acknowledgements are owed: they go out on the next tick.
        st.scheduled = true;
        let next = now + Duration::from_millis(u64::from(next));
        drop(st);
        self.schedule(peer, next);
        delivered
    }

    /// Hands a pending session that delivered bytes to the accept loop, if it
    /// has room.
    fn hand_over(&mut self, peer: SocketAddr) {
        let Some(entry) = self.sessions.get_mut(&peer) else {
            return;
        };
        if entry.pending_since.is_none() {
            return;
        }
        let Some(permit) = self.accept.as_ref().and_then(|tx| tx.try_reserve().ok()) else {
            return;
        };
        entry.pending_since = None;
        permit.send((KcpStream::new(&entry.session, self.local, peer), peer));
        self.pending -= 1;
        self.count();
    }

    /// Runs `peer`'s clock at `when` (or earlier, if it runs earlier already).
    fn schedule(&mut self, peer: SocketAddr, when: Instant) {
        let Some(entry) = self.sessions.get_mut(&peer) else {
            return;
        };
        match entry.timer {
            Some((_, at)) if at <= when => {}
            Some((key, _)) => {
                self.timers.reset_at(&key, when);
                entry.timer = Some((key, when));
            }
            None => {
                let key = self.timers.insert_at(entry.session.id, when);
                entry.timer = Some((key, when));
            }
        }
    }

    /// Forgets `peer`'s session and closes it.
    fn remove(&mut self, peer: SocketAddr) {
        let Some(entry) = self.sessions.remove(&peer) else {
            return;
        };
        self.ids.remove(&entry.session.id);
        if let Some((key, _)) = entry.timer {
            self.timers.remove(&key);
        }
        if entry.pending_since.is_some() {
            self.pending -= 1;
        }
        lock(&entry.session.state).close();
        self.count();
    }

    /// Closes idle sessions and expired pending ones; hands over pending
    /// sessions that are ready when the accept loop has room again.
    fn sweep(&mut self) {
        let now = Instant::now();
        let (idle, patience) = (self.settings.idle_timeout, self.settings.pending_timeout);
        let mut expired = Vec::new();
        let mut ready = Vec::new();
        for (&peer, entry) in &self.sessions {
            let st = lock(&entry.session.state);
            match entry.pending_since {
                Some(since) if now.saturating_duration_since(since) >= patience => {
                    expired.push(peer);
                }
                Some(_) if st.kcp.peeksize().is_ok() => ready.push(peer),
                _ if now.saturating_duration_since(st.last_input) >= idle => {
                    tracing::debug!(%peer, ?idle, "KCP session idle: closing it");
                    expired.push(peer);
                }
                _ => {}
            }
        }
        for peer in expired {
            self.remove(peer);
        }
        for peer in ready {
            self.hand_over(peer);
        }
        self.report(now);
    }

    /// The listener is gone: no new sessions; pending ones are dropped.
    fn stop_accepting(&mut self) {
        self.accept = None;
        let pending: Vec<SocketAddr> = self
            .sessions
            .iter()
            .filter(|(_, e)| e.pending_since.is_some())
            .map(|(&peer, _)| peer)
            .collect();
        for peer in pending {
            self.remove(peer);
        }
    }

    fn drop_datagram(&self) {
        self.stats.0.dropped.fetch_add(1, Ordering::Relaxed);
    }

    /// At most one WARN line per [`REPORT_EVERY`] for dropped datagrams, not
    /// one per datagram: a flood cannot flood the log.
    fn report(&mut self, now: Instant) {
        let dropped = self.stats.dropped_datagrams();
        let (reported, next) = self.reported;
        if dropped > reported && now >= next {
            tracing::warn!(
                local = %self.local,
                dropped = dropped - reported,
                pending = self.pending,
                "KCP datagrams dropped: not KCP, or not of a session"
            );
            self.reported = (dropped, now + REPORT_EVERY);
        }
    }

    fn count(&self) {
        let counts = &self.stats.0;
        counts
            .sessions
            .store(self.sessions.len(), Ordering::Relaxed);
        counts.pending.store(self.pending, Ordering::Relaxed);
    }

    /// The receive window of the control blocks, in segments.
    fn recv_window(&self) -> u16 {
        self.settings.recv_window.max(MIN_RECV_WINDOW)
    }
}

/// Completes when the accept loop's end of the channel is gone.
async fn accept_closed(tx: Option<&mpsc::Sender<(KcpStream, SocketAddr)>>) {
    match tx {
        Some(tx) => tx.closed().await,
        None => std::future::pending().await,
    }
}

/// A conversation ID no other client of this process is likely to pick:
/// std's per-instance random hash keys over the time.
fn random_conv() -> u32 {
    use std::hash::{BuildHasher, Hasher};
    let mut hasher = std::collections::hash_map::RandomState::new().build_hasher();
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos());
    hasher.write_u128(nanos);
    hasher.finish() as u32
}

/// Dials a KCP server for the client (see [`KcpStream::connect`]).
#[derive(Debug, Clone)]
pub(crate) struct KcpConnector {
    pub(crate) addr: String,
    pub(crate) settings: KcpSettings,
}

impl Connect for KcpConnector {
    type Read = KcpRead;
    type Write = KcpWrite;

    fn target(&self) -> &str {
        &self.addr
    }

    async fn connect(&self) -> Result<Dialled<KcpRead, KcpWrite>, Error> {
        let stream = KcpStream::connect(&self.addr, self.settings).await?;
        let peer = stream.peer;
        Ok(Dialled {
            opened: stream.opened(),
            peer,
        })
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    fn segment(conv: u32, cmd: u8, ts: u32, sn: u32, data: &[u8]) -> Vec<u8> {
        let mut out = Vec::new();
        out.extend_from_slice(&conv.to_le_bytes());
        out.extend_from_slice(&[cmd, 0]);
        out.extend_from_slice(&32u16.to_le_bytes());
        out.extend_from_slice(&ts.to_le_bytes());
        out.extend_from_slice(&sn.to_le_bytes());
        out.extend_from_slice(&0u32.to_le_bytes());
        out.extend_from_slice(&u32::try_from(data.len()).unwrap().to_le_bytes());
        out.extend_from_slice(data);
        out
    }

    #[test]
    fn a_datagram_of_segments_is_scanned() {
        let mut datagram = segment(7, CMD_ACK, 1, 3, b"");
        datagram.extend(segment(7, CMD_PUSH, 1, 4, b"hello"));
        datagram.extend(segment(7, CMD_PUSH, 1, 5, b"there"));
        assert_eq!(
            scan(&datagram, true, 128),
            Some(Scan {
                conv: 7,
                first_sn: 3,
                last_push: Some(5),
            })
        );
        let acks = segment(7, CMD_ACK, 1, 0, b"");
        assert!(!scan(&acks, true, 128).unwrap().has_data());
    }

    #[test]
    fn anything_but_whole_segments_of_one_conversation_is_refused() {
        let push = segment(7, CMD_PUSH, 1, 0, b"hello");
        assert_eq!(scan(b"", true, 128), None);
        assert_eq!(scan(&push[..23], true, 128), None, "a short header");
        assert_eq!(
            scan(&push[..push.len() - 1], true, 128),
            None,
            "data cut short"
        );
        let mut trailing = push.clone();
        trailing.push(0);
        assert_eq!(
            scan(&trailing, true, 128),
            None,
            "bytes after the last segment"
        );
        let mut other = push.clone();
        other.extend(segment(8, CMD_ACK, 1, 0, b""));
        assert_eq!(scan(&other, true, 128), None, "two conversations");
        assert_eq!(
            scan(&segment(7, 99, 1, 0, b""), true, 128),
            None,
            "an unknown command"
        );
        let mut huge = segment(7, CMD_PUSH, 1, 0, b"");
        huge[20..24].copy_from_slice(&0xFFFF_FFF0u32.to_le_bytes());
        assert_eq!(scan(&huge, true, 128), None, "an attack length");
    }

    #[test]
    fn fragments_no_control_block_can_deliver_are_refused() {
        let fragment = |frg: u8| {
            let mut push = segment(7, CMD_PUSH, 1, 0, b"part");
            push[5] = frg;
            push
        };
        // Stream mode: kcp-go never sends a fragment.
        assert!(scan(&fragment(0), true, 128).is_some());
        assert_eq!(scan(&fragment(1), true, 128), None);
        let mut hidden = segment(7, CMD_ACK, 1, 0, b"");
        hidden.extend(fragment(3));
        assert_eq!(scan(&hidden, true, 128), None, "behind another segment");
        // Message mode: a message longer than the receive window never is.
        assert!(scan(&fragment(127), false, 128).is_some());
        assert_eq!(scan(&fragment(128), false, 128), None);
        assert!(scan(&fragment(200), false, 256).is_some());
        assert_eq!(scan(&fragment(255), false, 1024), None, "frg + 1 overflows");
    }

    #[tokio::test(start_paused = true)]
    async fn spoofed_segments_past_a_first_window_start_no_session() {
        let (mut driver, _rx) = new_driver(KcpSettings::default()).await;
        let stats = driver.stats.clone();
        for port in 1000..1100u16 {
            let peer = SocketAddr::from(([127, 0, 0, 1], port));
            driver.on_datagram(&segment(u32::from(port), CMD_PUSH, 0, 32, b"x"), peer);
            driver.on_datagram(&segment(u32::from(port), CMD_PUSH, 0, 5_000, b"x"), peer);
        }
        assert_eq!((stats.sessions(), stats.pending()), (0, 0));
        assert_eq!(stats.dropped_datagrams(), 200);
        // A real client's first segments (out of order: not yet delivered)
        // start one, which then takes nothing further ahead.
        let peer = SocketAddr::from(([127, 0, 0, 1], 2000));
        driver.on_datagram(&segment(9, CMD_PUSH, 0, 31, b"x"), peer);
        assert_eq!((stats.sessions(), stats.pending()), (1, 1));
        driver.on_datagram(&segment(9, CMD_PUSH, 0, 32, b"x"), peer);
        assert_eq!(stats.dropped_datagrams(), 201);
    }

    #[tokio::test(start_paused = true)]
    async fn pending_sessions_expire_at_the_handshake_timeout_but_within_3_s() {
        for (handshake, patience) in [(10, 3), (2, 2), (0, 1)] {
            let config = Config {
                handshake_timeout: handshake,
                ..Config::default()
            };
            let settings = KcpSettings::from_config(&config).unwrap();
            assert_eq!(settings.pending_timeout, Duration::from_secs(patience));
            let (mut driver, _rx) = new_driver(settings).await;
            let peer = SocketAddr::from(([127, 0, 0, 1], 3000));
            // Out of order: nothing delivered, so it stays pending.
            driver.on_datagram(&segment(9, CMD_PUSH, 0, 5, b"x"), peer);
            assert_eq!(driver.stats.pending(), 1);
            tokio::time::advance(Duration::from_millis(patience * 1000 - 1)).await;
            driver.sweep();
            assert_eq!(driver.stats.pending(), 1, "{handshake}");
            tokio::time::advance(Duration::from_millis(1)).await;
            driver.sweep();
            assert_eq!((driver.stats.pending(), driver.stats.sessions()), (0, 0));
        }
    }

    #[test]
    fn acknowledgements_from_far_back_are_refused() {
        let now = 5_000;
        assert!(acks_plausible(&segment(1, CMD_ACK, 4_990, 0, b""), now));
        assert!(acks_plausible(&segment(1, CMD_ACK, 9_000, 0, b""), now));
        let ancient = now.wrapping_sub(0x7FFF_FFF0);
        assert!(!acks_plausible(&segment(1, CMD_ACK, ancient, 0, b""), now));
        // Only acknowledgements carry our send times.
        assert!(acks_plausible(&segment(1, CMD_PUSH, ancient, 0, b"x"), now));
    }

    #[test]
    fn settings_follow_the_config_and_refuse_fec() {
        let settings = KcpSettings::from_config(&Config::default()).unwrap();
        assert_eq!(settings, KcpSettings::default());
        assert!(settings.nodelay && settings.no_congestion && settings.stream);
        assert!(!settings.ack_nodelay);
        assert_eq!(settings.idle_timeout, DEFAULT_IDLE_TIMEOUT);
        assert_eq!(settings.max_pending, 256);
        assert_eq!(settings.pending_timeout, Duration::from_secs(3));
        let refusal = |config: Config| match KcpSettings::from_config(&config) {
            Err(Error::ConfigValue { key, .. }) => key,
            other => panic!("{other:?}"),
        };
        let fec = Config {
            kcp_fec_parity_shards: 3,
            ..Config::default()
        };
        assert_eq!(refusal(fec), "KcpFecParityShards");
        let fec = Config {
            kcp_fec_data_shards: 10,
            ..Config::default()
        };
        assert_eq!(refusal(fec), "KcpFecDataShards");
        let zero = Config {
            kcp_send_window: 0,
            ..Config::default()
        };
        assert_eq!(refusal(zero), "KcpSendWindow");
        let huge = Config {
            kcp_recv_window: 100_000,
            ..Config::default()
        };
        assert_eq!(refusal(huge), "KcpRecvWindow");
        let idle = Config {
            idle_timeout: 7,
            ..Config::default()
        };
        let settings = KcpSettings::from_config(&idle).unwrap();
        assert_eq!(settings.idle_timeout, Duration::from_secs(7));
    }

    #[test]
    fn conversation_ids_differ() {
        let ids: std::collections::HashSet<u32> = (0..64).map(|_| random_conv()).collect();
        assert!(ids.len() > 60);
    }

    /// A server's driver on a loopback socket, and its accept channel.
    async fn new_driver(
        settings: KcpSettings,
    ) -> (Driver, mpsc::Receiver<(KcpStream, SocketAddr)>) {
        let socket = UdpSocket::bind("127.0.0.1:0").await.unwrap();
        let local = socket.local_addr().unwrap();
        let (tx, rx) = mpsc::channel(4);
        let stats = KcpStats::default();
        (
            Driver::new(Arc::new(socket), local, settings, Some(tx), stats),
            rx,
        )
    }

    /// A driver with one session from `peer`, on a socket nobody listens to.
    async fn driver_with_session(
        settings: KcpSettings,
    ) -> (Driver, SocketAddr, mpsc::Receiver<(KcpStream, SocketAddr)>) {
        let (mut driver, rx) = new_driver(settings).await;
        let peer: SocketAddr = "127.0.0.1:9".parse().unwrap();
        driver.on_datagram(&segment(5, CMD_PUSH, 0, 0, b"hi"), peer);
        (driver, peer, rx)
    }

    #[tokio::test(start_paused = true)]
    async fn the_clock_runs_while_segments_are_in_flight_and_stops_after() {
        let (mut driver, peer, mut rx) = driver_with_session(KcpSettings::default()).await;
        let (stream, from) = rx.try_recv().unwrap();
        assert_eq!(from, peer);
        // Owed acknowledgements: the session is in the timer queue, due within
        // one interval.
        let (_, at) = driver.sessions[&peer].timer.unwrap();
        assert!(at <= Instant::now() + Duration::from_millis(10));
        tokio::time::advance(Duration::from_millis(10)).await;
        let expired = std::future::poll_fn(|cx| driver.timers.poll_expired(cx))
            .await
            .unwrap();
        driver.on_timer(expired.into_inner());
        // Nothing in flight: no timer at all.
        assert!(driver.sessions[&peer].timer.is_none());
        assert!(!lock(&stream.read.session.state).scheduled);
        // A write asks for the clock again, and keeps it while unacknowledged.
        let mut write = stream.write;
        tokio::io::AsyncWriteExt::write_all(&mut write, b"reply")
            .await
            .unwrap();
        tokio::io::AsyncWriteExt::flush(&mut write).await.unwrap();
        match driver.wake_rx.try_recv().unwrap() {
            Wake::Schedule(id) => driver.on_wake(Wake::Schedule(id)),
            other => panic!("{other:?}"),
        }
        assert!(driver.sessions[&peer].timer.is_some());
        for _ in 0..3 {
            tokio::time::advance(Duration::from_millis(200)).await;
            let expired = std::future::poll_fn(|cx| driver.timers.poll_expired(cx))
                .await
                .unwrap();
            driver.on_timer(expired.into_inner());
            assert!(driver.sessions[&peer].timer.is_some(), "resending");
        }
    }

    thread_local! {
        /// The peer whose output panics, as kcp 0.6's arithmetic does on
        /// hostile numbers with overflow checks on.
        static PANIC_FOR: std::cell::Cell<Option<SocketAddr>> = const { std::cell::Cell::new(None) };
    }

    pub(super) fn maybe_panic(peer: SocketAddr) {
        if PANIC_FOR.with(std::cell::Cell::get) == Some(peer) {
            panic!("attempt to subtract with overflow (a test's)");
        }
    }

    /// Runs the timers that are due now.
    async fn run_due_timers(driver: &mut Driver) {
        for _ in 0..16 {
            let next = std::future::poll_fn(|cx| Poll::Ready(driver.timers.poll_expired(cx))).await;
            match next {
                Poll::Ready(Some(expired)) => driver.on_timer(expired.into_inner()),
                _ => return,
            }
        }
    }

    #[tokio::test(start_paused = true)]
    async fn a_panicking_control_block_drops_its_session_and_no_other() {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let (mut driver, peer, mut rx) = driver_with_session(KcpSettings::default()).await;
        let (good, _) = rx.try_recv().unwrap();
        let bad: SocketAddr = "127.0.0.1:10".parse().unwrap();
        PANIC_FOR.with(|p| p.set(Some(bad)));
        driver.on_datagram(&segment(6, CMD_PUSH, 0, 0, b"hi"), bad);
        let (bad_stream, _) = rx.try_recv().unwrap();
        // Both owe an acknowledgement: the bad one's panics on the tick.
        tokio::time::advance(Duration::from_millis(10)).await;
        run_due_timers(&mut driver).await;
        PANIC_FOR.with(|p| p.set(None));
        assert!(!driver.sessions.contains_key(&bad));
        assert_eq!(driver.stats.broken_sessions(), 1);
        assert_eq!(driver.stats.sessions(), 1);
        let (mut read, mut write) = bad_stream.into_split();
        let err = read.read(&mut [0u8; 8]).await.unwrap_err();
        assert!(Error::from_read(err).is_protocol());
        assert!(write.write_all(b"x").await.is_err());
        // The other session goes on.
        let (mut read, mut write) = good.into_split();
        let mut got = [0u8; 2];
        read.read_exact(&mut got).await.unwrap();
        assert_eq!(&got, b"hi");
        write.write_all(b"reply").await.unwrap();
        write.flush().await.unwrap();
        while let Ok(wake) = driver.wake_rx.try_recv() {
            driver.on_wake(wake);
        }
        assert!(driver.sessions[&peer].timer.is_some());
    }

    /// A push segment of conversation 5 from a kcp-go-like peer.
    fn push(sn: u32, data: &[u8]) -> Vec<u8> {
        segment(5, CMD_PUSH, 0, sn, data)
    }

    /// The commands of the datagrams `peer` received so far.
    fn received_commands(peer: &std::net::UdpSocket) -> Vec<u8> {
        let mut cmds = Vec::new();
        let mut datagram = [0u8; RECV_BUFFER];
        for _ in 0..1000 {
            let Ok(n) = peer.recv(&mut datagram) else {
                break;
            };
            cmds.extend(headers(&datagram[..n]).flatten().map(|h| h.cmd));
        }
        cmds
    }

    /// A driver and a real peer socket (std, non-blocking: what was sent to
    /// it on loopback is there at once).
    async fn driver_and_peer(
        settings: KcpSettings,
    ) -> (
        Driver,
        std::net::UdpSocket,
        SocketAddr,
        mpsc::Receiver<(KcpStream, SocketAddr)>,
    ) {
        let (driver, rx) = new_driver(settings).await;
        let peer = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
        peer.set_nonblocking(true).unwrap();
        let addr = peer.local_addr().unwrap();
        (driver, peer, addr, rx)
    }

    #[tokio::test(start_paused = true)]
    async fn a_drained_receive_window_is_announced_at_once() {
        use tokio::io::AsyncReadExt;
        let (mut driver, peer, addr, mut rx) = driver_and_peer(KcpSettings::default()).await;
        // The peer fills the receive window (128 segments) while nobody reads.
        for first in (0..128).step_by(32) {
            let datagram: Vec<u8> = (first..first + 32).flat_map(|sn| push(sn, b"x")).collect();
            driver.on_datagram(&datagram, addr);
        }
        let (stream, _) = rx.try_recv().unwrap();
        tokio::time::advance(Duration::from_millis(10)).await;
        run_due_timers(&mut driver).await;
        let acks = received_commands(&peer);
        assert_eq!(acks.iter().filter(|&&c| c == CMD_ACK).count(), 128);
        assert!(driver.sessions[&addr].timer.is_none(), "nothing owed");
        // The reader drains it: the window update goes out now, not after
        // the peer's window probe (seconds later).
        let (mut read, _write) = stream.into_split();
        let mut got = vec![0u8; 128];
        read.read_exact(&mut got).await.unwrap();
        for _ in 0..4 {
            match driver.wake_rx.try_recv() {
                Ok(wake) => driver.on_wake(wake),
                Err(_) => break,
            }
            run_due_timers(&mut driver).await;
        }
        assert!(received_commands(&peer).contains(&CMD_WINS));
    }

    #[tokio::test(start_paused = true)]
    async fn ack_no_delay_acknowledges_at_once_and_otherwise_at_the_tick() {
        for ack_nodelay in [true, false] {
            let settings = KcpSettings {
                ack_nodelay,
                ..KcpSettings::default()
            };
            let (mut driver, peer, addr, _rx) = driver_and_peer(settings).await;
            // The session starts; what it owes goes out at its first tick.
            driver.on_datagram(&push(0, b"x"), addr);
            tokio::time::advance(Duration::from_millis(10)).await;
            run_due_timers(&mut driver).await;
            let _ = received_commands(&peer);
            driver.on_datagram(&push(1, b"y"), addr);
            let at_once = received_commands(&peer).contains(&CMD_ACK);
            assert_eq!(at_once, ack_nodelay, "KcpACKNoDelay {ack_nodelay}");
            tokio::time::advance(Duration::from_millis(10)).await;
            run_due_timers(&mut driver).await;
            if !ack_nodelay {
                assert!(received_commands(&peer).contains(&CMD_ACK), "at the tick");
            }
        }
    }

    #[tokio::test(start_paused = true)]
    async fn a_resend_between_ticks_costs_one_wake_up_not_one_a_millisecond() {
        let settings = KcpSettings {
            interval_ms: 100,
            ..KcpSettings::default()
        };
        let (mut driver, peer, mut rx) = driver_with_session(settings).await;
        let (stream, _) = rx.try_recv().unwrap();
        // The reply goes out between two ticks, and is never acknowledged:
        // its resend times fall between ticks too.
        tokio::time::advance(Duration::from_millis(50)).await;
        let mut write = stream.write;
        tokio::io::AsyncWriteExt::write_all(&mut write, b"reply")
            .await
            .unwrap();
        tokio::io::AsyncWriteExt::flush(&mut write).await.unwrap();
        while let Ok(wake) = driver.wake_rx.try_recv() {
            driver.on_wake(wake);
        }
        let start = Instant::now();
        let mut wake_ups = 0;
        while Instant::now() < start + Duration::from_secs(1) && wake_ups < 1000 {
            let Some((_, at)) = driver.sessions.get(&peer).and_then(|e| e.timer) else {
                break;
            };
            tokio::time::advance(at.saturating_duration_since(Instant::now())).await;
            run_due_timers(&mut driver).await;
            wake_ups += 1;
        }
        assert!(
            Instant::now() >= start + Duration::from_secs(1),
            "{wake_ups}"
        );
        // A tick every 100 ms and a few resends between them.
        assert!(wake_ups <= 20, "{wake_ups} wake-ups in a second");
    }

    #[tokio::test]
    async fn a_client_sends_on_its_connected_socket_without_an_address() {
        use std::io::Write;
        let server = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
        server
            .set_read_timeout(Some(Duration::from_secs(10)))
            .unwrap();
        let addr = server.local_addr().unwrap();
        let socket = UdpSocket::bind("127.0.0.1:0").await.unwrap();
        socket.connect(addr).await.unwrap();
        // (Readiness, as the driver's socket has it once its reactor ran.)
        socket.writable().await.unwrap();
        let mut emit = Emit {
            socket: Arc::new(socket),
            peer: addr,
            connected: true,
        };
        emit.write_all(b"datagram").unwrap();
        let mut got = [0u8; 16];
        let n = server.recv(&mut got).unwrap();
        assert_eq!(&got[..n], b"datagram");
    }

    #[tokio::test(start_paused = true)]
    async fn a_silent_session_is_closed_at_the_idle_timeout() {
        let settings = KcpSettings {
            idle_timeout: Duration::from_secs(3),
            ..KcpSettings::default()
        };
        let (mut driver, peer, mut rx) = driver_with_session(settings).await;
        let (stream, _) = rx.try_recv().unwrap();
        tokio::time::advance(Duration::from_secs(2)).await;
        driver.sweep();
        assert!(driver.sessions.contains_key(&peer));
        tokio::time::advance(Duration::from_secs(1)).await;
        driver.sweep();
        assert!(!driver.sessions.contains_key(&peer));
        assert!(lock(&stream.read.session.state).closed);
    }
}
