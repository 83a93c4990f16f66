//! Authenticated peers that try to make the node hold memory: messages begun and never
//! finished on every stream, tiny records one per segment, credit withheld, a zero TCP window.
//! Each speaks the protocol by hand (records sealed with its own session keys) over loopback;
//! each test prints the node's process RSS and what the honest side kept.
#![allow(clippy::expect_used, clippy::unwrap_used, clippy::panic)] // test code

mod common;
use common::raw::{Raw, accept};
use common::{rss_kib, vm_data_kib};

use std::time::{Duration, Instant};

use bytes::Bytes;
use glueberry::crypto::PeerId;
use glueberry::transport::frame::{DATA_FIRST, DATA_LAST, Frame};
use glueberry::transport::{CloseCode, CloseReason, ConnState, ConnectionConfig};
use glueberry::{Event, Node, NodeConfig};

const NET: &str = "pinning-test";
const T: Duration = Duration::from_secs(10);

fn node(config: NodeConfig) -> Node {
    Node::start(config.shards(1).event_buffer(100_000)).unwrap()
}

fn config() -> NodeConfig {
    common::loopback_config(NET)
}

#[test]
fn messages_begun_on_every_stream_pin_at_most_the_connection_window() {
    let _alone = common::alone();
    // Sixteen peers from one address: the per-group socket limit is not what is tested here.
    let node = node(config().limits(glueberry::ConnectionLimits {
        max_inbound_per_group: 64,
        ..Default::default()
    }));
    let names: Vec<String> = (1..=17).map(|i| format!("s{i}")).collect();
    let streams: Vec<&str> = names.iter().map(String::as_str).collect();
    let window = ConnectionConfig::default().connection_window as usize;
    let max = ConnectionConfig::default().max_message_size;
    let before = rss_kib();
    const ATTACKERS: usize = 16;
    let events = node.events();
    let mut attackers = Vec::new();
    for n in 0..ATTACKERS {
        let mut raw = Raw::connect(&node, &streams);
        accept(&node, &mut raw, &streams);
        // On every stream (and `handshake`, id 0) a 1 MiB message begun and never finished.
        // Half of them send what the protocol lets them (together the connection's window);
        // the other half ignore credit and send all but the last byte of each (18 MiB).
        let polite = n % 2 == 0;
        let per_stream = if polite {
            window / (streams.len() + 1) - 64
        } else {
            max - 1
        };
        let chunk = vec![0xa5u8; 60_000];
        'streams: for id in 0..=streams.len() as u16 {
            let mut sent = 0;
            while sent < per_stream {
                let len = chunk.len().min(per_stream - sent);
                let frame = Frame::Data {
                    stream: id,
                    flags: if sent == 0 { DATA_FIRST } else { 0 },
                    total_len: (sent == 0).then_some(max as u32),
                    payload: &chunk[..len],
                };
                if raw.send(&[frame]).is_err() {
                    break 'streams; // cut off
                }
                sent += len;
            }
        }
        attackers.push((raw, polite));
    }
    std::thread::sleep(Duration::from_millis(500));
    let after = rss_kib();
    let per_peer = (after.saturating_sub(before)) / ATTACKERS as u64;
    let mut cut = 0;
    for (raw, polite) in &attackers {
        if *polite {
            assert_eq!(
                node.state(raw.peer),
                ConnState::Established,
                "within its window"
            );
        } else {
            assert_ne!(
                node.state(raw.peer),
                ConnState::Established,
                "over the window"
            );
            cut += 1;
        }
    }
    let flow_control = std::iter::from_fn(|| events.try_recv())
        .filter(|e| {
            matches!(
                e,
                Event::State {
                    reason: Some(CloseReason::Error(
                        glueberry::transport::ConnectionError::FlowControl
                    )),
                    ..
                }
            )
        })
        .count();
    println!(
        "{ATTACKERS} authenticated peers, each a 1 MiB message begun on all {} streams: node \
         process RSS {before} KiB -> {after} KiB ({per_peer} KiB per peer; connection window {} \
         KiB; 18.3 MiB per peer before connection credit); {cut} that ignored credit were cut \
         ({flow_control} FlowControl closes), the {} within the window kept",
        streams.len() + 1,
        window / 1024,
        ATTACKERS - cut
    );
    assert_eq!(flow_control, cut);
    assert!(
        per_peer <= 2 * window as u64 / 1024 + 512,
        "a peer pinned {per_peer} KiB"
    );
    common::still_serves(&node, NET);
    node.stop_blocking();
}

#[test]
fn tiny_records_one_per_segment_do_not_pin_receive_buffers() {
    let _alone = common::alone();
    // The application does not read: every message stays in the node's channel. Receives go
    // into the node's own 256 KiB buffers (not the kernel-provided ring), each handed to the
    // connection whole: the case where a message sliced out of one would keep it alive.
    let node = node(config().message_buffer(100_000).provided_receive_buffers(0));
    let mut raw = Raw::connect(&node, &["tiny"]);
    accept(&node, &mut raw, &["tiny"]);
    let (before, data_before) = (rss_kib(), vm_data_kib());
    const MESSAGES: usize = 1000;
    for i in 0..MESSAGES {
        let payload = (i as u32).to_be_bytes();
        raw.send(&[Frame::Data {
            stream: 1,
            flags: DATA_FIRST | DATA_LAST,
            total_len: None,
            payload: &payload,
        }])
        .unwrap();
        // One record per receive: the node reads each before the next is sent.
        std::thread::sleep(Duration::from_micros(500));
    }
    // All arrived (they are in the channel, unread).
    let deadline = Instant::now() + T;
    let mut messages = node.messages();
    let mut held = Vec::new();
    while held.len() < MESSAGES {
        assert!(
            Instant::now() < deadline,
            "{} of {MESSAGES} arrived",
            held.len()
        );
        match messages.try_recv() {
            Some(m) => held.push(m),
            None => std::thread::sleep(Duration::from_millis(1)),
        }
    }
    let (after, data_after) = (rss_kib(), vm_data_kib());
    println!(
        "{MESSAGES} 4-byte messages, one record per receive, all held by the application: node \
         process RSS {before} KiB -> {after} KiB ({:+} KiB), data segment {data_before} KiB -> \
         {data_after} KiB ({:+} KiB; 256 KiB receive buffers kept alive by them would be {} MiB)",
        after as i64 - before as i64,
        data_after as i64 - data_before as i64,
        MESSAGES / 4
    );
    assert!(
        data_after < data_before + 32 * 1024,
        "small messages pinned receive buffers"
    );
    drop(held);
    common::still_serves(&node, NET);
    node.stop_blocking();
}

