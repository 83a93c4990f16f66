//! The in-memory network: many nodes' transport cores joined by simulated byte pipes, on a
//! virtual clock, with seeded latency, bandwidth, arbitrary chunking, stalls, connection drops
//! and partitions. Deterministic for a seed: a failing scenario prints its seed and replays.

use std::collections::{BTreeMap, HashSet, VecDeque};
use std::net::{Ipv4Addr, SocketAddr};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use glueberry_crypto::{HandshakeConfig, Identity, PeerId};
use glueberry_transport::{
    Action, ConnId, ConnState, ConnectionConfig, DialError, Jitter, NodeConfig, NodeCore,
    NodeError, NodeEvent, StreamId,
};

/// How the simulated links behave.
#[derive(Debug, Clone)]
pub struct LinkConfig {
    /// One-way delay.
    pub latency: Duration,
    /// Extra random delay per chunk, up to this much (order is kept, as TCP keeps it).
    pub jitter: Duration,
    /// Bytes per second per direction; `None` is unlimited.
    pub bandwidth: Option<u64>,
    /// Chunks handed to the receiver are cut at random points, at most this long.
    pub max_chunk: usize,
}

impl Default for LinkConfig {
    fn default() -> Self {
        Self {
            latency: Duration::from_millis(1),
            jitter: Duration::ZERO,
            bandwidth: None,
            max_chunk: 64 * 1024,
        }
    }
}

/// What the simulated application on a node does.
#[derive(Debug, Clone, Default)]
pub struct AppConfig {
    /// Streams it opens with `complete_handshake` as soon as a peer is Connected; with `None`
    /// it never completes the handshake (to test handshake timeouts).
    pub streams: Option<Vec<String>>,
    /// Streams whose messages it never consumes (a slow consumer).
    pub hold: Vec<String>,
}

/// A received message, as the application saw it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Received {
    /// The sender.
    pub from: PeerId,
    /// The stream name.
    pub stream: String,
    /// The bytes.
    pub data: Bytes,
    /// Virtual time since the simulation started.
    pub at: Duration,
}

/// One simulated node.
pub struct SimNode {
    /// Its transport core.
    pub core: NodeCore,
    /// Its listening address.
    pub addr: SocketAddr,
    /// Its identity.
    pub peer_id: PeerId,
    /// What its application does.
    pub app: AppConfig,
    /// Messages received, in order.
    pub received: Vec<Received>,
    /// Every state change, in order: (time, peer, state).
    pub states: Vec<(Duration, PeerId, ConnState)>,
    /// When each peer answered every stream this node opened (both sides Established).
    pub ready: Vec<(Duration, PeerId)>,
    /// Messages reported undeliverable because the peer did not open the stream.
    pub rejected: u64,
    /// Messages handed back when a connection closed, in report order.
    pub undelivered: Vec<Undelivered>,
}

/// Messages a node got back from a closed connection ([`NodeEvent::Undelivered`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Undelivered {
    /// The peer they were for.
    pub to: PeerId,
    /// The stream name.
    pub stream: String,
    /// Never written.
    pub unsent: Vec<Bytes>,
    /// Written, not confirmed.
    pub unconfirmed: Vec<Bytes>,
}

/// One direction of a simulated TCP connection.
struct Link {
    to_node: usize,
    to_conn: ConnId,
    queue: VecDeque<(Instant, Vec<u8>)>,
    /// Set when the sender closed: an EOF follows the queued bytes.
    fin: bool,
    /// When the link is free again (bandwidth).
    busy_until: Instant,
}

/// The network.
pub struct SimNetwork {
    start: Instant,
    now: Instant,
    rng: Jitter,
    link: LinkConfig,
    /// The nodes, by index.
    pub nodes: Vec<SimNode>,
    links: BTreeMap<(usize, ConnId), Link>,
    partitions: HashSet<(usize, usize)>,
    stalled: HashSet<(usize, usize)>,
    failed_dials: Vec<(Instant, usize, ConnId)>,
    buf: Vec<u8>,
    /// The seed, printed by failing tests.
    pub seed: u64,
}

impl SimNetwork {
    /// An empty network; `seed` decides every random choice.
    pub fn new(seed: u64, link: LinkConfig) -> Self {
        let start = Instant::now();
        Self {
            start,
            now: start,
            rng: Jitter::new(seed),
            link,
            nodes: Vec::new(),
            links: BTreeMap::new(),
            partitions: HashSet::new(),
            stalled: HashSet::new(),
            failed_dials: Vec::new(),
            buf: vec![0u8; 256 * 1024],
            seed,
        }
    }

