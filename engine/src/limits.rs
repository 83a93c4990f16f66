//! The connection manager's limits, shared by all shards of a node: how many authenticated
//! connections in each direction and in total, and how many inbound sockets per source IP.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use glueberry_crypto::PeerId;
use glueberry_transport::{Admission, CloseCode, Direction};

/// Connection limits (Glueberry's high watermark, 400, is the default total).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ConnectionLimits {
    /// Authenticated inbound connections (default 400).
    pub max_inbound: usize,
    /// Authenticated outbound connections (default 400).
    pub max_outbound: usize,
    /// Authenticated connections in all (default 400).
    pub max_total: usize,
    /// Inbound sockets per source IP address, authenticated or not (default 16), refused at
    /// accept before any handshake work.
    pub max_inbound_per_ip: usize,
}

impl Default for ConnectionLimits {
    fn default() -> Self {
        Self {
            max_inbound: 400,
            max_outbound: 400,
            max_total: 400,
            max_inbound_per_ip: 16,
        }
    }
}

/// The live counts behind [`ConnectionLimits`].
#[derive(Debug)]
pub(crate) struct Limits {
    limits: ConnectionLimits,
    inbound: AtomicUsize,
    outbound: AtomicUsize,
    per_ip: Mutex<HashMap<IpAddr, usize>>,
}

impl Limits {
    pub(crate) fn new(limits: ConnectionLimits) -> Self {
        Self {
            limits,
            inbound: AtomicUsize::new(0),
            outbound: AtomicUsize::new(0),
            per_ip: Mutex::new(HashMap::new()),
        }
    }

    /// Takes a slot for an inbound socket from `ip`; `None` if the IP is at its limit. The slot
    /// is given back when the returned guard drops (with the socket).
    pub(crate) fn accept_from(self: &Arc<Self>, ip: IpAddr) -> Option<IpSlot> {
        let mut per_ip = self.per_ip.lock().unwrap_or_else(|p| p.into_inner());
        let count = per_ip.entry(ip).or_insert(0);
        if *count >= self.limits.max_inbound_per_ip {
            return None;
        }
        *count += 1;
        Some(IpSlot {
            ip,
            limits: self.clone(),
        })
    }

    pub(crate) fn counts(&self) -> (usize, usize) {
        (
            self.inbound.load(Ordering::Relaxed),
            self.outbound.load(Ordering::Relaxed),
        )
    }
}

impl Admission for Limits {
    fn admit(&self, _peer: &PeerId, direction: Direction) -> Result<(), CloseCode> {
        let (mine, max_mine, other) = match direction {
            Direction::Inbound => (&self.inbound, self.limits.max_inbound, &self.outbound),
            Direction::Outbound => (&self.outbound, self.limits.max_outbound, &self.inbound),
        };
        // Reserve, then check; undo when over. Concurrent shards may both undo near the limit,
        // never both pass it.
        let now_mine = mine.fetch_add(1, Ordering::AcqRel) + 1;
        let total = now_mine + other.load(Ordering::Acquire);
        if now_mine > max_mine || total > self.limits.max_total {
            mine.fetch_sub(1, Ordering::AcqRel);
            return Err(CloseCode::TOO_MANY_CONNECTIONS);
        }
        Ok(())
    }

    fn release(&self, _peer: &PeerId, direction: Direction) {
        let counter = match direction {
            Direction::Inbound => &self.inbound,
            Direction::Outbound => &self.outbound,
        };
        let _ = counter.fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| n.checked_sub(1));
    }
}

/// An inbound socket's place in its IP's count; given back on drop.
#[derive(Debug)]
pub(crate) struct IpSlot {
    ip: IpAddr,
    limits: Arc<Limits>,
}

impl Drop for IpSlot {
    fn drop(&mut self) {
        let mut per_ip = self.limits.per_ip.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(count) = per_ip.get_mut(&self.ip) {
            *count -= 1;
            if *count == 0 {
                per_ip.remove(&self.ip);
            }
        }
    }
}
