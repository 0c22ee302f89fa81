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
//! 4. the handler: an `async fn(Request)`, a synchronous `fn(Request)`
//!    ([`Router::route_sync`]: no future to build and poll, the cheapest kind) or
//!    a Zinx-style [`ZinxRouter`].
//!
//! Middleware is `async fn(Request, Next)`: calling [`Next::run`] continues the
//! chain, returning without calling it aborts it (Zinx's `Abort`). Values put in
//! [`Request::extensions_mut`] travel down the chain with the request.
//!
//! A handler or middleware that panics is caught: the panic is logged, the
//! connection it was serving is closed, and the worker and the server go on.

use std::collections::HashMap;
use std::fmt;
use std::future::Future;
use std::ops::RangeInclusive;
use std::panic::AssertUnwindSafe;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use tokio_util::sync::ReusableBoxFuture;

use crate::conn::Connection;
use crate::message::{Message, MsgId};
use crate::request::Request;

/// A handler, type-erased: it starts its future in the slot it is given.
type BoxHandler = Arc<dyn Fn(Request, &mut Slot) + Send + Sync>;
/// A synchronous handler, type-erased: it runs to completion in the call (and
/// logs its own error), borrowing the request.
type SyncHandler = Arc<dyn Fn(&Request) + Send + Sync>;
type BoxMiddleware = Arc<dyn Fn(Request, Next, &mut Slot) + Send + Sync>;

/// Where a running handler's future lives. A connection's reader keeps one for
/// all its messages, so the allocation is reused from one message to the next
/// (whenever the next future has the same size, as it has for the same route)
/// instead of a box being allocated and freed per message.
#[derive(Default)]
pub(crate) struct Slot(Option<ReusableBoxFuture<'static, ()>>);

impl Slot {
    fn put<F: Future<Output = ()> + Send + 'static>(&mut self, fut: F) {
        match &mut self.0 {
            Some(held) => held.set(fut),
            None => self.0 = Some(ReusableBoxFuture::new(fut)),
        }
    }

    fn poll(&mut self, cx: &mut Context<'_>) -> Poll<()> {
        match &mut self.0 {
            Some(held) => held.poll(cx),
            None => Poll::Ready(()),
        }
    }

    /// Where the held future lives, if any.
    #[cfg(test)]
    fn addr(&mut self) -> Option<*const ()> {
        let held = self.0.as_mut()?;
        let fut: &(dyn Future<Output = ()> + Send) = &*held.get_pin();
        Some(std::ptr::from_ref(fut).cast::<()>())
    }
}

/// What a handler may return: `()` or `Result<(), E>`.
///
/// An `Err` is logged with the connection and message ID; the connection stays
/// open (close it explicitly if the error warrants it).
pub trait HandlerOutput: Send + 'static {
    /// Converts the output into a result for logging.
    ///
    /// # Errors
    ///
    /// The handler's error, boxed.
    fn into_result(self) -> Result<(), Box<dyn std::error::Error + Send + Sync>>;
}

impl HandlerOutput for () {
    fn into_result(self) -> Result<(), Box<dyn std::error::Error + Send + Sync>> {
        Ok(())
    }
}

impl<E> HandlerOutput for Result<(), E>
where
    E: Into<Box<dyn std::error::Error + Send + Sync>> + Send + 'static,
{
    fn into_result(self) -> Result<(), Box<dyn std::error::Error + Send + Sync>> {
        self.map_err(Into::into)
    }
}

