//! The connection manager's limits, shared by all shards of a node: how many authenticated
//! connections in each direction and in total, how many inbound sockets, unfinished handshakes
//! and connection attempts per network group (an IPv4 /24, an IPv6 /64), and which inbound
//! peer makes room when inbound is full.
//!
//! Identities and addresses cost an attacker nothing, so nothing here trusts either: limits
//! are per network group, node-wide (not per shard), outbound room is reserved (inbound cannot
//! take it), persistent peers are never counted (the transport does not ask about them), and
//! eviction protects long-lived and diverse peers (ARCHITECTURE.md, "Admission").

use std::collections::HashMap;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Instant;

use glueberry_crypto::PeerId;
use glueberry_transport::{Admission, CloseCode, Direction};

use crate::members::{MembershipPolicy, PeerSets};

/// Connection limits. The defaults keep room for 50 outbound connections that inbound peers
/// cannot take (400 in all, Glueberry's high watermark, of which at most 350 inbound).
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ConnectionLimits {
    /// Authenticated inbound connections (default 350). When inbound is full a new inbound
    /// peer may evict one (ARCHITECTURE.md, "Inbound eviction"); persistent peers are never counted.
    pub max_inbound: usize,
    /// Authenticated outbound connections (default 50).
    pub max_outbound: usize,
    /// Authenticated connections in all (default 400).
    pub max_total: usize,
    /// Inbound sockets per network group, authenticated or not (default 16), refused at
    /// accept before any handshake work.
    pub max_inbound_per_group: usize,
    /// Inbound sockets per network group still in their secure handshake, node-wide
    /// (default 4); more are refused at accept.
    pub max_pending_per_group: usize,
    /// Inbound connection attempts a network group may make per second (default 10, with
    /// bursts of twice that); faster ones are refused at accept. Bounds a peer that reconnects
    /// in a loop and a handshake flood.
    pub inbound_attempts_per_group_per_sec: u32,
    /// Inbound handshakes the node begins per second, node-wide, with sources that are not
    /// known peers' addresses (default 200, with bursts of twice that): what a handshake flood
    /// from any number of network groups can make it spend (a responder's handshake costs two
    /// Diffie-Hellman operations and a signature check, ~0.4 ms of a core here). Known peers'
    /// addresses — persistent peers and the address book — are not counted, and also get a
    /// quarter of the pending-handshake table strangers cannot take: a flood delays strangers,
    /// not validators reconnecting.
    pub stranger_handshakes_per_sec: u32,
    /// The prefix that makes an IPv4 network group (default 24: a /24).
    pub ipv4_group_prefix: u8,
    /// The prefix that makes an IPv6 network group (default 64: one /64 is one subscriber's
    /// network, 2^64 addresses).
    pub ipv6_group_prefix: u8,
}

impl Default for ConnectionLimits {
    fn default() -> Self {
        Self {
            max_inbound: 350,
            max_outbound: 50,
            max_total: 400,
            max_inbound_per_group: 16,
            max_pending_per_group: 4,
            inbound_attempts_per_group_per_sec: 10,
            stranger_handshakes_per_sec: 200,
            ipv4_group_prefix: 24,
            ipv6_group_prefix: 64,
        }
    }
}

impl ConnectionLimits {
    /// The network group of `ip`: the address with its host bits cleared (IPv4-mapped IPv6
    /// addresses count as IPv4).
    pub fn group_of(&self, ip: IpAddr) -> IpAddr {
        match ip {
            IpAddr::V4(v4) => IpAddr::V4(mask_v4(v4, self.ipv4_group_prefix)),
            IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
                Some(v4) => IpAddr::V4(mask_v4(v4, self.ipv4_group_prefix)),
                None => {
                    let bits = u32::from(self.ipv6_group_prefix.min(128));
                    let mask = u128::MAX.checked_shl(128 - bits).unwrap_or(0);
                    IpAddr::V6(Ipv6Addr::from(u128::from(v6) & mask))
                }
            },
        }
    }
}

