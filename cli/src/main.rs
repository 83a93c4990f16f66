//! `glueberry`: make a key, run a node from a TOML file, read a running node's status, ping a
//! peer.
//!
//! ```text
//! glueberry keygen --out node.key          writes a new identity, prints its peer id
//! glueberry id --key node.key              prints the peer id of a key file
//! glueberry node --config node.toml        runs a node until SIGINT or SIGTERM
//! glueberry status --endpoint 127.0.0.1:9100
//! glueberry ping ID@HOST:PORT --network chain-1 [--count 5]
//! ```
//!
//! A node file (every key of `[node]` is a `glueberry::NodeSettings` field):
//!
//! ```toml
//! key = "node.key"                       # from `glueberry keygen`
//! streams = ["consensus", "mempool"]      # opened with every peer ("ping" is always added)
//!
//! [node]
//! network_id = "chain-1"
//! listen = "0.0.0.0:26656"
//! peers = ["gbp1…@validator-2.example.net:26656"]
//! metrics = "127.0.0.1:9100"              # /metrics, /healthz, /readyz
//! debug_state_endpoint = true              # /debug/state, read by `glueberry status`
//! ```

mod ping;
mod run;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};

/// The stream every `glueberry node` opens and answers: what it receives on it, it sends back.
pub(crate) const PING_STREAM: &str = "ping";

#[derive(Parser)]
#[command(
    name = "glueberry",
    version,
    about = "Glueberry: keys, nodes, status, members, ping"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Writes a new identity to a key file (mode 0600) and prints its peer id.
    Keygen {
        /// The key file to create (refused if it exists).
        #[arg(long)]
        out: PathBuf,
    },
    /// Prints the peer id of a key file.
    Id {
        /// The key file.
        #[arg(long)]
        key: PathBuf,
    },
    /// Runs a node from a TOML file until SIGINT or SIGTERM.
    Node {
        /// The node file.
        #[arg(long)]
        config: PathBuf,
    },
    /// Prints a running node's health and state from its endpoint.
    Status {
        /// The node's metrics endpoint (`metrics` in its file).
        #[arg(long)]
        endpoint: SocketAddr,
        /// One JSON object (`health_code`, `health`, `state`) instead of text.
        #[arg(long)]
        json: bool,
    },
    /// Prints each member of a running node's peer sets: state, address and where it came
    /// from, newest record, last seen (from its endpoint's `/debug/state`).
    Members {
        /// The node's metrics endpoint (`metrics` in its file, with `debug_state_endpoint`).
        #[arg(long)]
        endpoint: SocketAddr,
        /// The `membership` object as JSON instead of a table.
        #[arg(long)]
        json: bool,
    },
    /// Measures round trips to a node (a `glueberry node`, which answers on "ping").
    Ping {
        /// The peer, `ID@host:port`.
        peer: glueberry::PeerAddr,
        /// Its network id.
        #[arg(long)]
        network: String,
        /// Round trips to measure.
        #[arg(long, default_value_t = 5)]
        count: u32,
        /// How long to wait for the connection and for each reply, in seconds.
        #[arg(long, default_value_t = 10)]
        timeout: u64,
        /// One JSON object at the end (`peer`, `connect_us`, `rtt_us`, `min_us`, `median_us`,
        /// `max_us`) instead of text.
        #[arg(long)]
        json: bool,
    },
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Keygen { out } => keygen(&out),
        Command::Id { key } => glueberry::Identity::load(&key)
            .map(|identity| println!("{}", identity.peer_id()))
            .map_err(|e| format!("{}: {e}", key.display())),
        Command::Node { config } => run::node(&config),
        Command::Status { endpoint, json } => status(endpoint, json),
        Command::Members { endpoint, json } => members(endpoint, json),
        Command::Ping {
            peer,
            network,
            count,
            timeout,
            json,
        } => ping::ping(
            &peer,
            &network,
            count,
            std::time::Duration::from_secs(timeout),
            json,
        ),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("glueberry: {e}");
            ExitCode::FAILURE
        }
    }
}

