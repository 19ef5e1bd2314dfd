//! The SSE parser on arbitrary bytes, split into arbitrary chunks: it never panics, never yields
//! an event over its bound, and reading the same bytes in one chunk or in many yields the same
//! frames (the parser is incremental).
#![no_main]

use libfuzzer_sys::fuzz_target;
use ssekeeper_sidecar::sse::{Frame, SseParser};

const BOUND: usize = 256;

fuzz_target!(|input: &[u8]| {
    let Some((&split, bytes)) = input.split_first() else {
        return;
    };
    let whole = parse(bytes, &[bytes.len()]);
    let step = usize::from(split % 17) + 1;
    let sizes: Vec<usize> = (0..bytes.len()).step_by(step).map(|_| step).collect();
    let chunked = parse(bytes, &sizes);
    assert_eq!(format!("{whole:?}"), format!("{chunked:?}"));
    for f in &whole {
        if let Frame::Event(e) = f {
            assert!(e.data.len() <= BOUND, "an event over the bound was yielded");
        }
    }
});

fn parse(bytes: &[u8], sizes: &[usize]) -> Vec<Frame> {
    let mut parser = SseParser::new(BOUND);
    let mut out = Vec::new();
    let mut rest = bytes;
    for &n in sizes {
        let (chunk, tail) = rest.split_at(n.min(rest.len()));
        parser.push(chunk, &mut out);
        rest = tail;
    }
    parser.push(rest, &mut out);
    parser.finish(&mut out);
    out
}
