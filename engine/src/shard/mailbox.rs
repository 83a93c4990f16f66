//! How other threads reach a shard: the commands and the handle that queues them and wakes the
//! shard (`shared.rs` holds the state every shard and `Node` handle shares).

use std::net::SocketAddr;
use std::os::fd::OwnedFd;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use bytes::Bytes;
use glueberry_crypto::PeerId;
use glueberry_transport::{ConnId, Connection};

use crate::channel::Channel;
use crate::route_table::RouteShared;
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

/// Queues a command for a shard without waiting, and wakes the shard if it sleeps.
pub(crate) fn push_command(
    handle: &ShardHandle,
    command: Command,
) -> Result<(), crate::vocabulary::NodeSendError> {
    handle.commands.try_push_control(command)?;
    handle.wake();
    Ok(())
}
