//! Dispatch: the compiled router the reader hands each message to.
//!
//! When a server or client starts, [`Router`]'s routes are compiled into a
//! [`Dispatcher`]: every route's chain composed once, in a [`RouteTable`] looked
//! up by index for small IDs and in a map above, with the interceptors' chain
//! around the lookup when there are interceptors. Per message the reader calls
//! [`Dispatcher::dispatch_in`]: a synchronous route is done in the call; an
//! asynchronous chain's future is started in the connection's slot and polled by
//! [`Dispatching`], which turns a panic into a log line and the close of that
//! connection.

use std::collections::HashMap;
use std::fmt;
use std::future::Future;
use std::panic::AssertUnwindSafe;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use super::Router;
use super::handler::{BoxHandler, Called, Handler, Slot, boxed};
use super::middleware::{Middleware, wrap};
use crate::conn::Connection;
use crate::message::{IdHasher, Message, MsgId};
use crate::request::Request;

impl Router {
    /// Composes every chain once: what the server dispatches with.
    /// `heartbeat` gets a default route (log at debug) if it has none; `first`
    /// runs before every other interceptor (the client's reply matcher).
    pub(crate) fn compile(
        &self,
        heartbeat: Option<MsgId>,
        first: Option<&Middleware>,
    ) -> Dispatcher {
        let mut routes: HashMap<MsgId, Handler, IdHasher> = self
            .routes
            .iter()
            .map(|(id, route)| {
                // Groups do not overlap, so an ID is in at most one; routes join
                // the group of their range however they were added.
                let group = self
                    .groups
                    .iter()
                    .find(|(range, _)| range.contains(&id.0))
                    .map_or(&[][..], |(_, mw)| &mw[..]);
                let mut chain = self
                    .middleware
                    .iter()
                    .chain(group)
                    .chain(&route.middleware)
                    .peekable();
                // A synchronous handler stays synchronous unless middleware wraps it.
                let handler = match &route.handler {
                    Handler::Sync(_) if chain.peek().is_none() => route.handler.clone(),
                    handler => Handler::Async(wrap(chain, handler.clone().into_async())),
                };
                (*id, handler)
            })
            .collect();
        if let Some(id) = heartbeat {
            routes.entry(id).or_insert_with(|| {
                let log = boxed(|req: Request| async move {
                    tracing::debug!(conn_id = %req.conn().id(), len = req.data().len(), "heartbeat received");
                });
                Handler::Async(wrap(self.middleware.iter(), log))
            });
        }
        let table = Arc::new(RouteTable::new(
            routes,
            Handler::Async(self.fallback.clone()),
        ));
        let mut interceptors = first.into_iter().chain(&self.interceptors).peekable();
        // Without interceptors the dispatcher looks the route up itself: one call
        // less per message than going through the lookup as a chain.
        let intercepted = interceptors.peek().is_some().then(|| {
            let table = table.clone();
            let lookup: BoxHandler = Arc::new(move |req: Request, slot: &mut Slot| {
                // A synchronous route's request is dropped here, at the end
                // of the chain.
                let _ = table.get(req.msg_id()).call(req, slot);
            });
            Handler::Async(wrap(interceptors, lookup))
        });
        Dispatcher { table, intercepted }
    }
}

/// A compiled router: interceptors, lookup and every route's chain, composed once.
///
/// # Examples
///
/// ```
/// use zinx::{Connection, Message, Request, Router};
///
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() {
/// let router = Router::new().route(1, |req: Request| async move {
///     req.conn().send(2, req.data()).await
/// });
/// let dispatcher = router.dispatcher();
/// let (conn, mut sent) = Connection::detached(8);
/// dispatcher.dispatch(Request::new(conn, Message::new(1, "hi"))).await;
/// assert_eq!(sent.recv().await, Some(Message::new(2, "hi")));
/// # }
/// ```
pub struct Dispatcher {
    table: Arc<RouteTable>,
    /// The interceptors' chain around the lookup, when there are interceptors.
    intercepted: Option<Handler>,
}

/// Routed IDs below this are looked up by index (Zinx's message IDs are
/// usually small numbers); larger ones in a map.
const DENSE_IDS: u32 = 1024;

/// Every route's chain by ID, and the fallback.
struct RouteTable {
    /// Indexed by ID, up to the largest routed ID below [`DENSE_IDS`]; the
    /// unrouted ones in between hold the fallback.
    dense: Box<[Handler]>,
    /// Routes with larger IDs.
    sparse: HashMap<MsgId, Handler, IdHasher>,
    fallback: Handler,
}

impl RouteTable {
    fn new(mut routes: HashMap<MsgId, Handler, IdHasher>, fallback: Handler) -> Self {
        let len = routes
            .keys()
            .filter(|id| id.0 < DENSE_IDS)
            .map(|id| id.0 as usize + 1)
            .max()
            .unwrap_or(0);
        let dense = (0..DENSE_IDS)
            .take(len)
            .map(|id| {
                routes
                    .remove(&MsgId(id))
                    .unwrap_or_else(|| fallback.clone())
            })
            .collect();
        RouteTable {
            dense,
            sparse: routes,
            fallback,
        }
    }

    #[inline]
    fn get(&self, id: MsgId) -> &Handler {
        match self.dense.get(id.0 as usize) {
            Some(handler) => handler,
            None => self.sparse.get(&id).unwrap_or(&self.fallback),
        }
    }
}

impl fmt::Debug for Dispatcher {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Dispatcher").finish_non_exhaustive()
    }
}

