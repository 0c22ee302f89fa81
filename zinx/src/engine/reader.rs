//! The reader: the only code that reads from a connection's socket.
//!
//! It reads into a buffer sized adaptively, decodes every whole frame with the
//! server's [`Framing`] and hands the messages one by one to the connection's
//! [`Lane`] (and so to the dispatcher, which makes each a
//! [`Request`](crate::Request)), all before the next read. It is polled by
//! `Engine::run` inside `WithWriter`, before the writer. While handlers
//! run (or wait for their worker) nothing is read, which is the backpressure that
//! slows a fast peer. A framing
//! error (oversized or truncated frame) ends this connection only. The reader
//! also runs the connection's heartbeat and its frame and idle timeouts, since
//! it is what hears from the peer.

use std::future::Future;
use std::io;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::BytesMut;
use futures_util::FutureExt;
use tokio::io::{AsyncRead, AsyncReadExt};
use tokio::net::tcp::OwnedReadHalf;
use tokio::time::{Instant, Interval, MissedTickBehavior, Sleep};

use crate::conn::Connection;
use crate::conn::close::{CloseSignal, Waiter};
use crate::error::Error;
use crate::framing::Framing;
use crate::heartbeat::Heartbeat;
use crate::limit::RateLimit;
use crate::observe::Observer;
use crate::router::Slot;
use crate::worker::Lane;

/// Why the reader stopped.
#[derive(Debug)]
pub(crate) enum ReadEnd {
    /// The peer closed its side cleanly (on a frame boundary).
    PeerClosed,
    /// The connection was closed from this side (handler, server shutdown, writer error).
    Cancelled,
    /// The peer broke the protocol or the socket failed.
    Failed(Error),
    /// The peer left a frame unfinished, or sent nothing, for too long.
    TimedOut(Timeout),
}

/// Which of the reader's timeouts ran out.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Timeout {
    /// `FrameTimeout`: a frame was started and not finished in time.
    Frame,
    /// `IdleTimeout`: nothing arrived in time.
    Idle,
}

impl ReadEnd {
    /// A word for logs.
    pub(crate) fn reason(&self) -> &'static str {
        match self {
            ReadEnd::PeerClosed => "peer closed",
            ReadEnd::Cancelled => "closed locally",
            ReadEnd::Failed(_) => "error",
            ReadEnd::TimedOut(Timeout::Frame) => "frame timeout",
            ReadEnd::TimedOut(Timeout::Idle) => "idle timeout",
        }
    }

    /// The `reason` label of `zinx_connections_closed_total`.
    pub(crate) fn label(&self) -> &'static str {
        match self {
            ReadEnd::PeerClosed => "peer",
            ReadEnd::Cancelled => "local",
            ReadEnd::Failed(e) if e.is_protocol() => "protocol",
            ReadEnd::Failed(_) => "error",
            ReadEnd::TimedOut(_) => "timeout",
        }
    }
}

/// How a server's (or client's) connections read.
#[derive(Debug, Clone, Copy)]
pub(crate) struct ReadSettings {
    /// The first read's size (`IOReadBuffSize`); later reads adapt.
    pub(crate) chunk: usize,
    /// `FrameTimeout`.
    pub(crate) frame_timeout: Option<Duration>,
    /// `IdleTimeout`.
    pub(crate) idle_timeout: Option<Duration>,
}

/// A connection's read half.
///
/// The default reads straight into the buffer, so the buffer must exist while the
/// read waits; TCP waits for readiness first and only then makes room, so an idle
/// connection holds no read buffer at all.
pub(crate) trait ReadSource: AsyncRead + Unpin + Send + 'static {
    /// Called once its connection is set up, before `on_connect`: a transport
    /// may leave what its open step learned as the connection's properties.
    fn opened(&mut self, conn: &crate::Connection) {
        let _ = conn;
    }

    /// Waits for bytes and appends some to `buf` (making room for `chunk` first).
    /// `Ok(0)` is the end of the stream. `fresh`: nothing was read yet (see the
    /// TCP implementation). Cancel-safe: nothing is lost if dropped.
    fn read_into<'a>(
        &'a mut self,
        buf: &'a mut BytesMut,
        chunk: usize,
        fresh: bool,
    ) -> impl Future<Output = io::Result<usize>> + Send + 'a {
        let _ = fresh;
        async move {
            make_room(buf, chunk);
            self.read_buf(buf).await
        }
    }
}

