//! The worker pool: where handlers run (Zinx's `WorkerPoolSize` / `WorkerMode`).
//!
//! Each connection is given a [`Lane`] when it opens. A lane is either *inline*
//! (pool size 0: the reader task runs the handler itself) or the bounded queue of
//! one worker task. A worker handles its queue one request at a time, so the
//! messages of a connection, which all use the same lane, are handled in arrival
//! order; different lanes run in parallel. A full queue makes the reader wait,
//! which stops it reading and lets TCP slow the peer: nothing is dropped and
//! memory stays bounded by `MaxWorkerTaskLen`.
//!
//! - **Hash**: `WorkerPoolSize` workers; a connection uses worker `id % size`.
//! - **Bind**: a worker of its own for every connection, ending with it.
//! - **DynamicBind**: a connection borrows a free pooled worker for its lifetime,
//!   or gets a temporary one when all are taken.

use std::pin::Pin;
use std::sync::{Arc, Mutex, PoisonError};

use tokio::sync::mpsc::error::TrySendError;
use tokio::sync::{mpsc, oneshot};
use tokio_util::sync::WaitForCancellationFuture;
use tokio_util::task::TaskTracker;

use crate::BoxFuture;
use crate::config::WorkerMode;
use crate::message::ConnId;
use crate::request::Request;
use crate::router::Dispatcher;

/// A callback delivered to a connection's lane (an async op's result).
pub(crate) type Callback = Box<dyn FnOnce() -> BoxFuture + Send>;

/// What a worker is asked to do.
pub(crate) enum Job {
    /// Run the handler for a request.
    Handle(Request),
    /// Run a callback in the connection's handler context.
    Run(Callback),
    /// Signal once every earlier job in this queue is done.
    Barrier(oneshot::Sender<()>),
}

pub(crate) type JobSender = mpsc::Sender<Job>;

/// The pool's workers and how connections are assigned to them.
pub(crate) struct WorkerPool {
    mode: WorkerMode,
    size: usize,
    queue_len: usize,
    router: Arc<Dispatcher>,
    tracker: TaskTracker,
    /// Hash: the fixed workers. DynamicBind: the free workers. `None` once closed.
    workers: Mutex<Option<Vec<JobSender>>>,
}

