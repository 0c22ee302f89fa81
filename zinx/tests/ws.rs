//! WebSocket over real sockets (feature `ws`; wss with `tls` too): the TCP
//! matrix for ws and wss (echo in both layouts, coalesced and split frames,
//! `MaxPacketSize`, unknown IDs, `MaxConn` and `MaxConnPerIP` across TCP, ws
//! and wss listeners with upgrades over them refused with an HTTP status,
//! graceful shutdown flushing queued replies); every frame sent as one binary
//! message; an oversized message refused without being buffered; a silent TCP
//! peer on the WebSocket port closed at the handshake timeout while others are
//! served; the path and the auth hook; `Mode`, `WsPort` and `WsPath` from the
//! config; the client's router, hooks, heartbeat and reconnect over ws; and
//! the examples over ws and wss.
#![cfg(feature = "ws")]
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use futures_util::{SinkExt, StreamExt};
#[cfg(feature = "tls")]
use support::{Cert, make_cert};
use support::{TestServer, client_example, config, echo, echo_example, frame, within};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite};
use tokio::net::{TcpListener, TcpStream};
use tokio_tungstenite::WebSocketStream;
use tokio_tungstenite::tungstenite::{self, Message};
use tokio_util::codec::Decoder;
use zinx::transport::Listener;
use zinx::transport::ws::WsServer;
use zinx::{Client, Codec, Config, Layout, Request, Router, Server, ServerBuilder};

/// Any stream a test client speaks WebSocket over (TCP, or TLS for wss).
trait Io: AsyncRead + AsyncWrite + Unpin + Send {}
impl<T: AsyncRead + AsyncWrite + Unpin + Send> Io for T {}

/// ws or wss, and for wss the certificate the server uses.
enum Kind {
    Ws,
    #[cfg(feature = "tls")]
    Wss(Cert),
}

/// The kinds this build can test: ws, and wss with `tls`.
fn kinds(test: &str) -> Vec<Kind> {
    let _ = test;
    vec![
        Kind::Ws,
        #[cfg(feature = "tls")]
        Kind::Wss(make_cert(&format!("ws-{test}"), &["127.0.0.1"])),
    ]
}

impl Kind {
    fn name(&self) -> &'static str {
        match self {
            Kind::Ws => "ws",
            #[cfg(feature = "tls")]
            Kind::Wss(_) => "wss",
        }
    }

    fn server(&self, path: &str) -> WsServer {
        let ws = WsServer::new(path);
        match self {
            Kind::Ws => ws,
            #[cfg(feature = "tls")]
            Kind::Wss(cert) => ws.tls(cert.server()),
        }
    }

    async fn listener(&self, path: &str) -> Listener {
        let tcp = TcpListener::bind("127.0.0.1:0").await.unwrap();
        Listener::ws(tcp, self.server(path))
    }

    async fn start<F: zinx::Framing>(&self, builder: ServerBuilder<F>) -> TestServer {
        TestServer::start_on(builder, self.listener("/").await).await
    }

    /// A zinx client at `path`.
    async fn client_at(
        &self,
        addr: SocketAddr,
        layout: Layout,
        path: &str,
    ) -> zinx::Result<Client> {
        let builder = Client::builder(addr.to_string()).layout(layout).ws(path);
        let builder = match self {
            Kind::Ws => builder,
            #[cfg(feature = "tls")]
            Kind::Wss(cert) => builder.tls(cert.client()),
        };
        within("client connect", builder.connect()).await
    }

    /// The TLS handshake for wss, nothing for ws.
    async fn secure(&self, tcp: TcpStream) -> Pin<Box<dyn Io>> {
        match self {
            Kind::Ws => Box::pin(tcp),
            #[cfg(feature = "tls")]
            Kind::Wss(cert) => Box::pin(cert.connect(tcp).await),
        }
    }

    /// Upgrades at `path`: the raw client, or the upgrade's error.
    async fn try_raw(
        &self,
        addr: SocketAddr,
        path: &str,
        layout: Layout,
    ) -> Result<WsRaw, tungstenite::Error> {
        let tcp = within("connect", TcpStream::connect(addr)).await.unwrap();
        let stream = self.secure(tcp).await;
        let scheme = self.name();
        let url = format!("{scheme}://{addr}{path}");
        let (ws, _) = within("upgrade", tokio_tungstenite::client_async(url, stream)).await?;
        Ok(WsRaw {
            ws,
            layout,
            codec: Codec::new(layout, 0),
            buf: BytesMut::new(),
        })
    }

    async fn raw(&self, addr: SocketAddr, layout: Layout) -> WsRaw {
        self.try_raw(addr, "/", layout).await.unwrap()
    }
}

/// A raw WebSocket client: sends messages as given, and reads replies both as
/// messages and as frames.
struct WsRaw {
    ws: WebSocketStream<Pin<Box<dyn Io>>>,
    layout: Layout,
    codec: Codec,
    /// Bytes of messages read and not yet decoded into frames.
    buf: BytesMut,
}

