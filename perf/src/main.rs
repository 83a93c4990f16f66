//! `glueberry-perf`: throughput and latency of Glueberry against plain TCP, measured side by
//! side in one run on this machine.
//!
//! ```text
//! glueberry-perf local [--seconds N] [--json] [--scenario bulk|small|latency|all]
//! ```
//!
//! `local` starts both ends itself on loopback. Each scenario runs Glueberry (two nodes, one
//! shard each on its own CPU, ChaCha20-Poly1305) and the plain-TCP baseline for the same time,
//! then prints a table of absolute figures and ratios. With `--json`, one line per second per
//! measurement and a final line per measurement in the libp2p perf runner's convention
//! (`{"type":"intermediary"|"final","timeSeconds":…,"uploadBytes":…,"downloadBytes":…}`) plus
//! the scenario's own figures. The server/client modes for two machines, the other comparison
//! peers (tokio, rustls, rust-libp2p) and the remaining scenarios are not written yet.

mod peers;

use std::process::ExitCode;
use std::time::Duration;

use peers::{Figures, Peer};

struct Options {
    seconds: f64,
    json: bool,
    scenarios: Vec<Scenario>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Scenario {
    Bulk,
    Small64,
    Small1K,
    Latency,
    Handshake,
}

impl Scenario {
    fn name(self) -> &'static str {
        match self {
            Scenario::Bulk => "bulk (64 KiB messages, one stream)",
            Scenario::Small64 => "small messages (64 B)",
            Scenario::Small1K => "small messages (1 KiB)",
            Scenario::Latency => "request/response latency (64 B)",
            Scenario::Handshake => "connections per second (each a full handshake)",
        }
    }

    fn id(self) -> &'static str {
        match self {
            Scenario::Bulk => "bulk",
            Scenario::Small64 => "small-64",
            Scenario::Small1K => "small-1024",
            Scenario::Latency => "latency",
            Scenario::Handshake => "handshake",
        }
    }
}

fn parse(args: &[String]) -> Result<Options, String> {
    let mut options = Options {
        seconds: 3.0,
        json: false,
        scenarios: vec![
            Scenario::Bulk,
            Scenario::Small64,
            Scenario::Small1K,
            Scenario::Latency,
            Scenario::Handshake,
        ],
    };
    let mut rest = args.iter();
    match rest.next().map(String::as_str) {
        Some("local") => {}
        Some(other) => {
            return Err(format!(
                "unknown command {other:?}: only `local` exists yet"
            ));
        }
        None => {
            return Err(
                "usage: glueberry-perf local [--seconds N] [--json] [--scenario NAME]".into(),
            );
        }
    }
    while let Some(arg) = rest.next() {
        match arg.as_str() {
            "--seconds" => {
                options.seconds = rest
                    .next()
                    .and_then(|s| s.parse().ok())
                    .filter(|s: &f64| *s > 0.0)
                    .ok_or("--seconds needs a positive number")?;
            }
            "--json" => options.json = true,
            "--scenario" => {
                let name = rest.next().ok_or("--scenario needs a name")?;
                options.scenarios = match name.as_str() {
                    "bulk" => vec![Scenario::Bulk],
                    "small" => vec![Scenario::Small64, Scenario::Small1K],
                    "latency" => vec![Scenario::Latency],
                    "handshake" => vec![Scenario::Handshake],
                    "all" => options.scenarios,
                    other => {
                        return Err(format!(
                            "unknown scenario {other:?} (bulk, small, latency, handshake, all)"
                        ));
                    }
                };
            }
            other => return Err(format!("unknown option {other:?}")),
        }
    }
    Ok(options)
}

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let options = match parse(&args) {
        Ok(o) => o,
        Err(e) => {
            eprintln!("{e}");
            return ExitCode::FAILURE;
        }
    };
    match run(&options) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("glueberry-perf: {e}");
            ExitCode::FAILURE
        }
    }
}

