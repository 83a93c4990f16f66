//! What the driver (the engine's shard, or the simulator) feeds in and takes out: dial results,
//! accepted sockets, bytes, EOFs and time in; records, actions, events and deadlines out.

use std::net::IpAddr;
use std::time::Instant;

use glueberry_crypto::PeerId;

use crate::connection::Connection;
use crate::event::{CloseCode, CloseReason, ConnectionError, DialError, Direction};
use crate::peer::ConnState;

use super::*;

impl NodeCore {
    /// A dial finished: `Ok` once TCP is connected, `Err` if it failed.
    pub fn handle_dial_result(
        &mut self,
        conn: ConnId,
        result: Result<(), DialError>,
        now: Instant,
    ) {
        match result {
            // Its first handshake message can go out now.
            Ok(()) => self.touch(conn),
            Err(error) => {
                if let Some(c) = self.conns.get_mut(conn) {
                    c.conn.abort(ConnectionError::Dial(error));
                    self.settle_at(conn, now);
                }
            }
        }
    }

    /// A TCP connection was accepted from `remote`; returns its id, or `None` when too many
    /// accepted connections are still in their secure handshake (close the socket). The peer is
    /// known once it authenticates; [`Admission::admit`] is told `remote`.
    pub fn handle_accepted(&mut self, remote: Option<IpAddr>, now: Instant) -> Option<ConnId> {
        if self.pending_handshakes() >= self.config.max_pending_handshakes {
            return None;
        }
        let conn = Connection::inbound(
            self.config.connection.clone(),
            self.config.handshake.clone(),
            now,
        );
        let mut entry = Conn::new(conn, None);
        entry.accepted_at = Some(now);
        entry.remote = remote;
        let id = self.conns.insert(entry);
        self.pending.push(id);
        self.touch(id);
        Some(id)
    }

    /// Whether `conn` is an inbound connection still in its secure handshake.
    pub fn is_pending(&self, conn: ConnId) -> bool {
        self.conns
            .get(conn)
            .is_some_and(|c| c.pending_since().is_some())
    }

    /// How many inbound connections this core keeps in their secure handshake at once (see
    /// [`NodeConfig::max_pending_handshakes`]).
    pub fn max_pending_handshakes(&self) -> usize {
        self.config.max_pending_handshakes
    }

    /// Inbound connections still in their secure handshake (see
    /// [`NodeCore::max_pending_handshakes`]). Costs the pending ones, not every connection.
    pub fn pending_handshakes(&mut self) -> usize {
        let conns = &self.conns;
        self.pending
            .retain(|&id| conns.get(id).is_some_and(|c| c.pending_since().is_some()));
        self.pending.len()
    }

    /// Bytes arrived on a connection.
    pub fn handle_input(&mut self, conn: ConnId, data: &[u8], now: Instant) {
        if let Some(c) = self.conns.get_mut(conn) {
            c.conn.handle_input(now, data);
            self.count_received(conn);
            self.settle_at(conn, now);
        }
    }

    /// Bytes arrived on a connection, in a buffer handed over (see
    /// [`Connection::handle_input_buf`]).
    /// `frames` frames at most are read; see [`NodeCore::resume_input`] for the rest.
    pub fn handle_input_buf(
        &mut self,
        conn: ConnId,
        data: bytes::BytesMut,
        frames: usize,
        now: Instant,
    ) {
        if let Some(c) = self.conns.get_mut(conn) {
            c.conn.handle_input_buf(now, data, frames);
            self.count_received(conn);
            self.settle_at(conn, now);
        }
    }

    /// Whether `conn` has input left unread by its budget (see [`Connection::has_unread_input`]):
    /// call [`NodeCore::resume_input`] for it in the next turn, and arm no receive on it until
    /// this is false.
    pub fn has_unread_input(&self, conn: ConnId) -> bool {
        self.conns
            .get(conn)
            .is_some_and(|c| !c.parked && c.conn.has_unread_input())
    }

    /// Bytes of their peers' messages this core's connections hold, received and not yet
    /// credited back (see [`Connection::received_held`]): kept as a sum, no walk.
    pub fn received_held(&self) -> u64 {
        self.received_held
    }

