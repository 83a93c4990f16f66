//! The node's metrics, through the `metrics` facade.
//!
//! Names follow `glueberry_<subsystem>_<quantity>_<unit>`; labels are `shard`, `stream`,
//! `state` and `result`, never a peer id (unbounded cardinality). Handles are made once (per
//! shard, and per stream name when a stream is first seen) and kept, so the data path does an
//! increment on a handle and no lookup; with no recorder installed the handles do nothing.
//!
//! Where the records go: the node's own Prometheus recorder when
//! [`crate::NodeConfig::record_metrics`] (or the `http` feature's `metrics`) asked for one;
//! otherwise the application's global recorder, which must be installed before
//! [`crate::Node::start`] (handles made before that stay no-ops, as with any `metrics` user).

use std::collections::HashMap;

use ::metrics::{Counter, Gauge, Histogram, counter, gauge, histogram};
use glueberry_transport::ConnState;

/// Every metric name, for the exporter's bucket settings and for documentation.
pub mod names {
    /// Gauge: peers by connection state (`state`, `shard`).
    pub const CONNECTIONS: &str = "glueberry_connections";
    /// Counter: connection attempts by `result` (`connected`, `failed`, `refused`).
    pub const CONNECTION_ATTEMPTS: &str = "glueberry_connection_attempts_total";
    /// Histogram: from dialling or accepting to an authenticated peer, in seconds.
    pub const HANDSHAKE_DURATION: &str = "glueberry_handshake_duration_seconds";
    /// Counter: messages accepted for sending (`stream`, `shard`).
    pub const MESSAGES_SENT: &str = "glueberry_stream_messages_sent_total";
    /// Counter: their payload bytes.
    pub const BYTES_SENT: &str = "glueberry_stream_sent_bytes_total";
    /// Counter: messages received and delivered to the application (`stream`, `shard`).
    pub const MESSAGES_RECEIVED: &str = "glueberry_stream_messages_received_total";
    /// Counter: their payload bytes.
    pub const BYTES_RECEIVED: &str = "glueberry_stream_received_bytes_total";
    /// Gauge: streams open on the shard's connections.
    pub const STREAMS_ACTIVE: &str = "glueberry_streams_active";
    /// Counter: records that failed to authenticate (the connection is closed).
    pub const DECRYPT_ERRORS: &str = "glueberry_crypto_decrypt_errors_total";
    /// Counter: records that could not be sealed (key exhausted; the connection is closed).
    pub const ENCRYPT_ERRORS: &str = "glueberry_crypto_encrypt_errors_total";
    /// Counter: events that a full channel or subscription lost.
    pub const EVENTS_DROPPED: &str = "glueberry_events_dropped_total";
    /// Counter: messages not sent (no such stream, refused) or not delivered (channel closed).
    pub const MESSAGES_DROPPED: &str = "glueberry_messages_dropped_total";
    /// Counter: messages handed back in `Event::Undelivered` (a connection closed first).
    pub const MESSAGES_UNDELIVERED: &str = "glueberry_messages_undelivered_total";
    /// Counter: peers cut because the node's send budget was spent (they held the most).
    pub const BUDGET_CUTS: &str = "glueberry_budget_cuts_total";
    /// Counter: sends that found their stream's queue full and waited for room.
    pub const BACKPRESSURE_ENGAGED: &str = "glueberry_backpressure_engaged_total";
    /// Histogram: how long `Node::send` waited for room, in seconds.
    pub const BACKPRESSURE_WAIT: &str = "glueberry_backpressure_wait_seconds";
    /// Counter: turns of the shards' event loops.
    pub const LOOP_TURNS: &str = "glueberry_loop_turns_total";
    /// Counter: connections the loop looked at (on a work list: output, a receive to arm);
    /// divided by `glueberry_loop_turns_total`, what a turn costs. Idle connections add
    /// nothing.
    pub const CONNECTIONS_TOUCHED: &str = "glueberry_connections_touched_total";
    /// Counter: io_uring submission queue entries pushed.
    pub const RING_SUBMISSIONS: &str = "glueberry_ring_submissions_total";
    /// Counter: io_uring completions handled.
    pub const RING_COMPLETIONS: &str = "glueberry_ring_completions_total";
    /// Gauge: registered send buffers lent out.
    pub const SEND_BUFFERS_IN_USE: &str = "glueberry_send_buffers_in_use";
    /// Counter: sends that found no registered buffer free and used a heap buffer.
    pub const SEND_BUFFERS_EXHAUSTED: &str = "glueberry_send_buffers_exhausted_total";
    /// Counter: hand-offs to another shard that waited because its queue was full.
    pub const HANDOFF_STALLS: &str = "glueberry_handoff_stalls_total";
    /// Histogram: records sealed into one send.
    pub const RECORDS_PER_BATCH: &str = "glueberry_io_records_per_batch";
    /// Gauge: members of the kept peer sets.
    pub const MEMBERS_TRACKED: &str = "glueberry_members_tracked";
    /// Gauge: members Ready (both sides' streams open).
    pub const MEMBERS_CONNECTED: &str = "glueberry_members_connected";
    /// Gauge: members of each kept epoch's set, by `age` (`newest`, `1`, `2`, … epochs older;
    /// a bounded label, not the epoch number).
    pub const EPOCH_MEMBERS: &str = "glueberry_members_epoch_size";
    /// Gauge: the newest epoch tracked.
    pub const EPOCH: &str = "glueberry_members_epoch";
    /// Counter: address records accepted (`result` = `accepted`) and dropped (`ignored`:
    /// malformed, from or about non-members, bad signature, over a member's budget).
    pub const ADDRESS_RECORDS: &str = "glueberry_members_address_records_total";
}

