//! How to run a node: `NodeConfig`, its defaults and its validation.

use std::net::SocketAddr;
use std::sync::Arc;

use crate::vocabulary::ConfigError;
use crate::vocabulary::Handler;
use glueberry_crypto::Identity;
use glueberry_transport::ConnectionConfig;

/// How to run a node. `Clone`, and `Debug` without secrets (the identity prints as its peer id;
/// the handler as whether there is one).
#[derive(Clone)]
pub struct NodeConfig {
    pub(super) identity: Identity,
    pub(super) network_id: String,
    pub(super) listen: SocketAddr,
    pub(super) also_listen: Vec<SocketAddr>,
    pub(super) shards: usize,
    pub(super) connection: ConnectionConfig,
    pub(super) message_buffer: usize,
    pub(super) message_buffer_bytes: usize,
    pub(super) busy_poll: std::time::Duration,
    pub(super) event_buffer: usize,
    pub(super) command_queue: usize,
    pub(super) stream_queue: (usize, usize),
    pub(super) respond_timeout: std::time::Duration,
    pub(super) send_budget: u64,
    pub(super) receive_budget: u64,
    pub(super) pin_threads: bool,
    pub(super) cpus: Option<Vec<usize>>,
    pub(super) ring_entries: u32,
    pub(super) backend: super::Backend,
    pub(super) send_buffers: usize,
    pub(super) provided_receive_buffers: u16,
    pub(super) address_book: Option<std::path::PathBuf>,
    pub(super) handler: Option<Handler>,
    pub(super) dial_timeout: std::time::Duration,
    pub(super) handshake_timeout: std::time::Duration,
    pub(super) cooldown: std::time::Duration,
    pub(super) backoff: glueberry_transport::Backoff,
    pub(super) limits: crate::limits::ConnectionLimits,
    pub(super) persistent: Vec<(glueberry_crypto::PeerId, SocketAddr)>,
    pub(super) members: crate::members::MembersConfig,
    pub(super) initial_set: Option<(u64, Vec<crate::members::Member>)>,
    pub(super) pending_handshakes: (usize, std::time::Duration),
    pub(super) suites: Vec<glueberry_crypto::Suite>,
    pub(super) record_metrics: bool,
    #[cfg(feature = "http")]
    pub(super) metrics: Option<SocketAddr>,
    #[cfg(feature = "http")]
    pub(super) debug_state_endpoint: bool,
    pub(crate) dialer: Option<Arc<dyn crate::sys::dial::Dialer>>,
}

impl std::fmt::Debug for NodeConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let mut out = f.debug_struct("NodeConfig");
        out.field("identity", &self.identity)
            .field("network_id", &self.network_id)
            .field("listen", &self.listen)
            .field("also_listen", &self.also_listen)
            .field("shards", &self.shards)
            .field("connection", &self.connection)
            .field("message_buffer", &self.message_buffer)
            .field("message_buffer_bytes", &self.message_buffer_bytes)
            .field("busy_poll", &self.busy_poll)
            .field("event_buffer", &self.event_buffer)
            .field("command_queue", &self.command_queue)
            .field("stream_queue", &self.stream_queue)
            .field("pin_threads", &self.pin_threads)
            .field("cpus", &self.cpus)
            .field("ring_entries", &self.ring_entries)
            .field("backend", &self.backend)
            .field("send_buffers", &self.send_buffers)
            .field("provided_receive_buffers", &self.provided_receive_buffers)
            .field("address_book", &self.address_book)
            .field("handler", &self.handler.is_some())
            .field("dial_timeout", &self.dial_timeout)
            .field("handshake_timeout", &self.handshake_timeout)
            .field("cooldown", &self.cooldown)
            .field("backoff", &self.backoff)
            .field("limits", &self.limits)
            .field("persistent", &self.persistent)
            .field("members", &self.members)
            .field("initial_set", &self.initial_set)
            .field("pending_handshakes", &self.pending_handshakes)
            .field("suites", &self.suites)
            .field("record_metrics", &self.record_metrics);
        #[cfg(feature = "http")]
        out.field("metrics", &self.metrics)
            .field("debug_state_endpoint", &self.debug_state_endpoint);
        out.finish_non_exhaustive()
    }
}

