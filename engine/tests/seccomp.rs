//! A node where io_uring is blocked as Docker's default seccomp profile blocks it: the child
//! process below installs a filter that makes `io_uring_setup`, `io_uring_enter` and
//! `io_uring_register` fail with EPERM, starts a node with the default backend (`Auto`), and
//! must come up on the poll backend and exchange messages both ways with an io_uring node in
//! the parent.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use bytes::Bytes;
use glueberry::crypto::{Identity, PeerId};
use glueberry::transport::ConnState;
use glueberry::{Backend, Event, Node, NodeConfig};

const NET: &str = "seccomp-test";
const MESSAGES: u32 = 1000;
const T: Duration = Duration::from_secs(20);

fn config() -> NodeConfig {
    NodeConfig::new(
        Identity::generate().unwrap(),
        NET,
        "127.0.0.1:0".parse().unwrap(),
    )
    .shards(2)
}

/// What Docker's default profile does to io_uring (moby/moby#46762): EPERM, for every thread.
fn block_io_uring() {
    use seccompiler::{SeccompAction, SeccompFilter, TargetArch};
    let rules = [
        libc::SYS_io_uring_setup,
        libc::SYS_io_uring_enter,
        libc::SYS_io_uring_register,
    ]
    .into_iter()
    .map(|nr| (nr, vec![]))
    .collect();
    let arch: TargetArch = std::env::consts::ARCH.try_into().unwrap();
    let filter = SeccompFilter::new(
        rules,
        SeccompAction::Allow,
        SeccompAction::Errno(libc::EPERM as u32),
        arch,
    )
    .unwrap();
    let program: seccompiler::BpfProgram = filter.try_into().unwrap();
    seccompiler::apply_filter_all_threads(&program).unwrap();
}

/// Completes the application handshake of every peer that reaches Connected; returns the
/// first that reaches Established.
fn first_established(node: &Node, streams: &[&str]) -> PeerId {
    let deadline = Instant::now() + T;
    let events = node.events();
    loop {
        assert!(Instant::now() < deadline, "not Established within {T:?}");
        while let Some(event) = events.try_recv() {
            match event {
                Event::State {
                    peer,
                    state: ConnState::Connected,
                    ..
                } => node.complete_handshake(peer, streams).unwrap(),
                Event::State {
                    peer,
                    state: ConnState::Established,
                    ..
                } => return peer,
                _ => {}
            }
        }
        std::thread::sleep(Duration::from_millis(1));
    }
}

/// The child: io_uring blocked, a node on `Auto`, echoing what the parent sends.
fn child() {
    block_io_uring();
    let refused = io_uring::IoUring::new(8)
        .err()
        .and_then(|e| e.raw_os_error());
    assert_eq!(
        refused,
        Some(libc::EPERM),
        "the filter blocks io_uring_setup"
    );
    let node = Node::start(config().backend(Backend::Auto)).expect("starts without io_uring");
    println!("BACKEND {}", node.backend());
    println!("PEER {} {}", node.peer_id(), node.listen_addr());
    let parent = first_established(&node, &["s"]);
    let s = node.stream("s");
    for _ in 0..MESSAGES {
        let message = glueberry::testing::expect_message(&node, T).unwrap();
        futures::executor::block_on(node.send(parent, &s, message.data)).unwrap();
    }
    // Stay until the parent has its echoes (it closes the connection).
    glueberry::testing::wait_for_state(&node, parent, ConnState::Disconnected, T).ok();
    node.stop_blocking();
    println!("CHILD DONE");
}

#[test]
fn a_node_under_a_seccomp_filter_that_blocks_io_uring_runs_on_poll_and_talks_to_io_uring() {
    if std::env::var("GLUEBERRY_CHILD").as_deref() == Ok("seccomp") {
        return child();
    }
    let mut process = std::process::Command::new(std::env::current_exe().unwrap())
        .args([
            "--exact",
            "a_node_under_a_seccomp_filter_that_blocks_io_uring_runs_on_poll_and_talks_to_io_uring",
            "--nocapture",
            "--test-threads=1",
        ])
        .env("GLUEBERRY_CHILD", "seccomp")
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let mut lines = BufReader::new(process.stdout.take().unwrap()).lines();
    let mut backend = None;
    let (peer, addr) = loop {
        let line = lines.next().expect("child output").unwrap();
        // libtest may print "test <name> ... " before it on the same line.
        if let Some(rest) = line.split("BACKEND ").nth(1) {
            backend = Some(rest.trim().to_string());
        }
        if let Some(rest) = line.split("PEER ").nth(1) {
            let mut parts = rest.split_whitespace();
            let peer: PeerId = parts.next().unwrap().parse().unwrap();
            let addr: SocketAddr = parts.next().unwrap().parse().unwrap();
            break (peer, addr);
        }
    };
    assert_eq!(
        backend.as_deref(),
        Some("poll"),
        "Auto chose the poll backend"
    );

    let node = Node::start(config().backend(Backend::IoUring)).expect("io_uring in the parent");
    node.connect(peer, addr).unwrap();
    assert_eq!(first_established(&node, &["s"]), peer);
    let s = node.stream("s");
    for i in 0..MESSAGES {
        futures::executor::block_on(node.send(peer, &s, Bytes::from(i.to_be_bytes().to_vec())))
            .unwrap();
    }
    for i in 0..MESSAGES {
        let echo = glueberry::testing::expect_message(&node, T).unwrap();
        assert_eq!(echo.peer, peer);
        assert_eq!(&echo.data[..], &i.to_be_bytes(), "echoes in order");
    }
    node.disconnect(peer).unwrap();
    let rest: Vec<String> = lines.map_while(Result::ok).collect();
    let status = process.wait().unwrap();
    assert!(status.success(), "child failed: {rest:?}");
    assert!(rest.iter().any(|l| l.contains("CHILD DONE")), "{rest:?}");
    println!(
        "seccomp child on {}: {MESSAGES} messages echoed in order to an io_uring node",
        backend.unwrap()
    );
    node.stop_blocking();
}
