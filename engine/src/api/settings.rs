//! `NodeSettings`: a node's configuration as an operator writes it in a file (TOML, JSON, any
//! serde format), with Glueberry's defaults for everything left out.

use std::net::SocketAddr;
use std::path::PathBuf;

use glueberry_crypto::Identity;
use serde::{Deserialize, Serialize};

use super::{Backend, NodeConfig, PeerAddr};
use crate::ConnectionLimits;
use crate::vocabulary::ConfigError;

/// A node's settings from a file: everything [`NodeConfig`] holds that is not code (the
/// identity comes from its own key file, the handler from the application). Unknown keys are
/// refused, so a misspelt setting is an error rather than a silent default.
///
/// ```
/// # fn main() -> Result<(), Box<dyn std::error::Error>> {
/// // From JSON here; the `glueberry` command reads the same fields from TOML.
/// let settings: glueberry::NodeSettings = serde_json::from_str(
///     r#"{ "network_id": "chain-1", "listen": "127.0.0.1:0", "limits": { "max_inbound": 100 } }"#,
/// )?;
/// let config = settings.into_config(glueberry::Identity::generate()?)?;
/// let node = glueberry::Node::start(config)?;
/// node.stop_blocking();
/// # Ok(())
/// # }
/// ```
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct NodeSettings {
    /// The network (chain) id: peers on another network are refused in the handshake.
    pub network_id: String,
    /// Where to listen (default `0.0.0.0:26656`): an IP address or a host name with its port
    /// (`localhost:26656`, resolved when the file is read).
    #[serde(deserialize_with = "listen_addr")]
    pub listen: SocketAddr,
    /// More listen addresses (e.g. `[::]:26656` for IPv6), as `listen`.
    #[serde(deserialize_with = "listen_addrs")]
    pub listen_also: Vec<SocketAddr>,
    /// Shards (threads); 0, the default, is one per CPU the process may use.
    pub shards: usize,
    /// The I/O backend (default `auto`).
    pub backend: Backend,
    /// The address book file (none by default: peers are not remembered).
    pub address_book: Option<PathBuf>,
    /// Peers to dial at start, `ID@host:port` (a host name is resolved at each dial).
    pub peers: Vec<PeerAddr>,
    /// Peers to stay connected to whatever the limits (validators), `ID@ip:port`.
    pub persistent_peers: Vec<PeerAddr>,
    /// Connection limits (Glueberry's defaults for any left out).
    pub limits: ConnectionLimits,
    /// The largest message, in bytes (default 1 MiB). Both windows (`connection`) must hold
    /// one: above 2 MiB − 6, raise `connection.initial_window` (and above 4 MiB − 6,
    /// `connection.connection_window`) with it.
    pub max_message_size: usize,
    /// Per-connection windows, queues and timers (`[node.connection]`; Glueberry's defaults
    /// for any left out).
    pub connection: ConnectionSettings,
    /// Send priority by stream name, 0 (lowest) to 7 (default 3): `[node.priorities]`,
    /// `consensus = 7`.
    pub priorities: std::collections::BTreeMap<String, u8>,
    /// Queues between the node and the application (Glueberry's defaults for any left out).
    pub queues: QueueSettings,
    /// The operator endpoint (`/metrics`, `/healthz`, `/readyz`): needs the `http` feature.
    pub metrics: Option<SocketAddr>,
    /// Also serve `/debug/state` on it (every peer's id, address and state).
    pub debug_state_endpoint: bool,
    /// Receive rate limits by stream name (`[rate_limits.mempool]`, none by default).
    pub rate_limits: std::collections::BTreeMap<String, StreamRateLimit>,
    /// What the node may hold for all its peers in accepted, unconfirmed messages, in bytes
    /// (default 1 GiB; `NodeConfig::send_budget`).
    pub send_budget: Option<u64>,
    /// What the node may hold for all its peers of what they sent, in bytes (default 1 GiB;
    /// `NodeConfig::receive_budget`).
    pub receive_budget: Option<u64>,
    /// The validator set this node starts with, and who else it admits (`[node.members]`;
    /// `NodeConfig::members` and `NodeConfig::track`).
    pub members: Option<MembersSettings>,
}