impl ReadSource for OwnedReadHalf {
    fn read_into<'a>(
        &'a mut self,
        buf: &'a mut BytesMut,
        chunk: usize,
        fresh: bool,
    ) -> impl Future<Output = io::Result<usize>> + Send + 'a {
        // A poll function rather than `readable().await` then `read_buf`: the
        // future of `readable` is 168 bytes, held by every idle connection.
        std::future::poll_fn(move |cx| {
            if buf.capacity() == 0 {
                // No buffer (a new connection, or one that gave its buffer back
                // after a message): wait for readiness before allocating one.
                std::task::ready!(self.as_ref().poll_read_ready(cx))?;
                if fresh {
                    // tokio reports a fresh connection readable with nothing to
                    // read: make sure bytes are really there. Later, readiness
                    // comes from the socket's events, and a peek would be one more
                    // syscall per message for a connection that gives its buffer
                    // back.
                    let mut probe = [0u8; 1];
                    let mut probe = tokio::io::ReadBuf::new(&mut probe);
                    if std::task::ready!(self.poll_peek(cx, &mut probe))? == 0 {
                        return Poll::Ready(Ok(0));
                    }
                }
            }
            make_room(buf, chunk);
            // `poll_read` rather than `try_read`: tokio clears the socket's
            // readiness after a short read, which saves the extra read that would
            // only return `WouldBlock`. It waits for readiness itself, so there is
            // no separate readiness check when a buffer exists.
            tokio_util::io::poll_read_buf(std::pin::Pin::new(&mut *self), cx, buf)
        })
    }
}

impl<T: AsyncRead + Send + 'static> ReadSource for tokio::io::ReadHalf<T> {}

impl ReadSource for tokio::io::DuplexStream {}

fn make_room(buf: &mut BytesMut, chunk: usize) {
    if buf.capacity() - buf.len() < chunk / 2 {
        buf.reserve(chunk);
    }
}

/// Largest read chunk the adaptive sizing grows to.
const MAX_CHUNK: usize = 64 * 1024;

