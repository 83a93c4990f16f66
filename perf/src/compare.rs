//! `compare`: every scenario against every peer in one run, as a Markdown table of figures and
//! ratios; `regress`: the same again, checked against a stored baseline.

use std::time::Duration;

use crate::figures::{Figures, Length};
use crate::glueberry_peer::Setup;
use crate::streams::{Framing, Stack};
use crate::{Cipher, Scenario};

/// A measured peer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Peer {
    Glueberry(Cipher),
    /// Glueberry with ChaCha20-Poly1305 on the poll (epoll) backend.
    GlueberryPoll,
    Stream(Stack, Framing),
    /// iperf3 on loopback: the kernel's ceiling for one TCP stream (bulk only).
    Iperf3,
}

impl Peer {
    fn id(self) -> &'static str {
        use Framing::{Buffered as B, PerMessage as M};
        match self {
            Peer::Glueberry(Cipher::ChaCha) => "glueberry-chacha",
            Peer::Glueberry(Cipher::Aes) => "glueberry-aes",
            Peer::Glueberry(Cipher::DangerNull) => "glueberry-null",
            Peer::GlueberryPoll => "glueberry-chacha-poll",
            Peer::Stream(Stack::Tcp, B) => "tcp",
            Peer::Stream(Stack::Tcp, M) => "tcp-per-message",
            #[cfg(feature = "compare")]
            Peer::Stream(Stack::Tls(Cipher::Aes), B) => "rustls-aes",
            #[cfg(feature = "compare")]
            Peer::Stream(Stack::Tls(Cipher::Aes), M) => "rustls-aes-per-message",
            #[cfg(feature = "compare")]
            Peer::Stream(Stack::Tls(_), B) => "rustls-chacha",
            #[cfg(feature = "compare")]
            Peer::Stream(Stack::Tls(_), M) => "rustls-chacha-per-message",
            #[cfg(feature = "compare")]
            Peer::Stream(Stack::Libp2p, B) => "libp2p",
            #[cfg(feature = "compare")]
            Peer::Stream(Stack::Libp2p, M) => "libp2p-per-message",
            Peer::Iperf3 => "iperf3",
        }
    }

    fn label(self) -> String {
        let stack = match self {
            Peer::Glueberry(Cipher::ChaCha) => "glueberry (ChaCha20-Poly1305)",
            Peer::Glueberry(Cipher::Aes) => "glueberry (AES-256-GCM)",
            Peer::Glueberry(Cipher::DangerNull) => "glueberry, null cipher (profiling)",
            Peer::GlueberryPoll => "glueberry (ChaCha20-Poly1305), poll backend",
            Peer::Stream(Stack::Tcp, _) => "plain TCP (tokio)",
            #[cfg(feature = "compare")]
            Peer::Stream(Stack::Tls(Cipher::Aes), _) => "tokio + rustls (AES-256-GCM)",
            #[cfg(feature = "compare")]
            Peer::Stream(Stack::Tls(_), _) => "tokio + rustls (ChaCha20-Poly1305)",
            #[cfg(feature = "compare")]
            Peer::Stream(Stack::Libp2p, _) => "rust-libp2p (noise + yamux)",
            Peer::Iperf3 => "iperf3 (kernel ceiling)",
        };
        match self {
            Peer::Stream(_, Framing::PerMessage) => format!("{stack}, a write per message"),
            Peer::Stream(_, Framing::Buffered) => format!("{stack}, buffered"),
            _ => stack.to_string(),
        }
    }
}

