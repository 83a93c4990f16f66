//! Streams: our named streams with their send queues and credit, and the peer's streams as we
//! receive them, with their windows and reassembly.

use std::collections::VecDeque;

use bytes::{Bytes, BytesMut};

use crate::frame::{
    DATA_FIRST, DATA_FIRST_HEADER_LEN, DATA_HEADER_LEN, DATA_LAST, encode_data_header,
};

/// The name of the reserved stream open from Connected on.
pub const HANDSHAKE_STREAM: &str = "handshake";

/// Credit charged per message on top of its bytes, so that empty messages are not free.
pub(crate) const MESSAGE_CREDIT_OVERHEAD: u64 = DATA_HEADER_LEN as u64;
/// A message is split only into fragments of at least this many bytes (less when records are
/// configured smaller: see [`min_fragment`]).
const MIN_FRAGMENT: usize = 512;

/// The smallest fragment worth a frame with records of `record_plaintext` bytes: small enough
/// that an empty record always has room for one, so a large message always makes progress.
pub(crate) fn min_fragment(record_plaintext: usize) -> usize {
    MIN_FRAGMENT.min(record_plaintext / 4).max(1)
}

/// Bytes a stream of `priority` may write per scheduler round: 16 KiB × (priority + 1), so a
/// priority-7 stream gets eight times the bandwidth of a priority-0 one when both are busy
/// (linear weights, as CometBFT's channel priorities), and no busy stream waits more than one
/// round.
pub(crate) fn quantum(priority: u8) -> usize {
    STREAM_QUANTUM * (usize::from(priority) + 1)
}

/// The scheduler's unit: bytes per round of a priority-0 stream.
const STREAM_QUANTUM: usize = 16 * 1024;

/// Where our stream stands with the peer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum SendState {
    /// Opened by the application, not yet answered by the peer: messages queue.
    AwaitingPeer,
    /// The peer opened it too and gave credit.
    Open,
    /// The peer has not opened it.
    Rejected,
}

/// One of our streams: what we send on it, and the peer stream we receive it from.
#[derive(Debug)]
pub(crate) struct LocalStream {
    /// Shared, so that each received message can carry its stream's name at no more cost than
    /// a reference count.
    pub name: std::sync::Arc<str>,
    pub state: SendState,
    /// Bytes we may still send.
    pub credit: u64,
    pub queue: VecDeque<Bytes>,
    /// Payload bytes of the messages in `queue`.
    pub queued_bytes: u64,
    /// Messages written whose receipt the peer has not yet confirmed by returning their credit,
    /// oldest first. Bounded by *our* send-ahead cap (`cap`), whatever window the peer grants.
    pub in_flight: VecDeque<Bytes>,
    /// The most credit this stream may have written and not had confirmed: our own
    /// `initial_window`, so that what we hold for a peer is bounded by our budget, not by the
    /// window it advertises (PROTOCOL.md §5.4).
    pub cap: u64,
    /// Credit written (message bytes plus overhead, fragments included) and not yet confirmed.
    pub unconfirmed: u64,
    /// The most messages `in_flight` may hold (our `high_watermark`): credit counts 6 bytes a
    /// message, memory more (a `Bytes` and its allocation), so tiny messages are bounded by
    /// count too.
    pub max_unconfirmed_messages: usize,
    /// When the stall check first saw messages written: `(messages written by then, time)`,
    /// oldest first. The front of `in_flight` was written no later than the time of the first
    /// checkpoint whose count exceeds its sequence number, so its age is never overestimated.
    pub checkpoints: VecDeque<(u64, std::time::Instant)>,
    /// Confirmed credit not yet matched to a whole message of `in_flight` (credit comes back
    /// in batches that need not end on a message).
    pub confirmed: u64,
    /// Bytes of `queue.front()` already sent as fragments.
    pub front_offset: usize,
    /// Connection credit set aside for the rest of `queue.front()` once its first fragment
    /// went out (other streams may not take it), so that two messages begun on two streams
    /// can never hold the connection's credit between them and both wait.
    pub reserved: u64,
    /// At the high watermark; cleared at the low one.
    pub blocked: bool,
    /// Whether the OPEN frame for it still has to be sent.
    pub open_pending: bool,
    /// The peer's id for the stream of the same name, once we accepted it.
    pub peer_id: Option<u16>,
    /// Messages and payload bytes fully written into records on this stream.
    pub sent_messages: u64,
    pub sent_bytes: u64,
    /// Messages and payload bytes received on this stream (from the peer's stream mapped to it).
    pub received_messages: u64,
    pub received_bytes: u64,
    /// Send priority (0 lowest); the weight of the stream in the record scheduler.
    pub priority: u8,
    /// Bytes the stream may still write in the scheduler's current round.
    pub deficit: usize,
}

