//! Micro-benchmarks of routing: dispatching a message to its handler, with and
//! without middleware, through a compiled router. The handlers finish without
//! waiting, so each dispatch is polled once, with no runtime involved.

use std::hint::black_box;

use criterion::{Criterion, criterion_group, criterion_main};
use futures_util::FutureExt;
use zinx::{Connection, Message, Next, Request, Router};

fn router(c: &mut Criterion) {
    let plain = (0..100u32)
        .fold(Router::new(), |r, id| {
            r.route(id, |req: Request| async move {
                black_box(req.data().len());
            })
        })
        .dispatcher();
    let layered = (0..100u32)
        .fold(Router::new(), |r, id| {
            r.route(id, |req: Request| async move {
                black_box(req.data().len());
            })
        })
        .middleware(|req: Request, next: Next| async move { next.run(req).await })
        .intercept(|req: Request, next: Next| async move { next.run(req).await })
        .dispatcher();
    let (conn, _sent) = Connection::detached(1);
    let msg = Message::new(42, vec![0u8; 64]);

    let mut group = c.benchmark_group("router");
    group.bench_function("dispatch", |b| {
        b.iter(|| {
            plain
                .dispatch(Request::new(conn.clone(), msg.clone()))
                .now_or_never()
        });
    });
    group.bench_function("dispatch with middleware and interceptor", |b| {
        b.iter(|| {
            layered
                .dispatch(Request::new(conn.clone(), msg.clone()))
                .now_or_never()
        });
    });
    group.bench_function("dispatch unknown id (fallback)", |b| {
        let quiet = Router::new()
            .fallback(|_req: Request| async {})
            .dispatcher();
        b.iter(|| {
            quiet
                .dispatch(Request::new(conn.clone(), msg.clone()))
                .now_or_never()
        });
    });
    group.finish();
}

criterion_group!(benches, router);
criterion_main!(benches);
