//! A miniature validator network on Glueberry (the Go plan's "blockberry"): what a chain's node
//! does with the `Node` API, in one program you can copy.
//!
//! - Four validators of chain `berry-1` and one node of chain `other-2` start (one process
//!   here; one per machine in real life).
//! - On `Connected`, each side sends a **hello** on the `handshake` stream: chain id, version,
//!   height. A peer of another chain is refused (disconnected and blacklisted) before any
//!   stream opens; a peer of ours gets `consensus` (priority 7), `blocksync` (3) and `mempool`
//!   (0).
//! - A transaction is gossiped on `mempool`, a block proposed on `consensus`: each validator
//!   forwards what it has not seen to its other peers (de-duplicated by id), so both reach
//!   everyone.
//! - The fourth validator joins late, says height 0 in its hello, and catches up on
//!   `blocksync` from a peer that is ahead.
//!
//! Run: `cargo run -p glueberry-examples --example blockberry`. It checks its own result and
//! exits non-zero if a validator missed a block or the other chain got in.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use bytes::Bytes;
use glueberry::crypto::{Identity, PeerId};
use glueberry::transport::ConnState;
use glueberry::{Event, EventFilter, Node, NodeConfig};
use tokio::sync::watch;

const NETWORK: &str = "blockberry";
const VERSION: u32 = 1;
const STREAMS: [&str; 3] = ["consensus", "blocksync", "mempool"];

/// What a validator says in its hello: `chain version height`.
fn hello(chain: &str, height: u64) -> Bytes {
    Bytes::from(format!("{chain} {VERSION} {height}"))
}

fn parse_hello(data: &[u8]) -> Option<(String, u32, u64)> {
    let text = std::str::from_utf8(data).ok()?;
    let mut parts = text.split(' ');
    let chain = parts.next()?.to_string();
    Some((
        chain,
        parts.next()?.parse().ok()?,
        parts.next()?.parse().ok()?,
    ))
}

/// A block: its height and a payload; its id is the bytes themselves here (a hash in a chain).
fn block(height: u64, payload: &str) -> Bytes {
    Bytes::from(format!("{height} {payload}"))
}

fn height_of(block: &[u8]) -> u64 {
    std::str::from_utf8(block)
        .ok()
        .and_then(|t| t.split(' ').next()?.parse().ok())
        .unwrap_or(0)
}

/// One validator: its node and its chain state.
struct Validator {
    name: &'static str,
    chain: &'static str,
    node: Node,
    /// Blocks by height.
    blocks: HashMap<u64, Bytes>,
    /// Transactions seen.
    mempool: HashSet<Bytes>,
    /// Peers of our chain, Established.
    peers: HashSet<PeerId>,
    /// The height each peer said in its hello, until its streams are open.
    said: HashMap<PeerId, u64>,
    /// Blocks and transactions stored, by all validators (for `main` to wait on).
    stored: Arc<AtomicUsize>,
    /// Events and hellos, asked for as soon as the node runs: what arrives before anyone
    /// listens goes elsewhere (events are not replayed; hellos would go to `messages()`).
    listening: Option<(glueberry::Subscription, glueberry::Messages)>,
}

impl Validator {
    fn start(
        name: &'static str,
        chain: &'static str,
        stored: Arc<AtomicUsize>,
    ) -> Result<Self, Box<dyn std::error::Error>> {
        let config = NodeConfig::new(Identity::generate()?, NETWORK, "127.0.0.1:0".parse()?)
            .shards(1)
            .stream_priority("consensus", 7)
            .stream_priority("blocksync", 3)
            .stream_priority("mempool", 0);
        let node = Node::start(config)?;
        let events = node.subscribe(EventFilter::default(), 1024);
        let hellos = node.messages_on("handshake")?;
        Ok(Self {
            listening: Some((events, hellos)),
            name,
            chain,
            node,
            blocks: HashMap::new(),
            mempool: HashSet::new(),
            peers: HashSet::new(),
            said: HashMap::new(),
            stored,
        })
    }

    fn height(&self) -> u64 {
        self.blocks.keys().max().copied().unwrap_or(0)
    }

