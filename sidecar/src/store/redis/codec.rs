//! The stored form of entries and leases, and the parsing of Redis replies into them.
//!
//! Pure functions over [`::redis::Value`] so every malformed shape is unit-tested without a
//! server. Stream entries use compact one-letter fields (they are stored up to `historyLimit`
//! times per session): `k` kind (`e` event, `r` retry, `x` end, `h` handover), `i` app id,
//! `e` event type, `d` data, `r` retry millis. An entry's stream id is `<seq>-0`.

use std::borrow::Cow;
use std::net::SocketAddr;

use ::redis::Value;

use crate::store::{Entry, Epoch, Lease, LeaseState, Recorded, Seq, StoreError, StoreResult};

/// Field/value pairs of one stream entry, in the order written (borrowed where possible: data
/// can be large and is copied once more into the command anyway).
pub(crate) fn encode(entry: &Entry) -> Vec<(&'static str, Cow<'_, [u8]>)> {
    let b = |s: &'static [u8]| Cow::Borrowed(s);
    match entry {
        Entry::Event {
            app_id,
            event,
            data,
        } => {
            let mut f = vec![("k", b(b"e"))];
            if let Some(i) = app_id {
                f.push(("i", Cow::Borrowed(i.as_bytes())));
            }
            if let Some(e) = event {
                f.push(("e", Cow::Borrowed(e.as_bytes())));
            }
            f.push(("d", Cow::Borrowed(data.as_bytes())));
            f
        }
        Entry::Retry(ms) => vec![
            ("k", b(b"r")),
            ("r", Cow::Owned(ms.to_string().into_bytes())),
        ],
        Entry::End => vec![("k", b(b"x"))],
        Entry::Handover => vec![("k", b(b"h"))],
    }
}

/// The stream id of a seq.
pub(crate) fn stream_id(seq: Seq) -> String {
    format!("{seq}-0")
}

fn malformed(msg: impl Into<String>) -> StoreError {
    StoreError::Malformed(msg.into())
}

fn bytes(v: &Value) -> Option<&[u8]> {
    match v {
        Value::BulkString(b) => Some(b),
        Value::SimpleString(s) => Some(s.as_bytes()),
        Value::VerbatimString { text, .. } => Some(text.as_bytes()),
        _ => None,
    }
}

fn text(v: &Value, what: &str) -> StoreResult<String> {
    let b = bytes(v).ok_or_else(|| malformed(format!("{what}: expected a string")))?;
    String::from_utf8(b.to_vec()).map_err(|_| malformed(format!("{what}: not UTF-8")))
}

/// Parses `<seq>-0`.
pub(crate) fn parse_id(id: &str) -> StoreResult<Seq> {
    let bad = || malformed(format!("stream id {id:?} is not <seq>-0"));
    let (seq, n) = id.split_once('-').ok_or_else(bad)?;
    if n != "0" {
        return Err(bad());
    }
    seq.parse::<Seq>().ok().filter(|s| *s > 0).ok_or_else(bad)
}

/// The items of an array-like reply (RESP2 arrays, RESP3 sets), `None` for nil.
fn items(v: &Value) -> StoreResult<Option<&[Value]>> {
    match v {
        Value::Nil => Ok(None),
        Value::Array(a) | Value::Set(a) => Ok(Some(a)),
        _ => Err(malformed("expected an array reply")),
    }
}

/// Field/value pairs of an entry body (a flat array, or a RESP3 map).
fn pairs(v: &Value) -> StoreResult<Vec<(&Value, &Value)>> {
    match v {
        Value::Array(a) if a.len() % 2 == 0 => Ok(a.chunks(2).map(|c| (&c[0], &c[1])).collect()),
        Value::Map(m) => Ok(m.iter().map(|(k, v)| (k, v)).collect()),
        _ => Err(malformed("entry fields: expected field/value pairs")),
    }
}

