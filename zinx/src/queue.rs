//! A bounded multi-producer, single-consumer queue that allocates nothing until
//! the first item and keeps only a little storage once drained.
//!
//! It carries a connection's outgoing frames (handlers → writer) and its async
//! op results (→ the connection's lane). `tokio::sync::mpsc` allocates a block of
//! slots when the channel is created, which for thousands of idle connections is
//! most of their memory; this queue is a [`Store`] behind a short
//! `std::sync::Mutex`, an `AtomicWaker` for the consumer and a `Notify` for
//! producers waiting for room. The consumer takes what it wants with one lock:
//! the writer takes every queued frame at once.

use std::collections::VecDeque;
use std::convert::Infallible;
use std::sync::atomic::Ordering;
use std::task::{Context, Poll};

use tokio::sync::Notify;

use self::sync::{AtomicBool, AtomicWaker, Mutex, MutexGuard, fence};

/// What the consumer's wake-up is built on, so the model tests (`loom_tests`)
/// run the code that ships on loom's checked mutex, atomics and fences. The
/// producers' `Notify` stays tokio's: waiting for room is not modelled.
#[cfg(not(all(test, zinx_loom)))]
mod sync {
    pub(super) use futures_util::task::AtomicWaker;
    pub(super) use std::sync::atomic::{AtomicBool, fence};
    pub(super) use std::sync::{Mutex, MutexGuard};
}

#[cfg(all(test, zinx_loom))]
mod sync {
    pub(super) use loom::sync::atomic::{AtomicBool, fence};
    pub(super) use loom::sync::{Mutex, MutexGuard};

    /// loom's `AtomicWaker` registers an owned waker; futures-util's borrows it.
    pub(super) struct AtomicWaker(loom::future::AtomicWaker);

    impl AtomicWaker {
        pub(super) fn new() -> Self {
            AtomicWaker(loom::future::AtomicWaker::new())
        }

        pub(super) fn register(&self, waker: &std::task::Waker) {
            self.0.register_by_ref(waker);
        }

        pub(super) fn wake(&self) {
            self.0.wake();
        }
    }
}

/// What a [`Queue`] holds its items in.
pub(crate) trait Store {
    /// Why [`put`](Put::put) can refuse an item.
    type Rejected;
    /// Items held: what the queue's capacity bounds.
    fn count(&self) -> usize;
    /// Bytes held: what the queue's byte bound bounds (0 for a store that does
    /// not count bytes).
    fn bytes(&self) -> usize {
        0
    }
    /// The consumer emptied the store: give back what a burst grew.
    fn trim(&mut self) {}
}

/// A [`Store`] that takes items of type `I` (a store may take several kinds,
/// as a connection's send queue takes owned messages and borrowed payloads,
/// which it copies).
pub(crate) trait Put<I>: Store {
    /// Adds an item (the queue checked for room).
    fn put(&mut self, item: I) -> Result<(), Self::Rejected>;
}

/// Slots an emptied `VecDeque` keeps (more are given back), so a connection that
/// gets one item at a time does not allocate and free the storage every time.
const KEEP_WHEN_EMPTY: usize = 16;

impl<T> Store for VecDeque<T> {
    type Rejected = Infallible;

    fn count(&self) -> usize {
        self.len()
    }

    fn trim(&mut self) {
        if self.capacity() > KEEP_WHEN_EMPTY {
            *self = VecDeque::new();
        }
    }
}

/// Why an item was not queued; the item comes back when it was not taken.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum PushError<T, R = Infallible> {
    /// The queue holds its capacity.
    Full(T),
    /// The consumer closed the queue.
    Closed(T),
    /// The store refused the item.
    Rejected(R),
}

impl<T, R> PushError<T, R> {
    /// The same refusal with the item (if it came back) turned into another.
    pub(crate) fn map<U>(self, f: impl FnOnce(T) -> U) -> PushError<U, R> {
        match self {
            PushError::Full(item) => PushError::Full(f(item)),
            PushError::Closed(item) => PushError::Closed(f(item)),
            PushError::Rejected(r) => PushError::Rejected(r),
        }
    }
}

