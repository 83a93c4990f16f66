//! Glueberry measured: nodes on loopback, one shard each unless told otherwise, the sending and
//! the receiving node on different CPUs.

use std::net::{SocketAddr, TcpStream};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use bytes::Bytes;
use glueberry::crypto::{HandshakeConfig, Identity, Suite};
use glueberry::transport::{ConnState, Connection, ConnectionConfig};
use glueberry::{Event, Node, NodeConfig, NodeSendError};

use crate::Cipher;
use crate::figures::{self, Figures, Length, Progress};

/// How the Glueberry nodes are set up.
#[derive(Debug, Clone)]
pub(crate) struct Setup {
    pub cipher: Cipher,
    pub batching: bool,
    /// Shards of the receiving node (0: one per CPU).
    pub shards: usize,
    /// Streams per connection.
    pub streams: usize,
    /// Sending nodes (peers of the receiving node).
    pub peers: usize,
    /// The message size, which sets how many messages a stream queues: about 32 MiB worth.
    pub size: usize,
    /// Each node records metrics into a Prometheus recorder of its own (with its endpoint on
    /// a loopback port): shows what metrics cost when they are on.
    pub metrics: bool,
    /// Each stream's window (the bytes it may have in flight, `--window`): 16 MiB unless given
    /// for the throughput scenarios, the node's default (2 MiB) unless given where latency
    /// beside a transfer is measured.
    pub window: Option<u32>,
    /// How long each shard polls after its last work before sleeping (`--busy-poll MICROS`;
    /// the node's default when not given).
    pub busy_poll: Option<Duration>,
    /// The nodes' I/O backend (`--backend`; Auto unless given).
    pub backend: glueberry::Backend,
    /// Idle authenticated connections kept open to the receiving node while the latency and
    /// throughput scenarios measure (the `idle-peers` scenario).
    pub idle: usize,
    /// The latency scenario's echo server answers on an application thread reading
    /// `messages()` (`--app-thread-echo`) rather than inline, in a message handler on its shard
    /// thread (the default: what a responder that answers at once writes).
    pub app_thread_echo: bool,
}

impl Default for Setup {
    fn default() -> Self {
        Self {
            cipher: Cipher::ChaCha,
            batching: true,
            shards: 1,
            streams: 1,
            peers: 1,
            size: 64 * 1024,
            metrics: false,
            window: None,
            busy_poll: None,
            backend: glueberry::Backend::Auto,
            idle: 0,
            app_thread_echo: false,
        }
    }
}

impl Setup {
    fn suites(&self) -> &'static [Suite] {
        match self.cipher {
            Cipher::Aes => &[Suite::Aes256Gcm],
            Cipher::ChaCha | Cipher::DangerNull => &[Suite::ChaCha20Poly1305],
        }
    }

    fn connection(&self) -> ConnectionConfig {
        let window = self.window.unwrap_or(16 * 1024 * 1024);
        ConnectionConfig {
            initial_window: window,
            connection_window: window.saturating_mul(2),
            // A message must fit the window (PROTOCOL.md §5.4).
            max_message_size: (window as usize - 6)
                .min(ConnectionConfig::default().max_message_size),
            high_watermark: high_watermark(self.size),
            low_watermark: high_watermark(self.size) / 2,
            batching: self.batching,
            danger_null_cipher: self.cipher == Cipher::DangerNull,
            ..Default::default()
        }
    }

    /// A node configuration for this setup: no connection limits (every client of a local run
    /// comes from 127.0.0.1), deep queues.
    pub(crate) fn node_config(
        &self,
        identity: Identity,
        listen: std::net::SocketAddr,
        shards: usize,
    ) -> NodeConfig {
        let config = NodeConfig::new(identity, "glueberry-perf", listen)
            .shards(shards)
            .backend(self.backend)
            .suites(self.suites())
            .connection(self.connection())
            .command_queue(65_536)
            .message_buffer(65_536)
            .stream_queue(high_watermark(self.size), 32 * 1024 * 1024)
            .stream_priority(RPC_STREAM, 7)
            .stream_priority(BULK_STREAM, 0)
            .limits(unlimited());
        let config = match self.busy_poll {
            Some(window) => config.busy_poll(window),
            None => config,
        };
        match self.metrics {
            true => config.metrics(std::net::SocketAddr::from(([127, 0, 0, 1], 0))),
            false => config,
        }
    }

    fn node(&self, shards: usize, cpu: Option<usize>) -> Result<NodeConfig, String> {
        let identity = Identity::generate().map_err(|e| e.to_string())?;
        let listen = "127.0.0.1:0".parse().map_err(|e| format!("{e}"))?;
        let config = self.node_config(identity, listen, shards);
        Ok(match cpu {
            Some(cpu) => config.cpus(vec![cpu]),
            None => config,
        })
    }

    fn stream_names(&self) -> Vec<String> {
        (0..self.streams.max(1))
            .map(|i| format!("perf-{i}"))
            .collect()
    }
}