/// Every peer this build and machine can run.
fn peers() -> Vec<Peer> {
    #[cfg_attr(not(feature = "compare"), allow(unused_mut, clippy::useless_vec))]
    let mut stacks = vec![Stack::Tcp];
    #[cfg(feature = "compare")]
    stacks.extend([
        Stack::Tls(Cipher::ChaCha),
        Stack::Tls(Cipher::Aes),
        Stack::Libp2p,
    ]);
    let mut peers: Vec<Peer> = stacks
        .iter()
        .flat_map(|s| {
            [
                Peer::Stream(*s, Framing::Buffered),
                Peer::Stream(*s, Framing::PerMessage),
            ]
        })
        .collect();
    if iperf3_installed() {
        peers.push(Peer::Iperf3);
    }
    peers.extend([
        Peer::Glueberry(Cipher::ChaCha),
        Peer::Glueberry(Cipher::Aes),
        Peer::Glueberry(Cipher::DangerNull),
        Peer::GlueberryPoll,
    ]);
    peers
}

/// The ratios reported: (glueberry, peer), each glueberry against what a user would compare.
fn pairs() -> Vec<(&'static str, &'static str)> {
    vec![
        ("glueberry-chacha", "tcp"),
        ("glueberry-chacha", "tcp-per-message"),
        ("glueberry-chacha", "rustls-chacha"),
        ("glueberry-chacha", "rustls-chacha-per-message"),
        ("glueberry-chacha", "libp2p"),
        ("glueberry-chacha", "libp2p-per-message"),
        ("glueberry-aes", "rustls-aes"),
        ("glueberry-aes", "rustls-aes-per-message"),
        // What a user gets by default on a CPU with AES instructions, against what rustls
        // users pick for portability.
        ("glueberry-aes", "rustls-chacha"),
        // The poll backend (containers that block io_uring) against io_uring, and against what
        // a user would otherwise pick.
        ("glueberry-chacha-poll", "glueberry-chacha"),
        ("glueberry-chacha-poll", "rustls-chacha"),
        ("glueberry-chacha-poll", "tcp"),
    ]
}

const SCENARIOS: [Scenario; 10] = [
    Scenario::Bulk,
    Scenario::Small(64),
    Scenario::Small(1024),
    Scenario::Latency,
    Scenario::LatencyUnderLoad,
    Scenario::Handshake,
    Scenario::BulkStreams,
    Scenario::BulkPeers,
    Scenario::Scale,
    Scenario::IdlePeers,
];

/// Higher is better: bytes per second, round trips per second (1 / p50), connections per second.
fn score(scenario: Scenario, f: &Figures) -> f64 {
    match scenario {
        Scenario::Latency | Scenario::LatencyUnderLoad | Scenario::IdlePeers => {
            1.0 / f.p50_us.max(f64::MIN_POSITIVE)
        }
        Scenario::Handshake => f.messages_per_sec,
        Scenario::Scale => 1.0 / f.bytes_per_connection.max(1.0),
        _ => f.bytes_per_sec,
    }
}

/// One figure cell of the table.
pub(crate) fn cell(scenario: Scenario, f: &Figures) -> String {
    match scenario {
        Scenario::Latency => format!(
            "p50 {:.1} µs, p99 {:.1} µs, max {:.0} µs",
            f.p50_us, f.p99_us, f.max_us
        ),
        Scenario::LatencyUnderLoad => format!(
            "p50 {:.1} µs, p99 {:.1} µs, max {:.0} µs; bulk beside it {:.2} GB/s",
            f.p50_us,
            f.p99_us,
            f.max_us,
            f.bytes_per_sec / 1e9
        ),
        Scenario::Handshake => format!("{:.0}/s", f.messages_per_sec),
        Scenario::IdlePeers => format!(
            "beside the most idle peers: p50 {:.1} µs, p99 {:.1} µs; 64 B {:.2} M msg/s",
            f.p50_us,
            f.p99_us,
            f.messages_per_sec / 1e6
        ),
        Scenario::ShardScaling => format!(
            "{:.2} M msg/s at 2 shards, ×{:.2} of 1 shard",
            f.messages_per_sec / 1e6,
            f.p50_us
        ),
        Scenario::Scale => format!(
            "{:.1} KiB each, {} in {:.2} s",
            f.bytes_per_connection / 1024.0,
            f.messages,
            f.seconds
        ),
        _ if f.messages == 0 => format!("{:.2} GB/s", f.bytes_per_sec / 1e9),
        _ => format!(
            "{:.2} GB/s, {:.2} M msg/s",
            f.bytes_per_sec / 1e9,
            f.messages_per_sec / 1e6
        ),
    }
}

