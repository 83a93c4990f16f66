//! What an idle connection holds: its armed receive is a small buffer while the connection is
//! quiet, a large one while it is busy, and a quiet connection that gets a large message grows
//! its receive and delivers the message intact.
#![allow(clippy::expect_used, clippy::unwrap_used, clippy::panic)] // test code

use std::time::{Duration, Instant};

use bytes::Bytes;
use glueberry::Node;

mod common;

const NET: &str = "idle-test";
/// A quiet connection's receive buffer (`QUIET_RECV_BUF` in the shard).
const QUIET: u64 = 2 * 1024;
const CLIENTS: u64 = 12;

/// Waits until `node`'s armed receive buffers are within `range`; returns the last value.
fn settle(node: &Node, range: std::ops::RangeInclusive<u64>, timeout: Duration) -> u64 {
    let deadline = Instant::now() + timeout;
    loop {
        let bytes = node.receive_buffer_bytes();
        if range.contains(&bytes) || Instant::now() > deadline {
            return bytes;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[test]
fn idle_connections_arm_small_receives_and_a_large_message_still_arrives_whole() {
    let timeout = Duration::from_secs(10);
    let server = common::start_node(NET, 1);
    let clients: Vec<Node> = (0..CLIENTS).map(|_| common::start_node(NET, 1)).collect();
    for client in &clients {
        glueberry::testing::establish(client, &server, &["idle"], timeout).unwrap();
    }
    // One receive armed per connection, each a quiet one's (256 KiB each before: 3 MiB here).
    let quiet = CLIENTS * QUIET..=CLIENTS * 2 * QUIET;
    let bytes = settle(&server, quiet.clone(), timeout);
    assert!(
        quiet.contains(&bytes),
        "{bytes} bytes of receive buffers armed for {CLIENTS} idle connections"
    );

    // A quiet connection gets 1 MiB and 100 small messages: its receive grows, every byte
    // arrives in order.
    let sender = &clients[0];
    let stream = sender.stream("idle");
    let large: Vec<u8> = (0..1024 * 1024u32).map(|i| (i % 251) as u8).collect();
    futures::executor::block_on(sender.send(server.peer_id(), &stream, Bytes::from(large.clone())))
        .unwrap();
    for i in 0..100u32 {
        futures::executor::block_on(sender.send(
            server.peer_id(),
            &stream,
            Bytes::copy_from_slice(&i.to_be_bytes()),
        ))
        .unwrap();
    }
    let first = glueberry::testing::expect_message(&server, timeout).unwrap();
    assert_eq!(first.data.len(), large.len());
    assert!(
        first.data[..] == large[..],
        "the 1 MiB message arrived changed"
    );
    for i in 0..100u32 {
        let message = glueberry::testing::expect_message(&server, timeout).unwrap();
        assert_eq!(&message.data[..], &i.to_be_bytes(), "message {i}");
    }

    // A small message after the burst makes the connection quiet again.
    futures::executor::block_on(sender.send(
        server.peer_id(),
        &stream,
        Bytes::from_static(b"quiet"),
    ))
    .unwrap();
    let message = glueberry::testing::expect_message(&server, timeout).unwrap();
    assert_eq!(&message.data[..], b"quiet");
    let bytes = settle(&server, quiet.clone(), timeout);
    assert!(
        quiet.contains(&bytes),
        "{bytes} bytes of receive buffers armed once the busy connection is quiet again"
    );
    for client in clients {
        client.stop_blocking();
    }
    server.stop_blocking();
}
