//! Heartbeat on both sides: the server pings every second and closes peers silent
//! for 5 s; a client in the same process pings back and logs the server's pings
//! (message 99999). Stop it after a few seconds with Ctrl-C.
//!
//! ```text
//! RUST_LOG=debug cargo run --example heartbeat
//! ```

use std::time::Duration;

use tokio::net::TcpListener;
use zinx::{Client, Config, Heartbeat, Request, Router, Server};

#[tokio::main]
async fn main() -> Result<(), zinx::Error> {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .with_writer(std::io::stderr)
        .init();
    let listener = TcpListener::bind("127.0.0.1:0").await?;
    let addr = listener.local_addr()?;
    let server = Server::builder(Config::default())
        .heartbeat(
            Heartbeat::new(Duration::from_secs(1))
                .max_silence(Duration::from_secs(5))
                .on_dead(|conn| {
                    tracing::warn!(conn_id = %conn.id(), "client went silent, closing");
                    conn.close();
                }),
        )
        .build();
    let server = tokio::spawn(server.run(listener, async {
        let _ = tokio::signal::ctrl_c().await;
    }));

    let client = Client::builder(addr.to_string())
        .heartbeat(Heartbeat::new(Duration::from_secs(1)).payload(|_| "client ping".into()))
        .router(Router::new().route(99999, |req: Request| async move {
            tracing::info!(data = %String::from_utf8_lossy(req.data()), "server heartbeat");
        }))
        .connect()
        .await?;
    let served = server.await;
    client.close().await;
    served.map_err(|e| zinx::Error::Io(std::io::Error::other(e)))?
}
