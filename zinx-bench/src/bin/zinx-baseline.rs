//! The yardstick: the smallest correct tokio echo server for Zinx framing, with no
//! framework. It checks every frame's length against the maximum and writes the
//! complete frames of each read back in one write (an echo reply is the request
//! frame itself: same ID, same data). `zinx`'s overhead is measured against it.
//!
//! `--transport tls` does the same over tokio-rustls (`--cert`, `--key`: PEM
//! files). `--transport ws` (and `wss`, over TLS) reads binary WebSocket
//! messages as one byte stream, as zinx does, and sends each complete frame back
//! as one binary message, the frames of a read flushed together; it accepts the
//! upgrade on any path.
//!
//! ```text
//! zinx-baseline --addr 127.0.0.1:8999 [--format ltv] [--max-packet-size 4096]
//! zinx-baseline --transport tls --cert cert.pem --key key.pem
//! ```

use std::path::PathBuf;
use std::sync::Arc;

use bytes::BytesMut;
use clap::Parser;
use futures_util::{SinkExt, StreamExt};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio_rustls::TlsAcceptor;
use tokio_tungstenite::tungstenite::Message;
use zinx_bench::net::{self, Transport};
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
    /// What the connections speak.
    #[arg(long, value_enum, default_value = "tcp")]
    transport: Transport,
    /// tls, wss: the certificate chain (PEM).
    #[arg(long, required_if_eq_any = [("transport", "tls"), ("transport", "wss")])]
    cert: Option<PathBuf>,
    /// tls, wss: the certificate's private key (PEM).
    #[arg(long, required_if_eq_any = [("transport", "tls"), ("transport", "wss")])]
    key: Option<PathBuf>,
}

#[tokio::main]
async fn main() -> Result<(), String> {
    let args = Args::parse();
    if args.transport == Transport::Kcp {
        return Err(
            "zinx-baseline serves no KCP: scripts/bench-kcp.sh compares KCP with TCP \
                    on one zinx server"
                .to_owned(),
        );
    }
    let tls = match (args.transport.tls(), &args.cert, &args.key) {
        (true, Some(cert), Some(key)) => Some(TlsAcceptor::from(Arc::new(net::tls_server_config(
            cert, key,
        )?))),
        _ => None,
    };
    let listener = TcpListener::bind(&args.addr)
        .await
        .map_err(|e| format!("bind {}: {e}", args.addr))?;
    #[allow(clippy::print_stdout)]
    {
        let addr = listener.local_addr().map_err(|e| e.to_string())?;
        println!("zinx-baseline listening on {addr} ({:?})", args.transport);
    }
    // Made once: a signal that came between two accepts would be missed by a
    // future made anew each turn, and the handler installed would ignore it.
    let ctrl_c = tokio::signal::ctrl_c();
    tokio::pin!(ctrl_c);
    loop {
        tokio::select! {
            accepted = listener.accept() => {
                let Ok((stream, _)) = accepted else { continue };
                let (format, max) = (args.format, args.max_packet_size);
                tokio::spawn(serve(stream, args.transport, tls.clone(), format, max));
            }
            _ = &mut ctrl_c => return Ok(()),
        }
    }
}

/// One connection: its handshakes, then the echo.
async fn serve(
    stream: TcpStream,
    transport: Transport,
    tls: Option<TlsAcceptor>,
    format: Format,
    max: u32,
) {
    let _ = stream.set_nodelay(true);
    match (transport, tls) {
        (Transport::Tcp, _) => echo(stream, format, max).await,
        (Transport::Ws, _) => {
            if let Ok(ws) =
                tokio_tungstenite::accept_async_with_config(stream, Some(net::ws_config())).await
            {
                ws_echo(ws, format, max).await;
            }
        }
        (Transport::Tls, Some(tls)) => {
            if let Ok(stream) = tls.accept(stream).await {
                echo(stream, format, max).await;
            }
        }
        (Transport::Wss, Some(tls)) => {
            let Ok(stream) = tls.accept(stream).await else {
                return;
            };
            if let Ok(ws) =
                tokio_tungstenite::accept_async_with_config(stream, Some(net::ws_config())).await
            {
                ws_echo(ws, format, max).await;
            }
        }
        // main makes an acceptor for every TLS transport.
        (Transport::Tls | Transport::Wss, None) | (Transport::Kcp, _) => {}
    }
}

/// The end of the last complete frame at the start of `buf`, each header
/// validated, and how many more bytes than `buf` holds the frame after it
/// needs; `None` for a frame longer than `max`.
fn complete_frames(buf: &[u8], format: Format, max: u32) -> Option<(usize, usize)> {
    let mut end = 0;
    while let Some((_, len)) = format.parse_header(&buf[end..]) {
        if max != 0 && len > max {
            return None;
        }
        let frame = HEADER + len as usize;
        if buf.len() - end < frame {
            return Some((end, frame - (buf.len() - end)));
        }
        end += frame;
    }
    Some((end, 0))
}

/// Echoes the complete frames of each read in one write (TCP and TLS).
async fn echo<S: AsyncRead + AsyncWrite + Unpin>(mut stream: S, format: Format, max: u32) {
    let mut buf: Vec<u8> = Vec::with_capacity(4096);
    loop {
        if buf.capacity() - buf.len() < 1024 {
            buf.reserve(4096);
        }
        match stream.read_buf(&mut buf).await {
            Ok(0) | Err(_) => return,
            Ok(_) => {}
        }
        let Some((end, more)) = complete_frames(&buf, format, max) else {
            return;
        };
        buf.reserve(more);
        if end > 0 {
            // TLS keeps what the socket did not take at once until a flush
            // (on TCP the flush does nothing).
            if stream.write_all(&buf[..end]).await.is_err() || stream.flush().await.is_err() {
                return;
            }
            buf.drain(..end);
        }
    }
}

/// Reads binary messages as one byte stream and sends each complete frame back
/// as one binary message; the replies to the messages already received are
/// flushed together, as a TCP echo writes the frames of a read at once.
async fn ws_echo<S: AsyncRead + AsyncWrite + Unpin>(
    mut ws: tokio_tungstenite::WebSocketStream<S>,
    format: Format,
    max: u32,
) {
    let mut buf = BytesMut::new();
    let mut unflushed = false;
    loop {
        let next = match net::next_now(&mut ws).await {
            Some(next) => next,
            None => {
                if unflushed && ws.flush().await.is_err() {
                    return;
                }
                unflushed = false;
                ws.next().await
            }
        };
        match next {
            Some(Ok(Message::Binary(data))) => buf.extend_from_slice(&data),
            // Pings are answered by the next flush.
            Some(Ok(Message::Ping(_) | Message::Pong(_) | Message::Frame(_))) => continue,
            Some(Ok(Message::Close(_) | Message::Text(_)) | Err(_)) | None => return,
        }
        let Some((mut end, more)) = complete_frames(&buf, format, max) else {
            return;
        };
        buf.reserve(more);
        while end > 0 {
            let (_, len) = format.parse_header(&buf).unwrap_or_default();
            let frame = HEADER + len as usize;
            if ws
                .feed(Message::Binary(buf.split_to(frame).freeze()))
                .await
                .is_err()
            {
                return;
            }
            unflushed = true;
            end = end.saturating_sub(frame);
        }
    }
}
