//! The send path's contract as an application relies on it, under load: what `send` accepts is
//! delivered (it waits for room; nothing comes back while the connection lives), `try_send` at
//! the bound refuses and leaves the message with the caller, and neither a slow stream nor a slow
//! peer holds up another. In its own test binary, so that the memory it measures is its own.
#![allow(clippy::expect_used, clippy::unwrap_used, clippy::panic)] // test code

mod common;
use common::rss_kib;

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use bytes::Bytes;
use glueberry::crypto::Identity;
use glueberry::testing::establish;
use glueberry::{Event, EventFilter, Node, NodeConfig, NodeSendError};

const T: Duration = Duration::from_secs(20);
const MIB: usize = 1024 * 1024;

fn config() -> NodeConfig {
    common::loopback_config("send-path-test")
}

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap()
}

/// Events that hand messages back (`SendFailed`, `Undelivered`) seen on `events`.
fn handed_back(events: &glueberry::Subscription) -> usize {
    let mut n = 0;
    while let Some(event) = events.try_recv() {
        match event {
            Event::SendFailed { .. } => n += 1,
            Event::Undelivered {
                unsent,
                unconfirmed,
                ..
            } => n += unsent.len() + unconfirmed.len(),
            Event::Missed { count } => panic!("missed {count} events"),
            _ => {}
        }
    }
    n
}

#[test]
fn two_hundred_mebibytes_with_plain_send_arrive_whole_in_order_with_bounded_memory() {
    const CHUNKS: usize = 200;
    let a = Node::start(config()).unwrap();
    let b = Node::start(config()).unwrap();
    establish(&a, &b, &["blocks"], T).unwrap();
    let events = a.subscribe(EventFilter::default(), 100_000);
    let rss_before = rss_kib();
    let peak = Arc::new(AtomicU64::new(rss_before));
    let done = Arc::new(AtomicBool::new(false));
    let sampler = {
        let (peak, done) = (peak.clone(), done.clone());
        std::thread::spawn(move || {
            while !done.load(Ordering::Relaxed) {
                peak.fetch_max(rss_kib(), Ordering::Relaxed);
                std::thread::sleep(Duration::from_millis(5));
            }
        })
    };
    let started = Instant::now();
    let rt = runtime();
    let (sent, received) = rt.block_on(async {
        let sender = {
            let (a, to) = (a.clone(), b.peer_id());
            tokio::spawn(async move {
                for i in 0..CHUNKS {
                    // Each chunk is a fresh allocation, as a file read would be.
                    let chunk = Bytes::from(vec![i as u8; MIB]);
                    a.send(to, "blocks", chunk).await.expect("send");
                }
                CHUNKS
            })
        };
        let mut messages = b.messages();
        let mut received = 0;
        while received < CHUNKS {
            let m = tokio::time::timeout(T, messages.recv())
                .await
                .expect("a chunk within the timeout")
                .expect("running");
            assert_eq!(m.data.len(), MIB, "chunk {received} whole");
            assert!(
                m.data.iter().all(|&byte| byte == received as u8),
                "chunk {received} in order and intact"
            );
            received += 1;
        }
        (sender.await.unwrap(), received)
    });
    let elapsed = started.elapsed();
    assert!(a.drain_blocking(T), "the receiver confirmed everything");
    done.store(true, Ordering::Relaxed);
    sampler.join().unwrap();
    let grew_mib = peak.load(Ordering::Relaxed).saturating_sub(rss_before) / 1024;
    let back = handed_back(&events);
    println!(
        "{sent} chunks of 1 MiB sent with send().await, {received} received whole and in order \
         in {elapsed:.2?} ({:.0} MB/s); handed back: {back}; resident memory of both nodes \
         peaked {grew_mib} MiB above the start",
        (CHUNKS * MIB) as f64 / elapsed.as_secs_f64() / 1e6
    );
    assert_eq!(
        back, 0,
        "nothing accepted comes back while the connection lives"
    );
    // The stream's queue bound (16 MiB), a window in flight (1 MiB), a window held at the
    // receiver and the buffers around them: far below the 200 MiB that went through.
    assert!(grew_mib < 100, "memory grew by {grew_mib} MiB");
    a.stop_blocking();
    b.stop_blocking();
}

