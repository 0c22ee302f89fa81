//! Framing: bytes on the wire to [`Message`]s and back, pure and without I/O.
//!
//! A connection's reader hands every read to its [`Framing`], which cuts out the
//! whole frames and turns them into messages for the router; senders encode their
//! messages into the send queue with a clone of the same framing. The default is
//! Zinx's own [`Codec`](crate::Codec) (`framing/zinx.rs`), in either Go Zinx layout,
//! chosen per server:
//!
//! ```text
//! TLV, big-endian (Zinx default, zinx_pack_tlv_big_endian)
//! +-------------+-------------+----------------+
//! | msgID u32BE |   len u32BE |  len data bytes |
//! +-------------+-------------+----------------+
//!
//! LTV, little-endian (classic Zinx, zinx_pack_ltv_little_endian, the MMO demo)
//! +-------------+-------------+----------------+
//! |   len u32LE | msgID u32LE |  len data bytes |
//! +-------------+-------------+----------------+
//! ```
//!
//! `len` counts data bytes only; `len == 0` is a valid empty message.
//!
//! Other framings are built from two parts:
//!
//! - a *frame decoder* that cuts the byte stream into frames: [`LengthFieldCodec`]
//!   (`framing/length_field.rs`, Netty's `LengthFieldBasedFrameDecoder` knobs) or
//!   [`DelimiterCodec`] (`framing/delimiter.rs`, a delimiter or lines);
//! - a [`FrameMapper`] that turns one frame into a message (or drops it) and a
//!   message back into a frame, so the router works unchanged; [`Mapped`] joins
//!   the two into a [`Framing`].
//!
//! A codec from the ecosystem (any tokio-util `Decoder` + `Encoder<Bytes>`, such
//! as tokio-util's `LengthDelimitedCodec`) is a [`Framing`] with a mapper too:
//! [`MappedCodec::new`]`(codec, mapper)` (`framing/foreign.rs`); [`IdPrefix`] is
//! the mapper for frames that start with the message ID.
//!
//! [`HtlvCrcCodec`] (`framing/htlv_crc.rs`) is the ready-made HTLV+CRC framing of
//! Zinx's decoder example:
//!
//! ```text
//! HTLV+CRC:  | H 1 byte | T 1 byte (message ID) | L 1 byte | V L bytes | CRC-16/MODBUS 2 bytes LE |
//! ```
//!
//! Decoding always happens in the reader, before any interceptor or middleware.
//! Every decoder of `zinx`'s own checks an announced length against its maximum
//! *before* reserving memory for it, so a header announcing 4 GiB costs nothing
//! but a closed connection; and under a maximum that allows it, the buffer of a
//! partial frame grows with the bytes that really arrived, not with the length
//! announced (a foreign codec keeps its own rules: see [`MappedCodec`]).

use std::sync::Arc;

use bytes::{Buf, BufMut, Bytes, BytesMut};
use tokio_util::codec::{Decoder, Encoder};

use crate::error::Error;
use crate::message::{Message, MsgId};

mod delimiter;
mod foreign;
mod htlv_crc;
mod length_field;
pub(crate) mod zinx;

pub use delimiter::DelimiterCodec;
pub use foreign::MappedCodec;
pub use htlv_crc::{HtlvCrcCodec, crc16_modbus};
pub use length_field::{ByteOrder, LengthFieldBuilder, LengthFieldCodec};

