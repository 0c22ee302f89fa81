//! Soaks: many connections over real loopback sockets, bounded in time. Ignored in
//! the normal test run; `scripts/soak.sh` runs them in release mode and prints the
//! figures that docs/RELIABILITY.md reports.
//!
//! - churn: 10,000 short connections that send while the server closes them and
//!   while they close, with broadcasts running;
//! - slow consumers: peers that never read while the server pushes to them, under
//!   each `SendQueueFull` policy, beside peers doing ping-pong;
//! - silent peers (no FIN, no bytes) and half-open ones (in a network namespace
//!   whose link is cut: no FIN, no ACK either) found by the heartbeat and closed.

mod support;

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use bytes::Bytes;
use support::{RawClient, TestServer, frame, within};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpSocket, TcpStream};
use tokio::sync::oneshot;
use zinx::{
    Config, ConnId, Heartbeat, Layout, Request, Router, SendQueueFull, Server, ServerHandle,
};

/// The longest a soak may run before it counts as hung.
const SOAK_LIMIT: Duration = Duration::from_secs(300);

fn rss_kib() -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("VmRSS:"))
                .and_then(|l| l.split_whitespace().nth(1))
                .and_then(|v| v.parse().ok())
        })
        .unwrap_or(0)
}

/// Counts panics anywhere in the process (the framework catches handler panics,
/// so any count means a panic escaped into the runtime or a test task).
/// Counts panics anywhere in the process, except the ones a test handler raises on
/// purpose (`EXPECTED_PANIC`), which the framework catches.
fn count_panics() -> Arc<AtomicUsize> {
    let panics = Arc::new(AtomicUsize::new(0));
    let seen = panics.clone();
    let default = std::panic::take_hook();
    std::panic::set_hook(Box::new(move |info| {
        if info.payload().downcast_ref::<&str>() != Some(&EXPECTED_PANIC) {
            seen.fetch_add(1, Ordering::SeqCst);
            default(info);
        }
    }));
    panics
}

const EXPECTED_PANIC: &str = "soak: handler panic";

fn config(max_conn: usize) -> Config {
    Config {
        max_conn,
        ..support::config()
    }
}

/// Connects from 127.0.0.x, spreading source addresses over the loopback net so
/// thousands of short connections do not run out of ephemeral ports.
async fn connect_from(addr: SocketAddr, i: usize) -> std::io::Result<TcpStream> {
    let socket = TcpSocket::new_v4()?;
    let source = Ipv4Addr::new(127, 0, 1 + (i / 250 % 250) as u8, 1 + (i % 250) as u8);
    socket.bind(SocketAddr::new(IpAddr::V4(source), 0))?;
    socket.connect(addr).await
}