#[test]
fn try_send_at_the_bound_refuses_and_the_message_is_still_the_callers() {
    let a = Node::start(config().stream_queue(8, 64 * MIB)).unwrap();
    let b = Node::start(config()).unwrap();
    // b's application never reads this stream: b returns no credit, a's window fills, then a's
    // queue for the stream.
    let _stuck = b.messages_on("s").unwrap();
    establish(&a, &b, &["s"], T).unwrap();
    let route = a.route(b.peer_id(), "s");
    let deadline = Instant::now() + T;
    let refused = loop {
        let message = Bytes::from(vec![1u8; 64 * 1024]);
        match a.try_send_on(&route, message.clone()) {
            Ok(()) => assert!(Instant::now() < deadline, "try_send never refused"),
            Err(e) => break (e, message),
        }
    };
    let (error, original) = refused;
    assert_eq!(error.error, NodeSendError::BufferFull);
    assert_eq!(error.data, original);
    assert_eq!(
        error.data.as_ptr(),
        original.as_ptr(),
        "the same bytes, not a copy"
    );
    let (messages, bytes) = route.queued();
    println!("refused at {messages} messages, {bytes} bytes queued on the stream");
    assert_eq!(messages, 8, "the bound is the configured one, exactly");
    a.stop_blocking();
    b.stop_blocking();
}

#[test]
fn a_stream_whose_consumer_stopped_does_not_delay_another_stream_or_another_peer() {
    let a = Node::start(config()).unwrap();
    let b = Node::start(config()).unwrap();
    let c = Node::start(config()).unwrap();
    // b's application reads "rpc" (through messages()) but has stopped reading "blocks".
    let _stuck = b.messages_on("blocks").unwrap();
    establish(&a, &b, &["blocks", "rpc"], T).unwrap();
    establish(&c, &b, &["blocks", "rpc"], T).unwrap();
    let rt = runtime();
    let flooded = Arc::new(AtomicU64::new(0));
    rt.block_on(async {
        // a floods "blocks" until its queue for it is full and send() waits.
        let flooder = {
            let (a, to, flooded) = (a.clone(), b.peer_id(), flooded.clone());
            tokio::spawn(async move {
                loop {
                    let chunk = Bytes::from(vec![0u8; 256 * 1024]);
                    if a.send(to, "blocks", chunk).await.is_err() {
                        return;
                    }
                    flooded.fetch_add(1, Ordering::Relaxed);
                }
            })
        };
        // Until "blocks" is stuck: b holds a window of it, a holds its queue.
        let mut last = u64::MAX;
        loop {
            tokio::time::sleep(Duration::from_millis(200)).await;
            let now = flooded.load(Ordering::Relaxed);
            if now == last {
                break;
            }
            last = now;
        }
        assert!(!flooder.is_finished(), "send on the full stream waits");
        // "rpc" of the same peer, and of another peer, still flow.
        let mut messages = b.messages();
        for i in 0..100u8 {
            a.send(b.peer_id(), "rpc", Bytes::from(vec![i; 64]))
                .await
                .unwrap();
            c.send(b.peer_id(), "rpc", Bytes::from(vec![i; 64]))
                .await
                .unwrap();
        }
        let mut from = std::collections::HashMap::new();
        while from.values().sum::<usize>() < 200 {
            let m = tokio::time::timeout(T, messages.recv())
                .await
                .expect("rpc is not held up by the stuck stream")
                .expect("running");
            assert_eq!(&*m.stream, "rpc");
            *from.entry(m.peer).or_insert(0usize) += 1;
        }
        assert_eq!(from[&a.peer_id()], 100);
        assert_eq!(from[&c.peer_id()], 100);
        println!(
            "{} chunks of 256 KiB went into the stuck stream before it pushed back; 200 rpc \
             messages from two peers went through beside it",
            flooded.load(Ordering::Relaxed)
        );
        assert!(!flooder.is_finished(), "the stuck stream is still stuck");
        flooder.abort();
    });
    a.stop_blocking();
    b.stop_blocking();
    c.stop_blocking();
}

