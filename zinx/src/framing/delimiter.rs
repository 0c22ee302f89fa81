//! Delimiter framing: cuts a connection's byte stream at a delimiter or at line
//! ends. It sits where [`Codec`](crate::Codec) sits in the reader, as the frame
//! half of a [`Mapped`] framing; [`DelimiterCodec::message_id`] pairs it with
//! [`FixedId`] for protocols without message IDs.

use bytes::{Buf, Bytes, BytesMut};
use tokio_util::codec::Decoder;

use super::{FixedId, FrameMapper, Mapped, eof};
use crate::error::Error;
use crate::message::MsgId;

/// Cuts frames at a delimiter (lines with [`DelimiterCodec::lines`]). The delimiter
/// is not part of the frame.
///
/// # Examples
///
/// ```
/// use bytes::BytesMut;
/// use tokio_util::codec::Decoder;
/// use zinx::framing::DelimiterCodec;
///
/// let mut lines = DelimiterCodec::lines(64);
/// let mut buf = BytesMut::from(&b"hello\r\nworld\n"[..]);
/// assert_eq!(&lines.decode(&mut buf).unwrap().unwrap()[..], b"hello");
/// assert_eq!(&lines.decode(&mut buf).unwrap().unwrap()[..], b"world");
/// ```
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DelimiterCodec {
    delimiter: Bytes,
    max_length: usize,
    strip_cr: bool,
    /// Where the next search starts: bytes before it hold no delimiter.
    searched: usize,
}

impl DelimiterCodec {
    /// Frames end at `delimiter`; a frame may hold at most `max_length` bytes.
    ///
    /// # Panics
    ///
    /// If `delimiter` is empty.
    #[must_use]
    pub fn new(delimiter: impl Into<Bytes>, max_length: usize) -> Self {
        let delimiter = delimiter.into();
        assert!(!delimiter.is_empty(), "the delimiter must not be empty");
        DelimiterCodec {
            delimiter,
            max_length,
            strip_cr: false,
            searched: 0,
        }
    }

    /// Lines ending in `\n`, with a trailing `\r` removed; at most `max_length`
    /// bytes a line.
    #[must_use]
    pub fn lines(max_length: usize) -> Self {
        DelimiterCodec {
            strip_cr: true,
            ..DelimiterCodec::new(&b"\n"[..], max_length)
        }
    }

    /// The delimiter.
    #[must_use]
    pub fn delimiter(&self) -> &Bytes {
        &self.delimiter
    }

    /// Turns this frame decoder into a complete [`Framing`](super::Framing) with `mapper`.
    pub fn map<M: FrameMapper>(self, mapper: M) -> Mapped<Self, M> {
        Mapped {
            frames: self,
            mapper,
        }
    }

    /// A [`Framing`](super::Framing) where every frame becomes a message with ID `id` and every
    /// outgoing message is its data followed by the delimiter.
    pub fn message_id(self, id: impl Into<MsgId>) -> Mapped<Self, FixedId> {
        let mapper = FixedId {
            id: id.into(),
            suffix: self.delimiter.clone(),
            max_length: self.max_length,
        };
        self.map(mapper)
    }
}

impl Decoder for DelimiterCodec {
    type Item = Bytes;
    type Error = Error;

    fn decode(&mut self, src: &mut BytesMut) -> Result<Option<Bytes>, Error> {
        let delim = &self.delimiter[..];
        let start = self.searched.min(src.len());
        let found = src[start..]
            .windows(delim.len())
            .position(|w| w == delim)
            .map(|i| start + i);
        let Some(end) = found else {
            // Keep the last delimiter.len() - 1 bytes searchable: a delimiter may
            // straddle this read and the next.
            self.searched = src.len().saturating_sub(delim.len() - 1);
            // Bytes certain to belong to the unfinished frame (a `\r` may still be
            // stripped from lines).
            let content = self.searched.saturating_sub(usize::from(self.strip_cr));
            if content > self.max_length {
                return Err(Error::FrameTooLarge {
                    len: content as u64,
                    max: self.max_length as u64,
                });
            }
            return Ok(None);
        };
        self.searched = 0;
        let mut frame = src.split_to(end);
        src.advance(delim.len());
        if self.strip_cr && frame.last() == Some(&b'\r') {
            frame.truncate(frame.len() - 1);
        }
        if frame.len() > self.max_length {
            return Err(Error::FrameTooLarge {
                len: frame.len() as u64,
                max: self.max_length as u64,
            });
        }
        Ok(Some(frame.freeze()))
    }

    fn decode_eof(&mut self, buf: &mut BytesMut) -> Result<Option<Bytes>, Error> {
        eof(self.decode(buf)?, buf)
    }
}

#[cfg(test)]
mod tests {
    use tokio_util::codec::Encoder;

    use super::*;
    use crate::framing::Framing;
    use crate::framing::tests::decode_all;
    use crate::message::Message;

    #[test]
    fn delimiter_split_anywhere_and_straddling() {
        let wire = b"one\r\ntwo\r\n\r\nthree\r\n";
        for size in 1..wire.len() {
            let mut c = DelimiterCodec::new(&b"\r\n"[..], 16);
            let chunks: Vec<&[u8]> = wire.chunks(size).collect();
            let frames = decode_all(&mut c, &chunks).unwrap();
            let frames: Vec<&[u8]> = frames.iter().map(|f| &f[..]).collect();
            assert_eq!(
                frames,
                [&b"one"[..], b"two", b"", b"three"],
                "chunk size {size}"
            );
        }
    }

    #[test]
    fn delimiter_limits_line_length_without_a_delimiter_in_sight() {
        let mut c = DelimiterCodec::lines(8);
        let mut buf = BytesMut::from(&b"0123456789"[..]);
        assert!(matches!(
            c.decode(&mut buf).unwrap_err(),
            Error::FrameTooLarge { .. }
        ));
        let mut c = DelimiterCodec::lines(8);
        let mut buf = BytesMut::from(&b"123456789\n"[..]);
        assert!(c.decode(&mut buf).is_err());
        let mut c = DelimiterCodec::lines(8);
        assert_eq!(
            &c.decode(&mut BytesMut::from(&b"12345678\r\n"[..]))
                .unwrap()
                .unwrap()[..],
            b"12345678"
        );
    }

    #[test]
    fn lines_with_fixed_id_round_trip() {
        let mut framing = DelimiterCodec::lines(64).message_id(5);
        let mut buf = BytesMut::new();
        framing.encode(Message::new(9, "hi"), &mut buf).unwrap();
        assert_eq!(&buf[..], b"hi\n");
        let msg = framing.decode(&mut buf).unwrap().unwrap();
        assert_eq!(msg, Message::new(5, "hi"));
        assert_eq!(framing.max_data_len(), Some(64));
    }

    /// A delimiter frame has no announced length: an unfinished one reserves
    /// nothing ahead of the bytes that arrived, whatever the maximum.
    #[test]
    fn an_unfinished_line_reserves_nothing_ahead() {
        let mut lines = DelimiterCodec::lines(usize::MAX);
        let mut buf = BytesMut::from(&[b'x'; 10][..]);
        assert!(lines.decode(&mut buf).unwrap().is_none());
        assert!(buf.capacity() <= 1024);
    }
}
