//! The address book: known peers, their addresses and metadata, and the blacklist, persisted as
//! JSON with Glueberry's fields.
//!
//! Every change is written at once, atomically (temporary file, fsync, rename, fsync of the
//! directory), mode 0600, while an advisory lock on `<file>.lock` keeps a second node off the
//! same file. Last-seen updates are batched and written at most every few seconds, and on
//! [`AddressBook::flush`] (which `Node::stop` calls). A file that does not parse refuses to open:
//! a node never starts with an empty blacklist because its file was damaged.

use std::collections::BTreeMap;
use std::fs::{File, OpenOptions};
use std::io::{self, Read};
use std::net::{IpAddr, SocketAddr};
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use glueberry_crypto::PeerId;
use serde::{Deserialize, Serialize};

/// The most metadata bytes (keys and values together) a peer may carry.
pub const MAX_METADATA_LEN: usize = 4096;
/// The most addresses a peer may have.
pub const MAX_ADDRESSES: usize = 16;
/// The largest address book file accepted (checked before reading it).
pub const MAX_BOOK_FILE_LEN: u64 = 64 * 1024 * 1024;
/// How long last-seen updates may wait before they are written.
pub const LAST_SEEN_FLUSH: Duration = Duration::from_secs(5);

const FORMAT_VERSION: u32 = 1;

/// A peer in the book.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PeerEntry {
    /// Its identity.
    pub peer_id: PeerId,
    /// Where to dial it.
    pub addresses: Vec<SocketAddr>,
    /// Application metadata (at most [`MAX_METADATA_LEN`] bytes in all).
    pub metadata: BTreeMap<String, String>,
    /// Refused and disconnected while set.
    pub blacklisted: bool,
    /// When it was last connected (seconds since the Unix epoch), if ever.
    pub last_seen: Option<u64>,
    /// When it was added (seconds since the Unix epoch).
    pub created_at: u64,
    /// When it last changed (seconds since the Unix epoch).
    pub updated_at: u64,
    /// The newest signed address record learned for it (discovery among members,
    /// PROTOCOL.md §9), kept so that a restarted node finds the members where they last were.
    pub address_record: Option<glueberry_crypto::AddressRecord>,
}

/// The file's shape: `{"version":1,"peers":{"<peer id>":{…}}}` (times in Unix seconds,
/// addresses as multiaddrs `/ip4/…/tcp/…`).
#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct BookFile {
    version: u32,
    peers: BTreeMap<String, PeerRecord>,
}

#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct PeerRecord {
    peer_id: String,
    multiaddrs: Vec<String>,
    public_key: String,
    #[serde(default)]
    metadata: BTreeMap<String, String>,
    #[serde(default)]
    last_seen: Option<u64>,
    #[serde(default)]
    blacklisted: bool,
    created_at: u64,
    updated_at: u64,
    /// The signed address record, hex (PROTOCOL.md §9.1).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    address_record: Option<String>,
}

/// Why the book could not be opened or changed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum BookError {
    /// The file exists but is not a valid address book. Nothing was changed; fix or remove it.
    #[error(
        "address book {path} is corrupt ({detail}); refusing to start without its blacklist: \
         repair the file or move it away deliberately"
    )]
    Corrupt {
        /// The file.
        path: PathBuf,
        /// What is wrong.
        detail: String,
    },
    /// Another process holds the book's lock.
    #[error("address book {0} is in use by another node (lock held on its .lock file)")]
    Locked(PathBuf),
    /// Metadata over [`MAX_METADATA_LEN`] bytes.
    #[error("peer metadata of {len} bytes exceeds {MAX_METADATA_LEN}")]
    MetadataTooLarge {
        /// Its size.
        len: usize,
    },
    /// More than [`MAX_ADDRESSES`] addresses.
    #[error("at most {MAX_ADDRESSES} addresses per peer")]
    TooManyAddresses,
    /// The peer is not in the book.
    #[error("peer not in the address book")]
    UnknownPeer,
    /// A file operation failed.
    #[error("address book {op} {path}: {source}")]
    Io {
        /// The step.
        op: &'static str,
        /// The file.
        path: PathBuf,
        /// The OS error.
        source: io::Error,
    },
}

/// The address book of one node.
#[derive(Debug)]
pub struct AddressBook {
    path: PathBuf,
    _lock: File,
    peers: BTreeMap<PeerId, PeerEntry>,
    last_seen_dirty: bool,
    last_flush: Instant,
}

