//! Connection limits over real sockets: inbound sockets per IP, connections per direction,
//! eviction.
#![allow(clippy::expect_used, clippy::unwrap_used, clippy::panic)] // test code

mod common;

use std::time::{Duration, Instant};

use common::{established, wait_for};
use glueberry::crypto::Identity;
use glueberry::transport::ConnState;
use glueberry::{Event, Node, NodeConfig};

const NET: &str = "limits-test";

fn start(shards: usize) -> Node {
    common::start_node(NET, shards)
}
use glueberry::ConnectionLimits;
use glueberry::transport::{CloseCode, CloseReason};
use std::io::Read;

#[test]
fn inbound_sockets_per_ip_are_capped_at_accept() {
    let server = Node::start(
        NodeConfig::new(Identity::generate().unwrap(), NET, common::any_port())
            .shards(1)
            .event_buffer(1000)
            .limits(ConnectionLimits {
                max_inbound_per_group: 3,
                ..Default::default()
            }),
    )
    .unwrap();
    let sockets: Vec<std::net::TcpStream> = (0..5)
        .map(|_| std::net::TcpStream::connect(server.listen_addr()).unwrap())
        .collect();
    let mut closed = 0;
    for mut s in sockets {
        s.set_read_timeout(Some(Duration::from_millis(300)))
            .unwrap();
        let mut buf = [0u8; 16];
        // A refused socket is closed by the server at once; an admitted one waits for a
        // handshake (and times out here).
        if matches!(s.read(&mut buf), Ok(0) | Err(_)) && s.read(&mut buf).is_ok_and(|n| n == 0) {
            closed += 1;
        }
    }
    assert_eq!(
        closed, 2,
        "two sockets over the per-IP limit should have been closed"
    );
    let refused = (0..50)
        .filter_map(|_| server.events().try_recv())
        .filter(|e| {
            matches!(
                e,
                Event::Refused {
                    address: Some(_),
                    ..
                }
            )
        })
        .count();
    assert_eq!(refused, 2);
    server.stop_blocking();
}

#[test]
fn inbound_limit_refuses_with_an_event_and_frees_the_slot_on_disconnect() {
    let server = Node::start(
        NodeConfig::new(Identity::generate().unwrap(), NET, common::any_port())
            .shards(2)
            .event_buffer(1000)
            .limits(ConnectionLimits {
                max_inbound: 2,
                ..Default::default()
            }),
    )
    .unwrap();
    let clients: Vec<Node> = (0..3).map(|_| start(1)).collect();
    for c in &clients[..2] {
        c.connect(server.peer_id(), server.listen_addr()).unwrap();
        assert!(wait_for(
            c,
            &["s"],
            Duration::from_secs(10),
            established(server.peer_id())
        ));
    }
    let third = &clients[2];
    third
        .connect(server.peer_id(), server.listen_addr())
        .unwrap();
    let told = wait_for(third, &["s"], Duration::from_secs(10), |e| {
        matches!(
            e,
            Event::State {
                // Refused before it was Connected: a failed attempt, retried.
                state: ConnState::Reconnecting,
                reason: Some(CloseReason::Peer(CloseCode::TooManyConnections)),
                ..
            }
        )
    });
    assert!(told, "the third client was not told it was refused");
    let refused = wait_for(
        &server,
        &["s"],
        Duration::from_secs(5),
        |e| matches!(e, Event::Refused { peer: Some(p), .. } if *p == third.peer_id()),
    );
    assert!(refused, "no Refused event on the server");
    assert_eq!(server.connection_counts(), (2, 0));
    // One leaves: its slot comes back, and the third gets in on its next attempt.
    clients[0].disconnect(server.peer_id()).unwrap();
    let deadline = Instant::now() + Duration::from_secs(10);
    while server.state(third.peer_id()) != ConnState::Connected
        && server.state(third.peer_id()) != ConnState::Established
        && Instant::now() < deadline
    {
        std::thread::sleep(Duration::from_millis(20));
        while server.events().try_recv().is_some() {}
    }
    assert!(matches!(
        server.state(third.peer_id()),
        ConnState::Connected | ConnState::Established
    ));
    assert_eq!(server.connection_counts(), (2, 0));
    for c in clients {
        c.stop_blocking();
    }
    server.stop_blocking();
    assert_eq!(server.connection_counts(), (0, 0));
}