/// `glueberry ÷ peer`; for latency the p50 factor (lower is better).
pub(crate) fn ratio_cell(scenario: Scenario, glueberry: &Figures, peer: &Figures) -> String {
    let ratio = score(scenario, glueberry) / score(scenario, peer).max(f64::MIN_POSITIVE);
    match scenario {
        Scenario::Latency => format!("p50 ×{:.2}", 1.0 / ratio),
        _ => format!("×{ratio:.2}"),
    }
}

fn iperf3_installed() -> bool {
    std::process::Command::new("iperf3")
        .arg("--version")
        .output()
        .is_ok_and(|o| o.status.success())
}

/// One TCP stream through iperf3 on loopback for `duration`.
fn iperf3(duration: Duration) -> Result<Figures, String> {
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map_err(|e| e.to_string())?
        .port()
        .to_string();
    let mut server = std::process::Command::new("iperf3")
        .args(["-s", "-1", "-B", "127.0.0.1", "-p", &port])
        .stdout(std::process::Stdio::null())
        .spawn()
        .map_err(|e| e.to_string())?;
    std::thread::sleep(Duration::from_millis(300));
    let seconds = duration.as_secs_f64().ceil().max(1.0).to_string();
    let out = std::process::Command::new("iperf3")
        .args(["-c", "127.0.0.1", "-p", &port, "-J", "-t", &seconds])
        .output()
        .map_err(|e| e.to_string());
    let _ = server.wait();
    let json: serde_json::Value =
        serde_json::from_slice(&out?.stdout).map_err(|e| format!("iperf3 output: {e}"))?;
    let sum = &json["end"]["sum_received"];
    let bytes_per_sec = sum["bits_per_second"].as_f64().ok_or("iperf3: no result")? / 8.0;
    Ok(Figures {
        seconds: sum["seconds"].as_f64().unwrap_or(0.0),
        bytes: sum["bytes"].as_u64().unwrap_or(0),
        bytes_per_sec,
        ..Default::default()
    })
}

fn run(peer: Peer, scenario: Scenario, length: Length) -> Option<Result<Figures, String>> {
    let quiet = |_: u64, _: u64| {};
    match peer {
        Peer::Glueberry(_) | Peer::GlueberryPoll => {
            let (cipher, backend) = match peer {
                Peer::Glueberry(cipher) => (cipher, glueberry::Backend::Auto),
                _ => (Cipher::ChaCha, glueberry::Backend::Poll),
            };
            let glueberry_only = matches!(
                scenario,
                Scenario::BulkStreams
                    | Scenario::BulkPeers
                    | Scenario::Scale
                    | Scenario::LatencyUnderLoad
                    | Scenario::IdlePeers
            );
            if glueberry_only && (cipher != Cipher::ChaCha || backend == glueberry::Backend::Poll) {
                return None;
            }
            let setup = Setup {
                cipher,
                backend,
                ..Setup::default()
            };
            Some(crate::run_glueberry(scenario, &setup, length, None, &quiet))
        }
        Peer::Stream(stack, framing) => crate::run_stream(scenario, stack, framing, length, &quiet),
        Peer::Iperf3 => (scenario == Scenario::Bulk).then(|| iperf3(length.time())),
    }
}

/// All results of one comparison run: every peer measured `trials` times per scenario,
/// interleaved (all peers once, then all again, ...), so that a slow minute of a noisy machine
/// falls on every peer alike.
pub(crate) struct Results {
    seconds: f64,
    trials: usize,
    rows: Vec<(Scenario, Row)>,
}

/// One scenario's trials, per peer.
type Row = Vec<(Peer, Vec<Figures>)>;