impl NodeConfig {
    /// A node with `identity` on network `network_id`, listening on `listen` (port 0 picks one),
    /// with Glueberry's defaults.
    pub fn new(identity: Identity, network_id: &str, listen: SocketAddr) -> Self {
        Self {
            identity,
            network_id: network_id.to_string(),
            listen,
            also_listen: Vec::new(),
            shards: 0,
            connection: ConnectionConfig::default(),
            message_buffer: 1000,
            message_buffer_bytes: 8 * 1024 * 1024,
            busy_poll: std::time::Duration::ZERO,
            event_buffer: 100,
            command_queue: 4096,
            stream_queue: (16 * 1024, 16 * 1024 * 1024),
            respond_timeout: std::time::Duration::from_secs(5),
            send_budget: 1024 * 1024 * 1024,
            receive_budget: 1024 * 1024 * 1024,
            pin_threads: true,
            cpus: None,
            ring_entries: 4096,
            backend: super::Backend::from_env().unwrap_or_default(),
            send_buffers: 16,
            provided_receive_buffers: 0,
            address_book: None,
            handler: None,
            dial_timeout: std::time::Duration::from_secs(30),
            handshake_timeout: std::time::Duration::from_secs(30),
            cooldown: std::time::Duration::from_secs(60),
            backoff: glueberry_transport::Backoff::default(),
            limits: crate::limits::ConnectionLimits::default(),
            persistent: Vec::new(),
            members: crate::members::MembersConfig::default(),
            initial_set: None,
            pending_handshakes: (256, std::time::Duration::from_secs(10)),
            suites: Vec::new(),
            record_metrics: false,
            #[cfg(feature = "http")]
            metrics: None,
            #[cfg(feature = "http")]
            debug_state_endpoint: false,
            dialer: None,
        }
    }

    /// Records metrics into a Prometheus recorder of the node's own (so several nodes in one
    /// process each have their own figures), rendered by
    /// [`Node::render_metrics`](crate::Node::render_metrics) for an application that serves
    /// them from its own HTTP server. Off by default: metrics then go to the application's
    /// global `metrics` recorder, if it installed one before starting the node.
    pub fn record_metrics(mut self, on: bool) -> Self {
        self.record_metrics = on;
        self
    }

    /// Serves `/metrics` (Prometheus), `/healthz` and `/readyz` over HTTP on `addr` (cargo
    /// feature `http`; off by default; use a loopback address unless the scraper is
    /// elsewhere), and records metrics as [`NodeConfig::record_metrics`] does. The server is
    /// bounded: 64 connections, 8 per source IP, a 16 KiB request head sent within 5 s, 10 s per
    /// connection, one request per connection.
    #[cfg(feature = "http")]
    pub fn metrics(mut self, addr: SocketAddr) -> Self {
        self.metrics = Some(addr);
        self.record_metrics = true;
        self
    }

    /// Also serves `/debug/state` on the endpoint of [`NodeConfig::metrics`]: every peer's id,
    /// address and state, which tells whoever can reach the port the validator's topology (off
    /// by default).
    #[cfg(feature = "http")]
    pub fn debug_state_endpoint(mut self, on: bool) -> Self {
        self.debug_state_endpoint = on;
        self
    }

    /// The record cipher suites offered or accepted, most preferred first; the dialler's order
    /// decides (default: both, ChaCha20-Poly1305 first).
    pub fn suites(mut self, suites: &[glueberry_crypto::Suite]) -> Self {
        self.suites = suites.to_vec();
        self
    }

    /// Number of shards (threads); 0 (the default) is one per CPU the process may use.
    pub fn shards(mut self, shards: usize) -> Self {
        self.shards = shards;
        self
    }

    /// How long a dial may take to authenticate the peer (default 30 s).
    pub fn dial_timeout(mut self, timeout: std::time::Duration) -> Self {
        self.dial_timeout = timeout;
        self
    }

    /// How long the application handshake may take from Connected (default 30 s); expiry puts
    /// the peer in Cooldown.
    pub fn handshake_timeout(mut self, timeout: std::time::Duration) -> Self {
        self.handshake_timeout = timeout;
        self
    }

