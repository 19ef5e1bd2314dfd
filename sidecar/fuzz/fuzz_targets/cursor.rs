//! `Last-Event-ID` values are client input: parsing never panics, and a cursor that parses
//! displays back as the same text and parses again to itself.
#![no_main]

use libfuzzer_sys::fuzz_target;
use ssekeeper_sidecar::cursor::Cursor;

fuzz_target!(|input: &[u8]| {
    let Ok(text) = std::str::from_utf8(input) else {
        return;
    };
    if let Ok(cursor) = Cursor::parse(text) {
        let shown = cursor.to_string();
        assert_eq!(Cursor::parse(&shown).ok(), Some(cursor));
    }
});
