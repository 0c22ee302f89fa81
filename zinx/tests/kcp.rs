//! KCP over real UDP sockets on loopback (feature `kcp`): the TCP matrix (echo
//! in both layouts, coalesced and split frames, `MaxPacketSize`, unknown IDs,
//! `MaxConn` across a TCP and a KCP listener, graceful shutdown flushing
//! queued replies); the client's router, hooks, heartbeat and reconnect over
//! KCP; every echo arriving in order through a relay that drops and reorders
//! datagrams; a flood from many addresses held to the pending-session bound
//! while a real client is served; a new conversation from a known address
//! replacing its session; the idle timeout; the config's `Kcp*` keys; the echo
//! and client examples over KCP; hostile sequence numbers; a session refused
//! at `MaxConn` leaving nothing pending.
#![cfg(feature = "kcp")]
#![allow(clippy::unwrap_used)]

mod support;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use support::{RawClient, TestServer, client_example, config, echo, echo_example, frame, within};
use tokio::net::{TcpListener, UdpSocket};
use tokio::sync::{mpsc, oneshot};
use zinx::transport::Listener;
use zinx::transport::kcp::{KcpListener, KcpRead, KcpSettings, KcpStream, KcpWrite, bind_kcp};
use zinx::{
    Client, Config, Connection, Heartbeat, Layout, Reconnect, Request, Router, Server,
    ServerBuilder,
};

const T: Duration = Duration::from_secs(10);

type Raw = RawClient<KcpRead, KcpWrite>;

async fn kcp_listener(settings: KcpSettings) -> KcpListener {
    KcpListener::bind("127.0.0.1:0", settings).await.unwrap()
}

async fn start<F: zinx::Framing>(builder: ServerBuilder<F>) -> TestServer {
    let listener = kcp_listener(KcpSettings::default()).await;
    TestServer::start_on(builder, listener.into()).await
}

/// A client writing raw bytes over a KCP session.
async fn raw(addr: SocketAddr, layout: Layout) -> Raw {
    let stream = KcpStream::connect(&addr.to_string(), KcpSettings::default())
        .await
        .unwrap();
    let (read, write) = stream.into_split();
    RawClient::from_halves(read, write, layout)
}

async fn kcp_client(addr: SocketAddr, layout: Layout) -> Client {
    Client::builder(addr.to_string())
        .layout(layout)
        .kcp(KcpSettings::default())
        .connect()
        .await
        .unwrap()
}

/// A channel told of every `on_disconnect`.
fn disconnects() -> (
    impl Fn(Connection) -> std::future::Ready<()> + Send + Sync + 'static,
    mpsc::UnboundedReceiver<Connection>,
) {
    let (tx, rx) = mpsc::unbounded_channel();
    (
        move |conn| {
            let _ = tx.send(conn);
            std::future::ready(())
        },
        rx,
    )
}

#[tokio::test]
async fn echo_over_kcp_in_both_layouts() {
    for layout in [Layout::Tlv, Layout::Ltv] {
        let builder = Server::builder(config())
            .router(Router::new().route(1, echo))
            .layout(layout);
        let server = start(builder).await;
        let client = kcp_client(server.addr, layout).await;
        for size in [0usize, 1, 100, 4000] {
            let data = Bytes::from(vec![size as u8; size]);
            let reply = client.request(1, data.clone(), 1, T).await.unwrap();
            assert_eq!(reply.data, data, "{layout:?} {size}");
        }
        // The wire bytes of the layout, written by hand inside KCP.
        let mut raw = raw(server.addr, layout).await;
        let wire: Vec<u8> = match layout {
            Layout::Tlv => [&[0, 0, 0, 1, 0, 0, 0, 3][..], b"abc"].concat(),
            Layout::Ltv => [&[3, 0, 0, 0, 1, 0, 0, 0][..], b"abc"].concat(),
        };
        raw.write_raw(&wire).await;
        let reply = raw.recv().await;
        assert_eq!(
            (reply.id.0, &reply.data[..]),
            (1, &b"abc"[..]),
            "{layout:?}"
        );
        client.close().await;
        server.stop().await;
    }
}

