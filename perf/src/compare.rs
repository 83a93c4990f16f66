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
    ]
}

const SCENARIOS: [Scenario; 8] = [
    Scenario::Bulk,
    Scenario::Small(64),
    Scenario::Small(1024),
    Scenario::Latency,
    Scenario::Handshake,
    Scenario::BulkStreams,
    Scenario::BulkPeers,
    Scenario::Scale,
];

/// Higher is better: bytes per second, round trips per second (1 / p50), connections per second.
fn score(scenario: Scenario, f: &Figures) -> f64 {
    match scenario {
        Scenario::Latency => 1.0 / f.p50_us.max(f64::MIN_POSITIVE),
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
        Scenario::Handshake => format!("{:.0}/s", f.messages_per_sec),
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
        Peer::Glueberry(cipher) => {
            let glueberry_only = matches!(
                scenario,
                Scenario::BulkStreams | Scenario::BulkPeers | Scenario::Scale
            );
            if glueberry_only && cipher != Cipher::ChaCha {
                return None;
            }
            let setup = Setup {
                cipher,
                ..Setup::default()
            };
            Some(crate::run_glueberry(scenario, &setup, length, None, &quiet))
        }
        Peer::Stream(stack, framing) => crate::run_stream(scenario, stack, framing, length, &quiet),
        Peer::Iperf3 => (scenario == Scenario::Bulk).then(|| iperf3(length.time())),
    }
}

/// All results of one comparison run.
pub(crate) struct Results {
    seconds: f64,
    rows: Vec<(Scenario, Vec<(Peer, Figures)>)>,
}

impl Results {
    fn find(&self, scenario: Scenario, id: &str) -> Option<&Figures> {
        let (_, row) = self.rows.iter().find(|(s, _)| *s == scenario)?;
        row.iter().find(|(p, _)| p.id() == id).map(|(_, f)| f)
    }

    /// (scenario id, glueberry id, peer id, score ratio) for every pair measured.
    fn ratios(&self) -> Vec<(String, &'static str, &'static str, f64)> {
        let mut out = Vec::new();
        for (scenario, _) in &self.rows {
            for (gb, peer) in pairs() {
                if let (Some(g), Some(p)) = (self.find(*scenario, gb), self.find(*scenario, peer)) {
                    let ratio = score(*scenario, g) / score(*scenario, p).max(f64::MIN_POSITIVE);
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
            "Each figure is {:.0} s of one peer alone on the machine, both ends in one process, one core each.\n\n",
            self.seconds
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
                match row.iter().find(|(p, _)| p == peer) {
                    Some((_, f)) => md.push_str(&format!(" {} |", cell(*scenario, f))),
                    None => md.push_str(" — |"),
                }
            }
            md.push('\n');
        }
        md.push_str("\n| scenario | glueberry | ÷ peer | ratio |\n|---|---|---|---|\n");
        for (scenario, row) in &self.rows {
            for (gb, peer) in pairs() {
                let find = |id: &str| row.iter().find(|(p, _)| p.id() == id);
                if let (Some((g, gf)), Some((p, pf))) = (find(gb), find(peer)) {
                    md.push_str(&format!(
                        "| {} | {} | {} | {} |\n",
                        scenario.name(),
                        g.label(),
                        p.label(),
                        ratio_cell(*scenario, gf, pf)
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
                row.iter()
                    .filter_map(|(p, f)| serde_json::from_str(&f.final_json(&s.id(), p.id())).ok())
            })
            .collect();
        let ratios: Vec<serde_json::Value> = self
            .ratios()
            .into_iter()
            .map(|(scenario, gb, peer, ratio)| {
                serde_json::json!({"scenario": scenario, "glueberry": gb, "peer": peer, "ratio": ratio})
            })
            .collect();
        serde_json::json!({
            "seconds": self.seconds,
            "machine": machine(),
            "results": results,
            "ratios": ratios,
        })
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

/// Runs everything; prints (and optionally writes) the Markdown and the JSON results.
pub(crate) fn compare(
    duration: Duration,
    out: Option<&str>,
    save: Option<&str>,
) -> Result<Results, String> {
    let mut results = Results {
        seconds: duration.as_secs_f64(),
        rows: Vec::new(),
    };
    for scenario in SCENARIOS {
        let mut row = Vec::new();
        for peer in peers() {
            let Some(figures) = run(peer, scenario, Length::Time(duration)) else {
                continue;
            };
            eprintln!(
                "{:<52} {:<36} {}",
                scenario.name(),
                peer.label(),
                match &figures {
                    Ok(f) => cell(scenario, f),
                    Err(e) => format!("failed: {e}"),
                }
            );
            row.push((peer, figures?));
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
    now: &[(String, &str, &str, f64)],
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
            && *ratio < was * (1.0 - TOLERANCE)
        {
            out.push((scenario.to_string(), format!("{gb} ÷ {peer}"), was, *ratio));
        }
    }
    out
}

/// Reruns the comparison and fails if any ratio dropped more than 10 % below the baseline.
pub(crate) fn regress(baseline: &str, duration: Duration) -> Result<(), String> {
    let text = std::fs::read_to_string(baseline).map_err(|e| format!("{baseline}: {e}"))?;
    let old: serde_json::Value =
        serde_json::from_str(&text).map_err(|e| format!("{baseline}: {e}"))?;
    let results = compare(duration, None, None)?;
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
        let now = vec![
            ("bulk".to_string(), "glueberry-chacha", "tcp", 0.85),
            ("latency".to_string(), "glueberry-chacha", "tcp", 0.75),
        ];
        let flagged = regressions(&baseline, &now);
        assert_eq!(flagged.len(), 1, "{flagged:?}");
        assert_eq!(flagged[0].0, "bulk");
    }
}
