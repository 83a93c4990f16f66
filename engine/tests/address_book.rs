//! The address book under a running node: dialled at start, saved at stop, the blacklist
//! enforced before it is written, one node per file.
#![allow(clippy::expect_used, clippy::unwrap_used, clippy::panic)] // test code

mod common;

use std::time::Duration;

use bytes::Bytes;
use common::{established, wait_for};
use glueberry::crypto::Identity;
use glueberry::transport::ConnState;
use glueberry::{Event, Node, NodeConfig};

const NET: &str = "address-book-test";

fn start(shards: usize) -> Node {
    common::start_node(NET, shards)
}
use glueberry::address_book::AddressBook;
use glueberry::transport::{CloseCode, CloseReason};
use std::collections::BTreeMap;

fn node_with_book(path: &std::path::Path) -> Result<Node, glueberry::StartError> {
    Node::start(
        NodeConfig::new(Identity::generate().unwrap(), NET, common::any_port())
            .shards(2)
            .event_buffer(10_000)
            .address_book(path),
    )
}

#[test]
fn start_dials_the_book_and_stop_flushes_last_seen() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("book.json");
    let b = start(1);
    let banned = Identity::generate().unwrap().peer_id();
    {
        let mut book = AddressBook::open(&path).unwrap();
        book.add(b.peer_id(), vec![b.listen_addr()], BTreeMap::new())
            .unwrap();
        book.add(
            banned,
            vec!["127.0.0.1:9".parse().unwrap()],
            BTreeMap::new(),
        )
        .unwrap();
        book.set_blacklisted(banned, true).unwrap();
    }
    let a = node_with_book(&path).unwrap();
    // No connect call: the node dials its book.
    let ok = wait_for(
        &b,
        &["s"],
        Duration::from_secs(10),
        established(a.peer_id()),
    );
    assert!(
        ok && wait_for(
            &a,
            &["s"],
            Duration::from_secs(10),
            established(b.peer_id())
        )
    );
    assert!(a.peer(banned).unwrap().blacklisted);
    a.stop_blocking();
    b.stop_blocking();
    let book = AddressBook::open(&path).unwrap();
    assert!(
        book.get(&b.peer_id()).unwrap().last_seen.is_some(),
        "last-seen lost on stop"
    );
    assert!(book.get(&banned).unwrap().last_seen.is_none());
}

#[test]
fn a_corrupt_book_refuses_to_start() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("book.json");
    std::fs::write(&path, b"{\"version\":1,\"peers\":").unwrap();
    let error = node_with_book(&path).expect_err("corrupt book");
    assert!(
        matches!(error, glueberry::StartError::AddressBook(_)),
        "{error}"
    );
    assert!(error.to_string().contains("corrupt"), "{error}");
}

#[test]
fn blacklisting_disconnects_at_once_and_refuses_before_any_application_byte() {
    let dir = tempfile::tempdir().unwrap();
    let a = node_with_book(&dir.path().join("book.json")).unwrap();
    let b = start(1);
    b.connect(a.peer_id(), a.listen_addr()).unwrap();
    assert!(wait_for(
        &a,
        &["s"],
        Duration::from_secs(10),
        established(b.peer_id())
    ));
    assert!(wait_for(
        &b,
        &["s"],
        Duration::from_secs(10),
        established(a.peer_id())
    ));
    a.blacklist(b.peer_id()).unwrap();
    // b is cut off at once, told why.
    let told = wait_for(&b, &["s"], Duration::from_secs(10), |e| {
        matches!(
            e,
            Event::State {
                state: ConnState::Disconnected,
                reason: Some(CloseReason::Peer(CloseCode::Blacklisted)),
                ..
            }
        )
    });
    assert!(told, "b was not disconnected as blacklisted");
    // b keeps redialling (it is in its book); a never reports it Connected again and
    // never delivers a byte from it.
    let s = b.stream("s");
    let _ = b.try_send(a.peer_id(), &s, Bytes::from_static(b"let me in"));
    let seen = wait_for(
        &a,
        &["s"],
        Duration::from_secs(3),
        |e| matches!(e, Event::State { peer, state: ConnState::Connected, .. } if *peer == b.peer_id()),
    );
    assert!(!seen, "a blacklisted peer reached Connected");
    assert!(a.messages().try_recv().is_none());
    assert!(a.peer(b.peer_id()).unwrap().blacklisted);
    a.stop_blocking();
    b.stop_blocking();
}
