//! Which Redis deployment a URL names, validated before anything connects.
//!
//! One string (a Secret's value) must say single node, Sentinel or Cluster, with TLS and auth, so
//! the operator's CRD can stay a single `secretRef`. Accepted forms:
//!
//! | form | meaning |
//! |---|---|
//! | `redis://[[user]:pass@]host[:port][/db]` | single node (port 6379) |
//! | `rediss://…` | the same over TLS (server certificate verified against the system roots) |
//! | `redis+sentinel://[[user]:pass@]s1[:port][,s2[:port]…]/<master>[/<db>][?sentinel_username=U&sentinel_password=P]` | Sentinel (port 26379); `user:pass` authenticate to the master, the query to the sentinels |
//! | `rediss+sentinel://…` | Sentinel with TLS to the sentinels and to the master |
//! | `redis+cluster://[[user]:pass@]h1[:port][,h2[:port]…]` | Cluster seed nodes (port 6379) |
//! | `rediss+cluster://…` | Cluster over TLS |
//! | `redis://h1:p1,redis://h2:p2` or `redis://[auth@]h1:p1,h2:p2` | also Cluster (a comma list) |
//!
//! Credentials must be percent-encoded. Errors never repeat the URL (it may hold a password).

use std::fmt;

use ::redis::IntoConnectionInfo;

const DEFAULT_PORT: u16 = 6379;
const DEFAULT_SENTINEL_PORT: u16 = 26379;

/// A Redis deployment to connect to, every node URL already checked by the redis client's parser.
#[derive(Clone, PartialEq, Eq)]
pub enum RedisTarget {
    /// One server (`redis://` or `rediss://`), reconnected to by address.
    Single {
        /// The URL as given.
        url: String,
    },
    /// A master found through Sentinel, re-resolved on failover.
    Sentinel {
        /// `redis[s]://[auth@]host:port` of each sentinel.
        sentinels: Vec<String>,
        /// The monitored master's name.
        master: String,
        /// TLS to the sentinels and the master.
        tls: bool,
        /// `redis[s]://[auth@]sentinel-resolved/<db>`: the master's auth and database, as a URL
        /// the redis parser reads (its host is a placeholder).
        master_template: String,
    },
    /// Cluster seed nodes; the client discovers the rest.
    Cluster {
        /// `redis[s]://[auth@]host:port` of each seed.
        nodes: Vec<String>,
    },
}

impl fmt::Debug for RedisTarget {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // Never print credentials: show only the shape.
        match self {
            Self::Single { .. } => f.write_str("RedisTarget::Single"),
            Self::Sentinel {
                sentinels, master, ..
            } => write!(
                f,
                "RedisTarget::Sentinel {{ sentinels: {}, master: {master:?} }}",
                sentinels.len()
            ),
            Self::Cluster { nodes } => {
                write!(f, "RedisTarget::Cluster {{ seeds: {} }}", nodes.len())
            }
        }
    }
}

/// A Redis URL that cannot be used; the message says what to fix without echoing secrets.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid Redis URL: {0}")]
pub struct UrlError(String);

fn err(msg: impl Into<String>) -> UrlError {
    UrlError(msg.into())
}

/// Splits and checks a Redis URL; see the module docs for the forms.
pub fn parse(url: &str) -> Result<RedisTarget, UrlError> {
    let url = url.trim();
    if url.is_empty() {
        return Err(err("empty"));
    }
    let (scheme, rest) = url.split_once("://").ok_or_else(|| {
        err("no scheme: expected redis://, rediss://, redis+sentinel:// or redis+cluster://")
    })?;
    match scheme {
        "redis" | "rediss" if url.contains(',') => parse_cluster_list(scheme, rest),
        "redis" | "rediss" => {
            check_node(url)?;
            Ok(RedisTarget::Single {
                url: url.to_string(),
            })
        }
        "redis+sentinel" | "rediss+sentinel" => parse_sentinel(scheme == "rediss+sentinel", rest),
        "redis+cluster" | "rediss+cluster" => {
            let tls = scheme == "rediss+cluster";
            let parts = split_multi(rest)?;
            if !matches!(parts.path, "" | "/" | "/0") {
                return Err(err(
                    "a cluster URL takes no path (Redis Cluster has only database 0)",
                ));
            }
            if parts.query.is_some() {
                return Err(err("a cluster URL takes no query parameters"));
            }
            cluster(tls, parts.auth, &parts.hosts)
        }
        other => Err(err(format!(
            "unknown scheme {other:?}: expected redis, rediss, redis+sentinel, rediss+sentinel, \
             redis+cluster or rediss+cluster"
        ))),
    }
}

