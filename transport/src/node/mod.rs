//! A node's set of connections, sans-IO: which peer is in which state, dialling and
//! reconnecting with backoff, handshake timeouts and cooldown, and simultaneous dials.
//!
//! The driver (the io_uring engine, or the in-memory network) performs the [`Action`]s, feeds
//! bytes and timer ticks in, and reads [`NodeEvent`]s out.

use std::cmp::Reverse;
use std::collections::{BTreeMap, BTreeSet, BinaryHeap, VecDeque};
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use glueberry_crypto::{HandshakeConfig, PeerId};

use crate::ConnectionConfig;
use crate::connection::Connection;
use crate::event::{CloseCode, CloseReason, Direction, Event, SendError, StreamError, StreamId};
use crate::peer::{Backoff, ConnState, Jitter};

mod commands;
mod driver;
mod states;
mod table;
#[cfg(test)]
mod tests;

pub use table::Slots;

/// Identifies one connection (one TCP stream) of a node: its slot in the node's connection
/// table and the slot's generation (see [`Slots`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ConnId(pub u64);

/// A node's settings (Glueberry's defaults).
#[derive(Debug, Clone)]
pub struct NodeConfig {
    /// Per-connection settings.
    pub connection: Arc<ConnectionConfig>,
    /// This node's handshake settings (identity, network, suites).
    pub handshake: Arc<HandshakeConfig>,
    /// From dial to authenticated (default 30 s).
    pub dial_timeout: Duration,
    /// From Connected to Established (default 30 s); expiry goes to Cooldown.
    pub handshake_timeout: Duration,
    /// How long a peer stays in Cooldown (default 1 min).
    pub cooldown: Duration,
    /// Reconnection schedule.
    pub backoff: Backoff,
    /// Seed for the backoff jitter.
    pub seed: u64,
    /// Which share of the peers this core owns, when a node runs several (one per shard).
    pub shard: Shard,
    /// Connection limits shared by all of a node's cores; `None` admits everyone.
    pub admission: Option<Arc<dyn Admission>>,
    /// How long an inbound connection may take to finish the secure handshake (default 10 s):
    /// a peer that connects and stalls (slowloris) is cut off then.
    pub pending_handshake_timeout: Duration,
    /// Inbound connections still in the secure handshake that this core accepts at once
    /// (default 256); more are refused at accept.
    pub max_pending_handshakes: usize,
}

/// Decides whether an authenticated connection may be kept (the connection manager's limits),
/// shared by every core of a node. `admit` is asked once per connection before the peer
/// becomes Connected; `release` is called when an admitted connection ends. Persistent peers
/// (see [`NodeCore::set_persistent`]) are never asked about.
pub trait Admission: Send + Sync + std::fmt::Debug {
    /// Admit a connection to `peer` in `direction` (from `remote`, when inbound), or refuse it
    /// with a close code.
    fn admit(
        &self,
        peer: &PeerId,
        direction: Direction,
        remote: Option<std::net::IpAddr>,
    ) -> Result<(), CloseCode>;
    /// An admitted connection ended.
    fn release(&self, peer: &PeerId, direction: Direction);
}

/// A core's share of the peers: peer `p` belongs to shard [`shard_of`]`(p, count)`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Shard {
    /// This core's index.
    pub index: usize,
    /// How many cores share the peers.
    pub count: usize,
}

impl Shard {
    /// The only shard: owns every peer.
    pub const SINGLE: Shard = Shard { index: 0, count: 1 };

    /// Whether this shard owns `peer`.
    pub fn owns(&self, peer: &PeerId) -> bool {
        shard_of(peer, self.count) == self.index
    }
}

/// The shard that owns `peer` among `count`: a peer id is a uniformly random key, so its first
/// eight bytes spread peers evenly without hashing.
pub fn shard_of(peer: &PeerId, count: usize) -> usize {
    let key = peer.public_key();
    let word = u64::from_le_bytes([
        key[0], key[1], key[2], key[3], key[4], key[5], key[6], key[7],
    ]);
    (word % count.max(1) as u64) as usize
}

impl NodeConfig {
    /// Glueberry's defaults around the given connection and handshake settings.
    pub fn new(connection: Arc<ConnectionConfig>, handshake: Arc<HandshakeConfig>) -> Self {
        Self {
            connection,
            handshake,
            dial_timeout: Duration::from_secs(30),
            handshake_timeout: Duration::from_secs(30),
            cooldown: Duration::from_secs(60),
            backoff: Backoff::default(),
            seed: 1,
            shard: Shard::SINGLE,
            admission: None,
            pending_handshake_timeout: Duration::from_secs(10),
            max_pending_handshakes: 256,
        }
    }
}

