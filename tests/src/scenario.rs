//! Building blocks the data-plane tests share: a crowd of chat-room clients and the summary a
//! test prints and asserts on.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use ssekeeper_testkit::Patience;
use ssekeeper_testkit::client::{EventSource, EventSourceConfig, EventSourceReport, Received};

use crate::demo::payload::ChatEvent;
use crate::harness::ports::client_ip;
use crate::verify::{SeqReport, check_sequence, max_gap, percentile};

/// The chat-room payload of an event, if it is one.
pub fn chat_event(r: &Received) -> Option<ChatEvent> {
    serde_json::from_str(&r.data).ok()
}

/// `n` `/events` clients, client `i` bound to source 127.0.1.(1+i).
pub struct ChatCrowd {
    clients: Vec<EventSource>,
}

impl ChatCrowd {
    /// Start the clients, each from `configure(i, default config)`.
    pub fn spawn(
        frontend: SocketAddr,
        n: usize,
        configure: impl Fn(usize, EventSourceConfig) -> EventSourceConfig,
    ) -> Self {
        let clients = (0..n)
            .map(|i| {
                let mut cfg = EventSourceConfig::new(frontend, "/events");
                cfg.source_ip = Some(client_ip(i));
                cfg.idle_timeout = Some(Duration::from_secs(10));
                EventSource::spawn(configure(i, cfg))
            })
            .collect();
        Self { clients }
    }

    fn last_seqs(&self) -> Vec<Option<u64>> {
        self.clients
            .iter()
            .map(|c| c.with_events(|evs| evs.iter().rev().find_map(chat_event).map(|e| e.seq)))
            .collect()
    }

    /// Room numbers that reached clients under more than one wire `id:` (with the ids): on a
    /// broadcast path every client on every pod must see one id per event. Also returns how many
    /// distinct events were compared.
    pub fn id_conflicts(&self) -> (Vec<(u64, Vec<String>)>, usize) {
        let mut ids: std::collections::BTreeMap<u64, std::collections::BTreeSet<String>> =
            std::collections::BTreeMap::new();
        for c in &self.clients {
            c.with_events(|evs| {
                for r in evs {
                    if let (Some(e), Some(id)) = (chat_event(r), &r.id) {
                        ids.entry(e.seq).or_default().insert(id.clone());
                    }
                }
            });
        }
        let seen = ids.len();
        let conflicts = ids
            .into_iter()
            .filter(|(_, v)| v.len() > 1)
            .map(|(seq, v)| (seq, v.into_iter().collect()))
            .collect();
        (conflicts, seen)
    }

    /// A one-line progress report: clients receiving, events received so far.
    pub fn progress(&self) -> String {
        let (mut receiving, mut events) = (0usize, 0usize);
        for c in &self.clients {
            let n = c.with_events(|evs| evs.iter().filter(|r| chat_event(r).is_some()).count());
            receiving += usize::from(n > 0);
            events += n;
        }
        format!(
            "{receiving}/{} clients receiving, {events} events received",
            self.clients.len()
        )
    }

    /// Wait until every client has received at least one event, for at most `timeout`.
    pub async fn wait_all_receiving(&self, timeout: Duration) -> bool {
        self.wait_until(timeout, |s| s.is_some()).await
    }

    /// Wait until every client's latest event is at least `seq`, for at most `timeout`.
    pub async fn wait_caught_up(&self, seq: u64, timeout: Duration) -> bool {
        self.wait_until(timeout, |s| s.is_some_and(|s| s >= seq))
            .await
    }

    async fn wait_until(&self, timeout: Duration, ok: impl Fn(Option<u64>) -> bool) -> bool {
        let patience = Patience::within(timeout).every(Duration::from_millis(100));
        let all = || std::future::ready(self.last_seqs().into_iter().all(&ok).then_some(()));
        ssekeeper_testkit::poll(patience, all).await.is_some()
    }

    /// Stop every client and judge each against `from..=to` (`from`: each client's first).
    pub async fn finish(self, to: u64) -> ChatSummary {
        let mut clients = Vec::new();
        for c in self.clients {
            let report = c.stop().await;
            clients.push(ClientVerdict::judge(report, None, to));
        }
        ChatSummary { clients }
    }
}