/// Discovery's gauges, in the node's recorder when it has one.
pub(crate) struct MembersMetrics {
    pub(crate) tracked: Gauge,
    pub(crate) connected: Gauge,
    pub(crate) epoch: Gauge,
    pub(crate) epoch_sizes: Vec<Gauge>,
    pub(crate) accepted: Counter,
    pub(crate) ignored: Counter,
}

impl MembersMetrics {
    pub(crate) fn new(keep: usize) -> Self {
        use ::metrics::{Unit, describe_counter, describe_gauge};
        use names::*;
        describe_gauge!(
            MEMBERS_TRACKED,
            Unit::Count,
            "Members of the kept peer sets."
        );
        describe_gauge!(MEMBERS_CONNECTED, Unit::Count, "Members Ready.");
        describe_gauge!(EPOCH, Unit::Count, "The newest epoch tracked.");
        describe_gauge!(
            EPOCH_MEMBERS,
            Unit::Count,
            "Members of each kept epoch, by age."
        );
        describe_counter!(
            ADDRESS_RECORDS,
            Unit::Count,
            "Address records accepted and ignored by discovery."
        );
        Self {
            tracked: gauge!(MEMBERS_TRACKED),
            connected: gauge!(MEMBERS_CONNECTED),
            epoch: gauge!(EPOCH),
            epoch_sizes: (0..keep.max(1))
                .map(|age| {
                    let age = if age == 0 {
                        "newest".to_string()
                    } else {
                        age.to_string()
                    };
                    gauge!(EPOCH_MEMBERS, "age" => age)
                })
                .collect(),
            accepted: counter!(ADDRESS_RECORDS, "result" => "accepted"),
            ignored: counter!(ADDRESS_RECORDS, "result" => "ignored"),
        }
    }
}

