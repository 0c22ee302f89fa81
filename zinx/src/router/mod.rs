//! Routing: from a message ID, through middleware, to the handler that serves it.
//!
//! [`Router`] is built by value before the server starts and compiled once when it
//! runs: every route becomes a single boxed chain, so dispatching a message is one
//! lookup (by index for small IDs) and the chain's calls. A message goes through,
//! in order:
//!
//! 1. **interceptors** ([`Router::intercept`], Zinx's interceptors): every inbound
//!    message, routed or not; they may rewrite the message ID or data, or drop it;
//! 2. the route lookup (unknown IDs go to the fallback);
//! 3. **global middleware** ([`Router::middleware`], Zinx's `Use`), then the
//!    middleware of the route's **group** ([`Router::group`]), then the route's own
//!    middleware ([`Router::route_with`]);
//! 4. the handler: an `async fn(Request)`, a synchronous `fn(&Request)`
//!    ([`Router::route_sync`]: no future to build and poll, the cheapest kind) or
//!    a Zinx-style [`ZinxRouter`].
//!
//! Middleware is `async fn(Request, Next)`: calling [`Next::run`] continues the
//! chain, returning without calling it aborts it (Zinx's `Abort`). Values put in
//! [`Request::extensions_mut`] travel down the chain with the request.
//!
//! A handler or middleware that panics is caught: the panic is logged, the
//! connection it was serving is closed, and the worker and the server go on.

mod dispatch;
mod handler;
mod middleware;

use std::collections::HashMap;
use std::fmt;
use std::future::Future;
use std::ops::RangeInclusive;
use std::sync::Arc;

pub use dispatch::Dispatcher;
pub(crate) use dispatch::Dispatching;
pub(crate) use handler::Slot;
use handler::{BoxHandler, Handler, boxed, sync};
pub use handler::{HandlerOutput, ZinxRouter};
pub use middleware::{Middleware, Next};

use crate::extensions::States;
use crate::message::MsgId;
use crate::request::Request;

/// A route as registered: its handler and its own middleware (global and group
/// middleware join it when the router is compiled).
struct Route {
    handler: Handler,
    middleware: Vec<Middleware>,
}

/// Maps message IDs to handlers, with middleware, groups and interceptors.
///
/// # Examples
///
/// ```
/// use zinx::router::Next;
/// use zinx::{Request, Router};
///
/// async fn echo(req: Request) -> Result<(), zinx::Error> {
///     req.conn().send(req.msg_id(), req.data()).await
/// }
///
/// let router = Router::new()
///     .middleware(|req: Request, next: Next| async move {
///         tracing::debug!(id = %req.msg_id(), "in");
///         next.run(req).await;
///     })
///     .route(1, echo)
///     .group(100..=199, |g| {
///         g.middleware(|req: Request, next: Next| async move {
///             if !req.data().is_empty() {
///                 next.run(req).await;
///             }
///         })
///         .route(101, echo)
///     });
/// assert!(router.has_route(101));
/// ```
#[must_use]
pub struct Router {
    routes: HashMap<MsgId, Route>,
    fallback: BoxHandler,
    middleware: Vec<Middleware>,
    interceptors: Vec<Middleware>,
    groups: Vec<(RangeInclusive<u32>, Vec<Middleware>)>,
    states: States,
}

impl Default for Router {
    fn default() -> Self {
        Router::new()
    }
}

impl fmt::Debug for Router {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut ids: Vec<_> = self.routes.keys().map(|id| id.0).collect();
        ids.sort_unstable();
        f.debug_struct("Router")
            .field("routes", &ids)
            .field("middleware", &self.middleware.len())
            .field("interceptors", &self.interceptors.len())
            .field(
                "groups",
                &self.groups.iter().map(|g| &g.0).collect::<Vec<_>>(),
            )
            .finish_non_exhaustive()
    }
}

impl Router {
    /// An empty router whose fallback logs unknown message IDs and keeps the
    /// connection open.
    pub fn new() -> Self {
        Router {
            routes: HashMap::new(),
            fallback: boxed(|req: Request| async move {
                tracing::warn!(
                    conn_id = %req.conn().id(),
                    msg_id = %req.msg_id(),
                    "no handler for message ID, message dropped"
                );
            }),
            middleware: Vec::new(),
            interceptors: Vec::new(),
            groups: Vec::new(),
            states: States::default(),
        }
    }

