//! Pluggable framing: any byte protocol in, `(message ID, data)` out.
//!
//! The reader and writer of a connection are generic over a [`Framing`]: a
//! `tokio_util` decoder of [`Message`]s plus the matching encoder. The default is
//! Zinx's own [`Codec`]. Others are built from two parts:
//!
//! - a *frame decoder* that cuts the byte stream into frames: [`LengthFieldCodec`]
//!   (Netty's `LengthFieldBasedFrameDecoder` knobs) or [`DelimiterCodec`] (a
//!   delimiter or lines);
//! - a [`FrameMapper`] that turns one frame into a message (or drops it) and a
//!   message back into a frame, so the router works unchanged.
//!
//! [`HtlvCrcCodec`] is the ready-made HTLV+CRC framing of Zinx's decoder example.
//! Decoding always happens in the reader, before any interceptor or middleware.
//! Every decoder checks lengths before reserving memory for them.
//!
//! ```text
//! HTLV+CRC:  | H 1 byte | T 1 byte (message ID) | L 1 byte | V L bytes | CRC-16/MODBUS 2 bytes LE |
//! ```

use std::sync::Arc;

use bytes::{Buf, BufMut, Bytes, BytesMut};
use tokio_util::codec::{Decoder, Encoder};

use crate::codec::Codec;
use crate::error::Error;
use crate::message::{Message, MsgId};

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

    /// Decodes every whole frame in `buf` into `out` (what one read brought); at
    /// `eof`, a partial frame left over is an error. On error, the frames before
    /// the bad one are in `out`.
    ///
    /// The default calls [`decode`](Decoder::decode) (or
    /// [`decode_eof`](Decoder::decode_eof)) until it returns `None`; a framing may
    /// do the whole batch at once, as Zinx's [`Codec`] does.
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

    fn decode_all(
        &mut self,
        buf: &mut BytesMut,
        out: &mut Vec<Message>,
        eof: bool,
    ) -> Result<(), Error> {
        self.decode_batch(buf, out, eof)
    }
}

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

    /// Turns this frame decoder into a complete [`Framing`] with `mapper`.
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
            crate::codec::reserve_partial(src, frame_len);
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

    /// Turns this frame decoder into a complete [`Framing`] with `mapper`.
    pub fn map<M: FrameMapper>(self, mapper: M) -> Mapped<Self, M> {
        Mapped {
            frames: self,
            mapper,
        }
    }

    /// A [`Framing`] where every frame becomes a message with ID `id` and every
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

    /// Appends the complete frame for `msg` to `dst`.
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
        // Dropped frames are skipped here, so one read may drop many.
        while let Some(frame) = self.frames.decode(src)? {
            if let Some(msg) = self.mapper.decode(frame)? {
                return Ok(Some(msg));
            }
        }
        Ok(None)
    }

    fn decode_eof(&mut self, src: &mut BytesMut) -> Result<Option<Message>, Error> {
        while let Some(frame) = self.frames.decode_eof(src)? {
            if let Some(msg) = self.mapper.decode(frame)? {
                return Ok(Some(msg));
            }
        }
        Ok(None)
    }
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

/// HTLV+CRC framing (Zinx's `zdecoder` example protocol): a header code, a
/// function code used as the message ID, a 1-byte body length, the body, and a
/// CRC-16/MODBUS of everything before it, low byte first. A frame with a bad CRC
/// is dropped and the connection goes on.
///
/// # Examples
///
/// ```
/// use bytes::BytesMut;
/// use tokio_util::codec::{Decoder, Encoder};
/// use zinx::framing::HtlvCrcCodec;
/// use zinx::Message;
///
/// let mut codec = HtlvCrcCodec::new(0xA2);
/// let mut wire = BytesMut::new();
/// codec.encode(Message::new(0x10, &b"\x01\x02\x03"[..]), &mut wire).unwrap();
/// assert_eq!(&wire[..5], &[0xA2, 0x10, 0x03, 0x01, 0x02]);
/// let msg = codec.decode(&mut wire).unwrap().unwrap();
/// assert_eq!((msg.id.0, &msg.data[..]), (0x10, &b"\x01\x02\x03"[..]));
/// ```
#[derive(Debug, Clone)]
pub struct HtlvCrcCodec {
    header: u8,
    frames: LengthFieldCodec,
}

impl HtlvCrcCodec {
    /// The codec; `header` is the header code written on outgoing frames
    /// (incoming frames may carry any header code, as in Zinx).
    #[must_use]
    pub fn new(header: u8) -> Self {
        HtlvCrcCodec {
            header,
            frames: LengthFieldCodec::builder()
                .length_field_offset(2)
                .length_field_length(1)
                .length_adjustment(2)
                .max_frame_length(255 + 5)
                .build(),
        }
    }
}

impl Decoder for HtlvCrcCodec {
    type Item = Message;
    type Error = Error;

    fn decode(&mut self, src: &mut BytesMut) -> Result<Option<Message>, Error> {
        while let Some(frame) = self.frames.decode(src)? {
            if let Some(msg) = htlv_message(&frame) {
                return Ok(Some(msg));
            }
        }
        Ok(None)
    }