/// Peer sets in a file: the set the node tracks at start and the membership settings.
///
/// ```toml
/// [node.members]
/// policy = "members-only"       # or "open" (the default), "members-first"
/// epoch = 42
/// validators = ["gbp1…@203.0.113.5:26656", "gbp1…"]   # an address for the bootstraps
/// advertise = ["203.0.113.9:26656"]                    # what this node publishes
/// ```
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct MembersSettings {
    /// Who else is admitted (default `open`).
    pub policy: crate::MembershipPolicy,
    /// The epoch of `validators` (default 0).
    pub epoch: u64,
    /// The members: a peer id, or `ID@ip:port` for one whose address is known (a bootstrap).
    pub validators: Vec<String>,
    /// Epochs kept (default 3).
    pub keep_epochs: Option<usize>,
    /// How long a peer that left every set stays, in milliseconds (default 30000).
    pub grace_ms: Option<u64>,
    /// The addresses this node publishes in its record (default: its listen addresses that
    /// can be dialled).
    pub advertise: Vec<SocketAddr>,
}

impl MembersSettings {
    fn apply(&self, mut config: NodeConfig) -> Result<NodeConfig, ConfigError> {
        let mut members = crate::MembersConfig {
            policy: self.policy,
            advertise: self.advertise.clone(),
            ..crate::MembersConfig::default()
        };
        if let Some(keep) = self.keep_epochs {
            if keep == 0 {
                return Err(ConfigError::new(
                    "members.keep_epochs",
                    "must be at least 1",
                ));
            }
            members.keep_epochs = keep;
        }
        if let Some(ms) = self.grace_ms {
            members.grace = std::time::Duration::from_millis(ms);
        }
        let set = self
            .validators
            .iter()
            .map(|text| parse_member(text))
            .collect::<Result<Vec<_>, _>>()?;
        config = config.members(members);
        if !set.is_empty() {
            config = config.track(self.epoch, set);
        }
        Ok(config)
    }
}

/// `ID` or `ID@ip:port`.
fn parse_member(text: &str) -> Result<crate::Member, ConfigError> {
    let bad = |why: String| ConfigError::new("members.validators", format!("{text:?}: {why}"));
    match text.split_once('@') {
        None => text
            .parse()
            .map(crate::Member::new)
            .map_err(|e| bad(format!("{e}"))),
        Some(_) => {
            let addr: PeerAddr = text.parse().map_err(|e| bad(format!("{e}")))?;
            let socket = addr
                .socket_addr()
                .ok_or_else(|| bad("an IP address is needed, not a host name".into()))?;
            Ok(crate::Member::at(addr.peer, socket))
        }
    }
}

/// Per-connection settings in a file (see
/// [`ConnectionConfig`](crate::transport::ConnectionConfig), whose defaults fill what is left
/// out).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ConnectionSettings {
    /// Credit each stream starts with, in bytes (default 2 MiB): what one stream of a peer may
    /// have in flight to us.
    pub initial_window: Option<u32>,
    /// Credit all of a peer's streams share, in bytes (default 4 MiB).
    pub connection_window: Option<u32>,
    /// Streams per connection, the `handshake` stream included (default 32).
    pub max_streams: Option<u16>,
    /// Queued messages per stream at which `send` waits (default 1000).
    pub high_watermark: Option<usize>,
    /// Queued messages per stream at which it accepts again (default 100).
    pub low_watermark: Option<usize>,
    /// Bytes queued on a connection, not yet written, at which `send` waits (default 16 MiB).
    pub max_queued_bytes: Option<usize>,
    /// Silence after which a ping is sent, in milliseconds (default 15000).
    pub keepalive_interval_ms: Option<u64>,
    /// Silence after which the connection is declared dead, in milliseconds (default 45000).
    pub idle_timeout_ms: Option<u64>,
    /// How long queued messages may wait for a peer that takes none, in milliseconds (default
    /// 60000).
    pub send_stall_timeout_ms: Option<u64>,
}

