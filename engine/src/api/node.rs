//! The `Node` handle: connect, complete handshakes, states, drain, stop (`start.rs` starts it;
//! `wait.rs` waits for a peer's states).

use std::io;
use std::net::SocketAddr;
use std::sync::atomic::Ordering;

use glueberry_crypto::PeerId;
use glueberry_transport::{ConnState, Direction};

use super::Backend;
use super::handle::{Node, push_command};
use crate::shard::{self, Command, PeerReport, Shared};
use crate::vocabulary::NodeSendError;
use crate::vocabulary::StreamName;

impl Node {
    /// This node's peer id.
    pub fn peer_id(&self) -> PeerId {
        self.inner.peer_id
    }

    /// The address the node listens on (the real port when 0 was asked for).
    pub fn listen_addr(&self) -> SocketAddr {
        self.inner.listen_addrs[0]
    }

    /// Every address the node listens on (the first is [`Node::listen_addr`]), with the real
    /// ports.
    pub fn listen_addrs(&self) -> &[SocketAddr] {
        &self.inner.listen_addrs
    }

    /// The I/O backend the shards run on: [`Backend::IoUring`] or [`Backend::Poll`] (what
    /// [`Backend::Auto`] chose).
    pub fn backend(&self) -> Backend {
        self.inner.shared.backend
    }

    /// How many shards (threads) run the node.
    pub fn shard_count(&self) -> usize {
        self.inner.shared.shards.len()
    }

    /// The interned name of a stream, for [`Node::send`].
    pub fn stream(&self, name: &str) -> StreamName {
        let mut names = self
            .inner
            .names
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        names
            .entry(name.to_string())
            .or_insert_with(|| StreamName::new(name))
            .clone()
    }

    /// Dials `peer` at `addr` (and redials it with backoff when the connection drops).
    pub fn connect(&self, peer: PeerId, addr: SocketAddr) -> Result<(), NodeSendError> {
        self.connect_any(peer, vec![addr])
    }

    /// Dials `peer` at any of `addrs`: each dial (the first and every redial) tries them in
    /// turn until one connects. Nothing happens for an empty list. The addresses become known
    /// peers' addresses: handshakes from them are not counted against the budget for
    /// strangers (`ConnectionLimits::stranger_handshakes_per_sec`).
    pub fn connect_any(&self, peer: PeerId, addrs: Vec<SocketAddr>) -> Result<(), NodeSendError> {
        if addrs.is_empty() {
            return Ok(());
        }
        self.know(&addrs);
        self.command(peer, Command::Connect { peer, addrs })
    }

    /// Handshakes from `addrs` are a known peer's, not a stranger's.
    pub(super) fn know(&self, addrs: &[SocketAddr]) {
        for addr in addrs {
            self.inner.shared.limits.know(addr.ip());
        }
    }

    /// Dials `addr.peer` at `addr`: an IP address at once, as [`Node::connect`]; a host name
    /// is resolved first on the node's resolver thread (never on the caller's thread or a
    /// shard), and again before every later dial, reconnections included. The resolved
    /// addresses are tried in turn. A name that does not resolve ends the attempt like an
    /// unreachable address (`Event::CommandFailed` for the first dial).
    pub fn connect_to(&self, addr: &crate::PeerAddr) -> Result<(), NodeSendError> {
        match &addr.host {
            crate::Host::Ip(ip) => self.connect(addr.peer, SocketAddr::new(*ip, addr.port)),
            crate::Host::Name(name) => {
                let request = crate::resolve::Request {
                    peer: addr.peer,
                    conn: None,
                    host: name.as_str().into(),
                    port: addr.port,
                };
                let shared = &self.inner.shared;
                shared
                    .resolver
                    .resolve(request, || shard::deliver_resolved(shared))
                    .map_err(|refused| match refused {
                        crate::resolve::Refused::Full => NodeSendError::BufferFull,
                        crate::resolve::Refused::Stopped => NodeSendError::Stopped,
                    })
            }
        }
    }

    /// Dials a persistent peer (a validator this node must stay connected to) at `addr`: see
    /// [`NodeConfig::persistent_peer`](crate::NodeConfig::persistent_peer).
    pub fn add_persistent_peer(&self, peer: PeerId, addr: SocketAddr) -> Result<(), NodeSendError> {
        self.know(&[addr]);
        let command = Command::Persistent {
            peer,
            addr: Some(addr),
            persistent: true,
        };
        self.command(peer, command)
    }