#[tokio::test]
async fn coalesced_and_split_frames_over_kcp() {
    let server = start(Server::builder(config()).router(Router::new().route(1, echo))).await;
    let mut client = raw(server.addr, Layout::Tlv).await;
    // 500 frames in one write (several segments).
    let wire: Vec<u8> = (0..500u32)
        .flat_map(|i| frame(Layout::Tlv, 1, &i.to_be_bytes()))
        .collect();
    client.write_raw(&wire).await;
    for i in 0..500u32 {
        assert_eq!(&client.recv().await.data[..], &i.to_be_bytes());
    }
    // One frame in 7-byte writes, each flushed (a datagram each).
    let payload: Vec<u8> = (0..3000u32).map(|i| (i % 251) as u8).collect();
    for chunk in frame(Layout::Tlv, 1, &payload).chunks(7) {
        client.write_raw(chunk).await;
    }
    assert_eq!(&client.recv().await.data[..], &payload[..]);
    server.stop().await;
}

#[tokio::test]
async fn max_packet_size_closes_only_the_offending_kcp_session() {
    let cfg = Config {
        max_packet_size: 64,
        ..config()
    };
    let (on_disconnect, mut gone) = disconnects();
    let server = start(
        Server::builder(cfg)
            .router(Router::new().route(1, echo))
            .on_disconnect(on_disconnect),
    )
    .await;
    let mut good = raw(server.addr, Layout::Tlv).await;
    let mut bad = raw(server.addr, Layout::Tlv).await;
    assert_eq!(&good.roundtrip(1, [7u8; 64]).await.data[..], &[7u8; 64]);
    assert_eq!(&bad.roundtrip(1, "first").await.data[..], b"first");
    // A header (ID 1) announcing 65 bytes: that session's connection ends.
    bad.write_raw(&[0, 0, 0, 1, 0, 0, 0, 65]).await;
    let closed = within("on_disconnect", gone.recv()).await.unwrap();
    assert_eq!(server.handle.manager().len(), 1);
    assert_ne!(
        closed.id(),
        server.handle.manager().connections()[0].id(),
        "the offender went"
    );
    assert_eq!(
        &good.roundtrip(1, "still here").await.data[..],
        b"still here"
    );
    server.stop().await;
}