/// `repr(C)`: the fields a push and a take touch first, the `Notify` (only for
/// waits for room) last, so they share as few cache lines as they can.
#[repr(C)]
pub(crate) struct Queue<S> {
    state: Mutex<State<S>>,
    /// The single consumer's waker: woken when an item arrives in an empty
    /// queue, or on close. Cheaper than a `Notify` on the per-message path.
    readable: AtomicWaker,
    capacity: usize,
    /// The byte bound (`usize::MAX`: none): full once the store holds this many.
    max_bytes: usize,
    /// Mirrors "items queued or closed", so the consumer checks without the lock.
    ready: AtomicBool,
    /// Set while the consumer's task is being polled and will check the queue
    /// before it waits again (see [`quiet`](Self::quiet)): a push then does not
    /// wake it.
    quiet: AtomicBool,
    /// While set, a push that finds the queue full goes in anyway, up to twice
    /// the capacity (see [`allow_overflow`](Self::allow_overflow)).
    overflow: AtomicBool,
    /// Set when a push went past the capacity; cleared by
    /// [`take_overflowed`](Self::take_overflowed).
    overflowed: AtomicBool,
    /// Wakes producers waiting for room, after a drain of a full queue, or on close.
    writable: Notify,
}

struct State<S> {
    store: S,
    closed: bool,
}

impl<T> Put<T> for VecDeque<T> {
    fn put(&mut self, item: T) -> Result<(), Infallible> {
        self.push_back(item);
        Ok(())
    }
}

impl<T> Queue<VecDeque<T>> {
    pub(crate) fn new(capacity: usize) -> Self {
        Queue::with_store(VecDeque::new(), capacity)
    }

    /// Takes the oldest item; without the lock when nothing is queued.
    pub(crate) fn pop(&self) -> Option<T> {
        if !self.ready.load(Ordering::Acquire) {
            return None;
        }
        self.take(VecDeque::pop_front)
    }
}

impl<S: Store> Queue<S> {
    pub(crate) fn with_store(store: S, capacity: usize) -> Self {
        Queue::with_limits(store, capacity, usize::MAX)
    }

    /// A queue full at `capacity` items or `max_bytes` bytes, whichever comes
    /// first (an item always goes into a queue below both, however large).
    pub(crate) fn with_limits(store: S, capacity: usize, max_bytes: usize) -> Self {
        Queue {
            state: Mutex::new(State {
                store,
                closed: false,
            }),
            readable: AtomicWaker::new(),
            ready: AtomicBool::new(false),
            quiet: AtomicBool::new(false),
            overflow: AtomicBool::new(false),
            overflowed: AtomicBool::new(false),
            writable: Notify::new(),
            capacity: capacity.max(1),
            max_bytes: max_bytes.max(1),
        }
    }

    /// True when `store` holds `times` the capacity or byte bound (or more).
    #[inline]
    fn full(&self, store: &S, times: usize) -> bool {
        store.count() >= times * self.capacity
            || store.bytes() >= self.max_bytes.saturating_mul(times)
    }