    /// Adds a node with its own identity (from `seed_byte`), returns its index.
    pub fn add_node(&mut self, connection: ConnectionConfig, app: AppConfig) -> usize {
        self.add_node_with(connection, app, |config| config)
    }

    /// Adds a node, letting `tune` adjust its node config (timeouts, backoff).
    pub fn add_node_with(
        &mut self,
        connection: ConnectionConfig,
        app: AppConfig,
        tune: impl FnOnce(NodeConfig) -> NodeConfig,
    ) -> usize {
        let index = self.nodes.len();
        let mut seed = [0u8; 32];
        seed[..8].copy_from_slice(&self.seed.to_le_bytes());
        seed[8] = index as u8;
        seed[9] = 0x5e;
        let identity = Identity::from_seed(&seed);
        let handshake = match HandshakeConfig::new(&identity, "sim") {
            Ok(h) => Arc::new(h),
            Err(e) => panic!("handshake config: {e}"),
        };
        let mut config = tune(NodeConfig::new(Arc::new(connection), handshake));
        config.seed = self.seed ^ (index as u64 + 1);
        let addr = SocketAddr::from((Ipv4Addr::new(10, 0, 0, index as u8 + 1), 9000));
        self.nodes.push(SimNode {
            core: NodeCore::new(config),
            addr,
            peer_id: identity.peer_id(),
            app,
            received: Vec::new(),
            states: Vec::new(),
            ready: Vec::new(),
            rejected: 0,
            undelivered: Vec::new(),
        });
        index
    }

    /// Makes `b` known to `a` (with its address, reconnecting) and dials it.
    pub fn connect(&mut self, a: usize, b: usize) {
        let (peer, addr) = (self.nodes[b].peer_id, self.nodes[b].addr);
        let now = self.now;
        let core = &mut self.nodes[a].core;
        core.add_peer(peer, Some(addr), true);
        if let Err(e) = core.connect(peer, now) {
            panic!("connect {a} -> {b}: {e}");
        }
    }

    /// Makes `b` known to `a` so that `a` reconnects to it, without dialling now.
    pub fn know(&mut self, a: usize, b: usize) {
        let (peer, addr) = (self.nodes[b].peer_id, self.nodes[b].addr);
        self.nodes[a].core.add_peer(peer, Some(addr), true);
    }

    /// Cuts all traffic between the two groups (bytes are held, dials fail) until `heal`.
    pub fn partition(&mut self, left: &[usize], right: &[usize]) {
        for &a in left {
            for &b in right {
                self.partitions.insert((a.min(b), a.max(b)));
            }
        }
    }

    /// Ends every partition.
    pub fn heal(&mut self) {
        self.partitions.clear();
    }

    /// Holds bytes from `from` to `to` (a stall) until `unstall`.
    pub fn stall(&mut self, from: usize, to: usize) {
        self.stalled.insert((from, to));
    }

    /// Ends a stall.
    pub fn unstall(&mut self, from: usize, to: usize) {
        self.stalled.remove(&(from, to));
    }

    /// Drops every connection between `a` and `b` at once, as a network failure would: both
    /// ends see the byte stream end, and queued bytes are lost.
    pub fn drop_connections(&mut self, a: usize, b: usize) {
        let doomed: Vec<(usize, ConnId)> = self
            .links
            .iter()
            .filter(|((from, _), link)| {
                (*from == a && link.to_node == b) || (*from == b && link.to_node == a)
            })
            .map(|(key, _)| *key)
            .collect();
        for key in doomed {
            if let Some(link) = self.links.remove(&key) {
                self.nodes[link.to_node]
                    .core
                    .handle_eof(link.to_conn, self.now);
            }
        }
    }

    /// Virtual time since the start.
    pub fn elapsed(&self) -> Duration {
        self.now - self.start
    }

    /// The current virtual instant.
    pub fn now(&self) -> Instant {
        self.now
    }

    /// The state node `a` holds for node `b`.
    pub fn state(&self, a: usize, b: usize) -> ConnState {
        self.nodes[a].core.state(self.nodes[b].peer_id)
    }

    /// Queues a message from `a` to `b` on `stream`. Returns whether it was accepted.
    pub fn send(&mut self, a: usize, b: usize, stream: &str, data: Bytes) -> bool {
        let peer = self.nodes[b].peer_id;
        let core = &mut self.nodes[a].core;
        let Some(id) = core.stream_id(peer, stream) else {
            return false;
        };
        core.send(peer, id, data).is_ok()
    }

    /// Runs for `duration` of virtual time in steps of `step`.
    pub fn run_for(&mut self, duration: Duration, step: Duration) {
        let end = self.now + duration;
        while self.now < end {
            self.step(step);
        }
    }