#[tokio::test]
async fn an_unknown_id_is_dropped_and_the_kcp_session_stays_open() {
    let server = start(Server::builder(config()).router(Router::new().route(1, echo))).await;
    let mut client = raw(server.addr, Layout::Tlv).await;
    client.send(99, "nobody routes this").await;
    let reply = client.roundtrip(1, "after").await;
    assert_eq!((reply.id.0, &reply.data[..]), (1, &b"after"[..]));
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn max_conn_is_counted_across_a_tcp_and_a_kcp_listener() {
    let (on_disconnect, mut gone) = disconnects();
    let server = Server::builder(Config {
        max_conn: 2,
        ..config()
    })
    .router(Router::new().route(1, echo))
    .on_disconnect(on_disconnect)
    .build();
    let handle = server.handle();
    let tcp = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let kcp = kcp_listener(KcpSettings::default()).await;
    let (tcp_addr, kcp_addr) = (tcp.local_addr().unwrap(), kcp.local_addr());
    let (stop, stopped) = oneshot::channel::<()>();
    let running = tokio::spawn(
        server.run_all([Listener::from(tcp), kcp.into()], async move {
            let _ = stopped.await;
        }),
    );

    let mut on_tcp = RawClient::connect(tcp_addr, Layout::Tlv).await;
    let on_kcp = kcp_client(kcp_addr, Layout::Tlv).await;
    assert_eq!(&on_tcp.roundtrip(1, "tcp").await.data[..], b"tcp");
    let reply = on_kcp.request(1, "kcp", 1, T).await.unwrap();
    assert_eq!(&reply.data[..], b"kcp");
    // Both slots are taken, one per transport: a third is refused on either
    // (KCP has no handshake to refuse: its session is dropped unanswered).
    assert_eq!(handle.free_slots(), Some(0));
    assert!(
        RawClient::connect(tcp_addr, Layout::Tlv)
            .await
            .read_eof()
            .await
    );
    let refused = kcp_client(kcp_addr, Layout::Tlv).await;
    let answer = refused.request(1, "x", 1, Duration::from_millis(300)).await;
    assert!(answer.is_err_and(|e| e.is_timeout()));
    refused.close().await;
    // A slot given back on one transport is taken on the other.
    drop(on_tcp);
    within("on_disconnect", gone.recv()).await.unwrap();
    assert_eq!(handle.free_slots(), Some(1));
    let again = kcp_client(kcp_addr, Layout::Tlv).await;
    assert_eq!(&again.request(1, "x", 1, T).await.unwrap().data[..], b"x");
    let _ = stop.send(());
    within("the server to stop", running)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(handle.task_count(), 0);
    on_kcp.close().await;
    again.close().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn graceful_shutdown_flushes_queued_replies_over_kcp() {
    const CONNS: usize = 2;
    const QUEUED: usize = 40;
    // 640 KiB per session, far more than a send window (32 segments): most of
    // it is still queued when the shutdown comes, and only the final flush
    // delivers it.
    const SIZE: usize = 16 * 1024;
    let (ready_tx, mut ready_rx) = mpsc::channel::<()>(CONNS);
    let router = Router::new().route(1, move |req: Request| {
        let ready = ready_tx.clone();
        async move {
            for i in 0..QUEUED as u32 {
                req.conn().send(1, Bytes::from(vec![i as u8; SIZE])).await?;
            }
            let _ = ready.send(()).await;
            Ok::<(), zinx::Error>(())
        }
    });
    let cfg = Config {
        max_packet_size: SIZE as u32,
        max_msg_chan_bytes: 0,
        ..config()
    };
    let server = start(Server::builder(cfg).router(router)).await;
    let mut clients = Vec::new();
    for _ in 0..CONNS {
        let mut c = raw(server.addr, Layout::Tlv).await;
        c.send(1, "").await;
        clients.push(c);
    }
    for _ in 0..CONNS {
        within("handlers", ready_rx.recv()).await.unwrap();
    }
    let handle = server.handle.clone();
    let conns = handle.manager().connections();
    assert_eq!(conns.len(), CONNS);
    let stopping = tokio::spawn(server.stop());
    for conn in &conns {
        within("the shutdown's close", conn.closed()).await;
    }
    // KCP has no close handshake: the peers read what was queued, all of it.
    let readers: Vec<_> = clients
        .into_iter()
        .map(|mut c| {
            tokio::spawn(async move {
                let mut msgs = Vec::new();
                for _ in 0..QUEUED {
                    msgs.push(c.recv().await);
                }
                msgs
            })
        })
        .collect();
    for reader in readers {
        let msgs = within("replies", reader).await.unwrap();
        for (i, m) in msgs.iter().enumerate() {
            assert_eq!((m.data.len(), m.data[0]), (SIZE, i as u8));
        }
    }
    within("the server to stop", stopping).await.unwrap();
    assert_eq!(handle.task_count(), 0);
}

#[tokio::test]
async fn a_kcp_client_routes_pushes_runs_hooks_beats_and_reconnects() {
    let (beats_tx, mut beats) = mpsc::channel::<()>(64);
    // The server beats too, so a client whose connection the server closed
    // notices the silence (KCP has no close handshake).
    let server = start(
        Server::builder(config())
            .router(
                Router::new()
                    .route(1, echo)
                    .route_sync(99999, move |_req: &Request| {
                        let _ = beats_tx.try_send(());
                    }),
            )
            .heartbeat(Heartbeat::new(Duration::from_millis(20))),
    )
    .await;
    let (pushed_tx, mut pushed) = mpsc::channel::<String>(8);
    let (connect_tx, mut connects) = mpsc::channel::<()>(8);
    let client = Client::builder(server.addr.to_string())
        .kcp(KcpSettings::default())
        .router(Router::new().route(50, move |req: Request| {
            let pushed = pushed_tx.clone();
            async move {
                let _ = pushed
                    .send(String::from_utf8_lossy(req.data()).into_owned())
                    .await;
            }
        }))
        .on_connect(move |_conn: Connection| {
            let tx = connect_tx.clone();
            async move {
                let _ = tx.send(()).await;
            }
        })
        // Silence long enough that a loaded machine's scheduling delays do
        // not pass for a lost server (a spurious reconnect).
        .heartbeat(Heartbeat::new(Duration::from_millis(20)).max_silence(Duration::from_secs(2)))
        .reconnect(Reconnect::new(
            Duration::from_millis(5),
            Duration::from_millis(50),
        ))
        .connect()
        .await
        .unwrap();
    within("first connect", connects.recv()).await.unwrap();
    within("a heartbeat over KCP", beats.recv()).await.unwrap();
    // The server knows the session once its first bytes (a beat) arrived.
    let manager = server.handle.manager();
    assert_eq!(manager.broadcast(50, "news").delivered, 1);
    assert_eq!(within("push", pushed.recv()).await.unwrap(), "news");
    for round in 0..2 {
        let first = client.connection().await.unwrap();
        let reply = client.request(1, "before", 1, T).await.unwrap();
        assert_eq!(&reply.data[..], b"before");
        for conn in manager.connections() {
            conn.close();
        }
        // The server's beats stop: the client gives the session up, dials a
        // new one, and runs on_connect again.
        within("reconnect", connects.recv()).await.unwrap();
        let second = client.connection().await.unwrap();
        assert_ne!(first.id(), second.id(), "round {round}");
        let reply = client.request(1, "again", 1, T).await.unwrap();
        assert_eq!(&reply.data[..], b"again");
    }
    client.close().await;
    server.stop().await;
}

/// xorshift64*: a seeded, deterministic PRNG for the relay.
struct Prng(u64);

impl Prng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }

    /// True with probability `percent` / 100.
    fn chance(&mut self, percent: u64) -> bool {
        self.next() % 100 < percent
    }
}

