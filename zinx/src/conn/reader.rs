//! The reader: the only code that reads from a connection's socket.
//!
//! It decodes frames with the server's [`Framing`] over a `FramedRead` and hands each message,
//! as a [`Request`], to the connection's [`Lane`]. Waiting on a full worker queue
//! stops the reading, which is the backpressure that slows a fast peer. A framing
//! error (oversized or truncated frame) ends this connection only. The reader
//! also runs the connection's heartbeat, since it is what hears from the peer.

use futures_util::StreamExt;
use tokio::io::AsyncRead;
use tokio::time::{Instant, Interval, MissedTickBehavior};
use tokio_util::codec::FramedRead;

use crate::conn::Connection;
use crate::error::Error;
use crate::framing::Framing;
use crate::heartbeat::Heartbeat;
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

impl ReadEnd {
    /// A word for logs.
    pub(crate) fn reason(&self) -> &'static str {
        match self {
            ReadEnd::PeerClosed => "peer closed",
            ReadEnd::Cancelled => "closed locally",
            ReadEnd::Failed(_) => "error",
        }
    }
}

/// Reads and dispatches until the peer closes, the connection is cancelled or an
/// error occurs. After a clean close by the peer it waits until the messages
/// already dispatched are handled, so their replies are still queued before the
/// connection closes.
pub(crate) async fn run<R, F>(
    io: R,
    conn: &Connection,
    lane: &mut Lane,
    framing: F,
    buf: usize,
    heartbeat: Option<&Heartbeat>,
) -> ReadEnd
where
    R: AsyncRead + Unpin,
    F: Framing,
{
    let cancel = conn.cancel_token();
    let mut frames = FramedRead::with_capacity(io, framing, buf);
    let mut ticker = heartbeat.map(|hb| {
        let mut t = tokio::time::interval_at(Instant::now() + hb.interval, hb.interval);
        t.set_missed_tick_behavior(MissedTickBehavior::Delay);
        t
    });
    let mut last_heard = Instant::now();
    // One cancellation future for the whole loop: creating one per select! costs a
    // registration with the token's notifier each time.
    let cancelled = cancel.cancelled();
    tokio::pin!(cancelled);
    loop {
        let next = tokio::select! {
            biased;
            () = &mut cancelled => return ReadEnd::Cancelled,
            // Cancel-safe: recv loses nothing (never ready for worker lanes); the
            // job runs in the branch body, so no other branch can interrupt it.
            job = lane.next_inline_job() => {
                lane.run_inline_job(job).await;
                continue;
            }
            // Cancel-safe: Interval::tick only records a tick when it completes.
            _ = tick(ticker.as_mut()) => {
                if let Some(hb) = heartbeat {
                    beat(hb, conn, last_heard);
                }
                continue;
            }
            // Cancel-safe: FramedRead keeps a partial frame in its buffer.
            next = frames.next() => next,
        };
        let msg = match next {
            Some(Ok(msg)) => msg,
            Some(Err(e)) => return ReadEnd::Failed(e),
            None => break,
        };
        last_heard = Instant::now();
        if lane
            .dispatch(Request::new(conn.clone(), msg), cancelled.as_mut())
            .await
            .is_err()
        {
            return ReadEnd::Cancelled;
        }
    }
    tokio::select! {
        biased;
        () = &mut cancelled => ReadEnd::Cancelled,
        // Cancel-safe: the barrier only signals; dropping the wait loses nothing.
        () = lane.drain() => ReadEnd::PeerClosed,
    }
}

/// The next heartbeat tick, or never without a heartbeat.
async fn tick(ticker: Option<&mut Interval>) {
    match ticker {
        Some(t) => {
            t.tick().await;
        }
        None => std::future::pending().await,
    }
}

/// One heartbeat tick: declare the peer dead, or send a heartbeat.
fn beat(hb: &Heartbeat, conn: &Connection, last_heard: Instant) {
    if last_heard.elapsed() > hb.limit() {
        (hb.on_dead)(conn);
    } else if let Err(e) = conn.try_send(hb.msg_id, (hb.payload)(conn)) {
        // A full queue means the peer is not reading; that is for the silence
        // check (or the send-queue policy) to judge, not a reason to wait here.
        tracing::debug!(error = %e, "heartbeat not sent");
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use tokio::io::AsyncWriteExt;
    use tokio_util::task::TaskTracker;

    use super::*;
    use crate::codec::{Codec, Layout};
    use crate::config::WorkerMode;
    use crate::conn::tests::test_conn;
    use crate::message::{ConnId, MsgId};
    use crate::router::Router;
    use crate::worker::WorkerPool;

    fn inline_lane() -> Lane {
        let router = Router::new().route(1, |req: Request| async move {
            req.conn().try_send(req.msg_id(), req.data().clone())
        });
        WorkerPool::start(
            WorkerMode::Hash,
            0,
            1,
            Arc::new(router.compile(None, None)),
            TaskTracker::new(),
        )
        .assign(ConnId(1))
    }

    fn wire(id: u32, data: &[u8]) -> Vec<u8> {
        let mut b = bytes::BytesMut::new();
        Codec::new(Layout::Tlv, 0)
            .encode_into(MsgId(id), data, &mut b)
            .unwrap();
        b.to_vec()
    }

    #[tokio::test]
    async fn dispatches_each_frame_and_ends_on_peer_close() {
        let (conn, mut rx) = test_conn(16);
        let (mut peer, io) = tokio::io::duplex(64);
        let mut bytes = wire(1, b"one");
        bytes.extend(wire(1, b"two"));
        peer.write_all(&bytes).await.unwrap();
        drop(peer);
        let end = run(io, &conn, &mut inline_lane(), Codec::default(), 16, None).await;
        assert!(matches!(end, ReadEnd::PeerClosed), "{end:?}");
        assert_eq!(&rx.recv().await.unwrap().data[..], b"one");
        assert_eq!(&rx.recv().await.unwrap().data[..], b"two");
    }

    #[tokio::test]
    async fn oversized_frame_fails_the_reader() {
        let (conn, _rx) = test_conn(16);
        let (mut peer, io) = tokio::io::duplex(64);
        peer.write_all(&wire(1, &[0u8; 17])).await.unwrap();
        let end = run(
            io,
            &conn,
            &mut inline_lane(),
            Codec::new(Layout::Tlv, 16),
            16,
            None,
        )
        .await;
        assert!(matches!(
            end,
            ReadEnd::Failed(Error::FrameTooLarge { len: 17, max: 16 })
        ));
    }

    #[tokio::test]
    async fn truncated_frame_at_eof_fails_the_reader() {
        let (conn, _rx) = test_conn(16);
        let (mut peer, io) = tokio::io::duplex(64);
        peer.write_all(&wire(1, b"abcdef")[..10]).await.unwrap();
        drop(peer);
        let end = run(io, &conn, &mut inline_lane(), Codec::default(), 16, None).await;
        assert!(matches!(
            end,
            ReadEnd::Failed(Error::TruncatedFrame { buffered: 10 })
        ));
    }

    #[tokio::test]
    async fn close_stops_a_reader_waiting_for_bytes() {
        let (conn, _rx) = test_conn(16);
        let (_peer, io) = tokio::io::duplex(64);
        let closer = conn.clone();
        let mut lane = inline_lane();
        let reading = run(io, &conn, &mut lane, Codec::default(), 16, None);
        let (end, ()) = tokio::join!(reading, async move { closer.close() });
        assert!(matches!(end, ReadEnd::Cancelled));
    }
}