fn mask_v4(ip: Ipv4Addr, prefix: u8) -> Ipv4Addr {
    let bits = u32::from(prefix.min(32));
    let mask = u32::MAX.checked_shl(32 - bits).unwrap_or(0);
    Ipv4Addr::from(u32::from(ip) & mask)
}

/// An inbound peer holding a slot: its network group and since when.
#[derive(Debug, Clone, Copy)]
struct Inbound {
    group: Option<IpAddr>,
    since: Instant,
}

/// Per network group: sockets open, handshakes unfinished.
#[derive(Debug, Default, Clone, Copy)]
struct GroupCount {
    sockets: usize,
    pending: usize,
}

/// Evictions allowed in flight at once (a victim's slot comes back when its shard closes it);
/// past that, a new inbound peer is refused.
const MAX_EVICTIONS_IN_FLIGHT: usize = 16;

/// Asks the victim's shard to close its connection.
pub(crate) type Evictor = Box<dyn Fn(PeerId) + Send + Sync>;

/// The live counts behind [`ConnectionLimits`].
pub(crate) struct Limits {
    limits: ConnectionLimits,
    inbound: AtomicUsize,
    outbound: AtomicUsize,
    groups: Mutex<HashMap<IpAddr, GroupCount>>,
    /// Per network group: attempt tokens left and when they were last refilled.
    rates: Mutex<HashMap<IpAddr, (f64, Instant)>>,
    /// Admitted inbound peers (eviction candidates) and evictions asked for, not yet done.
    admitted: Mutex<(HashMap<PeerId, Inbound>, usize)>,
    evictor: OnceLock<Evictor>,
    evictions: AtomicUsize,
    /// Addresses of known peers (persistent, address book): not counted as strangers.
    known: std::sync::RwLock<std::collections::HashSet<IpAddr>>,
    /// Node-wide handshake tokens for strangers left, and when they were last refilled.
    strangers: Mutex<(f64, Instant)>,
    /// The tracked peer sets: members are admitted without being counted (and only they, under
    /// `MembersOnly`); under `MembersFirst` every member keeps a slot strangers cannot take.
    members: Arc<PeerSets>,
    /// Members admitted without being counted: their release gives nothing back (membership
    /// may change while they are connected).
    uncounted: Mutex<std::collections::HashSet<(PeerId, Direction)>>,
}

impl std::fmt::Debug for Limits {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Limits")
            .field("limits", &self.limits)
            .field("inbound", &self.inbound)
            .field("outbound", &self.outbound)
            .finish_non_exhaustive()
    }
}

/// Network groups whose attempt buckets are kept before full (idle) ones are forgotten.
const RATE_ENTRIES: usize = 4096;

/// Why an inbound socket was refused at accept.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum AcceptRefusal {
    Sockets,
    Rate,
    Pending,
    Strangers,
}

impl AcceptRefusal {
    /// As the application is told.
    pub(crate) fn refusal(self) -> crate::vocabulary::Refusal {
        match self {
            AcceptRefusal::Sockets => crate::vocabulary::Refusal::GroupSockets,
            AcceptRefusal::Rate => crate::vocabulary::Refusal::GroupRate,
            AcceptRefusal::Pending => crate::vocabulary::Refusal::GroupPending,
            AcceptRefusal::Strangers => crate::vocabulary::Refusal::Strangers,
        }
    }
}

impl Limits {
    pub(crate) fn new(limits: ConnectionLimits, members: Arc<PeerSets>) -> Self {
        Self {
            members,
            uncounted: Mutex::new(std::collections::HashSet::new()),
            limits,
            inbound: AtomicUsize::new(0),
            outbound: AtomicUsize::new(0),
            groups: Mutex::new(HashMap::new()),
            rates: Mutex::new(HashMap::new()),
            admitted: Mutex::new((HashMap::new(), 0)),
            evictor: OnceLock::new(),
            evictions: AtomicUsize::new(0),
            known: std::sync::RwLock::new(std::collections::HashSet::new()),
            strangers: Mutex::new((
                2.0 * f64::from(limits.stranger_handshakes_per_sec),
                Instant::now(),
            )),
        }
    }