impl ChatCrowd {
    /// Stop every client and judge each against its own first..=last event: for streams with no
    /// common end (a clock that never stops), where each client stops wherever it was.
    pub async fn finish_each(self) -> Vec<ClientVerdict> {
        let mut verdicts = Vec::new();
        for c in self.clients {
            let report = c.stop().await;
            let to = report
                .events
                .iter()
                .filter_map(chat_event)
                .map(|e| e.seq)
                .max()
                .unwrap_or(0);
            verdicts.push(ClientVerdict::judge(report, None, to));
        }
        verdicts
    }
}

/// One client's verdict.
#[derive(Debug)]
pub struct ClientVerdict {
    /// Its sequence verdict.
    pub seq: SeqReport,
    /// Everything it saw.
    pub report: EventSourceReport,
    /// Longest silence between two events.
    pub max_gap: Duration,
    /// Pods that delivered events to it.
    pub pods: BTreeSet<String>,
}

impl ClientVerdict {
    /// Each connection attempt's `Last-Event-ID` and result, for a failure message.
    pub fn attempts(&self) -> String {
        let a: Vec<_> = self
            .report
            .attempts
            .iter()
            .map(|a| (&a.last_event_id, &a.result))
            .collect();
        format!("{a:?}")
    }

    /// Judge `report` against `from..=to`.
    pub fn judge(report: EventSourceReport, from: Option<u64>, to: u64) -> Self {
        let chat: Vec<(ChatEvent, Instant)> = report
            .events
            .iter()
            .filter_map(|r| chat_event(r).map(|e| (e, r.at)))
            .collect();
        let seqs: Vec<u64> = chat.iter().map(|(e, _)| e.seq).collect();
        let times: Vec<Instant> = chat.iter().map(|(_, t)| *t).collect();
        Self {
            seq: check_sequence(&seqs, from, to),
            max_gap: max_gap(&times),
            pods: chat.into_iter().map(|(e, _)| e.pod).collect(),
            report,
        }
    }
}

/// Every client's verdict, and the figures a test prints.
#[derive(Debug)]
pub struct ChatSummary {
    /// Per client, in client order.
    pub clients: Vec<ClientVerdict>,
}

impl ChatSummary {
    /// Clients whose sequence is perfect and non-empty.
    pub fn perfect(&self) -> usize {
        self.clients
            .iter()
            .filter(|c| c.seq.is_perfect() && c.seq.received > 0)
            .count()
    }

    /// Events received by all clients.
    pub fn events(&self) -> usize {
        self.clients.iter().map(|c| c.seq.received).sum()
    }

    /// Reconnects of all clients.
    pub fn reconnects(&self) -> usize {
        self.clients.iter().map(|c| c.report.reconnects()).sum()
    }

    /// Reconnects (every attempt after a client's first) per whole second since `since`: how
    /// paced shedding or a drain was, as the clients saw it.
    pub fn reconnects_per_second(&self, since: Instant) -> BTreeMap<u64, u32> {
        let mut per_second = BTreeMap::new();
        for c in &self.clients {
            for a in c.report.attempts.iter().skip(1) {
                if let Some(d) = a.at.checked_duration_since(since) {
                    *per_second.entry(d.as_secs()).or_default() += 1;
                }
            }
        }
        per_second
    }

    /// Events never received, over all clients.
    pub fn missing(&self) -> u64 {
        self.clients.iter().map(|c| c.seq.missing_count()).sum()
    }

    /// Extra copies received, over all clients.
    pub fn duplicates(&self) -> u64 {
        self.clients.iter().map(|c| c.seq.duplicates).sum()
    }

    /// Non-stream answers (HTTP statuses) over all clients.
    pub fn http_errors(&self) -> Vec<u16> {
        self.clients
            .iter()
            .flat_map(|c| c.report.http_errors())
            .collect()
    }