/// Zinx's classic router (`IRouter` / `BaseRouter`): three steps run in order for
/// every message of its ID. `pre_handle` and `post_handle` default to nothing.
///
/// # Examples
///
/// ```
/// use zinx::{Request, Router, ZinxRouter};
///
/// struct Ping;
///
/// impl ZinxRouter for Ping {
///     async fn handle(&self, req: &Request) {
///         let _ = req.conn().send(1, "pong").await;
///     }
/// }
///
/// let router = Router::new().add_router(0, Ping);
/// # let _ = router;
/// ```
pub trait ZinxRouter: Send + Sync + 'static {
    /// Runs before [`handle`](Self::handle).
    fn pre_handle(&self, req: &Request) -> impl Future<Output = ()> + Send {
        let _ = req;
        async {}
    }

    /// Handles the message.
    fn handle(&self, req: &Request) -> impl Future<Output = ()> + Send;

    /// Runs after [`handle`](Self::handle).
    fn post_handle(&self, req: &Request) -> impl Future<Output = ()> + Send {
        let _ = req;
        async {}
    }
}

/// The rest of a middleware chain.
pub struct Next {
    inner: BoxHandler,
}

impl Next {
    /// Runs the rest of the chain (further middleware, then the handler) with `req`.
    pub async fn run(self, req: Request) {
        // A panic unwinds to the dispatch that started the chain.
        let mut slot = Slot::default();
        (self.inner)(req, &mut slot);
        std::future::poll_fn(|cx| slot.poll(cx)).await;
    }
}

impl fmt::Debug for Next {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Next").finish_non_exhaustive()
    }
}

/// A middleware: `async fn(Request, Next)`, built with [`Middleware::from_fn`].
#[derive(Clone)]
pub struct Middleware {
    inner: BoxMiddleware,
}

impl fmt::Debug for Middleware {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Middleware").finish_non_exhaustive()
    }
}

impl Middleware {
    /// Wraps an `async fn(Request, Next)`.
    ///
    /// # Examples
    ///
    /// ```
    /// use zinx::router::{Middleware, Next};
    /// use zinx::Request;
    ///
    /// #[derive(Clone)]
    /// struct User(String);
    ///
    /// let auth = Middleware::from_fn(|mut req: Request, next: Next| async move {
    ///     if req.data().starts_with(b"token:") {
    ///         req.extensions_mut().insert(User("alice".into()));
    ///         next.run(req).await; // continue
    ///     } // else: abort, the handler never runs
    /// });
    /// # let _ = auth;
    /// ```
    pub fn from_fn<F, Fut>(f: F) -> Self
    where
        F: Fn(Request, Next) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = ()> + Send + 'static,
    {
        Middleware {
            inner: Arc::new(move |req, next, slot| {
                let (conn_id, msg_id) = (req.conn().id(), req.msg_id());
                slot.put(Logged::new(f(req, next), conn_id, msg_id));
            }),
        }
    }
}

struct Route {
    handler: Handler,
    middleware: Vec<Middleware>,
}

/// A route's handler, or a compiled route: asynchronous (a future started in the
/// connection's slot) or synchronous (done when the call returns).
#[derive(Clone)]
enum Handler {
    Async(BoxHandler),
    Sync(SyncHandler),
}

/// What became of a request given to a [`Handler`].
enum Called {
    /// Its future was started in the slot, which must now be polled.
    Started,
    /// The handler is done (a synchronous one, which borrowed the request).
    Done(Request),
}

impl Handler {
    /// Runs the handler for `req`: a synchronous one completes, an asynchronous
    /// one starts its future in `slot`.
    #[inline]
    fn call(&self, req: Request, slot: &mut Slot) -> Called {
        match self {
            Handler::Async(handler) => {
                handler(req, slot);
                Called::Started
            }
            Handler::Sync(handler) => {
                handler(&req);
                Called::Done(req)
            }
        }
    }

