//! Peers the application knows: the address book, the blacklist, statistics.

use std::net::SocketAddr;

use glueberry_crypto::PeerId;
use glueberry_transport::PeerStats;

use super::handle::{Node, push_command};
use crate::address_book::{AddressBook, PeerEntry};
use crate::shard::Command;
use crate::vocabulary::{NodeError, NodeSendError};

impl Node {
    pub(super) fn book(&self) -> std::sync::MutexGuard<'_, Option<AddressBook>> {
        self.inner
            .shared
            .book
            .lock()
            .unwrap_or_else(|p| p.into_inner())
    }

    pub(super) fn broadcast_blacklist(
        &self,
        peer: PeerId,
        blacklisted: bool,
    ) -> Result<(), NodeSendError> {
        for handle in &self.inner.shared.shards {
            push_command(handle, Command::Blacklist { peer, blacklisted })?;
        }
        Ok(())
    }

    /// Adds (or updates) a peer in the address book and dials it, at each of `addresses` in
    /// turn (on every redial too). Without an address book the peer is only dialled.
    pub fn add_peer(
        &self,
        peer: PeerId,
        addresses: Vec<SocketAddr>,
        metadata: std::collections::BTreeMap<String, String>,
    ) -> Result<(), NodeError> {
        self.know(&addresses);
        if let Some(book) = self.book().as_mut() {
            book.add(peer, addresses.clone(), metadata)?;
            tracing::info!(peer = %peer, addresses = addresses.len(), "peer added");
            if book.is_blacklisted(&peer) {
                return Ok(());
            }
        }
        self.connect_any(peer, addresses)?;
        Ok(())
    }

    /// Removes a peer from the address book and disconnects it.
    pub fn remove_peer(&self, peer: PeerId) -> Result<(), NodeError> {
        if let Some(book) = self.book().as_mut() {
            book.remove(&peer)?;
            tracing::info!(peer = %peer, "peer removed");
        }
        self.disconnect(peer)?;
        Ok(())
    }

    /// Blacklists a peer: its connection closed at once, every future connection from or to
    /// it refused before any application byte (it is told with CLOSE code 7, which it treats
    /// as permanent), and persisted. Enforced in memory first: if the address book cannot be
    /// written the blacklist still holds until the node stops, and the error is returned.
    pub fn blacklist(&self, peer: PeerId) -> Result<(), NodeError> {
        self.broadcast_blacklist(peer, true)?;
        self.blacklisted_set().insert(peer);
        tracing::warn!(peer = %peer, reason = "blacklisted by the application", "peer blacklisted");
        if let Some(book) = self.book().as_mut()
            && let Err(e) = book.set_blacklisted(peer, true)
        {
            tracing::error!(peer = %peer, error = %e, "blacklist enforced but not persisted");
            return Err(e.into());
        }
        Ok(())
    }

    /// Lifts a blacklist (the peer is not dialled again by itself; `connect` it).
    pub fn unblacklist(&self, peer: PeerId) -> Result<(), NodeError> {
        if let Some(book) = self.book().as_mut() {
            book.set_blacklisted(peer, false)?;
        }
        self.broadcast_blacklist(peer, false)?;
        self.blacklisted_set().remove(&peer);
        Ok(())
    }

    /// Whether the peer is blacklisted ([`Node::blacklist`], or stored so in the address book).
    pub fn is_blacklisted(&self, peer: PeerId) -> bool {
        self.blacklisted_set().contains(&peer)
    }

    fn blacklisted_set(&self) -> std::sync::MutexGuard<'_, std::collections::HashSet<PeerId>> {
        self.inner
            .blacklisted
            .lock()
            .unwrap_or_else(|p| p.into_inner())
    }

    /// A peer's address book entry.
    pub fn peer(&self, peer: PeerId) -> Option<PeerEntry> {
        self.book().as_ref().and_then(|b| b.get(&peer).cloned())
    }

    /// Every peer in the address book.
    pub fn peers(&self) -> Vec<PeerEntry> {
        self.book()
            .as_ref()
            .map_or_else(Vec::new, |b| b.list().cloned().collect())
    }

    /// Statistics of one peer, from its shard.
    pub async fn peer_stats(&self, peer: PeerId) -> Option<PeerStats> {
        let (reply, answer) = async_channel::bounded(1);
        let handle = self.handle(peer).ok()?;
        handle
            .commands
            .push(Command::Stats {
                peer: Some(peer),
                reply,
            })
            .await
            .ok()?;
        handle.wake();
        answer.recv().await.ok()?.into_iter().next()
    }

    /// Statistics of every peer the node holds state for, from all shards.
    pub async fn stats(&self) -> Vec<PeerStats> {
        let mut all = Vec::new();
        for handle in &self.inner.shared.shards {
            let (reply, answer) = async_channel::bounded(1);
            if handle
                .commands
                .push(Command::Stats { peer: None, reply })
                .await
                .is_err()
            {
                continue;
            }
            handle.wake();
            if let Ok(stats) = answer.recv().await {
                all.extend(stats);
            }
        }
        all
    }
}
