//! Shared by the decoder targets: feed bytes in chunks the way the reader does.

use bytes::BytesMut;
use zinx::Framing;

/// Splits `wire` into chunks of `chunk` bytes (at least 1), calls `decode_all` after
/// each and at EOF, and checks that the buffer never grew past what was fed plus one
/// frame of `max_frame` bytes (with `BytesMut`'s doubling).
pub fn feed<F: Framing>(framing: &mut F, wire: &[u8], chunk: usize, max_frame: usize) {
    let mut buf = BytesMut::new();
    let mut out = Vec::new();
    for part in wire.chunks(chunk.max(1)) {
        buf.extend_from_slice(part);
        let result = framing.decode_all(&mut buf, &mut out, false);
        check(&buf, wire.len(), max_frame);
        if result.is_err() {
            return;
        }
        out.clear();
    }
    let _ = framing.decode_all(&mut buf, &mut out, true);
    check(&buf, wire.len(), max_frame);
}

fn check(buf: &BytesMut, input: usize, max_frame: usize) {
    let bound = 2 * (input + max_frame) + 1024;
    assert!(
        buf.capacity() <= bound,
        "buffer grew to {} (bound {bound})",
        buf.capacity()
    );
}
