//! The length-field decoder on any bytes, with any of its settings taken from the
//! first bytes.
#![no_main]

mod common;

use bytes::{Bytes, BytesMut};
use libfuzzer_sys::fuzz_target;
use zinx::Message;
use zinx::framing::{ByteOrder, FnMapper, LengthFieldCodec};

fuzz_target!(|data: &[u8]| {
    let [
        order,
        field,
        offset,
        adjustment,
        strip,
        max,
        chunk,
        wire @ ..,
    ] = data
    else {
        return;
    };
    let max = usize::from(*max) * 16;
    let codec = LengthFieldCodec::builder()
        .byte_order(if order & 1 == 0 {
            ByteOrder::BigEndian
        } else {
            ByteOrder::LittleEndian
        })
        .length_field_length([1, 2, 4, 8][usize::from(field % 4)])
        .length_field_offset(usize::from(offset % 16))
        .length_adjustment(i64::from(*adjustment as i8))
        .initial_bytes_to_strip(usize::from(strip % 32))
        .max_frame_length(max)
        .build();
    let mut framing = codec.map(FnMapper::new(
        |frame: Bytes| Ok(Some(Message::new(0, frame))),
        |_msg: &Message, _dst: &mut BytesMut| Ok(()),
    ));
    common::feed(&mut framing, wire, usize::from(*chunk), max);
});
