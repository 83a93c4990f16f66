//! A [`futures::Sink`] of messages on one (peer, stream): `send().await` for code written around
//! sinks (`forward`, `SinkExt::send_all`).

use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};

use bytes::Bytes;

use super::handle::Node;
use super::route::Route;
use crate::vocabulary::NodeSendError;

type Sending = Pin<Box<dyn Future<Output = Result<(), NodeSendError>> + Send>>;

/// Messages to one peer on one stream, as a [`futures::Sink`]: see [`Node::sink`].
///
/// A message is taken as [`Node::send`] takes it: the sink is ready again once the node has
/// accepted the last one (room on that stream of that peer), so a full stream holds back only
/// this sink. Accepted means delivered or handed back (`Event::Undelivered`,
/// `Event::SendFailed`), as for `send`. `poll_flush` waits until every message given to the sink
/// was accepted, not until the peer has it (for that: [`Node::drain`]). While there is room, a
/// message costs what [`Node::try_send_on`] costs; one that has to wait costs an allocation.
pub struct StreamSink {
    node: Node,
    route: Route,
    sending: Option<Sending>,
}

impl Node {
    /// A [`futures::Sink`] of messages to `peer` on `stream` (resolved once, like
    /// [`Node::route`]).
    pub fn sink(&self, peer: glueberry_crypto::PeerId, stream: &str) -> StreamSink {
        StreamSink {
            node: self.clone(),
            route: self.route(peer, stream),
            sending: None,
        }
    }
}

impl StreamSink {
    /// The route it sends on.
    pub fn route(&self) -> &Route {
        &self.route
    }

    fn poll_sending(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), NodeSendError>> {
        let Some(sending) = self.sending.as_mut() else {
            return Poll::Ready(Ok(()));
        };
        let result = std::task::ready!(sending.as_mut().poll(cx));
        self.sending = None;
        Poll::Ready(result)
    }
}

impl futures::Sink<Bytes> for StreamSink {
    type Error = NodeSendError;

    fn poll_ready(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.get_mut().poll_sending(cx)
    }

    fn start_send(self: Pin<&mut Self>, item: Bytes) -> Result<(), Self::Error> {
        let this = self.get_mut();
        match this.node.try_send_on(&this.route, item) {
            Ok(()) => Ok(()),
            // Full: wait for room as `send` does.
            Err(e) if e.error == NodeSendError::BufferFull => {
                let (node, route) = (this.node.clone(), this.route.clone());
                let data = e.into_inner();
                this.sending = Some(Box::pin(async move { node.send_on(&route, data).await }));
                Ok(())
            }
            Err(e) => Err(e.error),
        }
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.get_mut().poll_sending(cx)
    }

    fn poll_close(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.get_mut().poll_sending(cx)
    }
}

impl std::fmt::Debug for StreamSink {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("StreamSink")
            .field("route", &self.route)
            .field("waiting", &self.sending.is_some())
            .finish()
    }
}
