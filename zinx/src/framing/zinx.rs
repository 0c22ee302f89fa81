//! Zinx's own framing, the default of every server and client: the TLV and LTV
//! layouts drawn in the [`framing`](super) module's documentation. The reader
//! decodes every whole frame of a read in one pass (`decode_batch`), and senders
//! encode into the send queue with [`Codec::encode_into`]. The announced length
//! is checked against the maximum before anything is reserved for it.

use std::str::FromStr;

use bytes::{Buf, BytesMut};
use tokio_util::codec::{Decoder, Encoder};

use super::{Framing, eof, reserve_partial};
use crate::error::Error;
use crate::message::{Message, MsgId};

/// Size of the Zinx header: two 32-bit fields.
pub const HEADER_LEN: usize = 8;

/// The two Zinx packet layouts.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Layout {
    /// `[msgID u32 BE][len u32 BE][data]`, the current Go Zinx default.
    #[default]
    Tlv,
    /// `[len u32 LE][msgID u32 LE][data]`, classic Zinx and the MMO demo.
    Ltv,
}

impl FromStr for Layout {
    type Err = Error;

    /// Parses `tlv` or `ltv` (any case).
    fn from_str(s: &str) -> Result<Self, Error> {
        let layouts = [("tlv", Layout::Tlv), ("ltv", Layout::Ltv)];
        crate::config::parse_name(s, "format", "packet layout", &layouts)
    }
}

/// The Zinx frame codec: a [`Layout`] and a maximum data length.
///
/// # Examples
///
/// ```
/// use bytes::BytesMut;
/// use tokio_util::codec::{Decoder, Encoder};
/// use zinx::{Codec, Layout, Message};
///
/// let mut codec = Codec::new(Layout::Tlv, 4096);
/// let mut buf = BytesMut::new();
/// codec.encode(Message::new(1, "hi"), &mut buf).unwrap();
/// assert_eq!(&buf[..], b"\0\0\0\x01\0\0\0\x02hi");
/// let msg = codec.decode(&mut buf).unwrap().unwrap();
/// assert_eq!(msg, Message::new(1, "hi"));
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Codec {
    layout: Layout,
    max_packet_size: u32,
}

impl Default for Codec {
    /// TLV with Zinx's default `MaxPacketSize` of 4096.
    fn default() -> Self {
        Codec::new(Layout::Tlv, 4096)
    }
}

impl Codec {
    /// A codec for `layout` accepting data lengths up to `max_packet_size`
    /// (0 means unbounded, as in Zinx).
    #[must_use]
    pub fn new(layout: Layout, max_packet_size: u32) -> Self {
        Codec {
            layout,
            max_packet_size,
        }
    }

    /// The packet layout.
    #[must_use]
    pub fn layout(&self) -> Layout {
        self.layout
    }

    /// The largest data length accepted (0 = unbounded).
    #[must_use]
    pub fn max_packet_size(&self) -> u32 {
        self.max_packet_size
    }

    /// Reads `(id, len)` from an 8-byte header.
    fn parse_header(&self, h: &[u8]) -> (u32, u32) {
        let a = [h[0], h[1], h[2], h[3]];
        let b = [h[4], h[5], h[6], h[7]];
        match self.layout {
            Layout::Tlv => (u32::from_be_bytes(a), u32::from_be_bytes(b)),
            Layout::Ltv => (u32::from_le_bytes(b), u32::from_le_bytes(a)),
        }
    }

