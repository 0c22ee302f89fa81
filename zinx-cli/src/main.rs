//! `zinx-cli`: try a Zinx server by hand (ours or Go Zinx, either packet
//! layout). Sends a message with text, hex or a file as data and prints every
//! message that comes back, one line each; interactive mode sends a message per
//! line typed. When a reply looks like the other packet layout, it says so.
//!
//! ```text
//! zinx-cli --addr 127.0.0.1:8999 send 1 --text hello
//! zinx-cli --addr 127.0.0.1:8999 --format ltv send 2 --hex 0a0b0c --expect 1
//! zinx-cli --addr 127.0.0.1:8999 repl
//! ```
//!
//! Messages go to stdout (`-> ` sent, `<- ` received); errors and hints go to
//! stderr. Exit status: 0 done; 1 no connection, a reply that could not be
//! decoded, fewer replies than `--expect`, or (interactive) the server closing
//! the connection before the input ended; 2 invalid arguments or data.

// No unwrap or expect on anything the server, a file or the user can influence.
#![warn(clippy::unwrap_used, clippy::expect_used)]

mod input;
mod layout;
mod session;
mod show;

use std::io::{BufRead, IsTerminal};
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use clap::{ArgGroup, Parser, Subcommand};
use tokio::sync::mpsc;
use tokio::time::Instant;
use zinx::Layout;

use crate::input::{LINE_HELP, Line, Source};
use crate::session::{Ended, Options, Session, Transport};

/// Exit status for a failure talking to the server.
const FAILED: u8 = 1;
/// Exit status for invalid arguments or data (clap's own).
const USAGE: u8 = 2;

/// How long to wait for replies after the last message, by default.
const DEFAULT_WAIT: Duration = Duration::from_secs(1);
/// The same with `--expect`, which stops as soon as the replies are in, so
/// waiting longer costs nothing when they come.
const EXPECT_WAIT: Duration = Duration::from_secs(5);

#[derive(Parser)]
#[command(
    name = "zinx-cli",
    version,
    about = "Send messages to a Zinx server and print what comes back",
    after_help = "Without a subcommand, zinx-cli runs interactively (repl).\n\n\
                  Exit status: 0 done; 1 no connection, a reply that could not be decoded, \
                  fewer replies than --expect, or (repl) the server closing the connection \
                  first; 2 invalid arguments or data."
)]
struct Args {
    /// Server address, HOST:PORT.
    #[arg(long, global = true, default_value = "127.0.0.1:8999")]
    addr: String,
    /// Packet layout: tlv ([id u32 BE][len u32 BE], Go Zinx's default) or ltv
    /// ([len u32 LE][id u32 LE], classic Zinx).
    #[arg(long, global = true, default_value = "tlv")]
    format: Layout,
    /// Transport: tcp (the only one of this build).
    #[arg(long, global = true, default_value = "tcp")]
    transport: Transport,
    /// Largest data length a message may carry, sent or received; a reply
    /// announcing more is an error, and a sign of the other packet layout.
    #[arg(long, global = true, default_value_t = 1 << 20,
          value_parser = clap::value_parser!(u32).range(1..))]
    max_len: u32,
    /// Print all of every message's data (long data is cut short otherwise).
    #[arg(long, global = true, visible_alias = "raw")]
    full: bool,
    /// Seconds to wait for replies after the last message sent (fractions
    /// allowed) [default: 1, or 5 with --expect].
    #[arg(long, global = true, value_name = "SECS", value_parser = parse_wait)]
    wait: Option<Duration>,
    #[command(subcommand)]
    command: Option<Command>,
}

#[derive(Subcommand)]
enum Command {
    /// Send one message, print what comes back within --wait, and exit.
    Send(SendArgs),
    /// Send a message per line read from stdin, printing replies as they
    /// come (the default).
    #[command(after_help = format!("Lines:\n{LINE_HELP}\n\nAt the end of the input it waits --wait for replies, then exits."))]
    Repl,
}

#[derive(clap::Args)]
#[command(group = ArgGroup::new("data").multiple(false))]
struct SendArgs {
    /// Message ID: 0 to 4294967295, decimal or 0x hex.
    #[arg(value_parser = input::parse_id)]
    id: u32,
    /// Data: this text, as UTF-8 (default: no data).
    #[arg(long, group = "data", allow_hyphen_values = true)]
    text: Option<String>,
    /// Data: these bytes in hex, e.g. 0a0b0c.
    #[arg(long, group = "data")]
    hex: Option<String>,
    /// Data: the content of this file.
    #[arg(long, group = "data")]
    file: Option<PathBuf>,
    /// Stop once this many replies have come; fewer within --wait is a
    /// failure.
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u32).range(1..))]
    expect: Option<u32>,
}

impl SendArgs {
    fn source(&self) -> Source {
        match (&self.text, &self.hex, &self.file) {
            (_, Some(hex), _) => Source::Hex(hex.clone()),
            (_, _, Some(path)) => Source::File(path.clone()),
            (text, _, _) => Source::Text(text.clone().unwrap_or_default()),
        }
    }
}

fn parse_wait(s: &str) -> Result<Duration, String> {
    s.parse::<f64>()
        .ok()
        .and_then(|secs| Duration::try_from_secs_f64(secs).ok())
        .ok_or_else(|| format!("{s:?} is not a number of seconds (0 or more)"))
}

#[tokio::main(flavor = "current_thread")]
async fn main() -> ExitCode {
    let args = Args::parse();
    let opts = Options {
        addr: args.addr,
        transport: args.transport,
        layout: args.format,
        max_len: args.max_len,
        full: args.full,
    };
    match args.command {
        Some(Command::Send(send)) => one_shot(opts, &send, args.wait).await,
        Some(Command::Repl) | None => interactive(opts, args.wait.unwrap_or(DEFAULT_WAIT)).await,
    }
}

