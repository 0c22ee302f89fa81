//! The delimiter decoder on any bytes: byte 0 picks lines or a delimiter made of
//! the next 1-3 bytes, byte 1 the maximum length, byte 2 the chunk size.
#![no_main]

mod common;

use libfuzzer_sys::fuzz_target;
use zinx::framing::DelimiterCodec;

fuzz_target!(|data: &[u8]| {
    let [mode, max, chunk, rest @ ..] = data else {
        return;
    };
    let max = usize::from(*max) * 4;
    let delimiter_len = usize::from(mode % 4);
    if rest.len() < delimiter_len {
        return;
    }
    let (delimiter, wire) = rest.split_at(delimiter_len);
    let codec = if delimiter.is_empty() {
        DelimiterCodec::lines(max)
    } else {
        DelimiterCodec::new(delimiter.to_vec(), max)
    };
    common::feed(&mut codec.message_id(1), wire, usize::from(*chunk), max);
});