/// Help text and units of every metric, for the recorder in effect on this thread.
fn describe() {
    use ::metrics::{Unit, describe_counter, describe_gauge, describe_histogram};
    use names::*;
    describe_gauge!(CONNECTIONS, Unit::Count, "Peers by connection state.");
    describe_counter!(
        CONNECTION_ATTEMPTS,
        Unit::Count,
        "Connection attempts by result (connected, failed, refused)."
    );
    describe_histogram!(
        HANDSHAKE_DURATION,
        Unit::Seconds,
        "From dialling or accepting to an authenticated peer."
    );
    describe_counter!(
        MESSAGES_SENT,
        Unit::Count,
        "Messages accepted for sending, by stream."
    );
    describe_counter!(
        BYTES_SENT,
        Unit::Bytes,
        "Payload bytes of messages accepted for sending, by stream."
    );
    describe_counter!(
        MESSAGES_RECEIVED,
        Unit::Count,
        "Messages received, by stream."
    );
    describe_counter!(
        BYTES_RECEIVED,
        Unit::Bytes,
        "Payload bytes of messages received, by stream."
    );
    describe_gauge!(
        STREAMS_ACTIVE,
        Unit::Count,
        "Streams open on the shard's connections."
    );
    describe_counter!(
        DECRYPT_ERRORS,
        Unit::Count,
        "Records that failed to open; each closed its connection."
    );
    describe_counter!(
        ENCRYPT_ERRORS,
        Unit::Count,
        "Records that could not be sealed; each closed its connection."
    );
    describe_counter!(
        EVENTS_DROPPED,
        Unit::Count,
        "Events lost by a full event channel or subscription."
    );
    describe_counter!(
        MESSAGES_DROPPED,
        Unit::Count,
        "Messages not sent (no such stream, refused)."
    );
    describe_counter!(
        MESSAGES_UNDELIVERED,
        Unit::Count,
        "Messages handed back unsent or unconfirmed when their connection closed."
    );
    describe_counter!(
        BUDGET_CUTS,
        Unit::Count,
        "Peers cut with OverBudget: the node's send budget was spent and they held the most."
    );
    describe_counter!(
        BACKPRESSURE_ENGAGED,
        Unit::Count,
        "Sends that found their stream full and waited."
    );
    describe_histogram!(
        BACKPRESSURE_WAIT,
        Unit::Seconds,
        "How long Node::send waited for room."
    );
    describe_counter!(LOOP_TURNS, Unit::Count, "Turns of the shards' event loops.");
    describe_counter!(
        CONNECTIONS_TOUCHED,
        Unit::Count,
        "Connections the event loop looked at (work lists; idle connections add nothing)."
    );
    describe_counter!(
        RING_SUBMISSIONS,
        Unit::Count,
        "io_uring submission queue entries pushed."
    );
    describe_counter!(
        RING_COMPLETIONS,
        Unit::Count,
        "io_uring completions handled."
    );
    describe_gauge!(
        SEND_BUFFERS_IN_USE,
        Unit::Count,
        "Registered send buffers lent out."
    );
    describe_counter!(
        SEND_BUFFERS_EXHAUSTED,
        Unit::Count,
        "Sends that found no registered buffer free."
    );
    describe_counter!(
        HANDOFF_STALLS,
        Unit::Count,
        "Hand-offs to another shard that waited for room in its queue."
    );
    describe_histogram!(
        RECORDS_PER_BATCH,
        Unit::Count,
        "Records sealed into one send."
    );
}

fn state_label(state: ConnState) -> &'static str {
    match state {
        ConnState::Disconnected => "disconnected",
        ConnState::Connecting => "connecting",
        ConnState::Connected => "connected",
        ConnState::Established => "established",
        ConnState::Reconnecting => "reconnecting",
        ConnState::Cooldown => "cooldown",
    }
}

/// One stream name's counters on one shard.
#[derive(Clone)]
pub(crate) struct StreamMetrics {
    pub messages_sent: Counter,
    pub bytes_sent: Counter,
    pub messages_received: Counter,
    pub bytes_received: Counter,
}

/// One shard's handles.
pub(crate) struct ShardMetrics {
    shard: String,
    /// One gauge per state, in the order of `ConnState::ALL`.
    connections: Vec<Gauge>,
    pub connected: Counter,
    pub failed: Counter,
    pub refused: Counter,
    pub handshake_duration: Histogram,
    pub streams_active: Gauge,
    pub decrypt_errors: Counter,
    pub encrypt_errors: Counter,
    pub messages_dropped: Counter,
    pub messages_undelivered: Counter,
    pub budget_cuts: Counter,
    pub events_dropped: Counter,
    pub turns: Counter,
    pub touched: Counter,
    pub submissions: Counter,
    pub completions: Counter,
    pub send_buffers_in_use: Gauge,
    pub send_buffers_exhausted: Counter,
    pub handoff_stalls: Counter,
    pub records_per_batch: Histogram,
    streams: HashMap<Box<str>, StreamMetrics>,
}

