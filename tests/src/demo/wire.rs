//! The app's own SSE writer.
//!
//! Deliberately independent of the sidecar's codec: the app stands for third-party code, and a
//! shared encoder would hide a codec bug on both sides of the proxy at once.

use bytes::Bytes;

/// One event block: optional `id:` and `event:` lines, one `data:` line per line of `data`, and
/// the blank line that dispatches it.
pub fn event(id: Option<&str>, event: Option<&str>, data: &str) -> Bytes {
    let mut out = String::with_capacity(data.len() + 48);
    if let Some(id) = id {
        out.push_str("id: ");
        out.push_str(id);
        out.push('\n');
    }
    if let Some(event) = event {
        out.push_str("event: ");
        out.push_str(event);
        out.push('\n');
    }
    for line in data.split('\n') {
        out.push_str("data: ");
        out.push_str(line);
        out.push('\n');
    }
    out.push('\n');
    Bytes::from(out)
}

/// The terminal event of every finite stream, so a client knows not to reconnect.
pub const DONE_EVENT: &str = "done";

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn multi_line_data_becomes_several_data_lines() {
        let b = event(Some("7"), Some("message"), "a\nb");
        assert_eq!(&b[..], b"id: 7\nevent: message\ndata: a\ndata: b\n\n");
        assert_eq!(&event(None, None, "")[..], b"data: \n\n");
    }
}
