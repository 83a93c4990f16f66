//! The connection manager's limits, shared by all shards of a node: how many authenticated
//! connections in each direction and in total, how many inbound sockets per source IP, and how
//! fast one source IP may open them.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Instant;

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
    /// Inbound sockets per source IP still in their secure handshake, per shard (default 4);
    /// more are refused at accept.
    pub max_pending_per_ip: usize,
    /// Inbound connection attempts a source IP may make per second (default 10, with bursts
    /// of twice that); faster ones are refused at accept. Bounds a peer that reconnects in a
    /// loop and a handshake flood.
    pub inbound_attempts_per_ip_per_sec: u32,
}

impl Default for ConnectionLimits {
    fn default() -> Self {
        Self {
            max_inbound: 400,
            max_outbound: 400,
            max_total: 400,
            max_inbound_per_ip: 16,
            max_pending_per_ip: 4,
            inbound_attempts_per_ip_per_sec: 10,
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
    /// Per source IP: attempt tokens left and when they were last refilled.
    rates: Mutex<HashMap<IpAddr, (f64, Instant)>>,
}

/// Source IPs whose attempt buckets are kept before full (idle) ones are forgotten.
const RATE_ENTRIES: usize = 4096;

/// Why an inbound socket was refused at accept.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum AcceptRefusal {
    TooMany,
    TooFast,
}

impl Limits {
    pub(crate) fn new(limits: ConnectionLimits) -> Self {
        Self {
            limits,
            inbound: AtomicUsize::new(0),
            outbound: AtomicUsize::new(0),
            per_ip: Mutex::new(HashMap::new()),
            rates: Mutex::new(HashMap::new()),
        }
    }

    pub(crate) fn max_pending_per_ip(&self) -> usize {
        self.limits.max_pending_per_ip
    }

    /// Takes one attempt token of `ip` (a bucket of twice the rate, refilled continuously).
    fn attempt(&self, ip: IpAddr, now: Instant) -> bool {
        let rate = f64::from(self.limits.inbound_attempts_per_ip_per_sec);
        let burst = 2.0 * rate;
        let mut rates = self.rates.lock().unwrap_or_else(|p| p.into_inner());
        if rates.len() >= RATE_ENTRIES && !rates.contains_key(&ip) {
            // Forget the sources whose bucket has refilled: they are as good as new.
            rates.retain(|_, (tokens, at)| {
                *tokens + now.saturating_duration_since(*at).as_secs_f64() * rate < burst
            });
        }
        let (tokens, at) = rates.entry(ip).or_insert((burst, now));
        *tokens = (*tokens + now.saturating_duration_since(*at).as_secs_f64() * rate).min(burst);
        *at = now;
        if *tokens < 1.0 {
            return false;
        }
        *tokens -= 1.0;
        true
    }

    /// Takes a slot for an inbound socket from `ip`, refused if the IP is at its limit or
    /// attempting too fast. The slot is given back when the returned guard drops (with the
    /// socket).
    pub(crate) fn accept_from(
        self: &Arc<Self>,
        ip: IpAddr,
        now: Instant,
    ) -> Result<IpSlot, AcceptRefusal> {
        if !self.attempt(ip, now) {
            return Err(AcceptRefusal::TooFast);
        }
        let mut per_ip = self.per_ip.lock().unwrap_or_else(|p| p.into_inner());
        let count = per_ip.entry(ip).or_insert(0);
        if *count >= self.limits.max_inbound_per_ip {
            return Err(AcceptRefusal::TooMany);
        }
        *count += 1;
        Ok(IpSlot {
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

impl IpSlot {
    pub(crate) fn ip(&self) -> IpAddr {
        self.ip
    }
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
