//! One shard: a thread pinned to a CPU, its I/O backend (io_uring, or epoll where io_uring is not
//! allowed), and the transport core of the peers it
//! owns. Nothing here is shared with other threads except the bounded queues in and out.

use std::collections::{HashMap, VecDeque};

use glueberry_transport::Slots;
use std::io;
use std::os::fd::{AsRawFd, OwnedFd};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use glueberry_crypto::PeerId;
use glueberry_transport::{Action, CloseCode, ConnId, Connection, DialError, NodeCore, shard_of};

use crate::channel::Channel;
use crate::metrics::{ShardMetrics, StreamMetrics};
use crate::route_table::RouteShared;
use crate::sys::io::Io;
use crate::sys::op::{Completion, Op};
use crate::sys::socket;
use crate::vocabulary::{Event, StreamName};
use outbox::Outbox;

mod accept;
mod complete;
mod events;
mod mailbox;
mod outbox;
mod queue;
mod requests;
mod send;
mod shared;

pub(crate) use events::{RateLimit, publish};
pub(crate) use mailbox::{Command, ShardHandle, push_command};
pub(crate) use queue::{CommandQueue, Refused};
pub(crate) use shared::{ExitGuard, PeerReport, Shared, deliver_resolved};

/// Size of a receive buffer (a fresh one per receive: it becomes the connection's receive
/// buffer, and messages are slices of it) while a connection is busy: its last receive filled
/// its buffer or got more than `QUIET_RECV` bytes, or a record is part-read.
const RECV_BUF: usize = 256 * 1024;
/// Size of a receive buffer while a connection is quiet (its last receive got at most
/// `QUIET_RECV` bytes and filled nothing). An idle connection's armed receive is most of what
/// it holds: 10,000 idle connections measured 18.3 KiB resident each with 256 KiB receives,
/// 7.0 KiB with 2 KiB ones (BENCHMARKS.md, "Memory per idle connection").
const QUIET_RECV_BUF: usize = 2 * 1024;
/// A receive of at most this many bytes makes a connection quiet (a keepalive, a vote, a
/// credit update); one that reads more than this from a connection that is catching up with
/// a busy peer does not.
const QUIET_RECV: usize = 512;
/// Size of a send buffer: eight 64 KiB records per send (512 KiB measured 1.2–1.4× the bulk
/// throughput of 256 KiB here: fewer, larger sends). Borrowed from the shard's pool only
/// while a connection has something to send.
const SEND_BUF: usize = 512 * 1024;
/// Send buffers kept in a shard's pool when no connection needs them.
const SEND_POOL: usize = 64;
/// How long a loop turn spends reading received input left from before, shared evenly between
/// the connections that have some: a peer that packs its records with tiny messages gets its
/// share of the shard's time and waits for the next turn for the rest, so every other
/// connection is served within a turn. Time, not frames or bytes: what a frame costs depends on
/// what it carries and on the build. One busy connection alone gets all of it.
const TURN_INPUT: Duration = Duration::from_micros(100);
/// Frames read between two looks at the clock (and all a fresh receive reads at once: the rest
/// waits for the turn's share).
const INPUT_CHUNK: usize = 16;
/// The same for a connection that is the only one with input left.
const LONE_CHUNK: usize = 128;
/// Commands taken from the queue per loop turn, so that I/O keeps being served.
const COMMANDS_PER_TURN: usize = 8192;
/// How soon a shard holding messages the application's full channel refused tries again.
const UNDELIVERED_RETRY: Duration = Duration::from_millis(1);

/// How long a stopping shard waits for CLOSE frames and cancellations to complete.
const SHUTDOWN_GRACE: Duration = Duration::from_secs(2);
/// How long a closing connection may wait for a send in flight (a peer whose TCP window stays
/// at zero never lets it complete); then the send is cancelled and the socket closed without
/// the CLOSE frame.
const CLOSE_GRACE: Duration = Duration::from_secs(2);