/// Sends to `peer` on `stream` until refused (its queue is full).
fn fill(node: &Node, peer: PeerId, stream: &str) -> usize {
    let route = node.route(peer, stream);
    let mut sent = 0;
    while node
        .try_send(peer, &route, Bytes::from(vec![1u8; 16 * 1024]))
        .is_ok()
    {
        sent += 1;
    }
    sent
}

/// Waits until the node reports `peer` closed with `code` (by us), and returns when.
fn closed_with(events: &glueberry::Subscription, peer: PeerId, code: CloseCode) -> Instant {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        assert!(Instant::now() < deadline, "not closed with {code}");
        match events.try_recv() {
            Some(Event::State {
                peer: p,
                reason: Some(CloseReason::Local(c)),
                ..
            }) if p == peer && c == code => return Instant::now(),
            Some(_) => {}
            None => std::thread::sleep(Duration::from_millis(5)),
        }
    }
}

/// Calls `tick` every 100 ms until the node closes `peer` with `SendStalled`, and returns when
/// it did. `tick` (the peer's side of the test) returns false once its socket is gone.
fn until_send_stalled(
    events: &glueberry::Subscription,
    peer: PeerId,
    mut tick: impl FnMut() -> bool,
) -> Instant {
    let start = Instant::now();
    loop {
        if !tick() {
            return closed_with(events, peer, CloseCode::SendStalled);
        }
        if let Some(Event::State {
            peer: p,
            reason: Some(CloseReason::Local(c)),
            ..
        }) = events.try_recv()
            && p == peer
        {
            assert_eq!(c, CloseCode::SendStalled);
            return Instant::now();
        }
        std::thread::sleep(Duration::from_millis(100));
        assert!(
            start.elapsed() < T,
            "still connected after {:?}",
            start.elapsed()
        );
    }
}

fn stall_config() -> NodeConfig {
    config().connection(ConnectionConfig {
        send_stall_timeout: Duration::from_secs(2),
        ..Default::default()
    })
}

#[test]
fn a_peer_that_withholds_credit_but_pings_is_cut_at_the_send_stall_timeout() {
    let _alone = common::alone();
    let node = node(stall_config());
    let events = node.events();
    let mut raw = Raw::connect(&node, &["blocks"]);
    accept(&node, &mut raw, &["blocks"]);
    let before = rss_kib();
    let queued = fill(&node, raw.peer, "blocks");
    let start = Instant::now();
    // It reads everything (its TCP window stays open), answers with PINGs, and never returns
    // a byte of credit.
    let mut ping = 0;
    let peer = raw.peer;
    let at = until_send_stalled(&events, peer, || {
        raw.drain();
        ping += 1;
        raw.send(&[Frame::Ping(ping)]).is_ok()
    });
    let after = rss_kib();
    println!(
        "credit withheld, pinging: {queued} x 16 KiB queued for it; cut with SendStalled after \
         {:?} (timeout 2 s); node process RSS {before} KiB -> {after} KiB",
        at - start
    );
    assert!(at - start >= Duration::from_secs(2));
    common::still_serves(&node, NET);
    node.stop_blocking();
}

#[test]
fn a_peer_with_a_zero_window_is_cut_and_its_socket_closed() {
    let _alone = common::alone();
    let node = node(stall_config());
    let events = node.events();
    let mut raw = Raw::connect(&node, &["blocks"]);
    accept(&node, &mut raw, &["blocks"]);
    let fds = glueberry::open_fd_count();
    // It gives all the credit the node could want (so the node's sends fill the socket), then
    // never reads (its TCP window falls to zero) but keeps pinging.
    let plenty = u32::MAX / 2;
    raw.send(&[
        Frame::Credit {
            stream: 1,
            increment: plenty,
        },
        Frame::Credit {
            stream: glueberry::transport::frame::CONNECTION_CREDIT,
            increment: plenty,
        },
    ])
    .unwrap();
    let queued = fill(&node, raw.peer, "blocks");
    let start = Instant::now();
    let mut ping = 0;
    let peer = raw.peer;
    let at = until_send_stalled(&events, peer, || {
        ping += 1;
        let _ = raw.send(&[Frame::Ping(ping)]);
        true
    });
    // The send stuck behind the zero window is cancelled and the socket closed.
    let deadline = Instant::now() + T;
    while glueberry::open_fd_count() >= fds {
        assert!(Instant::now() < deadline, "the socket stayed open");
        std::thread::sleep(Duration::from_millis(20));
    }
    println!(
        "zero window, pinging: {queued} x 16 KiB queued; cut with SendStalled after {:?}; \
         socket closed {:?} later (open fds {fds} -> {})",
        at - start,
        at.elapsed(),
        glueberry::open_fd_count()
    );
    common::still_serves(&node, NET);
    node.stop_blocking();
}