    /// `ip` is a known peer's address (persistent, or in the address book): its handshakes are
    /// not counted as strangers'.
    pub(crate) fn know(&self, ip: IpAddr) {
        let mut known = self.known.write().unwrap_or_else(|p| p.into_inner());
        known.insert(ip.to_canonical());
    }

    /// Whether `ip` is a known peer's address.
    pub(crate) fn is_known(&self, ip: IpAddr) -> bool {
        let known = self.known.read().unwrap_or_else(|p| p.into_inner());
        !known.is_empty() && known.contains(&ip.to_canonical())
    }

    /// Takes one of the strangers' handshake tokens (node-wide, refilled continuously).
    fn stranger(&self, now: Instant) -> bool {
        let rate = f64::from(self.limits.stranger_handshakes_per_sec);
        let mut bucket = self.strangers.lock().unwrap_or_else(|p| p.into_inner());
        take_token(&mut bucket, rate, now)
    }

    /// How evictions reach the victim's shard (set once the shards exist).
    pub(crate) fn set_evictor(&self, evictor: Evictor) {
        let _ = self.evictor.set(evictor);
    }

    /// Inbound peers evicted to make room since start.
    pub(crate) fn evictions(&self) -> usize {
        self.evictions.load(Ordering::Relaxed)
    }

    /// Takes one attempt token of `group` (a bucket of twice the rate, refilled continuously).
    fn attempt(&self, group: IpAddr, now: Instant) -> bool {
        let rate = f64::from(self.limits.inbound_attempts_per_group_per_sec);
        let burst = 2.0 * rate;
        let mut rates = self.rates.lock().unwrap_or_else(|p| p.into_inner());
        if rates.len() >= RATE_ENTRIES && !rates.contains_key(&group) {
            // Forget the groups whose bucket has refilled: they are as good as new.
            rates.retain(|_, (tokens, at)| {
                *tokens + now.saturating_duration_since(*at).as_secs_f64() * rate < burst
            });
        }
        take_token(rates.entry(group).or_insert((burst, now)), rate, now)
    }

    /// Takes a slot for an inbound socket from `ip`, refused if its network group is at a
    /// limit (sockets, unfinished handshakes) or attempting too fast. The slot is given back
    /// when the returned guard drops (with the socket).
    pub(crate) fn accept_from(
        self: &Arc<Self>,
        ip: IpAddr,
        now: Instant,
    ) -> Result<IpSlot, AcceptRefusal> {
        let group = self.limits.group_of(ip);
        // A known peer's exact address (persistent, the address book, a member's record) is
        // not held to its network group's limits: validators share /24s in the same clouds.
        let known = self.is_known(ip);
        if !known && !self.attempt(group, now) {
            return Err(AcceptRefusal::Rate);
        }
        if !known && !self.stranger(now) {
            return Err(AcceptRefusal::Strangers);
        }
        let mut groups = self.groups.lock().unwrap_or_else(|p| p.into_inner());
        let count = groups.entry(group).or_default();
        if !known && count.sockets >= self.limits.max_inbound_per_group {
            return Err(AcceptRefusal::Sockets);
        }
        if !known && count.pending >= self.limits.max_pending_per_group {
            return Err(AcceptRefusal::Pending);
        }
        count.sockets += 1;
        count.pending += 1;
        Ok(IpSlot {
            ip,
            group,
            pending: true,
            limits: self.clone(),
        })
    }

    pub(crate) fn counts(&self) -> (usize, usize) {
        (
            self.inbound.load(Ordering::Relaxed),
            self.outbound.load(Ordering::Relaxed),
        )
    }

