//! `glueberry-perf members`: peer sets on loopback. How long a set of members that know only
//! two bootstrap addresses takes to form a full mesh, to mesh again after an epoch change that
//! replaces some of them, and to find a member that restarted on another port; and what a
//! refused stranger costs the node's shard against a member's full handshake.

use std::net::TcpStream;
use std::time::{Duration, Instant};

use glueberry::crypto::{HandshakeConfig, Identity};
use glueberry::transport::{ConnState, Connection, ConnectionConfig};
use glueberry::{
    ConnectionLimits, Event, EventFilter, Member, MembersConfig, MembershipPolicy, Node, NodeConfig,
};

const NETWORK: &str = "perf-members";
const LIMIT: Duration = Duration::from_secs(60);
const LOOPBACK: std::net::SocketAddr =
    std::net::SocketAddr::new(std::net::IpAddr::V4(std::net::Ipv4Addr::LOCALHOST), 0);

fn start(identity: &Identity) -> Result<Node, String> {
    let config = NodeConfig::new(identity.clone(), NETWORK, LOOPBACK)
        .shards(1)
        .pin_threads(false)
        .members(MembersConfig {
            policy: MembershipPolicy::MembersOnly,
            keep_epochs: 1,
            grace: Duration::from_millis(200),
            ..MembersConfig::default()
        });
    let node = Node::start(config).map_err(|e| e.to_string())?;
    let app = node.clone();
    let events = node.subscribe(EventFilter::all(), 4096);
    std::thread::spawn(move || {
        while let Some(event) = events.recv_blocking() {
            if let Event::State {
                peer,
                state: ConnState::Connected,
                ..
            } = event
            {
                let _ = app.complete_handshake(peer, &["consensus"]);
            }
        }
    });
    Ok(node)
}

/// Waits until every pair of `members` is Ready on both sides (and `also` holds).
fn wait_mesh(
    nodes: &[Option<Node>],
    ids: &[Identity],
    members: &[usize],
    also: impl Fn() -> bool,
) -> Result<Duration, String> {
    let started = Instant::now();
    loop {
        let meshed = members.iter().all(|&i| {
            members.iter().all(|&j| {
                i == j
                    || nodes[i]
                        .as_ref()
                        .is_some_and(|n| n.is_ready(ids[j].peer_id()))
            })
        });
        if meshed && also() {
            return Ok(started.elapsed());
        }
        if started.elapsed() > LIMIT {
            return Err(format!("no full mesh within {LIMIT:?}"));
        }
        std::thread::sleep(Duration::from_millis(5));
    }
}

fn set(ids: &[Identity], nodes: &[Option<Node>], members: &[usize]) -> Vec<Member> {
    members
        .iter()
        .enumerate()
        .map(|(k, &i)| match (&nodes[i], k < 2) {
            (Some(node), true) => Member::at(ids[i].peer_id(), node.listen_addr()),
            _ => Member::new(ids[i].peer_id()),
        })
        .collect()
}

