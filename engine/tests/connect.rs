//! Dialling as an application sees it: each way a dial fails comes back as its own typed cause
//! with the right `is_retriable`, a dial that cannot succeed is not repeated, `ready` waits for
//! the remote's handshake, and a port belongs to one node.
#![allow(clippy::expect_used, clippy::unwrap_used, clippy::panic)] // test code

use std::time::Duration;

use glueberry::crypto::{Identity, PeerId};
use glueberry::transport::ConnState;
use glueberry::{
    ConnectError, DialFailure, ErrorKind, Event, EventFilter, Node, NodeConfig, NodeSendError,
    StartError, WaitError,
};

mod common;

const NET: &str = "connect-test";

fn start(network: &str) -> Node {
    Node::start(common::loopback_config(network)).unwrap()
}

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap()
}

/// How many times `node` dialled `peer` (its Connecting state changes) from `events`.
fn dials(events: &glueberry::Subscription) -> usize {
    std::iter::from_fn(|| events.try_recv())
        .filter(|e| {
            matches!(
                e,
                Event::State {
                    state: ConnState::Connecting,
                    ..
                }
            )
        })
        .count()
}

fn failure(result: Result<(), ConnectError>) -> (ConnState, DialFailure) {
    match result {
        Err(ConnectError::Failed { state, cause }) => (state, cause),
        other => panic!("expected a failed dial, got {other:?}"),
    }
}

#[test]
fn a_peer_on_another_network_is_dialled_once_and_reported_as_such() {
    let (a, b) = (start(NET), start("another-chain"));
    let events = a.subscribe(EventFilter::all().peer(b.peer_id()), 64);
    let result = runtime().block_on(a.connect_and_wait(b.peer_id(), b.listen_addr()));
    let error = glueberry::Error::from(result.clone().unwrap_err());
    let (state, cause) = failure(result);
    println!("wrong network: {cause} (state {state:?})");
    assert!(
        matches!(&cause, DialFailure::WrongNetwork { ours, theirs }
            if ours == NET && theirs == "another-chain"),
        "{cause:?}"
    );
    assert_eq!(state, ConnState::Disconnected, "not redialled");
    assert!(!cause.is_retriable());
    assert_eq!(error.kind(), ErrorKind::NetworkMismatch);
    assert!(!error.is_retriable() && error.is_permanent());
    // No redial loop: over two seconds (the backoff starts at 100 ms), still the one dial.
    std::thread::sleep(Duration::from_secs(2));
    assert_eq!(dials(&events), 1, "dialled once");
    assert_eq!(a.state(b.peer_id()), ConnState::Disconnected);
    a.stop_blocking();
    b.stop_blocking();
}

#[test]
fn an_address_that_answers_with_another_identity_is_dialled_once() {
    let (a, b) = (start(NET), start(NET));
    let expected = Identity::generate().unwrap().peer_id();
    let events = a.subscribe(EventFilter::all().peer(expected), 64);
    let result = runtime().block_on(a.connect_and_wait(expected, b.listen_addr()));
    let error = glueberry::Error::from(result.clone().unwrap_err());
    let (state, cause) = failure(result);
    println!("wrong peer id: {cause} (state {state:?})");
    assert_eq!(
        cause,
        DialFailure::WrongPeer {
            expected,
            actual: b.peer_id()
        }
    );
    assert_eq!(state, ConnState::Disconnected);
    assert!(!cause.is_retriable() && !error.is_retriable());
    std::thread::sleep(Duration::from_secs(2));
    assert_eq!(dials(&events), 1, "dialled once");
    a.stop_blocking();
    b.stop_blocking();
}

#[test]
fn a_closed_port_and_a_silent_listener_are_told_apart_and_retried() {
    let rt = runtime();
    let config = common::loopback_config(NET).dial_timeout(Duration::from_millis(300));
    let a = Node::start(config).unwrap();
    let closed = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let dead = closed.local_addr().unwrap();
    drop(closed);
    let ghost = Identity::generate().unwrap().peer_id();
    let (state, cause) = failure(rt.block_on(a.connect_and_wait(ghost, dead)));
    println!("closed port: {cause} (state {state:?})");
    assert_eq!(cause, DialFailure::Refused);
    assert_eq!(state, ConnState::Reconnecting, "retried by itself");
    assert!(cause.is_retriable());
    a.cancel_reconnect(ghost).unwrap();
    // A listener that never answers: the dial timeout.
    let silent = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let mute = Identity::generate().unwrap().peer_id();
    let (state, cause) =
        failure(rt.block_on(a.connect_and_wait(mute, silent.local_addr().unwrap())));
    println!("silent listener: {cause} (state {state:?})");
    assert_eq!(cause, DialFailure::TimedOut);
    assert_eq!(state, ConnState::Reconnecting);
    assert!(cause.is_retriable());
    let error = glueberry::Error::from(ConnectError::Failed { state, cause });
    assert_eq!(error.kind(), ErrorKind::ConnectionFailed);
    assert!(error.is_retriable() && !error.is_permanent());
    a.stop_blocking();
}

