//! A validator network from the chain's point of view: peer sets by epoch, members only, and
//! discovery from two bootstrap addresses.
//!
//! Twenty nodes. Epoch 1's set is nodes 0–14; every member knows only nodes 0 and 1's addresses
//! (the bootstraps) and finds the others from their signed address records. Node 19 is never a
//! member: it dials node 0 and is refused in the handshake (HelloReject 0x04,
//! `DialFailure::NotMember`) before its signature is even checked.
//! Epoch 2 rotates 11–14 out and 15–18 in: the leavers are cut after the grace, the joiners
//! meshed. Then member 5 restarts on another port with the same key, and the others find it
//! at its new address from its new record.
//!
//! Run: `cargo run -p glueberry-examples --example validators`. It checks its own result (exit
//! status) and prints how long each step took.

use std::time::{Duration, Instant};

use glueberry::crypto::Identity;
use glueberry::transport::ConnState;
use glueberry::{
    AddressSource, DialFailure, Event, EventFilter, Member, MembersConfig, MembershipPolicy, Node,
    NodeConfig,
};

const NETWORK: &str = "validators-demo";
const NODES: usize = 20;
const BOOTSTRAPS: usize = 2;

type Error = Box<dyn std::error::Error>;

/// A validator's node: members only; one kept epoch, so a rotation takes effect at once (a real
/// chain keeps the default 3, to stay connected across the change); leavers get 500 ms.
fn start(identity: &Identity) -> Result<Node, Error> {
    let config = NodeConfig::new(identity.clone(), NETWORK, "127.0.0.1:0".parse()?)
        .shards(1)
        .members(MembersConfig {
            policy: MembershipPolicy::MembersOnly,
            keep_epochs: 1,
            grace: Duration::from_millis(500),
            ..MembersConfig::default()
        });
    let node = Node::start(config)?;
    tokio::spawn(application(node.clone()));
    Ok(node)
}

/// What every validator runs: open the consensus stream with each peer that connects.
async fn application(node: Node) {
    let events = node.subscribe(EventFilter::all(), 4096);
    for (peer, state) in node.connected_peers() {
        if state == ConnState::Connected {
            let _ = node.complete_handshake(peer, &["consensus"]);
        }
    }
    while let Some(event) = events.recv().await {
        if let Event::State {
            peer,
            state: ConnState::Connected,
            ..
        } = event
        {
            let _ = node.complete_handshake(peer, &["consensus"]);
        }
    }
}

/// The set the chain names: bootstraps with their addresses, the rest by key alone.
fn peer_set(ids: &[Identity], nodes: &[Option<Node>], members: &[usize]) -> Vec<Member> {
    members
        .iter()
        .map(|&i| match (&nodes[i], i < BOOTSTRAPS) {
            (Some(node), true) => Member::at(ids[i].peer_id(), node.listen_addr()),
            _ => Member::new(ids[i].peer_id()),
        })
        .collect()
}

