//! Messages per second through one connection's transport core: sender to receiver in memory,
//! no sockets. `cargo bench -p glueberry-transport --bench connection`.
#![allow(missing_docs, clippy::expect_used)] // a benchmark that fails should stop loudly

use std::hint::black_box;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use glueberry_crypto::Suite;
use glueberry_transport::testing::{Cipher, connected_pair};
use glueberry_transport::{Connection, ConnectionConfig, Event};

/// Messages queued per round: what a busy application hands over between two loop turns.
const BATCH: usize = 4096;

struct Bench {
    a: Connection,
    b: Connection,
    buf: Vec<u8>,
    message: Bytes,
    now: Instant,
}

impl Bench {
    fn new(size: usize, cipher: Cipher, batching: bool) -> Self {
        let config = Arc::new(ConnectionConfig {
            high_watermark: BATCH * 2,
            low_watermark: BATCH,
            initial_window: 16 * 1024 * 1024,
            connection_window: 32 * 1024 * 1024,
            batching,
            ..Default::default()
        });
        let (mut a, mut b) = connected_pair(config, cipher).expect("pair");
        a.complete_handshake(&["bench"]).expect("a");
        b.complete_handshake(&["bench"]).expect("b");
        let mut this = Self {
            a,
            b,
            buf: vec![0u8; 1 << 20],
            message: Bytes::from(vec![0x5a; size]),
            now: Instant::now(),
        };
        this.round(0);
        this
    }

    /// Sends `n` messages and moves everything across, credits included. Returns how many
    /// messages arrived.
    fn round(&mut self, n: usize) -> usize {
        let stream = self.a.stream_id("bench").expect("stream");
        for _ in 0..n {
            self.a.send(stream, self.message.clone()).expect("send");
        }
        let mut received = 0;
        loop {
            let sent = self.a.poll_transmit(&mut self.buf);
            self.b.handle_input(self.now, &self.buf[..sent]);
            while let Some(event) = self.b.poll_event() {
                if let Event::Message { stream, data } = event {
                    received += 1;
                    self.b.release(stream, black_box(data).len());
                }
            }
            let back = self.b.poll_transmit(&mut self.buf);
            self.a.handle_input(self.now, &self.buf[..back]);
            while self.a.poll_event().is_some() {}
            if sent == 0 && back == 0 {
                return received;
            }
        }
    }
}

fn bench_messages(c: &mut Criterion) {
    let mut group = c.benchmark_group("connection");
    group.throughput(Throughput::Elements(BATCH as u64));
    let ciphers = [
        ("null", Cipher::DangerNull),
        ("chacha20poly1305", Cipher::Real(Suite::ChaCha20Poly1305)),
        ("aes256gcm", Cipher::Real(Suite::Aes256Gcm)),
    ];
    for size in [64usize, 1024] {
        for (name, cipher) in ciphers {
            let mut bench = Bench::new(size, cipher, true);
            group.bench_function(format!("{name}/{size}B"), |b| {
                b.iter(|| assert_eq!(bench.round(BATCH), BATCH))
            });
        }
        // What batching buys: one message per record.
        let mut bench = Bench::new(size, Cipher::Real(Suite::ChaCha20Poly1305), false);
        group.bench_function(format!("chacha20poly1305_unbatched/{size}B"), |b| {
            b.iter(|| assert_eq!(bench.round(BATCH), BATCH))
        });
    }
    group.finish();
}

criterion_group! {
    name = benches;
    config = Criterion::default()
        .warm_up_time(Duration::from_millis(500))
        .measurement_time(Duration::from_secs(2));
    targets = bench_messages
}
criterion_main!(benches);
