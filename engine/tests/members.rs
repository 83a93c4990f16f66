//! Peer sets on real nodes over loopback: admission by membership, discovery of members from a
//! few bootstrap addresses, epoch changes, and address records that must be refused.
#![allow(clippy::expect_used, clippy::unwrap_used, clippy::panic)] // test code

mod common;

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use bytes::Bytes;
use glueberry::crypto::{AddressRecord, Identity, PeerId, address::encode_records_message};
use glueberry::transport::{CloseCode, CloseReason, ConnState};
use glueberry::{
    Event, MEMBERS_STREAM, Member, MembersConfig, MembershipPolicy, Node, NodeConfig, Refusal,
};

const NET: &str = "members-test";
const T: Duration = Duration::from_secs(15);

fn config(identity: &Identity, policy: MembershipPolicy) -> NodeConfig {
    NodeConfig::new(identity.clone(), NET, common::any_port())
        .shards(1)
        .event_buffer(10_000)
        .members(MembersConfig {
            policy,
            grace: Duration::from_millis(300),
            ..MembersConfig::default()
        })
        .reconnect(Duration::from_millis(50), Duration::from_millis(500), 100)
}

/// The application every node here runs: it opens `consensus` with each peer that connects.
fn serve(node: &Node) {
    let node = node.clone();
    let events = node.events();
    std::thread::spawn(move || {
        while let Some(event) = events.recv_blocking() {
            if let Event::State {
                peer,
                state: ConnState::Connected,
                ..
            } = event
            {
                let _ = node.complete_handshake(peer, &["consensus"]);
            }
        }
    });
}

fn wait_until(what: &str, mut f: impl FnMut() -> bool) {
    let deadline = Instant::now() + T;
    while !f() {
        assert!(Instant::now() < deadline, "{what}: not within {T:?}");
        std::thread::sleep(Duration::from_millis(10));
    }
}

fn start(identity: &Identity, policy: MembershipPolicy) -> Node {
    let node = Node::start(config(identity, policy)).unwrap();
    serve(&node);
    node
}

#[test]
fn a_non_member_never_reaches_connected_and_is_told_not_member() {
    let validator_id = Identity::generate().unwrap();
    let member_id = Identity::generate().unwrap();
    let validator = start(&validator_id, MembershipPolicy::MembersOnly);
    let refusals = validator.subscribe(glueberry::EventFilter::all(), 1000);
    validator
        .track(1, vec![Member::new(member_id.peer_id())])
        .unwrap();

    // A stranger with a valid identity dials: refused with 12 once the handshake says who it is.
    let stranger = start(&Identity::generate().unwrap(), MembershipPolicy::Open);
    let seen = stranger.subscribe(glueberry::EventFilter::all().peer(validator.peer_id()), 100);
    stranger
        .connect(validator.peer_id(), validator.listen_addr())
        .unwrap();
    let deadline = Instant::now() + T;
    let reason = loop {
        assert!(Instant::now() < deadline, "the stranger was not refused");
        if let Some(Event::State {
            state: ConnState::Reconnecting | ConnState::Disconnected,
            reason: Some(reason),
            ..
        }) = seen.try_recv()
        {
            break reason;
        }
        std::thread::sleep(Duration::from_millis(5));
    };
    // Refused in the handshake itself (HelloReject 0x04), before its proof was checked.
    assert_eq!(
        reason,
        CloseReason::Error(glueberry::transport::ConnectionError::Handshake(
            glueberry::crypto::HandshakeError::Rejected(
                glueberry::crypto::handshake::RejectReason::NotAdmitted
            )
        ))
    );
    assert_eq!(
        glueberry::DialFailure::from_reason(Some(&reason)),
        glueberry::DialFailure::NotMember
    );
    assert!(glueberry::DialFailure::NotMember.is_retriable());

    // A member is admitted beside it.
    let member = start(&member_id, MembershipPolicy::MembersOnly);
    member
        .track(
            1,
            vec![Member::at(validator.peer_id(), validator.listen_addr())],
        )
        .unwrap();
    wait_until("the member Ready", || {
        validator.is_ready(member_id.peer_id())
    });
    std::thread::sleep(Duration::from_millis(200));
    let mut refused_stranger = false;
    while let Some(event) = refusals.try_recv() {
        match event {
            Event::State { peer, state, .. } if peer == stranger.peer_id() => {
                panic!("the stranger reached {state:?} on the validator")
            }
            Event::Refused {
                peer: None,
                reason: Refusal::NotMember,
                ..
            } => refused_stranger = true,
            _ => {}
        }
    }
    assert!(refused_stranger, "the refusal was reported");
    assert_eq!(validator.members_connected(), (1, 1));
    assert!(validator.health().check("members").unwrap().ok);
    stranger.stop_blocking();
    member.stop_blocking();
    validator.stop_blocking();
}