impl WsRaw {
    /// Sends `bytes` as one binary message.
    async fn message(&mut self, bytes: impl Into<Bytes>) {
        within("send", self.ws.send(Message::Binary(bytes.into())))
            .await
            .unwrap();
    }

    /// Sends one frame as one message.
    async fn send(&mut self, id: u32, data: &[u8]) {
        self.message(frame(self.layout, id, data)).await;
    }

    /// The next data message's bytes; `None` at the close or the end.
    async fn next_message(&mut self) -> Option<Bytes> {
        loop {
            match within("a message", self.ws.next()).await {
                Some(Ok(Message::Binary(data))) => return Some(data),
                Some(Ok(Message::Text(text))) => return Some(Bytes::from(text)),
                Some(Ok(Message::Close(_)) | Err(_)) | None => return None,
                Some(Ok(_)) => {}
            }
        }
    }

    /// The next frame, from however many messages it takes; panics at the end.
    async fn recv(&mut self) -> zinx::Message {
        loop {
            if let Some(msg) = self.codec.decode(&mut self.buf).unwrap() {
                return msg;
            }
            let data = self.next_message().await.expect("the connection ended");
            self.buf.extend_from_slice(&data);
        }
    }

    /// Waits for the end of the connection (a close or the socket's end)
    /// with no data before it.
    async fn expect_closed(&mut self) {
        if let Some(data) = self.next_message().await {
            panic!("expected the end, got {data:?}");
        }
    }
}

fn echo_router() -> Router {
    Router::new().route(1, echo).route(2, echo)
}

#[tokio::test]
async fn the_client_echoes_over_ws_and_wss_in_both_layouts() {
    for kind in kinds("client-echo") {
        for layout in [Layout::Tlv, Layout::Ltv] {
            let server = kind
                .start(
                    Server::builder(config())
                        .router(echo_router())
                        .layout(layout),
                )
                .await;
            let client = kind.client_at(server.addr, layout, "/").await.unwrap();
            for (i, size) in [0usize, 1, 100, 4096].into_iter().enumerate() {
                let data = vec![u8::try_from(i).unwrap(); size];
                let reply = within(
                    "echo",
                    client.request(1, data.clone(), 1, Duration::from_secs(10)),
                )
                .await
                .unwrap();
                assert_eq!(&reply.data[..], &data[..], "{} {layout:?}", kind.name());
            }
            client.close().await;
            server.stop().await;
        }
    }
}

#[tokio::test]
async fn every_reply_frame_is_one_binary_message() {
    for kind in kinds("one-message") {
        let server = kind
            .start(Server::builder(config()).router(echo_router()))
            .await;
        let mut raw = kind.raw(server.addr, Layout::Tlv).await;
        let frames: Vec<Vec<u8>> = (0..5u8)
            .map(|i| frame(Layout::Tlv, 1, &vec![i; usize::from(i) * 100]))
            .collect();
        // All five requests in one message: five replies, five messages.
        raw.message(frames.concat()).await;
        for expected in &frames {
            let message = raw.next_message().await.unwrap();
            assert_eq!(&message[..], &expected[..], "{}", kind.name());
        }
        server.stop().await;
    }
}

/// A route that answers msgID 1 with `count` frames of `size` bytes each
/// (msgID 3, the bytes counting up from the frame's number).
fn burst_router(count: usize, size: usize) -> Router {
    Router::new().route(1, move |req: Request| async move {
        for i in 0..count {
            let data: Vec<u8> = (0..size).map(|j| (i + j) as u8).collect();
            req.conn().send(3, data).await?;
        }
        Ok::<(), zinx::Error>(())
    })
}

fn burst_frame(i: usize, size: usize) -> Vec<u8> {
    (0..size).map(|j| (i + j) as u8).collect()
}

#[tokio::test]
async fn a_burst_of_large_frames_goes_one_message_per_frame() {
    // 300 frames of 4000 bytes (1.2 MB, far over the write buffer's bound),
    // and their data written apart from their headers by the writer.
    let (count, size) = (300, 4000);
    for kind in kinds("burst") {
        let server = kind
            .start(Server::builder(config()).router(burst_router(count, size)))
            .await;
        let mut raw = kind.raw(server.addr, Layout::Tlv).await;
        raw.send(1, b"go").await;
        for i in 0..count {
            let message = raw.next_message().await.expect("every frame");
            assert_eq!(
                &message[..],
                &frame(Layout::Tlv, 3, &burst_frame(i, size))[..],
                "{}: frame {i} as one message",
                kind.name()
            );
        }
        server.stop().await;
    }
}