/// A connection's socket and the operations in flight on it.
struct ConnIo {
    fd: OwnedFd,
    connected: bool,
    recv: Option<usize>,
    send: Option<usize>,
    /// A connect in flight: the socket must outlive it (its descriptor number is in the
    /// kernel's hands until the completion arrives).
    connect: Option<usize>,
    send_buf: Option<Vec<u8>>,
    /// Final bytes to send once the current send completes, then close.
    closing: Option<Vec<u8>>,
    /// When the close was asked for; `None` once a stuck send was cancelled.
    closing_since: Option<Instant>,
    /// To be handed to the owner shard once idle.
    handoff: bool,
    /// For an inbound socket: its place in its IP's count, given back when this drops.
    ip_slot: Option<crate::limits::IpSlot>,
    /// For a dial: the addresses still to try if this one fails (a name resolved to several).
    alternatives: Vec<std::net::SocketAddr>,
    /// Whether its last receive filled its buffer or got more than `QUIET_RECV` bytes: the next
    /// one gets `RECV_BUF`, otherwise `QUIET_RECV_BUF`.
    busy: bool,
}

impl ConnIo {
    fn new(fd: OwnedFd, connected: bool) -> Self {
        Self {
            fd,
            connected,
            recv: None,
            send: None,
            connect: None,
            send_buf: None,
            closing: None,
            closing_since: None,
            handoff: false,
            ip_slot: None,
            alternatives: Vec::new(),
            busy: false,
        }
    }

    fn idle(&self) -> bool {
        self.recv.is_none() && self.send.is_none() && self.connect.is_none()
    }
}

pub(crate) struct Shard {
    index: usize,
    backend: Io,
    core: NodeCore,
    /// This shard's listeners (one per listen address) and the accept armed on each.
    listeners: Vec<OwnedFd>,
    accepts: Vec<Option<usize>>,
    wake_fd: Arc<OwnedFd>,
    sleeping: Arc<AtomicBool>,
    commands: Arc<CommandQueue<Command>>,
    shared: Arc<Shared>,
    /// Each connection's socket and I/O, in the slot the core's connection table gave it.
    conns: Slots<ConnIo>,
    /// Work lists: a loop turn looks at the connections on them, not at every connection.
    /// Connections with output (taken from the core each turn).
    ready: Vec<ConnId>,
    /// Connections whose receive is to be armed (new, or the last one completed).
    rearm: Vec<ConnId>,
    /// Connections with received input left unread (see `TURN_INPUT`): each turn reads the
    /// next share of each, and their receives are armed again only once all of it is read.
    unread: Vec<ConnId>,
    /// Connections asked to close or to be handed off, until their I/O is done.
    settling: Vec<ConnId>,
    /// Closing connections that may be stuck behind a send (see `CLOSE_GRACE`).
    closing: Vec<ConnId>,
    /// Peers that connected, for the address book's last-seen times (see `note_seen`).
    seen: Vec<PeerId>,
    /// Connections looked at in the last turn (the `connections_touched` metric).
    touched: usize,
    /// The change this turn in the bytes of receive buffers armed (`Shared::receive_buffer_bytes`).
    receive_armed: i64,
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
    /// Peers with several addresses: each dial tries them in turn.
    addresses: HashMap<PeerId, Vec<std::net::SocketAddr>>,
    /// Peers dialled by host name: resolved again before each dial.
    hosts: HashMap<PeerId, (Arc<str>, u16)>,
    /// Addresses just resolved for a peer's first dial (no second lookup for it).
    fresh: HashMap<PeerId, Vec<std::net::SocketAddr>>,
    /// Dials waiting for their name to resolve.
    resolving: HashMap<ConnId, PeerId>,
    /// Streams of each Established peer, and their sum (the `streams_active` gauge).
    streams_open: HashMap<PeerId, usize>,
    streams_active: usize,
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
    /// When to look for closing connections stuck behind a send (see `CLOSE_GRACE`).
    closing_check: Option<Instant>,
}