/// A connection's streams: id and name.
pub type StreamNames = Vec<(StreamId, Arc<str>)>;

/// Something the driver must do.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Action {
    /// Open a TCP connection to `addr` for `conn`; report with [`NodeCore::handle_dial_result`].
    Dial {
        /// The connection.
        conn: ConnId,
        /// The peer it is meant to reach (a runtime that dials by host name resolves the
        /// peer's name again for each dial).
        peer: PeerId,
        /// Where to.
        addr: SocketAddr,
    },
    /// An inbound connection authenticated a peer another shard owns: once no I/O is in flight
    /// on it, take it with [`NodeCore::detach`] and give it (with its socket) to that shard,
    /// which calls [`NodeCore::adopt`].
    Handoff {
        /// The connection.
        conn: ConnId,
        /// The peer, whose shard is [`shard_of`].
        peer: PeerId,
    },
    /// Write `last_bytes` (a CLOSE frame, if any), then close `conn`'s socket. The connection
    /// is already forgotten.
    Close {
        /// The connection.
        conn: ConnId,
        /// Final bytes to send before closing.
        last_bytes: Vec<u8>,
    },
}

/// Something the application should know.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum NodeEvent {
    /// A peer changed state.
    State {
        /// The peer.
        peer: PeerId,
        /// Its new state.
        state: ConnState,
        /// The direction of its connection, when it has one.
        direction: Option<Direction>,
        /// Why a connection ended, when one did.
        reason: Option<CloseReason>,
    },
    /// A message arrived.
    Message {
        /// From whom.
        peer: PeerId,
        /// The connection it came on (which may be closed, or replaced, by the time the
        /// event is taken).
        conn: ConnId,
        /// On which of our streams of that connection.
        stream: StreamId,
        /// That stream's name, resolved when the message arrived.
        name: std::sync::Arc<str>,
        /// Its bytes. Call [`NodeCore::release`] with `conn` once consumed.
        data: Bytes,
    },
    /// The peer answered every stream we opened: both sides are Established (see
    /// [`crate::Event::Ready`]).
    Ready {
        /// The peer.
        peer: PeerId,
    },
    /// The peer did not open one of our streams; `unsent` queued messages were not delivered.
    StreamRejected {
        /// The peer.
        peer: PeerId,
        /// Our stream.
        stream: StreamId,
        /// Messages not delivered.
        unsent: u64,
    },
    /// A connection of the peer closed with messages it had not confirmed on one of our streams
    /// (see [`crate::Event::Undelivered`]). Comes before the peer's state change.
    Undelivered {
        /// The peer.
        peer: PeerId,
        /// Our stream, and its name.
        stream: StreamId,
        /// The stream's name.
        name: std::sync::Arc<str>,
        /// Never written: the peer did not get them.
        unsent: Vec<Bytes>,
        /// Written, not confirmed: the peer may or may not have them.
        unconfirmed: Vec<Bytes>,
    },
    /// The peer confirmed messages on one of our streams (see [`crate::Event::Confirmed`]),
    /// reported for replaced connections too.
    Confirmed {
        /// The peer.
        peer: PeerId,
        /// The stream's name.
        name: std::sync::Arc<str>,
        /// Messages confirmed.
        messages: u64,
        /// Their payload bytes.
        bytes: u64,
    },
    /// An authenticated connection was refused by the connection limits (or the cooldown).
    Refused {
        /// The peer.
        peer: PeerId,
        /// Who dialled.
        direction: Direction,
        /// The close code sent to the peer.
        code: CloseCode,
    },
    /// An inbound connection whose initiator claimed an identity the handshake's admission
    /// check refused (`HandshakeConfig::with_admission`: not a member): it was told with
    /// HelloReject and closed before any proof was checked.
    StrangerRefused {
        /// Where it came from, when known.
        remote: Option<std::net::IpAddr>,
    },
    /// A stream that hit its high watermark accepts messages again.
    Writable {
        /// The peer.
        peer: PeerId,
        /// The stream.
        stream: StreamId,
    },
}

