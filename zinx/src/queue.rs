//! A bounded multi-producer, single-consumer queue that allocates nothing until
//! the first item and keeps only a few slots once drained.
//!
//! It carries a connection's outgoing messages (handlers → writer) and its async
//! op results (→ the connection's lane). `tokio::sync::mpsc` allocates a block of
//! slots when the channel is created, which for thousands of idle connections is
//! most of their memory; this queue is a `VecDeque` behind a short
//! `std::sync::Mutex`, an `AtomicWaker` for the consumer and a `Notify` for
//! producers waiting for room. The consumer takes everything queued
//! with one lock, which is what the writer wants anyway.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Mutex, MutexGuard};
use std::task::Poll;

use futures_util::task::AtomicWaker;
use tokio::sync::Notify;

/// Why an item was not queued; the item comes back.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum PushError<T> {
    /// The queue holds its capacity.
    Full(T),
    /// The consumer closed the queue.
    Closed(T),
}

/// Slots an empty queue keeps (more are given back), so a connection that sends
/// one message at a time does not allocate and free the storage every time.
const KEEP_WHEN_EMPTY: usize = 16;

pub(crate) struct Queue<T> {
    state: Mutex<State<T>>,
    /// The single consumer's waker: woken when an item arrives in an empty
    /// queue, or on close. Cheaper than a `Notify` on the per-message path.
    readable: AtomicWaker,
    /// Mirrors "items queued or closed", so the consumer checks without the lock.
    ready: AtomicBool,
    /// Wakes producers waiting for room, after a drain of a full queue, or on close.
    writable: Notify,
    capacity: usize,
}

struct State<T> {
    items: VecDeque<T>,
    closed: bool,
}

impl<T> Queue<T> {
    pub(crate) fn new(capacity: usize) -> Self {
        Queue {
            state: Mutex::new(State {
                items: VecDeque::new(),
                closed: false,
            }),
            readable: AtomicWaker::new(),
            ready: AtomicBool::new(false),
            writable: Notify::new(),
            capacity: capacity.max(1),
        }
    }

    fn lock(&self) -> MutexGuard<'_, State<T>> {
        // Every critical section is a single push, drain or flag change.
        crate::lock(&self.state)
    }

    /// Queues `item` if there is room.
    pub(crate) fn try_push(&self, item: T) -> Result<(), PushError<T>> {
        let mut state = self.lock();
        if state.closed {
            return Err(PushError::Closed(item));
        }
        if state.items.len() >= self.capacity {
            return Err(PushError::Full(item));
        }
        state.items.push_back(item);
        let first = state.items.len() == 1;
        if first {
            self.ready.store(true, Ordering::Release);
        }
        drop(state);
        if first {
            self.readable.wake();
        }
        Ok(())
    }

    /// Queues `item`, waiting for room.
    ///
    /// Cancel-safe: if dropped while waiting, nothing was queued.
    pub(crate) async fn push(&self, mut item: T) -> Result<(), T> {
        loop {
            let room = self.writable.notified();
            tokio::pin!(room);
            // Registered before the check, so a drain between the check and the
            // wait still wakes this producer.
            room.as_mut().enable();
            match self.try_push(item) {
                Ok(()) => return Ok(()),
                Err(PushError::Closed(back)) => return Err(back),
                Err(PushError::Full(back)) => item = back,
            }
            room.await;
        }
    }

    /// Moves up to `max` queued items into `out`; returns how many.
    pub(crate) fn drain_into(&self, out: &mut Vec<T>, max: usize) -> usize {
        self.take(max, |items, n| out.extend(items.drain(..n)))
    }

    /// Takes the oldest item.
    pub(crate) fn pop(&self) -> Option<T> {
        let mut item = None;
        self.take(1, |items, _| item = items.pop_front());
        item
    }

    /// Takes up to `max` items with `take` under the lock, then does the
    /// bookkeeping every consumer needs: clear the ready flag once empty, trim the
    /// storage, wake producers that were waiting for room.
    fn take(&self, max: usize, take: impl FnOnce(&mut VecDeque<T>, usize)) -> usize {
        let mut state = self.lock();
        let was_full = state.items.len() >= self.capacity;
        let n = state.items.len().min(max);
        if n > 0 {
            take(&mut state.items, n);
        }
        if state.items.is_empty() {
            if !state.closed {
                self.ready.store(false, Ordering::Release);
            }
            if state.items.capacity() > KEEP_WHEN_EMPTY {
                // Give back what a burst grew; a few slots stay for the next item.
                state.items = VecDeque::new();
            }
        }
        drop(state);
        if was_full && n > 0 {
            self.writable.notify_waiters();
        }
        n
    }

    /// Completes when an item is queued or the queue is closed. For the single
    /// consumer only.
    ///
    /// Cancel-safe: waiting consumes nothing.
    pub(crate) async fn readable(&self) {
        std::future::poll_fn(|cx| {
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
        })
        .await;
    }

    /// Refuses further items; waiting producers get their item back.
    pub(crate) fn close(&self) {
        self.lock().closed = true;
        self.ready.store(true, Ordering::Release);
        self.writable.notify_waiters();
        self.readable.wake();
    }

    pub(crate) fn capacity(&self) -> usize {
        self.capacity
    }

    #[cfg(feature = "metrics")]
    pub(crate) fn len(&self) -> usize {
        self.lock().items.len()
    }

    pub(crate) fn is_empty(&self) -> bool {
        self.lock().items.is_empty()
    }

    pub(crate) fn is_closed(&self) -> bool {
        self.lock().closed
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use super::*;

    #[test]
    fn bounded_fifo_with_items_back_on_full_and_closed() {
        let q = Queue::new(2);
        q.try_push(1).unwrap();
        q.try_push(2).unwrap();
        assert_eq!(q.try_push(3), Err(PushError::Full(3)));
        let mut out = Vec::new();
        assert_eq!(q.drain_into(&mut out, 10), 2);
        assert_eq!(out, [1, 2]);
        assert!(q.is_empty());
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
    async fn close_returns_the_item_to_a_waiting_producer() {
        let q = Arc::new(Queue::new(1));
        q.try_push(1).unwrap();
        let producer = {
            let q = q.clone();
            tokio::spawn(async move { q.push(2).await })
        };
        tokio::task::yield_now().await;
        q.close();
        assert_eq!(producer.await.unwrap(), Err(2));
    }

    #[tokio::test]
    async fn the_consumer_is_woken_by_a_push_that_races_its_wait() {
        let q = Arc::new(Queue::<u32>::new(4));
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
