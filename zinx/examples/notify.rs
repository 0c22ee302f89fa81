//! Notify: users log in with message 1 (data = user name); message 2 with data
//! `user:text` pushes `text` to that user as message 3. Shows binding user IDs to
//! connections and pushing by user ID (Zinx's `znotify`).
//!
//! ```text
//! cargo run --example notify    # listens on 127.0.0.1:9011
//! ```

use zinx::{Config, Request, Router, Server, UserId};

#[tokio::main]
async fn main() -> Result<(), zinx::Error> {
    tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .init();
    let router = Router::new()
        .route(1, |req: Request| async move {
            let user = String::from_utf8_lossy(req.data()).into_owned();
            if let Some(manager) = req.conn().manager() {
                manager.bind_user(user, req.conn().id())?;
            }
            req.conn().send(1, "logged in").await
        })
        .route(2, |req: Request| async move {
            let Some(manager) = req.conn().manager() else {
                return Ok(());
            };
            let text = String::from_utf8_lossy(req.data()).into_owned();
            let (to, body) = text.split_once(':').unwrap_or((&text, ""));
            let status = match manager.try_send_to_user(&UserId::from(to), 3, body.to_owned()) {
                Ok(()) => "delivered".to_owned(),
                Err(e) => format!("not delivered: {e}"),
            };
            req.conn().send(2, status).await
        });
    let config = Config {
        host: "127.0.0.1".into(),
        // Its own port, so it runs beside the echo server (8999).
        tcp_port: 9011,
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
