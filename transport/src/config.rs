//! Per-connection settings.

use std::time::Duration;

use glueberry_crypto::record::MAX_RECORD_PLAINTEXT_LEN;

/// The most message bytes a node may accept.
pub const MAX_MESSAGE_SIZE_LIMIT: usize = u32::MAX as usize;
/// The most streams a connection may carry (ids are 16-bit).
pub const MAX_STREAMS_LIMIT: u16 = 1024;
/// The smallest stream window: enough that a fragment always makes progress.
pub const MIN_WINDOW: u32 = 4096;
/// The longest timeout or delay any setting may have (a year): time arithmetic on `Instant`s
/// can then never overflow (an `Instant + Duration::MAX` would panic on a shard thread).
pub const MAX_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(365 * 24 * 3600);

/// How one connection behaves. Shared by all connections of a node (wrap it in an `Arc`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConnectionConfig {
    /// The longest message accepted on receive and announced to the peer (default 1 MiB).
    pub max_message_size: usize,
    /// How many streams, the `handshake` stream included, per connection (default 32).
    pub max_streams: u16,
    /// Credit each stream starts with, in bytes; also the receive buffering allowed per stream
    /// before the application consumes (default 2 MiB). At least `max_message_size` + 6: a
    /// message counts against the window until the application has taken all of it, so one
    /// larger than the window could never arrive.
    pub initial_window: u32,
    /// The credit all of the peer's streams share (default 4 MiB): what one peer can make us
    /// hold in received messages and reassembly, whatever its number of streams. At least
    /// `max_message_size` + 6, so that any message fits.
    pub connection_window: u32,
    /// Queued messages per stream at which `send` stops accepting (default 1000); also the most
    /// messages a stream keeps written and not yet confirmed by the peer.
    pub high_watermark: usize,
    /// Queued messages per stream at which a blocked stream accepts again (default 100).
    pub low_watermark: usize,
    /// Bytes queued on all streams of the connection, not yet written, at which `send` refuses
    /// with `Full` (default 16 MiB; a message alone on an empty connection is always taken).
    /// With the message watermarks it bounds what one slow peer holds.
    pub max_queued_bytes: usize,
    /// The largest record plaintext to produce (default and maximum 64 KiB).
    pub max_record_plaintext: usize,
    /// Pack many messages per record (default on). Off: one message or fragment per record,
    /// for measuring what batching buys.
    pub batching: bool,
    /// **Profiling only**: after an authenticated handshake, exchange records with no
    /// encryption and no authentication (default off). Never negotiated: both ends must set
    /// it, and an end that did not fails the first record and closes. It exists so that
    /// `glueberry-perf` can show what everything but the AEAD costs, and only with the
    /// `danger-null-cipher` cargo feature.
    #[cfg(feature = "danger-null-cipher")]
    pub danger_null_cipher: bool,
    /// Silence after which a ping is sent (default 15 s).
    pub keepalive_interval: Duration,
    /// Silence after which the connection is declared dead (default 45 s).
    pub idle_timeout: Duration,
    /// How long messages may wait queued while the peer takes none of our data (it withholds
    /// credit, or its TCP window is zero) before the connection is closed with
    /// [`crate::CloseCode::SendStalled`] (default 60 s). A peer that keeps the connection alive
    /// with pings but never drains cannot pin what we queued for it.
    pub send_stall_timeout: Duration,
    /// Send priority per stream name, 0 (lowest) to [`MAX_PRIORITY`]; streams not listed get
    /// [`DEFAULT_PRIORITY`], the `handshake` stream [`MAX_PRIORITY`]. Records are filled by a
    /// weighted deficit round robin: each round a stream may write `16 KiB << priority` bytes,
    /// streams taken in priority order (local only, never sent: PROTOCOL.md §5.3).
    pub priorities: Vec<(String, u8)>,
    /// Receive rate limits per stream name (default none): how fast the peer may send on the
    /// stream, enforced by pacing the credit we return, never by dropping (a peer that sends
    /// beyond its credit breaks the protocol and is cut). See [`RateLimit`].
    pub rate_limits: Vec<(String, RateLimit)>,
}

