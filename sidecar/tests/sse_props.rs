//! Property tests for the SSE codec.
//!
//! - The incremental parser agrees with a direct transcription of the spec (decode the whole
//!   stream, split lines, run the field rules) on streams built from SSE-ish tokens and raw bytes.
//! - Chunking never matters: any split, and 1-byte chunks, give the frames of one chunk.
//! - Encoding any frame the parser can produce parses back to it.
//! - Arbitrary bytes never panic, and the id surfaced in frames always matches `last_event_id`.
//! - The test kit's own reader (what every test client parses with, written apart from this codec
//!   on purpose) frames any stream exactly as the parser does, so the two never disagree about
//!   what crossed the proxy.

use proptest::prelude::*;
use ssekeeper_sidecar::sse::{Event, Frame, SseParser, encode_comment, encode_event, encode_frame};

const UNBOUNDED: usize = usize::MAX / 4;

fn parse_chunks<'a>(
    max: usize,
    chunks: impl IntoIterator<Item = &'a [u8]>,
) -> (Vec<Frame>, String) {
    let mut parser = SseParser::new(max);
    let mut frames = Vec::new();
    for chunk in chunks {
        parser.push(chunk, &mut frames);
    }
    parser.finish(&mut frames);
    (frames, parser.last_event_id().to_string())
}

/// What the test kit's reader makes of the same chunks, in this codec's types.
fn kit_chunks<'a>(max: usize, chunks: impl IntoIterator<Item = &'a [u8]>) -> (Vec<Frame>, String) {
    use ssekeeper_testkit::sse;
    let mut parser = sse::Parser::new(max);
    let mut frames = Vec::new();
    for chunk in chunks {
        parser.push(chunk, &mut frames);
    }
    parser.finish();
    let frames = frames
        .into_iter()
        .map(|f| match f {
            sse::Frame::Event(e) => Frame::Event(Event {
                id: e.id,
                event: e.event,
                data: e.data,
            }),
            sse::Frame::Retry(ms) => Frame::Retry(ms),
            sse::Frame::Comment(c) => Frame::Comment(c),
            sse::Frame::SetId(id) => Frame::SetId(id),
            sse::Frame::Oversized => Frame::Oversized,
        })
        .collect();
    (frames, parser.last_event_id().to_string())
}

/// Cut `input` at the given offsets (taken modulo its length, in any order).
fn split_at_points<'a>(input: &'a [u8], points: &[usize]) -> Vec<&'a [u8]> {
    let mut cuts: Vec<usize> = points
        .iter()
        .map(|p| {
            if input.is_empty() {
                0
            } else {
                p % (input.len() + 1)
            }
        })
        .collect();
    cuts.push(0);
    cuts.push(input.len());
    cuts.sort_unstable();
    cuts.windows(2).map(|w| &input[w[0]..w[1]]).collect()
}

/// The spec's algorithm written as plainly as possible, for comparison.
fn reference(input: &[u8]) -> (Vec<Frame>, String) {
    let input = input.strip_prefix(b"\xEF\xBB\xBF").unwrap_or(input);
    let text = String::from_utf8_lossy(input);
    let mut lines = Vec::new();
    let mut rest = &text[..];
    while let Some(at) = rest.find(['\r', '\n']) {
        lines.push(&rest[..at]);
        let skip = if rest[at..].starts_with("\r\n") { 2 } else { 1 };
        rest = &rest[at + skip..];
    }

    let mut frames = Vec::new();
    let (mut data, mut event_type, mut id_buffer, mut last_event_id) =
        (String::new(), String::new(), String::new(), String::new());
    // Which fields this block had: the API reports them, the spec does not need them.
    let (mut block_event, mut block_id) = (false, false);
    for line in lines {
        if line.is_empty() {
            last_event_id = id_buffer.clone();
            if data.is_empty() {
                if block_id {
                    frames.push(Frame::SetId(id_buffer.clone()));
                }
            } else {
                data.pop();
                frames.push(Frame::Event(Event {
                    id: block_id.then(|| id_buffer.clone()),
                    event: block_event.then(|| event_type.clone()),
                    data: std::mem::take(&mut data),
                }));
            }
            data.clear();
            event_type.clear();
            (block_event, block_id) = (false, false);
            continue;
        }
        if let Some(comment) = line.strip_prefix(':') {
            frames.push(Frame::Comment(comment.to_string()));
            continue;
        }
        let (field, value) = match line.split_once(':') {
            Some((field, value)) => (field, value.strip_prefix(' ').unwrap_or(value)),
            None => (line, ""),
        };
        match field {
            "event" => {
                event_type = value.to_string();
                block_event = true;
            }
            "data" => {
                data.push_str(value);
                data.push('\n');
            }
            "id" if !value.contains('\0') => {
                id_buffer = value.to_string();
                block_id = true;
            }
            "retry" if !value.is_empty() && value.bytes().all(|b| b.is_ascii_digit()) => {
                if let Ok(millis) = value.parse() {
                    frames.push(Frame::Retry(millis));
                }
            }
            _ => {}
        }
    }
    (frames, last_event_id)
}