/// The latency-under-load scenario's streams: requests at the highest priority, the bulk
/// transfer beside them at the lowest.
const RPC_STREAM: &str = "perf-rpc";
const BULK_STREAM: &str = "perf-bulk";

/// Queue about 32 MiB per stream, between 16 and 100,000 messages.
fn high_watermark(size: usize) -> usize {
    (32 * 1024 * 1024 / size.max(1)).clamp(16, 100_000)
}

/// No per-group or total limits.
fn unlimited() -> glueberry::ConnectionLimits {
    glueberry::ConnectionLimits {
        max_inbound: usize::MAX / 2,
        max_outbound: usize::MAX / 2,
        max_total: usize::MAX / 2,
        max_inbound_per_group: usize::MAX / 2,
        max_pending_per_group: usize::MAX / 2,
        inbound_attempts_per_group_per_sec: u32::MAX / 4,
        stranger_handshakes_per_sec: u32::MAX / 4,
        ..Default::default()
    }
}

/// Waits until `node` has `peer` Established, completing the application handshake with
/// `streams` when it is Connected.
fn establish(
    node: &Node,
    peers: &[glueberry::crypto::PeerId],
    streams: &[&str],
) -> Result<(), String> {
    let events = node.events();
    let mut left = peers.len();
    while left > 0 {
        match events.recv_blocking().ok_or("node stopped")? {
            Event::State {
                peer,
                state: ConnState::Connected,
                ..
            } if peers.contains(&peer) => node
                .complete_handshake(peer, streams)
                .map_err(|e| e.to_string())?,
            Event::State {
                peer,
                state: ConnState::Established,
                ..
            } if peers.contains(&peer) => left -= 1,
            _ => {}
        }
    }
    Ok(())
}

/// `setup.peers` sending nodes connected to one receiving node, all Established.
fn nodes(setup: &Setup, handler: Option<glueberry::Handler>) -> Result<(Vec<Node>, Node), String> {
    let (send_cpu, recv_cpu) = if setup.shards == 1 {
        (Some(0), Some(1))
    } else {
        (None, None)
    };
    let mut receiver = setup.node(setup.shards, recv_cpu)?;
    if let Some(handler) = handler {
        receiver = receiver.handler(handler);
    }
    let receiver = Node::start(receiver).map_err(|e| e.to_string())?;
    let mut senders = Vec::new();
    for _ in 0..setup.peers.max(1) {
        senders.push(Node::start(setup.node(1, send_cpu)?).map_err(|e| e.to_string())?);
    }
    let names = setup.stream_names();
    let names: Vec<&str> = names.iter().map(String::as_str).collect();
    let ids: Vec<_> = senders.iter().map(Node::peer_id).collect();
    let waiter = {
        let (receiver, ids, names) = (receiver.clone(), ids.clone(), setup.stream_names());
        std::thread::spawn(move || {
            let names: Vec<&str> = names.iter().map(String::as_str).collect();
            establish(&receiver, &ids, &names)
        })
    };
    for sender in &senders {
        sender
            .connect(receiver.peer_id(), receiver.listen_addr())
            .map_err(|e| e.to_string())?;
        establish(sender, &[receiver.peer_id()], &names)?;
    }
    waiter.join().map_err(|_| "establishing panicked")??;
    // Both sides' OPEN frames have crossed once a round trip passed after Established.
    std::thread::sleep(Duration::from_millis(50));
    Ok((senders, receiver))
}

