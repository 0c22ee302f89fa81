//! Several servers in one process (Zinx's multi-port example): a TLV server on
//! 9020 and an LTV server on 9021 share one router (and its state); a third on
//! 9022 has a router of its own. Ctrl-C stops all three.
//!
//! ```text
//! cargo run --example multi_port
//! ```

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use tokio_util::sync::CancellationToken;
use zinx::{Config, Layout, Request, Router, Server};

fn config(port: u16) -> Config {
    Config {
        host: "127.0.0.1".into(),
        tcp_port: port,
        ..Config::default()
    }
}

#[tokio::main]
async fn main() -> Result<(), zinx::Error> {
    tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .init();
    let served = Arc::new(AtomicU64::new(0));
    let shared = Arc::new(Router::new().route(1, move |req: Request| {
        let n = served.fetch_add(1, Ordering::Relaxed) + 1;
        async move {
            let text = format!("{n} messages served on the shared router");
            req.conn().send(1, text).await
        }
    }));
    let own = Router::new().route(1, |req: Request| async move {
        req.conn().send(1, req.data()).await
    });

    let stop = CancellationToken::new();
    let shutdown = |stop: &CancellationToken| {
        let stop = stop.clone();
        async move { stop.cancelled().await }
    };
    let servers = tokio::try_join!(
        Server::builder(config(9020))
            .router(shared.clone())
            .build()
            .serve(shutdown(&stop)),
        Server::builder(config(9021))
            .router(shared)
            .layout(Layout::Ltv)
            .build()
            .serve(shutdown(&stop)),
        Server::builder(config(9022))
            .router(own)
            .build()
            .serve(shutdown(&stop)),
        async {
            let _ = tokio::signal::ctrl_c().await;
            stop.cancel();
            Ok(())
        },
    );
    servers.map(|_| ())
}