#[test]
fn members_that_know_two_bootstrap_addresses_form_a_full_mesh_and_leavers_are_cut() {
    let ids: Vec<Identity> = (0..8).map(|_| Identity::generate().unwrap()).collect();
    let nodes: Vec<Node> = ids
        .iter()
        .map(|id| start(id, MembershipPolicy::MembersOnly))
        .collect();
    let set = |range: std::ops::Range<usize>| -> Vec<Member> {
        range
            .map(|i| {
                if i < 2 {
                    Member::at(ids[i].peer_id(), nodes[i].listen_addr())
                } else {
                    Member::new(ids[i].peer_id())
                }
            })
            .collect()
    };
    // Epoch 1: nodes 0..6 (0 and 1 the bootstraps); 6 and 7 are not members yet.
    for node in &nodes[..6] {
        node.track(1, set(0..6)).unwrap();
    }
    let started = Instant::now();
    wait_until("a full mesh of six", || {
        (0..6).all(|i| (0..6).all(|j| i == j || nodes[i].is_ready(ids[j].peer_id())))
    });
    println!("six members meshed in {:?}", started.elapsed());
    let info = nodes[5].members();
    assert_eq!(info.len(), 5, "the other five");
    let record_learned = info
        .iter()
        .filter(|m| m.peer != ids[5].peer_id() && m.source == glueberry::AddressSource::Record)
        .count();
    assert!(
        record_learned >= 3,
        "addresses learned from records: {info:?}"
    );

    // Epoch 2: 1 leaves (keep_epochs 1 would drop it at once; here epochs 1 and 2 are kept, so
    // drop epoch 1 by tracking 2 and 3), 6 and 7 join.
    let told = nodes[1].subscribe(glueberry::EventFilter::all(), 1000);
    let next: Vec<Member> = set(0..1).into_iter().chain(set(2..8)).collect();
    for node in &nodes {
        node.track(2, next.clone()).unwrap();
        node.track(3, next.clone()).unwrap();
        node.track(4, next.clone()).unwrap();
    }
    let stayers: Vec<usize> = (0..8).filter(|i| *i != 1).collect();
    wait_until("the joiners meshed", || {
        stayers.iter().all(|&i| {
            stayers
                .iter()
                .all(|&j| i == j || nodes[i].is_ready(ids[j].peer_id()))
        })
    });
    wait_until("the leaver cut after its grace", || {
        stayers
            .iter()
            .all(|&i| nodes[i].state(ids[1].peer_id()) == ConnState::Disconnected)
    });
    assert!(!nodes[0].is_member(&ids[1].peer_id()));
    // The leaver was told why: close code 12 (PROTOCOL.md §5.5).
    let mut codes = Vec::new();
    while let Some(event) = told.try_recv() {
        if let Event::State {
            reason: Some(CloseReason::Peer(code)),
            ..
        } = event
        {
            codes.push(code);
        }
    }
    assert!(codes.contains(&CloseCode::NotMember), "{codes:?}");
    assert_eq!(CloseCode::NotMember.to_u16(), 12);
    for node in &nodes {
        node.stop_blocking();
    }
}

