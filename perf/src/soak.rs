//! `glueberry-perf soak`: three nodes, each pair joined through a fault-injecting proxy, with
//! traffic of mixed sizes on two streams in every direction, churn (an explicit disconnect and
//! reconnect) and a fault every few seconds (cut, corruption, latency, partition, bandwidth).
//! Prints throughput, memory, threads and descriptors over time, and checks the invariants:
//! per-stream order with no duplicate (all along), every peer Established again after the faults,
//! and, at the end, every message `send` accepted received or handed back, none handed back as
//! never sent received. Minutes in CI, hours by hand; fails on any violation.

use std::collections::HashMap;
use std::net::{Ipv4Addr, SocketAddr};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use glueberry::crypto::{Identity, PeerId};
use glueberry::transport::{ConnState, ConnectionConfig};
use glueberry::{Event, EventFilter, Node, NodeConfig};
use glueberry_bench_harness::proxy::{Direction, FaultProxy, Faults};

const NODES: usize = 3;
/// Any free port on loopback.
const LOOPBACK: SocketAddr = SocketAddr::new(std::net::IpAddr::V4(Ipv4Addr::LOCALHOST), 0);
const STREAMS: [&str; 2] = ["consensus", "mempool"];
/// How often a fault (or churn) is injected, and how often a line is printed.
const FAULT_EVERY: Duration = Duration::from_secs(3);
const REPORT_EVERY: Duration = Duration::from_secs(5);

/// Sequence numbers as sorted, disjoint, inclusive ranges: deliveries are mostly consecutive,
/// so hours of traffic take a few ranges.
#[derive(Debug, Default)]
struct Ranges(Vec<(u64, u64)>);

impl Ranges {
    fn insert(&mut self, n: u64) {
        match self.0.last_mut() {
            Some(last) if n == last.1 + 1 => last.1 = n,
            Some(last) if n <= last.1 => {
                self.0.push((n, n));
                self.normalize();
            }
            _ => self.0.push((n, n)),
        }
    }

    fn normalize(&mut self) {
        self.0.sort_unstable();
        let mut merged: Vec<(u64, u64)> = Vec::with_capacity(self.0.len());
        for &(a, b) in &self.0 {
            match merged.last_mut() {
                Some(last) if a <= last.1 + 1 => last.1 = last.1.max(b),
                _ => merged.push((a, b)),
            }
        }
        self.0 = merged;
    }

    fn contains(&self, n: u64) -> bool {
        let i = self.0.partition_point(|&(_, b)| b < n);
        self.0.get(i).is_some_and(|&(a, _)| a <= n)
    }

    fn count(&self) -> u64 {
        self.0.iter().map(|(a, b)| b - a + 1).sum()
    }
}

/// Per (sender, receiver, stream): what each side saw.
type Key = (usize, usize, usize);

#[derive(Default)]
struct Ledger {
    /// Receiver side: received sequence numbers, and the last one (order check).
    received: HashMap<Key, (Ranges, u64)>,
    /// Sender side: handed back as never sent, and as sent but unconfirmed.
    unsent: HashMap<Key, Ranges>,
    unconfirmed: HashMap<Key, Ranges>,
    violations: Vec<String>,
}

struct Soak {
    nodes: Vec<Node>,
    ids: Vec<PeerId>,
    /// One proxy per pair `i < j`: `i` dials `j` through it.
    proxies: HashMap<(usize, usize), FaultProxy>,
    ledger: Arc<Mutex<Ledger>>,
    bytes: Arc<AtomicU64>,
    messages: Arc<AtomicU64>,
}

fn config(identity: Identity) -> NodeConfig {
    NodeConfig::new(identity, "soak", LOOPBACK)
        .shards(1)
        .reconnect(Duration::from_millis(50), Duration::from_millis(400), 0)
        .dial_timeout(Duration::from_secs(3))
        .connection(ConnectionConfig {
            keepalive_interval: Duration::from_millis(150),
            idle_timeout: Duration::from_millis(800),
            ..ConnectionConfig::default()
        })
}

