//! A node's set of connections, sans-IO: which peer is in which state, dialling and
//! reconnecting with backoff, handshake timeouts and cooldown, and simultaneous dials.
//!
//! The driver (the io_uring engine, or the in-memory network) performs the [`Action`]s, feeds
//! bytes and timer ticks in, and reads [`NodeEvent`]s out.

use std::collections::{BTreeMap, VecDeque};
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use glueberry_crypto::{HandshakeConfig, PeerId};

use crate::ConnectionConfig;
use crate::connection::{Connection, Phase};
use crate::event::{CloseCode, CloseReason, Direction, Event, SendError, StreamError, StreamId};
use crate::peer::{Backoff, ConnState, InvalidTransition, Jitter};

/// Identifies one connection (one TCP stream) of a node.
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
/// becomes Connected; `release` is called when an admitted connection ends.
pub trait Admission: Send + Sync + std::fmt::Debug {
    /// Admit a connection to `peer` in `direction`, or refuse it with a close code.
    fn admit(&self, peer: &PeerId, direction: Direction) -> Result<(), CloseCode>;
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
    /// An authenticated connection was refused by the connection limits (or the cooldown).
    Refused {
        /// The peer.
        peer: PeerId,
        /// Who dialled.
        direction: Direction,
        /// The close code sent to the peer.
        code: CloseCode,
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
    conn: Option<ConnId>,
    direction: Option<Direction>,
    attempts: u32,
    deadline: Option<Instant>,
    connected_at: Option<Instant>,
    total_connected: Duration,
    connections: u64,
    failures: u64,
    last_message_at: Option<Instant>,
}

/// What a node knows about one peer's traffic and history.
#[derive(Debug, Clone, PartialEq, Eq)]
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
}

/// A node's connections and peers.
pub struct NodeCore {
    config: NodeConfig,
    me: PeerId,
    peers: BTreeMap<PeerId, Peer>,
    conns: BTreeMap<ConnId, Conn>,
    next_conn: u64,
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
            conns: BTreeMap::new(),
            next_conn: 0,
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

    /// Makes a peer known, with an address to dial and whether to reconnect when it drops.
    pub fn add_peer(&mut self, peer: PeerId, addr: Option<SocketAddr>, reconnect: bool) {
        let entry = self
            .peers
            .entry(peer)
            .or_insert_with(|| Peer::new(addr, reconnect));
        if addr.is_some() {
            entry.addr = addr;
        }
        entry.reconnect = reconnect;
    }

    /// Blacklists a peer (its connection closes at once and it is refused from now on, before
    /// any application byte) or lifts the blacklist.
    pub fn set_blacklisted(&mut self, peer: PeerId, blacklisted: bool, now: Instant) {
        if !blacklisted {
            self.blacklist.remove(&peer);
            return;
        }
        self.blacklist.insert(peer);
        if let Some(p) = self.peers.get_mut(&peer) {
            p.reconnect = false;
            p.deadline = None;
        }
        if let Some(id) = self.detach_conn(peer, now) {
            self.close_conn(id, CloseCode::BLACKLISTED);
        }
        // Connections still in their handshake for this peer are refused when it completes.
        if self.state(peer) != ConnState::Disconnected {
            let reason = Some(CloseReason::Local(CloseCode::BLACKLISTED));
            self.set_state(peer, ConnState::Disconnected, reason);
        }
        while let Some(closed) = self.closing.pop() {
            self.settle_at(closed, now);
        }
    }

    /// Whether a peer is blacklisted.
    pub fn is_blacklisted(&self, peer: &PeerId) -> bool {
        self.blacklist.contains(peer)
    }

    /// Dials a known peer now (also out of Reconnecting and Cooldown).
    pub fn connect(&mut self, peer: PeerId, now: Instant) -> Result<(), NodeError> {
        if self.blacklist.contains(&peer) {
            return Err(NodeError::Blacklisted);
        }
        let p = self.peers.get(&peer).ok_or(NodeError::UnknownPeer)?;
        match p.state {
            ConnState::Connecting | ConnState::Connected | ConnState::Established => Ok(()),
            ConnState::Disconnected | ConnState::Reconnecting | ConnState::Cooldown => {
                if p.addr.is_none() {
                    return Err(NodeError::NoAddress);
                }
                self.start_dial(peer, now);
                Ok(())
            }
        }
    }

