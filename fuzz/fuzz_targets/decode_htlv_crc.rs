//! The HTLV+CRC decoder on any bytes; byte 0 is the chunk size.
#![no_main]

mod common;

use libfuzzer_sys::fuzz_target;
use zinx::framing::HtlvCrcCodec;

fuzz_target!(|data: &[u8]| {
    let [chunk, wire @ ..] = data else { return };
    common::feed(&mut HtlvCrcCodec::new(0xA2), wire, usize::from(*chunk), 260);
});
