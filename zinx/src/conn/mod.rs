//! Connections: the handle handlers hold, its send queue and its writer.
//!
//! Every connection is driven by a **reader** (`engine::reader`) that owns the
//! socket's read half and turns bytes into messages for the router, and a
//! **writer** ([`writer`]) that owns the write half and drains the connection's
//! bounded send queue; the writer is made with the first message queued. Both are
//! polled by the connection's one task (`engine::Engine::run`), the writer after
//! the reader. Nothing else touches the socket. [`Connection`] is a cheap clonable
//! handle: sending encodes a message into the queue ([`outgoing`]); closing sets
//! the close signal (which wakes the reader) and closes the send queue (which
//! wakes the writer).
//! Because the queue and the signal are owned values, a send after close is an
//! [`Error::Closed`], never a panic or a lost wake-up.

pub(crate) mod close;
pub(crate) mod ops;
mod outbox;
pub(crate) mod outgoing;
pub(crate) mod writer;

pub use outbox::Outbox;

use std::any::Any;
use std::fmt;
use std::future::Future;
use std::net::SocketAddr;
use std::sync::atomic::AtomicUsize;
use std::sync::{Arc, Mutex, MutexGuard, OnceLock, Weak};

use tokio::sync::oneshot;
use tokio_util::task::TaskTracker;

use crate::config::SendQueueFull;
use crate::conn::close::CloseSignal;
use crate::conn::ops::Jobs;
use crate::conn::outgoing::{Copied, Encoded, Encoder, Outgoing, Receiver, SendQueue};
use crate::conn::writer::WriterState;
use crate::error::Error;
use crate::extensions::Extensions;
use crate::message::{ConnId, Message, MsgId, Payload};
use crate::observe::Observer;
use crate::queue::{PushError, Queue};
use crate::util::lock;

/// What a connection belongs to: its server's (or client's) connection
/// manager, type-erased so this module does not depend on the manager's (which
/// holds connections); `manager::ConnManager` gives it its type back.
pub(crate) type Owner = Weak<dyn Any + Send + Sync>;

/// Belonging to nothing (a detached connection).
pub(crate) fn no_owner() -> Owner {
    Weak::<()>::new()
}

type CloseCallback = Box<dyn FnOnce() + Send>;

/// A handle to one connection. Cloning is cheap (one reference count).
///
/// Handlers get it from [`Request::conn`](crate::Request::conn); hooks get it as
/// their argument; [`ConnManager`](crate::ConnManager) hands them out by ID.
#[derive(Clone)]
pub struct Connection {
    shared: Arc<Shared>,
}

/// `repr(C)`, in this order: what every message touches first (with the `Arc`'s
/// counts, the writer, the size limit, then the send queue, whose own hot fields
/// come first, then the close flag), so a message touches about five cache lines
/// of it instead of seven; with 10,000 connections these lines are rarely cached.
#[repr(C)]
struct Shared {
    /// Polled by the connection's task, after its reader (see
    /// [`poll_writer`](Connection::poll_writer)).
    writer: Mutex<WriterState>,
    max_data_len: Option<usize>,
    send_queue_full: SendQueueFull,
    queue: SendQueue,
    /// Async op results for the reader to run, made by the first op (most
    /// connections never start one). Next to the close flag: the reader looks
    /// at both on every turn.
    jobs: OnceLock<Arc<Jobs>>,
    close: CloseSignal,
    id: ConnId,
    peer: SocketAddr,
    local: SocketAddr,
    properties: Mutex<Extensions>,
    /// `None` once the close callbacks have run: later ones run at once.
    close_callbacks: Mutex<Option<Vec<CloseCallback>>>,
    manager: Owner,
    /// The bound of `jobs` (`MaxWorkerTaskLen`); 0: no async ops.
    jobs_capacity: usize,
    tracker: Option<TaskTracker>,
    /// Completes when the previous async op's result was handed to the lane, so
    /// results are delivered in the order the ops were started.
    op_tail: Mutex<Option<oneshot::Receiver<()>>>,
    /// Async ops started and not yet delivered.
    ops_in_flight: AtomicUsize,
    observer: Observer,
}