    /// Admits an inbound peer, evicting one to make room when inbound is full.
    fn admit_inbound(&self, peer: &PeerId, remote: Option<IpAddr>) -> Result<(), CloseCode> {
        let group = remote.map(|ip| self.limits.group_of(ip));
        let mut admitted = self.admitted.lock().unwrap_or_else(|p| p.into_inner());
        let (peers, in_flight) = &mut *admitted;
        let inbound = self.inbound.load(Ordering::Acquire);
        // Under MembersFirst every tracked member keeps a slot strangers cannot take.
        let total = inbound + self.outbound.load(Ordering::Acquire) + self.members.reserved();
        let full = inbound.saturating_sub(*in_flight) >= self.limits.max_inbound
            || total.saturating_sub(*in_flight) >= self.limits.max_total;
        if full {
            if *in_flight >= MAX_EVICTIONS_IN_FLIGHT {
                return Err(CloseCode::TooManyConnections);
            }
            let victim = choose_victim(peers, group).ok_or(CloseCode::TooManyConnections)?;
            let Some(evictor) = self.evictor.get() else {
                return Err(CloseCode::TooManyConnections);
            };
            peers.remove(&victim);
            *in_flight += 1;
            self.evictions.fetch_add(1, Ordering::Relaxed);
            evictor(victim);
        }
        self.inbound.fetch_add(1, Ordering::AcqRel);
        peers.insert(
            *peer,
            Inbound {
                group,
                since: Instant::now(),
            },
        );
        Ok(())
    }
}

/// Takes one token from `bucket` (tokens left, when last refilled), refilled continuously at
/// `rate` a second up to twice that; `false` when none is left.
fn take_token((tokens, at): &mut (f64, Instant), rate: f64, now: Instant) -> bool {
    *tokens = (*tokens + now.saturating_duration_since(*at).as_secs_f64() * rate).min(2.0 * rate);
    *at = now;
    if *tokens < 1.0 {
        return false;
    }
    *tokens -= 1.0;
    true
}

/// Which inbound peer makes room for a newcomer from `newcomer` (its network group), or none
/// (the newcomer is refused). Bitcoin Core's policy, reduced to what a node without
/// application scores knows, with age first:
/// 1. protect the longest-connected half of all inbound peers: peers that stayed are worth more
///    than peers that just came, and identities and addresses are free, so an attacker must
///    outlast honest peers to be safe — and however many network groups it comes from, it can
///    never evict a peer in the older half;
/// 2. of the younger half, take the network group with the most inbound peers (counted over all
///    inbound peers) and evict its newest;
/// 3. but only if the newcomer's group has fewer inbound peers than that group less one: a
///    group cannot evict its way past the largest one, so a Sybil flood from few groups only
///    churns itself, and a flood of one identity per group (where every group has one peer)
///    evicts no one.
fn choose_victim(peers: &HashMap<PeerId, Inbound>, newcomer: Option<IpAddr>) -> Option<PeerId> {
    let mut group_sizes: HashMap<Option<IpAddr>, usize> = HashMap::new();
    for entry in peers.values() {
        *group_sizes.entry(entry.group).or_default() += 1;
    }
    let mut by_age: Vec<(Instant, PeerId, Option<IpAddr>)> = peers
        .iter()
        .map(|(peer, entry)| (entry.since, *peer, entry.group))
        .collect();
    by_age.sort();
    // The older half (rounded up) is protected.
    let candidates = &by_age[by_age.len().div_ceil(2)..];
    let (victim_group, victim) = candidates
        .iter()
        .max_by_key(|(since, _, group)| (group_sizes[group], *since))
        .map(|&(_, peer, group)| (group, peer))?;
    let group_size = group_sizes[&victim_group];
    let newcomer_size = group_sizes.get(&newcomer).copied().unwrap_or(0);
    (newcomer_size + 1 < group_size).then_some(victim)
}

