//! Discovery among members: each member publishes a signed address record; members pass the
//! records of tracked members to each other on [`MEMBERS_STREAM`], and dial the members whose
//! addresses they learn (PROTOCOL.md §9).
//!
//! It runs on a thread of its own ("glueberry-members", started by the first
//! [`crate::Node::track`]) and uses the node as an application would: `try_send` on the
//! members' stream, its own receiver for that stream, a subscription for `Ready`. Nothing of it
//! runs on a shard: signature checks and address-book updates cost the shards nothing.
//!
//! What a member can make it spend is bounded per peer: [`VERIFY_BURST`] signature checks and
//! then [`VERIFY_PER_SEC`] a second, one full answer per [`SYNC_INTERVAL`] to a request; a
//! subject's record is passed on at most once per [`FORWARD_INTERVAL`]; what it holds is one
//! record per tracked member. Records from or about non-members are dropped before any signature check.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use futures::FutureExt as _;
use glueberry_crypto::PeerId;
use glueberry_crypto::address::{
    AddressRecord, MAX_RECORDS_PER_MESSAGE, decode_records_message, encode_records_message,
};
use glueberry_transport::ConnState;

use super::handle::WeakNode;
use super::{Event, EventFilter, EventKind, Node, Subscription};
use crate::Messages;
use crate::members::{
    Directory, Discovery, Known, MEMBERS_STREAM, MembersConfig, PeerSets, Tracked,
};

/// How often the thread looks at grace periods and at Ready members it has not synced.
const TICK: Duration = Duration::from_millis(200);
/// Signature checks a member may cost at once, and then per second.
pub(crate) const VERIFY_BURST: f64 = 256.0;
pub(crate) const VERIFY_PER_SEC: f64 = 64.0;
/// At most one full answer per peer this often.
pub(crate) const SYNC_INTERVAL: Duration = Duration::from_secs(1);
/// A subject's record is passed on at most this often (a member that bumps its sequence in a
/// loop cannot make the members flood its records faster); a newer one that arrives sooner is
/// passed on when the interval ends.
pub(crate) const FORWARD_INTERVAL: Duration = Duration::from_secs(1);
/// The message kind asking a member for every record it holds (PROTOCOL.md §9.3).
const REQUEST_MESSAGE: u8 = 0x02;

/// A token bucket of signature checks.
struct Bucket {
    tokens: f64,
    at: Instant,
}

impl Bucket {
    fn take(&mut self, now: Instant) -> bool {
        let refill = now.duration_since(self.at).as_secs_f64() * VERIFY_PER_SEC;
        self.tokens = (self.tokens + refill).min(VERIFY_BURST);
        self.at = now;
        if self.tokens >= 1.0 {
            self.tokens -= 1.0;
            true
        } else {
            false
        }
    }
}

struct State {
    node: WeakNode,
    me: PeerId,
    network_id: String,
    own: Option<AddressRecord>,
    grace: Duration,
    sets: Arc<PeerSets>,
    directory: Arc<Directory>,
    /// Members that left every kept set: cut when their grace ends.
    leaving: HashMap<PeerId, Instant>,
    /// Ready members that have had every record we hold on their current connection.
    synced: HashSet<PeerId>,
    budgets: HashMap<PeerId, Bucket>,
    answered: HashMap<PeerId, Instant>,
    metrics: crate::metrics::MembersMetrics,
    /// The directory's counts already added to the counters.
    counted: (u64, u64),
}