    /// Closes the peer's connection (or stops reconnecting) and leaves it Disconnected.
    pub fn disconnect(&mut self, peer: PeerId, now: Instant) -> Result<(), NodeError> {
        let p = self.peers.get_mut(&peer).ok_or(NodeError::UnknownPeer)?;
        p.deadline = None;
        if let Some(id) = self.detach_conn(peer, now) {
            if let Some(conn) = self.conns.get_mut(&id) {
                conn.conn.close(CloseCode::NORMAL);
            }
            self.settle_at(id, now);
        }
        self.set_state(peer, ConnState::Disconnected, None);
        self.forget_if_unknown(peer);
        Ok(())
    }

    /// Stops a pending reconnection: Reconnecting becomes Disconnected.
    pub fn cancel_reconnect(&mut self, peer: PeerId) -> Result<(), NodeError> {
        let p = self.peers.get_mut(&peer).ok_or(NodeError::UnknownPeer)?;
        if p.state == ConnState::Reconnecting {
            p.deadline = None;
            self.set_state(peer, ConnState::Disconnected, None);
        }
        Ok(())
    }

    /// Whether the peer is known (added, or connected): its entry has not been forgotten.
    pub fn knows(&self, peer: PeerId) -> bool {
        self.peers.contains_key(&peer)
    }

    /// The peer's state (Disconnected if unknown).
    pub fn state(&self, peer: PeerId) -> ConnState {
        self.peers
            .get(&peer)
            .map_or(ConnState::Disconnected, |p| p.state)
    }

    /// The direction of the peer's current connection.
    pub fn direction(&self, peer: PeerId) -> Option<Direction> {
        self.peers.get(&peer).and_then(|p| p.conn.and(p.direction))
    }

    /// Statistics of one peer.
    pub fn peer_stats(&self, peer: PeerId, now: Instant) -> Option<PeerStats> {
        let p = self.peers.get(&peer)?;
        let conn = p.conn.and_then(|id| self.conns.get(&id));
        Some(PeerStats {
            peer,
            state: p.state,
            direction: p.conn.and(p.direction),
            connected_for: p.connected_at.map(|t| now.saturating_duration_since(t)),
            total_connected: p.total_connected
                + p.connected_at
                    .map_or(Duration::ZERO, |t| now.saturating_duration_since(t)),
            connections: p.connections,
            failures: p.failures,
            since_last_message: p.last_message_at.map(|t| now.saturating_duration_since(t)),
            rtt: conn.and_then(|c| c.conn.rtt()),
            streams: conn.map_or_else(Vec::new, |c| c.conn.stream_stats()),
        })
    }

    /// Statistics of every peer this core holds state for.
    pub fn all_stats(&self, now: Instant) -> Vec<PeerStats> {
        self.peers
            .keys()
            .filter_map(|p| self.peer_stats(*p, now))
            .collect()
    }

    /// How many peers the node holds state for.
    pub fn peer_count(&self) -> usize {
        self.peers.len()
    }

    /// How many invalid state transitions were attempted; always 0 unless there is a bug. The
    /// property tests check it.
    pub fn invalid_transitions(&self) -> u64 {
        self.invalid_transitions
    }

    // ---- application commands ----

    /// Opens the named streams with a Connected peer; it becomes Established.
    pub fn complete_handshake(
        &mut self,
        peer: PeerId,
        streams: &[&str],
        now: Instant,
    ) -> Result<(), NodeError> {
        let id = self.conn_of(peer)?;
        if let Some(conn) = self.conns.get_mut(&id) {
            conn.conn.complete_handshake(streams)?;
        }
        self.settle_at(id, now);
        Ok(())
    }

    /// Queues a message for a peer (see [`Connection::send`]).
    pub fn send(&mut self, peer: PeerId, stream: StreamId, data: Bytes) -> Result<(), NodeError> {
        self.send_or_return(peer, stream, data).map_err(|(e, _)| e)
    }

