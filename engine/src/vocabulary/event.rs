//! What the application receives: messages, events and their filters, subscriptions.

use std::fmt;
use std::net::SocketAddr;
use std::ops::Deref;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use bytes::Bytes;
use glueberry_crypto::PeerId;
use glueberry_transport::{CloseCode, CloseReason, ConnState, Direction};

/// A stream name, interned: cloning it is a reference-count increment, so naming the stream of
/// every message costs no allocation. Get one with [`Node::stream`](crate::Node::stream).
#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct StreamName(Arc<str>);

impl StreamName {
    /// The same name: the same interned string, or equal strings.
    pub(crate) fn same(a: &StreamName, b: &StreamName) -> bool {
        Arc::ptr_eq(&a.0, &b.0) || a.0 == b.0
    }

    /// The shared string.
    pub(crate) fn shared(&self) -> &Arc<str> {
        &self.0
    }

    /// A name already shared (a connection's stream name): no copy.
    pub(crate) fn from_shared(name: Arc<str>) -> Self {
        Self(name)
    }

    pub(crate) fn new(name: &str) -> Self {
        Self(Arc::from(name))
    }
}

impl Deref for StreamName {
    type Target = str;
    fn deref(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for StreamName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(&*self.0, f)
    }
}

impl fmt::Display for StreamName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// A message received from a peer.
#[derive(Debug, Clone)]
pub struct Message {
    /// The sender.
    pub peer: PeerId,
    /// The stream it came on.
    pub stream: StreamName,
    /// Its bytes.
    pub data: Bytes,
}

/// A zero-copy message handler, called on the shard thread for every message instead of the
/// [`Node::messages`](crate::Node::messages) channel. It must be quick: the shard serves nothing
/// else while it runs.
///
/// It may answer inline: [`Node::try_send`](crate::Node::try_send) from the handler (through a
/// handle to its own node, set once the node runs) queues the reply on the shard it runs on,
/// and the reply leaves with that shard's sends of the same loop turn — no hop to an
/// application thread and back (BENCHMARKS.md, "Answering inline"). Never wait in it
/// (`send().await`, a lock the application holds long): `try_send` refuses with `BufferFull`
/// rather than wait.
pub type Handler = Arc<dyn Fn(&PeerId, &str, &Bytes) + Send + Sync>;

/// Something that happened to a peer.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub enum Event {
    /// The peer changed state.
    State {
        /// The peer.
        peer: PeerId,
        /// Its new state.
        state: ConnState,
        /// Its connection's direction, when connected.
        direction: Option<Direction>,
        /// Why a connection ended, when one did.
        reason: Option<CloseReason>,
    },
    /// The peer answered every stream we opened: its application completed the handshake too,
    /// so both sides are Established and messages on the streams it accepted flow (those it
    /// rejected were reported with [`Event::StreamRejected`] first). Once per connection, after
    /// the `State` event into `Established`.
    Ready {
        /// The peer.
        peer: PeerId,
    },
    /// A message accepted by `send` could not be queued on the connection; it comes back.
    SendFailed {
        /// The peer.
        peer: PeerId,
        /// The stream.
        stream: StreamName,
        /// Why (its [`kind`](crate::Error::kind) says what to do).
        error: crate::vocabulary::Error,
        /// The message.
        data: Bytes,
    },
    /// Messages accepted by `send` on one stream that the peer did not confirm: the connection
    /// closed (or the node stopped) first. With [`Event::SendFailed`](crate::Event::SendFailed)
    /// this is the delivery guarantee: every message `send` accepted is delivered to the peer's
    /// node or comes back in one of the two (see `ARCHITECTURE.md`, "Delivery").
    Undelivered {
        /// The peer.
        peer: PeerId,
        /// The stream.
        stream: StreamName,
        /// Never written to the connection: the peer did not get them. In `send` order.
        /// (Shared: every subscriber that gets the event gets the same list, not a copy.)
        unsent: Arc<[Bytes]>,
        /// Written, but not confirmed by the peer (by returning their credit) before the
        /// connection closed: the peer may or may not have them. In `send` order, all before
        /// `unsent`.
        unconfirmed: Arc<[Bytes]>,
    },
    /// The peer did not open a stream we opened; `unsent` queued messages were not delivered.
    StreamRejected {
        /// The peer.
        peer: PeerId,
        /// The stream.
        stream: StreamName,
        /// Messages not delivered.
        unsent: u64,
    },
    /// A subscriber fell behind and lost this many events (told before its next event).
    Missed {
        /// Events lost since the last one delivered.
        count: u64,
    },
    /// A connection was refused by the connection limits (before the peer became Connected,
    /// or at accept for a source IP over its limit).
    Refused {
        /// The peer, when it had authenticated.
        peer: Option<PeerId>,
        /// The remote address, when refused at accept.
        address: Option<SocketAddr>,
        /// Why.
        reason: Refusal,
    },
    /// A command (such as `complete_handshake`, or resolving the name `connect_to` was given)
    /// failed on the shard.
    CommandFailed {
        /// The peer.
        peer: PeerId,
        /// Why.
        error: crate::vocabulary::Error,
    },
    /// [`Node::track`](crate::Node::track) changed who the members are.
    Members {
        /// The epoch tracked.
        epoch: u64,
        /// Peers that are members now and were not before (dialled where their address is
        /// known).
        joined: Arc<[PeerId]>,
        /// Peers in no kept set any more (cut with `NotMember` after the grace).
        left: Arc<[PeerId]>,
    },
}

