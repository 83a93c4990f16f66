//! The operator endpoint (cargo feature `http`): `/metrics` (Prometheus text format), `/healthz`
//! (liveness), `/readyz` (readiness; 200 or 503 with the checks as JSON) and, only when asked
//! for, `/debug/state` (the [`crate::Node::dump_state`] JSON: every peer's id, address and
//! state — the validator's topology, so off by default).
//!
//! hyper (HTTP/1.1) on one thread with a current-thread tokio runtime, bounded in everything a
//! client can make it hold: connections per source IP (over it a connection is closed at
//! accept) and in all (over it the oldest connection is dropped to make room, so a liveness
//! probe always gets in), the request head's size and the time to send it (slowloris), the time
//! a connection lives, and one request per connection (no keep-alive, so pipelined requests a
//! client never reads answers to hold nothing past the first). GET only; no body is read.

use std::collections::HashMap;
use std::convert::Infallible;
use std::net::{IpAddr, SocketAddr};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::Duration;

use http_body_util::Full;
use hyper::body::{Bytes, Incoming};
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::{TokioIo, TokioTimer};
use metrics_exporter_prometheus::{PrometheusHandle, PrometheusRecorder};

/// What the endpoint asks of its node; `None` once the node is gone.
pub(crate) trait Source: Send + Sync + 'static {
    /// `(live, ready, checks as JSON)`.
    fn health(&self) -> Option<(bool, bool, String)>;
    /// The state dump as JSON.
    fn dump_state(&self) -> Option<String>;
}

/// The endpoint's bounds (defaults in [`EndpointOptions::default`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct EndpointOptions {
    /// Serve `/debug/state`.
    pub debug_state: bool,
    /// Connections open at once, in all.
    pub max_connections: usize,
    /// Connections open at once from one source IP.
    pub max_connections_per_ip: usize,
    /// The longest request head (request line and headers).
    pub max_head_bytes: usize,
    /// Time to send the request head.
    pub head_timeout: Duration,
    /// Time a connection may live, request and answer included.
    pub connection_timeout: Duration,
}

impl Default for EndpointOptions {
    fn default() -> Self {
        Self {
            debug_state: false,
            max_connections: 64,
            max_connections_per_ip: 8,
            max_head_bytes: 16 * 1024,
            head_timeout: Duration::from_secs(5),
            connection_timeout: Duration::from_secs(10),
        }
    }
}

/// The running endpoint.
pub(crate) struct Endpoint {
    addr: SocketAddr,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    thread: Option<JoinHandle<()>>,
}

impl Endpoint {
    /// Binds `addr` and serves until [`Endpoint::stop`] or until `source` is gone.
    pub(crate) fn start(
        addr: SocketAddr,
        recorder: Arc<PrometheusRecorder>,
        source: Arc<dyn Source>,
        options: EndpointOptions,
    ) -> std::io::Result<Self> {
        let listener = std::net::TcpListener::bind(addr).map_err(|e| {
            std::io::Error::new(e.kind(), format!("metrics endpoint on {addr}: {e}"))
        })?;
        listener.set_nonblocking(true)?;
        let addr = listener.local_addr()?;
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_io()
            .enable_time()
            .build()?;
        let (stop, stopped) = tokio::sync::oneshot::channel();
        let handle = recorder.handle();
        let thread = std::thread::Builder::new()
            .name("glueberry-http".into())
            .spawn(move || {
                runtime.block_on(async move {
                    if let Ok(listener) = tokio::net::TcpListener::from_std(listener) {
                        serve(listener, handle, source, options, stopped).await;
                    }
                });
            })?;
        Ok(Self {
            addr,
            stop: Some(stop),
            thread: Some(thread),
        })
    }

