//! The channels from shards to the application: one per shard and destination, bounded in
//! messages and in bytes, and [`Messages`], the application's end of a destination's channels.

use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::task::{Context, Poll};

use crate::vocabulary::Message;

/// One shard's channel to one destination, with the bytes in it: the channel is bounded in
/// messages (`message_buffer`) and in bytes (`message_buffer_bytes`), the second kept by the
/// shard (adding) and the receiver (subtracting as it takes messages).
#[derive(Clone)]
pub(crate) struct Channel {
    pub(crate) tx: async_channel::Sender<Message>,
    rx: async_channel::Receiver<Message>,
    pub(crate) bytes: Arc<AtomicUsize>,
}

impl Channel {
    pub(crate) fn bounded(messages: usize) -> Self {
        let (tx, rx) = async_channel::bounded(messages.max(1));
        Self {
            tx,
            rx,
            bytes: Arc::new(AtomicUsize::new(0)),
        }
    }

    /// No more messages go in; what is in it can still be taken.
    pub(crate) fn close(&self) {
        self.rx.close();
    }
}

/// One shard's channel, pinned so that it can be polled as a `Stream` from an `Unpin` owner.
type Receiver = Pin<Box<async_channel::Receiver<Message>>>;

/// Received messages: from every shard, for the default destination or for one stream. A
/// `Stream` (and `Unpin`); clones share the messages (each goes to one of them). Ends when the
/// node stops and the messages already delivered are taken.
pub struct Messages {
    receivers: Vec<(Receiver, Arc<AtomicUsize>)>,
    next: usize,
}

impl Messages {
    pub(crate) fn new(channels: &[Channel]) -> Self {
        Self {
            receivers: channels
                .iter()
                .map(|c| (Box::pin(c.rx.clone()), c.bytes.clone()))
                .collect(),
            next: 0,
        }
    }

    /// The message leaves its channel: its bytes no longer count against the channel's bound.
    fn took(bytes: &AtomicUsize, message: Message) -> Message {
        bytes.fetch_sub(message.data.len(), Ordering::AcqRel);
        message
    }

    /// The next message; `None` once the node stopped and none is left.
    pub async fn recv(&mut self) -> Option<Message> {
        futures::StreamExt::next(self).await
    }

    /// The next message, blocking the thread (for callers outside async code).
    pub fn recv_blocking(&mut self) -> Option<Message> {
        futures::executor::block_on(self.recv())
    }

    /// The next message if one is there.
    pub fn try_recv(&mut self) -> Option<Message> {
        let n = self.receivers.len();
        for i in 0..n {
            let index = (self.next + i) % n;
            let (receiver, bytes) = &self.receivers[index];
            if let Ok(message) = receiver.try_recv() {
                self.next = (index + 1) % n;
                return Some(Self::took(bytes, message));
            }
        }
        None
    }

    /// Messages waiting in the channels.
    pub fn len(&self) -> usize {
        self.receivers.iter().map(|(r, _)| r.len()).sum()
    }

    /// Whether no message is waiting.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

impl Clone for Messages {
    fn clone(&self) -> Self {
        Self {
            receivers: self
                .receivers
                .iter()
                .map(|(r, bytes)| (Box::pin((**r).clone()), bytes.clone()))
                .collect(),
            next: 0,
        }
    }
}

impl std::fmt::Debug for Messages {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Messages")
            .field("shards", &self.receivers.len())
            .field("waiting", &self.len())
            .finish()
    }
}

impl futures::Stream for Messages {
    type Item = Message;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Message>> {
        let n = self.receivers.len();
        let start = self.next;
        let mut ended = 0;
        for i in 0..n {
            let index = (start + i) % n;
            let (receiver, bytes) = &mut self.receivers[index];
            match receiver.as_mut().poll_next(cx) {
                Poll::Ready(Some(message)) => {
                    let message = Self::took(bytes, message);
                    self.next = (index + 1) % n;
                    return Poll::Ready(Some(message));
                }
                Poll::Ready(None) => ended += 1,
                Poll::Pending => {}
            }
        }
        if ended == n {
            Poll::Ready(None)
        } else {
            Poll::Pending
        }
    }
}