#[tokio::test]
async fn pack_sends_a_burst_in_fewer_messages_none_over_the_limit() {
    let (count, size) = (600, 400);
    let tcp = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let listener = Listener::ws(tcp, WsServer::new("/").pack(true));
    let builder = Server::builder(config()).router(burst_router(count, size));
    let server = TestServer::start_on(builder, listener).await;
    let mut raw = Kind::Ws.raw(server.addr, Layout::Tlv).await;
    raw.send(1, b"go").await;
    let mut messages = 0;
    let mut i = 0;
    while i < count {
        let data = raw.next_message().await.expect("every frame");
        // A zinx peer with the same config takes messages up to 64 KiB.
        assert!(data.len() <= 64 * 1024, "a message of {} bytes", data.len());
        messages += 1;
        raw.buf.extend_from_slice(&data);
        while let Some(msg) = raw.codec.decode(&mut raw.buf).unwrap() {
            assert_eq!((msg.id.0, &msg.data[..]), (3, &burst_frame(i, size)[..]));
            i += 1;
        }
    }
    assert!(
        messages < count / 2,
        "{messages} messages for {count} frames"
    );
    server.stop().await;
}

#[tokio::test]
async fn a_framing_that_cannot_tell_frames_apart_sends_bursts_whole() {
    use zinx::framing::HtlvCrcCodec;
    // HTLV+CRC frames are cut where the writer's batches end and at the
    // message limit, read back as one stream.
    let (count, size) = (900, 250);
    let router = Router::new().route(0x10, move |req: Request| async move {
        for i in 0..count {
            req.conn().send(0x11, burst_frame(i, size)).await?;
        }
        Ok::<(), zinx::Error>(())
    });
    let tcp = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let listener = Listener::ws(tcp, WsServer::new("/"));
    let builder = Server::builder(config())
        .router(router)
        .framing(HtlvCrcCodec::new(0xA2));
    let server = TestServer::start_on(builder, listener).await;
    let mut raw = Kind::Ws.raw(server.addr, Layout::Tlv).await;
    let mut codec = HtlvCrcCodec::new(0xA2);
    let mut out = BytesMut::new();
    tokio_util::codec::Encoder::encode(&mut codec, zinx::Message::new(0x10, "go"), &mut out)
        .unwrap();
    raw.message(out.freeze()).await;
    let mut i = 0;
    while i < count {
        let data = raw.next_message().await.expect("every frame");
        raw.buf.extend_from_slice(&data);
        while let Some(msg) = codec.decode(&mut raw.buf).unwrap() {
            assert_eq!((msg.id.0, &msg.data[..]), (0x11, &burst_frame(i, size)[..]));
            i += 1;
        }
    }
    server.stop().await;
}

#[tokio::test]
async fn a_peer_that_closes_during_a_burst_gets_the_close_answered() {
    for kind in kinds("peer-close") {
        let server = kind
            .start(Server::builder(config()).router(burst_router(5000, 4000)))
            .await;
        let mut raw = kind.raw(server.addr, Layout::Tlv).await;
        raw.send(1, b"go").await;
        assert!(raw.next_message().await.is_some(), "the burst started");
        within("close", raw.ws.close(None)).await.unwrap();
        // What was on its way still comes, then the server's close frame: a
        // close handshake, not a reset.
        let mut data_messages = 0usize;
        let ended = loop {
            match within("the close's answer", raw.ws.next()).await {
                Some(Ok(Message::Binary(_))) => data_messages += 1,
                Some(Ok(Message::Close(_))) => break "close",
                None | Some(Err(tungstenite::Error::ConnectionClosed)) => break "closed",
                Some(Ok(_)) => {}
                Some(Err(e)) => panic!("{}: {e} after {data_messages} messages", kind.name()),
            }
        };
        assert!(data_messages < 5000, "{}: {ended}", kind.name());
        server.stop().await;
    }
}

#[tokio::test]
async fn the_upgrade_request_is_a_property_of_the_connection() {
    let (seen_tx, mut seen) = tokio::sync::mpsc::unbounded_channel();
    let builder = Server::builder(config())
        .router(echo_router())
        .on_connect(move |conn| {
            let seen_tx = seen_tx.clone();
            async move {
                let request = conn.property::<zinx::transport::ws::WsRequest>();
                let _ = seen_tx.send(request.map(|r| (r.path, r.query)));
            }
        });
    let tcp = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let server = TestServer::start_on(builder, Listener::ws(tcp, WsServer::new("/rooms/"))).await;
    let _raw = Kind::Ws
        .try_raw(server.addr, "/rooms/7?token=abc", Layout::Tlv)
        .await
        .unwrap();
    let request = within("on_connect", seen.recv()).await.unwrap();
    assert_eq!(
        request,
        Some(("/rooms/7".to_owned(), Some("token=abc".to_owned())))
    );
    server.stop().await;
}

