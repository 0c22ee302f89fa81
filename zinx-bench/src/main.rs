//! `zinx-bench`: a load generator for Zinx servers, like redis-benchmark.
//!
//! Opens `--conns` connections, keeps `--pipeline` echo requests in flight on each
//! (or sends at `--rate` requests/s in total, open loop), verifies every reply
//! (message ID, length, every byte, order, connection), records latency in an HDR
//! histogram and reports replies/s and percentiles, plus the server's CPU time and
//! memory with `--server-pid`. `--connect-only` opens and holds the connections to
//! measure the server's memory per connection, before and after one message each.
//! Exits non-zero on any mismatch or connection error, and counts each failed
//! connection by its reason (refused, reset, closed, reply mismatch with where the
//! first one differed, timeout, other I/O). If not even the first connection can be
//! made, it stops at once with the error and prints no result. On a terminal, a
//! progress bar shows the elapsed and remaining time. `zinx-bench report` turns the
//! `--json` lines of many runs into the tables of docs/PERFORMANCE.md.
//!
//! `--transport tls|ws|wss` speaks TLS (trusting `--ca`, or with `--insecure` any
//! certificate), WebSocket (each request frame one binary message, the replies'
//! messages read as one byte stream) or both; `zinx-bench cert` writes a
//! throw-away certificate for 127.0.0.1 to serve them with. Each transport's
//! connection is its own type and the load loop is generic over it, so TCP's
//! runs as it did before the others existed.

use std::collections::VecDeque;
use std::future::Future;
use std::io::IsTerminal;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::process::ExitCode;
use std::sync::atomic::{AtomicBool, AtomicU8, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use clap::{Parser, Subcommand};
use futures_util::{SinkExt, StreamExt};
use hdrhistogram::Histogram;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::{TcpSocket, TcpStream};
use tokio::sync::Semaphore;
use tokio::time::{Instant, MissedTickBehavior};
use tokio_tungstenite::WebSocketStream;
use tokio_tungstenite::tungstenite::Message;
use zinx::transport::kcp::{KcpSettings, KcpStream};
use zinx_bench::net::{self, Transport};
use zinx_bench::{
    ErrorsByReason, Format, HEADER, Latency, Mismatch, Payloads, Reason, RunReport,
    process_cpu_secs, process_rss_kib, render_memory, render_tables,
};

#[derive(Parser)]
#[command(
    about = "Load generator for Zinx servers",
    args_conflicts_with_subcommands = true
)]
struct Cli {
    #[command(subcommand)]
    command: Option<Command>,
    #[command(flatten)]
    run: RunArgs,
}

#[derive(Subcommand)]
enum Command {
    /// Render the tables of PERFORMANCE.md from `--json` lines (a file per argument).
    Report {
        /// Files with one JSON run per line.
        files: Vec<std::path::PathBuf>,
        /// The server to compare.
        #[arg(long, default_value = "zinx")]
        server: String,
        /// The yardstick.
        #[arg(long, default_value = "baseline")]
        baseline: String,
        /// Print the memory table (connect-only runs) instead of throughput.
        #[arg(long)]
        memory: bool,
    },
    /// Write a throw-away certificate for 127.0.0.1 and localhost (`cert.pem`,
    /// `key.pem`) for TLS and wss servers.
    Cert {
        /// Directory to write them into (made if missing).
        #[arg(long)]
        out: std::path::PathBuf,
    },
}

#[derive(clap::Args, Clone)]
struct RunArgs {
    /// Server address: `host:port`, the host an IP address or a name (resolved
    /// once; the first of its addresses that accepts a connection is used).
    #[arg(long, default_value = "127.0.0.1:8999")]
    addr: String,
    /// Connections.
    #[arg(long, default_value_t = 50)]
    conns: usize,
    /// Requests in flight per connection (closed loop).
    #[arg(long, default_value_t = 1)]
    pipeline: usize,
    /// Payload bytes per request.
    #[arg(long, default_value_t = 64)]
    payload: usize,
    /// Seconds measured (after the warm-up).
    #[arg(long, default_value_t = 10.0, value_parser = seconds)]
    duration: f64,
    /// Seconds of load before measuring.
    #[arg(long, default_value_t = 2.0, value_parser = seconds)]
    warmup: f64,
    /// Packet layout.
    #[arg(long, value_enum, default_value = "tlv")]
    format: Format,
    /// Message ID of the requests (and of the expected replies).
    #[arg(long, default_value_t = 1)]
    msg_id: u32,
    /// Open loop: requests per second in total, sent on schedule whatever the
    /// replies do; latency counts from the scheduled time.
    #[arg(long, value_parser = rate)]
    rate: Option<f64>,
    /// Only open and hold the connections (one message each after connecting).
    #[arg(long)]
    connect_only: bool,
    /// The server's process ID, for its CPU time and memory.
    #[arg(long)]
    server_pid: Option<u32>,
    /// Print the result as one JSON line.
    #[arg(long)]
    json: bool,
    /// Scenario name recorded in the result.
    #[arg(long, default_value = "")]
    scenario: String,
    /// Server name recorded in the result.
    #[arg(long, default_value = "")]
    server_name: String,
    /// Connection attempts in flight at once.
    #[arg(long, default_value_t = 256)]
    connect_concurrency: usize,
    /// Runtime worker threads (default: the CPUs this process may use).
    #[arg(long)]
    threads: Option<usize>,
    /// What the connections speak.
    #[arg(long, value_enum, default_value = "tcp")]
    transport: Transport,
    /// tls, wss: trust this PEM certificate (the server's, or its CA's).
    #[arg(long, conflicts_with = "insecure")]
    ca: Option<std::path::PathBuf>,
    /// tls, wss: trust any certificate.
    #[arg(long)]
    insecure: bool,
    /// ws, wss: the path of the WebSocket endpoint.
    #[arg(long, default_value = "/")]
    path: String,
}