impl WorkerPool {
    /// Starts the pool's fixed workers (none for Bind or a size of 0).
    pub(crate) fn start(
        mode: WorkerMode,
        size: usize,
        queue_len: usize,
        router: Arc<Dispatcher>,
        tracker: TaskTracker,
    ) -> Arc<WorkerPool> {
        let pool = Arc::new(WorkerPool {
            mode,
            size,
            queue_len: queue_len.max(1),
            router,
            tracker,
            workers: Mutex::new(Some(Vec::new())),
        });
        if size > 0 && mode != WorkerMode::Bind {
            let workers: Vec<_> = (0..size).map(|_| pool.spawn_worker()).collect();
            *pool.lock() = Some(workers);
        }
        pool
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Option<Vec<JobSender>>> {
        self.workers.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn spawn_worker(&self) -> JobSender {
        let (tx, rx) = mpsc::channel(self.queue_len);
        self.tracker.spawn(run_worker(rx, self.router.clone()));
        tx
    }

    /// The lane for a new connection.
    pub(crate) fn assign(self: &Arc<Self>, id: ConnId) -> Lane {
        if self.size == 0 {
            let (tx, rx) = mpsc::channel(self.queue_len);
            return Lane {
                kind: LaneKind::Inline {
                    router: self.router.clone(),
                    tx,
                    rx,
                },
                pool: None,
            };
        }
        let (sender, borrowed) = match self.mode {
            WorkerMode::Hash => {
                let workers = self.lock();
                let picked = workers.as_ref().and_then(|w| {
                    let len = u64::try_from(w.len()).ok().filter(|&n| n > 0)?;
                    let index = usize::try_from(id.0 % len).ok()?;
                    w.get(index).cloned()
                });
                drop(workers);
                (picked.unwrap_or_else(|| self.spawn_worker()), false)
            }
            WorkerMode::Bind => (self.spawn_worker(), false),
            WorkerMode::DynamicBind => {
                let free = self.lock().as_mut().and_then(Vec::pop);
                match free {
                    Some(tx) => (tx, true),
                    None => (self.spawn_worker(), false),
                }
            }
        };
        Lane {
            kind: LaneKind::Worker(sender),
            pool: borrowed.then(|| self.clone()),
        }
    }

    /// Drops the pool's own senders: each worker ends once the connections using
    /// it are gone and its queue is drained. Lanes returned later are dropped.
    pub(crate) fn close(&self) {
        self.lock().take();
    }

    /// Workers currently free in a DynamicBind pool (for tests and metrics).
    #[cfg(test)]
    pub(crate) fn free_workers(&self) -> usize {
        self.lock().as_ref().map_or(0, Vec::len)
    }
}

async fn run_worker(mut rx: mpsc::Receiver<Job>, router: Arc<Dispatcher>) {
    while let Some(job) = rx.recv().await {
        run_job(&router, job).await;
    }
}

async fn run_job(router: &Dispatcher, job: Job) {
    match job {
        Job::Handle(req) => router.dispatch(req).await,
        Job::Run(callback) => {
            if let Err(panic) = crate::catch_panic(callback).await {
                tracing::error!(%panic, "async op callback panicked");
            }
        }
        Job::Barrier(done) => {
            let _ = done.send(());
        }
    }
}

/// A connection's route to its handlers.
pub(crate) struct Lane {
    kind: LaneKind,
    /// Set when the worker is borrowed from a DynamicBind pool: returned on drop.
    pool: Option<Arc<WorkerPool>>,
}

enum LaneKind {
    /// Handlers run on the reader task; callbacks arrive on `rx`, and the lane
    /// keeps `tx` so the channel never reports closed while the lane lives.
    Inline {
        router: Arc<Dispatcher>,
        tx: JobSender,
        rx: mpsc::Receiver<Job>,
    },
    Worker(JobSender),
}

/// The connection closed while waiting, or the lane's worker is gone.
#[derive(Debug)]
pub(crate) struct LaneClosed;

impl Lane {
    /// Hands a request to the handlers. Inline, this runs the handler to
    /// completion (a handler that closes its own connection still finishes);
    /// otherwise it waits for room in the worker's queue, or for `cancel`.
    pub(crate) async fn dispatch(
        &self,
        req: Request,
        cancelled: Pin<&mut WaitForCancellationFuture<'_>>,
    ) -> Result<(), LaneClosed> {
        match &self.kind {
            LaneKind::Inline { router, .. } => {
                router.dispatch(req).await;
                Ok(())
            }
            LaneKind::Worker(tx) => match tx.try_send(Job::Handle(req)) {
                Ok(()) => Ok(()),
                Err(TrySendError::Closed(_)) => Err(LaneClosed),
                Err(TrySendError::Full(job)) => tokio::select! {
                    biased;
                    () = cancelled => Err(LaneClosed),
                    // Cancel-safe: an abandoned send queues nothing.
                    sent = tx.send(job) => sent.map_err(|_| LaneClosed),
                },
            },
        }
    }

    /// Where callbacks for this connection's handler context go.
    pub(crate) fn jobs(&self) -> JobSender {
        match &self.kind {
            LaneKind::Inline { tx, .. } | LaneKind::Worker(tx) => tx.clone(),
        }
    }

    /// The next callback queued for an inline lane; never completes for a worker
    /// lane (its worker runs them). Cancel-safe: `recv` loses nothing when dropped.
    pub(crate) async fn next_inline_job(&mut self) -> Job {
        match &mut self.kind {
            LaneKind::Inline { rx, .. } => match rx.recv().await {
                Some(job) => job,
                // The lane holds a sender, so the channel cannot close.
                None => std::future::pending().await,
            },
            LaneKind::Worker(_) => std::future::pending().await,
        }
    }

    /// Runs a job taken by [`next_inline_job`](Self::next_inline_job).
    pub(crate) async fn run_inline_job(&self, job: Job) {
        if let LaneKind::Inline { router, .. } = &self.kind {
            run_job(router, job).await;
        }
    }

    /// Completes once every request dispatched so far has been handled.
    pub(crate) async fn drain(&self) {
        if let LaneKind::Worker(tx) = &self.kind {
            let (done, wait) = oneshot::channel();
            if tx.send(Job::Barrier(done)).await.is_ok() {
                let _ = wait.await;
            }
        }
    }
}

impl Drop for Lane {
    fn drop(&mut self) {
        if let (Some(pool), LaneKind::Worker(tx)) = (self.pool.take(), &self.kind) {
            if let Some(free) = pool.lock().as_mut() {
                free.push(tx.clone());
            }
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;
    use crate::conn::tests::test_conn;
    use crate::message::Message;
    use crate::router::Router;

    fn pool(mode: WorkerMode, size: usize) -> (Arc<WorkerPool>, TaskTracker) {
        let tracker = TaskTracker::new();
        let router = Router::new().route(1, |req: Request| async move {
            req.conn().try_send(1, req.data().clone())
        });
        let pool = WorkerPool::start(
            mode,
            size,
            4,
            Arc::new(router.compile(None, None)),
            tracker.clone(),
        );
        (pool, tracker)
    }

    async fn shut_down(pool: &WorkerPool, tracker: TaskTracker) {
        pool.close();
        tracker.close();
        tracker.wait().await;
    }

    #[tokio::test]
    async fn dynamic_bind_borrows_then_spawns_then_returns() {
        let (pool, tracker) = pool(WorkerMode::DynamicBind, 2);
        assert_eq!(pool.free_workers(), 2);
        let a = pool.assign(ConnId(1));
        let b = pool.assign(ConnId(2));
        assert_eq!(pool.free_workers(), 0);
        let c = pool.assign(ConnId(3));
        assert_eq!(tracker.len(), 3, "a temporary worker was started");
        drop(c);
        assert_eq!(pool.free_workers(), 0, "temporary workers are not pooled");
        drop(a);
        drop(b);
        assert_eq!(pool.free_workers(), 2);
        shut_down(&pool, tracker).await;
    }

    #[tokio::test]
    async fn hash_spreads_by_conn_id() {
        let (pool, tracker) = pool(WorkerMode::Hash, 3);
        assert_eq!(tracker.len(), 3);
        let lanes: Vec<_> = (0..6).map(|i| pool.assign(ConnId(i))).collect();
        assert_eq!(tracker.len(), 3, "hash mode starts no extra workers");
        let same = |a: &Lane, b: &Lane| match (&a.kind, &b.kind) {
            (LaneKind::Worker(x), LaneKind::Worker(y)) => x.same_channel(y),
            _ => false,
        };
        assert!(same(&lanes[0], &lanes[3]));
        assert!(!same(&lanes[0], &lanes[1]));
        drop(lanes);
        shut_down(&pool, tracker).await;
    }

    #[tokio::test]
    async fn bind_gives_each_connection_its_own_worker() {
        let (pool, tracker) = pool(WorkerMode::Bind, 3);
        assert_eq!(tracker.len(), 0);
        let a = pool.assign(ConnId(1));
        let b = pool.assign(ConnId(2));
        assert_eq!(tracker.len(), 2);
        drop((a, b));
        shut_down(&pool, tracker).await;
    }

    #[tokio::test]
    async fn drain_waits_for_dispatched_requests() {
        let (pool, tracker) = pool(WorkerMode::Hash, 1);
        let lane = pool.assign(ConnId(1));
        let (conn, mut rx) = test_conn(8);
        let never = tokio_util::sync::CancellationToken::new();
        let cancelled = never.cancelled();
        tokio::pin!(cancelled);
        for _ in 0..3 {
            lane.dispatch(
                Request::new(conn.clone(), Message::new(1, "x")),
                cancelled.as_mut(),
            )
            .await
            .unwrap();
        }
        lane.drain().await;
        for _ in 0..3 {
            assert!(rx.try_recv().is_ok(), "handled before drain returned");
        }
        drop(lane);
        shut_down(&pool, tracker).await;
    }
}