fn seq(data: &[u8]) -> u64 {
    data.get(..8)
        .and_then(|b| b.try_into().ok())
        .map_or(0, u64::from_be_bytes)
}

fn stream_index(name: &str) -> usize {
    STREAMS.iter().position(|s| *s == name).unwrap_or(0)
}

/// A small xorshift generator: the run is the same for a seed, apart from timing.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
}

/// Mostly small messages, some of a few KiB, a few large ones.
fn message_size(rng: &mut Rng) -> usize {
    let r = rng.next();
    match r % 100 {
        0..=69 => 16 + (r >> 8) as usize % 240,
        70..=94 => 1024 + (r >> 8) as usize % (15 * 1024),
        _ => 64 * 1024 + (r >> 8) as usize % (192 * 1024),
    }
}

impl Soak {
    fn start() -> Result<Soak, String> {
        let ledger = Arc::new(Mutex::new(Ledger::default()));
        let bytes = Arc::new(AtomicU64::new(0));
        let messages = Arc::new(AtomicU64::new(0));
        let identities: Vec<Identity> = (0..NODES)
            .map(|_| Identity::generate().map_err(|e| e.to_string()))
            .collect::<Result<_, _>>()?;
        let ids: Vec<PeerId> = identities.iter().map(Identity::peer_id).collect();
        let mut nodes = Vec::new();
        for (me, identity) in identities.into_iter().enumerate() {
            let index: HashMap<PeerId, usize> =
                ids.iter().enumerate().map(|(i, p)| (*p, i)).collect();
            let (ledger, bytes, messages) = (ledger.clone(), bytes.clone(), messages.clone());
            let handler = Arc::new(move |peer: &PeerId, stream: &str, data: &Bytes| {
                let n = seq(data);
                let from = index.get(peer).copied().unwrap_or(usize::MAX);
                let mut ledger = ledger.lock().unwrap_or_else(|p| p.into_inner());
                let (got, last) = ledger
                    .received
                    .entry((from, me, stream_index(stream)))
                    .or_default();
                let out_of_order = n <= *last;
                let previous = *last;
                *last = n;
                got.insert(n);
                if out_of_order {
                    ledger.violations.push(format!(
                        "{from}->{me} {stream}: {n} after {previous} (order or duplicate)"
                    ));
                }
                bytes.fetch_add(data.len() as u64, Ordering::Relaxed);
                messages.fetch_add(1, Ordering::Relaxed);
            }) as glueberry::Handler;
            let node = Node::start(config(identity).handler(handler)).map_err(|e| e.to_string())?;
            nodes.push(node);
        }
        let mut proxies = HashMap::new();
        for i in 0..NODES {
            for j in i + 1..NODES {
                let seed = (i * NODES + j) as u64 + 1;
                let proxy = FaultProxy::start(LOOPBACK, nodes[j].listen_addr(), seed)
                    .map_err(|e| e.to_string())?;
                nodes[i]
                    .connect(ids[j], proxy.addr())
                    .map_err(|e| e.to_string())?;
                proxies.insert((i, j), proxy);
            }
        }
        Ok(Soak {
            nodes,
            ids,
            proxies,
            ledger,
            bytes,
            messages,
        })
    }

    fn all_established(&self) -> bool {
        (0..NODES).all(|i| {
            (0..NODES)
                .filter(|&j| j != i)
                .all(|j| self.nodes[i].state(self.ids[j]) == ConnState::Established)
        })
    }

    /// Every node's view of every other: (node, peer, state).
    fn states(&self) -> Vec<(usize, usize, ConnState)> {
        let mut all = Vec::new();
        for i in 0..NODES {
            for j in (0..NODES).filter(|&j| j != i) {
                all.push((i, j, self.nodes[i].state(self.ids[j])));
            }
        }
        all
    }

    fn wait_established(&self, within: Duration) -> Option<Duration> {
        let start = Instant::now();
        while !self.all_established() {
            if start.elapsed() > within {
                return None;
            }
            std::thread::sleep(Duration::from_millis(5));
        }
        Some(start.elapsed())
    }
}