/// One-way throughput of `size`-byte messages from every sending node, on every stream.
pub(crate) fn throughput(
    setup: &Setup,
    size: usize,
    length: Length,
    report: Progress<'_>,
) -> Result<Figures, String> {
    let setup = &Setup {
        size,
        ..setup.clone()
    };
    let received = Arc::new(AtomicU64::new(0));
    let counter = received.clone();
    let (senders, receiver) = nodes(
        setup,
        Some(Arc::new(move |_, _, _| {
            counter.fetch_add(1, Ordering::Relaxed);
        })),
    )?;
    let _idle = idle_connections(&receiver, setup, senders.len())?;
    let stop = Arc::new(AtomicBool::new(false));
    let threads: Vec<_> = senders
        .iter()
        .map(|node| {
            let (node, to, stop) = (node.clone(), receiver.peer_id(), stop.clone());
            let routes: Vec<_> = setup
                .stream_names()
                .iter()
                .map(|s| node.route(to, s))
                .collect();
            let batched = setup.batching;
            std::thread::spawn(move || {
                let message = Bytes::from(vec![0x5au8; size]);
                // Sixteen messages per stream in turn, as one batch (one reservation, one queue
                // push, one wake-up); `send_batch` parks the thread while the stream is full.
                // Without batching (`--no-batching`), one `send` each.
                'run: while !stop.load(Ordering::Relaxed) {
                    for route in &routes {
                        let sent = if batched {
                            futures::executor::block_on(
                                node.send_batch(route, std::iter::repeat_n(message.clone(), 16)),
                            )
                        } else {
                            futures::executor::block_on(node.send_on(route, message.clone()))
                        };
                        if let Err(NodeSendError::Stopped) | Err(_) = sent {
                            break 'run;
                        }
                    }
                }
            })
        })
        .collect();
    let figures = figures::measure(&received, size, length, report);
    stop.store(true, Ordering::Relaxed);
    for thread in threads {
        let _ = thread.join();
    }
    for node in senders {
        node.stop_blocking();
    }
    receiver.stop_blocking();
    Ok(figures)
}

/// Request/response round trips of `size`-byte messages, one at a time.
pub(crate) fn latency(setup: &Setup, size: usize, duration: Duration) -> Result<Figures, String> {
    let one = Setup {
        peers: 1,
        streams: 1,
        size,
        ..setup.clone()
    };
    // Inline: the server's handler answers on its shard thread, through a handle to its own
    // node (set once the node runs); the reply leaves in the same shard turn.
    let server: Arc<std::sync::OnceLock<(Node, glueberry::PeerId, glueberry::StreamName)>> =
        Arc::default();
    let handler: Option<glueberry::Handler> = (!setup.app_thread_echo).then(|| {
        let server = server.clone();
        let handler: glueberry::Handler = Arc::new(move |_peer, _stream, data| {
            if let Some((node, to, stream)) = server.get() {
                let _ = node.try_send(*to, stream, data.clone());
            }
        });
        handler
    });
    let (mut senders, b) = nodes(&one, handler)?;
    let _idle = idle_connections(&b, setup, 1)?;
    let a = senders.pop().ok_or("no sending node")?;
    let _ = server.set((b.clone(), a.peer_id(), b.stream("perf-0")));
    let stop = Arc::new(AtomicBool::new(false));
    let echo = {
        let app_thread = setup.app_thread_echo;
        let (b, to, stop) = (b.clone(), a.peer_id(), stop.clone());
        std::thread::spawn(move || {
            let mut messages = b.messages();
            while app_thread && !stop.load(Ordering::Relaxed) {
                if let Some(m) = messages.recv_blocking()
                    && b.try_send(to, &m.stream, m.data).is_err()
                {
                    return;
                }
            }
        })
    };
    let stream = a.stream("perf-0");
    let mut messages = a.messages();
    let request = Bytes::from(vec![0x5au8; size]);
    let mut samples = figures::Latencies::new();
    let end = Instant::now() + duration;
    while Instant::now() < end {
        let start = Instant::now();
        a.try_send(b.peer_id(), &stream, request.clone())
            .map_err(|e| e.to_string())?;
        messages.recv_blocking().ok_or("node stopped")?;
        samples.record(start.elapsed());
    }
    stop.store(true, Ordering::Relaxed);
    a.stop_blocking();
    b.stop_blocking();
    let _ = echo.join();
    Ok(figures::percentiles(&samples, size, duration.as_secs_f64()))
}

