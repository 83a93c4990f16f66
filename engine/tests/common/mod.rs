//! What the integration tests share: measures of their own process, nodes on loopback, waits.
#![allow(dead_code, clippy::unwrap_used)] // each test binary uses a part

pub(crate) mod raw;

/// Resident memory of this process, in KiB.
pub(crate) fn rss_kib() -> u64 {
    status_field("VmRSS:")
}

/// Data segment (heap and anonymous mappings, touched or not) of this process, in KiB: what a
/// buffer kept alive costs in address space even where its pages were never written.
pub(crate) fn vm_data_kib() -> u64 {
    status_field("VmData:")
}

/// Runs the calling test alone among the tests of its binary that also call it (they measure
/// the whole process: threads, memory).
pub(crate) fn alone() -> std::sync::MutexGuard<'static, ()> {
    static ALONE: std::sync::Mutex<()> = std::sync::Mutex::new(());
    ALONE.lock().unwrap_or_else(|p| p.into_inner())
}

/// Threads of this process.
pub(crate) fn thread_count() -> u64 {
    status_field("Threads:")
}

fn status_field(name: &str) -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .unwrap()
        .lines()
        .find_map(|l| l.strip_prefix(name))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap()
}

/// Any free port on 127.0.0.1.
pub(crate) fn any_port() -> std::net::SocketAddr {
    "127.0.0.1:0".parse().unwrap()
}

/// A one-shard node's config on loopback (any free port) with a fresh identity.
pub(crate) fn loopback_config(network: &str) -> glueberry::NodeConfig {
    glueberry::NodeConfig::new(
        glueberry::crypto::Identity::generate().unwrap(),
        network,
        any_port(),
    )
    .shards(1)
}

/// The transport core of a client about to dial `node` as `identity` on `network`: run its
/// secure handshake over any blocking socket with
/// `glueberry::transport::testing::handshake_blocking`.
pub(crate) fn client_connection(
    node: &glueberry::Node,
    identity: &glueberry::crypto::Identity,
    network: &str,
) -> glueberry::transport::Connection {
    let handshake =
        std::sync::Arc::new(glueberry::crypto::HandshakeConfig::new(identity, network).unwrap());
    glueberry::transport::Connection::outbound(
        std::sync::Arc::new(glueberry::transport::ConnectionConfig::default()),
        handshake,
        Some(node.peer_id()),
        std::time::Instant::now(),
    )
    .unwrap()
}

/// The node still does its job: an honest peer on `network` connects and exchanges a message.
pub(crate) fn still_serves(node: &glueberry::Node, network: &str) {
    let timeout = std::time::Duration::from_secs(10);
    let honest = glueberry::Node::start(loopback_config(network)).unwrap();
    glueberry::testing::establish(&honest, node, &["consensus"], timeout)
        .expect("an honest peer still connects");
    honest
        .try_send(
            node.peer_id(),
            &honest.stream("consensus"),
            bytes::Bytes::from_static(b"ok"),
        )
        .unwrap();
    let message = glueberry::testing::expect_message(node, timeout).unwrap();
    assert_eq!(&message.data[..], b"ok");
    honest.stop_blocking();
}

/// A node on loopback with `shards` shards and room for many messages and events.
pub(crate) fn start_node(network: &str, shards: usize) -> glueberry::Node {
    glueberry::Node::start(
        loopback_config(network)
            .shards(shards)
            .message_buffer(100_000)
            .event_buffer(10_000),
    )
    .expect("start")
}

/// Waits for an event matching `want` on `node`, answering Connected with complete_handshake.
pub(crate) fn wait_for(
    node: &glueberry::Node,
    streams: &[&str],
    timeout: std::time::Duration,
    mut want: impl FnMut(&glueberry::Event) -> bool,
) -> bool {
    let deadline = std::time::Instant::now() + timeout;
    let events = node.events();
    while std::time::Instant::now() < deadline {
        match events.try_recv() {
            Some(event) => {
                if let glueberry::Event::State {
                    peer,
                    state: glueberry::transport::ConnState::Connected,
                    ..
                } = &event
                {
                    node.complete_handshake(*peer, streams).unwrap();
                }
                if want(&event) {
                    return true;
                }
            }
            None => std::thread::sleep(std::time::Duration::from_millis(1)),
        }
    }
    false
}

/// Matches `peer` becoming Established.
pub(crate) fn established(
    peer: glueberry::crypto::PeerId,
) -> impl FnMut(&glueberry::Event) -> bool {
    move |e| matches!(e, glueberry::Event::State { peer: p, state: glueberry::transport::ConnState::Established, .. } if *p == peer)
}
