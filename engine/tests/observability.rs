//! The metrics and health endpoint over real HTTP, and the exposition checked by promtool.
#![allow(clippy::expect_used, clippy::unwrap_used, clippy::panic)] // test code

mod common;

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::{Duration, Instant};

use bytes::Bytes;
use glueberry::transport::ConnState;
use glueberry::{Event, Node, NodeConfig};

const NET: &str = "observability-test";

/// A one-shard node on loopback with a fresh identity.
fn config() -> NodeConfig {
    common::loopback_config(NET)
}

fn get(addr: SocketAddr, path: &str) -> (u16, String) {
    let mut socket = TcpStream::connect(addr).expect("connect to the endpoint");
    socket
        .set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    write!(
        socket,
        "GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n"
    )
    .unwrap();
    let mut response = String::new();
    socket.read_to_string(&mut response).unwrap();
    let status = response
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .expect("a status line");
    let body = response
        .split_once("\r\n\r\n")
        .map(|(_, b)| b.to_string())
        .unwrap_or_default();
    (status, body)
}

/// The value of the sample whose name and labels contain every part of `want`.
fn sample(exposition: &str, name: &str, labels: &[&str]) -> Option<f64> {
    exposition
        .lines()
        .filter(|l| !l.starts_with('#'))
        .find(|l| {
            l.split(['{', ' ']).next() == Some(name) && labels.iter().all(|want| l.contains(want))
        })
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse().ok())
}

fn establish(a: &Node, b: &Node, streams: &[&str]) {
    a.connect(b.peer_id(), b.listen_addr()).unwrap();
    for node in [a, b] {
        let events = node.events();
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            assert!(Instant::now() < deadline, "no Established");
            match events.recv_blocking().unwrap() {
                Event::State {
                    peer,
                    state: ConnState::Connected,
                    ..
                } => node.complete_handshake(peer, streams).unwrap(),
                Event::State {
                    state: ConnState::Established,
                    ..
                } => break,
                _ => {}
            }
        }
    }
}