/// The median of `values` (sorted in place); `None` if there are none.
fn median(values: &mut [f64]) -> Option<f64> {
    values.sort_by(f64::total_cmp);
    let n = values.len();
    match n {
        0 => None,
        _ if n % 2 == 1 => Some(values[n / 2]),
        _ => Some((values[n / 2 - 1] + values[n / 2]) / 2.0),
    }
}

/// A ratio over the trials: median, lowest, highest.
#[derive(Debug, Clone, Copy, PartialEq)]
pub(crate) struct Ratio {
    pub median: f64,
    pub min: f64,
    pub max: f64,
}

impl Results {
    fn trials_of(&self, scenario: Scenario, id: &str) -> Option<&[Figures]> {
        let (_, row) = self.rows.iter().find(|(s, _)| *s == scenario)?;
        row.iter()
            .find(|(p, _)| p.id() == id)
            .map(|(_, f)| f.as_slice())
    }

    /// The trial with the median score (what a table cell shows).
    fn median_figures(scenario: Scenario, trials: &[Figures]) -> Option<&Figures> {
        let mut order: Vec<&Figures> = trials.iter().collect();
        order.sort_by(|a, b| score(scenario, a).total_cmp(&score(scenario, b)));
        order.get(order.len() / 2).copied()
    }

    /// Glueberry's score over the peer's, trial by trial (the trials ran side by side).
    fn ratio(&self, scenario: Scenario, gb: &str, peer: &str) -> Option<Ratio> {
        let (g, p) = (
            self.trials_of(scenario, gb)?,
            self.trials_of(scenario, peer)?,
        );
        let mut ratios: Vec<f64> = g
            .iter()
            .zip(p)
            .map(|(g, p)| score(scenario, g) / score(scenario, p).max(f64::MIN_POSITIVE))
            .collect();
        let median = median(&mut ratios)?;
        Some(Ratio {
            median,
            min: ratios[0],
            max: ratios[ratios.len() - 1],
        })
    }

    /// (scenario id, glueberry id, peer id, ratio) for every pair measured.
    fn ratios(&self) -> Vec<(String, &'static str, &'static str, Ratio)> {
        let mut out = Vec::new();
        for (scenario, _) in &self.rows {
            for (gb, peer) in pairs() {
                if let Some(ratio) = self.ratio(*scenario, gb, peer) {
                    out.push((scenario.id(), gb, peer, ratio));
                }
            }
        }
        out
    }

    fn markdown(&self) -> String {
        let mut md = String::new();
        let all = peers();
        md.push_str(&format!(
            "Each figure is the median of {} trials of {:.0} s, the peers interleaved (every peer \
             once, then again), both ends in one process, one core each. Ratios are glueberry ÷ \
             peer per trial: median (lowest–highest).\n\n",
            self.trials, self.seconds
        ));
        md.push_str("| scenario |");
        for peer in &all {
            md.push_str(&format!(" {} |", peer.label()));
        }
        md.push_str("\n|---|");
        md.push_str(&"---|".repeat(all.len()));
        md.push('\n');
        for (scenario, row) in &self.rows {
            md.push_str(&format!("| {} |", scenario.name()));
            for peer in &all {
                let median = row
                    .iter()
                    .find(|(p, _)| p == peer)
                    .and_then(|(_, trials)| Self::median_figures(*scenario, trials));
                match median {
                    Some(f) => md.push_str(&format!(" {} |", cell(*scenario, f))),
                    None => md.push_str(" — |"),
                }
            }
            md.push('\n');
        }
        md.push_str(
            "\n| scenario | glueberry | ÷ peer | ratio, median (range) |\n|---|---|---|---|\n",
        );
        for (scenario, row) in &self.rows {
            for (gb, peer) in pairs() {
                let find = |id: &str| row.iter().find(|(p, _)| p.id() == id).map(|(p, _)| *p);
                if let (Some(g), Some(p), Some(ratio)) =
                    (find(gb), find(peer), self.ratio(*scenario, gb, peer))
                {
                    md.push_str(&format!(
                        "| {} | {} | {} | {} |\n",
                        scenario.name(),
                        g.label(),
                        p.label(),
                        ratio_range_cell(*scenario, ratio)
                    ));
                }
            }
        }
        md
    }