/// A UDP relay between one client and `server` that drops `loss` percent of
/// the datagrams each way and holds back `reorder` percent until the next one
/// has passed. Aborted when dropped.
struct Relay {
    addr: SocketAddr,
    task: tokio::task::JoinHandle<()>,
    counts: Arc<std::sync::Mutex<(u64, u64)>>,
}

impl Relay {
    async fn start(server: SocketAddr, loss: u64, reorder: u64, seed: u64) -> Relay {
        let front = UdpSocket::bind("127.0.0.1:0").await.unwrap();
        let back = UdpSocket::bind("127.0.0.1:0").await.unwrap();
        back.connect(server).await.unwrap();
        let addr = front.local_addr().unwrap();
        let counts = Arc::new(std::sync::Mutex::new((0, 0)));
        let tally = counts.clone();
        let task = tokio::spawn(async move {
            let mut prng = Prng(seed);
            let mut client = None;
            let (mut up, mut down) = (vec![0u8; 2048], vec![0u8; 2048]);
            let (mut held_up, mut held_down): (Option<Vec<u8>>, Option<Vec<u8>>) = (None, None);
            loop {
                tokio::select! {
                    got = front.recv_from(&mut up) => {
                        let Ok((n, from)) = got else { continue };
                        client = Some(from);
                        let datagram = up[..n].to_vec();
                        tally.lock().unwrap().0 += 1;
                        if prng.chance(loss) {
                            tally.lock().unwrap().1 += 1;
                            continue;
                        }
                        if held_up.is_none() && prng.chance(reorder) {
                            held_up = Some(datagram);
                            continue;
                        }
                        let _ = back.send(&datagram).await;
                        if let Some(late) = held_up.take() {
                            let _ = back.send(&late).await;
                        }
                    }
                    got = back.recv(&mut down) => {
                        let (Ok(n), Some(to)) = (got, client) else { continue };
                        let datagram = down[..n].to_vec();
                        tally.lock().unwrap().0 += 1;
                        if prng.chance(loss) {
                            tally.lock().unwrap().1 += 1;
                            continue;
                        }
                        if held_down.is_none() && prng.chance(reorder) {
                            held_down = Some(datagram);
                            continue;
                        }
                        let _ = front.send_to(&datagram, to).await;
                        if let Some(late) = held_down.take() {
                            let _ = front.send_to(&late, to).await;
                        }
                    }
                }
            }
        });
        Relay { addr, task, counts }
    }
}

