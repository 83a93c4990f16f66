//! The steady path allocates nothing per message: counted with a global allocator.
#![allow(clippy::expect_used)] // test helpers: a failure should stop the test

use std::alloc::{GlobalAlloc, Layout, System};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Instant;

use bytes::Bytes;
use glueberry_crypto::Suite;
use glueberry_transport::testing::{Cipher, connected_pair};
use glueberry_transport::{ConnectionConfig, Event};

struct Counting;

static ALLOCATIONS: AtomicU64 = AtomicU64::new(0);

// SAFETY: forwards every call unchanged to the system allocator; only counts.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        ALLOCATIONS.fetch_add(1, Ordering::Relaxed);
        // SAFETY: same contract as our caller's.
        unsafe { System.alloc(layout) }
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        // SAFETY: same contract as our caller's.
        unsafe { System.dealloc(ptr, layout) }
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        ALLOCATIONS.fetch_add(1, Ordering::Relaxed);
        // SAFETY: same contract as our caller's.
        unsafe { System.realloc(ptr, layout, new_size) }
    }
}

#[global_allocator]
static GLOBAL: Counting = Counting;

/// Sends `rounds` × 1000 messages through a connection pair and returns allocations per message.
fn allocations_per_message(cipher: Cipher, size: usize, rounds: usize) -> f64 {
    let config = Arc::new(ConnectionConfig {
        high_watermark: 2000,
        low_watermark: 1000,
        ..Default::default()
    });
    let (mut a, mut b) = connected_pair(config, cipher).expect("pair");
    a.complete_handshake(&["s"]).expect("a");
    b.complete_handshake(&["s"]).expect("b");
    let stream = a.stream_id("s").expect("s");
    let message = Bytes::from(vec![1u8; size]);
    let mut buf = vec![0u8; 1 << 20];
    let now = Instant::now();
    let mut run = |rounds: usize| {
        let mut received = 0;
        for _ in 0..rounds {
            for _ in 0..1000 {
                a.send(stream, message.clone()).expect("send");
            }
            loop {
                let n = a.poll_transmit(&mut buf);
                b.handle_input(now, &buf[..n]);
                while let Some(event) = b.poll_event() {
                    if let Event::Message { stream, data } = event {
                        received += 1;
                        b.release(stream, data.len());
                    }
                }
                let m = b.poll_transmit(&mut buf);
                a.handle_input(now, &buf[..m]);
                while a.poll_event().is_some() {}
                if n == 0 && m == 0 {
                    break;
                }
            }
        }
        received
    };
    // Warm up: queues, event buffers and the receive buffer reach their working size.
    assert_eq!(run(20), 20_000);
    let before = ALLOCATIONS.load(Ordering::Relaxed);
    assert_eq!(run(rounds), rounds * 1000);
    let after = ALLOCATIONS.load(Ordering::Relaxed);
    (after - before) as f64 / (rounds * 1000) as f64
}

#[test]
fn steady_state_allocates_far_less_than_once_per_message() {
    for cipher in [Cipher::DangerNull, Cipher::Real(Suite::ChaCha20Poly1305)] {
        for size in [64, 1024] {
            let per_message = allocations_per_message(cipher, size, 100);
            println!("{cipher:?} {size} B: {per_message:.5} allocations per message");
            // The receive buffer grows in 64 KiB steps (about one allocation per 64 KiB), and
            // messages small beside it are copied into 64 KiB chunks (two allocations per
            // chunk: its bytes and their shared header) so that a held one pins only its
            // chunk: about three allocations per 64 KiB of messages, with a margin.
            let bound = 4.0 * (size as f64 + 30.0) / (64.0 * 1024.0);
            assert!(
                per_message <= bound,
                "{cipher:?} {size} B: {per_message} allocations per message (bound {bound})"
            );
        }
    }
}
