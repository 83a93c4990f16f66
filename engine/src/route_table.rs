//! The route table: every (peer, stream) the application sends on, resolved once and kept.
//!
//! A route is shared by the application threads that send on it and by the shard that owns the
//! peer. It carries the two things a send needs without asking the shard: whether the stream is
//! open, and how much room its send queue has. The bound a sender sees is the bound that holds:
//! a sender reserves room for its message (one compare-and-swap) before the message enters the
//! shard's command queue, and the shard gives the room back when the peer has confirmed the
//! message (returned its credit), or when it hands the message back because the connection
//! ended. Written-but-unconfirmed messages are memory we hold for the peer, so they count
//! against the same bound as queued ones: whatever window the peer advertises, what one
//! stream of one peer makes us hold is this bound, and a peer that reads and never confirms
//! makes only its own senders wait (until the send-stall deadline cuts it). So the shard
//! can always take what was reserved, never refuses a message while the connection lives, and a
//! full stream makes only its own senders wait — not another stream of the same peer, and not
//! another peer.

use std::sync::atomic::{AtomicBool, AtomicU8, AtomicU16, AtomicU64, Ordering};

use glueberry_crypto::PeerId;
use glueberry_transport::{ConnId, StreamId};

use crate::vocabulary::StreamName;

/// Where a route's stream stands, as the shard last set it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub(crate) enum RouteState {
    /// The peer is not Established with this stream open (yet, or any more).
    Closed = 0,
    /// Messages are taken.
    Open = 1,
    /// The peer did not open the stream on its side.
    Rejected = 2,
    /// The peer left; the route is no longer kept up to date. Resolve the name again.
    Retired = 3,
}

impl RouteState {
    fn from_u8(value: u8) -> Self {
        match value {
            1 => Self::Open,
            2 => Self::Rejected,
            3 => Self::Retired,
            _ => Self::Closed,
        }
    }
}

/// Bytes live in the low 40 bits of the packed count, messages above them.
const BYTE_BITS: u32 = 40;
const BYTE_MASK: u64 = (1 << BYTE_BITS) - 1;
/// "No connection" in [`RouteShared::conn`].
const UNBOUND: u64 = u64::MAX;

fn pack(messages: u64, bytes: u64) -> u64 {
    (messages << BYTE_BITS) | bytes
}

fn unpack(packed: u64) -> (u64, u64) {
    (packed >> BYTE_BITS, packed & BYTE_MASK)
}

/// The state of one (peer, stream) shared by senders and the owning shard.
pub(crate) struct RouteShared {
    pub peer: PeerId,
    pub name: StreamName,
    /// The shard that owns the peer.
    pub shard: usize,
    state: AtomicU8,
    /// Messages and bytes reserved by senders and not yet given back, packed.
    queued: AtomicU64,
    max_messages: u64,
    max_bytes: u64,
    /// The node-wide budget this route's reservations count against.
    budget: std::sync::Arc<crate::budget::NodeBudget>,
    /// Senders waiting for room (or for the state to change).
    space: event_listener::Event,
    waiting: AtomicBool,
    /// The connection and stream the shard sends on; written by the shard only.
    conn: AtomicU64,
    stream: AtomicU16,
}

impl RouteShared {
    pub(crate) fn new(
        peer: PeerId,
        name: StreamName,
        shard: usize,
        (max_messages, max_bytes): (usize, usize),
        budget: std::sync::Arc<crate::budget::NodeBudget>,
    ) -> Self {
        Self {
            budget,
            peer,
            name,
            shard,
            state: AtomicU8::new(RouteState::Closed as u8),
            queued: AtomicU64::new(0),
            max_messages: (max_messages as u64).clamp(1, (1 << (64 - BYTE_BITS)) - 1),
            max_bytes: (max_bytes as u64).clamp(1, BYTE_MASK),
            space: event_listener::Event::new(),
            waiting: AtomicBool::new(false),
            conn: AtomicU64::new(UNBOUND),
            stream: AtomicU16::new(0),
        }
    }

    pub(crate) fn state(&self) -> RouteState {
        RouteState::from_u8(self.state.load(Ordering::Acquire))
    }

