//! A fault-injecting TCP proxy: sits between two nodes on loopback and, per direction, adds
//! latency and jitter, limits bandwidth, stalls (blackholes) traffic, corrupts bytes, truncates
//! after a byte count, or cuts every connection — set at run time, or at random from a seed.
//!
//! Faults are injected in user space (the kernel's `netem` is not available on these machines).
//! Each proxied connection has one thread per direction; a chunk read from one side is delayed,
//! throttled, corrupted or withheld before it is written to the other.

use std::io::{self, Read, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

/// Which way bytes flow: from the dialler to the upstream, or back.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Direction {
    /// Dialler → upstream.
    Up,
    /// Upstream → dialler.
    Down,
}

/// The faults applied to one direction.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Faults {
    /// Added to every chunk.
    pub latency: Duration,
    /// Up to this much more, uniformly at random (seeded).
    pub jitter: Duration,
    /// Bytes per second, if limited.
    pub bandwidth: Option<u64>,
    /// Withhold everything (the sender's socket buffers fill; nothing arrives): a partition.
    pub blackhole: bool,
    /// Flip one byte in every this many bytes (at a seeded position).
    pub corrupt_every: Option<u64>,
    /// Close the connection after this many bytes in this direction (a truncated stream).
    pub truncate_after: Option<u64>,
}

/// What the proxy did, for reports.
#[derive(Debug, Default)]
pub struct Counters {
    /// Connections accepted.
    pub connections: AtomicU64,
    /// Bytes forwarded.
    pub bytes: AtomicU64,
    /// Bytes corrupted.
    pub corrupted: AtomicU64,
    /// Connections cut (by `cut_all`, truncation or an error).
    pub cut: AtomicU64,
}

struct Shared {
    upstream: SocketAddr,
    faults: Mutex<[Faults; 2]>,
    /// Bumped by `cut_all`: connections from an older generation close.
    generation: AtomicU64,
    /// Refuse new connections (accept and close at once).
    refuse: AtomicBool,
    stop: AtomicBool,
    seed: AtomicU64,
    counters: Counters,
}

/// A running proxy.
pub struct FaultProxy {
    addr: SocketAddr,
    shared: Arc<Shared>,
    acceptor: Option<JoinHandle<()>>,
}

/// xorshift64*: small, seeded, good enough to place faults.
fn next(seed: &AtomicU64) -> u64 {
    let mut x = seed.load(Ordering::Relaxed);
    x ^= x >> 12;
    x ^= x << 25;
    x ^= x >> 27;
    seed.store(x, Ordering::Relaxed);
    x.wrapping_mul(0x2545_f491_4f6c_dd1d)
}

impl FaultProxy {
    /// Listens on `listen` (port 0 picks one) and forwards to `upstream`; `seed` places the
    /// random faults (jitter, corrupted bytes).
    pub fn start(listen: SocketAddr, upstream: SocketAddr, seed: u64) -> io::Result<Self> {
        let listener = TcpListener::bind(listen)?;
        let addr = listener.local_addr()?;
        listener.set_nonblocking(true)?;
        let shared = Arc::new(Shared {
            upstream,
            faults: Mutex::new([Faults::default(), Faults::default()]),
            generation: AtomicU64::new(0),
            refuse: AtomicBool::new(false),
            stop: AtomicBool::new(false),
            seed: AtomicU64::new(seed.max(1)),
            counters: Counters::default(),
        });
        let acceptor = {
            let shared = shared.clone();
            std::thread::Builder::new()
                .name("fault-proxy".into())
                .spawn(move || accept_loop(&listener, &shared))?
        };
        Ok(Self {
            addr,
            shared,
            acceptor: Some(acceptor),
        })
    }

    /// Where to connect to reach the upstream through the proxy.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Sets the faults of one direction (for new and existing connections).
    pub fn set(&self, direction: Direction, faults: Faults) {
        if let Ok(mut all) = self.shared.faults.lock() {
            all[direction as usize] = faults;
        }
    }

    /// Clears every fault in both directions and accepts connections again.
    pub fn heal(&self) {
        self.set(Direction::Up, Faults::default());
        self.set(Direction::Down, Faults::default());
        self.shared.refuse.store(false, Ordering::Release);
    }

    /// A partition: withholds traffic both ways and refuses new connections until `heal`.
    pub fn partition(&self) {
        for direction in [Direction::Up, Direction::Down] {
            self.set(
                direction,
                Faults {
                    blackhole: true,
                    ..Faults::default()
                },
            );
        }
        self.shared.refuse.store(true, Ordering::Release);
    }

    /// Closes every connection now open (both sides see the connection reset or ended).
    pub fn cut_all(&self) {
        self.shared.generation.fetch_add(1, Ordering::AcqRel);
    }

    /// What the proxy did so far.
    pub fn counters(&self) -> &Counters {
        &self.shared.counters
    }
}