/// `redis://a:1,redis://b:2` (full URLs) or `redis://[auth@]a:1,b:2` (one authority, many hosts).
fn parse_cluster_list(scheme: &str, rest: &str) -> Result<RedisTarget, UrlError> {
    let items: Vec<&str> = rest.split(',').collect();
    if items[1..].iter().any(|i| i.contains("://")) {
        let full = std::iter::once(format!("{scheme}://{}", items[0]))
            .chain(items[1..].iter().map(|s| s.trim().to_string()))
            .collect::<Vec<_>>();
        for u in &full {
            let (s, _) = u.split_once("://").unwrap_or(("", ""));
            if s != scheme {
                return Err(err(
                    "a comma-separated cluster list must use one scheme throughout",
                ));
            }
            check_node(u)?;
        }
        return Ok(RedisTarget::Cluster { nodes: full });
    }
    let parts = split_multi(rest)?;
    if !matches!(parts.path, "" | "/" | "/0") || parts.query.is_some() {
        return Err(err(
            "a comma-separated cluster list takes no database or query (use redis+cluster://)",
        ));
    }
    cluster(scheme == "rediss", parts.auth, &parts.hosts)
}

fn cluster(tls: bool, auth: Option<&str>, hosts: &[&str]) -> Result<RedisTarget, UrlError> {
    let scheme = if tls { "rediss" } else { "redis" };
    let nodes = hosts
        .iter()
        .map(|h| node_url(scheme, auth, h, DEFAULT_PORT, ""))
        .collect::<Result<Vec<_>, _>>()?;
    Ok(RedisTarget::Cluster { nodes })
}

fn parse_sentinel(tls: bool, rest: &str) -> Result<RedisTarget, UrlError> {
    let scheme = if tls { "rediss" } else { "redis" };
    let parts = split_multi(rest)?;
    let mut path = parts.path.trim_start_matches('/').split('/');
    let master = path.next().unwrap_or("");
    if master.is_empty() {
        return Err(err(
            "a sentinel URL needs the master name as its path: redis+sentinel://host:26379/mymaster",
        ));
    }
    let db = match path.next() {
        None | Some("") => 0,
        Some(d) => d
            .parse::<i64>()
            .ok()
            .filter(|d| *d >= 0)
            .ok_or_else(|| err("the database after the master name must be a number"))?,
    };
    if path.next().is_some() {
        return Err(err("a sentinel URL path is /<master>[/<db>]"));
    }
    let (mut s_user, mut s_pass) = (None, None);
    for kv in parts
        .query
        .unwrap_or("")
        .split('&')
        .filter(|s| !s.is_empty())
    {
        match kv.split_once('=') {
            Some(("sentinel_username", v)) => s_user = Some(v),
            Some(("sentinel_password", v)) => s_pass = Some(v),
            _ => {
                return Err(err(
                    "unknown query parameter in a sentinel URL (accepted: sentinel_username, \
                     sentinel_password)",
                ));
            }
        }
    }
    let sentinel_auth = match (s_user, s_pass) {
        (None, None) => None,
        (u, p) => Some(format!("{}:{}", u.unwrap_or(""), p.unwrap_or(""))),
    };
    let sentinels = parts
        .hosts
        .iter()
        .map(|h| {
            node_url(
                scheme,
                sentinel_auth.as_deref(),
                h,
                DEFAULT_SENTINEL_PORT,
                "",
            )
        })
        .collect::<Result<Vec<_>, _>>()?;
    let master_template = node_url(
        scheme,
        parts.auth,
        "sentinel-resolved",
        DEFAULT_PORT,
        &format!("/{db}"),
    )?;
    Ok(RedisTarget::Sentinel {
        sentinels,
        master: master.to_string(),
        tls,
        master_template,
    })
}

struct MultiParts<'a> {
    auth: Option<&'a str>,
    hosts: Vec<&'a str>,
    path: &'a str,
    query: Option<&'a str>,
}

/// `[auth@]h1[:p],h2[:p][/path][?query]` (no fragment: nothing in these forms uses one).
fn split_multi(rest: &str) -> Result<MultiParts<'_>, UrlError> {
    if rest.contains('#') {
        return Err(err(
            "fragments (#…) are not supported in sentinel or cluster URLs",
        ));
    }
    let (before_query, query) = match rest.split_once('?') {
        Some((b, q)) => (b, Some(q)),
        None => (rest, None),
    };
    // The authority ends at the first '/' after the last '@' (a password must percent-encode '/').
    let at = before_query.rfind('@');
    let slash = before_query[at.map_or(0, |i| i + 1)..]
        .find('/')
        .map(|i| i + at.map_or(0, |i| i + 1));
    let (authority, path) = match slash {
        Some(i) => (&before_query[..i], &before_query[i..]),
        None => (before_query, ""),
    };
    let (auth, hostlist) = match authority.rsplit_once('@') {
        Some((a, h)) => (Some(a), h),
        None => (None, authority),
    };
    let hosts: Vec<&str> = hostlist.split(',').map(str::trim).collect();
    if hosts.iter().any(|h| h.is_empty()) {
        return Err(err("empty host in the host list"));
    }
    Ok(MultiParts {
        auth,
        hosts,
        path,
        query,
    })
}

