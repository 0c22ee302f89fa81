//! Telling that the server speaks the other packet layout.
//!
//! Both layouts put two 32-bit words in an 8-byte header, so a header of one
//! layout always decodes in the other, only to nonsense: read in the wrong
//! layout, its length is the byte-reversed message ID and its ID the
//! byte-reversed length. Message IDs and lengths are small numbers, and a
//! small number byte-reversed is a huge one: a TLV client reading the LTV frame
//! `id=1 len=5` sees `id=0x05000000 len=0x01000000`. So a header is taken for
//! the other layout's when, read in ours, it announces more than `--max-len`
//! or has an ID that is a small number byte-reversed, while read in the other
//! layout it is a plausible frame.
//!
//! The evidence is found in three places:
//!
//! - a reply the codec refused (the usual case: the reversed ID is far too
//!   long). `zinx::Client` closes the connection on it and only logs why, so
//!   the client runs with [`Sniffing`], the Zinx codec with a note of the
//!   failure and of the header it failed on;
//! - a reply that decoded, but whose header would be the other layout's
//!   (`id=0x05000000 len=0` is LTV `len=5 id=0`);
//! - no reply at all: a server of the other layout reads our header as
//!   announcing the reversed ID as a length, refuses it and closes the
//!   connection without a word. When the server closes without replying and
//!   our last header, read in the other layout, announces more than
//!   `--max-len`, that is said too.

use std::fmt;
use std::sync::{Arc, Mutex, PoisonError};

use bytes::BytesMut;
use tokio_util::codec::{Decoder, Encoder};
use zinx::codec::HEADER_LEN;
use zinx::{Codec, Error, Framing, Layout, Message, MsgId};

/// The 8 bytes of a Zinx header.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Header([u8; HEADER_LEN]);

impl Header {
    /// The header zinx's codec writes for `id` and `len` data bytes in `layout`.
    pub(crate) fn of(layout: Layout, id: MsgId, len: usize) -> Option<Header> {
        let mut buf = BytesMut::with_capacity(HEADER_LEN);
        Codec::new(layout, 0)
            .encode_header_into(id, len, &mut buf)
            .ok()?;
        Header::at_start(&buf)
    }

    /// The first 8 bytes of `buf`, if it has them.
    fn at_start(buf: &[u8]) -> Option<Header> {
        buf.get(..HEADER_LEN)?.try_into().ok().map(Header)
    }

    /// `(id, len)` as `layout` reads them. Zinx's own header parser is private
    /// to its codec, which only ever reads headers in its one layout.
    fn read(&self, layout: Layout) -> (u32, u32) {
        let [a0, a1, a2, a3, b0, b1, b2, b3] = self.0;
        let (a, b) = ([a0, a1, a2, a3], [b0, b1, b2, b3]);
        match layout {
            Layout::Tlv => (u32::from_be_bytes(a), u32::from_be_bytes(b)),
            Layout::Ltv => (u32::from_le_bytes(b), u32::from_le_bytes(a)),
        }
    }
}

impl fmt::Display for Header {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&crate::input::to_hex(&self.0))
    }
}

/// The layout a header may really be in, and what it says read that way.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Hint {
    layout: Layout,
    id: u32,
    len: u32,
    /// True when the header is the one we sent, which the server refused.
    ours: bool,
}

impl fmt::Display for Hint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let (name, flag) = names(self.layout);
        write!(
            f,
            "hint: the server may use the {name} layout: try --format {flag} "
        )?;
        if self.ours {
            // Only a guess: a server may close the connection for reasons
            // of its own.
            write!(
                f,
                "(if so, it read the header we sent as announcing {} data bytes and refused it)",
                self.len
            )
        } else {
            write!(
                f,
                "(read as {name}, that header is id={} len={})",
                self.id, self.len
            )
        }
    }
}

/// How a layout is named in messages and on the command line.
pub(crate) fn names(layout: Layout) -> (&'static str, &'static str) {
    match layout {
        Layout::Tlv => ("TLV", "tlv"),
        Layout::Ltv => ("LTV", "ltv"),
    }
}

