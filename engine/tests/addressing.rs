//! Addresses as users write them: a node listening on IPv4 and IPv6 at once, reached over
//! both, and a peer added as `ID@localhost:PORT` (a name resolved off the shards, its addresses
//! tried in turn).
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::net::SocketAddr;
use std::time::Duration;

use bytes::Bytes;
use glueberry::crypto::Identity;
use glueberry::testing::{expect_message, reestablish};
use glueberry::{Host, Node, NodeConfig, PeerAddr};

const NET: &str = "addressing-test";
const T: Duration = Duration::from_secs(10);

fn config(listen: &str) -> NodeConfig {
    NodeConfig::new(Identity::generate().unwrap(), NET, listen.parse().unwrap()).shards(2)
}

/// `from` sends one message to `to`, which must receive it.
fn exchange(from: &Node, to: &Node) {
    from.try_send(to.peer_id(), "s", Bytes::from_static(b"hello"))
        .unwrap();
    let message = expect_message(to, T).unwrap();
    assert_eq!(message.peer, from.peer_id());
    assert_eq!(&message.data[..], b"hello");
}

/// Waits until `node` no longer has `peer` Established (a dropped connection is seen).
fn left_established(node: &Node, peer: &Node) {
    let deadline = std::time::Instant::now() + T;
    while node.state(peer.peer_id()) == glueberry::transport::ConnState::Established {
        assert!(
            std::time::Instant::now() < deadline,
            "the drop was not seen"
        );
        std::thread::sleep(Duration::from_millis(1));
    }
}

#[test]
fn a_node_on_ipv4_and_ipv6_is_reached_over_both_and_by_name() {
    let server = Node::start(config("127.0.0.1:0").listen_also("[::1]:0".parse().unwrap()))
        .expect("listens on 127.0.0.1 and ::1");
    let addrs: Vec<SocketAddr> = server.listen_addrs().to_vec();
    assert_eq!(addrs.len(), 2);
    assert!(addrs[0].ip().is_ipv4() && addrs[0].port() != 0, "{addrs:?}");
    assert!(addrs[1].ip().is_ipv6() && addrs[1].port() != 0, "{addrs:?}");
    assert_eq!(server.listen_addr(), addrs[0]);

    // Over IPv4, from a node listening on IPv4.
    let v4 = Node::start(config("127.0.0.1:0")).unwrap();
    v4.connect(server.peer_id(), addrs[0]).unwrap();
    reestablish(&v4, &server, &["s"], T).expect("over 127.0.0.1");
    exchange(&v4, &server);
    exchange(&server, &v4);

    // Over IPv6 (the dial is an IPv6 socket to ::1), from a node listening on ::1 only.
    let v6 = Node::start(config("[::1]:0")).unwrap();
    assert!(v6.listen_addr().is_ipv6());
    v6.connect(server.peer_id(), addrs[1]).unwrap();
    reestablish(&v6, &server, &["s"], T).expect("over ::1");
    exchange(&v6, &server);
    exchange(&server, &v6);

    // By name, as pasted into a config: `localhost` may resolve to ::1 first, where nothing
    // listens on this port (refused), then 127.0.0.1: the addresses are tried in turn.
    let text = format!("{}@localhost:{}", server.peer_id(), addrs[0].port());
    let by_name: PeerAddr = text.parse().unwrap();
    assert_eq!(by_name.host, Host::Name("localhost".into()));
    assert_eq!(by_name.to_string(), text);
    let named = Node::start(config("127.0.0.1:0")).unwrap();
    named.connect_to(&by_name).unwrap();
    reestablish(&named, &server, &["s"], T).expect("ID@localhost:PORT connects");
    exchange(&named, &server);

    // The name is resolved again when the peer is redialled: the server drops the
    // connection, the named node reconnects by itself.
    let resolved = || -> u64 {
        let state: serde_json::Value =
            serde_json::from_str(&futures::executor::block_on(named.dump_state())).unwrap();
        state["names_resolved"].as_u64().unwrap()
    };
    assert_eq!(resolved(), 1);
    server.disconnect(named.peer_id()).unwrap();
    left_established(&named, &server);
    reestablish(&named, &server, &["s"], T).expect("redialled by name");
    assert!(resolved() >= 2, "resolved again for the reconnection");
    exchange(&named, &server);

    // An IP form dials at once, as `connect` does.
    let ip_form: PeerAddr = format!("{}@[::1]:{}", server.peer_id(), addrs[1].port())
        .parse()
        .unwrap();
    assert_eq!(ip_form.socket_addr(), Some(addrs[1]));

    for node in [named, v6, v4, server] {
        node.stop_blocking();
    }
}

#[test]
fn a_name_that_does_not_resolve_fails_the_dial_without_blocking_the_caller() {
    let node = Node::start(config("127.0.0.1:0")).unwrap();
    let other = Identity::generate().unwrap().peer_id();
    let events = node.events();
    let addr: PeerAddr = format!("{other}@no-such-host.invalid:26656")
        .parse()
        .unwrap();
    let started = std::time::Instant::now();
    node.connect_to(&addr).unwrap();
    // The call only queued the name (resolution happens on the resolver thread).
    assert!(started.elapsed() < Duration::from_secs(1));
    let failed = loop {
        let event = events.recv_blocking().unwrap();
        if let glueberry::Event::CommandFailed { peer, error } = event {
            break (peer, error);
        }
    };
    assert_eq!(failed.0, other);
    assert!(
        failed.1.to_string().contains("no-such-host.invalid"),
        "{}",
        failed.1
    );
    assert_eq!(failed.1.kind(), glueberry::ErrorKind::ConnectionFailed);
    node.stop_blocking();
}

#[test]
fn a_peer_with_several_addresses_is_reached_at_the_one_that_answers_on_every_dial() {
    let server = Node::start(config("127.0.0.1:0")).unwrap();
    // A port nothing listens on (a listener bound and closed).
    let dead = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap();
    let client = Node::start(config("127.0.0.1:0")).unwrap();
    client
        .add_peer(
            server.peer_id(),
            vec![dead, server.listen_addr()],
            Default::default(),
        )
        .unwrap();
    reestablish(&client, &server, &["s"], T).expect("the second address answers");
    exchange(&client, &server);

    // The server drops the connection: the client's redial tries both again, the dead one
    // first, and is back.
    server.disconnect(client.peer_id()).unwrap();
    left_established(&client, &server);
    reestablish(&client, &server, &["s"], T).expect("redialled");
    exchange(&client, &server);
    client.stop_blocking();
    server.stop_blocking();
}