/// The queues between a node and its application, in a file (see the [`NodeConfig`] methods
/// of the same names for what each bounds and its default).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct QueueSettings {
    /// Messages per shard's channel to the application (default 1000).
    pub message_buffer: Option<usize>,
    /// Message bytes per shard's channel to the application (default 8 MiB).
    pub message_buffer_bytes: Option<usize>,
    /// Events the node's own `events()` queue holds (default 100).
    pub event_buffer: Option<usize>,
    /// Commands per shard's queue (default 4096).
    pub command_queue: Option<usize>,
    /// Messages accepted by `send` per (peer, stream) before it waits (default 16384).
    pub stream_queue_messages: Option<usize>,
    /// Bytes accepted by `send` per (peer, stream) before it waits (default 16 MiB).
    pub stream_queue_bytes: Option<usize>,
}

/// A stream's receive rate limit in a settings file (see
/// [`RateLimit`](crate::transport::RateLimit)).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StreamRateLimit {
    /// Sustained bytes per second.
    pub bytes_per_sec: u64,
    /// Sustained messages per second.
    pub messages_per_sec: u32,
    /// How much quiet time saves up, in milliseconds (default 1000).
    #[serde(default = "StreamRateLimit::default_burst_ms")]
    pub burst_ms: u64,
}

impl StreamRateLimit {
    fn default_burst_ms() -> u64 {
        1000
    }
}

impl Default for NodeSettings {
    fn default() -> Self {
        Self {
            network_id: String::new(),
            listen: SocketAddr::from(([0, 0, 0, 0], 26656)),
            listen_also: Vec::new(),
            shards: 0,
            backend: Backend::Auto,
            address_book: None,
            peers: Vec::new(),
            persistent_peers: Vec::new(),
            limits: ConnectionLimits::default(),
            max_message_size: glueberry_transport::ConnectionConfig::default().max_message_size,
            connection: ConnectionSettings::default(),
            priorities: std::collections::BTreeMap::new(),
            queues: QueueSettings::default(),
            metrics: None,
            debug_state_endpoint: false,
            rate_limits: std::collections::BTreeMap::new(),
            send_budget: None,
            receive_budget: None,
            members: None,
        }
    }
}

impl NodeSettings {
    /// The node's configuration with `identity`, validated: an invalid setting is named by its
    /// key in the file ([`ConfigError::key`]). The peers to dial at start are in
    /// [`NodeSettings::peers`]: dial them with [`Node::connect_to`](crate::Node::connect_to)
    /// once the node runs.
    pub fn into_config(self, identity: Identity) -> Result<NodeConfig, ConfigError> {
        if self.network_id.is_empty() {
            return Err(ConfigError::new("network_id", "is required"));
        }
        let connection = self.connection_config()?;
        let mut config = NodeConfig::new(identity, &self.network_id, self.listen)
            .shards(self.shards)
            .backend(self.backend)
            .limits(self.limits)
            .connection(connection);
        for addr in self.listen_also {
            config = config.listen_also(addr);
        }
        for (name, &priority) in &self.priorities {
            if priority > glueberry_transport::MAX_PRIORITY {
                return Err(ConfigError::new(
                    format!("priorities.{name}"),
                    format!("{priority} is above the highest priority, 7"),
                ));
            }
            config = config.stream_priority(name, priority);
        }
        for (name, limit) in &self.rate_limits {
            if limit.bytes_per_sec == 0 || limit.messages_per_sec == 0 || limit.burst_ms == 0 {
                return Err(ConfigError::new(
                    format!("rate_limits.{name}"),
                    "bytes_per_sec, messages_per_sec and burst_ms must not be 0",
                ));
            }
            let limit = glueberry_transport::RateLimit {
                bytes_per_sec: limit.bytes_per_sec,
                messages_per_sec: limit.messages_per_sec,
                burst: std::time::Duration::from_millis(limit.burst_ms),
            };
            config = config.stream_rate_limit(name, limit);
        }
        config = self.queues.apply(config)?;
        if let Some(bytes) = self.send_budget {
            config = config.send_budget(bytes);
        }
        if let Some(bytes) = self.receive_budget {
            config = config.receive_budget(bytes);
        }
        if let Some(path) = self.address_book {
            config = config.address_book(path);
        }
        if let Some(members) = &self.members {
            config = members.apply(config)?;
        }
        for peer in &self.persistent_peers {
            let addr = peer.socket_addr().ok_or_else(|| {
                ConfigError::new(
                    "persistent_peers",
                    format!("{peer}: an IP address is needed, not a host name"),
                )
            })?;
            config = config.persistent_peer(peer.peer, addr);
        }
        match self.metrics {
            #[cfg(feature = "http")]
            Some(addr) => {
                config = config
                    .metrics(addr)
                    .debug_state_endpoint(self.debug_state_endpoint);
            }
            #[cfg(not(feature = "http"))]
            Some(_) => {
                return Err(ConfigError::new(
                    "metrics",
                    "needs glueberry's `http` feature",
                ));
            }
            None => {}
        }
        config.validate()?;
        Ok(config)
    }

