//! Pluggable framing: the same router served over HTLV+CRC (Zinx's decoder
//! example protocol: header, function code = message ID, length, body, CRC-16)
//! on port 8999 and over text lines (every line is message 1) on port 9000.
//!
//! ```text
//! cargo run --example framing
//! printf 'hello\n' | nc 127.0.0.1 9000          # replies HELLO
//! ```

use std::sync::Arc;

use zinx::framing::{DelimiterCodec, HtlvCrcCodec};
use zinx::{Config, Request, Router, Server};

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
    let router = Arc::new(
        Router::new()
            .route(1, |req: Request| async move {
                req.conn().send(1, req.data().to_ascii_uppercase()).await
            })
            .route(0x10, |req: Request| async move {
                // An HTLV device reading: reply with the sum of the body bytes.
                let sum = req.data().iter().fold(0u8, |a, b| a.wrapping_add(*b));
                req.conn().send(0x10, vec![sum]).await
            }),
    );
    let stop = || async {
        let _ = tokio::signal::ctrl_c().await;
    };
    tokio::try_join!(
        Server::builder(config(8999))
            .router(router.clone())
            .framing(HtlvCrcCodec::new(0xA2))
            .build()
            .serve(stop()),
        Server::builder(config(9000))
            .router(router)
            .framing(DelimiterCodec::lines(1024).message_id(1))
            .build()
            .serve(stop()),
    )
    .map(|_| ())
}