impl Shard {
    #[allow(clippy::too_many_arguments)]
    pub(crate) fn new(
        index: usize,
        backend: Io,
        core: NodeCore,
        listeners: Vec<OwnedFd>,
        wake_fd: Arc<OwnedFd>,
        sleeping: Arc<AtomicBool>,
        commands: Arc<CommandQueue<Command>>,
        shared: Arc<Shared>,
        messages: Channel,
    ) -> Self {
        let message_buffer_bytes = shared.message_buffer_bytes;
        Self {
            index,
            backend,
            core,
            accepts: vec![None; listeners.len()],
            listeners,
            wake_fd,
            sleeping,
            commands,
            shared,
            conns: Slots::new(),
            ready: Vec::new(),
            rearm: Vec::new(),
            unread: Vec::new(),
            settling: Vec::new(),
            closing: Vec::new(),
            seen: Vec::new(),
            touched: 0,
            receive_armed: 0,
            completions: Vec::with_capacity(1024),
            peer_routes: HashMap::new(),
            conn_routes: HashMap::new(),
            outbox: Outbox::new(messages, message_buffer_bytes),
            handoffs: VecDeque::new(),
            names: HashMap::new(),
            addresses: HashMap::new(),
            hosts: HashMap::new(),
            fresh: HashMap::new(),
            resolving: HashMap::new(),
            streams_open: HashMap::new(),
            streams_active: 0,
            send_pool: Vec::with_capacity(SEND_POOL),
            fixed_free: Vec::new(),
            registered: 0,
            metrics: ShardMetrics::new(index),
            last_sent: None,
            last_received: None,
            attempt_started: HashMap::new(),
            peer_warnings: RateLimit::new(10),
            last_work: Instant::now(),
            closing_check: None,
        }
    }

    /// Receives through a provided-buffer ring of `entries` buffers of 64 KiB (multishot) instead
    /// of one buffer per connection.
    pub(crate) fn provide_receive_buffers(&mut self, entries: u16) -> io::Result<()> {
        self.backend.provide_receive_buffers(entries, 64 * 1024)
    }

    /// This shard's ring descriptor (published for other shards' MSG_RING wake-ups), or -1 on
    /// the poll backend.
    pub(crate) fn ring_fd(&self) -> std::os::fd::RawFd {
        self.backend.fd()
    }

    /// Registers the shard's send buffers (shrinking under a small memlock limit); returns how
    /// many were registered.
    pub(crate) fn register_send_buffers(&mut self, count: usize) -> usize {
        if !socket::sigpipe_ignored() {
            // Fixed-buffer sends cannot carry MSG_NOSIGNAL: only ordinary sends here.
            if self.index == 0 {
                tracing::info!(
                    "SIGPIPE is not ignored in this process: sending from ordinary buffers \
                     (MSG_NOSIGNAL) rather than registered ones"
                );
            }
            return 0;
        }
        let registered = self.backend.register_send_buffers(count, SEND_BUF);
        self.fixed_free = (0..registered as u16).rev().collect();
        self.registered = registered;
        registered
    }

