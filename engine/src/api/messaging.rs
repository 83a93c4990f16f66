//! Sending and receiving: routes, `send` and its variants, the received-message streams.

use std::sync::Arc;
use std::sync::atomic::Ordering;

use bytes::Bytes;
use glueberry_crypto::PeerId;
use glueberry_transport::{ConnState, shard_of};

use super::handle::{Node, push_command};
use super::route::{Route, StreamRef};
use crate::channel::{Channel, Messages};
use crate::route_table::{RouteShared, RouteState};
use crate::shard::Refused;
use crate::shard::{Command, ShardHandle};
use crate::vocabulary::{EventFilter, Subscription};
use crate::vocabulary::{NodeSendError, TrySendError};

impl Node {
    /// The route to `peer`'s stream `name`: resolved once, then every send on it is a reserve
    /// and a queue push, with no lookup. Valid across reconnections (it opens again when the
    /// peer is Established again); cheap to clone. Resolving before the peer connects is fine.
    pub fn route(&self, peer: PeerId, name: &str) -> Route {
        Route(self.resolve(peer, name))
    }

    pub(super) fn resolve(&self, peer: PeerId, name: &str) -> Arc<RouteShared> {
        let shared = &self.inner.shared;
        shared.routes.resolve(peer, name, || {
            RouteShared::new(
                peer,
                self.stream(name),
                shard_of(&peer, shared.shards.len()),
                shared.stream_queue,
                shared.budget.clone(),
            )
        })
    }

    /// Sends a message on `peer`'s stream (named by `&str`, [`StreamName`](crate::StreamName) or
    /// [`Route`](crate::Route)), waiting while that stream's queue is full. What it accepts is
    /// delivered or, if the connection ends first, handed back in
    /// [`Event::Undelivered`](crate::Event::Undelivered). Fails at once when the peer is not
    /// Established with the stream open
    /// (the peer [`NotConnected`](crate::NodeSendError::NotConnected),
    /// [`Blacklisted`](crate::NodeSendError::Blacklisted), or the stream
    /// [`StreamNotOpen`](crate::NodeSendError::StreamNotOpen) on this side), or the peer
    /// rejected the stream.
    pub async fn send<S: StreamRef + ?Sized>(
        &self,
        peer: PeerId,
        stream: &S,
        data: Bytes,
    ) -> Result<(), NodeSendError> {
        let route = stream.route_for(self, peer);
        self.send_on(&route, data).await
    }

    /// [`Node::send`](crate::Node::send) on a route (the fast path: no name is looked up).
    pub async fn send_on(&self, route: &Route, data: Bytes) -> Result<(), NodeSendError> {
        self.check_size(&data)?;
        let route = self.reserve(route, 1, data.len(), None).await?;
        let handle = &self.inner.shared.shards[route.shard];
        self.push_send(handle, Command::Send { route, data }).await
    }

    /// [`Node::send`](crate::Node::send) that waits for room at most `timeout`, then fails with
    /// [`NodeSendError::TimedOut`] (the message was not accepted): for a loop that serves many
    /// peers and must not wait long on one that stopped reading. Cancel-safe while it waits.
    pub async fn send_timeout<S: StreamRef + ?Sized>(
        &self,
        peer: PeerId,
        stream: &S,
        data: Bytes,
        timeout: std::time::Duration,
    ) -> Result<(), NodeSendError> {
        let route = stream.route_for(self, peer);
        self.send_until(&route, data, std::time::Instant::now() + timeout)
            .await
    }

    /// [`Node::send_timeout`](crate::Node::send_timeout) on a route, with a deadline.
    pub(super) async fn send_until(
        &self,
        route: &Route,
        data: Bytes,
        deadline: std::time::Instant,
    ) -> Result<(), NodeSendError> {
        self.check_size(&data)?;
        let route = self.reserve(route, 1, data.len(), Some(deadline)).await?;
        let handle = &self.inner.shared.shards[route.shard];
        self.push_send(handle, Command::Send { route, data }).await
    }

    /// Sends many messages on one route with one reservation, one queue push and one wake-up
    /// (waiting for room for them all; a batch larger than the stream's bound goes in parts).
    pub async fn send_batch(
        &self,
        route: &Route,
        messages: impl IntoIterator<Item = Bytes>,
    ) -> Result<(), NodeSendError> {
        let mut messages = messages.into_iter().peekable();
        let (max_messages, max_bytes) = self.inner.shared.stream_queue;
        while messages.peek().is_some() {
            let mut batch = Vec::new();
            let mut bytes = 0;
            while let Some(next) = messages.peek() {
                let fits = batch.is_empty()
                    || (batch.len() < max_messages && bytes + next.len() <= max_bytes);
                if !fits {
                    break;
                }
                self.check_size(next)?;
                bytes += next.len();
                batch.extend(messages.next());
            }
            let shared = self.reserve(route, batch.len(), bytes, None).await?;
            let handle = &self.inner.shared.shards[shared.shard];
            let command = Command::SendBatch {
                route: shared,
                messages: batch,
            };
            self.push_send(handle, command).await?;
        }
        Ok(())
    }

