//! The `Node` handle: start the shards, talk to them, stop them.

use std::collections::HashMap;
use std::fmt;
use std::io;
use std::net::SocketAddr;
use std::ops::Deref;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;

use bytes::Bytes;
use glueberry_crypto::{HandshakeConfig, Identity, PeerId};
use glueberry_transport::{
    CloseReason, ConnState, ConnectionConfig, Direction, NodeConfig as CoreConfig, NodeCore,
    PeerStats, Shard, shard_of,
};

use crate::address_book::{AddressBook, BookError, PeerEntry};
use crate::outbox::{Channel, Messages};
use crate::queue::{CommandQueue, Refused};
use crate::route::{RouteShared, RouteState};
use crate::shard::{self, Command, ShardHandle, Shared};
use crate::sys::{ring::Ring, socket};

/// A stream name, interned: cloning it is a reference-count increment, so naming the stream of
/// every message costs no allocation. Get one with [`Node::stream`].
#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct StreamName(Arc<str>);

impl StreamName {
    /// The same name: the same interned string, or equal strings.
    pub(crate) fn same(a: &StreamName, b: &StreamName) -> bool {
        Arc::ptr_eq(&a.0, &b.0) || a.0 == b.0
    }

    /// The shared string.
    pub(crate) fn shared(&self) -> &Arc<str> {
        &self.0
    }

    /// A name already shared (a connection's stream name): no copy.
    pub(crate) fn from_shared(name: Arc<str>) -> Self {
        Self(name)
    }

    pub(crate) fn new(name: &str) -> Self {
        Self(Arc::from(name))
    }
}

impl Deref for StreamName {
    type Target = str;
    fn deref(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for StreamName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(&*self.0, f)
    }
}

impl fmt::Display for StreamName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// A message received from a peer.
#[derive(Debug, Clone)]
pub struct Message {
    /// The sender.
    pub peer: PeerId,
    /// The stream it came on.
    pub stream: StreamName,
    /// Its bytes.
    pub data: Bytes,
}

/// Something that happened to a peer.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub enum Event {
    /// The peer changed state.
    State {
        /// The peer.
        peer: PeerId,
        /// Its new state.
        state: ConnState,
        /// Its connection's direction, when connected.
        direction: Option<Direction>,
        /// Why a connection ended, when one did.
        reason: Option<CloseReason>,
    },
    /// A message accepted by `send` could not be queued on the connection; it comes back.
    SendFailed {
        /// The peer.
        peer: PeerId,
        /// The stream.
        stream: StreamName,
        /// Why.
        error: String,
        /// The message.
        data: Bytes,
    },
    /// Messages accepted by `send` on one stream that the peer did not confirm: the connection
    /// closed (or the node stopped) first. With [`Event::SendFailed`] this is the delivery
    /// guarantee: every message `send` accepted is delivered to the peer's node or comes back
    /// in one of the two (see `ARCHITECTURE.md`, "Delivery").
    Undelivered {
        /// The peer.
        peer: PeerId,
        /// The stream.
        stream: StreamName,
        /// Never written to the connection: the peer did not get them. In `send` order.
        unsent: Vec<Bytes>,
        /// Written, but not confirmed by the peer (by returning their credit) before the
        /// connection closed: the peer may or may not have them. In `send` order, all before
        /// `unsent`.
        unconfirmed: Vec<Bytes>,
    },
    /// The peer did not open a stream we opened; `unsent` queued messages were not delivered.
    StreamRejected {
        /// The peer.
        peer: PeerId,
        /// The stream.
        stream: StreamName,
        /// Messages not delivered.
        unsent: u64,
    },
    /// A subscriber fell behind and lost this many events (told before its next event).
    Missed {
        /// Events lost since the last one delivered.
        count: u64,
    },
    /// A connection was refused by the connection limits (before the peer became Connected,
    /// or at accept for a source IP over its limit).
    Refused {
        /// The peer, when it had authenticated.
        peer: Option<PeerId>,
        /// The remote address, when refused at accept.
        address: Option<SocketAddr>,
        /// Why.
        reason: String,
    },
    /// A command (such as `complete_handshake`) failed on the shard.
    CommandFailed {
        /// The peer.
        peer: PeerId,
        /// Why.
        error: String,
    },
}

impl Event {
    /// The peer the event is about, if any.
    pub fn peer(&self) -> Option<PeerId> {
        match self {
            Event::State { peer, .. }
            | Event::SendFailed { peer, .. }
            | Event::Undelivered { peer, .. }
            | Event::StreamRejected { peer, .. }
            | Event::CommandFailed { peer, .. } => Some(*peer),
            Event::Refused { peer, .. } => *peer,
            Event::Missed { .. } => None,
        }
    }
}

/// Which events a subscription wants: by peer and/or by state (`None` = all).
#[derive(Debug, Clone, Default)]
pub struct EventFilter {
    /// Only events about these peers.
    pub peers: Option<Vec<PeerId>>,
    /// Only state changes into these states (other kinds of events pass when `None`).
    pub states: Option<Vec<ConnState>>,
}

impl EventFilter {
    pub(crate) fn matches(&self, event: &Event) -> bool {
        if let Some(peers) = &self.peers
            && !event.peer().is_some_and(|p| peers.contains(&p))
        {
            return false;
        }
        match (&self.states, event) {
            (Some(states), Event::State { state, .. }) => states.contains(state),
            (Some(_), _) => false,
            (None, _) => true,
        }
    }
}

pub(crate) struct Subscriber {
    pub id: u64,
    pub filter: EventFilter,
    pub tx: async_channel::Sender<Event>,
    pub missed: u64,
}

/// A filtered stream of events; unsubscribes when dropped. A subscriber that does not keep up
/// loses events (never the node's time): it is told how many with [`Event::Missed`].
pub struct Subscription {
    id: u64,
    rx: async_channel::Receiver<Event>,
    shared: Arc<Shared>,
}

