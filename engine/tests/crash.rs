//! The address book across crashes: a child process saves it over and over and is killed with
//! SIGKILL at random points; every time, the file on disk is a whole book (the old one or the
//! new one, never a torn mix), the next process opens it, and nothing is lost that was saved.
#![allow(clippy::expect_used, clippy::unwrap_used, clippy::panic)] // test code

use std::collections::BTreeMap;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::Duration;

use glueberry::address_book::AddressBook;
use glueberry::crypto::Identity;

const CHILD_ENV: &str = "GLUEBERRY_CRASH_BOOK";

/// In the child: add peers to the book forever (each `add` is one atomic save).
#[test]
fn crash_child() {
    let Some(path) = std::env::var_os(CHILD_ENV) else {
        return; // Not a child: nothing to do.
    };
    let mut book = AddressBook::open(Path::new(&path)).expect("the child opens the book");
    let mut i = book.list().count();
    loop {
        let peer = Identity::from_seed(&[(i % 251) as u8 + 1; 32]).peer_id();
        let mut metadata = BTreeMap::new();
        // Sizes vary so that saves straddle page and block boundaries.
        metadata.insert("n".to_string(), "x".repeat(i % 3000));
        let addr = format!("10.0.{}.{}:26656", (i / 250) % 250, i % 250 + 1);
        book.add(peer, vec![addr.parse().unwrap()], metadata)
            .expect("save");
        i += 1;
    }
}

#[test]
fn a_killed_writer_leaves_a_whole_book_every_time() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("book.json");
    let exe = std::env::current_exe().unwrap();
    let mut seed = 0x2545_f491_4f6c_dd1du64;
    let (mut opened, mut saw_file, mut last_len) = (0, 0, 0);
    for round in 0..30 {
        let mut child = Command::new(&exe)
            .args([
                "--exact",
                "crash_child",
                "--nocapture",
                "--test-threads",
                "1",
            ])
            .env(CHILD_ENV, &path)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        std::thread::sleep(Duration::from_millis(20 + seed % 80));
        child.kill().unwrap(); // SIGKILL
        child.wait().unwrap();
        if let Ok(bytes) = std::fs::read(&path) {
            saw_file += 1;
            let entries = AddressBook::decode(&bytes).unwrap_or_else(|e| {
                panic!("round {round}: a torn book ({e}), {} bytes", bytes.len())
            });
            assert!(entries.len() <= 251, "round {round}");
            // Each child starts from what is on disk and only adds: a saved peer never vanishes.
            assert!(
                entries.len() >= last_len,
                "round {round}: {} peers after {last_len}",
                entries.len()
            );
            last_len = entries.len();
        }
        // The lock died with the child; the next process opens the book.
        let book = AddressBook::open(&path)
            .unwrap_or_else(|e| panic!("round {round}: cannot reopen: {e}"));
        opened += 1;
        drop(book);
    }
    println!(
        "30 kills: book reopened {opened} times, present {saw_file} times, never torn; {last_len} peers at the end"
    );
    assert_eq!(opened, 30);
    assert!(
        saw_file > 0,
        "the child never got to save: kills too early to test anything"
    );
}
