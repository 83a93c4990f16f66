//! The send path inside a shard: a message reaches its route's connection, the connections
//! with output get a send buffer each. (Messages give their room back when the peer confirms
//! them: `events.rs`, `NodeEvent::Confirmed`.)

use std::io;
use std::os::fd::AsRawFd;
use std::sync::Arc;

use bytes::Bytes;
use glueberry_crypto::PeerId;

use super::*;
use crate::metrics::ShardMetrics;
use crate::route_table::{RouteShared, RouteState};
use crate::sys::op::Op;
use crate::vocabulary::{Event, StreamName};
use glueberry_transport::{ConnState, NodeError};

impl Shard {
    /// Queues a message on its route's connection. It had room reserved, so the transport
    /// takes it unless the connection is gone (or the stream was rejected): then it comes back.
    pub(super) fn send(&mut self, route: &Arc<RouteShared>, data: Bytes) {
        let len = data.len();
        let mut result = self.send_bound(route, data);
        if let Err((NodeError::NotConnected, _)) = &result
            && matches!(
                self.core.state(route.peer),
                ConnState::Connected | ConnState::Established
            )
        {
            // The peer's connection was replaced (a duplicate resolved) without it leaving
            // Connected or Established: bind its routes to the live connection and try again.
            self.bind_routes(route.peer);
            if let Err((_, data)) = result {
                result = self.send_bound(route, data);
            }
        }
        let (error, data): (crate::vocabulary::Error, Bytes) = match result {
            Ok(()) => {
                let counters = match &self.last_sent {
                    Some((name, counters)) if StreamName::same(name, &route.name) => counters,
                    _ => {
                        let counters = self.metrics.stream(&route.name).clone();
                        &self.last_sent.insert((route.name.clone(), counters)).1
                    }
                };
                counters.messages_sent.increment(1);
                counters.bytes_sent.increment(len as u64);
                tracing::trace!(peer = %route.peer, stream = %route.name, size = len, "message sent");
                return;
            }
            Err((NodeError::NotConnected | NodeError::UnknownPeer, data)) => {
                let error = match self.core.state(route.peer) {
                    _ if self.core.is_blacklisted(&route.peer) => {
                        crate::vocabulary::NodeSendError::Blacklisted
                    }
                    ConnState::Connected | ConnState::Established => {
                        crate::vocabulary::NodeSendError::StreamNotOpen
                    }
                    state => crate::vocabulary::NodeSendError::NotConnected { state },
                };
                (error.into(), data)
            }
            Err((e, data)) => (e.into(), data),
        };
        let error = error.with_peer(route.peer).with_stream(&route.name);
        route.release(1, len as u64);
        self.metrics.messages_dropped.increment(1);
        self.emit(Event::SendFailed {
            peer: route.peer,
            stream: route.name.clone(),
            error,
            data,
        });
    }

    /// Queues a message on the connection and stream its route is bound to.
    fn send_bound(&mut self, route: &RouteShared, data: Bytes) -> Result<(), (NodeError, Bytes)> {
        match route.binding() {
            Some((conn, stream)) => self.core.send_on(conn, stream, data),
            None => Err((NodeError::NotConnected, data)),
        }
    }

    /// Binds the peer's routes to its connection's streams and opens them (on Connected: the
    /// `handshake` stream; on Established: every stream).
    pub(super) fn bind_routes(&mut self, peer: PeerId) {
        let Some((conn, streams)) = self.core.streams_of(peer) else {
            return;
        };
        let mut by_stream = Vec::with_capacity(streams.len());
        for (stream, name) in streams {
            let route = self.shared.routes.resolve(peer, &name, || {
                RouteShared::new(
                    peer,
                    StreamName::from_shared(name.clone()),
                    self.index,
                    self.shared.stream_queue,
                    self.shared.budget.clone(),
                )
            });
            route.bind(Some((conn, stream)));
            route.set_state(RouteState::Open);
            let list = self.peer_routes.entry(peer).or_default();
            if !list.iter().any(|r| Arc::ptr_eq(r, &route)) {
                list.push(route.clone());
            }
            by_stream.push(Some(route));
        }
        // Routes of the peer that this connection does not carry (opened on an earlier one).
        if let Some(list) = self.peer_routes.get(&peer) {
            for route in list {
                if !by_stream.iter().flatten().any(|r| Arc::ptr_eq(r, route)) {
                    route.bind(None);
                    route.set_state(RouteState::Closed);
                }
            }
        }
        self.conn_routes.insert(conn, by_stream);
    }