/// How fast a peer may send on one stream, sustained: `bytes_per_sec` and
/// `messages_per_sec`, with `burst` of each saved up while it is quiet. Enforced by pacing the
/// credit returned for what the application consumed: each message is charged its cost (its
/// bytes plus 6) or `bytes_per_sec / messages_per_sec`, whichever is more, and its credit goes
/// back as the charge is covered. Lossless: the peer simply waits for credit. What it can send
/// ahead of the pace is its window (`initial_window`), as always. A peer that keeps sending
/// faster than the limit sees its oldest messages wait for confirmation, and past its own
/// send-stall timeout it may close the connection (code 10): set limits that honest traffic
/// stays under.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RateLimit {
    /// Sustained bytes per second (at least 1).
    pub bytes_per_sec: u64,
    /// Sustained messages per second (at least 1).
    pub messages_per_sec: u32,
    /// How much quiet time saves up (default 1 s: a second's worth of each).
    pub burst: Duration,
}

impl RateLimit {
    /// `bytes_per_sec` and `messages_per_sec` with a burst of one second.
    pub fn new(bytes_per_sec: u64, messages_per_sec: u32) -> Self {
        Self {
            bytes_per_sec,
            messages_per_sec,
            burst: Duration::from_secs(1),
        }
    }
}

/// Whether a message of `max_message_size` bytes (plus its 6 bytes of credit overhead) fits
/// both windows: the condition for every message to be deliverable (PROTOCOL.md §5.4).
pub(crate) fn fits_windows(
    max_message_size: usize,
    initial_window: u32,
    connection_window: u32,
) -> bool {
    let cost = max_message_size as u64 + crate::stream::MESSAGE_CREDIT_OVERHEAD;
    u64::from(initial_window) >= cost && u64::from(connection_window) >= cost
}

/// The highest stream priority.
pub const MAX_PRIORITY: u8 = 7;
/// The priority of a stream the configuration does not name.
pub const DEFAULT_PRIORITY: u8 = 3;

impl Default for ConnectionConfig {
    fn default() -> Self {
        Self {
            max_message_size: 1024 * 1024,
            max_streams: 32,
            initial_window: 2 * 1024 * 1024,
            connection_window: 4 * 1024 * 1024,
            high_watermark: 1000,
            low_watermark: 100,
            max_queued_bytes: 16 * 1024 * 1024,
            max_record_plaintext: MAX_RECORD_PLAINTEXT_LEN,
            batching: true,
            #[cfg(feature = "danger-null-cipher")]
            danger_null_cipher: false,
            keepalive_interval: Duration::from_secs(15),
            idle_timeout: Duration::from_secs(45),
            send_stall_timeout: Duration::from_secs(60),
            priorities: Vec::new(),
            rate_limits: Vec::new(),
        }
    }
}

impl ConnectionConfig {
    /// The send priority of the stream called `name`.
    pub fn priority_of(&self, name: &str) -> u8 {
        if name == crate::stream::HANDSHAKE_STREAM {
            return MAX_PRIORITY;
        }
        self.priorities
            .iter()
            .find(|(n, _)| n == name)
            .map_or(DEFAULT_PRIORITY, |&(_, p)| p.min(MAX_PRIORITY))
    }

    /// The receive rate limit of the stream called `name`, if any.
    pub fn rate_limit_of(&self, name: &[u8]) -> Option<RateLimit> {
        self.rate_limits
            .iter()
            .find(|(n, _)| n.as_bytes() == name)
            .map(|&(_, limit)| limit)
    }

