//! Test utilities for applications: a network of real [`Node`]s that talk through in-memory
//! pipes instead of TCP, with partitions, and assertion helpers.
//!
//! Each node of a [`TestNetwork`] is an ordinary [`Node`] (same type, same API, same engine):
//! only its dials are different. When it dials another node of the network, the connection is
//! two Unix socket pairs (kernel memory pipes: no port, no loopback, no packet) joined by a
//! relay of two threads, and the whole protocol — handshake, records, streams, credits,
//! reconnection — runs over it as over TCP. [`TestNetwork::partition`] cuts the relays between
//! two nodes (both ends see the connection lost, as when a cable is pulled) and refuses dials
//! between them until [`TestNetwork::heal`]. A dial to an address that is not a node of the
//! network is refused like a closed port. It runs on either backend: io_uring where it can,
//! epoll where it cannot ([`crate::Backend`]).
//!
//! ```
//! use glueberry::testing::{TestNetwork, establish, expect_message};
//! use glueberry::crypto::Identity;
//! use std::time::Duration;
//!
//! # fn main() -> Result<(), Box<dyn std::error::Error>> {
//! let net = TestNetwork::new();
//! let a = net.node(Identity::generate()?, "test-chain")?;
//! let b = net.node(Identity::generate()?, "test-chain")?;
//! establish(&a, &b, &["consensus"], Duration::from_secs(5))?;
//! a.try_send(b.peer_id(), &a.stream("consensus"), bytes::Bytes::from_static(b"vote"))?;
//! let message = expect_message(&b, Duration::from_secs(5))?;
//! assert_eq!(&message.data[..], b"vote");
//!
//! net.partition(&a, &b); // the connection breaks; redials are refused
//! net.heal(&a, &b); // redials succeed again
//! # a.stop_blocking(); b.stop_blocking();
//! # Ok(())
//! # }
//! ```

use std::collections::{HashMap, HashSet};
use std::io;
use std::net::SocketAddr;
use std::os::fd::OwnedFd;
use std::os::unix::net::UnixStream;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, OnceLock, Weak};
use std::time::{Duration, Instant};

use glueberry_crypto::{Identity, PeerId};
use glueberry_transport::ConnState;

use crate::{Event, EventFilter, Message, Node, NodeConfig, StartError, Subscription};

use crate::sys::dial::Dialer;

#[derive(Default)]
struct Shared {
    nodes: Mutex<HashMap<SocketAddr, Weak<NodeSlot>>>,
    /// Pairs of addresses (smaller first) that cannot reach each other.
    partitions: Mutex<HashSet<(SocketAddr, SocketAddr)>>,
    /// Live relays: the two nodes' addresses and the relay's own ends, to cut it.
    links: Mutex<Vec<Link>>,
}

struct Link {
    from: SocketAddr,
    to: SocketAddr,
    ends: [UnixStream; 2],
    done: Arc<AtomicBool>,
}

impl Link {
    fn cut(&self) {
        for end in &self.ends {
            let _ = end.shutdown(std::net::Shutdown::Both);
        }
    }
}

/// Copies `from` into `to` until EOF or an error, then ends `to`'s writing side (the reader on
/// the other side sees EOF, as with TCP).
fn relay(mut from: UnixStream, mut to: UnixStream, done: Arc<AtomicBool>) {
    let _ = io::copy(&mut from, &mut to);
    let _ = to.shutdown(std::net::Shutdown::Write);
    let _ = from.shutdown(std::net::Shutdown::Read);
    done.store(true, Ordering::Release);
}

struct NodeSlot {
    node: Node,
}

/// A dialler bound to one node of the network.
struct NetDialer {
    shared: Arc<Shared>,
    me: OnceLock<SocketAddr>,
}

fn pair_key(a: SocketAddr, b: SocketAddr) -> (SocketAddr, SocketAddr) {
    if a <= b { (a, b) } else { (b, a) }
}