/// Initial capacity of a connection's event queue and of each stream's send queue.
pub(crate) const INITIAL_QUEUE: usize = 16;

impl LocalStream {
    /// Our stream `name`, awaiting the peer, with the bounds `config` sets for every stream.
    pub(crate) fn new(name: &str, config: &crate::ConnectionConfig) -> Self {
        let priority = config.priority_of(name);
        Self {
            priority,
            deficit: quantum(priority),
            name: name.into(),
            state: SendState::AwaitingPeer,
            credit: 0,
            // Queues start small and grow to what the traffic needs (then keep that
            // capacity), so an idle connection costs little.
            queue: VecDeque::with_capacity(INITIAL_QUEUE.min(config.high_watermark)),
            queued_bytes: 0,
            in_flight: VecDeque::new(),
            cap: u64::from(config.initial_window),
            unconfirmed: 0,
            max_unconfirmed_messages: config.high_watermark,
            checkpoints: VecDeque::new(),
            confirmed: 0,
            front_offset: 0,
            reserved: 0,
            blocked: false,
            open_pending: false,
            peer_id: None,
            sent_messages: 0,
            sent_bytes: 0,
            received_messages: 0,
            received_bytes: 0,
        }
    }

    /// The peer returned `increment` bytes of credit for what it received: the messages it
    /// covers whole are confirmed and let go. Returns the messages, their payload bytes and
    /// the credit cost they free.
    pub(crate) fn confirm(&mut self, increment: u64) -> (u64, u64, u64) {
        // Credit beyond what is outstanding confirms nothing yet to be written.
        self.confirmed = (self.confirmed + increment).min(self.unconfirmed);
        let (mut messages, mut bytes, mut cost) = (0, 0, 0);
        while let Some(message) = self.in_flight.front() {
            let message_cost = message.len() as u64 + MESSAGE_CREDIT_OVERHEAD;
            if message_cost > self.confirmed {
                break;
            }
            self.confirmed -= message_cost;
            messages += 1;
            bytes += message.len() as u64;
            cost += message_cost;
            self.in_flight.pop_front();
        }
        self.unconfirmed -= cost;
        (messages, bytes, cost)
    }

    /// Sequence number (messages written on the stream before it) of the oldest unconfirmed
    /// message.
    fn oldest_sequence(&self) -> u64 {
        self.sent_messages - self.in_flight.len() as u64
    }

    /// The stall check runs at `now`: notes messages written since it last ran, and returns no
    /// later than when the oldest unconfirmed message was written (`None` if none is).
    pub(crate) fn oldest_unconfirmed(
        &mut self,
        now: std::time::Instant,
    ) -> Option<std::time::Instant> {
        /// Checkpoints kept per stream; past it, the newest is moved forward (later times only
        /// make ages shorter, so a stall is never declared early).
        const MAX_CHECKPOINTS: usize = 32;
        if self.in_flight.is_empty() {
            self.checkpoints.clear();
            return None;
        }
        if self
            .checkpoints
            .back()
            .is_none_or(|&(count, _)| count < self.sent_messages)
        {
            if self.checkpoints.len() >= MAX_CHECKPOINTS {
                self.checkpoints.pop_back();
            }
            self.checkpoints.push_back((self.sent_messages, now));
        }
        let oldest = self.oldest_sequence();
        while self
            .checkpoints
            .front()
            .is_some_and(|&(count, _)| count <= oldest)
        {
            self.checkpoints.pop_front();
        }
        self.checkpoints.front().map(|&(_, at)| at)
    }