/// `setup.idle` authenticated connections to `server` (which already has `busy` peers), each a
/// client with an identity of its own that finished the secure handshake and then sits idle:
/// it opens no stream and sends nothing, so a node keeps it as a Connected peer. Returned once
/// the node has taken all of them in; they close when dropped.
fn idle_connections(server: &Node, setup: &Setup, busy: usize) -> Result<Vec<TcpStream>, String> {
    let config = Arc::new(setup.connection());
    let mut sockets = Vec::with_capacity(setup.idle);
    for _ in 0..setup.idle {
        sockets.push(handshake_client(
            server.peer_id(),
            server.listen_addr(),
            &client_config(setup)?,
            &config,
        )?);
    }
    let start = Instant::now();
    while server.connection_counts().0 < busy + setup.idle
        && start.elapsed() < Duration::from_secs(30)
    {
        std::thread::sleep(Duration::from_millis(10));
    }
    if server.connection_counts().0 < busy + setup.idle {
        return Err(format!(
            "the node took {} of {} idle connections",
            server.connection_counts().0.saturating_sub(busy),
            setup.idle
        ));
    }
    // The handshakes' own work settles before anything is measured.
    std::thread::sleep(Duration::from_millis(50));
    Ok(sockets)
}

/// One busy peer beside `counts` idle ones (each count a fresh pair of nodes), interleaved over
/// `rounds`: request/response p50 and p99 and the 64 B rate, with ratios to the figures at the
/// first count (0). Printed as a table; returns the figures of the last count's last round.
pub(crate) fn idle_peers(
    setup: &Setup,
    counts: &[usize],
    rounds: usize,
    length: Length,
) -> Result<Figures, String> {
    let mut rows: Vec<Vec<(Figures, Figures)>> = vec![Vec::new(); counts.len()];
    for round in 0..rounds {
        for (i, &idle) in counts.iter().enumerate() {
            let setup = Setup {
                idle,
                ..setup.clone()
            };
            let latency = latency(&setup, 64, length.time())?;
            let rate = throughput(&setup, 64, length, &|_, _| {})?;
            eprintln!(
                "  round {round}, {idle} idle: p50 {:.1} µs, p99 {:.1} µs, 64 B {:.2} M msg/s",
                latency.p50_us,
                latency.p99_us,
                rate.messages_per_sec / 1e6
            );
            rows[i].push((latency, rate));
        }
    }
    let median = |mut v: Vec<f64>| {
        v.sort_by(f64::total_cmp);
        v[v.len() / 2]
    };
    let summary: Vec<(f64, f64, f64)> = rows
        .iter()
        .map(|r| {
            (
                median(r.iter().map(|(l, _)| l.p50_us).collect()),
                median(r.iter().map(|(l, _)| l.p99_us).collect()),
                median(r.iter().map(|(_, t)| t.messages_per_sec).collect()),
            )
        })
        .collect();
    let (p50_0, p99_0, rate_0) = summary[0];
    eprintln!();
    eprintln!("| idle peers | p50 µs | ÷ 0 idle | p99 µs | ÷ 0 idle | 64 B M msg/s | ÷ 0 idle |");
    eprintln!("|---|---|---|---|---|---|---|");
    for (&idle, &(p50, p99, rate)) in counts.iter().zip(&summary) {
        eprintln!(
            "| {idle} | {p50:.1} | ×{:.2} | {p99:.1} | ×{:.2} | {:.2} | ×{:.2} |",
            p50 / p50_0,
            p99 / p99_0,
            rate / 1e6,
            rate / rate_0
        );
    }
    let (latency, rate) = rows
        .last()
        .and_then(|r| r.last())
        .cloned()
        .ok_or("no idle-peers figures")?;
    Ok(Figures {
        messages_per_sec: rate.messages_per_sec,
        bytes_per_sec: rate.bytes_per_sec,
        messages: rate.messages,
        bytes: rate.bytes,
        ..latency
    })
}

