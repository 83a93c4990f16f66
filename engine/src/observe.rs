//! The node's HTTP endpoint for operators: `/metrics` (Prometheus text format), `/healthz`
//! (liveness), `/readyz` (readiness; 200 or 503 with the checks as JSON) and `/debug/state`
//! (the [`crate::Node::dump_state`] JSON). Off by default; when on, served by one thread on the
//! configured address (loopback unless the operator chose otherwise), one request at a time,
//! GET only, no request body read.

use std::net::SocketAddr;
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::Duration;

use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusRecorder};

use crate::metrics::names;

/// A recorder for one node, with histogram buckets fit for each histogram.
pub(crate) fn recorder() -> Arc<PrometheusRecorder> {
    let buckets = |builder: PrometheusBuilder, name: &str, values: &[f64]| {
        builder
            .set_buckets_for_metric(Matcher::Full(name.to_string()), values)
            .unwrap_or_else(|_| PrometheusBuilder::new())
    };
    let seconds = [
        0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
    ];
    let mut builder = PrometheusBuilder::new();
    builder = buckets(builder, names::HANDSHAKE_DURATION, &seconds);
    builder = buckets(builder, names::BACKPRESSURE_WAIT, &seconds);
    builder = buckets(
        builder,
        names::RECORDS_PER_BATCH,
        &[1.0, 2.0, 4.0, 8.0, 16.0, 32.0, 64.0],
    );
    Arc::new(builder.build_recorder())
}

/// What the endpoint asks of its node; `None` once the node is gone.
pub(crate) trait Source: Send + 'static {
    /// `(live, ready, checks as JSON)`.
    fn health(&self) -> Option<(bool, bool, String)>;
    /// The state dump as JSON.
    fn dump_state(&self) -> Option<String>;
}

/// The running endpoint.
pub(crate) struct Endpoint {
    server: Arc<tiny_http::Server>,
    thread: Option<JoinHandle<()>>,
    addr: SocketAddr,
}

impl Endpoint {
    /// Binds `addr` and serves until [`Endpoint::stop`] or until `source` is gone.
    pub(crate) fn start(
        addr: SocketAddr,
        recorder: Arc<PrometheusRecorder>,
        source: Box<dyn Source>,
    ) -> std::io::Result<Self> {
        let server = tiny_http::Server::http(addr)
            .map(Arc::new)
            .map_err(|e| std::io::Error::other(format!("metrics endpoint on {addr}: {e}")))?;
        let addr = server
            .server_addr()
            .to_ip()
            .ok_or_else(|| std::io::Error::other("metrics endpoint: not an IP listener"))?;
        let thread = {
            let server = server.clone();
            std::thread::Builder::new()
                .name("glueberry-http".into())
                .spawn(move || serve(&server, &recorder, &*source))?
        };
        Ok(Self {
            server,
            thread: Some(thread),
            addr,
        })
    }

    /// The address served (the real port when 0 was asked for).
    pub(crate) fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Stops serving and waits for the thread.
    pub(crate) fn stop(&mut self) {
        self.server.unblock();
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

fn serve(server: &tiny_http::Server, recorder: &PrometheusRecorder, source: &dyn Source) {
    let handle = recorder.handle();
    loop {
        let request = match server.recv_timeout(Duration::from_millis(500)) {
            Ok(Some(request)) => request,
            Ok(None) if source.health().is_some() => continue,
            Ok(None) | Err(_) => return,
        };
        let path = request.url().split('?').next().unwrap_or("");
        let (status, content_type, body) = match (request.method(), path) {
            (tiny_http::Method::Get, "/metrics") => {
                handle.run_upkeep();
                (200, "text/plain; version=0.0.4", handle.render())
            }
            (tiny_http::Method::Get, "/healthz" | "/readyz") => {
                let Some((live, ready, json)) = source.health() else {
                    return;
                };
                let ok = if path == "/healthz" { live } else { ready };
                (if ok { 200 } else { 503 }, "application/json", json)
            }
            (tiny_http::Method::Get, "/debug/state") => {
                let Some(json) = source.dump_state() else {
                    return;
                };
                (200, "application/json", json)
            }
            (tiny_http::Method::Get, _) => (404, "text/plain", "not found\n".to_string()),
            _ => (405, "text/plain", "only GET\n".to_string()),
        };
        let header = tiny_http::Header::from_bytes(&b"Content-Type"[..], content_type.as_bytes());
        let mut response = tiny_http::Response::from_string(body).with_status_code(status);
        if let Ok(header) = header {
            response = response.with_header(header);
        }
        // A client that went away is its own problem.
        let _ = request.respond(response);
    }
}