    /// The address served (the real port when 0 was asked for).
    pub(crate) fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Stops serving and waits for the thread (connections in progress are dropped).
    pub(crate) fn stop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

/// The connections open: per source IP, and each with its start and a way to end it.
#[derive(Default)]
struct Open {
    next: u64,
    connections: HashMap<u64, (IpAddr, tokio::time::Instant, tokio::task::AbortHandle)>,
    per_ip: HashMap<IpAddr, usize>,
}

/// A connection's place in [`Open`], given back when its task ends (or is aborted).
struct Slot {
    id: u64,
    ip: IpAddr,
    open: Arc<Mutex<Open>>,
}

impl Drop for Slot {
    fn drop(&mut self) {
        let mut open = self.open.lock().unwrap_or_else(|p| p.into_inner());
        open.connections.remove(&self.id);
        if let Some(n) = open.per_ip.get_mut(&self.ip) {
            *n -= 1;
            if *n == 0 {
                open.per_ip.remove(&self.ip);
            }
        }
    }
}

async fn serve(
    listener: tokio::net::TcpListener,
    metrics: PrometheusHandle,
    source: Arc<dyn Source>,
    options: EndpointOptions,
    mut stopped: tokio::sync::oneshot::Receiver<()>,
) {
    let open = Arc::new(Mutex::new(Open::default()));
    let mut gone = tokio::time::interval(Duration::from_millis(500));
    loop {
        let (stream, peer) = tokio::select! {
            _ = &mut stopped => return,
            _ = gone.tick() => {
                if source.health().is_none() {
                    return; // the node is gone
                }
                continue;
            }
            accepted = listener.accept() => match accepted {
                Ok(accepted) => accepted,
                Err(_) => continue,
            },
        };
        let ip = peer.ip();
        let mut guard = open.lock().unwrap_or_else(|p| p.into_inner());
        if guard.per_ip.get(&ip).copied().unwrap_or(0) >= options.max_connections_per_ip {
            // Over its address's share: closed at once (dropping the stream), unread.
            continue;
        }
        if guard.connections.len() >= options.max_connections {
            // Full: the oldest connection makes room (a probe always gets in; holding the
            // endpoint takes an attacker a stream of new connections, not a few idle ones).
            if let Some((_, (_, _, oldest))) = guard
                .connections
                .iter()
                .min_by_key(|(_, (_, since, _))| *since)
            {
                oldest.abort();
            }
        }
        let id = guard.next;
        guard.next += 1;
        *guard.per_ip.entry(ip).or_insert(0) += 1;
        let slot = Slot {
            id,
            ip,
            open: open.clone(),
        };
        let metrics = metrics.clone();
        let source = source.clone();
        let task = tokio::spawn(async move {
            let service = hyper::service::service_fn(move |request| {
                let answer = answer(&request, &metrics, &*source, options.debug_state);
                async move { Ok::<_, Infallible>(answer) }
            });
            let connection = hyper::server::conn::http1::Builder::new()
                .timer(TokioTimer::new())
                .header_read_timeout(options.head_timeout)
                .max_buf_size(options.max_head_bytes.max(8192))
                .keep_alive(false)
                .serve_connection(TokioIo::new(stream), service);
            let _ = tokio::time::timeout(options.connection_timeout, connection).await;
            drop(slot);
        });
        guard
            .connections
            .insert(id, (ip, tokio::time::Instant::now(), task.abort_handle()));
    }
}

fn answer(
    request: &Request<Incoming>,
    metrics: &PrometheusHandle,
    source: &dyn Source,
    debug_state: bool,
) -> Response<Full<Bytes>> {
    let path = request.uri().path();
    let (status, content_type, body) = match (request.method(), path) {
        (&Method::GET, "/metrics") => {
            metrics.run_upkeep();
            (
                StatusCode::OK,
                "text/plain; version=0.0.4",
                metrics.render(),
            )
        }
        (&Method::GET, "/healthz" | "/readyz") => match source.health() {
            Some((live, ready, json)) => {
                let ok = if path == "/healthz" { live } else { ready };
                let status = if ok {
                    StatusCode::OK
                } else {
                    StatusCode::SERVICE_UNAVAILABLE
                };
                (status, "application/json", json)
            }
            None => (
                StatusCode::SERVICE_UNAVAILABLE,
                "text/plain",
                "stopped\n".into(),
            ),
        },
        (&Method::GET, "/debug/state") if debug_state => match source.dump_state() {
            Some(json) => (StatusCode::OK, "application/json", json),
            None => (
                StatusCode::SERVICE_UNAVAILABLE,
                "text/plain",
                "stopped\n".into(),
            ),
        },
        (&Method::GET, _) => (StatusCode::NOT_FOUND, "text/plain", "not found\n".into()),
        _ => (
            StatusCode::METHOD_NOT_ALLOWED,
            "text/plain",
            "only GET\n".into(),
        ),
    };
    let mut response = Response::new(Full::new(Bytes::from(body)));
    *response.status_mut() = status;
    if let Ok(value) = hyper::header::HeaderValue::from_str(content_type) {
        response
            .headers_mut()
            .insert(hyper::header::CONTENT_TYPE, value);
    }
    response
}
