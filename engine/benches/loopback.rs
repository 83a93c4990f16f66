//! Two nodes over loopback against plain TCP in the same run: bulk throughput (one stream,
//! 64 KiB messages) and small-message rate (64 B, 1 KiB).
//!
//! `cargo bench -p glueberry --bench loopback` (add `-- --seconds N` to change the duration of
//! each measurement, default 3). Prints a Markdown table for BENCHMARKS.md.
#![allow(missing_docs, clippy::expect_used, clippy::unwrap_used)] // a benchmark that fails should stop loudly

use std::io::{BufWriter, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use bytes::Bytes;
use glueberry::crypto::Identity;
use glueberry::transport::{ConnState, ConnectionConfig};
use glueberry::{Event, Node, NodeConfig, NodeSendError};

struct Figure {
    messages_per_sec: f64,
    bytes_per_sec: f64,
}

/// Plain TCP, no encryption: a sender thread writing length-prefixed messages through a 256 KiB
/// buffer (so it batches too) and a receiver thread parsing them.
fn plain_tcp(size: usize, seconds: f64) -> Figure {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    let stop = Arc::new(AtomicBool::new(false));
    let received = Arc::new(AtomicU64::new(0));
    let receiver = {
        let received = received.clone();
        std::thread::spawn(move || {
            let (mut socket, _) = listener.accept().unwrap();
            let mut buf = vec![0u8; 1 << 20];
            let mut pending = 0usize; // bytes of the current message still to come
            let mut header = Vec::with_capacity(4);
            let mut count = 0u64;
            loop {
                let n = match socket.read(&mut buf) {
                    Ok(0) | Err(_) => break,
                    Ok(n) => n,
                };
                let mut at = 0;
                while at < n {
                    if pending == 0 {
                        let take = (4 - header.len()).min(n - at);
                        header.extend_from_slice(&buf[at..at + take]);
                        at += take;
                        if header.len() == 4 {
                            pending = u32::from_be_bytes(header[..4].try_into().unwrap()) as usize;
                            header.clear();
                            if pending == 0 {
                                count += 1;
                            }
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
    let socket = TcpStream::connect(addr).unwrap();
    socket.set_nodelay(true).unwrap();
    let sender = {
        let stop = stop.clone();
        std::thread::spawn(move || {
            let mut out = BufWriter::with_capacity(256 * 1024, socket);
            let message = vec![0x5au8; size];
            let len = (size as u32).to_be_bytes();
            while !stop.load(Ordering::Relaxed) {
                for _ in 0..64 {
                    out.write_all(&len).unwrap();
                    out.write_all(&message).unwrap();
                }
            }
            out.flush().unwrap();
        })
    };
    let figure = measure(&received, size, seconds);
    stop.store(true, Ordering::Relaxed);
    sender.join().unwrap();
    receiver.join().unwrap();
    figure
}

fn measure(received: &AtomicU64, size: usize, seconds: f64) -> Figure {
    // Warm up, then count over the window.
    std::thread::sleep(Duration::from_millis(300));
    let (start_count, start) = (received.load(Ordering::Relaxed), Instant::now());
    std::thread::sleep(Duration::from_secs_f64(seconds));
    let count = received.load(Ordering::Relaxed) - start_count;
    let elapsed = start.elapsed().as_secs_f64();
    Figure {
        messages_per_sec: count as f64 / elapsed,
        bytes_per_sec: (count as f64 * size as f64) / elapsed,
    }
}

/// Two Glueberry nodes (one shard each), ChaCha20-Poly1305: one app thread sends, the receiver
/// counts in its zero-copy handler on the shard thread.
fn glueberry(size: usize, seconds: f64, provided: bool) -> Figure {
    let received = Arc::new(AtomicU64::new(0));
    let counter = received.clone();
    let connection = ConnectionConfig {
        initial_window: 16 * 1024 * 1024,
        high_watermark: 100_000,
        low_watermark: 50_000,
        ..Default::default()
    };
    // One shard per node, each on its own CPU.
    let config = |id, cpu| {
        NodeConfig::new(id, "bench", "127.0.0.1:0".parse().unwrap())
            .shards(1)
            .cpus(vec![cpu])
            .connection(connection.clone())
            .command_queue(65_536)
            .provided_receive_buffers(if provided { 256 } else { 0 })
    };
    let a = Node::start(config(Identity::generate().unwrap(), 0)).unwrap();
    let b = Node::start(config(Identity::generate().unwrap(), 1).handler(Arc::new(
        move |_, _, _| {
            counter.fetch_add(1, Ordering::Relaxed);
        },
    )))
    .unwrap();
    a.connect(b.peer_id(), b.listen_addr()).unwrap();
    for (node, peer) in [(&a, b.peer_id()), (&b, a.peer_id())] {
        let events = node.events();
        loop {
            match events.recv_blocking().unwrap() {
                Event::State {
                    state: ConnState::Connected,
                    ..
                } => node.complete_handshake(peer, &["bulk"]).unwrap(),
                Event::State {
                    state: ConnState::Established,
                    ..
                } => break,
                _ => {}
            }
        }
    }
    // Wait for b's stream to be accepted on a's side.
    std::thread::sleep(Duration::from_millis(100));
    let stop = Arc::new(AtomicBool::new(false));
    let sender = {
        let (a, to, stop) = (a.clone(), b.peer_id(), stop.clone());
        std::thread::spawn(move || {
            let stream = a.stream("bulk");
            let message = Bytes::from(vec![0x5au8; size]);
            // `send` parks the thread while the shard's queue is full: no spinning.
            while !stop.load(Ordering::Relaxed) {
                match futures::executor::block_on(a.send(to, &stream, message.clone())) {
                    Ok(()) | Err(NodeSendError::Stopped) => {}
                    Err(e) => panic!("{e}"),
                }
            }
        })
    };
    let figure = measure(&received, size, seconds);
    stop.store(true, Ordering::Relaxed);
    sender.join().unwrap();
    a.stop();
    b.stop();
    figure
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    // `cargo bench` passes `--bench`; `cargo test --all-targets` runs this as a quick smoke test.
    let mut seconds = if args.iter().any(|a| a == "--bench") {
        3.0
    } else {
        0.2
    };
    if let Some(i) = args.iter().position(|a| a == "--seconds") {
        seconds = args
            .get(i + 1)
            .and_then(|s| s.parse().ok())
            .unwrap_or(seconds);
    }
    println!(
        "| scenario | plain TCP | glueberry (ChaCha20-Poly1305) | ratio | glueberry, provided-buffer ring | ratio |"
    );
    println!("|---|---|---|---|---|---|");
    for (name, size) in [
        ("bulk, 64 KiB messages", 65_536),
        ("1 KiB messages", 1024),
        ("64 B messages", 64),
    ] {
        let tcp = plain_tcp(size, seconds);
        let gb = glueberry(size, seconds, false);
        let pb = glueberry(size, seconds, true);
        println!(
            "| {name} | {:.2} GB/s, {:.2} M msg/s | {:.2} GB/s, {:.2} M msg/s | {:.2} | {:.2} GB/s, {:.2} M msg/s | {:.2} |",
            tcp.bytes_per_sec / 1e9,
            tcp.messages_per_sec / 1e6,
            gb.bytes_per_sec / 1e9,
            gb.messages_per_sec / 1e6,
            gb.messages_per_sec / tcp.messages_per_sec,
            pb.bytes_per_sec / 1e9,
            pb.messages_per_sec / 1e6,
            pb.messages_per_sec / tcp.messages_per_sec,
        );
    }
}