fn now_secs() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

impl AddressBook {
    /// Opens (or creates, empty) the book at `path`, taking its lock.
    pub fn open(path: &Path) -> Result<Self, BookError> {
        let io_err = |op: &'static str, p: &Path| {
            let path = p.to_path_buf();
            move |source| BookError::Io { op, path, source }
        };
        let mut lock_path = path.as_os_str().to_owned();
        lock_path.push(".lock");
        let lock_path = PathBuf::from(lock_path);
        let lock = OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .mode(0o600)
            .open(&lock_path)
            .map_err(io_err("open", &lock_path))?;
        match lock.try_lock() {
            Ok(()) => {}
            Err(std::fs::TryLockError::WouldBlock) => {
                return Err(BookError::Locked(path.to_path_buf()));
            }
            Err(std::fs::TryLockError::Error(e)) => return Err(io_err("lock", &lock_path)(e)),
        }
        let peers = match File::open(path) {
            Ok(file) => Self::load(path, file)?,
            Err(e) if e.kind() == io::ErrorKind::NotFound => BTreeMap::new(),
            Err(e) => return Err(io_err("open", path)(e)),
        };
        Ok(Self {
            path: path.to_path_buf(),
            _lock: lock,
            peers,
            last_seen_dirty: false,
            last_flush: Instant::now(),
        })
    }

    fn load(path: &Path, file: File) -> Result<BTreeMap<PeerId, PeerEntry>, BookError> {
        let corrupt = |detail: String| BookError::Corrupt {
            path: path.to_path_buf(),
            detail,
        };
        let mut text = Vec::new();
        file.take(MAX_BOOK_FILE_LEN + 1)
            .read_to_end(&mut text)
            .map_err(|source| BookError::Io {
                op: "read",
                path: path.to_path_buf(),
                source,
            })?;
        if text.len() as u64 > MAX_BOOK_FILE_LEN {
            return Err(corrupt(format!("larger than {MAX_BOOK_FILE_LEN} bytes")));
        }
        let entries = Self::decode(&text).map_err(corrupt)?;
        Ok(entries.into_iter().map(|e| (e.peer_id, e)).collect())
    }

    /// Entries from the file's bytes, every field checked; what is wrong, if anything.
    pub fn decode(text: &[u8]) -> Result<Vec<PeerEntry>, String> {
        let book: BookFile = serde_json::from_slice(text).map_err(|e| e.to_string())?;
        if book.version != FORMAT_VERSION {
            return Err(format!("unknown version {}", book.version));
        }
        let mut peers = BTreeMap::new();
        for (key, record) in book.peers {
            let entry = Self::entry_from(&key, record)?;
            peers.insert(entry.peer_id, entry);
        }
        Ok(peers.into_values().collect())
    }

    fn entry_from(key: &str, record: PeerRecord) -> Result<PeerEntry, String> {
        let peer_id: PeerId = key
            .parse()
            .map_err(|e| format!("peer {:?}: {e}", key.escape_debug().to_string()))?;
        if record.peer_id != key || record.public_key != hex(peer_id.public_key()) {
            return Err(format!(
                "peer {peer_id}: peer_id or public_key does not match its key"
            ));
        }
        if record.multiaddrs.len() > MAX_ADDRESSES {
            return Err(format!("peer {peer_id}: too many addresses"));
        }
        let addresses = record
            .multiaddrs
            .iter()
            .map(|a| parse_multiaddr(a).ok_or_else(|| format!("peer {peer_id}: bad address {a:?}")))
            .collect::<Result<Vec<_>, _>>()?;
        if metadata_len(&record.metadata) > MAX_METADATA_LEN {
            return Err(format!("peer {peer_id}: metadata too large"));
        }
        let address_record = match &record.address_record {
            None => None,
            Some(text) => {
                let bytes = unhex(text)
                    .filter(|b| b.len() <= glueberry_crypto::address::MAX_ADDRESS_RECORD_LEN)
                    .ok_or_else(|| format!("peer {peer_id}: address_record is not hex"))?;
                match glueberry_crypto::AddressRecord::decode(&bytes) {
                    Ok((r, used)) if used == bytes.len() && r.peer() == peer_id => Some(r),
                    _ => return Err(format!("peer {peer_id}: bad address_record")),
                }
            }
        };
        Ok(PeerEntry {
            address_record,
            peer_id,
            addresses,
            metadata: record.metadata,
            blacklisted: record.blacklisted,
            last_seen: record.last_seen,
            created_at: record.created_at,
            updated_at: record.updated_at,
        })
    }

    /// Adds a peer or updates its addresses and metadata (keeping its blacklist flag); written
    /// at once.
    pub fn add(
        &mut self,
        peer_id: PeerId,
        addresses: Vec<SocketAddr>,
        metadata: BTreeMap<String, String>,
    ) -> Result<(), BookError> {
        if addresses.len() > MAX_ADDRESSES {
            return Err(BookError::TooManyAddresses);
        }
        let len = metadata_len(&metadata);
        if len > MAX_METADATA_LEN {
            return Err(BookError::MetadataTooLarge { len });
        }
        let now = now_secs();
        let entry = self.entry(peer_id, now);
        entry.addresses = addresses;
        entry.metadata = metadata;
        entry.updated_at = now;
        self.save()
    }

    /// The peer's entry, a new empty one (added `now`) if it has none.
    fn entry(&mut self, peer_id: PeerId, now: u64) -> &mut PeerEntry {
        self.peers.entry(peer_id).or_insert_with(|| PeerEntry {
            peer_id,
            addresses: Vec::new(),
            metadata: BTreeMap::new(),
            blacklisted: false,
            last_seen: None,
            created_at: now,
            updated_at: now,
            address_record: None,
        })
    }

    /// Removes a peer (and its blacklist flag); written at once.
    pub fn remove(&mut self, peer_id: &PeerId) -> Result<(), BookError> {
        self.peers.remove(peer_id).ok_or(BookError::UnknownPeer)?;
        self.save()
    }

    /// Sets or clears a peer's blacklist flag, adding the peer if needed; written at once.
    pub fn set_blacklisted(&mut self, peer_id: PeerId, blacklisted: bool) -> Result<(), BookError> {
        let now = now_secs();
        let entry = self.entry(peer_id, now);
        entry.blacklisted = blacklisted;
        entry.updated_at = now;
        self.save()
    }

    /// Records that a peer was seen now. Batched: written by [`AddressBook::flush_if_due`] at
    /// most every [`LAST_SEEN_FLUSH`], and by [`AddressBook::flush`].
    pub fn touch(&mut self, peer_id: &PeerId) {
        if let Some(entry) = self.peers.get_mut(peer_id) {
            entry.last_seen = Some(now_secs());
            self.last_seen_dirty = true;
        }
    }

    /// Keeps a member's newest signed address record (its addresses become the peer's).
    /// Batched like [`AddressBook::touch`]: records arrive in bursts while a mesh forms.
    pub fn set_address_record(&mut self, record: glueberry_crypto::AddressRecord) {
        let now = now_secs();
        let peer_id = record.peer();
        let entry = self.entry(peer_id, now);
        entry.addresses = record.addresses().to_vec();
        entry.address_record = Some(record);
        entry.updated_at = now;
        self.last_seen_dirty = true;
    }

    /// Writes batched last-seen updates if they have waited long enough.
    pub fn flush_if_due(&mut self) -> Result<(), BookError> {
        if self.last_seen_dirty && self.last_flush.elapsed() >= LAST_SEEN_FLUSH {
            self.save()?;
        }
        Ok(())
    }

    /// Writes any batched updates now.
    pub fn flush(&mut self) -> Result<(), BookError> {
        if self.last_seen_dirty {
            self.save()?;
        }
        Ok(())
    }

    /// A peer's entry.
    pub fn get(&self, peer_id: &PeerId) -> Option<&PeerEntry> {
        self.peers.get(peer_id)
    }

    /// Every peer, in peer id order.
    pub fn list(&self) -> impl Iterator<Item = &PeerEntry> {
        self.peers.values()
    }

    /// Whether a peer is blacklisted.
    pub fn is_blacklisted(&self, peer_id: &PeerId) -> bool {
        self.peers.get(peer_id).is_some_and(|e| e.blacklisted)
    }

    /// The file.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The file's bytes for `entries` (Glueberry's JSON layout).
    pub fn encode<'a>(entries: impl IntoIterator<Item = &'a PeerEntry>) -> Vec<u8> {
        let file = BookFile {
            version: FORMAT_VERSION,
            peers: entries
                .into_iter()
                .map(|e| {
                    let id = e.peer_id.to_string();
                    let record = PeerRecord {
                        peer_id: id.clone(),
                        multiaddrs: e.addresses.iter().map(to_multiaddr).collect(),
                        public_key: hex(e.peer_id.public_key()),
                        metadata: e.metadata.clone(),
                        last_seen: e.last_seen,
                        blacklisted: e.blacklisted,
                        created_at: e.created_at,
                        updated_at: e.updated_at,
                        address_record: e.address_record.as_ref().map(|r| {
                            let mut bytes = Vec::with_capacity(r.encoded_len());
                            r.encode(&mut bytes);
                            hex(&bytes)
                        }),
                    };
                    (id, record)
                })
                .collect(),
        };
        // Strings, numbers and maps with string keys: serialisation cannot fail.
        serde_json::to_vec_pretty(&file).unwrap_or_default()
    }

    fn save(&mut self) -> Result<(), BookError> {
        let bytes = Self::encode(self.peers.values());
        glueberry_crypto::file::write_atomically(&self.path, &bytes, 0o600).map_err(|e| {
            BookError::Io {
                op: e.op,
                path: e.path,
                source: e.source,
            }
        })?;
        self.last_seen_dirty = false;
        self.last_flush = Instant::now();
        Ok(())
    }
}

