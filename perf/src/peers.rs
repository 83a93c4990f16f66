//! The peers measured: Glueberry, and plain TCP as the ceiling, driven the same way.

use std::io::{BufWriter, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use bytes::Bytes;
use glueberry::crypto::Identity;
use glueberry::transport::{ConnState, ConnectionConfig};
use glueberry::{Event, Node, NodeConfig, NodeSendError};

/// Who is measured.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Peer {
    /// Plain TCP, no encryption: length-prefixed messages through a 256 KiB buffer.
    PlainTcp,
    /// Two Glueberry nodes, one shard each on its own CPU, ChaCha20-Poly1305.
    Glueberry,
}

impl Peer {
    pub(crate) fn name(self) -> &'static str {
        match self {
            Peer::PlainTcp => "plain TCP",
            Peer::Glueberry => "glueberry",
        }
    }

    pub(crate) fn id(self) -> &'static str {
        match self {
            Peer::PlainTcp => "tcp",
            Peer::Glueberry => "glueberry",
        }
    }
}

/// What a measurement found.
#[derive(Debug, Clone, Default)]
pub(crate) struct Figures {
    pub seconds: f64,
    pub bytes: u64,
    pub messages: u64,
    pub bytes_per_sec: f64,
    pub messages_per_sec: f64,
    pub p50_us: f64,
    pub p90_us: f64,
    pub p99_us: f64,
    pub max_us: f64,
}

impl Figures {
    pub(crate) fn final_json(&self, scenario: &str, peer: &str) -> String {
        serde_json::json!({
            "type": "final",
            "scenario": scenario,
            "peer": peer,
            "timeSeconds": self.seconds,
            "uploadBytes": self.bytes,
            "downloadBytes": 0,
            "messages": self.messages,
            "messagesPerSecond": self.messages_per_sec,
            "bytesPerSecond": self.bytes_per_sec,
            "latencyMicros": { "p50": self.p50_us, "p90": self.p90_us, "p99": self.p99_us, "max": self.max_us },
        })
        .to_string()
    }
}

/// Counts received messages for `duration` (after a short warm-up), reporting each second.
fn measure(
    received: &AtomicU64,
    size: usize,
    duration: Duration,
    report: &dyn Fn(u64, u64),
) -> Figures {
    std::thread::sleep(Duration::from_millis(200).min(duration));
    let (first, start) = (received.load(Ordering::Relaxed), Instant::now());
    let mut second = 1;
    while start.elapsed() < duration {
        let next = Duration::from_secs(second).min(duration);
        std::thread::sleep(next.saturating_sub(start.elapsed()));
        let count = received.load(Ordering::Relaxed) - first;
        report(second, count * size as u64);
        second += 1;
    }
    let count = received.load(Ordering::Relaxed) - first;
    let seconds = start.elapsed().as_secs_f64();
    Figures {
        seconds,
        bytes: count * size as u64,
        messages: count,
        bytes_per_sec: (count * size as u64) as f64 / seconds,
        messages_per_sec: count as f64 / seconds,
        ..Default::default()
    }
}

/// One-way throughput of `size`-byte messages.
pub(crate) fn throughput(
    peer: Peer,
    size: usize,
    duration: Duration,
    report: &dyn Fn(u64, u64),
) -> Result<Figures, String> {
    match peer {
        Peer::PlainTcp => tcp_throughput(size, duration, report),
        Peer::Glueberry => glueberry_throughput(size, duration, report),
    }
}