    /// How long a peer stays in Cooldown after a handshake timeout (default 1 min).
    pub fn cooldown(mut self, cooldown: std::time::Duration) -> Self {
        self.cooldown = cooldown;
        self
    }

    /// Reconnection: first delay `base` (default 1 s), doubling up to `max` (default 5 min), ±10 %
    /// jitter, at most `max_attempts` attempts (default 10; 0 means unlimited).
    pub fn reconnect(
        mut self,
        base: std::time::Duration,
        max: std::time::Duration,
        max_attempts: u32,
    ) -> Self {
        self.backoff = glueberry_transport::Backoff {
            base,
            max,
            max_attempts,
        };
        self
    }

    /// Checks the settings make sense together; says which one does not (named by the method
    /// that sets it). `Node::start` calls it.
    pub fn validate(&self) -> Result<(), ConfigError> {
        self.connection
            .validate()
            .map_err(|e| ConfigError::new("connection", e.to_string()))?;
        let nonzero = [
            ("pending_handshakes", self.pending_handshakes.1),
            ("dial_timeout", self.dial_timeout),
            ("handshake_timeout", self.handshake_timeout),
            ("cooldown", self.cooldown),
            ("reconnect", self.backoff.base),
        ];
        if let Some((name, _)) = nonzero.iter().find(|(_, d)| d.is_zero()) {
            return Err(ConfigError::new(*name, "must be greater than zero"));
        }
        let more = [
            ("reconnect", self.backoff.max),
            ("busy_poll", self.busy_poll),
        ];
        if let Some((name, _)) = nonzero
            .iter()
            .chain(&more)
            .find(|(_, d)| *d > glueberry_transport::MAX_TIMEOUT)
        {
            return Err(ConfigError::new(*name, "must be at most a year"));
        }
        if self.backoff.max < self.backoff.base {
            return Err(ConfigError::new(
                "reconnect",
                format!(
                    "the max delay {:?} is below the base delay {:?}",
                    self.backoff.max, self.backoff.base
                ),
            ));
        }
        let counts = [
            ("message_buffer", self.message_buffer),
            ("event_buffer", self.event_buffer),
            ("command_queue", self.command_queue),
            ("stream_queue", self.stream_queue.0.min(self.stream_queue.1)),
        ];
        if let Some((name, _)) = counts.iter().find(|(_, n)| *n == 0) {
            return Err(ConfigError::new(*name, "must be at least 1"));
        }
        Ok(())
    }

    /// How the node treats the peer sets [`Node::track`](crate::Node::track) gives it: who else
    /// is admitted ([`MembershipPolicy`](crate::MembershipPolicy)), how many epochs are kept, the
    /// grace before a peer that left every set is cut, the addresses this node publishes.
    pub fn members(mut self, members: crate::members::MembersConfig) -> Self {
        self.members = members;
        self
    }

    /// The peer set to track from the start ([`Node::track`](crate::Node::track) once the node
    /// runs): a validator's set from its configuration file.
    pub fn track(mut self, epoch: u64, members: Vec<crate::members::Member>) -> Self {
        self.initial_set = Some((epoch, members));
        self
    }

    /// Only [`MembershipPolicy`](crate::MembershipPolicy) changed from
    /// [`NodeConfig::members`]'s defaults.
    pub fn membership(mut self, policy: crate::members::MembershipPolicy) -> Self {
        self.members.policy = policy;
        self
    }

    /// A persistent peer (a validator this node must stay connected to), dialled at start:
    /// redialled forever with backoff capped at 30 s, also when our own limits refused the
    /// dial, and never counted against [`ConnectionLimits`](crate::ConnectionLimits), so inbound
    /// peers, however many, cannot crowd it out.
    pub fn persistent_peer(mut self, peer: glueberry_crypto::PeerId, addr: SocketAddr) -> Self {
        self.persistent.push((peer, addr));
        self
    }

    /// The connection manager's limits (default 350 in, 50 out, 400 in all; 16 sockets, 4
    /// unfinished handshakes and 10 attempts per second per network group: an IPv4 /24, an
    /// IPv6 /64).
    pub fn limits(mut self, limits: crate::limits::ConnectionLimits) -> Self {
        self.limits = limits;
        self
    }

