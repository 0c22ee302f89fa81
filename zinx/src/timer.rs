//! Timers: run a function after a delay, periodically, or at an instant, and
//! cancel it by handle (Zinx's `ztimer`).
//!
//! All timers of a [`Timers`] live in one `tokio_util::time::DelayQueue` (a
//! hierarchical timing wheel) driven by one task, so a pending timer costs a
//! queue slot and its boxed callback rather than a task: a million pending timers
//! take about 170 bytes each, where a sleeping task per timer takes about 460
//! (measured with `cargo run --release --example timers -- --million wheel|tasks`;
//! see docs/ARCHITECTURE.md). Callbacks run on the timer task, outside any lock, in
//! deadline order: keep them short and `tokio::spawn` longer work. Resolution is
//! one millisecond.

use std::collections::HashMap;
use std::fmt;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, Weak};
use std::task::Poll;
use std::time::Duration;

use tokio::sync::Notify;
use tokio::time::Instant;
use tokio_util::sync::{CancellationToken, DropGuard};
use tokio_util::time::DelayQueue;
use tokio_util::time::delay_queue::Key;

/// Most expired timers taken in one batch, so the lock is never held long.
const BATCH: usize = 1024;

type Callback = Box<dyn FnMut() + Send>;

struct Entry {
    id: u64,
    callback: Callback,
    period: Option<Duration>,
}

enum Slot {
    /// Waiting in the queue under this key.
    Queued(Key),
    /// Its callback is running right now.
    Running,
    /// Cancelled while running: do not re-arm.
    Cancelled,
}

#[derive(Default)]
struct State {
    queue: DelayQueue<Entry>,
    slots: HashMap<u64, Slot>,
}

struct Shared {
    state: Mutex<State>,
    /// Wakes the driver when a timer is added to an empty queue.
    added: Notify,
    next_id: AtomicU64,
}

impl Shared {
    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        crate::util::lock(&self.state)
    }
}

/// A set of timers driven by one task. Cloning is cheap; the task stops when the
/// last clone is dropped, and pending timers are discarded.
///
/// # Examples
///
/// ```
/// use std::time::Duration;
/// use zinx::Timers;
///
/// # #[tokio::main(flavor = "current_thread", start_paused = true)]
/// # async fn main() {
/// let timers = Timers::start();
/// let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
/// timers.after(Duration::from_secs(5), move || { let _ = tx.send("fired"); });
/// let tick = timers.every(Duration::from_secs(1), || {});
/// tick.cancel();
/// assert_eq!(rx.recv().await, Some("fired"));
/// # }
/// ```
#[derive(Clone)]
pub struct Timers {
    inner: Arc<Inner>,
}

struct Inner {
    shared: Arc<Shared>,
    _stop: DropGuard,
}

impl fmt::Debug for Timers {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Timers")
            .field("pending", &self.len())
            .finish()
    }
}

/// Cancels one timer.
#[derive(Debug, Clone)]
pub struct TimerHandle {
    id: u64,
    shared: Weak<Shared>,
}

impl fmt::Debug for Shared {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Shared").finish_non_exhaustive()
    }
}

impl TimerHandle {
    /// Cancels the timer: a one-shot that has not fired will not fire, a periodic
    /// one stops (if its callback is running now, that run completes). Returns
    /// false if it had already fired, was cancelled, or its `Timers` is gone.
    pub fn cancel(&self) -> bool {
        let Some(shared) = self.shared.upgrade() else {
            return false;
        };
        let mut state = shared.lock();
        match state.slots.remove(&self.id) {
            Some(Slot::Queued(key)) => {
                state.queue.try_remove(&key);
                true
            }
            Some(Slot::Running) => {
                state.slots.insert(self.id, Slot::Cancelled);
                true
            }
            Some(Slot::Cancelled) => {
                state.slots.insert(self.id, Slot::Cancelled);
                false
            }
            None => false,
        }
    }
}

impl Timers {
    /// Starts the timer task on the current tokio runtime.
    ///
    /// # Panics
    ///
    /// Outside a tokio runtime.
    #[must_use]
    pub fn start() -> Timers {
        let shared = Arc::new(Shared {
            state: Mutex::new(State::default()),
            added: Notify::new(),
            next_id: AtomicU64::new(0),
        });
        let stop = CancellationToken::new();
        tokio::spawn(drive(shared.clone(), stop.clone()));
        Timers {
            inner: Arc::new(Inner {
                shared,
                _stop: stop.drop_guard(),
            }),
        }
    }

