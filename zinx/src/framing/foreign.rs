//! Codecs from the ecosystem: any tokio-util codec that cuts frames and frames
//! bytes (tokio-util's own `LengthDelimitedCodec`, or a protocol crate's), made a
//! [`Framing`] by a [`FrameMapper`] between its frames and messages.

use std::fmt::Display;

use bytes::{Bytes, BytesMut};
use tokio_util::codec::{Decoder, Encoder};

use super::{FrameMapper, Framing, map_frames};
use crate::error::Error;
use crate::message::Message;

/// A tokio-util codec combined with a [`FrameMapper`]: a complete [`Framing`].
///
/// The codec cuts the stream into frames and frames what is sent; the mapper
/// turns each frame the codec decodes into a message (or drops it), and each
/// message into the bytes the codec's encoder then frames. So the mapper writes
/// no length or delimiter of the codec's: [`IdPrefix`](super::IdPrefix) writes
/// the message ID and the data, and `LengthDelimitedCodec` puts its length
/// field in front.
///
/// Any codec fits whose decoder yields something that turns into [`Bytes`]
/// (`BytesMut`, `Bytes`, `Vec<u8>`, `String`), whose encoder takes `Bytes`, and
/// whose errors can be displayed; it must implement the traits of the
/// tokio-util 0.7 that `zinx` uses. Text codecs such as `LinesCodec`, whose
/// encoders take `str`, do not: [`DelimiterCodec::lines`](super::DelimiterCodec::lines)
/// is the line framing.
///
/// A codec's errors become [`Error::BadFrame`] with the codec's message (a frame
/// over `LengthDelimitedCodec`'s maximum: "frame size too big"), a protocol
/// error that closes only that connection ([`Error::is_protocol`]); on a send,
/// the sender gets it. A codec works on buffers, not sockets, so even the
/// `io::Error`s tokio-util's codecs return are verdicts on bytes, never
/// [`Error::Io`].
///
/// # Memory
///
/// `zinx`'s own decoders give a partial frame's buffer room as its bytes
/// arrive, whatever length the frame announces. A foreign codec does what it
/// does: `LengthDelimitedCodec` reserves the whole announced frame as soon as
/// it has read a header, up to its `max_frame_length` (8 MiB by default), so
/// every peer can make its connection reserve that much by sending a header. Set
/// the codec's own maximum to the largest frame your protocol needs, or use
/// [`LengthFieldCodec`](super::LengthFieldCodec). `LengthDelimitedCodec` also
/// consumes a header before its body arrives: a peer that stops right after a
/// header leaves no bytes buffered, so `FrameTimeout` does not see that frame
/// start (`IdleTimeout` still applies) and a stream that ends there ends
/// cleanly (one cut mid-body is a `BadFrame`: "bytes remaining on stream").
///
/// # Examples
///
/// A 4-byte big-endian length (tokio-util's `LengthDelimitedCodec`), then a
/// 2-byte message ID, then the data:
///
/// ```
/// use bytes::BytesMut;
/// use tokio_util::codec::{Decoder, Encoder, LengthDelimitedCodec};
/// use zinx::framing::{ByteOrder, IdPrefix, MappedCodec};
/// use zinx::{Config, Message, Server};
///
/// let framing = MappedCodec::new(
///     LengthDelimitedCodec::builder().max_frame_length(64 * 1024).new_codec(),
///     IdPrefix::new(2, ByteOrder::BigEndian),
/// );
/// let server = Server::builder(Config::default()).framing(framing.clone());
/// # let _ = server;
///
/// // On the wire: length 4, ID 7, "hi".
/// let mut codec = framing;
/// let mut wire = BytesMut::new();
/// codec.encode(Message::new(7, "hi"), &mut wire).unwrap();
/// assert_eq!(&wire[..], b"\0\0\0\x04\0\x07hi");
/// assert_eq!(codec.decode(&mut wire).unwrap(), Some(Message::new(7, "hi")));
/// ```
#[derive(Debug, Clone)]
pub struct MappedCodec<C, M> {
    codec: C,
    mapper: M,
}

impl<C, M> MappedCodec<C, M>
where
    C: Decoder + Encoder<Bytes> + Clone + Send + Sync + 'static,
    C::Item: Into<Bytes>,
    <C as Decoder>::Error: Display,
    <C as Encoder<Bytes>>::Error: Display,
    M: FrameMapper,
{
    /// `codec` cuts and frames, `mapper` maps its frames to messages and back.
    pub fn new(codec: C, mapper: M) -> Self {
        MappedCodec { codec, mapper }
    }
}

/// A codec's complaint about bytes, as a protocol error.
fn bad_frame(e: impl Display) -> Error {
    Error::BadFrame {
        reason: e.to_string(),
    }
}

