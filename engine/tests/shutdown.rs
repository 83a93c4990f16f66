//! Stopping and restarting: a drained stop delivers everything; a stop with messages in flight
//! hands back every message it did not deliver; a node restarted from its data directory has
//! its address book (blacklist included) and reconnects by itself.
#![allow(clippy::expect_used, clippy::unwrap_used, clippy::panic)] // test code

use std::collections::{BTreeMap, HashSet};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use bytes::Bytes;
use glueberry::crypto::{Identity, PeerId};
use glueberry::transport::ConnState;
use glueberry::{Event, EventFilter, Node, NodeConfig};

const NET: &str = "shutdown-test";

fn config(identity: Identity) -> NodeConfig {
    NodeConfig::new(identity, NET, "127.0.0.1:0".parse().unwrap())
        .shards(1)
        .event_buffer(100_000)
        .reconnect(Duration::from_millis(50), Duration::from_millis(400), 0)
}

fn numbered(seq: u64, len: usize) -> Bytes {
    let mut data = vec![0u8; len.max(8)];
    data[..8].copy_from_slice(&seq.to_be_bytes());
    Bytes::from(data)
}

fn seq(data: &Bytes) -> u64 {
    u64::from_be_bytes(data[..8].try_into().unwrap())
}

fn wait_for(what: &str, within: Duration, done: impl Fn() -> bool) {
    let start = Instant::now();
    while !done() {
        assert!(start.elapsed() < within, "{what}: not within {within:?}");
        std::thread::sleep(Duration::from_millis(2));
    }
}

/// Completes the application handshake whenever `node` has a peer Connected, until `stop`.
fn auto_handshake(node: &Node, stop: Arc<AtomicBool>) -> std::thread::JoinHandle<()> {
    let node = node.clone();
    std::thread::spawn(move || {
        while !stop.load(Ordering::Relaxed) {
            for (peer, state) in node.connected_peers() {
                if state == ConnState::Connected {
                    let _ = node.complete_handshake(peer, &["s"]);
                }
            }
            std::thread::sleep(Duration::from_millis(5));
        }
    })
}

fn connect(a: &Node, b: &Node) {
    a.connect(b.peer_id(), b.listen_addr()).unwrap();
    wait_for("connected", Duration::from_secs(10), || {
        a.state(b.peer_id()) == ConnState::Connected && b.state(a.peer_id()) == ConnState::Connected
    });
    a.complete_handshake(b.peer_id(), &["s"]).unwrap();
    b.complete_handshake(a.peer_id(), &["s"]).unwrap();
    wait_for("established", Duration::from_secs(10), || {
        a.state(b.peer_id()) == ConnState::Established
    });
}

fn send_all(from: &Node, to: PeerId, count: u64, len: usize) {
    let stream = from.stream("s");
    for n in 1..=count {
        while from.try_send(to, &stream, numbered(n, len)).is_err() {
            std::thread::sleep(Duration::from_micros(100));
        }
    }
}

#[test]
fn drain_then_stop_delivers_every_message() {
    let a = Node::start(config(Identity::generate().unwrap())).unwrap();
    let b = Node::start(config(Identity::generate().unwrap())).unwrap();
    connect(&a, &b);
    let mut messages = b.messages();
    let reader = std::thread::spawn(move || {
        let mut got = Vec::new();
        while let Some(m) = messages.recv_blocking() {
            got.push(seq(&m.data));
        }
        got
    });
    send_all(&a, b.peer_id(), 20_000, 100);
    assert!(a.drain_blocking(Duration::from_secs(10)), "not drained");
    assert_eq!(futures::executor::block_on(a.outstanding()), 0);
    a.stop_blocking();
    wait_for("b sees a leave", Duration::from_secs(5), || {
        b.state(a.peer_id()) != ConnState::Established
    });
    b.stop_blocking();
    let got = reader.join().unwrap();
    assert_eq!(
        got.len(),
        20_000,
        "first missing: {:?}",
        (1..=20_000u64).find(|n| got.binary_search(n).is_err())
    );
    assert_eq!(got, (1..=20_000).collect::<Vec<u64>>());
}