/// Completes the application handshake of every Connected peer, and reads the node's event
/// channel (the ledger has its own subscription), until `stop`.
fn handshakes(node: Node, stop: Arc<AtomicBool>) -> std::thread::JoinHandle<()> {
    std::thread::spawn(move || {
        let events = node.events();
        // Once per connection, as an application does (again only if it is still Connected
        // half a second later).
        let mut asked: HashMap<PeerId, Instant> = HashMap::new();
        while !stop.load(Ordering::Relaxed) {
            while events.try_recv().is_some() {}
            for (peer, state) in node.connected_peers() {
                if state != ConnState::Connected {
                    asked.remove(&peer);
                } else if asked
                    .get(&peer)
                    .is_none_or(|at| at.elapsed() > Duration::from_millis(500))
                {
                    let _ = node.complete_handshake(peer, &STREAMS);
                    asked.insert(peer, Instant::now());
                }
            }
            std::thread::sleep(Duration::from_millis(2));
        }
    })
}

/// Sends numbered messages of mixed sizes to every Established peer; returns how many were
/// accepted per (receiver, stream).
fn sender(
    node: Node,
    me: usize,
    ids: Vec<PeerId>,
    seed: u64,
    stop: Arc<AtomicBool>,
) -> std::thread::JoinHandle<HashMap<(usize, usize), u64>> {
    std::thread::spawn(move || {
        let mut rng = Rng(seed | 1);
        let streams: Vec<_> = STREAMS.iter().map(|s| node.stream(s)).collect();
        let mut accepted: HashMap<(usize, usize), u64> = HashMap::new();
        let mut payload = vec![0u8; 256 * 1024];
        for (i, b) in payload.iter_mut().enumerate() {
            *b = i as u8;
        }
        while !stop.load(Ordering::Relaxed) {
            let mut sent_any = false;
            for (to, peer) in ids.iter().enumerate().filter(|(to, _)| *to != me) {
                if node.state(*peer) != ConnState::Established {
                    continue;
                }
                for (s, stream) in streams.iter().enumerate() {
                    let count = accepted.entry((to, s)).or_default();
                    let size = message_size(&mut rng);
                    payload[..8].copy_from_slice(&(*count + 1).to_be_bytes());
                    let data = Bytes::copy_from_slice(&payload[..size]);
                    if node.try_send(*peer, stream, data).is_ok() {
                        *count += 1;
                        sent_any = true;
                    }
                }
            }
            if !sent_any {
                std::thread::sleep(Duration::from_millis(1));
            }
        }
        accepted
    })
}

/// Records what `node` hands back, until it stops.
fn collector(
    node: &Node,
    me: usize,
    ids: Vec<PeerId>,
    ledger: Arc<Mutex<Ledger>>,
) -> std::thread::JoinHandle<()> {
    let events = node.subscribe(EventFilter::default(), 100_000);
    std::thread::spawn(move || {
        let to_of = |peer: &PeerId| ids.iter().position(|p| p == peer).unwrap_or(usize::MAX);
        while let Some(event) = events.recv_blocking() {
            let mut ledger = ledger.lock().unwrap_or_else(|p| p.into_inner());
            match event {
                Event::Undelivered {
                    peer,
                    stream,
                    unsent,
                    unconfirmed,
                } => {
                    let key = (me, to_of(&peer), stream_index(&stream));
                    let never = ledger.unsent.entry(key).or_default();
                    unsent.iter().for_each(|m| never.insert(seq(m)));
                    let maybe = ledger.unconfirmed.entry(key).or_default();
                    unconfirmed.iter().for_each(|m| maybe.insert(seq(m)));
                }
                Event::SendFailed {
                    peer, stream, data, ..
                } => {
                    let key = (me, to_of(&peer), stream_index(&stream));
                    ledger.unsent.entry(key).or_default().insert(seq(&data));
                }
                Event::Missed { count } => ledger
                    .violations
                    .push(format!("node {me}: its subscription lost {count} events")),
                _ => {}
            }
        }
    })
}

fn proc_status(field: &str) -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix(field))
                .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        })
        .unwrap_or(0)
}

