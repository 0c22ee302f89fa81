//! The reader: the only code that reads from a connection's socket.
//!
//! It decodes frames with [`Codec`] over a `FramedRead` and hands each message,
//! as a [`Request`], to the connection's [`Lane`]. Waiting on a full worker queue
//! stops the reading, which is the backpressure that slows a fast peer. A framing
//! error (oversized or truncated frame) ends this connection only.

use futures_util::StreamExt;
use tokio::io::AsyncRead;
use tokio_util::codec::FramedRead;

use crate::codec::Codec;
use crate::conn::Connection;
use crate::error::Error;
use crate::request::Request;
use crate::worker::Lane;

/// Why the reader stopped.
#[derive(Debug)]
pub(crate) enum ReadEnd {
    /// The peer closed its side cleanly (on a frame boundary).
    PeerClosed,
    /// The connection was closed from this side (handler, server shutdown, writer error).
    Cancelled,
    /// The peer broke the protocol or the socket failed.
    Failed(Error),
}

/// Reads and dispatches until the peer closes, the connection is cancelled or an
/// error occurs. After a clean close by the peer it waits until the messages
/// already dispatched are handled, so their replies are still queued before the
/// connection closes.
pub(crate) async fn run<R>(
    io: R,
    conn: &Connection,
    lane: &Lane,
    codec: Codec,
    buf: usize,
) -> ReadEnd
where
    R: AsyncRead + Unpin,
{
    let cancel = conn.cancel_token();
    let mut frames = FramedRead::with_capacity(io, codec, buf);
    loop {
        let next = tokio::select! {
            biased;
            () = cancel.cancelled() => return ReadEnd::Cancelled,
            // Cancel-safe: FramedRead keeps a partial frame in its buffer.
            next = frames.next() => next,
        };
        let msg = match next {
            Some(Ok(msg)) => msg,
            Some(Err(e)) => return ReadEnd::Failed(e),
            None => break,
        };
        if lane
            .dispatch(Request::new(conn.clone(), msg), cancel)
            .await
            .is_err()
        {
            return ReadEnd::Cancelled;
        }
    }
    tokio::select! {
        biased;
        () = cancel.cancelled() => ReadEnd::Cancelled,
        // Cancel-safe: the barrier only signals; dropping the wait loses nothing.
        () = lane.drain() => ReadEnd::PeerClosed,
    }
}