impl Dispatcher {
    /// Runs the chain for `req`, catching a panic. On panic the request's
    /// connection is closed.
    pub fn dispatch(&self, req: Request) -> impl Future<Output = ()> + Send + 'static {
        let conn = req.conn().clone();
        let msg_id = req.msg_id();
        let mut slot = Slot::default();
        let started =
            start(self.entry(msg_id), req, &mut slot).map(|c| matches!(c, Called::Started));
        async move {
            if let Some(dispatching) = Dispatching::new(&conn, msg_id, &mut slot, started) {
                dispatching.await;
            }
        }
    }

    /// Where a message with `id` enters: the interceptors, or its route's chain.
    #[inline]
    fn entry(&self, id: MsgId) -> &Handler {
        match &self.intercepted {
            Some(chain) => chain,
            None => self.table.get(id),
        }
    }

    /// Runs the chain for `req`: a synchronous route is done when this returns
    /// (`None`); otherwise the chain's future is started in `slot`, which a
    /// connection reuses for all its messages, and the future returned polls it.
    ///
    /// The request is made with `lent`, the reader's own handle of `conn`, and a
    /// synchronous route gives it back: a request costs no reference count
    /// (when `lent` is empty, after an asynchronous route kept it, `conn` is
    /// cloned).
    #[inline]
    pub(crate) fn dispatch_in<'a>(
        &self,
        conn: &'a Connection,
        lent: &mut Option<Connection>,
        msg: Message,
        slot: &'a mut Slot,
    ) -> Option<Dispatching<'a>> {
        let msg_id = msg.id;
        let handle = lent.take().unwrap_or_else(|| conn.clone());
        let started = match start(self.entry(msg_id), Request::new(handle, msg), slot) {
            Ok(Called::Done(req)) => {
                *lent = Some(req.into_parts().0);
                return None;
            }
            Ok(Called::Started) => Ok(true),
            Err(panic) => Err(panic),
        };
        Dispatching::new(conn, msg_id, slot, started)
    }
}

/// Calls `handler`; a panic in the call comes back as its message.
#[inline]
fn start(handler: &Handler, req: Request, slot: &mut Slot) -> Result<Called, String> {
    std::panic::catch_unwind(AssertUnwindSafe(|| handler.call(req, slot)))
        .map_err(|p| crate::util::panic_message(&*p))
}

/// A request being handled: polls the handler's future in its slot, turning a
/// panic (in the call or in a poll) into a log line and the close of the
/// connection.
///
/// Written out by hand because an `async` block that awaits a future it captured
/// keeps two copies of it, and this future lives in every connection's reader.
#[must_use = "futures do nothing unless polled"]
pub(crate) struct Dispatching<'a> {
    conn: &'a Connection,
    msg_id: MsgId,
    slot: &'a mut Slot,
    /// Set when starting the handler panicked.
    panicked: Option<String>,
}

impl<'a> Dispatching<'a> {
    /// What is left to do after [`start`]: poll the future it started, report
    /// its panic, or nothing.
    #[inline]
    fn new(
        conn: &'a Connection,
        msg_id: MsgId,
        slot: &'a mut Slot,
        started: Result<bool, String>,
    ) -> Option<Self> {
        let panicked = match started {
            Ok(false) => return None,
            Ok(true) => None,
            Err(panic) => Some(panic),
        };
        Some(Dispatching {
            conn,
            msg_id,
            slot,
            panicked,
        })
    }
}

