//! An application that hangs up on a peer and dials it again, over and over: each time the pair
//! is Established again, from either side's point of view.
#![allow(clippy::expect_used, clippy::unwrap_used, clippy::panic)] // test code

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use glueberry::crypto::Identity;
use glueberry::transport::ConnState;
use glueberry::{Node, NodeConfig};

fn node() -> Node {
    let config = NodeConfig::new(
        Identity::generate().unwrap(),
        "churn-test",
        "127.0.0.1:0".parse().unwrap(),
    )
    .shards(1)
    .reconnect(Duration::from_millis(50), Duration::from_millis(400), 0);
    Node::start(config).unwrap()
}

fn handshakes(node: &Node, stop: Arc<AtomicBool>) -> std::thread::JoinHandle<()> {
    let node = node.clone();
    std::thread::spawn(move || {
        let events = node.events();
        while !stop.load(Ordering::Relaxed) {
            while events.try_recv().is_some() {}
            for (peer, state) in node.connected_peers() {
                if state == ConnState::Connected {
                    let _ = node.complete_handshake(peer, &["s"]);
                }
            }
            std::thread::sleep(Duration::from_millis(1));
        }
    })
}

#[test]
fn hang_up_and_dial_again_fifty_times() {
    let (a, b) = (node(), node());
    let stop = Arc::new(AtomicBool::new(false));
    let helpers = [handshakes(&a, stop.clone()), handshakes(&b, stop.clone())];
    let both = |a: &Node, b: &Node| {
        a.state(b.peer_id()) == ConnState::Established
            && b.state(a.peer_id()) == ConnState::Established
    };
    for round in 0..50 {
        a.connect(b.peer_id(), b.listen_addr()).unwrap();
        let start = Instant::now();
        while !both(&a, &b) {
            assert!(
                start.elapsed() < Duration::from_secs(5),
                "round {round}: a sees {:?}, b sees {:?}",
                a.state(b.peer_id()),
                b.state(a.peer_id())
            );
            std::thread::sleep(Duration::from_millis(1));
        }
        a.disconnect(b.peer_id()).unwrap();
        std::thread::sleep(Duration::from_millis((round % 5) * 20));
    }
    stop.store(true, Ordering::Relaxed);
    for h in helpers {
        h.join().unwrap();
    }
}
