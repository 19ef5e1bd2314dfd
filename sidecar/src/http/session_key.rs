//! Finding a request's session key, and learning keys from the app's answers.
//!
//! Routing needs to know which session a request belongs to without understanding the app: the
//! operator configures where keys live (`query:`, `header:`, `cookie:`; first match wins). Keys are
//! learned from what the app hands out, through the same configured names: an SSE `endpoint` event
//! whose data is a URL carrying the query key (MCP's SSE transport), a response header (MCP
//! Streamable HTTP's `Mcp-Session-Id`), or a `Set-Cookie` of the cookie key.

use http::header::{self, HeaderMap};

use crate::contract::SessionKeySource;

/// The first configured key present in a request, as the raw (decoded) value.
pub fn from_request(
    query: Option<&str>,
    headers: &HeaderMap,
    sources: &[SessionKeySource],
) -> Option<String> {
    sources.iter().find_map(|source| match source {
        SessionKeySource::Query(name) => query.and_then(|q| query_param(q, name)),
        SessionKeySource::Header(name) => header_value(headers, name),
        SessionKeySource::Cookie(name) => headers
            .get_all(header::COOKIE)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .find_map(|v| cookie_value(v, name)),
    })
}

/// A non-empty, trimmed header value (request or response side alike).
fn header_value(headers: &HeaderMap, name: &str) -> Option<String> {
    headers
        .get(name)
        .and_then(|v| v.to_str().ok())
        .map(str::trim)
        .filter(|v| !v.is_empty())
        .map(str::to_string)
}

/// A key the app handed out in a response head: a configured header, or a configured cookie set.
pub fn from_response(headers: &HeaderMap, sources: &[SessionKeySource]) -> Option<String> {
    sources.iter().find_map(|source| match source {
        SessionKeySource::Header(name) => header_value(headers, name),
        SessionKeySource::Cookie(name) => headers
            .get_all(header::SET_COOKIE)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .find_map(|v| {
                let first = v.split(';').next()?;
                let (k, val) = first.split_once('=')?;
                (k.trim() == name && !val.trim().is_empty()).then(|| val.trim().to_string())
            }),
        SessionKeySource::Query(_) => None,
    })
}

/// A key in the data of an MCP `endpoint` event (`/messages?sessionId=...`, possibly absolute).
pub fn from_endpoint_data(data: &str, sources: &[SessionKeySource]) -> Option<String> {
    let query = data.split_once('?')?.1;
    let query = query.split('#').next().unwrap_or(query);
    sources.iter().find_map(|source| match source {
        SessionKeySource::Query(name) => query_param(query, name),
        _ => None,
    })
}

/// The longest name [`unmatched_session_name`] reports (a metric label).
const MAX_REPORTED_NAME: usize = 40;

/// A query parameter or header of a request that looks like a session key (its name contains
/// `session`, case-insensitive) while no configured source matched: the first such name,
/// lowercased and cut to a label's length. It tells a user why a client's requests are not
/// routed (e.g. a client sending `session_id` when only `sessionId` is configured).
pub fn unmatched_session_name(query: Option<&str>, headers: &HeaderMap) -> Option<String> {
    let looks = |name: &str| name.to_ascii_lowercase().contains("session");
    let from_query = query.and_then(|q| {
        q.split('&')
            .filter_map(|pair| pair.split('=').next())
            .find(|k| looks(k))
            .map(|k| format!("query:{k}"))
    });
    from_query
        .or_else(|| {
            headers
                .keys()
                .find(|k| looks(k.as_str()))
                .map(|k| format!("header:{}", k.as_str()))
        })
        .map(|n| {
            n.chars()
                .filter(|c| c.is_ascii_alphanumeric() || matches!(c, ':' | '-' | '_' | '.'))
                .take(MAX_REPORTED_NAME)
                .collect::<String>()
                .to_ascii_lowercase()
        })
}

/// Whether any configured source is a query parameter (only then are endpoint events inspected).
pub fn has_query_source(sources: &[SessionKeySource]) -> bool {
    sources
        .iter()
        .any(|s| matches!(s, SessionKeySource::Query(_)))
}