    /// The first few imperfect clients, for a failure message.
    pub fn worst(&self, n: usize) -> String {
        self.clients
            .iter()
            .enumerate()
            .filter(|(_, c)| !c.seq.is_perfect() || c.seq.received == 0)
            .take(n)
            .map(|(i, c)| format!("client {i}: {} attempts {}", c.seq, c.attempts()))
            .collect::<Vec<_>>()
            .join("\n")
    }
}

impl fmt::Display for ChatSummary {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let gaps: Vec<Duration> = self.clients.iter().map(|c| c.max_gap).collect();
        let ms = |d: Option<Duration>| d.map_or(0, |d| d.as_millis());
        let pods: usize = self.clients.iter().map(|c| c.pods.len()).sum();
        write!(
            f,
            "clients {}, perfect {}, events {}, missing {}, duplicates {}, reconnects {}, \
             http errors {}, network errors {}, stalls {}, pods per client {:.1}, \
             per-client max gap p50 {} ms / p99 {} ms / max {} ms",
            self.clients.len(),
            self.perfect(),
            self.events(),
            self.missing(),
            self.duplicates(),
            self.reconnects(),
            self.http_errors().len(),
            self.clients
                .iter()
                .map(|c| c.report.network_errors())
                .sum::<usize>(),
            self.clients.iter().map(|c| c.report.stalls).sum::<u32>(),
            pods as f64 / self.clients.len().max(1) as f64,
            ms(percentile(&gaps, 50.0)),
            ms(percentile(&gaps, 99.0)),
            ms(gaps.iter().max().copied()),
        )
    }
}

/// Heavy data-plane tests take turns within one test binary: they measure timing on a small
/// machine, and two at once would measure each other.
pub async fn serial() -> tokio::sync::MutexGuard<'static, ()> {
    static TURN: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());
    TURN.lock().await
}

/// The sum of every sample of metric `name` (any labels) in OpenMetrics `text`, or of those
/// whose labels contain `label` (e.g. `outcome="accepted"`).
pub fn metric_sum(text: &str, name: &str, label: Option<&str>) -> f64 {
    text.lines()
        .filter(|l| !l.starts_with('#'))
        .filter_map(|l| {
            let (series, value) = l.rsplit_once(' ')?;
            let (metric, labels) = match series.split_once('{') {
                Some((m, rest)) => (m, rest),
                None => (series, ""),
            };
            (metric == name && label.is_none_or(|want| labels.contains(want)))
                .then(|| value.parse::<f64>().ok())
                .flatten()
        })
        .sum()
}

/// A chat client's events grouped by the pod that delivered them, in delivery order, e.g.
/// `pod-1 x120, pod-4 x80` - shows a handoff at a glance.
pub fn pod_runs(events: &[Received]) -> String {
    let mut runs: Vec<(String, usize)> = Vec::new();
    for p in events.iter().filter_map(|r| {
        serde_json::from_str::<serde_json::Value>(&r.data)
            .ok()?
            .get("pod")?
            .as_str()
            .map(str::to_string)
    }) {
        match runs.last_mut() {
            Some((last, n)) if *last == p => *n += 1,
            _ => runs.push((p, 1)),
        }
    }
    runs.iter()
        .map(|(p, n)| format!("{p} x{n}"))
        .collect::<Vec<_>>()
        .join(", ")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn metric_sum_filters_by_name_and_label() {
        let text = "# TYPE ssekeeper_forwards counter\n\
                    ssekeeper_forwards_total{outcome=\"accepted\"} 3\n\
                    ssekeeper_forwards_total{outcome=\"bad_signature\"} 2\n\
                    ssekeeper_forwards_total_other 9\n\
                    ssekeeper_store_up 1\n";
        assert_eq!(metric_sum(text, "ssekeeper_forwards_total", None), 5.0);
        assert_eq!(
            metric_sum(
                text,
                "ssekeeper_forwards_total",
                Some("outcome=\"accepted\"")
            ),
            3.0
        );
        assert_eq!(metric_sum(text, "ssekeeper_store_up", None), 1.0);
        assert_eq!(metric_sum(text, "missing", None), 0.0);
    }
}