    /// Runs until `done` holds or `limit` of virtual time passes; returns whether it held.
    pub fn run_until(
        &mut self,
        limit: Duration,
        step: Duration,
        mut done: impl FnMut(&SimNetwork) -> bool,
    ) -> bool {
        let end = self.now + limit;
        while self.now < end {
            if done(self) {
                return true;
            }
            self.step(step);
        }
        done(self)
    }

    /// Advances virtual time by `dt` and moves everything that is due.
    pub fn step(&mut self, dt: Duration) {
        self.now += dt;
        let now = self.now;
        for node in &mut self.nodes {
            if node.core.poll_timeout().is_some_and(|t| t <= now) {
                node.core.handle_timeout(now);
            }
        }
        self.fail_due_dials();
        // Actions and transmissions until quiet: one turn may unlock another (credits).
        for _ in 0..64 {
            let acted = self.perform_actions();
            let sent = self.transmit();
            let delivered = self.deliver();
            let handled = self.run_apps();
            if !(acted || sent || delivered || handled) {
                break;
            }
        }
    }

    fn fail_due_dials(&mut self) {
        let now = self.now;
        let (due, later): (Vec<_>, Vec<_>) =
            self.failed_dials.drain(..).partition(|(t, _, _)| *t <= now);
        self.failed_dials = later;
        for (_, node, conn) in due {
            let unreachable = DialError::Connect(std::io::ErrorKind::HostUnreachable);
            self.nodes[node]
                .core
                .handle_dial_result(conn, Err(unreachable), now);
        }
    }

    fn perform_actions(&mut self) -> bool {
        let mut any = false;
        for i in 0..self.nodes.len() {
            while let Some(action) = self.nodes[i].core.poll_action() {
                any = true;
                match action {
                    Action::Dial { conn, addr, .. } => self.dial(i, conn, addr),
                    // Every simulated node is a single shard: it owns all its peers.
                    Action::Handoff { .. } => {}
                    Action::Close { conn, last_bytes } => {
                        if let Some(link) = self.links.get_mut(&(i, conn)) {
                            if !last_bytes.is_empty() {
                                let at = self.now + self.link.latency;
                                link.queue.push_back((at, last_bytes));
                            }
                            link.fin = true;
                        }
                    }
                }
            }
        }
        any
    }

    fn dial(&mut self, from: usize, conn: ConnId, addr: SocketAddr) {
        let target = self.nodes.iter().position(|n| n.addr == addr);
        let reachable = target.filter(|&t| !self.partitions.contains(&(from.min(t), from.max(t))));
        let Some(to) = reachable else {
            self.failed_dials
                .push((self.now + self.link.latency * 2, from, conn));
            return;
        };
        let Some(remote) = self.nodes[to].core.handle_accepted(None, self.now) else {
            // Too many pending handshakes there: refused like a reset connection.
            self.failed_dials
                .push((self.now + self.link.latency * 2, from, conn));
            return;
        };
        for (a, ca, b, cb) in [(from, conn, to, remote), (to, remote, from, conn)] {
            self.links.insert(
                (a, ca),
                Link {
                    to_node: b,
                    to_conn: cb,
                    queue: VecDeque::new(),
                    fin: false,
                    busy_until: self.now,
                },
            );
        }
        self.nodes[from]
            .core
            .handle_dial_result(conn, Ok(()), self.now);
    }

    fn transmit(&mut self) -> bool {
        let mut any = false;
        let now = self.now;
        for i in 0..self.nodes.len() {
            let conns: Vec<ConnId> = self.nodes[i].core.connections().collect();
            for conn in conns {
                let Some(link) = self.links.get_mut(&(i, conn)) else {
                    continue;
                };
                if link.fin {
                    continue;
                }
                loop {
                    let n = self.nodes[i].core.poll_transmit(conn, &mut self.buf);
                    if n == 0 {
                        break;
                    }
                    any = true;
                    let start = link.busy_until.max(now);
                    let serialise = self.link.bandwidth.map_or(Duration::ZERO, |bps| {
                        Duration::from_nanos((n as u64).saturating_mul(1_000_000_000) / bps.max(1))
                    });
                    link.busy_until = start + serialise;
                    let jitter = if self.link.jitter.is_zero() {
                        Duration::ZERO
                    } else {
                        Duration::from_nanos(
                            self.rng.next_u64() % self.link.jitter.as_nanos() as u64,
                        )
                    };
                    // Never before the previous chunk: a TCP stream keeps its order.
                    let mut at = link.busy_until + self.link.latency + jitter;
                    if let Some((last, _)) = link.queue.back() {
                        at = at.max(*last);
                    }
                    link.queue.push_back((at, self.buf[..n].to_vec()));
                }
            }
        }
        any
    }