    /// Marks a known peer persistent or not (not: it counts against the limits from its next
    /// connection on, and its redials may give up).
    pub fn set_persistent(&self, peer: PeerId, persistent: bool) -> Result<(), NodeSendError> {
        let command = Command::Persistent {
            peer,
            addr: None,
            persistent,
        };
        self.command(peer, command)
    }

    /// See [`crate::testing::crash_shard`].
    pub(crate) fn crash_shard(&self, index: usize) -> Result<(), NodeSendError> {
        let handle = self
            .inner
            .shared
            .shards
            .get(index)
            .ok_or(NodeSendError::Stopped)?;
        super::handle::push_command(handle, Command::Crash)
    }

    /// Stops redialling a peer that is Reconnecting: it becomes Disconnected (with its event).
    pub fn cancel_reconnect(&self, peer: PeerId) -> Result<(), NodeSendError> {
        self.command(peer, Command::CancelReconnect { peer })
    }

    /// Closes the connection to `peer`.
    pub fn disconnect(&self, peer: PeerId) -> Result<(), NodeSendError> {
        self.command(peer, Command::Disconnect { peer })
    }

    /// Opens the named streams with a Connected peer: it becomes Established, and `send` on
    /// those streams is accepted from the moment the application sees `Established`.
    ///
    /// Each stream sends at the priority [`NodeConfig::stream_priority`](crate::NodeConfig::stream_priority) gave its name (0 to 7,
    /// default 3): records are filled from higher priorities first, with a weighted share for
    /// the lower ones, so name the priorities in the config before the streams open — e.g.
    /// `consensus` 7, `mempool` 3, `blocksync` 0. A stream whose consumer may fall behind can
    /// have a receiver of its own ([`Node::messages_on`]), asked for before this call.
    pub fn complete_handshake(&self, peer: PeerId, streams: &[&str]) -> Result<(), NodeSendError> {
        let streams = self.with_members_stream(streams.iter().map(|s| s.to_string()).collect())?;
        self.command(peer, Command::CompleteHandshake { peer, streams })
    }

    /// The first half of [`Node::complete_handshake`]: remembers the streams to open.
    pub fn prepare_streams(&self, peer: PeerId, streams: &[&str]) {
        self.inner
            .prepared
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(peer, streams.iter().map(|s| s.to_string()).collect());
    }

    /// The second half: opens the prepared streams; the peer becomes Established.
    pub fn finalize_handshake(&self, peer: PeerId) -> Result<(), NodeSendError> {
        let streams = self
            .inner
            .prepared
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(&peer)
            .unwrap_or_default();
        let streams = self.with_members_stream(streams)?;
        self.command(peer, Command::CompleteHandshake { peer, streams })
    }

    /// What the peer's shard last reported about it.
    pub(super) fn reported(&self, peer: PeerId) -> Option<PeerReport> {
        self.states().get(&peer).copied()
    }

