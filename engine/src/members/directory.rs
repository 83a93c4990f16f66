//! What discovery knows of each member (its given addresses, its newest record), shared
//! between the discovery thread (`api/discovery.rs`), which changes it, and `Node::members`.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Instant;

use glueberry_crypto::{AddressRecord, PeerId};
use glueberry_transport::ConnState;

use super::{AddressSource, Change, Member, MemberInfo, PeerSets};

/// What the API tells the thread.
pub(crate) enum Tracked {
    /// `Node::track` changed the sets.
    Track {
        epoch: u64,
        members: Vec<Member>,
        change: Change,
    },
}

/// One member's entry: the address it is dialled at and its newest record.
#[derive(Debug, Clone)]
pub(crate) struct Known {
    pub(crate) given: Vec<SocketAddr>,
    pub(crate) record: Option<AddressRecord>,
    pub(crate) from_book: bool,
    /// When its record was last passed on, and whether a newer one waits to be.
    pub(crate) forwarded_at: Option<Instant>,
    pub(crate) forward_pending: bool,
    pub(crate) last_seen: Option<u64>,
}

impl Known {
    pub(crate) fn empty() -> Self {
        Self {
            given: Vec::new(),
            record: None,
            from_book: false,
            forwarded_at: None,
            forward_pending: false,
            last_seen: None,
        }
    }

    /// Where to dial: the member's own signed statement first (newer than any configuration),
    /// then what the application gave.
    pub(crate) fn address(&self) -> (Option<SocketAddr>, AddressSource) {
        if let Some(record) = &self.record {
            let source = if self.from_book {
                AddressSource::Book
            } else {
                AddressSource::Record
            };
            return (record.addresses().first().copied(), source);
        }
        match self.given.first() {
            Some(addr) => (Some(*addr), AddressSource::Given),
            None => (None, AddressSource::Unknown),
        }
    }
}

/// What discovery knows, shared with `Node::members` and the metrics.
#[derive(Debug, Default)]
pub(crate) struct Directory {
    known: Mutex<HashMap<PeerId, Known>>,
    /// Records dropped: malformed, from or about non-members, bad signatures, over budget.
    pub(crate) ignored: std::sync::atomic::AtomicU64,
    /// Records accepted (each replaced an older one, or was the first).
    pub(crate) accepted: std::sync::atomic::AtomicU64,
}

impl Directory {
    pub(crate) fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<PeerId, Known>> {
        self.known.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Every tracked member but `me`, with its state as `state` tells it (connection state,
    /// Ready).
    pub(crate) fn members(
        &self,
        me: PeerId,
        sets: &PeerSets,
        state: impl Fn(PeerId) -> (ConnState, bool),
    ) -> Vec<MemberInfo> {
        let known = self.lock();
        sets.members()
            .into_iter()
            .filter(|peer| *peer != me)
            .map(|peer| {
                let entry = known.get(&peer);
                let (state, ready) = state(peer);
                let (address, source) =
                    entry.map_or((None, AddressSource::Unknown), Known::address);
                MemberInfo {
                    peer,
                    epochs: sets.epochs_of(&peer),
                    state,
                    ready,
                    address,
                    source,
                    record_sequence: entry.and_then(|e| e.record.as_ref()).map(|r| r.sequence()),
                    last_seen: entry.and_then(|e| e.last_seen),
                }
            })
            .collect()
    }
}

/// The running discovery: how the API reaches it.
pub(crate) struct Discovery {
    pub(crate) commands: async_channel::Sender<Tracked>,
    pub(crate) directory: Arc<Directory>,
}