fn other(layout: Layout) -> Layout {
    match layout {
        Layout::Tlv => Layout::Ltv,
        Layout::Ltv => Layout::Tlv,
    }
}

/// An ID that is a small number byte-reversed: its top byte set, its low two
/// bytes zero. A real ID of that shape (16,777,216 or more, a multiple of
/// 65,536) is rare enough to be worth a hint that may be wrong.
fn looks_reversed(id: u32) -> bool {
    id > 0x00ff_ffff && id.swap_bytes() <= 0xffff
}

/// The hint for a header received while speaking `layout`, if it looks like a
/// header of the other layout.
pub(crate) fn for_reply(layout: Layout, header: Header, max_len: u32) -> Option<Hint> {
    let (id, len) = header.read(layout);
    let theirs = other(layout);
    let (their_id, their_len) = header.read(theirs);
    let odd_here = len > max_len || looks_reversed(id);
    let fine_there = their_len <= max_len && !looks_reversed(their_id);
    (odd_here && fine_there).then_some(Hint {
        layout: theirs,
        id: their_id,
        len: their_len,
        ours: false,
    })
}

/// The hint for a server that closed the connection without replying, after
/// we sent `header` in `layout`: if a server of the other layout would have
/// read it as announcing more than `max_len`, it would have refused it.
pub(crate) fn for_silent_close(layout: Layout, header: Header, max_len: u32) -> Option<Hint> {
    let theirs = other(layout);
    let (their_id, their_len) = header.read(theirs);
    (their_len > max_len).then_some(Hint {
        layout: theirs,
        id: their_id,
        len: their_len,
        ours: true,
    })
}

/// Why the client's codec refused what the server sent.
#[derive(Debug, Clone)]
pub(crate) struct Failure {
    /// The codec's error.
    pub(crate) error: String,
    /// The header it failed on, when 8 bytes of it had arrived.
    pub(crate) header: Option<Header>,
}

/// Where [`Sniffing`] leaves the failure, for whoever sees the connection end.
pub(crate) type FailureSlot = Arc<Mutex<Option<Failure>>>;

/// Takes the failure out of `slot`. A panic elsewhere while holding the lock
/// cannot leave the `Option` half-written, so a poisoned lock is still read.
pub(crate) fn take_failure(slot: &FailureSlot) -> Option<Failure> {
    slot.lock().unwrap_or_else(PoisonError::into_inner).take()
}

/// Zinx's codec, noting the first decoding error and the header it was on
/// before the error closes the connection.
#[derive(Debug, Clone)]
pub(crate) struct Sniffing {
    codec: Codec,
    failure: FailureSlot,
}

impl Sniffing {
    pub(crate) fn new(codec: Codec, failure: FailureSlot) -> Self {
        Sniffing { codec, failure }
    }

    /// Passes `result` on, noting it if it is an error. On error the codec
    /// leaves the frame it failed on at the start of `buf`.
    fn note<T>(&self, buf: &[u8], result: Result<T, Error>) -> Result<T, Error> {
        if let Err(e) = &result {
            let mut slot = self.failure.lock().unwrap_or_else(PoisonError::into_inner);
            slot.get_or_insert_with(|| Failure {
                error: e.to_string(),
                header: Header::at_start(buf),
            });
        }
        result
    }
}

impl Decoder for Sniffing {
    type Item = Message;
    type Error = Error;

    fn decode(&mut self, src: &mut BytesMut) -> Result<Option<Message>, Error> {
        let result = self.codec.decode(src);
        self.note(src, result)
    }

    fn decode_eof(&mut self, src: &mut BytesMut) -> Result<Option<Message>, Error> {
        let result = self.codec.decode_eof(src);
        self.note(src, result)
    }
}

impl Encoder<Message> for Sniffing {
    type Error = Error;

    fn encode(&mut self, msg: Message, dst: &mut BytesMut) -> Result<(), Error> {
        self.codec.encode(msg, dst)
    }
}

impl Framing for Sniffing {
    fn max_data_len(&self) -> Option<usize> {
        self.codec.max_data_len()
    }