impl<C, M> Decoder for MappedCodec<C, M>
where
    C: Decoder,
    C::Item: Into<Bytes>,
    C::Error: Display,
    M: FrameMapper,
{
    type Item = Message;
    type Error = Error;

    fn decode(&mut self, src: &mut BytesMut) -> Result<Option<Message>, Error> {
        let codec = &mut self.codec;
        map_frames(&self.mapper, || {
            codec
                .decode(src)
                .map(|frame| frame.map(Into::into))
                .map_err(bad_frame)
        })
    }

    fn decode_eof(&mut self, src: &mut BytesMut) -> Result<Option<Message>, Error> {
        let codec = &mut self.codec;
        map_frames(&self.mapper, || {
            codec
                .decode_eof(src)
                .map(|frame| frame.map(Into::into))
                .map_err(bad_frame)
        })
    }
}

impl<C, M> Encoder<Message> for MappedCodec<C, M>
where
    C: Encoder<Bytes>,
    C::Error: Display,
    M: FrameMapper,
{
    type Error = Error;

    fn encode(&mut self, msg: Message, dst: &mut BytesMut) -> Result<(), Error> {
        // The codec takes an owned frame, so the mapper's output is a buffer of
        // its own: one allocation and one more copy per message than a framing
        // of zinx's own, which writes straight into the send queue.
        let mut frame = BytesMut::new();
        self.mapper.encode(&msg, &mut frame)?;
        self.codec.encode(frame.freeze(), dst).map_err(bad_frame)
    }
}

impl<C, M> Framing for MappedCodec<C, M>
where
    C: Decoder + Encoder<Bytes> + Clone + Send + Sync + 'static,
    C::Item: Into<Bytes>,
    <C as Decoder>::Error: Display,
    <C as Encoder<Bytes>>::Error: Display,
    M: FrameMapper,
{
    fn max_data_len(&self) -> Option<usize> {
        self.mapper.max_data_len()
    }
}

#[cfg(test)]
mod tests {
    use bytes::BufMut;
    use tokio_util::codec::{BytesCodec, LengthDelimitedCodec};

    use super::*;
    use crate::framing::tests::decode_all;
    use crate::framing::{ByteOrder, FnMapper, IdPrefix};

    fn length_delimited(max: usize) -> MappedCodec<LengthDelimitedCodec, IdPrefix> {
        MappedCodec::new(
            LengthDelimitedCodec::builder()
                .max_frame_length(max)
                .new_codec(),
            IdPrefix::new(2, ByteOrder::BigEndian),
        )
    }

    #[test]
    fn length_delimited_round_trip_in_any_chunking() {
        let mut framing = length_delimited(64);
        let mut wire = BytesMut::new();
        framing.encode(Message::new(7, "abc"), &mut wire).unwrap();
        framing.encode(Message::new(0x0102, ""), &mut wire).unwrap();
        assert_eq!(&wire[..], b"\0\0\0\x05\0\x07abc\0\0\0\x02\x01\x02");
        for size in 1..=wire.len() {
            let chunks: Vec<&[u8]> = wire.chunks(size).collect();
            let msgs = decode_all(&mut length_delimited(64), &chunks).unwrap();
            assert_eq!(
                msgs,
                [Message::new(7, "abc"), Message::new(0x0102, "")],
                "chunk size {size}"
            );
        }
    }

    #[test]
    fn codec_errors_are_protocol_errors() {
        // A header announcing more than the codec's maximum.
        let err = length_delimited(64)
            .decode(&mut BytesMut::from(&b"\0\0\0\x41"[..]))
            .unwrap_err();
        assert!(
            matches!(&err, Error::BadFrame { reason } if reason.contains("too big")),
            "{err}"
        );
        assert!(err.is_protocol(), "{err}");
        // Stopped mid-body.
        let err = decode_all(&mut length_delimited(64), &[b"\0\0\0\x05\0\x07a"]).unwrap_err();
        assert!(err.is_protocol(), "{err}");
        // Sending more than the codec's maximum fails the send.
        let err = length_delimited(4)
            .encode(Message::new(1, "abc"), &mut BytesMut::new())
            .unwrap_err();
        assert!(err.is_protocol(), "{err}");
    }

    #[test]
    fn mapper_errors_and_drops_pass_through() {
        // A frame shorter than its ID.
        let err = decode_all(&mut length_delimited(64), &[b"\0\0\0\x01\x07"]).unwrap_err();
        assert!(matches!(err, Error::BadFrame { .. }), "{err}");
        // BytesCodec makes a frame of every read; the mapper drops comments.
        let mut framing = MappedCodec::new(
            BytesCodec::new(),
            FnMapper::new(
                |frame: Bytes| Ok((!frame.starts_with(b"#")).then(|| Message::new(1, frame))),
                |msg: &Message, dst: &mut BytesMut| {
                    dst.put_slice(&msg.data);
                    Ok(())
                },
            ),
        );
        let msgs = decode_all(&mut framing, &[b"ab", b"#c", b"d"]).unwrap();
        assert_eq!(msgs, [Message::new(1, "ab"), Message::new(1, "d")]);
    }
}
