//! Golden files for the SSE parser: every `testdata/sse/<case>.sse` (raw stream bytes) must parse
//! to `testdata/sse/<case>.expected` (one JSON line per frame, then the last event id).
//!
//! Each case is parsed whole, byte by byte and split in two at every offset; all must agree, so
//! the golden files also pin down chunk-boundary behaviour. Every parsed case is also re-encoded
//! and parsed again to check the encoder. `UPDATE_GOLDEN=1` rewrites the expected files (review the
//! diff before committing).

use std::fs;
use std::path::{Path, PathBuf};

use ssekeeper_sidecar::sse::{Frame, SseParser, encode_frame};

/// The event bound the golden cases are written for (the oversized cases exceed it).
const MAX_EVENT_BYTES: usize = 256;

fn case_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("testdata/sse")
}

fn parse_chunks<'a>(chunks: impl IntoIterator<Item = &'a [u8]>) -> (Vec<Frame>, String) {
    let mut parser = SseParser::new(MAX_EVENT_BYTES);
    let mut frames = Vec::new();
    for chunk in chunks {
        parser.push(chunk, &mut frames);
    }
    parser.finish(&mut frames);
    (frames, parser.last_event_id().to_string())
}

fn json(text: &str) -> String {
    serde_json::to_string(text).expect("a string always serialises")
}

/// One line per frame, fields in a fixed order, absent options left out.
fn render(frames: &[Frame], last_event_id: &str) -> String {
    let mut lines = String::new();
    for frame in frames {
        let line = match frame {
            Frame::Event(event) => {
                let mut line = String::from(r#"{"frame":"event""#);
                if let Some(id) = &event.id {
                    line.push_str(&format!(r#","id":{}"#, json(id)));
                }
                if let Some(kind) = &event.event {
                    line.push_str(&format!(r#","event":{}"#, json(kind)));
                }
                line.push_str(&format!(r#","data":{}}}"#, json(&event.data)));
                line
            }
            Frame::Retry(millis) => format!(r#"{{"frame":"retry","millis":{millis}}}"#),
            Frame::Comment(text) => format!(r#"{{"frame":"comment","text":{}}}"#, json(text)),
            Frame::SetId(id) => format!(r#"{{"frame":"set_id","id":{}}}"#, json(id)),
            Frame::Oversized => r#"{"frame":"oversized"}"#.to_string(),
        };
        lines.push_str(&line);
        lines.push('\n');
    }
    lines.push_str(&format!(r#"{{"last_event_id":{}}}"#, json(last_event_id)));
    lines.push('\n');
    lines
}

/// Everything the golden file does not show: chunking independence and the encoder round trip.
fn check_consistency(case: &str, input: &[u8], frames: &[Frame], last_event_id: &str) {
    let bytewise = parse_chunks(input.chunks(1));
    assert_eq!(
        (frames, last_event_id),
        (&bytewise.0[..], &bytewise.1[..]),
        "{case}: 1-byte chunks differ"
    );
    for split in 1..input.len() {
        let (head, tail) = input.split_at(split);
        let halves = parse_chunks([head, tail]);
        assert_eq!(
            (frames, last_event_id),
            (&halves.0[..], &halves.1[..]),
            "{case}: split at {split} differs"
        );
    }
    let kept: Vec<Frame> = frames
        .iter()
        .filter(|frame| **frame != Frame::Oversized)
        .cloned()
        .collect();
    let mut encoded = Vec::new();
    for frame in &kept {
        encode_frame(frame, &mut encoded);
    }
    let reparsed = parse_chunks([&encoded[..]]);
    assert_eq!(reparsed.0, kept, "{case}: re-encoded frames differ");
    assert_eq!(
        reparsed.1, last_event_id,
        "{case}: re-encoded last id differs"
    );
}

#[test]
fn golden_cases() {
    let update = std::env::var_os("UPDATE_GOLDEN").is_some_and(|v| v == "1");
    let dir = case_dir();
    let mut cases: Vec<String> = fs::read_dir(&dir)
        .expect("testdata/sse exists")
        .map(|entry| entry.expect("readable dir entry").path())
        .filter(|path| path.extension().is_some_and(|ext| ext == "sse"))
        .map(|path| path.file_stem().unwrap().to_string_lossy().into_owned())
        .collect();
    cases.sort();
    assert!(cases.len() >= 30, "golden cases went missing: {cases:?}");

    let mut failures = Vec::new();
    for case in &cases {
        let input = fs::read(dir.join(format!("{case}.sse"))).expect("readable case");
        let (frames, last_event_id) = parse_chunks([&input[..]]);
        check_consistency(case, &input, &frames, &last_event_id);
        let rendered = render(&frames, &last_event_id);
        let expected_path = dir.join(format!("{case}.expected"));
        if update {
            fs::write(&expected_path, &rendered).expect("writable expected file");
            continue;
        }
        match fs::read_to_string(&expected_path) {
            Ok(expected) if expected == rendered => {}
            Ok(expected) => failures.push(format!(
                "{case}: frames differ\n--- expected\n{expected}--- actual\n{rendered}"
            )),
            Err(err) => failures.push(format!("{case}: no expected file ({err})")),
        }
    }

    // An expected file without its input would silently stop being checked.
    for entry in fs::read_dir(&dir).expect("testdata/sse exists") {
        let path = entry.expect("readable dir entry").path();
        if path.extension().is_some_and(|ext| ext == "expected")
            && !path.with_extension("sse").exists()
        {
            failures.push(format!("{}: no matching .sse input", path.display()));
        }
    }
    println!("{} golden SSE cases checked", cases.len());
    assert!(
        failures.is_empty(),
        "{} golden failures (UPDATE_GOLDEN=1 rewrites):\n{}",
        failures.len(),
        failures.join("\n")
    );
}