    /// At most `max` inbound connections per shard may be in their secure handshake at once
    /// (more are closed at accept), each for at most `timeout` (default 256 and 10 s): a peer
    /// that connects and stalls is cut off.
    pub fn pending_handshakes(mut self, max: usize, timeout: std::time::Duration) -> Self {
        self.pending_handshakes = (max, timeout);
        self
    }

    /// Per-connection settings. Stream priorities and rate limits set before with
    /// [`NodeConfig::stream_priority`] and [`NodeConfig::stream_rate_limit`] are kept where
    /// `connection` does not name the same stream (its own win): the order of the calls does
    /// not matter.
    pub fn connection(mut self, mut connection: ConnectionConfig) -> Self {
        let old = std::mem::take(&mut self.connection);
        for (name, priority) in old.priorities {
            if !connection.priorities.iter().any(|(n, _)| *n == name) {
                connection.priorities.push((name, priority));
            }
        }
        for (name, limit) in old.rate_limits {
            if !connection.rate_limits.iter().any(|(n, _)| *n == name) {
                connection.rate_limits.push((name, limit));
            }
        }
        self.connection = connection;
        self
    }

    /// Messages each shard's channel to the application holds (default 1000; one channel per shard
    /// for [`Node::messages`](crate::Node::messages) and one per shard for each
    /// [`Node::messages_on`](crate::Node::messages_on)). When a channel is full, the shard holds
    /// that destination's messages and returns no credit for them: the peers' windows stop those
    /// streams while every other stream keeps flowing.
    pub fn message_buffer(mut self, messages: usize) -> Self {
        self.message_buffer = messages.max(1);
        self
    }

    /// How long a shard keeps looking for work without sleeping after its last command or
    /// completion (default zero: off). A shard that sleeps in the kernel is woken by an eventfd
    /// write or a completion; one that polls answers work arriving within the window without
    /// that wake-up, and the senders skip the eventfd write. Measured on a 2-vCPU VM
    /// (BENCHMARKS.md): 50 µs did not cut the request/response round trip beyond the noise
    /// and cost about 0.75 of a core while requests flowed, so it is off by default; try it
    /// where each shard has a core of its own.
    pub fn busy_poll(mut self, window: std::time::Duration) -> Self {
        self.busy_poll = window;
        self
    }

    /// Bytes of received messages each shard's channel to the application may hold (default
    /// 8 MiB; a message always fits an empty channel). Beyond it (or beyond `message_buffer`
    /// messages) the shard holds the stream's next messages and returns no credit for them,
    /// so what a slow application costs is bounded in bytes, not only in messages.
    pub fn message_buffer_bytes(mut self, bytes: usize) -> Self {
        self.message_buffer_bytes = bytes.max(1);
        self
    }

    /// Capacity of the [`Node::events`](crate::Node::events) channel (default 100). When full,
    /// events are dropped and counted ([`Node::events_dropped`](crate::Node::events_dropped)).
    pub fn event_buffer(mut self, events: usize) -> Self {
        self.event_buffer = events.max(1);
        self
    }

    /// Capacity of each shard's command queue (default 4096): how many `send`s may be waiting
    /// for a shard before `send` waits and `try_send` fails.
    pub fn command_queue(mut self, commands: usize) -> Self {
        self.command_queue = commands.max(1);
        self
    }

    /// How many messages, and bytes, one stream of one peer may have accepted and not yet had
    /// confirmed by the peer — queued, or written and awaiting the peer's credit — (default
    /// 16,384 and 16 MiB). At the bound `send` waits and `try_send` refuses with
    /// [`NodeSendError::BufferFull`](crate::NodeSendError::BufferFull), for that stream only;
    /// nothing accepted is handed back while the connection lives. A message always fits an empty
    /// queue.
    pub fn stream_queue(mut self, messages: usize, bytes: usize) -> Self {
        self.stream_queue = (messages.max(1), bytes.max(1));
        self
    }