fn run(options: &Options) -> Result<(), String> {
    let duration = Duration::from_secs_f64(options.seconds);
    let mut rows = Vec::new();
    for &scenario in &options.scenarios {
        let mut results = Vec::new();
        for peer in [Peer::PlainTcp, Peer::Glueberry] {
            if !options.json {
                eprintln!("{} — {} …", scenario.name(), peer.name());
            }
            let report = |second: u64, upload: u64| {
                if options.json {
                    println!(
                        "{{\"type\":\"intermediary\",\"scenario\":\"{}\",\"peer\":\"{}\",\"timeSeconds\":{second},\"uploadBytes\":{upload},\"downloadBytes\":0}}",
                        scenario.id(),
                        peer.id()
                    );
                } else {
                    eprint!("\r  {second} s: {:.2} GB/s   ", upload as f64 / 1e9);
                }
            };
            let figures = match scenario {
                Scenario::Bulk => peers::throughput(peer, 64 * 1024, duration, &report)?,
                Scenario::Small64 => peers::throughput(peer, 64, duration, &report)?,
                Scenario::Small1K => peers::throughput(peer, 1024, duration, &report)?,
                Scenario::Latency => peers::latency(peer, duration)?,
                Scenario::Handshake => peers::handshakes(peer, duration)?,
            };
            if !options.json {
                eprintln!();
            }
            if options.json {
                println!("{}", figures.final_json(scenario.id(), peer.id()));
            }
            results.push(figures);
        }
        rows.push((scenario, results));
    }
    if !options.json {
        print_table(&rows);
    }
    Ok(())
}

fn print_table(rows: &[(Scenario, Vec<Figures>)]) {
    println!();
    println!("| scenario | plain TCP | glueberry | glueberry ÷ plain TCP |");
    println!("|---|---|---|---|");
    for (scenario, results) in rows {
        let [tcp, gb] = [&results[0], &results[1]];
        match scenario {
            Scenario::Latency => println!(
                "| {} | p50 {:.1} µs, p99 {:.1} µs | p50 {:.1} µs, p99 {:.1} µs | p50 ×{:.2} |",
                scenario.name(),
                tcp.p50_us,
                tcp.p99_us,
                gb.p50_us,
                gb.p99_us,
                gb.p50_us / tcp.p50_us.max(f64::MIN_POSITIVE),
            ),
            Scenario::Handshake => println!(
                "| {} | {:.0}/s (TCP connect + one round trip) | {:.0}/s | {:.3} |",
                scenario.name(),
                tcp.messages_per_sec,
                gb.messages_per_sec,
                gb.messages_per_sec / tcp.messages_per_sec.max(f64::MIN_POSITIVE),
            ),
            _ => println!(
                "| {} | {:.2} GB/s, {:.2} M msg/s | {:.2} GB/s, {:.2} M msg/s | {:.2} |",
                scenario.name(),
                tcp.bytes_per_sec / 1e9,
                tcp.messages_per_sec / 1e6,
                gb.bytes_per_sec / 1e9,
                gb.messages_per_sec / 1e6,
                gb.messages_per_sec / tcp.messages_per_sec.max(f64::MIN_POSITIVE),
            ),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args(s: &str) -> Vec<String> {
        s.split_whitespace().map(String::from).collect()
    }

    #[test]
    fn options_parse_and_nonsense_is_refused() {
        let o = parse(&args("local --seconds 0.5 --json --scenario small")).expect("parse");
        assert_eq!(o.seconds, 0.5);
        assert!(o.json);
        assert_eq!(o.scenarios, vec![Scenario::Small64, Scenario::Small1K]);
        assert!(parse(&args("local --seconds -1")).is_err());
        assert!(parse(&args("local --scenario nope")).is_err());
        assert!(parse(&args("server")).is_err());
        assert!(parse(&[]).is_err());
    }

    #[test]
    fn every_scenario_runs_briefly_and_reports_sane_json() {
        for scenario in [
            Scenario::Bulk,
            Scenario::Small64,
            Scenario::Latency,
            Scenario::Handshake,
        ] {
            for peer in [Peer::PlainTcp, Peer::Glueberry] {
                let figures = match scenario {
                    Scenario::Bulk => {
                        peers::throughput(peer, 64 * 1024, Duration::from_millis(300), &|_, _| {})
                    }
                    Scenario::Small64 => {
                        peers::throughput(peer, 64, Duration::from_millis(300), &|_, _| {})
                    }
                    Scenario::Handshake => peers::handshakes(peer, Duration::from_millis(300)),
                    _ => peers::latency(peer, Duration::from_millis(300)),
                }
                .expect("runs");
                let line = figures.final_json(scenario.id(), peer.id());
                let json: serde_json::Value = serde_json::from_str(&line).expect("json");
                assert_eq!(json["type"], "final");
                if scenario == Scenario::Latency {
                    assert!(
                        figures.p50_us > 0.0 && figures.p99_us >= figures.p50_us,
                        "{line}"
                    );
                } else if scenario == Scenario::Handshake {
                    assert!(
                        figures.messages > 0 && figures.messages_per_sec > 0.0,
                        "{line}"
                    );
                } else {
                    assert!(
                        json["uploadBytes"].as_u64().is_some_and(|b| b > 0),
                        "{line}"
                    );
                }
            }
        }
    }
}