    /// The peer whose connection holds the most of what it received, and how much (walks the
    /// connections: for the node-wide receive budget, when it is exceeded).
    pub fn largest_receiver(&self) -> Option<(PeerId, u64)> {
        self.conns
            .values()
            .filter_map(|c| Some((c.peer?, c.received_held)))
            .max_by_key(|&(_, held)| held)
    }

    /// Reads the next `frames` frames of `conn`'s unread input; returns whether some is still
    /// left.
    pub fn resume_input(&mut self, conn: ConnId, frames: usize, now: Instant) -> bool {
        match self.conns.get_mut(conn) {
            Some(c) if !c.parked => {
                c.conn.resume_input(now, frames);
                self.count_received(conn);
                self.settle_at(conn, now);
                self.has_unread_input(conn)
            }
            _ => false,
        }
    }

    /// The start of a record still waiting for its end on `conn` (see
    /// [`Connection::take_pending_input`]).
    pub fn take_pending_input(&mut self, conn: ConnId) -> bytes::BytesMut {
        self.conns
            .get_mut(conn)
            .map(|c| c.conn.take_pending_input())
            .unwrap_or_default()
    }

    /// A connection's byte stream ended (or its socket failed).
    pub fn handle_eof(&mut self, conn: ConnId, now: Instant) {
        if let Some(c) = self.conns.get_mut(conn) {
            c.conn.handle_eof();
            self.settle_at(conn, now);
        }
    }

    /// Time passed: the connections and peers whose deadline is due are looked at, and only
    /// they.
    pub fn handle_timeout(&mut self, now: Instant) {
        self.settle_touched();
        let limit = self.config.pending_handshake_timeout;
        while let Some(&(at, id)) = self.conn_timers.first() {
            if at > now {
                break;
            }
            self.conn_timers.pop_first();
            let Some(c) = self.conns.get_mut(id) else {
                continue; // Closed: its entry went with it, or this is it.
            };
            c.timer = None;
            if c.pending_since()
                .is_some_and(|t| now.saturating_duration_since(t) >= limit)
            {
                c.conn.close(CloseCode::HandshakeTimeout);
            } else {
                c.conn.handle_timeout(now);
            }
            self.settle_at(id, now);
        }
        while let Some(&Reverse((at, peer))) = self.peer_timers.peek() {
            if at > now {
                break;
            }
            self.peer_timers.pop();
            if self
                .peers
                .get(&peer)
                .is_some_and(|p| p.deadline == Some(at))
            {
                self.handle_deadline(peer, now);
            }
        }
    }

    pub(super) fn handle_deadline(&mut self, peer: PeerId, now: Instant) {
        let Some(p) = self.peers.get_mut(&peer) else {
            return;
        };
        p.deadline = None;
        match p.state {
            ConnState::Connecting => {
                // Dial timeout: abandon this attempt.
                if let Some(id) = p.conn
                    && let Some(c) = self.conns.get_mut(id)
                {
                    c.conn.abort(ConnectionError::DialTimeout);
                    self.settle_at(id, now);
                }
            }
            // Our side or the peer's has not completed the application handshake in time.
            ConnState::Connected | ConnState::Established => {
                if let Some(id) = p.conn
                    && let Some(c) = self.conns.get_mut(id)
                {
                    c.conn.close(CloseCode::HandshakeTimeout);
                    self.settle_at(id, now);
                }
            }
            ConnState::Cooldown => {
                self.set_state(peer, ConnState::Disconnected, None);
                self.schedule_reconnect(peer, now);
                // A peer that only dialled in (a Sybil that let its handshake time out) leaves
                // no entry behind.
                self.forget_if_unknown(peer);
            }
            ConnState::Reconnecting => self.start_dial(peer, now),
            ConnState::Disconnected => {}
        }
    }

    // ---- driver outputs ----

    /// Writes what `conn` has to send into `out`; returns the byte count.
    pub fn poll_transmit(&mut self, conn: ConnId, out: &mut [u8]) -> usize {
        match self.conns.get_mut(conn) {
            Some(c) => {
                mark(&mut self.touched, c, conn);
                c.conn.poll_transmit(out)
            }
            None => 0,
        }
    }