    /// The event loop; returns when the node stops.
    pub(crate) fn run(mut self) -> io::Result<()> {
        for index in 0..self.listeners.len() {
            self.arm_accept(index)?;
        }
        self.arm_wake()?;
        while !self.shared.stop.load(Ordering::Acquire) {
            let now = Instant::now();
            self.turn(now)?;
            let mut timeout = self
                .core
                .poll_timeout()
                .map(|t| t.saturating_duration_since(Instant::now()));
            if let Some(check) = self.closing_check {
                let wait = check.saturating_duration_since(Instant::now());
                timeout = Some(timeout.map_or(wait, |t| t.min(wait)));
            }
            if self.outbox.is_holding() {
                // The application reading its channel does not wake us: look again soon.
                timeout = Some(timeout.map_or(UNDELIVERED_RETRY, |t| t.min(UNDELIVERED_RETRY)));
            }
            let now = Instant::now();
            let busy = !self.commands.is_empty()
                || !self.unread.is_empty()
                || self.shared.stop.load(Ordering::Acquire);
            if busy {
                // Work waits: submit and look for completions without sleeping. (A plain submit
                // would not do: with DEFER_TASKRUN the kernel posts completions only when asked
                // for them, so a shard kept busy by one peer's input or by a stream of commands
                // would not see another peer's receive complete.)
                self.backend.submit_and_wait(Some(Duration::ZERO))?;
            } else if now.saturating_duration_since(self.last_work) < self.shared.busy_poll {
                // Work came moments ago: more is likely. Look for completions without
                // sleeping (senders see the shard awake and skip the eventfd write).
                self.backend.submit_and_wait(Some(Duration::ZERO))?;
            } else {
                self.sleeping.store(true, Ordering::SeqCst);
                if self.commands.is_empty() && !self.shared.stop.load(Ordering::Acquire) {
                    self.backend.submit_and_wait(timeout)?;
                } else {
                    self.backend.submit()?;
                }
                self.sleeping.store(false, Ordering::SeqCst);
            }
            self.metrics.submissions.absolute(self.backend.pushed());
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
        self.cancel_stuck_closes(now)?;
        self.deliver_events();
        if !self.commands.is_empty() {
            // A handler that answered inline, on this thread, queued its reply: it leaves
            // with this turn's sends, not one loop later.
            self.take_commands(now);
            self.perform_actions(now)?;
        }
        // After the events of fresh input are out: what a busy peer sent before waits for
        // them, not they for it.
        if self.read_unread() && !self.commands.is_empty() {
            // What the application sent meanwhile (an answer to this turn's events) leaves
            // with this turn's sends, not after the next turn's reading.
            let now = Instant::now();
            self.take_commands(now);
            self.perform_actions(now)?;
        }
        self.note_seen(false);
        self.retry_handoffs();
        self.flush_sends(now)?;
        self.arm_recvs()?;
        self.enforce_budget(now);
        self.metrics.turns.increment(1);
        self.metrics
            .touched
            .increment(std::mem::take(&mut self.touched) as u64);
        let armed = std::mem::take(&mut self.receive_armed);
        if armed != 0 {
            self.shared
                .receive_buffer_bytes
                .fetch_add(armed, Ordering::Relaxed);
        }
        Ok(())
    }

    /// Reads the next share of input of each connection that has some left (see `TURN_INPUT`),
    /// and delivers what it read, so that a peer flooding tiny messages waits its turn like
    /// everyone else. A connection whose input is all read gets its receive armed again.
    /// Returns whether it read any.
    fn read_unread(&mut self) -> bool {
        if self.unread.is_empty() {
            return false;
        }
        let mut unread = std::mem::take(&mut self.unread);
        self.touched += unread.len();
        let share = TURN_INPUT / unread.len() as u32;
        // Alone, a connection shares with nobody: fewer, larger chunks.
        let chunk = if unread.len() == 1 {
            LONE_CHUNK
        } else {
            INPUT_CHUNK
        };
        unread.retain(|&id| {
            let start = Instant::now();
            loop {
                let left = self.core.resume_input(id, chunk, Instant::now());
                // Delivered within the share, so that it is what the peer costs in all.
                self.deliver_events();
                if !left {
                    self.rearm.push(id);
                    return false;
                }
                if start.elapsed() >= share {
                    return true;
                }
            }
        });
        // Nothing added to the list meanwhile (only `arm_recvs` adds, at the end of a turn).
        self.unread = unread;
        true
    }

    /// Over the node-wide budget (`NodeConfig::send_budget`), the peer holding the most is cut
    /// with `OverBudget` by its shard (one cut per 100 ms node-wide, by whichever shard looks
    /// first): a peer that makes the node hold much, never an innocent newcomer.
    fn enforce_budget(&mut self, now: Instant) {
        self.enforce_receive_budget(now);
        if !self.shared.budget.should_cut(now) {
            return;
        }
        let Some((peer, shard, held)) = self.shared.routes.largest_holder() else {
            return;
        };
        tracing::warn!(
            peer = %peer,
            held,
            node_held = self.shared.budget.held(),
            budget = self.shared.budget.limit(),
            "the node's send budget is spent: the peer holding the most is cut"
        );
        self.metrics.budget_cuts.increment(1);
        let code = glueberry_transport::CloseCode::OverBudget;
        if shard == self.index {
            self.core.cut(peer, code, now);
        } else if let Some(handle) = self.shared.shards.get(shard) {
            let _ = push_command(handle, Command::Cut { peer, code });
        }
    }

    /// Over the node-wide receive budget (`NodeConfig::receive_budget`), the peer whose
    /// connection holds the most of what it sent is cut with `OverBudget`, by the shard that
    /// holds the most (its core keeps its sum; the walk for the largest is only made then).
    fn enforce_receive_budget(&mut self, now: Instant) {
        let budget = &self.shared.receive_budget;
        budget.set(self.index, self.core.received_held());
        if budget.held() <= budget.limit()
            || !budget.holds_most(self.index)
            || !budget.should_cut(now)
        {
            return;
        }
        let Some((peer, held)) = self.core.largest_receiver() else {
            return;
        };
        tracing::warn!(
            peer = %peer,
            held,
            node_held = budget.held(),
            budget = budget.limit(),
            "the node's receive budget is spent: the peer whose messages it holds most is cut"
        );
        self.metrics.budget_cuts.increment(1);
        self.core
            .cut(peer, glueberry_transport::CloseCode::OverBudget, now);
    }

    /// Closing connections whose send has waited `CLOSE_GRACE` (the peer's window is zero):
    /// the send is cancelled and the socket closes without its CLOSE frame, so that a peer
    /// that does not read cannot keep a closed connection's socket and buffers.
    fn cancel_stuck_closes(&mut self, now: Instant) -> io::Result<()> {
        if self.closing_check.is_none_or(|t| t > now) {
            return Ok(());
        }
        self.closing_check = None;
        let conns = &mut self.conns;
        self.closing
            .retain(|&id| conns.get(id).is_some_and(|io| io.closing_since.is_some()));
        for &id in &self.closing {
            let Some(io) = self.conns.get_mut(id) else {
                continue;
            };
            let Some(since) = io.closing_since else {
                continue;
            };
            if now.saturating_duration_since(since) < CLOSE_GRACE {
                let next = since + CLOSE_GRACE;
                self.closing_check = Some(self.closing_check.map_or(next, |t| t.min(next)));
                continue;
            }
            if let Some(key) = io.send {
                self.backend.cancel(key)?;
                io.closing = Some(Vec::new());
                io.closing_since = None;
            }
        }
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
                Command::Connect { peer, addrs } => {
                    // Addresses given now replace a host name given before.
                    self.hosts.remove(&peer);
                    self.core.add_peer(peer, addrs.first().copied(), true);
                    if addrs.len() > 1 {
                        self.addresses.insert(peer, addrs);
                    } else {
                        self.addresses.remove(&peer);
                    }
                    let _ = self.core.connect(peer, now);
                }
                Command::Resolved {
                    peer,
                    conn,
                    host,
                    port,
                    result,
                } => self.resolved(peer, conn, (host, port), result, now),
                Command::CompleteHandshake { peer, streams } => {
                    let names: Vec<&str> = streams.iter().map(String::as_str).collect();
                    if let Err(e) = self.core.complete_handshake(peer, &names, now) {
                        self.emit(Event::CommandFailed {
                            peer,
                            error: crate::vocabulary::Error::from(e).with_peer(peer),
                        });
                    }
                }
                Command::Disconnect { peer } => {
                    let _ = self.core.disconnect(peer, now);
                }
                Command::Evict { peer } => self.core.evict(peer, now),
                Command::Cut { peer, code } => self.core.cut(peer, code, now),
                #[allow(clippy::panic)] // asked for: the point is a shard that dies
                Command::Crash => panic!("shard {} crashed on request (testing)", self.index),
                Command::Persistent {
                    peer,
                    addr,
                    persistent,
                } => {
                    self.core.set_persistent(peer, persistent);
                    if let Some(addr) = addr {
                        self.core.add_peer(peer, Some(addr), true);
                        let _ = self.core.connect(peer, now);
                    }
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
                Command::RequestOutlet { name, channel } => {
                    self.outbox.add_requests(&name, channel)
                }
                Command::Accepted { fd } => match self.core.handle_accepted(None, now) {
                    Some(id) => {
                        self.add_conn(id, ConnIo::new(fd, true));
                    }
                    None => self.emit(Event::Refused {
                        peer: None,
                        address: None,
                        reason: crate::vocabulary::Refusal::Handshakes,
                    }),
                },
                Command::Adopt { fd, conn, ip_slot } => {
                    let remote = ip_slot.as_ref().map(crate::limits::IpSlot::ip);
                    if let Some(id) = self.core.adopt(*conn, remote, now) {
                        let mut io = ConnIo::new(fd, true);
                        io.ip_slot = ip_slot;
                        self.add_conn(id, io);
                    }
                }
            }
        }
    }

