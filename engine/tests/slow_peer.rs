//! A peer that never reads, next to one that does: the sender's queues for the stuck peer stay
//! bounded, `try_send` to it pushes back, and the other peer's throughput is not held back. In
//! its own test binary, so that the memory it measures is its own.
#![allow(clippy::expect_used, clippy::unwrap_used, clippy::panic)] // test code

mod common;
use common::rss_kib;

use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use glueberry::crypto::{Identity, PeerId};
use glueberry::testing::establish;
use glueberry::transport::ConnState;
use glueberry::{Event, Node, NodeConfig};

const T: Duration = Duration::from_secs(10);

fn config() -> NodeConfig {
    NodeConfig::new(
        Identity::generate().unwrap(),
        "slow-peer-test",
        "127.0.0.1:0".parse().unwrap(),
    )
    .shards(1)
}

fn node() -> Node {
    Node::start(config()).unwrap()
}

/// Messages of 1 KiB sent as fast as `try_send` takes them to each of `to`, from one thread,
/// until `stop`; returns how many `try_send` refused, per peer.
fn flood(
    from: &Node,
    to: Vec<PeerId>,
    stop: Arc<std::sync::atomic::AtomicBool>,
) -> std::thread::JoinHandle<Vec<u64>> {
    let from = from.clone();
    std::thread::spawn(move || {
        let stream = from.stream("s");
        let data = Bytes::from(vec![7u8; 1024]);
        let mut refused = vec![0u64; to.len()];
        while !stop.load(std::sync::atomic::Ordering::Relaxed) {
            let mut all_refused = true;
            for (i, peer) in to.iter().enumerate() {
                if from.try_send(*peer, &stream, data.clone()).is_err() {
                    refused[i] += 1;
                } else {
                    all_refused = false;
                }
            }
            if all_refused {
                std::thread::sleep(Duration::from_micros(200));
            }
        }
        refused
    })
}

/// Messages `node` delivers to its application in `during`.
fn received_in(messages: &mut glueberry::Messages, during: Duration) -> u64 {
    let start = Instant::now();
    let mut n = 0;
    while start.elapsed() < during {
        match messages.try_recv() {
            Some(_) => n += 1,
            None => std::thread::sleep(Duration::from_micros(100)),
        }
    }
    n
}

#[test]
fn a_peer_that_never_reads_is_bounded_pushed_back_and_does_not_slow_the_others() {
    use std::sync::atomic::{AtomicBool, Ordering};
    let sender = node();
    let reader = node();
    // Its application never reads, and its channel holds one message: its node stops reading
    // the socket, TCP fills, and the sender's queues for it fill.
    let stuck = Node::start(config().message_buffer(1)).unwrap();
    establish(&sender, &reader, &["s"], T).unwrap();
    let returns = sender.subscribe(glueberry::EventFilter::default(), 1_000_000);
    let mut messages = reader.messages();

    // The reader alone: its rate, for comparison in the same run.
    let stop = Arc::new(AtomicBool::new(false));
    let flooder = flood(&sender, vec![reader.peer_id()], stop.clone());
    let alone = received_in(&mut messages, Duration::from_secs(1));
    stop.store(true, Ordering::Relaxed);
    flooder.join().unwrap();
    while messages.try_recv().is_some() {}

    // Now also the peer that never reads.
    establish(&sender, &stuck, &["s"], T).unwrap();
    let rss_before = rss_kib();
    let stop = Arc::new(AtomicBool::new(false));
    let flooder = flood(
        &sender,
        vec![reader.peer_id(), stuck.peer_id()],
        stop.clone(),
    );
    std::thread::sleep(Duration::from_secs(1)); // the stuck peer's queues fill
    let with_stuck = received_in(&mut messages, Duration::from_secs(1));
    stop.store(true, Ordering::Relaxed);
    let refused = flooder.join().unwrap();
    let grew = rss_kib().saturating_sub(rss_before);
    let mut handed_back = 0;
    while let Some(event) = returns.try_recv() {
        if let Event::SendFailed { peer, .. } = event {
            assert_eq!(peer, stuck.peer_id(), "a message to the reader was refused");
            handed_back += 1;
        }
    }
    println!(
        "reader: {alone} messages/s alone, {with_stuck} with a peer that never reads; \
         try_send refused {} to the stuck peer, {} to the reader; {handed_back} handed back; \
         resident memory +{grew} KiB",
        refused[1], refused[0]
    );
    assert!(refused[1] > 0, "the stuck peer never pushed back");
    assert!(
        with_stuck * 5 >= alone,
        "the stuck peer held back the others: {with_stuck} vs {alone} alone"
    );
    // At most 16 MiB queued on its connection plus 16 MiB waiting in the shard, and a window.
    assert!(
        grew < 64 * 1024,
        "memory for the stuck peer grew by {grew} KiB"
    );
    assert_eq!(sender.state(stuck.peer_id()), ConnState::Established);
}