    fn decode_eof(&mut self, src: &mut BytesMut) -> Result<Option<Message>, Error> {
        while let Some(frame) = self.frames.decode_eof(src)? {
            if let Some(msg) = htlv_message(&frame) {
                return Ok(Some(msg));
            }
        }
        Ok(None)
    }
}

/// The message in a whole HTLV+CRC frame, or `None` if its CRC is wrong.
fn htlv_message(frame: &Bytes) -> Option<Message> {
    // The length-field decoder guarantees 3 header bytes + body + 2 CRC bytes.
    let split = frame.len().checked_sub(2)?;
    let (covered, crc) = frame.split_at(split);
    if crc != crc16_modbus(covered).to_le_bytes() {
        tracing::debug!(frame = ?&frame[..], "HTLV frame with a bad CRC dropped");
        return None;
    }
    let id = MsgId(u32::from(*frame.get(1)?));
    Some(Message {
        id,
        data: frame.slice(3..split),
    })
}

impl Encoder<Message> for HtlvCrcCodec {
    type Error = Error;

    fn encode(&mut self, msg: Message, dst: &mut BytesMut) -> Result<(), Error> {
        let len = u8::try_from(msg.data.len()).map_err(|_| Error::FrameTooLarge {
            len: msg.data.len() as u64,
            max: 255,
        })?;
        let code = u8::try_from(msg.id.0).map_err(|_| Error::BadFrame {
            reason: format!(
                "message ID {} does not fit HTLV's 1-byte function code",
                msg.id
            ),
        })?;
        let start = dst.len();
        dst.reserve(5 + msg.data.len());
        dst.put_u8(self.header);
        dst.put_u8(code);
        dst.put_u8(len);
        dst.put_slice(&msg.data);
        let crc = crc16_modbus(&dst[start..]);
        dst.put_u16_le(crc);
        Ok(())
    }
}

impl Framing for HtlvCrcCodec {
    fn max_data_len(&self) -> Option<usize> {
        Some(255)
    }
}

/// CRC-16/MODBUS (reflected polynomial 0xA001, initial value 0xFFFF).
#[must_use]
pub fn crc16_modbus(data: &[u8]) -> u16 {
    let mut crc = 0xFFFFu16;
    for &byte in data {
        crc ^= u16::from(byte);
        for _ in 0..8 {
            crc = if crc & 1 == 1 {
                (crc >> 1) ^ 0xA001
            } else {
                crc >> 1
            };
        }
    }
    crc
}

#[cfg(test)]
mod tests {
    use super::*;

    fn decode_all<D: Decoder<Error = Error>>(
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
    fn crc16_modbus_check_value() {
        // The catalogue check value of CRC-16/MODBUS.
        assert_eq!(crc16_modbus(b"123456789"), 0x4B37);
    }

    #[test]
    fn htlv_decodes_the_layout_of_zinx_example_frame() {
        // Zinx's example frame (A2 10 0E <14 bytes>) with its CRC-16/MODBUS, A6 87.
        let wire = [
            0xA2, 0x10, 0x0E, 1, 2, 3, 4, 5, 6, 7, 8, 9, 0x10, 0x11, 0x12, 0x13, 0x14, 0xA6, 0x87,
        ];
        let msgs = decode_all(&mut HtlvCrcCodec::new(0xA2), &[&wire]).unwrap();
        assert_eq!(msgs.len(), 1);
        assert_eq!(msgs[0].id, MsgId(0x10));
        assert_eq!(&msgs[0].data[..], &wire[3..17]);
    }

    #[test]
    fn htlv_round_trip_and_bad_crc_is_dropped_not_fatal() {
        let mut codec = HtlvCrcCodec::new(0xA2);
        let mut good = BytesMut::new();
        codec.encode(Message::new(7, "abc"), &mut good).unwrap();
        let mut bad = good.clone();
        let last = bad.len() - 1;
        bad[last] ^= 0xFF;
        let mut stream = bad.to_vec();
        stream.extend_from_slice(&good);
        let chunks: Vec<&[u8]> = stream.chunks(1).collect();
        let msgs = decode_all(&mut codec, &chunks).unwrap();
        assert_eq!(msgs, vec![Message::new(7, "abc")]);
    }

    #[test]
    fn htlv_encode_limits() {
        let mut codec = HtlvCrcCodec::new(0xA2);
        let mut buf = BytesMut::new();
        assert!(codec.encode(Message::new(256, "x"), &mut buf).is_err());
        assert!(
            codec
                .encode(Message::new(1, vec![0u8; 256]), &mut buf)
                .is_err()
        );
        assert!(buf.is_empty());
        codec
            .encode(Message::new(1, vec![0u8; 255]), &mut buf)
            .unwrap();
        assert_eq!(buf.len(), 260);
    }

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
    /// (A delimiter frame has no announced length; HTLV's is one byte.)
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
        let mut lines = DelimiterCodec::lines(usize::MAX);
        let mut buf = BytesMut::from(&[b'x'; 10][..]);
        assert!(lines.decode(&mut buf).unwrap().is_none());
        assert!(buf.capacity() <= 1024);
    }

    #[test]
    fn length_field_truncated_at_eof() {
        let mut c = LengthFieldCodec::builder().length_field_length(2).build();
        assert!(matches!(
            decode_all(&mut c, &[b"\x00\x05ab"]).unwrap_err(),
            Error::TruncatedFrame { buffered: 4 }
        ));
    }

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
}