impl Drop for Relay {
    fn drop(&mut self) {
        self.task.abort();
    }
}

#[tokio::test]
async fn every_echo_arrives_in_order_through_a_relay_that_drops_and_reorders() {
    const ECHOES: u32 = 300;
    let server = start(Server::builder(config()).router(Router::new().route(1, echo))).await;
    let relay = Relay::start(server.addr, 10, 10, 0x5eed_1234_abcd_0001).await;
    let mut client = raw(relay.addr, Layout::Tlv).await;
    // Pipelined in bursts of 30, the next burst sent before the last is read.
    let payload = |i: u32| -> Vec<u8> {
        let len = 1 + (i as usize * 37) % 700;
        (0..len).map(|p| (i as usize + p) as u8).collect()
    };
    let mut next_reply = 0;
    for burst in (0..ECHOES).step_by(30) {
        let wire: Vec<u8> = (burst..burst + 30)
            .flat_map(|i| frame(Layout::Tlv, 1, &payload(i)))
            .collect();
        client.write_raw(&wire).await;
        while next_reply + 30 < burst + 30 {
            let reply = client.recv().await;
            assert_eq!(reply.data, payload(next_reply), "reply {next_reply}");
            next_reply += 1;
        }
    }
    while next_reply < ECHOES {
        let reply = client.recv().await;
        assert_eq!(reply.data, payload(next_reply), "reply {next_reply}");
        next_reply += 1;
    }
    let (seen, dropped) = *relay.counts.lock().unwrap();
    assert!(
        dropped > 0 && dropped * 100 >= seen * 5,
        "{dropped} of {seen} dropped"
    );
    server.stop().await;
}

/// A KCP segment as kcp-go would send it (window 32, una 0).
fn segment(conv: u32, cmd: u8, sn: u32, data: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    out.extend_from_slice(&conv.to_le_bytes());
    out.extend_from_slice(&[cmd, 0]);
    out.extend_from_slice(&32u16.to_le_bytes());
    out.extend_from_slice(&0u32.to_le_bytes());
    out.extend_from_slice(&sn.to_le_bytes());
    out.extend_from_slice(&0u32.to_le_bytes());
    out.extend_from_slice(&(data.len() as u32).to_le_bytes());
    out.extend_from_slice(data);
    out
}

const PUSH: u8 = 81;
const ACK: u8 = 82;

