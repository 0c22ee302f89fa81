//! A minimal Zinx client: sends `--count` pings (message ID `--msg-id`) to a Zinx
//! server, ours or Go Zinx, and prints each reply.
//!
//! ```text
//! cargo run --release --example client -- --addr 127.0.0.1:8999 --count 3 [--format ltv]
//! ```

use std::time::Duration;

use bytes::BytesMut;
use clap::Parser;
use futures_util::StreamExt;
use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;
use tokio_util::codec::FramedRead;
use zinx::{Codec, Layout, MsgId};

#[derive(Parser)]
#[command(about = "Ping a Zinx server and print the replies")]
struct Args {
    /// Server address.
    #[arg(long, default_value = "127.0.0.1:8999")]
    addr: String,
    /// Number of pings.
    #[arg(long, default_value_t = 3)]
    count: u32,
    /// Message ID of the pings.
    #[arg(long, default_value_t = 1)]
    msg_id: u32,
    /// Packet layout: tlv or ltv.
    #[arg(long, default_value = "tlv")]
    format: Layout,
    /// Seconds to wait for each reply.
    #[arg(long, default_value_t = 5)]
    timeout: u64,
}

#[allow(clippy::print_stdout)]
#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args = Args::parse();
    let codec = Codec::new(args.format, 0);
    let stream = TcpStream::connect(&args.addr).await?;
    stream.set_nodelay(true)?;
    let (r, mut w) = stream.into_split();
    let mut replies = FramedRead::new(r, codec);
    for i in 0..args.count {
        let data = format!("ping {i}");
        let mut frame = BytesMut::new();
        codec.encode_into(MsgId(args.msg_id), data.as_bytes(), &mut frame)?;
        w.write_all(&frame).await?;
        let reply = tokio::time::timeout(Duration::from_secs(args.timeout), replies.next())
            .await
            .map_err(|_| format!("no reply to ping {i} within {}s", args.timeout))?
            .ok_or("server closed the connection")??;
        println!(
            "reply: msgID={} len={} data={:?}",
            reply.id,
            reply.data.len(),
            String::from_utf8_lossy(&reply.data)
        );
    }
    Ok(())
}
