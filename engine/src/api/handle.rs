//! The `Node` handle itself: what every clone shares, and how a call reaches a peer's shard.
//! The handle's methods are spread by subject over the files beside this one; this file
//! depends on none of them.

use std::collections::HashMap;
use std::fmt;
use std::io;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;

use glueberry_crypto::PeerId;
use glueberry_transport::shard_of;

use crate::channel::Channel;
use crate::shard::{Command, ShardHandle, Shared};
use crate::vocabulary::NodeSendError;
use crate::vocabulary::{StreamName, Subscription};

pub(super) use crate::shard::push_command;

/// The state behind every `Node` handle.
pub(super) struct Inner {
    pub(super) peer_id: PeerId,
    /// Never empty: the configured listen address first.
    pub(super) listen_addrs: Vec<SocketAddr>,
    pub(super) shared: Arc<Shared>,
    /// Every event since the start (`Node::events`).
    pub(super) events: Subscription,
    /// Each shard's channel of messages for the default destination.
    pub(super) messages: Vec<Channel>,
    /// Destinations of their own, per stream name: each shard's channel.
    pub(super) outlets: Mutex<HashMap<String, Vec<Channel>>>,
    pub(super) message_buffer: usize,
    pub(super) threads: Mutex<Vec<JoinHandle<io::Result<()>>>>,
    pub(super) names: Mutex<HashMap<String, StreamName>>,
    pub(super) prepared: Mutex<HashMap<PeerId, Vec<String>>>,
    /// The blacklist as the application set it (and the address book stored it), for the
    /// application's threads: the shards enforce their own copies.
    pub(super) blacklisted: Mutex<std::collections::HashSet<PeerId>>,
    /// Streams used for requests: with each shard's channel where this node serves them.
    pub(super) request_streams: Mutex<HashMap<String, Option<Vec<Channel>>>>,
    pub(super) max_message_size: usize,
    pub(super) stopped: AtomicBool,
    #[cfg(feature = "http")]
    pub(super) endpoint: Mutex<Option<crate::observe::Endpoint>>,
    pub(super) backpressure_wait: ::metrics::Histogram,
    pub(super) backpressure_engaged: ::metrics::Counter,
    pub(super) next_injected: std::sync::atomic::AtomicUsize,
    /// The tracked peer sets (the limits read the same ones).
    pub(super) members: Arc<crate::members::PeerSets>,
    pub(super) members_config: crate::members::MembersConfig,
    /// This node's signed address record, when it has an address to publish.
    pub(super) own_record: Option<glueberry_crypto::AddressRecord>,
    pub(super) network_id: String,
    /// Discovery among members, started by the first `track`.
    pub(super) discovery: Mutex<Option<crate::members::Discovery>>,
}

/// A handle that does not keep the node running (discovery's thread holds one).
#[derive(Clone)]
pub(crate) struct WeakNode(pub(super) std::sync::Weak<Inner>);

impl WeakNode {
    pub(crate) fn upgrade(&self) -> Option<Node> {
        self.0.upgrade().map(|inner| Node { inner })
    }
}

/// A running node. Cheap to clone; all clones drive the same node.
#[derive(Clone)]
pub struct Node {
    pub(super) inner: Arc<Inner>,
}

impl fmt::Debug for Node {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Node")
            .field("peer_id", &self.inner.peer_id)
            .field("listen_addrs", &self.inner.listen_addrs)
            .finish_non_exhaustive()
    }
}

impl Node {
    pub(super) fn command(&self, peer: PeerId, command: Command) -> Result<(), NodeSendError> {
        push_command(self.handle(peer)?, command)
    }

    pub(super) fn handle(&self, peer: PeerId) -> Result<&ShardHandle, NodeSendError> {
        if self.inner.stopped.load(Ordering::Acquire) {
            return Err(NodeSendError::Stopped);
        }
        let shards = &self.inner.shared.shards;
        Ok(&shards[shard_of(&peer, shards.len())])
    }
}