/// One fault (or churn) on a random pair; returns what it was. The fault lasts `hold`.
fn inject(soak: &Soak, rng: &mut Rng, hold: Duration) -> &'static str {
    let pair = [(0, 1), (0, 2), (1, 2)][(rng.next() % 3) as usize];
    let proxy = &soak.proxies[&pair];
    let both = |faults: Faults| {
        proxy.set(Direction::Up, faults.clone());
        proxy.set(Direction::Down, faults);
    };
    let what = match rng.next() % 6 {
        0 => {
            proxy.cut_all();
            "cut"
        }
        1 => {
            both(Faults {
                corrupt_every: Some(100_000),
                ..Faults::default()
            });
            "corruption"
        }
        2 => {
            both(Faults {
                latency: Duration::from_millis(20),
                jitter: Duration::from_millis(10),
                ..Faults::default()
            });
            "latency"
        }
        3 => {
            proxy.partition();
            "partition"
        }
        4 => {
            both(Faults {
                bandwidth: Some(1_000_000),
                ..Faults::default()
            });
            "bandwidth"
        }
        _ => {
            // Churn: the dialler hangs up on purpose, then dials again.
            let (i, j) = pair;
            let hung_up = soak.nodes[i].disconnect(soak.ids[j]);
            std::thread::sleep(Duration::from_millis(200));
            let dialled = soak.nodes[i].connect(soak.ids[j], proxy.addr());
            if let Err(e) = hung_up.and(dialled) {
                soak.ledger
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .violations
                    .push(format!("churn: a command was refused: {e}"));
            }
            "churn"
        }
    };
    std::thread::sleep(hold);
    proxy.heal();
    what
}