/// Why a node command was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum NodeError {
    /// The peer is not known (add it first).
    #[error("unknown peer")]
    UnknownPeer,
    /// The peer has no address to dial.
    #[error("peer has no address")]
    NoAddress,
    /// The peer has no live connection.
    #[error("peer not connected")]
    NotConnected,
    /// The peer is blacklisted.
    #[error("peer is blacklisted")]
    Blacklisted,
    /// Sending failed.
    #[error(transparent)]
    Send(#[from] SendError),
    /// Opening streams failed.
    #[error(transparent)]
    Stream(#[from] StreamError),
}

#[derive(Debug)]
struct Peer {
    state: ConnState,
    addr: Option<SocketAddr>,
    reconnect: bool,
    /// Always dialled, never given up on, never counted against the connection limits.
    persistent: bool,
    conn: Option<ConnId>,
    /// The direction of the admitted connection whose slot this peer holds, if any.
    admitted: Option<Direction>,
    direction: Option<Direction>,
    attempts: u32,
    deadline: Option<Instant>,
    connected_at: Option<Instant>,
    total_connected: Duration,
    connections: u64,
    failures: u64,
    last_message_at: Option<Instant>,
}

/// What a node knows about one peer's traffic and history (`Serialize` with the `serde`
/// feature: durations as seconds and nanoseconds, the peer as its text form).
#[derive(Debug, Clone, PartialEq, Eq)]
#[cfg_attr(feature = "serde", derive(serde::Serialize))]
pub struct PeerStats {
    /// The peer.
    pub peer: PeerId,
    /// Its state.
    pub state: ConnState,
    /// Its connection's direction.
    pub direction: Option<Direction>,
    /// How long the current connection has been up.
    pub connected_for: Option<Duration>,
    /// Time connected over all connections, the current one included.
    pub total_connected: Duration,
    /// Connections made (authenticated).
    pub connections: u64,
    /// Dials and connections that failed.
    pub failures: u64,
    /// Time since the last message received.
    pub since_last_message: Option<Duration>,
    /// The latest keepalive round trip.
    pub rtt: Option<Duration>,
    /// Traffic per stream of the current connection.
    pub streams: Vec<crate::StreamStats>,
}

#[derive(Debug)]
struct Conn {
    conn: Connection,
    peer: Option<PeerId>,
    /// Waiting to be handed to the owner shard: its events are left for the adopter.
    parked: bool,
    /// For an inbound connection still in its secure handshake: when it was accepted.
    accepted_at: Option<Instant>,
    /// For an inbound connection: the address it came from.
    remote: Option<std::net::IpAddr>,
    /// On the core's list of connections to look at again (see `NodeCore::touched`).
    touched: bool,
    /// On the list of connections with something to send.
    ready: bool,
    /// The deadline this connection has in the timer heap, if any (an earlier entry of its
    /// own is stale).
    timer: Option<Instant>,
    /// What it held of what it received when last counted (see `NodeCore::received_held`).
    received_held: u64,
}

/// A node's connections and peers.
pub struct NodeCore {
    config: NodeConfig,
    me: PeerId,
    peers: BTreeMap<PeerId, Peer>,
    conns: Slots<Conn>,
    /// Connections something happened to since the core last looked (input, a send, credit, a
    /// timer): their deadline and whether they have output are looked at again, and only
    /// theirs. A loop turn costs the connections with work, not all of them.
    touched: Vec<ConnId>,
    /// What all connections hold of what they received (the sum of their `received_held`).
    received_held: u64,
    /// Connections with something to send, each once, for [`NodeCore::take_ready`].
    ready: Vec<ConnId>,
    /// Each connection's next deadline, earliest first: one entry per connection at most (the
    /// one in its `timer`). A deadline that moves earlier replaces the entry; one that moves
    /// later keeps it (the connection is looked at then and scheduled again), so a busy
    /// connection whose idle deadline moves with every input costs nothing here.
    conn_timers: BTreeSet<(Instant, ConnId)>,
    /// Each peer's deadline (dial, handshake, cooldown, reconnect); live while it matches the
    /// peer's `deadline`.
    peer_timers: BinaryHeap<Reverse<(Instant, PeerId)>>,
    /// Inbound connections accepted and not yet known to be past their secure handshake
    /// (pruned when counted): the pending-handshake count costs at most the table's bound.
    pending: Vec<ConnId>,
    actions: VecDeque<Action>,
    events: VecDeque<NodeEvent>,
    scratch: Vec<Event>,
    /// Connections closed while handling another's events; settled right after.
    closing: Vec<ConnId>,
    /// Peers refused before any application byte, and disconnected when added.
    blacklist: std::collections::BTreeSet<PeerId>,
    jitter: Jitter,
    invalid_transitions: u64,
}

impl NodeCore {
    /// A node with no peers.
    pub fn new(config: NodeConfig) -> Self {
        Self {
            me: config.handshake.peer_id(),
            jitter: Jitter::new(config.seed),
            config,
            peers: BTreeMap::new(),
            conns: Slots::new(),
            touched: Vec::new(),
            received_held: 0,
            ready: Vec::new(),
            conn_timers: BTreeSet::new(),
            peer_timers: BinaryHeap::new(),
            pending: Vec::new(),
            actions: VecDeque::new(),
            events: VecDeque::new(),
            scratch: Vec::with_capacity(1024),
            closing: Vec::new(),
            blacklist: std::collections::BTreeSet::new(),
            invalid_transitions: 0,
        }
    }

    /// This node's peer id.
    pub fn peer_id(&self) -> PeerId {
        self.me
    }

    // ---- peers ----

    /// How many invalid state transitions were attempted; always 0 unless there is a bug. The
    /// property tests check it.
    pub fn invalid_transitions(&self) -> u64 {
        self.invalid_transitions
    }

    // ---- application commands ----

    /// Puts `id` on the list of connections to look at again: the core does so itself for
    /// everything that reaches a connection through it; a driver does when something of its
    /// own ended (a send completed: the connection may have more to write).
    pub fn touch(&mut self, id: ConnId) {
        if let Some(c) = self.conns.get_mut(id) {
            mark(&mut self.touched, c, id);
        }
    }

    /// Looks at the touched connections again: a deadline earlier than the one scheduled goes
    /// into the heap, a connection with output onto the ready list.
    /// Counts again what connection `id` holds of what it received, after its input or a
    /// release.
    #[inline]
    fn count_received(&mut self, id: ConnId) {
        if let Some(c) = self.conns.get_mut(id) {
            let now_held = c.conn.received_held();
            self.received_held = self.received_held.saturating_sub(c.received_held) + now_held;
            c.received_held = now_held;
        }
    }

    /// A connection leaves this core: what it held no longer counts here.
    fn uncount_received(&mut self, held: u64) {
        self.received_held = self.received_held.saturating_sub(held);
    }

    fn settle_touched(&mut self) {
        let limit = self.config.pending_handshake_timeout;
        while let Some(id) = self.touched.pop() {
            let Some(c) = self.conns.get_mut(id) else {
                continue;
            };
            c.touched = false;
            if let Some(at) = c.deadline(limit)
                && c.timer.is_none_or(|scheduled| at < scheduled)
            {
                if let Some(old) = c.timer.replace(at) {
                    self.conn_timers.remove(&(old, id));
                }
                self.conn_timers.insert((at, id));
            }
            if !c.ready && c.conn.has_pending_output() {
                c.ready = true;
                self.ready.push(id);
            }
        }
    }
}

/// Puts a connection on the touched list (once).
fn mark(touched: &mut Vec<ConnId>, c: &mut Conn, id: ConnId) {
    if !c.touched {
        c.touched = true;
        touched.push(id);
    }
}

impl Conn {
    fn new(conn: Connection, peer: Option<PeerId>) -> Self {
        Self {
            conn,
            peer,
            parked: false,
            accepted_at: None,
            remote: None,
            touched: false,
            ready: false,
            timer: None,
            received_held: 0,
        }
    }

    /// The connection's next deadline: its own timers, and for an inbound connection still in
    /// its secure handshake, the end of the time it is given for that.
    fn deadline(&self, pending_limit: Duration) -> Option<Instant> {
        let own = self.conn.poll_timeout();
        match self.pending_since() {
            Some(since) => {
                Some(own.map_or(since + pending_limit, |t| t.min(since + pending_limit)))
            }
            None => own,
        }
    }

    /// An inbound connection whose secure handshake has not finished, and since when.
    fn pending_since(&self) -> Option<Instant> {
        self.accepted_at
            .filter(|_| self.conn.phase() == crate::connection::Phase::Handshaking)
    }
}

impl Peer {
    fn new(addr: Option<SocketAddr>, reconnect: bool) -> Self {
        Self {
            state: ConnState::Disconnected,
            addr,
            reconnect,
            persistent: false,
            conn: None,
            admitted: None,
            direction: None,
            attempts: 0,
            deadline: None,
            connected_at: None,
            total_connected: Duration::ZERO,
            connections: 0,
            failures: 0,
            last_message_at: None,
        }
    }
}