fn tcp_throughput(
    size: usize,
    duration: Duration,
    report: &dyn Fn(u64, u64),
) -> Result<Figures, String> {
    let listener = TcpListener::bind("127.0.0.1:0").map_err(|e| e.to_string())?;
    let addr = listener.local_addr().map_err(|e| e.to_string())?;
    let stop = Arc::new(AtomicBool::new(false));
    let received = Arc::new(AtomicU64::new(0));
    let receiver = {
        let received = received.clone();
        std::thread::spawn(move || {
            let Ok((mut socket, _)) = listener.accept() else {
                return;
            };
            let mut buf = vec![0u8; 1 << 20];
            let (mut pending, mut header, mut count) = (0usize, Vec::with_capacity(4), 0u64);
            while let Ok(n) = socket.read(&mut buf) {
                if n == 0 {
                    break;
                }
                let mut at = 0;
                while at < n {
                    if pending == 0 {
                        let take = (4 - header.len()).min(n - at);
                        header.extend_from_slice(&buf[at..at + take]);
                        at += take;
                        if let Ok(len) = <[u8; 4]>::try_from(&header[..]) {
                            pending = u32::from_be_bytes(len) as usize;
                            header.clear();
                        }
                    } else {
                        let take = pending.min(n - at);
                        pending -= take;
                        at += take;
                        if pending == 0 {
                            count += 1;
                            received.store(count, Ordering::Relaxed);
                        }
                    }
                }
            }
        })
    };
    let socket = TcpStream::connect(addr).map_err(|e| e.to_string())?;
    let _ = socket.set_nodelay(true);
    let sender = {
        let stop = stop.clone();
        std::thread::spawn(move || {
            let mut out = BufWriter::with_capacity(256 * 1024, socket);
            let message = vec![0x5au8; size];
            let len = (size as u32).to_be_bytes();
            while !stop.load(Ordering::Relaxed) {
                for _ in 0..64 {
                    if out
                        .write_all(&len)
                        .and_then(|()| out.write_all(&message))
                        .is_err()
                    {
                        return;
                    }
                }
            }
            let _ = out.flush();
        })
    };
    let figures = measure(&received, size, duration, report);
    stop.store(true, Ordering::Relaxed);
    let _ = sender.join();
    let _ = receiver.join();
    Ok(figures)
}

/// Two nodes connected and Established on stream "perf".
fn node_pair(handler: Option<glueberry::Handler>) -> Result<(Node, Node), String> {
    let connection = ConnectionConfig {
        initial_window: 16 * 1024 * 1024,
        high_watermark: 100_000,
        low_watermark: 50_000,
        ..Default::default()
    };
    let config = |cpu: usize| -> Result<NodeConfig, String> {
        let identity = Identity::generate().map_err(|e| e.to_string())?;
        let listen = "127.0.0.1:0".parse().map_err(|e| format!("{e}"))?;
        Ok(NodeConfig::new(identity, "glueberry-perf", listen)
            .shards(1)
            .cpus(vec![cpu])
            .connection(connection.clone())
            .command_queue(65_536)
            .message_buffer(65_536))
    };
    let a = Node::start(config(0)?).map_err(|e| e.to_string())?;
    let mut b_config = config(1)?;
    if let Some(handler) = handler {
        b_config = b_config.handler(handler);
    }
    let b = Node::start(b_config).map_err(|e| e.to_string())?;
    a.connect(b.peer_id(), b.listen_addr())
        .map_err(|e| e.to_string())?;
    for (node, peer) in [(&a, b.peer_id()), (&b, a.peer_id())] {
        let events = node.events();
        loop {
            match events.recv_blocking().map_err(|e| e.to_string())? {
                Event::State {
                    state: ConnState::Connected,
                    ..
                } => node
                    .complete_handshake(peer, &["perf"])
                    .map_err(|e| e.to_string())?,
                Event::State {
                    state: ConnState::Established,
                    ..
                } => break,
                _ => {}
            }
        }
    }
    // Both sides' OPEN frames have crossed once each side reports Established and a round trip
    // passed; give it one.
    std::thread::sleep(Duration::from_millis(50));
    Ok((a, b))
}

fn glueberry_throughput(
    size: usize,
    duration: Duration,
    report: &dyn Fn(u64, u64),
) -> Result<Figures, String> {
    let received = Arc::new(AtomicU64::new(0));
    let counter = received.clone();
    let (a, b) = node_pair(Some(Arc::new(move |_, _, _| {
        counter.fetch_add(1, Ordering::Relaxed);
    })))?;
    let stop = Arc::new(AtomicBool::new(false));
    let sender = {
        let (a, to, stop) = (a.clone(), b.peer_id(), stop.clone());
        std::thread::spawn(move || {
            let stream = a.stream("perf");
            let message = Bytes::from(vec![0x5au8; size]);
            // `send` parks the thread while the shard's queue is full: no spinning.
            while !stop.load(Ordering::Relaxed) {
                match futures::executor::block_on(a.send(to, &stream, message.clone())) {
                    Ok(()) => {}
                    Err(NodeSendError::Stopped) => return,
                    Err(_) => return,
                }
            }
        })
    };
    let figures = measure(&received, size, duration, report);
    stop.store(true, Ordering::Relaxed);
    let _ = sender.join();
    a.stop();
    b.stop();
    Ok(figures)
}