#[test]
fn stop_with_messages_in_flight_hands_back_every_one_not_delivered() {
    let a = Node::start(config(Identity::generate().unwrap())).unwrap();
    // b's application reads nothing until the end, and holds at most 64 messages: its shard
    // stops reading, TCP pushes back, and a's queues fill.
    let b = Node::start(config(Identity::generate().unwrap()).message_buffer(64)).unwrap();
    connect(&a, &b);
    let returns = a.subscribe(EventFilter::default(), 100_000);
    // As many as a takes before pushing back for 200 ms: its queues for b are full.
    let stream = a.stream("s");
    let mut sent = 0u64;
    let mut refused_since = None;
    while refused_since.is_none_or(|t: Instant| t.elapsed() < Duration::from_millis(200)) {
        if a.try_send(b.peer_id(), &stream, numbered(sent + 1, 4096))
            .is_ok()
        {
            sent += 1;
            refused_since = None;
        } else {
            refused_since.get_or_insert_with(Instant::now);
            std::thread::sleep(Duration::from_micros(200));
        }
    }
    assert!(futures::executor::block_on(a.outstanding()) > 0);
    a.stop_blocking();
    let mut never = HashSet::new();
    let mut maybe = HashSet::new();
    while let Some(event) = returns.recv_blocking() {
        match event {
            Event::Undelivered {
                unsent,
                unconfirmed,
                ..
            } => {
                never.extend(unsent.iter().map(seq));
                maybe.extend(unconfirmed.iter().map(seq));
            }
            Event::SendFailed { data, .. } => {
                never.insert(seq(&data));
            }
            Event::Missed { count } => panic!("lost {count} events"),
            _ => {}
        }
    }
    // Now b's application catches up with everything b took.
    let mut messages = b.messages();
    let mut got = Vec::new();
    let mut quiet_since = Instant::now();
    while quiet_since.elapsed() < Duration::from_millis(500) {
        match messages.try_recv() {
            Some(m) => {
                got.push(seq(&m.data));
                quiet_since = Instant::now();
            }
            None => std::thread::sleep(Duration::from_millis(1)),
        }
    }
    b.stop_blocking();
    println!(
        "sent {sent}: received {}, handed back {} unsent + {} unconfirmed",
        got.len(),
        never.len(),
        maybe.len()
    );
    assert!(
        !never.is_empty(),
        "nothing was in flight: the test tests nothing"
    );
    assert!(
        got.windows(2).all(|w| w[0] < w[1]),
        "out of order or duplicated"
    );
    let received: HashSet<u64> = got.into_iter().collect();
    assert!(
        never.is_disjoint(&received),
        "handed back as unsent but received"
    );
    let lost: Vec<u64> = (1..=sent)
        .filter(|n| !received.contains(n) && !never.contains(n) && !maybe.contains(n))
        .take(5)
        .collect();
    assert!(
        lost.is_empty(),
        "neither received nor handed back: {lost:?}"
    );
}

#[test]
fn restart_from_the_same_data_directory_resumes_the_book_and_reconnects() {
    let dir = tempfile::tempdir().unwrap();
    let book = dir.path().join("peers.json");
    let seed = [7u8; 32];
    let stop = Arc::new(AtomicBool::new(false));
    let b = Node::start(config(Identity::generate().unwrap())).unwrap();
    let b_stop = Arc::new(AtomicBool::new(false));
    let b_helper = auto_handshake(&b, b_stop.clone());
    let banned = Identity::generate().unwrap().peer_id();

    let a = Node::start(config(Identity::from_seed(&seed)).address_book(&book)).unwrap();
    let a_helper = auto_handshake(&a, stop.clone());
    a.add_peer(b.peer_id(), vec![b.listen_addr()], BTreeMap::new())
        .unwrap();
    a.blacklist(banned).unwrap();
    wait_for("established", Duration::from_secs(10), || {
        a.state(b.peer_id()) == ConnState::Established
    });
    stop.store(true, Ordering::Relaxed);
    a_helper.join().unwrap();
    a.stop_blocking();
    wait_for("b sees a leave", Duration::from_secs(5), || {
        b.state(a.peer_id()) != ConnState::Established
    });
    drop(a);

    // The same identity and data directory; no connect call.
    stop.store(false, Ordering::Relaxed);
    let restarted = Node::start(config(Identity::from_seed(&seed)).address_book(&book)).unwrap();
    let helper = auto_handshake(&restarted, stop.clone());
    assert!(restarted.peer(b.peer_id()).is_some(), "b forgotten");
    assert!(
        restarted.peer(banned).is_some_and(|p| p.blacklisted),
        "the blacklist was not kept"
    );
    wait_for("reconnected by itself", Duration::from_secs(10), || {
        restarted.state(b.peer_id()) == ConnState::Established
            && b.state(restarted.peer_id()) == ConnState::Established
    });
    stop.store(true, Ordering::Relaxed);
    b_stop.store(true, Ordering::Relaxed);
    helper.join().unwrap();
    b_helper.join().unwrap();
    restarted.stop_blocking();
    b.stop_blocking();
}

