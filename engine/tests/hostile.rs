//! Hostile peers against a real node over loopback: each client misbehaves on purpose. For each,
//! the node stays up and keeps serving an honest peer, cuts the offender off, reports it, and its
//! memory stays bounded (printed).
#![allow(clippy::expect_used, clippy::unwrap_used, clippy::panic)] // test code

mod common;
use common::{alone, rss_kib};

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::sync::Arc;
use std::time::{Duration, Instant};

use glueberry::crypto::record::RecordError;
use glueberry::crypto::{HandshakeConfig, Identity, PeerId};
use glueberry::transport::{CloseReason, ConnState, Connection, ConnectionError};
use glueberry::{Event, Node, NodeConfig};

const NET: &str = "hostile-test";
const T: Duration = Duration::from_secs(10);

/// A one-shard node on loopback with a fresh identity.
fn config() -> NodeConfig {
    common::loopback_config(NET)
}

fn node() -> Node {
    Node::start(
        config()
            .event_buffer(10_000)
            .pending_handshakes(64, Duration::from_secs(2)),
    )
    .expect("start")
}

/// The node closes `socket` (EOF or reset) within the timeout.
fn closed_by_node(socket: &mut TcpStream) -> bool {
    socket
        .set_read_timeout(Some(Duration::from_millis(200)))
        .unwrap();
    let deadline = Instant::now() + T;
    let mut buf = [0u8; 4096];
    while Instant::now() < deadline {
        match socket.read(&mut buf) {
            Ok(0) => return true,
            Ok(_) => {}
            Err(e)
                if e.kind() == std::io::ErrorKind::WouldBlock
                    || e.kind() == std::io::ErrorKind::TimedOut => {}
            Err(_) => return true,
        }
    }
    false
}

/// Runs `attack` and reports the node's memory before and after.
fn measured(name: &str, node: &Node, attack: impl FnOnce()) {
    let before = rss_kib();
    attack();
    let after = rss_kib();
    println!(
        "{name}: process RSS {before} KiB -> {after} KiB ({:+} KiB); open fds {}",
        after as i64 - before as i64,
        glueberry::open_fd_count()
    );
    assert!(
        after < before + 8 * 1024,
        "{name}: memory grew by {} KiB",
        after - before
    );
    common::still_serves(node, NET);
}

/// A client that completes the secure handshake with the transport core over a blocking socket.
fn authenticated(node: &Node, identity: &Identity) -> (TcpStream, Connection) {
    let mut conn = common::client_connection(node, identity, NET);
    let mut socket = TcpStream::connect(node.listen_addr()).unwrap();
    glueberry::transport::testing::handshake_blocking(&mut conn, &mut socket)
        .expect("an honest handshake");
    (socket, conn)
}

/// The reason the node reported for `peer`'s disconnection (the events since the last call).
fn reason(events: &glueberry::Subscription, peer: PeerId) -> CloseReason {
    let deadline = Instant::now() + T;
    loop {
        assert!(
            Instant::now() < deadline,
            "no disconnection of {peer} reported"
        );
        match events.try_recv() {
            Some(Event::State {
                peer: p,
                state: ConnState::Disconnected,
                reason: Some(reason),
                ..
            }) if p == peer => return reason,
            Some(_) => {}
            None => std::thread::sleep(Duration::from_millis(5)),
        }
    }
}

/// Waits until `node` reports `peer` disconnected (or never connected again), with a reason.
fn cut_off(node: &Node, peer: PeerId) {
    let deadline = Instant::now() + T;
    while node.state(peer) != ConnState::Disconnected {
        assert!(
            Instant::now() < deadline,
            "{peer} still {:?}",
            node.state(peer)
        );
        std::thread::sleep(Duration::from_millis(5));
    }
}

#[test]
fn garbage_instead_of_a_handshake_is_cut_off() {
    let _alone = alone();
    let node = node();
    measured("random bytes instead of a handshake", &node, || {
        let mut seed = 0x9e37_79b9_7f4a_7c15u64;
        for _ in 0..50 {
            let mut socket = TcpStream::connect(node.listen_addr()).unwrap();
            let junk: Vec<u8> = (0..512)
                .map(|_| {
                    seed ^= seed << 13;
                    seed ^= seed >> 7;
                    seed ^= seed << 17;
                    seed as u8
                })
                .collect();
            let _ = socket.write_all(&junk);
            assert!(closed_by_node(&mut socket), "junk not refused");
        }
    });
    node.stop_blocking();
}