    /// What the node may hold for all its peers together in messages its application accepted
    /// and they have not confirmed — queued, or written and awaiting their credit — (default 1
    /// GiB). Each (peer, stream) is bounded by [`NodeConfig::stream_queue`]; when the sum
    /// passes this, the peer holding the most is cut with
    /// [`CloseCode::OverBudget`](crate::transport::CloseCode::OverBudget) (reported as its
    /// `Disconnected` state's reason; what it held comes back in `Event::Undelivered`), one
    /// cut per 100 ms until the node is within it again. Never a peer that holds little.
    pub fn send_budget(mut self, bytes: u64) -> Self {
        self.send_budget = bytes.max(1);
        self
    }

    /// What the node may hold for all its peers together of what they sent — messages its
    /// application has not taken yet and fragments of unfinished ones, not yet credited back
    /// — (default 1 GiB). Each connection holds at most its `connection_window` (4 MiB by
    /// default: 400 peers could hold 1.6 GiB without this); when the sum passes this, the
    /// peer holding the most is cut with
    /// [`CloseCode::OverBudget`](crate::transport::CloseCode::OverBudget), one cut per 100 ms
    /// until the node is within it again.
    pub fn receive_budget(mut self, bytes: u64) -> Self {
        self.receive_budget = bytes.max(1);
        self
    }

    /// How long [`Request::respond`](crate::Request::respond) and
    /// [`Request::refuse`](crate::Request::refuse) may wait for room on the requester's
    /// stream, counted from when the request arrived (default 5 s): a requester that stops
    /// taking its answers makes them fail with
    /// [`NodeSendError::TimedOut`](crate::NodeSendError::TimedOut), never park the server's
    /// loop for longer. (A loop that must never wait answers with
    /// [`Request::try_respond`](crate::Request::try_respond).)
    pub fn respond_timeout(mut self, timeout: std::time::Duration) -> Self {
        self.respond_timeout = timeout.min(glueberry_transport::MAX_TIMEOUT);
        self
    }

    /// The send priority of the stream called `name`, 0 (lowest) to 7 (default 3; the
    /// `handshake` stream is 7). When several streams of one peer have messages, records are
    /// filled from higher priorities first, and each busy stream gets bandwidth in proportion to
    /// its priority + 1 (a weighted deficit round robin): with `consensus` at 7 and `blocksync`
    /// at 0, a vote queued beside block chunks goes into the next record built, ahead of them,
    /// and block chunks still get an eighth of a saturated link. What the guarantee stops at:
    /// records already sealed and handed to the socket go first — on a saturated link that is
    /// up to what the peer's credit for the bulk stream lets us send ahead (its window,
    /// `initial_window`, 2 MiB by default), so a vote can wait for that much of the bulk
    /// stream's data to reach the peer (BENCHMARKS.md, "Latency under load"). Set it before the
    /// streams are opened with [`Node::complete_handshake`](crate::Node::complete_handshake).
    pub fn stream_priority(mut self, name: &str, priority: u8) -> Self {
        self.connection.priorities.retain(|(n, _)| n != name);
        self.connection.priorities.push((
            name.to_string(),
            priority.min(glueberry_transport::MAX_PRIORITY),
        ));
        self
    }

    /// A receive rate limit for the stream called `name` (default none): how fast each peer
    /// may send on it, in bytes and messages a second with a burst, enforced by pacing the
    /// credit the node returns — lossless, the peer waits (see
    /// [`RateLimit`](crate::transport::RateLimit)). Set it before the streams are opened.
    pub fn stream_rate_limit(mut self, name: &str, limit: glueberry_transport::RateLimit) -> Self {
        self.connection.rate_limits.retain(|(n, _)| n != name);
        self.connection.rate_limits.push((name.to_string(), limit));
        self
    }

    /// Pin each shard thread to its CPU (default on).
    pub fn pin_threads(mut self, pin: bool) -> Self {
        self.pin_threads = pin;
        self
    }

    /// The CPUs to pin shards to, in order (default: every CPU the process may use, each node
    /// of the process starting where the previous one's shards ended, so that several nodes in
    /// one process do not share the first CPU).
    pub fn cpus(mut self, cpus: Vec<usize>) -> Self {
        if !cpus.is_empty() {
            self.cpus = Some(cpus);
        }
        self
    }