    /// Reserves room for `count` messages of `len` bytes in all (one message, or a batch);
    /// `false` when they do not fit. An empty queue takes anything, so a message larger than
    /// the byte bound still goes, alone.
    pub(crate) fn try_reserve(&self, count: usize, len: usize) -> bool {
        let (count, len) = (count as u64, len as u64);
        let mut current = self.queued.load(Ordering::Acquire);
        loop {
            let (messages, bytes) = unpack(current);
            if current != 0
                && (messages + count > self.max_messages || bytes + len > self.max_bytes)
            {
                return false;
            }
            let next = pack(
                (messages + count).min((1 << (64 - BYTE_BITS)) - 1),
                (bytes + len).min(BYTE_MASK),
            );
            match self.queued.compare_exchange_weak(
                current,
                next,
                Ordering::AcqRel,
                Ordering::Acquire,
            ) {
                Ok(_) => {
                    self.budget.add(self.shard, len);
                    return true;
                }
                Err(actual) => current = actual,
            }
        }
    }

    /// Gives back room for `messages` messages of `bytes` bytes in all (the shard), waking the
    /// senders that wait for it.
    pub(crate) fn release(&self, messages: u64, bytes: u64) {
        if messages == 0 {
            return;
        }
        self.queued
            .fetch_sub(pack(messages, bytes), Ordering::AcqRel);
        self.budget.sub(self.shard, bytes);
        if self.waiting.swap(false, Ordering::SeqCst) {
            self.space.notify(usize::MAX);
        }
    }

    /// Messages and bytes reserved and not yet given back.
    pub(crate) fn queued(&self) -> (u64, u64) {
        unpack(self.queued.load(Ordering::Acquire))
    }

    /// A listener for room or a state change; check again after making it, then await it.
    pub(crate) fn listen(&self) -> event_listener::EventListener {
        let listener = self.space.listen();
        self.waiting.store(true, Ordering::SeqCst);
        listener
    }

    /// The shard sets the state (and wakes the waiting senders, who look at it again).
    pub(crate) fn set_state(&self, state: RouteState) {
        self.state.store(state as u8, Ordering::Release);
        self.waiting.store(false, Ordering::SeqCst);
        self.space.notify(usize::MAX);
    }

    /// The shard binds the route to a connection's stream (or unbinds it with `None`).
    pub(crate) fn bind(&self, to: Option<(ConnId, StreamId)>) {
        match to {
            Some((conn, stream)) => {
                self.stream.store(stream.index(), Ordering::Relaxed);
                self.conn.store(conn.0, Ordering::Relaxed);
            }
            None => self.conn.store(UNBOUND, Ordering::Relaxed),
        }
    }

    /// The connection and stream the shard sends on (read by the shard only).
    pub(crate) fn binding(&self) -> Option<(ConnId, StreamId)> {
        let conn = self.conn.load(Ordering::Relaxed);
        (conn != UNBOUND).then(|| {
            (
                ConnId(conn),
                StreamId::from_index(self.stream.load(Ordering::Relaxed)),
            )
        })
    }
}

impl std::fmt::Debug for RouteShared {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Route")
            .field("peer", &self.peer)
            .field("stream", &self.name)
            .field("state", &self.state())
            .field("queued", &self.queued())
            .finish()
    }
}

/// Hashes a peer id by its first eight bytes: peer ids are uniformly random public keys, so
/// they need no mixing (SipHash over 32 bytes cost more than the rest of a name lookup).
#[derive(Default, Clone, Copy)]
pub(crate) struct PeerIdHasher(u64);

impl std::hash::Hasher for PeerIdHasher {
    fn finish(&self) -> u64 {
        self.0
    }

    fn write(&mut self, bytes: &[u8]) {
        // `PeerId`'s derived `Hash` writes its key bytes once; fold whatever comes in.
        for chunk in bytes.chunks(8) {
            let mut word = [0u8; 8];
            word[..chunk.len()].copy_from_slice(chunk);
            self.0 = self.0.rotate_left(5) ^ u64::from_le_bytes(word);
        }
    }
}

/// A map keyed by peer id, hashed by [`PeerIdHasher`].
pub(crate) type PeerMap<V> =
    std::collections::HashMap<PeerId, V, std::hash::BuildHasherDefault<PeerIdHasher>>;

/// The routes of every peer, by peer and stream name. Written when a peer connects or leaves
/// and when the application resolves a name the first time; read when it resolves a name.
#[derive(Default)]
pub(crate) struct RouteTable {
    routes: std::sync::RwLock<PeerMap<Vec<std::sync::Arc<RouteShared>>>>,
}

