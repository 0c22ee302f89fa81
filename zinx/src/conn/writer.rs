//! The writer task: the only code that writes to a connection's socket.
//!
//! It takes every message waiting in the send queue at once (one lock), encodes
//! them into one buffer and writes and flushes that buffer. Under load many
//! messages share one syscall; when idle a single message goes out at once. There
//! are no timers in this path. On close it writes whatever is still queued (bounded
//! by the linger time, so a peer that stopped reading cannot hold the task), then
//! shuts the socket down. An idle writer keeps at most a small buffer.

use std::time::Duration;

use bytes::BytesMut;
use tokio::io::{AsyncWrite, AsyncWriteExt};

use crate::conn::close::Waiter;
use crate::conn::{Connection, Outbox};
use crate::framing::Framing;
use crate::message::Message;

/// Largest write buffer an idle writer keeps (a connection that has never
/// sent holds none).
const KEEP_WHEN_IDLE: usize = 1024;

/// Settings of one writer.
#[derive(Debug, Clone)]
pub(crate) struct WriterConfig<F> {
    pub(crate) framing: F,
    /// Most messages taken from the queue per write.
    pub(crate) batch: usize,
    /// How long the final flush on close may take.
    pub(crate) linger: Duration,
}

/// Runs the writer until the connection is cancelled, the queue's senders are all
/// gone, or a write fails. Always cancels the connection on the way out, so a dead
/// socket stops the reader too.
pub(crate) async fn run<W, F>(mut io: W, outbox: Outbox, conn: Connection, cfg: WriterConfig<F>)
where
    W: AsyncWrite + Unpin,
    F: Framing,
{
    let WriterConfig {
        mut framing,
        batch,
        linger,
    } = cfg;
    let batch_len = batch.max(1);
    let queue = outbox.queue();
    let mut batch = Vec::new();
    let mut buf = BytesMut::new();
    let result: std::io::Result<()> = async {
        let signal = conn.close_signal();
        loop {
            tokio::select! {
                biased;
                // Cancel-safe: waiting for the close consumes nothing.
                () = signal.closed_for(Waiter::Writer) => return Ok(()),
                // Cancel-safe: waiting takes nothing; the drain happens in the body.
                () = queue.readable(), if buf.is_empty() => {
                    if queue.drain_into(&mut batch, batch_len) == 0 && queue.is_closed() {
                        return Ok(());
                    }
                    encode_all(&mut framing, &mut batch, &mut buf);
                }
                // Cancel-safe: write_all_buf advances `buf` as bytes are written, so a
                // write interrupted by close resumes from where it stopped.
                r = io.write_all_buf(&mut buf), if !buf.is_empty() => {
                    r?;
                    io.flush().await?;
                    if queue.is_empty() {
                        // Going idle: keep small buffers for the next reply, give
                        // back what a burst grew.
                        if buf.capacity() > KEEP_WHEN_IDLE {
                            buf = BytesMut::new();
                        }
                        if batch.capacity() > 16 {
                            batch = Vec::new();
                        }
                    }
                }
            }
        }
    }
    .await;

    match result {
        Ok(()) => {
            // Close the queue first: a send from now on fails instead of being lost.
            queue.close();
            queue.drain_into(&mut batch, usize::MAX);
            encode_all(&mut framing, &mut batch, &mut buf);
            let flush = async {
                io.write_all_buf(&mut buf).await?;
                io.flush().await?;
                io.shutdown().await
            };
            match tokio::time::timeout(linger, flush).await {
                Ok(Ok(())) => {}
                Ok(Err(e)) => tracing::debug!(error = %e, "final flush failed"),
                Err(_) => tracing::debug!(
                    unsent = buf.len(),
                    "peer did not take the final writes within the linger time"
                ),
            }
        }
        Err(e) => tracing::debug!(error = %e, "write failed, closing connection"),
    }
    conn.close();
}