/// Reads and dispatches until the peer closes, the connection is cancelled or an
/// error occurs. Every frame decoded from one read goes to the lane as one batch,
/// handled before the next read.
///
/// A function returning an `async move` block rather than an `async fn`: an
/// `async fn` stores its arguments twice, in every connection's reader.
#[allow(
    clippy::manual_async_fn,
    reason = "an async fn stores its arguments twice"
)]
pub(crate) fn run<'a, R, F>(
    mut io: R,
    conn: &'a Connection,
    lane: &'a Lane,
    mut framing: F,
    settings: &'a ReadSettings,
    mut extras: Option<Box<Extras<'a>>>,
) -> impl Future<Output = ReadEnd> + 'a
where
    R: ReadSource,
    F: Framing,
{
    async move {
        let signal = conn.close_signal();
        let mut buf = BytesMut::new();
        let min_chunk = settings.chunk.max(64);
        let mut chunk = min_chunk;
        let mut small_reads = 0u32;
        // Nothing read yet: the first wait for bytes checks that they are there.
        let mut fresh = true;
        let mut batch = Vec::new();
        // The running handler's future: one allocation for all the messages.
        let mut slot = Slot::default();
        // The handle synchronous routes' requests borrow (see `Lane::dispatch`).
        let mut lent = None;
        loop {
            // The read's result is matched in this statement, so it is not kept
            // across the dispatch below.
            let n = match tokio::select! {
                biased;
                // Cancel-safe: waiting takes nothing; the job runs in the branch
                // body, so no other branch can interrupt it. It waits on the close
                // signal, so this is also how the reader learns of the close.
                job = conn.next_job() => match job {
                    Some(job) if !signal.is_closed() => {
                        // Boxed: rare, and it would enlarge every connection's reader.
                        Box::pin(lane.run_job(job)).await;
                        continue;
                    }
                    _ => return ReadEnd::Cancelled,
                },
                // Cancel-safe: a tick or an expiry is only taken when it is
                // returned (see Extras::poll_event).
                event = next_event(extras.as_deref_mut()) => match event {
                    Event::Beat => {
                        if let Some(x) = extras.as_deref() {
                            x.beat(conn);
                        }
                        continue;
                    }
                    // A peer whose bytes are waiting has not timed out: they
                    // were not read because this side was busy.
                    Event::Expired(timeout) => {
                        match io.read_into(&mut buf, chunk, fresh).now_or_never() {
                            Some(read) => read,
                            None => return ReadEnd::TimedOut(timeout),
                        }
                    }
                },
                // Cancel-safe: see ReadSource::read_into.
                read = io.read_into(&mut buf, chunk, fresh) => read,
            } {
                Ok(n) => n,
                Err(e) => return ReadEnd::Failed(Error::from_read(e)),
            };
            let eof = n == 0;
            fresh = false;
            // Adapt the read size: grow as soon as a read fills it; shrink only after
            // many small reads in a row, so a burst's short tail does not undo growth.
            if n >= chunk {
                chunk = (chunk * 2).min(MAX_CHUNK);
                small_reads = 0;
            } else if n < chunk / 8 {
                small_reads += 1;
                if small_reads >= 16 {
                    chunk = (chunk / 2).max(min_chunk);
                    small_reads = 0;
                }
            } else {
                small_reads = 0;
            }
            if n > 0
                && let Some(x) = extras.as_deref_mut()
            {
                x.heard();
            }
            // Boxed: the error is rare and held across the dispatch below.
            let decoded = framing
                .decode_all(&mut buf, &mut batch, eof)
                .map_err(Box::new);
            // Bytes left over are the start of a frame: its time runs from when
            // it started (the reader state for it is made by the first one).
            if settings.frame_timeout.is_some()
                && (!buf.is_empty() || extras.as_ref().is_some_and(|x| x.in_frame()))
            {
                extras
                    .get_or_insert_with(|| Extras::bare(settings))
                    .frame(!buf.is_empty(), !batch.is_empty());
            }
            if let Some(x) = extras.as_deref()
                && x.observer.is_on()
            {
                for msg in &batch {
                    x.observer.received(msg.id, msg.data.len());
                }
            }
            // Handled from the back: popping takes a message out without a
            // placeholder or a drain.
            batch.reverse();
            // Messages at the back of the batch the rate limit has let through.
            let mut allowed = 0;
            loop {
                // Under `SendQueueFull = "wait"` a handler's sends may go past the
                // send queue's bound (a synchronous handler cannot wait for room);
                // then nothing more is handled or read until the writer caught up,
                // and the worker is not held meanwhile.
                if conn.take_overflowed() {
                    // Boxed: only a connection whose peer reads slowly waits.
                    Box::pin(wait_for_room(conn, extras.as_deref_mut())).await;
                    if signal.is_closed() {
                        return ReadEnd::Cancelled;
                    }
                }
                if batch.is_empty() {
                    break;
                }
                if allowed == 0 {
                    // With a rate limit, at most a burst at a time, after waiting
                    // for it (without holding the worker).
                    allowed = match extras.as_mut().and_then(|x| x.rate.as_mut()) {
                        None => batch.len(),
                        Some(rate) => {
                            let n = rate.burst().min(batch.len());
                            let wait = rate.acquire(Instant::now(), n);
                            // Boxed: only a throttled connection pays for the timer.
                            if !wait.is_zero() && Box::pin(pause(signal, wait)).await.is_err() {
                                return ReadEnd::Cancelled;
                            }
                            n
                        }
                    };
                }
                // The worker is held while the batch is handled.
                let Ok(_permit) = lane.permit(signal).await else {
                    return ReadEnd::Cancelled;
                };
                while allowed > 0
                    && let Some(msg) = batch.pop()
                {
                    allowed -= 1;
                    // Only the start is kept across the handler's await (the
                    // connection's future holds every such local).
                    let started = extras.as_deref().map(|x| x.observer.start());
                    // A synchronous route is done when `dispatch` returns.
                    if let Some(handling) = lane.dispatch(conn, &mut lent, msg, &mut slot) {
                        handling.await;
                    }
                    if let (Some(x), Some(started)) = (extras.as_deref(), started) {
                        x.observer.handled(started);
                    }
                    // Past the bound: wait for room (above) before the rest.
                    if allowed > 0 && conn.overflowed() {
                        break;
                    }
                }
            }
            if let Err(e) = decoded {
                return ReadEnd::Failed(*e);
            }
            if buf.is_empty() && buf.capacity() > min_chunk {
                // Give back what a burst grew; a connection that has never received
                // anything holds no read buffer at all.
                buf = BytesMut::new();
            }
            if batch.capacity() > 64 {
                batch = Vec::new();
            }
            if eof {
                // Every message read was handled before this point, so replies to a
                // peer that half-closed are already queued.
                return ReadEnd::PeerClosed;
            }
        }
    }
}

