//! Zinx's TLV/LTV codec on any bytes: byte 0 picks the layout and the maximum,
//! byte 1 the chunk size.
#![no_main]

mod common;

use libfuzzer_sys::fuzz_target;
use zinx::{Codec, Layout};

fuzz_target!(|data: &[u8]| {
    let [mode, chunk, wire @ ..] = data else {
        return;
    };
    let layout = if mode & 1 == 0 {
        Layout::Tlv
    } else {
        Layout::Ltv
    };
    let max = u32::from(mode >> 1) * 64;
    let max_frame = if max == 0 {
        64 * 1024
    } else {
        max as usize + 8
    };
    common::feed(
        &mut Codec::new(layout, max),
        wire,
        usize::from(*chunk),
        max_frame,
    );
});