impl Dialer for NetDialer {
    fn dial(&self, addr: SocketAddr) -> io::Result<OwnedFd> {
        let refused = || io::Error::from(io::ErrorKind::ConnectionRefused);
        let me = *self.me.get().ok_or_else(refused)?;
        let lock = |m: &'static str| io::Error::other(m);
        if self
            .shared
            .partitions
            .lock()
            .map_err(|_| lock("partitions lock poisoned"))?
            .contains(&pair_key(me, addr))
        {
            return Err(refused());
        }
        let target = self
            .shared
            .nodes
            .lock()
            .map_err(|_| lock("nodes lock poisoned"))?
            .get(&addr)
            .and_then(Weak::upgrade)
            .ok_or_else(refused)?;
        // ours <-> near ~relay~ far <-> theirs
        let (ours, near) = UnixStream::pair()?;
        let (far, theirs) = UnixStream::pair()?;
        let done = Arc::new(AtomicBool::new(false));
        let link = Link {
            from: me,
            to: addr,
            ends: [near.try_clone()?, far.try_clone()?],
            done: done.clone(),
        };
        let (near2, far2, done2) = (near.try_clone()?, far.try_clone()?, done.clone());
        std::thread::Builder::new()
            .name("glueberry-test-relay".into())
            .spawn(move || relay(near, far, done))?;
        std::thread::Builder::new()
            .name("glueberry-test-relay".into())
            .spawn(move || relay(far2, near2, done2))?;
        target
            .node
            .inject_accepted(theirs.into())
            .map_err(|_| refused())?;
        let mut links = self
            .shared
            .links
            .lock()
            .map_err(|_| lock("links lock poisoned"))?;
        links.retain(|l| !l.done.load(Ordering::Acquire));
        links.push(link);
        Ok(ours.into())
    }
}

/// A set of nodes that connect to each other through in-memory pipes.
#[derive(Clone, Default)]
pub struct TestNetwork {
    shared: Arc<Shared>,
    slots: Arc<Mutex<Vec<Arc<NodeSlot>>>>,
}

impl std::fmt::Debug for TestNetwork {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TestNetwork").finish_non_exhaustive()
    }
}

impl TestNetwork {
    /// An empty network.
    pub fn new() -> Self {
        Self::default()
    }

    /// Starts a node of this network with Glueberry's defaults and one shard.
    pub fn node(&self, identity: Identity, network_id: &str) -> Result<Node, StartError> {
        let any = SocketAddr::from(([127, 0, 0, 1], 0));
        self.node_with(NodeConfig::new(identity, network_id, any).shards(1))
    }

    /// Starts a node of this network from a full configuration. Its listen address is only a
    /// name within the network (a loopback port is reserved for it and never dialled).
    pub fn node_with(&self, mut config: NodeConfig) -> Result<Node, StartError> {
        let dialer = Arc::new(NetDialer {
            shared: self.shared.clone(),
            me: OnceLock::new(),
        });
        config.dialer = Some(dialer.clone());
        let node = Node::start(config)?;
        let addr = node.listen_addr();
        let _ = dialer.me.set(addr);
        let slot = Arc::new(NodeSlot { node: node.clone() });
        if let Ok(mut nodes) = self.shared.nodes.lock() {
            nodes.insert(addr, Arc::downgrade(&slot));
        }
        if let Ok(mut slots) = self.slots.lock() {
            slots.push(slot);
        }
        Ok(node)
    }

    /// Cuts `a` from `b`: their connection breaks (both see it lost) and dials between them
    /// are refused until [`TestNetwork::heal`].
    pub fn partition(&self, a: &Node, b: &Node) {
        let key = pair_key(a.listen_addr(), b.listen_addr());
        if let Ok(mut partitions) = self.shared.partitions.lock() {
            partitions.insert(key);
        }
        if let Ok(mut links) = self.shared.links.lock() {
            links.retain(|link| {
                if pair_key(link.from, link.to) == key {
                    link.cut();
                    return false;
                }
                true
            });
        }
    }

    /// Lets `a` and `b` reach each other again.
    pub fn heal(&self, a: &Node, b: &Node) {
        if let Ok(mut partitions) = self.shared.partitions.lock() {
            partitions.remove(&pair_key(a.listen_addr(), b.listen_addr()));
        }
    }

    /// Stops every node of the network.
    pub fn stop(&self) {
        if let Ok(slots) = self.slots.lock() {
            for slot in slots.iter() {
                slot.node.stop_blocking();
            }
        }
    }
}

/// What an assertion helper waited for and did not see.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct Timeout(String);

/// Dials `b` from `a` and waits until both have each other Established and Ready (the other
/// side answered every stream: messages flow both ways at once), completing the application
/// handshake on both sides with `streams` when they reach Connected.
pub fn establish(a: &Node, b: &Node, streams: &[&str], timeout: Duration) -> Result<(), Timeout> {
    let events = subscriptions(a, b);
    a.connect(b.peer_id(), b.listen_addr())
        .map_err(|e| Timeout(format!("connect: {e}")))?;
    wait_established(a, b, events, streams, timeout)
}