    /// As an asynchronous handler, to be wrapped in middleware.
    fn into_async(self) -> BoxHandler {
        match self {
            Handler::Async(handler) => handler,
            // Runs in the call, so its future is empty and ready at once.
            Handler::Sync(handler) => Arc::new(move |req, _slot| handler(&req)),
        }
    }
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
        }
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

    /// Routes message `id` to a synchronous handler, `fn(Request)` returning `()`
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
    #[cfg(feature = "metrics")]
    pub(crate) fn route_ids(&self) -> impl Iterator<Item = MsgId> + '_ {
        self.routes.keys().copied()
    }

    /// Compiles the router into the [`Dispatcher`] a server uses, to run handlers
    /// without a server: in unit tests of handlers (with
    /// [`Connection::detached`](crate::Connection::detached)) and benchmarks.
    pub fn dispatcher(&self) -> Dispatcher {
        self.compile(None, None)
    }

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

/// A hasher for message IDs: the lookup runs for every message, and a `u32` key
/// needs no DoS-resistant hashing (the routes are fixed at start; a peer can only
/// pick among them).
#[derive(Clone, Copy, Default)]
pub(crate) struct IdHasher;

impl std::hash::BuildHasher for IdHasher {
    type Hasher = IdHash;
    fn build_hasher(&self) -> IdHash {
        IdHash(0)
    }
}

pub(crate) struct IdHash(u64);

impl std::hash::Hasher for IdHash {
    fn finish(&self) -> u64 {
        self.0
    }
    fn write(&mut self, bytes: &[u8]) {
        for &b in bytes {
            self.0 = (self.0 << 8 | u64::from(b)).wrapping_mul(0x9E37_79B9_7F4A_7C15);
        }
    }
    fn write_u32(&mut self, n: u32) {
        // Fibonacci hashing: spreads consecutive IDs over the table.
        self.0 = u64::from(n).wrapping_mul(0x9E37_79B9_7F4A_7C15);
    }
}

/// Wraps `handler` in `chain`, the first middleware outermost.
fn wrap<'a>(
    chain: impl DoubleEndedIterator<Item = &'a Middleware>,
    handler: BoxHandler,
) -> BoxHandler {
    chain.rev().fold(handler, |inner, mw| {
        let mw = mw.inner.clone();
        Arc::new(move |req, slot| {
            mw(
                req,
                Next {
                    inner: inner.clone(),
                },
                slot,
            );
        })
    })
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

pin_project_lite::pin_project! {
    /// A handler's (or middleware's) future: logs the handler's error, and drops
    /// the future as soon as it completes, so what it held is not kept in the
    /// connection's slot until the next message.
    #[project = LoggedProj]
    #[project_replace = LoggedReplace]
    enum Logged<Fut> {
        Running {
            #[pin]
            fut: Fut,
            conn_id: crate::message::ConnId,
            msg_id: MsgId,
        },
        Done,
    }
}

impl<Fut> Logged<Fut> {
    fn new(fut: Fut, conn_id: crate::message::ConnId, msg_id: MsgId) -> Self {
        Logged::Running {
            fut,
            conn_id,
            msg_id,
        }
    }
}

impl<Fut> Future for Logged<Fut>
where
    Fut: Future,
    Fut::Output: HandlerOutput,
{
    type Output = ();

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
        let (output, conn_id, msg_id) = match self.as_mut().project() {
            LoggedProj::Running {
                fut,
                conn_id,
                msg_id,
            } => (std::task::ready!(fut.poll(cx)), *conn_id, *msg_id),
            LoggedProj::Done => return Poll::Ready(()),
        };
        self.project_replace(Logged::Done);
        if let Err(error) = output.into_result() {
            handler_failed(conn_id, msg_id, &*error);
        }
        Poll::Ready(())
    }
}

fn sync<F, Out>(handler: F) -> SyncHandler
where
    F: Fn(&Request) -> Out + Send + Sync + 'static,
    Out: HandlerOutput,
{
    Arc::new(move |req: &Request| {
        if let Err(error) = handler(req).into_result() {
            handler_failed(req.conn().id(), req.msg_id(), &*error);
        }
    })
}

#[cold]
fn handler_failed(
    conn_id: crate::message::ConnId,
    msg_id: MsgId,
    error: &(dyn std::error::Error + Send + Sync),
) {
    tracing::warn!(%conn_id, %msg_id, %error, "handler returned an error");
}

