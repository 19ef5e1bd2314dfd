//! Removing every key of one SseService, for the operator's finalizer.
//!
//! When an SseService is deleted its sessions must not linger until their TTL (they may hold user
//! data). The finalizer calls [`purge_service`] until it succeeds. Each call is bounded: `SCAN`
//! pages of [`PAGE`] keys, a per-command deadline and an overall one; a purge that runs out of time
//! answers `Unavailable` and the finalizer simply calls again (what was removed stays removed).
//! On Cluster every master is scanned (a `SCAN` only sees its own node's keys), and keys are
//! removed grouped by hash tag, since a multi-key `UNLINK` must stay in one slot.

use std::collections::BTreeMap;
use std::time::Duration;

use ::redis::cluster_async::ClusterConnection;
use ::redis::cluster_routing::{RoutingInfo, SingleNodeRoutingInfo};
use ::redis::{Value, cmd};
use futures::{StreamExt, TryStreamExt};
use tokio::time::Instant;

use super::conn::{AnyConn, Connector, Timeouts};
use super::url::{self, UrlError};
use crate::keys;

/// Keys asked for per `SCAN` call (a hint to the server, which bounds each call's work).
const PAGE: usize = 500;
/// Deadline of each command.
const CALL_TIMEOUT: Duration = Duration::from_secs(5);
/// Deadline of one whole purge call.
const PURGE_DEADLINE: Duration = Duration::from_secs(60);
/// `UNLINK`s in flight at once on Cluster.
const CLUSTER_CONCURRENCY: usize = 32;

