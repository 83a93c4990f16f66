//! Two real nodes through the fault-injecting proxy: latency and jitter, cut connections,
//! corrupted bytes, a partition, a bandwidth limit — one after another, with traffic throughout.
//! Checked all along: per-stream order and no duplicate delivery; after each fault, the peers
//! are Established again within the backoff bound; at the end, every message `send` accepted
//! was received or handed back (`Event::Undelivered`, `Event::SendFailed`), none handed back as
//! unsent was received, and descriptors, threads and memory return to their baseline.
#![allow(clippy::expect_used, clippy::unwrap_used, clippy::panic)] // test code

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use glueberry::crypto::PeerId;
use glueberry::transport::{ConnState, ConnectionConfig};
use glueberry::{Event, EventFilter, Node, NodeConfig};
use glueberry_bench_harness::proxy::{Direction, FaultProxy, Faults};

mod common;

const NET: &str = "chaos-test";
const STREAMS: [&str; 2] = ["consensus", "mempool"];

fn config() -> NodeConfig {
    common::loopback_config(NET)
        .event_buffer(100_000)
        .message_buffer(100_000)
        .reconnect(Duration::from_millis(50), Duration::from_millis(400), 0)
        .dial_timeout(Duration::from_secs(3))
        .connection(ConnectionConfig {
            keepalive_interval: Duration::from_millis(150),
            idle_timeout: Duration::from_millis(800),
            ..ConnectionConfig::default()
        })
}

/// Completes the application handshake whenever `node` has `peer` Connected, until `stop`.
fn auto_handshake(node: &Node, peer: PeerId, stop: Arc<AtomicBool>) -> std::thread::JoinHandle<()> {
    let node = node.clone();
    std::thread::spawn(move || {
        let events = node.events();
        while !stop.load(Ordering::Relaxed) {
            while events.try_recv().is_some() {}
            if node.state(peer) == ConnState::Connected {
                let _ = node.complete_handshake(peer, &STREAMS);
                std::thread::sleep(Duration::from_millis(20));
            }
            std::thread::sleep(Duration::from_millis(1));
        }
    })
}

fn wait_established(a: &Node, b: &Node, within: Duration) -> Duration {
    let start = Instant::now();
    while a.state(b.peer_id()) != ConnState::Established
        || b.state(a.peer_id()) != ConnState::Established
    {
        assert!(
            start.elapsed() < within,
            "not Established again within {within:?}: a {:?}, b {:?}",
            a.state(b.peer_id()),
            b.state(a.peer_id())
        );
        std::thread::sleep(Duration::from_millis(2));
    }
    start.elapsed()
}