    /// The shards' reports of every peer they hold state for.
    fn states(&self) -> std::sync::MutexGuard<'_, std::collections::HashMap<PeerId, PeerReport>> {
        self.inner
            .shared
            .states
            .lock()
            .unwrap_or_else(|p| p.into_inner())
    }

    /// A peer's connection state as last reported by its shard (Disconnected if unknown).
    pub fn state(&self, peer: PeerId) -> ConnState {
        self.reported(peer)
            .map_or(ConnState::Disconnected, |report| report.state)
    }

    /// Whether we dialled the peer's current connection (`None` when it has none). Fixed when
    /// the connection is made; a peer opening streams never changes it.
    pub fn is_outbound(&self, peer: PeerId) -> Option<bool> {
        self.reported(peer)
            .and_then(|report| report.direction)
            .map(|d| d == Direction::Outbound)
    }

    /// Peers with a connection, and their states (Connected: authenticated; Established: this
    /// side opened its streams). [`Node::ready_peers`] lists those whose side did too.
    pub fn connected_peers(&self) -> Vec<(PeerId, ConnState)> {
        self.states()
            .iter()
            .filter(|(_, r)| matches!(r.state, ConnState::Connected | ConnState::Established))
            .map(|(p, r)| (*p, r.state))
            .collect()
    }

    /// Whether the peer is Ready: both sides are Established on its current connection and the
    /// peer answered every stream we opened ([`Event::Ready`](crate::Event::Ready)).
    pub fn is_ready(&self, peer: PeerId) -> bool {
        self.reported(peer).is_some_and(|report| report.ready)
    }

    /// Every Ready peer (see [`Node::is_ready`]).
    pub fn ready_peers(&self) -> Vec<PeerId> {
        self.states()
            .iter()
            .filter(|(_, r)| r.ready)
            .map(|(p, _)| *p)
            .collect()
    }

    /// Messages accepted by `send` that the peers have not yet confirmed (waiting, queued, or
    /// written and unacknowledged), over all shards.
    pub async fn outstanding(&self) -> usize {
        let mut total = 0;
        for handle in &self.inner.shared.shards {
            let (reply, answer) = async_channel::bounded(1);
            if handle
                .commands
                .push(Command::Outstanding { reply })
                .await
                .is_err()
            {
                continue;
            }
            handle.wake();
            total += answer.recv().await.unwrap_or(0);
        }
        total
    }

    /// Waits until every message accepted by `send` so far is confirmed by its peer, or
    /// `timeout` passes; returns whether everything was confirmed. For a graceful stop: await
    /// it (with no more sends), then [`Node::stop`], which hands back whatever is left in
    /// [`Event::Undelivered`](crate::Event::Undelivered). Works on any executor (its timer is
    /// `futures-timer`'s); never blocks the calling thread.
    pub async fn drain(&self, timeout: std::time::Duration) -> bool {
        let deadline = std::time::Instant::now() + timeout;
        loop {
            if self.outstanding().await == 0 {
                return true;
            }
            let now = std::time::Instant::now();
            if now >= deadline {
                return false;
            }
            let pause = std::time::Duration::from_millis(2).min(deadline - now);
            futures_timer::Delay::new(pause).await;
        }
    }

    /// [`Node::drain`] for callers that are not async: waits on this thread.
    pub fn drain_blocking(&self, timeout: std::time::Duration) -> bool {
        futures::executor::block_on(self.drain(timeout))
    }

    /// Registered send buffers over all shards (fewer than configured under a small memlock
    /// limit).
    pub fn registered_send_buffers(&self) -> u64 {
        self.inner
            .shared
            .registered_send_buffers
            .load(Ordering::Relaxed)
    }

    /// io_uring operations whose completion never arrived before the shards stopped (their
    /// buffers were leaked, not freed under the kernel). 0 after a clean `stop`.
    pub fn abandoned_operations(&self) -> u64 {
        self.inner
            .shared
            .abandoned_operations
            .load(Ordering::Relaxed)
    }

    /// Bytes of receive buffers the node's shards have armed in the kernel, one per connection
    /// (256 KiB for a busy connection, 2 KiB for a quiet one; a provided-buffer ring is not
    /// counted): most of what an idle connection holds. As of the shards' last loop turns.
    pub fn receive_buffer_bytes(&self) -> u64 {
        let bytes = self
            .inner
            .shared
            .receive_buffer_bytes
            .load(Ordering::Relaxed);
        u64::try_from(bytes).unwrap_or(0)
    }

    /// Inbound connections handed from the shard that accepted them to their peer's shard.
    pub fn handoffs(&self) -> u64 {
        self.inner.shared.handoffs.load(Ordering::Relaxed)
    }

    /// Hands a connected socket to a shard as if it had been accepted (test networks).
    pub(crate) fn inject_accepted(&self, fd: std::os::fd::OwnedFd) -> Result<(), NodeSendError> {
        let shards = &self.inner.shared.shards;
        let index = self.inner.next_injected.fetch_add(1, Ordering::Relaxed) % shards.len();
        push_command(&shards[index], Command::Accepted { fd })
    }

    /// Authenticated connections counted against the connection limits now: (inbound,
    /// outbound). Members of the tracked peer sets are not counted
    /// ([`Node::members_connected`] counts them).
    pub fn connection_counts(&self) -> (usize, usize) {
        self.inner.shared.limits.counts()
    }

    /// Stops the node: connections close with a CLOSE frame, shard threads finish every
    /// operation in flight and exit, their sockets close, and whatever was accepted and not
    /// delivered comes back in [`Event::Undelivered`](crate::Event::Undelivered). Idempotent.
    /// Never blocks the calling thread: the shards are joined on a thread of their own and this
    /// future completes when they are done. Dropping the last `Node` handle stops the node too
    /// (without waiting).
    pub async fn stop(&self) {
        let Some(stopping) = self.inner.begin_stop() else {
            return;
        };
        let (done, finished) = async_channel::bounded(1);
        let shared = self.inner.shared.clone();
        let joined = std::thread::Builder::new()
            .name("glueberry-stop".into())
            .spawn(move || {
                stopping.join();
                // The book's last write (and its fsyncs) on this thread, not the caller's.
                flush_book(&shared);
                let _ = done.send_blocking(());
            });
        if joined.is_ok() {
            let _ = finished.recv().await;
        }
        self.finish_stop();
    }

    /// [`Node::stop`] for callers that are not async: waits for the shard threads on this
    /// thread.
    pub fn stop_blocking(&self) {
        if let Some(stopping) = self.inner.begin_stop() {
            stopping.join();
            self.finish_stop();
        }
    }

    fn finish_stop(&self) {
        tracing::info!(peer_id = %self.peer_id(), listen_addr = %self.listen_addr(), "glueberry node stopped");
        // Batched last-seen updates are not lost on stop; the book's lock is released.
        flush_book(&self.inner.shared);
        for channel in &self.inner.messages {
            channel.close();
        }
        // Every destination of its own: per-stream receivers and request receivers.
        let outlets = self.inner.outlets.lock().unwrap_or_else(|p| p.into_inner());
        let requests = self
            .inner
            .request_streams
            .lock()
            .unwrap_or_else(|p| p.into_inner());
        for channel in outlets
            .values()
            .chain(requests.values().flatten())
            .flatten()
        {
            channel.close();
        }
        drop((outlets, requests));
        // Requests still waiting for a response end now, not at their timeout.
        self.inner.shared.rpc.fail_all();
        // Subscriptions (`events()` too) end, once their last events are taken.
        self.inner
            .shared
            .subscribers
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clear();
    }
}

