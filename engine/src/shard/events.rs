//! What the transport core reports, turned into the application's events and messages, logs
//! and metrics.

use std::sync::atomic::Ordering;
use std::time::Instant;

use glueberry_crypto::PeerId;
use glueberry_transport::{
    CloseCode, CloseReason, ConnState, ConnectionError, NodeEvent, StreamId,
};

use super::*;
use crate::route_table::RouteState;
use crate::vocabulary::{Event, Message, StreamName};

impl Shard {
    pub(super) fn deliver_events(&mut self) {
        while let Some(event) = self.core.poll_event() {
            match event {
                NodeEvent::Message {
                    peer,
                    conn,
                    stream,
                    name,
                    data,
                } => self.on_message(peer, conn, stream, StreamName::from_shared(name), data),
                NodeEvent::State {
                    peer,
                    state,
                    direction,
                    reason,
                } => self.on_state(peer, state, direction, reason),
                NodeEvent::Ready { peer } => {
                    tracing::debug!(peer = %peer, "peer's streams answered: both sides established");
                    if let Some(report) = self
                        .shared
                        .states
                        .lock()
                        .unwrap_or_else(|p| p.into_inner())
                        .get_mut(&peer)
                    {
                        report.ready = true;
                    }
                    self.emit(Event::Ready { peer });
                }
                NodeEvent::StreamRejected {
                    peer,
                    stream,
                    unsent,
                } => {
                    let stream = self.stream_name(peer, stream);
                    if let Some(route) = self.route_named(peer, &stream) {
                        route.bind(None);
                        route.set_state(RouteState::Rejected);
                    }
                    self.emit(Event::StreamRejected {
                        peer,
                        stream,
                        unsent,
                    });
                }
                NodeEvent::Undelivered {
                    peer,
                    name,
                    unsent,
                    unconfirmed,
                    ..
                } => {
                    self.metrics
                        .messages_undelivered
                        .increment((unsent.len() + unconfirmed.len()) as u64);
                    // Unsent and unconfirmed messages both still held their room (a route's
                    // bound covers what is accepted and not yet confirmed).
                    if let Some(route) = self.route_named(peer, &name) {
                        let held = unsent.iter().chain(&unconfirmed);
                        let bytes = held.map(|m| m.len() as u64).sum();
                        route.release((unsent.len() + unconfirmed.len()) as u64, bytes);
                    }
                    self.emit(Event::Undelivered {
                        peer,
                        stream: StreamName::from_shared(name),
                        unsent: unsent.into(),
                        unconfirmed: unconfirmed.into(),
                    });
                }
                NodeEvent::StrangerRefused { .. } => {
                    self.metrics.refused.increment(1);
                    self.emit(Event::Refused {
                        peer: None,
                        address: None,
                        reason: crate::vocabulary::Refusal::NotMember,
                    });
                }
                NodeEvent::Refused {
                    peer,
                    direction,
                    code,
                } => {
                    self.metrics.refused.increment(1);
                    self.emit(Event::Refused {
                        peer: Some(peer),
                        address: None,
                        reason: crate::vocabulary::Refusal::Limits { direction, code },
                    });
                }
                NodeEvent::Confirmed {
                    peer,
                    name,
                    messages,
                    bytes,
                } => {
                    // The peer has them: their room goes back to the senders.
                    if let Some(route) = self.route_named(peer, &name) {
                        route.release(messages, bytes);
                    }
                }
                NodeEvent::Writable { .. } => {}
            }
        }
    }

    /// A whole message received: counted, then to a waiting request, the application's
    /// `Requests` (a request on a stream it serves), its handler, or its channel. Its credit
    /// goes back once it is taken.
    #[inline]
    fn on_message(
        &mut self,
        peer: PeerId,
        conn: glueberry_transport::ConnId,
        stream: StreamId,
        name: StreamName,
        data: bytes::Bytes,
    ) {
        let counters = match &self.last_received {
            Some((last, counters)) if StreamName::same(last, &name) => counters,
            _ => {
                let counters = self.metrics.stream(&name).clone();
                &self.last_received.insert((name.clone(), counters)).1
            }
        };
        counters.messages_received.increment(1);
        counters.bytes_received.increment(data.len() as u64);
        tracing::trace!(peer = %peer, stream = %name, size = data.len(), "message received");
        let request = match self.outbox.request_stream(name.shared()) {
            Some(kind) if self.take_rpc(kind, peer, &name, &data) => {
                self.core.release(conn, stream, data.len());
                return;
            }
            // A request the application serves: to its `Requests`, never the handler.
            Some(_) => true,
            None => false,
        };
        if !request && let Some(handler) = &self.shared.handler {
            // The application's code on our thread: a panic in it is contained (the message
            // counts as taken), never the end of the shard.
            let call = std::panic::AssertUnwindSafe(|| handler(&peer, &name, &data));
            if std::panic::catch_unwind(call).is_err() {
                let n = self.shared.handler_panics.fetch_add(1, Ordering::Relaxed);
                if n.is_power_of_two() || n == 0 {
                    tracing::error!(panics = n + 1, stream = %name, "the message handler panicked");
                }
            }
            self.core.release(conn, stream, data.len());
            return;
        }
        let shared_name = name.shared().clone();
        let message = Message {
            peer,
            stream: name,
            data,
        };
        self.outbox
            .deliver(&mut self.core, &shared_name, message, conn, stream);
    }

