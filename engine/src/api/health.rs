//! Health, readiness and the state dump, and the operator endpoint's view of a node.

use super::handle::Node;
use std::sync::atomic::Ordering;

/// One health check's result.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct HealthCheck {
    /// What was checked.
    pub name: &'static str,
    /// Whether it passed.
    pub ok: bool,
    /// Details for operators.
    pub detail: String,
}

/// The node's health: `live` while it runs, `ready` when every check passes. `Serialize`, for
/// an application that reports it in its own format.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct Health {
    /// The node runs (liveness).
    pub live: bool,
    /// Every check passed (readiness).
    pub ready: bool,
    /// The checks.
    pub checks: Vec<HealthCheck>,
}

impl Health {
    /// The check called `name` (`started`, `backend`, `listening`, `address_book`,
    /// `connections`).
    pub fn check(&self, name: &str) -> Option<&HealthCheck> {
        self.checks.iter().find(|c| c.name == name)
    }

    /// The checks as a JSON object, for a 200/503 HTTP answer.
    pub fn to_json(&self) -> String {
        let checks: serde_json::Map<String, serde_json::Value> = self
            .checks
            .iter()
            .map(|c| {
                (
                    c.name.to_string(),
                    serde_json::json!({ "ok": c.ok, "detail": c.detail }),
                )
            })
            .collect();
        serde_json::json!({ "live": self.live, "ready": self.ready, "checks": checks }).to_string()
    }
}

/// The HTTP endpoint's view of its node; it does not keep the node alive.
#[cfg(feature = "http")]
pub(super) struct EndpointSource(pub(super) std::sync::Weak<super::handle::Inner>);

#[cfg(feature = "http")]
impl EndpointSource {
    fn node(&self) -> Option<Node> {
        let inner = self.0.upgrade()?;
        (!inner.stopped.load(Ordering::Acquire)).then_some(Node { inner })
    }
}

#[cfg(feature = "http")]
impl crate::observe::Source for EndpointSource {
    fn health(&self) -> Option<(bool, bool, String)> {
        let health = self.node()?.health();
        Some((health.live, health.ready, health.to_json()))
    }

    fn dump_state(&self) -> Option<String> {
        Some(futures::executor::block_on(self.node()?.dump_state()))
    }
}

impl Node {
    /// Liveness and readiness, Glueberry's checks: the node is running, listening, its address
    /// book (if any) is held, it has at least one authenticated connection, and, once it tracks
    /// a peer set, at least one member is Ready ("connected to N of M members") (readiness
    /// only).
    pub fn health(&self) -> Health {
        let dead = self.inner.shared.dead_shards.load(Ordering::Relaxed) as usize;
        let running = !self.inner.stopped.load(Ordering::Acquire)
            && !self.inner.shared.stop.load(Ordering::Acquire)
            && dead == 0;
        let (inbound, outbound) = self.connection_counts();
        let (members_ready, members) = self.members_connected();
        let book = self
            .inner
            .shared
            .book
            .lock()
            .unwrap_or_else(|p| p.into_inner());
        let checks = vec![
            HealthCheck {
                name: "started",
                ok: running,
                detail: format!(
                    "{} of {} shards running",
                    self.shard_count().saturating_sub(dead),
                    self.shard_count()
                ),
            },
            HealthCheck {
                name: "backend",
                ok: running,
                detail: self.backend().name().to_string(),
            },
            HealthCheck {
                name: "listening",
                ok: running,
                detail: self.listen_addr().to_string(),
            },
            HealthCheck {
                name: "address_book",
                ok: running,
                detail: book.as_ref().map_or_else(
                    || "none configured".into(),
                    |b| b.path().display().to_string(),
                ),
            },
            HealthCheck {
                name: "connections",
                ok: inbound + outbound + members_ready > 0,
                detail: format!(
                    "{inbound} inbound, {outbound} outbound, {} evicted",
                    self.inner.shared.limits.evictions()
                ),
            },
            HealthCheck {
                name: "members",
                ok: members == 0 || members_ready > 0,
                detail: format!("connected to {members_ready} of {members} members"),
            },
        ];
        Health {
            live: running,
            ready: checks.iter().all(|c| c.ok),
            checks,
        }
    }