/// The kinds of [`Event`], to filter on ([`EventFilter::kinds`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum EventKind {
    /// [`Event::State`].
    State,
    /// [`Event::Ready`].
    Ready,
    /// [`Event::SendFailed`].
    SendFailed,
    /// [`Event::Undelivered`].
    Undelivered,
    /// [`Event::StreamRejected`].
    StreamRejected,
    /// [`Event::Missed`] (always delivered: it cannot be filtered out).
    Missed,
    /// [`Event::Refused`].
    Refused,
    /// [`Event::CommandFailed`].
    CommandFailed,
    /// [`Event::Members`].
    Members,
}

/// Why a connection was refused before it could carry messages.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum Refusal {
    /// An authenticated peer, refused by our connection limits (or its handshake cooldown):
    /// `code` is what it was told.
    Limits {
        /// Who dialled.
        direction: Direction,
        /// The close code sent to the peer.
        code: CloseCode,
    },
    /// Too many open sockets from the source's network group (`ConnectionLimits::max_per_group`).
    GroupSockets,
    /// Too many connection attempts a second from the source's network group.
    GroupRate,
    /// Too many unfinished handshakes from the source's network group.
    GroupPending,
    /// Too many unfinished handshakes on the node.
    Handshakes,
    /// Too many handshakes a second with sources that are not known peers
    /// (`ConnectionLimits::stranger_handshakes_per_sec`), node-wide.
    Strangers,
    /// Under `MembershipPolicy::MembersOnly`: the identity the initiator claimed is not a
    /// member; refused in the handshake (HelloReject 0x04) before its proof was checked, so
    /// the claim is not reported as a peer.
    NotMember,
}

impl fmt::Display for Refusal {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Refusal::Limits { direction, code } => {
                write!(f, "{direction:?} connection refused: {code}")
            }
            Refusal::GroupSockets => {
                f.write_str("too many inbound connections from this network group")
            }
            Refusal::GroupRate => {
                f.write_str("too many connection attempts per second from this network group")
            }
            Refusal::GroupPending => {
                f.write_str("too many pending handshakes from this network group")
            }
            Refusal::Handshakes => f.write_str("too many pending handshakes"),
            Refusal::Strangers => {
                f.write_str("too many handshakes a second with sources that are not known peers")
            }
            Refusal::NotMember => f.write_str("the identity claimed is not a member"),
        }
    }
}

impl Event {
    /// The peer the event is about, if any.
    pub fn peer(&self) -> Option<PeerId> {
        match self {
            Event::State { peer, .. }
            | Event::Ready { peer }
            | Event::SendFailed { peer, .. }
            | Event::Undelivered { peer, .. }
            | Event::StreamRejected { peer, .. }
            | Event::CommandFailed { peer, .. } => Some(*peer),
            Event::Refused { peer, .. } => *peer,
            Event::Missed { .. } | Event::Members { .. } => None,
        }
    }

    /// Its kind.
    pub fn kind(&self) -> EventKind {
        match self {
            Event::State { .. } => EventKind::State,
            Event::Ready { .. } => EventKind::Ready,
            Event::SendFailed { .. } => EventKind::SendFailed,
            Event::Undelivered { .. } => EventKind::Undelivered,
            Event::StreamRejected { .. } => EventKind::StreamRejected,
            Event::Missed { .. } => EventKind::Missed,
            Event::Refused { .. } => EventKind::Refused,
            Event::CommandFailed { .. } => EventKind::CommandFailed,
            Event::Members { .. } => EventKind::Members,
        }
    }
}

