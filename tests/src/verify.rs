//! What "the whole sequence, no gaps, no duplicates, in order" means, as pure functions over what
//! a client received. Kept apart from the client so the judgement itself is unit-tested.

use std::collections::BTreeSet;
use std::fmt;
use std::time::{Duration, Instant};

/// The verdict on one client's sequence numbers.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SeqReport {
    /// Events received (duplicates included).
    pub received: usize,
    /// The first expected sequence number.
    pub from: u64,
    /// The last expected sequence number.
    pub to: u64,
    /// Expected numbers never received, as inclusive ranges.
    pub missing: Vec<(u64, u64)>,
    /// Events received more than once (each extra copy counts).
    pub duplicates: u64,
    /// Events that arrived after a higher number (a late fill, not a duplicate).
    pub out_of_order: u64,
    /// Events outside `from..=to`.
    pub unexpected: u64,
}

impl SeqReport {
    /// How many expected numbers were never received.
    pub fn missing_count(&self) -> u64 {
        self.missing.iter().map(|(a, b)| b - a + 1).sum()
    }

    /// Every expected number exactly once, in order, nothing else.
    pub fn is_perfect(&self) -> bool {
        self.missing.is_empty()
            && self.duplicates == 0
            && self.out_of_order == 0
            && self.unexpected == 0
    }
}

impl fmt::Display for SeqReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{}..={}: received {}, missing {} {:?}, duplicates {}, out of order {}, unexpected {}",
            self.from,
            self.to,
            self.received,
            self.missing_count(),
            &self.missing[..self.missing.len().min(5)],
            self.duplicates,
            self.out_of_order,
            self.unexpected
        )
    }
}

/// Judge `seqs` (in arrival order) against the dense range `from..=to`; `from` defaults to the
/// first number received (a client joining a live room starts wherever it joined).
pub fn check_sequence(seqs: &[u64], from: Option<u64>, to: u64) -> SeqReport {
    let from = from.or_else(|| seqs.first().copied()).unwrap_or(to + 1);
    let mut seen = BTreeSet::new();
    let mut max_seen: Option<u64> = None;
    let (mut duplicates, mut out_of_order, mut unexpected) = (0, 0, 0);
    for &s in seqs {
        if !(from..=to).contains(&s) {
            unexpected += 1;
            continue;
        }
        if !seen.insert(s) {
            duplicates += 1;
            continue;
        }
        if max_seen.is_some_and(|m| s < m) {
            out_of_order += 1;
        }
        max_seen = max_seen.max(Some(s));
    }
    let mut missing = Vec::new();
    let mut next = from;
    for &s in seen.iter().chain(std::iter::once(&(to + 1))) {
        if s > next {
            missing.push((next, s - 1));
        }
        next = s + 1;
    }
    SeqReport {
        received: seqs.len(),
        from,
        to,
        missing,
        duplicates,
        out_of_order,
        unexpected,
    }
}

/// The longest silence between consecutive arrivals (what a user sees as a stall).
pub fn max_gap(arrivals: &[Instant]) -> Duration {
    arrivals
        .windows(2)
        .map(|w| w[1].saturating_duration_since(w[0]))
        .max()
        .unwrap_or_default()
}

/// Nearest-rank percentile of `values` (`p` in 0..=100); `None` when empty.
pub fn percentile(values: &[Duration], p: f64) -> Option<Duration> {
    let mut v = values.to_vec();
    v.sort();
    let rank = ((p / 100.0) * v.len() as f64).ceil() as usize;
    v.get(rank.clamp(1, v.len().max(1)) - 1).copied()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn perfect_sequence() {
        let r = check_sequence(&[3, 4, 5], None, 5);
        assert!(r.is_perfect(), "{r}");
        assert_eq!((r.from, r.received), (3, 3));
    }

    #[test]
    fn gaps_duplicates_and_reordering_are_each_counted() {
        let r = check_sequence(&[1, 2, 2, 5, 4, 9], Some(1), 8);
        assert_eq!(r.missing, vec![(3, 3), (6, 8)]);
        assert_eq!(r.missing_count(), 4);
        assert_eq!(r.duplicates, 1);
        assert_eq!(r.out_of_order, 1);
        assert_eq!(r.unexpected, 1);
        assert!(!r.is_perfect());
    }

    #[test]
    fn a_client_that_received_nothing_misses_everything_expected() {
        let r = check_sequence(&[], Some(10), 12);
        assert_eq!(r.missing, vec![(10, 12)]);
        assert!(check_sequence(&[], None, 12).missing.is_empty());
    }

    #[test]
    fn missing_tail_is_reported() {
        let r = check_sequence(&[1, 2], None, 4);
        assert_eq!(r.missing, vec![(3, 4)]);
    }

    #[test]
    fn max_gap_and_percentiles() {
        let t = Instant::now();
        let ts = [
            t,
            t + Duration::from_millis(5),
            t + Duration::from_millis(25),
        ];
        assert_eq!(max_gap(&ts), Duration::from_millis(20));
        assert_eq!(max_gap(&ts[..1]), Duration::ZERO);
        let v: Vec<_> = (1..=100).map(Duration::from_millis).collect();
        assert_eq!(percentile(&v, 50.0), Some(Duration::from_millis(50)));
        assert_eq!(percentile(&v, 100.0), Some(Duration::from_millis(100)));
        assert_eq!(percentile(&[], 99.0), None);
    }
}
