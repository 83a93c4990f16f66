//! What the application asks of the node core: peers to know and dial, streams to open,
//! messages to send and release, statistics.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use bytes::Bytes;
use glueberry_crypto::PeerId;

use crate::event::{CloseCode, CloseReason, Direction, StreamId};
use crate::peer::ConnState;

use super::*;

impl NodeCore {
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

    /// Marks a peer persistent (a validator the application must stay connected to) or not:
    /// a persistent peer is redialled forever (backoff capped at
    /// [`crate::PERSISTENT_MAX_DELAY`]), also after our own limits refused the dial, and
    /// never counts against the connection limits (see [`Admission`]).
    pub fn set_persistent(&mut self, peer: PeerId, persistent: bool) {
        let entry = self
            .peers
            .entry(peer)
            .or_insert_with(|| Peer::new(None, false));
        entry.persistent = persistent;
        self.forget_if_unknown(peer);
    }

    /// Closes an inbound peer's connection to make room for a newcomer (the connection limits
    /// chose it): code 9, TooManyConnections; the peer becomes Disconnected. Nothing happens if
    /// its connection is no longer inbound.
    pub fn evict(&mut self, peer: PeerId, now: Instant) {
        if self.direction(peer) != Some(Direction::Inbound) {
            return;
        }
        self.cut(peer, CloseCode::TooManyConnections, now);
        self.forget_if_unknown(peer);
    }

    /// Whether a peer is persistent.
    pub fn is_persistent(&self, peer: &PeerId) -> bool {
        self.peers.get(peer).is_some_and(|p| p.persistent)
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
            self.close_conn(id, CloseCode::Blacklisted);
        }
        // Connections still in their handshake for this peer are refused when it completes.
        if self.state(peer) != ConnState::Disconnected {
            let reason = Some(CloseReason::Local(CloseCode::Blacklisted));
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
            if let Some(conn) = self.conns.get_mut(id) {
                conn.conn.close(CloseCode::Normal);
            }
            self.settle_at(id, now);
        }
        self.set_state(peer, ConnState::Disconnected, None);
        self.forget_if_unknown(peer);
        Ok(())
    }

    /// Closes `peer`'s connection with `code`, whatever its direction (a budget the node
    /// enforces chose it): it becomes Disconnected with the reason `Local(code)` and is not
    /// redialled by itself.
    pub fn cut(&mut self, peer: PeerId, code: CloseCode, now: Instant) {
        let Some(id) = self.detach_conn(peer, now) else {
            return;
        };
        self.close_conn(id, code);
        if let Some(p) = self.peers.get_mut(&peer) {
            p.deadline = None;
        }
        self.set_state(
            peer,
            ConnState::Disconnected,
            Some(CloseReason::Local(code)),
        );
        while let Some(closed) = self.closing.pop() {
            self.settle_at(closed, now);
        }
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
        let conn = p.conn.and_then(|id| self.conns.get(id));
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

    /// Opens the named streams with a Connected peer; it becomes Established.
    pub fn complete_handshake(
        &mut self,
        peer: PeerId,
        streams: &[&str],
        now: Instant,
    ) -> Result<(), NodeError> {
        let id = self.conn_of(peer)?;
        if let Some(conn) = self.conns.get_mut(id) {
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
        let id = match self.conn_of(peer) {
            Ok(id) => id,
            Err(e) => return Err((e, data)),
        };
        self.send_on(id, stream, data)
    }

    /// Queues a message on a known connection's stream: the driver resolved (peer, stream name)
    /// to (connection, stream) once, when the connection became Established, and sends by it.
    pub fn send_on(
        &mut self,
        conn: ConnId,
        stream: StreamId,
        data: Bytes,
    ) -> Result<(), (NodeError, Bytes)> {
        match self.conns.get_mut(conn) {
            Some(c) => {
                mark(&mut self.touched, c, conn);
                c.conn
                    .send_or_return(stream, data)
                    .map_err(|(e, data)| (e.into(), data))
            }
            None => Err((NodeError::NotConnected, data)),
        }
    }

    /// A peer's live connection and its streams (id and name), for resolving names once.
    pub fn streams_of(&self, peer: PeerId) -> Option<(ConnId, StreamNames)> {
        let id = self.peers.get(&peer)?.conn?;
        let conn = self.conns.get(id)?;
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
            .and_then(|id| self.conns.get(id))
            .is_some_and(|c| c.conn.is_blocked(stream))
    }

    /// The id of a peer connection's stream by name.
    pub fn stream_id(&self, peer: PeerId, name: &str) -> Option<StreamId> {
        let id = self.peers.get(&peer)?.conn?;
        self.conns.get(id)?.conn.stream_id(name)
    }

    /// The name of a peer connection's stream.
    pub fn stream_name(&self, peer: PeerId, stream: StreamId) -> Option<&str> {
        let id = self.peers.get(&peer)?.conn?;
        self.conns.get(id)?.conn.stream_name(stream)
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
        if let Some(c) = self.conns.get_mut(conn) {
            mark(&mut self.touched, c, conn);
            c.conn.release(stream, len);
            self.count_received(conn);
        }
    }

    pub(super) fn conn_of(&self, peer: PeerId) -> Result<ConnId, NodeError> {
        self.peers
            .get(&peer)
            .ok_or(NodeError::UnknownPeer)?
            .conn
            .ok_or(NodeError::NotConnected)
    }

    // ---- driver inputs ----
}