/// One `[id, [field, value, …]]` stream entry.
pub(crate) fn parse_entry(v: &Value) -> StoreResult<Recorded> {
    let parts = items(v)?.ok_or_else(|| malformed("nil stream entry"))?;
    let [id, body] = parts else {
        return Err(malformed("stream entry: expected [id, fields]"));
    };
    let seq = parse_id(&text(id, "stream id")?)?;
    let (mut k, mut i, mut e, mut d, mut r) = (None, None, None, None, None);
    for (f, val) in pairs(body)? {
        let slot = match bytes(f) {
            Some(b"k") => &mut k,
            Some(b"i") => &mut i,
            Some(b"e") => &mut e,
            Some(b"d") => &mut d,
            Some(b"r") => &mut r,
            _ => return Err(malformed(format!("entry {seq}: unknown field"))),
        };
        *slot = Some(val);
    }
    let field = |v: Option<&Value>, name: &str| -> StoreResult<Option<String>> {
        v.map(|v| text(v, &format!("entry {seq} field {name}")))
            .transpose()
    };
    let entry = match field(k, "k")?.as_deref() {
        Some("e") => Entry::Event {
            app_id: field(i, "i")?,
            event: field(e, "e")?,
            data: field(d, "d")?
                .ok_or_else(|| malformed(format!("entry {seq}: event without data")))?,
        },
        Some("r") => Entry::Retry(
            field(r, "r")?
                .and_then(|s| s.parse().ok())
                .ok_or_else(|| malformed(format!("entry {seq}: retry without a number")))?,
        ),
        Some("x") => Entry::End,
        Some("h") => Entry::Handover,
        _ => return Err(malformed(format!("entry {seq}: unknown kind"))),
    };
    Ok(Recorded { seq, entry })
}

/// An XRANGE/XREVRANGE reply.
pub(crate) fn parse_range(v: &Value) -> StoreResult<Vec<Recorded>> {
    items(v)?.unwrap_or(&[]).iter().map(parse_entry).collect()
}

/// An XREAD reply for one stream: nil on timeout, else `[[key, entries]]` (RESP2) or
/// `{key: entries}` (RESP3).
pub(crate) fn parse_xread(v: &Value) -> StoreResult<Vec<Recorded>> {
    match v {
        Value::Nil => Ok(Vec::new()),
        Value::Map(m) => match m.as_slice() {
            [] => Ok(Vec::new()),
            [(_, entries)] => parse_range(entries),
            _ => Err(malformed("XREAD: more than one stream in the reply")),
        },
        other => match items(other)?.unwrap_or(&[]) {
            [] => Ok(Vec::new()),
            [stream] => match items(stream)?.unwrap_or(&[]) {
                [_, entries] => parse_range(entries),
                _ => Err(malformed("XREAD: expected [key, entries]")),
            },
            _ => Err(malformed("XREAD: more than one stream in the reply")),
        },
    }
}

/// What the append/renew/release scripts answer.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Verdict {
    /// Done; for an append, whether the history cap cut into the time floor (third element).
    Ok {
        /// The append's trim removed entries the floor or a drain wanted.
        cut_into_floor: bool,
    },
    /// Another epoch owns the session (0: the session no longer exists).
    Fenced(Epoch),
    /// A stream id this version does not write (in the stream or in the batch).
    BadId(String),
}

/// `{status, detail[, cut]}`: 1 ok, 0 fenced (detail = current epoch), 2 a foreign id
/// (detail = it); an append's ok carries `cut` (1: the cap cut into the time floor).
pub(crate) fn parse_verdict(v: &Value) -> StoreResult<Verdict> {
    let parts = items(v)?.ok_or_else(|| malformed("script: nil reply"))?;
    let (status, detail, cut) = match parts {
        [status, detail] => (status, detail, None),
        [status, detail, cut] => (status, detail, Some(cut)),
        _ => return Err(malformed("script: expected {status, detail}")),
    };
    let num = |v: &Value| -> StoreResult<u64> {
        match v {
            Value::Int(i) if *i >= 0 => Ok(*i as u64),
            other => text(other, "script detail")?
                .parse()
                .map_err(|_| malformed("script detail: not a number")),
        }
    };
    match num(status)? {
        1 => Ok(Verdict::Ok {
            cut_into_floor: cut.map(num).transpose()? == Some(1),
        }),
        0 => Ok(Verdict::Fenced(num(detail)?)),
        2 => Ok(Verdict::BadId(text(detail, "stream id")?.to_string())),
        _ => Err(malformed("script: unknown status")),
    }
}