impl Admission for Limits {
    fn admit(
        &self,
        peer: &PeerId,
        direction: Direction,
        remote: Option<IpAddr>,
    ) -> Result<(), CloseCode> {
        if self.members.is_member(peer) {
            // Members are never counted against the limits for strangers, and never evicted.
            let mut uncounted = self.uncounted.lock().unwrap_or_else(|p| p.into_inner());
            uncounted.insert((*peer, direction));
            return Ok(());
        }
        if self.members.policy() == MembershipPolicy::MembersOnly {
            return Err(CloseCode::NotMember);
        }
        if direction == Direction::Inbound {
            return self.admit_inbound(peer, remote);
        }
        // Reserve, then check; undo when over. Concurrent shards may both undo near the limit,
        // never both pass it.
        let now_mine = self.outbound.fetch_add(1, Ordering::AcqRel) + 1;
        let total = now_mine + self.inbound.load(Ordering::Acquire) + self.members.reserved();
        if now_mine > self.limits.max_outbound || total > self.limits.max_total {
            self.outbound.fetch_sub(1, Ordering::AcqRel);
            return Err(CloseCode::TooManyConnections);
        }
        Ok(())
    }

    fn release(&self, peer: &PeerId, direction: Direction) {
        let mut uncounted = self.uncounted.lock().unwrap_or_else(|p| p.into_inner());
        if uncounted.remove(&(*peer, direction)) {
            return;
        }
        drop(uncounted);
        let counter = match direction {
            Direction::Inbound => {
                let mut admitted = self.admitted.lock().unwrap_or_else(|p| p.into_inner());
                let (peers, in_flight) = &mut *admitted;
                if peers.remove(peer).is_none() {
                    // It was evicted: its eviction is done.
                    *in_flight = in_flight.saturating_sub(1);
                }
                &self.inbound
            }
            Direction::Outbound => &self.outbound,
        };
        let _ = counter.fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| n.checked_sub(1));
    }
}

/// An inbound socket's place in its network group's counts; given back on drop.
#[derive(Debug)]
pub(crate) struct IpSlot {
    ip: IpAddr,
    group: IpAddr,
    pending: bool,
    limits: Arc<Limits>,
}

impl IpSlot {
    pub(crate) fn ip(&self) -> IpAddr {
        self.ip
    }

    /// Whether the socket is still counted as an unfinished handshake.
    pub(crate) fn is_pending(&self) -> bool {
        self.pending
    }

    /// The secure handshake finished: no longer counted as pending.
    pub(crate) fn handshake_done(&mut self) {
        if std::mem::take(&mut self.pending) {
            let mut groups = self.limits.groups.lock().unwrap_or_else(|p| p.into_inner());
            if let Some(count) = groups.get_mut(&self.group) {
                count.pending = count.pending.saturating_sub(1);
            }
        }
    }
}

