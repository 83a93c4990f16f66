//! `NodeSettings`: a node's configuration as an operator writes it in a file (TOML, JSON, any
//! serde format), with Glueberry's defaults for everything left out.

use std::net::SocketAddr;
use std::path::PathBuf;

use glueberry_crypto::Identity;
use serde::{Deserialize, Serialize};

use super::{Backend, NodeConfig, PeerAddr};
use crate::ConnectionLimits;

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
    /// Where to listen (default `0.0.0.0:26656`).
    pub listen: SocketAddr,
    /// More listen addresses (e.g. `[::]:26656` for IPv6).
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
    /// The largest message, in bytes (default 1 MiB).
    pub max_message_size: usize,
    /// The operator endpoint (`/metrics`, `/healthz`, `/readyz`): needs the `http` feature.
    pub metrics: Option<SocketAddr>,
    /// Also serve `/debug/state` on it (every peer's id, address and state).
    pub debug_state_endpoint: bool,
    /// Receive rate limits by stream name (`[rate_limits.mempool]`, none by default).
    pub rate_limits: std::collections::BTreeMap<String, StreamRateLimit>,
    /// What the node may hold for all its peers in accepted, unconfirmed messages, in bytes
    /// (default 1 GiB; `NodeConfig::send_budget`).
    pub send_budget: Option<u64>,
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
            metrics: None,
            debug_state_endpoint: false,
            rate_limits: std::collections::BTreeMap::new(),
            send_budget: None,
        }
    }
}

impl NodeSettings {
    /// The node's configuration with `identity`, validated. The peers to dial at start are in
    /// [`NodeSettings::peers`]: dial them with [`Node::connect_to`](crate::Node::connect_to)
    /// once the node runs.
    pub fn into_config(self, identity: Identity) -> Result<NodeConfig, String> {
        if self.network_id.is_empty() {
            return Err("network_id is required".into());
        }
        let connection = glueberry_transport::ConnectionConfig {
            max_message_size: self.max_message_size,
            ..Default::default()
        };
        let mut config = NodeConfig::new(identity, &self.network_id, self.listen)
            .shards(self.shards)
            .backend(self.backend)
            .limits(self.limits)
            .connection(connection);
        for addr in self.listen_also {
            config = config.listen_also(addr);
        }
        for (name, limit) in &self.rate_limits {
            if limit.bytes_per_sec == 0 || limit.messages_per_sec == 0 || limit.burst_ms == 0 {
                return Err(format!(
                    "rate_limits.{name}: bytes_per_sec, messages_per_sec and burst_ms must not be 0"
                ));
            }
            let limit = glueberry_transport::RateLimit {
                bytes_per_sec: limit.bytes_per_sec,
                messages_per_sec: limit.messages_per_sec,
                burst: std::time::Duration::from_millis(limit.burst_ms),
            };
            config = config.stream_rate_limit(name, limit);
        }
        if let Some(bytes) = self.send_budget {
            config = config.send_budget(bytes);
        }
        if let Some(path) = self.address_book {
            config = config.address_book(path);
        }
        for peer in &self.persistent_peers {
            let addr = peer.socket_addr().ok_or_else(|| {
                format!("persistent peer {peer}: an IP address is needed, not a host name")
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
            Some(_) => return Err("metrics needs glueberry's `http` feature".into()),
            None => {}
        }
        config.validate()?;
        Ok(config)
    }
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
    fn rate_limits_and_the_send_budget_come_from_the_settings_file() {
        let text = r#"{"network_id": "n", "send_budget": 1048576,
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
        let mut zero = settings;
        zero.rate_limits
            .get_mut("mempool")
            .unwrap()
            .messages_per_sec = 0;
        let error = zero.into_config(Identity::from_seed(&[1; 32])).unwrap_err();
        assert!(error.contains("rate_limits.mempool"), "{error}");
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
