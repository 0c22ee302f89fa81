//! Length-field framing: cuts a connection's byte stream into frames by a
//! length field, with the knobs of Netty's `LengthFieldBasedFrameDecoder`. It sits
//! where [`Codec`](crate::Codec) sits in the reader, as the frame half of a
//! [`Mapped`] framing (a [`FrameMapper`] makes messages of its frames), and under
//! [`HtlvCrcCodec`](super::HtlvCrcCodec).

use bytes::{Buf, Bytes, BytesMut};
use tokio_util::codec::Decoder;

use super::{FrameMapper, Mapped, eof, reserve_partial};
use crate::error::Error;

/// Byte order of a length field.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum ByteOrder {
    /// Most significant byte first (network order).
    #[default]
    BigEndian,
    /// Least significant byte first.
    LittleEndian,
}

/// Cuts frames by a length field, with the knobs of Netty's
/// `LengthFieldBasedFrameDecoder`.
///
/// ```text
/// frame length = length_field_offset + length_field_length + <length field> + length_adjustment
/// ```
///
/// The frame (less `initial_bytes_to_strip` bytes) is passed on as one `Bytes`.
/// A frame longer than `max_frame_length`, or whose adjusted length is shorter than
/// its own header, is an error that closes the connection; nothing is reserved for
/// it.
///
/// # Examples
///
/// A 2-byte big-endian length counting only the body, header stripped:
///
/// ```
/// use bytes::BytesMut;
/// use tokio_util::codec::Decoder;
/// use zinx::framing::LengthFieldCodec;
///
/// let mut codec = LengthFieldCodec::builder()
///     .length_field_length(2)
///     .initial_bytes_to_strip(2)
///     .max_frame_length(1024)
///     .build();
/// let mut buf = BytesMut::from(&b"\x00\x03abc"[..]);
/// assert_eq!(&codec.decode(&mut buf).unwrap().unwrap()[..], b"abc");
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LengthFieldCodec {
    byte_order: ByteOrder,
    length_field_offset: usize,
    length_field_length: usize,
    length_adjustment: i64,
    initial_bytes_to_strip: usize,
    max_frame_length: usize,
}

/// Builder for [`LengthFieldCodec`]. Defaults: big-endian, offset 0, a 4-byte
/// field, no adjustment, nothing stripped, frames up to 8 MiB.
#[derive(Debug, Clone, Copy)]
#[must_use]
pub struct LengthFieldBuilder {
    codec: LengthFieldCodec,
}

impl LengthFieldBuilder {
    /// Byte order of the length field.
    pub fn byte_order(mut self, order: ByteOrder) -> Self {
        self.codec.byte_order = order;
        self
    }

    /// Bytes before the length field.
    pub fn length_field_offset(mut self, offset: usize) -> Self {
        self.codec.length_field_offset = offset;
        self
    }

    /// Size of the length field: 1, 2, 4 or 8 bytes.
    ///
    /// # Panics
    ///
    /// For any other size (a programming error, caught when building).
    pub fn length_field_length(mut self, len: usize) -> Self {
        assert!(
            matches!(len, 1 | 2 | 4 | 8),
            "length field length must be 1, 2, 4 or 8 bytes, not {len}"
        );
        self.codec.length_field_length = len;
        self
    }

    /// Added to the length field's value to get the bytes that follow the field
    /// (negative when the field also counts the header).
    pub fn length_adjustment(mut self, adjustment: i64) -> Self {
        self.codec.length_adjustment = adjustment;
        self
    }

    /// Bytes removed from the front of every decoded frame.
    pub fn initial_bytes_to_strip(mut self, strip: usize) -> Self {
        self.codec.initial_bytes_to_strip = strip;
        self
    }

    /// Largest whole frame accepted (header included).
    pub fn max_frame_length(mut self, max: usize) -> Self {
        self.codec.max_frame_length = max;
        self
    }

    /// Finishes the codec.
    #[must_use]
    pub fn build(self) -> LengthFieldCodec {
        self.codec
    }
}

impl LengthFieldCodec {
    /// A builder with the defaults described on [`LengthFieldBuilder`].
    pub fn builder() -> LengthFieldBuilder {
        LengthFieldBuilder {
            codec: LengthFieldCodec {
                byte_order: ByteOrder::BigEndian,
                length_field_offset: 0,
                length_field_length: 4,
                length_adjustment: 0,
                initial_bytes_to_strip: 0,
                max_frame_length: 8 << 20,
            },
        }
    }

    /// The largest whole frame accepted.
    #[must_use]
    pub fn max_frame_length(&self) -> usize {
        self.max_frame_length
    }

    /// Turns this frame decoder into a complete [`Framing`](super::Framing) with `mapper`.
    pub fn map<M: FrameMapper>(self, mapper: M) -> Mapped<Self, M> {
        Mapped {
            frames: self,
            mapper,
        }
    }

    fn read_length(&self, field: &[u8]) -> u64 {
        let mut v = 0u64;
        match self.byte_order {
            ByteOrder::BigEndian => {
                for b in field {
                    v = (v << 8) | u64::from(*b);
                }
            }
            ByteOrder::LittleEndian => {
                for b in field.iter().rev() {
                    v = (v << 8) | u64::from(*b);
                }
            }
        }
        v
    }
}

impl Decoder for LengthFieldCodec {
    type Item = Bytes;
    type Error = Error;