/// Runs the soak for `duration`; `Err` on a violation.
pub(crate) fn soak(duration: Duration, seed: u64) -> Result<(), String> {
    let soak = Soak::start()?;
    let stop = Arc::new(AtomicBool::new(false));
    let helpers: Vec<_> = soak
        .nodes
        .iter()
        .map(|n| handshakes(n.clone(), stop.clone()))
        .collect();
    soak.wait_established(Duration::from_secs(10))
        .ok_or("the nodes never connected")?;
    let collectors: Vec<_> = (0..NODES)
        .map(|me| collector(&soak.nodes[me], me, soak.ids.clone(), soak.ledger.clone()))
        .collect();
    let senders: Vec<_> = (0..NODES)
        .map(|me| {
            let seed = seed.wrapping_mul(31).wrapping_add(me as u64);
            sender(
                soak.nodes[me].clone(),
                me,
                soak.ids.clone(),
                seed,
                stop.clone(),
            )
        })
        .collect();
    let rss_start = proc_status("VmRSS:");
    println!(
        "soak: {NODES} nodes, each pair through a fault proxy, {duration:?}, seed {seed}; a fault \
         or churn every {FAULT_EVERY:?}"
    );
    println!(
        "| time | messages/s | MB/s | resident MiB | threads | descriptors | faults | violations |"
    );
    println!("|---:|---:|---:|---:|---:|---:|---:|---:|");
    let mut rng = Rng(seed | 1);
    let start = Instant::now();
    let (mut last_report, mut last_messages, mut last_bytes) = (start, 0, 0);
    let mut faults: HashMap<&str, u64> = HashMap::new();
    let mut next_fault = start + FAULT_EVERY;
    let mut slowest_recovery = Duration::ZERO;
    while start.elapsed() < duration {
        if Instant::now() >= next_fault {
            let what = inject(&soak, &mut rng, Duration::from_millis(1000));
            *faults.entry(what).or_default() += 1;
            // Give the recovery a bound: every fault is over now.
            match soak.wait_established(Duration::from_secs(20)) {
                Some(t) => slowest_recovery = slowest_recovery.max(t),
                None => soak
                    .ledger
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .violations
                    .push(format!(
                        "not Established within 20 s after {what}: {:?}",
                        soak.states()
                    )),
            }
            next_fault = Instant::now() + FAULT_EVERY;
        }
        if last_report.elapsed() >= REPORT_EVERY {
            let (m, b) = (
                soak.messages.load(Ordering::Relaxed),
                soak.bytes.load(Ordering::Relaxed),
            );
            let secs = last_report.elapsed().as_secs_f64();
            let violations = soak
                .ledger
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .violations
                .len();
            println!(
                "| {:.0} s | {:.0} | {:.1} | {:.0} | {} | {} | {} | {violations} |",
                start.elapsed().as_secs_f64(),
                (m - last_messages) as f64 / secs,
                (b - last_bytes) as f64 / secs / 1e6,
                proc_status("VmRSS:") as f64 / 1024.0,
                proc_status("Threads:"),
                glueberry::open_fd_count(),
                faults.values().sum::<u64>()
            );
            (last_report, last_messages, last_bytes) = (Instant::now(), m, b);
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    stop.store(true, Ordering::Relaxed);
    let accepted: Vec<HashMap<(usize, usize), u64>> = senders
        .into_iter()
        .map(|s| s.join().map_err(|_| "a sender panicked".to_string()))
        .collect::<Result<_, _>>()?;
    for helper in helpers {
        let _ = helper.join();
    }
    // What is still in flight is delivered, or handed back when the nodes stop.
    for node in &soak.nodes {
        node.drain_blocking(Duration::from_secs(5));
    }
    for node in &soak.nodes {
        node.stop_blocking();
    }
    for collector in collectors {
        let _ = collector.join();
    }
    let elapsed = start.elapsed();
    let rss_end = proc_status("VmRSS:");
    let mut ledger = soak.ledger.lock().unwrap_or_else(|p| p.into_inner());
    let (mut total, mut received, mut never, mut maybe) = (0, 0, 0, 0);
    let mut lost = Vec::new();
    for (from, counts) in accepted.iter().enumerate() {
        for (&(to, s), &count) in counts {
            let key = (from, to, s);
            let empty = Ranges::default();
            let got = ledger.received.get(&key).map_or(&empty, |(r, _)| r);
            let unsent = ledger.unsent.get(&key).unwrap_or(&empty);
            let unconfirmed = ledger.unconfirmed.get(&key).unwrap_or(&empty);
            total += count;
            received += got.count();
            never += unsent.count();
            maybe += unconfirmed.count();
            for n in 1..=count {
                let (r, u, c) = (got.contains(n), unsent.contains(n), unconfirmed.contains(n));
                if r && u {
                    lost.push(format!(
                        "{from}->{to} {}: {n} handed back as unsent but received",
                        STREAMS[s]
                    ));
                } else if !r && !u && !c {
                    lost.push(format!(
                        "{from}->{to} {}: {n} neither received nor handed back",
                        STREAMS[s]
                    ));
                }
            }
        }
    }
    ledger.violations.extend(lost.into_iter().take(20));
    let faults_total: u64 = faults.values().sum();
    let mut kinds: Vec<_> = faults.into_iter().collect();
    kinds.sort();
    println!(
        "\nsoak over {:.0} s: {total} messages accepted, {received} received ({:.2} GB), {never} \
         handed back unsent, {maybe} handed back unconfirmed; {faults_total} faults {kinds:?}; \
         slowest recovery {slowest_recovery:?}; resident memory {} MiB at start, {} MiB at end; \
         violations {}",
        elapsed.as_secs_f64(),
        soak.bytes.load(Ordering::Relaxed) as f64 / 1e9,
        rss_start / 1024,
        rss_end / 1024,
        ledger.violations.len()
    );
    if ledger.violations.is_empty() {
        Ok(())
    } else {
        Err(format!("violations:\n{}", ledger.violations.join("\n")))
    }
}

#[cfg(test)]
mod tests {
    use super::Ranges;

    #[test]
    fn ranges_merge_and_answer_membership() {
        let mut r = Ranges::default();
        for n in [1, 2, 3, 7, 8, 5, 4, 10] {
            r.insert(n);
        }
        assert_eq!(r.0, vec![(1, 5), (7, 8), (10, 10)]);
        assert_eq!(r.count(), 8);
        assert!(r.contains(4) && r.contains(8) && r.contains(10));
        assert!(!r.contains(6) && !r.contains(9) && !r.contains(11) && !r.contains(0));
    }
}