    fn json(&self) -> serde_json::Value {
        let results: Vec<serde_json::Value> = self
            .rows
            .iter()
            .flat_map(|(s, row)| {
                row.iter().flat_map(move |(p, trials)| {
                    trials.iter().filter_map(move |f| {
                        serde_json::from_str(&f.final_json(&s.id(), p.id())).ok()
                    })
                })
            })
            .collect();
        let ratios: Vec<serde_json::Value> = self
            .ratios()
            .into_iter()
            .map(|(scenario, gb, peer, r)| {
                serde_json::json!({"scenario": scenario, "glueberry": gb, "peer": peer,
                    "ratio": r.median, "min": r.min, "max": r.max})
            })
            .collect();
        serde_json::json!({
            "seconds": self.seconds,
            "trials": self.trials,
            "machine": machine(),
            "results": results,
            "ratios": ratios,
        })
    }
}

/// A ratio cell with its range; for latency the p50 factor (lower is better).
fn ratio_range_cell(scenario: Scenario, r: Ratio) -> String {
    match scenario {
        Scenario::Latency | Scenario::LatencyUnderLoad | Scenario::IdlePeers => format!(
            "p50 ×{:.2} ({:.2}–{:.2})",
            1.0 / r.median,
            1.0 / r.max,
            1.0 / r.min
        ),
        _ => format!("×{:.2} ({:.2}–{:.2})", r.median, r.min, r.max),
    }
}

/// "N CPUs, model" from /proc/cpuinfo.
fn machine() -> String {
    let info = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
    let model = info
        .lines()
        .find_map(|l| l.strip_prefix("model name"))
        .map(|m| m.trim_start_matches([' ', '\t', ':']).to_string())
        .unwrap_or_default();
    let cpus = std::thread::available_parallelism().map_or(0, |n| n.get());
    format!("{cpus} CPUs, {model}")
}

/// Runs everything, `trials` times interleaved; prints (and optionally writes) the Markdown
/// and the JSON results.
pub(crate) fn compare(
    duration: Duration,
    trials: usize,
    only: Option<&[Scenario]>,
    out: Option<&str>,
    save: Option<&str>,
) -> Result<Results, String> {
    let trials = trials.max(1);
    let mut results = Results {
        seconds: duration.as_secs_f64(),
        trials,
        rows: Vec::new(),
    };
    for scenario in SCENARIOS {
        if only.is_some_and(|only| !only.contains(&scenario)) {
            continue;
        }
        let mut row: Row = Vec::new();
        for trial in 1..=trials {
            for peer in peers() {
                let Some(figures) = run(peer, scenario, Length::Time(duration)) else {
                    continue;
                };
                eprintln!(
                    "{:<52} {:<36} {trial}/{trials} {}",
                    scenario.name(),
                    peer.label(),
                    match &figures {
                        Ok(f) => cell(scenario, f),
                        Err(e) => format!("failed: {e}"),
                    }
                );
                let figures = figures?;
                match row.iter_mut().find(|(p, _)| *p == peer) {
                    Some((_, all)) => all.push(figures),
                    None => row.push((peer, vec![figures])),
                }
            }
        }
        results.rows.push((scenario, row));
    }
    let md = results.markdown();
    println!("{md}");
    if let Some(path) = out {
        std::fs::write(path, &md).map_err(|e| format!("{path}: {e}"))?;
    }
    if let Some(path) = save {
        let json = serde_json::to_string_pretty(&results.json()).map_err(|e| e.to_string())?;
        std::fs::write(path, json + "\n").map_err(|e| format!("{path}: {e}"))?;
    }
    Ok(results)
}

/// A drop of more than this fraction in a ratio is flagged.
const TOLERANCE: f64 = 0.10;

