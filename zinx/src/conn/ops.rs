//! Async ops (Zinx's `zasync_op`): blocking work run off the runtime, whose
//! results come back to the connection's reader, which runs them in the
//! connection's handler context, in the order the ops were started.
//!
//! A connection's queue of results is made by its first op (most connections
//! never start one); the reader waits for results on the close signal's reader
//! slot, which a queued result wakes.

use std::collections::VecDeque;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::task::Poll;

use tokio::sync::oneshot;

use crate::conn::Connection;
use crate::conn::close::Waiter;
use crate::error::Error;
use crate::queue::Queue;
use crate::util::{BoxFuture, lock};

/// A callback delivered to a connection's reader (an async op's result).
pub(crate) type Callback = Box<dyn FnOnce() -> BoxFuture + Send>;

/// A connection's queue of async op results, made by its first op.
pub(crate) type Jobs = Queue<VecDeque<Job>>;

pub(crate) enum Job {
    /// Run a callback in the connection's handler context.
    Run(Callback),
}

impl Connection {
    /// Runs blocking `work` (a database call, file I/O) on tokio's blocking pool,
    /// then runs `then` with its result in this connection's handler context
    /// (Zinx's `zasync_op`): on the connection's worker, one at a time with its
    /// message handlers, so `then` needs no locks against them. Other messages
    /// are handled while `work` runs. Results are delivered in the order the ops
    /// were started; a result that arrives after the connection closed is
    /// dropped.
    ///
    /// At most `MaxWorkerTaskLen` ops may be in flight per connection, so a peer
    /// whose every message starts one cannot pile up unbounded work.
    ///
    /// # Errors
    ///
    /// [`Error::Closed`] if the connection is closed (or not driven by a server
    /// or client), [`Error::QueueFull`] when `MaxWorkerTaskLen` ops are in flight.
    ///
    /// # Examples
    ///
    /// ```
    /// use zinx::Request;
    ///
    /// async fn lookup(req: Request) -> Result<(), zinx::Error> {
    ///     let key = req.data().clone();
    ///     req.conn().async_op(
    ///         move || key.len() * 2, // pretend this blocks on a database
    ///         |conn, value| async move {
    ///             let _ = conn.send(2, value.to_string()).await;
    ///         },
    ///     )
    /// }
    /// ```
    pub fn async_op<T, W, C, Fut>(&self, work: W, then: C) -> Result<(), Error>
    where
        T: Send + 'static,
        W: FnOnce() -> T + Send + 'static,
        C: FnOnce(Connection, T) -> Fut + Send + 'static,
        Fut: std::future::Future<Output = ()> + Send + 'static,
    {
        let capacity = self.shared.jobs_capacity;
        let Some(tracker) = self.shared.tracker.as_ref().filter(|_| capacity > 0) else {
            return Err(Error::Closed);
        };
        let jobs = self
            .shared
            .jobs
            .get_or_init(|| Arc::new(Jobs::new(capacity)));
        // Checked after the queue exists: a close either sees it (and closes
        // it) or is seen here.
        if self.is_closed() {
            return Err(Error::Closed);
        }
        let in_flight = &self.shared.ops_in_flight;
        if in_flight.fetch_add(1, Ordering::AcqRel) >= capacity {
            in_flight.fetch_sub(1, Ordering::AcqRel);
            return Err(Error::QueueFull);
        }
        let (done, next_tail) = oneshot::channel();
        let previous = lock(&self.shared.op_tail).replace(next_tail);
        let jobs = jobs.clone();
        let conn = self.clone();
        let shared = self.shared.clone();
        tracker.spawn(async move {
            let result = tokio::task::spawn_blocking(work).await;
            if let Some(previous) = previous {
                // Err only means the previous op's task is gone: nothing to wait for.
                let _ = previous.await;
            }
            match result {
                Ok(value) if !conn.is_closed() => {
                    let callback: Callback = Box::new(move || Box::pin(then(conn, value)));
                    // Fails only when the connection closed. The reader waits
                    // for results on the close signal's reader slot.
                    if jobs.push(Job::Run(callback)).await.is_ok() {
                        shared.close.wake(Waiter::Reader);
                    }
                }
                Ok(_) => tracing::debug!("async op finished after its connection closed"),
                Err(e) => tracing::error!(error = %e, "async op work panicked"),
            }
            shared.ops_in_flight.fetch_sub(1, Ordering::AcqRel);
            let _ = done.send(());
        });
        Ok(())
    }

    /// The queue of callbacks (async op results) for the connection's reader to
    /// run, if it has one.
    pub(crate) fn jobs(&self) -> Option<&Jobs> {
        self.shared.jobs.get().map(|jobs| &**jobs)
    }

    /// The next async op result for the reader to run, or `None` once the
    /// connection is closed. The wait is on the close signal's reader slot,
    /// which a queued result also wakes: one waker registered per poll, in a
    /// cache line every message touches, and no queue until the first async op.
    /// Cancel-safe: waiting takes nothing, and the item is taken only when this
    /// completes.
    pub(crate) async fn next_job(&self) -> Option<Job> {
        std::future::poll_fn(|cx| {
            // Registered before the queue is checked, so a result queued after
            // the check wakes this.
            if self
                .shared
                .close
                .poll_closed_for(Waiter::Reader, cx)
                .is_ready()
            {
                return Poll::Ready(None);
            }
            match self.jobs().and_then(Jobs::pop) {
                Some(job) => Poll::Ready(Some(job)),
                None => Poll::Pending,
            }
        })
        .await
    }
}
