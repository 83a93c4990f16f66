//! `glueberry-perf`: Glueberry's throughput, latency, handshake rate and connection cost, measured
//! side by side with the stacks a user would otherwise pick, in one run on one machine.
//!
//! ```text
//! glueberry-perf local   [OPTIONS] [--scenario NAME] [--json]    both ends on loopback, vs plain TCP
//! glueberry-perf server  --listen ADDR [OPTIONS] [--seconds N]   one end, for two machines
//! glueberry-perf client  --connect ADDR --peer ID [OPTIONS] [--scenario bulk|small|latency] [--json]
//! glueberry-perf compare [--seconds N] [--trials N] [--scenario NAME] [--out FILE.md] [--save FILE.json]
//! glueberry-perf regress [--baseline FILE.json] [--seconds N] [--trials N]
//! glueberry-perf soak    [--seconds N] [--seed N]    faults, churn and invariants over time
//! glueberry-perf members [--members N] [--replace N]  peer sets: mesh times, refused strangers' cost
//!
//! OPTIONS (local, server, client; `glueberry-perf help COMMAND` describes each):
//!          --seconds N | --bytes N, --size N, --peers N, --streams N, --shards N, --window BYTES,
//!          --busy-poll MICROS, --backend auto|io_uring|poll,
//!          --cipher chacha|aes, --no-batching, --danger-null-cipher, --metrics
//! scenarios: bulk, bulk-streams, bulk-peers, small, latency, latency-under-load, handshake, scale,
//!            shard-scaling (--peers N; --danger-null-cipher to measure the engine alone),
//!            all
//! ```
//!
//! `compare` runs every scenario against every peer — plain TCP (tokio), tokio + rustls with
//! ChaCha20-Poly1305 and with AES-256-GCM, rust-libp2p (noise + yamux) and iperf3 where
//! installed — and prints a Markdown table of figures and ratios. The rustls and libp2p peers
//! need the `compare` feature. `regress` reruns it and flags any ratio more than 10 % below the
//! stored baseline. With `--json`, one line per second and a final line per measurement in the
//! libp2p perf runner's convention (`{"type":"intermediary"|"final","timeSeconds":…,
//! "uploadBytes":…,"downloadBytes":…}`) plus the scenario's own figures.
//!
//! `--danger-null-cipher` runs Glueberry's records without encryption, for profiling only: it is
//! a local setting of both ends, never negotiated on the wire.

mod args;
mod compare;
mod figures;
mod glueberry_peer;
#[cfg(feature = "compare")]
mod libp2p_peer;
mod members;
mod remote;
mod soak;
mod streams;
#[cfg(feature = "compare")]
mod tls;

use std::net::SocketAddr;
use std::process::ExitCode;

use args::{Command, Options};
use figures::{Figures, Length};
use glueberry_peer::Setup;

/// The record cipher of an encrypted peer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Cipher {
    ChaCha,
    Aes,
    /// Glueberry only, profiling only: no encryption.
    DangerNull,
}

/// What is measured.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Scenario {
    /// Large messages, one stream (or `--streams`, `--peers`).
    Bulk,
    BulkStreams,
    BulkPeers,
    /// Small messages of one size.
    Small(usize),
    Latency,
    /// Request/response on a high-priority stream beside a bulk transfer on a low one.
    LatencyUnderLoad,
    Handshake,
    Scale,
    /// Many peers into one node at 1 and at 2 shards: how the engine scales with cores.
    ShardScaling,
    /// Request/response and 64 B rate of one busy peer beside 0 to 1,000 idle ones.
    IdlePeers,
}

impl Scenario {
    pub(crate) fn name(self) -> String {
        match self {
            Scenario::Bulk => "bulk (64 KiB messages, one stream)".into(),
            Scenario::BulkStreams => "bulk, several streams on one connection".into(),
            Scenario::BulkPeers => "bulk, several peers into one node".into(),
            Scenario::Small(size) => format!("small messages ({size} B)"),
            Scenario::Latency => "request/response latency (64 B)".into(),
            Scenario::LatencyUnderLoad => {
                "request/response (64 B, priority 7) beside a bulk transfer (priority 0)".into()
            }
            Scenario::Handshake => "connections per second (each a full handshake)".into(),
            Scenario::Scale => "idle connections (memory each, time to connect all)".into(),
            Scenario::ShardScaling => "8 peers into one node, 64 B messages: 2 shards ÷ 1".into(),
            Scenario::IdlePeers => "one busy peer beside idle ones (latency, 64 B rate)".into(),
        }
    }

