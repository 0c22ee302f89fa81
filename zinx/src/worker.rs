//! The worker pool: where handlers run (Zinx's `WorkerPoolSize` / `WorkerMode`).
//!
//! In Go Zinx a worker is a goroutine with a queue; a message hops from the
//! reader to it. Here a worker is a **permit to run handlers**, an async mutex,
//! and handlers run on the connection's own task while holding it. The
//! observable rules are Zinx's:
//!
//! - **Task** (the default, not in Go Zinx): no shared worker; a connection's
//!   handlers run on its own task, so an awaiting handler stalls nobody else;
//! - **Hash**: `WorkerPoolSize` workers; a connection uses worker `id % size`, so
//!   connections sharing a worker are handled one message at a time, and at most
//!   `WorkerPoolSize` handlers run at once;
//! - **Bind** and **DynamicBind**: every connection has a worker of its own for its
//!   lifetime (Zinx takes it from a pool, or makes a temporary one), which needs no
//!   lock at all;
//! - pool size 0: no pool, every connection handles its own messages.
//!
//! In every mode a connection's messages are handled in arrival order, because its
//! reader handles them one after the other. While a handler runs (or waits for its
//! worker) the reader does not read, so TCP slows the peer: nothing is dropped and
//! nothing queues up in memory. Running on the reader saves the queue hop and a
//! task wake-up per message (see docs/PERFORMANCE.md).
//!
//! A connection's async op results (callbacks) are run by its reader under the
//! same worker permit, so they never overlap the connection's handlers.

use std::future::Future;
use std::sync::Arc;

use tokio::sync::{Mutex, MutexGuard};

use crate::config::WorkerMode;
use crate::conn::Connection;
use crate::conn::close::{CloseSignal, Waiter};
use crate::conn::ops::Job;
use crate::message::{ConnId, Message};
use crate::router::{Dispatcher, Dispatching, Slot};

/// The workers of a server (or client) and how connections map to them.
pub(crate) struct WorkerPool {
    router: Arc<Dispatcher>,
    callback_queue: usize,
    /// Hash mode: one permit per worker. Empty otherwise.
    workers: Vec<Arc<Mutex<()>>>,
}

impl WorkerPool {
    /// The pool for `mode` and `size`; `callback_queue` bounds each lane's queue of
    /// async op results (`MaxWorkerTaskLen`).
    pub(crate) fn new(
        mode: WorkerMode,
        size: usize,
        callback_queue: usize,
        router: Arc<Dispatcher>,
    ) -> Arc<WorkerPool> {
        let workers = if mode == WorkerMode::Hash {
            (0..size).map(|_| Arc::new(Mutex::new(()))).collect()
        } else {
            Vec::new()
        };
        Arc::new(WorkerPool {
            router,
            callback_queue: callback_queue.max(1),
            workers,
        })
    }

    /// The bound of each connection's queue of async op results
    /// (`MaxWorkerTaskLen`).
    pub(crate) fn callback_queue(&self) -> usize {
        self.callback_queue
    }

    /// The lane of a new connection.
    pub(crate) fn assign(&self, id: ConnId) -> Lane {
        let worker = u64::try_from(self.workers.len())
            .ok()
            .filter(|&n| n > 0)
            .and_then(|n| usize::try_from(id.0 % n).ok())
            .and_then(|i| self.workers.get(i))
            .cloned();
        Lane {
            router: self.router.clone(),
            worker,
        }
    }
}

/// A connection's route to its handlers.
pub(crate) struct Lane {
    router: Arc<Dispatcher>,
    /// The shared worker to hold while handling (Hash mode).
    worker: Option<Arc<Mutex<()>>>,
}

/// Waits for a busy worker, or for the connection to close.
async fn wait_for<'a>(
    worker: &'a Mutex<()>,
    signal: &CloseSignal,
) -> Result<MutexGuard<'a, ()>, LaneClosed> {
    tokio::select! {
        biased;
        // Cancel-safe: waiting for the close consumes nothing.
        () = signal.closed_for(Waiter::Reader) => Err(LaneClosed),
        // Cancel-safe: a lock future that is dropped holds nothing.
        permit = worker.lock() => Ok(permit),
    }
}

/// The connection closed while waiting for its worker.
#[derive(Debug)]
pub(crate) struct LaneClosed;

