//! Peer sets on the `Node` handle: `track`, `members`, and what discovery (`crate::members`)
//! asks of the node.

use glueberry_crypto::{AddressRecord, PeerId};
use glueberry_transport::CloseCode;

use super::handle::{Node, WeakNode};
use crate::members::{MEMBERS_STREAM, Member, MemberInfo, TrackError, Tracked};
use crate::shard::Command;
use crate::{Event, MembershipPolicy};

impl Node {
    /// Tracks epoch `epoch`'s peer set (the validators the chain names for it). The node keeps
    /// the newest `MembersConfig::keep_epochs` sets (default 3); a peer is a member while it
    /// is in any of them. Every member is dialled and kept connected (persistent: redialled
    /// with capped backoff, never counted against the limits for strangers): at the addresses
    /// given here, or where the members' signed address records say, which members exchange on
    /// the `glueberry-members` stream from the first `track` on (so a node that knows a few
    /// bootstrap members' addresses finds the rest). A peer in no kept set any more is cut
    /// with `NotMember` after `MembersConfig::grace`. Tracking the same epoch again replaces
    /// its set. [`Event::Members`] reports each change.
    ///
    /// ```no_run
    /// # use glueberry::{Member, MembershipPolicy, Node, NodeConfig, Identity};
    /// # fn f(validators: Vec<glueberry::PeerId>, boot: glueberry::PeerId) -> Result<(), Box<dyn std::error::Error>> {
    /// let config = NodeConfig::new(Identity::generate()?, "chain-1", "0.0.0.0:26656".parse()?)
    ///     .membership(MembershipPolicy::MembersOnly);
    /// let node = Node::start(config)?;
    /// let mut members: Vec<Member> = validators.into_iter().map(Member::new).collect();
    /// members.push(Member::at(boot, "203.0.113.5:26656".parse()?)); // a bootstrap member
    /// node.track(7, members)?;
    /// # Ok(()) }
    /// ```
    pub fn track(&self, epoch: u64, members: Vec<Member>) -> Result<(), TrackError> {
        let ids: Vec<PeerId> = members.iter().map(|m| m.peer).collect();
        let mut discovery = self
            .inner
            .discovery
            .lock()
            .unwrap_or_else(|p| p.into_inner());
        if discovery.is_none() {
            let started = super::discovery::start(
                self,
                &self.inner.members_config,
                self.inner.own_record.clone(),
                self.inner.network_id.clone(),
                self.inner.members.clone(),
            )
            .map_err(|_| TrackError::Stopped)?;
            *discovery = Some(started);
        }
        let change = self.inner.members.track(epoch, &ids)?;
        for member in &members {
            self.know(&member.addresses);
        }
        let command = Tracked::Track {
            epoch,
            members,
            change,
        };
        discovery
            .as_ref()
            .ok_or(TrackError::Stopped)?
            .commands
            .try_send(command)
            .map_err(|_| TrackError::Stopped)
    }

    /// Every other member of the kept peer sets (this node left out): its epochs, connection state, the address it is
    /// dialled at and where that came from, its newest record's sequence, when it was last
    /// connected (this run). Sorted by peer id.
    pub fn members(&self) -> Vec<MemberInfo> {
        let discovery = self
            .inner
            .discovery
            .lock()
            .unwrap_or_else(|p| p.into_inner());
        match discovery.as_ref() {
            Some(d) => d
                .directory
                .members(self.peer_id(), &self.inner.members, |peer| {
                    (self.state(peer), self.is_ready(peer))
                }),
            None => Vec::new(),
        }
    }

    /// Whether `peer` is in a kept peer set.
    pub fn is_member(&self, peer: &PeerId) -> bool {
        self.inner.members.is_member(peer)
    }

    /// The kept epochs and their sets' sizes, oldest first.
    pub fn epochs(&self) -> Vec<(u64, usize)> {
        self.inner.members.epochs()
    }

    /// Who is admitted besides members.
    pub fn membership_policy(&self) -> MembershipPolicy {
        self.inner.members.policy()
    }

    /// (members Ready, members tracked), this node not counted: what the health check reports.
    pub fn members_connected(&self) -> (usize, usize) {
        let me = self.peer_id();
        let members: Vec<PeerId> = self
            .inner
            .members
            .members()
            .into_iter()
            .filter(|p| *p != me)
            .collect();
        let connected = members.iter().filter(|p| self.is_ready(**p)).count();
        (connected, members.len())
    }

    /// Address records accepted and ignored (malformed, from or about non-members, a bad
    /// signature, over a member's budget) by discovery.
    pub fn record_counts(&self) -> (u64, u64) {
        let discovery = self
            .inner
            .discovery
            .lock()
            .unwrap_or_else(|p| p.into_inner());
        discovery.as_ref().map_or((0, 0), |d| {
            (
                d.directory
                    .accepted
                    .load(std::sync::atomic::Ordering::Relaxed),
                d.directory
                    .ignored
                    .load(std::sync::atomic::Ordering::Relaxed),
            )
        })
    }

    /// This node's own signed address record, if it publishes one.
    pub fn address_record(&self) -> Option<&AddressRecord> {
        self.inner.own_record.as_ref()
    }

    /// Whether `complete_handshake` opens the members' stream too.
    pub(super) fn discovers(&self) -> bool {
        self.inner
            .discovery
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .is_some()
    }

    /// Runs `make` with this node's own recorder in effect (when it has one): the metric
    /// handles it makes record there.
    pub(crate) fn in_recorder<T>(&self, make: impl FnOnce() -> T) -> T {
        match self.inner.shared.recorder.as_deref() {
            Some(recorder) => ::metrics::with_local_recorder(recorder, make),
            None => make(),
        }
    }

    pub(crate) fn downgrade(&self) -> WeakNode {
        WeakNode(std::sync::Arc::downgrade(&self.inner))
    }

    /// Records kept in the address book from an earlier run.
    pub(crate) fn book_records(&self) -> Vec<AddressRecord> {
        let book = self
            .inner
            .shared
            .book
            .lock()
            .unwrap_or_else(|p| p.into_inner());
        book.as_ref().map_or_else(Vec::new, |b| {
            b.list().filter_map(|e| e.address_record.clone()).collect()
        })
    }

    /// Keeps a member's newest record in the address book (written in the book's next batch).
    pub(crate) fn keep_record(&self, record: AddressRecord) {
        let mut book = self
            .inner
            .shared
            .book
            .lock()
            .unwrap_or_else(|p| p.into_inner());
        if let Some(book) = book.as_mut() {
            book.set_address_record(record);
        }
    }

    /// Offers an event to the subscriptions, from any thread.
    pub(crate) fn publish(&self, event: Event) {
        crate::shard::publish(&self.inner.shared, event);
    }

    /// Closes `peer`'s connection with `code`; it is not redialled by itself.
    pub(crate) fn cut(&self, peer: PeerId, code: CloseCode) {
        let _ = self.command(peer, Command::Cut { peer, code });
    }

    /// The streams `complete_handshake` opens: the application's, and the members' stream once
    /// the node tracks a peer set. An application may not name that one.
    pub(super) fn with_members_stream(
        &self,
        streams: Vec<String>,
    ) -> Result<Vec<String>, super::NodeSendError> {
        if streams.iter().any(|s| s == MEMBERS_STREAM) {
            return Err(super::NodeSendError::ReservedStream);
        }
        let mut streams = streams;
        if self.discovers() {
            streams.push(MEMBERS_STREAM.to_string());
        }
        Ok(streams)
    }
}
