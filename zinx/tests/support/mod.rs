//! Shared helpers: a real server on 127.0.0.1 port 0 and a raw-bytes client.
#![allow(dead_code, unreachable_pub, clippy::unwrap_used, clippy::expect_used)]

use std::future::Future;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use futures_util::StreamExt;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::oneshot;
use tokio::task::JoinHandle;
use tokio_util::codec::FramedRead;
use zinx::transport::Listener;
use zinx::{Codec, Config, Layout, Message, MsgId, ServerBuilder, ServerHandle};

/// Upper bound for any single wait in a test: a guard against hangs, not a
/// performance assertion.
pub const PATIENCE: Duration = Duration::from_secs(20);

/// Awaits `fut`, failing the test if it takes longer than [`PATIENCE`].
pub async fn within<F: Future>(what: &str, fut: F) -> F::Output {
    match tokio::time::timeout(PATIENCE, fut).await {
        Ok(out) => out,
        Err(_) => panic!("timed out waiting for {what}"),
    }
}

/// A config for tests: loopback, small defaults left as in Zinx.
pub fn config() -> Config {
    Config {
        host: "127.0.0.1".into(),
        tcp_port: 0,
        ..Config::default()
    }
}

/// A server running on 127.0.0.1 port 0.
pub struct TestServer {
    pub addr: SocketAddr,
    pub handle: ServerHandle,
    shutdown: Option<oneshot::Sender<()>>,
    task: Option<JoinHandle<zinx::Result<()>>>,
}

impl TestServer {
    pub async fn start<F: zinx::Framing>(builder: ServerBuilder<F>) -> TestServer {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        TestServer::start_on(builder, listener.into()).await
    }

    /// [`start`](Self::start) on a listener of any transport.
    pub async fn start_on<F: zinx::Framing>(
        builder: ServerBuilder<F>,
        listener: Listener,
    ) -> TestServer {
        let server = builder.build();
        let addr = listener.local_addr().unwrap();
        let handle = server.handle();
        let (tx, rx) = oneshot::channel::<()>();
        let task = tokio::spawn(server.run(listener, async move {
            let _ = rx.await;
        }));
        TestServer {
            addr,
            handle,
            shutdown: Some(tx),
            task: Some(task),
        }
    }

    pub async fn connect(&self, layout: Layout) -> RawClient {
        RawClient::connect(self.addr, layout).await
    }

    /// Triggers shutdown and waits for `run` to return.
    pub async fn stop(mut self) {
        if let Some(tx) = self.shutdown.take() {
            let _ = tx.send(());
        }
        let task = self.task.take().unwrap();
        within("server shutdown", task).await.unwrap().unwrap();
    }
}

impl Drop for TestServer {
    fn drop(&mut self) {
        if let Some(tx) = self.shutdown.take() {
            let _ = tx.send(());
        }
    }
}

/// A client speaking raw Zinx frames (over TCP unless made `from_halves`).
pub struct RawClient<R = OwnedReadHalf, W = OwnedWriteHalf> {
    pub layout: Layout,
    reader: FramedRead<R, Codec>,
    pub writer: W,
}

pub fn frame(layout: Layout, id: u32, data: &[u8]) -> Vec<u8> {
    let mut buf = BytesMut::new();
    Codec::new(layout, 0)
        .encode_into(MsgId(id), data, &mut buf)
        .unwrap();
    buf.to_vec()
}

impl RawClient {
    pub async fn connect(addr: SocketAddr, layout: Layout) -> RawClient {
        let stream = within("connect", TcpStream::connect(addr)).await.unwrap();
        RawClient::from_stream(stream, layout)
    }

    pub fn from_stream(stream: TcpStream, layout: Layout) -> RawClient {
        stream.set_nodelay(true).unwrap();
        let (r, w) = stream.into_split();
        RawClient {
            layout,
            reader: FramedRead::new(r, Codec::new(layout, 0)),
            writer: w,
        }
    }
}

impl<R: AsyncRead + Unpin, W: AsyncWrite + Unpin> RawClient<R, W> {
    /// A client on the two halves of any stream (TLS, say).
    pub fn from_halves(read: R, write: W, layout: Layout) -> RawClient<R, W> {
        RawClient {
            layout,
            reader: FramedRead::new(read, Codec::new(layout, 0)),
            writer: write,
        }
    }