/// A number of seconds a `Duration` can hold, not negative.
fn seconds(s: &str) -> Result<f64, String> {
    let secs: f64 = s.parse().map_err(|e| format!("{e}"))?;
    Duration::try_from_secs_f64(secs)
        .map(|_| secs)
        .map_err(|_| "expected seconds, at least 0".to_owned())
}

/// A rate above 0 whose interval a `Duration` can hold.
fn rate(s: &str) -> Result<f64, String> {
    let rate: f64 = s.parse().map_err(|e| format!("{e}"))?;
    if rate.is_finite() && rate > 0.0 {
        Ok(rate)
    } else {
        Err("expected requests per second, above 0".to_owned())
    }
}

const WARMUP: u8 = 0;
const MEASURE: u8 = 1;
const STOP: u8 = 2;
/// Connect-only mode, holding the connections.
const HOLD: u8 = 3;

/// Counters and the histogram shared by every connection.
struct Shared {
    phase: AtomicU8,
    total: AtomicU64,
    measured: AtomicU64,
    mismatches: AtomicU64,
    errors: AtomicU64,
    /// `errors` by reason, indexed like `Reason::ALL`.
    reasons: [AtomicU64; Reason::ALL.len()],
    first_mismatch: Mutex<Option<Mismatch>>,
    histogram: Mutex<Histogram<u64>>,
}

impl Shared {
    /// Counts a failed connection.
    fn fail(&self, error: &ConnError) {
        self.errors.fetch_add(1, Ordering::Relaxed);
        let reason = error.reason();
        if let Some(i) = Reason::ALL.iter().position(|&r| r == reason) {
            self.reasons[i].fetch_add(1, Ordering::Relaxed);
        }
        if let ConnError::Mismatch(m) = error {
            self.mismatches.fetch_add(1, Ordering::Relaxed);
            self.first_mismatch
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .get_or_insert(*m);
        }
    }

    /// Copies the counts of failures into `report`.
    fn failures_into(&self, report: &mut RunReport) {
        report.errors = self.errors.load(Ordering::SeqCst);
        report.mismatches = self.mismatches.load(Ordering::SeqCst);
        let mut by_reason = ErrorsByReason::default();
        for (reason, count) in Reason::ALL.iter().zip(&self.reasons) {
            by_reason.add(*reason, count.load(Ordering::SeqCst));
        }
        report.errors_by_reason = by_reason;
        report.first_mismatch = *self
            .first_mismatch
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
    }

    fn record(&self, samples: &mut Vec<u64>) {
        let mut h = self
            .histogram
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        for s in samples.drain(..) {
            h.saturating_record(s);
        }
    }
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match cli.command {
        Some(Command::Report {
            files,
            server,
            baseline,
            memory,
        }) => return report(&files, &server, &baseline, memory),
        Some(Command::Cert { out }) => {
            return match net::write_loopback_certificate(&out) {
                Ok(()) => ExitCode::SUCCESS,
                Err(e) => {
                    eprintln!("zinx-bench: {e}");
                    ExitCode::FAILURE
                }
            };
        }
        None => {}
    }
    let args = cli.run;
    let mut builder = tokio::runtime::Builder::new_multi_thread();
    if let Some(n) = args.threads {
        builder.worker_threads(n.max(1));
    }
    let runtime = match builder.enable_all().build() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("zinx-bench: cannot start the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    let result = match runtime.block_on(run(args.clone())) {
        Ok(result) => result,
        Err(e) => {
            eprintln!("zinx-bench: {e}");
            return ExitCode::FAILURE;
        }
    };
    let failed = result.mismatches > 0 || result.errors > 0;
    print_result(&args, &result);
    if failed {
        ExitCode::FAILURE
    } else {
        ExitCode::SUCCESS
    }
}

#[allow(clippy::print_stdout)]
fn report(files: &[std::path::PathBuf], server: &str, baseline: &str, memory: bool) -> ExitCode {
    let mut runs = Vec::new();
    for file in files {
        let text = match std::fs::read_to_string(file) {
            Ok(t) => t,
            Err(e) => {
                eprintln!("zinx-bench: {}: {e}", file.display());
                return ExitCode::FAILURE;
            }
        };
        for (n, line) in text
            .lines()
            .enumerate()
            .filter(|(_, l)| !l.trim().is_empty())
        {
            match serde_json::from_str::<RunReport>(line) {
                Ok(run) => runs.push(run),
                Err(e) => {
                    eprintln!("zinx-bench: {}:{}: {e}", file.display(), n + 1);
                    return ExitCode::FAILURE;
                }
            }
        }
    }
    if memory {
        print!("{}", render_memory(&runs));
    } else {
        print!("{}", render_tables(&runs, server, baseline));
    }
    ExitCode::SUCCESS
}

