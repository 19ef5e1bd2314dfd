//! Whether an SseService's session store answers. The sidecars keep streaming through a Redis
//! outage (without recording or replay) and each says so on `/ready` and in `ssekeeper_store_up`;
//! this check puts the same fact on the SseService itself, as a condition `kubectl describe`
//! shows, by pinging the store with the URL the sidecars use.

use std::time::Duration;

use ssekeeper_contract::rebalance::{self, PodStreams};
use ssekeeper_contract::redis::conn::{Connector, Timeouts};
use ssekeeper_contract::redis::parse_url as parse;

/// What one ping of the session store said.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoreCheck {
    /// It answered `PING`.
    pub reachable: bool,
    /// What a person should know (the error when it did not answer).
    pub message: String,
    /// The streams per pod the sidecars published (rebalancing on), read with the ping.
    pub spread: Option<Spread>,
}

/// Every live pod's published stream counts.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Spread {
    /// `(pod, counts)`, sorted by pod.
    pub pods: Vec<(String, PodStreams)>,
}

impl Spread {
    /// From the hash's fields at Redis time `now_ms`: stale and unparsable entries left out.
    pub fn from_hash(fields: Vec<(String, String)>, now_ms: u64, stale_ms: u64) -> Self {
        let mut pods: Vec<_> = fields
            .into_iter()
            .filter_map(|(pod, v)| PodStreams::parse(&v).map(|p| (pod, p)))
            .filter(|(_, p)| !rebalance::is_stale(p.at_ms, now_ms, stale_ms))
            .collect();
        pods.sort_by(|a, b| a.0.cmp(&b.0));
        Self { pods }
    }

    /// Busiest serving pod over the serving pods' mean (1.0 when balanced or nothing serves).
    pub fn imbalance(&self) -> f64 {
        let serving: Vec<f64> = self
            .pods
            .iter()
            .filter(|(_, p)| p.state == rebalance::PodState::Serving)
            .map(|(_, p)| f64::from(p.total))
            .collect();
        let mean = serving.iter().sum::<f64>() / serving.len().max(1) as f64;
        let max = serving.iter().copied().fold(0.0, f64::max);
        if mean > 0.0 { max / mean } else { 1.0 }
    }

    /// `pod=total(resumable) state` per pod.
    pub fn lines(&self) -> Vec<String> {
        self.pods
            .iter()
            .map(|(pod, p)| format!("{pod}={}({}) {}", p.total, p.resumable, p.state.as_str()))
            .collect()
    }
}

/// Where the sidecars of an SseService publish their stream counts, and when an entry is stale.
#[derive(Debug, Clone)]
pub struct SpreadSource {
    /// The hash's key.
    pub key: String,
    /// Entries older than this (Redis time) are left out.
    pub stale_ms: u64,
}

/// Ping the store at `url`, bounded by `timeout`.
pub async fn ping(url: &str, timeout: Duration, spread: Option<&SpreadSource>) -> StoreCheck {
    let attempt = async {
        let target = parse(url).map_err(|e| e.to_string())?;
        let connector = Connector::new(
            &target,
            Timeouts {
                op: timeout,
                max_block: Duration::ZERO,
            },
        )
        .map_err(|e| e.to_string())?;
        let mut conn = connector.shared().await.map_err(|e| e.to_string())?;
        redis::cmd("PING")
            .query_async::<String>(&mut conn)
            .await
            .map_err(|e| e.to_string())?;
        let Some(source) = spread else {
            return Ok::<_, String>(None);
        };
        // Best effort: a failed read leaves the spread out, the store still answered.
        let read = async {
            let (secs, micros): (u64, u64) = redis::cmd("TIME").query_async(&mut conn).await?;
            let fields: Vec<(String, String)> = redis::cmd("HGETALL")
                .arg(&source.key)
                .query_async(&mut conn)
                .await?;
            Ok::<_, redis::RedisError>(Spread::from_hash(
                fields,
                secs * 1000 + micros / 1000,
                source.stale_ms,
            ))
        };
        Ok(read.await.ok())
    };
    match tokio::time::timeout(timeout * 2, attempt).await {
        Ok(Ok(spread)) => StoreCheck {
            reachable: true,
            message: "the session store answers".into(),
            spread,
        },
        Ok(Err(e)) => StoreCheck {
            reachable: false,
            message: format!(
                "the session store does not answer ({e}): the sidecars stream without recording or replay until it is back"
            ),
            spread: None,
        },
        Err(_) => StoreCheck {
            reachable: false,
            message: format!(
                "the session store did not answer within {:?}: the sidecars stream without recording or replay until it is back",
                timeout * 2
            ),
            spread: None,
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_spread_leaves_out_stale_and_foreign_entries_and_measures_the_busiest_serving_pod() {
        let now = 1_000_000;
        let fields = vec![
            ("pod-b".to_string(), format!("v1 {now} 100 90 serving")),
            (
                "pod-a".to_string(),
                format!("v1 {} 50 40 serving", now - 1000),
            ),
            (
                "pod-c".to_string(),
                format!("v1 {} 300 300 serving", now - 60_000),
            ),
            ("pod-d".to_string(), "v9 whatever".to_string()),
            ("pod-e".to_string(), format!("v1 {now} 10 5 draining")),
        ];
        let s = Spread::from_hash(fields, now, 15_000);
        assert_eq!(
            s.lines(),
            [
                "pod-a=50(40) serving",
                "pod-b=100(90) serving",
                "pod-e=10(5) draining"
            ]
        );
        assert!((s.imbalance() - 100.0 / 75.0).abs() < 1e-9);
        assert_eq!(Spread { pods: vec![] }.imbalance(), 1.0);
    }
}