/// Reader state only some connections use (heartbeat, rate limit, metrics,
/// timeouts): boxed, so that a connection without them does not carry it in its
/// future. The frame timeout's part is made when a frame first arrives in
/// pieces.
pub(crate) struct Extras<'a> {
    heartbeat: Option<Beating<'a>>,
    rate: Option<RateLimit>,
    observer: Observer,
    /// When the peer was last heard from (heartbeat and idle timeout).
    last_heard: Instant,
    timeouts: Timeouts,
}

/// A connection's heartbeat: its settings and its ticker.
struct Beating<'a> {
    settings: &'a Heartbeat,
    ticker: Interval,
}

/// The frame and idle timeouts: one timer for both, armed for the earlier
/// deadline and checked lazily. Bytes that arrive do not move the timer, only
/// the instants it is checked against when it fires (then it is set again for
/// what is left), so a busy connection touches the timer about once per timeout,
/// not once per read.
struct Timeouts {
    frame: Option<Duration>,
    idle: Option<Duration>,
    /// When the unfinished frame in the read buffer started arriving.
    frame_started: Option<Instant>,
    timer: Option<Pin<Box<Sleep>>>,
    /// The timer is set for a deadline still to be checked.
    armed: bool,
}

/// What woke the reader other than bytes.
enum Event {
    /// Time for a heartbeat.
    Beat,
    /// A timeout ran out.
    Expired(Timeout),
}

impl Timeouts {
    /// The earlier deadline, and which it is.
    fn next_deadline(&self, last_heard: Instant) -> Option<(Instant, Timeout)> {
        let frame = self
            .frame
            .zip(self.frame_started)
            .map(|(limit, started)| (started + limit, Timeout::Frame));
        let idle = self.idle.map(|limit| (last_heard + limit, Timeout::Idle));
        match (frame, idle) {
            (Some(f), Some(i)) => Some(if f.0 <= i.0 { f } else { i }),
            (f, i) => f.or(i),
        }
    }

    /// Sets the timer for the next deadline, unless it is already set for one
    /// no later.
    fn arm(&mut self, last_heard: Instant) {
        let Some((at, _)) = self.next_deadline(last_heard) else {
            return;
        };
        match &mut self.timer {
            Some(timer) if self.armed && timer.deadline() <= at => {}
            Some(timer) => timer.as_mut().reset(at),
            None => self.timer = Some(Box::pin(tokio::time::sleep_until(at))),
        }
        self.armed = true;
    }

    fn poll_expired(&mut self, last_heard: Instant, cx: &mut Context<'_>) -> Poll<Timeout> {
        // Nothing to time out: the timer is not polled (it may still be set for
        // a frame that has arrived since, and wake the task once, for nothing).
        if self.frame_started.is_none() && self.idle.is_none() {
            return Poll::Pending;
        }
        loop {
            let next = self.next_deadline(last_heard);
            let Some(timer) = self.timer.as_mut().filter(|_| self.armed) else {
                return Poll::Pending;
            };
            std::task::ready!(timer.as_mut().poll(cx));
            match next {
                None => {
                    self.armed = false;
                    return Poll::Pending;
                }
                Some((at, timeout)) if at <= Instant::now() => return Poll::Ready(timeout),
                // Bytes came since it was set: set it again for what is left.
                Some((at, _)) => timer.as_mut().reset(at),
            }
        }
    }
}