    /// Deliver messages to `handler` on the shard threads instead of
    /// [`Node::messages`](crate::Node::messages) and [`Node::messages_on`](crate::Node::messages_on).
    /// Requests on a stream the application serves with [`Node::requests`](crate::Node::requests)
    /// still go to its `Requests`, and responses to the requests waiting for them.
    pub fn handler(mut self, handler: Handler) -> Self {
        self.handler = Some(handler);
        self
    }

    /// Registered (pinned) send buffers of 512 KiB per shard (default 16, 8 MiB). Under a small
    /// locked-memory limit (an unprivileged process) fewer are registered, down to none, with
    /// one warning; sends then use ordinary buffers.
    pub fn send_buffers(mut self, count: usize) -> Self {
        self.send_buffers = count;
        self
    }

    /// Receive through a provided-buffer ring of `count` buffers of 64 KiB per shard (a power of
    /// two, at most 32768) with multishot receives, instead of the default: a fresh buffer per
    /// receive that becomes the connection's receive buffer. The ring bounds receive memory per
    /// shard whatever the number of idle connections, at the cost of one copy of every received
    /// byte. 0 (the default) is off.
    pub fn provided_receive_buffers(mut self, count: u16) -> Self {
        self.provided_receive_buffers = count;
        self
    }

    /// Keep the address book in this JSON file (created if missing). At start the node dials
    /// every peer in it that is not blacklisted; a corrupt file refuses to start.
    pub fn address_book(mut self, path: impl Into<std::path::PathBuf>) -> Self {
        self.address_book = Some(path.into());
        self
    }

    /// Submission queue entries per shard ring (default 4096). 0 makes io_uring unusable: for
    /// testing what a node does when it cannot set io_uring up.
    pub fn ring_entries(mut self, entries: u32) -> Self {
        self.ring_entries = entries;
        self
    }

    /// Also listen on `addr`: IPv4 and IPv6 at once, e.g. `[::]:26656` beside `0.0.0.0:26656`
    /// (an IPv6 listener takes IPv6 only, so the two do not collide). Port 0 picks a port for
    /// that address; [`Node::listen_addrs`] has them all.
    ///
    /// [`Node::listen_addrs`]: crate::Node::listen_addrs
    pub fn listen_also(mut self, addr: SocketAddr) -> Self {
        self.also_listen.push(addr);
        self
    }

    /// The I/O backend (default [`Backend::Auto`]: io_uring where it can run, epoll where it
    /// cannot; the environment variable `GLUEBERRY_BACKEND` changes the default).
    ///
    /// [`Backend::Auto`]: super::Backend::Auto
    pub fn backend(mut self, backend: super::Backend) -> Self {
        self.backend = backend;
        self
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config() -> NodeConfig {
        NodeConfig::new(
            Identity::from_seed(&[5; 32]),
            "config-test",
            "127.0.0.1:0".parse().expect("addr"),
        )
    }

    #[test]
    fn debug_prints_the_settings_and_never_the_secret_key() {
        let identity = Identity::from_seed(&[5; 32]);
        let peer_id = identity.peer_id().to_string();
        let printed = format!("{:?}", config().clone());
        assert!(printed.contains(&peer_id), "{printed}");
        assert!(printed.contains("network_id: \"config-test\""), "{printed}");
        // The secret seed (32 bytes of 5) appears in no form.
        assert!(!printed.contains("[5, 5, 5"), "{printed}");
        assert!(!printed.contains("0505050505"), "{printed}");
    }

    #[test]
    fn timeouts_that_would_overflow_time_arithmetic_are_refused() {
        assert_eq!(config().validate(), Ok(()));
        let year = glueberry_transport::MAX_TIMEOUT;
        assert_eq!(config().dial_timeout(year).validate(), Ok(()));
        for bad in [
            config().dial_timeout(std::time::Duration::MAX),
            config().handshake_timeout(year + std::time::Duration::from_secs(1)),
            config().cooldown(std::time::Duration::MAX),
            config().reconnect(
                std::time::Duration::from_secs(1),
                std::time::Duration::MAX,
                0,
            ),
        ] {
            let error = bad.validate().expect_err("refused");
            assert!(error.message.contains("at most a year"), "{error}");
        }
    }
}