    pub(crate) fn id(self) -> String {
        match self {
            Scenario::Bulk => "bulk".into(),
            Scenario::BulkStreams => "bulk-streams".into(),
            Scenario::BulkPeers => "bulk-peers".into(),
            Scenario::Small(size) => format!("small-{size}"),
            Scenario::Latency => "latency".into(),
            Scenario::LatencyUnderLoad => "latency-under-load".into(),
            Scenario::Handshake => "handshake".into(),
            Scenario::Scale => "scale".into(),
            Scenario::ShardScaling => "shard-scaling".into(),
            Scenario::IdlePeers => "idle-peers".into(),
        }
    }
}

fn main() -> ExitCode {
    let options = args::from_env();
    let result = match &options.command {
        Command::Local => local(&options),
        Command::Server { listen } => remote::server(
            &options.setup,
            *listen,
            options
                .seconds_given
                .then(|| options.length.time().as_secs_f64()),
            &|addr, id| {
                println!(
                    "glueberry-perf server listening on {addr} as {id}\nrun: glueberry-perf client --connect {addr} --peer {id}"
                )
            },
        ),
        Command::Client { connect, peer } => client(&options, *connect, peer),
        Command::Compare { out, save, trials } => compare::compare(
            options.length.time(),
            *trials,
            options.only.as_deref(),
            out.as_deref(),
            save.as_deref(),
        )
        .map(|_| ()),
        Command::Regress { baseline, trials } => {
            compare::regress(baseline, options.length.time(), *trials)
        }
        Command::Soak { seed } => soak::soak(options.length.time(), *seed),
        Command::ScaleClients {
            connect,
            peer,
            count,
        } => glueberry_peer::scale_clients(*connect, peer, *count),
        Command::Members {
            members,
            replace,
            dials,
            rounds,
        } => members::mesh(*members, *replace).and_then(|()| members::strangers(*dials, *rounds)),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("glueberry-perf: {e}");
            ExitCode::FAILURE
        }
    }
}

/// Prints a progress line (or a JSON line) each second.
fn progress<'a>(json: bool, scenario: &'a str, peer: &'a str) -> impl Fn(u64, u64) + 'a {
    move |second, bytes| {
        if json {
            println!(
                "{{\"type\":\"intermediary\",\"scenario\":\"{scenario}\",\"peer\":\"{peer}\",\"timeSeconds\":{second},\"uploadBytes\":{bytes},\"downloadBytes\":0}}"
            );
        } else {
            eprint!(
                "\r  {second} s: {:.2} GB/s   ",
                bytes as f64 / 1e9 / second as f64
            );
        }
    }
}

/// One Glueberry scenario with `setup`.
pub(crate) fn run_glueberry(
    scenario: Scenario,
    setup: &Setup,
    length: Length,
    count: Option<usize>,
    report: figures::Progress<'_>,
) -> Result<Figures, String> {
    let bulk = 64 * 1024;
    match scenario {
        Scenario::Bulk => glueberry_peer::throughput(setup, bulk, length, report),
        Scenario::BulkStreams => {
            let streams = count.unwrap_or(4).min(remote::MAX_STREAMS);
            let setup = Setup {
                streams,
                ..setup.clone()
            };
            glueberry_peer::throughput(&setup, bulk, length, report)
        }
        Scenario::BulkPeers => {
            let setup = Setup {
                peers: count.unwrap_or(4),
                ..setup.clone()
            };
            glueberry_peer::throughput(&setup, bulk, length, report)
        }
        Scenario::Small(size) => glueberry_peer::throughput(setup, size, length, report),
        Scenario::Latency => glueberry_peer::latency(setup, 64, length.time()),
        Scenario::LatencyUnderLoad => glueberry_peer::latency_under_load(setup, length.time()),
        Scenario::Handshake => glueberry_peer::handshakes(setup, length.time()),
        Scenario::Scale => glueberry_peer::scale(setup, count.unwrap_or(1000)),
        Scenario::IdlePeers => {
            let most = count.unwrap_or(1000);
            let counts = [0, most / 10, most * 2 / 5, most];
            glueberry_peer::idle_peers(setup, &counts, 3, length)
        }
        Scenario::ShardScaling => {
            let at = |shards| {
                let setup = Setup {
                    peers: count.unwrap_or(8),
                    shards,
                    ..setup.clone()
                };
                glueberry_peer::throughput(&setup, 64, length, report)
            };
            let one = at(1)?;
            let two = at(2)?;
            eprintln!(
                "\n  1 shard: {:.2} M msg/s; 2 shards: {:.2} M msg/s",
                one.messages_per_sec / 1e6,
                two.messages_per_sec / 1e6
            );
            Ok(figures::Figures {
                // The ratio, as a score: the table's cell shows it.
                p50_us: two.messages_per_sec / one.messages_per_sec.max(1.0),
                ..two
            })
        }
    }
}