    /// [`NodeCore::send`] that gives the message back when it refuses it.
    pub fn send_or_return(
        &mut self,
        peer: PeerId,
        stream: StreamId,
        data: Bytes,
    ) -> Result<(), (NodeError, Bytes)> {
        let conn = match self.conn_of(peer) {
            Ok(id) => self.conns.get_mut(&id),
            Err(e) => return Err((e, data)),
        };
        let Some(conn) = conn else {
            return Err((NodeError::NotConnected, data));
        };
        conn.conn
            .send_or_return(stream, data)
            .map_err(|(e, data)| (e.into(), data))
    }

    /// Queues a message on a known connection's stream: the driver resolved (peer, stream name)
    /// to (connection, stream) once, when the connection became Established, and sends by it.
    pub fn send_on(
        &mut self,
        conn: ConnId,
        stream: StreamId,
        data: Bytes,
    ) -> Result<(), (NodeError, Bytes)> {
        match self.conns.get_mut(&conn) {
            Some(c) => c
                .conn
                .send_or_return(stream, data)
                .map_err(|(e, data)| (e.into(), data)),
            None => Err((NodeError::NotConnected, data)),
        }
    }

    /// See [`Connection::take_written`].
    pub fn take_written(&mut self, conn: ConnId, report: impl FnMut(StreamId, u64, u64)) {
        if let Some(c) = self.conns.get_mut(&conn) {
            c.conn.take_written(report);
        }
    }

    /// A peer's live connection and its streams (id and name), for resolving names once.
    pub fn streams_of(&self, peer: PeerId) -> Option<(ConnId, StreamNames)> {
        let id = self.peers.get(&peer)?.conn?;
        let conn = self.conns.get(&id)?;
        Some((
            id,
            conn.conn.streams().map(|(s, n)| (s, n.clone())).collect(),
        ))
    }

    /// Whether `send` to this peer's stream would be refused as full (high watermark).
    pub fn is_blocked(&self, peer: PeerId, stream: StreamId) -> bool {
        self.peers
            .get(&peer)
            .and_then(|p| p.conn)
            .and_then(|id| self.conns.get(&id))
            .is_some_and(|c| c.conn.is_blocked(stream))
    }

    /// The id of a peer connection's stream by name.
    pub fn stream_id(&self, peer: PeerId, name: &str) -> Option<StreamId> {
        let id = self.peers.get(&peer)?.conn?;
        self.conns.get(&id)?.conn.stream_id(name)
    }

    /// The name of a peer connection's stream.
    pub fn stream_name(&self, peer: PeerId, stream: StreamId) -> Option<&str> {
        let id = self.peers.get(&peer)?.conn?;
        self.conns.get(&id)?.conn.stream_name(stream)
    }

    /// Messages on all connections that the peers have not confirmed: queued, or written and
    /// not yet acknowledged by returned credit.
    pub fn outstanding_messages(&self) -> usize {
        self.conns
            .values()
            .map(|c| c.conn.queued_messages() + c.conn.unconfirmed_messages())
            .sum()
    }

    /// Returns a consumed message's credit to the connection it came on (nothing, if that
    /// connection is gone: its credit went with it).
    pub fn release(&mut self, conn: ConnId, stream: StreamId, len: usize) {
        if let Some(c) = self.conns.get_mut(&conn) {
            c.conn.release(stream, len);
        }
    }

    fn conn_of(&self, peer: PeerId) -> Result<ConnId, NodeError> {
        self.peers
            .get(&peer)
            .ok_or(NodeError::UnknownPeer)?
            .conn
            .ok_or(NodeError::NotConnected)
    }

    // ---- driver inputs ----

    /// A dial finished: `Ok` once TCP is connected, `Err` if it failed.
    pub fn handle_dial_result(&mut self, conn: ConnId, result: Result<(), String>, now: Instant) {
        if result.is_err()
            && let Some(c) = self.conns.get_mut(&conn)
        {
            c.conn.handle_eof();
            self.settle_at(conn, now);
        }
    }

    /// A TCP connection was accepted; returns its id, or `None` when too many accepted
    /// connections are still in their secure handshake (close the socket). The peer is known
    /// once it authenticates.
    pub fn handle_accepted(&mut self, now: Instant) -> Option<ConnId> {
        let pending = self
            .conns
            .values()
            .filter(|c| c.pending_since().is_some())
            .count();
        if pending >= self.config.max_pending_handshakes {
            return None;
        }
        let id = self.new_conn_id();
        let conn = Connection::inbound(
            self.config.connection.clone(),
            self.config.handshake.clone(),
            now,
        );
        let mut entry = Conn::new(conn, None);
        entry.accepted_at = Some(now);
        self.conns.insert(id, entry);
        Some(id)
    }