    fn perform_actions(&mut self, now: Instant) -> io::Result<()> {
        while let Some(action) = self.core.poll_action() {
            match action {
                Action::Dial { conn, addr, .. } if self.shared.dialer.is_some() => {
                    let dialer = self.shared.dialer.as_ref().map(|d| d.dial(addr));
                    match dialer {
                        Some(Ok(fd)) => {
                            self.add_conn(conn, ConnIo::new(fd, true));
                            self.core.handle_dial_result(conn, Ok(()), now);
                        }
                        Some(Err(e)) => {
                            self.core
                                .handle_dial_result(conn, Err(DialError::from(&e)), now)
                        }
                        None => {}
                    }
                }
                Action::Dial { conn, peer, addr } => {
                    if let Some(addrs) = self.fresh.remove(&peer) {
                        self.dial(conn, addrs, now);
                    } else if let Some(addrs) = self.addresses.get(&peer) {
                        self.dial(conn, addrs.clone(), now);
                    } else if let Some((host, port)) = self.hosts.get(&peer).cloned() {
                        let request = crate::resolve::Request {
                            peer,
                            conn: Some(conn),
                            host,
                            port,
                        };
                        let shared = &self.shared;
                        match shared
                            .resolver
                            .resolve(request, || deliver_resolved(shared))
                        {
                            Ok(()) => {
                                self.resolving.insert(conn, peer);
                            }
                            Err(e) => {
                                let error = DialError::Resolve(e.to_string());
                                self.core.handle_dial_result(conn, Err(error), now);
                            }
                        }
                    } else {
                        self.dial(conn, vec![addr], now);
                    }
                }
                Action::Close { conn, .. } if self.resolving.remove(&conn).is_some() => {
                    // Closed (timed out, disconnected) while its name was being resolved: the
                    // answer will be ignored.
                }
                Action::Close { conn, last_bytes } => {
                    if let Some(io) = self.conns.get_mut(conn) {
                        io.closing = Some(last_bytes);
                        io.closing_since = Some(now);
                        self.settling.push(conn);
                        self.closing.push(conn);
                        self.closing_check.get_or_insert(now + CLOSE_GRACE);
                        if let Some(key) = io.connect {
                            // Closed while still dialling: stop the connect; the socket closes
                            // when its completion arrives, not before.
                            self.backend.cancel(key)?;
                        }
                        if let Some(key) = io.recv {
                            self.backend.cancel(key)?;
                        }
                    }
                }
                Action::Handoff { conn, .. } => {
                    if let Some(io) = self.conns.get_mut(conn) {
                        io.handoff = true;
                        self.settling.push(conn);
                        if let Some(key) = io.recv {
                            self.backend.cancel(key)?;
                        }
                    }
                }
            }
        }
        self.settle_idle_conns()
    }

