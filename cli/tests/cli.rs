//! The `glueberry` command end to end, as a user runs it: two keys, two nodes from TOML files
//! (the second dials the first by name), the first's status, a ping, SIGTERM.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

const BIN: &str = env!("CARGO_BIN_EXE_glueberry");

fn run(dir: &Path, args: &[&str]) -> Output {
    Command::new(BIN)
        .current_dir(dir)
        .args(args)
        .output()
        .unwrap()
}

fn stdout(output: &Output) -> String {
    assert!(
        output.status.success(),
        "failed: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8(output.stdout.clone()).unwrap()
}

/// `glueberry keygen --out FILE`: the new identity's peer id.
fn keygen(dir: &Path, file: &str) -> String {
    stdout(&run(dir, &["keygen", "--out", file]))
        .trim()
        .to_string()
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// Starts `glueberry node --config file` and reads its first line: "ID ADDR BACKEND".
fn start_node(dir: &Path, file: &str) -> (Child, Vec<String>) {
    let mut child = Command::new(BIN)
        .current_dir(dir)
        .args(["node", "--config", file])
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let mut line = String::new();
    BufReader::new(child.stdout.take().unwrap())
        .read_line(&mut line)
        .unwrap();
    (child, line.split_whitespace().map(String::from).collect())
}

fn terminate(mut child: Child) {
    // SAFETY: sends SIGTERM to our own child process, which has not been reaped yet.
    unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
    let status = child.wait().unwrap();
    assert!(
        status.success(),
        "a node exits cleanly on SIGTERM: {status}"
    );
}

#[test]
fn keygen_two_nodes_from_toml_status_and_ping() {
    let dir = tempfile::tempdir().unwrap();
    let dir = dir.path();
    let a = keygen(dir, "a.key");
    let b = keygen(dir, "b.key");
    assert!(a.starts_with("gbp1") && b.starts_with("gbp1") && a != b);
    assert_eq!(stdout(&run(dir, &["id", "--key", "a.key"])).trim(), a);
    assert!(
        !run(dir, &["keygen", "--out", "a.key"]).status.success(),
        "an existing key is not overwritten"
    );

    let (port_a, port_b, metrics) = (free_port(), free_port(), free_port());
    std::fs::write(
        dir.join("a.toml"),
        format!(
            "key = \"a.key\"\nstreams = [\"consensus\"]\n\n[node]\nnetwork_id = \"cli-test\"\n\
             listen = \"127.0.0.1:{port_a}\"\nshards = 1\nmetrics = \"127.0.0.1:{metrics}\"\n\
             debug_state_endpoint = true\n"
        ),
    )
    .unwrap();
    std::fs::write(
        dir.join("b.toml"),
        format!(
            "key = \"b.key\"\nstreams = [\"consensus\"]\n\n[node]\nnetwork_id = \"cli-test\"\n\
             listen = \"127.0.0.1:{port_b}\"\nshards = 1\npeers = [\"{a}@localhost:{port_a}\"]\n"
        ),
    )
    .unwrap();
    let (node_a, line_a) = start_node(dir, "a.toml");
    assert_eq!(line_a[0], a);
    assert_eq!(line_a[1], format!("127.0.0.1:{port_a}"));
    let (node_b, line_b) = start_node(dir, "b.toml");
    assert_eq!(line_b[0], b);

    // A's status shows B, which dialled it by name, Established.
    let endpoint = format!("127.0.0.1:{metrics}");
    let deadline = Instant::now() + Duration::from_secs(20);
    let status = loop {
        let output = run(dir, &["status", "--endpoint", &endpoint]);
        let text = String::from_utf8_lossy(&output.stdout).to_string();
        if output.status.success() && text.contains(&b) && text.contains("Established") {
            break text;
        }
        assert!(Instant::now() < deadline, "B never Established: {text}");
        std::thread::sleep(Duration::from_millis(100));
    };
    assert!(status.contains("health (200)"), "{status}");
    // The same as one JSON object, for scripts.
    let json: serde_json::Value = serde_json::from_str(&stdout(&run(
        dir,
        &["status", "--endpoint", &endpoint, "--json"],
    )))
    .unwrap();
    assert_eq!(json["health_code"], 200, "{json}");
    assert!(json["state"].to_string().contains(&b), "{json}");

    // A ping from a throwaway identity, by IP this time.
    let ping = stdout(&run(
        dir,
        &[
            "ping",
            &format!("{a}@127.0.0.1:{port_a}"),
            "--network",
            "cli-test",
            "--count",
            "3",
        ],
    ));
    assert!(ping.contains("seq=2"), "{ping}");
    assert!(ping.contains("3 replies"), "{ping}");
    let json: serde_json::Value = serde_json::from_str(&stdout(&run(
        dir,
        &[
            "ping",
            &format!("{a}@127.0.0.1:{port_a}"),
            "--network",
            "cli-test",
            "--count",
            "4",
            "--json",
        ],
    )))
    .unwrap();
    assert_eq!(json["rtt_us"].as_array().unwrap().len(), 4, "{json}");
    let (min, max) = (
        json["min_us"].as_f64().unwrap(),
        json["max_us"].as_f64().unwrap(),
    );
    assert!(0.0 < min && min <= max, "{json}");
    // A wrong network, a wrong peer id and a closed port: ping fails at once and names each
    // cause, in words and in --json.
    let closed = free_port();
    let stranger = keygen(dir, "stranger.key");
    let cases = [
        (
            format!("{a}@127.0.0.1:{port_a}"),
            "other-chain",
            "wrong_network",
            "another network",
        ),
        (
            format!("{stranger}@127.0.0.1:{port_a}"),
            "cli-test",
            "wrong_peer",
            "answered",
        ),
        (
            format!("{a}@127.0.0.1:{closed}"),
            "cli-test",
            "refused",
            "connection refused",
        ),
    ];
    for (target, network, name, words) in cases {
        let ping = |json: bool| {
            let mut args = vec!["ping", &target, "--network", network, "--count", "1"];
            args.extend(["--timeout", "5"]);
            if json {
                args.push("--json");
            }
            run(dir, &args)
        };
        let plain = ping(false);
        assert!(!plain.status.success(), "{target} on {network}");
        let said = String::from_utf8_lossy(&plain.stderr).to_string();
        println!("{name}: {said}");
        assert!(said.contains(words), "{name}: {said}");
        let output = ping(true);
        assert!(!output.status.success());
        let json: serde_json::Value =
            serde_json::from_str(&String::from_utf8_lossy(&output.stdout)).unwrap();
        assert_eq!(json["error"], name, "{json}");
        assert!(json["message"].as_str().unwrap().contains(words), "{json}");
    }

    terminate(node_b);
    terminate(node_a);
    println!("{ping}");
}

/// One peer that never takes its ping answers (its node stops returning credit once its
/// channel is full) must not stop `glueberry node` answering everyone else: the node answers
/// from one loop with `try_send`, so only the stalled peer goes unanswered. (With
/// `send(..).await` in that loop, as before, the honest pings below timed out.)
/// An honest peer of a `glueberry node`, Ready on "ping", reading its answers.
struct Honest {
    node: glueberry::Node,
    answers: glueberry::Messages,
}

impl Honest {
    fn connect(server: glueberry::crypto::PeerId, addr: std::net::SocketAddr) -> Honest {
        let node = glueberry::Node::start(
            glueberry::NodeConfig::new(
                glueberry::crypto::Identity::generate().unwrap(),
                "cli-stall",
                "127.0.0.1:0".parse().unwrap(),
            )
            .shards(1),
        )
        .unwrap();
        let answers = node.messages_on("ping").unwrap();
        futures::executor::block_on(node.connect_ready(server, addr, &["ping"])).unwrap();
        Honest { node, answers }
    }
}

/// `rounds` rounds of one ping from each honest peer in turn; the round trips, each answered
/// within 5 s (a ping not answered is missing from the list).
fn ping_rounds(
    honest: &mut [Honest],
    server: glueberry::crypto::PeerId,
    rounds: usize,
) -> Vec<Duration> {
    let mut times = Vec::new();
    for _ in 0..rounds {
        for peer in honest.iter_mut() {
            let start = Instant::now();
            peer.node
                .try_send(server, "ping", bytes::Bytes::from_static(b"honest"))
                .unwrap();
            while Instant::now() < start + Duration::from_secs(5) {
                if peer.answers.try_recv().is_some() {
                    times.push(start.elapsed());
                    break;
                }
                std::thread::yield_now();
            }
        }
    }
    times
}

#[test]
fn a_peer_that_takes_no_answers_does_not_stop_the_node_answering_others() {
    use bytes::Bytes;
    use glueberry::transport::ConnState;
    use glueberry::{Event, EventFilter, Node, NodeConfig};
    let dir = tempfile::tempdir().unwrap();
    let dir = dir.path();
    let a = keygen(dir, "a.key");
    let port = free_port();
    std::fs::write(
        dir.join("a.toml"),
        format!(
            "key = \"a.key\"\nstreams = [\"consensus\"]\n\n[node]\nnetwork_id = \"cli-stall\"\n\
             listen = \"127.0.0.1:{port}\"\nshards = 1\n"
        ),
    )
    .unwrap();
    let (node, line) = start_node(dir, "a.toml");
    assert_eq!(line[0], a);
    let server: glueberry::crypto::PeerId = a.parse().unwrap();
    let addr: std::net::SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();

    // Ten honest peers, each pinging in turn: their round trips before the staller and beside it.
    let mut honest: Vec<Honest> = (0..10).map(|_| Honest::connect(server, addr)).collect();
    let before = ping_rounds(&mut honest, server, 20);

    // The staller: opens `ping`, pings far more than it will ever read (it reads nothing).
    let staller = Node::start(
        NodeConfig::new(
            glueberry::crypto::Identity::generate().unwrap(),
            "cli-stall",
            "127.0.0.1:0".parse().unwrap(),
        )
        .shards(1)
        .message_buffer(100),
    )
    .unwrap();
    let events = staller.subscribe(EventFilter::all().peer(server), 100);
    staller.connect(server, addr).unwrap();
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        assert!(Instant::now() < deadline, "the staller is not Ready");
        match events.recv_blocking() {
            Some(Event::State {
                state: ConnState::Connected,
                ..
            }) => staller.complete_handshake(server, &["ping"]).unwrap(),
            Some(Event::Ready { .. }) => break,
            _ => {}
        }
    }
    let ping = Bytes::from(vec![0u8; 1024]);
    let route = staller.route(server, "ping");
    let mut sent = 0;
    let end = Instant::now() + Duration::from_secs(3);
    while Instant::now() < end && sent < 40_000 {
        match staller.try_send_on(&route, ping.clone()) {
            Ok(()) => sent += 1,
            Err(_) => std::thread::sleep(Duration::from_millis(1)),
        }
    }
    assert!(sent > 20_000, "the staller sent only {sent} pings");
    // Its pings all taken by the node (what it queued has drained): from here it only withholds
    // the credit for the answers, which is the attack.
    let deadline = Instant::now() + Duration::from_secs(20);
    while route.queued().0 > 0 {
        assert!(
            Instant::now() < deadline,
            "the staller's pings were not all taken"
        );
        std::thread::sleep(Duration::from_millis(5));
    }

    let p99 = |times: &[Duration]| {
        let mut sorted = times.to_vec();
        sorted.sort();
        sorted[((sorted.len() - 1) as f64 * 0.99).round() as usize]
    };
    // Every ping answered in each measurement; the p99 within 3x of before in one of three
    // (two cores shared by the node, eleven nodes and the test are noisy).
    let mut ratios = Vec::new();
    for attempt in 1..=3 {
        let during = ping_rounds(&mut honest, server, 20);
        println!(
            "attempt {attempt}: ten honest peers beside a staller that sent {sent} unread pings: \
             {} round trips, p99 {:?} before, {:?} during",
            during.len(),
            p99(&before),
            p99(&during)
        );
        assert_eq!(during.len(), 200, "every honest ping answered");
        ratios.push(p99(&during).as_secs_f64() / p99(&before).as_secs_f64());
        if ratios[ratios.len() - 1] <= 3.0 {
            break;
        }
    }
    assert!(
        ratios.iter().any(|&r| r <= 3.0),
        "honest p99 beside the staller ÷ before, three times: {ratios:.2?}"
    );
    for peer in honest {
        peer.node.stop_blocking();
    }

    // Honest pings from throwaway identities: every one answered.
    for _ in 0..3 {
        let output = stdout(&run(
            dir,
            &[
                "ping",
                &format!("{a}@127.0.0.1:{port}"),
                "--network",
                "cli-stall",
                "--count",
                "3",
                "--timeout",
                "5",
            ],
        ));
        assert!(output.contains("3 replies"), "{output}");
        println!("beside a staller that sent {sent} unread pings: {output}");
    }
    staller.stop_blocking();
    terminate(node);
}

#[test]
fn members_from_the_toml_file_mesh_and_glueberry_members_prints_them() {
    let dir = tempfile::tempdir().unwrap();
    let dir = dir.path();
    let a = keygen(dir, "a.key");
    let b = keygen(dir, "b.key");
    let (port_a, port_b, metrics) = (free_port(), free_port(), free_port());
    // Only A's address is known (the bootstrap); B is found by its record.
    let members = format!(
        "[node.members]\npolicy = \"members-only\"\nepoch = 7\n\
         validators = [\"{a}@127.0.0.1:{port_a}\", \"{b}\"]\n"
    );
    std::fs::write(
        dir.join("a.toml"),
        format!(
            "key = \"a.key\"\n\n[node]\nnetwork_id = \"cli-members\"\n\
             listen = \"127.0.0.1:{port_a}\"\nshards = 1\nmetrics = \"127.0.0.1:{metrics}\"\n\
             debug_state_endpoint = true\n\n{members}"
        ),
    )
    .unwrap();
    std::fs::write(
        dir.join("b.toml"),
        format!(
            "key = \"b.key\"\n\n[node]\nnetwork_id = \"cli-members\"\n\
             listen = \"127.0.0.1:{port_b}\"\nshards = 1\n\n{members}"
        ),
    )
    .unwrap();
    let (node_a, _) = start_node(dir, "a.toml");
    let (node_b, _) = start_node(dir, "b.toml");
    let endpoint = format!("127.0.0.1:{metrics}");
    let deadline = Instant::now() + Duration::from_secs(20);
    let table = loop {
        let output = run(dir, &["members", "--endpoint", &endpoint]);
        let text = String::from_utf8_lossy(&output.stdout).to_string();
        if output.status.success() && text.contains("connected to 1 of 1 members") {
            break text;
        }
        assert!(Instant::now() < deadline, "B never connected: {text}");
        std::thread::sleep(Duration::from_millis(100));
    };
    assert!(table.contains(&b), "{table}");
    assert!(
        table.contains("members-only") && table.contains("Established"),
        "{table}"
    );
    let json: serde_json::Value = serde_json::from_str(&stdout(&run(
        dir,
        &["members", "--endpoint", &endpoint, "--json"],
    )))
    .unwrap();
    assert_eq!(json["members"][0]["peer_id"], b.as_str(), "{json}");
    assert_eq!(json["epochs"][0][0], 7, "{json}");
    // B dialled A (A's address was given); A knows B's address from B's record.
    assert_eq!(json["members"][0]["address_source"], "record", "{json}");
    // A stranger's ping is refused: not a member.
    let ping = run(
        dir,
        &[
            "ping",
            &format!("{a}@127.0.0.1:{port_a}"),
            "--network",
            "cli-members",
            "--count",
            "1",
            "--timeout",
            "5",
        ],
    );
    assert!(!ping.status.success());
    let err = String::from_utf8_lossy(&ping.stderr);
    assert!(err.contains("admits only members"), "{err}");
    terminate(node_b);
    terminate(node_a);
}