/// A server node for the handshake and scale scenarios: one shard, no limits, few events.
fn server(setup: &Setup) -> Result<Node, String> {
    Node::start(setup.node(1, Some(1))?.event_buffer(1)).map_err(|e| e.to_string())
}

/// A client speaking the protocol with the transport core over a blocking socket: returns the
/// socket once the handshake completed (the node then holds an authenticated connection).
fn handshake_client(
    peer: glueberry::PeerId,
    addr: SocketAddr,
    handshake: &Arc<HandshakeConfig>,
    config: &Arc<ConnectionConfig>,
) -> Result<TcpStream, String> {
    let mut conn = Connection::outbound(
        config.clone(),
        handshake.clone(),
        Some(peer),
        Instant::now(),
    )
    .map_err(|e| e.to_string())?;
    let mut socket = TcpStream::connect(addr).map_err(|e| e.to_string())?;
    let _ = socket.set_nodelay(true);
    glueberry::transport::testing::handshake_blocking(&mut conn, &mut socket)
        .map_err(|e| e.to_string())?;
    Ok(socket)
}

fn client_config(setup: &Setup) -> Result<Arc<HandshakeConfig>, String> {
    let identity = Identity::generate().map_err(|e| e.to_string())?;
    Ok(Arc::new(
        HandshakeConfig::new(&identity, "glueberry-perf")
            .and_then(|c| c.with_suites(setup.suites()))
            .map_err(|e| e.to_string())?,
    ))
}

/// Complete handshakes per second against one node, one after another.
pub(crate) fn handshakes(setup: &Setup, duration: Duration) -> Result<Figures, String> {
    let server = server(setup)?;
    let handshake = client_config(setup)?;
    let config = Arc::new(setup.connection());
    let (start, mut count) = (Instant::now(), 0);
    while start.elapsed() < duration {
        drop(handshake_client(
            server.peer_id(),
            server.listen_addr(),
            &handshake,
            &config,
        )?);
        count += 1;
    }
    let figures = figures::rate(count, start);
    server.stop_blocking();
    Ok(figures)
}

/// `count` idle authenticated connections to one node, each from a peer of its own: the time
/// to make them all (one after another) and the resident memory each adds (both ends are in
/// this process; the client side keeps only a socket).
/// Above this many connections the dialling ends live in a child process (`glueberry-perf
/// scale-clients`): both ends in one process would need two descriptors per connection, and
/// this machine's hard limit is 20,000 (and only the node's memory is measured then).
const SCALE_IN_PROCESS: usize = 5_000;