/// The `acquire_if` script's `{status, epoch}`: `Ok(new epoch)`, or `Err(current epoch)` when
/// another pod took the session first.
pub(crate) fn parse_conditional(v: &Value) -> StoreResult<Result<u64, u64>> {
    let parts = items(v)?.ok_or_else(|| malformed("script: nil reply"))?;
    let [status, detail] = parts else {
        return Err(malformed("script: expected {status, epoch}"));
    };
    let status: u64 = int_text(status, "script status")?;
    let epoch: u64 = int_text(detail, "script epoch")?;
    match status {
        1 => Ok(Ok(epoch)),
        0 => Ok(Err(epoch)),
        _ => Err(malformed("script: unknown status")),
    }
}

/// The lease script's `{now_ms, field, value, …}`: `None` when absent or expired by time.
pub(crate) fn parse_lease(v: &Value) -> StoreResult<Option<Lease>> {
    let parts = items(v)?.ok_or_else(|| malformed("lease: nil reply"))?;
    let (now, fields) = parts
        .split_first()
        .ok_or_else(|| malformed("lease: empty reply"))?;
    if fields.is_empty() {
        return Ok(None);
    }
    if fields.len() % 2 != 0 {
        return Err(malformed("lease: odd field list"));
    }
    let now: u64 = int_text(now, "lease clock")?;
    let (mut owner, mut addr, mut epoch, mut state, mut until) = (None, None, None, None, None);
    for c in fields.chunks(2) {
        let v = text(&c[1], "lease field")?;
        match bytes(&c[0]) {
            Some(b"owner") => owner = Some(v),
            Some(b"addr") => addr = Some(v),
            Some(b"epoch") => epoch = Some(v),
            Some(b"state") => state = Some(v),
            Some(b"until") => until = Some(v),
            _ => return Err(malformed("lease: unknown field")),
        }
    }
    let need =
        |v: Option<String>, name: &str| v.ok_or_else(|| malformed(format!("lease: no {name}")));
    let until: u64 = need(until, "until")?
        .parse()
        .map_err(|_| malformed("lease: until is not a number"))?;
    if until <= now {
        return Ok(None);
    }
    Ok(Some(Lease {
        owner: need(owner, "owner")?,
        addr: need(addr, "addr")?
            .parse::<SocketAddr>()
            .map_err(|_| malformed("lease: addr is not host:port"))?,
        epoch: need(epoch, "epoch")?
            .parse()
            .map_err(|_| malformed("lease: epoch is not a number"))?,
        state: match need(state, "state")?.as_str() {
            "live" => LeaseState::Live,
            "draining" => LeaseState::Draining,
            _ => return Err(malformed("lease: unknown state")),
        },
    }))
}

/// The stored word for a lease state.
pub(crate) fn state_word(s: LeaseState) -> &'static str {
    match s {
        LeaseState::Live => "live",
        LeaseState::Draining => "draining",
    }
}

fn int_text(v: &Value, what: &str) -> StoreResult<u64> {
    match v {
        Value::Int(i) if *i >= 0 => Ok(*i as u64),
        other => text(other, what)?
            .parse()
            .map_err(|_| malformed(format!("{what}: not a number"))),
    }
}

/// A GET reply holding an app id (nil when none was recorded).
pub(crate) fn parse_opt_text(v: &Value, what: &str) -> StoreResult<Option<String>> {
    match v {
        Value::Nil => Ok(None),
        other => text(other, what).map(Some),
    }
}

