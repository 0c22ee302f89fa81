//! Middleware, groups and interceptors: an interceptor logs every message; a
//! global middleware times handlers; messages 100..=199 form an "admin" group
//! whose middleware requires the data to start with `secret:` and passes the
//! rest down the chain as a typed request value.
//!
//! ```text
//! cargo run --example middleware
//! ```

use std::time::Instant;

use zinx::router::Next;
use zinx::{Config, Request, Router, Server};

/// The command part of an admin message, put there by the group's middleware.
#[derive(Clone)]
struct Command(String);

#[tokio::main]
async fn main() -> Result<(), zinx::Error> {
    tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .init();
    let router = Router::new()
        .intercept(|req: Request, next: Next| async move {
            tracing::info!(conn_id = %req.conn().id(), msg_id = %req.msg_id(), len = req.data().len(), "in");
            next.run(req).await;
        })
        .middleware(|req: Request, next: Next| async move {
            let (id, started) = (req.msg_id(), Instant::now());
            next.run(req).await;
            tracing::info!(msg_id = %id, elapsed = ?started.elapsed(), "handled");
        })
        .route(1, |req: Request| async move {
            req.conn().send(1, req.data()).await
        })
        .group(100..=199, |admin| {
            admin
                .middleware(|mut req: Request, next: Next| async move {
                    let Some(cmd) = req.data().strip_prefix(b"secret:") else {
                        let _ = req.conn().send(403, "forbidden").await;
                        return; // abort: the handler never runs
                    };
                    let cmd = String::from_utf8_lossy(cmd).into_owned();
                    req.extensions_mut().insert(Command(cmd));
                    next.run(req).await;
                })
                .route(100, |req: Request| async move {
                    let cmd = req.extensions().get::<Command>().map(|c| c.0.clone());
                    let reply = format!("admin ran {}", cmd.unwrap_or_default());
                    req.conn().send(100, reply).await
                })
        });
    let config = Config {
        host: "127.0.0.1".into(),
        // Its own port, so it runs beside the echo server (8999).
        tcp_port: 9012,
        ..Config::default()
    };
    Server::builder(config)
        .router(router)
        .build()
        .serve(async {
            let _ = tokio::signal::ctrl_c().await;
        })
        .await
}
