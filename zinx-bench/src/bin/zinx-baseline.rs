//! The yardstick: the smallest correct tokio echo server for Zinx framing, with no
//! framework. It checks every frame's length against the maximum and writes the
//! complete frames of each read back in one write (an echo reply is the request
//! frame itself: same ID, same data). `zinx`'s overhead is measured against it.
//!
//! ```text
//! zinx-baseline --addr 127.0.0.1:8999 [--format ltv] [--max-packet-size 4096]
//! ```

use clap::Parser;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use zinx_bench::{Format, HEADER};

#[derive(Parser)]
#[command(about = "Raw tokio echo server for Zinx frames (benchmark baseline)")]
struct Args {
    /// Address to listen on.
    #[arg(long, default_value = "127.0.0.1:8999")]
    addr: String,
    /// Packet layout.
    #[arg(long, value_enum, default_value = "tlv")]
    format: Format,
    /// Largest data length accepted (0 = unbounded).
    #[arg(long, default_value_t = 4096)]
    max_packet_size: u32,
}

#[tokio::main]
async fn main() -> std::io::Result<()> {
    let args = Args::parse();
    let listener = TcpListener::bind(&args.addr).await?;
    #[allow(clippy::print_stdout)]
    {
        println!("zinx-baseline listening on {}", listener.local_addr()?);
    }
    loop {
        tokio::select! {
            accepted = listener.accept() => {
                let Ok((stream, _)) = accepted else { continue };
                tokio::spawn(echo(stream, args.format, args.max_packet_size));
            }
            _ = tokio::signal::ctrl_c() => return Ok(()),
        }
    }
}

async fn echo(mut stream: TcpStream, format: Format, max: u32) {
    let _ = stream.set_nodelay(true);
    let mut buf: Vec<u8> = Vec::with_capacity(4096);
    loop {
        if buf.capacity() - buf.len() < 1024 {
            buf.reserve(4096);
        }
        match stream.read_buf(&mut buf).await {
            Ok(0) | Err(_) => return,
            Ok(_) => {}
        }
        // Find the end of the last complete frame, validating each header.
        let mut end = 0;
        while let Some((_, len)) = format.parse_header(&buf[end..]) {
            if max != 0 && len > max {
                return;
            }
            let frame = HEADER + len as usize;
            if buf.len() - end < frame {
                buf.reserve(frame - (buf.len() - end));
                break;
            }
            end += frame;
        }
        if end > 0 {
            if stream.write_all(&buf[..end]).await.is_err() {
                return;
            }
            buf.drain(..end);
        }
    }
}