    /// Whether an inbound connection is still in its secure handshake.
    pub fn is_pending(&self, conn: ConnId) -> bool {
        self.conns
            .get(&conn)
            .is_some_and(|c| c.pending_since().is_some())
    }

    /// Inbound connections still in their secure handshake.
    pub fn pending_handshakes(&self) -> usize {
        self.conns
            .values()
            .filter(|c| c.pending_since().is_some())
            .count()
    }

    /// Bytes arrived on a connection.
    pub fn handle_input(&mut self, conn: ConnId, data: &[u8], now: Instant) {
        if let Some(c) = self.conns.get_mut(&conn) {
            c.conn.handle_input(now, data);
            self.settle_at(conn, now);
        }
    }

    /// Bytes arrived on a connection, in a buffer handed over (see
    /// [`Connection::handle_input_buf`]).
    pub fn handle_input_buf(&mut self, conn: ConnId, data: bytes::BytesMut, now: Instant) {
        if let Some(c) = self.conns.get_mut(&conn) {
            c.conn.handle_input_buf(now, data);
            self.settle_at(conn, now);
        }
    }

    /// The start of a record still waiting for its end on `conn` (see
    /// [`Connection::take_pending_input`]).
    pub fn take_pending_input(&mut self, conn: ConnId) -> bytes::BytesMut {
        self.conns
            .get_mut(&conn)
            .map(|c| c.conn.take_pending_input())
            .unwrap_or_default()
    }

    /// A connection's byte stream ended (or its socket failed).
    pub fn handle_eof(&mut self, conn: ConnId, now: Instant) {
        if let Some(c) = self.conns.get_mut(&conn) {
            c.conn.handle_eof();
            self.settle_at(conn, now);
        }
    }

    /// Time passed.
    pub fn handle_timeout(&mut self, now: Instant) {
        let limit = self.config.pending_handshake_timeout;
        let stalled: Vec<ConnId> = self
            .conns
            .iter()
            .filter(|(_, c)| {
                c.pending_since()
                    .is_some_and(|t| now.saturating_duration_since(t) >= limit)
            })
            .map(|(id, _)| *id)
            .collect();
        for id in stalled {
            if let Some(c) = self.conns.get_mut(&id) {
                c.conn.close(CloseCode::HANDSHAKE_TIMEOUT);
                self.settle_at(id, now);
            }
        }
        let ids: Vec<ConnId> = self.conns.keys().copied().collect();
        for id in ids {
            if let Some(c) = self.conns.get_mut(&id) {
                c.conn.handle_timeout(now);
                self.settle_at(id, now);
            }
        }
        let due: Vec<PeerId> = self
            .peers
            .iter()
            .filter(|(_, p)| p.deadline.is_some_and(|d| d <= now))
            .map(|(id, _)| *id)
            .collect();
        for peer in due {
            self.handle_deadline(peer, now);
        }
    }

    fn handle_deadline(&mut self, peer: PeerId, now: Instant) {
        let Some(p) = self.peers.get_mut(&peer) else {
            return;
        };
        p.deadline = None;
        match p.state {
            ConnState::Connecting => {
                // Dial timeout: abandon this attempt.
                if let Some(id) = p.conn
                    && let Some(c) = self.conns.get_mut(&id)
                {
                    c.conn.handle_eof();
                    self.settle_at(id, now);
                }
            }
            ConnState::Connected => {
                if let Some(id) = p.conn
                    && let Some(c) = self.conns.get_mut(&id)
                {
                    c.conn.close(CloseCode::HANDSHAKE_TIMEOUT);
                    self.settle_at(id, now);
                }
            }
            ConnState::Cooldown => {
                self.set_state(peer, ConnState::Disconnected, None);
                self.schedule_reconnect(peer, now);
            }
            ConnState::Reconnecting => self.start_dial(peer, now),
            ConnState::Disconnected | ConnState::Established => {}
        }
    }

    // ---- driver outputs ----

    /// Writes what `conn` has to send into `out`; returns the byte count.
    pub fn poll_transmit(&mut self, conn: ConnId, out: &mut [u8]) -> usize {
        self.conns
            .get_mut(&conn)
            .map_or(0, |c| c.conn.poll_transmit(out))
    }