    /// Gives the handlers application state, as axum's `with_state` does: a
    /// value of any type (a database pool, the game world, a config), one per
    /// type, shared by every connection of the server the router serves.
    /// Handlers read it with [`Request::state`], hooks and other code with
    /// [`Connection::state`](crate::Connection::state).
    ///
    /// # Examples
    ///
    /// ```
    /// use std::sync::atomic::{AtomicU64, Ordering};
    /// use zinx::{Request, Router};
    ///
    /// struct Hits(AtomicU64);
    ///
    /// let router = Router::new()
    ///     .with_state(Hits(AtomicU64::new(0)))
    ///     .route_sync(1, |req: &Request| {
    ///         let n = req.state::<Hits>().0.fetch_add(1, Ordering::Relaxed) + 1;
    ///         req.conn().try_send(1, n.to_string())
    ///     });
    /// # let _ = router;
    /// ```
    pub fn with_state<T: std::any::Any + Send + Sync>(mut self, state: T) -> Self {
        self.states.insert(state);
        self
    }

    /// The state given with [`with_state`](Self::with_state).
    pub(crate) fn states(&self) -> &States {
        &self.states
    }

    /// Routes message `id` to an `async fn(Request)`.
    ///
    /// # Panics
    ///
    /// If `id` is already routed: registering an ID twice is a programming error.
    pub fn route<F, Fut>(self, id: impl Into<MsgId>, handler: F) -> Self
    where
        F: Fn(Request) -> Fut + Send + Sync + 'static,
        Fut: Future + Send + 'static,
        Fut::Output: HandlerOutput,
    {
        self.route_with(id, [], handler)
    }

    /// Routes message `id` through its own middleware chain to `handler` (Zinx's
    /// `AddRouterSlices`). The chain runs after global and group middleware.
    ///
    /// # Panics
    ///
    /// If `id` is already routed.
    pub fn route_with<F, Fut>(
        self,
        id: impl Into<MsgId>,
        middleware: impl IntoIterator<Item = Middleware>,
        handler: F,
    ) -> Self
    where
        F: Fn(Request) -> Fut + Send + Sync + 'static,
        Fut: Future + Send + 'static,
        Fut::Output: HandlerOutput,
    {
        self.insert(
            id.into(),
            Handler::Async(boxed(handler)),
            middleware.into_iter().collect(),
        )
    }

    fn insert(mut self, id: MsgId, handler: Handler, middleware: Vec<Middleware>) -> Self {
        assert!(
            !self.routes.contains_key(&id),
            "message ID {id} is already routed: each ID takes one handler"
        );
        self.routes.insert(
            id,
            Route {
                handler,
                middleware,
            },
        );
        self
    }

    /// Routes message `id` to a synchronous handler, `fn(&Request)` returning `()`
    /// or `Result<(), E>`: Zinx's handlers are synchronous too.
    ///
    /// A handler that awaits nothing should be synchronous: the reader calls it
    /// directly, with no future to build, store and poll (for the echo server,
    /// about 40% less work per message than the same handler as an `async` route;
    /// see docs/PERFORMANCE.md). It replies with
    /// [`try_send`](crate::Connection::try_send): under `SendQueueFull = "wait"`
    /// (the default) its sends on its own connection may go past `MaxMsgChanLen`
    /// (up to twice it), and the reader then waits for the writer to catch up
    /// before the next message, so its replies are not refused for a full queue.
    /// With middleware (global, group or the route's own) it runs at the end of
    /// the chain like any handler.
    ///
    /// # Examples
    ///
    /// ```
    /// use zinx::{Request, Router};
    ///
    /// let router = Router::new().route_sync(1, |req: &Request| {
    ///     req.conn().try_send(req.msg_id(), req.data())
    /// });
    /// assert!(router.has_route(1));
    /// ```
    ///
    /// # Panics
    ///
    /// If `id` is already routed.
    pub fn route_sync<F, Out>(self, id: impl Into<MsgId>, handler: F) -> Self
    where
        F: Fn(&Request) -> Out + Send + Sync + 'static,
        Out: HandlerOutput,
    {
        self.insert(id.into(), Handler::Sync(sync(handler)), Vec::new())
    }

    /// Routes message `id` to a Zinx-style router (pre / handle / post).
    ///
    /// # Panics
    ///
    /// If `id` is already routed.
    pub fn add_router<R: ZinxRouter>(self, id: impl Into<MsgId>, router: R) -> Self {
        let router = Arc::new(router);
        self.route(id, move |req: Request| {
            let router = router.clone();
            async move {
                router.pre_handle(&req).await;
                router.handle(&req).await;
                router.post_handle(&req).await;
            }
        })
    }

