//! How peers move between states: dials, connection events, closes, retries and reconnects,
//! every change through `ConnState::transition`.

use std::time::Instant;

use glueberry_crypto::PeerId;

use crate::connection::Connection;
use crate::event::{CloseCode, CloseReason, Direction, Event};
use crate::peer::{ConnState, InvalidTransition};

use super::*;

impl NodeCore {
    pub(super) fn start_dial(&mut self, peer: PeerId, now: Instant) {
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
        let id = self.conns.insert(Conn::new(conn, Some(peer)));
        self.touch(id);
        if let Some(p) = self.peers.get_mut(&peer) {
            p.conn = Some(id);
            p.direction = Some(Direction::Outbound);
            let at = now + self.config.dial_timeout;
            p.deadline = Some(at);
            self.peer_timers.push(Reverse((at, peer)));
        }
        self.set_state(peer, ConnState::Connecting, None);
        self.actions.push_back(Action::Dial {
            conn: id,
            peer,
            addr,
        });
    }

    /// Takes a connection's events and turns them into peer state changes and node events.
    pub(super) fn settle_at(&mut self, id: ConnId, now: Instant) {
        let mut scratch = std::mem::take(&mut self.scratch);
        if let Some(c) = self.conns.get_mut(id)
            && !c.parked
        {
            mark(&mut self.touched, c, id);
            scratch.extend(std::iter::from_fn(|| c.conn.poll_event()));
        }
        let mut events = scratch.drain(..);
        for event in events.by_ref() {
            self.handle_conn_event(id, event, now);
            if self.conns.get(id).is_some_and(|c| c.parked) {
                break;
            }
        }
        // Events after a handoff belong to the adopting shard: put them back, in order.
        let rest: Vec<Event> = events.collect();
        if !rest.is_empty()
            && let Some(c) = self.conns.get_mut(id)
        {
            c.conn.requeue_events(rest);
        }
        self.scratch = scratch;
        while let Some(closed) = self.closing.pop() {
            self.settle_at(closed, now);
        }
    }