pub(crate) fn scale(setup: &Setup, count: usize) -> Result<Figures, String> {
    let server = server(setup)?;
    let config = Arc::new(setup.connection());
    // Warm up allocator and rings with one connection first.
    let warm = handshake_client(
        server.peer_id(),
        server.listen_addr(),
        &client_config(setup)?,
        &config,
    )?;
    std::thread::sleep(Duration::from_millis(100));
    let before = figures::resident_bytes();
    let start = Instant::now();
    let mut sockets = Vec::new();
    let mut child = None;
    if count <= SCALE_IN_PROCESS {
        let clients = (0..count)
            .map(|_| client_config(setup))
            .collect::<Result<Vec<_>, _>>()?;
        sockets.reserve(count);
        for client in &clients {
            sockets.push(handshake_client(
                server.peer_id(),
                server.listen_addr(),
                client,
                &config,
            )?);
        }
    } else {
        child = Some(spawn_scale_clients(&server, count)?);
    }
    // Until the node has taken every connection in.
    while server.connection_counts().0 < count + 1 && start.elapsed() < Duration::from_secs(60) {
        std::thread::sleep(Duration::from_millis(10));
    }
    let taken = server.connection_counts().0.saturating_sub(1);
    let mut figures = figures::rate(taken as u64, start);
    std::thread::sleep(Duration::from_millis(100));
    let after = figures::resident_bytes();
    figures.bytes_per_connection = after.saturating_sub(before) as f64 / taken.max(1) as f64;
    drop(sockets);
    if let Some(mut child) = child {
        // Its stdin closing tells it to hang up.
        drop(child.stdin.take());
        let _ = child.wait();
    }
    drop(warm);
    server.stop_blocking();
    if taken < count {
        return Err(format!("only {taken} of {count} connections were taken in"));
    }
    Ok(figures)
}

/// `glueberry-perf scale-clients --connect ADDR --peer ID --count N`, started from this binary;
/// returns once it says every connection is authenticated.
fn spawn_scale_clients(server: &Node, count: usize) -> Result<std::process::Child, String> {
    use std::io::BufRead as _;
    let exe = std::env::current_exe().map_err(|e| e.to_string())?;
    let mut child = std::process::Command::new(exe)
        .args([
            "scale-clients",
            "--connect",
            &server.listen_addr().to_string(),
            "--peer",
            &server.peer_id().to_string(),
            "--count",
            &count.to_string(),
        ])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .map_err(|e| format!("scale-clients: {e}"))?;
    let stdout = child.stdout.take().ok_or("scale-clients: no stdout")?;
    let mut line = String::new();
    std::io::BufReader::new(stdout)
        .read_line(&mut line)
        .map_err(|e| e.to_string())?;
    if !line.starts_with("ready") {
        let _ = child.kill();
        return Err(format!("scale-clients: {}", line.trim()));
    }
    Ok(child)
}

/// The child's side: `count` authenticated connections to `peer` at `addr`, held until stdin
/// closes.
pub(crate) fn scale_clients(addr: SocketAddr, peer: &str, count: usize) -> Result<(), String> {
    let peer: glueberry::PeerId = peer.parse().map_err(|e| format!("--peer: {e}"))?;
    let config = Arc::new(ConnectionConfig::default());
    let mut sockets = Vec::with_capacity(count);
    for _ in 0..count {
        let identity = Identity::generate().map_err(|e| e.to_string())?;
        let handshake =
            Arc::new(HandshakeConfig::new(&identity, "glueberry-perf").map_err(|e| e.to_string())?);
        match handshake_client(peer, addr, &handshake, &config) {
            Ok(socket) => sockets.push(socket),
            Err(e) => {
                println!("failed after {}: {e}", sockets.len());
                return Err(e);
            }
        }
    }
    println!("ready {}", sockets.len());
    let mut rest = Vec::new();
    let _ = std::io::Read::read_to_end(&mut std::io::stdin(), &mut rest);
    drop(sockets);
    Ok(())
}

