//! Host names, resolved off the shards: one thread per node, started the first time a peer is
//! dialled by name, so that `getaddrinfo` (which blocks) never stalls a shard or an async
//! caller. A peer dialled by name is resolved again before every dial, reconnections included.

use std::net::{SocketAddr, ToSocketAddrs};
use std::sync::mpsc::{SyncSender, TrySendError};
use std::sync::{Arc, Mutex};

use glueberry_crypto::PeerId;
use glueberry_transport::ConnId;

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

/// Where the thread hands each answer (the peer's shard, as a command).
pub(crate) type Deliver = Box<dyn Fn(Request, Resolved) + Send>;

/// Why a name was not queued.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Refused {
    /// Too many names wait.
    Full,
    /// The node is stopping (or no thread could be started).
    Stopped,
}

impl std::fmt::Display for Refused {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Refused::Full => "too many names waiting to be resolved",
            Refused::Stopped => "the node is stopping",
        })
    }
}

/// A node's resolver thread, started on first use.
#[derive(Default)]
pub(crate) struct Resolver {
    queue: Mutex<Option<SyncSender<Request>>>,
    stopped: std::sync::atomic::AtomicBool,
    /// Names resolved (or failed to) so far.
    resolved: Arc<std::sync::atomic::AtomicU64>,
}

impl Resolver {
    /// Queues `request`; the thread (started on first use with `deliver`) hands the answer to
    /// `deliver`.
    pub(crate) fn resolve(
        &self,
        request: Request,
        deliver: impl FnOnce() -> Deliver,
    ) -> Result<(), Refused> {
        if self.stopped.load(std::sync::atomic::Ordering::Acquire) {
            return Err(Refused::Stopped);
        }
        let mut queue = self.queue.lock().unwrap_or_else(|p| p.into_inner());
        if queue.is_none() {
            let (tx, rx) = std::sync::mpsc::sync_channel(QUEUE);
            let deliver = deliver();
            let resolved = self.resolved.clone();
            std::thread::Builder::new()
                .name("glueberry-resolver".into())
                .spawn(move || run(&rx, &deliver, &resolved))
                .map_err(|_| Refused::Stopped)?;
            *queue = Some(tx);
        }
        let Some(tx) = queue.as_ref() else {
            return Err(Refused::Stopped);
        };
        match tx.try_send(request) {
            Ok(()) => Ok(()),
            Err(TrySendError::Full(_)) => Err(Refused::Full),
            Err(TrySendError::Disconnected(_)) => Err(Refused::Stopped),
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
    deliver: &Deliver,
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
        deliver(request, result);
    }
}