/// Waits until every pair of `members` is Ready on both sides.
async fn full_mesh(
    nodes: &[Option<Node>],
    ids: &[Identity],
    members: &[usize],
) -> Result<Duration, Error> {
    let started = Instant::now();
    loop {
        let meshed = members.iter().all(|&i| {
            members.iter().all(|&j| {
                i == j
                    || nodes[i]
                        .as_ref()
                        .is_some_and(|node| node.is_ready(ids[j].peer_id()))
            })
        });
        if meshed {
            return Ok(started.elapsed());
        }
        if started.elapsed() > Duration::from_secs(30) {
            return Err("no full mesh within 30 s".into());
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

#[tokio::main(flavor = "current_thread")]
async fn main() -> Result<(), Error> {
    let ids: Vec<Identity> = (0..NODES)
        .map(|_| Identity::generate())
        .collect::<Result<_, _>>()?;
    let mut nodes: Vec<Option<Node>> = Vec::new();
    for id in &ids {
        nodes.push(Some(start(id)?));
    }

    // Epoch 1: nodes 0..15.
    let epoch1: Vec<usize> = (0..15).collect();
    let set = peer_set(&ids, &nodes, &epoch1);
    for &i in &epoch1 {
        nodes[i].as_ref().ok_or("node")?.track(1, set.clone())?;
    }
    let took = full_mesh(&nodes, &ids, &epoch1).await?;
    println!("epoch 1: 15 members, 2 bootstrap addresses: full mesh in {took:?}");
    let learned = nodes[14]
        .as_ref()
        .ok_or("node")?
        .members()
        .iter()
        .filter(|m| m.source == AddressSource::Record)
        .count();
    println!("  member 14 learned {learned} addresses from records");
    if learned < 10 {
        return Err("member 14 found too few members by their records".into());
    }

    // A stranger (node 19, a valid identity) dials member 0 and is refused.
    let stranger = nodes[19].as_ref().ok_or("node")?;
    let told = stranger.subscribe(EventFilter::all().peer(ids[0].peer_id()), 64);
    stranger.connect(
        ids[0].peer_id(),
        nodes[0].as_ref().ok_or("node")?.listen_addr(),
    )?;
    let reason = loop {
        match told.recv().await {
            Some(Event::State {
                reason: Some(reason),
                ..
            }) => break reason,
            Some(_) => {}
            None => return Err("no answer to the stranger".into()),
        }
    };
    // Refused in the handshake, on the identity it claimed (HelloReject 0x04).
    if DialFailure::from_reason(Some(&reason)) != DialFailure::NotMember {
        return Err(format!("the stranger was told {reason:?}").into());
    }
    stranger.disconnect(ids[0].peer_id())?;
    println!("stranger refused: {}", DialFailure::NotMember);

    // Epoch 2: 11..15 out, 15..19 in.
    let epoch2: Vec<usize> = (0..11).chain(15..19).collect();
    let set = peer_set(&ids, &nodes, &epoch2);
    let started = Instant::now();
    for i in (0..19).filter(|i| epoch1.contains(i) || epoch2.contains(i)) {
        nodes[i].as_ref().ok_or("node")?.track(2, set.clone())?;
    }
    let took = full_mesh(&nodes, &ids, &epoch2).await?;
    println!("epoch 2: 4 out, 4 in: joiners meshed in {took:?}");
    loop {
        let cut = epoch2.iter().all(|&i| {
            (11..15).all(|leaver| {
                nodes[i]
                    .as_ref()
                    .is_some_and(|n| n.state(ids[leaver].peer_id()) == ConnState::Disconnected)
            })
        });
        if cut {
            break;
        }
        if started.elapsed() > Duration::from_secs(30) {
            return Err("the leavers were not cut".into());
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    println!(
        "  leavers cut after the grace: {:?} after the change",
        started.elapsed()
    );

    // Member 5 restarts on another port with the same key.
    let old = nodes[5].take().ok_or("node")?;
    let old_addr = old.listen_addr();
    old.stop().await;
    let moved = start(&ids[5])?;
    let new_addr = moved.listen_addr();
    moved.track(2, set.clone())?;
    nodes[5] = Some(moved);
    let started = Instant::now();
    // Its new record reaches every member (from it, or passed on by the others), and every
    // member is connected to it again.
    loop {
        let found = epoch2
            .iter()
            .filter(|&&i| i != 5)
            .filter_map(|&i| nodes[i].as_ref())
            .all(|n| {
                n.members()
                    .iter()
                    .any(|m| m.peer == ids[5].peer_id() && m.address == Some(new_addr) && m.ready)
            });
        if found {
            break;
        }
        if started.elapsed() > Duration::from_secs(30) {
            for &i in &epoch2 {
                if let Some(n) = nodes[i].as_ref() {
                    let m = n.members().into_iter().find(|m| m.peer == ids[5].peer_id());
                    eprintln!("node {i}: {m:?} counts {:?}", n.record_counts());
                }
            }
            return Err("not every member learned member 5's new address".into());
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let took = full_mesh(&nodes, &ids, &epoch2).await?;
    println!(
        "member 5 moved {old_addr} -> {new_addr}: every member has its new record and is \
         connected to it after {:?} (full mesh checked in {took:?})",
        started.elapsed()
    );

    for node in nodes.into_iter().flatten() {
        node.stop().await;
    }
    println!("validators: ok");
    Ok(())
}