    #[cfg(not(all(test, zinx_loom)))]
    fn lock(&self) -> MutexGuard<'_, State<S>> {
        // Every critical section is a single push, take or flag change.
        crate::util::lock(&self.state)
    }

    /// `util::lock` takes std's mutex; this is the same for loom's.
    #[cfg(all(test, zinx_loom))]
    fn lock(&self) -> MutexGuard<'_, State<S>> {
        self.state
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Queues `item` if there is room.
    #[inline]
    pub(crate) fn try_push<I>(&self, item: I) -> Result<(), PushError<I, S::Rejected>>
    where
        S: Put<I>,
    {
        let mut state = self.lock();
        if state.closed {
            return Err(PushError::Closed(item));
        }
        let count = state.store.count();
        if count >= self.capacity || state.store.bytes() >= self.max_bytes {
            if !self.overflow.load(Ordering::Relaxed) || self.full(&state.store, 2) {
                return Err(PushError::Full(item));
            }
            self.overflowed.store(true, Ordering::Relaxed);
        }
        state.store.put(item).map_err(PushError::Rejected)?;
        let first = count == 0;
        if first {
            self.ready.store(true, Ordering::Release);
        }
        drop(state);
        if first {
            // Pairs with the fence in `quiet(false)`: either the consumer's check
            // after it sees this item, or this sees that it is no longer quiet.
            fence(Ordering::SeqCst);
            if !self.quiet.load(Ordering::Relaxed) {
                self.readable.wake();
            }
        }
        Ok(())
    }

    /// Queues `item`, waiting for room; never fails with `Full`.
    ///
    /// Cancel-safe: if dropped while waiting, nothing was queued.
    pub(crate) async fn push<I>(&self, mut item: I) -> Result<(), PushError<I, S::Rejected>>
    where
        S: Put<I>,
    {
        loop {
            match self.try_push(item) {
                // `room` checks again under the lock after registering, so a drain
                // between the refusal and the wait is not missed.
                Err(PushError::Full(back)) => item = back,
                done => return done,
            }
            self.room().await;
        }
    }

    /// Runs `take` on the store under the lock (the consumer takes what it
    /// wants), then does the bookkeeping every consumer needs: clear the ready
    /// flag and trim the store once empty, wake producers that were waiting for
    /// room.
    pub(crate) fn take<R>(&self, take: impl FnOnce(&mut S) -> R) -> R {
        let mut state = self.lock();
        let was_full = self.full(&state.store, 1);
        let taken = take(&mut state.store);
        let after = state.store.count();
        let now_full = self.full(&state.store, 1);
        if after == 0 {
            if !state.closed {
                self.ready.store(false, Ordering::Release);
            }
            state.store.trim();
        }
        drop(state);
        if was_full && !now_full {
            self.writable.notify_waiters();
        }
        taken
    }

    /// Lets pushes go past the capacity (up to twice it) while `on`: for a
    /// producer that cannot wait and will wait for [`room`](Self::room)
    /// afterwards instead.
    #[inline]
    pub(crate) fn allow_overflow(&self, on: bool) {
        self.overflow.store(on, Ordering::Relaxed);
    }

    /// True if a push went past the capacity since the last
    /// [`take_overflowed`](Self::take_overflowed).
    #[inline]
    pub(crate) fn overflowed(&self) -> bool {
        self.overflowed.load(Ordering::Relaxed)
    }

    /// True if a push went past the capacity since the last call.
    #[inline]
    pub(crate) fn take_overflowed(&self) -> bool {
        self.overflowed.load(Ordering::Relaxed) && self.overflowed.swap(false, Ordering::Relaxed)
    }

    /// Completes when the queue has room for an item, or is closed.
    ///
    /// Cancel-safe: waiting takes nothing.
    pub(crate) async fn room(&self) {
        loop {
            let room = self.writable.notified();
            tokio::pin!(room);
            // Registered before the check, so a drain in between still wakes us.
            room.as_mut().enable();
            {
                let state = self.lock();
                if state.closed || !self.full(&state.store, 1) {
                    return;
                }
            }
            room.await;
        }
    }

    /// Completes when an item is queued or the queue is closed. For the single
    /// consumer only.
    ///
    /// Cancel-safe: waiting consumes nothing.
    pub(crate) async fn readable(&self) {
        std::future::poll_fn(|cx| self.poll_readable(cx)).await;
    }

    /// Ready when an item is queued or the queue is closed; otherwise the
    /// consumer is woken when that happens. For the single consumer only.
    pub(crate) fn poll_readable(&self, cx: &Context<'_>) -> Poll<()> {
        if self.ready.load(Ordering::Acquire) {
            return Poll::Ready(());
        }
        // Registered before the second check, so a push in between wakes us.
        self.readable.register(cx.waker());
        if self.ready.load(Ordering::Acquire) {
            Poll::Ready(())
        } else {
            Poll::Pending
        }
    }

    /// For a consumer that shares its task with producers: while `on`, pushes do
    /// not wake the consumer, which must check the queue (with
    /// [`poll_readable`](Self::poll_readable)) after turning it off. Saves the
    /// task waking itself, and being polled again, for what it queued itself.
    #[inline]
    pub(crate) fn quiet(&self, on: bool) {
        self.quiet.store(on, Ordering::Relaxed);
        if !on {
            // Pairs with the fence in `try_push`.
            fence(Ordering::SeqCst);
        }
    }

    /// Refuses further items; waiting producers get their item back.
    pub(crate) fn close(&self) {
        self.lock().closed = true;
        self.ready.store(true, Ordering::Release);
        self.writable.notify_waiters();
        self.readable.wake();
    }

    /// Items queued.
    #[cfg(any(test, feature = "metrics"))]
    pub(crate) fn len(&self) -> usize {
        self.lock().store.count()
    }

    pub(crate) fn is_closed(&self) -> bool {
        self.lock().closed
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;
    use std::sync::atomic::AtomicUsize;
    use std::task::{Wake, Waker};
    use std::time::{Duration, Instant};

    use super::*;

    struct CountWakes(AtomicUsize);

    impl Wake for CountWakes {
        fn wake(self: Arc<Self>) {
            self.0.fetch_add(1, Ordering::SeqCst);
        }
    }

    #[test]
    fn a_quiet_queue_does_not_wake_its_consumer_which_checks_after() {
        let q = Queue::new(4);
        let wakes = Arc::new(CountWakes(AtomicUsize::new(0)));
        let waker = Waker::from(wakes.clone());
        let cx = Context::from_waker(&waker);
        assert!(q.poll_readable(&cx).is_pending());
        q.quiet(true);
        q.try_push(1).unwrap();
        assert_eq!(wakes.0.load(Ordering::SeqCst), 0, "no wake while quiet");
        q.quiet(false);
        assert!(q.poll_readable(&cx).is_ready(), "the check after sees it");
        assert_eq!(q.pop(), Some(1));
        // Not quiet: a push wakes the registered consumer.
        assert!(q.poll_readable(&cx).is_pending());
        q.try_push(2).unwrap();
        assert_eq!(wakes.0.load(Ordering::SeqCst), 1);
    }

    struct Unpark(std::thread::Thread);

    impl Wake for Unpark {
        fn wake(self: Arc<Self>) {
            self.0.unpark();
        }
    }

    /// A consumer that turns quiet on and off, as the connection's task does
    /// around its reader, while another thread pushes: every item is taken, and
    /// whenever the consumer waits, a push wakes it (a lost wake-up would leave
    /// items queued and the consumer asleep).
    #[test]
    fn no_push_is_missed_while_the_consumer_turns_quiet_on_and_off() {
        const ITEMS: usize = 20_000;
        let q = Arc::new(Queue::new(ITEMS));
        let producer = {
            let q = q.clone();
            std::thread::spawn(move || {
                for i in 0..ITEMS {
                    q.try_push(i).unwrap();
                    if i % 64 == 0 {
                        std::thread::yield_now();
                    }
                }
            })
        };
        let waker = Waker::from(Arc::new(Unpark(std::thread::current())));
        let cx = Context::from_waker(&waker);
        let mut taken = 0;
        while taken < ITEMS {
            q.quiet(true);
            std::hint::spin_loop();
            q.quiet(false);
            if q.poll_readable(&cx).is_ready() {
                taken += q.take(|items| {
                    let n = items.len();
                    items.clear();
                    n
                });
                continue;
            }
            let asleep = Instant::now();
            std::thread::park_timeout(Duration::from_secs(10));
            assert!(
                asleep.elapsed() < Duration::from_secs(10),
                "the consumer slept through a push ({taken} of {ITEMS} taken)"
            );
        }
        producer.join().unwrap();
        assert_eq!(taken, ITEMS);
    }

    #[test]
    fn bounded_fifo_with_items_back_on_full_and_closed() {
        let q = Queue::new(2);
        q.try_push(1).unwrap();
        q.try_push(2).unwrap();
        assert_eq!(q.try_push(3), Err(PushError::Full(3)));
        let out: Vec<_> = q.take(|items| items.drain(..).collect());
        assert_eq!(out, [1, 2]);
        assert_eq!(q.len(), 0);
        q.try_push(4).unwrap();
        q.close();
        assert_eq!(q.try_push(5), Err(PushError::Closed(5)));
        assert_eq!(
            q.pop(),
            Some(4),
            "what was queued before close can be taken"
        );
        assert!(q.is_closed());
    }

    #[tokio::test]
    async fn a_waiting_producer_gets_room_after_a_drain() {
        let q = Arc::new(Queue::new(1));
        q.try_push(1).unwrap();
        let producer = {
            let q = q.clone();
            tokio::spawn(async move { q.push(2).await })
        };
        tokio::task::yield_now().await;
        assert!(!producer.is_finished());
        assert_eq!(q.pop(), Some(1));
        producer.await.unwrap().unwrap();
        assert_eq!(q.pop(), Some(2));
    }

    #[tokio::test]
    async fn room_is_awaited_while_full_and_ends_with_a_take_or_the_close() {
        use futures_util::FutureExt;
        let q = Queue::new(2);
        q.try_push(1).unwrap();
        q.room().now_or_never().expect("room for one more");
        q.try_push(2).unwrap();
        let mut room = Box::pin(q.room());
        assert!((&mut room).now_or_never().is_none(), "full: waits");
        assert_eq!(q.pop(), Some(1));
        room.now_or_never().expect("the take made room");
        q.try_push(3).unwrap();
        let mut room = Box::pin(q.room());
        assert!((&mut room).now_or_never().is_none());
        q.close();
        room.now_or_never().expect("the close ends the wait");
    }

    #[tokio::test]
    async fn an_allowed_overflow_goes_to_twice_the_capacity_and_is_reported() {
        use futures_util::FutureExt;
        let q = Queue::new(2);
        q.try_push(1).unwrap();
        q.try_push(2).unwrap();
        assert_eq!(q.try_push(3), Err(PushError::Full(3)));
        assert!(!q.take_overflowed());
        q.allow_overflow(true);
        q.try_push(3).unwrap();
        q.try_push(4).unwrap();
        assert_eq!(q.try_push(5), Err(PushError::Full(5)), "twice the capacity");
        q.allow_overflow(false);
        assert!(q.take_overflowed());
        assert!(!q.take_overflowed(), "reported once");
        let mut room = Box::pin(q.room());
        assert_eq!(q.pop(), Some(1));
        assert!(
            (&mut room).now_or_never().is_none(),
            "three of two: still no room"
        );
        let room = Box::pin(q.room());
        assert_eq!(q.pop(), Some(2));
        assert_eq!(q.pop(), Some(3));
        room.now_or_never().expect("below the capacity again");
    }

    #[tokio::test]
    async fn close_returns_the_item_to_a_waiting_producer() {
        let q = Arc::new(Queue::new(1));
        q.try_push(1).unwrap();
        let producer = {
            let q = q.clone();
            tokio::spawn(async move { q.push(2).await })
        };
        tokio::task::yield_now().await;
        q.close();
        assert_eq!(producer.await.unwrap(), Err(PushError::Closed(2)));
    }

    #[tokio::test]
    async fn the_consumer_is_woken_by_a_push_that_races_its_wait() {
        let q = Arc::new(Queue::<VecDeque<u32>>::new(4));
        for i in 0..100 {
            let consumer = {
                let q = q.clone();
                tokio::spawn(async move {
                    q.readable().await;
                    q.pop()
                })
            };
            if i % 2 == 0 {
                tokio::task::yield_now().await;
            }
            q.try_push(i).unwrap();
            assert_eq!(consumer.await.unwrap(), Some(i));
        }
    }
}

