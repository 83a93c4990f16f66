//! `glueberry ping`: round trips to a node over an authenticated connection, from a throwaway
//! identity.

use std::time::{Duration, Instant};

use bytes::Bytes;
use glueberry::transport::ConnState;
use glueberry::{
    DialFailure, Event, EventFilter, Identity, Node, NodeConfig, PeerAddr, ResolveError,
};

use crate::PING_STREAM;

pub(crate) fn ping(
    peer: &PeerAddr,
    network: &str,
    count: u32,
    timeout: Duration,
    json: bool,
) -> Result<(), String> {
    let identity = Identity::generate().map_err(|e| e.to_string())?;
    let listen = match peer.socket_addr() {
        Some(addr) if addr.is_ipv6() => "[::]:0",
        _ => "0.0.0.0:0",
    };
    let config =
        NodeConfig::new(identity, network, listen.parse().map_err(|_| "listen")?).shards(1);
    let node = Node::start(config).map_err(|e| e.to_string())?;
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| e.to_string())?;
    let result = runtime.block_on(run(&node, peer, count, timeout, json));
    node.stop_blocking();
    result.map_err(|failure| {
        if json {
            let out = serde_json::json!({
                "peer": peer.to_string(),
                "error": failure.name(),
                "message": failure.to_string(),
            });
            println!("{out}");
        }
        format!("{peer}: {failure}")
    })
}

/// Why a ping did not get its answers.
#[derive(Debug, thiserror::Error)]
enum Failure {
    /// The dial failed: the typed cause (wrong network, wrong peer id, refused, ...).
    #[error("cannot connect: {0}")]
    Dial(DialFailure),
    /// The host name did not resolve.
    #[error("cannot resolve the host name: {0}")]
    Resolve(String),
    /// No authenticated connection within the time given.
    #[error("not connected within {0:?}")]
    Timeout(Duration),
    /// The node answers, but not on the ping stream.
    #[error("the node does not answer on {PING_STREAM:?}")]
    NoPingStream,
    /// Anything else (a reply that did not come or did not match).
    #[error("{0}")]
    Other(String),
}

impl Failure {
    /// Its name in `--json` output.
    fn name(&self) -> &'static str {
        match self {
            Failure::Dial(cause) => cause.name(),
            Failure::Resolve(_) => "name_not_resolved",
            Failure::Timeout(_) => "timed_out",
            Failure::NoPingStream => "no_ping_stream",
            Failure::Other(_) => "failed",
        }
    }
}

impl From<String> for Failure {
    fn from(message: String) -> Self {
        Failure::Other(message)
    }
}

impl From<&str> for Failure {
    fn from(message: &str) -> Self {
        Failure::Other(message.to_string())
    }
}

async fn run(
    node: &Node,
    peer: &PeerAddr,
    count: u32,
    timeout: Duration,
    json: bool,
) -> Result<(), Failure> {
    let events = node.subscribe(EventFilter::all().peer(peer.peer), 64);
    let mut replies = node.messages_on(PING_STREAM).map_err(|e| e.to_string())?;
    node.connect_to(peer).map_err(|e| e.to_string())?;
    let started = Instant::now();
    let connected = async {
        while let Some(event) = events.recv().await {
            match event {
                Event::State {
                    state: ConnState::Connected,
                    ..
                } => node
                    .complete_handshake(peer.peer, &[PING_STREAM])
                    .map_err(|e| e.to_string())?,
                // The first attempt failed: say why rather than wait for the redial.
                Event::State {
                    state: ConnState::Reconnecting | ConnState::Disconnected,
                    reason,
                    ..
                } => return Err(Failure::Dial(DialFailure::from_reason(reason.as_ref()))),
                // The node answered our streams: its side is Established too.
                Event::Ready { .. } => return Ok(()),
                Event::StreamRejected { .. } => return Err(Failure::NoPingStream),
                Event::CommandFailed { error, .. } => {
                    let resolve = std::error::Error::source(&error)
                        .and_then(|e| e.downcast_ref::<ResolveError>());
                    return Err(match resolve {
                        Some(e) => Failure::Resolve(e.to_string()),
                        None => Failure::Other(error.to_string()),
                    });
                }
                _ => {}
            }
        }
        Err(Failure::Other("the node stopped".to_string()))
    };
    tokio::time::timeout(timeout, connected)
        .await
        .map_err(|_| Failure::Timeout(timeout))??;
    let connect = started.elapsed();
    if !json {
        println!("connected to {peer} in {connect:?}");
    }
    let mut rtts = Vec::with_capacity(count as usize);
    for seq in 0..count {
        let sent = Instant::now();
        let request = Bytes::copy_from_slice(&seq.to_be_bytes());
        node.send(peer.peer, PING_STREAM, request)
            .await
            .map_err(|e| e.to_string())?;
        let reply = tokio::time::timeout(timeout, replies.recv())
            .await
            .map_err(|_| format!("no reply to ping {seq} within {timeout:?}"))?
            .ok_or("the node stopped")?;
        if reply.data[..] != seq.to_be_bytes() {
            return Err(format!("ping {seq}: the reply does not match").into());
        }
        let rtt = sent.elapsed();
        rtts.push(rtt);
        if json {
            continue;
        }
        println!(
            "reply from {}: seq={seq} time={:.1} µs",
            peer.peer,
            rtt.as_secs_f64() * 1e6
        );
    }
    let micros = |d: &Duration| d.as_secs_f64() * 1e6;
    if json {
        let mut sorted = rtts.clone();
        sorted.sort();
        let out = serde_json::json!({
            "peer": peer.to_string(),
            "connect_us": micros(&connect),
            "rtt_us": rtts.iter().map(micros).collect::<Vec<_>>(),
            "min_us": sorted.first().map(micros),
            "median_us": sorted.get(sorted.len() / 2).map(micros),
            "max_us": sorted.last().map(micros),
        });
        println!("{out}");
        return Ok(());
    }
    rtts.sort();
    if let (Some(min), Some(max)) = (rtts.first(), rtts.last()) {
        println!(
            "{} replies: min {:.1} µs, median {:.1} µs, max {:.1} µs",
            rtts.len(),
            min.as_secs_f64() * 1e6,
            rtts[rtts.len() / 2].as_secs_f64() * 1e6,
            max.as_secs_f64() * 1e6
        );
    }
    Ok(())
}