/// Mesh formation, an epoch change replacing `replace`, a member moving: the three times.
pub(crate) fn mesh(members: usize, replace: usize) -> Result<(), String> {
    let total = members + replace;
    let ids: Vec<Identity> = (0..total)
        .map(|_| Identity::generate().map_err(|e| e.to_string()))
        .collect::<Result<_, _>>()?;
    let mut nodes: Vec<Option<Node>> = Vec::new();
    for id in &ids {
        nodes.push(Some(start(id)?));
    }
    let epoch1: Vec<usize> = (0..members).collect();
    let first = set(&ids, &nodes, &epoch1);
    for &i in &epoch1 {
        nodes[i]
            .as_ref()
            .ok_or("node")?
            .track(1, first.clone())
            .map_err(|e| e.to_string())?;
    }
    let took = wait_mesh(&nodes, &ids, &epoch1, || true)?;
    println!(
        "full mesh: {members} members knowing 2 bootstrap addresses: {:.0} ms ({} links)",
        took.as_secs_f64() * 1e3,
        members * (members - 1) / 2
    );

    // Epoch 2: the last `replace` members out, `replace` new ones in (the bootstraps stay).
    let epoch2: Vec<usize> = (0..members - replace).chain(members..total).collect();
    let leavers: Vec<usize> = (members - replace..members).collect();
    let second = set(&ids, &nodes, &epoch2);
    let started = Instant::now();
    for node in &nodes {
        node.as_ref()
            .ok_or("node")?
            .track(2, second.clone())
            .map_err(|e| e.to_string())?;
    }
    let joined = wait_mesh(&nodes, &ids, &epoch2, || true)?;
    wait_mesh(&nodes, &ids, &epoch2, || {
        epoch2.iter().all(|&i| {
            leavers.iter().all(|&l| {
                nodes[i]
                    .as_ref()
                    .is_some_and(|n| n.state(ids[l].peer_id()) == ConnState::Disconnected)
            })
        })
    })?;
    println!(
        "epoch change replacing {replace}: joiners meshed in {:.0} ms, leavers cut (grace 200 ms) after {:.0} ms",
        joined.as_secs_f64() * 1e3,
        started.elapsed().as_secs_f64() * 1e3
    );

    // A member restarts on another port with the same key.
    let mover = epoch2[2];
    let old = nodes[mover].take().ok_or("node")?;
    old.stop_blocking();
    let moved = start(&ids[mover])?;
    let new_addr = moved.listen_addr();
    moved.track(2, second.clone()).map_err(|e| e.to_string())?;
    nodes[mover] = Some(moved);
    let took = wait_mesh(&nodes, &ids, &epoch2, || {
        epoch2.iter().filter(|&&i| i != mover).all(|&i| {
            nodes[i].as_ref().is_some_and(|n| {
                n.members().iter().any(|m| {
                    m.peer == ids[mover].peer_id() && m.address == Some(new_addr) && m.ready
                })
            })
        })
    })?;
    println!(
        "a member moved to another port: every member connected to it at its new address in {:.0} ms",
        took.as_secs_f64() * 1e3
    );
    for node in nodes.into_iter().flatten() {
        node.stop_blocking();
    }
    Ok(())
}

/// Nanoseconds on a CPU of the (one) shard thread of this process so far.
fn shard_cpu_ns() -> Result<u64, String> {
    for task in std::fs::read_dir("/proc/self/task").map_err(|e| e.to_string())? {
        let path = task.map_err(|e| e.to_string())?.path();
        let comm = std::fs::read_to_string(path.join("comm")).unwrap_or_default();
        if comm.trim() == "glueberry-shard" {
            let stat =
                std::fs::read_to_string(path.join("schedstat")).map_err(|e| e.to_string())?;
            return stat
                .split_whitespace()
                .next()
                .and_then(|n| n.parse().ok())
                .ok_or_else(|| "schedstat unreadable".into());
        }
    }
    Err("no shard thread".into())
}

/// One dial: the secure handshake as `identity`, then read until the node closes or sends its
/// first record (SETTINGS for a member, CLOSE(12) for a stranger), then hang up.
fn dial(node: &Node, identity: &Identity) -> Result<(), String> {
    let handshake =
        std::sync::Arc::new(HandshakeConfig::new(identity, NETWORK).map_err(|e| e.to_string())?);
    let mut conn = Connection::outbound(
        std::sync::Arc::new(ConnectionConfig::default()),
        handshake,
        Some(node.peer_id()),
        Instant::now(),
    )
    .map_err(|e| e.to_string())?;
    let mut socket = TcpStream::connect(node.listen_addr()).map_err(|e| e.to_string())?;
    socket
        .set_read_timeout(Some(Duration::from_secs(5)))
        .map_err(|e| e.to_string())?;
    glueberry::transport::testing::handshake_blocking(&mut conn, &mut socket)
        .map_err(|e| e.to_string())?;
    let mut buf = [0u8; 4096];
    let _ = std::io::Read::read(&mut socket, &mut buf);
    Ok(())
}

/// A connection that is not Glueberry at all (a bad magic): what accepting, reading and closing
/// a socket costs the shard, with no cryptography.
fn dial_garbage(node: &Node) -> Result<(), String> {
    let mut socket = TcpStream::connect(node.listen_addr()).map_err(|e| e.to_string())?;
    socket
        .set_read_timeout(Some(Duration::from_secs(5)))
        .map_err(|e| e.to_string())?;
    std::io::Write::write_all(
        &mut socket,
        &[
            0x01, 0x00, 0x08, b'n', b'o', b't', b' ', b'g', b'b', b'!', b'!',
        ],
    )
    .map_err(|e| e.to_string())?;
    let mut buf = [0u8; 4096];
    let _ = std::io::Read::read(&mut socket, &mut buf);
    Ok(())
}

