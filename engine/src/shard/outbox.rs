//! Delivery of received messages to the application, per shard and per stream.
//!
//! Each shard has its own channel for every destination (the default one behind
//! [`Node::messages`](crate::Node::messages), and one per stream the application asked for with
//! [`Node::messages_on`](crate::Node::messages_on)); the application's [`Messages`] reads the
//! channels of every shard. So no channel, lock or counter is written by two shards per message.
//!
//! When a destination's channel is full, the shard holds that destination's messages, in order,
//! and returns no credit for them: the peer's stream window stops that stream at the sender
//! while every other stream — of this peer and of the others — keeps flowing. What the shard
//! holds is bounded by the windows of the streams it holds for.

use std::collections::{HashMap, VecDeque};
use std::sync::Arc;
use std::sync::atomic::Ordering;

use glueberry_transport::{ConnId, NodeCore, StreamId};

use crate::channel::Channel;
use crate::vocabulary::Message;

/// A message waiting for room in its destination's channel, with what releases its credit.
struct Held {
    message: Message,
    conn: ConnId,
    stream: StreamId,
}

/// One destination: its channel from this shard, and what waits for room in it.
struct Outlet {
    channel: Channel,
    held: VecDeque<Held>,
}

impl Outlet {
    /// Hands `message` to the channel if it has room in messages and in bytes (an empty
    /// channel takes any message); gives it back if not, `None` if nobody reads the channel.
    fn try_send(&self, message: Message, max_bytes: usize) -> Result<(), Option<Message>> {
        let len = message.data.len();
        let queued = self.channel.bytes.load(Ordering::Acquire);
        if queued > 0 && queued + len > max_bytes {
            return Err(Some(message));
        }
        self.channel.bytes.fetch_add(len, Ordering::AcqRel);
        match self.channel.tx.try_send(message) {
            Ok(()) => Ok(()),
            Err(async_channel::TrySendError::Full(message)) => {
                self.channel.bytes.fetch_sub(len, Ordering::AcqRel);
                Err(Some(message))
            }
            Err(async_channel::TrySendError::Closed(_)) => {
                self.channel.bytes.fetch_sub(len, Ordering::AcqRel);
                Err(None)
            }
        }
    }
}

/// What a request stream's messages are for on this node.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum RequestStream {
    /// This node sends requests on it: responses are matched, requests refused.
    Call,
    /// This node also serves requests on it: they go to its destination.
    Serve,
}

/// A shard's destinations.
pub(crate) struct Outbox {
    /// Streams used for requests (none in most nodes: then no message looks here).
    requests: HashMap<Box<str>, RequestStream>,
    /// The last stream looked up there, by pointer.
    last_request: Option<(Arc<str>, Option<RequestStream>)>,
    /// Index 0 is the default destination ([`crate::Node::messages`]).
    outlets: Vec<Outlet>,
    by_name: HashMap<Box<str>, usize>,
    /// The destination of the last message's stream (names are shared per connection stream,
    /// so consecutive messages of one stream skip the map by a pointer comparison).
    last: Option<(Arc<str>, usize)>,
    /// Messages held, over all destinations.
    held: usize,
    /// The byte bound of each channel.
    max_bytes: usize,
}

impl Outbox {
    pub(crate) fn new(default: Channel, max_bytes: usize) -> Self {
        Self {
            outlets: vec![Outlet {
                channel: default,
                held: VecDeque::new(),
            }],
            by_name: HashMap::new(),
            last: None,
            requests: HashMap::new(),
            last_request: None,
            held: 0,
            max_bytes,
        }
    }

    /// Messages of stream `name` go to `tx` from now on (replacing an earlier destination).
    pub(crate) fn add(&mut self, name: &str, channel: Channel) {
        self.last = None;
        match self.by_name.get(name) {
            Some(&index) => self.outlets[index].channel = channel,
            None => {
                self.by_name.insert(name.into(), self.outlets.len());
                self.outlets.push(Outlet {
                    channel,
                    held: VecDeque::new(),
                });
            }
        }
    }

    /// Stream `name` carries requests: served here through `channel`, or only called.
    pub(crate) fn add_requests(&mut self, name: &str, channel: Option<Channel>) {
        self.last_request = None;
        match channel {
            Some(channel) => {
                self.add(name, channel);
                self.requests.insert(name.into(), RequestStream::Serve);
            }
            None => {
                self.requests
                    .entry(name.into())
                    .or_insert(RequestStream::Call);
            }
        }
    }

    /// Whether stream `name` carries requests, and for what.
    pub(crate) fn request_stream(&mut self, name: &Arc<str>) -> Option<RequestStream> {
        if self.requests.is_empty() {
            return None;
        }
        if let Some((last, kind)) = &self.last_request
            && Arc::ptr_eq(last, name)
        {
            return *kind;
        }
        let kind = self.requests.get(&**name).copied();
        self.last_request = Some((name.clone(), kind));
        kind
    }

    fn outlet_of(&mut self, name: &Arc<str>) -> usize {
        if let Some((last, index)) = &self.last
            && Arc::ptr_eq(last, name)
        {
            return *index;
        }
        let index = self.by_name.get(&**name).copied().unwrap_or(0);
        self.last = Some((name.clone(), index));
        index
    }

    /// Hands a message to its destination, or holds it (behind the ones already held there)
    /// if the channel is full. Its credit goes back to the peer once the application has it.
    pub(crate) fn deliver(
        &mut self,
        core: &mut NodeCore,
        name: &Arc<str>,
        message: Message,
        conn: ConnId,
        stream: StreamId,
    ) {
        let index = self.outlet_of(name);
        let outlet = &mut self.outlets[index];
        if !outlet.held.is_empty() {
            outlet.held.push_back(Held {
                message,
                conn,
                stream,
            });
            self.held += 1;
            return;
        }
        let len = message.data.len();
        match outlet.try_send(message, self.max_bytes) {
            // Taken, or nobody reads this destination any more (the message is consumed).
            Ok(()) | Err(None) => core.release(conn, stream, len),
            Err(Some(message)) => {
                outlet.held.push_back(Held {
                    message,
                    conn,
                    stream,
                });
                self.held += 1;
            }
        }
    }

    /// Tries again to hand over held messages, in order per destination.
    pub(crate) fn retry(&mut self, core: &mut NodeCore) {
        if self.held == 0 {
            return;
        }
        for outlet in &mut self.outlets {
            while let Some(held) = outlet.held.pop_front() {
                let len = held.message.data.len();
                match outlet.try_send(held.message, self.max_bytes) {
                    Ok(()) | Err(None) => {
                        core.release(held.conn, held.stream, len);
                        self.held -= 1;
                    }
                    Err(Some(message)) => {
                        outlet.held.push_front(Held { message, ..held });
                        break;
                    }
                }
            }
        }
    }

    /// Whether messages wait for room (the shard then looks again soon: the application
    /// reading a channel does not wake it).
    pub(crate) fn is_holding(&self) -> bool {
        self.held > 0
    }
}