/// A peer identity whose key's last byte falls in `slot` of 64 (the congestion map this
/// project used to share between peers chose slots this way).
fn identity_in_slot(slot: u8) -> Identity {
    loop {
        let identity = Identity::generate().unwrap();
        if identity.peer_id().public_key()[31] % 64 == slot {
            return identity;
        }
    }
}

#[test]
fn a_congested_peer_does_not_make_senders_to_another_peer_wait() {
    let a = Node::start(config()).unwrap();
    // Two peers that would have shared a congestion slot.
    let slot = Identity::generate().unwrap().peer_id().public_key()[31] % 64;
    let stuck_config = NodeConfig::new(
        identity_in_slot(slot),
        "send-path-test",
        "127.0.0.1:0".parse().unwrap(),
    )
    .shards(1);
    let healthy_config = NodeConfig::new(
        identity_in_slot(slot),
        "send-path-test",
        "127.0.0.1:0".parse().unwrap(),
    )
    .shards(1);
    let stuck = Node::start(stuck_config).unwrap();
    let healthy = Node::start(healthy_config).unwrap();
    let _never_read = stuck.messages_on("s").unwrap();
    establish(&a, &stuck, &["s"], T).unwrap();
    establish(&a, &healthy, &["s"], T).unwrap();
    let rt = runtime();
    rt.block_on(async {
        let to_stuck = {
            let (a, to) = (a.clone(), stuck.peer_id());
            tokio::spawn(async move {
                let mut sent = 0u64;
                while a
                    .send(to, "s", Bytes::from(vec![0u8; 64 * 1024]))
                    .await
                    .is_ok()
                {
                    sent += 1;
                }
                sent
            })
        };
        // Let the stuck peer's window and queue fill.
        tokio::time::sleep(Duration::from_millis(500)).await;
        assert!(!to_stuck.is_finished());
        let started = Instant::now();
        let mut messages = healthy.messages();
        for i in 0..2000u32 {
            tokio::time::timeout(
                T,
                a.send(
                    healthy.peer_id(),
                    "s",
                    Bytes::from(i.to_be_bytes().to_vec()),
                ),
            )
            .await
            .expect("a sender to the healthy peer never waits on the congested one")
            .unwrap();
        }
        for i in 0..2000u32 {
            let m = tokio::time::timeout(T, messages.recv())
                .await
                .expect("delivered")
                .expect("running");
            assert_eq!(&m.data[..], i.to_be_bytes());
        }
        println!(
            "2000 messages to the healthy peer sent and received in {:.2?} while sends to a \
             congested peer in the same (former) congestion slot waited",
            started.elapsed()
        );
        assert!(
            !to_stuck.is_finished(),
            "the congested peer's sender still waits"
        );
        to_stuck.abort();
    });
    a.stop_blocking();
    stuck.stop_blocking();
    healthy.stop_blocking();
}

#[test]
fn send_batch_goes_in_parts_through_a_small_stream_queue_in_order() {
    // A stream queue of 16 messages: a batch of 1,000 goes in parts, each waiting for room.
    let (a, b) = (
        Node::start(config().stream_queue(16, MIB)).unwrap(),
        Node::start(config()).unwrap(),
    );
    let mut received = b.messages_on("bulk").unwrap();
    establish(&a, &b, &["bulk"], T).unwrap();
    let route = a.route(b.peer_id(), "bulk");
    let messages: Vec<Bytes> = (0..1000u32)
        .map(|i| Bytes::from(i.to_be_bytes().to_vec()))
        .collect();
    runtime().block_on(async {
        let sending = a.send_batch(&route, messages);
        let receiving = async {
            for i in 0..1000u32 {
                let message = received.recv().await.unwrap();
                assert_eq!(&message.data[..], &i.to_be_bytes(), "message {i}");
            }
        };
        let (sent, ()) = tokio::time::timeout(T, futures::future::join(sending, receiving))
            .await
            .unwrap();
        sent.unwrap();
        // A batch with a message over the limit is refused with the reason.
        let too_large = vec![Bytes::new(), Bytes::from(vec![0u8; 2 * MIB])];
        assert_eq!(
            a.send_batch(&route, too_large).await,
            Err(NodeSendError::MessageTooLarge {
                len: 2 * MIB,
                max: MIB
            })
        );
    });
    a.stop_blocking();
    b.stop_blocking();
}
