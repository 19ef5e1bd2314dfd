//! Whether an SseService's session store answers. The sidecars keep streaming through a Redis
//! outage (without recording or replay) and each says so on `/ready` and in `ssekeeper_store_up`;
//! this check puts the same fact on the SseService itself, as a condition `kubectl describe`
//! shows, by pinging the store with the URL the sidecars use.

use std::time::Duration;

use ssekeeper_contract::redis::conn::{Connector, Timeouts};
use ssekeeper_contract::redis::parse_url as parse;

/// What one ping of the session store said.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoreCheck {
    /// It answered `PING`.
    pub reachable: bool,
    /// What a person should know (the error when it did not answer).
    pub message: String,
}

/// Ping the store at `url`, bounded by `timeout`.
pub async fn ping(url: &str, timeout: Duration) -> StoreCheck {
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
            .map_err(|e| e.to_string())
    };
    match tokio::time::timeout(timeout * 2, attempt).await {
        Ok(Ok(_)) => StoreCheck {
            reachable: true,
            message: "the session store answers".into(),
        },
        Ok(Err(e)) => StoreCheck {
            reachable: false,
            message: format!(
                "the session store does not answer ({e}): the sidecars stream without recording or replay until it is back"
            ),
        },
        Err(_) => StoreCheck {
            reachable: false,
            message: format!(
                "the session store did not answer within {:?}: the sidecars stream without recording or replay until it is back",
                timeout * 2
            ),
        },
    }
}
