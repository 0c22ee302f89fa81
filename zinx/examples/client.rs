//! A Zinx echo client: sends `--count` echo requests (message ID 1, sizes varied up
//! to 4000 bytes) to any Zinx echo server, ours or Go Zinx, over TCP, TLS,
//! WebSocket (ws) or WebSocket over TLS (wss), checks every reply, prints a
//! summary and exits 0 only when every reply matched.
//!
//! ```text
//! cargo run --release --example client -- --addr 127.0.0.1:8999 --count 1000 [--format ltv]
//! cargo run --release --features tls --example client -- --transport tls --addr 127.0.0.1:8443 --ca cert.pem
//! cargo run --release --features ws --example client -- --transport ws --addr 127.0.0.1:9000 [--path /]
//! cargo run --release --features tls,ws --example client -- --transport wss --addr 127.0.0.1:9443 --ca cert.pem
//! ```

use std::process::ExitCode;
use std::time::{Duration, Instant};

use clap::{Parser, ValueEnum};
use zinx::{Client, ClientBuilder, Layout};

#[derive(Clone, Copy, Debug, ValueEnum)]
enum Transport {
    Tcp,
    /// TLS over TCP (needs the `tls` feature).
    Tls,
    /// WebSocket (needs the `ws` feature).
    Ws,
    /// WebSocket over TLS (needs the `tls` and `ws` features).
    Wss,
}

#[derive(Parser)]
#[command(about = "Send echo requests to a Zinx server and check every reply")]
struct Args {
    /// Server address (host:port; with TLS the host is the name the server's
    /// certificate must carry: a DNS name or an IP address).
    #[arg(long, default_value = "127.0.0.1:8999")]
    addr: String,
    /// How to reach it.
    #[arg(long, value_enum, default_value = "tcp")]
    transport: Transport,
    /// TLS and wss: trust this PEM certificate (a CA's or the server's own)
    /// instead of the platform's roots.
    #[arg(long, value_name = "FILE")]
    ca: Option<std::path::PathBuf>,
    /// ws and wss: the path to upgrade at (the server's `WsPath`).
    #[arg(long, default_value = "/")]
    path: String,
    /// Number of requests.
    #[arg(long, default_value_t = 3)]
    count: u32,
    /// Message ID of the requests (and of the expected replies).
    #[arg(long, default_value_t = 1)]
    msg_id: u32,
    /// Packet layout: tlv or ltv.
    #[arg(long, default_value = "tlv")]
    format: Layout,
    /// Seconds to wait for each reply.
    #[arg(long, default_value_t = 5)]
    timeout: u64,
    /// Print every reply.
    #[arg(long)]
    verbose: bool,
}

/// Payload `i`: a size from 0 to 4000 and bytes that depend on `i` and position,
/// so a reply from another request or a shifted reply cannot match.
fn payload(i: u32) -> Vec<u8> {
    let mut x = i.wrapping_mul(2_654_435_761).wrapping_add(1);
    x ^= x >> 13;
    let len = (x % 4001) as usize;
    (0..len).map(|p| (i as usize + p * 7) as u8).collect()
}

/// TLS as asked: the `--ca` certificate, else the platform's roots.
#[cfg(feature = "tls")]
fn with_tls(builder: ClientBuilder, args: &Args) -> Result<ClientBuilder, String> {
    use zinx::transport::tls::TlsClient;
    let tls = match &args.ca {
        Some(ca) => TlsClient::trust_pem_file(ca),
        None => TlsClient::platform_roots(),
    };
    tls.map(|tls| builder.tls(tls)).map_err(|e| e.to_string())
}

#[cfg(not(feature = "tls"))]
fn with_tls(_: ClientBuilder, _: &Args) -> Result<ClientBuilder, String> {
    Err("built without TLS: run it with `--features tls`".to_owned())
}

/// WebSocket at `--path`.
#[cfg(feature = "ws")]
fn with_ws(builder: ClientBuilder, args: &Args) -> Result<ClientBuilder, String> {
    Ok(builder.ws(args.path.as_str()))
}

#[cfg(not(feature = "ws"))]
fn with_ws(_: ClientBuilder, _: &Args) -> Result<ClientBuilder, String> {
    Err("built without WebSocket: run it with `--features ws`".to_owned())
}

#[allow(clippy::print_stdout)]
#[tokio::main]
async fn main() -> ExitCode {
    let args = Args::parse();
    let builder = Client::builder(args.addr.clone()).layout(args.format);
    let builder = match args.transport {
        Transport::Tcp | Transport::Ws if args.ca.is_some() => {
            Err("--ca needs --transport tls or wss".to_owned())
        }
        Transport::Tcp => Ok(builder),
        Transport::Tls => with_tls(builder, &args),
        Transport::Ws => with_ws(builder, &args),
        Transport::Wss => with_ws(builder, &args).and_then(|b| with_tls(b, &args)),
    };
    let builder = match builder {
        Ok(builder) => builder,
        Err(e) => {
            eprintln!("client: {e}");
            return ExitCode::from(2);
        }
    };
    let client = match builder.connect().await {
        Ok(client) => client,
        Err(e) => {
            eprintln!("client: cannot connect to {}: {e}", args.addr);
            return ExitCode::FAILURE;
        }
    };
    let timeout = Duration::from_secs(args.timeout);
    let started = Instant::now();
    let (mut ok, mut mismatched, mut failed) = (0u32, 0u32, 0u32);
    for i in 0..args.count {
        let data = payload(i);
        match client
            .request(args.msg_id, data.clone(), args.msg_id, timeout)
            .await
        {
            Ok(reply) if reply.data[..] == data[..] => {
                ok += 1;
                if args.verbose {
                    println!("reply {i}: msgID={} len={}", reply.id, reply.data.len());
                }
            }
            Ok(reply) => {
                mismatched += 1;
                println!(
                    "reply {i}: mismatch: sent {} bytes, got {} bytes",
                    data.len(),
                    reply.data.len()
                );
            }
            Err(e) => {
                failed += 1;
                println!("request {i}: {e}");
                if e.is_closed() {
                    break;
                }
            }
        }
    }
    let elapsed = started.elapsed();
    println!(
        "{} requests to {} ({:?}, {:?}): {ok} ok, {mismatched} mismatched, {failed} failed in {:.3}s ({:.0} req/s)",
        args.count,
        args.addr,
        args.transport,
        args.format,
        elapsed.as_secs_f64(),
        f64::from(ok) / elapsed.as_secs_f64().max(1e-9)
    );
    client.close().await;
    if ok == args.count {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    }
}
