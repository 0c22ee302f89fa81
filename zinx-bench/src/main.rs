//! `zinx-bench`: a load generator for Zinx servers, like redis-benchmark.
//!
//! Opens `--conns` connections, keeps `--pipeline` echo requests in flight on each
//! (or sends at `--rate` requests/s in total, open loop), verifies every reply
//! (message ID, length, every byte, order, connection), records latency in an HDR
//! histogram and reports replies/s and percentiles, plus the server's CPU time and
//! memory with `--server-pid`. `--connect-only` opens and holds the connections to
//! measure the server's memory per connection, before and after one message each.
//! Exits non-zero on any mismatch or connection error. `zinx-bench report` turns
//! the `--json` lines of many runs into the tables of docs/PERFORMANCE.md.

use std::collections::VecDeque;
use std::io::IsTerminal;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::process::ExitCode;
use std::sync::atomic::{AtomicU8, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use clap::{Parser, Subcommand};
use hdrhistogram::Histogram;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::tcp::OwnedWriteHalf;
use tokio::net::{TcpSocket, TcpStream};
use tokio::sync::Semaphore;
use tokio::time::{Instant, MissedTickBehavior};
use zinx_bench::{
    Format, HEADER, Latency, Payloads, RunReport, process_cpu_secs, process_rss_kib, render_memory,
    render_tables,
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
}

#[derive(clap::Args, Clone)]
struct RunArgs {
    /// Server address.
    #[arg(long, default_value = "127.0.0.1:8999")]
    addr: SocketAddr,
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
    #[arg(long, default_value_t = 10.0)]
    duration: f64,
    /// Seconds of load before measuring.
    #[arg(long, default_value_t = 2.0)]
    warmup: f64,
    /// Packet layout.
    #[arg(long, value_enum, default_value = "tlv")]
    format: Format,
    /// Message ID of the requests (and of the expected replies).
    #[arg(long, default_value_t = 1)]
    msg_id: u32,
    /// Open loop: requests per second in total, sent on schedule whatever the
    /// replies do; latency counts from the scheduled time.
    #[arg(long)]
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
}

const WARMUP: u8 = 0;
const MEASURE: u8 = 1;
const STOP: u8 = 2;

/// Counters and the histogram shared by every connection.
struct Shared {
    phase: AtomicU8,
    total: AtomicU64,
    measured: AtomicU64,
    mismatches: AtomicU64,
    errors: AtomicU64,
    histogram: Mutex<Histogram<u64>>,
}

impl Shared {
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
    if let Some(Command::Report {
        files,
        server,
        baseline,
        memory,
    }) = cli.command
    {
        return report(&files, &server, &baseline, memory);
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
    let result = runtime.block_on(run(args.clone()));
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
}

fn opt(v: Option<u64>) -> String {
    v.map_or("-".into(), |v| v.to_string())
}

async fn run(args: RunArgs) -> RunReport {
    let shared = Arc::new(Shared {
        phase: AtomicU8::new(WARMUP),
        total: AtomicU64::new(0),
        measured: AtomicU64::new(0),
        mismatches: AtomicU64::new(0),
        errors: AtomicU64::new(0),
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

    let streams = connect_all(&args, &shared).await;
    if args.connect_only {
        return hold(&args, streams, &shared, report).await;
    }

    let payloads = Arc::new(Payloads::new(args.payload));
    let progress = Progress::start(&shared, &args);
    let mut tasks = Vec::with_capacity(streams.len());
    for (idx, stream) in streams {
        let (shared, payloads, args) = (shared.clone(), payloads.clone(), args.clone());
        tasks.push(tokio::spawn(async move {
            if let Err(e) = drive(idx, stream, &args, &payloads, &shared).await {
                shared.errors.fetch_add(1, Ordering::Relaxed);
                if matches!(e, ConnError::Mismatch) {
                    shared.mismatches.fetch_add(1, Ordering::Relaxed);
                }
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
        let _ = t.await;
    }
    progress.finish().await;

    report.replies = shared.measured.load(Ordering::SeqCst);
    report.seconds = seconds;
    report.replies_per_sec = report.replies as f64 / seconds.max(1e-9);
    report.mismatches = shared.mismatches.load(Ordering::SeqCst);
    report.errors = shared.errors.load(Ordering::SeqCst);
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
    report
}

fn unreachable_histogram() -> Histogram<u64> {
    // Histogram::new(3) only fails for more than 5 significant figures.
    Histogram::new(2).unwrap_or_else(|_| std::process::abort())
}

/// Opens every connection, `connect_concurrency` at a time. On loopback, each
/// connection gets its own source address in 127.0.0.0/8, so more than the ~28k
/// ephemeral ports of one address can be used.
async fn connect_all(args: &RunArgs, shared: &Shared) -> Vec<(u64, TcpStream)> {
    let limit = Arc::new(Semaphore::new(args.connect_concurrency.max(1)));
    let mut tasks = Vec::with_capacity(args.conns);
    for i in 0..args.conns {
        let (limit, addr) = (limit.clone(), args.addr);
        tasks.push(tokio::spawn(async move {
            let _permit = limit.acquire_owned().await.ok()?;
            match connect(addr, i).await {
                Ok(s) => Some(s),
                Err(e) => {
                    if i == 0 {
                        eprintln!("zinx-bench: connect to {addr}: {e}");
                    }
                    None
                }
            }
        }));
    }
    let mut streams = Vec::with_capacity(args.conns);
    for (i, t) in tasks.into_iter().enumerate() {
        match t.await.ok().flatten() {
            Some(s) => streams.push((i as u64, s)),
            None => {
                shared.errors.fetch_add(1, Ordering::Relaxed);
            }
        }
    }
    streams
}

async fn connect(addr: SocketAddr, i: usize) -> std::io::Result<TcpStream> {
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
    Ok(stream)
}

/// Connect-only mode: measure the server's memory with the connections idle,
/// then after one echo on each, then hold them for the duration.
async fn hold(
    args: &RunArgs,
    streams: Vec<(u64, TcpStream)>,
    shared: &Shared,
    mut report: RunReport,
) -> RunReport {
    let settle = Duration::from_secs(1);
    tokio::time::sleep(settle).await;
    report.server_rss_kib = args.server_pid.and_then(process_rss_kib);
    let payloads = Payloads::new(args.payload);
    let mut streams = streams;
    for (idx, stream) in &mut streams {
        let mut frame = Vec::new();
        args.format
            .put_header(args.msg_id, args.payload as u32, &mut frame);
        payloads.put(*idx, 0, &mut frame);
        if stream.write_all(&frame).await.is_err() {
            shared.errors.fetch_add(1, Ordering::Relaxed);
        }
    }
    for (idx, stream) in &mut streams {
        let mut reply = vec![0u8; HEADER + args.payload];
        let ok = tokio::time::timeout(Duration::from_secs(10), stream.read_exact(&mut reply)).await;
        let good = matches!(ok, Ok(Ok(_)))
            && args.format.parse_header(&reply) == Some((args.msg_id, args.payload as u32))
            && payloads.matches(*idx, 0, &reply[HEADER..]);
        if !good {
            shared.mismatches.fetch_add(1, Ordering::Relaxed);
        }
    }
    tokio::time::sleep(settle).await;
    report.server_rss_after_message_kib = args.server_pid.and_then(process_rss_kib);
    report.replies = args.conns as u64;
    tokio::time::sleep(Duration::from_secs_f64(args.duration)).await;
    report.errors = shared.errors.load(Ordering::SeqCst);
    report.mismatches = shared.mismatches.load(Ordering::SeqCst);
    drop(streams);
    report
}

#[derive(Debug)]
enum ConnError {
    Io,
    Closed,
    Mismatch,
    Timeout,
}

/// One connection's load: closed loop with `pipeline` requests in flight, or
/// open loop at its share of `--rate`.
async fn drive(
    idx: u64,
    stream: TcpStream,
    args: &RunArgs,
    payloads: &Payloads,
    shared: &Shared,
) -> Result<(), ConnError> {
    let (mut r, mut w) = stream.into_split();
    let mut out = Vec::with_capacity((HEADER + args.payload) * args.pipeline.max(1));
    let mut inflight: VecDeque<Instant> = VecDeque::new();
    let mut next_seq = 0u64;
    let mut expect_seq = 0u64;
    let mut buf: Vec<u8> = Vec::with_capacity(64 * 1024);
    let mut samples = Vec::with_capacity(256);
    let mut ticker = args.rate.map(|rate| {
        let per_conn = (rate / args.conns.max(1) as f64).max(1e-3);
        let mut t = tokio::time::interval(Duration::from_secs_f64(1.0 / per_conn));
        t.set_missed_tick_behavior(MissedTickBehavior::Burst);
        t
    });
    let put = |seq: u64, out: &mut Vec<u8>| {
        args.format
            .put_header(args.msg_id, payloads.len() as u32, out);
        payloads.put(idx, seq, out);
    };
    if ticker.is_none() {
        let now = Instant::now();
        for _ in 0..args.pipeline.max(1) {
            put(next_seq, &mut out);
            inflight.push_back(now);
            next_seq += 1;
        }
        write(&mut w, &mut out).await?;
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
                write(&mut w, &mut out).await?;
                continue;
            }
            // Cancel-safe: read_buf appends only what it read when it completes.
            read = tokio::time::timeout(Duration::from_secs(10), r.read_buf(&mut buf)) => read,
        };
        match read {
            Err(_) => break Err(ConnError::Timeout),
            Ok(Err(_)) => break Err(ConnError::Io),
            Ok(Ok(0)) => break Err(ConnError::Closed),
            Ok(Ok(_)) => {}
        }
        let now = Instant::now();
        let measuring = shared.phase.load(Ordering::Relaxed) == MEASURE;
        let mut consumed = 0;
        let mut replies = 0u64;
        while let Some((id, len)) = args.format.parse_header(&buf[consumed..]) {
            let end = consumed + HEADER + len as usize;
            if buf.len() < end {
                break;
            }
            let data = &buf[consumed + HEADER..end];
            if id != args.msg_id || !payloads.matches(idx, expect_seq, data) {
                return Err(ConnError::Mismatch);
            }
            let Some(sent) = inflight.pop_front() else {
                return Err(ConnError::Mismatch);
            };
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
            write(&mut w, &mut out).await?;
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

async fn write(w: &mut OwnedWriteHalf, out: &mut Vec<u8>) -> Result<(), ConnError> {
    let r = w.write_all(out).await;
    out.clear();
    r.map_err(|_| ConnError::Io)
}

/// A live rate display on a terminal; nothing otherwise.
struct Progress {
    task: Option<tokio::task::JoinHandle<()>>,
}

impl Progress {
    fn start(shared: &Arc<Shared>, args: &RunArgs) -> Progress {
        if args.json || !std::io::stderr().is_terminal() {
            return Progress { task: None };
        }
        let shared = shared.clone();
        let bar = indicatif::ProgressBar::new_spinner();
        let task = tokio::spawn(async move {
            let mut last = 0u64;
            let mut every = tokio::time::interval(Duration::from_millis(500));
            loop {
                every.tick().await;
                let total = shared.total.load(Ordering::Relaxed);
                let phase = match shared.phase.load(Ordering::Relaxed) {
                    WARMUP => "warm-up",
                    MEASURE => "measuring",
                    _ => {
                        bar.finish_and_clear();
                        return;
                    }
                };
                bar.set_message(format!(
                    "{phase}: {} replies/s, {total} replies",
                    (total - last) * 2
                ));
                bar.tick();
                last = total;
            }
        });
        Progress { task: Some(task) }
    }

    async fn finish(self) {
        if let Some(t) = self.task {
            let _ = t.await;
        }
    }
}
