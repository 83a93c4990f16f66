//! What applications touch: the `Node` handle and the types of its calls.

mod address;
mod backend;
mod call_errors;
mod config;
mod discovery;
mod error;
mod event;
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

pub use address::{Host, PeerAddr, PeerAddrError};
pub use backend::Backend;
pub use call_errors::{
    ConfigError, ConnectError, DialFailure, NodeError, NodeSendError, RequestError, ResolveError,
    StartError, TrySendError, WaitError,
};
pub use config::NodeConfig;
pub use error::{Error, ErrorKind};
pub(crate) use event::Subscribers;
pub use event::{
    Event, EventFilter, EventKind, Handler, Message, Refusal, SUBSCRIPTION_BYTES_PER_SLOT,
    StreamName, Subscription,
};
pub use handle::Node;
pub(crate) use handle::push_command;
pub use health::{Health, HealthCheck};
pub use request::{Request, Requests};
pub use route::{Route, StreamRef};
pub use settings::{
    ConnectionSettings, MembersSettings, NodeSettings, QueueSettings, StreamRateLimit,
};
pub use sink::StreamSink;
