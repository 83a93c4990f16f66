//! Five nodes on five "hosts": each node is a process in its own network namespace, joined to
//! every other by a veth pair (a full mesh of ten links, each its own /30). The test partitions
//! {1,2} from {3,4,5} by taking the links between them down and heals it, limits one link with
//! the `tbf` qdisc, and kills one node with SIGKILL and restarts it from its data directory.
//! Every node checks per-sender order on what it receives and reports its peers' states.
//!
//! Needs root (`ip netns`); elsewhere it says so and passes without testing anything.
#![allow(clippy::expect_used, clippy::unwrap_used, clippy::panic)] // test code

use std::collections::{BTreeMap, HashMap};
use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use glueberry::crypto::{Identity, PeerId};
use glueberry::transport::{ConnState, ConnectionConfig};
use glueberry::{Node, NodeConfig};

const HOSTS: usize = 5;
const PORT: u16 = 7000;
const CHILD_ENV: &str = "GLUEBERRY_MULTIHOST_CHILD";

fn identity(host: usize) -> Identity {
    Identity::from_seed(&[host as u8 + 1; 32])
}

/// The link between hosts `i < j`: its number, 1 to 10.
fn link(i: usize, j: usize) -> usize {
    let (i, j) = (i.min(j), i.max(j));
    (0..i).map(|a| HOSTS - 1 - a).sum::<usize>() + (j - i)
}

/// Host `j`'s address as host `i` reaches it (over their link).
fn addr_of(i: usize, j: usize) -> SocketAddr {
    let end = if j > i { 2 } else { 1 };
    format!("10.77.{}.{end}:{PORT}", link(i, j))
        .parse()
        .unwrap()
}

fn veth(i: usize, j: usize) -> String {
    let side = if i < j { 'a' } else { 'b' };
    format!("gbv{}{side}", link(i, j))
}

fn ip(args: &[&str]) -> Result<(), String> {
    let out = Command::new("ip")
        .args(args)
        .output()
        .map_err(|e| e.to_string())?;
    if out.status.success() {
        Ok(())
    } else {
        Err(format!(
            "ip {}: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr).trim()
        ))
    }
}

/// The namespaces and links; removed on drop (deleting a namespace deletes its veth ends).
struct Hosts {
    names: Vec<String>,
}

impl Hosts {
    fn create() -> Result<Hosts, String> {
        let pid = std::process::id();
        let mut hosts = Hosts { names: Vec::new() };
        for h in 0..HOSTS {
            let name = format!("gb{pid}h{h}");
            ip(&["netns", "add", &name])?;
            hosts.names.push(name.clone());
            ip(&["-n", &name, "link", "set", "lo", "up"])?;
        }
        for i in 0..HOSTS {
            for j in i + 1..HOSTS {
                let (a, b) = (veth(i, j), veth(j, i));
                let (na, nb) = (&hosts.names[i], &hosts.names[j]);
                ip(&[
                    "link", "add", &a, "netns", na, "type", "veth", "peer", "name", &b, "netns", nb,
                ])?;
                for (ns, dev, end) in [(na, &a, 1), (nb, &b, 2)] {
                    let addr = format!("10.77.{}.{end}/30", link(i, j));
                    ip(&["-n", ns, "addr", "add", &addr, "dev", dev])?;
                    ip(&["-n", ns, "link", "set", dev, "up"])?;
                }
            }
        }
        Ok(hosts)
    }

    fn set_link(&self, i: usize, j: usize, up: bool) {
        let state = if up { "up" } else { "down" };
        for (h, other) in [(i, j), (j, i)] {
            ip(&["-n", &self.names[h], "link", "set", &veth(h, other), state]).unwrap();
        }
    }

