//! Micro-benchmarks of the framings the reader decodes with: Zinx's codec
//! (encode and decode, both layouts), and the length-field decoder beside
//! tokio-util's `LengthDelimitedCodec` on the same bytes (the figures behind
//! "Length-field framing is our own" in docs/ARCHITECTURE.md).

use std::hint::black_box;

use bytes::{BufMut, BytesMut};
use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use tokio_util::codec::{Decoder, LengthDelimitedCodec};
use zinx::framing::LengthFieldCodec;
use zinx::{Codec, Layout, MsgId};

fn codec(c: &mut Criterion) {
    for layout in [Layout::Tlv, Layout::Ltv] {
        for size in [64usize, 4096] {
            let codec = Codec::new(layout, 0);
            let data = vec![7u8; size];
            let mut group = c.benchmark_group(format!("codec/{layout:?}/{size}B"));
            group.throughput(Throughput::Elements(100));
            group.bench_function("encode x100", |b| {
                let mut buf = BytesMut::with_capacity(100 * (size + 8));
                b.iter(|| {
                    buf.clear();
                    for i in 0..100u32 {
                        codec
                            .encode_into(MsgId(i), black_box(&data), &mut buf)
                            .unwrap();
                    }
                    black_box(buf.len())
                });
            });
            let mut wire = BytesMut::new();
            for i in 0..100u32 {
                codec.encode_into(MsgId(i), &data, &mut wire).unwrap();
            }
            let wire = wire.freeze();
            group.bench_function("decode x100", |b| {
                b.iter(|| {
                    let mut buf = BytesMut::from(&wire[..]);
                    let mut dec = codec;
                    let mut n = 0;
                    while let Some(msg) = dec.decode(&mut buf).unwrap() {
                        n += msg.data.len();
                    }
                    black_box(n)
                });
            });
            group.finish();
        }
    }
}

/// `count` frames of `size` bytes, each after a 4-byte big-endian length.
fn length_prefixed(size: usize, count: usize) -> Vec<u8> {
    let mut wire = Vec::with_capacity(count * (size + 4));
    for i in 0..count {
        wire.put_u32(size as u32);
        wire.extend(std::iter::repeat_n(i as u8, size));
    }
    wire
}

/// Feeds `wire` to `decoder` in reads of `read` bytes, decoding after each read
/// as the connection's reader does; returns the bytes of the frames decoded.
fn decode_reads<D>(decoder: &mut D, wire: &[u8], read: usize) -> usize
where
    D: Decoder,
    D::Item: AsRef<[u8]>,
    D::Error: std::fmt::Debug,
{
    let mut buf = BytesMut::new();
    let mut n = 0;
    for chunk in wire.chunks(read) {
        buf.extend_from_slice(chunk);
        while let Some(frame) = decoder.decode(&mut buf).unwrap() {
            n += frame.as_ref().len();
        }
    }
    n
}

/// Both decoders set up alike: a 4-byte big-endian length of the body, the
/// header stripped, frames up to 8 MiB (tokio-util's defaults).
fn length_field(c: &mut Criterion) {
    let ours = LengthFieldCodec::builder()
        .length_field_length(4)
        .initial_bytes_to_strip(4)
        .max_frame_length(8 << 20)
        .build();
    // (frame size, frames, bytes per read): whole reads of many small frames,
    // frames split across TCP segments, one large frame in 16 KiB reads.
    for (size, count, read) in [
        (64, 100, usize::MAX),
        (4096, 100, usize::MAX),
        (4096, 100, 1460),
        (1 << 20, 1, 16 * 1024),
    ] {
        let wire = length_prefixed(size, count);
        // Both cut every frame, or the comparison would mean nothing.
        let mut dec = ours;
        assert_eq!(decode_reads(&mut dec, &wire, read), size * count);
        assert_eq!(
            decode_reads(&mut LengthDelimitedCodec::new(), &wire, read),
            size * count
        );
        let reads = if read == usize::MAX {
            "one read".to_owned()
        } else {
            format!("{read} B reads")
        };
        let mut group = c.benchmark_group(format!("length_field/{count}x{size}B in {reads}"));
        group.throughput(Throughput::Bytes(wire.len() as u64));
        group.bench_function("zinx LengthFieldCodec", |b| {
            b.iter(|| {
                let mut dec = ours;
                decode_reads(&mut dec, black_box(&wire), read)
            });
        });
        group.bench_function("tokio-util LengthDelimitedCodec", |b| {
            b.iter(|| decode_reads(&mut LengthDelimitedCodec::new(), black_box(&wire), read));
        });
        group.finish();
    }
}

criterion_group!(benches, codec, length_field);
criterion_main!(benches);