#[tokio::test]
async fn an_auth_hook_that_panics_or_answers_no_error_status_still_refuses() {
    let tcp = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let ws = WsServer::new("/").auth(|req| match req.query.as_deref() {
        Some("panic") => panic!("the hook's own bug"),
        Some("ok") => Ok(()),
        _ => Err(200),
    });
    let server = TestServer::start_on(
        Server::builder(config()).router(echo_router()),
        Listener::ws(tcp, ws),
    )
    .await;
    let panicked = Kind::Ws
        .try_raw(server.addr, "/?panic", Layout::Tlv)
        .await
        .err()
        .unwrap();
    assert_eq!(status(&panicked), Some(500), "{panicked}");
    let odd = Kind::Ws
        .try_raw(server.addr, "/?no", Layout::Tlv)
        .await
        .err()
        .unwrap();
    assert_eq!(status(&odd), Some(403), "{odd}");
    let mut ok = Kind::Ws
        .try_raw(server.addr, "/?ok", Layout::Tlv)
        .await
        .unwrap();
    ok.send(1, b"served").await;
    assert_eq!(&ok.recv().await.data[..], b"served");
    server.stop().await;
}

#[tokio::test]
async fn coalesced_and_split_frames_over_ws_and_wss() {
    for kind in kinds("coalesced-split") {
        let server = kind
            .start(Server::builder(config()).router(echo_router()))
            .await;
        let mut raw = kind.raw(server.addr, Layout::Tlv).await;
        // Two frames in one message, then one frame cut over three messages,
        // then a message holding the end of one frame and the whole next.
        let (a, b) = (frame(Layout::Tlv, 1, b"one"), frame(Layout::Tlv, 2, b"two"));
        raw.message([&a[..], &b[..]].concat()).await;
        let c = frame(Layout::Tlv, 1, &[9u8; 300]);
        raw.message(c[..3].to_vec()).await;
        raw.message(c[3..100].to_vec()).await;
        raw.message(c[100..].to_vec()).await;
        let (d, e) = (
            frame(Layout::Tlv, 2, b"four"),
            frame(Layout::Tlv, 1, b"five"),
        );
        raw.message(d[..5].to_vec()).await;
        raw.message([&d[5..], &e[..]].concat()).await;
        for (id, data) in [
            (1, &b"one"[..]),
            (2, b"two"),
            (1, &[9u8; 300]),
            (2, b"four"),
            (1, b"five"),
        ] {
            let msg = raw.recv().await;
            assert_eq!((msg.id.0, &msg.data[..]), (id, data), "{}", kind.name());
        }
        // A text message is bytes of the same stream.
        let f = frame(Layout::Tlv, 1, b"text");
        within(
            "send text",
            raw.ws.send(Message::text(String::from_utf8(f).unwrap())),
        )
        .await
        .unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(&raw.recv().await.data[..], b"text");
        server.stop().await;
    }
}

#[tokio::test]
async fn max_packet_size_closes_only_the_offending_connection() {
    for kind in kinds("max-packet") {
        let cfg = Config {
            max_packet_size: 512,
            ..config()
        };
        let server = kind.start(Server::builder(cfg).router(echo_router())).await;
        let mut good = kind.raw(server.addr, Layout::Tlv).await;
        let mut bad = kind.raw(server.addr, Layout::Tlv).await;
        // A header announcing 513 bytes: closed as the header arrives.
        let mut header = frame(Layout::Tlv, 1, &[0u8; 513]);
        header.truncate(8);
        bad.message(header).await;
        bad.expect_closed().await;
        good.send(1, &[1u8; 512]).await;
        assert_eq!(good.recv().await.data.len(), 512, "{}", kind.name());
        server.stop().await;
    }
}

#[tokio::test]
async fn an_oversized_message_is_refused_without_being_buffered() {
    for kind in kinds("oversized") {
        let server = kind
            .start(Server::builder(config()).router(echo_router()))
            .await;
        let mut raw = kind.raw(server.addr, Layout::Tlv).await;
        // MaxPacketSize 4096 allows messages of 64 KiB. The 8 MiB message is
        // refused at its WebSocket header: the connection ends while the
        // client is still sending (or right after), never echoing anything.
        let huge = Bytes::from(vec![0u8; 8 << 20]);
        let _ = within("send", raw.ws.send(Message::Binary(huge))).await;
        raw.expect_closed().await;
        let mut other = kind.raw(server.addr, Layout::Tlv).await;
        other.send(1, b"still here").await;
        assert_eq!(&other.recv().await.data[..], b"still here");
        server.stop().await;
    }
}

#[tokio::test]
async fn an_unknown_id_is_dropped_and_the_connection_stays_open() {
    for kind in kinds("unknown-id") {
        let server = kind
            .start(Server::builder(config()).router(echo_router()))
            .await;
        let mut raw = kind.raw(server.addr, Layout::Tlv).await;
        raw.send(99, b"nobody").await;
        raw.send(1, b"echoed").await;
        let msg = raw.recv().await;
        assert_eq!(
            (msg.id.0, &msg.data[..]),
            (1, &b"echoed"[..]),
            "{}",
            kind.name()
        );
        server.stop().await;
    }
}