/// Which events a subscription wants. Each field left `None` lets everything through; the
/// three combine (an event must pass each one that is set). Nothing is dropped that the filter
/// does not exclude: a subscriber that falls behind is told how many it lost
/// ([`Event::Missed`]).
#[derive(Debug, Clone, Default)]
pub struct EventFilter {
    /// Only events about these peers ([`Event::Missed`] and refusals of unauthenticated
    /// sources have no peer: `Missed` always passes, those refusals do not pass this filter).
    pub peers: Option<Vec<PeerId>>,
    /// Only these kinds.
    pub kinds: Option<Vec<EventKind>>,
    /// Only changes into these states. Applies to [`Event::State`] alone: other kinds pass it.
    pub states: Option<Vec<ConnState>>,
}

impl EventFilter {
    /// Everything.
    pub fn all() -> Self {
        Self::default()
    }

    /// Only events about `peer`.
    pub fn peer(mut self, peer: PeerId) -> Self {
        self.peers.get_or_insert_with(Vec::new).push(peer);
        self
    }

    /// Only events of `kind` (call again to add more kinds).
    pub fn kind(mut self, kind: EventKind) -> Self {
        self.kinds.get_or_insert_with(Vec::new).push(kind);
        self
    }

    /// Only state changes into `state` (call again to add more); other kinds still pass.
    pub fn state(mut self, state: ConnState) -> Self {
        self.states.get_or_insert_with(Vec::new).push(state);
        self
    }

    pub(crate) fn matches(&self, event: &Event) -> bool {
        if let Some(peers) = &self.peers
            && !event.peer().is_some_and(|p| peers.contains(&p))
        {
            return false;
        }
        if let Some(kinds) = &self.kinds
            && !kinds.contains(&event.kind())
        {
            return false;
        }
        match (&self.states, event) {
            (Some(states), Event::State { state, .. }) => states.contains(state),
            _ => true,
        }
    }
}

pub(crate) struct Subscriber {
    pub id: u64,
    pub filter: EventFilter,
    pub tx: async_channel::Sender<Event>,
    pub missed: u64,
    /// Message bytes in events queued and not yet taken (shared with the [`Subscription`]).
    pub held: Arc<AtomicU64>,
    /// The most `held` may reach (see [`SUBSCRIPTION_BYTES_PER_SLOT`]).
    pub max_held: u64,
}

/// Message bytes (in [`Event::Undelivered`] and [`Event::SendFailed`]) a subscription may
/// hold in events it has not taken, per slot of its capacity: a queue of `capacity` events holds
/// at most `capacity` × 64 KiB of messages (6.25 MiB for the node's own queue of 100). Past it,
/// such events count as missed for that subscriber (as when its slots are full), so one that
/// never reads keeps at most that (plus the one event an empty queue always takes) alive,
/// whatever the node hands back.
pub const SUBSCRIPTION_BYTES_PER_SLOT: u64 = 64 * 1024;

impl Event {
    /// Message bytes the event carries (what a subscriber's queue holds alive for it).
    pub(crate) fn held_bytes(&self) -> u64 {
        match self {
            Event::Undelivered {
                unsent,
                unconfirmed,
                ..
            } => unsent
                .iter()
                .chain(unconfirmed.iter())
                .map(|m| m.len() as u64)
                .sum(),
            Event::SendFailed { data, .. } => data.len() as u64,
            _ => 0,
        }
    }
}

impl Subscriber {
    /// Queues `event` (carrying `bytes` of messages) unless the slots or the byte bound are
    /// full; `false` when it was not queued.
    pub(crate) fn offer(&self, event: Event, bytes: u64) -> bool {
        let held = self.held.load(Ordering::Acquire);
        if bytes > 0 && held > 0 && held + bytes > self.max_held {
            return false;
        }
        self.held.fetch_add(bytes, Ordering::AcqRel);
        if self.tx.try_send(event).is_err() {
            self.held.fetch_sub(bytes, Ordering::AcqRel);
            return false;
        }
        true
    }
}

/// A filtered stream of events ([`Node::subscribe`](crate::Node::subscribe), or every event
/// with [`Node::events`](crate::Node::events)); a [`futures::Stream`] and `Unpin`. A subscriber
/// that does not keep up loses events (never the node's time): it is told how many with
/// [`Event::Missed`](crate::Event::Missed) before its next event. Clones share the queue (each
/// event goes to one of them); it unsubscribes when the last is dropped, and ends when the node
/// stops.
#[derive(Clone)]
pub struct Subscription {
    rx: Pin<Box<async_channel::Receiver<Event>>>,
    /// Message bytes in the events queued for it (see [`SUBSCRIPTION_BYTES_PER_SLOT`]).
    held: Arc<AtomicU64>,
    _membership: Arc<Membership>,
}

