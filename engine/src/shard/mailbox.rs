//! How other threads reach a shard: the commands, the handle that queues them and wakes the
//! shard, and the state every shard and `Node` handle shares.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::os::fd::OwnedFd;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use bytes::Bytes;
use glueberry_crypto::PeerId;
use glueberry_transport::{ConnId, Connection};

use crate::Handler;
use crate::channel::Channel;
use crate::route::RouteShared;
use crate::shard::CommandQueue;
use crate::sys::socket;

/// What other threads ask of a shard.
pub(crate) enum Command {
    /// Dial `peer` at `addrs` (never empty), tried in turn on every dial.
    Connect {
        peer: PeerId,
        addrs: Vec<SocketAddr>,
    },
    /// Stream `name` carries requests and responses: its requests go to `channel` (this node
    /// serves them), or are refused (`None`: it only sends requests).
    RequestOutlet {
        name: String,
        channel: Option<Channel>,
    },
    /// A host name resolved for `peer`: for its first dial (`conn: None`: dial it and resolve
    /// the name again before every later dial) or for the dial `conn`.
    Resolved {
        peer: PeerId,
        conn: Option<ConnId>,
        host: std::sync::Arc<str>,
        port: u16,
        result: crate::resolve::Resolved,
    },
    CompleteHandshake {
        peer: PeerId,
        streams: Vec<String>,
    },
    /// A message for a route that reserved room for it.
    Send {
        route: Arc<RouteShared>,
        data: Bytes,
    },
    /// Messages for one route, reserved together.
    SendBatch {
        route: Arc<RouteShared>,
        messages: Vec<Bytes>,
    },
    Disconnect {
        peer: PeerId,
    },
    /// The connection limits chose this inbound peer to make room for a newcomer.
    Evict {
        peer: PeerId,
    },
    /// A budget the node enforces chose this peer: close its connection with `code`.
    Cut {
        peer: PeerId,
        code: glueberry_transport::CloseCode,
    },
    /// Marks a peer persistent (or not), and dials it at `addr` if given.
    Persistent {
        peer: PeerId,
        addr: Option<SocketAddr>,
        persistent: bool,
    },
    CancelReconnect {
        peer: PeerId,
    },
    /// Statistics of one peer (or all of this shard's), answered on `reply`.
    Stats {
        peer: Option<PeerId>,
        reply: async_channel::Sender<Vec<glueberry_transport::PeerStats>>,
    },
    /// How many messages this shard holds that the peers have not confirmed: waiting for
    /// room, queued on a connection, or written and unconfirmed. Answered on `reply` after every
    /// command before it.
    Outstanding {
        reply: async_channel::Sender<usize>,
    },
    /// Sent to every shard: inbound connections may land on any of them.
    Blacklist {
        peer: PeerId,
        blacklisted: bool,
    },
    /// Messages of stream `name` go to `tx` (the application asked for them apart).
    Outlet {
        name: String,
        channel: Channel,
    },
    /// A connected socket handed in by a [`crate::testing::TestNetwork`]: treated as accepted.
    Accepted {
        fd: OwnedFd,
    },
    /// Ends the shard thread with a panic ([`crate::testing::crash_shard`]): how an
    /// application tests that its liveness probe notices a dead shard.
    Crash,
    /// A connection another shard authenticated for a peer this shard owns.
    Adopt {
        fd: OwnedFd,
        conn: Box<Connection>,
        ip_slot: Option<crate::limits::IpSlot>,
    },
}

impl Command {
    /// Gives back the room a send command reserved (it was never taken).
    pub(crate) fn release_reservation(self) {
        match self {
            Command::Send { route, data } => route.release(1, data.len() as u64),
            Command::SendBatch { route, messages } => route.release(
                messages.len() as u64,
                messages.iter().map(|m| m.len() as u64).sum(),
            ),
            _ => {}
        }
    }
}

/// How other threads reach a shard.
pub(crate) struct ShardHandle {
    pub commands: Arc<CommandQueue<Command>>,
    pub wake_fd: Arc<OwnedFd>,
    pub sleeping: Arc<AtomicBool>,
}

impl ShardHandle {
    pub(crate) fn new(commands: Arc<CommandQueue<Command>>, wake_fd: OwnedFd) -> Self {
        Self {
            commands,
            wake_fd: Arc::new(wake_fd),
            sleeping: Arc::new(AtomicBool::new(false)),
        }
    }

    /// Wakes the shard if it is (about to be) blocked in the kernel: one write per sleep, not
    /// one per command.
    pub(crate) fn wake(&self) {
        if self.sleeping.swap(false, Ordering::SeqCst) {
            socket::signal(&self.wake_fd);
        }
    }
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

/// State shared by all shards and the `Node` handles.
pub(crate) struct Shared {
    pub shards: Vec<ShardHandle>,
    /// The I/O backend the shards run on (never `Auto`).
    pub backend: crate::Backend,
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
    pub routes: crate::route::RouteTable,
    /// The bound of one route's queue: messages and bytes (`NodeConfig::stream_queue`).
    pub stream_queue: (usize, usize),
    /// What the node holds for all its peers, against `NodeConfig::send_budget`.
    pub budget: Arc<crate::budget::NodeBudget>,
    /// How long a response may wait for room (`NodeConfig::respond_timeout`).
    pub respond_timeout: std::time::Duration,
    /// Registered send buffers over all shards.
    pub registered_send_buffers: AtomicU64,
    /// Whether the short-memlock warning was given (once per node).
    pub memlock_warned: AtomicBool,
    /// Inbound connections handed from the accepting shard to their peer's shard.
    pub handoffs: AtomicU64,
    /// Each shard's ring descriptor (-1 until it starts), for MSG_RING wake-ups between shards.
    pub ring_fds: Vec<std::sync::atomic::AtomicI32>,
    /// Each peer's last reported state (entries leave when Disconnected).
    pub states: std::sync::Mutex<HashMap<PeerId, PeerReport>>,
    /// The connection manager's limits and counts.
    pub limits: Arc<crate::limits::Limits>,
    /// Filtered event subscriptions.
    pub subscribers: crate::api::Subscribers,
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
