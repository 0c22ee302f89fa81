//! Zinx's codec over a real socket, in both packet layouts: the exact wire bytes,
//! coalesced and split frames, zero-length and maximum-length messages, and
//! oversized and truncated frames closing only the offending connection.

mod support;

use support::{RawClient, TestServer, config, echo, frame, within};
use zinx::{Layout, Router, Server};

fn echo_router() -> Router {
    Router::new().route(1, echo).route(7, echo)
}

async fn echo_server(layout: Layout) -> TestServer {
    TestServer::start(
        Server::builder(config())
            .router(echo_router())
            .layout(layout),
    )
    .await
}

#[tokio::test]
async fn both_layouts_echo_with_the_exact_wire_bytes() {
    for layout in [Layout::Tlv, Layout::Ltv] {
        let server = echo_server(layout).await;
        let mut client = server.connect(layout).await;
        // Hand-written headers, so the test does not trust our encoder.
        let wire: Vec<u8> = match layout {
            Layout::Tlv => [&[0, 0, 0, 7, 0, 0, 0, 3][..], b"abc"].concat(),
            Layout::Ltv => [&[3, 0, 0, 0, 7, 0, 0, 0][..], b"abc"].concat(),
        };
        client.write_raw(&wire).await;
        let reply = client.recv().await;
        assert_eq!(
            (reply.id.0, &reply.data[..]),
            (7, &b"abc"[..]),
            "{layout:?}"
        );
        server.stop().await;
    }
}

#[tokio::test]
async fn tlv_server_reads_ltv_header_as_garbage_not_as_a_message() {
    // An LTV frame of length 3 and ID 7 reads, in TLV, as ID 0x03000000 with a
    // length of 0x07000000: far over MaxPacketSize, so the connection is closed.
    let server = echo_server(Layout::Tlv).await;
    let mut client = server.connect(Layout::Tlv).await;
    client.write_raw(&frame(Layout::Ltv, 7, b"abc")).await;
    client.expect_closed().await;
    server.stop().await;
}

#[tokio::test]
async fn many_frames_in_one_write() {
    let server = echo_server(Layout::Tlv).await;
    let mut client = server.connect(Layout::Tlv).await;
    let mut wire = Vec::new();
    for i in 0..500u32 {
        wire.extend(frame(Layout::Tlv, 1, &i.to_be_bytes()));
    }
    client.write_raw(&wire).await;
    for i in 0..500u32 {
        let m = client.recv().await;
        assert_eq!(&m.data[..], &i.to_be_bytes());
    }
    server.stop().await;
}

#[tokio::test]
async fn one_frame_over_many_writes() {
    let server = echo_server(Layout::Ltv).await;
    let mut client = server.connect(Layout::Ltv).await;
    let payload: Vec<u8> = (0..3000u32).map(|i| (i % 251) as u8).collect();
    let wire = frame(Layout::Ltv, 1, &payload);
    for chunk in wire.chunks(7) {
        client.write_raw(chunk).await;
    }
    let m = client.recv().await;
    assert_eq!(&m.data[..], &payload[..]);
    server.stop().await;
}

#[tokio::test]
async fn zero_length_and_max_length_messages() {
    let server = echo_server(Layout::Tlv).await;
    let mut client = server.connect(Layout::Tlv).await;
    assert!(client.roundtrip(1, b"").await.data.is_empty());
    let max = vec![0xAB; 4096];
    assert_eq!(&client.roundtrip(1, &max).await.data[..], &max[..]);
    server.stop().await;
}

#[tokio::test]
async fn oversized_header_closes_only_that_connection() {
    for layout in [Layout::Tlv, Layout::Ltv] {
        let server = echo_server(layout).await;
        let mut good = server.connect(layout).await;
        assert_eq!(&good.roundtrip(1, b"before").await.data[..], b"before");

        let mut bad = server.connect(layout).await;
        // A header announcing 4 GiB - 1 bytes: must be refused, not allocated.
        let header: Vec<u8> = match layout {
            Layout::Tlv => [0, 0, 0, 1, 0xFF, 0xFF, 0xFF, 0xFF].to_vec(),
            Layout::Ltv => [0xFF, 0xFF, 0xFF, 0xFF, 1, 0, 0, 0].to_vec(),
        };
        bad.write_raw(&header).await;
        bad.expect_closed().await;

        let mut over = server.connect(layout).await;
        over.write_raw(&frame(layout, 1, &[0u8; 4097])).await;
        over.expect_closed().await;

        assert_eq!(&good.roundtrip(1, b"after").await.data[..], b"after");
        server.stop().await;
    }
}

#[tokio::test]
async fn eof_mid_frame_closes_only_that_connection() {
    let server = echo_server(Layout::Tlv).await;
    let mut good = server.connect(Layout::Tlv).await;
    let mut bad = server.connect(Layout::Tlv).await;
    let wire = frame(Layout::Tlv, 1, b"truncated");
    bad.write_raw(&wire[..wire.len() - 3]).await;
    within("shutdown", bad.writer.shutdown()).await.unwrap();
    bad.expect_closed().await;
    assert_eq!(&good.roundtrip(1, b"ok").await.data[..], b"ok");
    server.stop().await;
}

#[tokio::test]
async fn unbounded_max_packet_size_accepts_large_frames() {
    let server = TestServer::start(
        Server::builder(zinx::Config {
            max_packet_size: 0,
            ..config()
        })
        .router(echo_router()),
    )
    .await;
    let mut client = RawClient::connect(server.addr, Layout::Tlv).await;
    let big = vec![5u8; 1 << 20];
    assert_eq!(client.roundtrip(1, &big).await.data.len(), 1 << 20);
    server.stop().await;
}

use tokio::io::AsyncWriteExt;
