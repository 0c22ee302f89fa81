//! The memory a peer can make the server hold for a partial frame follows the
//! bytes it really sent, whatever length the frame announces, for every framing.
//!
//! One test in this binary: it limits the whole process's address space to
//! 2 GiB (with util-linux's `prlimit`), so a server that reserved a frame's
//! announced length before its bytes came would abort the process here.
#![cfg(target_os = "linux")]

mod support;

use std::process::Command;

use bytes::{BufMut, Bytes, BytesMut};
use support::{TestServer, config, within};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use zinx::framing::{DelimiterCodec, FnMapper, HtlvCrcCodec, LengthFieldCodec};
use zinx::{Config, Framing, Layout, Message, Request, Router, Server};

/// The address space the process may use while the attacks run.
const ADDRESS_SPACE: u64 = 2 << 30;

fn router() -> Router {
    Router::new().route_sync(1, |req: &Request| req.conn().try_send(1, req.data()))
}

fn unbounded() -> Config {
    Config {
        max_packet_size: u32::MAX,
        ..config()
    }
}

/// Virtual memory of this process, from /proc.
fn vm_size() -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap();
    let line = status.lines().find(|l| l.starts_with("VmSize:")).unwrap();
    let kib: u64 = line.split_whitespace().nth(1).unwrap().parse().unwrap();
    kib * 1024
}

/// Opens `peers` connections that each send `attack` and then wait; checks
/// that a well-behaved client (speaking `hello`, expecting `reply`) is served
/// meanwhile, and returns how much virtual memory the attacks added.
async fn attack(
    server: &TestServer,
    attack: &[u8],
    peers: usize,
    hello: &[u8],
    reply: &[u8],
) -> u64 {
    let before = vm_size();
    let mut held = Vec::with_capacity(peers);
    for _ in 0..peers {
        let mut stream = within("connect", TcpStream::connect(server.addr))
            .await
            .unwrap();
        within("send", stream.write_all(attack)).await.unwrap();
        held.push(stream);
    }
    // Wait until the server has read every attack: one round trip per held
    // connection's neighbour is not enough, so ask a fresh client last.
    let mut good = within("connect", TcpStream::connect(server.addr))
        .await
        .unwrap();
    within("send", good.write_all(hello)).await.unwrap();
    let mut got = vec![0u8; reply.len()];
    within("the reply", good.read_exact(&mut got))
        .await
        .unwrap();
    assert_eq!(got, reply, "a well-behaved client is served");
    let grown = vm_size().saturating_sub(before);
    drop(held);
    grown
}

async fn serve<F: Framing>(config: Config, framing: F) -> TestServer {
    TestServer::start(Server::builder(config).router(router()).framing(framing)).await
}

fn zinx_frame(layout: Layout, len: u32, body: &[u8]) -> Vec<u8> {
    let mut wire = match layout {
        Layout::Tlv => [1u32.to_be_bytes(), len.to_be_bytes()].concat(),
        Layout::Ltv => [len.to_le_bytes(), 1u32.to_le_bytes()].concat(),
    };
    wire.extend_from_slice(body);
    wire
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn huge_announced_frames_cost_what_was_sent_for_every_framing() {
    let pid = std::process::id().to_string();
    let limited = Command::new("prlimit")
        .args(["--pid", &pid, &format!("--as={ADDRESS_SPACE}")])
        .status()
        .expect("prlimit (util-linux) runs");
    assert!(limited.success());
    assert!(vm_size() < ADDRESS_SPACE, "the limit leaves room to work");

    // Zinx layouts: the largest length a header can announce, at a maximum that
    // allows it, then 10 bytes. One such frame would need 4 GiB.
    for layout in [Layout::Tlv, Layout::Ltv] {
        let builder = Server::builder(unbounded()).router(router()).layout(layout);
        let server = TestServer::start(builder).await;
        let hello = zinx_frame(layout, 2, b"hi");
        let grown = attack(
            &server,
            &zinx_frame(layout, 0xFFFF_FFF0, &[0; 10]),
            8,
            &hello,
            &hello,
        )
        .await;
        assert!(grown < 256 << 20, "{layout:?}: {grown} bytes");
        server.stop().await;
    }

    // Many peers each announcing 1 MiB and sending 10 bytes: the server holds
    // kilobytes for each, not the megabyte (400 MiB for all, reserved up front).
    let mut small = config();
    small.max_packet_size = 1 << 20;
    let server = serve(small, zinx::Codec::new(Layout::Tlv, 1 << 20)).await;
    let hello = zinx_frame(Layout::Tlv, 2, b"hi");
    let grown = attack(
        &server,
        &zinx_frame(Layout::Tlv, 1 << 20, &[0; 10]),
        400,
        &hello,
        &hello,
    )
    .await;
    assert!(
        grown < 100 << 20,
        "400 peers grew the server by {grown} bytes"
    );
    server.stop().await;

    // A length field of 8 bytes with no maximum: about 2^56 announced.
    let length_field = LengthFieldCodec::builder()
        .length_field_length(8)
        .max_frame_length(usize::MAX)
        .initial_bytes_to_strip(8)
        .build()
        .map(FnMapper::new(
            |frame: Bytes| Ok(Some(Message::new(1, frame))),
            |msg: &Message, dst: &mut BytesMut| {
                dst.put_u64(msg.data.len() as u64);
                dst.put_slice(&msg.data);
                Ok(())
            },
        ));
    let server = serve(config(), length_field).await;
    let mut huge = vec![0x00, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xF0];
    huge.extend_from_slice(&[0; 10]);
    let hello = [&2u64.to_be_bytes()[..], b"hi"].concat();
    let grown = attack(&server, &huge, 8, &hello, &hello).await;
    assert!(grown < 256 << 20, "length field: {grown} bytes");
    server.stop().await;

    // Lines with no length limit: 10 bytes and no newline.
    let lines = DelimiterCodec::lines(usize::MAX).message_id(1);
    let server = serve(config(), lines).await;
    let grown = attack(&server, &[b'x'; 10], 8, b"hi\n", b"hi\n").await;
    assert!(grown < 256 << 20, "lines: {grown} bytes");
    server.stop().await;

    // HTLV+CRC announces at most 255 bytes: the header and part of a body.
    let server = serve(config(), HtlvCrcCodec::new(0xA1)).await;
    let mut hello = BytesMut::new();
    tokio_util::codec::Encoder::encode(
        &mut HtlvCrcCodec::new(0xA1),
        Message::new(1, "hi"),
        &mut hello,
    )
    .unwrap();
    let grown = attack(&server, &[0xA1, 0x01, 0xFF, 0, 0, 0], 8, &hello, &hello).await;
    assert!(grown < 256 << 20, "HTLV: {grown} bytes");
    server.stop().await;
}
