//! Attackers with valid identities (free to make) against a real node over loopback: they
//! authenticate, then try to crowd out, stall or pin the node. Each test prints the node's
//! process RSS and what the honest side kept.
#![allow(clippy::expect_used, clippy::unwrap_used, clippy::panic)] // test code

mod common;
use common::rss_kib;

use std::net::{IpAddr, Ipv4Addr, SocketAddr, TcpStream};
use std::time::{Duration, Instant};

use glueberry::crypto::{Identity, PeerId};
use glueberry::testing::{establish, reestablish, wait_for_state};
use glueberry::transport::ConnState;
use glueberry::{ConnectionLimits, Node, NodeConfig};

const NET: &str = "sybil-test";
const T: Duration = Duration::from_secs(10);

fn config() -> NodeConfig {
    common::loopback_config(NET)
}

/// An authenticated client from `source` (any 127.x.y.z works on Linux loopback): the secure
/// handshake done, its SETTINGS sent, nothing else.
fn authenticated_from(node: &Node, source: Ipv4Addr, identity: &Identity) -> Option<TcpStream> {
    let mut conn = common::client_connection(node, identity, NET);
    let socket = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None).unwrap();
    socket
        .bind(&SocketAddr::new(IpAddr::V4(source), 0).into())
        .unwrap();
    socket.connect(&node.listen_addr().into()).ok()?;
    let mut socket: TcpStream = socket.into();
    socket.set_read_timeout(Some(T)).unwrap();
    glueberry::transport::testing::handshake_blocking(&mut conn, &mut socket).ok()?;
    Some(socket)
}

/// Waits until `f` holds.
fn wait_until(what: &str, mut f: impl FnMut() -> bool) {
    let deadline = Instant::now() + T;
    while !f() {
        assert!(Instant::now() < deadline, "{what}: not within {T:?}");
        std::thread::sleep(Duration::from_millis(5));
    }
}

#[test]
fn sybil_identities_fill_inbound_but_persistent_and_outbound_peers_stay() {
    // Two shards, so that evictions and the node-wide counts cross shards.
    let validator = Node::start(config().shards(2).event_buffer(100_000)).unwrap();
    let limits = ConnectionLimits::default();
    let before = rss_kib();

    // 416 identities from 26 /24 networks (16 each, the per-group limit), all authenticated.
    let started = Instant::now();
    let mut sybils = Vec::new();
    let mut refused = 0;
    for group in 1..=26u8 {
        for host in 1..=16u8 {
            let source = Ipv4Addr::new(127, group, 0, host);
            match authenticated_from(&validator, source, &Identity::generate().unwrap()) {
                Some(socket) => sybils.push(socket),
                None => refused += 1,
            }
            // The per-group attempt rate (10/s, bursts of 20) is not what is tested here.
            if host % 8 == 0 {
                std::thread::sleep(Duration::from_millis(50));
            }
        }
    }
    // Admissions and evictions finish on the node's side after the last client's handshake:
    // let them settle.
    std::thread::sleep(Duration::from_millis(500));
    wait_until("inbound full", || {
        validator.connection_counts().0 == limits.max_inbound
    });
    let (inbound, outbound) = validator.connection_counts();
    println!(
        "{} sybil identities authenticated in {:?} ({refused} refused at once): inbound {inbound}, \
         outbound {outbound}; {}",
        sybils.len(),
        started.elapsed(),
        validator.health().check("connections").unwrap().detail
    );
    assert_eq!(inbound, limits.max_inbound, "inbound is full of sybils");

    // The validator's persistent peers and an ordinary outbound peer still connect: outbound
    // room is reserved and persistent peers are not counted at all.
    let persistent: Vec<Node> = (0..2).map(|_| Node::start(config()).unwrap()).collect();
    for p in &persistent {
        validator
            .add_persistent_peer(p.peer_id(), p.listen_addr())
            .unwrap();
    }
    for p in &persistent {
        reestablish(&validator, p, &["consensus"], T).expect("a persistent peer connects");
    }
    let ordinary = Node::start(config()).unwrap();
    establish(&validator, &ordinary, &["consensus"], T).expect("an outbound peer connects");
    assert_eq!(
        validator.connection_counts().1,
        1,
        "only the ordinary one is counted"
    );

    // An honest inbound peer from a network group the sybils do not hold (127.0.0.1) evicts
    // one of them; inbound stays at its limit.
    // (The sybils already evicted each other: a newcomer from a smaller group takes the place
    // of the newest member of the largest, so the flood ends spread evenly over its groups.)
    let evicted = |node: &Node| {
        let detail = node.health().check("connections").unwrap().detail.clone();
        let n = detail
            .rsplit(", ")
            .next()
            .unwrap()
            .trim_end_matches(" evicted");
        n.parse::<usize>().unwrap()
    };
    let evicted_before = evicted(&validator);
    let honest = Node::start(config()).unwrap();
    establish(&honest, &validator, &["consensus"], T).expect("an honest inbound peer connects");
    // (The evicted sybil's slot comes back when its shard has closed it.)
    wait_until("inbound back at its limit", || {
        validator.connection_counts().0 == limits.max_inbound
    });
    println!(
        "after an honest inbound peer: {}",
        validator.health().check("connections").unwrap().detail
    );
    assert_eq!(
        evicted(&validator),
        evicted_before + 1,
        "one sybil made room"
    );

    // A persistent peer that drops is redialled (the sybils still hold inbound).
    persistent[0].disconnect(validator.peer_id()).unwrap();
    wait_for_state(
        &validator,
        persistent[0].peer_id(),
        ConnState::Reconnecting,
        T,
    )
    .unwrap();
    reestablish(&validator, &persistent[0], &["consensus"], T).expect("redialled");

    let after = rss_kib();
    println!(
        "validator process RSS {before} KiB -> {after} KiB with {} sybil sockets open; \
         persistent peers {:?}",
        sybils.len(),
        persistent
            .iter()
            .map(|p| validator.state(p.peer_id()))
            .collect::<Vec<_>>()
    );
    for p in &persistent {
        assert_eq!(validator.state(p.peer_id()), ConnState::Established);
    }
    drop(sybils);
    for n in persistent.iter().chain([&ordinary, &honest]) {
        n.stop_blocking();
    }
    validator.stop_blocking();
}