/// 64 B request/response on a high-priority stream while a bulk transfer (64 KiB messages, as
/// fast as `send` takes them) runs on a low-priority stream of the same connection. Both
/// consumers keep up: what is measured is how long a request waits behind bulk bytes.
/// Percentiles are of the round trips; `bytes_per_sec` is the bulk transfer beside them.
pub(crate) fn latency_under_load(setup: &Setup, duration: Duration) -> Result<Figures, String> {
    let setup = Setup {
        size: 64 * 1024,
        window: Some(
            setup
                .window
                .unwrap_or(ConnectionConfig::default().initial_window),
        ),
        ..setup.clone()
    };
    let a = Node::start(setup.node(1, Some(0))?).map_err(|e| e.to_string())?;
    let b = Node::start(setup.node(1, Some(1))?).map_err(|e| e.to_string())?;
    let streams = [RPC_STREAM, BULK_STREAM];
    let (b_rpc, b_bulk) = (b.messages_on(RPC_STREAM), b.messages_on(BULK_STREAM));
    let mut a_rpc = a.messages_on(RPC_STREAM).map_err(|e| e.to_string())?;
    let (mut b_rpc, mut b_bulk) = (
        b_rpc.map_err(|e| e.to_string())?,
        b_bulk.map_err(|e| e.to_string())?,
    );
    let waiter = {
        let (b, id) = (b.clone(), a.peer_id());
        std::thread::spawn(move || establish(&b, &[id], &streams))
    };
    a.connect(b.peer_id(), b.listen_addr())
        .map_err(|e| e.to_string())?;
    establish(&a, &[b.peer_id()], &streams)?;
    waiter.join().map_err(|_| "establishing panicked")??;
    std::thread::sleep(Duration::from_millis(50));

    let stop = Arc::new(AtomicBool::new(false));
    let bulk_bytes = Arc::new(AtomicU64::new(0));
    let echo = {
        let (b, to) = (b.clone(), a.peer_id());
        let route = b.route(to, RPC_STREAM);
        std::thread::spawn(move || {
            while let Some(m) = b_rpc.recv_blocking() {
                if b.try_send_on(&route, m.data).is_err() {
                    return;
                }
            }
        })
    };
    let drain = {
        let bulk_bytes = bulk_bytes.clone();
        std::thread::spawn(move || {
            while let Some(m) = b_bulk.recv_blocking() {
                bulk_bytes.fetch_add(m.data.len() as u64, Ordering::Relaxed);
            }
        })
    };
    let bulk = {
        let (a, stop) = (a.clone(), stop.clone());
        let route = a.route(b.peer_id(), BULK_STREAM);
        std::thread::spawn(move || {
            let chunk = Bytes::from(vec![0x5au8; 64 * 1024]);
            while !stop.load(Ordering::Relaxed) {
                if futures::executor::block_on(a.send_on(&route, chunk.clone())).is_err() {
                    return;
                }
            }
        })
    };
    // The bulk transfer gets going before the first request.
    std::thread::sleep(Duration::from_millis(200));
    let route = a.route(b.peer_id(), RPC_STREAM);
    let request = Bytes::from(vec![0xa5u8; 64]);
    let mut samples = figures::Latencies::new();
    let start_bytes = bulk_bytes.load(Ordering::Relaxed);
    let started = Instant::now();
    let end = started + duration;
    while Instant::now() < end {
        let start = Instant::now();
        a.try_send_on(&route, request.clone())
            .map_err(|e| e.to_string())?;
        a_rpc.recv_blocking().ok_or("node stopped")?;
        samples.record(start.elapsed());
    }
    let seconds = started.elapsed().as_secs_f64();
    let bulk_moved = bulk_bytes.load(Ordering::Relaxed) - start_bytes;
    stop.store(true, Ordering::Relaxed);
    a.stop_blocking();
    b.stop_blocking();
    let _ = (bulk.join(), echo.join(), drain.join());
    let mut figures = figures::percentiles(&samples, 64, seconds);
    figures.bytes = bulk_moved;
    figures.bytes_per_sec = bulk_moved as f64 / seconds;
    Ok(figures)
}