/// Waits until `a` and `b` (already dialling, or reconnecting by themselves) have each other
/// Established and Ready, completing the application handshake on both sides with `streams`
/// (a side already Established when it is called is not waited for).
pub fn reestablish(a: &Node, b: &Node, streams: &[&str], timeout: Duration) -> Result<(), Timeout> {
    let events = subscriptions(a, b);
    wait_established(a, b, events, streams, timeout)
}

/// Each node's events about the other (their own subscriptions: the application's `events()`
/// receivers lose nothing to the helper).
fn subscriptions(a: &Node, b: &Node) -> (Subscription, Subscription) {
    let about = |peer| EventFilter::all().peer(peer);
    (
        a.subscribe(about(b.peer_id()), 1024),
        b.subscribe(about(a.peer_id()), 1024),
    )
}

fn wait_established(
    a: &Node,
    b: &Node,
    (ea, eb): (Subscription, Subscription),
    streams: &[&str],
    timeout: Duration,
) -> Result<(), Timeout> {
    // Either may already be past Connected (the events came before we listened): take the
    // current state into account too.
    for (node, peer) in [(a, b.peer_id()), (b, a.peer_id())] {
        if node.state(peer) == ConnState::Connected {
            let _ = node.complete_handshake(peer, streams);
        }
    }
    let mut done = [
        a.state(b.peer_id()) == ConnState::Established,
        b.state(a.peer_id()) == ConnState::Established,
    ];
    // A side Established before we listened may have had its Ready too: not waited for.
    let mut ready = done;
    let deadline = Instant::now() + timeout;
    while !(done[0] && done[1] && ready[0] && ready[1]) {
        if Instant::now() >= deadline {
            return Err(Timeout(format!(
                "not Established and Ready within {timeout:?} (a: {:?}, ready {}; b: {:?}, \
                 ready {})",
                a.state(b.peer_id()),
                ready[0],
                b.state(a.peer_id()),
                ready[1]
            )));
        }
        let mut idle = true;
        for (i, (node, events, peer)) in [(a, &ea, b.peer_id()), (b, &eb, a.peer_id())]
            .into_iter()
            .enumerate()
        {
            while let Some(event) = events.try_recv() {
                idle = false;
                match event {
                    Event::State { peer: p, state, .. } if p == peer => match state {
                        ConnState::Connected => node
                            .complete_handshake(peer, streams)
                            .map_err(|e| Timeout(format!("complete_handshake: {e}")))?,
                        ConnState::Established => done[i] = true,
                        _ => {}
                    },
                    Event::Ready { peer: p } if p == peer => ready[i] = true,
                    _ => {}
                }
            }
        }
        if idle {
            std::thread::sleep(Duration::from_millis(1));
        }
    }
    Ok(())
}

/// Waits until `node` sees `peer` in `state`.
pub fn wait_for_state(
    node: &Node,
    peer: PeerId,
    state: ConnState,
    timeout: Duration,
) -> Result<(), Timeout> {
    let deadline = Instant::now() + timeout;
    while node.state(peer) != state {
        if Instant::now() >= deadline {
            return Err(Timeout(format!(
                "{peer} not {state:?} within {timeout:?}: {:?}",
                node.state(peer)
            )));
        }
        std::thread::sleep(Duration::from_millis(1));
    }
    Ok(())
}

/// The next message `node` receives, within `timeout`.
pub fn expect_message(node: &Node, timeout: Duration) -> Result<Message, Timeout> {
    let mut messages = node.messages();
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(message) = messages.try_recv() {
            return Ok(message);
        }
        if Instant::now() >= deadline {
            return Err(Timeout(format!("no message within {timeout:?}")));
        }
        std::thread::sleep(Duration::from_millis(1));
    }
}

/// Asserts that `node` receives no message for `quiet`.
pub fn expect_no_message(node: &Node, quiet: Duration) -> Result<(), Timeout> {
    match expect_message(node, quiet) {
        Ok(m) => Err(Timeout(format!(
            "unexpected message from {} on {}: {} bytes",
            m.peer,
            m.stream,
            m.data.len()
        ))),
        Err(_) => Ok(()),
    }
}

/// Makes shard `index` of `node` end with a panic, as a bug would: for testing that what
/// watches the node (its liveness probe on [`Node::health`], a supervisor) notices. The node
/// reports itself not live from then on; calls that need that shard return instead of waiting.
pub fn crash_shard(node: &Node, index: usize) -> Result<(), crate::NodeSendError> {
    node.crash_shard(index)
}