/// An integer reply (INCR, UNLINK counts).
pub(crate) fn parse_int(v: &Value, what: &str) -> StoreResult<u64> {
    int_text(v, what)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn bs(s: &str) -> Value {
        Value::BulkString(s.as_bytes().to_vec())
    }

    fn entry(id: &str, fields: &[&str]) -> Value {
        Value::Array(vec![
            bs(id),
            Value::Array(fields.iter().map(|f| bs(f)).collect()),
        ])
    }

    #[test]
    fn every_entry_kind_round_trips_through_its_fields() {
        let cases = [
            Entry::Event {
                app_id: Some("a-7".into()),
                event: Some("tick".into()),
                data: "line1\nline2".into(),
            },
            Entry::Event {
                app_id: None,
                event: None,
                data: String::new(),
            },
            Entry::Retry(2500),
            Entry::End,
            Entry::Handover,
        ];
        for (n, e) in cases.into_iter().enumerate() {
            let seq = n as u64 + 1;
            let mut flat = Vec::new();
            for (f, v) in encode(&e) {
                flat.push(bs(f));
                flat.push(Value::BulkString(v.to_vec()));
            }
            let v = Value::Array(vec![bs(&stream_id(seq)), Value::Array(flat)]);
            assert_eq!(parse_entry(&v).unwrap(), Recorded { seq, entry: e });
        }
    }

    #[test]
    fn foreign_or_corrupt_entries_are_malformed_not_panics() {
        for v in [
            entry("5-1", &["k", "x"]),
            entry("abc", &["k", "x"]),
            entry("0-0", &["k", "x"]),
            entry("5-0", &["k", "q"]),
            entry("5-0", &["k"]),
            entry("5-0", &["z", "1"]),
            entry("5-0", &["k", "e"]),
            entry("5-0", &["k", "r", "r", "soon"]),
            Value::Array(vec![bs("5-0")]),
            Value::Int(3),
            Value::Array(vec![
                bs("5-0"),
                Value::Array(vec![bs("k"), Value::BulkString(vec![0xff])]),
            ]),
        ] {
            assert!(
                matches!(parse_entry(&v), Err(StoreError::Malformed(_))),
                "{v:?}"
            );
        }
    }

    #[test]
    fn xread_replies_in_resp2_and_resp3_shapes() {
        let e = entry("3-0", &["k", "x"]);
        let want = vec![Recorded {
            seq: 3,
            entry: Entry::End,
        }];
        let resp2 = Value::Array(vec![Value::Array(vec![
            bs("key"),
            Value::Array(vec![e.clone()]),
        ])]);
        let resp3 = Value::Map(vec![(bs("key"), Value::Array(vec![e]))]);
        assert_eq!(parse_xread(&resp2).unwrap(), want);
        assert_eq!(parse_xread(&resp3).unwrap(), want);
        assert_eq!(parse_xread(&Value::Nil).unwrap(), vec![]);
    }

    #[test]
    fn verdicts_and_leases() {
        let v = |a: Value, b: Value| Value::Array(vec![a, b]);
        assert_eq!(
            parse_verdict(&v(Value::Int(1), bs("4"))).unwrap(),
            Verdict::Ok {
                cut_into_floor: false
            }
        );
        let cut = Value::Array(vec![Value::Int(1), bs("4"), Value::Int(1)]);
        assert_eq!(
            parse_verdict(&cut).unwrap(),
            Verdict::Ok {
                cut_into_floor: true
            }
        );
        assert_eq!(
            parse_verdict(&v(Value::Int(0), bs("9"))).unwrap(),
            Verdict::Fenced(9)
        );
        assert_eq!(
            parse_verdict(&v(Value::Int(2), bs("12-0"))).unwrap(),
            Verdict::BadId("12-0".into())
        );
        assert!(parse_verdict(&v(Value::Int(7), bs("1"))).is_err());

        let lease = |until: &str, state: &str| {
            Value::Array(
                [
                    "owner",
                    "pod-a",
                    "addr",
                    "10.0.0.1:8801",
                    "epoch",
                    "3",
                    "state",
                    state,
                    "until",
                    until,
                ]
                .iter()
                .map(|s| bs(s))
                .fold(vec![Value::Int(1000)], |mut a, x| {
                    a.push(x);
                    a
                }),
            )
        };
        let l = parse_lease(&lease("1500", "draining")).unwrap().unwrap();
        assert_eq!(
            (l.owner.as_str(), l.epoch, l.state),
            ("pod-a", 3, LeaseState::Draining)
        );
        assert_eq!(
            parse_lease(&lease("1000", "live")).unwrap(),
            None,
            "expired by time"
        );
        assert_eq!(
            parse_lease(&Value::Array(vec![Value::Int(5)])).unwrap(),
            None,
            "absent"
        );
        assert!(parse_lease(&lease("1500", "asleep")).is_err());
    }
}