impl Subscription {
    /// The next event, waiting for it.
    pub async fn recv(&self) -> Option<Event> {
        self.rx.recv().await.ok()
    }

    /// The next event, blocking the thread.
    pub fn recv_blocking(&self) -> Option<Event> {
        self.rx.recv_blocking().ok()
    }

    /// The next event if one is ready.
    pub fn try_recv(&self) -> Option<Event> {
        self.rx.try_recv().ok()
    }
}

impl Drop for Subscription {
    fn drop(&mut self) {
        let mut subscribers = self
            .shared
            .subscribers
            .lock()
            .unwrap_or_else(|p| p.into_inner());
        subscribers.retain(|s| s.id != self.id);
    }
}

/// A zero-copy message handler, called on the shard thread for every message instead of the
/// [`Node::messages`] channel. It must be quick: the shard serves nothing else while it runs.
pub type Handler = Arc<dyn Fn(&PeerId, &str, &Bytes) + Send + Sync>;

/// How to run a node.
pub struct NodeConfig {
    identity: Identity,
    network_id: String,
    listen: SocketAddr,
    shards: usize,
    connection: ConnectionConfig,
    message_buffer: usize,
    message_buffer_bytes: usize,
    busy_poll: std::time::Duration,
    event_buffer: usize,
    command_queue: usize,
    stream_queue: (usize, usize),
    pin_threads: bool,
    cpus: Option<Vec<usize>>,
    ring_entries: u32,
    send_buffers: usize,
    provided_receive_buffers: u16,
    address_book: Option<std::path::PathBuf>,
    handler: Option<Handler>,
    dial_timeout: std::time::Duration,
    handshake_timeout: std::time::Duration,
    cooldown: std::time::Duration,
    backoff: glueberry_transport::Backoff,
    limits: crate::limits::ConnectionLimits,
    pending_handshakes: (usize, std::time::Duration),
    suites: Vec<glueberry_crypto::Suite>,
    metrics: Option<SocketAddr>,
    pub(crate) dialer: Option<Arc<dyn crate::testing::Dialer>>,
}

impl NodeConfig {
    /// A node with `identity` on network `network_id`, listening on `listen` (port 0 picks one),
    /// with Glueberry's defaults.
    pub fn new(identity: Identity, network_id: &str, listen: SocketAddr) -> Self {
        Self {
            identity,
            network_id: network_id.to_string(),
            listen,
            shards: 0,
            connection: ConnectionConfig::default(),
            message_buffer: 1000,
            message_buffer_bytes: 8 * 1024 * 1024,
            busy_poll: std::time::Duration::from_micros(50),
            event_buffer: 100,
            command_queue: 4096,
            stream_queue: (16 * 1024, 16 * 1024 * 1024),
            pin_threads: true,
            cpus: None,
            ring_entries: 4096,
            send_buffers: 16,
            provided_receive_buffers: 0,
            address_book: None,
            handler: None,
            dial_timeout: std::time::Duration::from_secs(30),
            handshake_timeout: std::time::Duration::from_secs(30),
            cooldown: std::time::Duration::from_secs(60),
            backoff: glueberry_transport::Backoff::default(),
            limits: crate::limits::ConnectionLimits::default(),
            pending_handshakes: (256, std::time::Duration::from_secs(10)),
            suites: Vec::new(),
            metrics: None,
            dialer: None,
        }
    }

    /// Serves `/metrics` (Prometheus), `/healthz`, `/readyz` and `/debug/state` over HTTP on
    /// `addr` (off by default; use a loopback address unless the scraper is elsewhere). The node
    /// records into a Prometheus recorder of its own, so several nodes in one process each
    /// export their own figures. Without it, metrics go to the application's global `metrics`
    /// recorder, if it installed one before starting the node.
    pub fn metrics(mut self, addr: SocketAddr) -> Self {
        self.metrics = Some(addr);
        self
    }

    /// The record cipher suites offered or accepted, most preferred first; the dialler's order
    /// decides (default: both, ChaCha20-Poly1305 first).
    pub fn suites(mut self, suites: &[glueberry_crypto::Suite]) -> Self {
        self.suites = suites.to_vec();
        self
    }

    /// Number of shards (threads); 0 (the default) is one per CPU the process may use.
    pub fn shards(mut self, shards: usize) -> Self {
        self.shards = shards;
        self
    }

    /// How long a dial may take to authenticate the peer (default 30 s).
    pub fn dial_timeout(mut self, timeout: std::time::Duration) -> Self {
        self.dial_timeout = timeout;
        self
    }

    /// How long the application handshake may take from Connected (default 30 s); expiry puts
    /// the peer in Cooldown.
    pub fn handshake_timeout(mut self, timeout: std::time::Duration) -> Self {
        self.handshake_timeout = timeout;
        self
    }

    /// How long a peer stays in Cooldown after a handshake timeout (default 1 min).
    pub fn cooldown(mut self, cooldown: std::time::Duration) -> Self {
        self.cooldown = cooldown;
        self
    }

    /// Reconnection: first delay `base` (default 1 s), doubling up to `max` (default 5 min), ±10 %
    /// jitter, at most `max_attempts` attempts (default 10; 0 means unlimited).
    pub fn reconnect(
        mut self,
        base: std::time::Duration,
        max: std::time::Duration,
        max_attempts: u32,
    ) -> Self {
        self.backoff = glueberry_transport::Backoff {
            base,
            max,
            max_attempts,
        };
        self
    }

