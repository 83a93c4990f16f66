//! Admission at accept: the network group's limits (node-wide) and the shard's cap on
//! handshakes, before any work is spent on the socket.

use std::os::fd::OwnedFd;
use std::time::Instant;

use crate::sys::socket;
use crate::vocabulary::Event;

use super::{ConnIo, Shard};

impl Shard {
    /// A socket the listener accepted: refused (closed by dropping it) if its network group is over
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
                    // Over a network group's limit: closed (by dropping it) before any work.
                    self.emit(Event::Refused {
                        peer: None,
                        address: Some(addr),
                        reason: refusal.refusal(),
                    });
                    return;
                }
            },
            None => None,
        };
        // A quarter of the pending-handshake table is kept for known peers' addresses
        // (persistent, address book): a flood of strangers cannot fill it against them.
        let known = peer_addr.is_some_and(|a| self.shared.limits.is_known(a.ip()));
        let stranger_cap =
            self.core.max_pending_handshakes() - self.core.max_pending_handshakes() / 4;
        if !known && self.core.pending_handshakes() >= stranger_cap {
            self.emit(Event::Refused {
                peer: None,
                address: peer_addr,
                reason: crate::vocabulary::Refusal::Handshakes,
            });
            return;
        }
        socket::tune(&fd);
        let Some(id) = self.core.handle_accepted(peer_addr.map(|a| a.ip()), now) else {
            // Too many handshakes pending on this shard: closed before any work.
            self.emit(Event::Refused {
                peer: None,
                address: peer_addr,
                reason: crate::vocabulary::Refusal::Handshakes,
            });
            return;
        };
        let mut io = ConnIo::new(fd, true);
        io.ip_slot = slot;
        self.add_conn(id, io);
    }
}