/// Settings of a [`Connection::detached_with`] connection.
pub(crate) struct Detached {
    pub(crate) id: ConnId,
    pub(crate) queue: usize,
    /// The byte bound (`usize::MAX`: none).
    pub(crate) queue_bytes: usize,
    pub(crate) send_queue_full: SendQueueFull,
    pub(crate) max_data_len: Option<usize>,
    pub(crate) manager: Owner,
}

/// What a new connection is made of.
pub(crate) struct Parts {
    pub(crate) id: ConnId,
    pub(crate) peer: SocketAddr,
    pub(crate) local: SocketAddr,
    pub(crate) max_data_len: Option<usize>,
    pub(crate) send_queue: usize,
    /// The send queue's byte bound (`usize::MAX`: none).
    pub(crate) send_queue_bytes: usize,
    pub(crate) send_queue_full: SendQueueFull,
    /// The connection's framing, which encodes what is sent.
    pub(crate) encoder: Encoder,
    pub(crate) manager: Owner,
    /// The bound of the queue of async op results (0: no async ops).
    pub(crate) jobs: usize,
    /// Where async op tasks are tracked, so shutdown waits for them.
    pub(crate) tracker: Option<TaskTracker>,
    pub(crate) observer: Observer,
}

/// A payload the send queue refused, as it came back: the payload itself if it
/// was to be copied, else the message made of it.
enum Unsent<P> {
    Payload(P),
    Message(Message),
}

impl<P: Payload> Unsent<P> {
    /// The message to queue once there is room.
    fn into_message(self, id: MsgId) -> Message {
        match self {
            Unsent::Payload(data) => Message {
                id,
                data: data.into_bytes(),
            },
            Unsent::Message(msg) => msg,
        }
    }
}

impl Connection {
    /// Creates the handle; the writer takes from its send queue through a
    /// [`Receiver`].
    pub(crate) fn new(parts: Parts) -> Connection {
        let queue = Queue::with_limits(
            Outgoing::new(parts.encoder),
            parts.send_queue,
            parts.send_queue_bytes,
        );
        let shared = Shared {
            id: parts.id,
            peer: parts.peer,
            local: parts.local,
            max_data_len: parts.max_data_len,
            send_queue_full: parts.send_queue_full,
            queue,
            close: CloseSignal::default(),
            properties: Mutex::new(Extensions::new()),
            close_callbacks: Mutex::new(Some(Vec::new())),
            manager: parts.manager,
            jobs: OnceLock::new(),
            jobs_capacity: parts.jobs,
            tracker: parts.tracker,
            op_tail: Mutex::new(None),
            ops_in_flight: AtomicUsize::new(0),
            observer: parts.observer,
            writer: Mutex::new(WriterState::Absent),
        };
        Connection {
            shared: Arc::new(shared),
        }
    }

    /// A connection with no socket behind it: what is sent on it arrives in the
    /// returned [`Outbox`] (at most `queue` messages are held). For unit tests of
    /// handlers and for benchmarks; `async_op` is not available on it.
    #[must_use]
    pub fn detached(queue: usize) -> (Connection, Outbox) {
        Connection::detached_with(Detached {
            id: ConnId(0),
            queue,
            queue_bytes: usize::MAX,
            send_queue_full: SendQueueFull::Wait,
            max_data_len: None,
            manager: no_owner(),
        })
    }

    /// A detached connection with the given settings.
    pub(crate) fn detached_with(d: Detached) -> (Connection, Outbox) {
        let addr = SocketAddr::from(([127, 0, 0, 1], 0));
        let conn = Connection::new(Parts {
            id: d.id,
            peer: addr,
            local: addr,
            max_data_len: d.max_data_len,
            send_queue: d.queue,
            send_queue_bytes: d.queue_bytes,
            send_queue_full: d.send_queue_full,
            encoder: Encoder::Zinx(outbox::Outbox::codec()),
            manager: d.manager,
            jobs: 0,
            tracker: None,
            observer: Observer::default(),
        });
        (conn.clone(), outbox::Outbox::new(Receiver::new(conn)))
    }

    /// The connection's ID, unique within its server.
    #[must_use]
    pub fn id(&self) -> ConnId {
        self.shared.id
    }