impl Future for Dispatching<'_> {
    type Output = ();

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
        let this = self.get_mut();
        let panic = match this.panicked.take() {
            Some(message) => message,
            None => match std::panic::catch_unwind(AssertUnwindSafe(|| this.slot.poll(cx))) {
                Ok(poll) => return poll,
                Err(p) => crate::util::panic_message(&*p),
            },
        };
        // Drop the panicked future now, before the connection's close runs.
        *this.slot = Slot::default();
        tracing::error!(
            conn_id = %this.conn.id(),
            msg_id = %this.msg_id,
            %panic,
            "handler panicked, closing its connection"
        );
        this.conn.close();
        Poll::Ready(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::conn::tests::test_conn;
    use crate::router::Next;
    use crate::router::tests::{Log, request, run};
    use crate::util::BoxFuture;

    /// Middleware that logs its name, then continues.
    fn mark(
        log: &Log,
        name: &'static str,
    ) -> impl Fn(Request, Next) -> BoxFuture + Send + Sync + 'static {
        let log = log.clone();
        move |req, next| {
            log.lock().unwrap().push(name.to_owned());
            Box::pin(next.run(req))
        }
    }

    fn handler(
        log: &Log,
        name: &'static str,
    ) -> impl Fn(Request) -> BoxFuture + Send + Sync + 'static {
        let log = log.clone();
        move |_req| {
            log.lock().unwrap().push(name.to_owned());
            Box::pin(async {})
        }
    }

    #[tokio::test]
    async fn dispatches_by_id_and_falls_back() {
        let router = Router::new()
            .route(1, |req: Request| async move {
                req.conn().try_send(100, req.data())
            })
            .fallback(|req: Request| async move { req.conn().try_send(999, req.data()) });
        let d = router.compile(None, None);
        let (req, mut rx) = request(1, "one");
        d.dispatch(req).await;
        assert_eq!(rx.recv().await.unwrap(), Message::new(100, "one"));
        let (req, mut rx) = request(42, "unknown");
        d.dispatch(req).await;
        assert_eq!(rx.recv().await.unwrap(), Message::new(999, "unknown"));
    }

    #[tokio::test]
    async fn small_and_large_ids_route_alike() {
        // Small IDs are looked up by index, large ones in a map; unrouted IDs of
        // either kind reach the fallback.
        let reply =
            |to: u32| move |req: Request| async move { req.conn().try_send(to, req.data()) };
        let router = Router::new()
            .route(0, reply(100))
            .route(5, reply(105))
            .route(DENSE_IDS - 1, reply(106))
            .route(DENSE_IDS, reply(107))
            .route(u32::MAX, reply(108))
            .fallback(reply(999));
        let d = router.compile(None, None);
        for (id, to) in [
            (0, 100),
            (3, 999),
            (5, 105),
            (DENSE_IDS - 1, 106),
            (DENSE_IDS, 107),
            (DENSE_IDS + 1, 999),
            (u32::MAX, 108),
        ] {
            let (req, mut rx) = request(id, "x");
            d.dispatch(req).await;
            assert_eq!(rx.recv().await.unwrap().id, MsgId(to), "{id}");
        }
    }

    #[tokio::test]
    async fn chain_order_interceptor_global_group_route_handler() {
        let log = Log::default();
        let router = Router::new()
            .route_with(
                11,
                [Middleware::from_fn(mark(&log, "route mw"))],
                handler(&log, "h11"),
            )
            .middleware(mark(&log, "global 1"))
            .intercept(mark(&log, "interceptor"))
            .group(10..=19, |g| {
                g.middleware(mark(&log, "group"))
                    .route(12, handler(&log, "h12"))
            })
            .middleware(mark(&log, "global 2"))
            .route(30, handler(&log, "h30"));
        for id in [11, 12, 30, 99] {
            run(&router, id, "").await;
        }
        assert_eq!(
            *log.lock().unwrap(),
            [
                // 11 was routed before the group existed and still joins it.
                "interceptor",
                "global 1",
                "global 2",
                "group",
                "route mw",
                "h11",
                "interceptor",
                "global 1",
                "global 2",
                "group",
                "h12",
                "interceptor",
                "global 1",
                "global 2",
                "h30",
                // Unknown IDs see interceptors only.
                "interceptor",
            ]
        );
    }

    #[tokio::test]
    async fn interceptor_rewrites_the_id_before_routing() {
        let router = Router::new()
            .intercept(|mut req: Request, next: Next| async move {
                req.message_mut().id = MsgId(2);
                next.run(req).await;
            })
            .route(
                2,
                |req: Request| async move { req.conn().try_send(2, "two") },
            );
        let (req, mut rx) = request(1, "");
        router.compile(None, None).dispatch(req).await;
        assert_eq!(rx.recv().await.unwrap().id, MsgId(2));
    }

    #[tokio::test]
    async fn a_sync_route_is_done_in_the_call_unless_middleware_wraps_it() {
        let log = Log::default();
        let sync_handler = |log: &Log, name: &'static str| {
            let log = log.clone();
            move |req: &Request| {
                log.lock().unwrap().push(name.to_owned());
                req.conn().try_send(req.msg_id(), req.data())
            }
        };
        let router = Router::new()
            .route_sync(1, sync_handler(&log, "sync 1"))
            .group(10..=19, |g| {
                g.middleware(mark(&log, "group"))
                    .route_sync(12, sync_handler(&log, "sync 12"))
            });
        let d = router.compile(None, None);
        let (conn, mut rx) = test_conn(8);
        let mut slot = Slot::default();
        // No middleware: handled in the call, nothing to poll. The request
        // borrowed the reader's handle, which comes back.
        let mut lent = Some(conn.clone());
        let handles = conn.handles();
        let msg = Message::new(1, "a");
        assert!(d.dispatch_in(&conn, &mut lent, msg, &mut slot).is_none());
        assert_eq!(rx.try_recv().unwrap(), Message::new(1, "a"));
        assert!(slot.addr().is_none(), "no future was stored");
        assert!(lent.as_ref().is_some_and(|l| l.same(&conn)), "lent back");
        assert_eq!(conn.handles(), handles, "no handle made or dropped");
        // In a group with middleware: the end of an async chain, which keeps
        // the handle it was lent.
        d.dispatch_in(&conn, &mut lent, Message::new(12, "b"), &mut slot)
            .expect("wrapped in middleware")
            .await;
        assert_eq!(rx.try_recv().unwrap(), Message::new(12, "b"));
        assert!(lent.is_none());
        assert_eq!(
            conn.handles(),
            handles - 1,
            "the chain's request dropped it"
        );
        // With nothing lent, the handle is cloned.
        assert!(
            d.dispatch_in(&conn, &mut lent, Message::new(1, "c"), &mut slot)
                .is_none()
        );
        assert_eq!(rx.try_recv().unwrap(), Message::new(1, "c"));
        assert_eq!(conn.handles(), handles);
        // Interceptors see a sync route's messages too.
        let intercepted = Router::new()
            .intercept(mark(&log, "interceptor"))
            .route_sync(1, sync_handler(&log, "sync 1"));
        let (req, mut rx) = request(1, "d");
        intercepted.compile(None, None).dispatch(req).await;
        assert_eq!(rx.try_recv().unwrap(), Message::new(1, "d"));
        assert_eq!(
            *log.lock().unwrap(),
            [
                "sync 1",
                "group",
                "sync 12",
                "sync 1",
                "interceptor",
                "sync 1"
            ]
        );
    }

    #[tokio::test]
    async fn panicking_handler_or_middleware_closes_only_its_connection() {
        let router = Router::new()
            .route_sync(3, |_req: &Request| -> () { panic!("sync") })
            .route(1, |_req: Request| async {
                if true {
                    panic!("boom");
                }
            })
            .route(2, |_req: Request| -> std::future::Ready<()> {
                panic!("before await")
            })
            .group(10..=10, |g| {
                g.middleware(|_req: Request, _next: Next| async { panic!("middleware") })
                    .route(10, |_req: Request| async {})
            });
        for id in [1, 2, 3, 10] {
            let req = run(&router, id, "").await;
            assert!(req.conn().is_closed(), "{id}");
        }
        // The reader's own dispatch of a sync route that panics.
        let d = router.compile(None, None);
        let (conn, _rx) = test_conn(8);
        let mut slot = Slot::default();
        d.dispatch_in(&conn, &mut None, Message::new(3, ""), &mut slot)
            .expect("a panic is reported by polling")
            .await;
        assert!(conn.is_closed());
    }
}