#[allow(clippy::print_stdout)]
fn print_result(args: &RunArgs, r: &RunReport) {
    if args.json {
        match serde_json::to_string(r) {
            Ok(line) => println!("{line}"),
            Err(e) => eprintln!("zinx-bench: {e}"),
        }
        return;
    }
    if args.connect_only {
        println!(
            "{} connections held, {} errors; server RSS {} -> {} KiB ({} B/conn), after one message {} KiB ({} B/conn)",
            r.conns,
            r.errors,
            opt(r.server_rss_start_kib),
            opt(r.server_rss_kib),
            r.rss_per_conn().map_or("-".into(), |b| format!("{b:.0}")),
            opt(r.server_rss_after_message_kib),
            r.rss_per_conn_after_message()
                .map_or("-".into(), |b| format!("{b:.0}")),
        );
        print_reasons(r);
        return;
    }
    println!(
        "{} conns x pipeline {} x {} B: {} replies in {:.2}s = {:.0} replies/s; latency µs p50 {} p90 {} p99 {} p99.9 {} max {}; {} mismatches, {} errors{}",
        r.conns,
        r.pipeline,
        r.payload,
        r.replies,
        r.seconds,
        r.replies_per_sec,
        r.latency_us.p50,
        r.latency_us.p90,
        r.latency_us.p99,
        r.latency_us.p999,
        r.latency_us.max,
        r.mismatches,
        r.errors,
        r.server_cpu_us_per_reply
            .map(|c| format!("; server CPU {c:.2} µs/reply"))
            .unwrap_or_default()
    );
    print_reasons(r);
}

/// A line of failures by reason, after the result line; none on a clean run (so
/// the output of one stays as it was).
#[allow(clippy::print_stdout)]
fn print_reasons(r: &RunReport) {
    let reasons = r.errors_by_reason.describe(r.first_mismatch.as_ref());
    if !reasons.is_empty() {
        println!("errors by reason: {reasons}");
    }
}

fn opt(v: Option<u64>) -> String {
    v.map_or("-".into(), |v| v.to_string())
}

/// One run over `--transport`. `Err` when it cannot even start (the address
/// does not resolve, the TLS settings are wrong, or not one connection can be
/// made): there is then nothing to report.
async fn run(args: RunArgs) -> Result<RunReport, String> {
    let tls = || -> Result<Tls, String> {
        if args.ca.is_none() && !args.insecure {
            let name = clap::ValueEnum::to_possible_value(&args.transport)
                .map(|v| v.get_name().to_owned())
                .unwrap_or_default();
            return Err(format!("--transport {name} needs --ca FILE or --insecure"));
        }
        Ok(Tls {
            connector: net::tls_client_config(args.ca.as_deref())
                .map(|c| tokio_rustls::TlsConnector::from(Arc::new(c)))?,
            name: net::server_name(&args.addr)?,
        })
    };
    let ws = |scheme: &str| format!("{scheme}://{}{}", args.addr, args.path);
    match args.transport {
        Transport::Tcp => run_over(Arc::new(Plain), args).await,
        Transport::Tls => run_over(Arc::new(tls()?), args).await,
        Transport::Ws => {
            let url = ws("ws");
            run_over(Arc::new(Ws { inner: Plain, url }), args).await
        }
        Transport::Wss => {
            let (inner, url) = (tls()?, ws("wss"));
            run_over(Arc::new(Ws { inner, url }), args).await
        }
        Transport::Kcp if args.connect_only => {
            Err("--connect-only measures TCP connections only".to_owned())
        }
        Transport::Kcp => run_over(Arc::new(Kcp), args).await,
    }
}