    /// Checks the settings make sense together; says which one does not.
    pub fn validate(&self) -> Result<(), ConfigError> {
        let fail = |what: &'static str| Err(ConfigError(what));
        if self.max_message_size == 0 || self.max_message_size > MAX_MESSAGE_SIZE_LIMIT {
            return fail("max_message_size must be between 1 and 2^32 - 1");
        }
        if !(2..=MAX_STREAMS_LIMIT).contains(&self.max_streams) {
            return fail("max_streams must be between 2 and 1024 (the handshake stream counts)");
        }
        if self.initial_window < MIN_WINDOW {
            return fail("initial_window must be at least 4096 bytes");
        }
        if !fits_windows(
            self.max_message_size,
            self.initial_window,
            self.connection_window,
        ) {
            return fail(
                "initial_window and connection_window must each be at least max_message_size + 6",
            );
        }
        if self.high_watermark == 0 {
            return fail("high_watermark must be at least 1");
        }
        if self.low_watermark >= self.high_watermark {
            return fail("low_watermark must be below high_watermark");
        }
        if self.max_queued_bytes < 64 * 1024 {
            return fail("max_queued_bytes must be at least 64 KiB");
        }
        if !(256..=MAX_RECORD_PLAINTEXT_LEN).contains(&self.max_record_plaintext) {
            return fail("max_record_plaintext must be between 256 and 65536");
        }
        if self.priorities.iter().any(|&(_, p)| p > MAX_PRIORITY) {
            return fail("stream priorities must be between 0 and 7");
        }
        if self.rate_limits.iter().any(|(_, r)| {
            r.bytes_per_sec == 0
                || r.messages_per_sec == 0
                || r.burst.is_zero()
                || r.burst > MAX_TIMEOUT
        }) {
            return fail("rate limits need non-zero bytes_per_sec, messages_per_sec and burst");
        }
        if self.keepalive_interval.is_zero() || self.idle_timeout <= self.keepalive_interval {
            return fail("idle_timeout must be longer than a non-zero keepalive_interval");
        }
        if self.send_stall_timeout.is_zero() {
            return fail("send_stall_timeout must not be zero");
        }
        if [
            self.keepalive_interval,
            self.idle_timeout,
            self.send_stall_timeout,
        ]
        .iter()
        .any(|d| *d > MAX_TIMEOUT)
        {
            return fail("timeouts must be at most a year");
        }
        Ok(())
    }
}

/// A setting that makes no sense, and why.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("invalid connection config: {0}")]
pub struct ConfigError(pub &'static str);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_are_valid_and_nonsense_is_refused() {
        assert_eq!(ConnectionConfig::default().validate(), Ok(()));
        let bad = [
            ConnectionConfig {
                low_watermark: 1000,
                ..Default::default()
            },
            ConnectionConfig {
                max_streams: 1,
                ..Default::default()
            },
            ConnectionConfig {
                initial_window: 100,
                ..Default::default()
            },
            ConnectionConfig {
                max_message_size: 0,
                ..Default::default()
            },
            ConnectionConfig {
                idle_timeout: Duration::from_secs(1),
                ..Default::default()
            },
            ConnectionConfig {
                max_record_plaintext: 100_000,
                ..Default::default()
            },
            ConnectionConfig {
                max_queued_bytes: 1000,
                ..Default::default()
            },
            // A window that cannot hold the largest message: it could never arrive.
            ConnectionConfig {
                initial_window: 1024 * 1024,
                ..Default::default()
            },
            ConnectionConfig {
                connection_window: 1024 * 1024 + 5,
                ..Default::default()
            },
            // `Instant + Duration::MAX` would panic on the thread doing time arithmetic.
            ConnectionConfig {
                idle_timeout: Duration::MAX,
                ..Default::default()
            },
            ConnectionConfig {
                send_stall_timeout: Duration::MAX,
                ..Default::default()
            },
        ];
        for config in bad {
            assert!(config.validate().is_err(), "{config:?}");
        }
    }
}
