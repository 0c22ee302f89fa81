//! HTLV+CRC framing, the protocol of Zinx's `zdecoder` example: a complete
//! [`Framing`] for a connection's reader and senders, made of a
//! [`LengthFieldCodec`] configured as Zinx's decoder and a CRC-16/MODBUS check
//! that drops bad frames before they reach the router.

use bytes::{BufMut, Bytes, BytesMut};
use tokio_util::codec::{Decoder, Encoder};

use super::{Framing, LengthFieldCodec};
use crate::error::Error;
use crate::message::{Message, MsgId};

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
    use crate::framing::tests::decode_all;

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
}
