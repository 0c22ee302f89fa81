//! Timers: one-shot, periodic and cancelled timers; with `--million` it measures
//! what a million pending timers cost in resident memory.
//!
//! ```text
//! cargo run --release --example timers
//! cargo run --release --example timers -- --million wheel   # zinx::Timers (DelayQueue)
//! cargo run --release --example timers -- --million tasks   # a sleeping task per timer
//! ```

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use clap::{Parser, ValueEnum};
use zinx::Timers;

#[derive(Clone, Copy, ValueEnum)]
enum Kind {
    /// zinx::Timers: one task, a timing wheel.
    Wheel,
    /// A tokio task sleeping per timer, for comparison.
    Tasks,
}

#[derive(Parser)]
struct Args {
    /// Schedule 1,000,000 timers an hour out and report the memory they take.
    #[arg(long)]
    million: Option<Kind>,
}

/// Resident set size in KiB (Linux), 0 elsewhere.
fn rss_kib() -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix("VmRSS:"))
                .and_then(|v| v.trim().trim_end_matches(" kB").trim().parse().ok())
        })
        .unwrap_or(0)
}

#[allow(clippy::print_stdout)]
#[tokio::main]
async fn main() {
    let args = Args::parse();
    let fired = Arc::new(AtomicU64::new(0));
    let Some(kind) = args.million else {
        let timers = Timers::start();
        let f = fired.clone();
        timers.after(Duration::from_millis(200), move || {
            f.fetch_add(1, Ordering::Relaxed);
            println!("one-shot fired after 200 ms");
        });
        let tick = timers.every(Duration::from_millis(50), || println!("tick"));
        let never = timers.after(Duration::from_millis(100), || println!("never printed"));
        never.cancel();
        tokio::time::sleep(Duration::from_millis(230)).await;
        tick.cancel();
        println!("pending after cancelling the ticker: {}", timers.len());
        return;
    };

    const N: u64 = 1_000_000;
    let before = rss_kib();
    let started = Instant::now();
    // Kept alive until the measurement is done.
    let mut keep_timers = None;
    let mut keep_tasks = Vec::new();
    match kind {
        Kind::Wheel => {
            let timers = Timers::start();
            for i in 0..N {
                let f = fired.clone();
                timers.after(Duration::from_secs(3600 + i % 600), move || {
                    f.fetch_add(1, Ordering::Relaxed);
                });
            }
            assert_eq!(timers.len() as u64, N);
            keep_timers = Some(timers);
        }
        Kind::Tasks => {
            keep_tasks.reserve(N as usize);
            for i in 0..N {
                let f = fired.clone();
                keep_tasks.push(tokio::spawn(async move {
                    tokio::time::sleep(Duration::from_secs(3600 + i % 600)).await;
                    f.fetch_add(1, Ordering::Relaxed);
                }));
            }
            // Let every task reach its sleep.
            tokio::time::sleep(Duration::from_millis(500)).await;
        }
    }
    let scheduled_in = started.elapsed();
    let after = rss_kib();
    let per_timer = (after.saturating_sub(before) * 1024) as f64 / N as f64;
    println!(
        "{} pending timers ({}): RSS {} MiB -> {} MiB, {:.0} bytes per timer, scheduled in {:.2?}",
        N,
        match kind {
            Kind::Wheel => "zinx::Timers",
            Kind::Tasks => "task per timer",
        },
        before / 1024,
        after / 1024,
        per_timer,
        scheduled_in
    );
    drop(keep_timers);
    drop(keep_tasks);
}