    /// A peer's state changed: the shared table, pending requests, metrics and logs, the
    /// address book, its routes, then the application's event.
    fn on_state(
        &mut self,
        peer: PeerId,
        state: ConnState,
        direction: Option<glueberry_transport::Direction>,
        reason: Option<CloseReason>,
    ) {
        let previous = {
            let mut states = self.shared.states.lock().unwrap_or_else(|p| p.into_inner());
            if state == ConnState::Disconnected {
                states.remove(&peer)
            } else {
                // Ready again only once the peer answers on this connection.
                let report = PeerReport {
                    state,
                    direction,
                    ready: false,
                };
                states.insert(peer, report)
            }
        };
        if !matches!(state, ConnState::Connected | ConnState::Established) {
            // The connection ended: no response can come on it.
            self.shared.rpc.fail_peer(peer);
        }
        self.observe_state(
            peer,
            previous.map(|p| p.state),
            state,
            direction,
            reason.as_ref(),
        );
        if state == ConnState::Connected {
            // Last seen now: noted in the book when its lock is free (`note_seen`), written by
            // the book's own thread.
            self.seen.push(peer);
        }
        // Routes open before the application hears of the state, so that it can send as soon
        // as it sees Connected or Established.
        match state {
            ConnState::Connected | ConnState::Established => self.bind_routes(peer),
            _ => {
                let forget = state == ConnState::Disconnected && !self.core.knows(peer);
                self.unbind_routes(peer, forget);
            }
        }
        self.emit(Event::State {
            peer,
            state,
            direction,
            reason,
        });
    }

    /// Metrics and logs of a peer's state change.
    pub(super) fn observe_state(
        &mut self,
        peer: PeerId,
        from: Option<ConnState>,
        to: ConnState,
        direction: Option<glueberry_transport::Direction>,
        reason: Option<&CloseReason>,
    ) {
        self.metrics.transition(from, to);
        let now = Instant::now();
        match to {
            ConnState::Connecting => {
                self.attempt_started.insert(peer, now);
                tracing::debug!(peer = %peer, ?direction, "handshake started");
            }
            ConnState::Connected => {
                self.metrics.connected.increment(1);
                let started = self.attempt_started.remove(&peer);
                if let Some(started) = started {
                    self.metrics
                        .handshake_duration
                        .record(now.saturating_duration_since(started).as_secs_f64());
                }
                tracing::info!(peer = %peer, ?direction, "connected");
            }
            ConnState::Established => {
                let streams = self.core.streams_of(peer).map_or(0, |(_, s)| s.len());
                tracing::info!(peer = %peer, streams, "handshake complete");
                if let Some(old) = self.streams_open.insert(peer, streams) {
                    self.streams_active -= old;
                }
                self.streams_active += streams;
                self.metrics.streams_active.set(self.streams_active as f64);
            }
            ConnState::Disconnected | ConnState::Cooldown | ConnState::Reconnecting => {
                let attempting = matches!(from, Some(ConnState::Connecting) | None);
                if attempting && self.attempt_started.remove(&peer).is_some() {
                    self.metrics.failed.increment(1);
                }
                let failed = matches!(reason, Some(CloseReason::Error(_)))
                    || matches!(reason, Some(CloseReason::Local(code)) if *code == CloseCode::HandshakeTimeout);
                if let Some(CloseReason::Error(ConnectionError::Record(e))) = reason {
                    use glueberry_crypto::RecordError as R;
                    match e {
                        R::NonceExhausted
                        | R::PlaintextTooLarge { .. }
                        | R::BufferTooSmall { .. } => {
                            self.metrics.encrypt_errors.increment(1);
                        }
                        _ => {
                            self.metrics.decrypt_errors.increment(1);
                            if self.peer_warnings.allow(now).is_some() {
                                tracing::error!(peer = %peer, error = %e, "decryption failed");
                            }
                        }
                    }
                }
                // Failures are the peer's doing (or the network's): rate-limited.
                if failed {
                    if let Some(suppressed) = self.peer_warnings.allow(now) {
                        if let Some(CloseReason::Error(e)) = reason
                            && from == Some(ConnState::Connecting)
                        {
                            // In words: "dial failed: connect: connection refused", "handshake:
                            // network mismatch: ...". A permanent cause is not redialled.
                            let error = sanitize(&e.to_string());
                            let permanent = e.is_permanent();
                            tracing::warn!(peer = %peer, state = ?to, %error, permanent, suppressed, "dial failed");
                        } else {
                            let reason = reason.map(|r| sanitize(&format!("{r:?}")));
                            if from == Some(ConnState::Connecting) || to == ConnState::Cooldown {
                                tracing::warn!(peer = %peer, ?direction, state = ?to, reason, suppressed, "handshake failed");
                            } else {
                                tracing::warn!(peer = %peer, ?direction, state = ?to, reason, suppressed, "connection failed");
                            }
                        }
                    }
                } else {
                    tracing::info!(peer = %peer, state = ?to, reason = ?reason, "disconnected");
                }
            }
        }
        // Kept per peer, not recounted over every peer at each change (Sybil churn would make
        // that quadratic).
        if to != ConnState::Established
            && let Some(old) = self.streams_open.remove(&peer)
        {
            self.streams_active -= old;
            self.metrics.streams_active.set(self.streams_active as f64);
        }
    }

