//! `Node::start`: the listeners, what the shards share, one thread per shard (its backend made
//! and its buffers registered there), the operator endpoint and the first dials.

use std::collections::HashMap;
use std::io;
use std::net::SocketAddr;
use std::os::fd::OwnedFd;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::mpsc::{Receiver, Sender};
use std::sync::{Arc, Barrier, Mutex};
use std::thread::JoinHandle;

use glueberry_crypto::{HandshakeConfig, PeerId};
use glueberry_transport::{ConnectionConfig, NodeConfig as CoreConfig, NodeCore, Shard};
use metrics_exporter_prometheus::PrometheusRecorder;

use super::Backend;
use super::config::NodeConfig;
use super::handle::{Inner, Node};
#[cfg(feature = "http")]
use super::health::EndpointSource;
use crate::address_book::AddressBook;
use crate::channel::Channel;
use crate::limits::Limits;
use crate::shard::{self, Command, CommandQueue, ShardHandle, Shared};
use crate::sys::io::Io;
use crate::sys::{poll::Poller, ring::Ring, socket};
use crate::vocabulary::{ConfigError, StartError};
use crate::vocabulary::{EventFilter, Subscription};

/// What a shard thread reports once it is ready to run, or why it cannot.
type Ready = io::Result<()>;

impl Node {
    /// Starts the shards and the listeners.
    pub fn start(config: NodeConfig) -> Result<Node, StartError> {
        config.validate()?;
        #[cfg(feature = "danger-null-cipher")]
        if config.connection.danger_null_cipher {
            tracing::error!(
                "danger_null_cipher is on: records are NEITHER ENCRYPTED NOR AUTHENTICATED; \
                 for profiling only, never on a network"
            );
        }
        let members = Arc::new(crate::members::PeerSets::new(&config.members));
        let handshake = handshake_config(&config, &members)?;
        let backend = crate::vocabulary::choose_backend(config.backend, config.ring_entries)
            .map_err(StartError::IoUringUnavailable)?;
        let book = match &config.address_book {
            Some(path) => Some(AddressBook::open(path)?),
            None => None,
        };
        let placement = Placement::of(&config);
        let count = placement.count;
        let (listeners, listen_addrs) = bind_listeners(&config, count)?;

        let limits = Arc::new(Limits::new(config.limits, members.clone()));
        let subscribers: crate::vocabulary::Subscribers = Arc::new(Mutex::new(Vec::new()));
        // Every event, kept from the start: what `Node::events` hands out.
        let events = Subscription::join(&subscribers, 0, EventFilter::all(), config.event_buffer);
        let channels: Vec<Channel> = (0..count)
            .map(|_| Channel::bounded(config.message_buffer))
            .collect();
        let mut handles = Vec::with_capacity(count);
        let mut queues = Vec::with_capacity(count);
        for _ in 0..count {
            let queue = Arc::new(CommandQueue::new(config.command_queue));
            handles.push(ShardHandle::new(queue.clone(), socket::eventfd()?));
            queues.push(queue);
        }
        let shared = shared_state(&config, backend, book, handles, subscribers, &limits);
        set_evictor(&limits, &shared);
        spawn_book_writer(&shared)?;
        let connection = connection_config(&config);
        let blacklisted = stored_blacklist(&shared);

        let (ready_tx, ready_rx) = std::sync::mpsc::channel();
        // Every shard makes its ring before any registers send buffers: registration takes what
        // the locked-memory limit leaves, and must not leave a later shard no room for its ring.
        let rings_made = Arc::new(Barrier::new(count));
        let mut threads = Vec::with_capacity(count);
        let shards = listeners
            .into_iter()
            .zip(queues)
            .zip(channels.iter().cloned());
        for (index, ((listeners, commands), messages)) in shards.enumerate() {
            let mut core = CoreConfig::new(connection.clone(), handshake.clone());
            core.shard = Shard { index, count };
            core.dial_timeout = config.dial_timeout;
            core.handshake_timeout = config.handshake_timeout;
            core.cooldown = config.cooldown;
            core.backoff = config.backoff;
            core.admission = Some(limits.clone());
            core.max_pending_handshakes = config.pending_handshakes.0;
            core.pending_handshake_timeout = config.pending_handshakes.1;
            core.seed = u64::from_le_bytes(
                handshake.peer_id().public_key()[..8]
                    .try_into()
                    .unwrap_or([1; 8]),
            ) ^ index as u64;
            let start = ShardStart {
                index,
                node_id: handshake.peer_id(),
                backend,
                cpu: config.pin_threads.then(|| placement.cpu(index)).flatten(),
                ring_entries: config.ring_entries,
                send_buffers: config.send_buffers,
                provided_receive_buffers: config.provided_receive_buffers,
                core,
                blacklisted: blacklisted.clone(),
                listeners,
                commands,
                messages,
                shared: shared.clone(),
                rings_made: rings_made.clone(),
                ready: ready_tx.clone(),
            };
            threads.push(start.spawn()?);
        }
        drop(ready_tx);
        let failure = wait_ready(&ready_rx, count);

        let recorder = shared.recorder.clone();
        let own_record = own_record(&config, &listen_addrs);
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
                blacklisted: Mutex::new(blacklisted.iter().copied().collect()),
                request_streams: Mutex::new(HashMap::new()),
                max_message_size: config.connection.max_message_size,
                stopped: AtomicBool::new(false),
                #[cfg(feature = "http")]
                endpoint: Mutex::new(None),
                next_injected: std::sync::atomic::AtomicUsize::new(0),
                backpressure_engaged: backpressure_engaged(recorder.as_deref()),
                backpressure_wait: backpressure_wait(recorder.as_deref()),
                own_record,
                members,
                members_config: config.members.clone(),
                network_id: config.network_id.clone(),
                discovery: Mutex::new(None),
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
        if let (Some(addr), Some(recorder)) = (config.metrics, recorder)
            && let Err(e) = start_endpoint(&node, addr, recorder, config.debug_state_endpoint)
        {
            node.stop_blocking();
            return Err(StartError::Io(e));
        }
        tracing::info!(
            peer_id = %node.peer_id(),
            listen_addr = %node.listen_addr(),
            shards = count,
            "glueberry node started"
        );
        if let Err(e) = dial_known_peers(&node, &config) {
            node.stop_blocking();
            return Err(e);
        }
        if let Some((epoch, members)) = config.initial_set.clone()
            && let Err(e) = node.track(epoch, members)
        {
            node.stop_blocking();
            return Err(StartError::Config(super::ConfigError::new(
                "members",
                e.to_string(),
            )));
        }
        Ok(node)
    }
}