/// Builds `scheme://[auth@]host:port<path>` and checks it with the redis client's own parser.
fn node_url(
    scheme: &str,
    auth: Option<&str>,
    host: &str,
    default_port: u16,
    path: &str,
) -> Result<String, UrlError> {
    let has_port = if let Some(stripped) = host.strip_prefix('[') {
        let close = stripped
            .find(']')
            .ok_or_else(|| err("unclosed '[' in an IPv6 host"))?;
        let after = &stripped[close + 1..];
        if !(after.is_empty() || after.starts_with(':')) {
            return Err(err("unexpected text after an IPv6 host"));
        }
        !after.is_empty()
    } else {
        host.contains(':')
    };
    if has_port {
        let port = host.rsplit_once(':').map(|(_, p)| p).unwrap_or("");
        if port.parse::<u16>().ok().filter(|p| *p > 0).is_none() {
            return Err(err("a port in the host list is not a number in 1..65535"));
        }
    }
    let auth = auth.map(|a| format!("{a}@")).unwrap_or_default();
    let url = if has_port {
        format!("{scheme}://{auth}{host}{path}")
    } else {
        format!("{scheme}://{auth}{host}:{default_port}{path}")
    };
    check_node(&url)?;
    Ok(url)
}

fn check_node(url: &str) -> Result<(), UrlError> {
    url.into_connection_info()
        .map(|_| ())
        // The redis parser's messages do not include the URL, so they are safe to pass on.
        .map_err(|e| err(format!("{e}")))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn single_node_urls_pass_through() {
        for u in [
            "redis://127.0.0.1:6379",
            "redis://h",
            "rediss://user:p%40ss@redis.example:6380/2",
            "redis://:secret@h:1/0",
        ] {
            assert_eq!(
                parse(u).unwrap(),
                RedisTarget::Single { url: u.into() },
                "{u}"
            );
        }
    }

    #[test]
    fn sentinel_urls_name_sentinels_master_db_and_both_auths() {
        let t = parse(
            "rediss+sentinel://app:pw@s1,s2:5000,[::1]/mymaster/3?sentinel_username=su&sentinel_password=sp",
        )
        .unwrap();
        assert_eq!(
            t,
            RedisTarget::Sentinel {
                sentinels: vec![
                    "rediss://su:sp@s1:26379".into(),
                    "rediss://su:sp@s2:5000".into(),
                    "rediss://su:sp@[::1]:26379".into()
                ],
                master: "mymaster".into(),
                tls: true,
                master_template: "rediss://app:pw@sentinel-resolved:6379/3".into(),
            }
        );
        let t = parse("redis+sentinel://s1/m").unwrap();
        assert_eq!(
            t,
            RedisTarget::Sentinel {
                sentinels: vec!["redis://s1:26379".into()],
                master: "m".into(),
                tls: false,
                master_template: "redis://sentinel-resolved:6379/0".into(),
            }
        );
    }

    #[test]
    fn cluster_urls_in_all_three_spellings() {
        let want = RedisTarget::Cluster {
            nodes: vec!["redis://:pw@a:7000".into(), "redis://:pw@b:6379".into()],
        };
        assert_eq!(parse("redis+cluster://:pw@a:7000,b").unwrap(), want);
        assert_eq!(parse("redis://:pw@a:7000,b").unwrap(), want);
        assert_eq!(
            parse("redis://:pw@a:7000,redis://:pw@b:6379").unwrap(),
            want
        );
        assert_eq!(
            parse("rediss+cluster://a:1").unwrap(),
            RedisTarget::Cluster {
                nodes: vec!["rediss://a:1".into()]
            }
        );
    }

    #[test]
    fn bad_urls_say_why_and_never_echo_the_password() {
        for (u, needle) in [
            ("", "empty"),
            ("localhost:6379", "no scheme"),
            ("http://h", "unknown scheme"),
            ("redis+sentinel://u:hunter2@s1", "master name"),
            ("redis+sentinel://u:hunter2@s1/m/x", "number"),
            ("redis+sentinel://u:hunter2@s1/m?foo=1", "unknown query"),
            ("redis+cluster://u:hunter2@a,,b", "empty host"),
            ("redis+cluster://u:hunter2@a:99999", "port"),
            ("redis+cluster://u:hunter2@a/1", "no path"),
            ("redis://u:hunter2@a:1,rediss://b:2", "one scheme"),
        ] {
            let e = parse(u).unwrap_err().to_string();
            assert!(e.contains(needle), "{u:?} -> {e}");
            assert!(!e.contains("hunter2"), "{u:?} leaked the password: {e}");
        }
        let dbg = format!("{:?}", parse("redis://:hunter2@h").unwrap());
        assert!(!dbg.contains("hunter2"), "{dbg}");
    }
}