impl Drop for FaultProxy {
    fn drop(&mut self) {
        self.shared.stop.store(true, Ordering::Release);
        self.cut_all();
        if let Some(acceptor) = self.acceptor.take() {
            let _ = acceptor.join();
        }
    }
}

fn accept_loop(listener: &TcpListener, shared: &Arc<Shared>) {
    while !shared.stop.load(Ordering::Acquire) {
        match listener.accept() {
            Ok((client, _)) => {
                if shared.refuse.load(Ordering::Acquire) {
                    drop(client);
                    continue;
                }
                let Ok(server) = TcpStream::connect(shared.upstream) else {
                    continue;
                };
                shared.counters.connections.fetch_add(1, Ordering::Relaxed);
                let _ = client.set_nodelay(true);
                let _ = server.set_nodelay(true);
                let generation = shared.generation.load(Ordering::Acquire);
                for (direction, from, to) in [
                    (Direction::Up, client.try_clone(), server.try_clone()),
                    (Direction::Down, server.try_clone(), client.try_clone()),
                ] {
                    let (Ok(from), Ok(to)) = (from, to) else {
                        continue;
                    };
                    let shared = shared.clone();
                    let _ = std::thread::Builder::new()
                        .name("fault-proxy-pump".into())
                        .spawn(move || pump(direction, from, to, generation, &shared));
                }
            }
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                std::thread::sleep(Duration::from_millis(2));
            }
            Err(_) => std::thread::sleep(Duration::from_millis(2)),
        }
    }
}

/// Forwards one direction until either side ends, the connection's generation is cut, or a
/// truncation point is reached.
fn pump(
    direction: Direction,
    mut from: TcpStream,
    mut to: TcpStream,
    generation: u64,
    shared: &Shared,
) {
    let _ = from.set_read_timeout(Some(Duration::from_millis(20)));
    let mut buf = vec![0u8; 16 * 1024];
    let (mut moved, mut until_corrupt) = (0u64, None::<u64>);
    let cut = |from: &TcpStream, to: &TcpStream| {
        let _ = from.shutdown(Shutdown::Both);
        let _ = to.shutdown(Shutdown::Both);
        shared.counters.cut.fetch_add(1, Ordering::Relaxed);
    };
    loop {
        if shared.generation.load(Ordering::Acquire) != generation {
            return cut(&from, &to);
        }
        let faults = match shared.faults.lock() {
            Ok(all) => all[direction as usize].clone(),
            Err(_) => return cut(&from, &to),
        };
        if faults.blackhole {
            // Read nothing: the sender's buffers fill and the receiver hears nothing.
            std::thread::sleep(Duration::from_millis(5));
            continue;
        }
        let n = match from.read(&mut buf) {
            Ok(0) => {
                let _ = to.shutdown(Shutdown::Write);
                return;
            }
            Ok(n) => n,
            Err(e)
                if matches!(
                    e.kind(),
                    io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut
                ) =>
            {
                continue;
            }
            Err(_) => return cut(&from, &to),
        };
        let chunk = &mut buf[..n];
        if let Some(limit) = faults.truncate_after
            && moved + n as u64 >= limit
        {
            let keep = limit.saturating_sub(moved) as usize;
            let _ = to.write_all(&chunk[..keep]);
            return cut(&from, &to);
        }
        if let Some(every) = faults.corrupt_every.filter(|e| *e > 0) {
            let mut at = 0usize;
            loop {
                let left = *until_corrupt.get_or_insert_with(|| next(&shared.seed) % every);
                if (left as usize) >= chunk.len() - at {
                    until_corrupt = Some(left - (chunk.len() - at) as u64);
                    break;
                }
                at += left as usize;
                chunk[at] ^= 0x5a;
                shared.counters.corrupted.fetch_add(1, Ordering::Relaxed);
                until_corrupt = None;
                at += 1;
                if at >= chunk.len() {
                    break;
                }
            }
        }
        let mut delay = faults.latency;
        if !faults.jitter.is_zero() {
            let nanos = faults.jitter.as_nanos().max(1) as u64;
            delay += Duration::from_nanos(next(&shared.seed) % nanos);
        }
        if let Some(rate) = faults.bandwidth.filter(|r| *r > 0) {
            delay += Duration::from_secs_f64(n as f64 / rate as f64);
        }
        if !delay.is_zero() {
            let until = Instant::now() + delay;
            while Instant::now() < until {
                if shared.generation.load(Ordering::Acquire) != generation {
                    return cut(&from, &to);
                }
                std::thread::sleep(Duration::from_millis(1).min(until - Instant::now()));
            }
        }
        if to.write_all(chunk).is_err() {
            return cut(&from, &to);
        }
        moved += n as u64;
        shared.counters.bytes.fetch_add(n as u64, Ordering::Relaxed);
    }
}