/// Ratios that fell more than [`TOLERANCE`] below the baseline's: (scenario, pair, was, now).
fn regressions(
    baseline: &serde_json::Value,
    now: &[(String, &str, &str, Ratio)],
) -> Vec<(String, String, f64, f64)> {
    let mut out = Vec::new();
    for old in baseline["ratios"].as_array().into_iter().flatten() {
        let (Some(scenario), Some(gb), Some(peer), Some(was)) = (
            old["scenario"].as_str(),
            old["glueberry"].as_str(),
            old["peer"].as_str(),
            old["ratio"].as_f64(),
        ) else {
            continue;
        };
        if let Some((_, _, _, ratio)) = now
            .iter()
            .find(|(s, g, p, _)| s == scenario && *g == gb && *p == peer)
            && ratio.median < was * (1.0 - TOLERANCE)
        {
            out.push((
                scenario.to_string(),
                format!("{gb} ÷ {peer}"),
                was,
                ratio.median,
            ));
        }
    }
    out
}

/// Reruns the comparison and fails if any ratio dropped more than 10 % below the baseline.
pub(crate) fn regress(baseline: &str, duration: Duration, trials: usize) -> Result<(), String> {
    let text = std::fs::read_to_string(baseline).map_err(|e| format!("{baseline}: {e}"))?;
    let old: serde_json::Value =
        serde_json::from_str(&text).map_err(|e| format!("{baseline}: {e}"))?;
    let results = compare(duration, trials, None, None, None)?;
    let flagged = regressions(&old, &results.ratios());
    if flagged.is_empty() {
        println!(
            "no ratio dropped more than {:.0} % below {baseline}",
            TOLERANCE * 100.0
        );
        return Ok(());
    }
    for (scenario, pair, was, now) in &flagged {
        println!("REGRESSION {scenario}: {pair} was ×{was:.3}, now ×{now:.3}");
    }
    Err(format!("{} ratio(s) regressed", flagged.len()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_drop_beyond_ten_percent_is_flagged_and_within_it_is_not() {
        let baseline = serde_json::json!({"ratios": [
            {"scenario": "bulk", "glueberry": "glueberry-chacha", "peer": "tcp", "ratio": 1.0},
            {"scenario": "latency", "glueberry": "glueberry-chacha", "peer": "tcp", "ratio": 0.8},
        ]});
        let r = |median| Ratio {
            median,
            min: median,
            max: median,
        };
        let now = vec![
            ("bulk".to_string(), "glueberry-chacha", "tcp", r(0.85)),
            ("latency".to_string(), "glueberry-chacha", "tcp", r(0.75)),
        ];
        let flagged = regressions(&baseline, &now);
        assert_eq!(flagged.len(), 1, "{flagged:?}");
        assert_eq!(flagged[0].0, "bulk");
    }

    #[test]
    fn ratios_are_taken_trial_by_trial_with_their_median_and_range() {
        let trial = |bytes_per_sec| Figures {
            bytes_per_sec,
            ..Default::default()
        };
        let results = Results {
            seconds: 1.0,
            trials: 3,
            rows: vec![(
                Scenario::Bulk,
                vec![
                    (
                        Peer::Glueberry(Cipher::ChaCha),
                        vec![trial(10.0), trial(30.0), trial(20.0)],
                    ),
                    (
                        Peer::Stream(Stack::Tcp, Framing::Buffered),
                        vec![trial(10.0), trial(10.0), trial(40.0)],
                    ),
                ],
            )],
        };
        let ratio = results
            .ratio(Scenario::Bulk, "glueberry-chacha", "tcp")
            .expect("both measured");
        assert_eq!(
            ratio,
            Ratio {
                median: 1.0,
                min: 0.5,
                max: 3.0
            }
        );
        let gb = &results.rows[0].1[0].1;
        let median = Results::median_figures(Scenario::Bulk, gb).expect("trials");
        assert_eq!(median.bytes_per_sec, 20.0);
        assert_eq!(median_of(&mut [4.0, 1.0, 3.0, 2.0]), Some(2.5));
    }

    fn median_of(values: &mut [f64]) -> Option<f64> {
        median(values)
    }
}