/// The decoded value of the first non-empty `name=` parameter of a query string.
fn query_param(query: &str, name: &str) -> Option<String> {
    query.split('&').find_map(|pair| {
        let (k, v) = pair.split_once('=')?;
        (percent_decode(k)? == name)
            .then(|| percent_decode(v))
            .flatten()
            .filter(|v| !v.is_empty())
    })
}

fn cookie_value(header: &str, name: &str) -> Option<String> {
    header.split(';').find_map(|pair| {
        let (k, v) = pair.split_once('=')?;
        let v = v.trim().trim_matches('"');
        (k.trim() == name && !v.is_empty()).then(|| v.to_string())
    })
}

/// `application/x-www-form-urlencoded` decoding; `None` for malformed escapes or non-UTF-8.
fn percent_decode(text: &str) -> Option<String> {
    let bytes = text.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'%' => {
                let hex = bytes.get(i + 1..i + 3)?;
                let hex = std::str::from_utf8(hex).ok()?;
                out.push(u8::from_str_radix(hex, 16).ok()?);
                i += 3;
            }
            b'+' => {
                out.push(b' ');
                i += 1;
            }
            b => {
                out.push(b);
                i += 1;
            }
        }
    }
    String::from_utf8(out).ok()
}

#[cfg(test)]
mod tests {
    use super::*;
    use http::HeaderValue;

    fn sources() -> Vec<SessionKeySource> {
        ["query:sessionId", "header:Mcp-Session-Id", "cookie:sid"]
            .iter()
            .map(|s| s.parse().unwrap())
            .collect()
    }

    #[test]
    fn first_configured_source_wins() {
        let mut h = HeaderMap::new();
        h.insert("mcp-session-id", HeaderValue::from_static("hdr"));
        h.insert("cookie", HeaderValue::from_static("a=1; sid=\"ck\""));
        assert_eq!(
            from_request(Some("x=1&sessionId=q%2D1"), &h, &sources()).as_deref(),
            Some("q-1")
        );
        assert_eq!(
            from_request(Some("sessionId="), &h, &sources()).as_deref(),
            Some("hdr")
        );
        h.remove("mcp-session-id");
        assert_eq!(from_request(None, &h, &sources()).as_deref(), Some("ck"));
        assert_eq!(
            from_request(Some("%zz=1"), &HeaderMap::new(), &sources()),
            None
        );
    }

    #[test]
    fn a_session_looking_key_no_rule_matched_is_named() {
        let mut h = HeaderMap::new();
        assert_eq!(
            unmatched_session_name(Some("a=1&session_id=x"), &h).as_deref(),
            Some("query:session_id")
        );
        assert_eq!(unmatched_session_name(Some("room=1"), &h), None);
        h.insert("x-session-token", HeaderValue::from_static("t"));
        assert_eq!(
            unmatched_session_name(None, &h).as_deref(),
            Some("header:x-session-token")
        );
        let long = format!("{}Session<>=1", "a".repeat(60));
        let name = unmatched_session_name(Some(&long), &HeaderMap::new()).unwrap();
        assert_eq!(name.len(), MAX_REPORTED_NAME);
        assert!(name.chars().all(|c| c.is_ascii_lowercase() || c == ':'));
    }

    #[test]
    fn keys_are_learned_from_responses_and_endpoint_events() {
        let mut h = HeaderMap::new();
        h.insert(
            "set-cookie",
            HeaderValue::from_static("sid=abc; Path=/; HttpOnly"),
        );
        assert_eq!(from_response(&h, &sources()).as_deref(), Some("abc"));
        h.insert("mcp-session-id", HeaderValue::from_static("m-1"));
        assert_eq!(from_response(&h, &sources()).as_deref(), Some("m-1"));
        assert_eq!(
            from_endpoint_data("/messages?sessionId=0b9f-11", &sources()).as_deref(),
            Some("0b9f-11")
        );
        assert_eq!(
            from_endpoint_data("http://h:1/m?a=b&sessionId=x#frag", &sources()).as_deref(),
            Some("x")
        );
        assert_eq!(from_endpoint_data("/messages", &sources()), None);
        assert!(has_query_source(&sources()));
    }
}