#[test]
fn a_panicking_handler_is_contained_and_a_dead_shard_is_reported_not_waited_for() {
    use std::sync::atomic::AtomicUsize;
    // The application's handler panics on every message: the shard survives and keeps calling it.
    let calls = Arc::new(AtomicUsize::new(0));
    let counted = calls.clone();
    let handler: glueberry::Handler = Arc::new(move |_: &PeerId, _: &str, _: &Bytes| {
        counted.fetch_add(1, Ordering::Relaxed);
        panic!("an application bug");
    });
    let receiver = Node::start(config(Identity::generate().unwrap()).handler(handler)).unwrap();
    let sender = Node::start(config(Identity::generate().unwrap())).unwrap();
    glueberry::testing::establish(&sender, &receiver, &["s"], Duration::from_secs(10)).unwrap();
    let route = sender.route(receiver.peer_id(), "s");
    for n in 0..10 {
        sender
            .try_send(receiver.peer_id(), &route, numbered(n, 8))
            .unwrap();
    }
    wait_for("ten handler calls", Duration::from_secs(10), || {
        calls.load(Ordering::Relaxed) == 10
    });
    assert!(
        receiver.health().live,
        "a panicking handler does not kill the node"
    );

    // A shard that dies (here on request, as a bug would) turns liveness off, and calls that
    // need it return instead of waiting forever.
    glueberry::testing::crash_shard(&receiver, 0).unwrap();
    wait_for("not live", Duration::from_secs(10), || {
        !receiver.health().live
    });
    let health = receiver.health();
    println!("after a shard died: {}", health.to_json());
    assert_eq!(
        health.check("started").unwrap().detail,
        "0 of 1 shards running"
    );
    let stats = std::thread::spawn({
        let receiver = receiver.clone();
        move || futures::executor::block_on(receiver.stats())
    });
    wait_for("stats() returned", Duration::from_secs(5), || {
        stats.is_finished()
    });
    let started = Instant::now();
    receiver.stop_blocking();
    println!("stop() with a dead shard took {:?}", started.elapsed());
    sender.stop_blocking();
}

#[test]
fn drain_and_stop_await_on_a_current_thread_runtime_with_the_peer_in_the_same_process() {
    // The application's first program: one thread, both nodes, async all the way. The old
    // blocking drain ran its whole timeout here and returned false with 5,000 messages out.
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    runtime.block_on(async {
        let a = Node::start(config(Identity::generate().unwrap())).unwrap();
        let b = Node::start(config(Identity::generate().unwrap())).unwrap();
        glueberry::testing::establish(&a, &b, &["s"], Duration::from_secs(10)).unwrap();
        let mut messages = b.messages();
        let reader = tokio::spawn(async move {
            let mut n = 0u64;
            while let Some(m) = messages.recv().await {
                assert_eq!(seq(&m.data), n, "in order");
                n += 1;
                if n == 5_000 {
                    break;
                }
            }
            n
        });
        let route = a.route(b.peer_id(), "s");
        for n in 0..5_000 {
            a.send(b.peer_id(), &route, numbered(n, 64)).await.unwrap();
        }
        let started = Instant::now();
        let drained = a.drain(Duration::from_secs(10)).await;
        let took = started.elapsed();
        assert!(drained, "drain().await confirmed everything");
        assert_eq!(reader.await.unwrap(), 5_000);
        let started = Instant::now();
        a.stop().await;
        b.stop().await;
        println!(
            "drain().await of 5,000 messages on one thread: {took:?}; both stop().await: {:?}",
            started.elapsed()
        );
        assert!(took < Duration::from_secs(10));
    });
}

#[test]
fn dropping_every_handle_stops_the_node() {
    let node = Node::start(config(Identity::generate().unwrap())).unwrap();
    let addr = node.listen_addr();
    let clone = node.clone();
    drop(node);
    assert!(
        std::net::TcpStream::connect(addr).is_ok(),
        "a handle remains: still listening"
    );
    drop(clone);
    wait_for("the port closed", Duration::from_secs(10), || {
        std::net::TcpStream::connect(addr).is_err()
    });
}
