//! The writer task: the only code that writes to a connection's socket.
//!
//! It takes every frame waiting in the send queue at once (one lock; the senders
//! encoded them, see [`outgoing`](super::outgoing)) and writes them with one
//! write (vectored when large payloads are queued by reference), then flushes. Under load many
//! messages share one syscall; when idle a single message goes out at once. There
//! are no timers in this path. On close it writes whatever is still queued (bounded
//! by the linger time, so a peer that stopped reading cannot hold the task), then
//! shuts the socket down. An idle writer keeps at most a small buffer.

use std::time::Duration;

use tokio::io::{AsyncWrite, AsyncWriteExt};

use crate::conn::close::Waiter;
use crate::conn::outgoing::{Frames, Outgoing, Receiver};

/// Runs the writer until the connection is cancelled, the queue's senders are all
/// gone, or a write fails. Always cancels the connection on the way out, so a dead
/// socket stops the reader too. `linger` bounds the final flush on close.
pub(crate) async fn run<W>(mut io: W, rx: Receiver, linger: Duration)
where
    W: AsyncWrite + Unpin,
{
    let conn = rx.conn();
    let queue = rx.queue();
    let mut pending = Frames::default();
    // Whether the queue's buffers grew past what an idle connection keeps.
    let mut grown = false;
    let result: std::io::Result<()> = async {
        let signal = conn.close_signal();
        loop {
            if pending.is_empty() {
                // Closing the connection closes the queue, which makes it readable.
                queue.readable().await;
                if signal.is_closed() {
                    return Ok(());
                }
                grown |= queue.take(|out| out.take_into(&mut pending));
                if pending.is_empty() && queue.is_closed() {
                    return Ok(());
                }
                continue;
            }
            let written = tokio::select! {
                biased;
                // Cancel-safe: one vectored write; if it is dropped unfinished,
                // nothing was written and `pending` is unchanged. Polled first, so
                // the close is only waited for when the socket is full.
                n = write_some(&pending, &mut io) => n?,
                // Cancel-safe: waiting for the close consumes nothing.
                () = signal.closed_for(Waiter::Writer) => return Ok(()),
            };
            pending.advance(written);
            if pending.is_empty() {
                io.flush().await?;
                // Going idle: keep small buffers for the next reply, give back
                // what a burst grew.
                pending.shrink();
                if grown {
                    grown = queue.take(Outgoing::shrink_if_idle);
                }
            }
        }
    }
    .await;

    match result {
        Ok(()) => {
            // Close the queue first: a send from now on fails instead of being lost.
            queue.close();
            let mut rest = Frames::default();
            queue.take(|out| out.take_into(&mut rest));
            let flush = async {
                for frames in [&mut pending, &mut rest] {
                    while !frames.is_empty() {
                        let n = write_some(frames, &mut io).await?;
                        frames.advance(n);
                    }
                }
                io.flush().await?;
                io.shutdown().await
            };
            match tokio::time::timeout(linger, flush).await {
                Ok(Ok(())) => {}
                Ok(Err(e)) => tracing::debug!(error = %e, "final flush failed"),
                Err(_) => tracing::debug!(
                    unsent = pending.len() + rest.len(),
                    "peer did not take the final writes within the linger time"
                ),
            }
        }
        Err(e) => tracing::debug!(error = %e, "write failed, closing connection"),
    }
    conn.close();
}

/// One vectored write of the first frames.
async fn write_some<W: AsyncWrite + Unpin>(frames: &Frames, io: &mut W) -> std::io::Result<usize> {
    std::future::poll_fn(|cx| frames.poll_write_some(io, cx))
        .await
        .and_then(|n| {
            if n == 0 {
                Err(std::io::ErrorKind::WriteZero.into())
            } else {
                Ok(n)
            }
        })
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use std::pin::Pin;
    use std::sync::{Arc, Mutex};
    use std::task::{Context, Poll};

    use tokio::io::AsyncReadExt;

    use super::*;
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

    const LINGER: Duration = Duration::from_secs(5);

    #[tokio::test(flavor = "current_thread")]
    async fn queued_messages_go_out_in_one_write_and_one_flush() {
        let (conn, rx) = test_conn(64);
        for i in 0..10u32 {
            conn.try_send(i, vec![i as u8; 3]).unwrap();
        }
        let rec = Recorder::default();
        let task = tokio::spawn(run(rec.clone(), rx.into(), LINGER));
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

    #[tokio::test(flavor = "current_thread")]
    async fn an_idle_writer_gives_back_what_a_burst_grew() {
        let (conn, rx) = crate::Connection::detached(256);
        for i in 0..200u32 {
            conn.try_send(i, vec![0u8; 40]).unwrap();
        }
        let queued = || conn.shared.queue.take(|out| out.frames().capacity());
        assert!(queued() >= 200 * 48, "{}", queued());
        let rec = Recorder::default();
        let task = tokio::spawn(run(rec.clone(), rx.into(), LINGER));
        // The writer flushes and trims in one poll, before it yields again.
        while *rec.flushes.lock().unwrap() == 0 {
            tokio::task::yield_now().await;
        }
        assert!(queued() <= 4096, "{}", queued());
        // The burst's buffer went to the writer; the next message swaps the
        // writer's buffer back into the queue, which must be the trimmed one.
        conn.try_send(0u32, vec![0u8; 12]).unwrap();
        while *rec.flushes.lock().unwrap() < 2 {
            tokio::task::yield_now().await;
        }
        assert!(queued() <= 4096, "{}", queued());
        assert_eq!(rec.writes.lock().unwrap().len(), 2);
        conn.close();
        task.await.unwrap();
    }

    #[tokio::test]
    async fn order_is_preserved_on_the_wire() {
        let (conn, rx) = test_conn(4);
        let (client, server) = tokio::io::duplex(64);
        let task = tokio::spawn(run(server, rx.into(), LINGER));
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
        let (conn, rx) = crate::Connection::detached(8);
        // A 64-byte pipe: every write is partial.
        let (client, server) = tokio::io::duplex(64);
        let task = tokio::spawn(run(server, rx.into(), LINGER));
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
        run(server, rx.into(), LINGER).await;
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
        let task = tokio::spawn(run(rec, rx.into(), LINGER));
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
        run(server, rx.into(), LINGER).await;
        assert!(conn.is_closed());
    }
}
