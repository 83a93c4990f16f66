//! Host names, resolved off the shards: one thread per node, started the first time a peer is
//! dialled by name, so that `getaddrinfo` (which blocks) never stalls a shard or an async
//! caller. A peer dialled by name is resolved again before every dial, reconnections included.

use std::net::{SocketAddr, ToSocketAddrs};
use std::sync::mpsc::{SyncSender, TrySendError};
use std::sync::{Arc, Mutex, Weak};

use glueberry_crypto::PeerId;
use glueberry_transport::{ConnId, shard_of};

use crate::NodeSendError;
use crate::shard::{Command, Shared};

/// Names waiting to be resolved, per node. A full queue fails the dial (it is retried like any
/// failed dial) rather than grow.
const QUEUE: usize = 1024;

/// A name to resolve for a peer: for its first dial (`conn: None`) or for the dial `conn`.
pub(crate) struct Request {
    pub peer: PeerId,
    pub conn: Option<ConnId>,
    pub host: Arc<str>,
    pub port: u16,
}

/// What came of it, for the peer's shard.
pub(crate) type Resolved = Result<Vec<SocketAddr>, String>;

/// A node's resolver thread, started on first use.
#[derive(Default)]
pub(crate) struct Resolver {
    queue: Mutex<Option<SyncSender<Request>>>,
    stopped: std::sync::atomic::AtomicBool,
    /// Names resolved (or failed to) so far.
    resolved: Arc<std::sync::atomic::AtomicU64>,
}

impl Resolver {
    /// Queues `request`: refused as `BufferFull` when too many names wait, `Stopped` when the
    /// node stops (or no thread can be started).
    pub(crate) fn resolve(
        &self,
        shared: &Arc<Shared>,
        request: Request,
    ) -> Result<(), NodeSendError> {
        if self.stopped.load(std::sync::atomic::Ordering::Acquire) {
            return Err(NodeSendError::Stopped);
        }
        let mut queue = self.queue.lock().unwrap_or_else(|p| p.into_inner());
        if queue.is_none() {
            let (tx, rx) = std::sync::mpsc::sync_channel(QUEUE);
            let shared = Arc::downgrade(shared);
            let resolved = self.resolved.clone();
            std::thread::Builder::new()
                .name("glueberry-resolver".into())
                .spawn(move || run(&rx, &shared, &resolved))
                .map_err(|_| NodeSendError::Stopped)?;
            *queue = Some(tx);
        }
        let Some(tx) = queue.as_ref() else {
            return Err(NodeSendError::Stopped);
        };
        match tx.try_send(request) {
            Ok(()) => Ok(()),
            Err(TrySendError::Full(_)) => Err(NodeSendError::BufferFull),
            Err(TrySendError::Disconnected(_)) => Err(NodeSendError::Stopped),
        }
    }

    /// Names resolved (or failed to) so far: in `dump_state`.
    pub(crate) fn resolved(&self) -> u64 {
        self.resolved.load(std::sync::atomic::Ordering::Relaxed)
    }

    /// Ends the thread (at stop): it finishes the name it is resolving, if any, and exits.
    pub(crate) fn stop(&self) {
        self.stopped
            .store(true, std::sync::atomic::Ordering::Release);
        self.queue.lock().unwrap_or_else(|p| p.into_inner()).take();
    }
}

fn run(
    requests: &std::sync::mpsc::Receiver<Request>,
    shared: &Weak<Shared>,
    resolved: &std::sync::atomic::AtomicU64,
) {
    while let Ok(request) = requests.recv() {
        let result: Resolved = (&*request.host, request.port)
            .to_socket_addrs()
            .map(Iterator::collect::<Vec<_>>)
            .map_err(|e| format!("resolve {}: {e}", request.host))
            .and_then(|addrs| {
                if addrs.is_empty() {
                    Err(format!("resolve {}: no address", request.host))
                } else {
                    Ok(addrs)
                }
            });
        resolved.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let Some(shared) = shared.upgrade() else {
            return;
        };
        let owner = shard_of(&request.peer, shared.shards.len());
        let command = Command::Resolved {
            peer: request.peer,
            conn: request.conn,
            host: request.host,
            port: request.port,
            result,
        };
        // A shard whose queue is full drops it: the dial then ends by its timeout and is
        // retried like any other.
        let _ = crate::api::push_command(&shared.shards[owner], command);
    }
}