    pub async fn send(&mut self, id: u32, data: impl AsRef<[u8]>) {
        let bytes = frame(self.layout, id, data.as_ref());
        self.write_raw(&bytes).await;
    }

    /// Writes and flushes (a no-op for TCP; TLS sends its record now).
    pub async fn write_raw(&mut self, bytes: &[u8]) {
        within("write", self.writer.write_all(bytes)).await.unwrap();
        within("flush", self.writer.flush()).await.unwrap();
    }

    /// The next message; panics on EOF or error.
    pub async fn recv(&mut self) -> Message {
        match within("a reply", self.reader.next()).await {
            Some(Ok(msg)) => msg,
            Some(Err(e)) => panic!("read error: {e}"),
            None => panic!("server closed the connection"),
        }
    }

    pub async fn roundtrip(&mut self, id: u32, data: impl AsRef<[u8]>) -> Message {
        self.send(id, data).await;
        self.recv().await
    }

    /// Reads until EOF, returning the messages that came before it.
    pub async fn recv_until_closed(&mut self) -> Vec<Message> {
        let mut out = Vec::new();
        loop {
            match within("EOF", self.reader.next()).await {
                Some(Ok(msg)) => out.push(msg),
                Some(Err(_)) | None => return out,
            }
        }
    }

    /// Waits for the server to close the connection, with no message before it.
    pub async fn expect_closed(&mut self) {
        let msgs = self.recv_until_closed().await;
        assert!(msgs.is_empty(), "expected EOF, got {msgs:?}");
    }

    /// True when the raw socket reads EOF (or a reset) without data.
    pub async fn read_eof(self) -> bool {
        let mut stream = self.reader.into_inner();
        let mut buf = [0u8; 64];
        matches!(within("EOF", stream.read(&mut buf)).await, Ok(0) | Err(_))
    }
}

pub fn bytes(s: &str) -> Bytes {
    Bytes::copy_from_slice(s.as_bytes())
}

/// The echo handler: replies with the same ID and data.
pub async fn echo(req: zinx::Request) -> zinx::Result<()> {
    req.conn().send(req.msg_id(), req.data()).await
}

/// A log writer that keeps what the `fmt` subscriber writes, for tests that
/// read the logs.
#[derive(Clone, Default)]
pub struct Captured(std::sync::Arc<std::sync::Mutex<Vec<u8>>>);

impl Captured {
    /// Everything written so far.
    pub fn text(&self) -> String {
        String::from_utf8(self.0.lock().unwrap().clone()).unwrap()
    }
}

