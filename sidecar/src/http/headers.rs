//! Header rules of a well-behaved reverse proxy, as pure functions over `HeaderMap`s.
//!
//! RFC 9110 §7.6.1: hop-by-hop headers (and every header named in `Connection`) describe one
//! connection and must not be forwarded; `X-Forwarded-For` tells the app who the client was.

use std::net::IpAddr;

use http::header::{self, HeaderMap, HeaderName, HeaderValue};

/// Headers that are always hop-by-hop.
const HOP_BY_HOP: [HeaderName; 8] = [
    header::CONNECTION,
    HeaderName::from_static("keep-alive"),
    header::PROXY_AUTHENTICATE,
    header::PROXY_AUTHORIZATION,
    header::TE,
    header::TRAILER,
    header::TRANSFER_ENCODING,
    header::UPGRADE,
];

/// The `Last-Event-ID` request header an EventSource sends on reconnect.
pub const LAST_EVENT_ID: HeaderName = HeaderName::from_static("last-event-id");
/// The `Last-Event-ID` a request carries, as the text the EventSource sent. The spec lets an id be
/// any UTF-8 without NUL, CR or LF (browsers send it as UTF-8 bytes), so it is read as UTF-8
/// rather than as visible ASCII, which would drop an id such as `…`.
pub fn last_event_id(headers: &HeaderMap) -> Option<&str> {
    std::str::from_utf8(headers.get(LAST_EVENT_ID)?.as_bytes()).ok()
}

/// A `Last-Event-ID` header value for `id` (UTF-8 bytes, as a browser sends it); `None` for an
/// id no header can carry (a control character).
pub fn last_event_id_value(id: &str) -> Option<HeaderValue> {
    HeaderValue::from_bytes(id.as_bytes()).ok()
}

/// `X-Forwarded-For`.
pub const X_FORWARDED_FOR: HeaderName = HeaderName::from_static("x-forwarded-for");

