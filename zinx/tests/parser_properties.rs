//! Property tests of every decoder and of the config parser: any chunking of a
//! byte stream decodes to the same messages, encoding then decoding gives back
//! what was encoded, and no input panics or makes a decoder reserve more than its
//! maximum frame.

use bytes::{Bytes, BytesMut};
use proptest::prelude::*;
use zinx::framing::{ByteOrder, DelimiterCodec, HtlvCrcCodec, LengthFieldCodec};
use zinx::{Codec, Config, Error, Framing, Layout, Message};

/// Feeds `wire` to `framing` cut at `cuts` (positions, any order, any number), the
/// way the reader does: `decode_all` after every chunk, then once more at EOF.
/// Returns the messages, or the first error, and the largest buffer capacity seen.
fn decode_chunked<F: Framing>(
    framing: &mut F,
    wire: &[u8],
    cuts: &[usize],
) -> (Result<Vec<Message>, Error>, usize) {
    let mut cuts: Vec<usize> = cuts.iter().map(|c| c % (wire.len() + 1)).collect();
    cuts.push(wire.len());
    cuts.sort_unstable();
    let mut buf = BytesMut::new();
    let mut out = Vec::new();
    let mut peak = 0;
    let mut from = 0;
    for cut in cuts {
        buf.extend_from_slice(&wire[from..cut]);
        from = cut;
        let result = framing.decode_all(&mut buf, &mut out, false);
        peak = peak.max(buf.capacity());
        if let Err(e) = result {
            return (Err(e), peak);
        }
    }
    let result = framing.decode_all(&mut buf, &mut out, true);
    peak = peak.max(buf.capacity());
    (result.map(|()| out), peak)
}

/// The same, one frame at a time through `tokio_util`'s `Decoder` (what custom
/// framings and `FramedRead` use).
fn decode_each<F: Framing>(framing: &mut F, wire: &[u8]) -> Result<Vec<Message>, Error> {
    let mut buf = BytesMut::from(wire);
    let mut out = Vec::new();
    while let Some(msg) = framing.decode_eof(&mut buf)? {
        out.push(msg);
    }
    Ok(out)
}

fn encode_all<F: Framing>(framing: &mut F, msgs: &[Message]) -> Vec<u8> {
    let mut wire = BytesMut::new();
    for msg in msgs {
        framing.encode(msg.clone(), &mut wire).unwrap();
    }
    wire.to_vec()
}

fn messages(max_id: u32, max_len: usize) -> impl Strategy<Value = Vec<Message>> {
    prop::collection::vec(
        (0..=max_id, prop::collection::vec(any::<u8>(), 0..=max_len)),
        0..20,
    )
    .prop_map(|msgs| {
        msgs.into_iter()
            .map(|(id, data)| Message::new(id, data))
            .collect()
    })
}

fn cuts() -> impl Strategy<Value = Vec<usize>> {
    prop::collection::vec(any::<usize>(), 0..12)
}

fn layout() -> impl Strategy<Value = Layout> {
    prop_oneof![Just(Layout::Tlv), Just(Layout::Ltv)]
}