/// A member that sends records directly: what it can make the node keep.
#[test]
fn records_with_a_bad_signature_an_old_sequence_or_about_a_non_member_are_ignored() {
    let a_id = Identity::generate().unwrap();
    let byzantine_id = Identity::generate().unwrap();
    let x_id = Identity::generate().unwrap();
    let outsider_id = Identity::generate().unwrap();
    let a = start(&a_id, MembershipPolicy::MembersOnly);
    let byzantine = start(&byzantine_id, MembershipPolicy::MembersOnly);
    // X is a member A does not know the address of; it listens, but has not tracked anything
    // (so it never dials or publishes by itself).
    let x = start(&x_id, MembershipPolicy::Open);
    let members = vec![
        Member::new(a_id.peer_id()),
        Member::new(byzantine_id.peer_id()),
        Member::new(x_id.peer_id()),
    ];
    a.track(1, members.clone()).unwrap();
    let mut with_a = members.clone();
    with_a[0] = Member::at(a_id.peer_id(), a.listen_addr());
    byzantine.track(1, with_a).unwrap();
    wait_until("the byzantine member Ready", || {
        a.is_ready(byzantine_id.peer_id()) && byzantine.is_ready(a_id.peer_id())
    });
    let x_record = |sequence: u64, addr: SocketAddr| {
        AddressRecord::sign(&x_id, NET, sequence, &[addr]).unwrap()
    };
    let send = |records: &[AddressRecord]| {
        byzantine
            .try_send(
                a_id.peer_id(),
                MEMBERS_STREAM,
                Bytes::from(encode_records_message(records)),
            )
            .unwrap();
    };
    let sequence_at_a = || {
        a.members()
            .into_iter()
            .find(|m| m.peer == x_id.peer_id())
            .and_then(|m| m.record_sequence)
    };
    let (_, ignored_before) = a.record_counts();

    // A bad signature: a record of X whose last signature bit is flipped.
    let mut bad = Vec::new();
    x_record(10, x.listen_addr()).encode(&mut bad);
    *bad.last_mut().unwrap() ^= 1;
    let (bad, _) = AddressRecord::decode(&bad).unwrap();
    // About a non-member, validly signed by it.
    let outsider = AddressRecord::sign(&outsider_id, NET, 10, &[x.listen_addr()]).unwrap();
    // Signed for another network.
    let elsewhere = AddressRecord::sign(&x_id, "another-net", 10, &[x.listen_addr()]).unwrap();
    send(&[bad, outsider, elsewhere]);
    wait_until("three records ignored", || {
        a.record_counts().1 >= ignored_before + 3
    });
    assert_eq!(sequence_at_a(), None, "nothing kept of X");
    assert!(!a.members().iter().any(|m| m.peer == outsider_id.peer_id()));

    // A valid record pointing at a closed port: kept, and dialled (and failing).
    let closed = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let closed_addr = closed.local_addr().unwrap();
    drop(closed);
    send(&[x_record(5, closed_addr)]);
    wait_until("X's first record kept", || sequence_at_a() == Some(5));
    // An older sequence is ignored.
    let (_, ignored) = a.record_counts();
    send(&[x_record(3, x.listen_addr())]);
    std::thread::sleep(Duration::from_millis(300));
    assert_eq!(
        sequence_at_a(),
        Some(5),
        "an older record replaced a newer one"
    );
    assert_eq!(
        a.record_counts().1,
        ignored,
        "an old sequence is dropped unchecked"
    );
    assert_ne!(a.state(x_id.peer_id()), ConnState::Established);

    // A newer record with X's real address: A redials X there.
    send(&[x_record(9, x.listen_addr())]);
    wait_until("X's new record kept", || sequence_at_a() == Some(9));
    wait_until("A connected to X at its new address", || {
        a.state(x_id.peer_id()) == ConnState::Established
    });
    let info = a.members();
    let x_info = info.iter().find(|m| m.peer == x_id.peer_id()).unwrap();
    assert_eq!(x_info.address, Some(x.listen_addr()));
    for node in [a, byzantine, x] {
        node.stop_blocking();
    }
}

#[test]
fn an_application_cannot_open_the_members_stream() {
    let node = Node::start(common::loopback_config(NET)).unwrap();
    let err = node
        .complete_handshake(
            PeerId::from_public_key(&[7; 32]).unwrap_or(node.peer_id()),
            &[MEMBERS_STREAM],
        )
        .unwrap_err();
    assert_eq!(err, glueberry::NodeSendError::ReservedStream);
    node.stop_blocking();
}

/// Records go to the address book; a member restarted with no bootstrap address finds the
/// others where their records said.
#[test]
fn records_are_kept_in_the_address_book_and_a_restarted_member_finds_the_members_from_it() {
    let dir = tempfile::tempdir().unwrap();
    let book = dir.path().join("b.json");
    let ids: Vec<Identity> = (0..3).map(|_| Identity::generate().unwrap()).collect();
    let a = start(&ids[0], MembershipPolicy::MembersOnly);
    let c = start(&ids[2], MembershipPolicy::MembersOnly);
    let start_b = || {
        let node = Node::start(config(&ids[1], MembershipPolicy::MembersOnly).address_book(&book))
            .unwrap();
        serve(&node);
        node
    };
    let b = start_b();
    let with_bootstrap = vec![
        Member::at(ids[0].peer_id(), a.listen_addr()),
        Member::new(ids[1].peer_id()),
        Member::new(ids[2].peer_id()),
    ];
    for node in [&a, &b, &c] {
        node.track(1, with_bootstrap.clone()).unwrap();
    }
    wait_until("B meshed", || {
        b.is_ready(ids[0].peer_id()) && b.is_ready(ids[2].peer_id())
    });
    wait_until("B holds C's record", || {
        b.members()
            .iter()
            .any(|m| m.peer == ids[2].peer_id() && m.record_sequence.is_some())
    });
    b.stop_blocking();
    {
        let stored = glueberry::address_book::AddressBook::open(&book).unwrap();
        let record = stored
            .get(&ids[2].peer_id())
            .and_then(|e| e.address_record.clone())
            .expect("C's record in B's book");
        assert_eq!(record.addresses(), &[c.listen_addr()]);
        record.verify(NET).unwrap();
    }
    // B again, told no address at all: the book's records are enough.
    let b = start_b();
    b.track(1, ids.iter().map(|id| Member::new(id.peer_id())).collect())
        .unwrap();
    wait_until("B meshed again from its book", || {
        b.is_ready(ids[0].peer_id()) && b.is_ready(ids[2].peer_id())
    });
    let sources: Vec<glueberry::AddressSource> = b.members().iter().map(|m| m.source).collect();
    assert!(
        sources.contains(&glueberry::AddressSource::Book)
            || sources.contains(&glueberry::AddressSource::Record),
        "{sources:?}"
    );
    for node in [a, b, c] {
        node.stop_blocking();
    }
}
