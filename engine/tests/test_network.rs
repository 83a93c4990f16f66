//! `glueberry::testing`: real nodes over in-memory pipes, as an application's tests use them.
#![allow(clippy::expect_used, clippy::unwrap_used, clippy::panic)] // test code

use std::time::Duration;

use bytes::Bytes;
use glueberry::crypto::Identity;
use glueberry::testing::{
    TestNetwork, establish, expect_message, expect_no_message, reestablish, wait_for_state,
};
use glueberry::transport::ConnState;

const T: Duration = Duration::from_secs(10);

#[test]
fn three_nodes_talk_in_order_on_their_streams() {
    let net = TestNetwork::new();
    let nodes: Vec<_> = (0..3)
        .map(|_| {
            net.node(Identity::generate().unwrap(), "test-chain")
                .unwrap()
        })
        .collect();
    establish(&nodes[0], &nodes[1], &["consensus", "mempool"], T).unwrap();
    establish(&nodes[2], &nodes[1], &["consensus", "mempool"], T).unwrap();
    for (i, from) in [&nodes[0], &nodes[2]].into_iter().enumerate() {
        let stream = from.stream("consensus");
        for n in 0..100u32 {
            let mut data = vec![i as u8];
            data.extend_from_slice(&n.to_be_bytes());
            from.try_send(nodes[1].peer_id(), &stream, Bytes::from(data))
                .unwrap();
        }
    }
    let mut next = [0u32; 2];
    for _ in 0..200 {
        let m = expect_message(&nodes[1], T).unwrap();
        assert_eq!(&*m.stream, "consensus");
        let from = usize::from(m.data[0]);
        let n = u32::from_be_bytes(m.data[1..5].try_into().unwrap());
        assert_eq!(n, next[from], "in order per peer and stream");
        next[from] += 1;
        let sender = if from == 0 { &nodes[0] } else { &nodes[2] };
        assert_eq!(m.peer, sender.peer_id());
    }
    expect_no_message(&nodes[1], Duration::from_millis(50)).unwrap();
    net.stop();
}

#[test]
fn a_partition_breaks_the_connection_and_healing_lets_it_reconnect() {
    let net = TestNetwork::new();
    let a = net
        .node(Identity::generate().unwrap(), "test-chain")
        .unwrap();
    let b = net
        .node(Identity::generate().unwrap(), "test-chain")
        .unwrap();
    establish(&a, &b, &["consensus"], T).unwrap();

    net.partition(&a, &b);
    // Both notice the loss; the dialler keeps redialling and is refused while cut off.
    // Each side sees its own end cut, in its own shard's time: wait for both.
    wait_for_state(&a, b.peer_id(), ConnState::Reconnecting, T).unwrap();
    let deadline = std::time::Instant::now() + T;
    while b.state(a.peer_id()) == ConnState::Established {
        assert!(
            std::time::Instant::now() < deadline,
            "b never noticed the cut"
        );
        std::thread::sleep(Duration::from_millis(1));
    }
    std::thread::sleep(Duration::from_millis(300));
    assert_ne!(
        a.state(b.peer_id()),
        ConnState::Established,
        "no dial crosses a partition"
    );

    net.heal(&a, &b);
    reestablish(&a, &b, &["consensus"], Duration::from_secs(20)).unwrap();
    a.try_send(
        b.peer_id(),
        &a.stream("consensus"),
        Bytes::from_static(b"after"),
    )
    .unwrap();
    assert_eq!(&expect_message(&b, T).unwrap().data[..], b"after");
    net.stop();
}

#[test]
fn a_dial_outside_the_network_is_refused_like_a_closed_port() {
    let net = TestNetwork::new();
    let a = net
        .node(Identity::generate().unwrap(), "test-chain")
        .unwrap();
    let stranger = Identity::generate().unwrap().peer_id();
    let events = a.events();
    a.connect(stranger, "127.0.0.1:9".parse().unwrap()).unwrap();
    let deadline = std::time::Instant::now() + T;
    loop {
        assert!(std::time::Instant::now() < deadline, "no failure reported");
        if let Some(glueberry::Event::State { peer, state, .. }) = events.try_recv()
            && peer == stranger
            && matches!(state, ConnState::Reconnecting | ConnState::Disconnected)
        {
            break;
        }
        std::thread::sleep(Duration::from_millis(1));
    }
    net.stop();
}