/// This node's address record: the addresses it advertises (or the listen addresses that can
/// be dialled), signed with a sequence from the wall clock. None when nothing can be dialled.
fn own_record(
    config: &NodeConfig,
    listen_addrs: &[SocketAddr],
) -> Option<glueberry_crypto::AddressRecord> {
    let advertised: Vec<SocketAddr> = if config.members.advertise.is_empty() {
        listen_addrs
            .iter()
            .filter(|a| !a.ip().is_unspecified())
            .copied()
            .collect()
    } else {
        config.members.advertise.clone()
    };
    let advertised = &advertised[..advertised
        .len()
        .min(glueberry_crypto::address::MAX_RECORD_ADDRESSES)];
    let sequence = crate::members::own_sequence();
    glueberry_crypto::AddressRecord::sign(
        &config.identity,
        &config.network_id,
        sequence,
        advertised,
    )
    .ok()
}

/// The secure handshake's configuration: the identity, the network, the suites offered, and
/// under `MembersOnly` the check that refuses strangers before their signature is verified.
fn handshake_config(
    config: &NodeConfig,
    members: &Arc<crate::members::PeerSets>,
) -> Result<Arc<HandshakeConfig>, StartError> {
    let mut handshake = HandshakeConfig::new(&config.identity, &config.network_id)
        .map_err(|e| ConfigError::new("network_id", e.to_string()))?;
    if members.policy() == crate::MembershipPolicy::MembersOnly {
        // A stranger is refused on the identity it claims, before its proof is checked.
        let members = members.clone();
        handshake = handshake.with_admission(Arc::new(move |peer| members.is_member(peer)));
    }
    if !config.suites.is_empty() {
        handshake = handshake
            .with_suites(&config.suites)
            .map_err(|e| ConfigError::new("suites", e.to_string()))?;
    }
    Ok(Arc::new(handshake))
}