    /// Sends `data` on `stream` to every peer but `except`.
    async fn gossip(&self, stream: &str, data: &Bytes, except: Option<PeerId>) {
        for &peer in &self.peers {
            if Some(peer) != except {
                // A peer that left meanwhile is not an error for gossip, and one that does not
                // take its messages misses this one: `try_send` never waits on one peer, so a
                // stalled peer does not hold up the validator's loop for the others.
                let _ = self.node.try_send(peer, stream, data.clone());
            }
        }
    }

    /// Runs until `stop` turns true; what it proposes comes on `propose`.
    async fn run(
        mut self,
        mut propose: tokio::sync::mpsc::Receiver<(&'static str, Bytes)>,
        mut stop: watch::Receiver<bool>,
    ) -> Result<Self, glueberry::NodeSendError> {
        let Some((events, mut handshake)) = self.listening.take() else {
            return Ok(self);
        };
        let mut messages = self.node.messages();
        loop {
            tokio::select! {
                _ = stop.changed() => break,
                Some((stream, data)) = propose.recv() => {
                    if stream == "consensus" {
                        self.blocks.insert(height_of(&data), data.clone());
                    } else {
                        self.mempool.insert(data.clone());
                    }
                    self.stored.fetch_add(1, Ordering::Relaxed);
                    self.gossip(stream, &data, None).await;
                }
                Some(event) = events.recv() => match event {
                    Event::State { peer, state: ConnState::Connected, .. } => {
                        // Our hello first; the streams open when theirs checks out.
                        let _ = self.node.try_send(peer, "handshake", hello(self.chain, self.height()));
                    }
                    Event::State { peer, state: ConnState::Established, .. } => {
                        self.peers.insert(peer);
                        // Streams are open on both sides: a peer behind us catches up on
                        // blocksync.
                        let height = self.said.remove(&peer).unwrap_or(0);
                        let behind: Vec<Bytes> = (height + 1..=self.height())
                            .filter_map(|h| self.blocks.get(&h).cloned())
                            .collect();
                        // The catch-up is a task of its own, waiting for room as `send` does:
                        // a peer that takes it slowly holds up only itself, not this loop.
                        let node = self.node.clone();
                        tokio::spawn(async move {
                            for block in behind {
                                if node.send(peer, "blocksync", block).await.is_err() {
                                    break;
                                }
                            }
                        });
                    }
                    Event::State { peer, state: ConnState::Disconnected, .. } => {
                        self.peers.remove(&peer);
                    }
                    _ => {}
                },
                Some(message) = handshake.recv() => {
                    let peer = message.peer;
                    match parse_hello(&message.data) {
                        Some((chain, VERSION, height)) if chain == self.chain => {
                            self.said.insert(peer, height);
                            let _ = self.node.complete_handshake(peer, &STREAMS);
                        }
                        other => {
                            println!("{}: refused {peer}: hello {other:?}", self.name);
                            let _ = self.node.blacklist(peer);
                        }
                    }
                }
                Some(message) = messages.recv() => {
                    let data = message.data;
                    match &*message.stream {
                        "consensus" | "blocksync" => {
                            let slot = self.blocks.entry(height_of(&data));
                            if let std::collections::hash_map::Entry::Vacant(slot) = slot {
                                slot.insert(data.clone());
                                self.stored.fetch_add(1, Ordering::Relaxed);
                                if &*message.stream == "consensus" {
                                    self.gossip("consensus", &data, Some(message.peer)).await;
                                }
                            }
                        }
                        // New to us: store and pass on.
                        "mempool" if self.mempool.insert(data.clone()) => {
                            self.stored.fetch_add(1, Ordering::Relaxed);
                            self.gossip("mempool", &data, Some(message.peer)).await;
                        }
                        _ => {}
                    }
                }
            }
        }
        Ok(self)
    }
}

/// Polls `check` until it holds or `within` passes.
async fn until(within: Duration, mut check: impl FnMut() -> bool) -> bool {
    let deadline = tokio::time::Instant::now() + within;
    while !check() {
        if tokio::time::Instant::now() >= deadline {
            return false;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    true
}

#[tokio::main(flavor = "current_thread")]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let names = ["alice", "bob", "carol", "dave"];
    let stored = Arc::new(AtomicUsize::new(0));
    let mut validators = Vec::new();
    for name in names {
        validators.push(Validator::start(name, "berry-1", stored.clone())?);
    }
    let stranger = Validator::start("mallory", "other-2", stored.clone())?;
    let nodes: Vec<Node> = validators.iter().map(|v| v.node.clone()).collect();
    let mallory = stranger.node.clone();

    // Every validator task gets a proposal channel; all share one stop signal.
    let (stop_tx, stop_rx) = watch::channel(false);
    let mut proposers = Vec::new();
    let mut tasks = Vec::new();
    for v in validators.into_iter().chain([stranger]) {
        let (tx, rx) = tokio::sync::mpsc::channel(16);
        proposers.push(tx);
        tasks.push(tokio::spawn(v.run(rx, stop_rx.clone())));
    }

    // alice, bob and carol in a ring (alice–bob, bob–carol, carol–alice); mallory dials alice.
    nodes[0].connect(nodes[1].peer_id(), nodes[1].listen_addr())?;
    nodes[1].connect(nodes[2].peer_id(), nodes[2].listen_addr())?;
    nodes[2].connect(nodes[0].peer_id(), nodes[0].listen_addr())?;
    mallory.connect(nodes[0].peer_id(), nodes[0].listen_addr())?;
    let established = |a: &Node, b: &Node| a.state(b.peer_id()) == ConnState::Established;
    let ring = until(Duration::from_secs(10), || {
        established(&nodes[0], &nodes[1])
            && established(&nodes[1], &nodes[2])
            && established(&nodes[2], &nodes[0])
    })
    .await;
    println!("ring of three established: {ring}");

    // A transaction from carol and a block from alice travel the ring.
    proposers[2]
        .send(("mempool", Bytes::from_static(b"tx: carol pays bob 5")))
        .await?;
    proposers[0]
        .send(("consensus", block(1, "proposed by alice")))
        .await?;
    // Three validators store the transaction and the block.
    let spread = until(Duration::from_secs(10), || {
        stored.load(Ordering::Relaxed) >= 6
    })
    .await;
    println!("transaction and block 1 reached the ring: {spread}");

    // dave joins late, at height 0, through bob only: blocksync brings block 1.
    nodes[3].connect(nodes[1].peer_id(), nodes[1].listen_addr())?;
    let joined = until(Duration::from_secs(10), || {
        established(&nodes[3], &nodes[1])
    })
    .await;
    println!("dave joined: {joined}");
    proposers[1]
        .send(("consensus", block(2, "proposed by bob")))
        .await?;
    // dave stores block 1 (blocksync) and block 2; the other three block 2.
    let caught_up = until(Duration::from_secs(10), || {
        stored.load(Ordering::Relaxed) >= 11
    })
    .await;
    println!("block 2 everywhere, dave caught up: {caught_up}");
    // Anything more (a duplicate, the other chain's) would show in the checks below.
    tokio::time::sleep(Duration::from_millis(100)).await;

    stop_tx.send(true)?;
    let mut finished = Vec::new();
    for task in tasks {
        finished.push(task.await??);
    }
    let mut ok = ring && joined && spread && caught_up;
    for v in &finished {
        let heights: Vec<u64> = {
            let mut h: Vec<u64> = v.blocks.keys().copied().collect();
            h.sort();
            h
        };
        println!(
            "{:8} chain {:8} blocks {:?} mempool {} peers {}",
            v.name,
            v.chain,
            heights,
            v.mempool.len(),
            v.peers.len()
        );
        if v.chain == "berry-1" {
            ok &= heights == [1, 2];
            // dave joined after the transaction was gossiped (no mempool sync here).
            ok &= v.name == "dave" || v.mempool.len() == 1;
        } else {
            ok &= v.blocks.is_empty() && v.peers.is_empty();
        }
    }
    ok &= mallory.state(nodes[0].peer_id()) != ConnState::Established;
    for v in &finished {
        v.node.stop().await;
    }
    if !ok {
        return Err("a validator missed a block, or the other chain got in".into());
    }
    println!("every berry-1 validator has blocks 1 and 2; other-2 was refused");
    Ok(())
}