#[test]
fn truncated_and_oversized_handshake_messages_are_cut_off_before_allocation() {
    let _alone = alone();
    let node = node();
    measured("truncated handshake", &node, || {
        let identity = Identity::generate().unwrap();
        let handshake = Arc::new(HandshakeConfig::new(&identity, NET).unwrap());
        let mut hs = glueberry::crypto::Handshake::initiator(handshake, None).unwrap();
        let mut first = Vec::new();
        hs.poll_transmit(&mut first);
        for cut in [1, 3, first.len() / 2, first.len() - 1] {
            let mut socket = TcpStream::connect(node.listen_addr()).unwrap();
            socket.write_all(&first[..cut]).unwrap();
            socket.shutdown(std::net::Shutdown::Write).unwrap();
            assert!(
                closed_by_node(&mut socket),
                "a handshake cut at {cut} was not dropped"
            );
        }
    });
    measured("handshake length prefixes 0xFFFF and max+1", &node, || {
        for len in [0xFFFFu16, 8193] {
            let mut socket = TcpStream::connect(node.listen_addr()).unwrap();
            let [hi, lo] = len.to_be_bytes();
            socket.write_all(&[0x01, hi, lo]).unwrap();
            assert!(
                closed_by_node(&mut socket),
                "length {len:#x} not refused at the header"
            );
        }
    });
    node.stop_blocking();
}

#[test]
fn garbage_replayed_and_oversized_records_after_a_valid_handshake_are_cut_off() {
    let _alone = alone();
    let node = node();
    let events = node.events();
    measured("garbage record after a valid handshake", &node, || {
        let identity = Identity::generate().unwrap();
        let (mut socket, _) = authenticated(&node, &identity);
        socket.write_all(&[0x10, 0, 0, 40]).unwrap();
        socket.write_all(&[0xAB; 40]).unwrap();
        assert!(closed_by_node(&mut socket));
        cut_off(&node, identity.peer_id());
        assert_eq!(
            reason(&events, identity.peer_id()),
            CloseReason::Error(ConnectionError::Record(RecordError::Decrypt))
        );
    });
    measured("record length 0xFFFFFF", &node, || {
        let identity = Identity::generate().unwrap();
        let (mut socket, _) = authenticated(&node, &identity);
        socket.write_all(&[0x10, 0xFF, 0xFF, 0xFF]).unwrap();
        assert!(closed_by_node(&mut socket), "not refused at the header");
        cut_off(&node, identity.peer_id());
        assert_eq!(
            reason(&events, identity.peer_id()),
            CloseReason::Error(ConnectionError::Record(RecordError::BadLength(0xFF_FFFF)))
        );
    });
    measured("replayed record", &node, || {
        let identity = Identity::generate().unwrap();
        let (mut socket, mut conn) = authenticated(&node, &identity);
        // A record (the client opening its streams, once the node's SETTINGS are in) is sent
        // twice.
        let mut buf = vec![0u8; 64 * 1024];
        socket
            .set_read_timeout(Some(Duration::from_secs(2)))
            .unwrap();
        let n = socket.read(&mut buf).unwrap();
        conn.handle_input(Instant::now(), &buf[..n]);
        conn.complete_handshake(&["consensus"]).unwrap();
        let n = conn.poll_transmit(&mut buf);
        assert!(n > 0);
        socket.write_all(&buf[..n]).unwrap();
        socket.write_all(&buf[..n]).unwrap();
        assert!(
            closed_by_node(&mut socket),
            "a replayed record was accepted"
        );
        cut_off(&node, identity.peer_id());
        // The replay, not anything else, is what cut it.
        assert_eq!(
            reason(&events, identity.peer_id()),
            CloseReason::Error(ConnectionError::Record(RecordError::Decrypt))
        );
    });
    node.stop_blocking();
}

#[test]
fn a_flood_of_connections_from_one_ip_is_capped_and_refused() {
    let _alone = alone();
    let node = Node::start(
        config()
            .event_buffer(10_000)
            .pending_handshakes(32, Duration::from_secs(1))
            .limits(glueberry::ConnectionLimits {
                max_inbound_per_group: 50,
                ..Default::default()
            }),
    )
    .unwrap();
    let events = node.events();
    let addr: SocketAddr = node.listen_addr();
    measured(
        "500 half-open connections from one IP (slowloris)",
        &node,
        || {
            let mut sockets = Vec::new();
            for _ in 0..500 {
                if let Ok(mut s) = TcpStream::connect(addr) {
                    let _ = s.write_all(&[0x01]);
                    sockets.push(s);
                }
            }
            // The pending-handshake timeout cuts every one of them off.
            for s in &mut sockets {
                assert!(closed_by_node(s), "a half-open connection was kept");
            }
        },
    );
    let refused = std::iter::from_fn(|| events.try_recv())
        .filter(|e| matches!(e, Event::Refused { .. }))
        .count();
    println!("refusals reported: {refused}");
    assert!(refused > 0, "the flood was not reported");
    node.stop_blocking();
}

