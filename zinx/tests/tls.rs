//! TLS over real sockets (feature `tls`), with throw-away certificates made at
//! run time: the TCP matrix (echo in both layouts, coalesced and split frames,
//! `MaxPacketSize`, unknown IDs, `MaxConn` across a TCP and a TLS listener,
//! graceful shutdown flushing queued replies); a silent peer closed at the
//! handshake timeout while others are served; failed handshakes summed up in
//! the log, not logged one by one; the client's trust (given certificates, the
//! name checked, the insecure option), router, hooks, heartbeat, reconnect and
//! requests over TLS; the config's `CertFile` and `PrivateKeyFile` (TLS on
//! `TCPPort`, clear errors for what cannot be served); and the examples over TLS.
#![cfg(feature = "tls")]

mod support;

use std::net::SocketAddr;
use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use bytes::Bytes;
use support::{
    Captured, Cert, RawClient, TestServer, client_example, config, echo, echo_example, example,
    frame, make_cert, within,
};
use tokio::io::{AsyncReadExt, ReadHalf, WriteHalf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{mpsc, oneshot};
use tokio_rustls::client::TlsStream;
use zinx::transport::Listener;
use zinx::transport::tls::TlsClient;
use zinx::{
    Client, Config, Connection, Heartbeat, Layout, Reconnect, Request, Router, Server,
    ServerBuilder,
};

const T: Duration = Duration::from_secs(10);

async fn tls_listener(cert: &Cert) -> Listener {
    let tcp = TcpListener::bind("127.0.0.1:0").await.unwrap();
    Listener::tls(tcp, cert.server())
}

async fn start<F: zinx::Framing>(builder: ServerBuilder<F>, cert: &Cert) -> TestServer {
    TestServer::start_on(builder, tls_listener(cert).await).await
}

type Raw = RawClient<ReadHalf<TlsStream<TcpStream>>, WriteHalf<TlsStream<TcpStream>>>;

/// A client writing raw bytes over TLS (rustls with ring, trusting `cert`).
async fn raw(addr: SocketAddr, cert: &Cert, layout: Layout) -> Raw {
    let tcp = within("connect", TcpStream::connect(addr)).await.unwrap();
    raw_on(tcp, cert, layout).await
}

/// [`raw`] on a connected socket.
async fn raw_on(tcp: TcpStream, cert: &Cert, layout: Layout) -> Raw {
    let stream = cert.connect(tcp).await;
    let (read, write) = tokio::io::split(stream);
    RawClient::from_halves(read, write, layout)
}

async fn tls_client(addr: SocketAddr, tls: TlsClient, layout: Layout) -> zinx::Result<Client> {
    Client::builder(addr.to_string())
        .layout(layout)
        .tls(tls)
        .connect()
        .await
}

#[tokio::test]
async fn the_client_echoes_over_tls_in_both_layouts_dialling_an_ip_address() {
    // The certificate names 127.0.0.1 only (an IP subject alternative name),
    // and the client checks it against the host it dials.
    let cert = make_cert("layouts", &["127.0.0.1"]);
    for layout in [Layout::Tlv, Layout::Ltv] {
        let builder = Server::builder(config())
            .router(Router::new().route(1, echo))
            .layout(layout);
        let server = start(builder, &cert).await;
        let client = tls_client(server.addr, cert.client(), layout)
            .await
            .unwrap();
        for size in [0usize, 1, 100, 4000] {
            let data = Bytes::from(vec![size as u8; size]);
            let reply = client.request(1, data.clone(), 1, T).await.unwrap();
            assert_eq!(reply.data, data, "{layout:?} {size}");
        }
        // The wire bytes of the layout, written by hand inside TLS.
        let mut raw = raw(server.addr, &cert, layout).await;
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
async fn coalesced_and_split_frames_over_tls() {
    let cert = make_cert("frames", &["127.0.0.1"]);
    let server = start(
        Server::builder(config()).router(Router::new().route(1, echo)),
        &cert,
    )
    .await;
    let mut client = raw(server.addr, &cert, Layout::Tlv).await;
    // 500 frames in one write (one TLS record, or a few).
    let wire: Vec<u8> = (0..500u32)
        .flat_map(|i| frame(Layout::Tlv, 1, &i.to_be_bytes()))
        .collect();
    client.write_raw(&wire).await;
    for i in 0..500u32 {
        assert_eq!(&client.recv().await.data[..], &i.to_be_bytes());
    }
    // One frame in 7-byte records.
    let payload: Vec<u8> = (0..3000u32).map(|i| (i % 251) as u8).collect();
    for chunk in frame(Layout::Tlv, 1, &payload).chunks(7) {
        client.write_raw(chunk).await;
    }
    assert_eq!(&client.recv().await.data[..], &payload[..]);
    server.stop().await;
}

#[tokio::test]
async fn max_packet_size_closes_only_the_offending_tls_connection() {
    let cert = make_cert("max-packet", &["127.0.0.1"]);
    let cfg = Config {
        max_packet_size: 64,
        ..config()
    };
    let server = start(
        Server::builder(cfg).router(Router::new().route(1, echo)),
        &cert,
    )
    .await;
    let mut good = raw(server.addr, &cert, Layout::Tlv).await;
    let mut bad = raw(server.addr, &cert, Layout::Tlv).await;
    assert_eq!(&good.roundtrip(1, [7u8; 64]).await.data[..], &[7u8; 64]);
    // A header (ID 1) announcing 65 bytes: closed before they are sent.
    bad.write_raw(&[0, 0, 0, 1, 0, 0, 0, 65]).await;
    bad.expect_closed().await;
    assert_eq!(
        &good.roundtrip(1, "still here").await.data[..],
        b"still here"
    );
    server.stop().await;
}

#[tokio::test]
async fn an_unknown_id_is_dropped_and_the_tls_connection_stays_open() {
    let cert = make_cert("unknown-id", &["127.0.0.1"]);
    let server = start(
        Server::builder(config()).router(Router::new().route(1, echo)),
        &cert,
    )
    .await;
    let mut client = raw(server.addr, &cert, Layout::Tlv).await;
    client.send(99, "nobody routes this").await;
    // The next reply is the echo: nothing came back for ID 99, and the
    // connection is still served.
    let reply = client.roundtrip(1, "after").await;
    assert_eq!((reply.id.0, &reply.data[..]), (1, &b"after"[..]));
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn max_conn_is_counted_across_a_tcp_and_a_tls_listener() {
    let cert = make_cert("max-conn", &["127.0.0.1"]);
    let (gone_tx, mut gone) = mpsc::channel::<()>(4);
    let server = Server::builder(Config {
        max_conn: 2,
        ..config()
    })
    .router(Router::new().route(1, echo))
    .on_disconnect(move |_conn: Connection| {
        let gone = gone_tx.clone();
        async move {
            let _ = gone.send(()).await;
        }
    })
    .build();
    let handle = server.handle();
    let tcp = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let tls = tls_listener(&cert).await;
    let (tcp_addr, tls_addr) = (tcp.local_addr().unwrap(), tls.local_addr().unwrap());
    let (stop, stopped) = oneshot::channel::<()>();
    let running = tokio::spawn(server.run_all([Listener::from(tcp), tls], async move {
        let _ = stopped.await;
    }));

    let mut on_tcp = RawClient::connect(tcp_addr, Layout::Tlv).await;
    let on_tls = tls_client(tls_addr, cert.client(), Layout::Tlv)
        .await
        .unwrap();
    assert_eq!(&on_tcp.roundtrip(1, "tcp").await.data[..], b"tcp");
    let reply = on_tls.request(1, "tls", 1, T).await.unwrap();
    assert_eq!(&reply.data[..], b"tls");
    // Both slots are taken, one per transport: a third is refused on either.
    assert_eq!(handle.free_slots(), Some(0));
    assert!(
        RawClient::connect(tcp_addr, Layout::Tlv)
            .await
            .read_eof()
            .await
    );
    let refused = tls_client(tls_addr, cert.client(), Layout::Tlv).await;
    assert!(
        refused.is_err_and(|e| e.is_tls()),
        "closed before its handshake"
    );
    // A slot given back on one transport is taken on the other (slots are
    // given back before on_disconnect runs).
    drop(on_tcp);
    within("on_disconnect", gone.recv()).await.unwrap();
    assert_eq!(handle.free_slots(), Some(1));
    let again = tls_client(tls_addr, cert.client(), Layout::Tlv)
        .await
        .unwrap();
    assert_eq!(&again.request(1, "x", 1, T).await.unwrap().data[..], b"x");
    let _ = stop.send(());
    within("the server to stop", running)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(handle.task_count(), 0);
    on_tls.close().await;
    again.close().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn graceful_shutdown_flushes_queued_replies_over_tls() {
    const CONNS: usize = 2;
    const QUEUED: usize = 50;
    // 12.8 MiB per connection, more than the sockets hold (the server's send
    // buffer grows to 4 MiB at most, the peer's receive buffer is held at 64
    // KiB): most of it is still queued when the shutdown comes, and only the
    // final flush delivers it.
    const SIZE: usize = 256 * 1024;
    let cert = make_cert("shutdown", &["127.0.0.1"]);
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
    let server = start(Server::builder(cfg).router(router), &cert).await;
    let mut clients = Vec::new();
    for _ in 0..CONNS {
        let socket = tokio::net::TcpSocket::new_v4().unwrap();
        socket.set_recv_buffer_size(64 * 1024).unwrap();
        let tcp = within("connect", socket.connect(server.addr))
            .await
            .unwrap();
        let mut c = raw_on(tcp, &cert, Layout::Tlv).await;
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
    // The peers start reading once the shutdown has closed their connections.
    for conn in &conns {
        within("the shutdown's close", conn.closed()).await;
    }
    let readers: Vec<_> = clients
        .into_iter()
        .map(|mut c| tokio::spawn(async move { c.recv_until_closed().await }))
        .collect();
    for reader in readers {
        let msgs = within("replies", reader).await.unwrap();
        assert_eq!(
            msgs.len(),
            QUEUED,
            "every queued reply arrives before the close"
        );
        for (i, m) in msgs.iter().enumerate() {
            assert_eq!((m.data.len(), m.data[0]), (SIZE, i as u8));
        }
    }
    within("the server to stop", stopping).await.unwrap();
    assert_eq!(handle.task_count(), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_silent_peer_on_the_tls_port_is_closed_at_the_handshake_timeout_while_others_are_served()
{
    let cert = make_cert("silent", &["127.0.0.1"]);
    let cfg = Config {
        max_conn: 2,
        handshake_timeout: 1,
        ..config()
    };
    let server = start(
        Server::builder(cfg).router(Router::new().route(1, echo)),
        &cert,
    )
    .await;
    // Opens TCP to the TLS port and says nothing.
    let mut silent = TcpStream::connect(server.addr).await.unwrap();
    let started = Instant::now();
    let client = tls_client(server.addr, cert.client(), Layout::Tlv)
        .await
        .unwrap();
    assert_eq!(
        &client.request(1, "served", 1, T).await.unwrap().data[..],
        b"served"
    );
    assert!(
        started.elapsed() < Duration::from_millis(900),
        "not held up by the silent peer"
    );
    // The silent one held the other slot, and is closed at the timeout.
    assert_eq!(server.handle.free_slots(), Some(0));
    let mut rest = Vec::new();
    let read = within("the silent peer's close", silent.read_to_end(&mut rest)).await;
    let waited = started.elapsed();
    assert!(read.is_ok() && rest.is_empty(), "{read:?} {rest:?}");
    assert!(
        waited >= Duration::from_millis(900),
        "closed after {waited:?}"
    );
    assert!(waited < Duration::from_secs(5), "closed after {waited:?}");
    client.close().await;
    server.stop().await;
}

/// The count of `name` in every summary line of `text`.
fn counted(text: &str, name: &str) -> u64 {
    text.lines()
        .filter(|l| l.contains("peer faults"))
        .flat_map(|l| l.split_whitespace())
        .map(|word| word.strip_prefix("counts=").unwrap_or(word))
        .filter_map(|word| word.strip_prefix(&format!("{name}=")))
        .map(|n| n.parse::<u64>().unwrap())
        .sum()
}

// One thread: the subscriber set for this test sees the server's tasks.
#[tokio::test]
async fn failed_handshakes_are_summed_up_in_the_log_not_logged_one_by_one() {
    let logs = Captured::default();
    let subscriber = tracing_subscriber::fmt()
        .with_writer(logs.clone())
        .with_ansi(false)
        .with_max_level(tracing::Level::INFO)
        .finish();
    let _guard = tracing::subscriber::set_default(subscriber);
    let cert = make_cert("scanner", &["127.0.0.1"]);
    let server = start(
        Server::builder(config()).router(Router::new().route(1, echo)),
        &cert,
    )
    .await;
    // 50 peers speaking plain Zinx to the TLS port, as a scanner or a
    // misconfigured client would.
    for _ in 0..50 {
        let mut peer = RawClient::connect(server.addr, Layout::Tlv).await;
        peer.send(1, "plain").await;
        // Closed (after a TLS alert, which is no Zinx frame).
        assert!(peer.recv_until_closed().await.is_empty());
    }
    // And 10 TLS clients that do not trust the server's certificate.
    let other = make_cert("scanner-other", &["127.0.0.1"]);
    for _ in 0..10 {
        let refused = tls_client(server.addr, other.client(), Layout::Tlv).await;
        assert!(refused.is_err_and(|e| e.is_tls()));
    }
    // Meanwhile a good client is served.
    let client = tls_client(server.addr, cert.client(), Layout::Tlv)
        .await
        .unwrap();
    assert_eq!(
        &client.request(1, "ok", 1, T).await.unwrap().data[..],
        b"ok"
    );
    client.close().await;
    server.stop().await;
    let text = logs.text();
    let warnings = text.lines().filter(|l| !l.contains(" INFO ")).count();
    assert!(warnings <= 3, "{warnings} lines above INFO:\n{text}");
    assert_eq!(counted(&text, "handshake"), 60, "{text}");
}

#[tokio::test]
async fn a_client_that_does_not_trust_the_certificate_fails_to_connect_clearly() {
    let cert = make_cert("untrusted", &["127.0.0.1"]);
    let server = start(
        Server::builder(config()).router(Router::new().route(1, echo)),
        &cert,
    )
    .await;
    let stranger = make_cert("untrusted-ca", &["127.0.0.1"]);
    let err = tls_client(server.addr, stranger.client(), Layout::Tlv)
        .await
        .unwrap_err();
    assert!(err.is_tls(), "{err:?}");
    let text = err.to_string();
    assert!(
        text.contains("handshake with 127.0.0.1") && text.contains("invalid peer certificate"),
        "{text}"
    );
    // The insecure option, for tests, connects to it all the same.
    let insecure = TlsClient::danger_accept_any_certificate().unwrap();
    let client = tls_client(server.addr, insecure, Layout::Tlv)
        .await
        .unwrap();
    assert_eq!(
        &client.request(1, "any", 1, T).await.unwrap().data[..],
        b"any"
    );
    client.close().await;
    server.stop().await;
}

#[tokio::test]
async fn the_certificate_must_name_the_host_dialled_or_the_name_given() {
    // Names a host, not 127.0.0.1.
    let cert = make_cert("named", &["game.example"]);
    let server = start(
        Server::builder(config()).router(Router::new().route(1, echo)),
        &cert,
    )
    .await;
    let err = tls_client(server.addr, cert.client(), Layout::Tlv)
        .await
        .unwrap_err();
    assert!(
        err.is_tls() && err.to_string().contains("not valid for name"),
        "{err}"
    );
    let named = cert.client().server_name("game.example").unwrap();
    let client = tls_client(server.addr, named, Layout::Tlv).await.unwrap();
    assert_eq!(
        &client.request(1, "named", 1, T).await.unwrap().data[..],
        b"named"
    );
    assert!(
        cert.client()
            .server_name("not a name")
            .unwrap_err()
            .is_tls()
    );
    client.close().await;
    server.stop().await;
}

#[tokio::test]
async fn a_tls_client_routes_pushes_runs_hooks_beats_and_reconnects() {
    let cert = make_cert("client", &["127.0.0.1"]);
    let (beats_tx, mut beats) = mpsc::channel::<()>(64);
    let server = start(
        Server::builder(config()).router(Router::new().route(1, echo).route_sync(
            99999,
            move |_req: &Request| {
                let _ = beats_tx.try_send(());
            },
        )),
        &cert,
    )
    .await;
    let (pushed_tx, mut pushed) = mpsc::channel::<String>(8);
    let (connect_tx, mut connects) = mpsc::channel::<()>(8);
    let client = Client::builder(server.addr.to_string())
        .tls(cert.client())
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
        .heartbeat(Heartbeat::new(Duration::from_millis(20)))
        .reconnect(Reconnect::new(
            Duration::from_millis(5),
            Duration::from_millis(50),
        ))
        .connect()
        .await
        .unwrap();
    within("first connect", connects.recv()).await.unwrap();
    within("a heartbeat over TLS", beats.recv()).await.unwrap();
    assert_eq!(server.handle.manager().broadcast(50, "news").delivered, 1);
    assert_eq!(within("push", pushed.recv()).await.unwrap(), "news");
    support::reconnect_rounds(&client, &server.handle.manager(), &mut connects, 2).await;
    client.close().await;
    server.stop().await;
}

#[test]
fn the_shipped_tls_config_asks_for_tls() {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../conf/zinx-tls.json");
    let cfg = Config::from_file(path).unwrap();
    assert_eq!(
        (cfg.cert_file.as_str(), cfg.private_key_file.as_str()),
        ("conf/tls/cert.pem", "conf/tls/key.pem")
    );
}

fn config_with(cert: &Path, key: &Path) -> Config {
    Config {
        cert_file: cert.display().to_string(),
        private_key_file: key.display().to_string(),
        ..config()
    }
}

#[tokio::test]
async fn both_cert_keys_make_the_tcp_listener_speak_tls() {
    let cert = make_cert("config", &["127.0.0.1"]);
    let cfg = config_with(&cert.cert, &cert.key);
    let listeners = zinx::server::bind_listeners(&cfg).await.unwrap();
    assert_eq!(listeners.len(), 1);
    assert_eq!(listeners[0].transport(), "tls");
    let addr = listeners[0].local_addr().unwrap();
    let server = Server::builder(cfg)
        .router(Router::new().route(1, echo))
        .build();
    let (stop, stopped) = oneshot::channel::<()>();
    let running = tokio::spawn(server.run_all(listeners, async move {
        let _ = stopped.await;
    }));
    let client = tls_client(addr, cert.client(), Layout::Tlv).await.unwrap();
    assert_eq!(
        &client.request(1, "tls", 1, T).await.unwrap().data[..],
        b"tls"
    );
    // A plain TCP peer gets no reply: the port speaks TLS only.
    let mut plain = RawClient::connect(addr, Layout::Tlv).await;
    plain.send(1, "plain").await;
    assert!(plain.recv_until_closed().await.is_empty());
    client.close().await;
    let _ = stop.send(());
    within("the server to stop", running)
        .await
        .unwrap()
        .unwrap();
    // Neither key: plain TCP.
    let listeners = zinx::server::bind_listeners(&config()).await.unwrap();
    assert_eq!(listeners[0].transport(), "tcp");
}

#[tokio::test]
async fn serve_fails_naming_the_key_and_file_it_cannot_use() {
    let cert = make_cert("bad-config", &["127.0.0.1"]);
    let other = make_cert("bad-config-other", &["127.0.0.1"]);
    let missing = cert.cert.with_file_name("missing.pem");
    // Each must fail at once: serving anything instead would run until the
    // timeout.
    let serve = |cfg: Config| async move {
        let serving = Server::builder(cfg).build().serve(std::future::pending());
        let err = match tokio::time::timeout(T, serving).await {
            Ok(result) => result.unwrap_err(),
            Err(_) => panic!("served instead of failing"),
        };
        (err.to_string(), err)
    };
    let (text, err) = serve(config_with(&missing, &cert.key)).await;
    assert!(err.is_tls(), "{err:?}");
    assert!(
        text.contains("cannot read CertFile") && text.contains(&missing.display().to_string()),
        "{text}"
    );
    let (text, _) = serve(config_with(&cert.cert, &missing)).await;
    assert!(
        text.contains("cannot read PrivateKeyFile") && text.contains("missing.pem"),
        "{text}"
    );
    // The key given as the certificate, and a key of another certificate.
    let (text, _) = serve(config_with(&cert.key, &cert.key)).await;
    assert!(
        text.contains("CertFile") && text.contains("holds no certificate"),
        "{text}"
    );
    let (text, _) = serve(config_with(&cert.cert, &other.key)).await;
    assert!(
        text.contains("cannot use CertFile") && text.contains("PrivateKeyFile"),
        "{text}"
    );
    // One key without the other is an error, not plain TCP.
    let (text, err) = serve(Config {
        cert_file: cert.cert.display().to_string(),
        ..config()
    })
    .await;
    assert!(err.is_config() && text.contains("PrivateKeyFile"), "{text}");
    let (text, err) = serve(Config {
        private_key_file: cert.key.display().to_string(),
        ..config()
    })
    .await;
    assert!(err.is_config() && text.contains("CertFile"), "{text}");
}

#[tokio::test]
async fn the_client_example_checks_every_reply_over_tls_with_its_ca() {
    let cert = make_cert("client-example", &["127.0.0.1"]);
    let server = start(
        Server::builder(config()).router(Router::new().route(1, echo)),
        &cert,
    )
    .await;
    let args = |extra: &[&str]| {
        let addr = server.addr.to_string();
        let mut args = vec!["--transport", "tls", "--addr", &addr, "--count", "100"];
        args.extend_from_slice(extra);
        args.into_iter().map(str::to_owned).collect::<Vec<_>>()
    };
    let ca = cert.cert.display().to_string();
    let (ok, text) = client_example(args(&["--ca", &ca])).await;
    assert!(ok, "{text}");
    assert!(text.contains("100 ok, 0 mismatched"), "{text}");
    // Without --ca it trusts the platform's roots, which do not know this
    // certificate.
    let (ok, text) = client_example(args(&[])).await;
    assert!(!ok && text.contains("TLS"), "{text}");
    server.stop().await;
}

#[tokio::test]
async fn the_echo_example_serves_tls_when_its_config_sets_the_cert_files() {
    let cert = make_cert("echo-example", &["127.0.0.1"]);
    let dir = cert.cert.parent().unwrap().to_owned();
    let json = format!(
        r#"{{"Host": "127.0.0.1", "TcpPort": 0, "CertFile": {:?}, "PrivateKeyFile": {:?}}}"#,
        cert.cert.display().to_string(),
        cert.key.display().to_string()
    );
    let config = dir.join("zinx.json");
    std::fs::write(&config, json).unwrap();
    let (child, lines) = echo_example(&config, 1).await;
    let line = &lines[0];
    let addr: SocketAddr = line
        .split_whitespace()
        .find_map(|w| w.parse().ok())
        .unwrap_or_else(|| panic!("no address in {line:?}"));
    assert!(line.contains("tls"), "{line}");
    let (ok, text) = client_example(
        [
            "--transport",
            "tls",
            "--addr",
            &addr.to_string(),
            "--ca",
            &cert.cert.display().to_string(),
            "--count",
            "20",
        ]
        .map(str::to_owned)
        .to_vec(),
    )
    .await;
    assert!(ok && text.contains("20 ok"), "{text}");
    drop(child);

    // A certificate file it cannot read: a clear error at startup.
    let missing = dir.join("nowhere.pem");
    std::fs::write(
        &config,
        format!(
            r#"{{"Host": "127.0.0.1", "TcpPort": 0, "CertFile": {:?}, "PrivateKeyFile": {:?}}}"#,
            missing.display().to_string(),
            cert.key.display().to_string()
        ),
    )
    .unwrap();
    let out = Command::new(example("echo_server"))
        .env("ZINX_CONFIG_FILE_PATH", &config)
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "{stderr}");
    assert!(
        stderr.contains("CertFile") && stderr.contains("nowhere.pem"),
        "{stderr}"
    );
    assert!(out.stdout.is_empty(), "nothing listened");
}