    /// Checks the settings make sense together; says which one does not. `Node::start` calls it.
    pub fn validate(&self) -> Result<(), String> {
        self.connection.validate().map_err(|e| e.to_string())?;
        let nonzero = [
            ("pending handshake timeout", self.pending_handshakes.1),
            ("dial_timeout", self.dial_timeout),
            ("handshake_timeout", self.handshake_timeout),
            ("cooldown", self.cooldown),
            ("reconnect base delay", self.backoff.base),
        ];
        if let Some((name, _)) = nonzero.iter().find(|(_, d)| d.is_zero()) {
            return Err(format!("{name} must be greater than zero"));
        }
        if self.backoff.max < self.backoff.base {
            return Err(format!(
                "reconnect max delay {:?} is below the base delay {:?}",
                self.backoff.max, self.backoff.base
            ));
        }
        if self.message_buffer == 0 || self.event_buffer == 0 || self.command_queue == 0 {
            return Err("message_buffer, event_buffer and command_queue must be at least 1".into());
        }
        Ok(())
    }

    /// The connection manager's limits (default 400 in, 400 out, 400 in all, 16 per source IP).
    pub fn limits(mut self, limits: crate::limits::ConnectionLimits) -> Self {
        self.limits = limits;
        self
    }

    /// At most `max` inbound connections per shard may be in their secure handshake at once
    /// (more are closed at accept), each for at most `timeout` (default 256 and 10 s): a peer
    /// that connects and stalls is cut off.
    pub fn pending_handshakes(mut self, max: usize, timeout: std::time::Duration) -> Self {
        self.pending_handshakes = (max, timeout);
        self
    }

    /// Per-connection settings.
    pub fn connection(mut self, connection: ConnectionConfig) -> Self {
        self.connection = connection;
        self
    }

    /// Messages each shard's channel to the application holds (default 1000; one channel per
    /// shard for [`Node::messages`] and one per shard for each [`Node::messages_on`]). When a
    /// channel is full, the shard holds that destination's messages and returns no credit for
    /// them: the peers' windows stop those streams while every other stream keeps flowing.
    pub fn message_buffer(mut self, messages: usize) -> Self {
        self.message_buffer = messages.max(1);
        self
    }

    /// How long a shard keeps looking for work without sleeping after its last command or
    /// completion (default 50 µs; zero turns it off). A shard that sleeps in the kernel is
    /// woken by an eventfd write or a completion, which costs a context switch each time; one
    /// that polls briefly answers a request that follows the last one within the window
    /// without it. A node with no traffic for longer than the window sleeps, so the CPU it
    /// costs is at most the window after each burst.
    pub fn busy_poll(mut self, window: std::time::Duration) -> Self {
        self.busy_poll = window;
        self
    }

    /// Bytes of received messages each shard's channel to the application may hold (default
    /// 8 MiB; a message always fits an empty channel). Beyond it (or beyond `message_buffer`
    /// messages) the shard holds the stream's next messages and returns no credit for them,
    /// so what a slow application costs is bounded in bytes, not only in messages.
    pub fn message_buffer_bytes(mut self, bytes: usize) -> Self {
        self.message_buffer_bytes = bytes.max(1);
        self
    }

    /// Capacity of the [`Node::events`] channel (default 100). When full, events are dropped and
    /// counted ([`Node::events_dropped`]).
    pub fn event_buffer(mut self, events: usize) -> Self {
        self.event_buffer = events.max(1);
        self
    }

    /// Capacity of each shard's command queue (default 4096): how many `send`s may be waiting
    /// for a shard before `send` waits and `try_send` fails.
    pub fn command_queue(mut self, commands: usize) -> Self {
        self.command_queue = commands.max(1);
        self
    }

    /// How many messages, and bytes, one stream of one peer may have accepted and not yet
    /// written (default 16,384 and 16 MiB). At the bound `send` waits and `try_send` refuses
    /// with [`NodeSendError::BufferFull`], for that stream only; nothing accepted is handed back
    /// while the connection lives. A message always fits an empty queue.
    pub fn stream_queue(mut self, messages: usize, bytes: usize) -> Self {
        self.stream_queue = (messages.max(1), bytes.max(1));
        self
    }

    /// The send priority of the stream called `name`, 0 (lowest) to 7 (default 3; the
    /// `handshake` stream is 7). When several streams of one peer have messages, records are
    /// filled from higher priorities first, and each busy stream gets bandwidth in proportion to
    /// its priority + 1 (a weighted deficit round robin): `consensus` at 7 and `blocksync` at 0
    /// means a vote waits for at most one record of block chunks, and block chunks still get an
    /// eighth of a saturated link. Set it before the streams are opened with
    /// [`Node::complete_handshake`].
    pub fn stream_priority(mut self, name: &str, priority: u8) -> Self {
        self.connection.priorities.retain(|(n, _)| n != name);
        self.connection.priorities.push((
            name.to_string(),
            priority.min(glueberry_transport::MAX_PRIORITY),
        ));
        self
    }

    /// Pin each shard thread to its CPU (default on).
    pub fn pin_threads(mut self, pin: bool) -> Self {
        self.pin_threads = pin;
        self
    }

    /// The CPUs to pin shards to, in order (default: every CPU the process may use). Two nodes
    /// in one process should get different CPUs.
    pub fn cpus(mut self, cpus: Vec<usize>) -> Self {
        if !cpus.is_empty() {
            self.cpus = Some(cpus);
        }
        self
    }

    /// Deliver messages to `handler` on the shard threads instead of [`Node::messages`].
    pub fn handler(mut self, handler: Handler) -> Self {
        self.handler = Some(handler);
        self
    }

    /// Registered (pinned) send buffers of 512 KiB per shard (default 16, 8 MiB). Under a small
    /// locked-memory limit (an unprivileged process) fewer are registered, down to none, with
    /// one warning; sends then use ordinary buffers.
    pub fn send_buffers(mut self, count: usize) -> Self {
        self.send_buffers = count;
        self
    }

    /// Receive through a provided-buffer ring of `count` buffers of 64 KiB per shard (a power of
    /// two, at most 32768) with multishot receives, instead of the default: a fresh buffer per
    /// receive that becomes the connection's receive buffer. The ring bounds receive memory per
    /// shard whatever the number of idle connections, at the cost of one copy of every received
    /// byte. 0 (the default) is off.
    pub fn provided_receive_buffers(mut self, count: u16) -> Self {
        self.provided_receive_buffers = count;
        self
    }