    /// Peers seen since the last look go into the address book if its lock is free now (an
    /// application's book call, or the book's writer, may hold it through a file write: the
    /// shard does not wait for that; it looks again next turn).
    /// (`wait`: the shard is stopping, and waits for the lock.)
    pub(super) fn note_seen(&mut self, wait: bool) {
        if self.seen.is_empty() {
            return;
        }
        let mut guard = match self.shared.book.try_lock() {
            Ok(guard) => guard,
            Err(std::sync::TryLockError::Poisoned(p)) => p.into_inner(),
            Err(std::sync::TryLockError::WouldBlock) if wait => {
                self.shared.book.lock().unwrap_or_else(|p| p.into_inner())
            }
            Err(std::sync::TryLockError::WouldBlock) => return,
        };
        match guard.as_mut() {
            Some(book) => self.seen.drain(..).for_each(|peer| book.touch(&peer)),
            None => self.seen.clear(),
        }
    }

    pub(super) fn stream_name(&mut self, peer: PeerId, stream: StreamId) -> StreamName {
        let name = self.core.stream_name(peer, stream).unwrap_or("?");
        if let Some(interned) = self.names.get(name) {
            return interned.clone();
        }
        let interned = StreamName::new(name);
        self.names.insert(name.into(), interned.clone());
        interned
    }

    pub(super) fn emit(&self, event: Event) {
        let dropped = publish(&self.shared, event);
        if dropped > 0 {
            self.metrics.events_dropped.increment(dropped);
        }
    }
}

/// Offers `event` to every subscription it passes; returns how many subscriptions lost it
/// (each is told with `Missed` before its next event). Any thread may publish.
pub(crate) fn publish(shared: &Shared, event: Event) -> u64 {
    let mut subscribers = shared.subscribers.lock().unwrap_or_else(|p| p.into_inner());
    let bytes = event.held_bytes();
    let mut dropped = 0;
    for sub in subscribers.iter_mut().filter(|s| s.filter.matches(&event)) {
        if sub.missed > 0 {
            match sub.tx.try_send(Event::Missed { count: sub.missed }) {
                Ok(()) => sub.missed = 0,
                Err(_) => {
                    sub.missed += 1;
                    dropped += 1;
                    continue;
                }
            }
        }
        // A clone is O(1): the messages an event carries are shared, not copied.
        if !sub.offer(event.clone(), bytes) {
            sub.missed += 1;
            dropped += 1;
        }
    }
    if dropped > 0 {
        shared.events_dropped.fetch_add(dropped, Ordering::Relaxed);
    }
    dropped
}

/// At most `per_second` log lines a second; the rest are counted and reported with the next.
pub(crate) struct RateLimit {
    per_second: u32,
    window: Option<Instant>,
    used: u32,
    suppressed: u64,
}

impl RateLimit {
    pub(crate) fn new(per_second: u32) -> Self {
        Self {
            per_second,
            window: None,
            used: 0,
            suppressed: 0,
        }
    }

    /// Whether a line may be logged now; with how many were suppressed before it.
    pub(crate) fn allow(&mut self, now: Instant) -> Option<u64> {
        if self
            .window
            .is_none_or(|w| now.saturating_duration_since(w) >= std::time::Duration::from_secs(1))
        {
            self.window = Some(now);
            self.used = 0;
        }
        if self.used >= self.per_second {
            self.suppressed += 1;
            return None;
        }
        self.used += 1;
        Some(std::mem::take(&mut self.suppressed))
    }
}

/// Text that came from a peer, made safe for a log line: printable ASCII only, at most 200
/// characters.
pub(crate) fn sanitize(text: &str) -> String {
    text.chars()
        .take(200)
        .map(|c| {
            if c.is_ascii_graphic() || c == ' ' {
                c
            } else {
                '?'
            }
        })
        .collect()
}