    /// The peer's connection ended: its routes close, and are retired if the peer is forgotten
    /// (a sender holding one resolves the name again).
    pub(super) fn unbind_routes(&mut self, peer: PeerId, forget: bool) {
        self.conn_routes
            .retain(|_, routes| !routes.iter().flatten().any(|r| r.peer == peer));
        let routes = if forget {
            self.shared.routes.remove(&peer);
            self.peer_routes.remove(&peer).unwrap_or_default()
        } else {
            self.peer_routes.get(&peer).cloned().unwrap_or_default()
        };
        let state = if forget {
            RouteState::Retired
        } else {
            RouteState::Closed
        };
        for route in routes {
            route.bind(None);
            route.set_state(state);
        }
    }

    /// The route of `peer`'s stream called `name`, if it has one.
    pub(super) fn route_named(&self, peer: PeerId, name: &str) -> Option<&Arc<RouteShared>> {
        self.peer_routes
            .get(&peer)?
            .iter()
            .find(|r| &*r.name == name)
    }

    /// Gives each connection with output (the core's ready list) a send buffer, if it has no
    /// send in flight (one that has is touched again when its send completes).
    pub(super) fn flush_sends(&mut self, now: Instant) -> io::Result<()> {
        let mut ready = std::mem::take(&mut self.ready);
        self.core.take_ready(&mut ready);
        self.touched += ready.len();
        for id in ready.drain(..) {
            let Some(io) = self.conns.get_mut(id) else {
                continue;
            };
            if !io.connected || io.send.is_some() || io.closing.is_some() || io.handoff {
                continue;
            }
            if let Some(index) = self.fixed_free.pop() {
                let Some(fixed) = self.backend.fixed_mut(index) else {
                    continue;
                };
                let n = self.core.poll_transmit_at(id, now, fixed);
                if n == 0 {
                    self.fixed_free.push(index);
                    continue;
                }
                record_batch(&self.metrics, self.core.last_records(id));
                let op = Op::SendFixed {
                    conn: id,
                    index,
                    start: 0,
                    end: n,
                };
                io.send = Some(self.backend.push(io.fd.as_raw_fd(), op)?);
                continue;
            }
            let mut buf = io
                .send_buf
                .take()
                .or_else(|| self.send_pool.pop())
                .unwrap_or_else(|| vec![0u8; SEND_BUF]);
            let n = self.core.poll_transmit_at(id, now, &mut buf);
            if n == 0 {
                if self.send_pool.len() < SEND_POOL {
                    self.send_pool.push(buf);
                }
                continue;
            }
            if self.registered > 0 {
                self.metrics.send_buffers_exhausted.increment(1);
            }
            record_batch(&self.metrics, self.core.last_records(id));
            let key = self.backend.push(
                io.fd.as_raw_fd(),
                Op::Send {
                    conn: id,
                    buf,
                    start: 0,
                    end: n,
                },
            )?;
            io.send = Some(key);
        }
        self.ready = ready;
        self.metrics
            .send_buffers_in_use
            .set((self.registered - self.fixed_free.len()) as f64);
        Ok(())
    }

    /// Messages that never reached a connection (still in the command queue) go back to the
    /// application as unsent when the node stops, grouped by peer and stream in `send` order.
    pub(super) fn hand_back_waiting(&mut self) {
        let mut waiting: Vec<(PeerId, StreamName, Bytes)> = Vec::new();
        while let Some(command) = self.commands.pop() {
            match command {
                Command::Send { route, data } => {
                    route.release(1, data.len() as u64);
                    waiting.push((route.peer, route.name.clone(), data));
                }
                Command::SendBatch { route, messages } => {
                    for data in messages {
                        route.release(1, data.len() as u64);
                        waiting.push((route.peer, route.name.clone(), data));
                    }
                }
                _ => {}
            }
        }
        let mut group: Option<(PeerId, StreamName, Vec<Bytes>)> = None;
        for (peer, stream, data) in waiting {
            match &mut group {
                Some((p, s, unsent)) if *p == peer && StreamName::same(s, &stream) => {
                    unsent.push(data);
                }
                _ => {
                    if let Some(done) = group.replace((peer, stream, vec![data])) {
                        self.emit_unsent(done);
                    }
                }
            }
        }
        if let Some(done) = group {
            self.emit_unsent(done);
        }
    }

    pub(super) fn emit_unsent(&self, (peer, stream, unsent): (PeerId, StreamName, Vec<Bytes>)) {
        self.metrics
            .messages_undelivered
            .increment(unsent.len() as u64);
        self.emit(Event::Undelivered {
            peer,
            stream,
            unsent: unsent.into(),
            unconfirmed: Arc::new([]),
        });
    }
}

/// Records how many records went out in one send (handshake messages are not records).
fn record_batch(metrics: &ShardMetrics, records: usize) {
    if records > 0 {
        metrics.records_per_batch.record(records as f64);
    }
}