/// A dialler that sends its HelloRequest, reads the HelloResponse and hangs up: what the
/// responder's first flight costs the shard (with the socket's own cost).
fn dial_first_flight(node: &Node, identity: &Identity) -> Result<(), String> {
    let config =
        std::sync::Arc::new(HandshakeConfig::new(identity, NETWORK).map_err(|e| e.to_string())?);
    let mut handshake = glueberry::crypto::Handshake::initiator(config, Some(node.peer_id()))
        .map_err(|e| e.to_string())?;
    let mut socket = TcpStream::connect(node.listen_addr()).map_err(|e| e.to_string())?;
    socket
        .set_read_timeout(Some(Duration::from_secs(5)))
        .map_err(|e| e.to_string())?;
    let mut request = Vec::new();
    handshake.poll_transmit(&mut request);
    std::io::Write::write_all(&mut socket, &request).map_err(|e| e.to_string())?;
    let mut buf = [0u8; 4096];
    let _ = std::io::Read::read(&mut socket, &mut buf);
    Ok(())
}

/// The shard's CPU per refused stranger and per member handshake, interleaved in rounds.
pub(crate) fn strangers(per_round: usize, rounds: usize) -> Result<(), String> {
    let validator = Identity::generate().map_err(|e| e.to_string())?;
    let members: Vec<Identity> = (0..per_round * rounds)
        .map(|_| Identity::generate().map_err(|e| e.to_string()))
        .collect::<Result<_, _>>()?;
    let strangers: Vec<Identity> = (0..per_round * rounds)
        .map(|_| Identity::generate().map_err(|e| e.to_string()))
        .collect::<Result<_, _>>()?;
    let limits = ConnectionLimits {
        max_inbound_per_group: 100_000,
        max_pending_per_group: 100_000,
        inbound_attempts_per_group_per_sec: 1_000_000,
        stranger_handshakes_per_sec: 1_000_000,
        max_inbound: 100_000,
        max_total: 100_000,
        ..ConnectionLimits::default()
    };
    let config = NodeConfig::new(validator, NETWORK, LOOPBACK)
        .shards(1)
        .limits(limits)
        .event_buffer(100_000)
        .membership(MembershipPolicy::MembersOnly);
    let node = Node::start(config).map_err(|e| e.to_string())?;
    node.track(
        1,
        members.iter().map(|m| Member::new(m.peer_id())).collect(),
    )
    .map_err(|e| e.to_string())?;
    let mut spent: [Vec<f64>; 4] = Default::default();
    let [stranger_ns, member_ns, garbage_ns, flight_ns] = &mut spent;
    for round in 0..rounds {
        for (kind, out) in [
            (0, &mut *stranger_ns),
            (1, &mut *member_ns),
            (2, &mut *garbage_ns),
            (3, &mut *flight_ns),
        ] {
            // Let the previous batch's closes settle first.
            std::thread::sleep(Duration::from_millis(200));
            let before = shard_cpu_ns()?;
            for n in round * per_round..(round + 1) * per_round {
                match kind {
                    0 => dial(&node, &strangers[n])?,
                    1 => dial(&node, &members[n])?,
                    2 => dial_garbage(&node)?,
                    _ => dial_first_flight(&node, &strangers[n])?,
                }
            }
            std::thread::sleep(Duration::from_millis(200));
            let spent = shard_cpu_ns()? - before;
            out.push(spent as f64 / per_round as f64 / 1e3);
        }
    }
    let (accepted, _) = node.connection_counts();
    node.stop_blocking();
    let median = |v: &mut Vec<f64>| {
        v.sort_by(f64::total_cmp);
        v[v.len() / 2]
    };
    let text = |v: &[f64]| {
        v.iter()
            .map(|x| format!("{x:.0}"))
            .collect::<Vec<_>>()
            .join(", ")
    };
    println!(
        "shard CPU per connection, {per_round} a round, {rounds} rounds interleaved: \
         refused stranger {} µs (median {:.0}), member handshake {} µs (median {:.0}), \
         a socket that is not Glueberry (bad magic: accept, read, close, no cryptography) {} µs \
         (median {:.0}), the first flight alone (HelloRequest in, HelloResponse out, hang up) \
         {} µs (median {:.0}); strangers counted as connected: {accepted}",
        text(stranger_ns),
        median(&mut stranger_ns.clone()),
        text(member_ns),
        median(&mut member_ns.clone()),
        text(garbage_ns),
        median(&mut garbage_ns.clone()),
        text(flight_ns),
        median(&mut flight_ns.clone()),
    );
    Ok(())
}