    /// Runs `f` once after `delay`.
    pub fn after(&self, delay: Duration, f: impl FnOnce() + Send + 'static) -> TimerHandle {
        self.at(Instant::now() + delay, f)
    }

    /// Runs `f` once at `when` (at once if it is past).
    pub fn at(&self, when: Instant, f: impl FnOnce() + Send + 'static) -> TimerHandle {
        let mut f = Some(f);
        self.insert(
            when,
            Box::new(move || {
                if let Some(f) = f.take() {
                    f();
                }
            }),
            None,
        )
    }

    /// Runs `f` every `period` (at least 1 ms), first after one period, until
    /// cancelled. Runs do not drift: each is scheduled a period after the
    /// previous deadline.
    pub fn every(&self, period: Duration, f: impl FnMut() + Send + 'static) -> TimerHandle {
        let period = period.max(Duration::from_millis(1));
        self.insert(Instant::now() + period, Box::new(f), Some(period))
    }

    /// Number of pending timers.
    #[must_use]
    pub fn len(&self) -> usize {
        self.inner.shared.lock().queue.len()
    }

    /// True when no timer is pending.
    #[must_use]
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    fn insert(&self, when: Instant, callback: Callback, period: Option<Duration>) -> TimerHandle {
        let shared = &self.inner.shared;
        let id = shared.next_id.fetch_add(1, Ordering::Relaxed);
        let was_empty = {
            let mut state = shared.lock();
            let was_empty = state.queue.is_empty();
            let key = state.queue.insert_at(
                Entry {
                    id,
                    callback,
                    period,
                },
                when,
            );
            state.slots.insert(id, Slot::Queued(key));
            was_empty
        };
        if was_empty {
            shared.added.notify_one();
        }
        TimerHandle {
            id,
            shared: Arc::downgrade(shared),
        }
    }
}

