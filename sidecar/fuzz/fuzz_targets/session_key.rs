//! Session keys come from client requests (query, header, cookie) and from the app's `endpoint`
//! event: extraction never panics on any input, and a key found is never empty.
#![no_main]

use http::header::{COOKIE, HeaderMap, HeaderValue};
use libfuzzer_sys::fuzz_target;
use ssekeeper_sidecar::contract::SessionKeySource;
use ssekeeper_sidecar::session_key;

fuzz_target!(|input: &[u8]| {
    let Ok(text) = std::str::from_utf8(input) else {
        return;
    };
    let sources = [
        SessionKeySource::Query("sessionId".into()),
        SessionKeySource::Header("mcp-session-id".into()),
        SessionKeySource::Cookie("sid".into()),
    ];
    let mut headers = HeaderMap::new();
    if let Ok(v) = HeaderValue::from_str(text) {
        headers.insert("mcp-session-id", v.clone());
        headers.insert(COOKIE, v);
    }
    let query = text.split_once('?').map(|(_, q)| q).or(Some(text));
    for key in [
        session_key::from_request(query, &headers, &sources),
        session_key::from_request(query, &HeaderMap::new(), &sources[..1]),
        session_key::from_request(None, &headers, &sources[2..]),
        session_key::from_endpoint_data(text, &sources),
    ]
    .into_iter()
    .flatten()
    {
        assert!(!key.is_empty());
    }
});