/// Waits (bounded) until the server holds no connection, task or permit.
async fn drained(handle: &ServerHandle, max_conn: usize) -> Duration {
    let start = Instant::now();
    within("connections, tasks and permits back to zero", async {
        while !(handle.manager().is_empty()
            && handle.task_count() == 0
            && handle.free_slots() == Some(max_conn))
        {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    })
    .await;
    start.elapsed()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "soak: run with scripts/soak.sh"]
async fn churn_10k_short_connections_with_closes_and_broadcasts() {
    const CONNS: usize = 10_000;
    const AT_ONCE: usize = 200;
    const MAX_CONN: usize = 1_000;
    let panics = count_panics();
    let server = TestServer::start(
        Server::builder(config(MAX_CONN)).router(
            Router::new()
                .route(1, support::echo)
                // A handler that closes its own connection mid-stream.
                .route(2, |req: Request| async move { req.conn().close() })
                // A handler that panics: the framework closes that connection only.
                .route(3, |_req: Request| async move {
                    if EXPECTED_PANIC.len() > 1 {
                        std::panic::panic_any(EXPECTED_PANIC);
                    }
                }),
        ),
    )
    .await;
    // Warm up the runtime and allocator before the RSS reference.
    {
        let mut c = RawClient::connect(server.addr, Layout::Tlv).await;
        c.roundtrip(1, "warm-up").await;
    }
    drained(&server.handle, MAX_CONN).await;
    let rss_start = rss_kib();
    let started = Instant::now();

    // Broadcasts to everyone, and closes of random live connections, while the
    // clients come and go.
    let stop = Arc::new(AtomicBool::new(false));
    let manager = server.handle.manager();
    let broadcaster = tokio::spawn({
        let (stop, manager) = (stop.clone(), manager.clone());
        async move {
            let mut sent = 0usize;
            while !stop.load(Ordering::Relaxed) {
                sent += manager.broadcast(9, Bytes::from_static(b"news")).delivered;
                tokio::time::sleep(Duration::from_millis(1)).await;
            }
            sent
        }
    });
    let closer = tokio::spawn({
        let (stop, manager) = (stop.clone(), manager.clone());
        async move {
            let mut closed = 0usize;
            let mut n = 0u64;
            while !stop.load(Ordering::Relaxed) {
                n = n
                    .wrapping_mul(6364136223846793005)
                    .wrapping_add(1442695040888963407);
                let conns = manager.connections();
                if !conns.is_empty() {
                    conns[(n >> 33) as usize % conns.len()].close();
                    closed += 1;
                }
                tokio::time::sleep(Duration::from_millis(2)).await;
            }
            closed
        }
    });

    let limit = Arc::new(tokio::sync::Semaphore::new(AT_ONCE));
    let failures = Arc::new(AtomicUsize::new(0));
    let mut clients = tokio::task::JoinSet::new();
    for i in 0..CONNS {
        let permit = limit.clone().acquire_owned().await.unwrap();
        let (addr, failures) = (server.addr, failures.clone());
        clients.spawn(async move {
            let _permit = permit;
            let Ok(mut stream) = connect_from(addr, i).await else {
                failures.fetch_add(1, Ordering::Relaxed);
                return;
            };
            // Each client sends a few messages, some of them asking the server to
            // close or to panic, then reads a little or nothing and closes; writes
            // and reads may fail once the server has closed: that is the point.
            let mut wire = Vec::new();
            for k in 0..(i % 5) {
                let id = match (i + k) % 11 {
                    7 => 2,
                    10 => 3,
                    _ => 1,
                };
                wire.extend(frame(Layout::Tlv, id as u32, &[k as u8; 32]));
            }
            let _ = stream.write_all(&wire).await;
            if i % 3 == 0 {
                let mut buf = [0u8; 256];
                let _ =
                    tokio::time::timeout(Duration::from_millis(20), stream.read(&mut buf)).await;
            }
            if i % 7 == 0 {
                // Half-close and read to the end, or until the server closes.
                let _ = stream.shutdown().await;
                let mut sink = Vec::new();
                let _ = tokio::time::timeout(Duration::from_secs(5), stream.read_to_end(&mut sink))
                    .await;
            }
        });
        while clients.try_join_next().is_some() {}
    }
    within("the clients", async {
        while clients.join_next().await.is_some() {}
    })
    .await;
    stop.store(true, Ordering::Relaxed);
    let broadcasts = broadcaster.await.unwrap();
    let closes = closer.await.unwrap();
    let drain = drained(&server.handle, MAX_CONN).await;
    let elapsed = started.elapsed();
    // Give the allocator a moment to settle before reading RSS.
    tokio::time::sleep(Duration::from_millis(200)).await;
    let rss_end = rss_kib();

    server.stop().await;
    println!(
        "soak churn: {CONNS} connections ({AT_ONCE} at once) in {:.1} s, {} connect failures, \
         {broadcasts} broadcast deliveries, {closes} server-side closes, drained in {} ms; \
         panics other than the handlers' own: {}; RSS {rss_start} -> {rss_end} KiB",
        elapsed.as_secs_f64(),
        failures.load(Ordering::Relaxed),
        drain.as_millis(),
        panics.load(Ordering::SeqCst),
    );
    assert_eq!(failures.load(Ordering::Relaxed), 0, "connect failures");
    assert_eq!(panics.load(Ordering::SeqCst), 0, "panics");
    assert!(
        rss_end <= rss_start + 8 * 1024,
        "RSS grew from {rss_start} to {rss_end} KiB"
    );
}

/// Slow consumers under one policy: `SLOW` peers never read while the server pushes
/// 4 KiB messages to everyone; `FAST` peers ping-pong meanwhile. Returns the
/// figures printed by the test.
async fn slow_consumers(policy: SendQueueFull) -> String {
    const SLOW: usize = 50;
    const FAST: usize = 20;
    const QUEUE: u32 = 64;
    const PUSH: Duration = Duration::from_secs(5);
    let server = TestServer::start(
        Server::builder(Config {
            max_msg_chan_len: QUEUE,
            send_queue_full: policy,
            ..config(1_000)
        })
        .router(Router::new().route(1, support::echo)),
    )
    .await;
    let manager = server.handle.manager();
    let rss_start = rss_kib();

    let mut slow = Vec::new();
    for i in 0..SLOW {
        slow.push(connect_from(server.addr, i).await.unwrap());
    }
    let slow_ids: Vec<ConnId> = within("slow peers registered", async {
        loop {
            if manager.len() >= SLOW {
                return manager
                    .connections()
                    .iter()
                    .map(zinx::Connection::id)
                    .collect();
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    })
    .await;

    // Fast peers ping-pong; every round trip is timed, first for a second with
    // nothing else going on (the reference), then while the slow peers are pushed to.
    let mut fast = Vec::new();
    for _ in 0..FAST {
        fast.push(RawClient::connect(server.addr, Layout::Tlv).await);
    }
    let mut reference = Vec::new();
    let ref_start = Instant::now();
    while ref_start.elapsed() < Duration::from_secs(1) {
        for c in &mut fast {
            let t = Instant::now();
            c.roundtrip(1, [1u8; 64]).await;
            reference.push(t.elapsed());
        }
    }
    let mut rtts = Vec::new();

    // The pusher: 4 KiB to every slow peer, as fast as the policy lets it.
    let stop = Arc::new(AtomicBool::new(false));
    let pusher = tokio::spawn({
        let (stop, manager) = (stop.clone(), manager.clone());
        let ids = slow_ids.clone();
        async move {
            let (mut sent, mut failed) = (0usize, 0usize);
            while !stop.load(Ordering::Relaxed) {
                for &id in &ids {
                    let Some(conn) = manager.get(id) else {
                        continue;
                    };
                    // Under `wait` this blocks on a full queue until stopped.
                    // A fresh buffer per message, so queued messages cost memory.
                    let data = Bytes::from(vec![7u8; 4096]);
                    let result = tokio::select! {
                        r = conn.send(9, data) => r,
                        () = async { while !stop.load(Ordering::Relaxed) {
                            tokio::time::sleep(Duration::from_millis(5)).await;
                        } } => break,
                    };
                    match result {
                        Ok(()) => sent += 1,
                        Err(_) => failed += 1,
                    }
                }
                tokio::time::sleep(Duration::from_millis(1)).await;
            }
            (sent, failed)
        }
    });

    let push_start = Instant::now();
    let mut peak_rss = rss_kib();
    while push_start.elapsed() < PUSH {
        for c in &mut fast {
            let t = Instant::now();
            let reply = c.roundtrip(1, [1u8; 64]).await;
            assert_eq!(reply.data.len(), 64);
            rtts.push(t.elapsed());
        }
        peak_rss = peak_rss.max(rss_kib());
    }
    stop.store(true, Ordering::Relaxed);
    let (sent, failed) = within("pusher", pusher).await.unwrap();
    // A closed peer stays registered while its writer lingers over the final flush.
    let open_slow = slow_ids
        .iter()
        .filter(|&&id| manager.get(id).is_some_and(|c| !c.is_closed()))
        .count();
    let percentiles = |mut v: Vec<Duration>| {
        v.sort_unstable();
        let p = |q: f64| v[((v.len() - 1) as f64 * q) as usize].as_micros();
        (p(0.5), p(0.99), v.len())
    };
    let (ref50, ref99, _) = percentiles(reference);
    let (p50, p99, round_trips) = percentiles(rtts);

    // Bound: each slow peer holds at most its queue of 4 KiB messages plus what
    // the writer took (one batch) and the kernel buffered.
    let bound_kib = (SLOW as u64) * u64::from(QUEUE) * 2 * 4 + 16 * 1024;
    let growth = peak_rss.saturating_sub(rss_start);
    drop(slow);
    drop(fast);
    server.stop().await;
    assert!(
        growth <= bound_kib,
        "RSS grew {growth} KiB, bound {bound_kib} KiB"
    );
    match policy {
        SendQueueFull::Close => assert_eq!(open_slow, 0, "every slow peer closed"),
        _ => assert_eq!(open_slow, SLOW, "slow peers kept"),
    }
    if policy == SendQueueFull::Fail {
        assert!(failed > 0, "sends to full queues failed");
    }
    format!(
        "soak slow consumers ({policy:?}): {SLOW} peers not reading, {FAST} ping-pong peers, \
         {:.0} s of 4 KiB pushes: {sent} queued, {failed} refused, {open_slow} slow peers still open; \
         ping-pong RTT p50 {p50} µs, p99 {p99} µs over {round_trips} round trips \
         (alone: p50 {ref50} µs, p99 {ref99} µs); RSS +{growth} KiB at peak (bound {bound_kib} KiB)",
        PUSH.as_secs_f64(),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "soak: run with scripts/soak.sh"]
async fn slow_consumers_are_bounded_and_harm_nobody_else() {
    let run = async {
        for policy in [
            SendQueueFull::Wait,
            SendQueueFull::Fail,
            SendQueueFull::Close,
        ] {
            println!("{}", slow_consumers(policy).await);
        }
    };
    tokio::time::timeout(SOAK_LIMIT, run)
        .await
        .expect("soak hung");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "soak: run with scripts/soak.sh"]
async fn silent_peers_are_found_by_the_heartbeat_and_closed() {
    const PEERS: usize = 200;
    let interval = Duration::from_millis(500);
    let limit = Duration::from_secs(2);
    let server = TestServer::start(
        Server::builder(config(1_000))
            .router(Router::new().route(1, support::echo))
            .heartbeat(Heartbeat::new(interval).max_silence(limit)),
    )
    .await;
    // Each peer says one thing, then goes silent without closing: from the
    // server's side, exactly a half-open connection (no FIN, no bytes).
    let mut peers = Vec::new();
    for i in 0..PEERS {
        let mut s = connect_from(server.addr, i).await.unwrap();
        s.write_all(&frame(Layout::Tlv, 1, b"last words"))
            .await
            .unwrap();
        peers.push(s);
    }
    let silent_from = Instant::now();
    let manager = server.handle.manager();
    within("every silent peer closed", async {
        while !manager.is_empty() {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await;
    let took = silent_from.elapsed();
    // Every peer sees the server's close (EOF after the heartbeats it sent).
    let mut closed = 0;
    for mut s in peers {
        let mut sink = Vec::new();
        if let Ok(Ok(_)) =
            tokio::time::timeout(Duration::from_secs(5), s.read_to_end(&mut sink)).await
        {
            closed += 1;
        }
    }
    server.stop().await;
    println!(
        "soak silent peers: {PEERS} peers silent without FIN, heartbeat every {} ms, limit {} ms: \
         all closed {} ms after going silent, {closed} saw EOF",
        interval.as_millis(),
        limit.as_millis(),
        took.as_millis()
    );
    assert_eq!(closed, PEERS);
    // The silence is counted from the last frame, which arrived just before
    // `silent_from`; closes come after the limit (checked on a heartbeat tick).
    assert!(
        took + interval >= limit,
        "closed before the limit: {took:?}"
    );
}

/// A network namespace with a veth link to this one, removed on drop.
struct TestHost {
    netns: String,
    veth: String,
}

impl TestHost {
    /// Creates namespace `name` reachable at 10.201.x.2 from 10.201.x.1 here, or
    /// `None` where namespaces cannot be made (not root, no iproute2).
    fn create(tag: u8) -> Option<TestHost> {
        let netns = format!("zinx-soak-{}-{tag}", std::process::id());
        let veth = format!("zxs{tag}h{}", std::process::id() % 10_000);
        let peer = format!("zxs{tag}p{}", std::process::id() % 10_000);
        let host_ip = format!("10.201.{tag}.1/30");
        let peer_ip = format!("10.201.{tag}.2/30");
        let steps: [&[&str]; 7] = [
            &["netns", "add", &netns],
            &["link", "add", &veth, "type", "veth", "peer", "name", &peer],
            &["link", "set", &peer, "netns", &netns],
            &["addr", "add", &host_ip, "dev", &veth],
            &["link", "set", &veth, "up"],
            &["-n", &netns, "addr", "add", &peer_ip, "dev", &peer],
            &["-n", &netns, "link", "set", &peer, "up"],
        ];
        for step in steps {
            let ok = std::process::Command::new("ip")
                .args(step)
                .stderr(std::process::Stdio::null())
                .status()
                .is_ok_and(|s| s.success());
            if !ok {
                // Undo what was made.
                drop(TestHost {
                    netns: netns.clone(),
                    veth: veth.clone(),
                });
                return None;
            }
        }
        Some(TestHost { netns, veth })
    }

    /// Cuts the link: from now on the peer's packets vanish, and no FIN or reset
    /// will ever come from it.
    fn vanish(&self) {
        let _ = std::process::Command::new("ip")
            .args(["link", "del", &self.veth])
            .status();
    }
}

impl Drop for TestHost {
    fn drop(&mut self) {
        self.vanish();
        let _ = std::process::Command::new("ip")
            .args(["netns", "del", &self.netns])
            .status();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "soak: run with scripts/soak.sh (needs root and iproute2)"]
async fn half_open_peers_in_a_vanished_network_are_closed_by_the_heartbeat() {
    const PEERS: usize = 20;
    let Some(host) = TestHost::create(7) else {
        println!("soak half-open: skipped, network namespaces are not available here");
        return;
    };
    let interval = Duration::from_millis(500);
    let limit = Duration::from_secs(2);
    // The server listens on the link's address; peers in the namespace reach it
    // over the veth pair.
    let listener = TcpListener::bind("10.201.7.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let server = Server::builder(config(1_000))
        .router(Router::new().route(1, support::echo))
        .heartbeat(Heartbeat::new(interval).max_silence(limit))
        .build();
    let handle = server.handle();
    let (stop, rx) = oneshot::channel::<()>();
    let task = tokio::spawn(server.run(listener, async move {
        let _ = rx.await;
    }));
    // Peers: bash in the namespace, each holding a connection open and sending
    // one frame, then sleeping.
    let script = format!(
        "for i in $(seq {PEERS}); do (exec 3<>/dev/tcp/{}/{}; printf '\\0\\0\\0\\1\\0\\0\\0\\1x' >&3; sleep 60) & done; wait",
        addr.ip(),
        addr.port()
    );
    let mut peers = std::process::Command::new("ip")
        .args(["netns", "exec", &host.netns, "bash", "-c", &script])
        .spawn()
        .unwrap();
    let manager = handle.manager();
    within("peers connected", async {
        while manager.len() < PEERS {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    })
    .await;
    // The network vanishes: no FIN, no reset, no ACK for the heartbeats.
    host.vanish();
    let vanished = Instant::now();
    within("every half-open peer closed", async {
        while !manager.is_empty() {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await;
    let took = vanished.elapsed();
    let _ = peers.kill();
    let _ = peers.wait();
    let _ = stop.send(());
    within("server shutdown", task).await.unwrap().unwrap();
    drop(host);
    println!(
        "soak half-open: {PEERS} peers in a namespace whose link was cut (no FIN, no ACK), \
         heartbeat every {} ms, limit {} ms: all closed and cleaned up {} ms after the cut",
        interval.as_millis(),
        limit.as_millis(),
        took.as_millis()
    );
    // Silence is counted from each peer's frame, sent before the cut.
    assert!(
        took + interval >= limit,
        "closed before the limit: {took:?}"
    );
}