#[test]
fn order_and_uniqueness_hold_and_peers_recover_through_every_fault() {
    if std::env::var_os("CHAOS_LOG").is_some() {
        tracing_subscriber::fmt()
            .with_max_level(tracing::Level::DEBUG)
            .with_ansi(false)
            .init();
    }
    let fds_before = glueberry::open_fd_count();
    let threads_before = common::thread_count();
    let rss_before = common::rss_kib();
    // Received: per stream, the last sequence number seen; a violation is recorded.
    let last: Arc<Mutex<HashMap<String, u64>>> = Arc::default();
    let received: Arc<Mutex<HashMap<String, Vec<u64>>>> = Arc::default();
    let violations = Arc::new(AtomicU64::new(0));
    let delivered = Arc::new(AtomicU64::new(0));
    let handler = {
        let (last, violations, delivered, received) = (
            last.clone(),
            violations.clone(),
            delivered.clone(),
            received.clone(),
        );
        Arc::new(
            move |_: &glueberry::crypto::PeerId, stream: &str, data: &Bytes| {
                let seq = u64::from_be_bytes(data[..8].try_into().unwrap());
                let mut last = last.lock().unwrap();
                let previous = last.insert(stream.to_string(), seq);
                if previous.is_some_and(|p| seq <= p) {
                    eprintln!("out of order on {stream}: {previous:?} then {seq}");
                    violations.fetch_add(1, Ordering::Relaxed);
                }
                delivered.fetch_add(1, Ordering::Relaxed);
                received
                    .lock()
                    .unwrap()
                    .entry(stream.to_string())
                    .or_default()
                    .push(seq);
            },
        ) as glueberry::Handler
    };
    let a = Node::start(config().handler(handler)).unwrap();
    let b = Node::start(config()).unwrap();
    // What comes back to the sender, kept as sequence numbers only.
    let returns = collect_returns(&b);
    let proxy = FaultProxy::start("127.0.0.1:0".parse().unwrap(), a.listen_addr(), 7).unwrap();
    let stop = Arc::new(AtomicBool::new(false));
    let helpers = [
        auto_handshake(&a, b.peer_id(), stop.clone()),
        auto_handshake(&b, a.peer_id(), stop.clone()),
    ];
    b.connect(a.peer_id(), proxy.addr()).unwrap();
    wait_established(&a, &b, Duration::from_secs(10));

    let accepted = Arc::new(AtomicU64::new(0));
    let sender = {
        let (b, to, stop, accepted) = (b.clone(), a.peer_id(), stop.clone(), accepted.clone());
        std::thread::spawn(move || {
            let streams: Vec<_> = STREAMS.iter().map(|s| b.stream(s)).collect();
            let mut seq = [0u64; 2];
            while !stop.load(Ordering::Relaxed) {
                if b.state(to) != ConnState::Established {
                    // As an application would: no sending into a connection that is down.
                    std::thread::sleep(Duration::from_millis(1));
                    continue;
                }
                for (i, stream) in streams.iter().enumerate() {
                    let mut data = vec![0u8; 200 + (seq[i] % 5000) as usize];
                    data[..8].copy_from_slice(&(seq[i] + 1).to_be_bytes());
                    if b.try_send(to, stream, Bytes::from(data)).is_ok() {
                        seq[i] += 1;
                        accepted.fetch_add(1, Ordering::Relaxed);
                    } else {
                        std::thread::sleep(Duration::from_millis(1));
                    }
                }
            }
            seq
        })
    };

    let both = |faults: Faults| {
        proxy.set(Direction::Up, faults.clone());
        proxy.set(Direction::Down, faults);
    };
    let mut report = Vec::new();
    let phases: [(&str, &dyn Fn()); 5] = [
        ("latency 20 ms ± 10 ms", &|| {
            both(Faults {
                latency: Duration::from_millis(20),
                jitter: Duration::from_millis(10),
                ..Faults::default()
            })
        }),
        ("every connection cut", &|| proxy.cut_all()),
        ("a byte in 200,000 corrupted", &|| {
            both(Faults {
                corrupt_every: Some(200_000),
                ..Faults::default()
            })
        }),
        ("partition (blackhole, dials refused)", &|| {
            proxy.partition()
        }),
        ("bandwidth 2 MB/s", &|| {
            both(Faults {
                bandwidth: Some(2_000_000),
                ..Faults::default()
            })
        }),
    ];
    for (name, inject) in phases {
        let before = delivered.load(Ordering::Relaxed);
        eprintln!("fault: {name}");
        inject();
        std::thread::sleep(Duration::from_millis(1500));
        proxy.heal();
        eprintln!("healed: {name}");
        // Backoff tops out at 400 ms (±10 %), the idle timeout is 800 ms, a dial gives up
        // after 3 s: a few of each, on a loaded 2-core machine.
        let recovery = wait_established(&a, &b, Duration::from_secs(30));
        std::thread::sleep(Duration::from_millis(300));
        let after = delivered.load(Ordering::Relaxed);
        assert!(after > before, "{name}: nothing delivered");
        report.push(format!(
            "{name}: delivered {} during and after, Established again {recovery:?} after healing",
            after - before
        ));
    }
    stop.store(true, Ordering::Relaxed);
    let last_sent = sender.join().unwrap();
    for h in helpers {
        h.join().unwrap();
    }
    // The receiver goes first: what the sender then holds unconfirmed comes back on close.
    a.stop_blocking();
    b.stop_blocking();
    let returns = returns.join().unwrap();
    let accounting = account(&returns, &received.lock().unwrap(), last_sent);
    println!("{accounting}");
    let c = proxy.counters();
    println!(
        "accepted {}, delivered {}, violations {}; proxy: {} connections, {} bytes, {} corrupted, {} cut",
        accepted.load(Ordering::Relaxed),
        delivered.load(Ordering::Relaxed),
        violations.load(Ordering::Relaxed),
        c.connections.load(Ordering::Relaxed),
        c.bytes.load(Ordering::Relaxed),
        c.corrupted.load(Ordering::Relaxed),
        c.cut.load(Ordering::Relaxed)
    );
    for line in &report {
        println!("{line}");
    }
    assert_eq!(
        violations.load(Ordering::Relaxed),
        0,
        "out of order or duplicated delivery"
    );
    assert!(
        c.corrupted.load(Ordering::Relaxed) > 0,
        "the corruption phase corrupted nothing"
    );
    drop(proxy);
    drop((a, b));
    std::thread::sleep(Duration::from_millis(200));
    let fds_after = glueberry::open_fd_count();
    let threads_after = common::thread_count();
    let rss_after = common::rss_kib();
    println!(
        "baseline: descriptors {fds_before} -> {fds_after}, threads {threads_before} -> \
         {threads_after}, resident {rss_before} KiB -> {rss_after} KiB"
    );
    assert!(
        fds_after <= fds_before + 2,
        "descriptors leaked: {fds_before} -> {fds_after}"
    );
    assert!(
        threads_after <= threads_before,
        "threads left behind: {threads_before} -> {threads_after}"
    );
    // The allocator keeps some of what it was given (about 50 MiB here); the messages handed
    // back alone were several hundred MiB, so a leak of them would show.
    assert!(
        rss_after < rss_before + 128 * 1024,
        "memory not returned: {rss_before} KiB -> {rss_after} KiB"
    );
}