/// One run, each connection opened by `open`.
async fn run_over<O: Open>(open: Arc<O>, args: RunArgs) -> Result<RunReport, String> {
    let addrs = resolve(&args.addr).await?;
    let shared = Arc::new(Shared {
        phase: AtomicU8::new(WARMUP),
        total: AtomicU64::new(0),
        measured: AtomicU64::new(0),
        mismatches: AtomicU64::new(0),
        errors: AtomicU64::new(0),
        reasons: Default::default(),
        first_mismatch: Mutex::new(None),
        histogram: Mutex::new(
            Histogram::new_with_bounds(1, 60_000_000, 3)
                .unwrap_or_else(|_| unreachable_histogram()),
        ),
    });
    let mut report = RunReport {
        scenario: args.scenario.clone(),
        server: args.server_name.clone(),
        conns: args.conns,
        pipeline: if args.rate.is_some() {
            0
        } else {
            args.pipeline
        },
        payload: args.payload,
        server_rss_start_kib: args.server_pid.and_then(process_rss_kib),
        ..RunReport::default()
    };

    let streams = connect_all(&args, &addrs, &open, &shared).await?;
    if args.connect_only {
        return Ok(hold(&args, streams, &shared, report).await);
    }

    let payloads = Arc::new(Payloads::new(args.payload));
    let progress = Progress::start(
        &shared,
        &args,
        Duration::from_secs_f64(args.warmup).saturating_add(Duration::from_secs_f64(args.duration)),
    );
    let mut tasks = Vec::with_capacity(streams.len());
    for (idx, stream) in streams {
        let (shared, payloads, args) = (shared.clone(), payloads.clone(), args.clone());
        tasks.push(tokio::spawn(async move {
            if let Err(e) = drive(idx, stream, &args, &payloads, &shared).await {
                shared.fail(&e);
            }
        }));
    }

    tokio::time::sleep(Duration::from_secs_f64(args.warmup)).await;
    let cpu_start = args.server_pid.and_then(process_cpu_secs);
    let started = Instant::now();
    shared.phase.store(MEASURE, Ordering::SeqCst);
    tokio::time::sleep(Duration::from_secs_f64(args.duration)).await;
    shared.phase.store(STOP, Ordering::SeqCst);
    let seconds = started.elapsed().as_secs_f64();
    let cpu_end = args.server_pid.and_then(process_cpu_secs);
    for t in tasks {
        if t.await.is_err() {
            shared.fail(&ConnError::TaskFailed);
        }
    }
    progress.finish();

    report.replies = shared.measured.load(Ordering::SeqCst);
    report.seconds = seconds;
    report.replies_per_sec = report.replies as f64 / seconds.max(1e-9);
    shared.failures_into(&mut report);
    let h = shared
        .histogram
        .lock()
        .unwrap_or_else(PoisonError::into_inner);
    report.latency_us = Latency {
        p50: h.value_at_quantile(0.5),
        p90: h.value_at_quantile(0.9),
        p99: h.value_at_quantile(0.99),
        p999: h.value_at_quantile(0.999),
        max: h.max(),
    };
    if let (Some(a), Some(b)) = (cpu_start, cpu_end) {
        report.server_cpu_secs = Some(b - a);
        if report.replies > 0 {
            report.server_cpu_us_per_reply = Some((b - a) * 1e6 / report.replies as f64);
        }
    }
    report.server_rss_kib = args.server_pid.and_then(process_rss_kib);
    Ok(report)
}

fn unreachable_histogram() -> Histogram<u64> {
    // Histogram::new(3) only fails for more than 5 significant figures.
    Histogram::new(2).unwrap_or_else(|_| std::process::abort())
}

/// The addresses `addr` (`host:port`) stands for: itself if it is an IP address
/// and port, else those its host name resolves to.
async fn resolve(addr: &str) -> Result<Vec<SocketAddr>, String> {
    let addrs: Vec<SocketAddr> = tokio::net::lookup_host(addr)
        .await
        .map_err(|e| {
            let hint = if e.kind() == std::io::ErrorKind::InvalidInput {
                " (expected host:port)"
            } else {
                ""
            };
            format!("cannot resolve --addr {addr}: {e}{hint}")
        })?
        .collect();
    if addrs.is_empty() {
        return Err(format!("cannot resolve --addr {addr}: no address"));
    }
    Ok(addrs)
}

/// Opens every connection. The first goes alone, to each of `addrs` in turn until
/// one accepts it; if none does, nothing can be measured and this returns the
/// error of each. The others then go to the address that accepted,
/// `connect_concurrency` at a time; a failure of one of them is counted. On
/// loopback, each connection gets its own source address in 127.0.0.0/8, so more
/// than the ~28k ephemeral ports of one address can be used.
async fn connect_all<O: Open>(
    args: &RunArgs,
    addrs: &[SocketAddr],
    open: &Arc<O>,
    shared: &Shared,
) -> Result<Vec<(u64, O::Conn)>, String> {
    let mut streams = Vec::with_capacity(args.conns);
    if args.conns == 0 {
        return Ok(streams);
    }
    let mut failures = Vec::new();
    let mut first = None;
    for &addr in addrs {
        match open.dial(addr, 0).await {
            Ok(s) => {
                first = Some((addr, s));
                break;
            }
            Err(e) => failures.push(if addr.to_string() == args.addr {
                e.to_string()
            } else {
                format!("{addr}: {e}")
            }),
        }
    }
    let Some((addr, stream)) = first else {
        return Err(format!(
            "cannot connect to {}: {}",
            args.addr,
            failures.join("; ")
        ));
    };
    streams.push((0, stream));

    let limit = Arc::new(Semaphore::new(args.connect_concurrency.max(1)));
    let told = Arc::new(AtomicBool::new(false));
    let mut tasks = Vec::with_capacity(args.conns - 1);
    for i in 1..args.conns {
        let (limit, told, open) = (limit.clone(), told.clone(), open.clone());
        tasks.push(tokio::spawn(async move {
            let _permit = limit
                .acquire_owned()
                .await
                .map_err(|_| ConnError::TaskFailed)?;
            open.dial(addr, i).await.map_err(|e| {
                if !told.swap(true, Ordering::Relaxed) {
                    eprintln!("zinx-bench: connect to {addr}: {e}");
                }
                ConnError::Io(e)
            })
        }));
    }
    for (i, t) in (1..).zip(tasks) {
        match t.await {
            Ok(Ok(s)) => streams.push((i, s)),
            Ok(Err(e)) => shared.fail(&e),
            Err(_) => shared.fail(&ConnError::TaskFailed),
        }
    }
    Ok(streams)
}

