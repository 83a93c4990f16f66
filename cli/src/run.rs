//! `glueberry node`: a node from a TOML file, running until SIGINT or SIGTERM. It completes the
//! application handshake of every peer with the file's streams (and "ping"), answers pings,
//! and logs what happens.

use std::path::{Path, PathBuf};
use std::time::Duration;

use glueberry::transport::ConnState;
use glueberry::{Event, EventFilter, Identity, Node, NodeSettings};
use serde::Deserialize;

use crate::PING_STREAM;

/// A node file: the key, the streams, and the node's settings.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct NodeFile {
    /// The key file (`glueberry keygen`), relative to the node file.
    key: PathBuf,
    /// Streams opened with every peer ("ping" is added).
    #[serde(default)]
    streams: Vec<String>,
    /// `NodeSettings`.
    node: NodeSettings,
}

pub(crate) fn node(path: &Path) -> Result<(), String> {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .try_init();
    let text = std::fs::read_to_string(path).map_err(|e| format!("{}: {e}", path.display()))?;
    let file: NodeFile = toml::from_str(&text).map_err(|e| format!("{}: {e}", path.display()))?;
    let key = path.parent().unwrap_or(Path::new(".")).join(&file.key);
    let identity = Identity::load(&key).map_err(|e| format!("{}: {e}", key.display()))?;
    let peers = file.node.peers.clone();
    let config = file
        .node
        .into_config(identity)
        .map_err(|e| format!("{}: {e}", path.display()))?;
    let node = Node::start(config).map_err(|e| e.to_string())?;
    // One line for whoever started us (scripts, tests): who and where.
    println!(
        "{} {} {}",
        node.peer_id(),
        node.listen_addr(),
        node.backend()
    );
    let mut streams = file.streams;
    if !streams.iter().any(|s| s == PING_STREAM) {
        streams.push(PING_STREAM.to_string());
    }
    for peer in &peers {
        node.connect_to(peer).map_err(|e| format!("{peer}: {e}"))?;
    }
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| e.to_string())?;
    runtime.block_on(serve(&node, &streams))
}

/// Until SIGINT or SIGTERM: handshakes, pings answered, other messages counted.
async fn serve(node: &Node, streams: &[String]) -> Result<(), String> {
    let names: Vec<&str> = streams.iter().map(String::as_str).collect();
    let events = node.subscribe(EventFilter::default(), 1024);
    let mut pings = node.messages_on(PING_STREAM).map_err(|e| e.to_string())?;
    let mut other = node.messages();
    let mut terminate = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
        .map_err(|e| e.to_string())?;
    let mut received = 0u64;
    loop {
        tokio::select! {
            _ = tokio::signal::ctrl_c() => break,
            _ = terminate.recv() => break,
            Some(event) = events.recv() => match event {
                Event::State { peer, state: ConnState::Connected, .. } => {
                    if let Err(e) = node.complete_handshake(peer, &names) {
                        tracing::warn!(%peer, error = %e, "handshake not completed");
                    }
                }
                Event::State { peer, state, .. } => tracing::info!(%peer, ?state, "peer"),
                _ => {}
            },
            Some(ping) = pings.recv() => {
                // The reply is the request, back on the same stream. One loop serves every
                // peer, so it never waits on one: a peer that does not take its answers (its
                // stream is full) is not answered, and no other peer waits for it.
                if let Err(e) = node.try_send(ping.peer, PING_STREAM, ping.data) {
                    tracing::debug!(peer = %ping.peer, error = %e.error, "ping not answered");
                }
            }
            Some(message) = other.recv() => {
                received += 1;
                tracing::debug!(peer = %message.peer, stream = %message.stream, len = message.data.len(), "message");
            }
        }
    }
    tracing::info!(received, "stopping");
    node.drain(Duration::from_secs(5)).await;
    node.stop().await;
    Ok(())
}
