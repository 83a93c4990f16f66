//! The `Node` handle: start the shards, connect, complete handshakes, stop.

use std::collections::HashMap;
use std::io;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use glueberry_crypto::{HandshakeConfig, PeerId};
use glueberry_transport::{
    CloseReason, ConnState, Direction, NodeConfig as CoreConfig, NodeCore, Shard,
};

use super::Backend;
use super::config::NodeConfig;
use super::errors::{ConnectError, NodeSendError, StartError};
use super::event::{Event, EventFilter, EventKind, StreamName, Subscription};
use super::handle::{Inner, Node, push_command};
#[cfg(feature = "http")]
use super::health::EndpointSource;
use crate::address_book::AddressBook;
use crate::channel::Channel;
use crate::shard::CommandQueue;
use crate::shard::{self, Command, ShardHandle, Shared};
use crate::sys::io::Io;
use crate::sys::{poll::Poller, ring::Ring, socket};

impl Node {
    /// Starts the shards and the listeners.
    pub fn start(config: NodeConfig) -> Result<Node, StartError> {
        config.validate().map_err(StartError::Config)?;
        #[cfg(feature = "danger-null-cipher")]
        if config.connection.danger_null_cipher {
            tracing::error!(
                "danger_null_cipher is on: records are NEITHER ENCRYPTED NOR AUTHENTICATED; \
                 for profiling only, never on a network"
            );
        }
        let mut handshake = HandshakeConfig::new(&config.identity, &config.network_id)
            .map_err(|e| StartError::Config(e.to_string()))?;
        if !config.suites.is_empty() {
            handshake = handshake
                .with_suites(&config.suites)
                .map_err(|e| StartError::Config(e.to_string()))?;
        }
        let handshake = Arc::new(handshake);
        let backend = super::backend::choose(config.backend, config.ring_entries)
            .map_err(StartError::IoUringUnavailable)?;
        let book = match &config.address_book {
            Some(path) => Some(AddressBook::open(path)?),
            None => None,
        };
        let cpus = config.cpus.clone().unwrap_or_else(socket::allowed_cpus);
        // Shards of several nodes in one process spread over the CPUs instead of all starting
        // at the first one; CPUs the application listed are taken in its order.
        static NEXT_CPU: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
        let count = if config.shards == 0 {
            cpus.len().max(1)
        } else {
            config.shards
        };
        let first_cpu = if config.cpus.is_some() {
            0
        } else {
            NEXT_CPU.fetch_add(count, Ordering::Relaxed)
        };
        // Per listen address, every shard has a listener: the first fixes the port, the others
        // share it (SO_REUSEPORT).
        let mut listeners: Vec<Vec<_>> = (0..count).map(|_| Vec::new()).collect();
        let mut listen_addrs = Vec::new();
        for &addr in std::iter::once(&config.listen).chain(&config.also_listen) {
            let listen_err = |source| StartError::Listen { addr, source };
            let first = socket::listener(addr).map_err(listen_err)?;
            let bound = socket::local_addr(&first)?;
            listeners[0].push(first);
            for shard in listeners.iter_mut().skip(1) {
                shard.push(socket::listener(bound).map_err(listen_err)?);
            }
            listen_addrs.push(bound);
        }

        let limits = Arc::new(crate::limits::Limits::new(config.limits));
        let subscribers: crate::api::Subscribers = Arc::new(Mutex::new(Vec::new()));
        // Every event, kept from the start: what `Node::events` hands out.
        let events = Subscription::join(&subscribers, 0, EventFilter::all(), config.event_buffer);
        let channels: Vec<Channel> = (0..count)
            .map(|_| Channel::bounded(config.message_buffer))
            .collect();
        let mut messages_tx = channels.clone().into_iter();
        let mut handles = Vec::with_capacity(count);
        let mut receivers = Vec::with_capacity(count);
        for _ in 0..count {
            let queue = Arc::new(CommandQueue::new(config.command_queue));
            let rx = queue.clone();
            handles.push(ShardHandle::new(queue, socket::eventfd()?));
            receivers.push(rx);
        }
        let shared = Arc::new(Shared {
            backend,
            resolver: crate::resolve::Resolver::default(),
            rpc: crate::rpc::Pending::default(),
            shards: handles,
            stop: AtomicBool::new(false),
            handler: config.handler.clone(),
            events_dropped: AtomicU64::new(0),
            message_buffer_bytes: config.message_buffer_bytes,
            busy_poll: config.busy_poll,
            routes: crate::route::RouteTable::default(),
            stream_queue: config.stream_queue,
            registered_send_buffers: AtomicU64::new(0),
            memlock_warned: AtomicBool::new(false),
            abandoned_operations: AtomicU64::new(0),
            dead_shards: AtomicU64::new(0),
            running_shards: std::sync::atomic::AtomicUsize::new(count),
            handler_panics: AtomicU64::new(0),
            handoffs: AtomicU64::new(0),
            ring_fds: (0..count)
                .map(|_| std::sync::atomic::AtomicI32::new(-1))
                .collect(),
            book: Mutex::new(book),
            subscribers,
            states: Mutex::new(HashMap::new()),
            limits: limits.clone(),
            next_subscriber: AtomicU64::new(1),
            recorder: config.record_metrics.then(crate::observe::recorder),
            dialer: config.dialer.clone(),
        });
        // The limits ask the victim's shard to close an evicted inbound peer (a weak reference:
        // the limits live in `shared`).
        let weak = Arc::downgrade(&shared);
        limits.set_evictor(Box::new(move |peer| {
            if let Some(shared) = weak.upgrade() {
                let owner = glueberry_transport::shard_of(&peer, shared.shards.len());
                let _ = super::handle::push_command(&shared.shards[owner], Command::Evict { peer });
            }
        }));
        // The bound on a stream's queue is the route's (`stream_queue`), enforced where the
        // sender reserves room: the transport below never refuses a message for being full.
        let mut connection = config.connection.clone();
        connection.high_watermark = config.stream_queue.0.saturating_add(1).max(2);
        connection.low_watermark = connection.high_watermark / 2;
        connection.max_queued_bytes = config
            .stream_queue
            .1
            .saturating_add(connection.max_message_size)
            .saturating_mul(usize::from(connection.max_streams))
            .max(64 * 1024);
        let connection = Arc::new(connection);
        // The stored blacklist is in every shard's core before its first accept.
        let blacklisted: Arc<[PeerId]> = shared
            .book
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .as_ref()
            .map(|b| {
                b.list()
                    .filter(|e| e.blacklisted)
                    .map(|e| e.peer_id)
                    .collect()
            })
            .unwrap_or_default();
        let (ready_tx, ready_rx) = std::sync::mpsc::channel();
        // Every shard makes its ring before any registers send buffers: registration takes what
        // the locked-memory limit leaves, and must not leave a later shard no room for its ring.
        let rings_made = Arc::new(std::sync::Barrier::new(count));
        let mut threads = Vec::with_capacity(count);
        for (index, (listeners, commands)) in listeners.into_iter().zip(receivers).enumerate() {
            let shared = shared.clone();
            let messages = messages_tx
                .next()
                .ok_or_else(|| io::Error::other("a channel per shard"))?;
            let node_id = handshake.peer_id();
            let ready = ready_tx.clone();
            let mut core_config = CoreConfig::new(connection.clone(), handshake.clone());
            core_config.shard = Shard { index, count };
            core_config.dial_timeout = config.dial_timeout;
            core_config.handshake_timeout = config.handshake_timeout;
            core_config.cooldown = config.cooldown;
            core_config.backoff = config.backoff;
            core_config.admission = Some(limits.clone());
            core_config.max_pending_handshakes = config.pending_handshakes.0;
            core_config.pending_handshake_timeout = config.pending_handshakes.1;
            core_config.seed = u64::from_le_bytes(
                handshake.peer_id().public_key()[..8]
                    .try_into()
                    .unwrap_or([1; 8]),
            ) ^ index as u64;
            let cpu = cpus.get((first_cpu + index) % cpus.len().max(1)).copied();
            let pin = config.pin_threads;
            let entries = config.ring_entries;
            let send_buffers = config.send_buffers;
            let provided = config.provided_receive_buffers;
            let blacklisted = blacklisted.clone();
            let exit = shard::ExitGuard::new(shared.clone(), index, commands.clone());
            let rings_made = rings_made.clone();
            let thread = std::thread::Builder::new()
                .name(format!("glueberry-shard-{index}"))
                .spawn(move || {
                    // Runs however the thread ends (a panic included).
                    let _exit = exit;
                    if pin && let Some(cpu) = cpu {
                        let _ = socket::pin_to_cpu(cpu);
                    }
                    let span = tracing::info_span!("glueberry_shard", node = %node_id, shard = index);
                    let _span = span.enter();
                    // This node's recorder, if it has one, for everything recorded on this thread.
                    let recorder = shared.recorder.clone();
                    let _metrics = recorder
                        .as_deref()
                        .map(|r| ::metrics::set_default_local_recorder(r));
                    // The ring is made on its own thread: SINGLE_ISSUER ties it to its creator.
                    let made = match backend {
                        Backend::Poll => Poller::new().map(Io::Poll),
                        _ => Ring::new(entries).map(Io::Uring),
                    };
                    rings_made.wait();
                    let ring = match made {
                        Ok(ring) => ring,
                        Err(e) => {
                            let error = io::Error::new(e.kind(), e.to_string());
                            let _ = ready.send(Err(e));
                            return Err(error);
                        }
                    };
                    let handle = &shared.shards[index];
                    let mut core = NodeCore::new(core_config);
                    for peer in blacklisted.iter() {
                        core.set_blacklisted(*peer, true, std::time::Instant::now());
                    }
                    let mut shard = shard::Shard::new(
                        index,
                        ring,
                        core,
                        listeners,
                        handle.wake_fd.clone(),
                        handle.sleeping.clone(),
                        commands,
                        shared.clone(),
                        messages,
                    );
                    if provided > 0
                        && let Err(e) = shard.provide_receive_buffers(provided)
                    {
                        let error = io::Error::new(e.kind(), e.to_string());
                        let _ = ready.send(Err(e));
                        return Err(error);
                    }
                    shared.ring_fds[index].store(shard.ring_fd(), Ordering::Release);
                    let registered = shard.register_send_buffers(send_buffers);
                    shared
                        .registered_send_buffers
                        .fetch_add(registered as u64, Ordering::Relaxed);
                    if registered < send_buffers
                        && socket::sigpipe_ignored()
                        && !shared.memlock_warned.swap(true, Ordering::Relaxed)
                    {
                        tracing::warn!(
                            wanted = send_buffers,
                            registered,
                            "not enough locked memory (RLIMIT_MEMLOCK) to register every send buffer; \
                             using fewer, and ordinary buffers for the rest"
                        );
                    }
                    let _ = ready.send(Ok(()));
                    drop(ready);
                    shard.run()
                })?;
            threads.push(thread);
        }
        drop(ready_tx);
        let mut failure = None;
        for _ in 0..count {
            match ready_rx.recv() {
                Ok(Ok(())) => {}
                Ok(Err(e)) => failure = Some(e),
                Err(_) => failure = Some(io::Error::other("a shard thread died at start")),
            }
        }
        let recorder = shared.recorder.clone();
        let node = Node {
            inner: Arc::new(Inner {
                peer_id: handshake.peer_id(),
                listen_addrs,
                shared,
                events,
                messages: channels,
                outlets: Mutex::new(HashMap::new()),
                message_buffer: config.message_buffer,
                threads: Mutex::new(threads),
                names: Mutex::new(HashMap::new()),
                prepared: Mutex::new(HashMap::new()),
                request_streams: Mutex::new(HashMap::new()),
                max_message_size: config.connection.max_message_size,
                stopped: AtomicBool::new(false),
                #[cfg(feature = "http")]
                endpoint: Mutex::new(None),
                next_injected: std::sync::atomic::AtomicUsize::new(0),
                backpressure_engaged: match &recorder {
                    Some(r) => ::metrics::with_local_recorder(&**r, || {
                        ::metrics::counter!(crate::metrics::names::BACKPRESSURE_ENGAGED)
                    }),
                    None => ::metrics::counter!(crate::metrics::names::BACKPRESSURE_ENGAGED),
                },
                backpressure_wait: match &recorder {
                    Some(r) => ::metrics::with_local_recorder(&**r, || {
                        ::metrics::describe_histogram!(
                            crate::metrics::names::BACKPRESSURE_WAIT,
                            ::metrics::Unit::Seconds,
                            "How long Node::send waited for room."
                        );
                        ::metrics::histogram!(crate::metrics::names::BACKPRESSURE_WAIT)
                    }),
                    None => ::metrics::histogram!(crate::metrics::names::BACKPRESSURE_WAIT),
                },
            }),
        };
        if let Some(e) = failure {
            node.stop_blocking();
            return Err(match backend {
                Backend::Poll => StartError::Io(e),
                _ => StartError::IoUringUnavailable(e),
            });
        }
        #[cfg(feature = "http")]
        if let (Some(addr), Some(recorder)) = (config.metrics, recorder) {
            let source = Arc::new(EndpointSource(Arc::downgrade(&node.inner)));
            let options = crate::observe::EndpointOptions {
                debug_state: config.debug_state_endpoint,
                ..Default::default()
            };
            match crate::observe::Endpoint::start(addr, recorder, source, options) {
                Ok(endpoint) => {
                    *node
                        .inner
                        .endpoint
                        .lock()
                        .unwrap_or_else(|p| p.into_inner()) = Some(endpoint)
                }
                Err(e) => {
                    node.stop_blocking();
                    return Err(StartError::Io(e));
                }
            }
        }
        tracing::info!(
            peer_id = %node.peer_id(),
            listen_addr = %node.listen_addr(),
            shards = count,
            "glueberry node started"
        );
        // Dial every peer in the book that is not blacklisted (the blacklist is already in
        // every shard).
        for entry in node.peers() {
            let result = if entry.blacklisted {
                Ok(())
            } else {
                node.connect_any(entry.peer_id, entry.addresses.clone())
            };
            if let Err(e) = result {
                node.stop_blocking();
                return Err(StartError::Io(io::Error::other(e.to_string())));
            }
        }
        for (peer, addr) in &config.persistent {
            if let Err(e) = node.add_persistent_peer(*peer, *addr) {
                node.stop_blocking();
                return Err(StartError::Io(io::Error::other(e.to_string())));
            }
        }
        Ok(node)
    }

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
    /// turn until one connects. Nothing happens for an empty list.
    pub fn connect_any(&self, peer: PeerId, addrs: Vec<SocketAddr>) -> Result<(), NodeSendError> {
        if addrs.is_empty() {
            return Ok(());
        }
        self.command(peer, Command::Connect { peer, addrs })
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

    /// Dials `peer` and waits until it is authenticated (Connected), or the attempt fails. The
    /// dial gives up after the node's dial timeout (default 30 s). Dropping the future before it
    /// completes cancels the dial (the peer is disconnected). Works from any executor.
    pub async fn connect_and_wait(
        &self,
        peer: PeerId,
        addr: SocketAddr,
    ) -> Result<(), ConnectError> {
        let filter = EventFilter {
            peers: Some(vec![peer]),
            kinds: Some(vec![EventKind::State]),
            states: Some(vec![
                ConnState::Connected,
                ConnState::Established,
                ConnState::Reconnecting,
                ConnState::Disconnected,
            ]),
        };
        let subscription = self.subscribe(filter, 16);
        if matches!(
            self.state(peer),
            ConnState::Connected | ConnState::Established
        ) {
            return Ok(());
        }
        self.connect(peer, addr).map_err(ConnectError::Send)?;
        // Until the outcome is known, dropping this future disconnects the peer.
        let mut guard = CancelDial {
            node: self,
            peer,
            armed: true,
        };
        loop {
            match subscription.recv().await {
                Some(Event::State {
                    state: ConnState::Connected | ConnState::Established,
                    ..
                }) => {
                    guard.armed = false;
                    return Ok(());
                }
                Some(Event::State {
                    reason: Some(CloseReason::Peer(code)),
                    ..
                }) => {
                    guard.armed = false;
                    return Err(ConnectError::Refused { code });
                }
                Some(Event::State { state, reason, .. }) => {
                    guard.armed = false;
                    return Err(ConnectError::Failed {
                        state,
                        reason: reason.map(|r| format!("{r:?}")),
                    });
                }
                Some(_) => {}
                None => {
                    guard.armed = false;
                    return Err(ConnectError::Send(NodeSendError::Stopped));
                }
            }
        }
    }

    /// Closes the connection to `peer`.
    pub fn disconnect(&self, peer: PeerId) -> Result<(), NodeSendError> {
        self.command(peer, Command::Disconnect { peer })
    }

    /// Opens the named streams with a Connected peer: it becomes Established, and `send` on
    /// those streams is accepted from the moment the application sees `Established`.
    ///
    /// Each stream sends at the priority [`NodeConfig::stream_priority`] gave its name (0 to 7,
    /// default 3): records are filled from higher priorities first, with a weighted share for
    /// the lower ones, so name the priorities in the config before the streams open — e.g.
    /// `consensus` 7, `mempool` 3, `blocksync` 0. A stream whose consumer may fall behind can
    /// have a receiver of its own ([`Node::messages_on`]), asked for before this call.
    pub fn complete_handshake(&self, peer: PeerId, streams: &[&str]) -> Result<(), NodeSendError> {
        let streams = streams.iter().map(|s| s.to_string()).collect();
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
        self.command(peer, Command::CompleteHandshake { peer, streams })
    }

    /// A peer's state and connection direction as last reported by its shard.
    fn reported(&self, peer: PeerId) -> Option<(ConnState, Option<Direction>)> {
        let states = self.inner.shared.states.lock();
        states
            .unwrap_or_else(|p| p.into_inner())
            .get(&peer)
            .copied()
    }

    /// A peer's connection state as last reported by its shard (Disconnected if unknown).
    pub fn state(&self, peer: PeerId) -> ConnState {
        self.reported(peer)
            .map_or(ConnState::Disconnected, |(state, _)| state)
    }

    /// Whether we dialled the peer's current connection (`None` when it has none). Fixed when
    /// the connection is made; a peer opening streams never changes it.
    pub fn is_outbound(&self, peer: PeerId) -> Option<bool> {
        self.reported(peer)
            .and_then(|(_, direction)| direction)
            .map(|d| d == Direction::Outbound)
    }

    /// Peers with a connection, and their states.
    pub fn connected_peers(&self) -> Vec<(PeerId, ConnState)> {
        self.inner
            .shared
            .states
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .iter()
            .filter(|(_, (s, _))| matches!(s, ConnState::Connected | ConnState::Established))
            .map(|(p, (s, _))| (*p, *s))
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

    /// Authenticated connections now: (inbound, outbound).
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
        let joined = std::thread::Builder::new()
            .name("glueberry-stop".into())
            .spawn(move || {
                stopping.join();
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

/// Disconnects a peer when a `connect_and_wait` future is dropped before its outcome.
struct CancelDial<'a> {
    node: &'a Node,
    peer: PeerId,
    armed: bool,
}

impl Drop for CancelDial<'_> {
    fn drop(&mut self) {
        if self.armed {
            let _ = self.node.disconnect(self.peer);
        }
    }
}