/// Model tests of the consumer's wake-up: loom runs each model in every
/// interleaving of its threads, with every value each load may read under the
/// memory model, on the queue's own code. `.ci/run` runs them:
/// `RUSTFLAGS="--cfg zinx_loom" cargo test -p zinx --lib --release queue::loom_tests`.
#[cfg(all(test, zinx_loom))]
mod loom_tests {
    #![allow(clippy::unwrap_used)]

    use std::task::{Wake, Waker};

    use loom::sync::Arc;
    use loom::sync::atomic::AtomicUsize;
    use loom::thread;

    use super::*;

    /// A task's waker that counts its wakes.
    struct CountWakes(AtomicUsize);

    impl CountWakes {
        /// The wakes since the last call: a read-modify-write, so it reads the
        /// latest count, never a stale one.
        fn since_last(&self) -> usize {
            self.0.swap(0, Ordering::AcqRel)
        }
    }

    impl Wake for CountWakes {
        fn wake(self: std::sync::Arc<Self>) {
            self.wake_by_ref();
        }

        fn wake_by_ref(self: &std::sync::Arc<Self>) {
            self.0.fetch_add(1, Ordering::AcqRel);
        }
    }

    fn take_all(q: &Queue<VecDeque<u32>>) -> usize {
        q.take(|items| {
            let n = items.len();
            items.clear();
            n
        })
    }

