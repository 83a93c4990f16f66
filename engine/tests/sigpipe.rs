//! A host process that does not ignore SIGPIPE (a C program embedding the library, say): peers
//! that reset their connections while the node sends to them must not kill it. Runs in a
//! child process of its own, whose SIGPIPE disposition is reset to the default (terminate).
#![allow(clippy::expect_used, clippy::unwrap_used, clippy::panic)] // test code

mod common;

use std::net::TcpStream;
use std::time::{Duration, Instant};

use bytes::Bytes;
use glueberry::crypto::Identity;
use glueberry::transport::ConnState;
use glueberry::{Node, NodeConfig};

const NET: &str = "sigpipe-test";
const CHILD: &str = "GLUEBERRY_SIGPIPE_CHILD";

#[test]
fn peers_that_reset_mid_send_do_not_raise_sigpipe_in_a_host_that_does_not_ignore_it() {
    if std::env::var(CHILD).is_err() {
        let status = std::process::Command::new(std::env::current_exe().unwrap())
            .args([
                "--exact",
                "peers_that_reset_mid_send_do_not_raise_sigpipe_in_a_host_that_does_not_ignore_it",
                "--nocapture",
            ])
            .env(CHILD, "1")
            .status()
            .unwrap();
        use std::os::unix::process::ExitStatusExt;
        assert_eq!(status.signal(), None, "the child was killed by a signal");
        assert!(status.success(), "the child failed: {status:?}");
        return;
    }
    // SAFETY: the default disposition for SIGPIPE, set once before any thread of ours starts;
    // it is what a C host has.
    unsafe {
        libc::signal(libc::SIGPIPE, libc::SIG_DFL);
    }
    let node = Node::start(
        NodeConfig::new(
            Identity::generate().unwrap(),
            NET,
            "127.0.0.1:0".parse().unwrap(),
        )
        .shards(1),
    )
    .unwrap();
    assert_eq!(
        node.registered_send_buffers(),
        0,
        "no registered-buffer sends where SIGPIPE is not ignored"
    );
    for round in 0..20 {
        let identity = Identity::generate().unwrap();
        let mut conn = common::client_connection(&node, &identity, NET);
        let mut socket = TcpStream::connect(node.listen_addr()).unwrap();
        glueberry::transport::testing::handshake_blocking(&mut conn, &mut socket).unwrap();
        let deadline = Instant::now() + Duration::from_secs(10);
        while node.state(identity.peer_id()) != ConnState::Connected {
            assert!(Instant::now() < deadline, "round {round}: not Connected");
            std::thread::sleep(Duration::from_millis(1));
        }
        // Messages on the handshake stream (open from Connected), then the peer resets.
        let route = node.route(identity.peer_id(), "handshake");
        for _ in 0..64 {
            let _ = node.try_send(
                identity.peer_id(),
                &route,
                Bytes::from(vec![0u8; 16 * 1024]),
            );
        }
        socket2::SockRef::from(&socket)
            .set_linger(Some(Duration::ZERO))
            .unwrap();
        drop(socket); // RST
        std::thread::sleep(Duration::from_millis(20));
    }
    assert!(node.health().live);
    println!("20 peers reset mid-send: the process is alive");
    node.stop_blocking();
}
