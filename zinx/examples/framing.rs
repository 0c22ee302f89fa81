//! Pluggable framing: the same router served over HTLV+CRC (Zinx's decoder
//! example protocol: header, function code = message ID, length, body, CRC-16)
//! on port 9030, over text lines (every line is message 1) on port 9031, and
//! over tokio-util's `LengthDelimitedCodec` (a 4-byte big-endian length, then a
//! 2-byte big-endian message ID and the data) on port 9032.
//!
//! ```text
//! cargo run --example framing
//! printf 'hello\n' | nc 127.0.0.1 9031          # replies HELLO
//! # length 7, ID 1, "hello"; replies length 7, ID 1, "HELLO":
//! printf '\0\0\0\7\0\1hello' | nc 127.0.0.1 9032 | od -c
//! ```

use std::sync::Arc;

use tokio_util::codec::LengthDelimitedCodec;
use zinx::framing::{ByteOrder, DelimiterCodec, HtlvCrcCodec, IdPrefix, MappedCodec};
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
        Server::builder(config(9030))
            .router(router.clone())
            .framing(HtlvCrcCodec::new(0xA2))
            .build()
            .serve(stop()),
        Server::builder(config(9031))
            .router(router.clone())
            .framing(DelimiterCodec::lines(1024).message_id(1))
            .build()
            .serve(stop()),
        Server::builder(config(9032))
            .router(router)
            // Any tokio-util codec with a mapper; its own maximum bounds what a
            // half-sent frame reserves (see MappedCodec).
            .framing(MappedCodec::new(
                LengthDelimitedCodec::builder()
                    .max_frame_length(4096)
                    .new_codec(),
                IdPrefix::new(2, ByteOrder::BigEndian),
            ))
            .build()
            .serve(stop()),
    )
    .map(|_| ())
}