#[test]
fn ready_resolves_only_after_the_remote_completed_its_handshake() {
    let rt = runtime();
    let (a, b) = (start(NET), start(NET));
    let (pa, pb) = (a.peer_id(), b.peer_id());
    rt.block_on(async {
        a.connect_and_wait(pb, b.listen_addr()).await.unwrap();
        b.connected(pa).await.unwrap();
        a.complete_handshake(pb, &["consensus"]).unwrap();
        // Only our side opened its streams: not Ready, however long we wait.
        let early = tokio::time::timeout(Duration::from_millis(500), a.ready(pb)).await;
        assert!(early.is_err(), "Ready before the remote opened its streams");
        assert!(!a.is_ready(pb) && a.ready_peers().is_empty());
        assert_eq!(a.state(pb), ConnState::Established);
        b.complete_handshake(pa, &["consensus"]).unwrap();
        tokio::time::timeout(Duration::from_secs(5), a.ready(pb))
            .await
            .expect("Ready once the remote opened its streams")
            .unwrap();
        tokio::time::timeout(Duration::from_secs(5), b.ready(pa))
            .await
            .unwrap()
            .unwrap();
    });
    assert!(a.is_ready(pb) && b.is_ready(pa));
    assert_eq!(a.ready_peers(), vec![pb]);
    // Ready again at once.
    rt.block_on(a.ready(pb)).unwrap();
    // A wait under way ends when the connection does: c never opens its streams, and a
    // disconnects it while waiting.
    let c = start(NET);
    let pc = c.peer_id();
    rt.block_on(async {
        a.connect_and_wait(pc, c.listen_addr()).await.unwrap();
        a.complete_handshake(pc, &["consensus"]).unwrap();
        let cut = async {
            tokio::time::sleep(Duration::from_millis(200)).await;
            a.disconnect(pc).unwrap();
        };
        let (ended, ()) = tokio::join!(a.ready(pc), cut);
        assert!(
            matches!(ended, Err(WaitError::Disconnected { .. })),
            "{ended:?}"
        );
    });
    assert!(!a.is_ready(pc) && a.is_ready(pb));
    for node in [&a, &b, &c] {
        node.stop_blocking();
    }
}

#[test]
fn connect_ready_dials_opens_and_waits_for_the_remote() {
    let rt = runtime();
    let (a, b) = (start(NET), start(NET));
    let (pa, pb): (PeerId, PeerId) = (a.peer_id(), b.peer_id());
    rt.block_on(async {
        let accept = async {
            b.connected(pa).await.unwrap();
            b.complete_handshake(pa, &["consensus"]).unwrap();
        };
        let (dialled, ()) =
            tokio::join!(a.connect_ready(pb, b.listen_addr(), &["consensus"]), accept);
        dialled.unwrap();
    });
    assert!(a.is_ready(pb));
    rt.block_on(a.send(pb, "consensus", bytes::Bytes::from_static(b"vote")))
        .unwrap();
    let message = glueberry::testing::expect_message(&b, Duration::from_secs(5)).unwrap();
    assert_eq!(&message.data[..], b"vote");
    a.stop_blocking();
    b.stop_blocking();
}

#[test]
fn a_second_node_on_a_port_in_use_fails_to_start() {
    let first = start(NET);
    let port = first.listen_addr();
    let second = Node::start(NodeConfig::new(Identity::generate().unwrap(), NET, port).shards(2));
    match second {
        Err(StartError::Listen { addr, source }) => {
            println!("second node on {port}: {source}");
            assert_eq!(addr, port);
            assert_eq!(source.kind(), std::io::ErrorKind::AddrInUse);
        }
        Err(other) => panic!("refused for another reason: {other}"),
        Ok(node) => {
            node.stop_blocking();
            panic!("a second node started on {port}, in use by the first");
        }
    }
    // The wildcard address covers the loopback one.
    let wildcard = format!("0.0.0.0:{}", port.port()).parse().unwrap();
    let third = Node::start(NodeConfig::new(
        Identity::generate().unwrap(),
        NET,
        wildcard,
    ));
    assert!(third.is_err(), "a node on 0.0.0.0 beside one on 127.0.0.1");
    // The first still serves; once it stops, the port is free again (restarts work).
    common::still_serves(&first, NET);
    first.stop_blocking();
    let again = Node::start(NodeConfig::new(Identity::generate().unwrap(), NET, port).shards(2))
        .expect("the port is free once its node stopped");
    again.stop_blocking();
}

#[test]
fn a_refused_send_names_its_cause() {
    let rt = runtime();
    let (a, b) = (start(NET), start(NET));
    let pb = b.peer_id();
    glueberry::testing::establish(&a, &b, &["consensus"], Duration::from_secs(10)).unwrap();
    let data = bytes::Bytes::from_static(b"x");
    // A stream this side did not open.
    let unopened = rt.block_on(a.send(pb, "blocks", data.clone())).unwrap_err();
    assert_eq!(unopened, NodeSendError::StreamNotOpen);
    let error = glueberry::Error::from(unopened);
    assert_eq!(error.kind(), ErrorKind::StreamClosed);
    assert!(
        error
            .hint()
            .is_some_and(|h| h.contains("complete_handshake"))
    );
    // A peer the node does not know.
    let stranger = Identity::generate().unwrap().peer_id();
    let unknown = a.try_send(stranger, &a.stream("consensus"), data.clone());
    let unknown = unknown.unwrap_err().error;
    assert_eq!(
        unknown,
        NodeSendError::NotConnected {
            state: ConnState::Disconnected
        }
    );
    let error = glueberry::Error::from(unknown);
    assert_eq!(error.kind(), ErrorKind::NotConnected);
    assert!(error.is_retriable());
    assert!(error.hint().is_some_and(|h| h.contains("ready")));
    // A blacklisted peer.
    a.blacklist(pb).unwrap();
    assert!(a.is_blacklisted(pb));
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    while a.state(pb) != ConnState::Disconnected && std::time::Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(5));
    }
    let blacklisted = rt.block_on(a.send(pb, "consensus", data)).unwrap_err();
    assert_eq!(blacklisted, NodeSendError::Blacklisted);
    assert_eq!(
        glueberry::Error::from(blacklisted).kind(),
        ErrorKind::PeerBlacklisted
    );
    a.unblacklist(pb).unwrap();
    assert!(!a.is_blacklisted(pb));
    a.stop_blocking();
    b.stop_blocking();
}