impl ShardMetrics {
    /// Registers the shard's metrics with the recorder in effect on this thread.
    pub(crate) fn new(shard: usize) -> Self {
        describe();
        let s = shard.to_string();
        let attempts = |result: &'static str| counter!(names::CONNECTION_ATTEMPTS, "result" => result, "shard" => s.clone());
        Self {
            connections: ConnState::ALL
                .iter()
                .map(|st| gauge!(names::CONNECTIONS, "state" => state_label(*st), "shard" => s.clone()))
                .collect(),
            connected: attempts("connected"),
            failed: attempts("failed"),
            refused: attempts("refused"),
            handshake_duration: histogram!(names::HANDSHAKE_DURATION, "shard" => s.clone()),
            streams_active: gauge!(names::STREAMS_ACTIVE, "shard" => s.clone()),
            decrypt_errors: counter!(names::DECRYPT_ERRORS, "shard" => s.clone()),
            encrypt_errors: counter!(names::ENCRYPT_ERRORS, "shard" => s.clone()),
            messages_dropped: counter!(names::MESSAGES_DROPPED, "shard" => s.clone()),
            messages_undelivered: counter!(names::MESSAGES_UNDELIVERED, "shard" => s.clone()),
            budget_cuts: counter!(names::BUDGET_CUTS, "shard" => s.clone()),
            events_dropped: counter!(names::EVENTS_DROPPED, "shard" => s.clone()),
            turns: counter!(names::LOOP_TURNS, "shard" => s.clone()),
            touched: counter!(names::CONNECTIONS_TOUCHED, "shard" => s.clone()),
            submissions: counter!(names::RING_SUBMISSIONS, "shard" => s.clone()),
            completions: counter!(names::RING_COMPLETIONS, "shard" => s.clone()),
            send_buffers_in_use: gauge!(names::SEND_BUFFERS_IN_USE, "shard" => s.clone()),
            send_buffers_exhausted: counter!(names::SEND_BUFFERS_EXHAUSTED, "shard" => s.clone()),
            handoff_stalls: counter!(names::HANDOFF_STALLS, "shard" => s.clone()),
            records_per_batch: histogram!(names::RECORDS_PER_BATCH, "shard" => s.clone()),
            streams: HashMap::new(),
            shard: s,
        }
    }

    /// A peer moved from `from` (if it had a state) to `to`.
    pub(crate) fn transition(&self, from: Option<ConnState>, to: ConnState) {
        let index = |st: ConnState| ConnState::ALL.iter().position(|s| *s == st);
        if let Some(i) = from.and_then(index) {
            self.connections[i].decrement(1.0);
        }
        // A peer that is gone is not counted as Disconnected forever.
        if to != ConnState::Disconnected
            && let Some(i) = index(to)
        {
            self.connections[i].increment(1.0);
        }
    }

    /// The counters of stream `name` (made on first use).
    pub(crate) fn stream(&mut self, name: &str) -> &StreamMetrics {
        if !self.streams.contains_key(name) {
            let (stream, shard) = (name.to_string(), self.shard.clone());
            let metrics = StreamMetrics {
                messages_sent: counter!(names::MESSAGES_SENT, "stream" => stream.clone(), "shard" => shard.clone()),
                bytes_sent: counter!(names::BYTES_SENT, "stream" => stream.clone(), "shard" => shard.clone()),
                messages_received: counter!(names::MESSAGES_RECEIVED, "stream" => stream.clone(), "shard" => shard.clone()),
                bytes_received: counter!(names::BYTES_RECEIVED, "stream" => stream, "shard" => shard),
            };
            self.streams.insert(name.into(), metrics);
        }
        &self.streams[name]
    }
}
