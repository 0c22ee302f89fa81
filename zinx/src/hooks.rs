//! Connection hooks: `on_connect` and `on_disconnect` (Zinx's `SetOnConnStart` /
//! `SetOnConnStop`).
//!
//! The connection task calls each hook exactly once per connection: `on_connect`
//! before the first message is read (it may send, which starts the writer); `on_disconnect` after the writer has finished and the connection has left
//! the manager, while its properties are still readable. No framework lock is held
//! while a hook runs. A panicking hook is logged and harms no other connection; a
//! panic in `on_connect` closes its own connection, whose setup is incomplete.

use std::future::Future;
use std::sync::Arc;

use crate::conn::Connection;
use crate::util::BoxFuture;

type Hook = Arc<dyn Fn(Connection) -> BoxFuture + Send + Sync>;

/// The hooks of one server.
#[derive(Clone, Default)]
pub(crate) struct Hooks {
    on_connect: Option<Hook>,
    on_disconnect: Option<Hook>,
}

pub(crate) fn boxed<F, Fut>(hook: F) -> Hook
where
    F: Fn(Connection) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = ()> + Send + 'static,
{
    Arc::new(move |conn| Box::pin(hook(conn)))
}

impl Hooks {
    pub(crate) fn set_on_connect(&mut self, hook: Hook) {
        self.on_connect = Some(hook);
    }

    pub(crate) fn set_on_disconnect(&mut self, hook: Hook) {
        self.on_disconnect = Some(hook);
    }

    /// Runs `on_connect`; a panic in it closes the connection, since whatever
    /// state it was setting up is missing.
    pub(crate) async fn connect(&self, conn: &Connection) {
        if !run(self.on_connect.as_ref(), conn, "on_connect").await {
            conn.close();
        }
    }

    pub(crate) async fn disconnect(&self, conn: &Connection) {
        run(self.on_disconnect.as_ref(), conn, "on_disconnect").await;
    }
}

/// Runs a hook if set; false if it panicked.
async fn run(hook: Option<&Hook>, conn: &Connection, name: &'static str) -> bool {
    let Some(hook) = hook else { return true };
    let call = conn.clone();
    match crate::util::catch_panic(|| hook(call)).await {
        Ok(()) => true,
        Err(panic) => {
            tracing::error!(conn_id = %conn.id(), hook = name, %panic, "hook panicked");
            false
        }
    }
}