// The sources bind 127.0.1.x and 127.0.2.x: all of 127/8 is loopback on
// Linux only.
#[cfg(target_os = "linux")]
#[tokio::test]
async fn a_flood_from_many_addresses_is_held_to_the_pending_bound_while_a_client_is_served() {
    // Few enough datagrams (two a source) that the server's socket buffer holds
    // them all even before its driver runs.
    const SOURCES: u32 = 64;
    const BOUND: usize = 16;
    let mut settings = KcpSettings::default();
    settings.max_pending = BOUND;
    // Far longer than the flood and a round trip on a loaded machine: none
    // expires before it is counted (expiry has a test of its own, in
    // paused time: `pending_sessions_expire_at_the_handshake_timeout_but_within_3_s`).
    settings.pending_timeout = Duration::from_secs(60);
    let listener = kcp_listener(settings).await;
    let stats = listener.stats();
    let server = TestServer::start_on(
        Server::builder(config()).router(Router::new().route(1, echo)),
        listener.into(),
    )
    .await;
    // Each source address (127.0.1.x, 127.0.2.x) sends a segment that could
    // start a session (data, out of order: never delivered) and one that is
    // not KCP at all.
    let mut sources = Vec::new();
    for i in 0..SOURCES {
        let ip = format!("127.0.{}.{}", 1 + i / 200, 1 + i % 200);
        let socket = UdpSocket::bind((ip.as_str(), 0)).await.unwrap();
        socket
            .send_to(&segment(i, PUSH, 5, b"spoofed"), server.addr)
            .await
            .unwrap();
        socket
            .send_to(b"GET / HTTP/1.1\r\n", server.addr)
            .await
            .unwrap();
        sources.push(socket);
    }
    // Loopback delivers in the order sent: once this client is served, the
    // driver has seen the whole flood.
    let mut client = raw(server.addr, Layout::Tlv).await;
    assert_eq!(&client.roundtrip(1, "served").await.data[..], b"served");
    assert_eq!(stats.pending(), BOUND);
    assert_eq!(stats.refused_sessions(), u64::from(SOURCES) - BOUND as u64);
    assert_eq!(stats.dropped_datagrams(), u64::from(SOURCES));
    assert_eq!(
        server.handle.manager().len(),
        1,
        "no flood source was admitted"
    );
    assert_eq!(&client.roundtrip(1, "still").await.data[..], b"still");
    server.stop().await;
}

