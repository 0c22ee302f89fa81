//! Handlers: what a route ends in, and how it is boxed for dispatch.
//!
//! The user's handler kinds (an `async fn(Request)`, a synchronous
//! `fn(&Request)`, a [`ZinxRouter`]) and what they may return
//! ([`HandlerOutput`]) are turned here, when the router is built, into the one
//! type-erased [`Handler`] the dispatcher calls per message. An asynchronous one
//! starts its future in the connection's reused [`Slot`], wrapped in [`Logged`],
//! which logs its error and drops it as soon as it completes; a synchronous one
//! logs its own error and is done when the call returns.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use tokio_util::sync::ReusableBoxFuture;

use crate::message::MsgId;
use crate::request::Request;

/// A handler, type-erased: it starts its future in the slot it is given.
pub(super) type BoxHandler = Arc<dyn Fn(Request, &mut Slot) + Send + Sync>;
/// A synchronous handler, type-erased: it runs to completion in the call (and
/// logs its own error), borrowing the request.
pub(super) type SyncHandler = Arc<dyn Fn(&Request) + Send + Sync>;

/// Where a running handler's future lives. A connection's reader keeps one for
/// all its messages, so the allocation is reused from one message to the next
/// (whenever the next future has the same size, as it has for the same route)
/// instead of a box being allocated and freed per message.
#[derive(Default)]
pub(crate) struct Slot(Option<ReusableBoxFuture<'static, ()>>);

impl Slot {
    pub(super) fn put<F: Future<Output = ()> + Send + 'static>(&mut self, fut: F) {
        match &mut self.0 {
            Some(held) => held.set(fut),
            None => self.0 = Some(ReusableBoxFuture::new(fut)),
        }
    }

    pub(super) fn poll(&mut self, cx: &mut Context<'_>) -> Poll<()> {
        match &mut self.0 {
            Some(held) => held.poll(cx),
            None => Poll::Ready(()),
        }
    }

    /// Where the held future lives, if any.
    #[cfg(test)]
    pub(super) fn addr(&mut self) -> Option<*const ()> {
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

/// A route's handler, or a compiled route: asynchronous (a future started in the
/// connection's slot) or synchronous (done when the call returns).
#[derive(Clone)]
pub(super) enum Handler {
    Async(BoxHandler),
    Sync(SyncHandler),
}

/// What became of a request given to a [`Handler`].
pub(super) enum Called {
    /// Its future was started in the slot, which must now be polled.
    Started,
    /// The handler is done (a synchronous one, which borrowed the request).
    Done(Request),
}

impl Handler {
    /// Runs the handler for `req`: a synchronous one completes, an asynchronous
    /// one starts its future in `slot`.
    #[inline]
    pub(super) fn call(&self, req: Request, slot: &mut Slot) -> Called {
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
    pub(super) fn into_async(self) -> BoxHandler {
        match self {
            Handler::Async(handler) => handler,
            // Runs in the call, so its future is empty and ready at once.
            Handler::Sync(handler) => Arc::new(move |req, _slot| handler(&req)),
        }
    }
}

pin_project_lite::pin_project! {
    /// A handler's (or middleware's) future: logs the handler's error, and drops
    /// the future as soon as it completes, so what it held is not kept in the
    /// connection's slot until the next message.
    #[project = LoggedProj]
    #[project_replace = LoggedReplace]
    pub(super) enum Logged<Fut> {
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
    pub(super) fn new(fut: Fut, conn_id: crate::message::ConnId, msg_id: MsgId) -> Self {
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

pub(super) fn sync<F, Out>(handler: F) -> SyncHandler
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

pub(super) fn boxed<F, Fut>(handler: F) -> BoxHandler
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
    use super::*;
    use crate::conn::tests::test_conn;
    use crate::message::Message;
    use crate::router::Router;
    use crate::router::tests::run;

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
