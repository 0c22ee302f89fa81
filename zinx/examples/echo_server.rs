//! The Zinx echo server.
//!
//! Reads zinx.json the Zinx way (`ZINX_CONFIG_FILE_PATH`, else `./conf/zinx.json`,
//! else defaults), echoes message ID 1 with a synchronous handler (it awaits
//! nothing, like Zinx's handlers; its `try_send` may go past the send queue's
//! bound, up to twice it, and the reader then waits for room before the next
//! message) and message ID 2 with an
//! async handler that awaits `send` (waits when the send queue is full), and
//! stops on SIGINT or SIGTERM after flushing every connection.
//!
//! It serves every listener its zinx.json enables by `Mode`: TCP on
//! `Host:TCPPort` (`"tcp"`, the default), WebSocket on `Host:WsPort` at
//! `WsPath` (`"websocket"`; needs the `ws` feature), or both (`""` or
//! `"tcp,websocket"`); TLS and wss when `CertFile` and `PrivateKeyFile` are set
//! (needs the `tls` feature). A transport this build lacks is an error at
//! startup. It prints one line per listener, with its address.
//!
//! ```text
//! cargo run --release --example echo_server [-- --format ltv]
//! ZINX_CONFIG_FILE_PATH=conf/zinx-ws.json cargo run --release --features ws --example echo_server
//! ZINX_CONFIG_FILE_PATH=conf/zinx-tls.json cargo run --release --features tls,ws --example echo_server
//! ```

use clap::Parser;
use tracing_subscriber::EnvFilter;
use zinx::{Config, Layout, Request, Router, Server};

#[derive(Parser)]
#[command(
    about = "Zinx echo server: msgID 1 echoed by a synchronous handler, msgID 2 by an async one"
)]
struct Args {
    /// Packet layout: tlv (big-endian, Zinx default) or ltv (little-endian, classic Zinx).
    #[arg(long, default_value = "tlv")]
    format: Layout,
}

#[tokio::main]
async fn main() -> std::process::ExitCode {
    let args = Args::parse();
    match run(args).await {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("echo_server: {e}");
            std::process::ExitCode::FAILURE
        }
    }
}

async fn run(args: Args) -> Result<(), zinx::Error> {
    let config = Config::load()?;
    // RUST_LOG, when set, wins over the config's LogIsolationLevel.
    let filter = EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| EnvFilter::new(config.log_level().to_string()));
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .init();

    let router = Router::new()
        .route_sync(1, |req: &Request| {
            req.conn().try_send(req.msg_id(), req.data())
        })
        .route(2, |req: Request| async move {
            req.conn().send(req.msg_id(), req.data()).await
        });
    let listeners = zinx::server::bind_listeners(&config).await?;
    let server = Server::builder(config)
        .router(router)
        .layout(args.format)
        .build();
    let shutdown = shutdown_signal();
    for listener in &listeners {
        let (addr, transport) = (listener.local_addr()?, listener.transport());
        let path = listener
            .ws_path()
            .map(|path| format!(" at {path}"))
            .unwrap_or_default();
        #[allow(clippy::print_stdout)]
        {
            println!(
                "zinx echo server listening on {addr} ({transport}{path}, {:?})",
                args.format
            );
        }
    }
    server.run_all(listeners, shutdown).await
}

/// Completes on SIGINT or SIGTERM (Ctrl-C elsewhere). The handlers are installed
/// when this is called, not when it is first polled, so a signal that arrives
/// right after the address is printed is not lost.
fn shutdown_signal() -> impl std::future::Future<Output = ()> {
    #[cfg(unix)]
    let signals = {
        use tokio::signal::unix::{SignalKind, signal};
        signal(SignalKind::interrupt()).and_then(|int| Ok((int, signal(SignalKind::terminate())?)))
    };
    async move {
        #[cfg(unix)]
        match signals {
            Ok((mut int, mut term)) => {
                // Cancel-safe: Signal::recv loses no signal when dropped.
                tokio::select! {
                    _ = int.recv() => {}
                    _ = term.recv() => {}
                }
            }
            Err(e) => {
                tracing::warn!(error = %e, "cannot install signal handlers, using Ctrl-C");
                let _ = tokio::signal::ctrl_c().await;
            }
        }
        #[cfg(not(unix))]
        let _ = tokio::signal::ctrl_c().await;
        tracing::info!("shutdown signal received");
    }
}
