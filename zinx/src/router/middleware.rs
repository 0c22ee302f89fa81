//! Middleware: what runs around a route's handler, and how chains are composed.
//!
//! A [`Middleware`] is an `async fn(Request, Next)`; [`Next`] is the rest of the
//! chain, started in a slot of its own when the middleware runs it. [`wrap`]
//! composes a route's chain (global, group, then its own middleware around the
//! handler) once, when the router is compiled, so dispatching a message calls
//! the outermost layer and nothing is composed per message.

use std::fmt;
use std::future::Future;
use std::sync::Arc;

use super::handler::{BoxHandler, Logged, Slot};
use crate::request::Request;

type BoxMiddleware = Arc<dyn Fn(Request, Next, &mut Slot) + Send + Sync>;

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

/// Wraps `handler` in `chain`, the first middleware outermost.
pub(super) fn wrap<'a>(
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::router::Router;
    use crate::router::tests::request;

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
}