    pub(super) fn handle_conn_event(&mut self, id: ConnId, event: Event, now: Instant) {
        let Some(c) = self.conns.get(id) else {
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
            // The application handshake's deadline runs until the peer has answered our
            // streams (Ready), not only until we opened them: a peer that never answers is cut.
            Event::Established => {
                if let Some(peer) = attached_peer {
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
            Event::Confirmed {
                stream,
                messages,
                bytes,
            } => {
                if let (Some(peer), Some(name)) = (c.conn.peer(), c.conn.stream_name_shared(stream))
                {
                    self.events.push_back(NodeEvent::Confirmed {
                        peer,
                        name,
                        messages,
                        bytes,
                    });
                }
            }
            Event::Ready => {
                if let Some(peer) = attached_peer {
                    if let Some(p) = self.peers.get_mut(&peer) {
                        p.deadline = None;
                    }
                    self.events.push_back(NodeEvent::Ready { peer });
                }
            }
            Event::StreamAccepted(_) | Event::Rtt(_) => {}
            Event::Closed { reason, .. } => self.handle_closed(id, attached_peer, reason, now),
        }
    }

    pub(super) fn handle_connected(
        &mut self,
        id: ConnId,
        peer: PeerId,
        direction: Direction,
        now: Instant,
    ) {
        if self.blacklist.contains(&peer) {
            // Refused before the application sees the peer or any of its bytes; reported.
            let code = CloseCode::Blacklisted;
            self.close_conn(id, code);
            self.events.push_back(NodeEvent::Refused {
                peer,
                direction,
                code,
            });
            return;
        }
        if let Some(c) = self.conns.get_mut(id) {
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
            self.close_conn(id, CloseCode::HandshakeTimeout);
            return;
        }
        if !self.keeps_new_connection(id, peer, direction) || !self.admits(id, peer, direction, now)
        {
            return;
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
        self.peer_timers
            .push(Reverse((now + self.config.handshake_timeout, peer)));
        if p.state != ConnState::Connected {
            self.set_state(peer, ConnState::Connected, None);
        }
    }

    /// Another connection to `peer` exists: which one stays (PROTOCOL.md §5.6). False when the
    /// new one `id` was closed as the duplicate.
    fn keeps_new_connection(&mut self, id: ConnId, peer: PeerId, direction: Direction) -> bool {
        let current = self.peers.get(&peer).and_then(|p| p.conn);
        if let Some(other) = current.filter(|other| *other != id) {
            let other_direction = self.conns.get(other).map(|c| c.conn.direction());
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
                self.close_conn(id, CloseCode::Duplicate);
                return false;
            }
            if let Some(p) = self.peers.get_mut(&peer) {
                p.conn = Some(id);
            }
            self.close_conn(other, CloseCode::Duplicate);
            if self.state(peer) == ConnState::Established {
                // The peer came back on a new connection: the old session is over.
                let reason = Some(CloseReason::Local(CloseCode::Duplicate));
                self.set_state(peer, ConnState::Disconnected, reason);
            }
        }
        true
    }

    /// Admission by the connection limits (persistent peers are not asked). False when `id`
    /// was refused and closed (an own dial refused counts as a failed attempt).
    fn admits(&mut self, id: ConnId, peer: PeerId, direction: Direction, now: Instant) -> bool {
        // A replaced connection gives its slot back (if it held one); the new one must be
        // admitted, unless the peer is persistent: those never count against the limits.
        if let Some(p) = self.peers.get_mut(&peer)
            && let Some(old) = p.admitted.take()
            && let Some(admission) = &self.config.admission
        {
            admission.release(&peer, old);
        }
        let persistent = self.peers.get(&peer).is_some_and(|p| p.persistent);
        if let Some(admission) = self.config.admission.as_ref().filter(|_| !persistent) {
            let remote = self.conns.get(id).and_then(|c| c.remote);
            if let Err(code) = admission.admit(&peer, direction, remote) {
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
                if self.state(peer) == ConnState::Connecting
                    && let Some(p) = self.peers.get_mut(&peer)
                {
                    // Our own dial was refused by our own limits: a failed attempt, retried
                    // with backoff like any other (an eclipse must not make us stop dialling).
                    p.deadline = None;
                    p.attempts = p.attempts.saturating_add(1);
                    let attempts = p.attempts;
                    self.schedule_retry(peer, attempts, Some(CloseReason::Local(code)), now);
                }
                self.forget_if_unknown(peer);
                return false;
            }
            if let Some(p) = self.peers.get_mut(&peer) {
                p.admitted = Some(direction);
            }
        }
        true
    }

    pub(super) fn initiator(&self, direction: Direction, peer: PeerId) -> PeerId {
        match direction {
            Direction::Outbound => self.me,
            Direction::Inbound => peer,
        }
    }

    /// Closes a connection that is not (or no longer) the peer's: no state change follows.
    pub(super) fn close_conn(&mut self, id: ConnId, code: CloseCode) {
        if let Some(c) = self.conns.get_mut(id) {
            c.peer = None;
            c.conn.close(code);
            // Its Closed event finds no attached peer; it is handled once the current
            // connection's events are.
            self.closing.push(id);
        }
    }

    pub(super) fn handle_closed(
        &mut self,
        id: ConnId,
        attached: Option<PeerId>,
        reason: CloseReason,
        now: Instant,
    ) {
        if let Some(mut c) = self.conns.remove(id) {
            if attached.is_none()
                && matches!(
                    &reason,
                    CloseReason::Error(crate::event::ConnectionError::Handshake(
                        glueberry_crypto::HandshakeError::NotAdmitted(_)
                    ))
                )
            {
                self.events
                    .push_back(NodeEvent::StrangerRefused { remote: c.remote });
            }
            if let Some(at) = c.timer.take() {
                self.conn_timers.remove(&(at, id));
            }
            self.uncount_received(c.received_held);
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
        }
        if let (Some(admission), Some(direction)) = (&self.config.admission, p.admitted.take()) {
            admission.release(&peer, direction);
        }
        if matches!(reason, CloseReason::Error(_)) || p.state == ConnState::Connecting {
            p.failures += 1;
        }
        match p.state {
            ConnState::Connecting if reason == CloseReason::Peer(CloseCode::Blacklisted) => {
                // The peer blacklisted us: permanent. Not redialled; a persistent peer is
                // tried again only at the longest backoff.
                if p.persistent {
                    self.schedule_retry(peer, u32::MAX, Some(reason), now);
                } else {
                    self.set_state(peer, ConnState::Disconnected, Some(reason));
                }
            }
            ConnState::Connecting if matches!(&reason, CloseReason::Error(e) if e.is_permanent()) =>
            {
                // Another network or version, or not the peer we dialled: dialling the same
                // address again cannot help, so it is reported once and not retried (a
                // persistent peer only at the longest backoff, in case its operator fixes it).
                if p.persistent {
                    self.schedule_retry(peer, u32::MAX, Some(reason), now);
                } else {
                    self.set_state(peer, ConnState::Disconnected, Some(reason));
                }
            }
            ConnState::Connecting => {
                // The dial or its secure handshake failed.
                p.attempts = p.attempts.saturating_add(1);
                let attempts = p.attempts;
                self.schedule_retry(peer, attempts, Some(reason), now);
            }
            ConnState::Connected | ConnState::Established
                if reason == CloseReason::Local(CloseCode::HandshakeTimeout) =>
            {
                p.deadline = Some(now + self.config.cooldown);
                self.peer_timers
                    .push(Reverse((now + self.config.cooldown, peer)));
                self.set_state(peer, ConnState::Cooldown, Some(reason));
            }
            ConnState::Connected | ConnState::Established => {
                let manual = reason == CloseReason::Local(CloseCode::Normal);
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
    pub(super) fn detach_conn(&mut self, peer: PeerId, now: Instant) -> Option<ConnId> {
        let p = self.peers.get_mut(&peer)?;
        let id = p.conn.take()?;
        if let Some(since) = p.connected_at.take() {
            p.total_connected += now.saturating_duration_since(since);
        }
        if let (Some(admission), Some(direction)) = (&self.config.admission, p.admitted.take()) {
            admission.release(&peer, direction);
        }
        if let Some(c) = self.conns.get_mut(id) {
            c.peer = None;
        }
        Some(id)
    }

    /// A peer that only ever dialled us, and is gone, leaves no trace: the table of peers is
    /// bounded by the peers the application added plus those connected now.
    pub(super) fn forget_if_unknown(&mut self, peer: PeerId) {
        if self.peers.get(&peer).is_some_and(|p| {
            p.state == ConnState::Disconnected
                && p.addr.is_none()
                && !p.reconnect
                && !p.persistent
                && p.conn.is_none()
        }) {
            self.peers.remove(&peer);
        }
    }

    /// After a failed attempt: Reconnecting if attempts remain, else Disconnected.
    pub(super) fn schedule_retry(
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
        let delay = if p.persistent {
            Some(self.config.backoff.persistent_delay(attempts, random))
        } else {
            self.config.backoff.delay(attempts, random)
        };
        match delay.filter(|_| p.reconnect || p.persistent) {
            Some(delay) => {
                p.deadline = Some(now + delay);
                self.peer_timers.push(Reverse((now + delay, peer)));
                self.set_state(peer, ConnState::Reconnecting, reason);
            }
            None => self.set_state(peer, ConnState::Disconnected, reason),
        }
    }

    /// After a connection ended: Disconnected → Reconnecting for peers that reconnect.
    pub(super) fn schedule_reconnect(&mut self, peer: PeerId, now: Instant) {
        let Some(p) = self.peers.get_mut(&peer) else {
            return;
        };
        if !(p.reconnect || p.persistent) || p.addr.is_none() {
            return;
        }
        p.attempts = 1;
        let random = self.jitter.next_u64();
        if let Some(delay) = self.config.backoff.delay(1, random).or(p
            .persistent
            .then(|| self.config.backoff.persistent_delay(1, random)))
        {
            p.deadline = Some(now + delay);
            self.peer_timers.push(Reverse((now + delay, peer)));
            self.set_state(peer, ConnState::Reconnecting, None);
        }
    }

    pub(super) fn set_state(&mut self, peer: PeerId, next: ConnState, reason: Option<CloseReason>) {
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