/// Connects to `addr` over TCP (from a source address of its own for
/// connection `i` on loopback) and opens the transport on it, the handshake
/// within 10 s.
async fn connect<O: Open>(addr: SocketAddr, i: usize, open: &O) -> std::io::Result<O::Conn> {
    let socket = match addr.ip() {
        IpAddr::V4(ip) if ip.is_loopback() => {
            let s = TcpSocket::new_v4()?;
            let a = 1 + (i / 62_500) % 250;
            let b = (i / 250) % 250;
            let c = 1 + i % 250;
            let local = Ipv4Addr::new(127, a as u8, b as u8, c as u8);
            s.bind(SocketAddr::new(IpAddr::V4(local), 0))?;
            s
        }
        IpAddr::V4(_) => TcpSocket::new_v4()?,
        IpAddr::V6(_) => TcpSocket::new_v6()?,
    };
    let stream = socket.connect(addr).await?;
    stream.set_nodelay(true)?;
    tokio::time::timeout(Duration::from_secs(10), open.open(stream))
        .await
        .map_err(|_| std::io::Error::new(std::io::ErrorKind::TimedOut, "handshake timed out"))?
}

/// What a connection speaks once TCP is connected: its handshake, if any, and
/// the connection it makes.
trait Open: Send + Sync + 'static {
    /// The connection the load runs on.
    type Conn: Conn;
    /// Shakes hands on `tcp`.
    fn open(&self, tcp: TcpStream) -> impl Future<Output = std::io::Result<Self::Conn>> + Send;

    /// Makes connection `i` to `addr`: over TCP, then [`open`](Self::open).
    fn dial(
        &self,
        addr: SocketAddr,
        i: usize,
    ) -> impl Future<Output = std::io::Result<Self::Conn>> + Send
    where
        Self: Sized,
    {
        connect(addr, i, self)
    }
}

/// KCP: a session of its own UDP socket per connection, no TCP.
struct Kcp;

impl Open for Kcp {
    type Conn = KcpStream;

    async fn open(&self, _tcp: TcpStream) -> std::io::Result<KcpStream> {
        Err(std::io::Error::other("KCP is not opened on TCP"))
    }

    async fn dial(&self, addr: SocketAddr, _i: usize) -> std::io::Result<KcpStream> {
        KcpStream::connect(&addr.to_string(), KcpSettings::default())
            .await
            .map_err(std::io::Error::other)
    }
}

impl Conn for KcpStream {
    async fn read_into(&mut self, buf: &mut Vec<u8>) -> std::io::Result<usize> {
        self.read_buf(buf).await
    }

    async fn send(&mut self, out: &[u8], _frame: usize) -> std::io::Result<()> {
        self.write_all(out).await?;
        // Each write leaves at once, not at the session's next tick.
        self.flush().await
    }
}

/// A connection the load runs on. Its futures are awaited one at a time (a
/// read is dropped before a write starts), so a connection needs no halves.
trait Conn: Send + 'static {
    /// Appends what arrives next to `buf` and returns how many bytes that was;
    /// 0 at the end of the stream. Cancel-safe: appends only when it completes.
    fn read_into(
        &mut self,
        buf: &mut Vec<u8>,
    ) -> impl Future<Output = std::io::Result<usize>> + Send;
    /// Sends `out`, whole frames of `frame` bytes each.
    fn send(
        &mut self,
        out: &[u8],
        frame: usize,
    ) -> impl Future<Output = std::io::Result<()>> + Send;
}

/// Appends the data of a binary message to `buf`: how many bytes, 0 for a
/// message without data (a ping, answered by the next write), `None` at the
/// end of the stream.
fn ws_take(
    buf: &mut Vec<u8>,
    next: Option<Result<Message, tokio_tungstenite::tungstenite::Error>>,
) -> std::io::Result<Option<usize>> {
    match next {
        Some(Ok(Message::Binary(data))) => {
            buf.extend_from_slice(&data);
            Ok(Some(data.len()))
        }
        Some(Ok(Message::Text(_))) => Err(std::io::Error::new(
            std::io::ErrorKind::InvalidData,
            "a text message (Zinx frames come in binary ones)",
        )),
        Some(Ok(Message::Close(_))) | None => Ok(None),
        Some(Ok(_)) => Ok(Some(0)),
        Some(Err(e)) => Err(net::ws_io_error(e)),
    }
}

/// Plain TCP.
struct Plain;

impl Open for Plain {
    type Conn = TcpStream;
    async fn open(&self, tcp: TcpStream) -> std::io::Result<TcpStream> {
        Ok(tcp)
    }
}