impl std::io::Write for Captured {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl<'a> tracing_subscriber::fmt::MakeWriter<'a> for Captured {
    type Writer = Captured;
    fn make_writer(&'a self) -> Captured {
        self.clone()
    }
}

/// A self-signed certificate and its key, as PEM files in a directory of
/// their own.
pub struct Cert {
    pub cert: PathBuf,
    pub key: PathBuf,
    pub cert_pem: String,
}

/// A certificate for `names` (IP addresses become IP subject alternative
/// names), written under a directory named after `test`.
pub fn make_cert(test: &str, names: &[&str]) -> Cert {
    let names: Vec<String> = names.iter().map(|n| (*n).to_owned()).collect();
    let made = rcgen::generate_simple_self_signed(names).unwrap();
    let dir = std::env::temp_dir().join(format!("zinx-tls-{}-{test}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let (cert, key) = (dir.join("cert.pem"), dir.join("key.pem"));
    let cert_pem = made.cert.pem();
    std::fs::write(&cert, &cert_pem).unwrap();
    std::fs::write(&key, made.signing_key.serialize_pem()).unwrap();
    Cert {
        cert,
        key,
        cert_pem,
    }
}

#[cfg(feature = "tls")]
impl Cert {
    /// A client's TLS handshake on `tcp` (rustls with ring, trusting this
    /// certificate, for the name 127.0.0.1).
    pub async fn connect(&self, tcp: TcpStream) -> tokio_rustls::client::TlsStream<TcpStream> {
        use rustls::pki_types::pem::PemObject;
        use rustls::pki_types::{CertificateDer, ServerName};
        let mut roots = rustls::RootCertStore::empty();
        roots
            .add(CertificateDer::from_pem_slice(self.cert_pem.as_bytes()).unwrap())
            .unwrap();
        // The provider zinx uses (deprecated in rustls 0.23.48: see
        // zinx::transport::tls).
        #[allow(deprecated)]
        let provider = std::sync::Arc::new(rustls::crypto::ring::default_provider());
        let config = rustls::ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_root_certificates(roots)
            .with_no_client_auth();
        let name = ServerName::try_from("127.0.0.1").unwrap();
        let tls = tokio_rustls::TlsConnector::from(std::sync::Arc::new(config));
        within("handshake", tls.connect(name, tcp)).await.unwrap()
    }

    pub fn server(&self) -> zinx::transport::tls::TlsServer {
        zinx::transport::tls::TlsServer::from_pem_files(&self.cert, &self.key).unwrap()
    }

    pub fn client(&self) -> zinx::transport::tls::TlsClient {
        zinx::transport::tls::TlsClient::trust_pem(self.cert_pem.as_bytes()).unwrap()
    }
}

pub fn example(name: &str) -> PathBuf {
    // Test binaries live in target/<profile>/deps, examples in
    // target/<profile>/examples (built by `cargo test`).
    let exe = std::env::current_exe().unwrap();
    let profile_dir = exe.parent().and_then(|deps| deps.parent()).unwrap();
    let path = profile_dir.join("examples").join(name);
    assert!(
        path.exists(),
        "{} not built: run `cargo test`",
        path.display()
    );
    path
}

/// Runs the client example with `args`; returns whether it exited 0, and its
/// output.
pub async fn client_example(args: Vec<String>) -> (bool, String) {
    let out = within(
        "client example",
        tokio::task::spawn_blocking(move || {
            std::process::Command::new(example("client"))
                .args(&args)
                .output()
        }),
    )
    .await
    .unwrap()
    .unwrap();
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (out.status.success(), text)
}

/// A child process killed when dropped, so a failing assertion leaves no
/// server behind (holding the test's stderr open).
pub struct Killed(pub std::process::Child);

impl Drop for Killed {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Starts the echo example with `config` (a zinx.json) and reads the first
/// `lines` lines it prints (one per listener).
pub async fn echo_example(config: &std::path::Path, lines: usize) -> (Killed, Vec<String>) {
    echo_example_with(config, lines, &[]).await
}

/// [`echo_example`] with command-line arguments.
pub async fn echo_example_with(
    config: &std::path::Path,
    lines: usize,
    args: &[&str],
) -> (Killed, Vec<String>) {
    use std::process::{Command, Stdio};
    let mut child = Killed(
        Command::new(example("echo_server"))
            .args(args)
            .env("ZINX_CONFIG_FILE_PATH", config)
            .env("RUST_LOG", "warn")
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .unwrap(),
    );
    let stdout = child.0.stdout.take().unwrap();
    let read = within(
        "the address lines",
        tokio::task::spawn_blocking(move || {
            let mut reader = std::io::BufReader::new(stdout);
            let mut out = Vec::new();
            for _ in 0..lines {
                let mut line = String::new();
                std::io::BufRead::read_line(&mut reader, &mut line)?;
                out.push(line);
            }
            std::io::Result::Ok(out)
        }),
    )
    .await
    .unwrap()
    .unwrap();
    (child, read)
}

/// `rounds` times: the server drops every connection (`manager`'s), and
/// `client` reconnects (its `on_connect` reports on `connects`) under a new
/// connection ID and answers an echo request on msgID 1.
pub async fn reconnect_rounds(
    client: &zinx::Client,
    manager: &zinx::ConnManager,
    connects: &mut tokio::sync::mpsc::Receiver<()>,
    rounds: usize,
) {
    for round in 0..rounds {
        let first = client.connection().await.unwrap();
        for conn in manager.connections() {
            conn.close();
        }
        within("reconnect", connects.recv()).await.unwrap();
        let second = client.connection().await.unwrap();
        assert_ne!(first.id(), second.id(), "round {round}");
        let reply = client.request(1, "again", 1, PATIENCE).await.unwrap();
        assert_eq!(&reply.data[..], b"again");
    }
}