    fn deliver(&mut self) -> bool {
        let mut any = false;
        let now = self.now;
        let keys: Vec<(usize, ConnId)> = self.links.keys().copied().collect();
        for key in keys {
            let Some(link) = self.links.get_mut(&key) else {
                continue;
            };
            let (from, to) = (key.0, link.to_node);
            if self.partitions.contains(&(from.min(to), from.max(to)))
                || self.stalled.contains(&(from, to))
            {
                continue;
            }
            let to_conn = link.to_conn;
            while link.queue.front().is_some_and(|(at, _)| *at <= now) {
                let Some((_, bytes)) = link.queue.pop_front() else {
                    break;
                };
                any = true;
                let mut rest = &bytes[..];
                while !rest.is_empty() {
                    let cut = 1 + (self.rng.next_u64() as usize % self.link.max_chunk.max(1));
                    let (piece, tail) = rest.split_at(cut.min(rest.len()));
                    self.nodes[to].core.handle_input(to_conn, piece, now);
                    rest = tail;
                }
            }
            if link.fin && link.queue.is_empty() {
                self.links.remove(&key);
                self.nodes[to].core.handle_eof(to_conn, now);
                any = true;
            }
        }
        any
    }

    fn run_apps(&mut self) -> bool {
        let mut any = false;
        let now = self.now;
        let elapsed = self.elapsed();
        for node in &mut self.nodes {
            while let Some(event) = node.core.poll_event() {
                any = true;
                match event {
                    NodeEvent::State { peer, state, .. } => {
                        node.states.push((elapsed, peer, state));
                        if state == ConnState::Connected
                            && let Some(streams) = &node.app.streams
                        {
                            let names: Vec<&str> = streams.iter().map(String::as_str).collect();
                            match node.core.complete_handshake(peer, &names, now) {
                                Ok(()) => {}
                                // A stale event: the connection ended after it was queued
                                // (a later event in the queue says so), as an application
                                // polling events also sees. Anything else is a bug.
                                Err(NodeError::NotConnected | NodeError::UnknownPeer)
                                    if node.core.state(peer) != ConnState::Connected => {}
                                Err(e) => panic!("complete_handshake: {e}"),
                            }
                        }
                    }
                    NodeEvent::Message {
                        peer,
                        conn,
                        stream,
                        name,
                        data,
                    } => {
                        let name = name.to_string();
                        if !node.app.hold.contains(&name) {
                            node.core.release(conn, stream, data.len());
                        }
                        node.received.push(Received {
                            from: peer,
                            stream: name,
                            data,
                            at: elapsed,
                        });
                    }
                    NodeEvent::Ready { peer } => node.ready.push((elapsed, peer)),
                    NodeEvent::StreamRejected { unsent, .. } => node.rejected += unsent,
                    NodeEvent::Undelivered {
                        peer,
                        name,
                        unsent,
                        unconfirmed,
                        ..
                    } => node.undelivered.push(Undelivered {
                        to: peer,
                        stream: name.to_string(),
                        unsent,
                        unconfirmed,
                    }),
                    // Simulated nodes have no connection limits and admit everyone.
                    NodeEvent::Refused { .. } | NodeEvent::StrangerRefused { .. } => {}
                    NodeEvent::Writable { .. } | NodeEvent::Confirmed { .. } => {}
                }
            }
        }
        any
    }

    /// Messages from node `from` to node `to` on `stream`, in arrival order.
    pub fn received(&self, from: usize, to: usize, stream: &str) -> Vec<Bytes> {
        let sender = self.nodes[from].peer_id;
        self.nodes[to]
            .received
            .iter()
            .filter(|r| r.from == sender && r.stream == stream)
            .map(|r| r.data.clone())
            .collect()
    }

    /// Messages node `from` got back for node `to` on `stream`: (never sent, unconfirmed).
    pub fn undelivered(&self, from: usize, to: usize, stream: &str) -> (Vec<Bytes>, Vec<Bytes>) {
        let receiver = self.nodes[to].peer_id;
        let mut unsent = Vec::new();
        let mut unconfirmed = Vec::new();
        for u in &self.nodes[from].undelivered {
            if u.to == receiver && u.stream == stream {
                unsent.extend(u.unsent.iter().cloned());
                unconfirmed.extend(u.unconfirmed.iter().cloned());
            }
        }
        (unsent, unconfirmed)
    }

    /// The stream id node `a` uses towards `b` for `name`.
    pub fn stream_id(&self, a: usize, b: usize, name: &str) -> Option<StreamId> {
        self.nodes[a].core.stream_id(self.nodes[b].peer_id, name)
    }

    /// A random number from the network's generator (for workloads).
    pub fn random(&mut self) -> u64 {
        self.rng.next_u64()
    }
}