fn boxed<F, Fut>(handler: F) -> BoxHandler
where
    F: Fn(Request) -> Fut + Send + Sync + 'static,
    Fut: Future + Send + 'static,
    Fut::Output: HandlerOutput,
{
    Arc::new(move |req: Request, slot: &mut Slot| {
        let (conn_id, msg_id) = (req.conn().id(), req.msg_id());
        slot.put(Logged::new(handler(req), conn_id, msg_id));
    })
}

#[cfg(test)]
mod tests {
    use std::sync::Mutex;

    use super::*;
    use crate::conn::tests::test_conn;
    use crate::message::Message;
    use crate::util::BoxFuture;

    type Log = Arc<Mutex<Vec<String>>>;

    fn request(id: u32, data: &'static str) -> (Request, crate::conn::Outbox) {
        let (conn, rx) = test_conn(8);
        (Request::new(conn, Message::new(id, data)), rx)
    }

    async fn run(router: &Router, id: u32, data: &'static str) -> Request {
        let (req, _rx) = request(id, data);
        let conn = req.conn().clone();
        router.compile(None, None).dispatch(req).await;
        Request::new(conn, Message::new(id, data))
    }

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
    async fn middleware_that_skips_next_aborts_and_extensions_travel() {
        #[derive(Clone, Debug, PartialEq)]
        struct User(&'static str);
        let router = Router::new()
            .middleware(|mut req: Request, next: Next| async move {
                if req.data().as_ref() == b"ok" {
                    req.extensions_mut().insert(User("alice"));
                    next.run(req).await;
                }
            })
            .route(1, |req: Request| async move {
                let user = req.extensions().get::<User>().map_or("none", |u| u.0);
                req.conn().try_send(1, user)
            });
        let d = router.compile(None, None);
        let (req, mut rx) = request(1, "ok");
        d.dispatch(req).await;
        assert_eq!(&rx.recv().await.unwrap().data[..], b"alice");
        let (req, mut rx) = request(1, "denied");
        d.dispatch(req).await;
        assert!(rx.try_recv().is_err(), "aborted: the handler never ran");
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
    async fn a_connection_reuses_one_allocation_for_its_handlers_futures() {
        /// A future that, like many hand-written ones, keeps what it holds after
        /// it completed.
        struct Holding(
            #[allow(dead_code, reason = "held, never read")] Arc<()>,
            Request,
        );
        impl Future for Holding {
            type Output = Result<(), crate::Error>;
            fn poll(self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<Self::Output> {
                let req = &self.1;
                Poll::Ready(req.conn().try_send(1, req.data()))
            }
        }
        let held = Arc::new(());
        let router = {
            let held = held.clone();
            Router::new().route(1, move |req: Request| Holding(held.clone(), req))
        };
        let d = router.compile(None, None);
        let (conn, mut rx) = test_conn(8);
        let mut slot = Slot::default();
        let mut addrs = Vec::new();
        for data in ["a", "b", "c"] {
            d.dispatch_in(&conn, &mut None, Message::new(1, data), &mut slot)
                .expect("an async route")
                .await;
            addrs.push(slot.addr().unwrap());
            assert_eq!(rx.recv().await.unwrap(), Message::new(1, data));
            // The finished future was dropped in its slot: nothing it held is kept.
            assert_eq!(Arc::strong_count(&held), 2, "the router's copy and ours");
        }
        assert!(addrs.windows(2).all(|w| w[0] == w[1]), "{addrs:?}");
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

    #[tokio::test]
    async fn handler_error_keeps_the_connection_open() {
        let router = Router::new()
            .route(1, |_req: Request| async { Err("bad input") })
            .route_sync(2, |_req: &Request| Err("bad input"));
        for id in [1, 2] {
            let req = run(&router, id, "").await;
            assert!(!req.conn().is_closed(), "{id}");
        }
    }
}