impl<'a> Extras<'a> {
    pub(crate) fn new(
        heartbeat: Option<&'a Heartbeat>,
        rate: Option<RateLimit>,
        observer: &Observer,
        settings: &ReadSettings,
    ) -> Option<Box<Extras<'a>>> {
        let needed = heartbeat.is_some() || rate.is_some() || settings.idle_timeout.is_some();
        let needed = needed || observer.is_on();
        if !needed {
            return None;
        }
        let heartbeat = heartbeat.map(|settings| {
            let mut ticker =
                tokio::time::interval_at(Instant::now() + settings.interval, settings.interval);
            ticker.set_missed_tick_behavior(MissedTickBehavior::Delay);
            Beating { settings, ticker }
        });
        let mut extras = Box::new(Extras {
            heartbeat,
            rate,
            observer: observer.clone(),
            ..*Extras::bare(settings)
        });
        let last_heard = extras.last_heard;
        extras.timeouts.arm(last_heard);
        Some(extras)
    }

    /// Only the timeouts.
    fn bare(settings: &ReadSettings) -> Box<Extras<'a>> {
        Box::new(Extras {
            heartbeat: None,
            rate: None,
            observer: Observer::default(),
            last_heard: Instant::now(),
            timeouts: Timeouts {
                frame: settings.frame_timeout,
                idle: settings.idle_timeout,
                frame_started: None,
                timer: None,
                armed: false,
            },
        })
    }

    /// Bytes arrived.
    fn heard(&mut self) {
        if self.heartbeat.is_some() || self.timeouts.idle.is_some() {
            self.last_heard = Instant::now();
            if !self.timeouts.armed {
                self.timeouts.arm(self.last_heard);
            }
        }
    }

    /// True while the read buffer holds an unfinished frame.
    fn in_frame(&self) -> bool {
        self.timeouts.frame_started.is_some()
    }

    /// After a decode: `partial`, the buffer holds the start of a frame;
    /// `decoded`, whole frames came out of it (so the partial one is new).
    fn frame(&mut self, partial: bool, decoded: bool) {
        if !partial {
            self.timeouts.frame_started = None;
        } else if decoded || self.timeouts.frame_started.is_none() {
            self.timeouts.frame_started = Some(Instant::now());
            self.timeouts.arm(self.last_heard);
        }
    }

    /// A heartbeat tick, or a timeout that ran out.
    fn poll_event(&mut self, cx: &mut Context<'_>) -> Poll<Event> {
        if self.poll_beat(cx).is_ready() {
            return Poll::Ready(Event::Beat);
        }
        self.timeouts
            .poll_expired(self.last_heard, cx)
            .map(Event::Expired)
    }

    /// The next heartbeat tick (never without a heartbeat).
    fn poll_beat(&mut self, cx: &mut Context<'_>) -> Poll<()> {
        match &mut self.heartbeat {
            // Interval::poll_tick only records a tick when it returns it.
            Some(hb) => hb.ticker.poll_tick(cx).map(drop),
            None => Poll::Pending,
        }
    }

    /// One tick: declare the peer dead, or send a heartbeat.
    fn beat(&self, conn: &Connection) {
        let Some(hb) = self.heartbeat.as_ref().map(|b| b.settings) else {
            return;
        };
        if self.last_heard.elapsed() > hb.limit() {
            (hb.on_dead)(conn);
        } else if let Err(e) = conn.try_send(hb.msg_id, (hb.payload)(conn)) {
            // A full queue means the peer is not reading; that is for the silence
            // check (or the send-queue policy) to judge, not a reason to wait here.
            tracing::debug!(error = %e, "heartbeat not sent");
        }
    }
}