    fn decode(&mut self, src: &mut BytesMut) -> Result<Option<Bytes>, Error> {
        let header_end = self.length_field_offset + self.length_field_length;
        let Some(field) = src.get(self.length_field_offset..header_end) else {
            return Ok(None);
        };
        let announced = self.read_length(field);
        let max = self.max_frame_length as u64;
        // i128 holds every u64 plus every i64 adjustment without overflow.
        let frame_len =
            i128::from(announced) + i128::from(self.length_adjustment) + header_end as i128;
        if frame_len > i128::from(max) {
            return Err(Error::FrameTooLarge {
                len: u64::try_from(frame_len).unwrap_or(u64::MAX),
                max,
            });
        }
        if frame_len < header_end as i128 || frame_len < self.initial_bytes_to_strip as i128 {
            return Err(Error::BadFrame {
                reason: format!(
                    "adjusted frame length {frame_len} is shorter than its header ({header_end} bytes) or the bytes to strip ({})",
                    self.initial_bytes_to_strip
                ),
            });
        }
        // Checked against max_frame_length (a usize) just above.
        let frame_len = usize::try_from(frame_len).unwrap_or(usize::MAX);
        if src.len() < frame_len {
            reserve_partial(src, frame_len);
            return Ok(None);
        }
        let mut frame = src.split_to(frame_len);
        frame.advance(self.initial_bytes_to_strip);
        Ok(Some(frame.freeze()))
    }

    fn decode_eof(&mut self, buf: &mut BytesMut) -> Result<Option<Bytes>, Error> {
        eof(self.decode(buf)?, buf)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::framing::tests::decode_all;

    #[test]
    fn length_field_knobs() {
        // Netty's examples: offset 0, 2-byte field, strip 2.
        let mut c = LengthFieldCodec::builder()
            .length_field_length(2)
            .initial_bytes_to_strip(2)
            .build();
        assert_eq!(
            &decode_all(&mut c, &[b"\x00\x0CHELLO, WORLD"]).unwrap()[0][..],
            b"HELLO, WORLD"
        );
        // Length counts the whole frame: adjustment -2, nothing stripped.
        let mut c = LengthFieldCodec::builder()
            .length_field_length(2)
            .length_adjustment(-2)
            .build();
        assert_eq!(
            &decode_all(&mut c, &[b"\x00\x0EHELLO, WORLD"]).unwrap()[0][..],
            b"\x00\x0EHELLO, WORLD"
        );
        // Header before the field: offset 2, 3rd byte... here a 2-byte header, 1-byte LE-irrelevant field.
        let mut c = LengthFieldCodec::builder()
            .length_field_offset(2)
            .length_field_length(1)
            .initial_bytes_to_strip(3)
            .build();
        assert_eq!(
            &decode_all(&mut c, &[b"\xCA\xFE\x03abc"]).unwrap()[0][..],
            b"abc"
        );
        // Little-endian 8-byte field.
        let mut c = LengthFieldCodec::builder()
            .byte_order(ByteOrder::LittleEndian)
            .length_field_length(8)
            .initial_bytes_to_strip(8)
            .build();
        let wire = [&3u64.to_le_bytes()[..], b"xyz"].concat();
        let chunks: Vec<&[u8]> = wire.chunks(1).collect();
        assert_eq!(&decode_all(&mut c, &chunks).unwrap()[0][..], b"xyz");
    }

    #[test]
    fn length_field_attack_lengths_fail_before_allocating() {
        for size in [1usize, 2, 4, 8] {
            let mut c = LengthFieldCodec::builder()
                .length_field_length(size)
                .max_frame_length(100)
                .build();
            let mut buf = BytesMut::from(&vec![0xFF; size][..]);
            let cap = buf.capacity();
            let err = c.decode(&mut buf).unwrap_err();
            if size == 1 {
                // 255 + 1 header byte > 100.
                assert!(matches!(err, Error::FrameTooLarge { .. }), "{err}");
            }
            assert!(err.is_protocol(), "{err}");
            assert_eq!(buf.capacity(), cap);
        }
        // A negative adjustment larger than the length is a bad frame, not a panic.
        let mut c = LengthFieldCodec::builder()
            .length_field_length(1)
            .length_adjustment(-10)
            .build();
        assert!(
            c.decode(&mut BytesMut::from(&b"\x02ab"[..]))
                .unwrap_err()
                .is_protocol()
        );
        // Huge positive adjustment with a u64::MAX field cannot overflow.
        let mut c = LengthFieldCodec::builder()
            .length_field_length(8)
            .length_adjustment(i64::MAX)
            .build();
        assert!(
            c.decode(&mut BytesMut::from(&[0xFF; 8][..]))
                .unwrap_err()
                .is_protocol()
        );
    }

    /// The largest length each field size can announce, under the largest
    /// maximum: the buffer holds about what arrived, not what was announced.
    /// (HTLV's length is one byte.)
    #[test]
    fn length_field_huge_announced_frame_reserves_only_what_arrived() {
        for size in [1usize, 2, 4, 8] {
            let mut c = LengthFieldCodec::builder()
                .length_field_length(size)
                .max_frame_length(usize::MAX)
                .build();
            // All ones, less a little so the header fits under the maximum.
            let mut buf = BytesMut::from(&vec![0xFF; size][..]);
            if size == 8 {
                buf[7] = 0x00;
            }
            buf.extend_from_slice(&[0u8; 10]);
            assert!(c.decode(&mut buf).unwrap().is_none());
            assert!(buf.capacity() <= 20 * 1024, "{size}: {}", buf.capacity());
        }
    }

    #[test]
    fn length_field_truncated_at_eof() {
        let mut c = LengthFieldCodec::builder().length_field_length(2).build();
        assert!(matches!(
            decode_all(&mut c, &[b"\x00\x05ab"]).unwrap_err(),
            Error::TruncatedFrame { buffered: 4 }
        ));
    }
}
