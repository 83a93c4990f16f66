//! What a measurement found, and the clocks every peer is measured with.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

/// One peer's figures for one scenario.
#[derive(Debug, Clone, Default)]
pub(crate) struct Figures {
    pub seconds: f64,
    pub bytes: u64,
    pub messages: u64,
    pub bytes_per_sec: f64,
    pub messages_per_sec: f64,
    pub p50_us: f64,
    pub p90_us: f64,
    pub p99_us: f64,
    pub max_us: f64,
    /// Connection scale only: resident memory added per idle connection, in bytes.
    pub bytes_per_connection: f64,
}

impl Figures {
    /// The final line, in the libp2p perf runner's convention plus the scenario's own figures.
    pub(crate) fn final_json(&self, scenario: &str, peer: &str) -> String {
        serde_json::json!({
            "type": "final",
            "scenario": scenario,
            "peer": peer,
            "timeSeconds": self.seconds,
            "uploadBytes": self.bytes,
            "downloadBytes": 0,
            "messages": self.messages,
            "messagesPerSecond": self.messages_per_sec,
            "bytesPerSecond": self.bytes_per_sec,
            "latencyMicros": { "p50": self.p50_us, "p90": self.p90_us, "p99": self.p99_us, "max": self.max_us },
            "bytesPerConnection": self.bytes_per_connection,
        })
        .to_string()
    }
}

/// How long a throughput run lasts: a time, or until a number of bytes was received.
#[derive(Debug, Clone, Copy, PartialEq)]
pub(crate) enum Length {
    Time(Duration),
    Bytes(u64),
}

impl Length {
    /// The time bound: a byte-count run still stops after a minute.
    pub(crate) fn time(self) -> Duration {
        match self {
            Length::Time(d) => d,
            Length::Bytes(_) => Duration::from_secs(60),
        }
    }
}

/// Called once a second with (second, bytes received so far).
pub(crate) type Progress<'a> = &'a dyn Fn(u64, u64);

/// Counts received messages after a short warm-up until `length` is reached, reporting each
/// second.
pub(crate) fn measure(
    received: &AtomicU64,
    size: usize,
    length: Length,
    report: Progress<'_>,
) -> Figures {
    let duration = length.time();
    std::thread::sleep(Duration::from_millis(200).min(duration));
    let (first, start) = (received.load(Ordering::Relaxed), Instant::now());
    let bytes = |count: u64| count * size as u64;
    let mut second = 1;
    loop {
        let now = start.elapsed();
        let count = received.load(Ordering::Relaxed) - first;
        let done = match length {
            Length::Time(d) => now >= d,
            Length::Bytes(b) => bytes(count) >= b || now >= duration,
        };
        if done {
            break;
        }
        if now >= Duration::from_secs(second) {
            report(second, bytes(count));
            second += 1;
        }
        std::thread::sleep(Duration::from_millis(5));
    }
    let count = received.load(Ordering::Relaxed) - first;
    let seconds = start.elapsed().as_secs_f64();
    Figures {
        seconds,
        bytes: bytes(count),
        messages: count,
        bytes_per_sec: bytes(count) as f64 / seconds,
        messages_per_sec: count as f64 / seconds,
        ..Default::default()
    }
}

/// Round-trip times as they are measured, in a histogram (3 significant digits, 1 ns to
/// 100 s): constant memory however long a run, percentiles without sorting every sample.
pub(crate) struct Latencies(hdrhistogram::Histogram<u64>);

impl Latencies {
    pub(crate) fn new() -> Self {
        // Bounds and precision are constants within what the crate accepts.
        let histogram = hdrhistogram::Histogram::new_with_bounds(1, 100_000_000_000, 3)
            .unwrap_or_else(|_| unreachable!("valid histogram bounds"));
        Self(histogram)
    }

    /// One round trip (clamped into the histogram's range).
    pub(crate) fn record(&mut self, rtt: Duration) {
        self.0
            .saturating_record(rtt.as_nanos().min(u128::from(u64::MAX)) as u64);
    }

    /// How many were recorded.
    pub(crate) fn len(&self) -> u64 {
        self.0.len()
    }

    fn quantile_us(&self, q: f64) -> f64 {
        if self.0.is_empty() {
            return 0.0;
        }
        self.0.value_at_quantile(q) as f64 / 1e3
    }
}

/// Latency percentiles of request/response round trips of `size` bytes.
pub(crate) fn percentiles(samples: &Latencies, size: usize, seconds: f64) -> Figures {
    let count = samples.len();
    Figures {
        seconds,
        bytes: count * size as u64,
        messages: count,
        messages_per_sec: count as f64 / seconds,
        bytes_per_sec: (count * size as u64) as f64 / seconds,
        p50_us: samples.quantile_us(0.5),
        p90_us: samples.quantile_us(0.9),
        p99_us: samples.quantile_us(0.99),
        max_us: if samples.0.is_empty() {
            0.0
        } else {
            samples.0.max() as f64 / 1e3
        },
        ..Default::default()
    }
}

/// `count` events since `start`, as a rate.
pub(crate) fn rate(count: u64, start: Instant) -> Figures {
    let seconds = start.elapsed().as_secs_f64();
    Figures {
        seconds,
        messages: count,
        messages_per_sec: count as f64 / seconds,
        ..Default::default()
    }
}

/// This process's resident memory in bytes (from /proc/self/statm).
pub(crate) fn resident_bytes() -> u64 {
    let statm = std::fs::read_to_string("/proc/self/statm").unwrap_or_default();
    let pages: u64 = statm
        .split_whitespace()
        .nth(1)
        .and_then(|p| p.parse().ok())
        .unwrap_or(0);
    pages * 4096
}