    /// Keeps a connection's socket in its slot; a connected one gets its receive armed.
    fn add_conn(&mut self, id: ConnId, io: ConnIo) {
        if io.connected {
            self.rearm.push(id);
        }
        self.conns.insert_at(id, io);
    }

    /// Dials `conn` at the first of `addrs`, keeping the rest to try in turn if it fails.
    fn dial(&mut self, conn: ConnId, mut addrs: Vec<std::net::SocketAddr>, now: Instant) {
        // Nothing to try: a name that resolved to no address.
        let mut error = DialError::Resolve("no address to dial".into());
        while !addrs.is_empty() {
            let addr = addrs.remove(0);
            let fd = match socket::connecting(addr) {
                Ok(fd) => fd,
                Err(e) => {
                    error = DialError::from(&e);
                    continue;
                }
            };
            let raw = fd.as_raw_fd();
            let mut io = ConnIo::new(fd, false);
            let target = Box::new(socket2::SockAddr::from(addr));
            match self.backend.push(raw, Op::Connect { conn, addr: target }) {
                Ok(key) => {
                    io.connect = Some(key);
                    io.alternatives = addrs;
                    self.add_conn(conn, io);
                    return;
                }
                Err(e) => {
                    self.backend.release(raw);
                    error = DialError::from(&e);
                }
            }
        }
        self.core.handle_dial_result(conn, Err(error), now);
    }

    /// A name resolved for `peer`'s first dial (`conn: None`) or for the dial `conn`.
    fn resolved(
        &mut self,
        peer: PeerId,
        conn: Option<ConnId>,
        host: (Arc<str>, u16),
        result: crate::resolve::Resolved,
        now: Instant,
    ) {
        match (conn, result) {
            (None, Ok(addrs)) => {
                let first = addrs.first().copied();
                self.addresses.remove(&peer);
                self.hosts.insert(peer, host);
                self.fresh.insert(peer, addrs);
                self.core.add_peer(peer, first, true);
                if let Err(e) = self.core.connect(peer, now) {
                    self.fresh.remove(&peer);
                    self.emit(Event::CommandFailed {
                        peer,
                        error: crate::vocabulary::Error::from(e).with_peer(peer),
                    });
                }
            }
            (None, Err(message)) => {
                // An operator's typo or a DNS outage: said in the log, rate-limited.
                if let Some(suppressed) = self.peer_warnings.allow(Instant::now()) {
                    let host = events::sanitize(&host.0);
                    let error = events::sanitize(&message);
                    tracing::warn!(peer = %peer, %host, %error, suppressed, "host name did not resolve");
                }
                self.emit(Event::CommandFailed {
                    peer,
                    error: crate::vocabulary::Error::from(crate::vocabulary::ResolveError {
                        host: host.0.to_string(),
                        message,
                    })
                    .with_peer(peer),
                });
            }
            (Some(conn), result) => {
                if self.resolving.remove(&conn).is_none() {
                    return; // The dial ended meanwhile.
                }
                match result {
                    Ok(addrs) => self.dial(conn, addrs, now),
                    Err(message) => {
                        let error = DialError::Resolve(message);
                        self.core.handle_dial_result(conn, Err(error), now);
                    }
                }
            }
        }
    }

