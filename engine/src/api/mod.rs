//! What applications touch: the `Node` handle and the types of its calls.

mod address;
mod config;
mod discovery;
mod handle;
mod health;
mod members;
mod messaging;
mod node;
mod peers;
mod request;
mod route;
mod settings;
mod sink;
mod start;
mod wait;

pub use crate::vocabulary::{
    Backend, ConfigError, ConnectError, DialFailure, Error, ErrorKind, Event, EventFilter,
    EventKind, Handler, Message, NodeError, NodeSendError, Refusal, RequestError, ResolveError,
    SUBSCRIPTION_BYTES_PER_SLOT, StartError, StreamName, Subscription, TrySendError, WaitError,
};
pub use address::{Host, PeerAddr, PeerAddrError};
pub use config::NodeConfig;
pub use handle::Node;
pub use health::{Health, HealthCheck};
pub use request::{Request, Requests};
pub use route::{Route, StreamRef};
pub use settings::{
    ConnectionSettings, MembersSettings, NodeSettings, QueueSettings, StreamRateLimit,
};
pub use sink::StreamSink;