impl Conn for TcpStream {
    async fn read_into(&mut self, buf: &mut Vec<u8>) -> std::io::Result<usize> {
        self.read_buf(buf).await
    }

    async fn send(&mut self, out: &[u8], _frame: usize) -> std::io::Result<()> {
        self.write_all(out).await
    }
}

/// TLS over TCP.
struct Tls {
    connector: tokio_rustls::TlsConnector,
    name: rustls::pki_types::ServerName<'static>,
}

type TlsStream = tokio_rustls::client::TlsStream<TcpStream>;

impl Open for Tls {
    type Conn = TlsStream;
    async fn open(&self, tcp: TcpStream) -> std::io::Result<TlsStream> {
        self.connector.connect(self.name.clone(), tcp).await
    }
}

impl Conn for TlsStream {
    async fn read_into(&mut self, buf: &mut Vec<u8>) -> std::io::Result<usize> {
        self.read_buf(buf).await
    }

    async fn send(&mut self, out: &[u8], _frame: usize) -> std::io::Result<()> {
        self.write_all(out).await?;
        // What the socket did not take at once is still in the TLS session.
        self.flush().await
    }
}

/// WebSocket over what `inner` opens (TCP for ws, TLS for wss).
struct Ws<O> {
    inner: O,
    url: String,
}

impl<O: Open> Open for Ws<O>
where
    O::Conn: AsyncRead + AsyncWrite + Unpin,
{
    type Conn = WebSocketStream<O::Conn>;
    async fn open(&self, tcp: TcpStream) -> std::io::Result<Self::Conn> {
        let stream = self.inner.open(tcp).await?;
        let (ws, _response) = tokio_tungstenite::client_async_with_config(
            self.url.as_str(),
            stream,
            Some(net::ws_config()),
        )
        .await
        .map_err(net::ws_io_error)?;
        Ok(ws)
    }
}

/// Most a WebSocket read takes from the messages already there.
const WS_READ_MAX: usize = 64 * 1024;

impl<S: AsyncRead + AsyncWrite + Unpin + Send + 'static> Conn for WebSocketStream<S> {
    /// Waits for a message with data, then takes those already received too (up
    /// to `WS_READ_MAX` bytes), as a TCP read takes every frame that arrived.
    async fn read_into(&mut self, buf: &mut Vec<u8>) -> std::io::Result<usize> {
        // Cancel-safe: a message is taken only when `next` completes.
        let mut n = loop {
            match ws_take(buf, self.next().await)? {
                None => return Ok(0),
                Some(0) => {}
                Some(n) => break n,
            }
        };
        while n < WS_READ_MAX {
            // Without waiting; a close is seen again by the next read.
            match net::next_now(self).await {
                Some(next) => match ws_take(buf, next)? {
                    Some(more) => n += more,
                    None => break,
                },
                None => break,
            }
        }
        Ok(n)
    }

    async fn send(&mut self, out: &[u8], frame: usize) -> std::io::Result<()> {
        for request in out.chunks(frame.max(1)) {
            let message = Message::Binary(bytes::Bytes::copy_from_slice(request));
            self.feed(message).await.map_err(net::ws_io_error)?;
        }
        SinkExt::flush(self).await.map_err(net::ws_io_error)
    }
}

/// Connect-only mode: measure the server's memory with the connections idle,
/// then after one echo on each, then hold them for the duration.
async fn hold<C: Conn>(
    args: &RunArgs,
    streams: Vec<(u64, C)>,
    shared: &Arc<Shared>,
    mut report: RunReport,
) -> RunReport {
    let settle = Duration::from_secs(1);
    shared.phase.store(HOLD, Ordering::SeqCst);
    let progress = Progress::start(
        shared,
        args,
        (settle * 2).saturating_add(Duration::from_secs_f64(args.duration)),
    );
    tokio::time::sleep(settle).await;
    report.server_rss_kib = args.server_pid.and_then(process_rss_kib);
    let payloads = Payloads::new(args.payload);
    let mut streams: Vec<_> = streams
        .into_iter()
        .map(|(idx, stream)| (idx, stream, true))
        .collect();
    for (idx, stream, alive) in &mut streams {
        let mut frame = Vec::new();
        payloads.put_frame(args.format, args.msg_id, *idx, 0, &mut frame);
        if let Err(e) = stream.send(&frame, frame.len()).await {
            shared.fail(&ConnError::Io(e));
            *alive = false;
        }
    }
    for (idx, stream, alive) in &mut streams {
        if !*alive {
            continue;
        }
        let mut expected = Vec::new();
        payloads.put_frame(args.format, args.msg_id, *idx, 0, &mut expected);
        let mut reply = Vec::with_capacity(expected.len());
        let read = async {
            while reply.len() < expected.len() {
                if stream.read_into(&mut reply).await.map_err(ConnError::Io)? == 0 {
                    return Err(ConnError::Closed);
                }
            }
            Ok(())
        };
        match tokio::time::timeout(Duration::from_secs(10), read).await {
            Err(_) => shared.fail(&ConnError::Timeout),
            Ok(Err(e)) => shared.fail(&e),
            Ok(Ok(())) if reply != expected => {
                shared.fail(&ConnError::Mismatch(Mismatch::between(&expected, &reply)));
            }
            Ok(Ok(())) => {}
        }
    }
    tokio::time::sleep(settle).await;
    report.server_rss_after_message_kib = args.server_pid.and_then(process_rss_kib);
    report.replies = args.conns as u64;
    tokio::time::sleep(Duration::from_secs_f64(args.duration)).await;
    progress.finish();
    shared.failures_into(&mut report);
    drop(streams);
    report
}

