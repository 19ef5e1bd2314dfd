//! Rebalancing's shared state: the one Redis key where every sidecar of an SseService publishes
//! how many streams it holds, and the format of its entries.
//!
//! The sidecars read it to compute their fair share; the operator reads the same key to show the
//! spread (`kubectl describe ssesvc`) without asking any pod. Both sides parse entries with
//! [`PodStreams::parse`] and judge staleness with [`is_stale`], so they cannot disagree on which
//! pods count.
//!
//! Layout: one hash, [`stream_counts_key`] = `ssekeeper:<namespace>/<name>:rebalance:streams`
//! (under the service prefix, so the finalizer's purge removes it; no hash tag: it is one key).
//! Field: the pod's name (`POD_NAME`). Value: `v1 <at_ms> <total> <resumable> <state>`, where
//! `at_ms` is the *Redis server's* clock (`TIME`, milliseconds since the epoch) when the entry
//! was written — the pods' clocks never enter it, so skew between nodes cannot make a live pod
//! look stale — `total` all client streams open on the pod, `resumable` those of them the pod
//! may shed, and `state` one of [`PodState`]. An entry older than [`stale_after_ms`] of the
//! interval is ignored and deleted by the next writer; the hash itself expires
//! ([`key_ttl_ms`]) once no pod writes any more.

use std::fmt;

use crate::keys::service_prefix;

/// Suffix of the stream-count hash under the service prefix.
pub const STREAM_COUNTS_SUFFIX: &str = "rebalance:streams";

/// Version tag at the start of every value: a later format gets another tag, and readers skip
/// values they do not know instead of misreading them.
pub const VALUE_VERSION: &str = "v1";

/// The hash where the pods of the SseService `namespace/name` publish their stream counts.
pub fn stream_counts_key(namespace: &str, name: &str) -> String {
    format!("{}{STREAM_COUNTS_SUFFIX}", service_prefix(namespace, name))
}

/// Intervals a pod may miss before its entry is stale: one missed write (a slow store call, a
/// busy node) must not make a live pod vanish from the fair share, three in a row means gone.
pub const STALE_INTERVALS: u64 = 3;

/// Milliseconds after which an entry written every `interval_seconds` is stale.
pub fn stale_after_ms(interval_seconds: u32) -> u64 {
    STALE_INTERVALS * 1000 * u64::from(interval_seconds.max(1))
}

/// Milliseconds the whole hash outlives its last write: twice the staleness bound, so a reader
/// finds stale entries to clean rather than a key that blinked out.
pub fn key_ttl_ms(interval_seconds: u32) -> u64 {
    2 * stale_after_ms(interval_seconds)
}

/// Whether an entry written at `at_ms` is stale at `now_ms` (both Redis server time).
pub fn is_stale(at_ms: u64, now_ms: u64, stale_ms: u64) -> bool {
    now_ms.saturating_sub(at_ms) > stale_ms
}

/// What a pod says about itself, which decides how the others count it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PodState {
    /// Ready: the load balancer sends it new streams; it counts in the fair share.
    Serving,
    /// Not ready (its app is down): it receives no new streams, so it is left out of the fair
    /// share, but nothing is in flux because of it.
    Unready,
    /// preStop or SIGTERM: its streams are moving to the others right now. Pods do not shed
    /// while a peer drains (the set is changing anyway, and shedding would add reconnects).
    Draining,
}

impl PodState {
    /// The word in the value.
    pub fn as_str(self) -> &'static str {
        match self {
            PodState::Serving => "serving",
            PodState::Unready => "unready",
            PodState::Draining => "draining",
        }
    }

    /// The state a word names.
    pub fn parse(s: &str) -> Option<Self> {
        match s {
            "serving" => Some(PodState::Serving),
            "unready" => Some(PodState::Unready),
            "draining" => Some(PodState::Draining),
            _ => None,
        }
    }
}

