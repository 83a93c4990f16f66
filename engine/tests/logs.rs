//! What the node logs through `tracing` during a handshake and a failed handshake, and what it
//! never logs. One test in its own binary: it installs the process-wide subscriber.
#![allow(clippy::expect_used, clippy::unwrap_used, clippy::panic)] // test code

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use glueberry::crypto::Identity;
use glueberry::transport::ConnState;
use glueberry::{Event, Node, NodeConfig};

#[derive(Clone, Default)]
struct Captured(Arc<Mutex<Vec<u8>>>);

impl std::io::Write for Captured {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

fn node(seed: u8, network: &str) -> Node {
    Node::start(
        NodeConfig::new(
            Identity::from_seed(&[seed; 32]),
            network,
            "127.0.0.1:0".parse().unwrap(),
        )
        .shards(1)
        .event_buffer(1000),
    )
    .expect("start")
}

/// Waits for a state of `peer` on `node` that `want` accepts, completing handshakes on the way.
fn wait_state(node: &Node, want: impl Fn(ConnState) -> bool) -> ConnState {
    let events = node.events();
    let deadline = Instant::now() + Duration::from_secs(10);
    while Instant::now() < deadline {
        match events.try_recv() {
            Some(Event::State { peer, state, .. }) => {
                if state == ConnState::Connected {
                    node.complete_handshake(peer, &["consensus"]).unwrap();
                }
                if want(state) {
                    return state;
                }
            }
            Some(_) => {}
            None => std::thread::sleep(Duration::from_millis(1)),
        }
    }
    panic!("no such state in time");
}

/// The longest run of hexadecimal digits in `text`.
fn longest_hex_run(text: &str) -> usize {
    let (mut best, mut run) = (0, 0);
    for c in text.chars() {
        run = if c.is_ascii_hexdigit() { run + 1 } else { 0 };
        best = best.max(run);
    }
    best
}

#[test]
fn handshakes_and_failures_are_logged_with_their_fields_and_no_secrets() {
    let captured = Captured::default();
    let writer = captured.clone();
    tracing_subscriber::fmt()
        .with_max_level(tracing::Level::TRACE)
        .with_ansi(false)
        .with_writer(move || writer.clone())
        .init();

    let payload = b"TOP-SECRET-PAYLOAD-do-not-log";
    let (a, b) = (node(7, "logs-test"), node(8, "logs-test"));
    a.connect(b.peer_id(), b.listen_addr()).unwrap();
    let waiter = {
        let b = b.clone();
        std::thread::spawn(move || wait_state(&b, |s| s == ConnState::Established))
    };
    wait_state(&a, |s| s == ConnState::Established);
    waiter.join().unwrap();
    std::thread::sleep(Duration::from_millis(50));
    a.try_send(
        b.peer_id(),
        &a.stream("consensus"),
        Bytes::from_static(payload),
    )
    .unwrap();
    b.messages().recv_blocking().unwrap();

    // A peer on another network: the handshake fails on both sides.
    let other = node(9, "another-network");
    a.connect(other.peer_id(), other.listen_addr()).unwrap();
    let failed = wait_state(&a, |s| {
        matches!(
            s,
            ConnState::Reconnecting | ConnState::Cooldown | ConnState::Disconnected
        )
    });
    // A host name that does not resolve, and a port nothing listens on: each said in words.
    let nowhere: glueberry::PeerAddr = format!("{}@no-such-host.invalid:26656", other.peer_id())
        .parse()
        .unwrap();
    let unresolved = node(10, "logs-test");
    unresolved.connect_to(&nowhere).unwrap();
    let closed = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let closed_addr = closed.local_addr().unwrap();
    drop(closed);
    let ghost = Identity::from_seed(&[11; 32]).peer_id();
    a.connect(ghost, closed_addr).unwrap();
    wait_state(&a, |s| s == ConnState::Reconnecting);
    a.cancel_reconnect(ghost).unwrap();
    std::thread::sleep(Duration::from_millis(100));
    for n in [&a, &b, &other, &unresolved] {
        n.stop_blocking();
    }

    let logs = String::from_utf8(captured.0.lock().unwrap().clone()).unwrap();
    let line = |needle: &str| {
        logs.lines()
            .find(|l| l.contains(needle))
            .unwrap_or_else(|| panic!("no {needle:?} in the logs:\n{logs}"))
            .to_string()
    };
    let started = line("glueberry node started");
    assert!(
        started.contains("INFO") && started.contains("listen_addr=127.0.0.1:"),
        "{started}"
    );
    let b_id = b.peer_id().to_string();
    assert!(line("handshake started").contains("DEBUG"));
    let connected = line("connected");
    assert!(
        connected.contains("INFO") && connected.contains("peer=gbp1"),
        "{connected}"
    );
    assert!(
        connected.contains("glueberry_shard"),
        "inside the shard span: {connected}"
    );
    let complete = line("handshake complete");
    assert!(
        complete.contains("streams=2"),
        "handshake and consensus: {complete}"
    );
    let sent = line("message sent");
    assert!(
        sent.contains(&format!("peer={b_id}")) && sent.contains("stream=consensus"),
        "{sent}"
    );
    assert!(sent.contains(&format!("size={}", payload.len())), "{sent}");
    assert!(line("message received").contains("stream=consensus"));
    let dial_failed = |peer: String| {
        logs.lines()
            .find(|l| l.contains("dial failed") && l.contains(&peer))
            .unwrap_or_else(|| panic!("no failed dial of {peer} in the logs:\n{logs}"))
            .to_string()
    };
    let failure = dial_failed(format!("peer={}", other.peer_id()));
    assert!(
        failure.contains("WARN") && failure.contains("dial failed"),
        "{failure}"
    );
    assert!(
        failure.contains("network mismatch") && failure.contains("another-network"),
        "the error names the mismatch in words: {failure}"
    );
    assert!(
        failure.contains("permanent=true"),
        "not redialled: {failure}"
    );
    assert_eq!(failed, ConnState::Disconnected, "{failure}");
    assert!(failure.contains(&format!("state={failed:?}")), "{failure}");
    let refused = dial_failed(format!("peer={ghost}"));
    assert!(
        refused.contains("WARN") && refused.contains("connection refused"),
        "{refused}"
    );
    assert!(refused.contains("permanent=false"), "{refused}");
    let unresolvable = line("host name did not resolve");
    assert!(
        unresolvable.contains("WARN") && unresolvable.contains("no-such-host.invalid"),
        "{unresolvable}"
    );
    assert!(line("glueberry node stopped").contains("INFO"));

    // No payload, no key material: the payload's text, its hex, the identity seeds' hex, and
    // no long hexadecimal run at all (keys, hashes and secrets would print as one).
    let hex = |bytes: &[u8]| bytes.iter().map(|b| format!("{b:02x}")).collect::<String>();
    assert!(!logs.contains("TOP-SECRET"), "payload in the logs");
    assert!(!logs.contains(&hex(payload)), "payload hex in the logs");
    for seed in [7u8, 8, 9] {
        assert!(!logs.contains(&hex(&[seed; 32])), "a seed in the logs");
    }
    assert!(
        longest_hex_run(&logs) < 32,
        "a long hex run in the logs:\n{logs}"
    );
}