/// One byte-stream peer on a scenario; `None` where the scenario does not apply to it.
pub(crate) fn run_stream(
    scenario: Scenario,
    stack: streams::Stack,
    framing: streams::Framing,
    length: Length,
    report: figures::Progress<'_>,
) -> Option<Result<Figures, String>> {
    let once = framing == streams::Framing::Buffered;
    Some(match scenario {
        Scenario::Bulk => streams::throughput(stack, framing, 64 * 1024, length, report),
        Scenario::Small(size) => streams::throughput(stack, framing, size, length, report),
        // Latency and handshakes are the same whatever the framing: measured once.
        Scenario::Latency | Scenario::Handshake if !once => return None,
        Scenario::Latency => streams::latency(stack, 64, length.time()),
        Scenario::Handshake => streams::handshakes(stack, length.time()),
        Scenario::BulkStreams
        | Scenario::BulkPeers
        | Scenario::Scale
        | Scenario::LatencyUnderLoad
        | Scenario::ShardScaling
        | Scenario::IdlePeers => return None,
    })
}

fn local(options: &Options) -> Result<(), String> {
    let mut rows = Vec::new();
    for &scenario in &options.scenarios {
        let id = scenario.id();
        if !options.json {
            eprintln!("{} …", scenario.name());
        }
        let tcp = {
            let report = progress(options.json, &id, "tcp");
            run_stream(
                scenario,
                streams::Stack::Tcp,
                streams::Framing::Buffered,
                options.length,
                &report,
            )
            .transpose()?
        };
        let gb = {
            let report = progress(options.json, &id, "glueberry");
            run_glueberry(
                scenario,
                &options.setup,
                options.length,
                options.count,
                &report,
            )?
        };
        if !options.json {
            eprintln!();
        } else {
            if let Some(tcp) = &tcp {
                println!("{}", tcp.final_json(&id, "tcp"));
            }
            println!("{}", gb.final_json(&id, "glueberry"));
        }
        rows.push((scenario, tcp, gb));
    }
    if !options.json {
        println!();
        println!("| scenario | plain TCP (tokio) | glueberry | glueberry ÷ plain TCP |");
        println!("|---|---|---|---|");
        for (scenario, tcp, gb) in &rows {
            let tcp_cell = tcp
                .as_ref()
                .map_or("—".into(), |t| compare::cell(*scenario, t));
            let ratio = tcp
                .as_ref()
                .map_or("—".into(), |t| compare::ratio_cell(*scenario, gb, t));
            println!(
                "| {} | {tcp_cell} | {} | {ratio} |",
                scenario.name(),
                compare::cell(*scenario, gb)
            );
        }
    }
    Ok(())
}

fn client(options: &Options, connect: SocketAddr, peer: &str) -> Result<(), String> {
    let peer: glueberry::crypto::PeerId = peer.parse().map_err(|e| format!("--peer: {e}"))?;
    for &scenario in &options.scenarios {
        let id = scenario.id();
        let report = progress(options.json, &id, "glueberry");
        let figures = match scenario {
            Scenario::Bulk => remote::client_throughput(
                &options.setup,
                connect,
                peer,
                64 * 1024,
                options.length,
                &report,
            )?,
            Scenario::Small(size) => remote::client_throughput(
                &options.setup,
                connect,
                peer,
                size,
                options.length,
                &report,
            )?,
            Scenario::Latency => {
                remote::client_latency(&options.setup, connect, peer, 64, options.length.time())?
            }
            _ => continue,
        };
        if options.json {
            println!("{}", figures.final_json(&id, "glueberry"));
        } else {
            eprintln!();
            println!("{}: {}", scenario.name(), compare::cell(scenario, &figures));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests;