/// Remove hop-by-hop headers, including those the `Connection` header names.
pub fn strip_hop_by_hop(headers: &mut HeaderMap) {
    let named: Vec<HeaderName> = headers
        .get_all(header::CONNECTION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .filter_map(|name| HeaderName::from_bytes(name.trim().as_bytes()).ok())
        .collect();
    for name in named.iter().chain(HOP_BY_HOP.iter()) {
        headers.remove(name);
    }
}

/// Whether a message carries a transfer coding other than `chunked` (e.g. `gzip, chunked`): the
/// sidecar neither applies nor removes codings, and passing the header's meaning on without the
/// header (it is hop-by-hop) would hand the other side bytes it cannot read.
pub fn has_foreign_transfer_coding(headers: &HeaderMap) -> bool {
    headers
        .get_all(header::TRANSFER_ENCODING)
        .iter()
        .flat_map(|v| v.to_str().unwrap_or("?").split(','))
        .map(str::trim)
        .any(|c| !c.is_empty() && !c.eq_ignore_ascii_case("chunked"))
}

/// Whether a request carries a body (a length above 0, or chunks).
pub fn has_body(headers: &HeaderMap) -> bool {
    headers.contains_key(header::TRANSFER_ENCODING)
        || headers
            .get(header::CONTENT_LENGTH)
            .and_then(|v| v.to_str().ok())
            .is_some_and(|v| v.trim() != "0")
}

/// Append the client's address to `X-Forwarded-For` (comma-joined with what earlier proxies set).
pub fn append_forwarded_for(headers: &mut HeaderMap, client: IpAddr) {
    let joined = match headers.get(&X_FORWARDED_FOR).and_then(|v| v.to_str().ok()) {
        Some(prior) if !prior.trim().is_empty() => format!("{prior}, {client}"),
        _ => client.to_string(),
    };
    headers.remove(&X_FORWARDED_FOR);
    if let Ok(value) = HeaderValue::from_str(&joined) {
        headers.insert(X_FORWARDED_FOR, value);
    }
}

/// Whether a response is an SSE stream (`text/event-stream`, parameters allowed, any case).
pub fn is_event_stream(headers: &HeaderMap) -> bool {
    headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .map(|v| {
            v.split(';')
                .next()
                .unwrap_or("")
                .trim()
                .eq_ignore_ascii_case("text/event-stream")
        })
        .unwrap_or(false)
}

/// Whether a request asks for an SSE stream (`Accept` names `text/event-stream`), so a request
/// for an unknown session may open one here instead of being refused.
pub fn accepts_event_stream(headers: &HeaderMap) -> bool {
    headers
        .get_all(header::ACCEPT)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .any(|item| {
            item.split(';')
                .next()
                .unwrap_or("")
                .trim()
                .eq_ignore_ascii_case("text/event-stream")
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn transfer_codings_other_than_chunked_are_foreign() {
        let te = |v: &str| map(&[("transfer-encoding", v)]);
        assert!(!has_foreign_transfer_coding(&HeaderMap::new()));
        assert!(!has_foreign_transfer_coding(&te("chunked")));
        assert!(!has_foreign_transfer_coding(&te("Chunked")));
        assert!(has_foreign_transfer_coding(&te("gzip, chunked")));
        assert!(has_foreign_transfer_coding(&te("deflate")));
        assert!(has_body(&te("chunked")));
        assert!(has_body(&map(&[("content-length", "3")])));
        assert!(!has_body(&map(&[("content-length", "0")])));
        assert!(!has_body(&HeaderMap::new()));
    }

    #[test]
    fn a_last_event_id_is_utf8_both_ways() {
        let v = last_event_id_value("évé…42").expect("UTF-8 is a valid header value");
        let mut h = HeaderMap::new();
        h.insert(LAST_EVENT_ID, v);
        assert_eq!(last_event_id(&h), Some("évé…42"));
        assert!(
            last_event_id_value("a\nb").is_none(),
            "no header can carry a newline"
        );
    }

    fn map(pairs: &[(&str, &str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (k, v) in pairs {
            h.append(
                HeaderName::from_bytes(k.as_bytes()).unwrap(),
                HeaderValue::from_str(v).unwrap(),
            );
        }
        h
    }

    #[test]
    fn hop_by_hop_and_connection_named_headers_are_removed() {
        let mut h = map(&[
            ("connection", "keep-alive, X-Secret"),
            ("keep-alive", "timeout=5"),
            ("x-secret", "1"),
            ("transfer-encoding", "chunked"),
            ("upgrade", "websocket"),
            ("te", "trailers"),
            ("content-type", "text/plain"),
            ("x-keep", "yes"),
        ]);
        strip_hop_by_hop(&mut h);
        let left: Vec<_> = h.keys().map(|k| k.as_str().to_string()).collect();
        assert_eq!(left, vec!["content-type", "x-keep"]);
    }

    #[test]
    fn forwarded_for_appends() {
        let mut h = HeaderMap::new();
        append_forwarded_for(&mut h, "10.1.2.3".parse().unwrap());
        assert_eq!(h[&X_FORWARDED_FOR], "10.1.2.3");
        append_forwarded_for(&mut h, "::1".parse().unwrap());
        assert_eq!(h[&X_FORWARDED_FOR], "10.1.2.3, ::1");
    }

    #[test]
    fn event_stream_detection() {
        assert!(is_event_stream(&map(&[(
            "content-type",
            "Text/Event-Stream; charset=utf-8"
        )])));
        assert!(!is_event_stream(&map(&[("content-type", "text/plain")])));
        assert!(!is_event_stream(&HeaderMap::new()));
        assert!(accepts_event_stream(&map(&[(
            "accept",
            "application/json, text/event-stream;q=0.9"
        )])));
        assert!(!accepts_event_stream(&map(&[("accept", "*/*")])));
    }
}
