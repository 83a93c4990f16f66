//! Peer sets by epoch: which identities the chain says are validators and who is admitted.
//! The vocabulary the limits, the handshake's admission check and the API share; discovery of
//! the members' addresses among themselves runs on the API (`api/discovery.rs`).
//!
//! The application tells the node, per epoch, who the members are ([`crate::Node::track`]);
//! the node keeps the last [`MembersConfig::keep_epochs`] sets, so a validator stays connected
//! to both the old and the new set across an epoch change. Every member is dialled and kept (a
//! persistent peer: redialled with capped backoff, never counted against the limits for
//! strangers); what strangers may do is [`MembershipPolicy`].

use std::collections::{BTreeMap, HashMap};
use std::net::SocketAddr;
use std::sync::RwLock;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use glueberry_crypto::PeerId;

mod directory;

pub(crate) use directory::{Directory, Discovery, Known, Tracked};

/// The stream members exchange their address records on (PROTOCOL.md §9.3). Opened with every
/// peer by [`crate::Node::complete_handshake`] once the node tracks a peer set; an application
/// cannot name it.
pub const MEMBERS_STREAM: &str = "glueberry-members";

/// Who may connect besides the members of the tracked peer sets.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum MembershipPolicy {
    /// Anyone on the network (within the connection limits); members are not counted against
    /// those limits.
    #[default]
    Open,
    /// Members only: any other identity is refused as soon as the handshake tells who it is,
    /// with close code 12 (`NotMember`), before it sees a stream. Until the first
    /// [`crate::Node::track`] nobody is admitted.
    MembersOnly,
    /// Members first: members are never counted and never evicted, and the limits keep a slot
    /// for every tracked member, so strangers (full nodes, sentries) only get what is left.
    MembersFirst,
}

/// How a node treats peer sets (`NodeConfig::members`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MembersConfig {
    /// Who else is admitted (default [`MembershipPolicy::Open`]).
    pub policy: MembershipPolicy,
    /// How many of the newest epochs' sets are kept (default 3): a peer is a member while it is
    /// in any of them.
    pub keep_epochs: usize,
    /// How long a peer that left every kept set stays connected before it is cut with
    /// `NotMember` (default 30 s): time for the last messages of its epoch.
    pub grace: Duration,
    /// The addresses this node publishes in its own address record (default: the listen
    /// addresses that can be dialled; none when it listens on an unspecified address, so set
    /// them then).
    pub advertise: Vec<SocketAddr>,
    /// The most members one set may have (default 4096): a bound on what the sets and the
    /// records held for them cost.
    pub max_set_size: usize,
}

impl Default for MembersConfig {
    fn default() -> Self {
        Self {
            policy: MembershipPolicy::Open,
            keep_epochs: 3,
            grace: Duration::from_secs(30),
            advertise: Vec::new(),
            max_set_size: 4096,
        }
    }
}

/// A member of a peer set, as the application knows it: its id, and addresses if it knows
/// any (a member without one is found through the others' address records).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Member {
    /// Its identity.
    pub peer: PeerId,
    /// Where to dial it, if known (the bootstrap members').
    pub addresses: Vec<SocketAddr>,
}

impl Member {
    /// A member whose address is not known here.
    pub fn new(peer: PeerId) -> Self {
        Self {
            peer,
            addresses: Vec::new(),
        }
    }

    /// A member with an address to dial.
    pub fn at(peer: PeerId, address: SocketAddr) -> Self {
        Self {
            peer,
            addresses: vec![address],
        }
    }
}

impl From<PeerId> for Member {
    fn from(peer: PeerId) -> Self {
        Member::new(peer)
    }
}

/// Where the node got the address it dials a member at.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum AddressSource {
    /// No address yet.
    Unknown,
    /// The application's [`Member`] (a bootstrap member, or the config file).
    Given,
    /// A signed address record (from the member, through any member).
    Record,
    /// The address book, from an earlier run.
    Book,
}