    /// Decodes every whole frame in `src` at once: the headers are checked first,
    /// then the frames' bytes are split off in one piece and each message's data
    /// is a slice of it (one reference count per message instead of a split).
    /// On error the frames before the bad one are in `out`.
    pub(crate) fn decode_batch(
        &self,
        src: &mut BytesMut,
        out: &mut Vec<Message>,
        eof: bool,
    ) -> Result<(), Error> {
        // Find the end of the last whole frame; stop at a bad header or at a
        // frame not wholly here (`partial`: its length).
        let mut end = 0;
        let mut count = 0;
        let mut bad = None;
        let mut partial = None;
        while let Some(header) = src.get(end..end + HEADER_LEN) {
            let (_, len) = self.parse_header(header);
            if let Err(e) = self.check_len(u64::from(len)) {
                bad = Some(e);
                break;
            }
            let frame_len = HEADER_LEN + len as usize;
            if src.len() - end < frame_len {
                partial = Some(frame_len);
                break;
            }
            end += frame_len;
            count += 1;
        }
        if count > 0 {
            let mut frames = src.split_to(end).freeze();
            out.reserve(count);
            let mut at = 0;
            loop {
                let (id, len) = self.parse_header(&frames[at..at + HEADER_LEN]);
                let start = at + HEADER_LEN;
                at = start + len as usize;
                let id = MsgId(id);
                if at == end {
                    // The last frame (the only one, request-response) takes the
                    // split itself: one reference count less than a slice.
                    frames.advance(start);
                    out.push(Message { id, data: frames });
                    break;
                }
                out.push(Message {
                    id,
                    data: frames.slice(start..at),
                });
            }
        }
        if let Some(e) = bad {
            return Err(e);
        }
        // What is left is part of a frame: fail at the end of the stream, or
        // reserve for the rest of it.
        if eof && !src.is_empty() {
            return Err(Error::TruncatedFrame {
                buffered: src.len(),
            });
        }
        if let Some(frame_len) = partial {
            reserve_partial(src, frame_len);
        }
        Ok(())
    }

    fn check_len(&self, len: u64) -> Result<(), Error> {
        let max = u64::from(self.max_packet_size);
        if max != 0 && len > max {
            return Err(Error::FrameTooLarge { len, max });
        }
        Ok(())
    }

    /// Appends one frame for `id` and `data` to `dst`.
    ///
    /// # Errors
    ///
    /// [`Error::FrameTooLarge`] when `data` is longer than the maximum (or than
    /// `u32::MAX`); `dst` is left unchanged.
    #[inline]
    pub fn encode_into(&self, id: MsgId, data: &[u8], dst: &mut BytesMut) -> Result<(), Error> {
        let header = self.header(id, data.len())?;
        dst.reserve(HEADER_LEN + data.len());
        dst.extend_from_slice(&header);
        dst.extend_from_slice(data);
        Ok(())
    }

    /// Appends only the 8-byte header of a frame carrying `len` data bytes.
    ///
    /// # Errors
    ///
    /// As [`encode_into`](Self::encode_into).
    pub fn encode_header_into(
        &self,
        id: MsgId,
        len: usize,
        dst: &mut BytesMut,
    ) -> Result<(), Error> {
        dst.extend_from_slice(&self.header(id, len)?);
        Ok(())
    }

    /// The header of a frame carrying `len` data bytes.
    #[inline]
    fn header(&self, id: MsgId, len: usize) -> Result<[u8; HEADER_LEN], Error> {
        let len = len as u64;
        self.check_len(len)?;
        let len = u32::try_from(len).map_err(|_| Error::FrameTooLarge {
            len,
            max: u64::from(u32::MAX),
        })?;
        // Both layouts are the two words as one: ID then length big-endian (TLV),
        // length then ID little-endian (LTV).
        let words = u64::from(id.0) << 32 | u64::from(len);
        Ok(match self.layout {
            Layout::Tlv => words.to_be_bytes(),
            Layout::Ltv => words.to_le_bytes(),
        })
    }
}

impl Decoder for Codec {
    type Item = Message;
    type Error = Error;

    fn decode(&mut self, src: &mut BytesMut) -> Result<Option<Message>, Error> {
        // Check: is a whole header here?
        let Some(header) = src.get(..HEADER_LEN) else {
            return Ok(None);
        };
        let (id, len) = self.parse_header(header);
        // Check the announced length before reserving anything for it.
        self.check_len(u64::from(len))?;
        let len = len as usize;
        let frame_len = HEADER_LEN + len;
        if src.len() < frame_len {
            reserve_partial(src, frame_len);
            return Ok(None);
        }
        // Parse and advance.
        src.advance(HEADER_LEN);
        let data = src.split_to(len).freeze();
        Ok(Some(Message {
            id: MsgId(id),
            data,
        }))
    }