#[test]
fn simultaneous_dials_repeated_leave_exactly_one_connection_each_time() {
    let _alone = alone();
    let (a, b) = (node(), node());
    for round in 0..20 {
        a.connect(b.peer_id(), b.listen_addr()).unwrap();
        b.connect(a.peer_id(), a.listen_addr()).unwrap();
        let deadline = Instant::now() + T;
        while !(a.state(b.peer_id()) == ConnState::Connected
            && b.state(a.peer_id()) == ConnState::Connected)
        {
            assert!(Instant::now() < deadline, "round {round}: no connection");
            std::thread::sleep(Duration::from_millis(2));
        }
        // The losing duplicate closes promptly; then exactly one connection remains.
        let total = |n: &Node| n.connection_counts().0 + n.connection_counts().1;
        let deadline = Instant::now() + T;
        while total(&a) != 1 || total(&b) != 1 {
            assert!(
                Instant::now() < deadline,
                "round {round}: {} and {} connections",
                total(&a),
                total(&b)
            );
            std::thread::sleep(Duration::from_millis(2));
        }
        std::thread::sleep(Duration::from_millis(30));
        assert_eq!(
            (total(&a), total(&b)),
            (1, 1),
            "round {round}: a second one appeared"
        );
        a.disconnect(b.peer_id()).unwrap();
        let deadline = Instant::now() + T;
        while a.connection_counts() != (0, 0) || b.connection_counts() != (0, 0) {
            assert!(Instant::now() < deadline, "round {round}: not closed");
            std::thread::sleep(Duration::from_millis(2));
        }
        // b may still redial a (it dialled too): cancel, then start the next round clean.
        let _ = b.cancel_reconnect(a.peer_id());
        let _ = a.cancel_reconnect(b.peer_id());
        std::thread::sleep(Duration::from_millis(20));
    }
    a.stop_blocking();
    b.stop_blocking();
}

/// Refusals reported so far whose reason contains `what`.
fn refusals(events: &glueberry::Subscription, what: &str) -> usize {
    std::iter::from_fn(|| events.try_recv())
        .filter(|e| matches!(e, Event::Refused { reason, .. } if reason.to_string().contains(what)))
        .count()
}

#[test]
fn pending_handshakes_per_ip_are_capped_at_accept() {
    let _alone = alone();
    let node = Node::start(
        config()
            .event_buffer(10_000)
            .limits(glueberry::ConnectionLimits {
                max_pending_per_group: 3,
                inbound_attempts_per_group_per_sec: 1000,
                ..Default::default()
            }),
    )
    .unwrap();
    let events = node.events();
    measured(
        "8 unfinished handshakes from one IP, 3 allowed",
        &node,
        || {
            let mut sockets: Vec<TcpStream> = (0..8)
                .map(|_| {
                    let mut s = TcpStream::connect(node.listen_addr()).unwrap();
                    s.write_all(&[0x01]).unwrap();
                    // Accepted one at a time, so that each finds the ones before it pending.
                    std::thread::sleep(Duration::from_millis(30));
                    s
                })
                .collect();
            let refused = refusals(&events, "pending handshakes from this network group");
            println!("refused as pending from the same IP: {refused}");
            assert_eq!(refused, 5);
            let closed = sockets
                .iter_mut()
                .map(closed_by_node)
                .filter(|c| *c)
                .count();
            assert_eq!(
                closed, 8,
                "the pending ones are cut off at the handshake timeout too"
            );
        },
    );
    node.stop_blocking();
}

#[test]
fn connection_attempts_per_second_from_one_ip_are_limited() {
    let _alone = alone();
    let node = Node::start(
        config()
            .event_buffer(10_000)
            .limits(glueberry::ConnectionLimits {
                inbound_attempts_per_group_per_sec: 5,
                ..Default::default()
            }),
    )
    .unwrap();
    let events = node.events();
    measured(
        "40 connections opened and dropped at once, 5/s allowed",
        &node,
        || {
            for _ in 0..40 {
                drop(TcpStream::connect(node.listen_addr()).unwrap());
            }
            std::thread::sleep(Duration::from_millis(100));
            let refused = refusals(&events, "attempts per second");
            println!("refused as too fast: {refused} of 40 (burst 10)");
            assert!((15..=30).contains(&refused), "{refused} refused");
            // The bucket refills: an honest peer from the same IP gets in a second later.
            std::thread::sleep(Duration::from_secs(1));
        },
    );
    node.stop_blocking();
}
