//! `fault-proxy`: the fault-injecting TCP proxy from the command line.
//!
//! ```text
//! fault-proxy --listen 127.0.0.1:7000 --upstream 127.0.0.1:26656 [--latency MS] [--jitter MS]
//!             [--bandwidth BYTES_PER_S] [--corrupt-every BYTES] [--truncate-after BYTES]
//!             [--cut-every MS] [--seed N] [--seconds N]
//! ```
//!
//! The faults apply to both directions. `--cut-every` closes every open connection on that
//! period. Runs until `--seconds` pass (forever without), printing its counters each second.

use std::net::SocketAddr;
use std::process::ExitCode;
use std::time::{Duration, Instant};

use clap::Parser;
use glueberry_bench_harness::proxy::{Direction, FaultProxy, Faults};

/// The fault-injecting TCP proxy: faults apply to both directions; prints its counters.
#[derive(Debug, Parser)]
#[command(name = "fault-proxy", version)]
struct Args {
    /// The address to accept on.
    #[arg(long, value_name = "ADDR")]
    listen: SocketAddr,
    /// Where to forward each connection.
    #[arg(long, value_name = "ADDR")]
    upstream: SocketAddr,
    /// Added to every chunk, in milliseconds.
    #[arg(long, value_name = "MS", default_value_t = 0)]
    latency: u64,
    /// Up to this much more, uniformly at random (seeded), in milliseconds.
    #[arg(long, value_name = "MS", default_value_t = 0)]
    jitter: u64,
    /// Bytes per second each way.
    #[arg(long, value_name = "BYTES_PER_S")]
    bandwidth: Option<u64>,
    /// Flips one byte in every this many bytes (at a seeded position).
    #[arg(long, value_name = "BYTES")]
    corrupt_every: Option<u64>,
    /// Closes a connection after this many bytes in a direction.
    #[arg(long, value_name = "BYTES")]
    truncate_after: Option<u64>,
    /// Closes every open connection on this period, in milliseconds.
    #[arg(long, value_name = "MS")]
    cut_every: Option<u64>,
    /// The seed of the faults' random choices.
    #[arg(long, value_name = "N", default_value_t = 1)]
    seed: u64,
    /// Stops after this many seconds (runs until killed without).
    #[arg(long, value_name = "N")]
    seconds: Option<u64>,
}

fn main() -> ExitCode {
    match run(Args::parse()) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("fault-proxy: {e}");
            ExitCode::FAILURE
        }
    }
}

fn run(args: Args) -> Result<(), String> {
    let faults = Faults {
        latency: Duration::from_millis(args.latency),
        jitter: Duration::from_millis(args.jitter),
        bandwidth: args.bandwidth,
        corrupt_every: args.corrupt_every,
        truncate_after: args.truncate_after,
        ..Faults::default()
    };
    let (listen, upstream, seed) = (args.listen, args.upstream, args.seed);
    let seconds = args.seconds.map(Duration::from_secs);
    let cut_every = args.cut_every.map(Duration::from_millis);
    let proxy = FaultProxy::start(listen, upstream, seed).map_err(|e| e.to_string())?;
    proxy.set(Direction::Up, faults.clone());
    proxy.set(Direction::Down, faults);
    println!("fault-proxy {} -> {upstream}", proxy.addr());
    let (start, mut last_cut) = (Instant::now(), Instant::now());
    while seconds.is_none_or(|s| start.elapsed() < s) {
        std::thread::sleep(Duration::from_millis(100));
        if let Some(every) = cut_every
            && last_cut.elapsed() >= every
        {
            proxy.cut_all();
            last_cut = Instant::now();
        }
        let c = proxy.counters();
        use std::sync::atomic::Ordering::Relaxed;
        eprint!(
            "\r{:>6.1} s  connections {}  bytes {}  corrupted {}  cut {}   ",
            start.elapsed().as_secs_f64(),
            c.connections.load(Relaxed),
            c.bytes.load(Relaxed),
            c.corrupted.load(Relaxed),
            c.cut.load(Relaxed)
        );
    }
    eprintln!();
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::CommandFactory;

    #[test]
    fn the_command_line_is_consistent_and_refuses_nonsense() {
        Args::command().debug_assert();
        let parse = |s: &str| Args::try_parse_from(s.split_whitespace());
        let args = parse("fault-proxy --listen 127.0.0.1:7000 --upstream 127.0.0.1:26656 --latency 20 --cut-every 500")
            .expect("parse");
        assert_eq!(
            (args.latency, args.cut_every, args.seed),
            (20, Some(500), 1)
        );
        assert!(parse("fault-proxy --listen 127.0.0.1:7000").is_err());
        assert!(parse("fault-proxy --listen x --upstream 127.0.0.1:1").is_err());
        assert!(
            parse("fault-proxy --listen 127.0.0.1:7000 --upstream 127.0.0.1:1 --latency -5")
                .is_err()
        );
    }
}