    fn decode_eof(&mut self, buf: &mut BytesMut) -> Result<Option<Message>, Error> {
        eof(self.decode(buf)?, buf)
    }
}

impl Encoder<Message> for Codec {
    type Error = Error;

    #[inline]
    fn encode(&mut self, msg: Message, dst: &mut BytesMut) -> Result<(), Error> {
        self.encode_into(msg.id, &msg.data, dst)
    }
}

impl Encoder<&Message> for Codec {
    type Error = Error;

    fn encode(&mut self, msg: &Message, dst: &mut BytesMut) -> Result<(), Error> {
        self.encode_into(msg.id, &msg.data, dst)
    }
}

impl Framing for Codec {
    fn max_data_len(&self) -> Option<usize> {
        match self.max_packet_size() {
            0 => None,
            n => usize::try_from(n).ok(),
        }
    }

    fn encode_header(&mut self, msg: &Message, dst: &mut BytesMut) -> Option<Result<(), Error>> {
        Some(self.encode_header_into(msg.id, msg.data.len(), dst))
    }

    fn frame_len(&self, encoded: &[u8]) -> Option<usize> {
        let (_, len) = self.parse_header(encoded.get(..HEADER_LEN)?);
        Some(HEADER_LEN + len as usize)
    }

    fn decode_all(
        &mut self,
        buf: &mut BytesMut,
        out: &mut Vec<Message>,
        eof: bool,
    ) -> Result<(), Error> {
        self.decode_batch(buf, out, eof)
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use bytes::BufMut;

    use super::*;
    use crate::framing::PARTIAL_STEP;

    fn frame(layout: Layout, id: u32, data: &[u8]) -> Vec<u8> {
        let mut b = BytesMut::new();
        Codec::new(layout, 0)
            .encode_into(MsgId(id), data, &mut b)
            .unwrap();
        b.to_vec()
    }

    /// Decodes the chunks one frame at a time (`Decoder`) and in batches (what
    /// the reader uses), checks that both agree, and returns the result.
    fn decode_all(codec: &mut Codec, chunks: &[&[u8]]) -> Result<Vec<Message>, Error> {
        let single = crate::framing::tests::decode_all(&mut codec.clone(), chunks);
        let batched = decode_batched(codec, chunks);
        match (&single, &batched) {
            (Ok(a), Ok(b)) => assert_eq!(a, b, "batch decoding differs"),
            (Err(a), Err(b)) => assert_eq!(a.to_string(), b.to_string()),
            _ => panic!("batch decoding differs: {single:?} vs {batched:?}"),
        }
        batched
    }

    fn decode_batched(codec: &mut Codec, chunks: &[&[u8]]) -> Result<Vec<Message>, Error> {
        let mut buf = BytesMut::new();
        let mut out = Vec::new();
        for chunk in chunks {
            buf.extend_from_slice(chunk);
            codec.decode_batch(&mut buf, &mut out, false)?;
        }
        codec.decode_batch(&mut buf, &mut out, true)?;
        Ok(out)
    }

    #[test]
    fn tlv_wire_bytes_match_go_zinx() {
        assert_eq!(
            frame(Layout::Tlv, 1, b"abc"),
            [0, 0, 0, 1, 0, 0, 0, 3, b'a', b'b', b'c']
        );
    }

    #[test]
    fn ltv_wire_bytes_match_go_zinx() {
        assert_eq!(
            frame(Layout::Ltv, 0x0102, b"abc"),
            [3, 0, 0, 0, 2, 1, 0, 0, b'a', b'b', b'c']
        );
    }

    #[test]
    fn round_trip_both_layouts() {
        for layout in [Layout::Tlv, Layout::Ltv] {
            let mut codec = Codec::new(layout, 4096);
            let bytes = frame(layout, 77, b"payload");
            let msgs = decode_all(&mut codec, &[&bytes]).unwrap();
            assert_eq!(msgs, vec![Message::new(77, &b"payload"[..])]);
        }
    }

    #[test]
    fn split_byte_by_byte() {
        for layout in [Layout::Tlv, Layout::Ltv] {
            let mut wire = frame(layout, 1, b"hello");
            wire.extend(frame(layout, 2, b""));
            wire.extend(frame(layout, 3, b"world!"));
            let chunks: Vec<&[u8]> = wire.chunks(1).collect();
            let msgs = decode_all(&mut Codec::new(layout, 4096), &chunks).unwrap();
            assert_eq!(
                msgs,
                vec![
                    Message::new(1, &b"hello"[..]),
                    Message::new(2, &b""[..]),
                    Message::new(3, &b"world!"[..]),
                ]
            );
        }
    }

    #[test]
    fn many_frames_in_one_chunk() {
        let mut wire = Vec::new();
        for i in 0..100u32 {
            wire.extend(frame(Layout::Tlv, i, &i.to_be_bytes()));
        }
        let msgs = decode_all(&mut Codec::default(), &[&wire]).unwrap();
        assert_eq!(msgs.len(), 100);
        for (i, m) in msgs.iter().enumerate() {
            assert_eq!(m.id.0 as usize, i);
            assert_eq!(&m.data[..], &(i as u32).to_be_bytes());
        }
    }

    #[test]
    fn zero_length_message() {
        let wire = frame(Layout::Tlv, 9, b"");
        assert_eq!(wire.len(), HEADER_LEN);
        let msgs = decode_all(&mut Codec::default(), &[&wire]).unwrap();
        assert_eq!(msgs, vec![Message::new(9, &b""[..])]);
    }

    #[test]
    fn max_length_accepted_one_more_rejected() {
        let max = 4096usize;
        let ok = frame(Layout::Tlv, 1, &vec![7u8; max]);
        let msgs = decode_all(&mut Codec::new(Layout::Tlv, 4096), &[&ok]).unwrap();
        assert_eq!(msgs[0].data.len(), max);

        let too_big = frame(Layout::Tlv, 1, &vec![7u8; max + 1]);
        let err = decode_all(&mut Codec::new(Layout::Tlv, 4096), &[&too_big]).unwrap_err();
        assert!(
            matches!(
                err,
                Error::FrameTooLarge {
                    len: 4097,
                    max: 4096
                }
            ),
            "{err}"
        );
    }

    #[test]
    fn attack_lengths_fail_before_allocating() {
        for len in [0xFFFF_FFF0u32, u32::MAX, 4097] {
            for layout in [Layout::Tlv, Layout::Ltv] {
                let mut header = BytesMut::new();
                match layout {
                    Layout::Tlv => {
                        header.put_u32(1);
                        header.put_u32(len);
                    }
                    Layout::Ltv => {
                        header.put_u32_le(len);
                        header.put_u32_le(1);
                    }
                }
                let cap_before = header.capacity();
                let err = Codec::new(layout, 4096).decode(&mut header).unwrap_err();
                assert!(err.is_protocol(), "{err}");
                assert_eq!(header.capacity(), cap_before, "no reservation for {len}");
            }
        }
    }

    /// A header announcing the largest length, under every maximum that allows
    /// it, and a few bytes: the buffer holds about what arrived, not what was
    /// announced (both the one-frame and the batch decoder).
    #[test]
    fn a_huge_announced_frame_reserves_only_what_arrived() {
        for layout in [Layout::Tlv, Layout::Ltv] {
            for max in [0, u32::MAX, 1 << 20] {
                let announced = if max == 0 { u32::MAX } else { max };
                let mut wire = BytesMut::new();
                Codec::new(layout, 0)
                    .encode_header_into(MsgId(1), announced as usize, &mut wire)
                    .unwrap();
                wire.extend_from_slice(&[0u8; 10]);
                let mut one = wire.clone();
                let codec = Codec::new(layout, max);
                let mut single = codec;
                assert!(single.decode(&mut one).unwrap().is_none());
                assert!(one.capacity() <= 2 * PARTIAL_STEP, "{}", one.capacity());
                let mut batch = wire.clone();
                codec
                    .decode_batch(&mut batch, &mut Vec::new(), false)
                    .unwrap();
                assert!(batch.capacity() <= 2 * PARTIAL_STEP, "{}", batch.capacity());
            }
        }
    }

    /// As bytes of a large frame arrive, the room made ahead of them stays
    /// within a small multiple of what arrived (the buffer's doubling included).
    #[test]
    fn a_large_partial_frame_grows_with_the_bytes_received() {
        let codec = Codec::new(Layout::Tlv, 0);
        let mut buf = BytesMut::new();
        codec
            .encode_header_into(MsgId(1), 1 << 30, &mut buf)
            .unwrap();
        let chunk = [7u8; 16 * 1024];
        for _ in 0..64 {
            // What a reader does: append what arrived, then decode.
            buf.extend_from_slice(&chunk);
            codec
                .decode_batch(&mut buf, &mut Vec::new(), false)
                .unwrap();
            let cap = buf.capacity();
            assert!(
                cap <= 4 * buf.len() + 2 * PARTIAL_STEP,
                "{cap} for {}",
                buf.len()
            );
        }
        assert!(buf.capacity() < 4 << 20);
    }

    #[test]
    fn partial_frame_reserves_the_rest() {
        let wire = frame(Layout::Tlv, 1, &[1u8; 1000]);
        let mut buf = BytesMut::from(&wire[..10]);
        assert!(Codec::default().decode(&mut buf).unwrap().is_none());
        assert!(buf.capacity() >= wire.len());

        let mut buf = BytesMut::from(&wire[..10]);
        let mut out = Vec::new();
        Codec::default()
            .decode_batch(&mut buf, &mut out, false)
            .unwrap();
        assert!(out.is_empty() && buf.len() == 10);
        assert!(buf.capacity() >= wire.len());
    }

    #[test]
    fn a_batch_keeps_the_frames_before_a_bad_header() {
        let mut wire = frame(Layout::Tlv, 1, b"ok");
        wire.extend(frame(Layout::Tlv, 2, &[0u8; 100]));
        let mut buf = BytesMut::from(&wire[..]);
        let mut out = Vec::new();
        let err = Codec::new(Layout::Tlv, 50)
            .decode_batch(&mut buf, &mut out, false)
            .unwrap_err();
        assert!(matches!(err, Error::FrameTooLarge { len: 100, max: 50 }));
        assert_eq!(out, vec![Message::new(1, &b"ok"[..])]);
    }

    #[test]
    fn eof_mid_frame_is_an_error() {
        let wire = frame(Layout::Tlv, 1, b"hello");
        for cut in 1..wire.len() {
            let err = decode_all(&mut Codec::default(), &[&wire[..cut]]).unwrap_err();
            assert!(matches!(err, Error::TruncatedFrame { buffered } if buffered == cut));
        }
    }

    #[test]
    fn eof_on_boundary_is_clean() {
        let wire = frame(Layout::Tlv, 1, b"hello");
        let msgs = decode_all(&mut Codec::default(), &[&wire]).unwrap();
        assert_eq!(msgs.len(), 1);
        assert!(decode_all(&mut Codec::default(), &[]).unwrap().is_empty());
    }

    #[test]
    fn encode_rejects_oversized_data() {
        let mut buf = BytesMut::new();
        let err = Codec::new(Layout::Tlv, 4)
            .encode_into(MsgId(1), b"12345", &mut buf)
            .unwrap_err();
        assert!(matches!(err, Error::FrameTooLarge { len: 5, max: 4 }));
        assert!(buf.is_empty());
    }

    #[test]
    fn layout_parses_case_insensitively() {
        assert_eq!("LTV".parse::<Layout>().unwrap(), Layout::Ltv);
        assert_eq!("tlv".parse::<Layout>().unwrap(), Layout::Tlv);
        assert!("xml".parse::<Layout>().unwrap_err().is_config());
    }
}
