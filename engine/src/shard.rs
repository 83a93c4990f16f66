//! One shard: a thread pinned to a CPU, its io_uring, and the transport core of the peers it
//! owns. Nothing here is shared with other threads except the bounded queues in and out.

use std::collections::{HashMap, VecDeque};
use std::io;
use std::net::SocketAddr;
use std::os::fd::{AsRawFd, OwnedFd};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use bytes::{Bytes, BytesMut};
use glueberry_crypto::PeerId;
use glueberry_transport::{
    Action, CloseCode, CloseReason, ConnId, ConnState, Connection, ConnectionError, NodeCore,
    NodeEvent, StreamId, shard_of,
};

use crate::limits::AcceptRefusal;
use crate::metrics::{ShardMetrics, StreamMetrics, count_records};
use crate::outbox::{Channel, Outbox};
use crate::queue::{CommandQueue, Refused};
use crate::route::{RouteShared, RouteState};
use crate::sys::ring::{Completion, Op, Ring, SendProgress, WAKE_TOKEN, received};
use crate::sys::socket;
use crate::{Event, Handler, Message, StreamName};

/// Size of a receive buffer (a fresh one per receive: it becomes the connection's receive
/// buffer, and messages are slices of it).
const RECV_BUF: usize = 256 * 1024;
/// Size of a send buffer: eight 64 KiB records per send (512 KiB measured 1.2–1.4× the bulk
/// throughput of 256 KiB here: fewer, larger sends). Borrowed from the shard's pool only
/// while a connection has something to send.
const SEND_BUF: usize = 512 * 1024;
/// Send buffers kept in a shard's pool when no connection needs them.
const SEND_POOL: usize = 64;
/// Commands taken from the queue per loop turn, so that I/O keeps being served.
const COMMANDS_PER_TURN: usize = 8192;
/// How soon a shard holding messages the application's full channel refused tries again.
const UNDELIVERED_RETRY: Duration = Duration::from_millis(1);

/// How long a stopping shard waits for CLOSE frames and cancellations to complete.
const SHUTDOWN_GRACE: Duration = Duration::from_secs(2);