/// How many shards, and on which CPUs.
struct Placement {
    cpus: Vec<usize>,
    count: usize,
    first: usize,
}

impl Placement {
    fn of(config: &NodeConfig) -> Self {
        // Shards of several nodes in one process spread over the CPUs instead of all starting
        // at the first one; CPUs the application listed are taken in its order.
        static NEXT_CPU: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
        let cpus = config.cpus.clone().unwrap_or_else(socket::allowed_cpus);
        let count = if config.shards == 0 {
            cpus.len().max(1)
        } else {
            config.shards
        };
        let first = if config.cpus.is_some() {
            0
        } else {
            NEXT_CPU.fetch_add(count, Ordering::Relaxed)
        };
        Self { cpus, count, first }
    }

    fn cpu(&self, shard: usize) -> Option<usize> {
        self.cpus
            .get((self.first + shard) % self.cpus.len().max(1))
            .copied()
    }
}

/// Per listen address, every shard gets a listener: the first fixes the port, the others share
/// it (SO_REUSEPORT), once the port is known to be free ([`socket::claim_port`]: a port belongs
/// to one node). Returns each shard's listeners and the addresses bound.
fn bind_listeners(
    config: &NodeConfig,
    count: usize,
) -> Result<(Vec<Vec<OwnedFd>>, Vec<SocketAddr>), StartError> {
    let mut listeners: Vec<Vec<OwnedFd>> = (0..count).map(|_| Vec::new()).collect();
    let mut bound_addrs = Vec::new();
    for &addr in std::iter::once(&config.listen).chain(&config.also_listen) {
        let listen_err = |source| StartError::Listen { addr, source };
        socket::claim_port(addr).map_err(listen_err)?;
        let first = socket::listener(addr).map_err(listen_err)?;
        let bound = socket::local_addr(&first)?;
        listeners[0].push(first);
        for shard in listeners.iter_mut().skip(1) {
            shard.push(socket::listener(bound).map_err(listen_err)?);
        }
        bound_addrs.push(bound);
    }
    Ok((listeners, bound_addrs))
}

/// What every shard of the node shares.
fn shared_state(
    config: &NodeConfig,
    backend: Backend,
    book: Option<AddressBook>,
    shards: Vec<ShardHandle>,
    subscribers: crate::vocabulary::Subscribers,
    limits: &Arc<Limits>,
) -> Arc<Shared> {
    let count = shards.len();
    Arc::new(Shared {
        backend,
        resolver: crate::resolve::Resolver::default(),
        rpc: crate::rpc::Pending::default(),
        shards,
        stop: AtomicBool::new(false),
        handler: config.handler.clone(),
        events_dropped: AtomicU64::new(0),
        message_buffer_bytes: config.message_buffer_bytes,
        busy_poll: config.busy_poll,
        routes: crate::route_table::RouteTable::default(),
        stream_queue: config.stream_queue,
        respond_timeout: config.respond_timeout,
        budget: Arc::new(crate::budget::NodeBudget::new(config.send_budget, count)),
        receive_budget: crate::budget::NodeBudget::new(config.receive_budget, count),
        registered_send_buffers: AtomicU64::new(0),
        memlock_warned: AtomicBool::new(false),
        abandoned_operations: AtomicU64::new(0),
        dead_shards: AtomicU64::new(0),
        running_shards: std::sync::atomic::AtomicUsize::new(count),
        handler_panics: AtomicU64::new(0),
        handoffs: AtomicU64::new(0),
        receive_buffer_bytes: std::sync::atomic::AtomicI64::new(0),
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
    })
}

/// The limits ask the victim's shard to close an evicted inbound peer (a weak reference: the
/// limits live in `shared`).
fn set_evictor(limits: &Limits, shared: &Arc<Shared>) {
    let weak = Arc::downgrade(shared);
    limits.set_evictor(Box::new(move |peer| {
        if let Some(shared) = weak.upgrade() {
            let owner = glueberry_transport::shard_of(&peer, shared.shards.len());
            let _ = super::handle::push_command(&shared.shards[owner], Command::Evict { peer });
        }
    }));
}

