//! A connection's close signal: one flag, checked on every send, so it has to be
//! cheap.
//!
//! `CancellationToken` keeps its state behind a mutex and registers a `Notify`
//! waiter per poll, which showed up as one of the largest per-message costs. Here
//! the reader and the writer each have an `AtomicWaker` slot (a poll is two atomic
//! loads and a register), and everything else that waits for the close
//! (`Connection::closed`) uses a `Notify`. The writer's main loop waits on the
//! send queue instead, which the close closes; the reader's waits here, in its
//! slot, which a queued async op result also wakes.

use std::sync::atomic::{AtomicBool, Ordering};
use std::task::{Context, Poll};

use futures_util::task::AtomicWaker;
use tokio::sync::Notify;

/// Who is waiting for the close.
#[derive(Debug, Clone, Copy)]
pub(crate) enum Waiter {
    Reader,
    Writer,
}

/// `repr(C)` with the flag first: a connection places it right after its send
/// queue, in a cache line every message touches.
#[derive(Default)]
#[repr(C)]
pub(crate) struct CloseSignal {
    closed: AtomicBool,
    reader: AtomicWaker,
    writer: AtomicWaker,
    others: Notify,
}

impl CloseSignal {
    /// Closes; returns true the first time.
    pub(crate) fn close(&self) -> bool {
        if self.closed.swap(true, Ordering::AcqRel) {
            return false;
        }
        self.reader.wake();
        self.writer.wake();
        self.others.notify_waiters();
        true
    }

    /// Wakes `who` if it waits (in [`poll_closed_for`](Self::poll_closed_for)),
    /// without closing: the reader also waits here for async op results, whose
    /// queue has no waker of its own registered.
    pub(crate) fn wake(&self, who: Waiter) {
        self.slot(who).wake();
    }

    fn slot(&self, who: Waiter) -> &AtomicWaker {
        match who {
            Waiter::Reader => &self.reader,
            Waiter::Writer => &self.writer,
        }
    }

    #[inline]
    pub(crate) fn is_closed(&self) -> bool {
        self.closed.load(Ordering::Acquire)
    }

    /// Completes once closed; for the reader or the writer (each has its own
    /// waker slot, so each may have one such future at a time).
    ///
    /// Cancel-safe: waiting consumes nothing.
    pub(crate) async fn closed_for(&self, who: Waiter) {
        std::future::poll_fn(|cx| self.poll_closed_for(who, cx)).await;
    }

    /// Ready once closed; otherwise `who`'s waker is woken at the close.
    pub(crate) fn poll_closed_for(&self, who: Waiter, cx: &Context<'_>) -> Poll<()> {
        if self.is_closed() {
            return Poll::Ready(());
        }
        self.slot(who).register(cx.waker());
        // Checked again after registering, so a close in between is not missed.
        if self.is_closed() {
            Poll::Ready(())
        } else {
            Poll::Pending
        }
    }

    /// Completes once closed; for any number of waiters.
    ///
    /// Cancel-safe: waiting consumes nothing.
    pub(crate) async fn closed(&self) {
        loop {
            let notified = self.others.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            if self.is_closed() {
                return;
            }
            notified.await;
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use super::*;

    #[tokio::test]
    async fn every_kind_of_waiter_is_woken_once_closed() {
        let signal = Arc::new(CloseSignal::default());
        let waiters: Vec<_> = [Some(Waiter::Reader), Some(Waiter::Writer), None, None]
            .into_iter()
            .map(|who| {
                let s = signal.clone();
                tokio::spawn(async move {
                    match who {
                        Some(who) => s.closed_for(who).await,
                        None => s.closed().await,
                    }
                })
            })
            .collect();
        tokio::task::yield_now().await;
        assert!(waiters.iter().all(|w| !w.is_finished()));
        assert!(signal.close());
        assert!(
            !signal.close(),
            "closing twice reports the first close only"
        );
        for w in waiters {
            w.await.unwrap();
        }
        // Waiting after the close completes at once.
        signal.closed().await;
        signal.closed_for(Waiter::Reader).await;
    }
}