/// What other threads ask of a shard.
pub(crate) enum Command {
    Connect {
        peer: PeerId,
        addr: SocketAddr,
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

/// State shared by all shards and the `Node` handles.
pub(crate) struct Shared {
    pub shards: Vec<ShardHandle>,
    pub events: async_channel::Sender<Event>,
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
    /// Registered send buffers over all shards.
    pub registered_send_buffers: AtomicU64,
    /// Whether the short-memlock warning was given (once per node).
    pub memlock_warned: AtomicBool,
    /// Inbound connections handed from the accepting shard to their peer's shard.
    pub handoffs: AtomicU64,
    /// Each shard's ring descriptor (-1 until it starts), for MSG_RING wake-ups between shards.
    pub ring_fds: Vec<std::sync::atomic::AtomicI32>,
    /// Each peer's last reported state and direction (entries leave when Disconnected).
    pub states: std::sync::Mutex<
        HashMap<
            PeerId,
            (
                glueberry_transport::ConnState,
                Option<glueberry_transport::Direction>,
            ),
        >,
    >,
    /// The connection manager's limits and counts.
    pub limits: Arc<crate::limits::Limits>,
    /// Filtered event subscriptions.
    pub subscribers: std::sync::Mutex<Vec<crate::node::Subscriber>>,
    pub next_subscriber: AtomicU64,
    /// The address book, when the node has one: shards record when peers are seen.
    pub book: std::sync::Mutex<Option<crate::address_book::AddressBook>>,
    /// Operations whose completion never arrived before a shard exited (their buffers are
    /// leaked rather than freed under the kernel). Zero unless something is wrong.
    pub abandoned_operations: AtomicU64,
    /// Makes outbound connections instead of TCP, for a [`crate::testing::TestNetwork`].
    pub dialer: Option<Arc<dyn crate::testing::Dialer>>,
    /// This node's own Prometheus recorder, when its metrics endpoint is on.
    pub recorder: Option<Arc<metrics_exporter_prometheus::PrometheusRecorder>>,
}

/// A connection's socket and the operations in flight on it.
struct ConnIo {
    fd: OwnedFd,
    connected: bool,
    recv: Option<usize>,
    send: Option<usize>,
    send_buf: Option<Vec<u8>>,
    /// Final bytes to send once the current send completes, then close.
    closing: Option<Vec<u8>>,
    /// To be handed to the owner shard once idle.
    handoff: bool,
    /// For an inbound socket: its place in its IP's count, given back when this drops.
    ip_slot: Option<crate::limits::IpSlot>,
}

impl ConnIo {
    fn new(fd: OwnedFd, connected: bool) -> Self {
        Self {
            fd,
            connected,
            recv: None,
            send: None,
            send_buf: None,
            closing: None,
            handoff: false,
            ip_slot: None,
        }
    }

    fn idle(&self) -> bool {
        self.recv.is_none() && self.send.is_none()
    }
}

pub(crate) struct Shard {
    index: usize,
    ring: Ring,
    core: NodeCore,
    listener: OwnedFd,
    accept: Option<usize>,
    wake_fd: Arc<OwnedFd>,
    sleeping: Arc<AtomicBool>,
    commands: Arc<CommandQueue<Command>>,
    shared: Arc<Shared>,
    conns: HashMap<ConnId, ConnIo>,
    completions: Vec<Completion>,
    /// The routes of this shard's peers, kept while the peer is known.
    peer_routes: HashMap<PeerId, Vec<Arc<RouteShared>>>,
    /// Each live connection's routes, by stream id: where written messages give back room.
    conn_routes: HashMap<ConnId, Vec<Option<Arc<RouteShared>>>>,
    /// Delivery to the application: per destination, held while its channel is full.
    outbox: Outbox,
    /// Connections to hand off whose adoption the owner's queue had no room for yet.
    handoffs: VecDeque<(
        usize,
        OwnedFd,
        Box<Connection>,
        Option<crate::limits::IpSlot>,
    )>,
    names: HashMap<Box<str>, StreamName>,
    /// Idle send buffers, lent to connections while they have something to send.
    send_pool: Vec<Vec<u8>>,
    /// Free registered send buffers (indices into the ring's registered set).
    fixed_free: Vec<u16>,
    registered: usize,
    metrics: ShardMetrics,
    /// The stream of the last message sent, with its counters: consecutive sends on one stream
    /// skip the lookup.
    last_sent: Option<(StreamName, StreamMetrics)>,
    /// The same for the last message received.
    last_received: Option<(StreamName, StreamMetrics)>,
    /// When each peer's connection attempt began (dial or accept), for the handshake duration.
    attempt_started: HashMap<PeerId, Instant>,
    /// Warnings caused by peers, limited so that a hostile peer cannot flood the log.
    peer_warnings: RateLimit,
    /// When a command or a completion last arrived (for polling before sleeping).
    last_work: Instant,
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

impl Shard {
    #[allow(clippy::too_many_arguments)]
    pub(crate) fn new(
        index: usize,
        ring: Ring,
        core: NodeCore,
        listener: OwnedFd,
        wake_fd: Arc<OwnedFd>,
        sleeping: Arc<AtomicBool>,
        commands: Arc<CommandQueue<Command>>,
        shared: Arc<Shared>,
        messages: Channel,
    ) -> Self {
        let message_buffer_bytes = shared.message_buffer_bytes;
        Self {
            index,
            ring,
            core,
            listener,
            accept: None,
            wake_fd,
            sleeping,
            commands,
            shared,
            conns: HashMap::new(),
            completions: Vec::with_capacity(1024),
            peer_routes: HashMap::new(),
            conn_routes: HashMap::new(),
            outbox: Outbox::new(messages, message_buffer_bytes),
            handoffs: VecDeque::new(),
            names: HashMap::new(),
            send_pool: Vec::with_capacity(SEND_POOL),
            fixed_free: Vec::new(),
            registered: 0,
            metrics: ShardMetrics::new(index),
            last_sent: None,
            last_received: None,
            attempt_started: HashMap::new(),
            peer_warnings: RateLimit::new(10),
            last_work: Instant::now(),
        }
    }

    /// Receives through a provided-buffer ring of `entries` buffers of 64 KiB (multishot) instead
    /// of one buffer per connection.
    pub(crate) fn provide_receive_buffers(&mut self, entries: u16) -> io::Result<()> {
        self.ring.provide_receive_buffers(entries, 64 * 1024)
    }

    /// This shard's ring descriptor (published for other shards' MSG_RING wake-ups).
    pub(crate) fn ring_fd(&self) -> std::os::fd::RawFd {
        self.ring.fd()
    }

    /// Registers the shard's send buffers (shrinking under a small memlock limit); returns how
    /// many were registered.
    pub(crate) fn register_send_buffers(&mut self, count: usize) -> usize {
        let registered = self.ring.register_send_buffers(count, SEND_BUF);
        self.fixed_free = (0..registered as u16).rev().collect();
        self.registered = registered;
        registered
    }

    /// The event loop; returns when the node stops.
    pub(crate) fn run(mut self) -> io::Result<()> {
        self.arm_accept()?;
        self.arm_wake()?;
        while !self.shared.stop.load(Ordering::Acquire) {
            let now = Instant::now();
            self.turn(now)?;
            let mut timeout = self
                .core
                .poll_timeout()
                .map(|t| t.saturating_duration_since(Instant::now()));
            if self.outbox.is_holding() {
                // The application reading its channel does not wake us: look again soon.
                timeout = Some(timeout.map_or(UNDELIVERED_RETRY, |t| t.min(UNDELIVERED_RETRY)));
            }
            let now = Instant::now();
            let busy = !self.commands.is_empty() || self.shared.stop.load(Ordering::Acquire);
            if busy {
                self.ring.submit()?;
            } else if now.saturating_duration_since(self.last_work) < self.shared.busy_poll {
                // Work came moments ago: more is likely. Look for completions without
                // sleeping (senders see the shard awake and skip the eventfd write).
                self.ring.submit_and_wait(Some(Duration::ZERO))?;
            } else {
                self.sleeping.store(true, Ordering::SeqCst);
                if self.commands.is_empty() && !self.shared.stop.load(Ordering::Acquire) {
                    self.ring.submit_and_wait(timeout)?;
                } else {
                    self.ring.submit()?;
                }
                self.sleeping.store(false, Ordering::SeqCst);
            }
            self.metrics.submissions.absolute(self.ring.pushed());
            self.handle_completions(Instant::now())?;
        }
        self.shutdown()
    }

    /// One loop turn: commands in, timers, actions, events out, I/O submitted.
    fn turn(&mut self, now: Instant) -> io::Result<()> {
        self.outbox.retry(&mut self.core);
        self.take_commands(now);
        if self.core.poll_timeout().is_some_and(|t| t <= now) {
            self.core.handle_timeout(now);
        }
        self.perform_actions(now)?;
        self.deliver_events();
        self.retry_handoffs();
        self.flush_sends()?;
        self.arm_recvs()?;
        Ok(())
    }

    fn take_commands(&mut self, now: Instant) {
        let commands = self.commands.clone();
        self.take_batch(&commands, now);
        commands.release_space();
    }

    fn take_batch(&mut self, commands: &CommandQueue<Command>, now: Instant) {
        for _ in 0..COMMANDS_PER_TURN {
            let Some(command) = commands.pop() else {
                return;
            };
            self.last_work = now;
            match command {
                Command::Send { route, data } => self.send(&route, data),
                Command::SendBatch { route, messages } => {
                    for data in messages {
                        self.send(&route, data);
                    }
                }
                Command::Connect { peer, addr } => {
                    self.core.add_peer(peer, Some(addr), true);
                    let _ = self.core.connect(peer, now);
                }
                Command::CompleteHandshake { peer, streams } => {
                    let names: Vec<&str> = streams.iter().map(String::as_str).collect();
                    if let Err(e) = self.core.complete_handshake(peer, &names, now) {
                        self.emit(Event::CommandFailed {
                            peer,
                            error: e.to_string(),
                        });
                    }
                }
                Command::Disconnect { peer } => {
                    let _ = self.core.disconnect(peer, now);
                }
                Command::Stats { peer, reply } => {
                    let stats = match peer {
                        Some(p) => self.core.peer_stats(p, now).into_iter().collect(),
                        None => self.core.all_stats(now),
                    };
                    let _ = reply.try_send(stats);
                }
                Command::Outstanding { reply } => {
                    let _ = reply.try_send(self.core.outstanding_messages());
                }
                Command::CancelReconnect { peer } => {
                    let _ = self.core.cancel_reconnect(peer);
                }
                Command::Blacklist { peer, blacklisted } => {
                    self.core.set_blacklisted(peer, blacklisted, now);
                }
                Command::Outlet { name, channel } => self.outbox.add(&name, channel),
                Command::Accepted { fd } => match self.core.handle_accepted(now) {
                    Some(id) => {
                        self.conns.insert(id, ConnIo::new(fd, true));
                    }
                    None => self.emit(Event::Refused {
                        peer: None,
                        address: None,
                        reason: "too many pending handshakes".into(),
                    }),
                },
                Command::Adopt { fd, conn, ip_slot } => {
                    if let Some(id) = self.core.adopt(*conn, now) {
                        let mut io = ConnIo::new(fd, true);
                        io.ip_slot = ip_slot;
                        self.conns.insert(id, io);
                    }
                }
            }
        }
    }

    /// Queues a message on its route's connection. It had room reserved, so the transport
    /// takes it unless the connection is gone (or the stream was rejected): then it comes back.
    fn send(&mut self, route: &Arc<RouteShared>, data: Bytes) {
        let len = data.len();
        let (error, data) = match route.binding() {
            Some((conn, stream)) => match self.core.send_on(conn, stream, data) {
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
                Err((e, data)) => (e.to_string(), data),
            },
            None => (
                "the peer is not Established with this stream open".to_string(),
                data,
            ),
        };
        route.release(1, len as u64);
        self.metrics.messages_dropped.increment(1);
        self.emit(Event::SendFailed {
            peer: route.peer,
            stream: route.name.clone(),
            error,
            data,
        });
    }

    /// Binds the peer's routes to its connection's streams and opens them (on Connected: the
    /// `handshake` stream; on Established: every stream).
    fn bind_routes(&mut self, peer: PeerId) {
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
        self.conn_routes.insert(conn, by_stream);
    }

    /// The peer's connection ended: its routes close, and are retired if the peer is forgotten
    /// (a sender holding one resolves the name again).
    fn unbind_routes(&mut self, peer: PeerId, forget: bool) {
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
    fn route_named(&self, peer: PeerId, name: &str) -> Option<&Arc<RouteShared>> {
        self.peer_routes
            .get(&peer)?
            .iter()
            .find(|r| &*r.name == name)
    }

    fn perform_actions(&mut self, now: Instant) -> io::Result<()> {
        while let Some(action) = self.core.poll_action() {
            match action {
                Action::Dial { conn, addr } if self.shared.dialer.is_some() => {
                    let dialer = self.shared.dialer.as_ref().map(|d| d.dial(addr));
                    match dialer {
                        Some(Ok(fd)) => {
                            self.conns.insert(conn, ConnIo::new(fd, true));
                            self.core.handle_dial_result(conn, Ok(()), now);
                        }
                        Some(Err(e)) => self.core.handle_dial_result(conn, Err(e.to_string()), now),
                        None => {}
                    }
                }
                Action::Dial { conn, addr } => match socket::connecting(addr) {
                    Ok(fd) => {
                        let raw = fd.as_raw_fd();
                        self.conns.insert(conn, ConnIo::new(fd, false));
                        let addr = Box::new(socket2::SockAddr::from(addr));
                        self.ring.push(raw, Op::Connect { conn, addr })?;
                    }
                    Err(e) => self.core.handle_dial_result(conn, Err(e.to_string()), now),
                },
                Action::Close { conn, last_bytes } => {
                    if let Some(io) = self.conns.get_mut(&conn) {
                        io.closing = Some(last_bytes);
                        if let Some(key) = io.recv {
                            self.ring.cancel(key)?;
                        }
                    }
                }
                Action::Handoff { conn, .. } => {
                    if let Some(io) = self.conns.get_mut(&conn) {
                        io.handoff = true;
                        if let Some(key) = io.recv {
                            self.ring.cancel(key)?;
                        }
                    }
                }
            }
        }
        self.settle_idle_conns()
    }

    /// Closes or hands off connections that asked for it once no I/O is in flight on them.
    fn settle_idle_conns(&mut self) -> io::Result<()> {
        let ready: Vec<ConnId> = self
            .conns
            .iter()
            .filter(|(_, io)| (io.closing.is_some() || io.handoff) && io.idle())
            .map(|(id, _)| *id)
            .collect();
        for id in ready {
            let Some(mut io) = self.conns.remove(&id) else {
                continue;
            };
            if let Some(last) = io.closing.take() {
                if !last.is_empty() && io.connected {
                    // One last send (the CLOSE frame); the socket closes when it completes.
                    let raw = io.fd.as_raw_fd();
                    let end = last.len();
                    let key = self.ring.push(
                        raw,
                        Op::Send {
                            conn: id,
                            buf: last,
                            start: 0,
                            end,
                        },
                    )?;
                    io.send = Some(key);
                    io.closing = Some(Vec::new());
                    self.conns.insert(id, io);
                }
                // Otherwise dropping `io` closes the socket.
                continue;
            }
            if let Some(conn) = self.core.detach(id) {
                let owner = conn
                    .peer()
                    .map_or(0, |p| shard_of(&p, self.shared.shards.len()));
                let slot = io.ip_slot.take();
                self.handoffs
                    .push_back((owner, io.fd, Box::new(conn), slot));
            }
        }
        Ok(())
    }

    fn retry_handoffs(&mut self) {
        while let Some((owner, fd, conn, ip_slot)) = self.handoffs.pop_front() {
            let handle = &self.shared.shards[owner];
            match handle
                .commands
                .try_push_control(Command::Adopt { fd, conn, ip_slot })
            {
                Ok(()) => {
                    self.shared.handoffs.fetch_add(1, Ordering::Relaxed);
                    // Shard to shard: a completion posted on the owner's ring (MSG_RING) wakes
                    // it without a system call of its own; the eventfd is the fallback.
                    let ring_fd = self.shared.ring_fds[owner].load(Ordering::Acquire);
                    if ring_fd < 0 || self.ring.push(ring_fd, Op::MsgRing).is_err() {
                        handle.wake();
                    }
                }
                Err(Refused::Full(Command::Adopt { fd, conn, ip_slot })) => {
                    self.metrics.handoff_stalls.increment(1);
                    self.handoffs.push_front((owner, fd, conn, ip_slot));
                    return;
                }
                // The owner stopped (or the command came back changed, which cannot happen).
                Err(_) => {}
            }
        }
    }

    fn flush_sends(&mut self) -> io::Result<()> {
        for (&id, io) in &mut self.conns {
            if !io.connected || io.send.is_some() || io.closing.is_some() || io.handoff {
                continue;
            }
            if !self.core.has_pending_output(id) {
                continue;
            }
            if let Some(index) = self.fixed_free.pop() {
                let Some(fixed) = self.ring.fixed_mut(index) else {
                    continue;
                };
                let n = self.core.poll_transmit(id, fixed);
                release_written(&mut self.core, &self.conn_routes, id);
                if n == 0 {
                    self.fixed_free.push(index);
                    continue;
                }
                record_batch(&self.metrics, &fixed[..n]);
                let op = Op::SendFixed {
                    conn: id,
                    index,
                    start: 0,
                    end: n,
                };
                io.send = Some(self.ring.push(io.fd.as_raw_fd(), op)?);
                continue;
            }
            let mut buf = io
                .send_buf
                .take()
                .or_else(|| self.send_pool.pop())
                .unwrap_or_else(|| vec![0u8; SEND_BUF]);
            let n = self.core.poll_transmit(id, &mut buf);
            release_written(&mut self.core, &self.conn_routes, id);
            if n == 0 {
                if self.send_pool.len() < SEND_POOL {
                    self.send_pool.push(buf);
                }
                continue;
            }
            if self.registered > 0 {
                self.metrics.send_buffers_exhausted.increment(1);
            }
            record_batch(&self.metrics, &buf[..n]);
            let key = self.ring.push(
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
        self.metrics
            .send_buffers_in_use
            .set((self.registered - self.fixed_free.len()) as f64);
        Ok(())
    }

    fn arm_recvs(&mut self) -> io::Result<()> {
        let provided = self.ring.has_provided_buffers();
        for (&id, io) in &mut self.conns {
            if !io.connected || io.recv.is_some() || io.closing.is_some() || io.handoff {
                continue;
            }
            if provided {
                // One multishot receive per connection; the kernel takes a buffer from the
                // shard's ring only when data arrives.
                let key = self
                    .ring
                    .push(io.fd.as_raw_fd(), Op::RecvMulti { conn: id })?;
                io.recv = Some(key);
                continue;
            }
            // The start of a record still in flight goes first; the kernel writes after it, so
            // the connection gets whole records without copying them again.
            let pending = self.core.take_pending_input(id);
            let mut buf = Vec::with_capacity(RECV_BUF.max(pending.len() + RECV_BUF / 2));
            buf.extend_from_slice(&pending);
            let key = self
                .ring
                .push(io.fd.as_raw_fd(), Op::Recv { conn: id, buf })?;
            io.recv = Some(key);
        }
        Ok(())
    }

    fn arm_accept(&mut self) -> io::Result<()> {
        self.accept = Some(self.ring.push(self.listener.as_raw_fd(), Op::Accept)?);
        Ok(())
    }

    fn arm_wake(&mut self) -> io::Result<()> {
        let buf = Box::new([0u8; 8]);
        self.ring.push(self.wake_fd.as_raw_fd(), Op::Wake { buf })?;
        Ok(())
    }

    fn handle_completions(&mut self, now: Instant) -> io::Result<()> {
        let mut completions = std::mem::take(&mut self.completions);
        self.ring.reap(&mut completions);
        if !completions.is_empty() {
            self.last_work = now;
        }
        self.metrics.completions.increment(completions.len() as u64);
        for c in completions.drain(..) {
            self.handle_completion(c, now)?;
        }
        self.completions = completions;
        self.settle_idle_conns()
    }

    fn handle_completion(&mut self, c: Completion, now: Instant) -> io::Result<()> {
        if c.key as u64 == WAKE_TOKEN {
            // Another shard woke us (MSG_RING): its command is taken in the next turn.
            return Ok(());
        }
        if Some(c.key) == self.accept {
            if c.result >= 0 {
                let fd = socket::own(c.result);
                let peer_addr = socket2::SockRef::from(&fd)
                    .peer_addr()
                    .ok()
                    .and_then(|a| a.as_socket());
                let slot = match peer_addr {
                    Some(addr) => match self.shared.limits.accept_from(addr.ip(), now) {
                        Ok(slot) => Some(slot),
                        Err(refusal) => {
                            // Over a per-IP limit: closed (by dropping it) before any work.
                            let reason = match refusal {
                                AcceptRefusal::TooMany => {
                                    "too many inbound connections from this IP"
                                }
                                AcceptRefusal::TooFast => {
                                    "too many connection attempts per second from this IP"
                                }
                            };
                            self.emit(Event::Refused {
                                peer: None,
                                address: Some(addr),
                                reason: reason.into(),
                            });
                            return Ok(());
                        }
                    },
                    None => None,
                };
                if let Some(addr) = peer_addr {
                    let ip = addr.ip();
                    let pending = self
                        .conns
                        .iter()
                        .filter(|(id, io)| {
                            io.ip_slot.as_ref().is_some_and(|s| s.ip() == ip)
                                && self.core.is_pending(**id)
                        })
                        .count();
                    if pending >= self.shared.limits.max_pending_per_ip() {
                        self.emit(Event::Refused {
                            peer: None,
                            address: Some(addr),
                            reason: "too many pending handshakes from this IP".into(),
                        });
                        return Ok(());
                    }
                }
                socket::tune(&fd);
                let Some(id) = self.core.handle_accepted(now) else {
                    // Too many handshakes pending on this shard: closed before any work.
                    self.emit(Event::Refused {
                        peer: None,
                        address: peer_addr,
                        reason: "too many pending handshakes".into(),
                    });
                    return Ok(());
                };
                let mut io = ConnIo::new(fd, true);
                io.ip_slot = slot;
                self.conns.insert(id, io);
            }
            if !c.more {
                self.ring.take(c.key);
                self.accept = None;
                if !self.shared.stop.load(Ordering::Acquire) {
                    self.arm_accept()?;
                }
            }
            return Ok(());
        }
        if c.more {
            // A multishot operation that stays armed.
            if let Some(Op::RecvMulti { conn }) = self.ring.get(c.key) {
                let conn = *conn;
                self.handle_provided_recv(conn, c, now);
            }
            return Ok(());
        }
        let Some(op) = self.ring.take(c.key) else {
            return Ok(());
        };
        match op {
            Op::Accept | Op::Cancel { .. } | Op::MsgRing => {}
            Op::Wake { .. } => {
                if !self.shared.stop.load(Ordering::Acquire) {
                    self.arm_wake()?;
                }
            }
            Op::Connect { conn, .. } => {
                let result = if c.result == 0 {
                    if let Some(io) = self.conns.get_mut(&conn) {
                        io.connected = true;
                    }
                    Ok(())
                } else {
                    Err(io::Error::from_raw_os_error(-c.result).to_string())
                };
                self.core.handle_dial_result(conn, result, now);
            }
            Op::RecvMulti { conn } => {
                if let Some(io) = self.conns.get_mut(&conn) {
                    io.recv = None;
                }
                // Its last completion: it may still carry data; re-armed by the next turn.
                self.handle_provided_recv(conn, c, now);
            }
            Op::Recv { conn, mut buf } => {
                let Some(io) = self.conns.get_mut(&conn) else {
                    return Ok(());
                };
                io.recv = None;
                let quiet = io.handoff || io.closing.is_some();
                if c.result > 0 {
                    received(&mut buf, c.result as usize);
                    self.core
                        .handle_input_buf(conn, BytesMut::from(Bytes::from(buf)), now);
                } else if c.result == -libc::ECANCELED
                    || c.result == -libc::EINTR
                    || c.result == -libc::EAGAIN
                    || quiet
                {
                    // Cancelled (close, handoff) or interrupted: give back the pending bytes
                    // taken for this receive; the next turn resubmits if still wanted.
                    self.core
                        .handle_input_buf(conn, BytesMut::from(Bytes::from(buf)), now);
                } else {
                    // 0 is the peer's FIN; anything else a socket error.
                    self.core.handle_eof(conn, now);
                }
            }
            Op::SendFixed {
                conn,
                index,
                start,
                end,
            } => {
                let Some(io) = self.conns.get_mut(&conn) else {
                    self.fixed_free.push(index);
                    return Ok(());
                };
                io.send = None;
                match SendProgress::of(c.result, start, end) {
                    SendProgress::Resubmit { start } => {
                        let op = Op::SendFixed {
                            conn,
                            index,
                            start,
                            end,
                        };
                        io.send = Some(self.ring.push(io.fd.as_raw_fd(), op)?);
                        return Ok(());
                    }
                    SendProgress::Done => {}
                    SendProgress::Failed => self.core.handle_eof(conn, now),
                }
                self.fixed_free.push(index);
            }
            Op::Send {
                conn,
                buf,
                start,
                end,
            } => {
                let Some(io) = self.conns.get_mut(&conn) else {
                    return Ok(());
                };
                io.send = None;
                match SendProgress::of(c.result, start, end) {
                    SendProgress::Resubmit { start } => {
                        let op = Op::Send {
                            conn,
                            buf,
                            start,
                            end,
                        };
                        io.send = Some(self.ring.push(io.fd.as_raw_fd(), op)?);
                        return Ok(());
                    }
                    SendProgress::Done => {}
                    SendProgress::Failed => self.core.handle_eof(conn, now),
                }
                if let Some(io) = self.conns.get_mut(&conn) {
                    if io.closing.as_ref().is_some_and(Vec::is_empty) && io.idle() {
                        // The CLOSE frame went out: done.
                        self.conns.remove(&conn);
                    } else if self.core.has_pending_output(conn) {
                        io.send_buf = Some(buf);
                    } else if buf.len() == SEND_BUF && self.send_pool.len() < SEND_POOL {
                        // Idle: the buffer goes back to the pool.
                        self.send_pool.push(buf);
                    }
                }
            }
        }
        Ok(())
    }

    /// A multishot receive completed into a provided buffer (or ended).
    fn handle_provided_recv(&mut self, conn: ConnId, c: Completion, now: Instant) {
        let quiet = self
            .conns
            .get(&conn)
            .is_none_or(|io| io.handoff || io.closing.is_some());
        if c.result > 0 {
            if let Some(bid) = c.buffer {
                let data = self.ring.provided_data(bid, c.result as usize);
                self.core.handle_input(conn, data, now);
                self.ring.recycle(bid);
            }
            return;
        }
        if let Some(bid) = c.buffer {
            self.ring.recycle(bid);
        }
        let ended = c.result == 0
            || !matches!(
                -c.result,
                libc::ECANCELED | libc::ENOBUFS | libc::EINTR | libc::EAGAIN
            );
        if ended && !quiet && !c.more {
            // 0 is the peer's FIN; anything else a socket error.
            self.core.handle_eof(conn, now);
        }
    }

    fn deliver_events(&mut self) {
        while let Some(event) = self.core.poll_event() {
            match event {
                NodeEvent::Message {
                    peer,
                    conn,
                    stream,
                    name,
                    data,
                } => {
                    let name = StreamName::from_shared(name);
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
                    if let Some(handler) = &self.shared.handler {
                        handler(&peer, &name, &data);
                        self.core.release(conn, stream, data.len());
                        continue;
                    }
                    let message = Message {
                        peer,
                        stream: name,
                        data,
                    };
                    let name = message.stream.shared().clone();
                    self.outbox
                        .deliver(&mut self.core, &name, message, conn, stream);
                }
                NodeEvent::State {
                    peer,
                    state,
                    direction,
                    reason,
                } => {
                    let previous = {
                        let mut states =
                            self.shared.states.lock().unwrap_or_else(|p| p.into_inner());
                        if state == glueberry_transport::ConnState::Disconnected {
                            states.remove(&peer)
                        } else {
                            states.insert(peer, (state, direction))
                        }
                    };
                    self.observe_state(
                        peer,
                        previous.map(|p| p.0),
                        state,
                        direction,
                        reason.as_ref(),
                    );
                    if state == glueberry_transport::ConnState::Connected {
                        // Not on the data path: once per connection.
                        let mut guard = self.shared.book.lock().unwrap_or_else(|p| p.into_inner());
                        if let Some(book) = guard.as_mut() {
                            book.touch(&peer);
                            if let Err(e) = book.flush_if_due() {
                                tracing::warn!(error = %e, "address book write failed");
                            }
                        }
                    }
                    // Routes open before the application hears of the state, so that it can
                    // send as soon as it sees Connected or Established.
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
                    // Unsent messages still held their room; written ones gave it back.
                    if let Some(route) = self.route_named(peer, &name) {
                        let bytes = unsent.iter().map(|m| m.len() as u64).sum();
                        route.release(unsent.len() as u64, bytes);
                    }
                    self.emit(Event::Undelivered {
                        peer,
                        stream: StreamName::from_shared(name),
                        unsent,
                        unconfirmed,
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
                        reason: format!("{direction:?} connection refused: close code {}", code.0),
                    });
                }
                NodeEvent::Writable { .. } => {}
            }
        }
    }

    /// Metrics and logs of a peer's state change.
    fn observe_state(
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
                let streams = self
                    .core
                    .peer_stats(peer, now)
                    .map_or(0, |s| s.streams.len());
                tracing::info!(peer = %peer, streams, "handshake complete");
            }
            ConnState::Disconnected | ConnState::Cooldown | ConnState::Reconnecting => {
                let attempting = matches!(from, Some(ConnState::Connecting) | None);
                if attempting && self.attempt_started.remove(&peer).is_some() {
                    self.metrics.failed.increment(1);
                }
                let failed = matches!(reason, Some(CloseReason::Error(_)))
                    || matches!(reason, Some(CloseReason::Local(code)) if *code == CloseCode::HANDSHAKE_TIMEOUT);
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
                        let reason = reason.map(|r| sanitize(&format!("{r:?}")));
                        if from == Some(ConnState::Connecting) || to == ConnState::Cooldown {
                            tracing::warn!(peer = %peer, ?direction, state = ?to, reason, suppressed, "handshake failed");
                        } else {
                            tracing::warn!(peer = %peer, ?direction, state = ?to, reason, suppressed, "connection failed");
                        }
                    }
                } else {
                    tracing::info!(peer = %peer, state = ?to, reason = ?reason, "disconnected");
                }
            }
        }
        if matches!(to, ConnState::Established | ConnState::Disconnected)
            || from == Some(ConnState::Established)
        {
            let streams: usize = self
                .core
                .all_stats(now)
                .iter()
                .map(|s| s.streams.len())
                .sum();
            self.metrics.streams_active.set(streams as f64);
        }
    }

    fn stream_name(&mut self, peer: PeerId, stream: StreamId) -> StreamName {
        let name = self.core.stream_name(peer, stream).unwrap_or("?");
        if let Some(interned) = self.names.get(name) {
            return interned.clone();
        }
        let interned = StreamName::new(name);
        self.names.insert(name.into(), interned.clone());
        interned
    }

    fn emit(&self, event: Event) {
        {
            let mut subscribers = self
                .shared
                .subscribers
                .lock()
                .unwrap_or_else(|p| p.into_inner());
            for sub in subscribers.iter_mut().filter(|s| s.filter.matches(&event)) {
                if sub.missed > 0 {
                    match sub.tx.try_send(Event::Missed { count: sub.missed }) {
                        Ok(()) => sub.missed = 0,
                        Err(_) => {
                            sub.missed += 1;
                            self.shared.events_dropped.fetch_add(1, Ordering::Relaxed);
                            self.metrics.events_dropped.increment(1);
                            continue;
                        }
                    }
                }
                if sub.tx.try_send(event.clone()).is_err() {
                    sub.missed += 1;
                    self.shared.events_dropped.fetch_add(1, Ordering::Relaxed);
                    self.metrics.events_dropped.increment(1);
                }
            }
        }
        if self.shared.events.try_send(event).is_err() {
            self.shared.events_dropped.fetch_add(1, Ordering::Relaxed);
            self.metrics.events_dropped.increment(1);
        }
    }

    /// Closes every connection (CLOSE frames are sent), cancels what is in flight, and waits
    /// until every operation's completion has arrived, so that no buffer is freed under the
    /// kernel.
    /// Messages that never reached a connection (still in the command queue) go back to the application as unsent when the node stops, grouped by peer and
    /// stream in `send` order.
    fn hand_back_waiting(&mut self) {
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

    fn emit_unsent(&self, (peer, stream, unsent): (PeerId, StreamName, Vec<Bytes>)) {
        self.metrics
            .messages_undelivered
            .increment(unsent.len() as u64);
        self.emit(Event::Undelivered {
            peer,
            stream,
            unsent,
            unconfirmed: Vec::new(),
        });
    }

    fn shutdown(mut self) -> io::Result<()> {
        // No more MSG_RING wake-ups to this ring: its descriptor closes when the shard ends.
        self.shared.ring_fds[self.index].store(-1, Ordering::Release);
        let now = Instant::now();
        self.core.close_all(CloseCode::SHUTDOWN, now);
        self.perform_actions(now)?;
        self.deliver_events();
        self.hand_back_waiting();
        if let Some(key) = self.accept {
            self.ring.cancel(key)?;
        }
        let deadline = Instant::now() + SHUTDOWN_GRACE;
        let mut cancelled = false;
        while self.ring.in_flight() > 0 {
            let now = Instant::now();
            if now >= deadline && cancelled {
                break;
            }
            if now >= deadline || (self.conns.values().all(|io| io.send.is_none()) && !cancelled) {
                // CLOSE frames are out (or the grace is over): cancel everything left.
                let keys: Vec<usize> = self
                    .conns
                    .values()
                    .flat_map(|io| [io.recv, io.send])
                    .flatten()
                    .collect();
                for key in keys {
                    self.ring.cancel(key)?;
                }
                self.ring.cancel_all_wakes()?;
                cancelled = true;
            }
            self.ring.submit_and_wait(Some(Duration::from_millis(50)))?;
            self.handle_completions(Instant::now())?;
        }
        self.shared
            .abandoned_operations
            .fetch_add(self.ring.in_flight() as u64, Ordering::Relaxed);
        self.conns.clear();
        Ok(())
    }
}

/// Gives back the room of the messages `poll_transmit` just wrote into records, to their
/// routes: a stream's queue bound counts what is accepted and not yet written.
fn release_written(
    core: &mut NodeCore,
    routes: &HashMap<ConnId, Vec<Option<Arc<RouteShared>>>>,
    conn: ConnId,
) {
    let routes = routes.get(&conn);
    core.take_written(conn, |stream, messages, bytes| {
        if let Some(Some(route)) = routes.and_then(|r| r.get(usize::from(stream.index()))) {
            route.release(messages, bytes);
        }
    });
}

/// Records how many records went out in one send (handshake messages are not records).
fn record_batch(metrics: &ShardMetrics, sent: &[u8]) {
    let records = count_records(sent);
    if records > 0 {
        metrics.records_per_batch.record(records as f64);
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
