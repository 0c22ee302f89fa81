//! The writer: the only code that writes to a connection's socket.
//!
//! It takes every frame waiting in the send queue at once (one lock; the senders
//! encoded them, see [`outgoing`](super::outgoing)) and writes them with one
//! write (vectored when large payloads are queued by reference), then flushes.
//! Under load many messages share one syscall; when idle a single message goes
//! out at once. There are no timers in this path. On close it writes whatever is
//! still queued (bounded by the linger time, so a peer that stopped reading
//! cannot hold the connection), then shuts the socket down. An idle writer keeps
//! at most a small buffer.
//!
//! It is a state machine polled by the connection's own task (see
//! [`Connection::poll_writer`](super::Connection::poll_writer)) after the reader,
//! not a task of its own: replies a handler queued are written in the same turn
//! of the task, without waking and scheduling a second task per message.

use std::future::Future;
use std::io;
use std::pin::Pin;
use std::task::{Context, Poll, ready};
use std::time::Duration;

use tokio::io::AsyncWrite;
use tokio::time::Sleep;

use crate::conn::Connection;
use crate::conn::close::Waiter;
use crate::conn::outgoing::Frames;
use crate::util::lock;

/// A connection's writer, as the connection holds it (the socket's type erased).
pub(crate) trait Drive: Send {
    /// Writes what is queued. Ready once the writer has finished: the connection
    /// closed and the final flush done (or given up), or a write failed. It then
    /// has closed the connection.
    fn poll_write(&mut self, conn: &Connection, cx: &mut Context<'_>) -> Poll<()>;
}

/// Makes a connection's writer, which owns the socket's write half.
pub(crate) type StartWriter = Box<dyn FnOnce() -> Box<dyn Drive> + Send>;

/// A connection's writer, which is made when the first message is queued (or at
/// the close): a connection that never sends holds none.
pub(crate) enum WriterState {
    /// None (detached connections), or finished.
    Absent,
    NotStarted(StartWriter),
    Running(Box<dyn Drive>),
}

impl Connection {
    /// Hands the connection the way to make its writer, which the first message
    /// queued (or the close) starts.
    pub(crate) fn set_writer(&self, start: StartWriter) {
        *lock(&self.shared.writer) = WriterState::NotStarted(start);
    }

    /// Runs the connection's writer: makes it once something is queued or the
    /// connection closed, then writes what is queued. Ready when there is no
    /// writer, or it has finished (the connection is then closed and its socket
    /// shut down). For the connection's own task only, which polls it after the
    /// reader (see `engine::WithWriter`); the writer registers the
    /// task's waker with the send queue and the socket.
    pub(crate) fn poll_writer(&self, cx: &mut Context<'_>) -> Poll<()> {
        let mut writer = lock(&self.shared.writer);
        if let WriterState::NotStarted(_) = &*writer {
            // Closing the connection closes the queue, which makes it readable:
            // the writer then only shuts the socket down.
            if self.shared.queue.poll_readable(cx).is_pending() {
                return Poll::Pending;
            }
            if let WriterState::NotStarted(start) =
                std::mem::replace(&mut *writer, WriterState::Absent)
            {
                *writer = WriterState::Running(start());
            }
        }
        let WriterState::Running(running) = &mut *writer else {
            return Poll::Ready(());
        };
        if running.poll_write(self, cx).is_pending() {
            return Poll::Pending;
        }
        *writer = WriterState::Absent;
        Poll::Ready(())
    }
}

pub(crate) struct Writer<W> {
    io: W,
    pending: Frames,
    /// `pending` was written out and `io` is being flushed.
    flushing: bool,
    linger: Duration,
    /// Set once the connection closed: the final flush.
    closing: Option<Box<Closing>>,
}

/// The final flush: `pending`, then what was still queued at close, then flush
/// and shut down, bounded by the linger time.
struct Closing {
    rest: Frames,
    deadline: Pin<Box<Sleep>>,
    stage: Stage,
}

#[derive(Clone, Copy)]
enum Stage {
    Write,
    Flush,
    Shutdown,
}

impl<W: AsyncWrite + Unpin> Writer<W> {
    pub(crate) fn new(io: W, linger: Duration) -> Self {
        Writer {
            io,
            pending: Frames::default(),
            flushing: false,
            linger,
            closing: None,
        }
    }

