//! Routing: from a message ID to the handler that serves it.
//!
//! [`Router`] is built by value before the server starts (`route`, `add_router`,
//! `fallback`) and is read-only afterwards, shared by the reader tasks and workers.
//! Two handler styles are accepted and stored the same way, boxed once at
//! registration:
//!
//! - plain `async fn(Request)` returning `()` or a `Result` (an `Err` is logged);
//! - Zinx's classic router with `pre_handle` / `handle` / `post_handle`
//!   ([`ZinxRouter`]).
//!
//! A handler that panics is caught here: the panic is logged, the connection it
//! was serving is closed, and the worker and the server go on.

use std::collections::HashMap;
use std::fmt;
use std::future::Future;
use std::sync::Arc;

use crate::BoxFuture;
use crate::message::MsgId;
use crate::request::Request;

type BoxHandler = Arc<dyn Fn(Request) -> BoxFuture + Send + Sync>;

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

/// Maps message IDs to handlers.
///
/// # Examples
///
/// ```
/// use zinx::{Request, Router};
///
/// async fn echo(req: Request) -> Result<(), zinx::Error> {
///     req.conn().send(req.msg_id(), req.data().clone()).await
/// }
///
/// let router = Router::new()
///     .route(1, echo)
///     .route(2, |req: Request| async move {
///         let _ = req.conn().try_send(2, req.data().clone());
///     });
/// assert!(router.has_route(1));
/// ```
#[must_use]
pub struct Router {
    routes: HashMap<MsgId, BoxHandler>,
    fallback: BoxHandler,
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
        }
    }

    /// Routes message `id` to an `async fn(Request)`.
    ///
    /// # Panics
    ///
    /// If `id` is already routed: registering an ID twice is a programming error.
    pub fn route<F, Fut>(mut self, id: impl Into<MsgId>, handler: F) -> Self
    where
        F: Fn(Request) -> Fut + Send + Sync + 'static,
        Fut: Future + Send + 'static,
        Fut::Output: HandlerOutput,
    {
        self.insert(id.into(), boxed(handler));
        self
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

    fn insert(&mut self, id: MsgId, handler: BoxHandler) {
        assert!(
            !self.routes.contains_key(&id),
            "message ID {id} is already routed: each ID takes one handler"
        );
        self.routes.insert(id, handler);
    }

    /// Runs the handler for `req`, catching a panic. On panic the request's
    /// connection is closed.
    pub(crate) async fn dispatch(&self, req: Request) {
        let handler = self.routes.get(&req.msg_id()).unwrap_or(&self.fallback);
        let conn = req.conn().clone();
        let msg_id = req.msg_id();
        if let Err(panic) = crate::catch_panic(|| handler(req)).await {
            tracing::error!(
                conn_id = %conn.id(),
                %msg_id,
                %panic,
                "handler panicked, closing its connection"
            );
            conn.close();
        }
    }
}

fn boxed<F, Fut>(handler: F) -> BoxHandler
where
    F: Fn(Request) -> Fut + Send + Sync + 'static,
    Fut: Future + Send + 'static,
    Fut::Output: HandlerOutput,
{
    Arc::new(move |req: Request| {
        let conn_id = req.conn().id();
        let msg_id = req.msg_id();
        let fut = handler(req);
        Box::pin(async move {
            if let Err(error) = fut.await.into_result() {
                tracing::warn!(%conn_id, %msg_id, %error, "handler returned an error");
            }
        })
    })
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use std::sync::Mutex;

    use super::*;
    use crate::conn::tests::test_conn;
    use crate::message::Message;

    fn request(id: u32, data: &'static str) -> (Request, tokio::sync::mpsc::Receiver<Message>) {
        let (conn, rx) = test_conn(8);
        (Request::new(conn, Message::new(id, data)), rx)
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

    #[tokio::test]
    async fn dispatches_by_id_and_falls_back() {
        let router = Router::new()
            .route(1, |req: Request| async move {
                req.conn().try_send(100, req.data().clone())
            })
            .fallback(|req: Request| async move { req.conn().try_send(999, req.data().clone()) });
        let (req, mut rx) = request(1, "one");
        router.dispatch(req).await;
        assert_eq!(rx.recv().await.unwrap(), Message::new(100, "one"));
        let (req, mut rx) = request(42, "unknown");
        router.dispatch(req).await;
        assert_eq!(rx.recv().await.unwrap(), Message::new(999, "unknown"));
    }

    #[tokio::test]
    async fn default_fallback_keeps_the_connection_open() {
        let (req, _rx) = request(42, "x");
        let conn = req.conn().clone();
        Router::new().dispatch(req).await;
        assert!(!conn.is_closed());
    }

    #[tokio::test]
    async fn zinx_router_runs_pre_handle_post_in_order() {
        struct Steps(Arc<Mutex<Vec<&'static str>>>);
        impl ZinxRouter for Steps {
            async fn pre_handle(&self, _req: &Request) {
                self.0.lock().unwrap().push("pre");
            }
            async fn handle(&self, _req: &Request) {
                self.0.lock().unwrap().push("handle");
            }
            async fn post_handle(&self, _req: &Request) {
                self.0.lock().unwrap().push("post");
            }
        }
        let log = Arc::new(Mutex::new(Vec::new()));
        let router = Router::new().add_router(3, Steps(log.clone()));
        let (req, _rx) = request(3, "");
        router.dispatch(req).await;
        assert_eq!(*log.lock().unwrap(), ["pre", "handle", "post"]);
    }

    #[tokio::test]
    async fn panicking_handler_closes_only_its_connection() {
        let router = Router::new()
            .route(1, |_req: Request| async {
                if true {
                    panic!("boom");
                }
            })
            .route(2, |_req: Request| -> std::future::Ready<()> {
                panic!("before await")
            });
        let (req, _rx) = request(1, "");
        let conn = req.conn().clone();
        router.dispatch(req).await;
        assert!(conn.is_closed());
        let (req, _rx) = request(2, "");
        let conn = req.conn().clone();
        router.dispatch(req).await;
        assert!(conn.is_closed());
    }

    #[tokio::test]
    async fn handler_error_keeps_the_connection_open() {
        let router = Router::new().route(1, |_req: Request| async { Err("bad input") });
        let (req, _rx) = request(1, "");
        let conn = req.conn().clone();
        router.dispatch(req).await;
        assert!(!conn.is_closed());
    }
}