/// Request/response round trips of 64-byte messages, one at a time.
pub(crate) fn latency(peer: Peer, duration: Duration) -> Result<Figures, String> {
    let samples = match peer {
        Peer::PlainTcp => tcp_latency(duration)?,
        Peer::Glueberry => glueberry_latency(duration)?,
    };
    Ok(percentiles(samples, duration))
}

fn percentiles(mut samples: Vec<Duration>, duration: Duration) -> Figures {
    samples.sort();
    let at = |q: f64| {
        samples
            .get(((samples.len() as f64 - 1.0) * q).round() as usize)
            .map_or(0.0, |d| d.as_secs_f64() * 1e6)
    };
    Figures {
        seconds: duration.as_secs_f64(),
        bytes: samples.len() as u64 * 64,
        messages: samples.len() as u64,
        messages_per_sec: samples.len() as f64 / duration.as_secs_f64(),
        bytes_per_sec: samples.len() as f64 * 64.0 / duration.as_secs_f64(),
        p50_us: at(0.5),
        p90_us: at(0.9),
        p99_us: at(0.99),
        max_us: at(1.0),
    }
}

fn tcp_latency(duration: Duration) -> Result<Vec<Duration>, String> {
    let listener = TcpListener::bind("127.0.0.1:0").map_err(|e| e.to_string())?;
    let addr = listener.local_addr().map_err(|e| e.to_string())?;
    let echo = std::thread::spawn(move || {
        let Ok((mut socket, _)) = listener.accept() else {
            return;
        };
        let _ = socket.set_nodelay(true);
        let mut buf = [0u8; 64];
        while socket.read_exact(&mut buf).is_ok() {
            if socket.write_all(&buf).is_err() {
                return;
            }
        }
    });
    let mut socket = TcpStream::connect(addr).map_err(|e| e.to_string())?;
    let _ = socket.set_nodelay(true);
    let mut samples = Vec::new();
    let mut buf = [0x5au8; 64];
    let end = Instant::now() + duration;
    while Instant::now() < end {
        let start = Instant::now();
        socket.write_all(&buf).map_err(|e| e.to_string())?;
        socket.read_exact(&mut buf).map_err(|e| e.to_string())?;
        samples.push(start.elapsed());
    }
    drop(socket);
    let _ = echo.join();
    Ok(samples)
}

fn glueberry_latency(duration: Duration) -> Result<Vec<Duration>, String> {
    let (a, b) = node_pair(None)?;
    let stop = Arc::new(AtomicBool::new(false));
    let echo = {
        let (b, to, stop) = (b.clone(), a.peer_id(), stop.clone());
        std::thread::spawn(move || {
            let stream = b.stream("perf");
            let messages = b.messages();
            while !stop.load(Ordering::Relaxed) {
                if let Ok(m) = messages.recv_blocking()
                    && b.try_send(to, &stream, m.data).is_err()
                {
                    return;
                }
            }
        })
    };
    let stream = a.stream("perf");
    let messages = a.messages();
    let request = Bytes::from(vec![0x5au8; 64]);
    let mut samples = Vec::new();
    let end = Instant::now() + duration;
    while Instant::now() < end {
        let start = Instant::now();
        a.try_send(b.peer_id(), &stream, request.clone())
            .map_err(|e| e.to_string())?;
        messages.recv_blocking().map_err(|e| e.to_string())?;
        samples.push(start.elapsed());
    }
    stop.store(true, Ordering::Relaxed);
    a.stop();
    b.stop();
    let _ = echo.join();
    Ok(samples)
}

/// New connections per second against one listener: plain TCP connects, or complete Glueberry
/// handshakes (a client speaking the protocol with the transport core over a blocking socket,
/// against a node).
pub(crate) fn handshakes(peer: Peer, duration: Duration) -> Result<Figures, String> {
    match peer {
        Peer::PlainTcp => tcp_connects(duration),
        Peer::Glueberry => glueberry_handshakes(duration),
    }
}

