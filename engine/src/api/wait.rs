//! Waiting for a peer: until it is authenticated (`connect_and_wait`, `connected`), until both
//! sides opened their streams (`ready`, `connect_ready`).

use std::net::SocketAddr;

use glueberry_crypto::PeerId;
use glueberry_transport::ConnState;

use super::handle::Node;
use crate::vocabulary::{ConnectError, DialFailure, NodeSendError, WaitError};
use crate::vocabulary::{Event, EventFilter, EventKind};

/// What a wait is for.
#[derive(Clone, Copy)]
enum Goal {
    /// Authenticated: Connected or Established.
    Connected,
    /// Both sides Established, the peer's answers to our streams in ([`Event::Ready`]).
    Ready,
}

impl Node {
    /// Dials `peer` and waits until it is authenticated (Connected), or the attempt fails with
    /// its typed cause ([`ConnectError::Failed`]). The dial gives up after the node's dial
    /// timeout (default 30 s). Dropping the future before it completes cancels the dial (the
    /// peer is disconnected). Works from any executor.
    pub async fn connect_and_wait(
        &self,
        peer: PeerId,
        addr: SocketAddr,
    ) -> Result<(), ConnectError> {
        let filter = EventFilter {
            peers: Some(vec![peer]),
            kinds: Some(vec![EventKind::State]),
            states: Some(vec![
                ConnState::Connected,
                ConnState::Established,
                ConnState::Reconnecting,
                ConnState::Disconnected,
            ]),
        };
        let subscription = self.subscribe(filter, 16);
        if matches!(
            self.state(peer),
            ConnState::Connected | ConnState::Established
        ) {
            return Ok(());
        }
        self.connect(peer, addr).map_err(ConnectError::Send)?;
        // Until the outcome is known, dropping this future disconnects the peer.
        let mut guard = CancelDial {
            node: self,
            peer,
            armed: true,
        };
        loop {
            match subscription.recv().await {
                Some(Event::State {
                    state: ConnState::Connected | ConnState::Established,
                    ..
                }) => {
                    guard.armed = false;
                    return Ok(());
                }
                Some(Event::State { state, reason, .. }) => {
                    guard.armed = false;
                    let cause = DialFailure::from_reason(reason.as_ref());
                    return Err(ConnectError::Failed { state, cause });
                }
                Some(_) => {}
                None => {
                    guard.armed = false;
                    return Err(ConnectError::Send(NodeSendError::Stopped));
                }
            }
        }
    }

    /// Dials `peer`, opens `streams` with it once it is authenticated, and waits until it is
    /// Ready (its side opened its streams too): [`Node::connect_and_wait`],
    /// [`Node::complete_handshake`], [`Node::ready`] in one call. The peer's application must
    /// open its streams within the node's handshake timeout.
    pub async fn connect_ready(
        &self,
        peer: PeerId,
        addr: SocketAddr,
        streams: &[&str],
    ) -> Result<(), ConnectError> {
        self.connect_and_wait(peer, addr).await?;
        if self.state(peer) == ConnState::Connected {
            self.complete_handshake(peer, streams)?;
        }
        self.ready(peer).await.map_err(|e| match e {
            WaitError::Disconnected { reason } => ConnectError::Failed {
                state: self.state(peer),
                cause: DialFailure::from_reason(reason.as_ref()),
            },
            WaitError::Stopped => ConnectError::Send(NodeSendError::Stopped),
        })
    }

    /// Waits until `peer` is authenticated (Connected or Established), whichever side dialled:
    /// at once if it is. Fails when its connection ends first ([`WaitError::Disconnected`]:
    /// a peer that is not connected yet, or is being redialled, is waited for) or the node
    /// stops. It waits as long as it takes: bound it with the runtime's timeout.
    pub async fn connected(&self, peer: PeerId) -> Result<(), WaitError> {
        self.wait_for(peer, Goal::Connected).await
    }

    /// Waits until `peer` is Ready: both sides Established on its connection, the peer's
    /// answers to every stream we opened in ([`Event::Ready`]); at once if it is. Call
    /// [`Node::complete_handshake`] for the peer too (before or after this). Fails when the
    /// peer's connection ends first ([`WaitError::Disconnected`]; a peer not connected yet, or
    /// being redialled, is waited for) or the node stops. It waits as long as it takes: bound
    /// it with the runtime's timeout.
    pub async fn ready(&self, peer: PeerId) -> Result<(), WaitError> {
        self.wait_for(peer, Goal::Ready).await
    }

    async fn wait_for(&self, peer: PeerId, goal: Goal) -> Result<(), WaitError> {
        let filter = EventFilter::all()
            .peer(peer)
            .kind(EventKind::State)
            .kind(EventKind::Ready);
        // Subscribed before the first look: nothing between the look and the wait is missed.
        let subscription = self.subscribe(filter, 16);
        loop {
            let reached = match goal {
                Goal::Connected => matches!(
                    self.state(peer),
                    ConnState::Connected | ConnState::Established
                ),
                Goal::Ready => self.is_ready(peer),
            };
            if reached {
                return Ok(());
            }
            // Every event (a state change, Ready, Missed) is a reason to look again.
            match subscription.recv().await {
                Some(Event::State {
                    state: ConnState::Disconnected,
                    reason,
                    ..
                }) => return Err(WaitError::Disconnected { reason }),
                Some(_) => {}
                None => return Err(WaitError::Stopped),
            }
        }
    }
}

/// Disconnects a peer when a `connect_and_wait` future is dropped before its outcome.
struct CancelDial<'a> {
    node: &'a Node,
    peer: PeerId,
    armed: bool,
}

impl Drop for CancelDial<'_> {
    fn drop(&mut self) {
        if self.armed {
            let _ = self.node.disconnect(self.peer);
        }
    }
}