impl Lane {
    /// Takes the connection's worker (Hash mode; nothing to take otherwise),
    /// waiting while another connection holds it, unless the connection closes.
    pub(crate) fn permit<'a>(
        &'a self,
        signal: &'a CloseSignal,
    ) -> impl Future<Output = Result<Option<MutexGuard<'a, ()>>, LaneClosed>> + 'a {
        let now = match &self.worker {
            None => Ok(None),
            Some(worker) => worker.try_lock().map(Some).map_err(|_| worker),
        };
        async move {
            match now {
                Ok(permit) => Ok(permit),
                // Boxed: the wait is the rare path, and its futures would
                // otherwise enlarge every connection's reader, idle or not.
                Err(worker) => Box::pin(wait_for(worker, signal)).await.map(Some),
            }
        }
    }

    /// Handles one message (with the permit held by the caller). `lent` is the
    /// reader's own handle of `conn`, lent to the request of a synchronous route
    /// and given back after it (taken, or cloned if there is none).
    #[inline]
    pub(crate) fn dispatch<'a>(
        &self,
        conn: &'a Connection,
        lent: &mut Option<Connection>,
        msg: Message,
        slot: &'a mut Slot,
    ) -> Option<Dispatching<'a>> {
        // A synchronous handler's replies may go past the send queue's bound;
        // the reader then waits for room before the next message.
        conn.handling(true);
        let to_poll = self.router.dispatch_in(conn, lent, msg, slot);
        conn.handling(false);
        to_poll
    }

    /// Runs a callback taken by [`Connection::next_job`], under the worker.
    pub(crate) async fn run_job(&self, job: Job) {
        let _permit = match &self.worker {
            Some(worker) => Some(worker.lock().await),
            None => None,
        };
        let Job::Run(callback) = job;
        if let Err(panic) = crate::util::catch_panic(callback).await {
            tracing::error!(%panic, "async op callback panicked");
        }
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;
    use crate::conn::tests::test_conn;
    use crate::message::Message;
    use crate::request::Request;
    use crate::router::Router;

    fn pool(mode: WorkerMode, size: usize) -> Arc<WorkerPool> {
        let router = Router::new().route(1, |req: Request| async move {
            req.conn().try_send(1, req.data())
        });
        WorkerPool::new(mode, size, 4, Arc::new(router.compile(None, None)))
    }

    fn same_worker(a: &Lane, b: &Lane) -> bool {
        match (&a.worker, &b.worker) {
            (Some(x), Some(y)) => Arc::ptr_eq(x, y),
            _ => false,
        }
    }

    #[test]
    fn hash_maps_conn_id_modulo_pool_size() {
        let pool = pool(WorkerMode::Hash, 3);
        let lanes: Vec<_> = (0..6).map(|i| pool.assign(ConnId(i))).collect();
        assert!(same_worker(&lanes[0], &lanes[3]));
        assert!(same_worker(&lanes[2], &lanes[5]));
        assert!(!same_worker(&lanes[0], &lanes[1]));
    }

    #[test]
    fn bind_dynamic_bind_and_size_zero_need_no_shared_worker() {
        for (mode, size) in [
            (WorkerMode::Bind, 3),
            (WorkerMode::DynamicBind, 3),
            (WorkerMode::Hash, 0),
        ] {
            let pool = pool(mode, size);
            assert!(pool.assign(ConnId(1)).worker.is_none(), "{mode:?} {size}");
        }
    }

    #[tokio::test(start_paused = true)]
    async fn connections_sharing_a_worker_take_turns() {
        let router = Router::new().route(1, |req: Request| async move {
            tokio::time::sleep(Duration::from_secs(1)).await;
            req.conn().try_send(1, "done")
        });
        let pool = WorkerPool::new(WorkerMode::Hash, 1, 4, Arc::new(router.compile(None, None)));
        let (a, b) = (pool.assign(ConnId(1)), pool.assign(ConnId(2)));
        let (ca, mut ra) = test_conn(4);
        let (cb, mut rb) = test_conn(4);
        let start = tokio::time::Instant::now();
        let run = |lane: Lane, conn: crate::Connection| async move {
            let open = CloseSignal::default();
            let _permit = lane.permit(&open).await.unwrap();
            let mut slot = Slot::default();
            if let Some(handling) = lane.dispatch(&conn, &mut None, Message::new(1, ""), &mut slot)
            {
                handling.await;
            }
        };
        tokio::join!(run(a, ca), run(b, cb));
        assert!(ra.try_recv().is_ok() && rb.try_recv().is_ok());
        // One worker: the two one-second handlers ran one after the other.
        assert_eq!(start.elapsed(), Duration::from_secs(2));
    }

    #[tokio::test]
    async fn waiting_for_a_busy_worker_ends_when_the_connection_closes() {
        let pool = pool(WorkerMode::Hash, 1);
        let lane = pool.assign(ConnId(1));
        let held = pool.workers[0].clone().lock_owned().await;
        let closed = CloseSignal::default();
        closed.close();
        assert!(lane.permit(&closed).await.is_err());
        drop(held);
    }
}