    /// The per-connection settings, checked with the keys a file sets.
    fn connection_config(&self) -> Result<glueberry_transport::ConnectionConfig, ConfigError> {
        let c = &self.connection;
        let default = glueberry_transport::ConnectionConfig::default();
        let ms = std::time::Duration::from_millis;
        let config = glueberry_transport::ConnectionConfig {
            max_message_size: self.max_message_size,
            initial_window: c.initial_window.unwrap_or(default.initial_window),
            connection_window: c.connection_window.unwrap_or(default.connection_window),
            max_streams: c.max_streams.unwrap_or(default.max_streams),
            high_watermark: c.high_watermark.unwrap_or(default.high_watermark),
            low_watermark: c.low_watermark.unwrap_or(default.low_watermark),
            max_queued_bytes: c.max_queued_bytes.unwrap_or(default.max_queued_bytes),
            keepalive_interval: c
                .keepalive_interval_ms
                .map_or(default.keepalive_interval, ms),
            idle_timeout: c.idle_timeout_ms.map_or(default.idle_timeout, ms),
            send_stall_timeout: c
                .send_stall_timeout_ms
                .map_or(default.send_stall_timeout, ms),
            ..default
        };
        // The one mistake the transport's own message cannot name in a file's keys.
        let needed = self.max_message_size as u64 + 6;
        for (key, window) in [
            ("connection.initial_window", config.initial_window),
            ("connection.connection_window", config.connection_window),
        ] {
            if u64::from(window) < needed {
                return Err(ConfigError::new(
                    key,
                    format!(
                        "{window} cannot hold a message of max_message_size = {}: set it to at \
                         least {needed}, or lower max_message_size",
                        self.max_message_size
                    ),
                ));
            }
        }
        config
            .validate()
            .map_err(|e| ConfigError::new("connection", e.to_string()))?;
        Ok(config)
    }
}

impl QueueSettings {
    fn apply(&self, mut config: NodeConfig) -> Result<NodeConfig, ConfigError> {
        let set = [
            ("queues.message_buffer", self.message_buffer),
            ("queues.message_buffer_bytes", self.message_buffer_bytes),
            ("queues.event_buffer", self.event_buffer),
            ("queues.command_queue", self.command_queue),
            ("queues.stream_queue_messages", self.stream_queue_messages),
            ("queues.stream_queue_bytes", self.stream_queue_bytes),
        ];
        if let Some((key, _)) = set.iter().find(|(_, value)| *value == Some(0)) {
            return Err(ConfigError::new(*key, "must be at least 1"));
        }
        if let Some(messages) = self.message_buffer {
            config = config.message_buffer(messages);
        }
        if let Some(bytes) = self.message_buffer_bytes {
            config = config.message_buffer_bytes(bytes);
        }
        if let Some(events) = self.event_buffer {
            config = config.event_buffer(events);
        }
        if let Some(commands) = self.command_queue {
            config = config.command_queue(commands);
        }
        if self.stream_queue_messages.is_some() || self.stream_queue_bytes.is_some() {
            let (messages, bytes) = config.stream_queue;
            config = config.stream_queue(
                self.stream_queue_messages.unwrap_or(messages),
                self.stream_queue_bytes.unwrap_or(bytes),
            );
        }
        Ok(config)
    }
}

