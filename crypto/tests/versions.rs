//! The protocol version is written in three places for readers; the code's constant rules, and
//! the texts must say the same.
#![allow(clippy::unwrap_used)]

use glueberry_crypto::handshake::PROTOCOL_VERSION;

fn read(name: &str) -> String {
    std::fs::read_to_string(format!("{}/../{name}", env!("CARGO_MANIFEST_DIR"))).unwrap()
}

#[test]
fn protocol_md_and_the_changelog_name_the_protocol_version_of_the_code() {
    let version = format!("{}.{}", PROTOCOL_VERSION.major, PROTOCOL_VERSION.minor);
    let protocol = read("PROTOCOL.md");
    let title = protocol.lines().next().unwrap();
    assert_eq!(
        title,
        format!("# The Glueberry wire protocol, version {version}")
    );
    let changelog = read("CHANGELOG.md");
    assert!(
        changelog.contains(&format!("| wire protocol | {version} |")),
        "CHANGELOG.md's version table"
    );
    assert!(changelog.contains(&format!(
        "## {} — unreleased (protocol {version})",
        env!("CARGO_PKG_VERSION")
    )));
}