/// Capacity a decoder may reach for `input` bytes with frames of at most
/// `max_frame` bytes: what was given plus one frame, with `BytesMut`'s growth.
fn bound(input: usize, max_frame: usize) -> usize {
    2 * (input + max_frame) + 1024
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]

    #[test]
    fn zinx_codec_round_trips_under_any_chunking(
        layout in layout(),
        msgs in messages(u32::MAX, 300),
        cuts in cuts(),
    ) {
        let mut codec = Codec::new(layout, 4096);
        let wire = encode_all(&mut codec, &msgs);
        let (decoded, _) = decode_chunked(&mut codec.clone(), &wire, &cuts);
        prop_assert_eq!(decoded.unwrap(), msgs.clone());
        prop_assert_eq!(decode_each(&mut codec, &wire).unwrap(), msgs);
    }

    #[test]
    fn zinx_codec_survives_any_bytes_within_its_maximum(
        layout in layout(),
        max in prop_oneof![Just(0u32), 1u32..5000],
        wire in prop::collection::vec(any::<u8>(), 0..3000),
        cuts in cuts(),
    ) {
        let mut codec = Codec::new(layout, max);
        let (batched, peak) = decode_chunked(&mut codec.clone(), &wire, &cuts);
        // With no maximum a header may announce 4 GiB: the reservation is capped.
        let max_frame = if max == 0 { 64 * 1024 } else { max as usize + 8 };
        prop_assert!(peak <= bound(wire.len(), max_frame), "capacity {peak}");
        // Chunking changes nothing: same messages, or an error either way.
        let single = decode_each(&mut codec, &wire);
        prop_assert_eq!(batched.is_ok(), single.is_ok());
        if let (Ok(a), Ok(b)) = (batched, single) {
            prop_assert_eq!(a, b);
        }
    }

    #[test]
    fn length_field_frames_round_trip_under_any_chunking(
        field in prop_oneof![Just(1usize), Just(2), Just(4), Just(8)],
        offset in 0usize..4,
        little in any::<bool>(),
        whole in any::<bool>(),
        // Up to 243 bytes, so that a 1-byte field can also count a header of 12.
        payloads in prop::collection::vec(prop::collection::vec(any::<u8>(), 0..=243), 0..16),
        cuts in cuts(),
    ) {
        // The field carries the payload length (stripped to the payload), or the
        // whole frame's length (adjusted back, nothing stripped).
        let header = offset + field;
        let mut builder = LengthFieldCodec::builder()
            .byte_order(if little { ByteOrder::LittleEndian } else { ByteOrder::BigEndian })
            .length_field_offset(offset)
            .length_field_length(field)
            .max_frame_length(header + 255);
        builder = if whole {
            builder.length_adjustment(-(header as i64))
        } else {
            builder.initial_bytes_to_strip(header)
        };
        let codec = builder.build();
        let mut wire = Vec::new();
        let mut expected = Vec::new();
        for (i, payload) in payloads.iter().enumerate() {
            let start = wire.len();
            wire.extend(std::iter::repeat_n(i as u8, offset));
            let len = if whole { header + payload.len() } else { payload.len() } as u64;
            let bytes = if little { len.to_le_bytes() } else { len.to_be_bytes() };
            if little {
                wire.extend_from_slice(&bytes[..field]);
            } else {
                wire.extend_from_slice(&bytes[8 - field..]);
            }
            wire.extend_from_slice(payload);
            expected.push(if whole { Bytes::copy_from_slice(&wire[start..]) } else { Bytes::copy_from_slice(payload) });
        }
        let mut framing = codec.map(zinx::framing::FnMapper::new(
            |frame: Bytes| Ok(Some(Message::new(0, frame))),
            |_msg: &Message, _dst: &mut BytesMut| Ok(()),
        ));
        let (decoded, _) = decode_chunked(&mut framing, &wire, &cuts);
        let frames: Vec<Bytes> = decoded.unwrap().into_iter().map(|m| m.data).collect();
        prop_assert_eq!(frames, expected);
    }

    #[test]
    fn length_field_survives_any_bytes_and_any_settings(
        field in prop_oneof![Just(1usize), Just(2), Just(4), Just(8)],
        offset in 0usize..6,
        adjustment in -20i64..20,
        strip in 0usize..12,
        max in 0usize..2000,
        wire in prop::collection::vec(any::<u8>(), 0..3000),
        cuts in cuts(),
    ) {
        let codec = LengthFieldCodec::builder()
            .length_field_offset(offset)
            .length_field_length(field)
            .length_adjustment(adjustment)
            .initial_bytes_to_strip(strip)
            .max_frame_length(max)
            .build();
        let mut framing = codec.map(zinx::framing::FnMapper::new(
            |frame: Bytes| Ok(Some(Message::new(0, frame))),
            |_msg: &Message, _dst: &mut BytesMut| Ok(()),
        ));
        let (_, peak) = decode_chunked(&mut framing, &wire, &cuts);
        prop_assert!(peak <= bound(wire.len(), max), "capacity {peak}");
    }

    #[test]
    fn htlv_crc_round_trips_and_drops_corrupted_frames(
        msgs in messages(255, 255),
        cuts in cuts(),
        flip in any::<prop::sample::Index>(),
    ) {
        let mut codec = HtlvCrcCodec::new(0xA2);
        let wire = encode_all(&mut codec, &msgs);
        let (decoded, _) = decode_chunked(&mut codec.clone(), &wire, &cuts);
        prop_assert_eq!(decoded.unwrap(), msgs.clone());
        // Flipping one bit of any byte but a length (header code, function code,
        // data, CRC) drops exactly that frame; the others arrive intact. (A flipped
        // length desynchronises the stream: HTLV has no way to find the next frame.)
        if !msgs.is_empty() {
            let k = flip.index(msgs.len());
            let start: usize = msgs[..k].iter().map(|m| m.data.len() + 5).sum();
            let frame_len = msgs[k].data.len() + 5;
            let offset = [0, 1].into_iter().chain(3..frame_len).nth(flip.index(frame_len - 1));
            let mut bad = wire.clone();
            bad[start + offset.unwrap()] ^= 0x01;
            let (got, _) = decode_chunked(&mut codec, &bad, &cuts);
            let mut expected = msgs.clone();
            expected.remove(k);
            prop_assert_eq!(got.unwrap(), expected);
        }
    }

    #[test]
    fn htlv_crc_survives_any_bytes(
        wire in prop::collection::vec(any::<u8>(), 0..3000),
        cuts in cuts(),
    ) {
        let (_, peak) = decode_chunked(&mut HtlvCrcCodec::new(0xA2), &wire, &cuts);
        prop_assert!(peak <= bound(wire.len(), 260), "capacity {peak}");
    }

    #[test]
    fn lines_round_trip_under_any_chunking(
        lines in prop::collection::vec("[^\r\n]{0,40}", 0..20),
        crlf in any::<bool>(),
        cuts in cuts(),
    ) {
        let mut wire = Vec::new();
        for line in &lines {
            wire.extend_from_slice(line.as_bytes());
            wire.extend_from_slice(if crlf { b"\r\n" } else { b"\n" });
        }
        let mut framing = DelimiterCodec::lines(160).message_id(7);
        let (decoded, _) = decode_chunked(&mut framing, &wire, &cuts);
        let got: Vec<Message> = decoded.unwrap();
        let expected: Vec<Message> = lines.iter().map(|l| Message::new(7, l.clone().into_bytes())).collect();
        prop_assert_eq!(got, expected);
    }

    #[test]
    fn delimiters_survive_any_bytes(
        delimiter in prop::collection::vec(any::<u8>(), 1..4),
        max in 0usize..500,
        wire in prop::collection::vec(any::<u8>(), 0..3000),
        cuts in cuts(),
    ) {
        let mut framing = DelimiterCodec::new(delimiter, max).message_id(1);
        let (decoded, peak) = decode_chunked(&mut framing, &wire, &cuts);
        prop_assert!(peak <= bound(wire.len(), max), "capacity {peak}");
        if let Ok(msgs) = decoded {
            prop_assert!(msgs.iter().all(|m| m.data.len() <= max));
        }
    }

    #[test]
    fn config_parsing_never_panics(json in ".{0,200}") {
        let _ = Config::from_json_str(&json);
    }

    #[test]
    fn config_values_of_any_type_are_accepted_or_rejected_cleanly(
        key in prop_oneof![
            Just("Name"), Just("Host"), Just("TcpPort"), Just("MaxConn"), Just("WorkerPoolSize"),
            Just("MaxPacketSize"), Just("MaxMsgChanLen"), Just("WorkerMode"), Just("LogIsolationLevel"),
            Just("HeartbeatMax"), Just("IOReadBuffSize"), Just("unknown"),
        ],
        value in prop_oneof![
            Just("null".to_string()), Just("true".to_string()), Just("[]".to_string()),
            Just("{}".to_string()), any::<i64>().prop_map(|n| n.to_string()),
            (-1e9f64..1e9).prop_map(|f| format!("{f:?}")),
            any::<String>().prop_map(|s| serde_json::to_string(&s).unwrap()),
        ],
    ) {
        let json = format!("{{\"{key}\": {value}}}");
        match Config::from_json_str(&json) {
            Ok(_) => {}
            // A rejected value names the key (unknown keys are ignored, so never here);
            // keys match case-insensitively, as in Go Zinx.
            Err(e) => prop_assert!(e.to_string().to_lowercase().contains(&key.to_lowercase()), "{e}"),
        }
    }
}

#[test]
fn an_announced_4_gib_frame_reserves_no_more_than_the_cap() {
    let mut codec = Codec::new(Layout::Tlv, 0);
    let wire = [0, 0, 0, 1, 0xFF, 0xFF, 0xFF, 0xFF, 1, 2, 3];
    let (result, peak) = decode_chunked(&mut codec, &wire, &[]);
    assert!(result.is_err(), "truncated at EOF");
    assert!(peak <= 64 * 1024 + 1024, "capacity {peak}");
}