fn status(e: &tungstenite::Error) -> Option<u16> {
    match e {
        tungstenite::Error::Http(response) => Some(response.status().as_u16()),
        _ => None,
    }
}

/// A server running `listeners` at once; its handle and the shutdown sender.
fn run_all(
    builder: ServerBuilder,
    listeners: Vec<Listener>,
) -> (
    zinx::ServerHandle,
    tokio::sync::oneshot::Sender<()>,
    tokio::task::JoinHandle<zinx::Result<()>>,
) {
    let server = builder.build();
    let handle = server.handle();
    let (tx, rx) = tokio::sync::oneshot::channel::<()>();
    let task = tokio::spawn(server.run_all(listeners, async move {
        let _ = rx.await;
    }));
    (handle, tx, task)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn max_conn_is_counted_across_tcp_ws_and_wss_and_an_upgrade_over_it_gets_503() {
    let cfg = Config {
        max_conn: 2,
        ..config()
    };
    let kinds = kinds("max-conn");
    let tcp = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let tcp_addr = tcp.local_addr().unwrap();
    let mut listeners = vec![Listener::from(tcp)];
    let mut addrs = Vec::new();
    for kind in &kinds {
        let listener = kind.listener("/").await;
        addrs.push(listener.local_addr().unwrap());
        listeners.push(listener);
    }
    let (disconnected, mut gone) = tokio::sync::mpsc::unbounded_channel();
    let builder = Server::builder(cfg)
        .router(echo_router())
        .on_disconnect(move |_| {
            let disconnected = disconnected.clone();
            async move {
                let _ = disconnected.send(());
            }
        });
    let (handle, stop, task) = run_all(builder, listeners);
    // One TCP connection and one ws connection fill MaxConn.
    let mut tcp = support::RawClient::connect(tcp_addr, Layout::Tlv).await;
    assert_eq!(&tcp.roundtrip(1, b"tcp").await.data[..], b"tcp");
    let mut ws = kinds[0].raw(addrs[0], Layout::Tlv).await;
    ws.send(1, b"ws").await;
    assert_eq!(&ws.recv().await.data[..], b"ws");
    assert_eq!(handle.manager().len(), 2);
    // Every WebSocket listener refuses the next upgrade with 503, not an
    // upgrade and a drop; the zinx client reports the status.
    for (kind, addr) in kinds.iter().zip(&addrs) {
        let refused = kind.try_raw(*addr, "/", Layout::Tlv).await.err().unwrap();
        assert_eq!(status(&refused), Some(503), "{}: {refused}", kind.name());
        let err = kind.client_at(*addr, Layout::Tlv, "/").await.err().unwrap();
        assert!(
            matches!(
                err,
                zinx::Error::WebSocket {
                    status: Some(503),
                    ..
                }
            ),
            "{err}"
        );
    }
    // A slot given back serves the next upgrade.
    drop(ws);
    within("a disconnect", gone.recv()).await.unwrap();
    let last = kinds.last().unwrap();
    let mut again = last.raw(*addrs.last().unwrap(), Layout::Tlv).await;
    again.send(2, b"again").await;
    assert_eq!(&again.recv().await.data[..], b"again");
    let _ = stop.send(());
    within("shutdown", task).await.unwrap().unwrap();
}

#[tokio::test]
async fn an_upgrade_over_max_conn_per_ip_gets_429() {
    for kind in kinds("per-ip") {
        let cfg = Config {
            max_conn_per_ip: 1,
            ..config()
        };
        let server = kind.start(Server::builder(cfg).router(echo_router())).await;
        let mut first = kind.raw(server.addr, Layout::Tlv).await;
        first.send(1, b"first").await;
        assert_eq!(&first.recv().await.data[..], b"first");
        let refused = kind
            .try_raw(server.addr, "/", Layout::Tlv)
            .await
            .err()
            .unwrap();
        assert_eq!(status(&refused), Some(429), "{}: {refused}", kind.name());
        server.stop().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn graceful_shutdown_flushes_queued_replies_over_ws_and_wss() {
    for kind in kinds("shutdown") {
        let (handled, mut seen) = tokio::sync::mpsc::unbounded_channel();
        let router = Router::new().route(1, move |req: Request| {
            let handled = handled.clone();
            async move {
                // Ten replies each, queued before the shutdown.
                for i in 0..10u8 {
                    req.conn().send(1, vec![i; 1000]).await?;
                }
                let _ = handled.send(());
                Ok::<(), zinx::Error>(())
            }
        });
        let server = kind.start(Server::builder(config()).router(router)).await;
        let mut raws = Vec::new();
        for _ in 0..3 {
            let mut raw = kind.raw(server.addr, Layout::Tlv).await;
            raw.send(1, b"go").await;
            raws.push(raw);
        }
        for _ in 0..3 {
            within("handled", seen.recv()).await.unwrap();
        }
        server.stop().await;
        for raw in &mut raws {
            for i in 0..10u8 {
                let msg = raw.recv().await;
                assert_eq!(&msg.data[..], &[i; 1000][..], "{}", kind.name());
            }
            raw.expect_closed().await;
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_silent_peer_on_the_websocket_port_is_closed_at_the_handshake_timeout() {
    for kind in kinds("silent") {
        let cfg = Config {
            handshake_timeout: 1,
            max_conn: 2,
            ..config()
        };
        let server = kind.start(Server::builder(cfg).router(echo_router())).await;
        // Says nothing: holds a slot for at most the handshake timeout.
        let mut silent = within("connect", TcpStream::connect(server.addr))
            .await
            .unwrap();
        // Others are served meanwhile.
        let mut raw = kind.raw(server.addr, Layout::Tlv).await;
        raw.send(1, b"served").await;
        assert_eq!(&raw.recv().await.data[..], b"served");
        let mut buf = [0u8; 16];
        let read = within("the silent peer's end", silent.read(&mut buf)).await;
        assert!(matches!(read, Ok(0) | Err(_)), "{read:?}");
        // Its slot comes back (just after its socket is closed): a new
        // upgrade goes through beside `raw`, at most a few refusals later.
        let mut attempts = 0;
        let mut next = loop {
            match kind.try_raw(server.addr, "/", Layout::Tlv).await {
                Ok(next) => break next,
                Err(e) if status(&e) == Some(503) && attempts < 100 => attempts += 1,
                Err(e) => panic!("{}: {e}", kind.name()),
            }
        };
        next.send(1, b"next").await;
        assert_eq!(&next.recv().await.data[..], b"next", "{}", kind.name());
        server.stop().await;
    }
}

#[tokio::test]
async fn a_wrong_path_gets_404_and_the_auth_hook_decides_with_its_status() {
    for kind in kinds("path-auth") {
        let tcp = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let listener = Listener::ws(tcp, kind.server("/game"));
        let seen = Arc::new(std::sync::Mutex::new(Vec::new()));
        let log = seen.clone();
        let builder = Server::builder(config())
            .router(echo_router())
            .ws_auth(move |req| {
                log.lock().unwrap().push((req.path.clone(), req.peer.ip()));
                let token = req.headers.get("x-token").and_then(|v| v.to_str().ok());
                match (req.query.as_deref(), token) {
                    (Some("token=ok"), _) | (_, Some("ok")) => Ok(()),
                    (Some("token=banned"), _) => Err(403),
                    _ => Err(401),
                }
            });
        let server = TestServer::start_on(builder, listener).await;
        let wrong = kind
            .try_raw(server.addr, "/other", Layout::Tlv)
            .await
            .err()
            .unwrap();
        assert_eq!(status(&wrong), Some(404), "{wrong}");
        let none = kind
            .try_raw(server.addr, "/game", Layout::Tlv)
            .await
            .err()
            .unwrap();
        assert_eq!(status(&none), Some(401), "{none}");
        let banned = kind
            .try_raw(server.addr, "/game?token=banned", Layout::Tlv)
            .await
            .err()
            .unwrap();
        assert_eq!(status(&banned), Some(403), "{banned}");
        let mut ok = kind
            .try_raw(server.addr, "/game?token=ok", Layout::Tlv)
            .await
            .unwrap();
        ok.send(1, b"in").await;
        assert_eq!(&ok.recv().await.data[..], b"in", "{}", kind.name());
        // The hook saw the path and a loopback peer; the wrong path never
        // reached it.
        let seen = seen.lock().unwrap().clone();
        assert_eq!(seen.len(), 3, "{seen:?}");
        assert!(seen.iter().all(|(p, ip)| p == "/game" && ip.is_loopback()));
        // The zinx client's error carries the status.
        let err = kind
            .client_at(server.addr, Layout::Tlv, "/game")
            .await
            .err()
            .unwrap();
        assert!(err.is_websocket(), "{err}");
        assert!(
            matches!(
                err,
                zinx::Error::WebSocket {
                    status: Some(401),
                    ..
                }
            ),
            "{err}"
        );
        server.stop().await;
    }
}

#[tokio::test]
async fn a_path_ending_in_a_slash_serves_every_path_under_it() {
    let kind = Kind::Ws;
    let tcp = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let listener = Listener::ws(tcp, WsServer::new("/zinx/"));
    let server =
        TestServer::start_on(Server::builder(config()).router(echo_router()), listener).await;
    for path in ["/zinx/", "/zinx/room/7"] {
        let mut raw = kind.try_raw(server.addr, path, Layout::Tlv).await.unwrap();
        raw.send(1, path.as_bytes()).await;
        assert_eq!(&raw.recv().await.data[..], path.as_bytes());
    }
    let outside = kind
        .try_raw(server.addr, "/zinx", Layout::Tlv)
        .await
        .err()
        .unwrap();
    assert_eq!(status(&outside), Some(404));
    server.stop().await;
}

#[tokio::test]
async fn a_ws_client_routes_pushes_runs_hooks_beats_and_reconnects() {
    let kind = Kind::Ws;
    let (beats_tx, mut beats) = tokio::sync::mpsc::channel::<()>(64);
    let router = echo_router().route_sync(99999, move |_req: &Request| {
        let _ = beats_tx.try_send(());
    });
    let server = kind.start(Server::builder(config()).router(router)).await;
    let (pushed_tx, mut pushed) = tokio::sync::mpsc::channel::<Bytes>(8);
    let (connect_tx, mut connects) = tokio::sync::mpsc::channel::<()>(8);
    let client = Client::builder(server.addr.to_string())
        .ws("/")
        .router(Router::new().route(50, move |req: Request| {
            let pushed = pushed_tx.clone();
            async move {
                let _ = pushed.send(req.data().clone()).await;
            }
        }))
        .on_connect(move |_conn| {
            let tx = connect_tx.clone();
            async move {
                let _ = tx.send(()).await;
            }
        })
        .heartbeat(zinx::Heartbeat::new(Duration::from_millis(20)))
        .reconnect(zinx::Reconnect::new(
            Duration::from_millis(5),
            Duration::from_millis(50),
        ))
        .connect()
        .await
        .unwrap();
    within("first connect", connects.recv()).await.unwrap();
    within("a heartbeat over ws", beats.recv()).await.unwrap();
    assert_eq!(server.handle.manager().broadcast(50, "news").delivered, 1);
    assert_eq!(&within("push", pushed.recv()).await.unwrap()[..], b"news");
    support::reconnect_rounds(&client, &server.handle.manager(), &mut connects, 2).await;
    client.close().await;
    server.stop().await;
}

fn mode_config(mode: &str) -> Config {
    Config {
        mode: mode.into(),
        ws_port: 0,
        kcp_port: 0,
        ws_path: "/zinx".into(),
        ..config()
    }
}

#[tokio::test]
async fn mode_picks_the_listeners_and_names_what_it_cannot_serve() {
    let transports = |listeners: &[Listener]| {
        listeners
            .iter()
            .map(|l| (l.transport(), l.ws_path().map(str::to_owned)))
            .collect::<Vec<_>>()
    };
    let ws = ("ws", Some("/zinx".to_owned()));
    let tcp = ("tcp", None);
    for (mode, expected) in [
        ("tcp", vec![tcp.clone()]),
        ("websocket", vec![ws.clone()]),
        ("", vec![tcp.clone(), ws.clone()]),
        ("tcp,websocket", vec![tcp.clone(), ws.clone()]),
        (" WebSocket , tcp ", vec![tcp.clone(), ws.clone()]),
    ] {
        let listeners = zinx::server::bind_listeners(&mode_config(mode))
            .await
            .unwrap();
        assert_eq!(transports(&listeners), expected, "Mode {mode:?}");
    }
    let err = zinx::server::bind_listeners(&mode_config("tcp,udp"))
        .await
        .unwrap_err();
    let text = err.to_string();
    assert!(
        err.is_config() && text.contains("Mode") && text.contains("udp"),
        "{text}"
    );
    #[cfg(not(feature = "kcp"))]
    {
        let err = zinx::server::bind_listeners(&mode_config("tcp,kcp"))
            .await
            .unwrap_err();
        assert!(err.to_string().contains("`kcp` feature"), "{err}");
    }
    #[cfg(feature = "kcp")]
    {
        let listeners = zinx::server::bind_listeners(&mode_config("kcp,websocket,tcp"))
            .await
            .unwrap();
        let kcp = ("kcp", None);
        assert_eq!(transports(&listeners), vec![tcp.clone(), ws.clone(), kcp]);
        // Settings it cannot serve are refused before anything is bound.
        let cfg = Config {
            kcp_fec_data_shards: 10,
            ..mode_config("tcp,kcp")
        };
        let err = zinx::server::bind_listeners(&cfg).await.unwrap_err();
        assert!(err.to_string().contains("KcpFecDataShards"), "{err}");
    }
    // A WebSocket port that cannot be bound is named.
    let taken = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let cfg = Config {
        ws_port: taken.local_addr().unwrap().port(),
        ..mode_config("websocket")
    };
    let err = zinx::server::bind_listeners(&cfg).await.unwrap_err();
    assert!(err.to_string().contains("WsPort"), "{err}");
}

#[cfg(feature = "tls")]
#[tokio::test]
async fn the_cert_files_make_the_websocket_listener_speak_wss() {
    let cert = make_cert("ws-mode-tls", &["127.0.0.1"]);
    let cfg = Config {
        cert_file: cert.cert.display().to_string(),
        private_key_file: cert.key.display().to_string(),
        ..mode_config("")
    };
    let listeners = zinx::server::bind_listeners(&cfg).await.unwrap();
    let names: Vec<_> = listeners.iter().map(Listener::transport).collect();
    assert_eq!(names, ["tls", "wss"]);
    let ws_addr = listeners[1].local_addr().unwrap();
    let (_handle, stop, task) = run_all(Server::builder(cfg).router(echo_router()), listeners);
    let kind = Kind::Wss(cert);
    let client = kind.client_at(ws_addr, Layout::Tlv, "/zinx").await.unwrap();
    let reply = client
        .request(2, Bytes::from_static(b"secure"), 2, Duration::from_secs(10))
        .await
        .unwrap();
    assert_eq!(&reply.data[..], b"secure");
    // Plain ws on the wss port is no upgrade.
    assert!(
        Kind::Ws
            .try_raw(ws_addr, "/zinx", Layout::Tlv)
            .await
            .is_err()
    );
    client.close().await;
    let _ = stop.send(());
    within("shutdown", task).await.unwrap().unwrap();
}

/// The addresses in the echo example's listener lines, by transport.
fn listed(lines: &[String], transport: &str) -> SocketAddr {
    let line = lines
        .iter()
        .find(|l| l.contains(&format!("({transport}")))
        .unwrap_or_else(|| panic!("no {transport} listener in {lines:?}"));
    line.split_whitespace()
        .find_map(|w| w.parse().ok())
        .unwrap_or_else(|| panic!("no address in {line:?}"))
}

#[tokio::test]
async fn the_echo_example_serves_tcp_and_websocket_and_the_client_example_checks_both() {
    let dir = std::env::temp_dir().join(format!("zinx-ws-example-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let config = dir.join("zinx.json");
    std::fs::write(
        &config,
        r#"{"Host": "127.0.0.1", "TcpPort": 0, "Mode": "tcp,websocket", "WsPort": 0, "WsPath": "/echo"}"#,
    )
    .unwrap();
    let (child, lines) = echo_example(&config, 2).await;
    let (tcp, ws) = (listed(&lines, "tcp"), listed(&lines, "ws"));
    assert!(lines.iter().any(|l| l.contains("ws at /echo")), "{lines:?}");
    for (transport, addr, path) in [("tcp", tcp, "/"), ("ws", ws, "/echo")] {
        let args = [
            "--transport",
            transport,
            "--addr",
            &addr.to_string(),
            "--path",
            path,
        ]
        .into_iter()
        .chain(["--count", "50"])
        .map(str::to_owned)
        .collect();
        let (ok, text) = client_example(args).await;
        assert!(
            ok && text.contains("50 ok, 0 mismatched"),
            "{transport}: {text}"
        );
    }
    // A wrong path: the example reports the refusal and fails.
    let args = [
        "--transport",
        "ws",
        "--addr",
        &ws.to_string(),
        "--path",
        "/nope",
    ]
    .map(str::to_owned)
    .to_vec();
    let (ok, text) = client_example(args).await;
    assert!(!ok && text.contains("404"), "{text}");
    drop(child);
}

#[cfg(feature = "tls")]
#[tokio::test]
async fn the_echo_example_serves_wss_with_the_cert_files() {
    let cert = make_cert("ws-example-wss", &["127.0.0.1"]);
    let dir = cert.cert.parent().unwrap().to_owned();
    let config = dir.join("zinx.json");
    std::fs::write(
        &config,
        format!(
            r#"{{"Host": "127.0.0.1", "TcpPort": 0, "Mode": "websocket", "WsPort": 0, "CertFile": {:?}, "PrivateKeyFile": {:?}}}"#,
            cert.cert.display().to_string(),
            cert.key.display().to_string()
        ),
    )
    .unwrap();
    let (child, lines) = echo_example(&config, 1).await;
    let addr = listed(&lines, "wss");
    let ca = cert.cert.display().to_string();
    let args = [
        "--transport",
        "wss",
        "--addr",
        &addr.to_string(),
        "--ca",
        &ca,
        "--count",
        "30",
    ]
    .map(str::to_owned)
    .to_vec();
    let (ok, text) = client_example(args).await;
    assert!(ok && text.contains("30 ok, 0 mismatched"), "{text}");
    drop(child);
}

#[test]
fn the_shipped_websocket_config_serves_tcp_and_websocket() {
    let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../conf/zinx-ws.json");
    let cfg = Config::from_file(path).unwrap();
    assert_eq!(
        (
            cfg.mode.as_str(),
            cfg.tcp_port,
            cfg.ws_port,
            cfg.ws_path.as_str()
        ),
        ("tcp,websocket", 8999, 9000, "/")
    );
}