/// A complete framing for a connection: decodes [`Message`]s from bytes and encodes
/// them back. One clone is made per connection, so a decoder may keep state.
pub trait Framing:
    Decoder<Item = Message, Error = Error>
    + Encoder<Message, Error = Error>
    + Clone
    + Send
    + Sync
    + 'static
{
    /// The largest data length an outgoing message may carry (`None`: no limit).
    /// `Connection::send` refuses longer data with [`Error::FrameTooLarge`].
    fn max_data_len(&self) -> Option<usize> {
        None
    }

    /// For framings whose frame is a header followed by the data unchanged:
    /// appends only the header of `msg`'s frame, so the writer can send large data
    /// without copying it. `None` (the default) means "not such a framing".
    fn encode_header(&mut self, msg: &Message, dst: &mut BytesMut) -> Option<Result<(), Error>> {
        let _ = (msg, dst);
        None
    }

    /// For transports that carry one frame per message (WebSocket): the length
    /// of the first frame in `encoded`, bytes this framing encoded, once enough
    /// of it is there to tell; `None` while it is not. The default, for
    /// framings that cannot tell, takes all of `encoded` as one frame (so a
    /// batch goes as one message).
    fn frame_len(&self, encoded: &[u8]) -> Option<usize> {
        (!encoded.is_empty()).then_some(encoded.len())
    }

    /// Decodes every whole frame in `buf` into `out` (what one read brought); at
    /// `eof`, a partial frame left over is an error. On error, the frames before
    /// the bad one are in `out`.
    ///
    /// The default calls [`decode`](Decoder::decode) (or
    /// [`decode_eof`](Decoder::decode_eof)) until it returns `None`; a framing may
    /// do the whole batch at once, as Zinx's [`Codec`](crate::Codec) does.
    ///
    /// # Errors
    ///
    /// What the decoder returns.
    fn decode_all(
        &mut self,
        buf: &mut BytesMut,
        out: &mut Vec<Message>,
        eof: bool,
    ) -> Result<(), Error> {
        loop {
            let next = if eof {
                self.decode_eof(buf)?
            } else {
                self.decode(buf)?
            };
            match next {
                Some(msg) => out.push(msg),
                None => return Ok(()),
            }
        }
    }
}

/// Room a partial frame's buffer is given ahead of the bytes received: frames
/// up to this size (Zinx's default `MaxPacketSize` included) get their whole
/// length at once.
const PARTIAL_STEP: usize = 8 * 1024;

/// Makes room for the rest of a frame of `frame_len` bytes whose start `src`
/// holds: the whole rest for a frame of up to [`PARTIAL_STEP`] bytes, else at
/// most as much as has arrived (and at least [`PARTIAL_STEP`]). What a
/// connection holds for a partial frame follows the bytes its peer really sent
/// (a small multiple of them, as a `Vec` grows, plus a step), whatever length the frame announced
/// and whatever the maximum: a header announcing 4 GiB reserves 8 KiB, not 4 GiB.
/// Every framing that knows a frame's length ahead uses this.
fn reserve_partial(src: &mut BytesMut, frame_len: usize) {
    let missing = frame_len.saturating_sub(src.len());
    src.reserve(missing.min(src.len().max(PARTIAL_STEP)));
}

/// After EOF: a whole frame, nothing left, or a truncated frame.
fn eof<T>(item: Option<T>, buf: &BytesMut) -> Result<Option<T>, Error> {
    match item {
        Some(item) => Ok(Some(item)),
        None if buf.is_empty() => Ok(None),
        None => Err(Error::TruncatedFrame {
            buffered: buf.len(),
        }),
    }
}

/// Maps frames to messages and messages to frames, so any framing can use the
/// router.
pub trait FrameMapper: Clone + Send + Sync + 'static {
    /// Turns one decoded frame into a message. `Ok(None)` drops the frame (for
    /// example a failed checksum) and keeps the connection; `Err` closes it.
    ///
    /// # Errors
    ///
    /// A frame that makes the stream unusable.
    fn decode(&self, frame: Bytes) -> Result<Option<Message>, Error>;

    /// Appends the complete frame for `msg` to `dst`; under a [`MappedCodec`],
    /// what the codec's encoder then frames (no length or delimiter of the
    /// codec's).
    ///
    /// # Errors
    ///
    /// A message that cannot be framed (too long, ID out of range).
    fn encode(&self, msg: &Message, dst: &mut BytesMut) -> Result<(), Error>;

    /// The largest data length an outgoing message may carry.
    fn max_data_len(&self) -> Option<usize> {
        None
    }
}

/// A frame decoder combined with a [`FrameMapper`]: a complete [`Framing`].
#[derive(Debug, Clone)]
pub struct Mapped<D, M> {
    frames: D,
    mapper: M,
}

