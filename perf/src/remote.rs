//! `server` and `client`: Glueberry between two machines. The server accepts every peer,
//! counts what arrives on the `perf-N` streams and echoes what arrives on `perf-echo`; the
//! client sends for a while (throughput) or asks and waits (latency).

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use bytes::Bytes;
use glueberry::crypto::{Identity, PeerId};
use glueberry::transport::ConnState;
use glueberry::{Event, Node, NodeConfig};

use crate::figures::{self, Figures, Length, Progress};
use crate::glueberry_peer::Setup;

/// Streams a server accepts: `perf-0` … `perf-15` and `perf-echo`.
pub(crate) const MAX_STREAMS: usize = 16;

fn server_streams() -> Vec<String> {
    let mut names: Vec<String> = (0..MAX_STREAMS).map(|i| format!("perf-{i}")).collect();
    names.push("perf-echo".into());
    names
}

fn config(setup: &Setup, listen: SocketAddr, shards: usize) -> Result<NodeConfig, String> {
    let identity = Identity::generate().map_err(|e| e.to_string())?;
    Ok(setup.node_config(identity, listen, shards))
}

/// Serves until `seconds` passed (forever if `None`), printing what arrived each second.
/// `ready` learns the address and peer id once the node listens.
pub(crate) fn server(
    setup: &Setup,
    listen: SocketAddr,
    seconds: Option<f64>,
    ready: &dyn Fn(SocketAddr, PeerId),
) -> Result<(), String> {
    let node = Node::start(config(setup, listen, setup.shards)?).map_err(|e| e.to_string())?;
    ready(node.listen_addr(), node.peer_id());
    let received = Arc::new(AtomicU64::new(0));
    let stop = Arc::new(AtomicBool::new(false));
    let names = server_streams();
    let events = node.events();
    let handshakes = {
        let node = node.clone();
        std::thread::spawn(move || {
            let names: Vec<&str> = names.iter().map(String::as_str).collect();
            while let Some(event) = events.recv_blocking() {
                if let Event::State {
                    peer,
                    state: ConnState::Connected,
                    ..
                } = event
                {
                    let _ = node.complete_handshake(peer, &names);
                }
            }
        })
    };
    let worker = {
        let (node, received, stop) = (node.clone(), received.clone(), stop.clone());
        std::thread::spawn(move || {
            let mut messages = node.messages();
            while !stop.load(Ordering::Relaxed) {
                match messages.recv_blocking() {
                    Some(m) if &*m.stream == "perf-echo" => {
                        let _ = node.try_send(m.peer, &m.stream, m.data);
                    }
                    Some(m) => {
                        received.fetch_add(m.data.len() as u64, Ordering::Relaxed);
                    }
                    None => return,
                }
            }
        })
    };
    let start = Instant::now();
    let mut last = 0;
    loop {
        std::thread::sleep(Duration::from_secs(1));
        let now = received.load(Ordering::Relaxed);
        println!(
            "{:>5.0} s  received {:.3} GB/s",
            start.elapsed().as_secs_f64(),
            (now - last) as f64 / 1e9
        );
        last = now;
        if seconds.is_some_and(|s| start.elapsed().as_secs_f64() >= s) {
            break;
        }
    }
    stop.store(true, Ordering::Relaxed);
    node.stop_blocking();
    let _ = worker.join();
    let _ = handshakes.join();
    Ok(())
}

/// A client node connected to the server and Established with `streams`.
fn connect(
    setup: &Setup,
    server: SocketAddr,
    peer: PeerId,
    streams: &[String],
) -> Result<Node, String> {
    let any = if server.is_ipv4() {
        "0.0.0.0:0"
    } else {
        "[::]:0"
    };
    let listen = any.parse().map_err(|e| format!("{e}"))?;
    // A short command queue: statistics requests wait behind queued sends.
    let node =
        Node::start(config(setup, listen, 1)?.command_queue(1024)).map_err(|e| e.to_string())?;
    let names: Vec<&str> = streams.iter().map(String::as_str).collect();
    futures::executor::block_on(node.connect_and_wait(peer, server))
        .map_err(|e| format!("connecting to {server}: {e}"))?;
    let events = node.events();
    node.complete_handshake(peer, &names)
        .map_err(|e| e.to_string())?;
    while node.state(peer) != ConnState::Established {
        let _ = events.recv_blocking();
    }
    std::thread::sleep(Duration::from_millis(50));
    Ok(node)
}

/// Sends `size`-byte messages to the server on `setup.streams` streams.
pub(crate) fn client_throughput(
    setup: &Setup,
    server: SocketAddr,
    peer: PeerId,
    size: usize,
    length: Length,
    report: Progress<'_>,
) -> Result<Figures, String> {
    let names: Vec<String> = (0..setup.streams.clamp(1, MAX_STREAMS))
        .map(|i| format!("perf-{i}"))
        .collect();
    let setup = Setup {
        size,
        ..setup.clone()
    };
    let node = connect(&setup, server, peer, &names)?;
    // What the node wrote into records, not what `send` queued: read from its statistics.
    let sent = Arc::new(AtomicU64::new(0));
    let stop = Arc::new(AtomicBool::new(false));
    let poller = {
        let (node, sent, stop) = (node.clone(), sent.clone(), stop.clone());
        std::thread::spawn(move || {
            while !stop.load(Ordering::Relaxed) {
                if let Some(stats) = futures::executor::block_on(node.peer_stats(peer)) {
                    let messages = stats.streams.iter().map(|s| s.sent_messages).sum();
                    sent.store(messages, Ordering::Relaxed);
                }
                std::thread::sleep(Duration::from_millis(10));
            }
        })
    };
    let sender = {
        let (node, stop) = (node.clone(), stop.clone());
        let streams: Vec<_> = names.iter().map(|s| node.stream(s)).collect();
        std::thread::spawn(move || {
            let message = Bytes::from(vec![0x5au8; size]);
            'run: while !stop.load(Ordering::Relaxed) {
                for stream in &streams {
                    if futures::executor::block_on(node.send(peer, stream, message.clone()))
                        .is_err()
                    {
                        break 'run;
                    }
                }
            }
        })
    };
    let figures = figures::measure(&sent, size, length, report);
    stop.store(true, Ordering::Relaxed);
    let _ = sender.join();
    let _ = poller.join();
    node.stop_blocking();
    Ok(figures)
}

/// Round trips of `size`-byte messages through the server's echo stream.
pub(crate) fn client_latency(
    setup: &Setup,
    server: SocketAddr,
    peer: PeerId,
    size: usize,
    duration: Duration,
) -> Result<Figures, String> {
    let node = connect(setup, server, peer, &["perf-echo".to_string()])?;
    let (stream, mut messages) = (node.stream("perf-echo"), node.messages());
    let request = Bytes::from(vec![0x5au8; size]);
    let mut samples = figures::Latencies::new();
    let end = Instant::now() + duration;
    while Instant::now() < end {
        let start = Instant::now();
        node.try_send(peer, &stream, request.clone())
            .map_err(|e| e.to_string())?;
        messages.recv_blocking().ok_or("node stopped")?;
        samples.record(start.elapsed());
    }
    node.stop_blocking();
    Ok(figures::percentiles(&samples, size, duration.as_secs_f64()))
}