/// The next heartbeat tick or expired timeout (never without extras).
fn next_event<'b>(mut extras: Option<&'b mut Extras<'_>>) -> impl Future<Output = Event> + 'b {
    std::future::poll_fn(move |cx| match extras.as_deref_mut() {
        Some(x) => x.poll_event(cx),
        None => Poll::Pending,
    })
}

/// Waits until the send queue is below its bound (or closed). The heartbeat goes
/// on meanwhile: nothing is read while the reader waits, so a peer that reads
/// nothing for the heartbeat's limit is declared dead like a silent one.
async fn wait_for_room(conn: &Connection, mut extras: Option<&mut Extras<'_>>) {
    loop {
        tokio::select! {
            biased;
            () = conn.room() => return,
            () = std::future::poll_fn(|cx| match extras.as_deref_mut() {
                Some(x) => x.poll_beat(cx),
                None => Poll::Pending,
            }) => {
                if let Some(x) = extras.as_deref() {
                    x.beat(conn);
                }
            }
        }
    }
}

/// Waits `wait`, or fails when the connection closes first.
async fn pause(signal: &CloseSignal, wait: std::time::Duration) -> Result<(), ()> {
    tokio::select! {
        biased;
        () = signal.closed_for(Waiter::Reader) => Err(()),
        () = tokio::time::sleep(wait) => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::time::Duration;

    use tokio::io::AsyncWriteExt;

    use super::*;
    use crate::codec::{Codec, Layout};
    use crate::config::WorkerMode;
    use crate::conn::tests::test_conn;
    use crate::message::{ConnId, MsgId};
    use crate::request::Request;
    use crate::router::Router;
    use crate::worker::WorkerPool;

    /// Reads of 16 B (then adapting), no timeouts.
    const CHUNK_16: ReadSettings = ReadSettings {
        chunk: 16,
        frame_timeout: None,
        idle_timeout: None,
    };

    /// Reads of 1 KiB (then adapting), no timeouts.
    const CHUNK_1K: ReadSettings = ReadSettings {
        chunk: 1024,
        ..CHUNK_16
    };

    /// Reads `io` to its end with a 16-byte first read and no extras, handling
    /// on the reader (no worker).
    async fn run_inline(io: tokio::io::DuplexStream, conn: &Connection, codec: Codec) -> ReadEnd {
        run(io, conn, &inline_lane(), codec, &CHUNK_16, None).await
    }

    fn inline_lane() -> Lane {
        let router = Router::new().route(1, |req: Request| async move {
            req.conn().try_send(req.msg_id(), req.data())
        });
        WorkerPool::new(WorkerMode::Hash, 0, 1, Arc::new(router.compile(None, None)))
            .assign(ConnId(1))
    }

    fn wire(id: u32, data: &[u8]) -> Vec<u8> {
        let mut b = bytes::BytesMut::new();
        Codec::new(Layout::Tlv, 0)
            .encode_into(MsgId(id), data, &mut b)
            .unwrap();
        b.to_vec()
    }

    #[tokio::test]
    async fn dispatches_each_frame_and_ends_on_peer_close() {
        let (conn, mut rx) = test_conn(16);
        let (mut peer, io) = tokio::io::duplex(64);
        let mut bytes = wire(1, b"one");
        bytes.extend(wire(1, b"two"));
        peer.write_all(&bytes).await.unwrap();
        drop(peer);
        let end = run_inline(io, &conn, Codec::default()).await;
        assert!(matches!(end, ReadEnd::PeerClosed), "{end:?}");
        assert_eq!(&rx.recv().await.unwrap().data[..], b"one");
        assert_eq!(&rx.recv().await.unwrap().data[..], b"two");
    }

    /// A pool of `workers` (0: handled on the reader) whose route 1 echoes
    /// synchronously with `try_send`.
    fn sync_echo_pool(workers: usize) -> Arc<WorkerPool> {
        let router = Router::new().route_sync(1, |req: &Request| {
            req.conn().try_send(req.msg_id(), req.data())
        });
        WorkerPool::new(
            WorkerMode::Hash,
            workers,
            1,
            Arc::new(router.compile(None, None)),
        )
    }

    #[tokio::test(start_paused = true)]
    async fn a_full_send_queue_pauses_handling_until_it_drains() {
        let (conn, mut rx) = test_conn(2);
        let (mut peer, io) = tokio::io::duplex(1024);
        for i in 0..10u8 {
            peer.write_all(&wire(1, &[i])).await.unwrap();
        }
        drop(peer);
        let lane = sync_echo_pool(0).assign(conn.id());
        let reading = run(io, &conn, &lane, Codec::default(), &CHUNK_1K, None);
        let draining = async {
            let mut got = Vec::new();
            while got.len() < 10 {
                got.push(rx.recv().await.unwrap().data[0]);
            }
            got
        };
        // Paused time: the timeout fires only if both sides are stuck, i.e. if a
        // reply was refused by the full queue instead of waited for.
        let (end, got) = tokio::time::timeout(Duration::from_secs(1), async {
            tokio::join!(reading, draining)
        })
        .await
        .expect("every reply fits once the queue drains");
        assert!(matches!(end, ReadEnd::PeerClosed), "{end:?}");
        assert_eq!(got, (0..10).collect::<Vec<u8>>());
    }

    #[tokio::test]
    async fn without_the_wait_policy_a_full_queue_refuses_instead() {
        let (conn, mut rx) = crate::conn::tests::test_conn_with(2, crate::SendQueueFull::Fail);
        let (mut peer, io) = tokio::io::duplex(1024);
        for i in 0..10u8 {
            peer.write_all(&wire(1, &[i])).await.unwrap();
        }
        drop(peer);
        let lane = sync_echo_pool(0).assign(conn.id());
        let end = run(io, &conn, &lane, Codec::default(), &CHUNK_1K, None).await;
        assert!(matches!(end, ReadEnd::PeerClosed), "{end:?}");
        assert_eq!(rx.try_recv().unwrap().data[0], 0);
        assert_eq!(rx.try_recv().unwrap().data[0], 1);
        assert!(rx.try_recv().is_err(), "the rest failed with QueueFull");
    }

    #[tokio::test(start_paused = true)]
    async fn a_connection_waiting_for_room_does_not_hold_its_worker() {
        // One worker for both connections; `slow`'s replies are never taken.
        let (slow, _slow_rx) = test_conn(1);
        let (fast, mut fast_rx) = test_conn(1);
        let (mut slow_peer, slow_io) = tokio::io::duplex(1024);
        let (mut fast_peer, fast_io) = tokio::io::duplex(1024);
        for i in 0..3u8 {
            slow_peer.write_all(&wire(1, &[i])).await.unwrap();
        }
        fast_peer.write_all(&wire(1, b"f")).await.unwrap();
        let pool = sync_echo_pool(1);
        let (slow_lane, fast_lane) = (pool.assign(slow.id()), pool.assign(fast.id()));
        let slow_reading = run(
            slow_io,
            &slow,
            &slow_lane,
            Codec::default(),
            &CHUNK_1K,
            None,
        );
        let fast_reading = async {
            // Let the slow connection fill its queue first.
            tokio::task::yield_now().await;
            run(
                fast_io,
                &fast,
                &fast_lane,
                Codec::default(),
                &CHUNK_1K,
                None,
            )
            .await
        };
        let reply = async { fast_rx.recv().await.unwrap() };
        tokio::select! {
            _ = slow_reading => panic!("the slow connection cannot finish"),
            _ = fast_reading => panic!("the fast peer is still open"),
            reply = tokio::time::timeout(Duration::from_secs(1), reply) => {
                assert_eq!(&reply.expect("the fast connection was served").data[..], b"f");
            }
        }
    }

    /// A lane handling on the reader whose route 1 counts the messages it
    /// handles and, if `reply`, echoes them with `try_send`.
    fn counting_lane(handled: &Arc<AtomicUsize>, reply: bool) -> Lane {
        let handled = handled.clone();
        let router = Router::new().route_sync(1, move |req: &Request| {
            handled.fetch_add(1, Ordering::SeqCst);
            if reply {
                req.conn().try_send(1, req.data())
            } else {
                Ok(())
            }
        });
        WorkerPool::new(WorkerMode::Hash, 0, 1, Arc::new(router.compile(None, None)))
            .assign(ConnId(7))
    }

    #[tokio::test(start_paused = true)]
    async fn close_stops_a_reader_waiting_for_room() {
        let handled = Arc::new(AtomicUsize::new(0));
        let lane = counting_lane(&handled, true);
        let (conn, _rx) = test_conn(1);
        let (mut peer, io) = tokio::io::duplex(1024);
        for i in 0..3u8 {
            peer.write_all(&wire(1, &[i])).await.unwrap();
        }
        let reading = run(io, &conn, &lane, Codec::default(), &CHUNK_1K, None);
        let closing = async {
            for _ in 0..100 {
                if handled.load(Ordering::SeqCst) >= 2 {
                    break;
                }
                tokio::task::yield_now().await;
            }
            tokio::task::yield_now().await;
            conn.close();
        };
        // Paused time: the timeout fires only if the reader is stuck (its lane's
        // queue does not carry this connection's close, only the send queue does).
        let (end, ()) = tokio::time::timeout(Duration::from_secs(1), async {
            tokio::join!(reading, closing)
        })
        .await
        .expect("the close ends the wait for room");
        assert!(matches!(end, ReadEnd::Cancelled), "{end:?}");
        // The second reply went past the bound of one: the third message waited
        // for room, and the close ended the wait.
        assert_eq!(handled.load(Ordering::SeqCst), 2);
    }

    #[tokio::test(start_paused = true)]
    async fn a_queue_filled_by_others_does_not_stop_handlers_that_do_not_send() {
        let handled = Arc::new(AtomicUsize::new(0));
        let lane = counting_lane(&handled, false);
        let (conn, _rx) = test_conn(1);
        // Full, and never drained: as if a broadcast filled it and the peer stopped
        // reading. Nothing the handler does needs room, so reading goes on.
        conn.try_send(9, "from elsewhere").unwrap();
        let (mut peer, io) = tokio::io::duplex(1024);
        for i in 0..3u8 {
            peer.write_all(&wire(1, &[i])).await.unwrap();
        }
        drop(peer);
        let end = tokio::time::timeout(
            Duration::from_secs(1),
            run(io, &conn, &lane, Codec::default(), &CHUNK_1K, None),
        )
        .await
        .expect("the reader does not wait for room it does not need");
        assert!(matches!(end, ReadEnd::PeerClosed), "{end:?}");
        assert_eq!(handled.load(Ordering::SeqCst), 3);
    }

    #[tokio::test]
    async fn oversized_frame_fails_the_reader() {
        let (conn, _rx) = test_conn(16);
        let (mut peer, io) = tokio::io::duplex(64);
        peer.write_all(&wire(1, &[0u8; 17])).await.unwrap();
        let end = run_inline(io, &conn, Codec::new(Layout::Tlv, 16)).await;
        assert!(matches!(
            end,
            ReadEnd::Failed(Error::FrameTooLarge { len: 17, max: 16 })
        ));
    }

    #[tokio::test]
    async fn truncated_frame_at_eof_fails_the_reader() {
        let (conn, _rx) = test_conn(16);
        let (mut peer, io) = tokio::io::duplex(64);
        peer.write_all(&wire(1, b"abcdef")[..10]).await.unwrap();
        drop(peer);
        let end = run_inline(io, &conn, Codec::default()).await;
        assert!(matches!(
            end,
            ReadEnd::Failed(Error::TruncatedFrame { buffered: 10 })
        ));
    }

    #[tokio::test]
    async fn close_stops_a_reader_waiting_for_bytes() {
        let lane = inline_lane();
        let (conn, _rx) = test_conn(16);
        let (_peer, io) = tokio::io::duplex(64);
        let closer = conn.clone();
        let reading = run(io, &conn, &lane, Codec::default(), &CHUNK_16, None);
        let (end, ()) = tokio::join!(reading, async move { closer.close() });
        assert!(matches!(end, ReadEnd::Cancelled));
    }
}