/// Starts the thread; it ends when the node stops or its last handle is dropped.
pub(crate) fn start(
    node: &Node,
    config: &MembersConfig,
    own: Option<AddressRecord>,
    network_id: String,
    sets: Arc<PeerSets>,
) -> std::io::Result<Discovery> {
    if own.is_none() {
        tracing::warn!(
            "no address record to publish: the node listens on an unspecified address and \
             MembersConfig::advertise is empty, so members learn where it is only when it \
             dials them"
        );
    }
    let (commands, receiver) = async_channel::bounded(64);
    let directory = Arc::new(Directory::default());
    let messages = node
        .messages_on(MEMBERS_STREAM)
        .map_err(|e| std::io::Error::other(e.to_string()))?;
    let filter = EventFilter::all()
        .kind(EventKind::Ready)
        .kind(EventKind::State);
    let events = node.subscribe(filter, 4096);
    {
        // Records kept from an earlier run: members are found where they last were.
        let mut known = directory.lock();
        for entry in node.book_records() {
            let peer = entry.peer();
            let slot = known.entry(peer).or_insert_with(Known::empty);
            slot.record = Some(entry);
            slot.from_book = true;
        }
    }
    let state = State {
        node: node.downgrade(),
        me: node.peer_id(),
        network_id,
        own,
        grace: config.grace,
        sets,
        directory: directory.clone(),
        leaving: HashMap::new(),
        synced: HashSet::new(),
        budgets: HashMap::new(),
        answered: HashMap::new(),
        metrics: node.in_recorder(|| crate::metrics::MembersMetrics::new(config.keep_epochs)),
        counted: (0, 0),
    };
    std::thread::Builder::new()
        .name("glueberry-members".into())
        .spawn(move || futures::executor::block_on(run(state, receiver, messages, events)))?;
    Ok(Discovery {
        commands,
        directory,
    })
}

async fn run(
    mut state: State,
    commands: async_channel::Receiver<Tracked>,
    mut messages: Messages,
    events: Subscription,
) {
    let mut tick = futures_timer::Delay::new(TICK).fuse();
    loop {
        let command = commands.recv().fuse();
        let message = messages.recv().fuse();
        let event = events.recv().fuse();
        futures::pin_mut!(command, message, event);
        futures::select_biased! {
            command = command => match command {
                Ok(command) => state.on_command(command),
                Err(_) => return,
            },
            event = event => match event {
                Some(event) => state.on_event(event),
                None => return,
            },
            message = message => match message {
                Some(message) => state.on_message(message.peer, &message.data),
                None => return,
            },
            _ = tick => {
                if !state.on_tick() {
                    return;
                }
                tick = futures_timer::Delay::new(TICK).fuse();
            }
        }
    }
}

impl State {
    fn on_command(&mut self, command: Tracked) {
        let Some(node) = self.node.upgrade() else {
            return;
        };
        let Tracked::Track {
            epoch,
            members,
            change,
        } = command;
        {
            let mut known = self.directory.lock();
            for member in &members {
                if !member.addresses.is_empty() {
                    known.entry(member.peer).or_insert_with(Known::empty).given =
                        member.addresses.clone();
                }
            }
            // Records of peers in no kept set are not held.
            known.retain(|peer, _| self.sets.is_member(peer));
        }
        for peer in &change.left {
            self.leaving.insert(*peer, Instant::now() + self.grace);
        }
        self.leaving.retain(|peer, _| !self.sets.is_member(peer));
        for member in self.sets.members() {
            self.dial(&node, member);
        }
        node.publish(Event::Members {
            epoch,
            joined: change.joined.into(),
            left: change.left.into(),
        });
        // Records we ignored while these members were strangers to us: ask again, and tell
        // everyone what we hold.
        self.synced.clear();
        for peer in node.ready_peers() {
            if self.sets.is_member(&peer) {
                let _ = node.try_send(peer, MEMBERS_STREAM, Bytes::from_static(&[REQUEST_MESSAGE]));
            }
        }
    }

    /// Makes `peer` persistent and dials it where it is known to be (nothing to do for an
    /// address not known yet: a record will bring one).
    fn dial(&self, node: &Node, peer: PeerId) {
        if peer == self.me {
            return;
        }
        let address = self.directory.lock().get(&peer).and_then(|k| k.address().0);
        match address {
            Some(addr) => {
                let _ = node.add_persistent_peer(peer, addr);
            }
            None => {
                let _ = node.set_persistent(peer, true);
            }
        }
    }

