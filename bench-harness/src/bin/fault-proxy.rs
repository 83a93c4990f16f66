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

use std::process::ExitCode;
use std::time::{Duration, Instant};

use glueberry_bench_harness::proxy::{Direction, FaultProxy, Faults};

fn main() -> ExitCode {
    match run(std::env::args().skip(1).collect()) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("fault-proxy: {e}");
            ExitCode::FAILURE
        }
    }
}

fn run(args: Vec<String>) -> Result<(), String> {
    let (mut listen, mut upstream, mut seed, mut seconds, mut cut_every) =
        (None, None, 1u64, None, None);
    let mut faults = Faults::default();
    let mut it = args.iter();
    let num = |v: Option<&String>, flag: &str| -> Result<u64, String> {
        v.and_then(|s| s.parse().ok())
            .ok_or(format!("{flag} needs a number"))
    };
    while let Some(arg) = it.next() {
        match arg.as_str() {
            "--listen" => {
                listen = it
                    .next()
                    .map(|s| s.parse().map_err(|e| format!("--listen: {e}")))
                    .transpose()?
            }
            "--upstream" => {
                upstream = it
                    .next()
                    .map(|s| s.parse().map_err(|e| format!("--upstream: {e}")))
                    .transpose()?
            }
            "--latency" => faults.latency = Duration::from_millis(num(it.next(), arg)?),
            "--jitter" => faults.jitter = Duration::from_millis(num(it.next(), arg)?),
            "--bandwidth" => faults.bandwidth = Some(num(it.next(), arg)?),
            "--corrupt-every" => faults.corrupt_every = Some(num(it.next(), arg)?),
            "--truncate-after" => faults.truncate_after = Some(num(it.next(), arg)?),
            "--cut-every" => cut_every = Some(Duration::from_millis(num(it.next(), arg)?)),
            "--seed" => seed = num(it.next(), arg)?,
            "--seconds" => seconds = Some(Duration::from_secs(num(it.next(), arg)?)),
            "--help" | "-h" => {
                println!(
                    "fault-proxy --listen ADDR --upstream ADDR [--latency MS] [--jitter MS] [--bandwidth B/S] [--corrupt-every N] [--truncate-after N] [--cut-every MS] [--seed N] [--seconds N]"
                );
                return Ok(());
            }
            other => return Err(format!("unknown option {other:?} (see --help)")),
        }
    }
    let listen = listen.ok_or("--listen ADDR is required")?;
    let upstream = upstream.ok_or("--upstream ADDR is required")?;
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