/// Why a connection failed.
#[derive(Debug)]
enum ConnError {
    Io(std::io::Error),
    /// The server closed the connection with requests outstanding.
    Closed,
    Mismatch(Mismatch),
    /// No reply within the time allowed.
    Timeout,
    /// The connection's task ended without a result (a panic, or a closed
    /// connect limit).
    TaskFailed,
}

impl ConnError {
    fn reason(&self) -> Reason {
        match self {
            ConnError::Io(e) => Reason::of_io(e),
            ConnError::Closed => Reason::ClosedByServer,
            ConnError::Mismatch(_) => Reason::ReplyMismatch,
            ConnError::Timeout => Reason::Timeout,
            ConnError::TaskFailed => Reason::OtherIo,
        }
    }
}

/// One connection's load: closed loop with `pipeline` requests in flight, or
/// open loop at its share of `--rate`.
async fn drive<C: Conn>(
    idx: u64,
    mut conn: C,
    args: &RunArgs,
    payloads: &Payloads,
    shared: &Shared,
) -> Result<(), ConnError> {
    let frame = HEADER + payloads.len();
    let mut out = Vec::with_capacity((HEADER + args.payload) * args.pipeline.max(1));
    let mut inflight: VecDeque<Instant> = VecDeque::new();
    let mut next_seq = 0u64;
    let mut expect_seq = 0u64;
    let mut buf: Vec<u8> = Vec::with_capacity(64 * 1024);
    let mut samples = Vec::with_capacity(256);
    let mut ticker = args.rate.map(|rate| {
        let per_conn = (rate / args.conns.max(1) as f64).max(1e-3);
        let period = Duration::from_secs_f64(1.0 / per_conn).max(Duration::from_nanos(1));
        let mut t = tokio::time::interval(period);
        t.set_missed_tick_behavior(MissedTickBehavior::Burst);
        t
    });
    let put = |seq: u64, out: &mut Vec<u8>| {
        payloads.put_frame(args.format, args.msg_id, idx, seq, out);
    };
    // The header every reply must have.
    let mut header = Vec::with_capacity(HEADER);
    args.format
        .put_header(args.msg_id, payloads.len() as u32, &mut header);
    if ticker.is_none() {
        let now = Instant::now();
        for _ in 0..args.pipeline.max(1) {
            put(next_seq, &mut out);
            inflight.push_back(now);
            next_seq += 1;
        }
        write(&mut conn, &mut out, frame).await?;
    }
    let result = loop {
        let stopping = shared.phase.load(Ordering::Relaxed) == STOP;
        if stopping && inflight.is_empty() {
            break Ok(());
        }
        let read = tokio::select! {
            biased;
            // Cancel-safe: a tick is consumed only when this branch completes.
            scheduled = tick(ticker.as_mut()), if !stopping => {
                put(next_seq, &mut out);
                inflight.push_back(scheduled);
                next_seq += 1;
                write(&mut conn, &mut out, frame).await?;
                continue;
            }
            // Cancel-safe: read_buf appends only what it read when it completes.
            read = tokio::time::timeout(Duration::from_secs(10), conn.read_into(&mut buf)) => read,
        };
        match read {
            Err(_) => break Err(ConnError::Timeout),
            Ok(Err(e)) => break Err(ConnError::Io(e)),
            Ok(Ok(0)) => break Err(ConnError::Closed),
            Ok(Ok(_)) => {}
        }
        let now = Instant::now();
        let measuring = shared.phase.load(Ordering::Relaxed) == MEASURE;
        let mut consumed = 0;
        let mut replies = 0u64;
        while let Some(got_header) = buf.get(consumed..consumed + HEADER) {
            // A wrong header fails at once, without waiting for the data it
            // announces.
            if got_header != header.as_slice() {
                return Err(ConnError::Mismatch(Mismatch::between(&header, got_header)));
            }
            let end = consumed + HEADER + payloads.len();
            let Some(got) = buf.get(consumed..end) else {
                break;
            };
            let Some(sent) = inflight.pop_front() else {
                // Nothing was asked for: any reply is one too many.
                return Err(ConnError::Mismatch(Mismatch::between(&[], got)));
            };
            if !payloads.matches(idx, expect_seq, &got[HEADER..]) {
                let mut expected = Vec::with_capacity(got.len());
                put(expect_seq, &mut expected);
                return Err(ConnError::Mismatch(Mismatch::between(&expected, got)));
            }
            if measuring {
                samples.push(now.saturating_duration_since(sent).as_micros() as u64);
            }
            expect_seq += 1;
            replies += 1;
            consumed = end;
            if ticker.is_none() && !stopping {
                put(next_seq, &mut out);
                inflight.push_back(now);
                next_seq += 1;
            }
        }
        buf.drain(..consumed);
        shared.total.fetch_add(replies, Ordering::Relaxed);
        if measuring {
            shared.measured.fetch_add(replies, Ordering::Relaxed);
        }
        if samples.len() >= 256 {
            shared.record(&mut samples);
        }
        if !out.is_empty() {
            write(&mut conn, &mut out, frame).await?;
        }
    };
    shared.record(&mut samples);
    result
}