/// Why a purge did not finish; every one but [`PurgeError::Url`] goes away by calling again.
#[derive(Debug, thiserror::Error)]
pub enum PurgeError {
    /// The URL is not one of the accepted forms (the message says which part).
    #[error(transparent)]
    Url(#[from] UrlError),
    /// The client refused the settings, or Redis answered with an error or not at all.
    #[error("{0}")]
    Redis(#[from] ::redis::RedisError),
    /// One command took longer than its deadline.
    #[error("purge: a command timed out after {} ms", after.as_millis())]
    TimedOut {
        /// The deadline it missed.
        after: Duration,
    },
    /// The whole purge ran out of time; what was removed stays removed.
    #[error("purge incomplete: removed {removed} keys before the deadline; call again")]
    Incomplete {
        /// Keys removed by this call.
        removed: u64,
    },
    /// A reply was not the shape the command answers with.
    #[error("{0}: unexpected reply")]
    Malformed(&'static str),
}

impl PurgeError {
    /// Label for an `errors_total{kind}`-style metric.
    pub fn kind(&self) -> &'static str {
        match self {
            Self::Url(_) => "url",
            Self::Redis(_) => "redis",
            Self::TimedOut { .. } => "timeout",
            Self::Incomplete { .. } => "incomplete",
            Self::Malformed(_) => "malformed",
        }
    }
}

type PurgeResult<T> = Result<T, PurgeError>;

/// Deletes every key of the SseService `namespace/name` and returns how many were deleted.
/// Idempotent; an error when Redis cannot be reached or the deadline passed first (call again),
/// or for an invalid URL (the message says which).
pub async fn purge_service(url: &str, namespace: &str, name: &str) -> PurgeResult<u64> {
    let target = url::parse(url)?;
    let connector = Connector::new(
        &target,
        Timeouts {
            op: CALL_TIMEOUT,
            max_block: Duration::ZERO,
        },
    )?;
    let pattern = format!("{}*", escape_glob(&keys::service_prefix(namespace, name)));
    let deadline = Instant::now() + PURGE_DEADLINE;
    let conn = within(deadline, connector.shared()).await?;
    match conn {
        AnyConn::Cluster(c) => purge_cluster(c, &pattern, deadline).await,
        other => purge_node(other, &pattern, deadline).await,
    }
}

/// `SCAN` + batched `UNLINK` on one server.
async fn purge_node(mut conn: AnyConn, pattern: &str, deadline: Instant) -> PurgeResult<u64> {
    let mut cursor = "0".to_string();
    let mut removed = 0;
    loop {
        let mut scan = cmd("SCAN");
        scan.arg(&cursor)
            .arg("MATCH")
            .arg(pattern)
            .arg("COUNT")
            .arg(PAGE);
        let (next, found) =
            parse_scan(&within(deadline, scan.query_async::<Value>(&mut conn)).await?)?;
        if !found.is_empty() {
            let mut unlink = cmd("UNLINK");
            unlink.arg(&found);
            removed +=
                parse_count(&within(deadline, unlink.query_async::<Value>(&mut conn)).await?)?;
        }
        if next == "0" {
            return Ok(removed);
        }
        cursor = next;
        check_deadline(deadline, removed)?;
    }
}

/// Scans every master the cluster client routes to and removes keys per hash tag.
async fn purge_cluster(
    mut conn: ClusterConnection,
    pattern: &str,
    deadline: Instant,
) -> PurgeResult<u64> {
    let slots = within(
        deadline,
        conn.route_command(
            cmd("CLUSTER").arg("SLOTS").clone(),
            RoutingInfo::SingleNode(SingleNodeRoutingInfo::Random),
        ),
    )
    .await?;
    let mut removed = 0;
    for (host, port) in parse_cluster_masters(&slots)? {
        let node = RoutingInfo::SingleNode(SingleNodeRoutingInfo::ByAddress {
            host: host.clone(),
            port,
        });
        let mut cursor = "0".to_string();
        loop {
            let mut scan = cmd("SCAN");
            scan.arg(&cursor)
                .arg("MATCH")
                .arg(pattern)
                .arg("COUNT")
                .arg(PAGE);
            let (next, found) =
                parse_scan(&within(deadline, conn.route_command(scan, node.clone())).await?)?;
            let mut groups: BTreeMap<String, Vec<String>> = BTreeMap::new();
            for k in found {
                groups.entry(hash_tag(&k).to_string()).or_default().push(k);
            }
            let counts: Vec<u64> = futures::stream::iter(groups.into_values())
                .map(|group| {
                    let mut conn = conn.clone();
                    async move {
                        let mut unlink = cmd("UNLINK");
                        unlink.arg(&group);
                        let v = within(deadline, unlink.query_async::<Value>(&mut conn)).await?;
                        parse_count(&v)
                    }
                })
                .buffer_unordered(CLUSTER_CONCURRENCY)
                .try_collect()
                .await?;
            removed += counts.iter().sum::<u64>();
            if next == "0" {
                break;
            }
            cursor = next;
            check_deadline(deadline, removed)?;
        }
    }
    Ok(removed)
}

async fn within<T>(
    deadline: Instant,
    fut: impl Future<Output = ::redis::RedisResult<T>>,
) -> PurgeResult<T> {
    let limit = deadline
        .saturating_duration_since(Instant::now())
        .min(CALL_TIMEOUT);
    match tokio::time::timeout(limit, fut).await {
        Ok(r) => Ok(r?),
        Err(_) => Err(PurgeError::TimedOut { after: limit }),
    }
}

fn check_deadline(deadline: Instant, removed: u64) -> PurgeResult<()> {
    if Instant::now() >= deadline {
        return Err(PurgeError::Incomplete { removed });
    }
    Ok(())
}

/// `SCAN`'s `[cursor, [key, …]]`.
fn parse_scan(v: &Value) -> PurgeResult<(String, Vec<String>)> {
    let bad = || PurgeError::Malformed("SCAN");
    let Value::Array(parts) = v else {
        return Err(bad());
    };
    let [cursor, keys] = parts.as_slice() else {
        return Err(bad());
    };
    let text = |v: &Value| match v {
        Value::BulkString(b) => String::from_utf8(b.clone()).map_err(|_| bad()),
        Value::SimpleString(s) => Ok(s.clone()),
        _ => Err(bad()),
    };
    let keys = match keys {
        Value::Array(k) | Value::Set(k) => k.iter().map(text).collect::<Result<_, _>>()?,
        _ => return Err(bad()),
    };
    Ok((text(cursor)?, keys))
}

/// The distinct `(host, port)` of every slot range's master in a `CLUSTER SLOTS` reply.
fn parse_cluster_masters(v: &Value) -> PurgeResult<Vec<(String, u16)>> {
    let bad = || PurgeError::Malformed("CLUSTER SLOTS");
    let Value::Array(ranges) = v else {
        return Err(bad());
    };
    let mut masters = Vec::new();
    for r in ranges {
        let Value::Array(parts) = r else {
            return Err(bad());
        };
        let Some(Value::Array(node)) = parts.get(2) else {
            return Err(bad());
        };
        let host = match node.first() {
            Some(Value::BulkString(b)) => String::from_utf8(b.clone()).map_err(|_| bad())?,
            Some(Value::SimpleString(s)) => s.clone(),
            _ => return Err(bad()),
        };
        let port = match node.get(1) {
            Some(Value::Int(p)) => u16::try_from(*p).map_err(|_| bad())?,
            _ => return Err(bad()),
        };
        if !masters.contains(&(host.clone(), port)) {
            masters.push((host, port));
        }
    }
    Ok(masters)
}

/// `UNLINK`'s count of removed keys.
fn parse_count(v: &Value) -> PurgeResult<u64> {
    match v {
        Value::Int(n) => u64::try_from(*n).map_err(|_| PurgeError::Malformed("UNLINK")),
        _ => Err(PurgeError::Malformed("UNLINK")),
    }
}

/// The `{tag}` Redis Cluster hashes (the whole key when there is none), as in the cluster spec.
fn hash_tag(key: &str) -> &str {
    if let Some(open) = key.find('{')
        && let Some(len) = key[open + 1..].find('}')
        && len > 0
    {
        return &key[open + 1..open + 1 + len];
    }
    key
}

/// Escapes glob metacharacters so the prefix matches literally (Kubernetes names contain none,
/// but this function is public and must never purge more than one service).
fn escape_glob(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        if matches!(c, '*' | '?' | '[' | ']' | '\\') {
            out.push('\\');
        }
        out.push(c);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hash_tags_follow_the_cluster_rules() {
        assert_eq!(hash_tag("ssekeeper:ns/a:{s1}:events"), "s1");
        assert_eq!(hash_tag("plain"), "plain");
        assert_eq!(hash_tag("a{}b{c}"), "a{}b{c}");
    }

    #[test]
    fn glob_metacharacters_are_escaped() {
        assert_eq!(escape_glob("ssekeeper:ns/a:"), "ssekeeper:ns/a:");
        assert_eq!(escape_glob("a*b?[c]\\"), "a\\*b\\?\\[c\\]\\\\");
    }

    #[test]
    fn scan_and_slots_replies_parse() {
        let bs = |s: &str| Value::BulkString(s.as_bytes().to_vec());
        let v = Value::Array(vec![bs("17"), Value::Array(vec![bs("k1"), bs("k2")])]);
        assert_eq!(
            parse_scan(&v).unwrap(),
            ("17".into(), vec!["k1".into(), "k2".into()])
        );
        assert!(parse_scan(&Value::Int(1)).is_err());
        let range = |a, b, port| {
            Value::Array(vec![
                Value::Int(a),
                Value::Int(b),
                Value::Array(vec![bs("127.0.0.1"), Value::Int(port), bs("id")]),
            ])
        };
        let v = Value::Array(vec![
            range(0, 10, 7000),
            range(11, 20, 7001),
            range(21, 30, 7000),
        ]);
        assert_eq!(
            parse_cluster_masters(&v).unwrap(),
            vec![("127.0.0.1".into(), 7000), ("127.0.0.1".into(), 7001)]
        );
    }
}
