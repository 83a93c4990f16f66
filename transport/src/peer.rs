//! A peer's connection state, its valid transitions, and reconnection backoff.

use std::time::Duration;

/// Where a peer stands, as Glueberry applications see it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[cfg_attr(feature = "serde", derive(serde::Serialize, serde::Deserialize))]
pub enum ConnState {
    /// No connection and none planned.
    Disconnected,
    /// Dialling, or running the secure handshake of an outbound connection.
    Connecting,
    /// Authenticated; the `handshake` stream is open; waiting for `complete_handshake`.
    Connected,
    /// The application completed its handshake; named streams carry messages.
    Established,
    /// Waiting for the next dial attempt.
    Reconnecting,
    /// The application handshake timed out (ours, or the peer's: it never answered our
    /// streams); no dial until the cooldown ends.
    Cooldown,
}

impl ConnState {
    /// Whether going from `self` to `next` is allowed. Every state change in this crate goes
    /// through [`ConnState::transition`]; nothing else changes a state.
    pub fn can_transition_to(self, next: ConnState) -> bool {
        use ConnState::*;
        matches!(
            (self, next),
            (Disconnected, Connecting | Connected | Reconnecting)
                | (Connecting, Connected | Reconnecting | Disconnected)
                | (Connected, Established | Cooldown | Disconnected)
                | (Established, Disconnected | Cooldown)
                | (Reconnecting, Connecting | Connected | Disconnected)
                | (Cooldown, Disconnected | Connecting)
        )
    }

    /// The state after `self` → `next`, or the refused transition.
    pub fn transition(self, next: ConnState) -> Result<ConnState, InvalidTransition> {
        if self.can_transition_to(next) {
            Ok(next)
        } else {
            Err(InvalidTransition {
                from: self,
                to: next,
            })
        }
    }

    /// Every state, for tests and exhaustive checks.
    pub const ALL: [ConnState; 6] = [
        ConnState::Disconnected,
        ConnState::Connecting,
        ConnState::Connected,
        ConnState::Established,
        ConnState::Reconnecting,
        ConnState::Cooldown,
    ];
}

/// A state change the state machine does not allow.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("invalid transition {from:?} -> {to:?}")]
pub struct InvalidTransition {
    /// The state it was in.
    pub from: ConnState,
    /// The state asked for.
    pub to: ConnState,
}

/// Exponential backoff with jitter: `base`, doubling, capped at `max`, each delay moved by up to
/// ±10 %; `max_attempts` attempts, 0 meaning unlimited.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Backoff {
    /// First delay.
    pub base: Duration,
    /// Largest delay.
    pub max: Duration,
    /// Attempts before giving up; 0 is unlimited.
    pub max_attempts: u32,
}

impl Default for Backoff {
    fn default() -> Self {
        Self {
            base: Duration::from_secs(1),
            max: Duration::from_secs(300),
            max_attempts: 10,
        }
    }
}

impl Backoff {
    /// The delay before attempt `attempt` (1-based), with `random` (any u64) choosing the
    /// jitter; `None` when the attempts are used up.
    pub fn delay(&self, attempt: u32, random: u64) -> Option<Duration> {
        if self.max_attempts != 0 && attempt > self.max_attempts {
            return None;
        }
        let doublings = attempt.saturating_sub(1).min(32);
        let raw = self
            .base
            .checked_mul(1u32 << doublings.min(31))
            .unwrap_or(self.max)
            .min(self.max);
        // Jitter in [-10 %, +10 %], in thousandths.
        let permille = 900 + (random % 201);
        let nanos = raw.as_nanos().saturating_mul(u128::from(permille)) / 1000;
        Some(Duration::from_nanos(
            u64::try_from(nanos).unwrap_or(u64::MAX),
        ))
    }

    /// The delay before attempt `attempt` to a persistent peer: never used up, and capped at
    /// [`PERSISTENT_MAX_DELAY`] (or `max`, if smaller) so two validators find each other again
    /// within half a minute of a partition healing.
    pub fn persistent_delay(&self, attempt: u32, random: u64) -> Duration {
        let unlimited = Backoff {
            max: self.max.min(PERSISTENT_MAX_DELAY),
            max_attempts: 0,
            ..*self
        };
        unlimited.delay(attempt, random).unwrap_or(unlimited.max)
    }
}

/// The longest wait between two dials of a persistent peer (before jitter).
pub const PERSISTENT_MAX_DELAY: Duration = Duration::from_secs(30);

/// A small, fast, seeded generator (xorshift64*) for jitter: deterministic under a seed, as the
/// simulation needs.
#[derive(Debug, Clone)]
pub struct Jitter(u64);

impl Jitter {
    /// A generator from a seed (0 is replaced by a fixed non-zero value).
    pub fn new(seed: u64) -> Self {
        Self(if seed == 0 {
            0x9e37_79b9_7f4a_7c15
        } else {
            seed
        })
    }

    /// The next value.
    pub fn next_u64(&mut self) -> u64 {
        let mut x = self.0;
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        self.0 = x;
        x.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn the_transition_table_is_what_the_docs_say() {
        use ConnState::*;
        let allowed = ConnState::ALL
            .iter()
            .flat_map(|&a| ConnState::ALL.iter().map(move |&b| (a, b)))
            .filter(|(a, b)| a.can_transition_to(*b))
            .count();
        assert_eq!(allowed, 16);
        // The Go bugs: a reconnect must be able to finish, and Cooldown can be left by connect.
        assert!(Reconnecting.can_transition_to(Connecting));
        assert!(Reconnecting.can_transition_to(Connected));
        assert!(Cooldown.can_transition_to(Connecting));
        assert!(!Established.can_transition_to(Connected));
        // A peer that never answered our streams times out from Established.
        assert_eq!(Established.transition(Cooldown), Ok(Cooldown));
        assert_eq!(
            Established.transition(Reconnecting),
            Err(InvalidTransition {
                from: Established,
                to: Reconnecting
            })
        );
    }

    #[test]
    fn backoff_doubles_to_the_cap_with_bounded_jitter() {
        let b = Backoff::default();
        assert_eq!(b.delay(1, 100), Some(Duration::from_secs(1)));
        assert_eq!(b.delay(2, 100), Some(Duration::from_secs(2)));
        assert_eq!(b.delay(4, 100), Some(Duration::from_secs(8)));
        assert_eq!(b.delay(10, 100), Some(Duration::from_secs(300)));
        assert_eq!(b.delay(11, 100), None);
        assert_eq!(b.delay(1, 0), Some(Duration::from_millis(900)));
        assert_eq!(b.delay(1, 200), Some(Duration::from_millis(1100)));
        let unlimited = Backoff {
            max_attempts: 0,
            ..b
        };
        assert_eq!(
            unlimited.delay(1_000_000, 100),
            Some(Duration::from_secs(300))
        );
        // Persistent peers: never used up, capped at 30 s.
        assert_eq!(b.persistent_delay(11, 100), Duration::from_secs(30));
        assert_eq!(b.persistent_delay(1_000_000, 100), Duration::from_secs(30));
        assert_eq!(b.persistent_delay(2, 100), Duration::from_secs(2));
    }

    proptest! {
        #[test]
        fn jitter_stays_within_ten_percent(attempt in 1u32..100, random in any::<u64>()) {
            let b = Backoff { max_attempts: 0, ..Backoff::default() };
            let d = b.delay(attempt, random).expect("unlimited");
            prop_assert!(d >= Duration::from_millis(900) && d <= Duration::from_secs(330));
        }
    }
}