async fn tick(ticker: Option<&mut tokio::time::Interval>) -> Instant {
    match ticker {
        Some(t) => t.tick().await,
        None => std::future::pending().await,
    }
}

async fn write<C: Conn>(conn: &mut C, out: &mut Vec<u8>, frame: usize) -> Result<(), ConnError> {
    let r = conn.send(out, frame).await;
    out.clear();
    r.map_err(ConnError::Io)
}

/// A progress bar on a terminal (elapsed and remaining time of the run, the
/// phase, and the reply rate); nothing when stderr is not a terminal, nor with
/// `--json` (whose runs scripts make, some several at once on one terminal).
struct Progress {
    shown: Option<(indicatif::ProgressBar, tokio::task::JoinHandle<()>)>,
}

impl Progress {
    /// Starts the bar of a run of `length` from now.
    fn start(shared: &Arc<Shared>, args: &RunArgs, length: Duration) -> Progress {
        if args.json || !std::io::stderr().is_terminal() {
            return Progress { shown: None };
        }
        // The position is the elapsed time in ms, the length the run's: the times
        // shown are drawn from them, so they never lag the bar.
        let times = |state: &indicatif::ProgressState, w: &mut dyn std::fmt::Write| {
            let ms = Duration::from_millis;
            let _ = w.write_str(&progress_times(
                ms(state.pos()),
                ms(state.len().unwrap_or(0)),
            ));
        };
        let style = indicatif::ProgressStyle::with_template("{spinner} [{bar:30}] {times} | {msg}")
            .map(|s| s.progress_chars("=> ").with_key("times", times))
            .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar());
        let bar = indicatif::ProgressBar::with_draw_target(
            Some(length.as_millis() as u64),
            indicatif::ProgressDrawTarget::stderr(),
        )
        .with_style(style)
        .with_message("connected");
        let (shared, shown, conns) = (shared.clone(), bar.clone(), args.conns);
        let task = tokio::spawn(async move {
            let started = Instant::now();
            let (mut last, mut last_at) = (0u64, started);
            let mut every = tokio::time::interval(Duration::from_millis(500));
            loop {
                every.tick().await;
                let (now, total) = (Instant::now(), shared.total.load(Ordering::Relaxed));
                let rate = total.saturating_sub(last) as f64
                    / now
                        .saturating_duration_since(last_at)
                        .as_secs_f64()
                        .max(1e-3);
                let detail = match shared.phase.load(Ordering::Relaxed) {
                    WARMUP => format!("warm-up: {rate:.0} replies/s, {total} replies"),
                    MEASURE => format!("measuring: {rate:.0} replies/s, {total} replies"),
                    HOLD => format!("holding {conns} connections"),
                    _ => "finishing".to_owned(),
                };
                let elapsed = now.saturating_duration_since(started);
                shown.set_position(elapsed.as_millis() as u64);
                shown.set_message(detail);
                (last, last_at) = (total, now);
            }
        });
        Progress {
            shown: Some((bar, task)),
        }
    }

    /// Stops and erases the bar.
    fn finish(self) {
        if let Some((bar, task)) = self.shown {
            task.abort();
            bar.finish_and_clear();
        }
    }
}

/// The times after the bar: elapsed, and remaining (rounded up, never below zero).
fn progress_times(elapsed: Duration, length: Duration) -> String {
    let left = length.saturating_sub(elapsed);
    let left_secs = left.as_secs() + u64::from(left.subsec_nanos() > 0);
    format!(
        "{} elapsed, {} left",
        clock(elapsed.as_secs()),
        clock(left_secs)
    )
}

/// `mm:ss`, or `h:mm:ss` from an hour.
fn clock(secs: u64) -> String {
    if secs >= 3600 {
        format!("{}:{:02}:{:02}", secs / 3600, secs / 60 % 60, secs % 60)
    } else {
        format!("{:02}:{:02}", secs / 60, secs % 60)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn progress_shows_elapsed_and_remaining_time() {
        let length = Duration::from_secs(12);
        assert_eq!(
            progress_times(Duration::ZERO, length),
            "00:00 elapsed, 00:12 left"
        );
        assert_eq!(
            progress_times(Duration::from_millis(2_500), length),
            "00:02 elapsed, 00:10 left"
        );
        // Past the end (the last replies draining): nothing left, not negative.
        assert_eq!(
            progress_times(Duration::from_secs(13), length),
            "00:13 elapsed, 00:00 left"
        );
        assert_eq!(
            progress_times(Duration::from_secs(61), Duration::from_secs(3_725)),
            "01:01 elapsed, 1:01:04 left"
        );
    }
}