/// A hand-driven kcp-go-style client session (the `kcp` crate) on `socket`:
/// sends `frame`, returns the first `want` bytes it receives.
async fn hand_echo(socket: &Arc<UdpSocket>, conv: u32, frame: &[u8], want: usize) -> Vec<u8> {
    struct Out(Arc<UdpSocket>);
    impl std::io::Write for Out {
        fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
            let _ = self.0.try_send(buf);
            Ok(buf.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }
    let mut kcp = kcp::Kcp::new_stream(conv, Out(socket.clone()));
    kcp.set_nodelay(true, 10, 2, true);
    kcp.set_wndsize(32, 32);
    let born = Instant::now();
    let ms = || born.elapsed().as_millis() as u32;
    kcp.update(ms()).unwrap();
    kcp.send(frame).unwrap();
    kcp.flush().unwrap();
    let mut got = Vec::new();
    let mut datagram = [0u8; 1500];
    while got.len() < want {
        assert!(born.elapsed() < T, "no echo for conv {conv}");
        if let Ok(Ok(n)) =
            tokio::time::timeout(Duration::from_millis(10), socket.recv(&mut datagram)).await
        {
            kcp.input(&datagram[..n]).unwrap();
        }
        kcp.update(ms()).unwrap();
        let mut buf = [0u8; 1500];
        while let Ok(n) = kcp.recv(&mut buf) {
            got.extend_from_slice(&buf[..n]);
        }
    }
    // The acknowledgement of what came, so the server waits for nothing.
    kcp.flush().unwrap();
    got
}

#[tokio::test]
async fn a_new_conversation_from_the_same_address_replaces_the_session() {
    let (on_disconnect, mut gone) = disconnects();
    let server = start(
        Server::builder(config())
            .router(Router::new().route(1, echo))
            .on_disconnect(on_disconnect),
    )
    .await;
    let socket = Arc::new(UdpSocket::bind("127.0.0.1:0").await.unwrap());
    socket.connect(server.addr).await.unwrap();
    let hello = frame(Layout::Tlv, 1, b"first conversation");
    assert_eq!(hand_echo(&socket, 0x1111, &hello, hello.len()).await, hello);
    let first = server.handle.manager().connections()[0].id();
    // Same address, another conversation starting at sequence number 0.
    let again = frame(Layout::Tlv, 1, b"second conversation");
    assert_eq!(hand_echo(&socket, 0x2222, &again, again.len()).await, again);
    let closed = within("the old session's end", gone.recv()).await.unwrap();
    assert_eq!(closed.id(), first);
    let live = server.handle.manager().connections();
    assert_eq!(live.len(), 1);
    assert_ne!(live[0].id(), first);
    server.stop().await;
}

#[tokio::test]
async fn a_silent_kcp_session_is_closed_at_the_idle_timeout() {
    let mut settings = KcpSettings::default();
    settings.idle_timeout = Duration::from_secs(1);
    let listener = kcp_listener(settings).await;
    let stats = listener.stats();
    let (on_disconnect, mut gone) = disconnects();
    let server = TestServer::start_on(
        Server::builder(config())
            .router(Router::new().route(1, echo))
            .on_disconnect(on_disconnect),
        listener.into(),
    )
    .await;
    let mut client = raw(server.addr, Layout::Tlv).await;
    assert_eq!(&client.roundtrip(1, "once").await.data[..], b"once");
    let quiet = Instant::now();
    within("the idle close", gone.recv()).await.unwrap();
    let waited = quiet.elapsed();
    assert!(waited >= Duration::from_millis(900), "{waited:?}");
    assert_eq!(stats.sessions(), 0);
    drop(client);
    server.stop().await;
}

#[tokio::test]
async fn the_config_kcp_keys_are_served_and_fec_is_refused() {
    let cfg = Config::from_json_str(
        r#"{"Host": "127.0.0.1", "KcpPort": 0, "KcpSendWindow": 64, "KcpStreamMode": false}"#,
    )
    .unwrap();
    let settings = KcpSettings::from_config(&cfg).unwrap();
    assert_eq!((settings.send_window, settings.stream), (64, false));
    let listener = bind_kcp(&cfg).await.unwrap();
    assert_eq!(listener.transport(), "kcp");
    let server = TestServer::start_on(
        Server::builder(cfg.clone()).router(Router::new().route(1, echo)),
        listener,
    )
    .await;
    // Message mode on both ends.
    let mut client_settings = KcpSettings::from_config(&cfg).unwrap();
    client_settings.stream = false;
    let client = Client::builder(server.addr.to_string())
        .kcp(client_settings)
        .connect()
        .await
        .unwrap();
    let big = Bytes::from(vec![9u8; 4000]);
    assert_eq!(
        client.request(1, big.clone(), 1, T).await.unwrap().data,
        big
    );
    client.close().await;
    server.stop().await;

    let fec = Config::from_json_str(
        r#"{"Host": "127.0.0.1", "KcpPort": 0, "KcpFecDataShards": 10, "KcpFecParityShards": 3}"#,
    )
    .unwrap();
    match bind_kcp(&fec).await {
        Err(zinx::Error::ConfigValue { key, message }) => {
            assert_eq!(key, "KcpFecDataShards");
            assert!(message.contains("not implemented"), "{message}");
        }
        other => panic!("FEC must be refused: {other:?}"),
    }
}

#[tokio::test]
async fn the_echo_and_client_examples_speak_kcp() {
    let dir = std::env::temp_dir().join(format!("zinx-kcp-example-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let config = dir.join("zinx.json");
    std::fs::write(
        &config,
        r#"{"Host": "127.0.0.1", "Mode": "tcp,kcp", "TcpPort": 0, "KcpPort": 0}"#,
    )
    .unwrap();
    // One line per listener: TCP, then KCP.
    let (child, lines) = echo_example(&config, 2).await;
    let kcp_line = &lines[1];
    assert!(kcp_line.contains("kcp"), "{kcp_line}");
    let addr: SocketAddr = kcp_line
        .split_whitespace()
        .find_map(|w| w.parse().ok())
        .unwrap_or_else(|| panic!("no address in {kcp_line:?}"));
    let args = [
        "--transport",
        "kcp",
        "--addr",
        &addr.to_string(),
        "--count",
        "50",
    ];
    let (ok, text) = client_example(args.map(str::to_owned).to_vec()).await;
    assert!(ok && text.contains("50 ok, 0 mismatched"), "{text}");
    drop(child);
    let _ = std::fs::remove_dir_all(&dir);
}

#[tokio::test]
async fn hostile_sequence_numbers_leave_the_other_sessions_served() {
    let listener = kcp_listener(KcpSettings::default()).await;
    let stats = listener.stats();
    let server = TestServer::start_on(
        Server::builder(config()).router(Router::new().route(1, echo)),
        listener.into(),
    )
    .await;
    let mut client = raw(server.addr, Layout::Tlv).await;
    assert_eq!(&client.roundtrip(1, "before").await.data[..], b"before");
    // A session whose echo stays unacknowledged (in flight) ...
    let hostile = UdpSocket::bind("127.0.0.1:0").await.unwrap();
    hostile.connect(server.addr).await.unwrap();
    let tlv = [0, 0, 0, 1, 0, 0, 0, 1, b'x'];
    hostile.send(&segment(77, PUSH, 0, &tlv)).await.unwrap();
    let mut datagram = [0u8; 1500];
    within("the echo", hostile.recv(&mut datagram))
        .await
        .unwrap();
    // ... then numbers kcp 0.6's `timediff` overflows on: a sequence number
    // half the space ahead, an una far beyond what was sent, an ACK of such.
    let mut far_una = segment(77, PUSH, 1, b"y");
    far_una[16..20].copy_from_slice(&0xFFFF_FFF0u32.to_le_bytes());
    for datagram in [
        segment(77, PUSH, 0x8000_0000, b"z"),
        far_una,
        segment(77, ACK, 0x8000_0000, b""),
    ] {
        hostile.send(&datagram).await.unwrap();
    }
    // Loopback delivers in order: once this echo is back, the driver has seen
    // them all, and still serves.
    assert_eq!(&client.roundtrip(1, "after").await.data[..], b"after");
    assert!(stats.sessions() <= 2);
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_session_refused_at_max_conn_leaves_nothing_pending() {
    let mut settings = KcpSettings::default();
    // Longer than the test: a session left pending would stay.
    settings.pending_timeout = Duration::from_secs(30);
    let listener = kcp_listener(settings).await;
    let stats = listener.stats();
    let server = TestServer::start_on(
        Server::builder(Config {
            max_conn: 1,
            ..config()
        })
        .router(Router::new().route(1, echo)),
        listener.into(),
    )
    .await;
    let mut admitted = raw(server.addr, Layout::Tlv).await;
    assert_eq!(&admitted.roundtrip(1, "in").await.data[..], b"in");
    // A second session is refused at MaxConn and dropped ...
    let (_read, mut write) = KcpStream::connect(&server.addr.to_string(), settings)
        .await
        .unwrap()
        .into_split();
    let tlv = [0, 0, 0, 1, 0, 0, 0, 1, b'x'];
    tokio::io::AsyncWriteExt::write_all(&mut write, &tlv)
        .await
        .unwrap();
    tokio::io::AsyncWriteExt::flush(&mut write).await.unwrap();
    // (The refusal comes within milliseconds; nothing tells the peer.)
    tokio::time::sleep(Duration::from_millis(300)).await;
    // ... unacknowledged: its first segment, resent with the next, starts a
    // session that delivers (and is refused again), never one that waits for
    // a segment the peer believes delivered.
    tokio::io::AsyncWriteExt::write_all(&mut write, &tlv)
        .await
        .unwrap();
    tokio::io::AsyncWriteExt::flush(&mut write).await.unwrap();
    let started = Instant::now();
    let mut settled = 0;
    while settled < 3 && started.elapsed() < T {
        tokio::time::sleep(Duration::from_millis(50)).await;
        let quiet = stats.pending() == 0 && stats.sessions() == 1;
        if started.elapsed() > Duration::from_millis(500) && quiet {
            settled += 1;
        } else {
            settled = 0;
        }
    }
    assert_eq!(
        (stats.pending(), stats.sessions()),
        (0, 1),
        "a session waits on a segment never resent"
    );
    assert_eq!(server.handle.manager().len(), 1);
    assert_eq!(&admitted.roundtrip(1, "still").await.data[..], b"still");
    server.stop().await;
}