    /// The node's state as JSON: identity, shards, counters, and every peer's statistics.
    pub async fn dump_state(&self) -> String {
        let peers: Vec<serde_json::Value> = self
            .stats()
            .await
            .into_iter()
            .map(|s| {
                serde_json::json!({
                    "peer_id": s.peer.to_string(),
                    "state": format!("{:?}", s.state),
                    "direction": s.direction.map(|d| format!("{d:?}")),
                    "connected_for_ms": s.connected_for.map(|d| d.as_millis() as u64),
                    "total_connected_ms": s.total_connected.as_millis() as u64,
                    "connections": s.connections,
                    "failures": s.failures,
                    "since_last_message_ms": s.since_last_message.map(|d| d.as_millis() as u64),
                    "rtt_us": s.rtt.map(|d| d.as_micros() as u64),
                    "streams": s.streams.iter().map(|t| serde_json::json!({
                        "name": t.name,
                        "sent_messages": t.sent_messages,
                        "sent_bytes": t.sent_bytes,
                        "received_messages": t.received_messages,
                        "received_bytes": t.received_bytes,
                        "queued_messages": t.queued_messages,
                    })).collect::<Vec<_>>(),
                })
            })
            .collect();
        let shared = &self.inner.shared;
        let members: Vec<serde_json::Value> = self
            .members()
            .into_iter()
            .map(|m| {
                serde_json::json!({
                    "peer_id": m.peer.to_string(),
                    "epochs": m.epochs,
                    "state": format!("{:?}", m.state),
                    "ready": m.ready,
                    "address": m.address.map(|a| a.to_string()),
                    "address_source": m.source,
                    "record_sequence": m.record_sequence,
                    "last_seen": m.last_seen,
                })
            })
            .collect();
        let (records_accepted, records_ignored) = self.record_counts();
        serde_json::json!({
            "peer_id": self.peer_id().to_string(),
            "listen_addr": self.listen_addr().to_string(),
            "listen_addrs": self.listen_addrs().iter().map(ToString::to_string).collect::<Vec<_>>(),
            "backend": self.backend().name(),
            "names_resolved": shared.resolver.resolved(),
            "requests_waiting": shared.rpc.len(),
            "protocol_version": glueberry_crypto::handshake::PROTOCOL_VERSION.to_string(),
            "shards": shared.shards.len(),
            "events_dropped": self.events_dropped(),
            "handoffs": self.handoffs(),
            "receive_buffer_bytes": self.receive_buffer_bytes(),
            "registered_send_buffers": self.registered_send_buffers(),
            "abandoned_operations": self.abandoned_operations(),
            "peers": peers,
            "membership": {
                "policy": self.membership_policy(),
                "epochs": self.epochs(),
                "members": members,
                "records_accepted": records_accepted,
                "records_ignored": records_ignored,
            },
        })
        .to_string()
    }

    /// This node's metrics in the Prometheus text format, when
    /// [`NodeConfig::record_metrics`](crate::NodeConfig::record_metrics) (or `metrics`) turned
    /// its recorder on: for an application that serves them from its own HTTP server, next to
    /// [`Node::health`].
    pub fn render_metrics(&self) -> Option<String> {
        let recorder = self.inner.shared.recorder.as_ref()?;
        let handle = recorder.handle();
        handle.run_upkeep();
        Some(handle.render())
    }

    /// The address of the metrics and health endpoint, when
    /// [`NodeConfig::metrics`](crate::NodeConfig::metrics) turned it on (the real port when 0 was
    /// asked for).
    #[cfg(feature = "http")]
    pub fn metrics_addr(&self) -> Option<std::net::SocketAddr> {
        self.inner
            .endpoint
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .as_ref()
            .map(crate::observe::Endpoint::addr)
    }
}