    /// [`NodeCore::poll_transmit`] at `now`: what is written is known to have been written
    /// then (the send-stall deadline counts from it; see [`Connection::poll_transmit_at`]).
    pub fn poll_transmit_at(&mut self, conn: ConnId, now: Instant, out: &mut [u8]) -> usize {
        match self.conns.get_mut(conn) {
            Some(c) => {
                mark(&mut self.touched, c, conn);
                c.conn.poll_transmit_at(now, out)
            }
            None => 0,
        }
    }

    /// Records the last `poll_transmit` on `conn` sealed.
    pub fn last_records(&self, conn: ConnId) -> usize {
        self.conns.get(conn).map_or(0, |c| c.conn.last_records())
    }

    /// Connections with something to send.
    pub fn has_pending_output(&self, conn: ConnId) -> bool {
        self.conns
            .get(conn)
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

    /// Connections with something to send since the last call, each once (the driver writes
    /// them with [`NodeCore::poll_transmit_at`]; one whose send is still in flight is
    /// [`touched`](NodeCore::touch) again when it completes).
    pub fn take_ready(&mut self, out: &mut Vec<ConnId>) {
        self.settle_touched();
        for id in self.ready.drain(..) {
            if let Some(c) = self.conns.get_mut(id) {
                c.ready = false;
                if c.conn.has_pending_output() {
                    out.push(id);
                }
            }
        }
    }

    /// When [`NodeCore::handle_timeout`] should next run: the earliest live entry of the
    /// connections' and peers' timer heaps (stale entries on top are dropped here).
    pub fn poll_timeout(&mut self) -> Option<Instant> {
        self.settle_touched();
        while let Some(&(at, id)) = self.conn_timers.first() {
            if self.conns.get(id).is_some_and(|c| c.timer == Some(at)) {
                break;
            }
            self.conn_timers.pop_first();
        }
        while let Some(&Reverse((at, peer))) = self.peer_timers.peek() {
            if self
                .peers
                .get(&peer)
                .is_some_and(|p| p.deadline == Some(at))
            {
                break;
            }
            self.peer_timers.pop();
        }
        let conn = self.conn_timers.first().map(|(at, _)| *at);
        let peer = self.peer_timers.peek().map(|Reverse((at, _))| *at);
        conn.into_iter().chain(peer).min()
    }

    /// Closes every connection with `code` (the node is stopping): CLOSE frames go out through
    /// the resulting [`Action::Close`]s, and peers become Disconnected without reconnecting.
    pub fn close_all(&mut self, code: CloseCode, now: Instant) {
        for p in self.peers.values_mut() {
            p.reconnect = false;
            p.deadline = None;
        }
        let ids: Vec<ConnId> = self.conns.keys().collect();
        for id in ids {
            if let Some(c) = self.conns.get_mut(id) {
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
        if !self.conns.get(conn).is_some_and(|c| c.parked) {
            return None;
        }
        let c = self.conns.remove(conn)?;
        if let Some(at) = c.timer {
            self.conn_timers.remove(&(at, conn));
        }
        self.uncount_received(c.received_held);
        Some(c.conn)
    }

    /// Takes over a connection another shard authenticated for a peer this shard owns (from
    /// `remote`, if inbound); returns its id here. Its pending events (the peer's first
    /// messages) are processed now.
    pub fn adopt(
        &mut self,
        conn: Connection,
        remote: Option<IpAddr>,
        now: Instant,
    ) -> Option<ConnId> {
        let peer = conn.peer()?;
        let direction = conn.direction();
        let mut entry = Conn::new(conn, Some(peer));
        entry.remote = remote;
        let id = self.conns.insert(entry);
        self.count_received(id);
        self.handle_connected(id, peer, direction, now);
        self.settle_at(id, now);
        Some(id)
    }

    /// Live connection ids.
    pub fn connections(&self) -> impl Iterator<Item = ConnId> + '_ {
        self.conns.keys()
    }

    /// Every live connection: id, peer (once known), direction and phase. For debugging and
    /// state dumps.
    pub fn connection_summary(
        &self,
    ) -> Vec<(ConnId, Option<PeerId>, Direction, crate::connection::Phase)> {
        let mut all: Vec<_> = self
            .conns
            .iter()
            .map(|(id, c)| (id, c.peer, c.conn.direction(), c.conn.phase()))
            .collect();
        all.sort_by_key(|(id, ..)| *id);
        all
    }

    // ---- internals ----
}