/// The node's subscriptions, shared by its shards (which deliver to them) and each
/// [`Subscription`] (which leaves the list when its last clone is dropped).
pub(crate) type Subscribers = Arc<std::sync::Mutex<Vec<Subscriber>>>;

/// Leaves the list when dropped.
struct Membership {
    id: u64,
    subscribers: Subscribers,
}

impl Drop for Membership {
    fn drop(&mut self) {
        let mut subscribers = self.subscribers.lock().unwrap_or_else(|p| p.into_inner());
        subscribers.retain(|s| s.id != self.id);
    }
}

impl Subscription {
    /// Joins `subscribers` with `filter`, in a queue of `capacity`.
    pub(crate) fn join(
        subscribers: &Subscribers,
        id: u64,
        filter: EventFilter,
        capacity: usize,
    ) -> Self {
        let (tx, rx) = async_channel::bounded(capacity.max(1));
        let held = Arc::new(AtomicU64::new(0));
        subscribers
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .push(Subscriber {
                id,
                filter,
                tx,
                missed: 0,
                held: held.clone(),
                max_held: (capacity.max(1) as u64).saturating_mul(SUBSCRIPTION_BYTES_PER_SLOT),
            });
        Self {
            rx: Box::pin(rx),
            held,
            _membership: Arc::new(Membership {
                id,
                subscribers: subscribers.clone(),
            }),
        }
    }

    /// The next event, waiting for it; `None` once the node stopped and every event was taken.
    pub async fn recv(&self) -> Option<Event> {
        self.taken(self.rx.recv().await.ok())
    }

    /// The next event, blocking the thread (for code outside async; never in it).
    pub fn recv_blocking(&self) -> Option<Event> {
        self.taken(self.rx.recv_blocking().ok())
    }

    /// The next event if one is ready.
    pub fn try_recv(&self) -> Option<Event> {
        self.taken(self.rx.try_recv().ok())
    }

    /// An event left the queue: the bytes it held are no longer the queue's.
    fn taken(&self, event: Option<Event>) -> Option<Event> {
        if let Some(event) = &event {
            let bytes = event.held_bytes();
            if bytes > 0 {
                self.held.fetch_sub(bytes, Ordering::AcqRel);
            }
        }
        event
    }

    /// Events waiting to be taken.
    pub fn len(&self) -> usize {
        self.rx.len()
    }

    /// No event is waiting.
    pub fn is_empty(&self) -> bool {
        self.rx.is_empty()
    }
}

impl futures::Stream for Subscription {
    type Item = Event;

    fn poll_next(
        mut self: Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Event>> {
        let polled = self.rx.as_mut().poll_next(cx);
        polled.map(|event| self.taken(event))
    }
}

impl fmt::Debug for Subscription {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Subscription")
            .field("id", &self._membership.id)
            .field("waiting", &self.rx.len())
            .finish()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn undelivered(bytes: usize) -> Event {
        Event::Undelivered {
            peer: glueberry_crypto::Identity::from_seed(&[1; 32]).peer_id(),
            stream: StreamName::from_shared(Arc::from("s")),
            unsent: vec![Bytes::from(vec![0u8; bytes])].into(),
            unconfirmed: Arc::new([]),
        }
    }

    /// A subscriber that does not read holds at most its byte bound (capacity × 64 KiB) of
    /// handed-back messages, plus the one event an empty queue always takes; taking events
    /// makes room again.
    #[test]
    fn a_subscription_that_does_not_read_holds_at_most_its_byte_bound() {
        let subscribers: Subscribers = Arc::default();
        let subscription = Subscription::join(&subscribers, 1, EventFilter::default(), 4);
        let offer = |event: Event| {
            let bytes = event.held_bytes();
            subscribers.lock().unwrap()[0].offer(event, bytes)
        };
        assert!(
            offer(undelivered(1 << 20)),
            "an empty queue takes any event"
        );
        assert!(!offer(undelivered(1)), "past the bound (256 KiB): missed");
        assert!(
            offer(Event::Missed { count: 1 }),
            "events without messages still fit"
        );
        assert!(subscription.try_recv().is_some());
        assert_eq!(subscription.held.load(Ordering::Acquire), 0);
        assert!(offer(undelivered(200 << 10)));
        assert!(offer(undelivered(56 << 10)), "up to the bound");
        assert!(!offer(undelivered(1)));
        assert_eq!(subscription.held.load(Ordering::Acquire), 256 << 10);
    }
}
