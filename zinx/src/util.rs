//! Small helpers shared by the modules: panics caught and named, a lock that
//! does not care about poisoning.

use std::any::Any;
use std::future::Future;
use std::panic::AssertUnwindSafe;
use std::pin::Pin;

use futures_util::FutureExt;

pub(crate) type BoxFuture = Pin<Box<dyn Future<Output = ()> + Send + 'static>>;

/// Calls `make` now and returns a future that awaits what it made, turning a
/// panic in either into an `Err` with the panic message.
pub(crate) fn catch_panic(
    make: impl FnOnce() -> BoxFuture,
) -> impl Future<Output = Result<(), String>> + Send + 'static {
    await_catching(call_catching(make))
}

/// The synchronous half of [`catch_panic`]: calls `make`.
pub(crate) fn call_catching(make: impl FnOnce() -> BoxFuture) -> Result<BoxFuture, String> {
    std::panic::catch_unwind(AssertUnwindSafe(make)).map_err(|p| panic_message(&*p))
}

/// The asynchronous half of [`catch_panic`]: awaits what `make` made.
pub(crate) async fn await_catching(made: Result<BoxFuture, String>) -> Result<(), String> {
    AssertUnwindSafe(made?)
        .catch_unwind()
        .await
        .map_err(|p| panic_message(&*p))
}

/// Locks a mutex whose guarded state stays consistent even if a panic happened
/// while it was held (every user changes it in single steps), so a poisoned lock
/// is simply taken.
pub(crate) fn lock<T>(mutex: &std::sync::Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// The text of a panic payload.
pub(crate) fn panic_message(panic: &(dyn Any + Send)) -> String {
    if let Some(s) = panic.downcast_ref::<&str>() {
        (*s).to_owned()
    } else if let Some(s) = panic.downcast_ref::<String>() {
        s.clone()
    } else {
        "non-string panic payload".to_owned()
    }
}
