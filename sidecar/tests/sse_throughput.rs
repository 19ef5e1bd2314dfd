//! Rough parser and encoder throughput, run by hand (no timed assertion: the machine is shared):
//!
//! `cargo test -p ssekeeper-sidecar --release --test sse_throughput -- --ignored --nocapture`
//!
//! It does check that every event came through intact, so it cannot pass by doing nothing.

use std::time::Instant;

use ssekeeper_sidecar::sse::{Event, Frame, SseParser, encode_event};

const EVENTS: usize = 32 * 1024;
const DATA_BYTES: usize = 1024;

/// A stream of 1 KiB events as a typical app writes them (`id`, `event`, one `data` line).
fn stream() -> Vec<u8> {
    let mut out = Vec::with_capacity(EVENTS * (DATA_BYTES + 48));
    for seq in 0..EVENTS {
        let event = Event {
            id: Some(seq.to_string()),
            event: Some("tick".into()),
            data: "x".repeat(DATA_BYTES),
        };
        encode_event(&event, event.id.as_deref(), &mut out);
    }
    out
}

fn parse(input: &[u8], chunk: usize) -> Vec<Frame> {
    let mut parser = SseParser::new(64 * 1024);
    let mut frames = Vec::with_capacity(EVENTS);
    for piece in input.chunks(chunk) {
        parser.push(piece, &mut frames);
    }
    parser.finish(&mut frames);
    frames
}

#[test]
#[ignore = "throughput figure, run by hand in release mode"]
fn parse_and_encode_throughput() {
    let input = stream();
    let mb = input.len() as f64 / 1e6;
    for chunk in [16 * 1024, 1024, 64] {
        let rounds = 5;
        parse(&input, chunk); // warm-up: page in the allocator's memory
        let start = Instant::now();
        let mut frames = Vec::new();
        for _ in 0..rounds {
            frames = parse(&input, chunk);
        }
        let secs = start.elapsed().as_secs_f64() / f64::from(rounds);
        assert_eq!(frames.len(), EVENTS);
        for (seq, frame) in frames.iter().enumerate() {
            let Frame::Event(event) = frame else {
                panic!("frame {seq} is not an event: {frame:?}")
            };
            assert_eq!(event.id.as_deref(), Some(seq.to_string().as_str()));
            assert_eq!(event.data.len(), DATA_BYTES);
        }
        println!(
            "parse: {EVENTS} events of {DATA_BYTES} B in {chunk} B chunks: {:.0} MB/s, {:.2} M events/s",
            mb / secs,
            EVENTS as f64 / secs / 1e6
        );
    }

    let frames = parse(&input, 16 * 1024);
    let start = Instant::now();
    let mut out = Vec::with_capacity(input.len() + EVENTS * 16);
    for frame in &frames {
        if let Frame::Event(event) = frame {
            encode_event(
                event,
                Some("0123456789abcdef0123456789abcdef.12345"),
                &mut out,
            );
        }
    }
    let secs = start.elapsed().as_secs_f64();
    assert!(out.len() > input.len());
    println!("encode: {:.0} MB/s", out.len() as f64 / 1e6 / secs);
}
