//! A connection's send queue: messages are encoded by the handler that sends
//! them, as Go Zinx's `SendMsg` packs before it queues, into bytes the writer
//! takes all at once and writes.
//!
//! Encoding at send time means a message is copied once, next to its header, into
//! the queue's buffer; the writer takes the whole buffer with one lock and does
//! no per-message work. Payloads of at least [`ZERO_COPY_MIN`] bytes are not
//! copied: their `Bytes` is queued behind the header, and written with it by one
//! vectored write. An encoding error (a message the framing cannot express) is
//! returned to the sender instead of being discovered by the writer.

use std::any::Any;
use std::collections::VecDeque;
use std::io::IoSlice;
use std::pin::Pin;

use bytes::{Buf, Bytes, BytesMut};
use tokio::io::AsyncWrite;

use crate::codec::Codec;
use crate::conn::Connection;
use crate::error::Error;
use crate::framing::Framing;
use crate::message::Message;
use crate::message::MsgId;
use crate::queue::{Put, Queue, Store};

pub(crate) use crate::message::ZERO_COPY_MIN;

/// Most buffers handed to one vectored write.
const MAX_SLICES: usize = 32;

/// Largest frame buffer kept once written out. The queue and the writer each
/// hold one, swapped on every take; a larger one is dropped when the writer
/// drains it, so this must cover a pipelined client's usual batch (16 requests
/// of 64 B take 1,152 B), or every batch would allocate and grow its buffer
/// again.
const KEEP_WHEN_IDLE: usize = 4096;

/// What an empty frame buffer is given for its first frame. A buffer no larger
/// is not kept once written out: it goes back to the allocator, whose
/// per-thread cache hands it (still in the CPU's cache) to the next connection
/// that replies. With thousands of connections a buffer kept per connection is
/// cold memory every reply writes into (docs/OPTIMISATIONS.md); a connection
/// whose batches outgrew it keeps its larger buffer instead of growing a new
/// one for every batch.
const FIRST_BUFFER: usize = 1024;

/// Segment slots an idle connection keeps.
const KEEP_SEGMENTS: usize = 16;

/// A framing, as the send queue uses it: encodes one message into the queued
/// frames. Object-safe, so [`Connection`] need not be generic
/// over the framing.
pub(crate) trait Encode: Send {
    fn encode_into(&mut self, msg: Message, frames: &mut Frames) -> Result<(), Error>;
}

impl<F: Framing> Encode for F {
    fn encode_into(&mut self, msg: Message, frames: &mut Frames) -> Result<(), Error> {
        frames.push(self, msg)
    }
}

/// Encoded frames not yet written: small frames are copied into a shared buffer;
/// large payloads stay in the `Bytes` they were sent in, behind their header.
///
/// In order: `segments` first, then `small` (the frames encoded after the last
/// large payload). The writer takes everything by swapping its emptied `Frames`
/// in, so in the usual case (small frames only) one buffer goes to the writer and
/// comes back empty, and no reference count is taken or dropped per write.
#[derive(Default)]
pub(crate) struct Frames {
    segments: VecDeque<Bytes>,
    /// Frames after the last segment.
    small: BytesMut,
    /// How much of `small` the writer wrote (it is cleared once all is, which
    /// keeps its whole capacity for the next frames).
    written: usize,
}

impl Frames {
    #[inline]
    fn push<F: Framing>(&mut self, framing: &mut F, msg: Message) -> Result<(), Error> {
        let start = self.small.len();
        let encoded = if msg.data.len() >= ZERO_COPY_MIN
            && let Some(header) = framing.encode_header(&msg, &mut self.small)
        {
            header.map(|()| {
                self.seal();
                self.segments.push_back(msg.data);
            })
        } else {
            // Copied: the first buffer is for frames like this one (a header
            // alone, above, is split off at once).
            self.room();
            framing.encode(msg, &mut self.small)
        };
        if encoded.is_err() {
            // Nothing of a frame that failed half-way reaches the wire.
            self.small.truncate(start);
        }
        encoded
    }

    /// Encodes a Zinx frame of borrowed data, copied next to its header.
    #[inline]
    fn copy(&mut self, codec: &Codec, msg: Copied<'_>) -> Result<(), Error> {
        self.room();
        codec.encode_into(msg.id, msg.data, &mut self.small)
    }

    /// Gives an empty buffer its first allocation (see [`FIRST_BUFFER`]).
    #[inline]
    fn room(&mut self) {
        if self.small.capacity() == 0 {
            self.small = BytesMut::with_capacity(FIRST_BUFFER);
        }
    }