impl<D, M> Decoder for Mapped<D, M>
where
    D: Decoder<Item = Bytes, Error = Error>,
    M: FrameMapper,
{
    type Item = Message;
    type Error = Error;

    fn decode(&mut self, src: &mut BytesMut) -> Result<Option<Message>, Error> {
        let frames = &mut self.frames;
        map_frames(&self.mapper, || frames.decode(src))
    }

    fn decode_eof(&mut self, src: &mut BytesMut) -> Result<Option<Message>, Error> {
        let frames = &mut self.frames;
        map_frames(&self.mapper, || frames.decode_eof(src))
    }
}

/// The next message `mapper` makes of the frames `next` yields. Dropped frames
/// are skipped here, so one read may drop many.
fn map_frames<M: FrameMapper>(
    mapper: &M,
    mut next: impl FnMut() -> Result<Option<Bytes>, Error>,
) -> Result<Option<Message>, Error> {
    while let Some(frame) = next()? {
        if let Some(msg) = mapper.decode(frame)? {
            return Ok(Some(msg));
        }
    }
    Ok(None)
}

impl<D, M> Encoder<Message> for Mapped<D, M>
where
    M: FrameMapper,
{
    type Error = Error;

    fn encode(&mut self, msg: Message, dst: &mut BytesMut) -> Result<(), Error> {
        self.mapper.encode(&msg, dst)
    }
}

impl<D, M> Framing for Mapped<D, M>
where
    D: Decoder<Item = Bytes, Error = Error> + Clone + Send + Sync + 'static,
    M: FrameMapper,
{
    fn max_data_len(&self) -> Option<usize> {
        self.mapper.max_data_len()
    }
}

/// A [`FrameMapper`] from two closures.
///
/// # Examples
///
/// A 2-byte length, then a 2-byte message ID, then the data:
///
/// ```
/// use bytes::{Buf, BufMut};
/// use zinx::framing::{FnMapper, LengthFieldCodec};
/// use zinx::Message;
///
/// let framing = LengthFieldCodec::builder()
///     .length_field_length(2)
///     .initial_bytes_to_strip(2)
///     .build()
///     .map(FnMapper::new(
///         |mut frame: bytes::Bytes| {
///             if frame.len() < 2 {
///                 return Ok(None);
///             }
///             let id = frame.get_u16();
///             Ok(Some(Message::new(u32::from(id), frame)))
///         },
///         |msg: &Message, dst: &mut bytes::BytesMut| {
///             dst.put_u16((msg.data.len() + 2) as u16);
///             dst.put_u16(msg.id.0 as u16);
///             dst.put_slice(&msg.data);
///             Ok(())
///         },
///     ));
/// # let _ = framing;
/// ```
pub struct FnMapper<D, E> {
    decode: Arc<D>,
    encode: Arc<E>,
}

impl<D, E> Clone for FnMapper<D, E> {
    fn clone(&self) -> Self {
        FnMapper {
            decode: self.decode.clone(),
            encode: self.encode.clone(),
        }
    }
}

impl<D, E> std::fmt::Debug for FnMapper<D, E> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("FnMapper").finish_non_exhaustive()
    }
}

impl<D, E> FnMapper<D, E>
where
    D: Fn(Bytes) -> Result<Option<Message>, Error> + Send + Sync + 'static,
    E: Fn(&Message, &mut BytesMut) -> Result<(), Error> + Send + Sync + 'static,
{
    /// A mapper that decodes with `decode` and encodes with `encode`.
    pub fn new(decode: D, encode: E) -> Self {
        FnMapper {
            decode: Arc::new(decode),
            encode: Arc::new(encode),
        }
    }
}

impl<D, E> FrameMapper for FnMapper<D, E>
where
    D: Fn(Bytes) -> Result<Option<Message>, Error> + Send + Sync + 'static,
    E: Fn(&Message, &mut BytesMut) -> Result<(), Error> + Send + Sync + 'static,
{
    fn decode(&self, frame: Bytes) -> Result<Option<Message>, Error> {
        (self.decode)(frame)
    }

    fn encode(&self, msg: &Message, dst: &mut BytesMut) -> Result<(), Error> {
        (self.encode)(msg, dst)
    }
}