async fn connect(opts: Options) -> Option<Session> {
    let (addr, transport) = (opts.addr.clone(), opts.transport);
    match Session::connect(opts).await {
        Ok(session) => Some(session),
        Err(e) => {
            eprintln!("zinx-cli: cannot connect to {addr} ({transport}): {e}");
            None
        }
    }
}

/// `send`: one message, then the replies.
async fn one_shot(opts: Options, args: &SendArgs, wait: Option<Duration>) -> ExitCode {
    // The data is read before connecting: a typo costs no connection.
    let data = match args.source().load(opts.max_len) {
        Ok(data) => data,
        Err(e) => {
            eprintln!("zinx-cli: {e}");
            return ExitCode::from(USAGE);
        }
    };
    let expect = args.expect.map(|n| n as usize);
    let wait = wait.unwrap_or(if expect.is_some() {
        EXPECT_WAIT
    } else {
        DEFAULT_WAIT
    });
    let Some(mut session) = connect(opts).await else {
        return ExitCode::from(FAILED);
    };
    let ended = match session.send(args.id, data).await {
        Ok(()) => session.collect(Instant::now() + wait, expect).await,
        Err(e) => {
            eprintln!("zinx-cli: cannot send: {e}");
            // The connection may have ended first (a greeting it could not
            // decode): print what came and say how it ended.
            session.collect(Instant::now() + wait, None).await;
            session.close().await;
            return ExitCode::from(FAILED);
        }
    };
    let received = session.received();
    session.close().await;
    if ended == Some(Ended::Undecodable) {
        return ExitCode::from(FAILED);
    }
    if let Some(n) = expect
        && received < n
    {
        eprintln!(
            "zinx-cli: expected {n} {}, got {received} within {}s",
            if n == 1 { "reply" } else { "replies" },
            wait.as_secs_f64()
        );
        return ExitCode::from(FAILED);
    }
    ExitCode::SUCCESS
}

/// `repl`: a message per line of stdin; replies printed as they come.
async fn interactive(opts: Options, wait: Duration) -> ExitCode {
    let max_len = opts.max_len;
    let banner = format!(
        "connected to {} ({}, {}); one message per line:\n{LINE_HELP}",
        opts.addr,
        opts.transport,
        layout::names(opts.layout).0
    );
    let Some(mut session) = connect(opts).await else {
        return ExitCode::from(FAILED);
    };
    let mut lines = match stdin_lines() {
        Ok(lines) => lines,
        Err(e) => {
            eprintln!("zinx-cli: cannot read stdin: {e}");
            session.close().await;
            return ExitCode::from(FAILED);
        }
    };
    if std::io::stdin().is_terminal() {
        eprintln!("{banner}");
    }
    let mut number = 0u64;
    let code = loop {
        tokio::select! {
            ended = session.next() => if ended.is_some() {
                // Lines still to come can no longer be sent.
                break FAILED;
            },
            line = lines.recv() => {
                let Some(Ok(line)) = line else {
                    if let Some(Err(e)) = line {
                        eprintln!("zinx-cli: cannot read stdin: {e}");
                    }
                    // The end of input: replies to the last lines may still
                    // be on their way.
                    let deadline = session.last_sent_at().map_or_else(Instant::now, |at| at + wait);
                    break match session.collect(deadline, None).await {
                        Some(Ended::Undecodable) => FAILED,
                        Some(Ended::ByServer) | None => 0,
                    };
                };
                number += 1;
                match run_line(&mut session, &line, max_len).await {
                    Ok(true) => {}
                    Ok(false) => break 0,
                    Err(e) => eprintln!("zinx-cli: line {number}: {e}"),
                }
            }
        }
    };
    session.close().await;
    ExitCode::from(code)
}

/// Does what one typed line says; `Ok(false)` for `:quit`.
async fn run_line(session: &mut Session, line: &[u8], max_len: u32) -> Result<bool, String> {
    let line = std::str::from_utf8(line).map_err(|_| "not UTF-8".to_owned())?;
    let line = line.strip_suffix('\n').unwrap_or(line);
    let line = line.strip_suffix('\r').unwrap_or(line);
    match input::parse_line(line).map_err(|e| e.to_string())? {
        Line::Nothing => {}
        Line::Help => eprintln!("{LINE_HELP}"),
        Line::Quit => return Ok(false),
        Line::Send(id, source) => {
            let data = source.load(max_len).map_err(|e| e.to_string())?;
            session
                .send(id, data)
                .await
                .map_err(|e| format!("cannot send: {e}"))?;
        }
    }
    Ok(true)
}

/// Lines of stdin, read on a thread of their own: a read blocked on a
/// terminal cannot be cancelled, and on a thread it keeps neither the runtime
/// nor the exit waiting.
fn stdin_lines() -> std::io::Result<mpsc::Receiver<std::io::Result<Vec<u8>>>> {
    // One line ahead: input is read as fast as it is sent.
    let (tx, rx) = mpsc::channel(1);
    std::thread::Builder::new()
        .name("stdin".into())
        .spawn(move || {
            let mut stdin = std::io::stdin().lock();
            loop {
                let mut line = Vec::new();
                let item = match stdin.read_until(b'\n', &mut line) {
                    Ok(0) => return,
                    Ok(_) => Ok(line),
                    Err(e) => Err(e),
                };
                let failed = item.is_err();
                if tx.blocking_send(item).is_err() || failed {
                    return;
                }
            }
        })?;
    Ok(rx)
}
