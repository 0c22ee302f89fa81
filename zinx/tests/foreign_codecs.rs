//! A tokio-util codec made a framing in one line (`MappedCodec`): a server framed
//! by `LengthDelimitedCodec` with a 2-byte message ID talks to peers using the
//! same codec; a frame over the codec's maximum closes only the connection that
//! sent it, as a protocol error, and a reply over it is its sender's error.

mod support;

use bytes::{BufMut, Bytes, BytesMut};
use futures_util::StreamExt;
use support::{Captured, TestServer, config, echo, within};
use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};
use tokio_util::codec::{Encoder, FramedRead, LengthDelimitedCodec};
use zinx::framing::{ByteOrder, IdPrefix, MappedCodec};
use zinx::{Request, Router, Server};

/// The largest frame both sides accept (ID included).
const MAX: usize = 64;

fn codec() -> LengthDelimitedCodec {
    LengthDelimitedCodec::builder()
        .max_frame_length(MAX)
        .new_codec()
}

/// A peer speaking `LengthDelimitedCodec` frames of a big-endian u16 ID and data.
struct Peer {
    frames: FramedRead<OwnedReadHalf, LengthDelimitedCodec>,
    writer: OwnedWriteHalf,
}

impl Peer {
    async fn connect(server: &TestServer) -> Peer {
        let stream = within("connect", TcpStream::connect(server.addr))
            .await
            .unwrap();
        let (r, w) = stream.into_split();
        Peer {
            frames: FramedRead::new(r, codec()),
            writer: w,
        }
    }

    fn frame(id: u16, data: &[u8]) -> BytesMut {
        let mut payload = BytesMut::new();
        payload.put_u16(id);
        payload.put_slice(data);
        let mut wire = BytesMut::new();
        codec().encode(payload.freeze(), &mut wire).unwrap();
        wire
    }

    async fn write(&mut self, bytes: &[u8]) {
        within("write", self.writer.write_all(bytes)).await.unwrap();
    }

    /// The next frame's payload; `None` at EOF.
    async fn recv(&mut self) -> Option<Bytes> {
        within("a frame", self.frames.next())
            .await
            .map(|frame| frame.unwrap().freeze())
    }

    async fn roundtrip(&mut self, id: u16, data: &[u8]) -> Bytes {
        self.write(&Peer::frame(id, data)).await;
        self.recv().await.expect("a reply, not EOF")
    }
}

fn payload(id: u16, data: &[u8]) -> Bytes {
    [&id.to_be_bytes()[..], data].concat().into()
}

// One thread: the subscriber set for this test sees the server's tasks.
#[tokio::test]
async fn length_delimited_codec_serves_and_an_oversized_frame_closes_only_its_connection() {
    let logs = Captured::default();
    let subscriber = tracing_subscriber::fmt()
        .with_writer(logs.clone())
        .with_ansi(false)
        .with_max_level(tracing::Level::DEBUG)
        .finish();
    let _guard = tracing::subscriber::set_default(subscriber);
    let router = Router::new()
        .route(7, echo)
        .route(8, |req: Request| async move {
            // One byte too many for the codec once the ID is in front.
            let err = req.conn().send(8, vec![0; MAX - 1]).await.unwrap_err();
            assert!(err.is_protocol(), "{err}");
            req.conn().send(9, err.to_string()).await
        });
    let server = TestServer::start(Server::builder(config()).router(router).framing(
        MappedCodec::new(codec(), IdPrefix::new(2, ByteOrder::BigEndian)),
    ))
    .await;
    let mut good = Peer::connect(&server).await;
    assert_eq!(good.roundtrip(7, b"hello").await, payload(7, b"hello"));
    // Two frames in one write, then one cut across writes.
    let mut wire = Peer::frame(7, b"one");
    wire.extend_from_slice(&Peer::frame(7, b""));
    good.write(&wire).await;
    assert_eq!(good.recv().await, Some(payload(7, b"one")));
    assert_eq!(good.recv().await, Some(payload(7, b"")));
    let wire = Peer::frame(7, &[b'x'; MAX - 2]);
    for chunk in wire.chunks(5) {
        good.write(chunk).await;
    }
    assert_eq!(good.recv().await, Some(payload(7, &[b'x'; MAX - 2])));

    // A header announcing one byte more than the maximum: that peer is closed.
    let mut bad = Peer::connect(&server).await;
    let announced = u32::try_from(MAX + 1).unwrap();
    bad.write(&announced.to_be_bytes()).await;
    assert_eq!(
        bad.recv().await,
        None,
        "the oversized frame's peer is closed"
    );
    // The other peer is still served, and a reply too large for the codec is
    // its sender's error.
    let reply = good.roundtrip(8, b"").await;
    assert_eq!(reply, payload(9, b"bad frame: frame size too big"));
    assert_eq!(good.roundtrip(7, b"still").await, payload(7, b"still"));
    server.stop().await;

    let text = logs.text();
    assert!(
        text.lines()
            .any(|l| l.contains("frame size too big") && l.contains("protocol")),
        "the oversized frame is logged as a protocol fault:\n{text}"
    );
}
