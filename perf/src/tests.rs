use super::*;
use std::time::Duration;

fn check(scenario: Scenario, figures: &Figures, peer: &str) {
    let line = figures.final_json(&scenario.id(), peer);
    let json: serde_json::Value = serde_json::from_str(&line).expect("json");
    assert_eq!(json["type"], "final");
    match scenario {
        Scenario::Latency => assert!(
            figures.p50_us > 0.0 && figures.p99_us >= figures.p50_us,
            "{line}"
        ),
        Scenario::Handshake => assert!(figures.messages_per_sec > 0.0, "{line}"),
        // The memory per connection is resident-memory growth of the whole process; here other
        // tests run in parallel and free memory the connections reuse, so it can read 0 (the
        // figure itself comes from `glueberry-perf`, where nothing runs beside it).
        Scenario::Scale => assert!(
            figures.messages > 0 && json["bytesPerConnection"].as_f64().is_some(),
            "{line}"
        ),
        _ => assert!(
            json["uploadBytes"].as_u64().is_some_and(|b| b > 0),
            "{line}"
        ),
    }
}

const SHORT: Length = Length::Time(Duration::from_millis(300));

#[test]
fn every_glueberry_scenario_runs_briefly_and_reports_sane_json() {
    for scenario in [
        Scenario::Bulk,
        Scenario::BulkStreams,
        Scenario::BulkPeers,
        Scenario::Small(64),
        Scenario::Latency,
        Scenario::Handshake,
        Scenario::Scale,
    ] {
        let count = if scenario == Scenario::Scale { 64 } else { 2 };
        let figures = run_glueberry(scenario, &Setup::default(), SHORT, Some(count), &|_, _| {})
            .expect("runs");
        check(scenario, &figures, "glueberry");
    }
}

#[test]
fn glueberry_options_run_aes_unbatched_null_and_a_byte_count() {
    for setup in [
        Setup {
            cipher: Cipher::Aes,
            ..Setup::default()
        },
        Setup {
            batching: false,
            ..Setup::default()
        },
        Setup {
            cipher: Cipher::DangerNull,
            ..Setup::default()
        },
        Setup {
            shards: 2,
            ..Setup::default()
        },
    ] {
        let figures =
            run_glueberry(Scenario::Small(64), &setup, SHORT, None, &|_, _| {}).expect("runs");
        check(Scenario::Small(64), &figures, "glueberry");
    }
    let figures = run_glueberry(
        Scenario::Bulk,
        &Setup::default(),
        Length::Bytes(50_000_000),
        None,
        &|_, _| {},
    )
    .expect("runs");
    assert!(figures.bytes >= 50_000_000, "{figures:?}");
}

#[test]
fn every_stream_peer_runs_briefly_and_reports_sane_json() {
    #[cfg_attr(not(feature = "compare"), allow(unused_mut))]
    let mut stacks = vec![streams::Stack::Tcp];
    #[cfg(feature = "compare")]
    stacks.extend([
        streams::Stack::Tls(Cipher::ChaCha),
        streams::Stack::Tls(Cipher::Aes),
        streams::Stack::Libp2p,
    ]);
    for stack in stacks {
        for scenario in [
            Scenario::Bulk,
            Scenario::Small(64),
            Scenario::Latency,
            Scenario::Handshake,
        ] {
            for framing in [streams::Framing::Buffered, streams::Framing::PerMessage] {
                let Some(figures) = run_stream(scenario, stack, framing, SHORT, &|_, _| {}) else {
                    assert!(framing == streams::Framing::PerMessage);
                    continue;
                };
                let figures = figures.unwrap_or_else(|e| panic!("{stack:?} {scenario:?}: {e}"));
                check(scenario, &figures, "stream");
            }
        }
    }
}

#[test]
fn server_and_client_talk_across_a_socket() {
    let setup = Setup::default();
    let listen: SocketAddr = "127.0.0.1:0".parse().expect("addr");
    let (tx, rx) = std::sync::mpsc::channel();
    let server = {
        let setup = setup.clone();
        std::thread::spawn(move || {
            remote::server(&setup, listen, Some(3.0), &move |addr, id| {
                let _ = tx.send((addr, id));
            })
        })
    };
    let (addr, peer) = rx.recv().expect("the server starts");
    let bulk = remote::client_throughput(&setup, addr, peer, 64 * 1024, SHORT, &|_, _| {})
        .expect("throughput");
    check(Scenario::Bulk, &bulk, "glueberry");
    let latency = remote::client_latency(&setup, addr, peer, 64, Duration::from_millis(300))
        .expect("latency");
    check(Scenario::Latency, &latency, "glueberry");
    server.join().expect("server thread").expect("server");
}

#[test]
fn latencies_give_percentiles_from_the_histogram() {
    let mut samples = crate::figures::Latencies::new();
    for us in 1..=1000u64 {
        samples.record(Duration::from_micros(us));
    }
    let figures = crate::figures::percentiles(&samples, 64, 1.0);
    assert_eq!(figures.messages, 1000);
    // Within the histogram's 3 significant digits.
    let near = |got: f64, want: f64| (got - want).abs() <= want / 500.0;
    assert!(near(figures.p50_us, 500.0), "{}", figures.p50_us);
    assert!(near(figures.p99_us, 990.0), "{}", figures.p99_us);
    assert!(near(figures.max_us, 1000.0), "{}", figures.max_us);
    let empty = crate::figures::percentiles(&crate::figures::Latencies::new(), 64, 1.0);
    assert_eq!((empty.messages, empty.p50_us), (0, 0.0));
}