fn metadata_len(metadata: &BTreeMap<String, String>) -> usize {
    metadata.iter().map(|(k, v)| k.len() + v.len()).sum()
}

fn unhex(text: &str) -> Option<Vec<u8>> {
    if !text.len().is_multiple_of(2) || !text.is_ascii() {
        return None;
    }
    (0..text.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&text[i..i + 2], 16).ok())
        .collect()
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn to_multiaddr(addr: &SocketAddr) -> String {
    match addr.ip() {
        IpAddr::V4(ip) => format!("/ip4/{ip}/tcp/{}", addr.port()),
        IpAddr::V6(ip) => format!("/ip6/{ip}/tcp/{}", addr.port()),
    }
}

/// Parses `/ip4/<ip>/tcp/<port>`, `/ip6/<ip>/tcp/<port>` or `<ip>:<port>`.
pub fn parse_multiaddr(text: &str) -> Option<SocketAddr> {
    let parts: Vec<&str> = text.split('/').collect();
    match parts.as_slice() {
        ["", "ip4" | "ip6", ip, "tcp", port] => {
            Some(SocketAddr::new(ip.parse().ok()?, port.parse().ok()?))
        }
        _ => text.parse().ok(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use glueberry_crypto::Identity;
    use std::os::unix::fs::PermissionsExt;

    fn peer(seed: u8) -> PeerId {
        Identity::from_seed(&[seed; 32]).peer_id()
    }

    #[test]
    fn a_file_of_another_format_version_is_refused() {
        let ours = AddressBook::encode([]);
        assert!(AddressBook::decode(&ours).is_ok());
        let text = String::from_utf8(ours).expect("utf-8");
        let other = text.replace(
            &format!("\"version\": {FORMAT_VERSION}"),
            &format!("\"version\": {}", FORMAT_VERSION + 1),
        );
        assert_ne!(
            other, text,
            "the version field is where the test expects it"
        );
        assert_eq!(
            AddressBook::decode(other.as_bytes()),
            Err(format!("unknown version {}", FORMAT_VERSION + 1))
        );
    }

    #[test]
    fn entries_persist_with_glueberrys_fields_and_mode_0600() {
        let dir = tempfile::tempdir().expect("dir");
        let path = dir.path().join("book.json");
        let mut book = AddressBook::open(&path).expect("open");
        let addr: SocketAddr = "10.1.2.3:9000".parse().expect("addr");
        let meta = BTreeMap::from([("moniker".to_string(), "val-1".to_string())]);
        book.add(peer(1), vec![addr], meta.clone()).expect("add");
        book.set_blacklisted(peer(2), true).expect("blacklist");
        let mode = std::fs::metadata(&path).expect("stat").permissions().mode() & 0o777;
        assert_eq!(mode, 0o600);
        let json: serde_json::Value =
            serde_json::from_slice(&std::fs::read(&path).expect("read")).expect("json");
        assert_eq!(json["version"], 1);
        let record = &json["peers"][peer(1).to_string()];
        for field in [
            "peer_id",
            "multiaddrs",
            "public_key",
            "metadata",
            "last_seen",
            "blacklisted",
            "created_at",
            "updated_at",
        ] {
            assert!(record.get(field).is_some(), "missing {field}");
        }
        assert_eq!(record["multiaddrs"][0], "/ip4/10.1.2.3/tcp/9000");
        drop(book);
        let book = AddressBook::open(&path).expect("reopen");
        let entry = book.get(&peer(1)).expect("entry");
        assert_eq!(
            (entry.addresses.clone(), entry.metadata.clone()),
            (vec![addr], meta)
        );
        assert!(book.is_blacklisted(&peer(2)));
        assert!(!book.is_blacklisted(&peer(1)));
        assert_eq!(book.list().count(), 2);
        // No temporary file is left behind.
        let names: Vec<String> = std::fs::read_dir(dir.path())
            .expect("ls")
            .map(|e| e.expect("entry").file_name().to_string_lossy().into_owned())
            .collect();
        assert_eq!(names.len(), 2, "{names:?}"); // book.json and book.json.lock
    }

    #[test]
    fn a_corrupt_book_refuses_to_open_and_is_left_as_it_was() {
        let dir = tempfile::tempdir().expect("dir");
        let path = dir.path().join("book.json");
        let mut book = AddressBook::open(&path).expect("open");
        book.set_blacklisted(peer(3), true).expect("blacklist");
        drop(book);
        let good = std::fs::read(&path).expect("read");
        for damaged in [
            good[..good.len() / 2].to_vec(),
            b"not json".to_vec(),
            br#"{"version":2,"peers":{}}"#.to_vec(),
            String::from_utf8_lossy(&good)
                .replace("gbp1", "gbp2")
                .into_bytes(),
        ] {
            std::fs::write(&path, &damaged).expect("write");
            let error = AddressBook::open(&path).expect_err("corrupt");
            assert!(matches!(error, BookError::Corrupt { .. }), "{error}");
            assert!(error.to_string().contains("refusing to start"));
            assert_eq!(
                std::fs::read(&path).expect("read"),
                damaged,
                "file was changed"
            );
        }
    }

    #[test]
    fn a_second_node_cannot_open_the_same_book() {
        let dir = tempfile::tempdir().expect("dir");
        let path = dir.path().join("book.json");
        let _first = AddressBook::open(&path).expect("open");
        assert!(matches!(
            AddressBook::open(&path),
            Err(BookError::Locked(_))
        ));
    }

    #[test]
    fn limits_and_batched_last_seen() {
        let dir = tempfile::tempdir().expect("dir");
        let path = dir.path().join("book.json");
        let mut book = AddressBook::open(&path).expect("open");
        let big = BTreeMap::from([("k".to_string(), "v".repeat(MAX_METADATA_LEN))]);
        assert!(matches!(
            book.add(peer(1), vec![], big),
            Err(BookError::MetadataTooLarge { .. })
        ));
        let many = vec!["1.2.3.4:1".parse().expect("addr"); MAX_ADDRESSES + 1];
        assert!(matches!(
            book.add(peer(1), many, BTreeMap::new()),
            Err(BookError::TooManyAddresses)
        ));
        book.add(peer(1), vec![], BTreeMap::new()).expect("add");
        let before = std::fs::read(&path).expect("read");
        book.touch(&peer(1));
        book.flush_if_due().expect("flush");
        assert_eq!(
            std::fs::read(&path).expect("read"),
            before,
            "last-seen written at once"
        );
        book.flush().expect("flush");
        let after = AddressBook::load(&path, File::open(&path).expect("open")).expect("load");
        assert!(after[&peer(1)].last_seen.is_some());
    }

    #[test]
    fn addresses_parse_in_both_forms() {
        let v4: SocketAddr = "1.2.3.4:5".parse().expect("addr");
        let v6: SocketAddr = "[::1]:7".parse().expect("addr");
        assert_eq!(parse_multiaddr("/ip4/1.2.3.4/tcp/5"), Some(v4));
        assert_eq!(parse_multiaddr("/ip6/::1/tcp/7"), Some(v6));
        assert_eq!(parse_multiaddr("1.2.3.4:5"), Some(v4));
        assert_eq!(parse_multiaddr(&to_multiaddr(&v6)), Some(v6));
        assert_eq!(parse_multiaddr("/dns/x/tcp/1"), None);
    }
}
