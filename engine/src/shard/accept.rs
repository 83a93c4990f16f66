//! Admission at accept: per-IP limits and the shard's cap on handshakes, before any work is
//! spent on the socket.

use std::os::fd::OwnedFd;
use std::time::Instant;

use crate::api::Event;
use crate::limits::AcceptRefusal;
use crate::sys::socket;

use super::{ConnIo, Shard};

impl Shard {
    /// A socket the listener accepted: refused (closed by dropping it) if its source IP is over
    /// a limit or the shard has too many handshakes pending; otherwise a new inbound connection.
    pub(super) fn handle_accept(&mut self, fd: OwnedFd, now: Instant) {
        let peer_addr = socket2::SockRef::from(&fd)
            .peer_addr()
            .ok()
            .and_then(|a| a.as_socket());
        let slot = match peer_addr {
            Some(addr) => match self.shared.limits.accept_from(addr.ip(), now) {
                Ok(slot) => Some(slot),
                Err(refusal) => {
                    // Over a per-IP limit: closed (by dropping it) before any work.
                    let reason = match refusal {
                        AcceptRefusal::TooMany => "too many inbound connections from this IP",
                        AcceptRefusal::TooFast => {
                            "too many connection attempts per second from this IP"
                        }
                    };
                    self.emit(Event::Refused {
                        peer: None,
                        address: Some(addr),
                        reason: reason.into(),
                    });
                    return;
                }
            },
            None => None,
        };
        if let Some(addr) = peer_addr {
            let ip = addr.ip();
            let pending = self
                .conns
                .iter()
                .filter(|(id, io)| {
                    io.ip_slot.as_ref().is_some_and(|s| s.ip() == ip) && self.core.is_pending(**id)
                })
                .count();
            if pending >= self.shared.limits.max_pending_per_ip() {
                self.emit(Event::Refused {
                    peer: None,
                    address: Some(addr),
                    reason: "too many pending handshakes from this IP".into(),
                });
                return;
            }
        }
        socket::tune(&fd);
        let Some(id) = self.core.handle_accepted(now) else {
            // Too many handshakes pending on this shard: closed before any work.
            self.emit(Event::Refused {
                peer: None,
                address: peer_addr,
                reason: "too many pending handshakes".into(),
            });
            return;
        };
        let mut io = ConnIo::new(fd, true);
        io.ip_slot = slot;
        self.conns.insert(id, io);
    }
}