/// The timer task: take what has expired, run it outside the lock, re-arm
/// periodic timers.
async fn drive(shared: Arc<Shared>, stop: CancellationToken) {
    let mut batch: Vec<(Entry, Instant)> = Vec::with_capacity(BATCH);
    loop {
        let got = tokio::select! {
            biased;
            () = stop.cancelled() => return,
            // Cancel-safe: expired entries are moved into `batch` only inside the
            // poll that returns Ready.
            got = std::future::poll_fn(|cx| {
                let mut state = shared.lock();
                while batch.len() < BATCH {
                    match state.queue.poll_expired(cx) {
                        Poll::Ready(Some(expired)) => {
                            let deadline = expired.deadline();
                            let entry = expired.into_inner();
                            state.slots.insert(entry.id, Slot::Running);
                            batch.push((entry, deadline));
                        }
                        Poll::Ready(None) => {
                            return Poll::Ready(!batch.is_empty());
                        }
                        Poll::Pending => break,
                    }
                }
                if batch.is_empty() { Poll::Pending } else { Poll::Ready(true) }
            }) => got,
        };
        if !got {
            // Empty queue: sleep until something is added.
            tokio::select! {
                biased;
                () = stop.cancelled() => return,
                // Cancel-safe: Notify keeps a permit for a notify_one with no waiter.
                () = shared.added.notified() => continue,
            }
        }
        for (mut entry, deadline) in batch.drain(..) {
            let run = std::panic::catch_unwind(std::panic::AssertUnwindSafe(&mut entry.callback));
            if let Err(panic) = run {
                tracing::error!(panic = %crate::util::panic_message(&*panic), "timer callback panicked");
            }
            let mut state = shared.lock();
            let id = entry.id;
            // Re-arm a periodic timer unless it was cancelled while running.
            if let (Some(period), Some(Slot::Running)) = (entry.period, state.slots.remove(&id)) {
                let key = state.queue.insert_at(entry, deadline + period);
                state.slots.insert(id, Slot::Queued(key));
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::AtomicUsize;

    use super::*;

    #[tokio::test(start_paused = true)]
    async fn after_at_and_every_fire_on_time() {
        let timers = Timers::start();
        let log = Arc::new(Mutex::new(Vec::new()));
        let start = Instant::now();
        let stamp = |name: &'static str| {
            let log = log.clone();
            move || {
                log.lock()
                    .unwrap()
                    .push((name, start.elapsed().as_millis()));
            }
        };
        timers.after(Duration::from_millis(300), stamp("after 300"));
        timers.at(start + Duration::from_millis(100), stamp("at 100"));
        let tick = timers.every(Duration::from_millis(250), stamp("every 250"));
        tokio::time::sleep(Duration::from_millis(1010)).await;
        tick.cancel();
        tokio::time::sleep(Duration::from_millis(1000)).await;
        assert_eq!(
            *log.lock().unwrap(),
            [
                ("at 100", 100),
                ("every 250", 250),
                ("after 300", 300),
                ("every 250", 500),
                ("every 250", 750),
                ("every 250", 1000),
            ]
        );
        assert!(timers.is_empty());
    }

    #[tokio::test(start_paused = true)]
    async fn cancel_before_firing_and_stale_handles() {
        let timers = Timers::start();
        let fired = Arc::new(AtomicUsize::new(0));
        let f = fired.clone();
        let h = timers.after(Duration::from_secs(1), move || {
            f.fetch_add(1, Ordering::SeqCst);
        });
        assert_eq!(timers.len(), 1);
        assert!(h.cancel());
        assert!(!h.cancel(), "second cancel is a no-op");
        let f = fired.clone();
        let h2 = timers.after(Duration::from_secs(1), move || {
            f.fetch_add(10, Ordering::SeqCst);
        });
        tokio::time::sleep(Duration::from_secs(2)).await;
        assert_eq!(fired.load(Ordering::SeqCst), 10);
        // The first handle's queue key may be reused; cancelling it touches nothing.
        assert!(!h.cancel());
        assert!(!h2.cancel(), "already fired");
    }

    #[tokio::test(start_paused = true)]
    async fn a_periodic_callback_can_cancel_itself_and_schedule_more() {
        let timers = Timers::start();
        let count = Arc::new(AtomicUsize::new(0));
        let slot: Arc<Mutex<Option<TimerHandle>>> = Arc::default();
        let (c, s, t) = (count.clone(), slot.clone(), timers.clone());
        let handle = timers.every(Duration::from_millis(10), move || {
            if c.fetch_add(1, Ordering::SeqCst) + 1 == 3 {
                if let Some(h) = s.lock().unwrap().as_ref() {
                    assert!(h.cancel());
                }
                // Scheduling from inside a callback must not deadlock.
                let c = c.clone();
                t.after(Duration::from_millis(5), move || {
                    c.fetch_add(100, Ordering::SeqCst);
                });
            }
        });
        *slot.lock().unwrap() = Some(handle);
        tokio::time::sleep(Duration::from_millis(200)).await;
        assert_eq!(count.load(Ordering::SeqCst), 103);
        assert!(timers.is_empty());
    }

    #[tokio::test(start_paused = true)]
    async fn a_panicking_callback_harms_no_other_timer() {
        let timers = Timers::start();
        let fired = Arc::new(AtomicUsize::new(0));
        timers.after(Duration::from_millis(1), || panic!("timer bug"));
        let f = fired.clone();
        timers.after(Duration::from_millis(2), move || {
            f.fetch_add(1, Ordering::SeqCst);
        });
        tokio::time::sleep(Duration::from_millis(10)).await;
        assert_eq!(fired.load(Ordering::SeqCst), 1);
    }

    #[tokio::test(start_paused = true)]
    async fn many_pending_timers_fire_in_deadline_order() {
        let timers = Timers::start();
        let order = Arc::new(Mutex::new(Vec::new()));
        for i in (0..5000u64).rev() {
            let order = order.clone();
            timers.after(Duration::from_millis(i % 1000 + 1), move || {
                order.lock().unwrap().push(i % 1000);
            });
        }
        assert_eq!(timers.len(), 5000);
        tokio::time::sleep(Duration::from_secs(2)).await;
        let order = order.lock().unwrap();
        assert_eq!(order.len(), 5000);
        assert!(order.windows(2).all(|w| w[0] <= w[1]));
    }

    #[tokio::test(start_paused = true)]
    async fn dropping_the_last_handle_stops_the_task() {
        let timers = Timers::start();
        let fired = Arc::new(AtomicUsize::new(0));
        let f = fired.clone();
        let h = timers.after(Duration::from_millis(10), move || {
            f.fetch_add(1, Ordering::SeqCst);
        });
        drop(timers);
        tokio::time::sleep(Duration::from_millis(50)).await;
        assert_eq!(fired.load(Ordering::SeqCst), 0);
        assert!(!h.cancel());
    }
}