impl Drop for IpSlot {
    fn drop(&mut self) {
        let mut groups = self.limits.groups.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(count) = groups.get_mut(&self.group) {
            count.sockets = count.sockets.saturating_sub(1);
            if self.pending {
                count.pending = count.pending.saturating_sub(1);
            }
            if count.sockets == 0 {
                groups.remove(&self.group);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn network_groups_are_a_v4_slash_24_and_a_v6_slash_64() {
        let limits = ConnectionLimits::default();
        let group = |s: &str| limits.group_of(s.parse().unwrap());
        assert_eq!(group("203.0.113.7"), group("203.0.113.200"));
        assert_ne!(group("203.0.113.7"), group("203.0.114.7"));
        assert_eq!(group("2001:db8:1:2:aaaa::1"), group("2001:db8:1:2:ffff::9"));
        assert_ne!(group("2001:db8:1:2::1"), group("2001:db8:1:3::1"));
        // An IPv4-mapped IPv6 address is its IPv4 group.
        assert_eq!(group("::ffff:203.0.113.9"), group("203.0.113.1"));
    }

    #[test]
    fn the_victim_is_the_newest_of_the_largest_group_and_never_a_groups_oldest() {
        let t0 = Instant::now();
        let at = |s: u64| t0 + std::time::Duration::from_secs(s);
        let peer = |n: u8| glueberry_crypto::Identity::from_seed(&[n; 32]).peer_id();
        let ip = |s: &str| Some(s.parse::<IpAddr>().unwrap());
        let mut peers = HashMap::new();
        // Group A: four peers (ages 0..3 s); group B: one peer, the oldest.
        for n in 0..4u8 {
            peers.insert(
                peer(n),
                Inbound {
                    group: ip("10.0.0.0"),
                    since: at(10 + u64::from(n)),
                },
            );
        }
        peers.insert(
            peer(9),
            Inbound {
                group: ip("10.9.0.0"),
                since: at(0),
            },
        );
        // A newcomer from a third group evicts A's newest.
        assert_eq!(choose_victim(&peers, ip("10.7.0.0")), Some(peer(3)));
        // A newcomer from A itself cannot evict its way in.
        assert_eq!(choose_victim(&peers, ip("10.0.0.0")), None);
        // One peer per group: everyone is protected.
        let diverse: HashMap<_, _> = (0..4u8)
            .map(|n| {
                (
                    peer(n),
                    Inbound {
                        group: ip(&format!("10.{n}.0.0")),
                        since: at(u64::from(n)),
                    },
                )
            })
            .collect();
        assert_eq!(choose_victim(&diverse, ip("10.7.0.0")), None);
    }

    fn peer(n: u8) -> PeerId {
        glueberry_crypto::Identity::from_seed(&[n; 32]).peer_id()
    }

    fn ip(s: &str) -> Option<IpAddr> {
        Some(s.parse().unwrap())
    }

    fn open_sets() -> Arc<PeerSets> {
        Arc::new(PeerSets::new(&crate::members::MembersConfig::default()))
    }

    fn sets(policy: MembershipPolicy, members: &[PeerId]) -> Arc<PeerSets> {
        let sets = PeerSets::new(&crate::members::MembersConfig {
            policy,
            ..crate::members::MembersConfig::default()
        });
        sets.track(1, members).expect("track");
        Arc::new(sets)
    }

    #[test]
    fn members_only_refuses_every_other_identity_with_not_member_and_counts_no_member() {
        let members: Vec<PeerId> = (0..3).map(peer).collect();
        let limits = Limits::new(
            ConnectionLimits {
                max_inbound: 1,
                max_total: 1,
                ..ConnectionLimits::default()
            },
            sets(MembershipPolicy::MembersOnly, &members),
        );
        let remote = ip("10.0.0.1");
        for member in &members {
            assert_eq!(limits.admit(member, Direction::Inbound, remote), Ok(()));
        }
        assert_eq!(limits.counts(), (0, 0), "members are not counted");
        assert_eq!(
            limits.admit(&peer(9), Direction::Inbound, remote),
            Err(CloseCode::NotMember)
        );
        assert_eq!(
            limits.admit(&peer(9), Direction::Outbound, None),
            Err(CloseCode::NotMember)
        );
        // A member's release gives nothing back that it never took.
        limits.release(&members[0], Direction::Inbound);
        assert_eq!(limits.counts(), (0, 0));
    }

    #[test]
    fn members_first_keeps_a_slot_per_member_and_strangers_never_evict_a_member() {
        let members: Vec<PeerId> = (0..3).map(peer).collect();
        let limits = Limits::new(
            ConnectionLimits {
                max_inbound: 5,
                max_total: 5,
                ..ConnectionLimits::default()
            },
            sets(MembershipPolicy::MembersFirst, &members),
        );
        let evicted = Arc::new(Mutex::new(Vec::new()));
        let seen = evicted.clone();
        limits.set_evictor(Box::new(move |p| seen.lock().unwrap().push(p)));
        for member in &members {
            assert_eq!(
                limits.admit(member, Direction::Inbound, ip("10.0.0.1")),
                Ok(())
            );
        }
        // Five slots, three kept for members: two strangers fit.
        for n in 10..12 {
            assert_eq!(
                limits.admit(&peer(n), Direction::Inbound, ip(&format!("10.{n}.0.1"))),
                Ok(())
            );
        }
        // A third stranger finds inbound full; it may evict a stranger (the newer half), never
        // a member, whatever its network group.
        for n in 20..40 {
            let _ = limits.admit(&peer(n), Direction::Inbound, ip(&format!("10.{n}.0.1")));
        }
        let evicted = evicted.lock().unwrap();
        assert!(evicted.iter().all(|p| !members.contains(p)), "{evicted:?}");
        assert_eq!(
            limits.admit(&peer(50), Direction::Outbound, None),
            Err(CloseCode::TooManyConnections),
            "outbound strangers share what members leave"
        );
    }

    /// Handshakes with strangers are budgeted node-wide, whatever their network groups; a
    /// known peer's address is not counted.
    #[test]
    fn strangers_share_a_node_wide_handshake_budget_and_known_peers_are_not_counted() {
        let limits = Arc::new(Limits::new(
            ConnectionLimits {
                stranger_handshakes_per_sec: 5,
                ..ConnectionLimits::default()
            },
            open_sets(),
        ));
        let now = Instant::now();
        let ip = |a: u8, b: u8| IpAddr::from([10, a, b, 1]);
        let mut slots = Vec::new();
        let mut refused = 0;
        for i in 0..30u8 {
            match limits.accept_from(ip(1, i), now) {
                Ok(slot) => slots.push(slot),
                Err(AcceptRefusal::Strangers) => refused += 1,
                Err(other) => panic!("{other:?}"),
            }
        }
        assert_eq!(
            (slots.len(), refused),
            (10, 20),
            "a burst of twice the rate"
        );
        limits.know(ip(9, 9));
        assert!(
            limits.accept_from(ip(9, 9), now).is_ok(),
            "a known peer is not counted"
        );
        assert_eq!(
            limits.accept_from(ip(1, 200), now).err(),
            Some(AcceptRefusal::Strangers)
        );
        // The bucket refills: a second later, five more strangers.
        let later = now + std::time::Duration::from_secs(1);
        let again = (0..10u8)
            .filter(|i| limits.accept_from(ip(2, *i), later).is_ok())
            .count();
        assert_eq!(again, 5);
    }

    /// Issue 24: inbound filled with one identity per /24 beside two honest peers that share a
    /// /24 and came first. The younger honest peer used to be evicted (the oldest of every
    /// group was protected, so it was the only candidate); now the older half is protected
    /// first, and no peer older than every attacker is evicted, at any fill.
    #[test]
    fn a_flood_of_one_identity_per_group_never_evicts_a_peer_older_than_it() {
        let t0 = Instant::now();
        let at = |s: u64| t0 + std::time::Duration::from_secs(s);
        let peer = |n: u32| {
            let mut seed = [0u8; 32];
            seed[..4].copy_from_slice(&n.to_be_bytes());
            glueberry_crypto::Identity::from_seed(&seed).peer_id()
        };
        let group = |a: u32| Some(IpAddr::from([10, (a >> 8) as u8, a as u8, 0]));
        let mut peers = HashMap::new();
        let honest = [peer(1_000_000), peer(1_000_001)];
        for (n, p) in honest.iter().enumerate() {
            peers.insert(
                *p,
                Inbound {
                    group: group(9999),
                    since: at(n as u64),
                },
            );
        }
        // Inbound holds 100: the victim is chosen once it is full.
        const FULL: usize = 100;
        for a in 0..346u32 {
            if peers.len() >= FULL
                && let Some(victim) = choose_victim(&peers, group(a))
            {
                assert!(
                    !honest.contains(&victim),
                    "an honest peer was evicted at {a}"
                );
                peers.remove(&victim);
            } else if peers.len() >= FULL {
                continue; // refused
            }
            peers.insert(
                peer(a),
                Inbound {
                    group: group(a),
                    since: at(10 + u64::from(a)),
                },
            );
        }
        assert!(honest.iter().all(|p| peers.contains_key(p)));
        assert_eq!(peers.len(), FULL);
        // Attackers from one group evict only their own group's newest, never the honest.
        for n in 0..50u32 {
            let newcomer = group(7);
            match choose_victim(&peers, newcomer) {
                Some(victim) => {
                    assert!(!honest.contains(&victim));
                    peers.remove(&victim);
                }
                None => continue,
            }
            peers.insert(
                peer(2_000_000 + n),
                Inbound {
                    group: newcomer,
                    since: at(1000 + u64::from(n)),
                },
            );
        }
    }
}