    /// Sends without waiting: [`NodeSendError::BufferFull`](crate::NodeSendError::BufferFull) when
    /// the stream's queue (or the shard's command queue) is full; the message comes back with the
    /// error.
    pub fn try_send<S: StreamRef + ?Sized>(
        &self,
        peer: PeerId,
        stream: &S,
        data: Bytes,
    ) -> Result<(), TrySendError> {
        let route = stream.route_for(self, peer);
        self.try_send_on(&route, data)
    }

    /// [`Node::try_send`](crate::Node::try_send) on a route.
    pub fn try_send_on(&self, route: &Route, data: Bytes) -> Result<(), TrySendError> {
        if let Err(error) = self.check_size(&data) {
            return Err(TrySendError { error, data });
        }
        let route = match self.try_reserve(&route.0, 1, data.len()) {
            Ok(Ok(route)) => route,
            Ok(Err(_)) => {
                let error = NodeSendError::BufferFull;
                return Err(TrySendError { error, data });
            }
            Err(error) => return Err(TrySendError { error, data }),
        };
        let handle = &self.inner.shared.shards[route.shard];
        match handle.commands.try_push(Command::Send { route, data }) {
            Ok(()) => {
                handle.wake();
                Ok(())
            }
            Err(Refused::Full(Command::Send { route, data }))
            | Err(Refused::Closed(Command::Send { route, data })) => {
                route.release(1, data.len() as u64);
                let error = if self.inner.stopped.load(Ordering::Acquire) {
                    NodeSendError::Stopped
                } else {
                    NodeSendError::BufferFull
                };
                Err(TrySendError { error, data })
            }
            Err(_) => Err(TrySendError {
                error: NodeSendError::Stopped,
                data: Bytes::new(),
            }),
        }
    }

    /// Reserves room for `count` messages of `bytes` in all on `route` (resolving it again if
    /// its peer left): `Ok(Ok(route))` when reserved, `Ok(Err(route))` when it is full.
    pub(super) fn try_reserve(
        &self,
        route: &Arc<RouteShared>,
        count: usize,
        bytes: usize,
    ) -> Result<Result<Arc<RouteShared>, Arc<RouteShared>>, NodeSendError> {
        let mut route = route.clone();
        loop {
            if self.inner.stopped.load(Ordering::Acquire) {
                return Err(NodeSendError::Stopped);
            }
            match route.state() {
                RouteState::Open => {}
                RouteState::Closed => return Err(self.why_closed(route.peer)),
                RouteState::Rejected => return Err(NodeSendError::StreamRejected),
                RouteState::Retired => {
                    route = self.resolve(route.peer, &route.name);
                    continue;
                }
            }
            return Ok(if route.try_reserve(count, bytes) {
                Ok(route)
            } else {
                Err(route)
            });
        }
    }

    /// Why a route to `peer` is closed (the error path only: it takes two locks).
    fn why_closed(&self, peer: PeerId) -> NodeSendError {
        if self.is_blacklisted(peer) {
            return NodeSendError::Blacklisted;
        }
        match self.state(peer) {
            ConnState::Connected | ConnState::Established => NodeSendError::StreamNotOpen,
            state => NodeSendError::NotConnected { state },
        }
    }

    /// [`Node::try_reserve`](crate::Node::try_reserve), waiting for room.
    pub(super) async fn reserve(
        &self,
        route: &Route,
        count: usize,
        bytes: usize,
        deadline: Option<std::time::Instant>,
    ) -> Result<Arc<RouteShared>, NodeSendError> {
        let mut route = match self.try_reserve(&route.0, count, bytes)? {
            Ok(route) => return Ok(route),
            Err(full) => full,
        };
        let waited = std::time::Instant::now();
        self.inner.backpressure_engaged.increment(1);
        // Nothing is reserved while waiting: dropping this future, or the deadline, leaves no
        // trace.
        let mut timer = deadline.map(|at| {
            futures_timer::Delay::new(at.saturating_duration_since(std::time::Instant::now()))
        });
        loop {
            let listener = route.listen();
            match self.try_reserve(&route, count, bytes)? {
                Ok(reserved) => {
                    route = reserved;
                    break;
                }
                Err(full) => route = full,
            }
            match timer.as_mut() {
                None => listener.await,
                Some(timer) => {
                    if let futures::future::Either::Right(_) =
                        futures::future::select(listener, timer).await
                    {
                        return Err(NodeSendError::TimedOut);
                    }
                }
            }
        }
        self.inner
            .backpressure_wait
            .record(waited.elapsed().as_secs_f64());
        Ok(route)
    }