fn encode_all<F: Framing>(framing: &mut F, batch: &mut Vec<Message>, buf: &mut BytesMut) {
    // Zinx framing adds 8 bytes a message; reserving for it saves regrowth for
    // most framings, and encoders reserve for themselves anyway.
    let total: usize = batch.iter().map(|m| 8 + m.data.len()).sum();
    buf.reserve(total);
    for msg in batch.drain(..) {
        let id = msg.id;
        // Connection::send checked the length already; what is left is a message
        // the framing cannot express (an ID out of its range): logged and skipped.
        if let Err(e) = framing.encode(msg, buf) {
            tracing::warn!(error = %e, msg_id = %id, "dropping a message the framing cannot encode");
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use std::pin::Pin;
    use std::sync::{Arc, Mutex};
    use std::task::{Context, Poll};

    use tokio::io::AsyncReadExt;

    use super::*;
    use crate::codec::{Codec, Layout};
    use crate::conn::tests::test_conn;

    /// Records every write call; optionally stalls (never accepts bytes).
    #[derive(Clone, Default)]
    struct Recorder {
        writes: Arc<Mutex<Vec<Vec<u8>>>>,
        flushes: Arc<Mutex<usize>>,
        stalled: bool,
    }

    impl AsyncWrite for Recorder {
        fn poll_write(
            self: Pin<&mut Self>,
            _: &mut Context<'_>,
            data: &[u8],
        ) -> Poll<std::io::Result<usize>> {
            if self.stalled {
                return Poll::Pending;
            }
            self.writes.lock().unwrap().push(data.to_vec());
            Poll::Ready(Ok(data.len()))
        }
        fn poll_flush(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<std::io::Result<()>> {
            *self.flushes.lock().unwrap() += 1;
            Poll::Ready(Ok(()))
        }
        fn poll_shutdown(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<std::io::Result<()>> {
            Poll::Ready(Ok(()))
        }
    }

    fn cfg() -> WriterConfig<Codec> {
        WriterConfig {
            framing: Codec::new(Layout::Tlv, 4096),
            batch: 1024,
            linger: Duration::from_secs(5),
        }
    }

    #[tokio::test(flavor = "current_thread")]
    async fn queued_messages_go_out_in_one_write_and_one_flush() {
        let (conn, rx) = test_conn(64);
        for i in 0..10u32 {
            conn.try_send(i, vec![i as u8; 3]).unwrap();
        }
        let rec = Recorder::default();
        let task = tokio::spawn(run(rec.clone(), rx, conn.clone(), cfg()));
        // Wait for the first write: the writer had all ten queued when it started.
        while rec.writes.lock().unwrap().is_empty() {
            tokio::task::yield_now().await;
        }
        {
            let writes = rec.writes.lock().unwrap();
            assert_eq!(writes.len(), 1, "one write for the whole batch");
            assert_eq!(writes[0].len(), 10 * (8 + 3));
            assert_eq!(*rec.flushes.lock().unwrap(), 1);
        }
        conn.close();
        task.await.unwrap();
    }

    #[tokio::test]
    async fn order_is_preserved_on_the_wire() {
        let (conn, rx) = test_conn(4);
        let (client, server) = tokio::io::duplex(64);
        let task = tokio::spawn(run(server, rx, conn.clone(), cfg()));
        let sender = conn.clone();
        let producer = tokio::spawn(async move {
            for i in 0..200u32 {
                sender.send(i, i.to_be_bytes().to_vec()).await.unwrap();
            }
            sender.close();
        });
        let mut wire = Vec::new();
        let mut client = client;
        client.read_to_end(&mut wire).await.unwrap();
        producer.await.unwrap();
        task.await.unwrap();
        assert_eq!(wire.len(), 200 * 12);
        for (i, frame) in wire.chunks(12).enumerate() {
            assert_eq!(&frame[..4], &(i as u32).to_be_bytes());
            assert_eq!(&frame[8..], &(i as u32).to_be_bytes());
        }
    }

    #[tokio::test]
    async fn close_flushes_what_is_queued() {
        let (conn, rx) = test_conn(16);
        for i in 0..5u32 {
            conn.try_send(i, "q").unwrap();
        }
        conn.close();
        let (mut client, server) = tokio::io::duplex(1024);
        run(server, rx, conn.clone(), cfg()).await;
        let mut wire = Vec::new();
        client.read_to_end(&mut wire).await.unwrap();
        assert_eq!(wire.len(), 5 * 9);
    }

    #[tokio::test(start_paused = true)]
    async fn stalled_peer_cannot_hold_the_writer_past_linger() {
        let (conn, rx) = test_conn(16);
        conn.try_send(1, "stuck").unwrap();
        let rec = Recorder {
            stalled: true,
            ..Recorder::default()
        };
        let task = tokio::spawn(run(rec, rx, conn.clone(), cfg()));
        tokio::task::yield_now().await;
        conn.close();
        // Paused time: the linger timeout fires as soon as everything is idle.
        task.await.unwrap();
        assert!(conn.try_send(1, "late").unwrap_err().is_closed());
    }

    #[tokio::test]
    async fn write_error_closes_the_connection() {
        let (conn, rx) = test_conn(16);
        let (client, server) = tokio::io::duplex(16);
        drop(client);
        conn.try_send(1, "to nobody").unwrap();
        run(server, rx, conn.clone(), cfg()).await;
        assert!(conn.is_closed());
    }
}