fn rate(count: u64, start: Instant) -> Figures {
    let seconds = start.elapsed().as_secs_f64();
    Figures {
        seconds,
        messages: count,
        messages_per_sec: count as f64 / seconds,
        ..Default::default()
    }
}

fn tcp_connects(duration: Duration) -> Result<Figures, String> {
    let listener = TcpListener::bind("127.0.0.1:0").map_err(|e| e.to_string())?;
    let addr = listener.local_addr().map_err(|e| e.to_string())?;
    let stop = Arc::new(AtomicBool::new(false));
    // A connection counts once it carried one round trip, as a handshake does.
    let acceptor = {
        let stop = stop.clone();
        std::thread::spawn(move || {
            while !stop.load(Ordering::Relaxed) {
                let Ok((mut socket, _)) = listener.accept() else {
                    return;
                };
                let mut byte = [0u8; 1];
                if socket.read_exact(&mut byte).is_ok() {
                    let _ = socket.write_all(&byte);
                }
            }
        })
    };
    let (start, mut count) = (Instant::now(), 0);
    let mut byte = [1u8; 1];
    while start.elapsed() < duration {
        let mut socket = TcpStream::connect(addr).map_err(|e| e.to_string())?;
        let _ = socket.set_nodelay(true);
        socket.write_all(&byte).map_err(|e| e.to_string())?;
        socket.read_exact(&mut byte).map_err(|e| e.to_string())?;
        count += 1;
    }
    let figures = rate(count, start);
    stop.store(true, Ordering::Relaxed);
    // Unblock the acceptor: connect, send its byte.
    if let Ok(mut last) = TcpStream::connect(addr) {
        let _ = last.write_all(&[0]);
    }
    let _ = acceptor.join();
    Ok(figures)
}

fn glueberry_handshakes(duration: Duration) -> Result<Figures, String> {
    use glueberry::crypto::HandshakeConfig;
    use glueberry::transport::Connection;
    // Every client comes from 127.0.0.1: lift the per-IP and total limits.
    let limits = glueberry::ConnectionLimits {
        max_inbound: usize::MAX / 2,
        max_outbound: usize::MAX / 2,
        max_total: usize::MAX / 2,
        max_inbound_per_ip: usize::MAX / 2,
    };
    let identity = Identity::generate().map_err(|e| e.to_string())?;
    let listen = "127.0.0.1:0".parse().map_err(|e| format!("{e}"))?;
    let server = Node::start(
        NodeConfig::new(identity, "glueberry-perf", listen)
            .shards(1)
            .cpus(vec![1])
            .limits(limits)
            .event_buffer(1),
    )
    .map_err(|e| e.to_string())?;
    let client_identity = Identity::generate().map_err(|e| e.to_string())?;
    let handshake = Arc::new(
        HandshakeConfig::new(&client_identity, "glueberry-perf").map_err(|e| e.to_string())?,
    );
    let config = Arc::new(ConnectionConfig::default());
    let mut buf = vec![0u8; 16 * 1024];
    let (start, mut count) = (Instant::now(), 0);
    while start.elapsed() < duration {
        let mut conn = Connection::outbound(
            config.clone(),
            handshake.clone(),
            Some(server.peer_id()),
            Instant::now(),
        )
        .map_err(|e| e.to_string())?;
        let mut socket = TcpStream::connect(server.listen_addr()).map_err(|e| e.to_string())?;
        let _ = socket.set_nodelay(true);
        // Until the peer is authenticated and HelloFinalize is out.
        while conn.peer().is_none() || conn.has_pending_output() {
            let n = conn.poll_transmit(&mut buf);
            socket.write_all(&buf[..n]).map_err(|e| e.to_string())?;
            if conn.peer().is_some() {
                continue;
            }
            let n = socket.read(&mut buf).map_err(|e| e.to_string())?;
            if n == 0 {
                return Err("the node closed during the handshake".into());
            }
            conn.handle_input(Instant::now(), &buf[..n]);
        }
        count += 1;
    }
    let figures = rate(count, start);
    server.stop();
    Ok(figures)
}
