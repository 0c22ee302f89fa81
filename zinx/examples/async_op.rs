//! Async ops (Zinx's `zasync_op`): message 1 looks a key up in a "database" that
//! blocks for 200 ms; the lookup runs on the blocking pool while the connection
//! keeps handling messages, and its result comes back as message 2 in the
//! connection's handler context, in request order.
//!
//! ```text
//! cargo run --example async_op
//! ```

use std::time::Duration;

use zinx::{Config, Request, Router, Server};

/// A stand-in for a blocking database client.
fn blocking_lookup(key: &[u8]) -> String {
    std::thread::sleep(Duration::from_millis(200));
    format!("value of {}", String::from_utf8_lossy(key))
}

#[tokio::main]
async fn main() -> Result<(), zinx::Error> {
    tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .init();
    let router = Router::new()
        .route(1, |req: Request| async move {
            let key = req.data().clone();
            req.conn().async_op(
                move || blocking_lookup(&key),
                |conn, value| async move {
                    let _ = conn.send(2, value).await;
                },
            )
        })
        .route(3, |req: Request| async move {
            // Answered at once, even while lookups are running.
            req.conn().send(3, "pong").await
        });
    let config = Config {
        host: "127.0.0.1".into(),
        // Its own port, so it runs beside the echo server (8999).
        tcp_port: 9013,
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