    /// One poll of the connection's task: the reader runs with the queue quiet
    /// (`WithWriter`), then the writer checks the queue (`poll_writer`) and
    /// takes what it sees. Whether the check saw the queue readable, and the
    /// items taken.
    fn poll_task(q: &Queue<VecDeque<u32>>, cx: &Context<'_>) -> (bool, usize) {
        q.quiet(true);
        q.quiet(false);
        if q.poll_readable(cx).is_ready() {
            (true, take_all(q))
        } else {
            (false, 0)
        }
    }

    /// A push (and, with `close`, the close) racing a poll of the consumer's
    /// task, which registered its waker in an earlier poll: the poll's check
    /// sees the queue readable, or the task was woken (and is polled again).
    /// A lost wake-up would leave the item queued and the task asleep.
    fn push_racing_a_quiet_poll(close: bool) {
        loom::model(move || {
            let q = Arc::new(Queue::new(4));
            let wakes = std::sync::Arc::new(CountWakes(AtomicUsize::new(0)));
            let waker = Waker::from(wakes.clone());
            let cx = Context::from_waker(&waker);
            assert!(q.poll_readable(&cx).is_pending());
            let producer = {
                let q = q.clone();
                // Refused only after the close.
                thread::spawn(move || {
                    let _ = q.try_push(1);
                })
            };
            let closer = close.then(|| {
                let q = q.clone();
                thread::spawn(move || q.close())
            });
            let (seen, _) = poll_task(&q, &cx);
            producer.join().unwrap();
            if let Some(closer) = closer {
                closer.join().unwrap();
            }
            assert!(
                seen || wakes.since_last() > 0,
                "lost wake-up: the check saw nothing and nobody woke the task"
            );
        });
    }