/// A listen address in a file: `ip:port`, or `host:port` resolved now (the first address the
/// name has; a listen address names this machine, so `localhost` and the host's own name are
/// what it is for).
fn resolve_listen<E: serde::de::Error>(text: &str) -> Result<SocketAddr, E> {
    if let Ok(addr) = text.parse() {
        return Ok(addr);
    }
    use std::net::ToSocketAddrs;
    let mut addrs = text
        .to_socket_addrs()
        .map_err(|e| E::custom(format!("listen address {text:?}: {e}")))?;
    addrs
        .next()
        .ok_or_else(|| E::custom(format!("listen address {text:?}: the name has no address")))
}

fn listen_addr<'de, D: serde::Deserializer<'de>>(deserializer: D) -> Result<SocketAddr, D::Error> {
    resolve_listen(&String::deserialize(deserializer)?)
}

fn listen_addrs<'de, D: serde::Deserializer<'de>>(
    deserializer: D,
) -> Result<Vec<SocketAddr>, D::Error> {
    Vec::<String>::deserialize(deserializer)?
        .iter()
        .map(|text| resolve_listen(text))
        .collect()
}

impl Serialize for PeerAddr {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for PeerAddr {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let text = String::deserialize(deserializer)?;
        text.parse().map_err(serde::de::Error::custom)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_fill_what_is_left_out_and_unknown_keys_are_refused() {
        let id = Identity::from_seed(&[9; 32]).peer_id();
        let text = format!(
            r#"{{"network_id": "n", "peers": ["{id}@localhost:1"], "limits": {{"max_inbound": 7}}}}"#
        );
        let settings: NodeSettings = serde_json::from_str(&text).unwrap();
        assert_eq!(settings.listen, "0.0.0.0:26656".parse().unwrap());
        assert_eq!(settings.limits.max_inbound, 7);
        assert_eq!(
            settings.limits.max_outbound,
            ConnectionLimits::default().max_outbound
        );
        assert_eq!(settings.peers[0].peer, id);
        assert!(
            serde_json::from_str::<NodeSettings>(r#"{"network_id": "n", "lisen": "x"}"#).is_err()
        );
        assert!(
            NodeSettings::default()
                .into_config(Identity::from_seed(&[1; 32]))
                .is_err(),
            "network_id is required"
        );
        let bad_persistent = NodeSettings {
            network_id: "n".into(),
            persistent_peers: vec![format!("{id}@localhost:1").parse().unwrap()],
            ..NodeSettings::default()
        };
        assert!(
            bad_persistent
                .into_config(Identity::from_seed(&[1; 32]))
                .is_err()
        );
    }
}

#[cfg(test)]
mod rate_limit_tests {
    use super::*;

    #[test]
    fn rate_limits_and_the_budgets_come_from_the_settings_file() {
        let text = r#"{"network_id": "n", "send_budget": 1048576, "receive_budget": 2097152,
            "rate_limits": {"mempool": {"bytes_per_sec": 1000000, "messages_per_sec": 500}}}"#;
        let settings: NodeSettings = serde_json::from_str(text).unwrap();
        let config = settings
            .clone()
            .into_config(Identity::from_seed(&[1; 32]))
            .unwrap();
        let limit = config.connection.rate_limit_of(b"mempool").unwrap();
        assert_eq!(
            (limit.bytes_per_sec, limit.messages_per_sec, limit.burst),
            (1_000_000, 500, std::time::Duration::from_secs(1))
        );
        assert_eq!(config.send_budget, 1 << 20);
        assert_eq!(config.receive_budget, 2 << 20);
        let mut zero = settings;
        zero.rate_limits
            .get_mut("mempool")
            .unwrap()
            .messages_per_sec = 0;
        let error = zero.into_config(Identity::from_seed(&[1; 32])).unwrap_err();
        assert_eq!(error.key, "rate_limits.mempool", "{error}");
    }
}

#[cfg(test)]
mod serialize_tests {
    use glueberry_transport::{ConnState, Direction, PeerStats};