/// Bytes that look like an event stream often enough to reach every rule.
fn sse_bytes() -> impl Strategy<Value = Vec<u8>> {
    const TOKENS: &[&[u8]] = &[
        b"data",
        b"data:",
        b"data: ",
        b"id",
        b"id: ",
        b"event: ",
        b"retry: ",
        b"retry:",
        b":",
        b" ",
        b"\r",
        b"\n",
        b"\r\n",
        b"\n\n",
        b"x",
        b"yz",
        b"12",
        b"0",
        b"\0",
        b"\xC3\xA9",
        b"\xE2\x82\xAC",
        b"\xF0\x9F\x98\x80",
        b"\xEF\xBB\xBF",
        b"\xFF",
        b"\xC3",
        b"\xE2\x82",
        b"\x80",
        b"\xED\xA0\x80",
    ];
    prop::collection::vec(
        prop_oneof![
            4 => prop::sample::select(TOKENS).prop_map(<[u8]>::to_vec),
            1 => any::<u8>().prop_map(|b| vec![b]),
        ],
        0..120,
    )
    .prop_map(|tokens| tokens.concat())
}

/// Text a parser can put in a field that holds no line break (ids also hold no NUL).
fn line_text(nul: bool) -> impl Strategy<Value = String> {
    let pattern = if nul {
        "[^\r\n]{0,12}"
    } else {
        "[^\r\n\0]{0,12}"
    };
    prop_oneof![pattern, "[ :a-c\u{e9}\u{feff}]{0,6}"]
}

fn event_strategy() -> impl Strategy<Value = Event> {
    (
        proptest::option::of(line_text(false)),
        proptest::option::of(line_text(true)),
        prop_oneof!["[^\r]{0,40}", "[\n a:]{0,8}"],
    )
        .prop_map(|(id, event, data)| Event { id, event, data })
}

fn frame_strategy() -> impl Strategy<Value = Frame> {
    prop_oneof![
        4 => event_strategy().prop_map(Frame::Event),
        1 => any::<u64>().prop_map(Frame::Retry),
        1 => line_text(true).prop_map(Frame::Comment),
        1 => line_text(false).prop_map(Frame::SetId),
    ]
}

/// The browser's last event id after each frame, folded from the frames alone.
fn fold_last_id(frames: &[Frame]) -> String {
    let mut current = String::new();
    for frame in frames {
        match frame {
            Frame::Event(Event { id: Some(id), .. }) | Frame::SetId(id) => current.clone_from(id),
            _ => {}
        }
    }
    current
}