#[test]
fn a_flood_from_one_network_group_cannot_evict_a_diverse_peer() {
    let validator = Node::start(config().limits(ConnectionLimits {
        max_inbound: 8,
        ..Default::default()
    }))
    .unwrap();
    // Eight honest peers from eight groups (127.1..8.0.1) fill inbound.
    let honest: Vec<(PeerId, TcpStream)> = (1..=8u8)
        .map(|g| {
            let id = Identity::generate().unwrap();
            let socket = authenticated_from(&validator, Ipv4Addr::new(127, g, 0, 1), &id).unwrap();
            (id.peer_id(), socket)
        })
        .collect();
    wait_until("inbound full", || validator.connection_counts().0 == 8);
    // An attacker from one group tries 16 identities: every group holds one peer, each the
    // oldest of its group (protected), so nobody is evicted and the attacker is refused.
    let mut attackers = Vec::new();
    for host in 1..=16u8 {
        let source = Ipv4Addr::new(127, 50, 0, host);
        if let Some(s) = authenticated_from(&validator, source, &Identity::generate().unwrap()) {
            attackers.push(s);
        }
        std::thread::sleep(Duration::from_millis(60));
    }
    std::thread::sleep(Duration::from_millis(200));
    for (peer, _) in &honest {
        assert_eq!(validator.state(*peer), ConnState::Connected, "kept");
    }
    let detail = validator
        .health()
        .check("connections")
        .unwrap()
        .detail
        .clone();
    println!("one group's flood against eight diverse peers: {detail}");
    assert!(detail.ends_with("0 evicted"), "{detail}");
    validator.stop_blocking();
}

/// `Event::Refused` events about `peer` received so far.
fn refusals_of(events: &glueberry::Subscription, peer: PeerId) -> usize {
    std::iter::from_fn(|| events.try_recv())
        .filter(|e| matches!(e, glueberry::Event::Refused { peer: Some(p), .. } if *p == peer))
        .count()
}

#[test]
fn a_blacklisted_peer_is_told_it_is_refused_and_does_not_redial() {
    use glueberry::transport::CloseCode;
    use glueberry::{ConnectError, DialFailure};

    let dir = tempfile::tempdir().unwrap();
    let book = dir.path().join("book.json");
    let start = || {
        Node::start(
            NodeConfig::new(
                Identity::from_seed(&[77; 32]),
                NET,
                "127.0.0.1:0".parse().unwrap(),
            )
            .shards(2)
            .address_book(&book),
        )
        .unwrap()
    };
    let node = start();
    let attacker = Node::start(config()).unwrap();
    node.blacklist(attacker.peer_id()).unwrap();
    let events = node.events();

    let refused = |node: &Node| {
        futures::executor::block_on(attacker.connect_and_wait(node.peer_id(), node.listen_addr()))
    };
    match refused(&node) {
        Err(ConnectError::Failed {
            cause: DialFailure::RefusedByPeer(code),
            ..
        }) => {
            assert_eq!(code, CloseCode::Blacklisted);
            println!("the blacklisted peer's connect_and_wait: RefusedByPeer({code})");
        }
        other => panic!("expected a refusal, got {other:?}"),
    }
    // It does not redial: over three seconds the node refuses it once, the one dial above.
    std::thread::sleep(Duration::from_secs(3));
    assert_eq!(attacker.state(node.peer_id()), ConnState::Disconnected);
    let seen = refusals_of(&events, attacker.peer_id());
    println!("refusals the blacklisting node reported in 3 s: {seen}");
    assert_eq!(seen, 1, "refused once, reported once, no redial loop");

    // After a restart the stored blacklist holds from the first accept, on every shard.
    node.stop_blocking();
    drop(node);
    let node = start();
    assert!(matches!(
        refused(&node),
        Err(ConnectError::Failed {
            cause: DialFailure::RefusedByPeer(code),
            ..
        }) if code == CloseCode::Blacklisted
    ));

    // The disk write fails (the book's directory is gone): the error is returned, and the
    // blacklist is enforced all the same.
    let other = Node::start(config()).unwrap();
    std::fs::remove_dir_all(dir.path()).unwrap();
    assert!(
        node.blacklist(other.peer_id()).is_err(),
        "the failed write is reported"
    );
    let result =
        futures::executor::block_on(other.connect_and_wait(node.peer_id(), node.listen_addr()));
    assert!(
        matches!(result, Err(ConnectError::Failed {
            cause: DialFailure::RefusedByPeer(code),
            ..
        }) if code == CloseCode::Blacklisted),
        "{result:?}"
    );
    for n in [&node, &attacker, &other] {
        n.stop_blocking();
    }
}
