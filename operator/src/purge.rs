//! TEMPORARY (uncommitted) until wip/store lands purge_service.
use std::time::Duration;
const ATTEMPT_TIMEOUT: Duration = Duration::from_secs(10);
pub async fn purge(url: &str, namespace: &str, name: &str) -> Result<u64, String> {
    let attempt = async {
        let client = redis::Client::open(url).map_err(|e| e.to_string())?;
        let mut con = client
            .get_multiplexed_async_connection()
            .await
            .map_err(|e| e.to_string())?;
        let pattern = ssekeeper_sidecar::contract::keys::service_pattern(namespace, name);
        let mut cursor: u64 = 0;
        let mut n = 0u64;
        loop {
            let (next, keys): (u64, Vec<String>) = redis::cmd("SCAN")
                .arg(cursor)
                .arg("MATCH")
                .arg(&pattern)
                .arg("COUNT")
                .arg(500)
                .query_async(&mut con)
                .await
                .map_err(|e| e.to_string())?;
            if !keys.is_empty() {
                let d: u64 = redis::cmd("UNLINK")
                    .arg(&keys)
                    .query_async(&mut con)
                    .await
                    .map_err(|e| e.to_string())?;
                n += d;
            }
            if next == 0 {
                break;
            }
            cursor = next;
        }
        Ok::<u64, String>(n)
    };
    match tokio::time::timeout(ATTEMPT_TIMEOUT, attempt).await {
        Ok(r) => r,
        Err(_) => Err(format!("Redis did not answer within {ATTEMPT_TIMEOUT:?}")),
    }
}