    /// Credit the stream may still spend: the peer's grant, and our cap on what is written and
    /// not yet confirmed.
    pub(crate) fn available_credit(&self) -> u64 {
        self.credit.min(self.cap.saturating_sub(self.unconfirmed))
    }

    pub(crate) fn sendable(&self) -> bool {
        self.state == SendState::Open
            && !self.queue.is_empty()
            && self.available_credit() > 0
            && self.in_flight.len() < self.max_unconfirmed_messages
    }

    /// Writes as many queued messages (or fragments) as fit in `out`, the stream's credit, the
    /// connection's (`connection_credit`, shared by all streams) and `quantum` allow. Returns
    /// bytes written and messages completed.
    #[inline]
    #[allow(clippy::too_many_arguments)]
    pub(crate) fn write_data(
        &mut self,
        id: u16,
        out: &mut [u8],
        connection_credit: &mut u64,
        quantum: usize,
        one_only: bool,
        min_fragment: usize,
    ) -> (usize, usize) {
        let mut written = 0;
        let mut completed = 0;
        while let Some(message) = self.queue.front() {
            if self.in_flight.len() >= self.max_unconfirmed_messages {
                break;
            }
            let first = self.front_offset == 0;
            let remaining = message.len() - self.front_offset;
            let space = out.len() - written;
            let overhead = if first { MESSAGE_CREDIT_OVERHEAD } else { 0 };
            let Some(credit) = self
                .available_credit()
                .min(*connection_credit)
                .checked_sub(overhead)
            else {
                break;
            };
            let credit = usize::try_from(credit).unwrap_or(usize::MAX);
            if remaining <= credit
                && remaining <= u16::MAX as usize
                && DATA_HEADER_LEN + remaining <= space
            {
                // The whole message, or its last fragment.
                let flags = if first {
                    DATA_FIRST | DATA_LAST
                } else {
                    DATA_LAST
                };
                let at =
                    written + encode_data_header(&mut out[written..], id, flags, remaining, None);
                out[at..at + remaining].copy_from_slice(&message[self.front_offset..]);
                written = at + remaining;
                self.credit -= overhead + remaining as u64;
                self.unconfirmed += overhead + remaining as u64;
                *connection_credit -= overhead + remaining as u64;
                self.reserved = 0;
                self.sent_messages += 1;
                self.sent_bytes += message.len() as u64;
                self.queued_bytes -= message.len() as u64;
                if let Some(message) = self.queue.pop_front() {
                    // Kept (moved, not copied) until the peer confirms it.
                    self.in_flight.push_back(message);
                }
                self.front_offset = 0;
                completed += 1;
                if one_only || written >= quantum {
                    break;
                }
                continue;
            }
            // A fragment that is not the last: as much as space, credit and the 16-bit length
            // allow, leaving at least one byte for the last fragment.
            let header = if first {
                DATA_FIRST_HEADER_LEN
            } else {
                DATA_HEADER_LEN
            };
            let len = space
                .saturating_sub(header)
                .min(credit)
                .min(u16::MAX as usize)
                .min(remaining.saturating_sub(1));
            if len < min_fragment {
                break;
            }
            // A message is begun only if the connection's credit covers all of it: the rest is
            // then reserved for it, and it can always finish.
            if first && (message.len() as u64 + overhead) > *connection_credit {
                break;
            }
            let flags = if first { DATA_FIRST } else { 0 };
            let total = first.then_some(message.len() as u32);
            let at = written + encode_data_header(&mut out[written..], id, flags, len, total);
            out[at..at + len].copy_from_slice(&message[self.front_offset..self.front_offset + len]);
            written = at + len;
            self.credit -= overhead + len as u64;
            self.unconfirmed += overhead + len as u64;
            *connection_credit -= overhead + len as u64;
            self.front_offset += len;
            self.reserved = (message.len() - self.front_offset) as u64;
            break;
        }
        (written, completed)
    }
}