/// The connection configuration the shards use: the application's, with the queue bounds set
/// above the route's (`stream_queue`), which is enforced where the sender reserves room, so the
/// transport below never refuses a message for being full.
fn connection_config(config: &NodeConfig) -> Arc<ConnectionConfig> {
    let mut connection = config.connection.clone();
    connection.high_watermark = config.stream_queue.0.saturating_add(1).max(2);
    connection.low_watermark = connection.high_watermark / 2;
    connection.max_queued_bytes = config
        .stream_queue
        .1
        .saturating_add(connection.max_message_size)
        .saturating_mul(usize::from(connection.max_streams))
        .max(64 * 1024);
    Arc::new(connection)
}

/// The address book's batched last-seen updates are written on a thread of their own (every
/// `LAST_SEEN_FLUSH` while some are due), never on a shard: a write is a file, two fsyncs and
/// a rename. The thread ends when the node stops; the stop writes what is left.
fn spawn_book_writer(shared: &Arc<Shared>) -> io::Result<()> {
    if shared
        .book
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .is_none()
    {
        return Ok(());
    }
    let shared = shared.clone();
    std::thread::Builder::new()
        .name("glueberry-book".into())
        .spawn(move || {
            const LOOK: std::time::Duration = std::time::Duration::from_millis(250);
            while !shared.stop.load(std::sync::atomic::Ordering::Acquire) {
                std::thread::sleep(LOOK);
                let mut guard = shared.book.lock().unwrap_or_else(|p| p.into_inner());
                match guard.as_mut() {
                    Some(book) => {
                        if let Err(e) = book.flush_if_due() {
                            tracing::warn!(error = %e, "address book write failed");
                        }
                    }
                    None => return, // Taken by the stop.
                }
            }
        })?;
    Ok(())
}

/// The address book's blacklist, put in every shard's core before its first accept.
fn stored_blacklist(shared: &Shared) -> Arc<[PeerId]> {
    shared
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
        .unwrap_or_default()
}

/// Everything one shard's thread starts from.
struct ShardStart {
    index: usize,
    node_id: PeerId,
    backend: Backend,
    /// The CPU to pin the thread to, if pinning is on.
    cpu: Option<usize>,
    ring_entries: u32,
    send_buffers: usize,
    provided_receive_buffers: u16,
    core: CoreConfig,
    blacklisted: Arc<[PeerId]>,
    listeners: Vec<OwnedFd>,
    commands: Arc<CommandQueue<Command>>,
    messages: Channel,
    shared: Arc<Shared>,
    rings_made: Arc<Barrier>,
    ready: Sender<Ready>,
}

impl ShardStart {
    fn spawn(self) -> io::Result<JoinHandle<io::Result<()>>> {
        let exit = shard::ExitGuard::new(self.shared.clone(), self.index, self.commands.clone());
        std::thread::Builder::new()
            .name(format!("glueberry-shard-{}", self.index))
            .spawn(move || {
                // Runs however the thread ends (a panic included).
                let _exit = exit;
                self.run()
            })
    }

    /// On the shard's own thread: pins it, makes the backend (io_uring's SINGLE_ISSUER ties a
    /// ring to the thread that made it), registers buffers, reports ready, runs the loop.
    fn run(self) -> io::Result<()> {
        if let Some(cpu) = self.cpu {
            let _ = socket::pin_to_cpu(cpu);
        }
        let span = tracing::info_span!("glueberry_shard", node = %self.node_id, shard = self.index);
        let _span = span.enter();
        // This node's recorder, if it has one, for everything recorded on this thread.
        let recorder = self.shared.recorder.clone();
        let _metrics = recorder
            .as_deref()
            .map(|r| ::metrics::set_default_local_recorder(r));
        let made = match self.backend {
            Backend::Poll => Poller::new().map(Io::Poll),
            _ => Ring::new(self.ring_entries).map(Io::Uring),
        };
        self.rings_made.wait();
        let io = made.map_err(|e| report_failure(&self.ready, e))?;
        let shared = self.shared;
        let index = self.index;
        let handle = &shared.shards[index];
        let mut core = NodeCore::new(self.core);
        for peer in self.blacklisted.iter() {
            core.set_blacklisted(*peer, true, std::time::Instant::now());
        }
        let mut shard = shard::Shard::new(
            index,
            io,
            core,
            self.listeners,
            handle.wake_fd.clone(),
            handle.sleeping.clone(),
            self.commands,
            shared.clone(),
            self.messages,
        );
        if self.provided_receive_buffers > 0
            && let Err(e) = shard.provide_receive_buffers(self.provided_receive_buffers)
        {
            return Err(report_failure(&self.ready, e));
        }
        shared.ring_fds[index].store(shard.ring_fd(), Ordering::Release);
        let wanted = self.send_buffers;
        let registered = shard.register_send_buffers(wanted);
        shared
            .registered_send_buffers
            .fetch_add(registered as u64, Ordering::Relaxed);
        if registered < wanted
            && socket::sigpipe_ignored()
            && !shared.memlock_warned.swap(true, Ordering::Relaxed)
        {
            tracing::warn!(
                wanted,
                registered,
                "not enough locked memory (RLIMIT_MEMLOCK) to register every send buffer; \
                 using fewer, and ordinary buffers for the rest"
            );
        }
        let _ = self.ready.send(Ok(()));
        drop(self.ready);
        shard.run()
    }
}