    fn on_event(&mut self, event: Event) {
        let Some(node) = self.node.upgrade() else {
            return;
        };
        match event {
            Event::Ready { peer } if self.sets.is_member(&peer) => {
                self.sync(&node, peer);
            }
            Event::State { peer, state, .. } => {
                if state != ConnState::Established {
                    self.synced.remove(&peer);
                }
                if state == ConnState::Connected
                    && let Some(known) = self.directory.lock().get_mut(&peer)
                {
                    known.last_seen = Some(unix_secs());
                }
            }
            _ => {}
        }
    }

    /// Sends `peer` every record we hold of tracked members, ours first.
    fn sync(&mut self, node: &Node, peer: PeerId) {
        let records: Vec<AddressRecord> = {
            let known = self.directory.lock();
            self.own
                .iter()
                .cloned()
                .chain(
                    known
                        .iter()
                        .filter(|(subject, _)| **subject != peer && self.sets.is_member(subject))
                        .filter_map(|(_, k)| k.record.clone()),
                )
                .collect()
        };
        let mut sent = true;
        for chunk in records.chunks(MAX_RECORDS_PER_MESSAGE) {
            let message = Bytes::from(encode_records_message(chunk));
            sent &= node.try_send(peer, MEMBERS_STREAM, message).is_ok();
        }
        if sent {
            self.synced.insert(peer);
        }
    }

    fn on_message(&mut self, from: PeerId, data: &[u8]) {
        let Some(node) = self.node.upgrade() else {
            return;
        };
        let ignored = &self.directory.ignored;
        if !self.sets.is_member(&from) {
            ignored.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            return;
        }
        if data == [REQUEST_MESSAGE] {
            let now = Instant::now();
            let due = self
                .answered
                .get(&from)
                .is_none_or(|at| now.duration_since(*at) >= SYNC_INTERVAL);
            if due {
                self.answered.insert(from, now);
                self.sync(&node, from);
            }
            return;
        }
        let records = match decode_records_message(data) {
            Ok(Some(records)) => records,
            // Another kind (a later version's): not ours to read.
            Ok(None) => return,
            Err(_) => {
                ignored.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                return;
            }
        };
        let fresh = self.take_records(from, records);
        if fresh.is_empty() {
            return;
        }
        for record in &fresh {
            self.dial(&node, record.peer());
        }
        // Passed on once, to every other Ready member: each record floods the mesh once per
        // sequence number (a subject's at most once per FORWARD_INTERVAL: the rest at a tick).
        let now = Instant::now();
        let due: Vec<AddressRecord> = {
            let mut known = self.directory.lock();
            fresh
                .into_iter()
                .filter(|record| {
                    let Some(entry) = known.get_mut(&record.peer()) else {
                        return false;
                    };
                    let due = entry
                        .forwarded_at
                        .is_none_or(|at| now.duration_since(at) >= FORWARD_INTERVAL);
                    if due {
                        entry.forwarded_at = Some(now);
                    } else {
                        entry.forward_pending = true;
                    }
                    due
                })
                .collect()
        };
        self.forward(&node, &due, Some(from));
    }

    /// Sends `records` to every Ready member but `except` and the records' subjects.
    fn forward(&self, node: &Node, records: &[AddressRecord], except: Option<PeerId>) {
        if records.is_empty() {
            return;
        }
        for chunk in records.chunks(MAX_RECORDS_PER_MESSAGE) {
            let message = Bytes::from(encode_records_message(chunk));
            for peer in node.ready_peers() {
                if Some(peer) != except && self.sets.is_member(&peer) {
                    let _ = node.try_send(peer, MEMBERS_STREAM, message.clone());
                }
            }
        }
    }

