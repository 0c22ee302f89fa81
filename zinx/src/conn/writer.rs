//! The writer task: the only code that writes to a connection's socket.
//!
//! It takes every message waiting in the send queue at once (one lock), encodes
//! them into one buffer and writes and flushes that buffer. Under load many
//! messages share one syscall; when idle a single message goes out at once. There
//! are no timers in this path. On close it writes whatever is still queued (bounded
//! by the linger time, so a peer that stopped reading cannot hold the task), then
//! shuts the socket down. An idle writer keeps at most a small buffer.

use std::time::Duration;

use std::collections::VecDeque;
use std::io::IoSlice;

use bytes::{Buf, Bytes, BytesMut};
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
    #[cfg(feature = "metrics")]
    pub(crate) metrics: Option<std::sync::Arc<crate::metrics::Metrics>>,
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
        batch: batch_len,
        linger,
        #[cfg(feature = "metrics")]
        metrics,
    } = cfg;
    let batch_len = batch_len.max(1);
    let queue = outbox.queue();
    let mut batch = Vec::new();
    let mut pending = Pending::default();
    let result: std::io::Result<()> = async {
        let signal = conn.close_signal();
        loop {
            if pending.is_empty() {
                tokio::select! {
                    biased;
                    // Cancel-safe: waiting for the close consumes nothing.
                    () = signal.closed_for(Waiter::Writer) => return Ok(()),
                    // Cancel-safe: waiting takes nothing; the drain happens below.
                    () = queue.readable() => {}
                }
                if queue.drain_into(&mut batch, batch_len) == 0 && queue.is_closed() {
                    return Ok(());
                }
                #[cfg(feature = "metrics")]
                count_written(metrics.as_deref(), &batch);
                pending.encode_all(&mut framing, &mut batch);
                continue;
            }
            let written = tokio::select! {
                biased;
                () = signal.closed_for(Waiter::Writer) => return Ok(()),
                // Cancel-safe: one vectored write; if it is dropped unfinished,
                // nothing was written and `pending` is unchanged.
                n = pending.write_some(&mut io) => n?,
            };
            pending.advance(written);
            if pending.is_empty() {
                io.flush().await?;
                if queue.is_empty() {
                    // Going idle: keep small buffers for the next reply, give back
                    // what a burst grew.
                    pending.shrink();
                    if batch.capacity() > 16 {
                        batch = Vec::new();
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
            #[cfg(feature = "metrics")]
            count_written(metrics.as_deref(), &batch);
            pending.encode_all(&mut framing, &mut batch);
            let flush = async {
                while !pending.is_empty() {
                    let n = pending.write_some(&mut io).await?;
                    pending.advance(n);
                }
                io.flush().await?;
                io.shutdown().await
            };
            match tokio::time::timeout(linger, flush).await {
                Ok(Ok(())) => {}
                Ok(Err(e)) => tracing::debug!(error = %e, "final flush failed"),
                Err(_) => tracing::debug!(
                    unsent = pending.len(),
                    "peer did not take the final writes within the linger time"
                ),
            }
        }
        Err(e) => tracing::debug!(error = %e, "write failed, closing connection"),
    }
    conn.close();
}

/// Counts what is handed to the socket, by message ID.
#[cfg(feature = "metrics")]
fn count_written(metrics: Option<&crate::metrics::Metrics>, batch: &[Message]) {
    if let Some(metrics) = metrics {
        for msg in batch {
            metrics.written(msg.id, msg.data.len());
        }
    }
}

/// Payloads at least this long are written from their own buffer (vectored
/// write) instead of being copied next to their header.
const ZERO_COPY_MIN: usize = 512;

/// Most buffers handed to one vectored write.
const MAX_SLICES: usize = 64;

/// Encoded bytes not yet written: small frames are copied into shared chunks;
/// large payloads stay in the `Bytes` they arrived in, behind their header.
#[derive(Default)]
struct Pending {
    segments: VecDeque<Bytes>,
    /// Frames being gathered into the next chunk.
    small: BytesMut,
}

impl Pending {
    fn is_empty(&self) -> bool {
        self.segments.is_empty() && self.small.is_empty()
    }

    fn len(&self) -> usize {
        self.segments.iter().map(Bytes::len).sum::<usize>() + self.small.len()
    }

    fn encode_all<F: Framing>(&mut self, framing: &mut F, batch: &mut Vec<Message>) {
        // Zinx framing adds 8 bytes a message; reserving for the small frames saves
        // regrowth, and encoders reserve for themselves anyway.
        let small: usize = batch
            .iter()
            .map(|m| {
                8 + if m.data.len() < ZERO_COPY_MIN {
                    m.data.len()
                } else {
                    0
                }
            })
            .sum();
        self.small.reserve(small);
        for msg in batch.drain(..) {
            let id = msg.id;
            // Connection::send checked the length already; what is left is a message
            // the framing cannot express (an ID out of its range): logged, skipped.
            if let Err(e) = self.push(framing, msg) {
                tracing::warn!(error = %e, msg_id = %id, "dropping a message the framing cannot encode");
            }
        }
        self.seal();
    }

    fn push<F: Framing>(&mut self, framing: &mut F, msg: Message) -> Result<(), crate::Error> {
        if msg.data.len() >= ZERO_COPY_MIN
            && let Some(header) = framing.encode_header(&msg, &mut self.small)
        {
            header?;
            self.seal();
            self.segments.push_back(msg.data);
            return Ok(());
        }
        framing.encode(msg, &mut self.small)
    }

    /// Moves the gathered small frames into the segment list.
    fn seal(&mut self) {
        if !self.small.is_empty() {
            let chunk = self.small.split().freeze();
            self.segments.push_back(chunk);
        }
    }

    /// One vectored write of the first segments.
    async fn write_some<W: AsyncWrite + Unpin>(&self, io: &mut W) -> std::io::Result<usize> {
        std::future::poll_fn(|cx| {
            let mut slices = [IoSlice::new(&[]); MAX_SLICES];
            let mut count = 0;
            for (slot, segment) in slices.iter_mut().zip(&self.segments) {
                *slot = IoSlice::new(segment);
                count += 1;
            }
            std::pin::Pin::new(&mut *io).poll_write_vectored(cx, &slices[..count])
        })
        .await
        .and_then(|n| {
            if n == 0 {
                Err(std::io::ErrorKind::WriteZero.into())
            } else {
                Ok(n)
            }
        })
    }

    /// Drops the first `n` written bytes.
    fn advance(&mut self, mut n: usize) {
        while n > 0 {
            let Some(front) = self.segments.front_mut() else {
                return;
            };
            if front.len() <= n {
                n -= front.len();
                self.segments.pop_front();
            } else {
                front.advance(n);
                return;
            }
        }
    }

    fn shrink(&mut self) {
        if self.small.capacity() > KEEP_WHEN_IDLE {
            self.small = BytesMut::new();
        }
        if self.segments.capacity() > 16 {
            self.segments = VecDeque::new();
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
            #[cfg(feature = "metrics")]
            metrics: None,
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
    async fn large_payloads_written_in_place_keep_order_through_partial_writes() {
        let (conn, rx) = Connection::detached(8);
        let cfg = WriterConfig {
            framing: Codec::new(Layout::Tlv, 0),
            batch: 1024,
            linger: Duration::from_secs(5),
            #[cfg(feature = "metrics")]
            metrics: None,
        };
        // A 64-byte pipe: every write is partial.
        let (client, server) = tokio::io::duplex(64);
        let task = tokio::spawn(run(server, rx, conn.clone(), cfg));
        let sizes: Vec<usize> = (0..60)
            .map(|i| if i % 3 == 0 { 600 + i } else { i })
            .collect();
        let sender = conn.clone();
        let expected: Vec<u8> = sizes
            .iter()
            .enumerate()
            .flat_map(|(i, &len)| {
                let mut frame = Vec::new();
                frame.extend_from_slice(&(i as u32).to_be_bytes());
                frame.extend_from_slice(&(len as u32).to_be_bytes());
                frame.extend((0..len).map(|b| (b + i) as u8));
                frame
            })
            .collect();
        let producer = tokio::spawn(async move {
            for (i, len) in sizes.into_iter().enumerate() {
                let data: Vec<u8> = (0..len).map(|b| (b + i) as u8).collect();
                sender.send(i as u32, data).await.unwrap();
            }
            sender.close();
        });
        let mut wire = Vec::new();
        let mut client = client;
        tokio::time::timeout(Duration::from_secs(20), client.read_to_end(&mut wire))
            .await
            .expect("writer stalled")
            .unwrap();
        producer.await.unwrap();
        task.await.unwrap();
        assert_eq!(wire.len(), expected.len());
        assert!(wire == expected, "bytes differ");
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