    /// Connections with something to send.
    pub fn has_pending_output(&self, conn: ConnId) -> bool {
        self.conns
            .get(&conn)
            .is_some_and(|c| c.conn.has_pending_output())
    }

    /// The next thing the driver must do.
    pub fn poll_action(&mut self) -> Option<Action> {
        self.actions.pop_front()
    }

    /// The next event for the application.
    pub fn poll_event(&mut self) -> Option<NodeEvent> {
        self.events.pop_front()
    }

    /// When [`NodeCore::handle_timeout`] should next run.
    pub fn poll_timeout(&self) -> Option<Instant> {
        let limit = self.config.pending_handshake_timeout;
        let conns = self.conns.values().filter_map(|c| c.conn.poll_timeout());
        let pending = self
            .conns
            .values()
            .filter_map(|c| c.pending_since().map(|t| t + limit));
        let peers = self.peers.values().filter_map(|p| p.deadline);
        conns.chain(pending).chain(peers).min()
    }

    /// Closes every connection with `code` (the node is stopping): CLOSE frames go out through
    /// the resulting [`Action::Close`]s, and peers become Disconnected without reconnecting.
    pub fn close_all(&mut self, code: CloseCode, now: Instant) {
        for p in self.peers.values_mut() {
            p.reconnect = false;
            p.deadline = None;
        }
        let ids: Vec<ConnId> = self.conns.keys().copied().collect();
        for id in ids {
            if let Some(c) = self.conns.get_mut(&id) {
                c.parked = false;
                c.conn.close(code);
            }
            self.settle_at(id, now);
        }
        let peers: Vec<PeerId> = self.peers.keys().copied().collect();
        for peer in peers {
            if self.state(peer) != ConnState::Disconnected {
                self.set_state(
                    peer,
                    ConnState::Disconnected,
                    Some(CloseReason::Local(code)),
                );
            }
        }
    }

    /// Takes a connection parked for handoff (see [`Action::Handoff`]) out of this core.
    pub fn detach(&mut self, conn: ConnId) -> Option<Connection> {
        if !self.conns.get(&conn).is_some_and(|c| c.parked) {
            return None;
        }
        self.conns.remove(&conn).map(|c| c.conn)
    }

    /// Takes over a connection another shard authenticated for a peer this shard owns; returns
    /// its id here. Its pending events (the peer's first messages) are processed now.
    pub fn adopt(&mut self, conn: Connection, now: Instant) -> Option<ConnId> {
        let peer = conn.peer()?;
        let direction = conn.direction();
        let id = self.new_conn_id();
        self.conns.insert(id, Conn::new(conn, Some(peer)));
        self.handle_connected(id, peer, direction, now);
        self.settle_at(id, now);
        Some(id)
    }