    fn tc(&self, host: usize, args: &[&str]) {
        let mut all = vec!["netns", "exec", &self.names[host], "tc"];
        all.extend_from_slice(args);
        let out = Command::new("ip").args(&all).output().unwrap();
        assert!(
            out.status.success(),
            "tc {args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
}

impl Drop for Hosts {
    fn drop(&mut self) {
        for name in &self.names {
            let _ = ip(&["netns", "del", name]);
        }
    }
}

/// What the parent knows of the nodes, from their output lines.
#[derive(Default)]
struct Seen {
    /// (host, peer host) -> state name.
    states: HashMap<(usize, usize), String>,
    /// (receiver, sender) -> bytes received.
    bytes: HashMap<(usize, usize), u64>,
    violations: u64,
    lines: Vec<String>,
}

struct Nodes {
    children: Vec<Option<Child>>,
    seen: Arc<Mutex<Seen>>,
    dir: tempfile::TempDir,
}

impl Nodes {
    fn spawn(&mut self, hosts: &Hosts, h: usize, epoch: u32) {
        let exe = std::env::current_exe().unwrap();
        let data = self.dir.path().join(format!("host{h}"));
        std::fs::create_dir_all(&data).unwrap();
        let mut child = Command::new("ip")
            .args(["netns", "exec", &hosts.names[h]])
            .arg(exe)
            .args([
                "--exact",
                "multihost_child",
                "--nocapture",
                "--test-threads",
                "1",
            ])
            .env(CHILD_ENV, format!("{h}:{epoch}"))
            .env("GLUEBERRY_MULTIHOST_DIR", &data)
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let out = BufReader::new(child.stdout.take().unwrap());
        let seen = self.seen.clone();
        std::thread::spawn(move || {
            for line in out.lines().map_while(Result::ok) {
                let words: Vec<&str> = line.split_whitespace().collect();
                let mut seen = seen.lock().unwrap();
                match words.as_slice() {
                    ["state", peer, state] => {
                        seen.states
                            .insert((h, peer.parse().unwrap()), state.to_string());
                    }
                    ["bytes", peer, n] => {
                        seen.bytes
                            .insert((h, peer.parse().unwrap()), n.parse().unwrap());
                    }
                    ["violation", ..] => {
                        seen.violations += 1;
                        seen.lines.push(format!("host {h}: {line}"));
                    }
                    _ => {}
                }
            }
            // The process ended: it holds no connection any more.
            let mut seen = seen.lock().unwrap();
            for peer in 0..HOSTS {
                seen.states.insert((h, peer), "Gone".into());
            }
        });
        self.children[h] = Some(child);
    }

    fn kill(&mut self, h: usize) {
        if let Some(mut child) = self.children[h].take() {
            // `ip netns exec` execs the test binary: this is the node's process itself.
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    fn state(&self, h: usize, peer: usize) -> String {
        let seen = self.seen.lock().unwrap();
        seen.states.get(&(h, peer)).cloned().unwrap_or_default()
    }

    fn wait(&self, what: &str, within: Duration, done: impl Fn(&Nodes) -> bool) -> Duration {
        let start = Instant::now();
        while !done(self) {
            if start.elapsed() > within {
                let seen = self.seen.lock().unwrap();
                let mut states: Vec<_> = seen.states.iter().collect();
                states.sort();
                panic!("{what}: not within {within:?}; states {states:?}");
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        start.elapsed()
    }

    fn bytes(&self, to: usize, from: usize) -> u64 {
        let seen = self.seen.lock().unwrap();
        seen.bytes.get(&(to, from)).copied().unwrap_or(0)
    }
}

impl Drop for Nodes {
    fn drop(&mut self) {
        for h in 0..HOSTS {
            self.kill(h);
        }
    }
}

fn full_mesh(nodes: &Nodes) -> bool {
    (0..HOSTS).all(|i| {
        (0..HOSTS)
            .filter(|&j| j != i)
            .all(|j| nodes.state(i, j) == "Established")
    })
}

#[test]
fn five_hosts_partition_heal_bandwidth_limit_and_a_killed_node() {
    if std::env::var_os(CHILD_ENV).is_some() {
        return;
    }
    let hosts = match Hosts::create() {
        Ok(hosts) => hosts,
        Err(e) => {
            eprintln!("skipped: cannot create network namespaces here ({e}); run as root");
            return;
        }
    };
    let mut nodes = Nodes {
        children: (0..HOSTS).map(|_| None).collect(),
        seen: Arc::default(),
        dir: tempfile::tempdir().unwrap(),
    };
    for h in 0..HOSTS {
        nodes.spawn(&hosts, h, 0);
    }
    let t = nodes.wait("full mesh", Duration::from_secs(30), full_mesh);
    println!("full mesh of {HOSTS} hosts Established in {t:?}");

    // Partition {1,2} | {3,4,5} (hosts 0,1 | 2,3,4 here).
    let (left, right) = ([0, 1], [2, 3, 4]);
    for &i in &left {
        for &j in &right {
            hosts.set_link(i, j, false);
        }
    }
    let t = nodes.wait("partition noticed", Duration::from_secs(15), |n| {
        left.iter().all(|&i| {
            right
                .iter()
                .all(|&j| n.state(i, j) != "Established" && n.state(j, i) != "Established")
        })
    });
    println!("partition noticed on both sides in {t:?}");
    assert_eq!(nodes.state(0, 1), "Established", "the left side split");
    assert_eq!(nodes.state(2, 4), "Established", "the right side split");
    std::thread::sleep(Duration::from_secs(2));
    for &i in &left {
        for &j in &right {
            hosts.set_link(i, j, true);
        }
    }
    let t = nodes.wait("healed", Duration::from_secs(20), full_mesh);
    println!("full mesh again {t:?} after healing");

    // One link limited to 1 Mbit/s both ways; the others carry what is offered.
    let rate = [
        "root", "tbf", "rate", "1mbit", "burst", "16kb", "latency", "100ms",
    ];
    let mut add = vec!["qdisc", "add", "dev", ""];
    add.extend_from_slice(&rate);
    let (dev01, dev10) = (veth(0, 1), veth(1, 0));
    add[3] = &dev01;
    hosts.tc(0, &add);
    add[3] = &dev10;
    hosts.tc(1, &add);
    std::thread::sleep(Duration::from_secs(1));
    let (limited0, open0) = (nodes.bytes(1, 0), nodes.bytes(1, 2));
    std::thread::sleep(Duration::from_secs(3));
    let limited = (nodes.bytes(1, 0) - limited0) / 3;
    let open = (nodes.bytes(1, 2) - open0) / 3;
    println!("tbf 1 Mbit/s: host 1 -> 2 carried {limited} B/s; unlimited host 3 -> 2: {open} B/s");
    assert!(
        limited <= 1_000_000 / 8 * 3 / 2,
        "the limit did not hold: {limited} B/s"
    );
    assert!(
        open > 2 * limited,
        "the unlimited link was held back too: {open} B/s"
    );
    assert_eq!(nodes.state(1, 0), "Established", "the limited link dropped");
    hosts.tc(0, &["qdisc", "del", "dev", &dev01, "root"]);
    hosts.tc(1, &["qdisc", "del", "dev", &dev10, "root"]);

    // Host 3 (index 2) killed and restarted from its data directory, with no peer list.
    nodes.kill(2);
    let t = nodes.wait("kill noticed", Duration::from_secs(15), |n| {
        (0..HOSTS)
            .filter(|&j| j != 2)
            .all(|j| n.state(j, 2) != "Established")
    });
    println!("SIGKILL of host 3 noticed by every peer in {t:?}");
    nodes.spawn(&hosts, 2, 1);
    let t = nodes.wait(
        "restarted node rejoined",
        Duration::from_secs(20),
        full_mesh,
    );
    println!("restarted host 3 back in the full mesh in {t:?}");
    std::thread::sleep(Duration::from_millis(500));
    let seen = nodes.seen.lock().unwrap();
    assert_eq!(seen.violations, 0, "order violations: {:?}", seen.lines);
    let total: u64 = seen.bytes.values().sum();
    println!("violations 0; {total} bytes received in all");
}

/// In a child: one node on its host, until killed. Prints `state <peer> <state>` on each
/// change, `bytes <peer> <total>` every 200 ms, and `violation ...` if a sender's messages arrive
/// out of order.
#[test]
fn multihost_child() {
    let Some(spec) = std::env::var(CHILD_ENV).ok() else {
        return;
    };
    let (host, epoch) = spec.split_once(':').unwrap();
    let (host, epoch): (usize, u32) = (host.parse().unwrap(), epoch.parse().unwrap());
    let dir = std::path::PathBuf::from(std::env::var("GLUEBERRY_MULTIHOST_DIR").unwrap());
    let ids: Vec<PeerId> = (0..HOSTS).map(|h| identity(h).peer_id()).collect();
    let host_of: HashMap<PeerId, usize> = ids.iter().enumerate().map(|(h, p)| (*p, h)).collect();
    let bytes: Arc<Vec<AtomicU64>> = Arc::new((0..HOSTS).map(|_| AtomicU64::new(0)).collect());
    // Per sender: the (epoch, sequence) last received.
    let last: Arc<Mutex<HashMap<PeerId, (u32, u64)>>> = Arc::default();
    let handler = {
        let (bytes, last, host_of) = (bytes.clone(), last.clone(), host_of.clone());
        Arc::new(move |peer: &PeerId, _: &str, data: &Bytes| {
            let epoch = u32::from_be_bytes(data[..4].try_into().unwrap());
            let seq = u64::from_be_bytes(data[4..12].try_into().unwrap());
            let mut last = last.lock().unwrap();
            if let Some(&(e, s)) = last.get(peer)
                && (epoch < e || (epoch == e && seq <= s))
            {
                println!(
                    "violation from {}: ({e}, {s}) then ({epoch}, {seq})",
                    host_of[peer]
                );
            }
            last.insert(*peer, (epoch, seq));
            bytes[host_of[peer]].fetch_add(data.len() as u64, Ordering::Relaxed);
        }) as glueberry::Handler
    };
    let config = NodeConfig::new(identity(host), "multihost", ([0, 0, 0, 0], PORT).into())
        .shards(1)
        .handler(handler)
        .address_book(dir.join("peers.json"))
        .reconnect(Duration::from_millis(100), Duration::from_secs(1), 0)
        .dial_timeout(Duration::from_secs(2))
        .connection(ConnectionConfig {
            keepalive_interval: Duration::from_millis(300),
            idle_timeout: Duration::from_millis(1200),
            ..ConnectionConfig::default()
        });
    let node = Node::start(config).unwrap();
    if node.peers().is_empty() {
        // First start: everyone else, at the address of our link to them.
        for peer in (0..HOSTS).filter(|&p| p != host) {
            node.add_peer(ids[peer], vec![addr_of(host, peer)], BTreeMap::new())
                .unwrap();
        }
    }
    let stream = node.stream("consensus");
    let mut states: HashMap<usize, ConnState> = HashMap::new();
    let mut seq = 0u64;
    let mut payload = vec![0u8; 8 * 1024];
    payload[..4].copy_from_slice(&epoch.to_be_bytes());
    let mut last_report = Instant::now();
    loop {
        for (peer, state) in node.connected_peers() {
            let Some(&h) = host_of.get(&peer) else {
                continue;
            };
            if states.insert(h, state) != Some(state) {
                println!("state {h} {state:?}");
            }
            match state {
                ConnState::Connected => {
                    let _ = node.complete_handshake(peer, &["consensus"]);
                }
                ConnState::Established => {
                    seq += 1;
                    payload[4..12].copy_from_slice(&seq.to_be_bytes());
                    // A full stream refuses: that message is simply not sent.
                    if node
                        .try_send(peer, &stream, Bytes::copy_from_slice(&payload))
                        .is_err()
                    {
                        seq -= 1;
                    }
                }
                _ => {}
            }
        }
        for h in (0..HOSTS).filter(|&h| h != host) {
            if !node
                .connected_peers()
                .iter()
                .any(|(p, _)| host_of.get(p) == Some(&h))
                && states.insert(h, ConnState::Disconnected) != Some(ConnState::Disconnected)
            {
                println!("state {h} Disconnected");
            }
        }
        if last_report.elapsed() >= Duration::from_millis(200) {
            for (h, b) in bytes.iter().enumerate() {
                println!("bytes {h} {}", b.load(Ordering::Relaxed));
            }
            last_report = Instant::now();
        }
        std::thread::sleep(Duration::from_millis(10));
    }
}