/// Every frame becomes a message with one fixed ID; outgoing data is written
/// followed by a suffix (the delimiter). Made by [`DelimiterCodec::message_id`].
#[derive(Debug, Clone)]
pub struct FixedId {
    id: MsgId,
    suffix: Bytes,
    max_length: usize,
}

impl FrameMapper for FixedId {
    fn decode(&self, frame: Bytes) -> Result<Option<Message>, Error> {
        Ok(Some(Message {
            id: self.id,
            data: frame,
        }))
    }

    fn encode(&self, msg: &Message, dst: &mut BytesMut) -> Result<(), Error> {
        dst.reserve(msg.data.len() + self.suffix.len());
        dst.put_slice(&msg.data);
        dst.put_slice(&self.suffix);
        Ok(())
    }

    fn max_data_len(&self) -> Option<usize> {
        Some(self.max_length)
    }
}

/// The frame starts with the message ID, 1, 2 or 4 bytes in either byte order,
/// and the rest is the data; every message is sent as its ID and its data. A
/// frame shorter than an ID, or a message whose ID does not fit, is
/// [`Error::BadFrame`].
///
/// It writes nothing but the ID and the data, so it is the mapper for a codec
/// that frames what its mapper writes ([`MappedCodec`]); a [`LengthFieldCodec`]
/// or [`DelimiterCodec`] needs a mapper that writes the length or the
/// delimiter too (see [`FnMapper`]).
///
/// # Examples
///
/// ```
/// use bytes::{Bytes, BytesMut};
/// use zinx::framing::{ByteOrder, FrameMapper, IdPrefix};
/// use zinx::Message;
///
/// let ids = IdPrefix::new(2, ByteOrder::LittleEndian);
/// let msg = ids.decode(Bytes::from_static(b"\x07\x00abc")).unwrap();
/// assert_eq!(msg, Some(Message::new(7, "abc")));
/// let mut frame = BytesMut::new();
/// ids.encode(&Message::new(7, "abc"), &mut frame).unwrap();
/// assert_eq!(&frame[..], b"\x07\x00abc");
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct IdPrefix {
    width: IdWidth,
    order: ByteOrder,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum IdWidth {
    One,
    Two,
    Four,
}

impl IdPrefix {
    /// IDs of `width` bytes in byte order `order`.
    ///
    /// # Panics
    ///
    /// For a width other than 1, 2 or 4 bytes (a programming error, caught when
    /// the framing is made).
    #[must_use]
    pub fn new(width: usize, order: ByteOrder) -> Self {
        let width = match width {
            1 => IdWidth::One,
            2 => IdWidth::Two,
            4 => IdWidth::Four,
            _ => panic!("a message ID prefix is 1, 2 or 4 bytes, not {width}"),
        };
        IdPrefix { width, order }
    }

    fn len(self) -> usize {
        match self.width {
            IdWidth::One => 1,
            IdWidth::Two => 2,
            IdWidth::Four => 4,
        }
    }
}

impl FrameMapper for IdPrefix {
    fn decode(&self, mut frame: Bytes) -> Result<Option<Message>, Error> {
        if frame.len() < self.len() {
            return Err(Error::BadFrame {
                reason: format!(
                    "a frame of {} bytes is shorter than its {}-byte message ID",
                    frame.len(),
                    self.len()
                ),
            });
        }
        let id = match (self.width, self.order) {
            (IdWidth::One, _) => u32::from(frame.get_u8()),
            (IdWidth::Two, ByteOrder::BigEndian) => u32::from(frame.get_u16()),
            (IdWidth::Two, ByteOrder::LittleEndian) => u32::from(frame.get_u16_le()),
            (IdWidth::Four, ByteOrder::BigEndian) => frame.get_u32(),
            (IdWidth::Four, ByteOrder::LittleEndian) => frame.get_u32_le(),
        };
        Ok(Some(Message {
            id: MsgId(id),
            data: frame,
        }))
    }

    fn encode(&self, msg: &Message, dst: &mut BytesMut) -> Result<(), Error> {
        let id = msg.id.0;
        let too_big = |_| Error::BadFrame {
            reason: format!("message ID {id} does not fit in {} bytes", self.len()),
        };
        dst.reserve(self.len() + msg.data.len());
        match (self.width, self.order) {
            (IdWidth::One, _) => dst.put_u8(u8::try_from(id).map_err(too_big)?),
            (IdWidth::Two, ByteOrder::BigEndian) => {
                dst.put_u16(u16::try_from(id).map_err(too_big)?);
            }
            (IdWidth::Two, ByteOrder::LittleEndian) => {
                dst.put_u16_le(u16::try_from(id).map_err(too_big)?);
            }
            (IdWidth::Four, ByteOrder::BigEndian) => dst.put_u32(id),
            (IdWidth::Four, ByteOrder::LittleEndian) => dst.put_u32_le(id),
        }
        dst.put_slice(&msg.data);
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Decodes the chunks one after the other, as a connection's reads, then
    /// what is left at EOF.
    pub(super) fn decode_all<D: Decoder<Error = Error>>(
        d: &mut D,
        chunks: &[&[u8]],
    ) -> Result<Vec<D::Item>, Error> {
        let mut buf = BytesMut::new();
        let mut out = Vec::new();
        for chunk in chunks {
            buf.extend_from_slice(chunk);
            while let Some(item) = d.decode(&mut buf)? {
                out.push(item);
            }
        }
        while let Some(item) = d.decode_eof(&mut buf)? {
            out.push(item);
        }
        Ok(out)
    }

    #[test]
    fn mapper_can_drop_frames() {
        let mut framing = DelimiterCodec::lines(64).map(FnMapper::new(
            |frame: Bytes| Ok((!frame.starts_with(b"#")).then(|| Message::new(1, frame))),
            |msg: &Message, dst: &mut BytesMut| {
                dst.put_slice(&msg.data);
                dst.put_u8(b'\n');
                Ok(())
            },
        ));
        let msgs = decode_all(&mut framing, &[b"# comment\nkeep\n#x\n"]).unwrap();
        assert_eq!(msgs, vec![Message::new(1, "keep")]);
    }

    #[test]
    fn id_prefix_every_width_and_order() {
        let cases: [(usize, ByteOrder, u32, &[u8]); 5] = [
            (1, ByteOrder::BigEndian, 0xAB, b"\xAB"),
            (2, ByteOrder::BigEndian, 0x0102, b"\x01\x02"),
            (2, ByteOrder::LittleEndian, 0x0102, b"\x02\x01"),
            (4, ByteOrder::BigEndian, 0x0102_0304, b"\x01\x02\x03\x04"),
            (4, ByteOrder::LittleEndian, 0x0102_0304, b"\x04\x03\x02\x01"),
        ];
        for (width, order, id, prefix) in cases {
            let ids = IdPrefix::new(width, order);
            let mut frame = BytesMut::new();
            ids.encode(&Message::new(id, "xy"), &mut frame).unwrap();
            assert_eq!(&frame[..], [prefix, b"xy"].concat(), "{width} {order:?}");
            let msg = ids.decode(frame.freeze()).unwrap();
            assert_eq!(msg, Some(Message::new(id, "xy")), "{width} {order:?}");
        }
    }

    #[test]
    fn id_prefix_refuses_short_frames_and_wide_ids() {
        let ids = IdPrefix::new(4, ByteOrder::BigEndian);
        assert!(ids.decode(Bytes::from_static(b"\0\0\x07")).is_err());
        assert_eq!(
            ids.decode(Bytes::from_static(b"\0\0\0\x07")).unwrap(),
            Some(Message::new(7, ""))
        );
        let ids = IdPrefix::new(2, ByteOrder::BigEndian);
        let mut frame = BytesMut::new();
        assert!(
            ids.encode(&Message::new(0x1_0000, "x"), &mut frame)
                .is_err()
        );
        ids.encode(&Message::new(0xFFFF, "x"), &mut frame).unwrap();
        assert_eq!(&frame[..], b"\xFF\xFFx");
        assert!(
            IdPrefix::new(1, ByteOrder::BigEndian)
                .encode(&Message::new(0x100, ""), &mut frame)
                .is_err()
        );
    }
}
