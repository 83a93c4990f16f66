//! Several nodes in one process (a test suite, a node and its light client) must not pin all
//! their shards to the first CPU. Alone in its binary: it reads every thread's affinity.
#![allow(clippy::expect_used, clippy::unwrap_used, clippy::panic)] // test code

use std::collections::BTreeSet;

use glueberry::crypto::Identity;
use glueberry::{Node, NodeConfig};

/// The CPUs each live shard thread of this process may run on.
fn shard_affinities() -> Vec<String> {
    let mut out = Vec::new();
    for task in std::fs::read_dir("/proc/self/task").unwrap() {
        let path = task.unwrap().path();
        let comm = std::fs::read_to_string(path.join("comm")).unwrap_or_default();
        if !comm.trim().starts_with("glueberry-shard") {
            continue;
        }
        let status = std::fs::read_to_string(path.join("status")).unwrap_or_default();
        if let Some(list) = status
            .lines()
            .find_map(|l| l.strip_prefix("Cpus_allowed_list:"))
        {
            out.push(list.trim().to_string());
        }
    }
    out
}

#[test]
fn three_one_shard_nodes_in_one_process_spread_over_the_cpus() {
    let cpus = std::thread::available_parallelism().map_or(1, usize::from);
    let nodes: Vec<Node> = (0..3)
        .map(|_| {
            Node::start(
                NodeConfig::new(
                    Identity::generate().unwrap(),
                    "affinity",
                    "127.0.0.1:0".parse().unwrap(),
                )
                .shards(1),
            )
            .unwrap()
        })
        .collect();
    let pinned = shard_affinities();
    let distinct: BTreeSet<&String> = pinned.iter().collect();
    println!("{cpus} CPUs; shard threads pinned to {pinned:?}");
    assert_eq!(pinned.len(), 3);
    assert_eq!(
        distinct.len(),
        3.min(cpus),
        "each node's shard on its own CPU while CPUs last"
    );
    for node in &nodes {
        node.stop_blocking();
    }
}