/// One member's state ([`crate::Node::members`]).
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct MemberInfo {
    /// Its identity.
    pub peer: PeerId,
    /// The kept epochs it is a member of, oldest first.
    pub epochs: Vec<u64>,
    /// Its connection state.
    pub state: glueberry_transport::ConnState,
    /// Whether both sides have opened their streams.
    pub ready: bool,
    /// The address it is dialled at, if known.
    pub address: Option<SocketAddr>,
    /// Where that address came from.
    pub source: AddressSource,
    /// The sequence number of its newest address record, if one arrived.
    pub record_sequence: Option<u64>,
    /// When it was last connected, seconds since the Unix epoch (this run), if ever.
    pub last_seen: Option<u64>,
}

/// This node's own record's sequence: the wall clock in milliseconds, so a restarted node's
/// record replaces the one it published before without keeping a counter on disk.
pub(crate) fn own_sequence() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(1, |d| d.as_millis() as u64)
}

/// The kept peer sets, shared by the API (which changes them), the admission check on the
/// shards (which reads them on every authenticated inbound connection) and discovery.
#[derive(Debug)]
pub(crate) struct PeerSets {
    policy: MembershipPolicy,
    keep: usize,
    max_set_size: usize,
    sets: RwLock<Sets>,
    /// Slots the limits keep for members ([`MembershipPolicy::MembersFirst`]): the members
    /// tracked.
    reserved: AtomicUsize,
}

#[derive(Debug, Default)]
struct Sets {
    /// Epoch → its members, the newest `keep` epochs.
    epochs: BTreeMap<u64, Vec<PeerId>>,
    /// Member → in how many kept sets.
    count: HashMap<PeerId, usize>,
}

/// What a [`PeerSets::track`] changed.
#[derive(Debug, Default, PartialEq, Eq)]
pub(crate) struct Change {
    /// Members now that were not before.
    pub joined: Vec<PeerId>,
    /// Members before that are in no kept set now.
    pub left: Vec<PeerId>,
}

/// Why a [`crate::Node::track`] was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum TrackError {
    /// An epoch older than every kept one when `keep_epochs` are kept: it would be dropped at
    /// once.
    #[error("epoch {epoch} is older than the {keep} kept epochs")]
    Stale {
        /// The epoch asked for.
        epoch: u64,
        /// How many are kept.
        keep: usize,
    },
    /// More members than `MembersConfig::max_set_size`.
    #[error("a set of {len} members (at most {max})")]
    TooLarge {
        /// The set's size.
        len: usize,
        /// The bound.
        max: usize,
    },
    /// The node stopped.
    #[error("the node stopped")]
    Stopped,
}

impl PeerSets {
    pub(crate) fn new(config: &MembersConfig) -> Self {
        Self {
            policy: config.policy,
            keep: config.keep_epochs.max(1),
            max_set_size: config.max_set_size,
            sets: RwLock::new(Sets::default()),
            reserved: AtomicUsize::new(0),
        }
    }

    pub(crate) fn policy(&self) -> MembershipPolicy {
        self.policy
    }

    /// Whether `peer` is in a kept set.
    pub(crate) fn is_member(&self, peer: &PeerId) -> bool {
        self.read().count.contains_key(peer)
    }

    /// Slots the connection limits keep free of strangers.
    pub(crate) fn reserved(&self) -> usize {
        self.reserved.load(Ordering::Acquire)
    }

    /// The kept epochs `peer` is a member of, oldest first.
    pub(crate) fn epochs_of(&self, peer: &PeerId) -> Vec<u64> {
        self.read()
            .epochs
            .iter()
            .filter(|(_, members)| members.contains(peer))
            .map(|(epoch, _)| *epoch)
            .collect()
    }

    /// Every member of the kept sets.
    pub(crate) fn members(&self) -> Vec<PeerId> {
        let mut members: Vec<PeerId> = self.read().count.keys().copied().collect();
        members.sort();
        members
    }

    /// The kept epochs with their sizes, oldest first.
    pub(crate) fn epochs(&self) -> Vec<(u64, usize)> {
        self.read()
            .epochs
            .iter()
            .map(|(epoch, members)| (*epoch, members.len()))
            .collect()
    }