fn keygen(out: &std::path::Path) -> Result<(), String> {
    if out.exists() {
        return Err(format!("{} exists: not overwritten", out.display()));
    }
    let identity = glueberry::Identity::generate().map_err(|e| e.to_string())?;
    identity
        .save(out)
        .map_err(|e| format!("{}: {e}", out.display()))?;
    println!("{}", identity.peer_id());
    Ok(())
}

fn members(endpoint: SocketAddr, json: bool) -> Result<(), String> {
    let state = debug_state(endpoint)?;
    let membership = &state["membership"];
    if json {
        println!("{membership}");
        return Ok(());
    }
    let members = membership["members"]
        .as_array()
        .cloned()
        .unwrap_or_default();
    let ready = members.iter().filter(|m| m["ready"] == true).count();
    println!(
        "policy {}, epochs {}: connected to {ready} of {} members",
        membership["policy"],
        membership["epochs"],
        members.len()
    );
    println!(
        "{:<64} {:<12} {:<22} {:<8} {:>14} {:>11}",
        "member", "state", "address", "source", "record seq", "last seen"
    );
    for m in &members {
        let text = |v: &serde_json::Value| match v {
            serde_json::Value::String(s) => s.clone(),
            serde_json::Value::Null => "-".into(),
            other => other.to_string(),
        };
        println!(
            "{:<64} {:<12} {:<22} {:<8} {:>14} {:>11}",
            text(&m["peer_id"]),
            text(&m["state"]),
            text(&m["address"]),
            text(&m["address_source"]),
            text(&m["record_sequence"]),
            text(&m["last_seen"]),
        );
    }
    Ok(())
}

/// A node's `/debug/state`, parsed (its file must turn the page on).
fn debug_state(endpoint: SocketAddr) -> Result<serde_json::Value, String> {
    let (code, state) = get(endpoint, "/debug/state")?;
    if code != 200 {
        return Err(format!(
            "/debug/state answered {code}: set debug_state_endpoint = true in the node's file"
        ));
    }
    serde_json::from_str(&state).map_err(|e| format!("/debug/state: {e}"))
}

/// `GET path` on a node's endpoint; its status code and body.
fn get(endpoint: SocketAddr, path: &str) -> Result<(u16, String), String> {
    use std::io::{Read, Write};
    let timeout = std::time::Duration::from_secs(5);
    let mut socket = std::net::TcpStream::connect_timeout(&endpoint, timeout)
        .map_err(|e| format!("{endpoint}: {e}"))?;
    socket
        .set_read_timeout(Some(timeout))
        .map_err(|e| e.to_string())?;
    write!(
        socket,
        "GET {path} HTTP/1.1\r\nHost: {endpoint}\r\nConnection: close\r\n\r\n"
    )
    .map_err(|e| e.to_string())?;
    let mut response = String::new();
    socket
        .read_to_string(&mut response)
        .map_err(|e| format!("{endpoint}{path}: {e}"))?;
    let (head, body) = response
        .split_once("\r\n\r\n")
        .ok_or_else(|| format!("{endpoint}{path}: no HTTP response"))?;
    let code = head
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .ok_or_else(|| format!("{endpoint}{path}: no status code"))?;
    Ok((code, body.to_string()))
}

fn status(endpoint: SocketAddr, json: bool) -> Result<(), String> {
    let (health_code, health) = get(endpoint, "/healthz")?;
    let state = debug_state(endpoint)?;
    if json {
        let health = serde_json::from_str(&health).unwrap_or(serde_json::Value::String(health));
        let out = serde_json::json!({
            "health_code": health_code,
            "health": health,
            "state": state,
        });
        println!("{out}");
        return Ok(());
    }
    println!("health ({health_code}): {health}");
    println!(
        "{}",
        serde_json::to_string_pretty(&state).map_err(|e| e.to_string())?
    );
    Ok(())
}