/// Where a peer's stream stands with us.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum RecvState {
    /// The peer opened it; we have not decided (our handshake is not complete).
    Pending,
    /// We opened it too: data flows into local stream `local`.
    Accepted { local: u16 },
    /// We did not open it.
    Rejected,
}

/// One of the peer's streams as we receive it.
#[derive(Debug)]
pub(crate) struct PeerStream {
    pub name: Box<[u8]>,
    pub state: RecvState,
    /// Bytes the peer may still send before we grant more.
    pub window: u64,
    /// Bytes the application consumed that we have not yet granted back.
    pub released: u64,
    /// Messages the application consumed since we last granted credit back.
    pub released_messages: u32,
    /// A message being reassembled from fragments, and its announced length.
    pub partial: Option<(BytesMut, usize)>,
    /// Our acceptance (the stream's first CREDIT) was written out: from then on the peer may
    /// send DATA on it (PROTOCOL.md §5.2). The handshake stream is accepted from the start.
    pub announced: bool,
    /// The pace its credit goes back at, if the stream has a rate limit.
    pub pace: Option<Pace>,
}

/// Credit paced by a [`crate::RateLimit`]: a token bucket of charge (bytes), refilled at
/// `bytes_per_sec` up to `burst` of it; credit released by the application waits here until
/// its charge is covered.
#[derive(Debug)]
pub(crate) struct Pace {
    bytes_per_sec: f64,
    /// The least a message is charged: `bytes_per_sec / messages_per_sec`.
    min_charge: f64,
    cap: f64,
    tokens: f64,
    at: std::time::Instant,
    /// Credit released and not yet returned, and what it is charged.
    owed: u64,
    charge: f64,
}

impl Pace {
    pub(crate) fn new(limit: crate::RateLimit, now: std::time::Instant) -> Self {
        let bytes_per_sec = limit.bytes_per_sec.max(1) as f64;
        let cap = bytes_per_sec * limit.burst.as_secs_f64();
        Self {
            bytes_per_sec,
            min_charge: bytes_per_sec / f64::from(limit.messages_per_sec.max(1)),
            cap,
            tokens: cap,
            at: now,
            owed: 0,
            charge: 0.0,
        }
    }

    /// The application consumed a message that cost `amount` of credit.
    pub(crate) fn owe(&mut self, amount: u64) {
        self.owed += amount;
        self.charge += (amount as f64).max(self.min_charge);
    }

    /// How much of the owed credit may go back at `now`.
    pub(crate) fn take(&mut self, now: std::time::Instant) -> u64 {
        let elapsed = now.saturating_duration_since(self.at).as_secs_f64();
        self.tokens = (self.tokens + elapsed * self.bytes_per_sec).min(self.cap);
        self.at = self.at.max(now);
        if self.owed == 0 || self.tokens <= 0.0 {
            return 0;
        }
        if self.tokens >= self.charge {
            self.tokens -= self.charge;
            self.charge = 0.0;
            return std::mem::take(&mut self.owed);
        }
        let grant = (self.owed as f64 * self.tokens / self.charge).floor() as u64;
        if grant == 0 {
            return 0;
        }
        let spent = self.charge * grant as f64 / self.owed as f64;
        self.tokens -= spent;
        self.charge -= spent;
        self.owed -= grant;
        grant
    }

    /// When more of the owed credit may go back, if any is owed.
    pub(crate) fn next(&self) -> Option<std::time::Instant> {
        (self.owed > 0).then(|| {
            // A millisecond at least, so that a tiny shortfall does not spin the timer.
            let wait = ((self.charge - self.tokens).max(0.0) / self.bytes_per_sec).max(0.001);
            self.at + std::time::Duration::from_secs_f64(wait.min(1.0))
        })
    }
}

impl PeerStream {
    pub(crate) fn new(name: &[u8], state: RecvState, window: u64) -> Self {
        Self {
            name: name.into(),
            state,
            window,
            released: 0,
            released_messages: 0,
            partial: None,
            announced: matches!(state, RecvState::Accepted { .. }),
            pace: None,
        }
    }
}
