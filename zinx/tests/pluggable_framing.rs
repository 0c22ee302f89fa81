//! Servers with HTLV+CRC, length-field and line framing route through the same
//! router; bad CRCs and oversized frames stay harmless.

mod support;

use bytes::{Buf, BufMut, Bytes, BytesMut};
use support::{TestServer, config, echo, within};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio_util::codec::Encoder;
use zinx::framing::{DelimiterCodec, FnMapper, HtlvCrcCodec, LengthFieldCodec, crc16_modbus};
use zinx::{Message, Request, Router, Server};

async fn read_exact(stream: &mut TcpStream, n: usize) -> Vec<u8> {
    let mut buf = vec![0u8; n];
    within("reply bytes", stream.read_exact(&mut buf))
        .await
        .unwrap();
    buf
}

async fn read_to_eof(stream: &mut TcpStream) -> Vec<u8> {
    let mut buf = Vec::new();
    within("EOF", stream.read_to_end(&mut buf)).await.unwrap();
    buf
}

#[tokio::test]
async fn htlv_crc_server_routes_by_function_code_and_drops_bad_crc() {
    let router = Router::new()
        .route(0x10, echo)
        .route(0x11, |req: Request| async move {
            let sum: u32 = req.data().iter().map(|b| u32::from(*b)).sum();
            req.conn().send(0x11, vec![(sum % 256) as u8]).await
        });
    let server = TestServer::start(
        Server::builder(config())
            .router(router)
            .framing(HtlvCrcCodec::new(0xA2)),
    )
    .await;
    let mut stream = TcpStream::connect(server.addr).await.unwrap();

    // Build frames by hand: H, T, L, body, CRC low byte first.
    let frame = |code: u8, body: &[u8]| {
        let mut f = vec![0xA2, code, body.len() as u8];
        f.extend_from_slice(body);
        let crc = crc16_modbus(&f);
        f.extend_from_slice(&crc.to_le_bytes());
        f
    };
    let mut corrupt = frame(0x10, b"corrupt");
    let last = corrupt.len() - 1;
    corrupt[last] ^= 0x55;
    let mut wire = corrupt;
    wire.extend(frame(
        0x10,
        &[1, 2, 3, 4, 5, 6, 7, 8, 9, 0x10, 0x11, 0x12, 0x13, 0x14],
    ));
    wire.extend(frame(0x11, &[200, 100]));
    stream.write_all(&wire).await.unwrap();

    // The corrupt frame is dropped; the next two are answered, in order.
    let expected_echo = frame(
        0x10,
        &[1, 2, 3, 4, 5, 6, 7, 8, 9, 0x10, 0x11, 0x12, 0x13, 0x14],
    );
    assert_eq!(
        read_exact(&mut stream, expected_echo.len()).await,
        expected_echo
    );
    assert_eq!(read_exact(&mut stream, 6).await, frame(0x11, &[44]));
    assert_eq!(
        server.handle.manager().len(),
        1,
        "a bad CRC does not close the connection"
    );
    server.stop().await;
}

/// A framing of a hypothetical device: `[len u16 LE counting id+data][id u16 LE][data]`.
fn device_framing() -> impl zinx::Framing {
    LengthFieldCodec::builder()
        .byte_order(zinx::framing::ByteOrder::LittleEndian)
        .length_field_length(2)
        .initial_bytes_to_strip(2)
        .max_frame_length(2 + 64)
        .build()
        .map(FnMapper::new(
            |mut frame: Bytes| {
                if frame.len() < 2 {
                    return Err(zinx::Error::BadFrame {
                        reason: "frame shorter than its ID".into(),
                    });
                }
                let id = frame.get_u16_le();
                Ok(Some(Message::new(u32::from(id), frame)))
            },
            |msg: &Message, dst: &mut BytesMut| {
                let id = u16::try_from(msg.id.0).map_err(|_| zinx::Error::BadFrame {
                    reason: "ID over 16 bits".into(),
                })?;
                dst.put_u16_le((msg.data.len() + 2) as u16);
                dst.put_u16_le(id);
                dst.put_slice(&msg.data);
                Ok(())
            },
        ))
}

#[tokio::test]
async fn length_field_framing_with_a_mapper_reuses_the_router() {
    let server = TestServer::start(
        Server::builder(config())
            .router(Router::new().route(7, echo))
            .framing(device_framing()),
    )
    .await;
    let mut stream = TcpStream::connect(server.addr).await.unwrap();
    let mut wire = BytesMut::new();
    let mut enc = device_framing();
    enc.encode(Message::new(7, "abc"), &mut wire).unwrap();
    // Split the frame across writes.
    for chunk in wire.chunks(2) {
        stream.write_all(chunk).await.unwrap();
    }
    assert_eq!(read_exact(&mut stream, wire.len()).await, wire.to_vec());

    // A frame announcing more than the maximum closes that connection only.
    let mut bad = TcpStream::connect(server.addr).await.unwrap();
    bad.write_all(&[0xFF, 0x00, 7, 0]).await.unwrap();
    assert!(read_to_eof(&mut bad).await.is_empty());
    stream.write_all(&wire).await.unwrap();
    assert_eq!(read_exact(&mut stream, wire.len()).await, wire.to_vec());
    server.stop().await;
}

#[tokio::test]
async fn line_framing_routes_every_line_to_one_id() {
    let router = Router::new().route(1, |req: Request| async move {
        let reply = req.data().to_ascii_uppercase();
        req.conn().send(1, reply).await
    });
    let server = TestServer::start(
        Server::builder(config())
            .router(router)
            .framing(DelimiterCodec::lines(16).message_id(1)),
    )
    .await;
    let mut stream = TcpStream::connect(server.addr).await.unwrap();
    stream.write_all(b"hello\r\nwor").await.unwrap();
    stream.write_all(b"ld\n").await.unwrap();
    assert_eq!(read_exact(&mut stream, 12).await, b"HELLO\nWORLD\n");
    // A line over the limit closes the connection.
    stream.write_all(&[b'x'; 40]).await.unwrap();
    assert!(read_to_eof(&mut stream).await.is_empty());
    server.stop().await;
}
