//! The state every shard and `Node` handle shares: the shards' handles, the routes, the peers'
//! reported states, the limits, the counters; what reaches a shard through it (a resolved
//! name), and what a shard's end does to it (`ExitGuard`).

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use glueberry_crypto::PeerId;

use super::mailbox::{Command, ShardHandle};
use super::queue::CommandQueue;
use crate::vocabulary::Handler;

/// State shared by all shards and the `Node` handles.
pub(crate) struct Shared {
    pub shards: Vec<ShardHandle>,
    /// The I/O backend the shards run on (never `Auto`).
    pub backend: crate::vocabulary::Backend,
    /// Host names, resolved off the shards.
    pub resolver: crate::resolve::Resolver,
    /// Requests this node waits on (`Node::request`).
    pub rpc: crate::rpc::Pending,
    pub stop: AtomicBool,
    pub handler: Option<Handler>,
    pub events_dropped: AtomicU64,
    /// How long a shard keeps polling after its last work before it sleeps in the kernel
    /// (`NodeConfig::busy_poll`).
    pub busy_poll: Duration,
    /// The byte bound of each channel to the application (`NodeConfig::message_buffer_bytes`).
    pub message_buffer_bytes: usize,
    /// Every (peer, stream) route, for senders to resolve names once.
    pub routes: crate::route_table::RouteTable,
    /// The bound of one route's queue: messages and bytes (`NodeConfig::stream_queue`).
    pub stream_queue: (usize, usize),
    /// What the node holds for all its peers, against `NodeConfig::send_budget`.
    pub budget: Arc<crate::budget::NodeBudget>,
    /// What the node holds of what its peers sent, against `NodeConfig::receive_budget`.
    pub receive_budget: crate::budget::NodeBudget,
    /// How long a response may wait for room (`NodeConfig::respond_timeout`).
    pub respond_timeout: std::time::Duration,
    /// Registered send buffers over all shards.
    pub registered_send_buffers: AtomicU64,
    /// Whether the short-memlock warning was given (once per node).
    pub memlock_warned: AtomicBool,
    /// Inbound connections handed from the accepting shard to their peer's shard.
    pub handoffs: AtomicU64,
    /// Bytes of the per-connection receive buffers armed in the kernel, over all shards (each
    /// shard adds its change once per loop turn).
    pub receive_buffer_bytes: std::sync::atomic::AtomicI64,
    /// Each shard's ring descriptor (-1 until it starts), for MSG_RING wake-ups between shards.
    pub ring_fds: Vec<std::sync::atomic::AtomicI32>,
    /// Each peer's last reported state (entries leave when Disconnected).
    pub states: std::sync::Mutex<HashMap<PeerId, PeerReport>>,
    /// The connection manager's limits and counts.
    pub limits: Arc<crate::limits::Limits>,
    /// Filtered event subscriptions.
    pub subscribers: crate::vocabulary::Subscribers,
    pub next_subscriber: AtomicU64,
    /// The address book, when the node has one: shards record when peers are seen.
    pub book: std::sync::Mutex<Option<crate::address_book::AddressBook>>,
    /// Operations whose completion never arrived before a shard exited (their buffers are
    /// leaked rather than freed under the kernel). Zero unless something is wrong.
    pub abandoned_operations: AtomicU64,
    /// Shard threads that ended while the node was running (a bug, or a panic): reported by
    /// `health()`, so a liveness probe restarts the process.
    pub dead_shards: AtomicU64,
    /// Shards that have not finished stopping: a shard closes its ring only when this is 0, so
    /// no other shard can post a wake-up (MSG_RING) to a ring descriptor that was closed and
    /// reused.
    pub running_shards: std::sync::atomic::AtomicUsize,
    /// Panics in the application's message handler, caught on the shard thread.
    pub handler_panics: AtomicU64,
    /// Makes outbound connections instead of TCP, for a [`crate::testing::TestNetwork`].
    pub dialer: Option<Arc<dyn crate::sys::dial::Dialer>>,
    /// This node's own Prometheus recorder, when its metrics endpoint is on.
    pub recorder: Option<Arc<metrics_exporter_prometheus::PrometheusRecorder>>,
}

/// What a shard last reported about a peer, for the application's threads.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct PeerReport {
    /// Its state.
    pub state: glueberry_transport::ConnState,
    /// Its connection's direction, when it has one.
    pub direction: Option<glueberry_transport::Direction>,
    /// The peer answered every stream we opened on this connection ([`crate::Event::Ready`]).
    pub ready: bool,
}

/// Where the resolver thread hands a name it resolved: the peer's shard, as a command (a
/// shard whose queue is full drops it; the dial then ends by its timeout and is retried).
pub(crate) fn deliver_resolved(shared: &Arc<Shared>) -> crate::resolve::Deliver {
    let weak = Arc::downgrade(shared);
    Box::new(move |request, result| {
        let Some(shared) = weak.upgrade() else {
            return;
        };
        let owner = glueberry_transport::shard_of(&request.peer, shared.shards.len());
        let handle = &shared.shards[owner];
        let command = Command::Resolved {
            peer: request.peer,
            conn: request.conn,
            host: request.host,
            port: request.port,
            result,
        };
        if handle.commands.try_push_control(command).is_ok() {
            handle.wake();
        }
    })
}

/// Dropped when a shard thread ends, however it ends: if the node was not stopping, the shard
/// died (counted in `dead_shards`, so `health()` stops saying live); either way its command
/// queue is closed and emptied, so nobody waits on a command it will never answer (a `stats()`
/// reply channel is dropped, a send's reserved room is given back).
pub(crate) struct ExitGuard {
    shared: Arc<Shared>,
    index: usize,
    commands: Arc<CommandQueue<Command>>,
}

impl ExitGuard {
    pub(crate) fn new(
        shared: Arc<Shared>,
        index: usize,
        commands: Arc<CommandQueue<Command>>,
    ) -> Self {
        Self {
            shared,
            index,
            commands,
        }
    }
}

impl Drop for ExitGuard {
    fn drop(&mut self) {
        if !self.shared.stop.load(Ordering::Acquire) {
            self.shared.dead_shards.fetch_add(1, Ordering::Relaxed);
            // It will not reach its shutdown: the others must not wait for it there.
            self.shared
                .running_shards
                .fetch_sub(1, std::sync::atomic::Ordering::AcqRel);
            tracing::error!(
                shard = self.index,
                panicking = std::thread::panicking(),
                "a shard thread ended while the node runs: its peers are not served"
            );
        }
        self.shared.ring_fds[self.index].store(-1, Ordering::Release);
        self.commands.close();
        while let Some(command) = self.commands.pop() {
            command.release_reservation();
        }
    }
}
