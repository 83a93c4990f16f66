//! Micro-benchmarks of the secure channel: the handshake and record sealing/opening.
//!
//! `cargo bench -p glueberry-crypto --bench crypto`; figures go to `BENCHMARKS.md`.
#![allow(missing_docs, clippy::expect_used)] // a benchmark that fails should stop loudly

use std::hint::black_box;
use std::sync::Arc;
use std::time::{Duration, Instant};

use criterion::{BatchSize, Criterion, Throughput, criterion_group, criterion_main};
use glueberry_crypto::handshake::complete_in_memory;
use glueberry_crypto::record::{HEADER_LEN, TAG_LEN};
use glueberry_crypto::{
    Handshake, HandshakeConfig, Identity, RecordOpener, RecordSealer, Session, Suite,
};

const SIZES: [usize; 4] = [64, 1024, 16 * 1024, 64 * 1024];

fn configs(suite: Suite) -> (Arc<HandshakeConfig>, Arc<HandshakeConfig>) {
    let config = |seed: u8| {
        Arc::new(
            HandshakeConfig::new(&Identity::from_seed(&[seed; 32]), "bench")
                .and_then(|c| c.with_suites(&[suite]))
                .expect("config"),
        )
    };
    (config(1), config(2))
}

/// One complete handshake, both ends, in memory. Returns the two sessions.
fn handshake(a: &Arc<HandshakeConfig>, b: &Arc<HandshakeConfig>) -> (Session, Session) {
    let initiator = Handshake::initiator(a.clone(), None).expect("initiator");
    complete_in_memory(initiator, Handshake::responder(b.clone())).expect("handshake")
}

fn bench_handshake(c: &mut Criterion) {
    let (a, b) = configs(Suite::ChaCha20Poly1305);
    let mut group = c.benchmark_group("handshake");
    group.bench_function("both_sides", |bench| {
        bench.iter(|| black_box(handshake(&a, &b)))
    });
    // What a listener spends on an unauthenticated HelloRequest before the dialler must prove
    // anything: the cost a flood of handshakes imposes.
    group.bench_function("responder_first_flight", |bench| {
        bench.iter_batched(
            || {
                let mut i = Handshake::initiator(a.clone(), None).expect("initiator");
                let mut request = Vec::new();
                i.poll_transmit(&mut request);
                request
            },
            |request| {
                let mut r = Handshake::responder(b.clone());
                r.handle_input(&request).expect("request");
                let mut response = Vec::new();
                r.poll_transmit(&mut response);
                black_box(response)
            },
            BatchSize::SmallInput,
        )
    });
    group.finish();
}

fn channel(suite: Suite) -> (RecordSealer, RecordOpener) {
    let (a, b) = configs(suite);
    let (x, y) = handshake(&a, &b);
    (x.into_channel().0, y.into_channel().1)
}

fn suite_name(suite: Suite) -> &'static str {
    match suite {
        Suite::ChaCha20Poly1305 => "chacha20poly1305",
        Suite::Aes256Gcm => "aes256gcm",
        _ => "other",
    }
}

fn bench_records(c: &mut Criterion) {
    for suite in Suite::ALL {
        let mut group = c.benchmark_group(format!("record_{}", suite_name(suite)));
        for size in SIZES {
            group.throughput(Throughput::Bytes(size as u64));
            let (mut sealer, _) = channel(suite);
            let mut buf = vec![7u8; HEADER_LEN + size + TAG_LEN];
            group.bench_function(format!("seal/{size}"), |bench| {
                bench.iter(|| {
                    black_box(
                        sealer
                            .seal_in_place(black_box(&mut buf), size)
                            .expect("seal"),
                    )
                })
            });
            group.bench_function(format!("open/{size}"), |bench| {
                bench.iter_custom(|iters| time_opens(suite, size, iters))
            });
        }
        group.finish();
    }
}

/// Opens `iters` records of `size` bytes, timing only the opens: records must be opened in the
/// order they were sealed, so they are sealed (untimed) in chunks just before.
fn time_opens(suite: Suite, size: usize, iters: u64) -> Duration {
    const CHUNK: u64 = 256;
    let (mut sealer, mut opener) = channel(suite);
    let mut records: Vec<Vec<u8>> = (0..CHUNK.min(iters))
        .map(|_| vec![7u8; HEADER_LEN + size + TAG_LEN])
        .collect();
    let mut total = Duration::ZERO;
    let mut left = iters;
    while left > 0 {
        let n = CHUNK.min(left) as usize;
        for record in &mut records[..n] {
            sealer.seal_in_place(record, size).expect("seal");
        }
        let start = Instant::now();
        for record in &mut records[..n] {
            black_box(opener.open_in_place(record).expect("open"));
        }
        total += start.elapsed();
        left -= n as u64;
    }
    total
}

criterion_group! {
    name = benches;
    config = Criterion::default()
        .warm_up_time(Duration::from_millis(500))
        .measurement_time(Duration::from_secs(2));
    targets = bench_handshake, bench_records
}
criterion_main!(benches);