    fn encode_header(&mut self, msg: &Message, dst: &mut BytesMut) -> Option<Result<(), Error>> {
        self.codec.encode_header(msg, dst)
    }

    fn decode_all(
        &mut self,
        buf: &mut BytesMut,
        out: &mut Vec<Message>,
        eof: bool,
    ) -> Result<(), Error> {
        let result = self.codec.decode_all(buf, out, eof);
        self.note(buf, result)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MAX: u32 = 1 << 20;

    fn header(layout: Layout, id: u32, len: usize) -> Header {
        Header::of(layout, MsgId(id), len).unwrap()
    }

    #[test]
    fn headers_are_read_as_the_codec_writes_them() {
        for layout in [Layout::Tlv, Layout::Ltv] {
            let h = header(layout, 0x0102_0304, 0x0506);
            assert_eq!(h.read(layout), (0x0102_0304, 0x0506));
        }
        assert_eq!(header(Layout::Tlv, 1, 5).to_string(), "0000000100000005");
        assert_eq!(header(Layout::Ltv, 1, 5).to_string(), "0500000001000000");
    }

    #[test]
    fn a_header_of_the_other_layout_gets_a_hint() {
        for (ours, theirs) in [(Layout::Tlv, Layout::Ltv), (Layout::Ltv, Layout::Tlv)] {
            // Length absurd in our layout.
            let hint = for_reply(ours, header(theirs, 1, 5), MAX).unwrap();
            assert_eq!((hint.layout, hint.id, hint.len), (theirs, 1, 5));
            // Length fine, ID byte-reversed (`id=0x05000000 len=0`).
            let hint = for_reply(ours, header(theirs, 0, 5), MAX).unwrap();
            assert_eq!((hint.layout, hint.id, hint.len), (theirs, 0, 5));
            // A header of our own layout gets none, whatever it carries.
            for (id, len) in [(1, 5), (0, 0), (99_999, 4096), (0x0100_0000, 5)] {
                assert_eq!(for_reply(ours, header(ours, id, len), MAX), None);
            }
            // Absurd either way: no layout to recommend.
            assert_eq!(
                for_reply(ours, Header([0x7f, 0, 0, 0x7f, 0x7f, 0, 0, 0x7f]), MAX),
                None
            );
        }
        let hint = for_reply(Layout::Tlv, header(Layout::Ltv, 1, 5), MAX).unwrap();
        assert_eq!(
            hint.to_string(),
            "hint: the server may use the LTV layout: try --format ltv (read as LTV, that header is id=1 len=5)"
        );
    }

    #[test]
    fn a_silent_close_gets_a_hint_when_the_other_layout_would_refuse_us() {
        let hint = for_silent_close(Layout::Ltv, header(Layout::Ltv, 1, 5), MAX).unwrap();
        assert_eq!(
            hint.to_string(),
            "hint: the server may use the TLV layout: try --format tlv (if so, it read the header we sent as announcing 16777216 data bytes and refused it)"
        );
        assert!(for_silent_close(Layout::Tlv, header(Layout::Tlv, 1, 0), MAX).is_some());
        // ID 0 reads as length 0 in the other layout: nothing to refuse.
        assert_eq!(
            for_silent_close(Layout::Tlv, header(Layout::Tlv, 0, 5), MAX),
            None
        );
    }

    #[test]
    fn sniffing_keeps_the_header_it_failed_on() {
        let slot = FailureSlot::default();
        let mut sniffing = Sniffing::new(Codec::new(Layout::Tlv, MAX), slot.clone());
        let mut buf = BytesMut::new();
        Codec::new(Layout::Tlv, MAX)
            .encode_into(MsgId(7), b"ok", &mut buf)
            .unwrap();
        buf.extend_from_slice(&header(Layout::Ltv, 1, 5).0);
        let mut out = Vec::new();
        assert!(sniffing.decode_all(&mut buf, &mut out, false).is_err());
        assert_eq!(out, [Message::new(7, "ok")]);
        let failure = take_failure(&slot).unwrap();
        assert_eq!(failure.header, Some(header(Layout::Ltv, 1, 5)));
        assert!(failure.error.contains("16777216"), "{}", failure.error);
    }
}