    /// Adds global middleware (Zinx's `Use`): it wraps every routed message,
    /// whether its route was added before or after. Middleware added first runs
    /// first.
    pub fn middleware<F, Fut>(mut self, f: F) -> Self
    where
        F: Fn(Request, Next) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = ()> + Send + 'static,
    {
        self.middleware.push(Middleware::from_fn(f));
        self
    }

    /// Adds an interceptor: it sees every inbound message before routing, known
    /// ID or not, and may rewrite it ([`Request::message_mut`]) or drop it (by not
    /// calling `next`). Interceptors added first run first.
    pub fn intercept<F, Fut>(mut self, f: F) -> Self
    where
        F: Fn(Request, Next) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = ()> + Send + 'static,
    {
        self.interceptors.push(Middleware::from_fn(f));
        self
    }

    /// Declares a group of message IDs (`start..=end`, Zinx's `Group`) with its
    /// own middleware; `build` adds the group's middleware and routes.
    ///
    /// # Panics
    ///
    /// If the range is empty or overlaps another group, if a route added through
    /// the group lies outside its range, or on a duplicate ID.
    pub fn group(mut self, ids: RangeInclusive<u32>, build: impl FnOnce(Group) -> Group) -> Self {
        assert!(!ids.is_empty(), "group {ids:?} is empty");
        for (other, _) in &self.groups {
            assert!(
                ids.end() < other.start() || ids.start() > other.end(),
                "group {ids:?} overlaps group {other:?}"
            );
        }
        let group = build(Group {
            ids: ids.clone(),
            middleware: Vec::new(),
            routes: Vec::new(),
        });
        self.groups.push((ids, group.middleware));
        for (id, route) in group.routes {
            assert!(
                !self.routes.contains_key(&id),
                "message ID {id} is already routed: each ID takes one handler"
            );
            self.routes.insert(id, route);
        }
        self
    }

    /// Replaces the handler for messages whose ID has no route.
    pub fn fallback<F, Fut>(mut self, handler: F) -> Self
    where
        F: Fn(Request) -> Fut + Send + Sync + 'static,
        Fut: Future + Send + 'static,
        Fut::Output: HandlerOutput,
    {
        self.fallback = boxed(handler);
        self
    }

    /// True if `id` has a handler of its own.
    #[must_use]
    pub fn has_route(&self, id: impl Into<MsgId>) -> bool {
        self.routes.contains_key(&id.into())
    }

    /// The IDs that have a route.
    pub(crate) fn route_ids(&self) -> impl Iterator<Item = MsgId> + '_ {
        self.routes.keys().copied()
    }

    /// Compiles the router into the [`Dispatcher`] a server uses, to run handlers
    /// without a server: in unit tests of handlers (with
    /// [`Connection::detached`](crate::Connection::detached)) and benchmarks.
    pub fn dispatcher(&self) -> Dispatcher {
        self.compile(None, None)
    }
}

/// A group of message IDs being built by [`Router::group`].
#[must_use]
pub struct Group {
    ids: RangeInclusive<u32>,
    middleware: Vec<Middleware>,
    routes: Vec<(MsgId, Route)>,
}

impl fmt::Debug for Group {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Group")
            .field("ids", &self.ids)
            .finish_non_exhaustive()
    }
}

impl Group {
    /// Adds middleware for the group's routes (after global middleware).
    pub fn middleware<F, Fut>(mut self, f: F) -> Self
    where
        F: Fn(Request, Next) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = ()> + Send + 'static,
    {
        self.middleware.push(Middleware::from_fn(f));
        self
    }

    /// Routes `id` (inside the group's range) to `handler`.
    ///
    /// # Panics
    ///
    /// If `id` is outside the group's range or already routed in the group.
    pub fn route<F, Fut>(self, id: impl Into<MsgId>, handler: F) -> Self
    where
        F: Fn(Request) -> Fut + Send + Sync + 'static,
        Fut: Future + Send + 'static,
        Fut::Output: HandlerOutput,
    {
        self.route_with(id, [], handler)
    }