    /// Sets (or replaces) epoch `epoch`'s members and drops the epochs beyond the newest
    /// `keep`.
    pub(crate) fn track(&self, epoch: u64, members: &[PeerId]) -> Result<Change, TrackError> {
        if members.len() > self.max_set_size {
            return Err(TrackError::TooLarge {
                len: members.len(),
                max: self.max_set_size,
            });
        }
        let mut sets = self.sets.write().unwrap_or_else(|p| p.into_inner());
        if sets.epochs.len() >= self.keep
            && !sets.epochs.contains_key(&epoch)
            && sets
                .epochs
                .keys()
                .next()
                .is_some_and(|oldest| epoch < *oldest)
        {
            return Err(TrackError::Stale {
                epoch,
                keep: self.keep,
            });
        }
        let before: Vec<PeerId> = sets.count.keys().copied().collect();
        let mut unique = members.to_vec();
        unique.sort();
        unique.dedup();
        if let Some(old) = sets.epochs.insert(epoch, unique.clone()) {
            sets.forget(&old);
        }
        for peer in &unique {
            *sets.count.entry(*peer).or_default() += 1;
        }
        while sets.epochs.len() > self.keep {
            if let Some((_, old)) = sets.epochs.pop_first() {
                sets.forget(&old);
            }
        }
        let joined = unique
            .iter()
            .filter(|p| !before.contains(p))
            .copied()
            .collect();
        let left = before
            .into_iter()
            .filter(|p| !sets.count.contains_key(p))
            .collect();
        if self.policy == MembershipPolicy::MembersFirst {
            self.reserved.store(sets.count.len(), Ordering::Release);
        }
        Ok(Change { joined, left })
    }

    fn read(&self) -> std::sync::RwLockReadGuard<'_, Sets> {
        self.sets.read().unwrap_or_else(|p| p.into_inner())
    }
}

impl Sets {
    fn forget(&mut self, members: &[PeerId]) {
        for peer in members {
            if let Some(n) = self.count.get_mut(peer) {
                *n -= 1;
                if *n == 0 {
                    self.count.remove(peer);
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn peer(byte: u8) -> PeerId {
        glueberry_crypto::Identity::from_seed(&[byte; 32]).peer_id()
    }

    #[test]
    fn the_newest_sets_are_kept_and_a_peer_leaves_when_it_is_in_none_of_them() {
        let sets = PeerSets::new(&MembersConfig {
            keep_epochs: 2,
            ..MembersConfig::default()
        });
        let change = sets.track(1, &[peer(1), peer(2), peer(2)]).unwrap();
        assert_eq!(change.joined.len(), 2);
        let change = sets.track(2, &[peer(2), peer(3)]).unwrap();
        assert_eq!(change.joined, vec![peer(3)]);
        assert!(change.left.is_empty(), "epoch 1 is still kept");
        assert!(sets.is_member(&peer(1)));
        let change = sets.track(3, &[peer(3), peer(4)]).unwrap();
        assert_eq!(change.joined, vec![peer(4)]);
        assert_eq!(change.left, vec![peer(1)]);
        assert!(!sets.is_member(&peer(1)));
        assert!(sets.is_member(&peer(2)), "epoch 2 is kept");
        assert_eq!(sets.epochs_of(&peer(3)), vec![2, 3]);
        assert_eq!(
            sets.track(1, &[peer(9)]),
            Err(TrackError::Stale { epoch: 1, keep: 2 })
        );
        // Replacing an epoch's set takes the old members out of it.
        let change = sets.track(3, &[peer(3)]).unwrap();
        assert_eq!(change.left, vec![peer(4)]);
        assert_eq!(sets.members().len(), 2);
    }

    #[test]
    fn members_first_reserves_a_slot_per_member_and_a_set_is_bounded() {
        let sets = PeerSets::new(&MembersConfig {
            policy: MembershipPolicy::MembersFirst,
            max_set_size: 3,
            ..MembersConfig::default()
        });
        sets.track(5, &[peer(1), peer(2)]).unwrap();
        assert_eq!(sets.reserved(), 2);
        assert_eq!(
            sets.track(6, &[peer(1), peer(2), peer(3), peer(4)]),
            Err(TrackError::TooLarge { len: 4, max: 3 })
        );
    }
}