    /// Keep the address book in this JSON file (created if missing). At start the node dials
    /// every peer in it that is not blacklisted; a corrupt file refuses to start.
    pub fn address_book(mut self, path: impl Into<std::path::PathBuf>) -> Self {
        self.address_book = Some(path.into());
        self
    }

    /// Submission queue entries per shard ring (default 4096). 0 makes io_uring unusable: for
    /// testing the error a node gives when it cannot start.
    pub fn ring_entries(mut self, entries: u32) -> Self {
        self.ring_entries = entries;
        self
    }
}

/// Why a node did not start.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum StartError {
    /// A setting is invalid.
    #[error("invalid config: {0}")]
    Config(String),
    /// io_uring could not be set up; the node refuses to run without it.
    #[error(
        "io_uring is unavailable ({0}); check `sysctl kernel.io_uring_disabled` (must be 0) and \
         any seccomp profile that blocks io_uring_setup"
    )]
    IoUringUnavailable(io::Error),
    /// The address book could not be opened (corrupt, locked by another node, unreadable).
    #[error(transparent)]
    AddressBook(#[from] BookError),
    /// Binding the listener failed.
    #[error("listen on {addr}: {source}")]
    Listen {
        /// The address.
        addr: SocketAddr,
        /// The OS error.
        source: io::Error,
    },
    /// Another system call failed.
    #[error("{0}")]
    Io(#[from] io::Error),
}

/// Queues a command for a shard without waiting, and wakes the shard if it sleeps.
impl<T> From<Refused<T>> for NodeSendError {
    fn from(refused: Refused<T>) -> Self {
        match refused {
            Refused::Full(_) => NodeSendError::BufferFull,
            Refused::Closed(_) => NodeSendError::Stopped,
        }
    }
}

fn push_command(handle: &ShardHandle, command: Command) -> Result<(), NodeSendError> {
    handle.commands.try_push_control(command)?;
    handle.wake();
    Ok(())
}

/// One health check's result.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HealthCheck {
    /// What was checked.
    pub name: &'static str,
    /// Whether it passed.
    pub ok: bool,
    /// Details for operators.
    pub detail: String,
}

/// The node's health: `live` while it runs, `ready` when every check passes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Health {
    /// The node runs (liveness).
    pub live: bool,
    /// Every check passed (readiness).
    pub ready: bool,
    /// The checks.
    pub checks: Vec<HealthCheck>,
}

impl Health {
    /// The checks as a JSON object, for a 200/503 HTTP answer.
    pub fn to_json(&self) -> String {
        let checks: serde_json::Map<String, serde_json::Value> = self
            .checks
            .iter()
            .map(|c| {
                (
                    c.name.to_string(),
                    serde_json::json!({ "ok": c.ok, "detail": c.detail }),
                )
            })
            .collect();
        serde_json::json!({ "live": self.live, "ready": self.ready, "checks": checks }).to_string()
    }
}

/// Why `connect_and_wait` did not connect.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum ConnectError {
    /// The attempt failed; the peer is now in `state` (Reconnecting: it will retry by itself).
    #[error("connection failed; peer is now {state:?} ({})", reason.as_deref().unwrap_or("no reason"))]
    Failed {
        /// The peer's state after the failure.
        state: ConnState,
        /// Why, when known.
        reason: Option<String>,
    },
    /// The command could not be queued.
    #[error(transparent)]
    Send(#[from] NodeSendError),
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

/// Why an address book command failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum NodeError {
    /// The address book refused or could not write.
    #[error(transparent)]
    AddressBook(#[from] BookError),
    /// The shards could not take the command.
    #[error(transparent)]
    Send(#[from] NodeSendError),
}

/// Why `send` refused a message.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum NodeSendError {
    /// The shard's queue is full: `try_send` does not wait (`send` would).
    #[error("buffer full: the peer's shard has no room; retry or use send()")]
    BufferFull,
    /// The message is longer than `max_message_size`.
    #[error("message of {len} bytes exceeds the limit of {max}")]
    MessageTooLarge {
        /// Its length.
        len: usize,
        /// The limit.
        max: usize,
    },
    /// The node stopped.
    #[error("node stopped")]
    Stopped,
    /// The peer is not Established with this stream open: not connected (yet, or any more),
    /// unknown, blacklisted, or the stream was not among those opened.
    #[error("the peer is not Established with this stream open")]
    NotEstablished,
    /// The peer did not open this stream on its side.
    #[error("the peer rejected this stream")]
    StreamRejected,
}

/// [`Node::try_send`] refused: why, and the message, which is still the caller's.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{error}")]
pub struct TrySendError {
    /// Why.
    pub error: NodeSendError,
    /// The message, untouched.
    pub data: Bytes,
}

impl TrySendError {
    /// The message back.
    pub fn into_inner(self) -> Bytes {
        self.data
    }
}

impl From<TrySendError> for NodeSendError {
    fn from(e: TrySendError) -> Self {
        e.error
    }
}

/// A resolved (peer, stream) to send on: see [`Node::route`].
#[derive(Clone, Debug)]
pub struct Route(Arc<RouteShared>);

impl Route {
    /// The peer.
    pub fn peer(&self) -> PeerId {
        self.0.peer
    }

    /// The stream.
    pub fn stream(&self) -> &StreamName {
        &self.0.name
    }

    /// Messages and bytes accepted on it and not yet written.
    pub fn queued(&self) -> (u64, u64) {
        self.0.queued()
    }
}

/// What names a stream for [`Node::send`]: a `&str`, a [`StreamName`] or a [`Route`].
pub trait StreamRef {
    /// The route for `peer` on this stream.
    fn route_for(&self, node: &Node, peer: PeerId) -> Route;
}

impl StreamRef for str {
    fn route_for(&self, node: &Node, peer: PeerId) -> Route {
        node.route(peer, self)
    }
}

impl StreamRef for String {
    fn route_for(&self, node: &Node, peer: PeerId) -> Route {
        node.route(peer, self)
    }
}

impl StreamRef for StreamName {
    fn route_for(&self, node: &Node, peer: PeerId) -> Route {
        node.route(peer, self)
    }
}

/// A route names its own peer; the `peer` argument must be the same (it is not checked).
impl StreamRef for Route {
    fn route_for(&self, _node: &Node, _peer: PeerId) -> Route {
        self.clone()
    }
}

struct Inner {
    peer_id: PeerId,
    listen_addr: SocketAddr,
    shared: Arc<Shared>,
    events: async_channel::Receiver<crate::Event>,
    /// Each shard's channel of messages for the default destination.
    messages: Vec<Channel>,
    /// Destinations of their own, per stream name: each shard's channel.
    outlets: Mutex<HashMap<String, Vec<Channel>>>,
    message_buffer: usize,
    threads: Mutex<Vec<JoinHandle<io::Result<()>>>>,
    names: Mutex<HashMap<String, StreamName>>,
    prepared: Mutex<HashMap<PeerId, Vec<String>>>,
    max_message_size: usize,
    stopped: AtomicBool,
    endpoint: Mutex<Option<crate::observe::Endpoint>>,
    backpressure_wait: ::metrics::Histogram,
    backpressure_engaged: ::metrics::Counter,
    next_injected: std::sync::atomic::AtomicUsize,
}

/// A running node. Cheap to clone; all clones drive the same node.
#[derive(Clone)]
pub struct Node {
    inner: Arc<Inner>,
}

impl fmt::Debug for Node {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Node")
            .field("peer_id", &self.inner.peer_id)
            .field("listen_addr", &self.inner.listen_addr)
            .finish_non_exhaustive()
    }
}