    /// Closes or hands off connections that asked for it once no I/O is in flight on them.
    fn settle_idle_conns(&mut self) -> io::Result<()> {
        if self.settling.is_empty() {
            return Ok(());
        }
        let mut settling = std::mem::take(&mut self.settling);
        let conns = &self.conns;
        let mut ready = Vec::new();
        settling.retain(|&id| match conns.get(id) {
            Some(io) if io.idle() => {
                ready.push(id);
                false
            }
            Some(_) => true,
            None => false,
        });
        self.settling = settling;
        for id in ready {
            let Some(mut io) = self.conns.remove(id) else {
                continue;
            };
            self.backend.release(io.fd.as_raw_fd());
            if let Some(last) = io.closing.take() {
                if !last.is_empty() && io.connected {
                    // One last send (the CLOSE frame); the socket closes when it completes.
                    let raw = io.fd.as_raw_fd();
                    let end = last.len();
                    let key = self.backend.push(
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
                    self.conns.insert_at(id, io);
                }
                // Otherwise dropping `io` closes the socket.
                continue;
            }
            if let Some(conn) = self.core.detach(id) {
                let owner = conn
                    .peer()
                    .map_or(0, |p| shard_of(&p, self.shared.shards.len()));
                let mut slot = io.ip_slot.take();
                if let Some(slot) = slot.as_mut() {
                    // Handed off once authenticated: its handshake is done.
                    slot.handshake_done();
                }
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
                    if ring_fd < 0 || self.backend.push(ring_fd, Op::MsgRing).is_err() {
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

    /// Closes every connection (CLOSE frames are sent), cancels what is in flight, and waits
    /// until every operation's completion has arrived, so that no buffer is freed under the
    /// kernel.
    fn shutdown(mut self) -> io::Result<()> {
        // No more MSG_RING wake-ups to this ring: its descriptor closes when the shard ends.
        self.shared.ring_fds[self.index].store(-1, Ordering::Release);
        let now = Instant::now();
        self.core.close_all(CloseCode::Shutdown, now);
        self.perform_actions(now)?;
        self.deliver_events();
        self.note_seen(true);
        self.hand_back_waiting();
        for key in self.accepts.clone().into_iter().flatten() {
            self.backend.cancel(key)?;
        }
        let deadline = Instant::now() + SHUTDOWN_GRACE;
        let mut cancelled = false;
        while self.backend.in_flight() > 0 {
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
                    self.backend.cancel(key)?;
                }
                self.backend.cancel_all_wakes()?;
                cancelled = true;
            }
            self.backend
                .submit_and_wait(Some(Duration::from_millis(50)))?;
            self.handle_completions(Instant::now())?;
        }
        self.shared
            .abandoned_operations
            .fetch_add(self.backend.in_flight() as u64, Ordering::Relaxed);
        self.conns.clear();
        // The ring's descriptor is closed only once no shard can post to it any more (every
        // shard past its shutdown): a wake-up posted to a closed descriptor could land in
        // whatever ring reused its number. A shard that never gets there keeps this one open
        // (leaked) rather than risk it.
        self.shared.running_shards.fetch_sub(1, Ordering::AcqRel);
        let deadline = Instant::now() + SHUTDOWN_GRACE;
        while self.shared.running_shards.load(Ordering::Acquire) > 0 {
            if Instant::now() >= deadline {
                std::mem::forget(self.backend);
                return Ok(());
            }
            std::thread::sleep(Duration::from_millis(1));
        }
        Ok(())
    }
}