    /// The peer's address.
    #[must_use]
    pub fn peer_addr(&self) -> SocketAddr {
        self.shared.peer
    }

    /// The local address the peer connected to.
    #[must_use]
    pub fn local_addr(&self) -> SocketAddr {
        self.shared.local
    }

    /// Queues a message for the writer, waiting while the send queue is full.
    ///
    /// Messages sent on one connection are written in the order they were queued.
    ///
    /// # Errors
    ///
    /// [`Error::Closed`] if the connection is closed (or closes while waiting),
    /// [`Error::FrameTooLarge`] if `data` is longer than the framing allows
    /// (`MaxPacketSize` for Zinx framing: the peer would reject it).
    pub fn send(
        &self,
        id: impl Into<MsgId>,
        data: impl Payload,
    ) -> impl Future<Output = Result<(), Error>> + Send + '_ {
        // The common case (room in the queue) is decided here, so the future a
        // handler awaits is a few words (and borrows no payload); the waiting
        // path, rare, is boxed. Handler futures embed this one and are moved and
        // boxed per message.
        let id = id.into();
        let fast = self
            .check(data.len())
            .and_then(|()| match self.enqueue(id, data) {
                Ok(()) => Ok(None),
                Err(PushError::Full(back))
                    if self.shared.send_queue_full == SendQueueFull::Wait =>
                {
                    Ok(Some(back.into_message(id)))
                }
                Err(e) => Err(self.refused(e)),
            });
        async move {
            match fast {
                Ok(None) => Ok(()),
                Err(e) => Err(self.failed(e)),
                Ok(Some(msg)) => Box::pin(self.send_waiting(msg))
                    .await
                    .map_err(|e| self.failed(e)),
            }
        }
    }

    /// A send that did not queue its message: counted (with metrics), returned.
    #[cold]
    fn failed(&self, e: Error) -> Error {
        self.shared.observer.send_failed(match &e {
            Error::QueueFull => "queue_full",
            Error::FrameTooLarge { .. } => "too_large",
            _ => "closed",
        });
        e
    }

    /// Messages waiting in the send queue.
    #[cfg(feature = "metrics")]
    pub(crate) fn queue_len(&self) -> usize {
        self.shared.queue.len()
    }

    /// Opens (or closes) the window in which sends may go past the send queue's
    /// bound, up to twice it, under `SendQueueFull = "wait"`: while the reader
    /// calls a handler, which cannot wait for room itself if it is synchronous.
    /// The reader then waits for [`room`](Self::room) before the next message.
    #[inline]
    pub(crate) fn handling(&self, on: bool) {
        if self.shared.send_queue_full == SendQueueFull::Wait {
            self.shared.queue.allow_overflow(on);
        }
    }

    /// True if a send went past the send queue's bound since the last
    /// [`take_overflowed`](Self::take_overflowed).
    #[inline]
    pub(crate) fn overflowed(&self) -> bool {
        self.shared.queue.overflowed()
    }

    /// True if a send went past the send queue's bound since the last call.
    #[inline]
    pub(crate) fn take_overflowed(&self) -> bool {
        self.shared.queue.take_overflowed()
    }

    /// Completes when the send queue is below its bound, or is closed.
    pub(crate) async fn room(&self) {
        self.shared.queue.room().await;
    }

    async fn send_waiting(&self, msg: Message) -> Result<(), Error> {
        let (id, len) = (msg.id, msg.data.len());
        // Closing the connection closes the queue, which hands the message back
        // to a waiting push: no separate wait for the close.
        self.shared
            .queue
            .push(msg)
            .await
            .map_err(|e| self.refused(e))?;
        self.queued(id, len);
        Ok(())
    }

    /// Why the send queue refused a message, as the sender's error.
    #[cold]
    fn refused<T>(&self, e: PushError<T, Error>) -> Error {
        match e {
            PushError::Full(_) => self.queue_full(),
            PushError::Closed(_) => Error::Closed,
            PushError::Rejected(e) => e,
        }
    }

    /// A send that cannot wait found the queue full: `QueueFull`, or under the
    /// `SendQueueFull = "close"` policy the slow peer is closed and the send
    /// reports `Closed`.
    #[cold]
    fn queue_full(&self) -> Error {
        if self.shared.send_queue_full != SendQueueFull::Close {
            return Error::QueueFull;
        }
        tracing::warn!(conn_id = %self.id(), "send queue full, closing the slow peer");
        self.close();
        Error::Closed
    }

    /// After a message was queued: counts it, with metrics. (The queue wakes the
    /// connection's task, which makes and polls the writer.)
    #[inline]
    fn queued(&self, id: MsgId, len: usize) {
        self.shared.observer.sent(id, len);
    }

    /// Queues a message for the writer, failing at once when the queue is full
    /// (Zinx's `SendBuffMsg`).
    ///
    /// Under `SendQueueFull = "wait"`, while the connection's reader is calling a
    /// handler (a synchronous one cannot wait for room), the handler's sends may
    /// go past `MaxMsgChanLen`, up to twice it; the reader then waits for the
    /// queue to drain below its bound before it handles or reads anything more.
    ///
    /// # Errors
    ///
    /// [`Error::QueueFull`] when `MaxMsgChanLen` messages are already queued,
    /// [`Error::Closed`] and [`Error::FrameTooLarge`] as for [`send`](Self::send).
    pub fn try_send(&self, id: impl Into<MsgId>, data: impl Payload) -> Result<(), Error> {
        self.check(data.len()).map_err(|e| self.failed(e))?;
        self.enqueue(id.into(), data)
            .map_err(|e| self.failed(self.refused(e)))
    }

    /// Queues `data` if there is room: copied into the send buffer when it can
    /// be (see [`Payload`]), else as `Bytes`. What was refused comes back.
    #[inline]
    fn enqueue<P: Payload>(&self, id: MsgId, data: P) -> Result<(), PushError<Unsent<P>, Error>> {
        let len = data.len();
        match data.to_copy() {
            Some(copy) => {
                let pushed = self.shared.queue.try_push(Copied { id, data: copy });
                if let Err(e) = pushed {
                    // The refused copy borrows `data`: dropped before `data` goes back.
                    return Err(e.map(drop).map(|()| Unsent::Payload(data)));
                }
            }
            None => {
                let msg = Message {
                    id,
                    data: data.into_bytes(),
                };
                self.shared
                    .queue
                    .try_push(msg)
                    .map_err(|e| e.map(Unsent::Message))?;
            }
        }
        self.queued(id, len);
        Ok(())
    }

    /// Queues a frame encoded once for many connections (see
    /// [`Encoder::encode`](outgoing::Encoder::encode)), failing at once when the
    /// queue is full, as [`try_send`](Self::try_send).
    pub(crate) fn try_send_encoded(&self, msg: &Encoded) -> Result<(), Error> {
        self.check(msg.data_len).map_err(|e| self.failed(e))?;
        self.shared
            .queue
            .try_push(msg)
            .map_err(|e| self.failed(self.refused(e)))?;
        self.queued(msg.id, msg.data_len);
        Ok(())
    }

    /// Queues a frame encoded once for many connections, waiting for room, as
    /// [`send`](Self::send).
    pub(crate) async fn send_encoded(&self, msg: &Encoded) -> Result<(), Error> {
        self.check(msg.data_len).map_err(|e| self.failed(e))?;
        let pushed = match self.shared.queue.try_push(msg) {
            Err(PushError::Full(msg)) if self.shared.send_queue_full == SendQueueFull::Wait => {
                self.shared.queue.push(msg).await
            }
            other => other,
        };
        pushed.map_err(|e| self.failed(self.refused(e)))?;
        self.queued(msg.id, msg.data_len);
        Ok(())
    }

    /// Fails a send before queuing: the connection is closed, or the data is
    /// longer than the framing allows.
    #[inline]
    fn check(&self, len: usize) -> Result<(), Error> {
        if self.is_closed() {
            return Err(Error::Closed);
        }
        if let Some(max) = self.shared.max_data_len
            && len > max
        {
            return Err(Error::FrameTooLarge {
                len: len as u64,
                max: max as u64,
            });
        }
        Ok(())
    }

    /// Closes the connection: the reader stops, the writer writes what is already
    /// queued and closes the socket, then `on_disconnect` and the close callbacks
    /// run. Closing twice is harmless.
    pub fn close(&self) {
        if self.shared.close.close() {
            // The writer and the reader wait on these queues (one waker each
            // instead of a second one for the close): closed, they wake them.
            self.shared.queue.close();
            if let Some(jobs) = self.shared.jobs.get() {
                jobs.close();
            }
        }
    }

    /// True once [`close`](Self::close) was called or the connection ended.
    #[must_use]
    #[inline]
    pub fn is_closed(&self) -> bool {
        self.shared.close.is_closed()
    }

    /// Completes when the connection is closed.
    pub async fn closed(&self) {
        self.shared.close.closed().await;
    }

    /// Stores a typed property, returning the previous value of that type.
    ///
    /// Properties are keyed by type, like `http::Extensions`: define a small
    /// newtype per property (`struct PlayerId(u32)`).
    pub fn insert_property<T: Any + Send + Sync>(&self, value: T) -> Option<T> {
        self.properties().insert(value)
    }

    /// A clone of the property of type `T`, if set.
    #[must_use]
    pub fn property<T: Any + Send + Sync + Clone>(&self) -> Option<T> {
        self.properties().get::<T>().cloned()
    }

    /// Removes and returns the property of type `T`.
    pub fn remove_property<T: Any + Send + Sync>(&self) -> Option<T> {
        self.properties().remove::<T>()
    }

    /// Runs `f` with the property of type `T` (mutably), under the property lock.
    /// Keep `f` short: it must not block or call back into this connection's
    /// properties.
    pub fn with_property<T: Any + Send + Sync, R>(&self, f: impl FnOnce(Option<&mut T>) -> R) -> R {
        f(self.properties().get_mut::<T>())
    }

    fn properties(&self) -> MutexGuard<'_, Extensions> {
        lock(&self.shared.properties)
    }

    /// Registers `callback` to run once when the connection has closed (after
    /// `on_disconnect`). On a connection that has already finished closing it runs
    /// at once.
    pub fn add_close_callback(&self, callback: impl FnOnce() + Send + 'static) {
        let mut callbacks = lock(&self.shared.close_callbacks);
        match callbacks.as_mut() {
            Some(list) => list.push(Box::new(callback)),
            None => {
                drop(callbacks);
                callback();
            }
        }
    }

    /// Runs the close callbacks once, outside the lock.
    pub(crate) fn run_close_callbacks(&self) {
        let callbacks = lock(&self.shared.close_callbacks).take();
        for callback in callbacks.into_iter().flatten() {
            if let Err(panic) = std::panic::catch_unwind(std::panic::AssertUnwindSafe(callback)) {
                let panic = crate::util::panic_message(&*panic);
                tracing::error!(
                    conn_id = %self.id(),
                    %panic,
                    "close callback panicked"
                );
            }
        }
    }

    /// What the connection belongs to (see [`Owner`]).
    pub(crate) fn owner(&self) -> &Owner {
        &self.shared.manager
    }

    pub(crate) fn send_queue(&self) -> &SendQueue {
        &self.shared.queue
    }

    pub(crate) fn close_signal(&self) -> &CloseSignal {
        &self.shared.close
    }

    /// How many handles of this connection exist.
    #[cfg(test)]
    pub(crate) fn handles(&self) -> usize {
        Arc::strong_count(&self.shared)
    }

    /// True if both are handles of the same connection.
    #[cfg(test)]
    pub(crate) fn same(&self, other: &Connection) -> bool {
        Arc::ptr_eq(&self.shared, &other.shared)
    }
}