    /// Writes until the queue is empty (Pending) or the connection closes
    /// (Ready(Ok)); Ready(Err) if a write fails.
    fn poll_running(&mut self, conn: &Connection, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let queue = conn.send_queue();
        loop {
            if conn.is_closed() {
                return Poll::Ready(Ok(()));
            }
            if self.flushing {
                ready!(Pin::new(&mut self.io).poll_flush(cx))?;
                self.flushing = false;
                // Going idle: give the buffers back or keep them for the next
                // batch (see `Frames::shrink`), before the next take hands them
                // to the queue.
                self.pending.shrink();
            }
            if self.pending.is_empty() {
                // Closing the connection closes the queue, which makes it readable.
                ready!(queue.poll_readable(cx));
                queue.take(|out| out.take_into(&mut self.pending));
                if self.pending.is_empty() && queue.is_closed() {
                    return Poll::Ready(Ok(()));
                }
                continue;
            }
            let Poll::Ready(n) = write_some(&self.pending, &mut self.io, cx) else {
                // The socket is full: the close must end the wait too.
                ready!(conn.close_signal().poll_closed_for(Waiter::Writer, cx));
                return Poll::Ready(Ok(()));
            };
            self.pending.advance(n?);
            self.flushing = self.pending.is_empty();
        }
    }

    /// The final flush; Ready when done, failed or out of time.
    fn poll_closing(&mut self, cx: &mut Context<'_>) -> Poll<()> {
        let Some(closing) = self.closing.as_deref_mut() else {
            return Poll::Ready(());
        };
        let flushed = loop {
            let step = match closing.stage {
                Stage::Write => {
                    let frames = if self.pending.is_empty() {
                        &mut closing.rest
                    } else {
                        &mut self.pending
                    };
                    if frames.is_empty() {
                        closing.stage = Stage::Flush;
                        continue;
                    }
                    write_some(frames, &mut self.io, cx).map_ok(|n| frames.advance(n))
                }
                Stage::Flush => Pin::new(&mut self.io)
                    .poll_flush(cx)
                    .map_ok(|()| closing.stage = Stage::Shutdown),
                Stage::Shutdown => break Pin::new(&mut self.io).poll_shutdown(cx),
            };
            match step {
                Poll::Ready(Ok(())) => {}
                Poll::Ready(Err(e)) => break Poll::Ready(Err(e)),
                Poll::Pending => break Poll::Pending,
            }
        };
        match flushed {
            Poll::Ready(Ok(())) => Poll::Ready(()),
            Poll::Ready(Err(e)) => {
                tracing::debug!(error = %e, "final flush failed");
                Poll::Ready(())
            }
            Poll::Pending if closing.deadline.as_mut().poll(cx).is_ready() => {
                tracing::debug!(
                    unsent = self.pending.len() + closing.rest.len(),
                    "peer did not take the final writes within the linger time"
                );
                Poll::Ready(())
            }
            Poll::Pending => Poll::Pending,
        }
    }
}

impl<W: AsyncWrite + Unpin + Send> Drive for Writer<W> {
    fn poll_write(&mut self, conn: &Connection, cx: &mut Context<'_>) -> Poll<()> {
        if self.closing.is_none() {
            match self.poll_running(conn, cx) {
                Poll::Pending => return Poll::Pending,
                Poll::Ready(Ok(())) => {
                    // Close the queue first: a send from now on fails instead of
                    // being lost.
                    let queue = conn.send_queue();
                    queue.close();
                    let mut rest = Frames::default();
                    queue.take(|out| out.take_into(&mut rest));
                    self.closing = Some(Box::new(Closing {
                        rest,
                        deadline: Box::pin(tokio::time::sleep(self.linger)),
                        stage: Stage::Write,
                    }));
                }
                Poll::Ready(Err(e)) => {
                    tracing::debug!(error = %e, "write failed, closing connection");
                    conn.close();
                    return Poll::Ready(());
                }
            }
        }
        ready!(self.poll_closing(cx));
        conn.close();
        Poll::Ready(())
    }
}

/// One (vectored) write of the first frames; a write of nothing is an error.
fn write_some<W: AsyncWrite + Unpin>(
    frames: &Frames,
    io: &mut W,
    cx: &mut Context<'_>,
) -> Poll<io::Result<usize>> {
    frames.poll_write_some(io, cx).map(|written| match written {
        Ok(0) => Err(io::ErrorKind::WriteZero.into()),
        other => other,
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
    use crate::conn::outgoing::Receiver;
    use crate::conn::tests::test_conn;

    /// Runs a writer on `rx`'s connection until it finishes, as the connection's
    /// task would.
    async fn run<W: AsyncWrite + Unpin + Send>(io: W, rx: Receiver, linger: Duration) {
        let mut writer = Writer::new(io, linger);
        std::future::poll_fn(|cx| writer.poll_write(rx.conn(), cx)).await;
    }

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