impl Node {
    /// Starts the shards and the listeners.
    pub fn start(config: NodeConfig) -> Result<Node, StartError> {
        config.validate().map_err(StartError::Config)?;
        let mut handshake = HandshakeConfig::new(&config.identity, &config.network_id)
            .map_err(|e| StartError::Config(e.to_string()))?;
        if !config.suites.is_empty() {
            handshake = handshake
                .with_suites(&config.suites)
                .map_err(|e| StartError::Config(e.to_string()))?;
        }
        let handshake = Arc::new(handshake);
        let book = match &config.address_book {
            Some(path) => Some(AddressBook::open(path)?),
            None => None,
        };
        let cpus = config.cpus.clone().unwrap_or_else(socket::allowed_cpus);
        let count = if config.shards == 0 {
            cpus.len().max(1)
        } else {
            config.shards
        };
        // The first listener fixes the port; the others share it (SO_REUSEPORT).
        let listen_err = |source| StartError::Listen {
            addr: config.listen,
            source,
        };
        let first = socket::listener(config.listen).map_err(listen_err)?;
        let listen_addr = socket::local_addr(&first)?;
        let mut listeners = vec![first];
        for _ in 1..count {
            listeners.push(socket::listener(listen_addr).map_err(listen_err)?);
        }

        let limits = Arc::new(crate::limits::Limits::new(config.limits));
        let (events_tx, events_rx) = async_channel::bounded(config.event_buffer);
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
            shards: handles,
            events: events_tx,
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
            handoffs: AtomicU64::new(0),
            ring_fds: (0..count)
                .map(|_| std::sync::atomic::AtomicI32::new(-1))
                .collect(),
            book: Mutex::new(book),
            subscribers: Mutex::new(Vec::new()),
            states: Mutex::new(HashMap::new()),
            limits: limits.clone(),
            next_subscriber: AtomicU64::new(1),
            recorder: config.metrics.map(|_| crate::observe::recorder()),
            dialer: config.dialer.clone(),
        });
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
        let (ready_tx, ready_rx) = std::sync::mpsc::channel();
        let mut threads = Vec::with_capacity(count);
        for (index, (listener, commands)) in listeners.into_iter().zip(receivers).enumerate() {
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
            let cpu = cpus.get(index % cpus.len().max(1)).copied();
            let pin = config.pin_threads;
            let entries = config.ring_entries;
            let send_buffers = config.send_buffers;
            let provided = config.provided_receive_buffers;
            let thread = std::thread::Builder::new()
                .name(format!("glueberry-shard-{index}"))
                .spawn(move || {
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
                    let ring = match Ring::new(entries) {
                        Ok(ring) => ring,
                        Err(e) => {
                            let error = io::Error::new(e.kind(), e.to_string());
                            let _ = ready.send(Err(e));
                            return Err(error);
                        }
                    };
                    let handle = &shared.shards[index];
                    let mut shard = shard::Shard::new(
                        index,
                        ring,
                        NodeCore::new(core_config),
                        listener,
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
                    if registered < send_buffers && !shared.memlock_warned.swap(true, Ordering::Relaxed) {
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
                listen_addr,
                shared,
                events: events_rx,
                messages: channels,
                outlets: Mutex::new(HashMap::new()),
                message_buffer: config.message_buffer,
                threads: Mutex::new(threads),
                names: Mutex::new(HashMap::new()),
                prepared: Mutex::new(HashMap::new()),
                max_message_size: config.connection.max_message_size,
                stopped: AtomicBool::new(false),
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
            node.stop();
            return Err(StartError::IoUringUnavailable(e));
        }
        if let (Some(addr), Some(recorder)) = (config.metrics, recorder) {
            let source = Box::new(EndpointSource(Arc::downgrade(&node.inner)));
            match crate::observe::Endpoint::start(addr, recorder, source) {
                Ok(endpoint) => {
                    *node
                        .inner
                        .endpoint
                        .lock()
                        .unwrap_or_else(|p| p.into_inner()) = Some(endpoint)
                }
                Err(e) => {
                    node.stop();
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
        // The blacklist first (every shard), then dial every other peer in the book.
        for entry in node.peers() {
            let result = if entry.blacklisted {
                node.broadcast_blacklist(entry.peer_id, true)
            } else if let Some(addr) = entry.addresses.first() {
                node.connect(entry.peer_id, *addr)
            } else {
                Ok(())
            };
            if let Err(e) = result {
                node.stop();
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
        self.inner.listen_addr
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

    fn command(&self, peer: PeerId, command: Command) -> Result<(), NodeSendError> {
        push_command(self.handle(peer)?, command)
    }

    fn handle(&self, peer: PeerId) -> Result<&ShardHandle, NodeSendError> {
        if self.inner.stopped.load(Ordering::Acquire) {
            return Err(NodeSendError::Stopped);
        }
        let shards = &self.inner.shared.shards;
        Ok(&shards[shard_of(&peer, shards.len())])
    }

    /// Dials `peer` at `addr` (and redials it with backoff when the connection drops).
    pub fn connect(&self, peer: PeerId, addr: SocketAddr) -> Result<(), NodeSendError> {
        self.command(peer, Command::Connect { peer, addr })
    }

    fn book(&self) -> std::sync::MutexGuard<'_, Option<AddressBook>> {
        self.inner
            .shared
            .book
            .lock()
            .unwrap_or_else(|p| p.into_inner())
    }

    fn broadcast_blacklist(&self, peer: PeerId, blacklisted: bool) -> Result<(), NodeSendError> {
        for handle in &self.inner.shared.shards {
            push_command(handle, Command::Blacklist { peer, blacklisted })?;
        }
        Ok(())
    }

    /// Adds (or updates) a peer in the address book and dials it. Without an address book the
    /// peer is only dialled.
    pub fn add_peer(
        &self,
        peer: PeerId,
        addresses: Vec<SocketAddr>,
        metadata: std::collections::BTreeMap<String, String>,
    ) -> Result<(), NodeError> {
        if let Some(book) = self.book().as_mut() {
            book.add(peer, addresses.clone(), metadata)?;
            tracing::info!(peer = %peer, addresses = addresses.len(), "peer added");
            if book.is_blacklisted(&peer) {
                return Ok(());
            }
        }
        if let Some(addr) = addresses.first() {
            self.connect(peer, *addr)?;
        }
        Ok(())
    }

    /// Removes a peer from the address book and disconnects it.
    pub fn remove_peer(&self, peer: PeerId) -> Result<(), NodeError> {
        if let Some(book) = self.book().as_mut() {
            book.remove(&peer)?;
            tracing::info!(peer = %peer, "peer removed");
        }
        self.disconnect(peer)?;
        Ok(())
    }

    /// Blacklists a peer: persisted, its connection closed at once, and every future connection
    /// from or to it refused before any application byte.
    pub fn blacklist(&self, peer: PeerId) -> Result<(), NodeError> {
        if let Some(book) = self.book().as_mut() {
            book.set_blacklisted(peer, true)?;
        }
        tracing::warn!(peer = %peer, reason = "blacklisted by the application", "peer blacklisted");
        self.broadcast_blacklist(peer, true)?;
        Ok(())
    }

    /// Lifts a blacklist (the peer is not dialled again by itself; `connect` it).
    pub fn unblacklist(&self, peer: PeerId) -> Result<(), NodeError> {
        if let Some(book) = self.book().as_mut() {
            book.set_blacklisted(peer, false)?;
        }
        self.broadcast_blacklist(peer, false)?;
        Ok(())
    }

    /// A peer's address book entry.
    pub fn peer(&self, peer: PeerId) -> Option<PeerEntry> {
        self.book().as_ref().and_then(|b| b.get(&peer).cloned())
    }

    /// Every peer in the address book.
    pub fn peers(&self) -> Vec<PeerEntry> {
        self.book()
            .as_ref()
            .map_or_else(Vec::new, |b| b.list().cloned().collect())
    }

    /// Statistics of one peer, from its shard.
    pub async fn peer_stats(&self, peer: PeerId) -> Option<PeerStats> {
        let (reply, answer) = async_channel::bounded(1);
        let handle = self.handle(peer).ok()?;
        handle
            .commands
            .push(Command::Stats {
                peer: Some(peer),
                reply,
            })
            .await
            .ok()?;
        handle.wake();
        answer.recv().await.ok()?.into_iter().next()
    }

    /// Statistics of every peer the node holds state for, from all shards.
    pub async fn stats(&self) -> Vec<PeerStats> {
        let mut all = Vec::new();
        for handle in &self.inner.shared.shards {
            let (reply, answer) = async_channel::bounded(1);
            if handle
                .commands
                .push(Command::Stats { peer: None, reply })
                .await
                .is_err()
            {
                continue;
            }
            handle.wake();
            if let Ok(stats) = answer.recv().await {
                all.extend(stats);
            }
        }
        all
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
    /// `timeout` passes; returns whether everything was confirmed. For a graceful stop: call
    /// it (with no more sends), then [`Node::stop`], which hands back whatever is left in
    /// [`Event::Undelivered`](crate::Event::Undelivered).
    pub fn drain(&self, timeout: std::time::Duration) -> bool {
        let deadline = std::time::Instant::now() + timeout;
        loop {
            if futures::executor::block_on(self.outstanding()) == 0 {
                return true;
            }
            if std::time::Instant::now() >= deadline {
                return false;
            }
            std::thread::sleep(std::time::Duration::from_millis(2));
        }
    }

    /// The node's state as JSON: identity, shards, counters, and every peer's statistics.
    pub async fn dump_state(&self) -> String {
        let peers: Vec<serde_json::Value> = self
            .stats()
            .await
            .into_iter()
            .map(|s| {
                serde_json::json!({
                    "peer_id": s.peer.to_string(),
                    "state": format!("{:?}", s.state),
                    "direction": s.direction.map(|d| format!("{d:?}")),
                    "connected_for_ms": s.connected_for.map(|d| d.as_millis() as u64),
                    "total_connected_ms": s.total_connected.as_millis() as u64,
                    "connections": s.connections,
                    "failures": s.failures,
                    "since_last_message_ms": s.since_last_message.map(|d| d.as_millis() as u64),
                    "rtt_us": s.rtt.map(|d| d.as_micros() as u64),
                    "streams": s.streams.iter().map(|t| serde_json::json!({
                        "name": t.name,
                        "sent_messages": t.sent_messages,
                        "sent_bytes": t.sent_bytes,
                        "received_messages": t.received_messages,
                        "received_bytes": t.received_bytes,
                        "queued_messages": t.queued_messages,
                    })).collect::<Vec<_>>(),
                })
            })
            .collect();
        let shared = &self.inner.shared;
        serde_json::json!({
            "peer_id": self.peer_id().to_string(),
            "listen_addr": self.listen_addr().to_string(),
            "protocol_version": glueberry_crypto::handshake::PROTOCOL_VERSION.to_string(),
            "shards": shared.shards.len(),
            "events_dropped": self.events_dropped(),
            "handoffs": self.handoffs(),
            "registered_send_buffers": self.registered_send_buffers(),
            "abandoned_operations": self.abandoned_operations(),
            "peers": peers,
        })
        .to_string()
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

    /// Opens the named streams with a Connected peer: it becomes Established.
    pub fn complete_handshake(&self, peer: PeerId, streams: &[&str]) -> Result<(), NodeSendError> {
        let streams = streams.iter().map(|s| s.to_string()).collect();
        self.command(peer, Command::CompleteHandshake { peer, streams })
    }

    /// The route to `peer`'s stream `name`: resolved once, then every send on it is a reserve
    /// and a queue push, with no lookup. Valid across reconnections (it opens again when the
    /// peer is Established again); cheap to clone. Resolving before the peer connects is fine.
    pub fn route(&self, peer: PeerId, name: &str) -> Route {
        Route(self.resolve(peer, name))
    }

    fn resolve(&self, peer: PeerId, name: &str) -> Arc<RouteShared> {
        let shared = &self.inner.shared;
        shared.routes.resolve(peer, name, || {
            RouteShared::new(
                peer,
                self.stream(name),
                shard_of(&peer, shared.shards.len()),
                shared.stream_queue,
            )
        })
    }

    /// Sends a message on `peer`'s stream (named by `&str`, [`StreamName`] or [`Route`]),
    /// waiting while that stream's queue is full. What it accepts is delivered or, if the
    /// connection ends first, handed back in [`Event::Undelivered`]. Fails at once when the peer
    /// is not Established with the stream open ([`NodeSendError::NotEstablished`]), or the peer
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

    /// [`Node::send`] on a route (the fast path: no name is looked up).
    pub async fn send_on(&self, route: &Route, data: Bytes) -> Result<(), NodeSendError> {
        self.check_size(&data)?;
        let route = self.reserve(route, 1, data.len()).await?;
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
            let shared = self.reserve(route, batch.len(), bytes).await?;
            let handle = &self.inner.shared.shards[shared.shard];
            let command = Command::SendBatch {
                route: shared,
                messages: batch,
            };
            self.push_send(handle, command).await?;
        }
        Ok(())
    }

    /// Sends without waiting: [`NodeSendError::BufferFull`] when the stream's queue (or the
    /// shard's command queue) is full; the message comes back with the error.
    pub fn try_send<S: StreamRef + ?Sized>(
        &self,
        peer: PeerId,
        stream: &S,
        data: Bytes,
    ) -> Result<(), TrySendError> {
        let route = stream.route_for(self, peer);
        self.try_send_on(&route, data)
    }

    /// [`Node::try_send`] on a route.
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
    fn try_reserve(
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
                RouteState::Closed => return Err(NodeSendError::NotEstablished),
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

    /// [`Node::try_reserve`], waiting for room.
    async fn reserve(
        &self,
        route: &Route,
        count: usize,
        bytes: usize,
    ) -> Result<Arc<RouteShared>, NodeSendError> {
        let mut route = match self.try_reserve(&route.0, count, bytes)? {
            Ok(route) => return Ok(route),
            Err(full) => full,
        };
        let waited = std::time::Instant::now();
        self.inner.backpressure_engaged.increment(1);
        loop {
            let listener = route.listen();
            match self.try_reserve(&route, count, bytes)? {
                Ok(reserved) => {
                    route = reserved;
                    break;
                }
                Err(full) => route = full,
            }
            listener.await;
        }
        self.inner
            .backpressure_wait
            .record(waited.elapsed().as_secs_f64());
        Ok(route)
    }

    /// Pushes a reserved send command, waiting while the shard's command queue is full (the
    /// shard drains it every turn: what is reserved always has room further down).
    async fn push_send(&self, handle: &ShardHandle, command: Command) -> Result<(), NodeSendError> {
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
    /// `Bytes`). Waits per peer as [`Node::send`] does. Returns the peers it could not send to,
    /// with why.
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

    fn check_size(&self, data: &Bytes) -> Result<(), NodeSendError> {
        if data.len() > self.inner.max_message_size {
            return Err(NodeSendError::MessageTooLarge {
                len: data.len(),
                max: self.inner.max_message_size,
            });
        }
        Ok(())
    }

    /// The received messages of every stream that has no destination of its own
    /// ([`Node::messages_on`]). Each shard delivers into a bounded channel of its own
    /// (`message_buffer` messages); the returned [`Messages`] reads them all. Clones share the
    /// messages (each goes to one of them). `recv().await` from any executor, `recv_blocking()`
    /// from a plain thread, or use it as a `Stream`.
    pub fn messages(&self) -> Messages {
        Messages::new(&self.inner.messages)
    }

    /// The received messages of stream `name`, apart from the others: a consumer that falls
    /// behind on it holds back only that stream (its peers' windows for it fill), never another
    /// stream or [`Node::messages`]. Ask before the stream opens (before
    /// [`Node::complete_handshake`]), or messages that arrived earlier went to
    /// [`Node::messages`]. Asking again for the same name returns a clone of the same receiver.
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

    /// Peer events (a bounded channel; see [`Node::events_dropped`]).
    pub fn events(&self) -> async_channel::Receiver<crate::Event> {
        self.inner.events.clone()
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

    /// A peer's connection state as last reported by its shard (Disconnected if unknown).
    pub fn state(&self, peer: PeerId) -> ConnState {
        self.inner
            .shared
            .states
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(&peer)
            .map_or(ConnState::Disconnected, |(s, _)| *s)
    }

    /// Whether we dialled the peer's current connection (`None` when it has none). Fixed when
    /// the connection is made; a peer opening streams never changes it.
    pub fn is_outbound(&self, peer: PeerId) -> Option<bool> {
        self.inner
            .shared
            .states
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(&peer)
            .and_then(|(_, d)| *d)
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

    /// Subscribes to the events that pass `filter`, in a channel of `capacity`.
    pub fn subscribe(&self, filter: EventFilter, capacity: usize) -> Subscription {
        let (tx, rx) = async_channel::bounded(capacity.max(1));
        let id = self
            .inner
            .shared
            .next_subscriber
            .fetch_add(1, Ordering::Relaxed);
        self.inner
            .shared
            .subscribers
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .push(Subscriber {
                id,
                filter,
                tx,
                missed: 0,
            });
        Subscription {
            id,
            rx,
            shared: self.inner.shared.clone(),
        }
    }

    /// Live subscriptions.
    pub fn subscription_count(&self) -> usize {
        self.inner
            .shared
            .subscribers
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .len()
    }

    /// Liveness and readiness, Glueberry's checks: the node is running, listening, its address
    /// book (if any) is held, and it has at least one authenticated connection (readiness only).
    pub fn health(&self) -> Health {
        let running = !self.inner.stopped.load(Ordering::Acquire)
            && !self.inner.shared.stop.load(Ordering::Acquire);
        let (inbound, outbound) = self.connection_counts();
        let book = self
            .inner
            .shared
            .book
            .lock()
            .unwrap_or_else(|p| p.into_inner());
        let checks = vec![
            HealthCheck {
                name: "started",
                ok: running,
                detail: format!("{} shards", self.shard_count()),
            },
            HealthCheck {
                name: "listening",
                ok: running,
                detail: self.listen_addr().to_string(),
            },
            HealthCheck {
                name: "address_book",
                ok: running,
                detail: book.as_ref().map_or_else(
                    || "none configured".into(),
                    |b| b.path().display().to_string(),
                ),
            },
            HealthCheck {
                name: "connections",
                ok: inbound + outbound > 0,
                detail: format!("{inbound} inbound, {outbound} outbound"),
            },
        ];
        Health {
            live: running,
            ready: checks.iter().all(|c| c.ok),
            checks,
        }
    }

    /// The address of the metrics and health endpoint, when [`NodeConfig::metrics`] turned it on
    /// (the real port when 0 was asked for).
    pub fn metrics_addr(&self) -> Option<SocketAddr> {
        self.inner
            .endpoint
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .as_ref()
            .map(crate::observe::Endpoint::addr)
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

    /// (peer, stream) routes the node keeps: those of known peers and those the application
    /// resolved. A peer that is forgotten takes its routes with it.
    pub fn route_count(&self) -> usize {
        self.inner.shared.routes.len()
    }

    /// Events dropped because the event channel was full.
    pub fn events_dropped(&self) -> u64 {
        self.inner.shared.events_dropped.load(Ordering::Relaxed)
    }

    /// Stops the node: connections close with a CLOSE frame, shard threads finish every
    /// operation in flight and exit, and their sockets close. Idempotent; waits for the threads.
    pub fn stop(&self) {
        if self.inner.stopped.swap(true, Ordering::AcqRel) {
            return;
        }
        if let Some(mut endpoint) = self
            .inner
            .endpoint
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .take()
        {
            endpoint.stop();
        }
        self.inner.shared.stop.store(true, Ordering::Release);
        self.inner.shared.routes.close_all();
        for handle in &self.inner.shared.shards {
            handle.commands.close();
            handle.sleeping.store(true, Ordering::SeqCst);
            handle.wake();
        }
        let threads = std::mem::take(
            &mut *self
                .inner
                .threads
                .lock()
                .unwrap_or_else(|poisoned| poisoned.into_inner()),
        );
        for thread in threads {
            let _ = thread.join();
        }
        tracing::info!(peer_id = %self.peer_id(), listen_addr = %self.listen_addr(), "glueberry node stopped");
        // Batched last-seen updates are not lost on stop; the book's lock is released.
        if let Some(mut book) = self.book().take()
            && let Err(e) = book.flush()
        {
            tracing::warn!(error = %e, "address book flush on stop failed");
        }
        self.inner.events.close();
        for channel in &self.inner.messages {
            channel.close();
        }
        for channels in self
            .inner
            .outlets
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .values()
        {
            for channel in channels {
                channel.close();
            }
        }
        // Subscriptions end too, once their last events are taken.
        self.inner
            .shared
            .subscribers
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clear();
    }
}

/// The HTTP endpoint's view of its node; it does not keep the node alive.
struct EndpointSource(std::sync::Weak<Inner>);

impl EndpointSource {
    fn node(&self) -> Option<Node> {
        let inner = self.0.upgrade()?;
        (!inner.stopped.load(Ordering::Acquire)).then_some(Node { inner })
    }
}

impl crate::observe::Source for EndpointSource {
    fn health(&self) -> Option<(bool, bool, String)> {
        let health = self.node()?.health();
        Some((health.live, health.ready, health.to_json()))
    }

    fn dump_state(&self) -> Option<String> {
        Some(futures::executor::block_on(self.node()?.dump_state()))
    }
}
