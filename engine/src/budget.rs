//! The node-wide budget for what the node holds for its peers: messages the application
//! accepted and the peers have not confirmed (queued, or written and awaiting credit). Each
//! route counts its own reservations against it, per shard (no cache line shared by every
//! sender); a shard that finds the sum over the budget cuts the peer holding the most, with
//! [`CloseCode::OverBudget`](glueberry_transport::CloseCode::OverBudget) — never a newcomer, and
//! never a peer that holds little.

use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};
use std::time::{Duration, Instant};

/// The most often the budget cuts a peer, node-wide: what a cut hands back takes a moment to
/// leave the counters.
const CUT_INTERVAL: Duration = Duration::from_millis(100);

/// One shard's count, on a cache line of its own. Signed, so that a count off by a message
/// can never wrap into "the node holds 2^64 bytes" (which would cut a peer every 100 ms).
#[repr(align(64))]
#[derive(Default)]
struct Held(AtomicI64);

pub(crate) struct NodeBudget {
    limit: u64,
    held: Vec<Held>,
    /// When a cut may next be made, in milliseconds since `epoch`.
    next_cut: AtomicU64,
    epoch: Instant,
}

impl NodeBudget {
    pub(crate) fn new(limit: u64, shards: usize) -> Self {
        Self {
            limit,
            held: (0..shards.max(1)).map(|_| Held::default()).collect(),
            next_cut: AtomicU64::new(0),
            epoch: Instant::now(),
        }
    }

    /// A budget nothing reaches (tests of a route alone).
    #[cfg(test)]
    pub(crate) fn unlimited() -> Self {
        Self::new(u64::MAX, 1)
    }

    pub(crate) fn add(&self, shard: usize, bytes: u64) {
        if let Some(held) = self.held.get(shard) {
            held.0.fetch_add(bytes as i64, Ordering::Relaxed);
        }
    }

    /// Shard `shard` holds `bytes` (a count the shard keeps itself).
    pub(crate) fn set(&self, shard: usize, bytes: u64) {
        if let Some(held) = self.held.get(shard)
            && held.0.load(Ordering::Relaxed) != bytes as i64
        {
            held.0.store(bytes as i64, Ordering::Relaxed);
        }
    }

    /// Whether shard `shard` holds the most of all shards (ties: the first): the one to cut.
    pub(crate) fn holds_most(&self, shard: usize) -> bool {
        let mine = self
            .held
            .get(shard)
            .map_or(0, |h| h.0.load(Ordering::Relaxed));
        self.held.iter().enumerate().all(|(i, h)| {
            let theirs = h.0.load(Ordering::Relaxed);
            theirs < mine || (theirs == mine && i >= shard)
        })
    }

    pub(crate) fn sub(&self, shard: usize, bytes: u64) {
        if let Some(held) = self.held.get(shard) {
            held.0.fetch_sub(bytes as i64, Ordering::Relaxed);
        }
    }

    /// Bytes held for all peers, node-wide.
    pub(crate) fn held(&self) -> u64 {
        let sum: i64 = self.held.iter().map(|h| h.0.load(Ordering::Relaxed)).sum();
        sum.max(0) as u64
    }

    pub(crate) fn limit(&self) -> u64 {
        self.limit
    }

    /// Whether the node holds more than its budget and no other shard cut a peer for it in the
    /// last [`CUT_INTERVAL`]: the caller is the one to cut (at most one cut per interval).
    pub(crate) fn should_cut(&self, now: Instant) -> bool {
        if self.held() <= self.limit {
            return false;
        }
        let at = now.saturating_duration_since(self.epoch).as_millis() as u64;
        let next = self.next_cut.load(Ordering::Acquire);
        at >= next
            && self
                .next_cut
                .compare_exchange(
                    next,
                    at + CUT_INTERVAL.as_millis() as u64,
                    Ordering::AcqRel,
                    Ordering::Acquire,
                )
                .is_ok()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn over_the_budget_one_shard_cuts_once_per_interval() {
        let budget = NodeBudget::new(100, 2);
        let now = Instant::now();
        budget.add(0, 60);
        budget.add(1, 40);
        assert_eq!(budget.held(), 100);
        assert!(!budget.should_cut(now), "at the budget is not over it");
        budget.add(1, 1);
        assert!(budget.should_cut(now));
        assert!(!budget.should_cut(now), "one cut per interval");
        assert!(budget.should_cut(now + CUT_INTERVAL * 2));
        budget.sub(0, 60);
        assert!(!budget.should_cut(now + CUT_INTERVAL * 4));
        // A count gone below zero reads as nothing held, never as a huge amount.
        budget.sub(1, 1000);
        assert_eq!(budget.held(), 0);
        assert!(!budget.should_cut(now + CUT_INTERVAL * 6));
    }
}
