//! Micro-benchmarks of Zinx framing: encode and decode, both layouts.

use std::hint::black_box;

use bytes::BytesMut;
use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use tokio_util::codec::Decoder;
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

criterion_group!(benches, codec);
criterion_main!(benches);