    #[test]
    fn a_push_racing_a_quiet_poll_is_seen_by_its_check_or_wakes_the_task() {
        push_racing_a_quiet_poll(false);
    }

    #[test]
    fn a_push_and_the_close_racing_a_quiet_poll_are_seen_or_wake_the_task() {
        push_racing_a_quiet_poll(true);
    }

    /// Two polls of the task (the first may take the item, and so clear the
    /// ready flag) racing a push: the item is taken, or the task was woken
    /// after its last poll began.
    #[test]
    fn a_push_racing_two_polls_is_taken_or_wakes_the_task_after_the_last() {
        loom::model(|| {
            let q = Arc::new(Queue::new(4));
            let wakes = std::sync::Arc::new(CountWakes(AtomicUsize::new(0)));
            let waker = Waker::from(wakes.clone());
            let cx = Context::from_waker(&waker);
            assert!(q.poll_readable(&cx).is_pending());
            let producer = {
                let q = q.clone();
                thread::spawn(move || q.try_push(1).unwrap())
            };
            let (_, first) = poll_task(&q, &cx);
            // A wake before the last poll only asked for that poll.
            wakes.since_last();
            let (_, second) = poll_task(&q, &cx);
            producer.join().unwrap();
            assert!(
                first + second == 1 || wakes.since_last() > 0,
                "lost wake-up: the item is queued and nobody woke the task"
            );
        });
    }

    /// A consumer that waits (`readable().await`: poll, sleep until woken,
    /// poll again) while a push and the close race its registration: every
    /// `Pending` is followed by a wake (loom fails the model as a deadlock if
    /// the consumer sleeps for ever), and once readable it holds the item
    /// exactly when the push got in before the close.
    #[test]
    fn a_waiting_consumer_is_woken_by_a_racing_push_and_close_and_sees_them() {
        loom::model(|| {
            let q = Arc::new(Queue::new(4));
            let producer = {
                let q = q.clone();
                thread::spawn(move || q.try_push(1).is_ok())
            };
            let closer = {
                let q = q.clone();
                thread::spawn(move || q.close())
            };
            loom::future::block_on(q.readable());
            let item = q.pop();
            let pushed = producer.join().unwrap();
            closer.join().unwrap();
            assert_eq!(item.is_some(), pushed, "the pushed item, or none");
            assert!(q.is_closed());
        });
    }

    /// Two producers racing a take, in a queue of one item (so a push can be
    /// refused, and a take can find the queue full): every item
    /// pushed is taken or still queued, and the ready flag says whether any
    /// is; a take that empties the queue leaves it clear.
    #[test]
    fn pushes_racing_a_take_keep_the_count_and_the_ready_flag_in_step() {
        loom::model(|| {
            let q = Arc::new(Queue::new(1));
            let producers: Vec<_> = (0..2)
                .map(|i| {
                    let q = q.clone();
                    thread::spawn(move || q.try_push(i).is_ok())
                })
                .collect();
            let taken = take_all(&q);
            let pushed = producers
                .into_iter()
                .map(|p| usize::from(p.join().unwrap()))
                .sum::<usize>();
            let left = q.len();
            assert_eq!(taken + left, pushed, "an item lost or made up");
            assert_eq!(q.ready.load(Ordering::Acquire), left > 0);
            assert_eq!(take_all(&q), left);
            assert!(
                !q.ready.load(Ordering::Acquire),
                "empty, not closed: not ready"
            );
            q.close();
            assert!(q.ready.load(Ordering::Acquire), "closed: ready");
        });
    }
}