    /// Moves the gathered small frames into the segment list.
    fn seal(&mut self) {
        if !self.small.is_empty() {
            let chunk = self.small.split().freeze();
            self.segments.push_back(chunk);
        }
    }

    /// Moves everything encoded into `out`, which must be empty: its storage is
    /// swapped in, so a connection in steady state allocates nothing here. The
    /// writer shrinks what it has written before it takes again, so what comes
    /// back is never more than an idle connection keeps.
    fn move_into(&mut self, out: &mut Frames) {
        debug_assert!(out.is_empty());
        std::mem::swap(self, out);
    }

    /// Bytes of storage held.
    #[cfg(test)]
    pub(crate) fn capacity(&self) -> usize {
        self.small.capacity() + self.segments.capacity() * std::mem::size_of::<Bytes>()
    }

    pub(crate) fn is_empty(&self) -> bool {
        self.segments.is_empty() && self.small.is_empty()
    }

    /// Bytes not yet written.
    pub(crate) fn len(&self) -> usize {
        self.segments.iter().map(Bytes::len).sum::<usize>() + self.small.len() - self.written
    }

    /// One write of the first frames: a plain write when only small frames are
    /// queued (the usual case), else a vectored one.
    pub(crate) fn poll_write_some<W: AsyncWrite + Unpin>(
        &self,
        io: &mut W,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<usize>> {
        let io = Pin::new(&mut *io);
        let small = &self.small[self.written..];
        if self.segments.is_empty() {
            return io.poll_write(cx, small);
        }
        let mut slices = [IoSlice::new(&[]); MAX_SLICES];
        let mut count = 0;
        let tail = (!small.is_empty()).then_some(small);
        for (slot, chunk) in slices
            .iter_mut()
            .zip(self.segments.iter().map(|s| &s[..]).chain(tail))
        {
            *slot = IoSlice::new(chunk);
            count += 1;
        }
        io.poll_write_vectored(cx, &slices[..count])
    }

    /// Drops the first `n` written bytes.
    pub(crate) fn advance(&mut self, mut n: usize) {
        while n > 0 {
            let Some(front) = self.segments.front_mut() else {
                // Past the segments: the rest is in `small`.
                self.written = (self.written + n).min(self.small.len());
                if self.written == self.small.len() {
                    self.small.clear();
                    self.written = 0;
                }
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

    /// Going idle: give back a buffer of at most [`FIRST_BUFFER`] bytes (the
    /// allocator hands it out again warm) or one a burst grew past
    /// [`KEEP_WHEN_IDLE`]; keep one in between for the next batch.
    pub(crate) fn shrink(&mut self) {
        let capacity = self.small.capacity();
        if capacity <= FIRST_BUFFER || capacity > KEEP_WHEN_IDLE {
            self.small = BytesMut::new();
        }
        if self.segments.capacity() > KEEP_SEGMENTS {
            self.segments = VecDeque::new();
        }
    }

    /// Every byte, in order (for [`Outbox`](super::Outbox), which decodes them).
    fn drain_bytes(&mut self, out: &mut BytesMut) {
        self.seal();
        for segment in self.segments.drain(..) {
            out.extend_from_slice(&segment);
        }
    }
}

/// A connection's framing, as its send queue holds it: Zinx's codec inline (the
/// usual case: no allocation, no virtual call), any other framing boxed.
pub(crate) enum Encoder {
    Zinx(Codec),
    Other(Box<dyn Encode>),
}

impl Encoder {
    pub(crate) fn new<F: Framing>(framing: &F) -> Self {
        match (framing as &dyn Any).downcast_ref::<Codec>() {
            Some(codec) => Encoder::Zinx(*codec),
            None => Encoder::Other(Box::new(framing.clone())),
        }
    }

    /// Encodes one message into a frame of its own, to be queued on many
    /// connections (a broadcast encodes once for all its receivers).
    pub(crate) fn encode(&mut self, id: MsgId, data: &[u8]) -> Result<Encoded, Error> {
        let mut out = BytesMut::new();
        match self {
            Encoder::Zinx(codec) => Codec::encode_into(codec, id, data, &mut out)?,
            Encoder::Other(encoder) => {
                let mut frames = Frames::default();
                let msg = Message {
                    id,
                    data: Bytes::copy_from_slice(data),
                };
                encoder.encode_into(msg, &mut frames)?;
                frames.drain_bytes(&mut out);
            }
        }
        Ok(Encoded {
            id,
            data_len: data.len(),
            frame: out.freeze(),
        })
    }
}

/// A message already encoded by the connections' framing (see
/// [`Encoder::encode`]): queued as it is, copied next to the other frames when
/// short, shared (a reference count) when long.
#[derive(Debug, Clone)]
pub(crate) struct Encoded {
    pub(crate) id: MsgId,
    pub(crate) data_len: usize,
    pub(crate) frame: Bytes,
}

/// What a connection's send queue holds: its framing, the frames it encoded and
/// how many messages and data bytes they are (what the queue's bounds count;
/// headers are not counted, so the count needs nothing from the framing).
pub(crate) struct Outgoing {
    encoder: Encoder,
    frames: Frames,
    messages: usize,
    bytes: usize,
}

impl Outgoing {
    pub(crate) fn new(encoder: Encoder) -> Self {
        Outgoing {
            encoder,
            frames: Frames::default(),
            messages: 0,
            bytes: 0,
        }
    }

    /// Moves every encoded frame into `out` (see [`Frames::move_into`]).
    pub(crate) fn take_into(&mut self, out: &mut Frames) {
        self.messages = 0;
        self.bytes = 0;
        self.frames.move_into(out);
    }

    /// Every encoded byte, in order (for [`Outbox`](super::Outbox)).
    pub(crate) fn take_bytes(&mut self, out: &mut BytesMut) {
        self.messages = 0;
        self.bytes = 0;
        self.frames.drain_bytes(out);
    }

    /// One message more, of `len` data bytes.
    #[inline]
    fn added(&mut self, len: usize) {
        self.messages += 1;
        self.bytes += len;
    }

    #[cfg(test)]
    pub(crate) fn frames(&self) -> &Frames {
        &self.frames
    }
}

/// A message whose data is copied into the send buffer (see
/// [`Payload`](crate::Payload)): nothing owns the data until it is there.
pub(crate) struct Copied<'a> {
    pub(crate) id: MsgId,
    pub(crate) data: &'a [u8],
}

impl Store for Outgoing {
    type Rejected = Error;

    fn count(&self) -> usize {
        self.messages
    }

    fn bytes(&self) -> usize {
        self.bytes
    }
}

impl Put<Copied<'_>> for Outgoing {
    #[inline]
    fn put(&mut self, msg: Copied<'_>) -> Result<(), Error> {
        let Encoder::Zinx(codec) = &self.encoder else {
            // Other framings encode messages: the data becomes one.
            return self.put(Message {
                id: msg.id,
                data: Bytes::copy_from_slice(msg.data),
            });
        };
        let len = msg.data.len();
        self.frames.copy(codec, msg)?;
        self.added(len);
        Ok(())
    }
}

impl Put<&Encoded> for Outgoing {
    fn put(&mut self, msg: &Encoded) -> Result<(), Error> {
        if msg.frame.len() < ZERO_COPY_MIN {
            self.frames.room();
            self.frames.small.extend_from_slice(&msg.frame);
        } else {
            self.frames.seal();
            self.frames.segments.push_back(msg.frame.clone());
        }
        self.added(msg.data_len);
        Ok(())
    }
}

impl Put<Message> for Outgoing {
    #[inline]
    fn put(&mut self, msg: Message) -> Result<(), Error> {
        let len = msg.data.len();
        match &mut self.encoder {
            Encoder::Zinx(codec) => self.frames.push(codec, msg),
            Encoder::Other(encoder) => encoder.encode_into(msg, &mut self.frames),
        }?;
        self.added(len);
        Ok(())
    }
}

/// A connection's send queue.
pub(crate) type SendQueue = Queue<Outgoing>;

/// The consuming end of a connection's send queue (an
/// [`Outbox`](super::Outbox)'s). Dropping it closes the queue, so later sends
/// fail with [`Error::Closed`] instead of queuing for nobody.
pub(crate) struct Receiver(Connection);

impl Receiver {
    pub(crate) fn new(conn: Connection) -> Self {
        Receiver(conn)
    }

    pub(crate) fn queue(&self) -> &SendQueue {
        self.0.send_queue()
    }

    #[cfg(test)]
    pub(crate) fn conn(&self) -> &Connection {
        &self.0
    }
}

impl Drop for Receiver {
    fn drop(&mut self) {
        self.queue().close();
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;
    use crate::codec::{Codec, Layout};
    use crate::queue::PushError;

    #[test]
    fn small_frames_share_a_buffer_and_large_payloads_are_not_copied() {
        let q = SendQueue::with_store(Outgoing::new(Encoder::Zinx(Codec::new(Layout::Tlv, 0))), 8);
        let big = Bytes::from(vec![7u8; ZERO_COPY_MIN]);
        q.try_push(Message::new(1, "ab")).unwrap();
        q.try_push(Message::new(2, big.clone())).unwrap();
        q.try_push(Message::new(3, "c")).unwrap();
        assert_eq!(q.len(), 3);
        let mut out = Frames::default();
        q.take(|o| o.take_into(&mut out));
        assert_eq!(q.len(), 0);
        assert_eq!(out.segments.len(), 2, "[1 and 2's header], 2's payload");
        assert_eq!(&out.small[..], b"\0\0\0\x03\0\0\0\x01c", "then [3]");
        assert_eq!(
            out.segments[1].as_ptr(),
            big.as_ptr(),
            "the payload was queued, not copied"
        );
        assert_eq!(out.len(), 3 * 8 + 2 + ZERO_COPY_MIN + 1);
        let mut wire = BytesMut::new();
        out.drain_bytes(&mut wire);
        let mut codec = Codec::new(Layout::Tlv, 0);
        let mut got = Vec::new();
        codec.decode_all(&mut wire, &mut got, true).unwrap();
        assert_eq!(
            got,
            [
                Message::new(1, "ab"),
                Message::new(2, big),
                Message::new(3, "c")
            ]
        );
    }

    #[test]
    fn borrowed_payloads_are_copied_except_a_long_bytes() {
        let (conn, _outbox) = Connection::detached(8);
        let long = Bytes::from(vec![5u8; ZERO_COPY_MIN]);
        let short = Bytes::from_static(b"short");
        conn.try_send(1, &short).unwrap();
        conn.try_send(2, &long[..]).unwrap();
        let mut out = Frames::default();
        conn.send_queue().take(|o| o.take_into(&mut out));
        assert!(
            out.segments.is_empty(),
            "a short Bytes and a slice are copied"
        );
        assert_eq!(out.len(), 2 * 8 + 5 + ZERO_COPY_MIN);
        conn.try_send(3, &long).unwrap();
        let mut out = Frames::default();
        conn.send_queue().take(|o| o.take_into(&mut out));
        assert_eq!(out.segments.len(), 2, "the header, then the payload");
        assert_eq!(out.segments[1].as_ptr(), long.as_ptr(), "not copied");
    }

    #[test]
    fn a_message_the_framing_cannot_encode_is_refused_and_leaves_no_bytes() {
        let q = SendQueue::with_store(Outgoing::new(Encoder::Zinx(Codec::new(Layout::Tlv, 4))), 8);
        q.try_push(Message::new(1, "ok")).unwrap();
        assert!(matches!(
            q.try_push(Message::new(1, "too long")),
            Err(PushError::Rejected(Error::FrameTooLarge { .. }))
        ));
        assert_eq!(q.len(), 1);
        let mut out = Frames::default();
        q.take(|o| o.take_into(&mut out));
        assert_eq!(out.len(), 8 + 2);
    }

    /// Queues `frames` frames of 64 B, writes them all out and goes idle; what
    /// the drained buffer keeps.
    fn kept_after(frames: usize) -> usize {
        let (conn, _outbox) = Connection::detached(64);
        for i in 0..frames {
            conn.try_send(i as u32, &[0u8; 64]).unwrap();
        }
        let mut out = Frames::default();
        conn.send_queue().take(|o| o.take_into(&mut out));
        assert_eq!(out.len(), frames * 72);
        out.advance(out.len());
        out.shrink();
        out.capacity()
    }

    #[test]
    fn an_idle_buffer_is_given_back_when_small_and_kept_when_a_batch_outgrew_it() {
        // The first frame gets the whole first buffer: a handful of replies in
        // one turn do not grow it.
        let (conn, _outbox) = Connection::detached(8);
        conn.try_send(1, "x").unwrap();
        assert_eq!(
            conn.send_queue().take(|o| o.frames().capacity()),
            FIRST_BUFFER
        );
        assert_eq!(kept_after(1), 0, "one reply: back to the allocator");
        assert_eq!(kept_after(14), 0, "1,008 B fit the first buffer");
        assert!(
            kept_after(16) > FIRST_BUFFER,
            "a pipelined batch keeps its buffer"
        );
        assert_eq!(kept_after(60), 0, "what a burst grew past the bound goes");
    }
}