/// Reports `e` to `Node::start` and returns a copy for the shard thread's own result.
fn report_failure(ready: &Sender<Ready>, e: io::Error) -> io::Error {
    let error = io::Error::new(e.kind(), e.to_string());
    let _ = ready.send(Err(e));
    error
}

/// Waits until every shard reported; the last failure, if any.
fn wait_ready(ready: &Receiver<Ready>, count: usize) -> Option<io::Error> {
    let mut failure = None;
    for _ in 0..count {
        match ready.recv() {
            Ok(Ok(())) => {}
            Ok(Err(e)) => failure = Some(e),
            Err(_) => failure = Some(io::Error::other("a shard thread died at start")),
        }
    }
    failure
}

/// The counter of sends that found their stream's queue full, in this node's recorder if it
/// has one.
fn backpressure_engaged(recorder: Option<&PrometheusRecorder>) -> ::metrics::Counter {
    let counter = || ::metrics::counter!(crate::metrics::names::BACKPRESSURE_ENGAGED);
    match recorder {
        Some(r) => ::metrics::with_local_recorder(r, counter),
        None => counter(),
    }
}

/// The histogram of how long `Node::send` waited for room, in this node's recorder if it has
/// one.
fn backpressure_wait(recorder: Option<&PrometheusRecorder>) -> ::metrics::Histogram {
    match recorder {
        Some(r) => ::metrics::with_local_recorder(r, || {
            ::metrics::describe_histogram!(
                crate::metrics::names::BACKPRESSURE_WAIT,
                ::metrics::Unit::Seconds,
                "How long Node::send waited for room."
            );
            ::metrics::histogram!(crate::metrics::names::BACKPRESSURE_WAIT)
        }),
        None => ::metrics::histogram!(crate::metrics::names::BACKPRESSURE_WAIT),
    }
}

/// The operator endpoint on `addr` (cargo feature `http`), kept by the node until it stops.
#[cfg(feature = "http")]
fn start_endpoint(
    node: &Node,
    addr: SocketAddr,
    recorder: Arc<PrometheusRecorder>,
    debug_state: bool,
) -> io::Result<()> {
    let source = Arc::new(EndpointSource(Arc::downgrade(&node.inner)));
    let options = crate::observe::EndpointOptions {
        debug_state,
        ..Default::default()
    };
    let endpoint = crate::observe::Endpoint::start(addr, recorder, source, options)?;
    *node
        .inner
        .endpoint
        .lock()
        .unwrap_or_else(|p| p.into_inner()) = Some(endpoint);
    Ok(())
}

/// Dials every peer in the address book that is not blacklisted (the blacklist is already in
/// every shard), and the configuration's persistent peers.
fn dial_known_peers(node: &Node, config: &NodeConfig) -> Result<(), StartError> {
    let failed =
        |e: crate::vocabulary::NodeSendError| StartError::Io(io::Error::other(e.to_string()));
    for entry in node.peers() {
        if !entry.blacklisted {
            node.connect_any(entry.peer_id, entry.addresses.clone())
                .map_err(failed)?;
        }
    }
    for (peer, addr) in &config.persistent {
        node.add_persistent_peer(*peer, *addr).map_err(failed)?;
    }
    Ok(())
}