#[test]
fn metrics_are_scraped_over_http_and_move_with_traffic() {
    let a = Node::start(config().metrics("127.0.0.1:0".parse().unwrap())).expect("start");
    let b = Node::start(config()).expect("start");
    let addr = a.metrics_addr().expect("the endpoint is on");
    assert!(addr.ip().is_loopback());

    // Alive but not ready: no connection yet.
    let (status, body) = get(addr, "/healthz");
    assert_eq!(status, 200, "{body}");
    let (status, body) = get(addr, "/readyz");
    assert_eq!(status, 503, "{body}");
    let checks: serde_json::Value = serde_json::from_str(&body).expect("JSON checks");
    assert_eq!(checks["ready"], false, "{body}");

    establish(&a, &b, &["consensus", "mempool"]);
    let (consensus, mempool) = (a.stream("consensus"), a.stream("mempool"));
    for i in 0..100u32 {
        a.try_send(b.peer_id(), &consensus, Bytes::from(vec![1u8; 100]))
            .unwrap();
        if i % 2 == 0 {
            a.try_send(b.peer_id(), &mempool, Bytes::from(vec![2u8; 1000]))
                .unwrap();
        }
    }
    b.try_send(
        a.peer_id(),
        &b.stream("consensus"),
        Bytes::from_static(b"pong"),
    )
    .unwrap();
    let mut messages = b.messages();
    for _ in 0..150 {
        messages.recv_blocking().unwrap();
    }
    a.messages().recv_blocking().unwrap();

    let (status, metrics) = get(addr, "/metrics");
    assert_eq!(status, 200);
    let s = |name: &str, labels: &[&str]| {
        sample(&metrics, name, labels).unwrap_or_else(|| panic!("{name} {labels:?} in:\n{metrics}"))
    };
    assert_eq!(
        s(
            "glueberry_stream_messages_sent_total",
            &["stream=\"consensus\""]
        ),
        100.0
    );
    assert_eq!(
        s(
            "glueberry_stream_sent_bytes_total",
            &["stream=\"consensus\""]
        ),
        10_000.0
    );
    assert_eq!(
        s(
            "glueberry_stream_messages_sent_total",
            &["stream=\"mempool\""]
        ),
        50.0
    );
    assert_eq!(
        s("glueberry_stream_sent_bytes_total", &["stream=\"mempool\""]),
        50_000.0
    );
    assert_eq!(
        s(
            "glueberry_stream_messages_received_total",
            &["stream=\"consensus\""]
        ),
        1.0
    );
    assert_eq!(
        s(
            "glueberry_stream_received_bytes_total",
            &["stream=\"consensus\""]
        ),
        4.0
    );
    assert_eq!(s("glueberry_connections", &["state=\"established\""]), 1.0);
    assert_eq!(
        s(
            "glueberry_connection_attempts_total",
            &["result=\"connected\""]
        ),
        1.0
    );
    assert_eq!(s("glueberry_handshake_duration_seconds_count", &[]), 1.0);
    assert!(s("glueberry_streams_active", &[]) >= 2.0);
    assert!(s("glueberry_ring_submissions_total", &[]) > 0.0);
    assert!(s("glueberry_ring_completions_total", &[]) > 0.0);
    assert!(s("glueberry_io_records_per_batch_count", &[]) > 0.0);
    assert!(
        !metrics.contains(&b.peer_id().to_string()),
        "no peer id label"
    );

    let (status, body) = get(addr, "/readyz");
    assert_eq!(status, 200, "{body}");
    let (status, body) = get(addr, "/debug/state");
    assert_eq!(status, 200);
    let state: serde_json::Value = serde_json::from_str(&body).expect("JSON state");
    assert_eq!(state["peers"][0]["peer_id"], b.peer_id().to_string());
    assert_eq!(get(addr, "/nope").0, 404);

    // The exposition is valid Prometheus text, as promtool reads it.
    promtool_check(&metrics);

    // The peer goes away: the gauge follows.
    b.stop();
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let (_, metrics) = get(addr, "/metrics");
        if sample(
            &metrics,
            "glueberry_connections",
            &["state=\"established\""],
        ) == Some(0.0)
        {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "established gauge stuck:\n{metrics}"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    a.stop();
    assert_eq!(a.metrics_addr(), None, "the endpoint stops with the node");
    // Its port is closed (or, if another test's socket took the freed port at once, whatever
    // answers there is not this node's endpoint).
    if let Ok(mut socket) = TcpStream::connect(addr) {
        socket
            .set_read_timeout(Some(Duration::from_secs(1)))
            .unwrap();
        let _ = write!(
            socket,
            "GET /metrics HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n"
        );
        let mut answer = String::new();
        let _ = socket.read_to_string(&mut answer);
        assert!(
            !answer.contains("glueberry_stream"),
            "the endpoint outlived its node"
        );
    }
}

fn promtool_check(metrics: &str) {
    let child = std::process::Command::new("promtool")
        .args(["check", "metrics"])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn();
    let mut child = match child {
        Ok(child) => child,
        Err(e) => {
            // `.ci/run` installs promtool and requires it; elsewhere the check is skipped, loudly.
            assert!(
                std::env::var_os("GLUEBERRY_REQUIRE_PROMTOOL").is_none(),
                "promtool is required here: {e}"
            );
            eprintln!("promtool not installed ({e}): exposition not checked");
            return;
        }
    };
    child
        .stdin
        .take()
        .unwrap()
        .write_all(metrics.as_bytes())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    let report =
        String::from_utf8_lossy(&out.stdout).to_string() + &String::from_utf8_lossy(&out.stderr);
    // promtool exits 0 when only lint warnings are found; errors make it fail.
    assert!(
        out.status.success(),
        "promtool check metrics failed:\n{report}"
    );
    assert!(!report.contains("error"), "promtool:\n{report}");
}

#[test]
fn the_endpoint_is_off_by_default_and_a_taken_port_fails_start() {
    let a = Node::start(config()).expect("start");
    assert_eq!(a.metrics_addr(), None);
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let err =
        Node::start(config().metrics(taken.local_addr().unwrap())).expect_err("the port is taken");
    assert!(err.to_string().contains("metrics endpoint"), "{err}");
    a.stop();
}