    #[test]
    fn statistics_serialize_with_the_peer_as_text_and_peer_ids_round_trip() {
        let peer = glueberry_crypto::Identity::from_seed(&[4; 32]).peer_id();
        let stats = PeerStats {
            peer,
            state: ConnState::Established,
            direction: Some(Direction::Outbound),
            connected_for: Some(std::time::Duration::from_millis(1500)),
            total_connected: std::time::Duration::from_secs(2),
            connections: 1,
            failures: 0,
            since_last_message: None,
            rtt: None,
            streams: Vec::new(),
        };
        let json = serde_json::to_value(&stats).unwrap();
        assert_eq!(json["peer"], peer.to_string());
        assert_eq!(json["state"], "Established");
        assert_eq!(json["direction"], "Outbound");
        assert_eq!(json["connected_for"]["secs"], 1);
        let back: glueberry_crypto::PeerId =
            serde_json::from_value(serde_json::Value::String(peer.to_string())).unwrap();
        assert_eq!(back, peer);
        assert!(serde_json::from_str::<glueberry_crypto::PeerId>("\"gbp1nope\"").is_err());
    }
}

#[cfg(test)]
mod file_tests {
    use super::*;

    fn config(text: &str) -> Result<NodeConfig, ConfigError> {
        let settings: NodeSettings = toml::from_str(text).unwrap();
        settings.into_config(Identity::from_seed(&[1; 32]))
    }

    #[test]
    fn a_toml_file_sets_windows_priorities_queues_and_a_listen_host_name() {
        let config = config(
            r#"
            network_id = "chain-1"
            listen = "localhost:0"
            max_message_size = 8388608

            [connection]
            initial_window = 16777216
            connection_window = 33554432
            max_streams = 8
            idle_timeout_ms = 20000

            [priorities]
            consensus = 7
            blocksync = 0

            [queues]
            message_buffer = 5000
            stream_queue_bytes = 1048576
            "#,
        )
        .unwrap();
        let c = &config.connection;
        assert_eq!(c.max_message_size, 8 << 20);
        assert_eq!(
            (c.initial_window, c.connection_window),
            (16 << 20, 32 << 20)
        );
        assert_eq!(c.max_streams, 8);
        assert_eq!(c.idle_timeout, std::time::Duration::from_secs(20));
        assert_eq!(c.keepalive_interval, std::time::Duration::from_secs(15));
        assert_eq!(
            (c.priority_of("consensus"), c.priority_of("blocksync")),
            (7, 0)
        );
        assert_eq!(
            c.priority_of("mempool"),
            glueberry_transport::DEFAULT_PRIORITY
        );
        assert_eq!(config.message_buffer, 5000);
        assert_eq!(config.stream_queue, (16 * 1024, 1 << 20));
        assert!(config.listen.ip().is_loopback(), "{}", config.listen);
    }

    #[test]
    fn an_invalid_setting_is_named_by_its_key() {
        // A message larger than the default stream window: the windows are named.
        let error = config("network_id = \"n\"\nmax_message_size = 10000000\n").unwrap_err();
        assert_eq!(error.key, "connection.initial_window", "{error}");
        assert!(error.message.contains("10000006"), "{error}");
        let error = config("network_id = \"n\"\n[priorities]\nconsensus = 9\n").unwrap_err();
        assert_eq!(error.key, "priorities.consensus", "{error}");
        let error = config("network_id = \"n\"\n[queues]\nmessage_buffer = 0\n").unwrap_err();
        assert_eq!(error.key, "queues.message_buffer", "{error}");
        let error = config("listen = \"1.2.3.4:1\"\n").unwrap_err();
        assert_eq!(error.key, "network_id", "{error}");
        // A misspelt key in a table is refused, not ignored.
        let misspelt = toml::from_str::<NodeSettings>("[connection]\ninital_window = 1\n");
        assert!(misspelt.is_err());
    }

    #[test]
    fn priorities_set_before_a_connection_config_are_kept() {
        let config = NodeConfig::new(
            Identity::from_seed(&[1; 32]),
            "n",
            "127.0.0.1:0".parse().unwrap(),
        )
        .stream_priority("consensus", 7)
        .connection(glueberry_transport::ConnectionConfig {
            max_message_size: 4096,
            priorities: vec![("blocksync".into(), 0)],
            ..Default::default()
        });
        let c = &config.connection;
        assert_eq!(
            (c.priority_of("consensus"), c.priority_of("blocksync")),
            (7, 0)
        );
        assert_eq!(c.max_message_size, 4096);
    }
}