/// Messages handed back to the sender, by stream: (never sent, sent but unconfirmed).
type Returns = HashMap<&'static str, (Vec<u64>, Vec<u64>)>;

/// Collects what `node` hands back until it stops, keeping only sequence numbers.
fn collect_returns(node: &Node) -> std::thread::JoinHandle<Returns> {
    let events = node.subscribe(EventFilter::default(), 100_000);
    std::thread::spawn(move || {
        let seq = |data: &Bytes| u64::from_be_bytes(data[..8].try_into().unwrap());
        let name = |stream: &str| *STREAMS.iter().find(|s| **s == stream).unwrap();
        let mut returns = Returns::new();
        while let Some(event) = events.recv_blocking() {
            match event {
                Event::Undelivered {
                    stream,
                    unsent,
                    unconfirmed,
                    ..
                } => {
                    let entry = returns.entry(name(&stream)).or_default();
                    entry.0.extend(unsent.iter().map(seq));
                    entry.1.extend(unconfirmed.iter().map(seq));
                }
                Event::SendFailed { stream, data, .. } => {
                    returns.entry(name(&stream)).or_default().0.push(seq(&data));
                }
                Event::Missed { count } => panic!("the sender's subscription lost {count} events"),
                _ => {}
            }
        }
        returns
    })
}

/// Checks the delivery guarantee for stream `i` of [`STREAMS`], messages 1..=`last_sent[i]`:
/// each was received or handed back, and none handed back as never sent was received.
fn account(returns: &Returns, received: &HashMap<String, Vec<u64>>, last_sent: [u64; 2]) -> String {
    let none = (Vec::new(), Vec::new());
    let mut line = String::new();
    for (i, name) in STREAMS.iter().enumerate() {
        let got: std::collections::HashSet<u64> =
            received.get(*name).into_iter().flatten().copied().collect();
        let (never, maybe) = returns.get(name).unwrap_or(&none);
        let never: std::collections::HashSet<u64> = never.iter().copied().collect();
        let maybe: std::collections::HashSet<u64> = maybe.iter().copied().collect();
        let both: Vec<&u64> = never.intersection(&got).take(5).collect();
        assert!(
            both.is_empty(),
            "{name}: handed back as unsent but received: {both:?}"
        );
        let lost: Vec<u64> = (1..=last_sent[i])
            .filter(|n| !got.contains(n) && !never.contains(n) && !maybe.contains(n))
            .take(5)
            .collect();
        assert!(
            lost.is_empty(),
            "{name}: neither received nor handed back: {lost:?}"
        );
        let truly_lost = (1..=last_sent[i]).filter(|n| !got.contains(n)).count();
        line += &format!(
            "{name}: accepted {}, received {}, handed back {} unsent + {} unconfirmed \
             ({} of them not received); ",
            last_sent[i],
            got.len(),
            never.len(),
            maybe.len(),
            truly_lost
        );
    }
    line
}
