//! A cluster from one configuration: N nodes, a full mesh, gossip with de-duplication, and one
//! node killed and restarted with the same identity and port, which the others redial.
//!
//! Every node gets the same settings (`glueberry::NodeSettings`, here from JSON; the
//! `glueberry` command reads the same fields from TOML) except its key and port, and knows
//! every other node as a persistent peer: validators that must stay connected.
//!
//! Run: `cargo run -p glueberry-examples --example cluster [N]` (default 5). It checks its own
//! result: every gossip reaches every node exactly once, also after the restart.

use std::collections::HashSet;
use std::net::SocketAddr;
use std::time::Duration;

use bytes::Bytes;
use glueberry::crypto::Identity;
use glueberry::transport::ConnState;
use glueberry::{Event, EventFilter, Node, NodeSettings, PeerAddr};
use tokio::sync::mpsc;

/// What every node of the cluster shares.
const SETTINGS: &str = r#"{ "network_id": "cluster-demo", "shards": 1,
                            "limits": { "max_inbound": 64, "max_outbound": 64 } }"#;

/// A member: its key (a seed here; a key file in real life) and port.
struct Member {
    seed: [u8; 32],
    addr: SocketAddr,
}

fn free_port() -> std::io::Result<u16> {
    Ok(std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port())
}

/// Starts member `me` with every other member as a persistent peer.
fn start(members: &[Member], me: usize) -> Result<Node, Box<dyn std::error::Error>> {
    let mut settings: NodeSettings = serde_json::from_str(SETTINGS)?;
    settings.listen = members[me].addr;
    settings.persistent_peers = members
        .iter()
        .enumerate()
        .filter(|(i, _)| *i != me)
        .map(|(_, m)| -> Result<PeerAddr, Box<dyn std::error::Error>> {
            let peer = Identity::from_seed(&m.seed).peer_id();
            Ok(format!("{peer}@{}", m.addr).parse()?)
        })
        .collect::<Result<_, _>>()?;
    Ok(Node::start(
        settings.into_config(Identity::from_seed(&members[me].seed))?,
    )?)
}

/// A node's gossip loop: completes handshakes, passes on what it has not seen, reports what it
/// delivers. Ends when the node stops.
async fn gossip(node: Node, delivered: mpsc::UnboundedSender<(usize, Bytes)>, me: usize) {
    let events = node.subscribe(EventFilter::default(), 1024);
    // Peers that reached Connected before we listened: their events are gone, their state is
    // not.
    for (peer, state) in node.connected_peers() {
        if state == ConnState::Connected {
            let _ = node.complete_handshake(peer, &["gossip"]);
        }
    }
    let mut messages = node.messages();
    let mut seen = HashSet::new();
    loop {
        tokio::select! {
            event = events.recv() => match event {
                Some(Event::State { peer, state: ConnState::Connected, .. }) => {
                    let _ = node.complete_handshake(peer, &["gossip"]);
                }
                Some(_) => {}
                None => return,
            },
            message = messages.recv() => {
                let Some(message) = message else { return };
                if seen.insert(message.data.clone()) {
                    let _ = delivered.send((me, message.data.clone()));
                    for (peer, state) in node.connected_peers() {
                        if peer != message.peer && state == ConnState::Established {
                            // Never waits on one peer: one that does not take its
                            // messages misses this one, and the others are not held up.
                            let _ = node.try_send(peer, "gossip", message.data.clone());
                        }
                    }
                }
            }
        }
    }
}

/// Waits until every node has every other Established.
async fn full_mesh(nodes: &[Node]) -> bool {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    loop {
        let done = nodes.iter().all(|n| {
            nodes
                .iter()
                .filter(|m| m.peer_id() != n.peer_id())
                .all(|m| n.state(m.peer_id()) == ConnState::Established)
        });
        if done {
            return true;
        }
        if tokio::time::Instant::now() >= deadline {
            for (i, node) in nodes.iter().enumerate() {
                let states: Vec<String> = nodes
                    .iter()
                    .map(|m| format!("{:?}", node.state(m.peer_id())))
                    .collect();
                eprintln!("node {i}: {states:?}");
            }
            return false;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Node `from` says `text` to its peers; returns which nodes delivered it (each once).
async fn say(
    nodes: &[Node],
    from: usize,
    text: &str,
    delivered: &mut mpsc::UnboundedReceiver<(usize, Bytes)>,
) -> Vec<usize> {
    let data = Bytes::from(text.to_string());
    for (peer, _) in nodes[from].connected_peers() {
        let _ = nodes[from].send(peer, "gossip", data.clone()).await;
    }
    let mut got = vec![0usize; nodes.len()];
    got[from] = 1; // the sender has it
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while got.contains(&0) && tokio::time::Instant::now() < deadline {
        if let Ok(Some((node, message))) =
            tokio::time::timeout(Duration::from_millis(100), delivered.recv()).await
            && message == data
        {
            got[node] += 1;
        }
    }
    // Late duplicates would show here.
    tokio::time::sleep(Duration::from_millis(100)).await;
    while let Ok((node, message)) = delivered.try_recv() {
        if message == data {
            got[node] += 1;
        }
    }
    got
}

#[tokio::main(flavor = "current_thread")]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let n: usize = std::env::args()
        .nth(1)
        .and_then(|a| a.parse().ok())
        .unwrap_or(5);
    let members: Vec<Member> = (0..n)
        .map(|i| -> std::io::Result<Member> {
            let mut seed = [0u8; 32];
            seed[0] = i as u8 + 1;
            Ok(Member {
                seed,
                addr: SocketAddr::from(([127, 0, 0, 1], free_port()?)),
            })
        })
        .collect::<Result<_, _>>()?;
    let (tx, mut delivered) = mpsc::unbounded_channel();
    let mut nodes = Vec::new();
    for i in 0..n {
        let node = start(&members, i)?;
        tokio::spawn(gossip(node.clone(), tx.clone(), i));
        nodes.push(node);
    }
    let meshed = full_mesh(&nodes).await;
    println!("{n} nodes, full mesh: {meshed}");
    let first = say(&nodes, 0, "block 1 from node 0", &mut delivered).await;
    println!("gossip 1 delivered per node: {first:?}");

    // Node 2 dies and comes back with the same key and port; the others redial it.
    let victim = 2 % n;
    nodes[victim].stop().await;
    tokio::time::sleep(Duration::from_millis(200)).await;
    let restarted = start(&members, victim)?;
    tokio::spawn(gossip(restarted.clone(), tx.clone(), victim));
    nodes[victim] = restarted;
    let remeshed = full_mesh(&nodes).await;
    println!("node {victim} killed and restarted, full mesh again: {remeshed}");
    let second = say(&nodes, n - 1, "block 2 from the last node", &mut delivered).await;
    println!("gossip 2 delivered per node: {second:?}");

    for node in &nodes {
        node.stop().await;
    }
    let once = |got: &[usize]| got.iter().all(|&k| k == 1);
    if !(meshed && remeshed && once(&first) && once(&second)) {
        return Err("a node missed a gossip or got it twice, or the mesh did not form".into());
    }
    println!("every gossip reached every node exactly once, before and after the restart");
    Ok(())
}