impl fmt::Debug for Connection {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Connection")
            .field("id", &self.shared.id)
            .field("peer", &self.shared.peer)
            .field("closed", &self.is_closed())
            .finish_non_exhaustive()
    }
}

#[cfg(test)]
pub(crate) mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;
    use bytes::{Bytes, BytesMut};
    use std::sync::atomic::Ordering;

    use crate::framing::Framing;

    pub(crate) fn test_conn(queue: usize) -> (Connection, Outbox) {
        test_conn_with(queue, SendQueueFull::Wait)
    }

    pub(crate) fn test_conn_with(
        queue: usize,
        send_queue_full: SendQueueFull,
    ) -> (Connection, Outbox) {
        Connection::detached_with(Detached {
            id: ConnId(7),
            queue,
            queue_bytes: usize::MAX,
            send_queue_full,
            max_data_len: Some(16),
            manager: no_owner(),
        })
    }

    #[tokio::test]
    async fn a_message_the_framing_cannot_encode_is_the_senders_error() {
        let addr: SocketAddr = "127.0.0.1:1".parse().unwrap();
        // HTLV+CRC has a 1-byte function code: ID 300 cannot be expressed.
        let framing = crate::framing::HtlvCrcCodec::new(0xA1);
        let conn = Connection::new(Parts {
            id: ConnId(1),
            peer: addr,
            local: addr,
            max_data_len: framing.max_data_len(),
            send_queue: 4,
            send_queue_bytes: usize::MAX,
            send_queue_full: SendQueueFull::Wait,
            encoder: Encoder::new(&framing),
            manager: no_owner(),
            jobs: 0,
            tracker: None,
            observer: Observer::default(),
        });
        let err = conn.try_send(300, "x").unwrap_err();
        assert!(matches!(err, Error::BadFrame { .. }), "{err}");
        let err = conn.send(300, "x").await.unwrap_err();
        assert!(matches!(err, Error::BadFrame { .. }), "{err}");
        conn.send(3, "ok").await.unwrap();
        assert_eq!(
            conn.send_queue().len(),
            1,
            "only the good message was queued"
        );
        assert!(!conn.is_closed());
    }

    #[tokio::test(start_paused = true)]
    async fn a_full_queue_waits_fails_or_closes_as_configured() {
        // wait: send waits until there is room, try_send fails fast.
        let (conn, mut rx) = test_conn_with(1, SendQueueFull::Wait);
        conn.send(1, "a").await.unwrap();
        assert!(conn.try_send(1, "b").unwrap_err().is_queue_full());
        let waiting = conn.send(1, "c");
        tokio::pin!(waiting);
        assert!(futures_util::poll!(waiting.as_mut()).is_pending());
        assert_eq!(&rx.recv().await.unwrap().data[..], b"a");
        waiting.await.unwrap();
        assert!(!conn.is_closed());

        // fail: both fail at once; the connection stays open.
        let (conn, _rx) = test_conn_with(1, SendQueueFull::Fail);
        conn.send(1, "a").await.unwrap();
        assert!(conn.send(1, "b").await.unwrap_err().is_queue_full());
        assert!(conn.try_send(1, "b").unwrap_err().is_queue_full());
        assert!(!conn.is_closed());

        // close: the slow peer is closed, and what was queued stays queued.
        for use_try in [false, true] {
            let (conn, mut rx) = test_conn_with(1, SendQueueFull::Close);
            conn.send(1, "a").await.unwrap();
            let err = if use_try {
                conn.try_send(1, "b").unwrap_err()
            } else {
                conn.send(1, "b").await.unwrap_err()
            };
            assert!(err.is_closed(), "{err}");
            assert!(conn.is_closed());
            assert_eq!(&rx.recv().await.unwrap().data[..], b"a");
        }
    }

    /// A connection whose queue holds 100 messages but only 1,000 bytes.
    fn byte_bound_conn(policy: SendQueueFull) -> (Connection, Outbox) {
        Connection::detached_with(Detached {
            id: ConnId(8),
            queue: 100,
            queue_bytes: 1000,
            send_queue_full: policy,
            max_data_len: None,
            manager: no_owner(),
        })
    }

    #[tokio::test(start_paused = true)]
    async fn the_byte_bound_fills_the_queue_before_the_message_count_does() {
        let data = [1u8; 392]; // 392 data bytes (400 B frames)
        // fail: the third frame still fits (800 B < 1,000), the fourth does not;
        // room comes back once the writer took what was queued.
        let (conn, mut rx) = byte_bound_conn(SendQueueFull::Fail);
        for _ in 0..3 {
            conn.try_send(1, &data).unwrap();
        }
        assert!(conn.try_send(1, &data).unwrap_err().is_queue_full());
        assert!(conn.send(1, "tiny").await.unwrap_err().is_queue_full());
        for _ in 0..3 {
            rx.recv().await.unwrap();
        }
        conn.try_send(1, &data).unwrap();

        // A frame longer than the whole bound still goes into an emptier queue.
        let (conn, mut rx) = byte_bound_conn(SendQueueFull::Fail);
        conn.try_send(1, vec![2u8; 5000]).unwrap();
        assert!(conn.try_send(1, "x").unwrap_err().is_queue_full());
        assert_eq!(rx.recv().await.unwrap().data.len(), 5000);

        // wait: the send waits for the writer to take the bytes.
        let (conn, mut rx) = byte_bound_conn(SendQueueFull::Wait);
        for _ in 0..3 {
            conn.send(1, &data).await.unwrap();
        }
        let waiting = conn.send(1, &data);
        tokio::pin!(waiting);
        assert!(futures_util::poll!(waiting.as_mut()).is_pending());
        rx.recv().await.unwrap();
        waiting.await.unwrap();

        // close: the slow peer is closed.
        let (conn, _rx) = byte_bound_conn(SendQueueFull::Close);
        for _ in 0..3 {
            conn.try_send(1, &data).unwrap();
        }
        assert!(conn.try_send(1, &data).unwrap_err().is_closed());
        assert!(conn.is_closed());
    }

    #[tokio::test]
    async fn send_and_try_send_keep_order() {
        let (conn, mut rx) = test_conn(8);
        conn.send(1, "a").await.unwrap();
        conn.try_send(2, "b").unwrap();
        conn.send(3, "c").await.unwrap();
        let got: Vec<u32> = [
            rx.recv().await.unwrap(),
            rx.recv().await.unwrap(),
            rx.recv().await.unwrap(),
        ]
        .iter()
        .map(|m| m.id.0)
        .collect();
        assert_eq!(got, [1, 2, 3]);
    }

    #[tokio::test]
    async fn try_send_on_full_queue_is_queue_full() {
        let (conn, _rx) = test_conn(2);
        conn.try_send(1, "a").unwrap();
        conn.try_send(1, "b").unwrap();
        assert!(conn.try_send(1, "c").unwrap_err().is_queue_full());
    }

    #[tokio::test]
    async fn send_waits_for_room_then_succeeds() {
        let (conn, mut rx) = test_conn(1);
        conn.try_send(1, "first").unwrap();
        let sender = conn.clone();
        let pending = tokio::spawn(async move { sender.send(2, "second").await });
        tokio::task::yield_now().await;
        assert!(!pending.is_finished());
        assert_eq!(rx.recv().await.unwrap().id.0, 1);
        pending.await.unwrap().unwrap();
        assert_eq!(rx.recv().await.unwrap().id.0, 2);
    }

    #[tokio::test]
    async fn close_wakes_a_waiting_send_with_closed() {
        let (conn, _rx) = test_conn(1);
        conn.try_send(1, "fill").unwrap();
        let sender = conn.clone();
        let pending = tokio::spawn(async move { sender.send(2, "blocked").await });
        tokio::task::yield_now().await;
        conn.close();
        assert!(pending.await.unwrap().unwrap_err().is_closed());
    }

    #[tokio::test]
    async fn send_after_close_is_an_error() {
        let (conn, _rx) = test_conn(4);
        conn.close();
        conn.close();
        assert!(conn.is_closed());
        assert!(conn.send(1, "x").await.unwrap_err().is_closed());
        assert!(conn.try_send(1, "x").unwrap_err().is_closed());
    }

    #[tokio::test]
    async fn send_after_writer_gone_is_an_error() {
        let (conn, rx) = test_conn(4);
        drop(rx);
        assert!(conn.send(1, "x").await.unwrap_err().is_closed());
        assert!(conn.try_send(1, "x").unwrap_err().is_closed());
    }

    #[tokio::test]
    async fn oversized_send_is_rejected_before_queueing() {
        let (conn, mut rx) = test_conn(4);
        let err = conn.try_send(1, vec![0u8; 17]).unwrap_err();
        assert!(matches!(err, Error::FrameTooLarge { len: 17, max: 16 }));
        conn.try_send(1, vec![0u8; 16]).unwrap();
        assert_eq!(rx.recv().await.unwrap().data.len(), 16);
    }

    #[tokio::test]
    async fn every_kind_of_payload_arrives_intact() {
        let (conn, mut rx) = test_conn(32);
        let bytes = Bytes::from_static(b"bytes");
        let vec = b"vec".to_vec();
        let string = String::from("string");
        let bytes_mut = BytesMut::from(&b"bytes_mut"[..]);
        conn.try_send(1, &bytes).unwrap();
        conn.try_send(1, &vec).unwrap();
        conn.try_send(1, &string).unwrap();
        conn.try_send(1, &bytes_mut).unwrap();
        conn.try_send(1, &b"array"[..]).unwrap();
        conn.try_send(1, b"array").unwrap();
        conn.try_send(1, "str").unwrap();
        conn.send(1, &bytes).await.unwrap();
        conn.send(1, string.as_str()).await.unwrap();
        conn.send(1, bytes.clone()).await.unwrap();
        conn.send(1, vec.clone()).await.unwrap();
        conn.send(1, string.clone()).await.unwrap();
        conn.send(1, bytes_mut.clone()).await.unwrap();
        conn.send(1, vec.into_boxed_slice()).await.unwrap();
        let expected: [&[u8]; 14] = [
            b"bytes",
            b"vec",
            b"string",
            b"bytes_mut",
            b"array",
            b"array",
            b"str",
            b"bytes",
            b"string",
            b"bytes",
            b"vec",
            b"string",
            b"bytes_mut",
            b"vec",
        ];
        for want in expected {
            assert_eq!(&rx.recv().await.unwrap().data[..], want);
        }
        assert!(rx.try_recv().is_err());
    }

    #[tokio::test(start_paused = true)]
    async fn a_borrowed_payload_that_waits_for_room_is_sent_intact() {
        let (conn, mut rx) = test_conn(1);
        conn.try_send(1, "first").unwrap();
        let data = vec![9u8, 8, 7];
        {
            let waiting = conn.send(2, &data[..]);
            tokio::pin!(waiting);
            assert!(futures_util::poll!(waiting.as_mut()).is_pending());
            assert_eq!(&rx.recv().await.unwrap().data[..], b"first");
            waiting.await.unwrap();
        }
        assert_eq!(rx.recv().await.unwrap(), Message::new(2, data));
        // Refused at once under the other policies, and checked for length.
        assert!(
            conn.try_send(3, &[1u8; 17])
                .unwrap_err()
                .to_string()
                .contains("17")
        );
    }

    #[derive(Clone, Debug, PartialEq)]
    struct Name(String);

    #[test]
    fn typed_properties() {
        let (conn, _rx) = test_conn(1);
        assert_eq!(conn.property::<Name>(), None);
        assert_eq!(conn.insert_property(Name("a".into())), None);
        assert_eq!(conn.insert_property(7u32), None);
        assert_eq!(
            conn.insert_property(Name("b".into())),
            Some(Name("a".into()))
        );
        assert_eq!(conn.property::<Name>(), Some(Name("b".into())));
        assert_eq!(conn.property::<u32>(), Some(7));
        assert_eq!(conn.remove_property::<Name>(), Some(Name("b".into())));
        assert_eq!(conn.property::<Name>(), None);
    }

    #[test]
    fn close_callbacks_run_once_and_late_ones_run_at_once() {
        use std::sync::atomic::AtomicUsize;
        let (conn, _rx) = test_conn(1);
        let count = Arc::new(AtomicUsize::new(0));
        let c = count.clone();
        conn.add_close_callback(move || {
            c.fetch_add(1, Ordering::SeqCst);
        });
        conn.add_close_callback(|| panic!("a panicking callback harms no other"));
        let c = count.clone();
        conn.add_close_callback(move || {
            c.fetch_add(10, Ordering::SeqCst);
        });
        conn.run_close_callbacks();
        conn.run_close_callbacks();
        assert_eq!(count.load(Ordering::SeqCst), 11);
        let c = count.clone();
        conn.add_close_callback(move || {
            c.fetch_add(100, Ordering::SeqCst);
        });
        assert_eq!(count.load(Ordering::SeqCst), 111);
    }
}