    /// Pushes a reserved send command, waiting while the shard's command queue is full (the
    /// shard drains it every turn: what is reserved always has room further down).
    pub(super) async fn push_send(
        &self,
        handle: &ShardHandle,
        command: Command,
    ) -> Result<(), NodeSendError> {
        match handle.commands.try_push(command) {
            Ok(()) => {}
            Err(Refused::Full(command)) => {
                handle.wake();
                if let Err(command) = handle.commands.push(command).await {
                    command.release_reservation();
                    return Err(NodeSendError::Stopped);
                }
            }
            Err(Refused::Closed(command)) => {
                command.release_reservation();
                return Err(NodeSendError::Stopped);
            }
        }
        handle.wake();
        Ok(())
    }

    /// Sends one message to many peers without copying it (every peer's command holds the same
    /// `Bytes`). Waits per peer as [`Node::send`](crate::Node::send) does. Returns the peers it
    /// could not send to, with why.
    pub async fn broadcast<S: StreamRef + ?Sized>(
        &self,
        peers: &[PeerId],
        stream: &S,
        data: Bytes,
    ) -> Vec<(PeerId, NodeSendError)> {
        let mut failed = Vec::new();
        for &peer in peers {
            if let Err(e) = self.send(peer, stream, data.clone()).await {
                failed.push((peer, e));
            }
        }
        failed
    }

    pub(super) fn check_size(&self, data: &Bytes) -> Result<(), NodeSendError> {
        if data.len() > self.inner.max_message_size {
            return Err(NodeSendError::MessageTooLarge {
                len: data.len(),
                max: self.inner.max_message_size,
            });
        }
        Ok(())
    }

    /// The received messages of every stream that has no destination of its own
    /// ([`Node::messages_on`](crate::Node::messages_on)). Each shard delivers into a bounded
    /// channel of its own (`message_buffer` messages); the returned [`Messages`](crate::Messages)
    /// reads them all. Clones share the messages (each goes to one of them). `recv().await` from
    /// any executor, `recv_blocking()` from a plain thread, or use it as a `Stream`.
    pub fn messages(&self) -> Messages {
        Messages::new(&self.inner.messages)
    }

    /// The received messages of stream `name`, apart from the others: a consumer that falls behind
    /// on it holds back only that stream (its peers' windows for it fill), never another stream or
    /// [`Node::messages`](crate::Node::messages). Ask before the stream opens (before
    /// [`Node::complete_handshake`](crate::Node::complete_handshake)), or messages that arrived
    /// earlier went to [`Node::messages`](crate::Node::messages). Asking again for the same name
    /// returns a clone of the same receiver.
    pub fn messages_on(&self, name: &str) -> Result<Messages, NodeSendError> {
        let mut outlets = self.inner.outlets.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(channels) = outlets.get(name) {
            return Ok(Messages::new(channels));
        }
        let mut channels = Vec::with_capacity(self.inner.shared.shards.len());
        for handle in &self.inner.shared.shards {
            let channel = Channel::bounded(self.inner.message_buffer);
            let command = Command::Outlet {
                name: name.to_string(),
                channel: channel.clone(),
            };
            push_command(handle, command)?;
            channels.push(channel);
        }
        let messages = Messages::new(&channels);
        outlets.insert(name.to_string(), channels);
        Ok(messages)
    }

    /// (peer, stream) routes the node keeps: those of known peers and those the application
    /// resolved. A peer that is forgotten takes its routes with it.
    pub fn route_count(&self) -> usize {
        self.inner.shared.routes.len()
    }
}

impl Node {
    /// Every event since the node started, in a queue of `NodeConfig::event_buffer`: the
    /// node's own [`Subscription`] with no filter (clones share it: each event goes to one
    /// taker). Events it cannot hold are counted, and announced with
    /// [`Event::Missed`](crate::Event::Missed).
    pub fn events(&self) -> Subscription {
        self.inner.events.clone()
    }

    /// Subscribes to the events that pass `filter`, from now on, in a queue of `capacity`.
    /// Subscribe before connecting to see a connection's first events.
    pub fn subscribe(&self, filter: EventFilter, capacity: usize) -> Subscription {
        let id = self
            .inner
            .shared
            .next_subscriber
            .fetch_add(1, Ordering::Relaxed);
        Subscription::join(&self.inner.shared.subscribers, id, filter, capacity)
    }

    /// Live subscriptions made with [`Node::subscribe`] (not counting the node's own, which
    /// [`Node::events`] hands out).
    pub fn subscription_count(&self) -> usize {
        self.inner
            .shared
            .subscribers
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .iter()
            .filter(|s| s.id != 0)
            .count()
    }

    /// Events lost by subscribers that did not keep up (each subscription counts its own).
    pub fn events_dropped(&self) -> u64 {
        self.inner.shared.events_dropped.load(Ordering::Relaxed)
    }
}
