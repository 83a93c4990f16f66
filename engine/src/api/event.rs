//! What the application receives: messages, events and their filters, subscriptions.

use std::fmt;
use std::net::SocketAddr;
use std::ops::Deref;
use std::sync::Arc;

use bytes::Bytes;
use glueberry_crypto::PeerId;
use glueberry_transport::{CloseReason, ConnState, Direction};

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
    /// A message accepted by `send` could not be queued on the connection; it comes back.
    SendFailed {
        /// The peer.
        peer: PeerId,
        /// The stream.
        stream: StreamName,
        /// Why.
        error: String,
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
        unsent: Vec<Bytes>,
        /// Written, but not confirmed by the peer (by returning their credit) before the
        /// connection closed: the peer may or may not have them. In `send` order, all before
        /// `unsent`.
        unconfirmed: Vec<Bytes>,
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
        reason: String,
    },
    /// A command (such as `complete_handshake`) failed on the shard.
    CommandFailed {
        /// The peer.
        peer: PeerId,
        /// Why.
        error: String,
    },
}

impl Event {
    /// The peer the event is about, if any.
    pub fn peer(&self) -> Option<PeerId> {
        match self {
            Event::State { peer, .. }
            | Event::SendFailed { peer, .. }
            | Event::Undelivered { peer, .. }
            | Event::StreamRejected { peer, .. }
            | Event::CommandFailed { peer, .. } => Some(*peer),
            Event::Refused { peer, .. } => *peer,
            Event::Missed { .. } => None,
        }
    }
}

/// Which events a subscription wants: by peer and/or by state (`None` = all).
#[derive(Debug, Clone, Default)]
pub struct EventFilter {
    /// Only events about these peers.
    pub peers: Option<Vec<PeerId>>,
    /// Only state changes into these states (other kinds of events pass when `None`).
    pub states: Option<Vec<ConnState>>,
}

impl EventFilter {
    pub(crate) fn matches(&self, event: &Event) -> bool {
        if let Some(peers) = &self.peers
            && !event.peer().is_some_and(|p| peers.contains(&p))
        {
            return false;
        }
        match (&self.states, event) {
            (Some(states), Event::State { state, .. }) => states.contains(state),
            (Some(_), _) => false,
            (None, _) => true,
        }
    }
}

pub(crate) struct Subscriber {
    pub id: u64,
    pub filter: EventFilter,
    pub tx: async_channel::Sender<Event>,
    pub missed: u64,
}

/// A filtered stream of events; unsubscribes when dropped. A subscriber that does not keep up loses
/// events (never the node's time): it is told how many with
/// [`Event::Missed`](crate::Event::Missed).
pub struct Subscription {
    id: u64,
    rx: async_channel::Receiver<Event>,
    subscribers: Subscribers,
}

/// The node's subscriptions, shared by its shards (which deliver to them) and each
/// [`Subscription`] (which leaves the list when dropped).
pub(crate) type Subscribers = Arc<std::sync::Mutex<Vec<Subscriber>>>;

impl Subscription {
    pub(crate) fn new(
        id: u64,
        rx: async_channel::Receiver<Event>,
        subscribers: Subscribers,
    ) -> Self {
        Self {
            id,
            rx,
            subscribers,
        }
    }

    /// The next event, waiting for it.
    pub async fn recv(&self) -> Option<Event> {
        self.rx.recv().await.ok()
    }

    /// The next event, blocking the thread.
    pub fn recv_blocking(&self) -> Option<Event> {
        self.rx.recv_blocking().ok()
    }

    /// The next event if one is ready.
    pub fn try_recv(&self) -> Option<Event> {
        self.rx.try_recv().ok()
    }
}

impl Drop for Subscription {
    fn drop(&mut self) {
        let mut subscribers = self.subscribers.lock().unwrap_or_else(|p| p.into_inner());
        subscribers.retain(|s| s.id != self.id);
    }
}