    /// Keeps the records that replace what we hold (checked in that order: membership,
    /// sequence, the sender's budget, and only then the signature).
    fn take_records(&mut self, from: PeerId, records: Vec<AddressRecord>) -> Vec<AddressRecord> {
        let now = Instant::now();
        let ignored = &self.directory.ignored;
        let mut fresh = Vec::new();
        for record in records {
            let subject = record.peer();
            if subject == self.me || !self.sets.is_member(&subject) {
                ignored.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                continue;
            }
            let replaces = {
                let known = self.directory.lock();
                known.get(&subject).is_none_or(|k| {
                    k.record
                        .as_ref()
                        .is_none_or(|old| record.sequence() > old.sequence())
                })
            };
            if !replaces {
                continue;
            }
            let bucket = self.budgets.entry(from).or_insert(Bucket {
                tokens: VERIFY_BURST,
                at: now,
            });
            if !bucket.take(now) || record.verify(&self.network_id).is_err() {
                ignored.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                continue;
            }
            {
                let mut known = self.directory.lock();
                let entry = known.entry(subject).or_insert_with(Known::empty);
                entry.record = Some(record.clone());
                entry.from_book = false;
            }
            if let Some(node) = self.node.upgrade() {
                node.keep_record(record.clone());
            }
            self.directory
                .accepted
                .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            fresh.push(record);
        }
        fresh
    }

    /// Grace periods and Ready members not synced (a `Ready` event lost to a full queue).
    /// False once the node is gone.
    fn on_tick(&mut self) -> bool {
        let Some(node) = self.node.upgrade() else {
            return false;
        };
        let now = Instant::now();
        let due: Vec<PeerId> = self
            .leaving
            .iter()
            .filter(|(_, deadline)| **deadline <= now)
            .map(|(peer, _)| *peer)
            .collect();
        for peer in due {
            self.leaving.remove(&peer);
            if !self.sets.is_member(&peer) {
                let _ = node.set_persistent(peer, false);
                node.cut(peer, glueberry_transport::CloseCode::NotMember);
            }
        }
        let pending: Vec<AddressRecord> = {
            let mut known = self.directory.lock();
            known
                .values_mut()
                .filter(|k| {
                    k.forward_pending
                        && k.forwarded_at
                            .is_none_or(|at| now.duration_since(at) >= FORWARD_INTERVAL)
                })
                .filter_map(|k| {
                    k.forward_pending = false;
                    k.forwarded_at = Some(now);
                    k.record.clone()
                })
                .collect()
        };
        self.forward(&node, &pending, None);
        self.record_metrics(&node);
        let ready: Vec<PeerId> = node.ready_peers();
        self.synced.retain(|peer| ready.contains(peer));
        for peer in ready {
            if self.sets.is_member(&peer) && !self.synced.contains(&peer) {
                self.sync(&node, peer);
            }
        }
        self.budgets.retain(|peer, _| {
            self.sets.is_member(peer) || node.state(*peer) != ConnState::Disconnected
        });
        self.answered.retain(|peer, _| self.sets.is_member(peer));
        true
    }
}

impl State {
    fn record_metrics(&mut self, node: &Node) {
        let (connected, tracked) = node.members_connected();
        self.metrics.tracked.set(tracked as f64);
        self.metrics.connected.set(connected as f64);
        let epochs = self.sets.epochs();
        if let Some((newest, _)) = epochs.last() {
            self.metrics.epoch.set(*newest as f64);
        }
        for (age, gauge) in self.metrics.epoch_sizes.iter().enumerate() {
            let size = epochs.iter().rev().nth(age).map_or(0, |(_, n)| *n);
            gauge.set(size as f64);
        }
        let accepted = self
            .directory
            .accepted
            .load(std::sync::atomic::Ordering::Relaxed);
        let ignored = self
            .directory
            .ignored
            .load(std::sync::atomic::Ordering::Relaxed);
        self.metrics.accepted.increment(accepted - self.counted.0);
        self.metrics.ignored.increment(ignored - self.counted.1);
        self.counted = (accepted, ignored);
    }
}

fn unix_secs() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}