    /// Live connection ids.
    pub fn connections(&self) -> impl Iterator<Item = ConnId> + '_ {
        self.conns.keys().copied()
    }

    /// Every live connection: id, peer (once known), direction and phase. For debugging and
    /// state dumps.
    pub fn connection_summary(
        &self,
    ) -> Vec<(ConnId, Option<PeerId>, Direction, crate::connection::Phase)> {
        let mut all: Vec<_> = self
            .conns
            .iter()
            .map(|(id, c)| (*id, c.peer, c.conn.direction(), c.conn.phase()))
            .collect();
        all.sort_by_key(|(id, ..)| *id);
        all
    }

    // ---- internals ----

    fn new_conn_id(&mut self) -> ConnId {
        self.next_conn += 1;
        ConnId(self.next_conn)
    }

    fn start_dial(&mut self, peer: PeerId, now: Instant) {
        let id = self.new_conn_id();
        let Some(p) = self.peers.get(&peer) else {
            return;
        };
        let Some(addr) = p.addr else {
            return;
        };
        let conn = match Connection::outbound(
            self.config.connection.clone(),
            self.config.handshake.clone(),
            Some(peer),
            now,
        ) {
            Ok(conn) => conn,
            Err(_) => return,
        };
        self.conns.insert(id, Conn::new(conn, Some(peer)));
        if let Some(p) = self.peers.get_mut(&peer) {
            p.conn = Some(id);
            p.direction = Some(Direction::Outbound);
            p.deadline = Some(now + self.config.dial_timeout);
        }
        self.set_state(peer, ConnState::Connecting, None);
        self.actions.push_back(Action::Dial { conn: id, addr });
    }

    /// Takes a connection's events and turns them into peer state changes and node events.
    fn settle_at(&mut self, id: ConnId, now: Instant) {
        let mut scratch = std::mem::take(&mut self.scratch);
        if let Some(c) = self.conns.get_mut(&id)
            && !c.parked
        {
            scratch.extend(std::iter::from_fn(|| c.conn.poll_event()));
        }
        let mut events = scratch.drain(..);
        for event in events.by_ref() {
            self.handle_conn_event(id, event, now);
            if self.conns.get(&id).is_some_and(|c| c.parked) {
                break;
            }
        }
        // Events after a handoff belong to the adopting shard: put them back, in order.
        let rest: Vec<Event> = events.collect();
        if !rest.is_empty()
            && let Some(c) = self.conns.get_mut(&id)
        {
            c.conn.requeue_events(rest);
        }
        self.scratch = scratch;
        while let Some(closed) = self.closing.pop() {
            self.settle_at(closed, now);
        }
    }

    fn handle_conn_event(&mut self, id: ConnId, event: Event, now: Instant) {
        let Some(c) = self.conns.get(&id) else {
            return;
        };
        if let Event::Message { stream, data } = event {
            // The hot path: one lookup, no state change.
            if let Some(peer) = c.peer
                && let Some(p) = self.peers.get_mut(&peer)
                && p.conn == Some(id)
                && let Some(name) = c.conn.stream_name_shared(stream)
            {
                p.last_message_at = Some(now);
                self.events.push_back(NodeEvent::Message {
                    peer,
                    conn: id,
                    stream,
                    name,
                    data,
                });
            }
            return;
        }
        let direction = c.conn.direction();
        let attached_peer = c
            .peer
            .filter(|p| self.peers.get(p).is_some_and(|peer| peer.conn == Some(id)));
        match event {
            Event::Connected { peer, .. } => self.handle_connected(id, peer, direction, now),
            Event::Established => {
                if let Some(peer) = attached_peer {
                    if let Some(p) = self.peers.get_mut(&peer) {
                        p.deadline = None;
                    }
                    self.set_state(peer, ConnState::Established, None);
                }
            }
            // Handled (and returned from) above.
            Event::Message { .. } => {}
            Event::StreamRejected { stream, unsent } => {
                if let Some(peer) = attached_peer {
                    self.events.push_back(NodeEvent::StreamRejected {
                        peer,
                        stream,
                        unsent,
                    });
                }
            }
            Event::Writable(stream) => {
                if let Some(peer) = attached_peer {
                    self.events.push_back(NodeEvent::Writable { peer, stream });
                }
            }
            Event::Undelivered {
                stream,
                unsent,
                unconfirmed,
            } => {
                // Reported even for a replaced connection: these were accepted on it.
                if let (Some(peer), Some(name)) = (c.conn.peer(), c.conn.stream_name_shared(stream))
                {
                    self.events.push_back(NodeEvent::Undelivered {
                        peer,
                        stream,
                        name,
                        unsent,
                        unconfirmed,
                    });
                }
            }
            Event::StreamAccepted(_) | Event::Rtt(_) => {}
            Event::Closed { reason, .. } => self.handle_closed(id, attached_peer, reason, now),
        }
    }

    fn handle_connected(&mut self, id: ConnId, peer: PeerId, direction: Direction, now: Instant) {
        if self.blacklist.contains(&peer) {
            // Refused before the application sees the peer or any of its bytes.
            self.close_conn(id, CloseCode::BLACKLISTED);
            return;
        }
        if let Some(c) = self.conns.get_mut(&id) {
            c.peer = Some(peer);
            if !self.config.shard.owns(&peer) {
                c.parked = true;
                self.actions.push_back(Action::Handoff { conn: id, peer });
                return;
            }
        }
        let p = self
            .peers
            .entry(peer)
            .or_insert_with(|| Peer::new(None, false));
        if p.state == ConnState::Cooldown {
            // It timed out its handshake with us recently: not before the cooldown ends.
            self.close_conn(id, CloseCode::HANDSHAKE_TIMEOUT);
            return;
        }
        let mut replaced = None;
        if let Some(other) = p.conn.filter(|other| *other != id) {
            let other_direction = self.conns.get(&other).map(|c| c.conn.direction());
            let keep_new = match other_direction {
                // Both ends dialled: keep the connection dialled by the smaller peer id, which
                // both ends compute the same way.
                Some(d) if d != direction => {
                    self.initiator(direction, peer) < self.initiator(d, peer)
                }
                // Same direction: the newer connection replaces a stale one.
                _ => true,
            };
            if !keep_new {
                self.close_conn(id, CloseCode::DUPLICATE);
                return;
            }
            if let Some(p) = self.peers.get_mut(&peer) {
                p.conn = Some(id);
            }
            // Only an admitted (Connected) connection holds a slot to give back.
            if self
                .conns
                .get(&other)
                .is_some_and(|c| c.conn.phase() != Phase::Handshaking)
            {
                replaced = other_direction;
            }
            self.close_conn(other, CloseCode::DUPLICATE);
            if self.state(peer) == ConnState::Established {
                // The peer came back on a new connection: the old session is over.
                let reason = Some(CloseReason::Local(CloseCode::DUPLICATE));
                self.set_state(peer, ConnState::Disconnected, reason);
            }
        }
        if let Some(admission) = &self.config.admission {
            // A replaced connection gives its slot back; the new one must be admitted.
            if let Some(old) = replaced {
                admission.release(&peer, old);
            }
            if let Err(code) = admission.admit(&peer, direction) {
                self.close_conn(id, code);
                if let Some(p) = self.peers.get_mut(&peer)
                    && p.conn == Some(id)
                {
                    p.conn = None;
                }
                self.events.push_back(NodeEvent::Refused {
                    peer,
                    direction,
                    code,
                });
                if self.state(peer) == ConnState::Connecting {
                    // Our own dial was refused by our own limits: treat it as a failed attempt.
                    self.set_state(
                        peer,
                        ConnState::Disconnected,
                        Some(CloseReason::Local(code)),
                    );
                }
                self.forget_if_unknown(peer);
                return;
            }
        }
        let Some(p) = self.peers.get_mut(&peer) else {
            return;
        };
        p.conn = Some(id);
        p.direction = Some(direction);
        p.attempts = 0;
        p.connections += 1;
        p.connected_at = Some(now);
        p.deadline = Some(now + self.config.handshake_timeout);
        if p.state != ConnState::Connected {
            self.set_state(peer, ConnState::Connected, None);
        }
    }

    fn initiator(&self, direction: Direction, peer: PeerId) -> PeerId {
        match direction {
            Direction::Outbound => self.me,
            Direction::Inbound => peer,
        }
    }

    /// Closes a connection that is not (or no longer) the peer's: no state change follows.
    fn close_conn(&mut self, id: ConnId, code: CloseCode) {
        if let Some(c) = self.conns.get_mut(&id) {
            c.peer = None;
            c.conn.close(code);
            // Its Closed event finds no attached peer; it is handled once the current
            // connection's events are.
            self.closing.push(id);
        }
    }

    fn handle_closed(
        &mut self,
        id: ConnId,
        attached: Option<PeerId>,
        reason: CloseReason,
        now: Instant,
    ) {
        if let Some(mut c) = self.conns.remove(&id) {
            let mut last_bytes = vec![0u8; 256];
            let n = c.conn.poll_transmit(&mut last_bytes);
            last_bytes.truncate(n);
            self.actions.push_back(Action::Close {
                conn: id,
                last_bytes,
            });
        }
        let Some(peer) = attached else {
            return;
        };
        let Some(p) = self.peers.get_mut(&peer) else {
            return;
        };
        p.conn = None;
        p.deadline = None;
        if let Some(since) = p.connected_at.take() {
            p.total_connected += now.saturating_duration_since(since);
            // It was admitted (connected_at is set on admission): give the slot back.
            if let (Some(admission), Some(direction)) = (&self.config.admission, p.direction) {
                admission.release(&peer, direction);
            }
        }
        if matches!(reason, CloseReason::Error(_)) || p.state == ConnState::Connecting {
            p.failures += 1;
        }
        match p.state {
            ConnState::Connecting => {
                // The dial or its secure handshake failed.
                p.attempts += 1;
                let attempts = p.attempts;
                self.schedule_retry(peer, attempts, Some(reason), now);
            }
            ConnState::Connected if reason == CloseReason::Local(CloseCode::HANDSHAKE_TIMEOUT) => {
                p.deadline = Some(now + self.config.cooldown);
                self.set_state(peer, ConnState::Cooldown, Some(reason));
            }
            ConnState::Connected | ConnState::Established => {
                let manual = reason == CloseReason::Local(CloseCode::NORMAL);
                self.set_state(peer, ConnState::Disconnected, Some(reason));
                if !manual {
                    self.schedule_reconnect(peer, now);
                }
                self.forget_if_unknown(peer);
            }
            ConnState::Disconnected | ConnState::Reconnecting | ConnState::Cooldown => {}
        }
    }

    /// Takes a peer's connection away from it (the caller closes it): the connected time is
    /// accounted and its admission slot given back.
    fn detach_conn(&mut self, peer: PeerId, now: Instant) -> Option<ConnId> {
        let p = self.peers.get_mut(&peer)?;
        let id = p.conn.take()?;
        if let Some(since) = p.connected_at.take() {
            p.total_connected += now.saturating_duration_since(since);
            if let (Some(admission), Some(direction)) = (&self.config.admission, p.direction) {
                admission.release(&peer, direction);
            }
        }
        if let Some(c) = self.conns.get_mut(&id) {
            c.peer = None;
        }
        Some(id)
    }

    /// A peer that only ever dialled us, and is gone, leaves no trace: the table of peers is
    /// bounded by the peers the application added plus those connected now.
    fn forget_if_unknown(&mut self, peer: PeerId) {
        if self.peers.get(&peer).is_some_and(|p| {
            p.state == ConnState::Disconnected
                && p.addr.is_none()
                && !p.reconnect
                && p.conn.is_none()
        }) {
            self.peers.remove(&peer);
        }
    }

    /// After a failed attempt: Reconnecting if attempts remain, else Disconnected.
    fn schedule_retry(
        &mut self,
        peer: PeerId,
        attempts: u32,
        reason: Option<CloseReason>,
        now: Instant,
    ) {
        let random = self.jitter.next_u64();
        let Some(p) = self.peers.get_mut(&peer) else {
            return;
        };
        match self
            .config
            .backoff
            .delay(attempts, random)
            .filter(|_| p.reconnect)
        {
            Some(delay) => {
                p.deadline = Some(now + delay);
                self.set_state(peer, ConnState::Reconnecting, reason);
            }
            None => self.set_state(peer, ConnState::Disconnected, reason),
        }
    }

    /// After a connection ended: Disconnected → Reconnecting for peers that reconnect.
    fn schedule_reconnect(&mut self, peer: PeerId, now: Instant) {
        let Some(p) = self.peers.get_mut(&peer) else {
            return;
        };
        if !p.reconnect || p.addr.is_none() {
            return;
        }
        p.attempts = 1;
        let random = self.jitter.next_u64();
        if let Some(delay) = self.config.backoff.delay(1, random) {
            p.deadline = Some(now + delay);
            self.set_state(peer, ConnState::Reconnecting, None);
        }
    }

    fn set_state(&mut self, peer: PeerId, next: ConnState, reason: Option<CloseReason>) {
        let Some(p) = self.peers.get_mut(&peer) else {
            return;
        };
        if p.state == next {
            return;
        }
        match p.state.transition(next) {
            Ok(state) => {
                p.state = state;
                let direction = if matches!(state, ConnState::Connected | ConnState::Established) {
                    p.direction
                } else {
                    None
                };
                self.events.push_back(NodeEvent::State {
                    peer,
                    state,
                    direction,
                    reason,
                });
            }
            Err(InvalidTransition { .. }) => {
                // A bug in this module; counted so tests catch it, never silently applied.
                self.invalid_transitions += 1;
                debug_assert!(false, "invalid transition {:?} -> {next:?}", p.state);
            }
        }
    }
}

impl Conn {
    fn new(conn: Connection, peer: Option<PeerId>) -> Self {
        Self {
            conn,
            peer,
            parked: false,
            accepted_at: None,
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
            conn: None,
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