/// Writes the address book's batched updates and releases its lock.
fn flush_book(shared: &Shared) {
    if let Some(mut book) = shared.book.lock().unwrap_or_else(|p| p.into_inner()).take()
        && let Err(e) = book.flush()
    {
        tracing::warn!(error = %e, "address book flush on stop failed");
    }
}

/// A stop under way: what is left to wait for.
pub(super) struct Stopping {
    threads: Vec<std::thread::JoinHandle<io::Result<()>>>,
    #[cfg(feature = "http")]
    endpoint: Option<crate::observe::Endpoint>,
}

impl Stopping {
    fn join(self) {
        #[cfg(feature = "http")]
        if let Some(mut endpoint) = self.endpoint {
            endpoint.stop();
        }
        for thread in self.threads {
            let _ = thread.join();
        }
    }
}

impl super::handle::Inner {
    /// Tells every shard to stop (once: `None` after the first call); the threads and the
    /// endpoint are left to join.
    pub(super) fn begin_stop(&self) -> Option<Stopping> {
        if self.stopped.swap(true, Ordering::AcqRel) {
            return None;
        }
        self.shared.stop.store(true, Ordering::Release);
        self.shared.resolver.stop();
        self.shared.routes.close_all();
        for handle in &self.shared.shards {
            handle.commands.close();
            handle.sleeping.store(true, Ordering::SeqCst);
            handle.wake();
        }
        let threads = std::mem::take(&mut *self.threads.lock().unwrap_or_else(|p| p.into_inner()));
        Some(Stopping {
            threads,
            #[cfg(feature = "http")]
            endpoint: self
                .endpoint
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .take(),
        })
    }
}

impl Drop for super::handle::Inner {
    /// The last handle is gone without a stop: stop now, without blocking the dropping thread
    /// (the shards are joined, and the book flushed, on a thread of their own).
    fn drop(&mut self) {
        if let Some(stopping) = self.begin_stop() {
            let shared = self.shared.clone();
            let _ = std::thread::Builder::new()
                .name("glueberry-stop".into())
                .spawn(move || {
                    stopping.join();
                    flush_book(&shared);
                });
        }
    }
}