/// The test kit's malformed stream (`/testing/malformed`) reads as its hand-written expectation.
#[test]
fn the_codec_reads_the_malformed_stream_as_written_out_by_hand() {
    use ssekeeper_testkit::app::testing::{MALFORMED_CHUNKS, MALFORMED_EXPECTED};
    let (frames, last_event_id) = parse_chunks(1024, MALFORMED_CHUNKS.iter().copied());
    let events: Vec<(Option<&str>, &str)> = frames
        .iter()
        .filter_map(|f| match f {
            Frame::Event(e) => Some((e.event.as_deref(), e.data.as_str())),
            _ => None,
        })
        .collect();
    assert_eq!(events, MALFORMED_EXPECTED);
    // The id containing NUL was ignored, so the last id is still the first event's.
    assert_eq!(last_event_id, "m1");
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(512))]

    #[test]
    fn the_test_clients_reader_agrees_with_the_parser(
        input in prop_oneof![sse_bytes(), prop::collection::vec(any::<u8>(), 0..300)],
        points in prop::collection::vec(any::<usize>(), 0..8),
        max in prop_oneof![0usize..48, Just(UNBOUNDED)],
    ) {
        let chunks = split_at_points(&input, &points);
        prop_assert_eq!(
            kit_chunks(max, chunks.iter().copied()),
            parse_chunks(max, chunks.iter().copied())
        );
    }

    #[test]
    fn agrees_with_the_spec_transcription(input in sse_bytes()) {
        prop_assert_eq!(parse_chunks(UNBOUNDED, [&input[..]]), reference(&input));
    }

    #[test]
    fn chunking_does_not_matter(
        input in sse_bytes(),
        points in prop::collection::vec(any::<usize>(), 0..8),
        max in prop_oneof![0usize..48, Just(UNBOUNDED)],
    ) {
        let whole = parse_chunks(max, [&input[..]]);
        prop_assert_eq!(&parse_chunks(max, split_at_points(&input, &points)), &whole);
        prop_assert_eq!(&parse_chunks(max, input.chunks(1)), &whole);
    }

    #[test]
    fn encoded_frames_parse_back(frames in prop::collection::vec(frame_strategy(), 0..12)) {
        let mut encoded = Vec::new();
        for frame in &frames {
            encode_frame(frame, &mut encoded);
        }
        let (parsed, last_event_id) = parse_chunks(UNBOUNDED, [&encoded[..]]);
        prop_assert_eq!(&parsed, &frames);
        prop_assert_eq!(last_event_id, fold_last_id(&frames));
    }

    #[test]
    fn data_with_cr_reads_back_as_a_browser_would(
        data in "[a\r\n]{0,12}",
        wire_id in proptest::option::of("[^\r\n\0]{0,8}"),
    ) {
        let event = Event { id: None, event: None, data: data.clone() };
        let mut encoded = Vec::new();
        encode_event(&event, wire_id.as_deref(), &mut encoded);
        let (parsed, _) = parse_chunks(UNBOUNDED, [&encoded[..]]);
        let normalised = data.replace("\r\n", "\n").replace('\r', "\n");
        prop_assert_eq!(parsed, vec![Frame::Event(Event { id: wire_id, event: None, data: normalised })]);
    }

    #[test]
    fn nothing_an_encoder_is_given_injects_a_field(
        id in "\\PC{0,10}|[\r\n\0a:]{0,10}",
        kind in "\\PC{0,10}|[\r\na:]{0,10}",
        data in "\\PC{0,20}|[\r\na:]{0,20}",
        comment in "\\PC{0,10}|[\r\na:]{0,10}",
    ) {
        let event = Event { id: None, event: Some(kind), data };
        let mut encoded = Vec::new();
        encode_comment(&comment, &mut encoded);
        encode_event(&event, Some(&id), &mut encoded);
        let (parsed, _) = parse_chunks(UNBOUNDED, [&encoded[..]]);
        // Comments first (one per comment line), then exactly one event and nothing else.
        let events: Vec<&Frame> = parsed.iter().filter(|f| !matches!(f, Frame::Comment(_))).collect();
        prop_assert_eq!(events.len(), 1);
        prop_assert!(matches!(parsed.last(), Some(Frame::Event(_))));
    }

    #[test]
    fn arbitrary_bytes_never_panic_and_ids_stay_consistent(
        input in prop::collection::vec(any::<u8>(), 0..600),
        points in prop::collection::vec(any::<usize>(), 0..8),
        max in 0usize..300,
    ) {
        let (frames, last_event_id) = parse_chunks(max, split_at_points(&input, &points));
        prop_assert_eq!(fold_last_id(&frames), last_event_id);
        for frame in &frames {
            if let Frame::Event(event) = frame {
                let kept = event.data.len()
                    + event.id.as_ref().map_or(0, String::len)
                    + event.event.as_ref().map_or(0, String::len);
                prop_assert!(kept <= max, "event of {} bytes passed a bound of {}", kept, max);
            }
        }
    }
}