/// One pod's entry in the hash.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PodStreams {
    /// When it was written (Redis server time, ms since the epoch).
    pub at_ms: u64,
    /// Client streams open on the pod, every kind.
    pub total: u32,
    /// Of them, resumable streams (the only ones rebalancing moves).
    pub resumable: u32,
    /// How the pod counts.
    pub state: PodState,
}

impl PodStreams {
    /// Parse a value (`v1 <at_ms> <total> <resumable> <state>`); `None` for anything else,
    /// including values of a later version.
    pub fn parse(value: &str) -> Option<Self> {
        let mut it = value.split(' ');
        if it.next()? != VALUE_VERSION {
            return None;
        }
        let at_ms = it.next()?.parse().ok()?;
        let total = it.next()?.parse().ok()?;
        let resumable: u32 = it.next()?.parse().ok()?;
        let state = PodState::parse(it.next()?)?;
        if it.next().is_some() || resumable > total {
            return None;
        }
        Some(PodStreams {
            at_ms,
            total,
            resumable,
            state,
        })
    }
}

impl fmt::Display for PodStreams {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{VALUE_VERSION} {} {} {} {}",
            self.at_ms,
            self.total,
            self.resumable,
            self.state.as_str()
        )
    }
}

/// Why `--rebalance` cannot run with these settings.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum InvalidRebalance {
    /// Rebalancing needs the shared store: the counts live there, and a shed stream is resumed
    /// on another pod from the store.
    #[error(
        "--rebalance needs --store=redis: the pods share their stream counts in Redis, and a shed stream resumes on another pod only from the shared store"
    )]
    NeedsRedis,
}

/// Check the rebalancing flags against the rest (clap checks each value's range).
pub fn validate_rebalance(enabled: bool, store: crate::StoreKind) -> Result<(), InvalidRebalance> {
    if enabled && store != crate::StoreKind::Redis {
        return Err(InvalidRebalance::NeedsRedis);
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_key_sits_under_the_service_prefix() {
        let k = stream_counts_key("ns", "chat");
        assert_eq!(k, "ssekeeper:ns/chat:rebalance:streams");
        assert!(k.starts_with(&service_prefix("ns", "chat")));
        assert!(!k.contains('{'), "one key, no hash tag");
    }

    #[test]
    fn values_round_trip_and_garbage_is_skipped() {
        let p = PodStreams {
            at_ms: 1_764_600_000_123,
            total: 312,
            resumable: 300,
            state: PodState::Serving,
        };
        assert_eq!(p.to_string(), "v1 1764600000123 312 300 serving");
        assert_eq!(PodStreams::parse(&p.to_string()), Some(p));
        for s in [PodState::Serving, PodState::Unready, PodState::Draining] {
            assert_eq!(PodState::parse(s.as_str()), Some(s));
        }
        for bad in [
            "",
            "v2 1 2 1 serving",
            "v1 1 2 1",
            "v1 1 2 1 sleeping",
            "v1 x 2 1 serving",
            "v1 1 2 3 serving",
            "v1 1 2 1 serving extra",
        ] {
            assert_eq!(PodStreams::parse(bad), None, "{bad:?}");
        }
    }

    #[test]
    fn staleness_is_three_intervals_and_the_key_outlives_it() {
        assert_eq!(stale_after_ms(5), 15_000);
        assert_eq!(stale_after_ms(0), 3_000, "an interval of at least 1 s");
        assert_eq!(key_ttl_ms(5), 30_000);
        assert!(!is_stale(1_000, 16_000, 15_000));
        assert!(is_stale(1_000, 16_001, 15_000));
        assert!(
            !is_stale(2_000, 1_000, 15_000),
            "a clock step back is not stale"
        );
    }

    #[test]
    fn rebalancing_needs_redis() {
        use crate::StoreKind;
        assert_eq!(validate_rebalance(false, StoreKind::Memory), Ok(()));
        assert_eq!(validate_rebalance(true, StoreKind::Redis), Ok(()));
        let e = validate_rebalance(true, StoreKind::Memory).unwrap_err();
        assert!(e.to_string().contains("--store=redis"), "{e}");
    }
}