    /// Routes `id` (inside the group's range) to a synchronous handler, as
    /// [`Router::route_sync`]; the group's middleware makes it part of a chain.
    ///
    /// # Panics
    ///
    /// As [`route`](Self::route).
    pub fn route_sync<F, Out>(self, id: impl Into<MsgId>, handler: F) -> Self
    where
        F: Fn(&Request) -> Out + Send + Sync + 'static,
        Out: HandlerOutput,
    {
        self.insert(id.into(), Handler::Sync(sync(handler)), Vec::new())
    }

    /// Routes `id` through its own middleware to `handler`.
    ///
    /// # Panics
    ///
    /// As [`route`](Self::route).
    pub fn route_with<F, Fut>(
        self,
        id: impl Into<MsgId>,
        middleware: impl IntoIterator<Item = Middleware>,
        handler: F,
    ) -> Self
    where
        F: Fn(Request) -> Fut + Send + Sync + 'static,
        Fut: Future + Send + 'static,
        Fut::Output: HandlerOutput,
    {
        self.insert(
            id.into(),
            Handler::Async(boxed(handler)),
            middleware.into_iter().collect(),
        )
    }

    fn insert(mut self, id: MsgId, handler: Handler, middleware: Vec<Middleware>) -> Self {
        assert!(
            self.ids.contains(&id.0),
            "message ID {id} is outside group {:?}",
            self.ids
        );
        assert!(
            self.routes.iter().all(|(other, _)| *other != id),
            "message ID {id} is already routed: each ID takes one handler"
        );
        self.routes.push((
            id,
            Route {
                handler,
                middleware,
            },
        ));
        self
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Mutex;

    use super::*;
    use crate::conn::tests::test_conn;
    use crate::message::Message;

    pub(super) type Log = Arc<Mutex<Vec<String>>>;

    pub(super) fn request(id: u32, data: &'static str) -> (Request, crate::conn::Outbox) {
        let (conn, rx) = test_conn(8);
        (Request::new(conn, Message::new(id, data)), rx)
    }

    /// Dispatches one message; returns a request on the same connection, to
    /// look at the connection afterwards.
    pub(super) async fn run(router: &Router, id: u32, data: &'static str) -> Request {
        let (req, _rx) = request(id, data);
        let conn = req.conn().clone();
        router.compile(None, None).dispatch(req).await;
        Request::new(conn, Message::new(id, data))
    }

    #[test]
    #[should_panic(expected = "message ID 5 is already routed")]
    fn duplicate_route_panics_naming_the_id() {
        let _ = Router::new()
            .route(5, |_req: Request| async {})
            .route(5, |_req: Request| async {});
    }

    #[test]
    #[should_panic(expected = "message ID 6 is already routed")]
    fn duplicate_zinx_router_panics() {
        struct R;
        impl ZinxRouter for R {
            async fn handle(&self, _req: &Request) {}
        }
        let _ = Router::new().add_router(6, R).add_router(6, R);
    }

    #[test]
    #[should_panic(expected = "message ID 15 is already routed")]
    fn duplicate_between_router_and_group_panics() {
        let _ = Router::new()
            .route(15, |_req: Request| async {})
            .group(10..=20, |g| g.route(15, |_req: Request| async {}));
    }

    #[test]
    #[should_panic(expected = "outside group")]
    fn group_route_outside_range_panics() {
        let _ = Router::new().group(10..=20, |g| g.route(21, |_req: Request| async {}));
    }

    #[test]
    #[should_panic(expected = "overlaps")]
    fn overlapping_groups_panic() {
        let _ = Router::new().group(10..=20, |g| g).group(20..=30, |g| g);
    }

    #[tokio::test]
    async fn default_fallback_keeps_the_connection_open() {
        let req = run(&Router::new(), 42, "x").await;
        assert!(!req.conn().is_closed());
    }

    #[tokio::test]
    async fn zinx_router_runs_pre_handle_post_in_order() {
        struct Steps(Log);
        impl ZinxRouter for Steps {
            async fn pre_handle(&self, _req: &Request) {
                self.0.lock().unwrap().push("pre".into());
            }
            async fn handle(&self, _req: &Request) {
                self.0.lock().unwrap().push("handle".into());
            }
            async fn post_handle(&self, _req: &Request) {
                self.0.lock().unwrap().push("post".into());
            }
        }
        let log = Log::default();
        let router = Router::new().add_router(3, Steps(log.clone()));
        run(&router, 3, "").await;
        assert_eq!(*log.lock().unwrap(), ["pre", "handle", "post"]);
    }
}