impl RouteTable {
    /// The route for (peer, name), made (Closed) if there is none.
    pub(crate) fn resolve(
        &self,
        peer: PeerId,
        name: &str,
        make: impl FnOnce() -> RouteShared,
    ) -> std::sync::Arc<RouteShared> {
        {
            let routes = self.routes.read().unwrap_or_else(|p| p.into_inner());
            if let Some(route) = routes
                .get(&peer)
                .and_then(|list| list.iter().find(|r| &*r.name == name))
            {
                return route.clone();
            }
        }
        let mut routes = self.routes.write().unwrap_or_else(|p| p.into_inner());
        let list = routes.entry(peer).or_default();
        if let Some(route) = list.iter().find(|r| &*r.name == name) {
            return route.clone();
        }
        let route = std::sync::Arc::new(make());
        list.push(route.clone());
        route
    }

    /// Forgets a peer's routes (it left); returns them.
    pub(crate) fn remove(&self, peer: &PeerId) -> Vec<std::sync::Arc<RouteShared>> {
        let mut routes = self.routes.write().unwrap_or_else(|p| p.into_inner());
        routes.remove(peer).unwrap_or_default()
    }

    /// Closes every route (the node stops): waiting senders wake and find it stopped.
    pub(crate) fn close_all(&self) {
        let routes = self.routes.read().unwrap_or_else(|p| p.into_inner());
        for route in routes.values().flatten() {
            route.bind(None);
            route.set_state(RouteState::Closed);
        }
    }

    /// The peer whose routes hold the most bytes (accepted and not confirmed), and how many.
    pub(crate) fn largest_holder(&self) -> Option<(PeerId, usize, u64)> {
        let routes = self.routes.read().unwrap_or_else(|p| p.into_inner());
        routes
            .iter()
            .filter_map(|(peer, list)| {
                let held: u64 = list.iter().map(|r| r.queued().1).sum();
                let shard = list.first()?.shard;
                Some((*peer, shard, held))
            })
            .max_by_key(|&(_, _, held)| held)
    }

    /// Routes kept, over all peers.
    pub(crate) fn len(&self) -> usize {
        let routes = self.routes.read().unwrap_or_else(|p| p.into_inner());
        routes.values().map(Vec::len).sum()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn route(max: (usize, usize)) -> RouteShared {
        let peer = glueberry_crypto::Identity::from_seed(&[1; 32]).peer_id();
        RouteShared::new(
            peer,
            StreamName::new("s"),
            0,
            max,
            std::sync::Arc::new(crate::budget::NodeBudget::unlimited()),
        )
    }

    #[test]
    fn reservations_are_exact_and_an_empty_queue_takes_any_message() {
        let r = route((3, 100));
        assert!(
            r.try_reserve(1, 1000),
            "alone, a message over the byte bound goes"
        );
        assert!(!r.try_reserve(1, 1));
        r.release(1, 1000);
        assert_eq!(r.queued(), (0, 0));
        assert!(r.try_reserve(1, 60));
        assert!(r.try_reserve(1, 40));
        assert!(!r.try_reserve(1, 1), "bytes at the bound");
        r.release(2, 100);
        for _ in 0..3 {
            assert!(r.try_reserve(1, 0));
        }
        assert!(!r.try_reserve(1, 0), "messages at the bound");
        assert!(!r.try_reserve(2, 0));
        r.release(3, 0);
        assert!(r.try_reserve(3, 100));
        assert!(!r.try_reserve(1, 0));
    }

    #[test]
    fn a_waiting_sender_is_woken_by_a_release() {
        let r = std::sync::Arc::new(route((1, 10)));
        assert!(r.try_reserve(1, 10));
        let waiter = {
            let r = r.clone();
            std::thread::spawn(move || {
                loop {
                    if r.try_reserve(1, 10) {
                        return;
                    }
                    let listener = r.listen();
                    if r.try_reserve(1, 10) {
                        return;
                    }
                    event_listener::Listener::wait(listener);
                }
            })
        };
        std::thread::sleep(std::time::Duration::from_millis(30));
        assert!(!waiter.is_finished());
        r.release(1, 10);
        waiter.join().expect("woken");
        assert_eq!(r.queued(), (1, 10));
    }
}
