//! The comparison peers that are byte streams — plain TCP on tokio, tokio + rustls (TLS 1.3),
//! rust-libp2p (TCP + noise + yamux) — and the one driver that measures them all the same way:
//! length-prefixed messages through a 256 KiB write buffer, each end on its own thread with a
//! single-threaded tokio runtime (one core each, like Glueberry's one shard per node).

use std::io;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, BufWriter};
use tokio::net::{TcpListener, TcpStream};

use crate::figures::{self, Figures, Length, Progress};

/// Which byte-stream stack.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Stack {
    /// Plain TCP, no encryption: the ceiling.
    Tcp,
    /// TLS 1.3 with mutual certificate authentication, one cipher suite.
    #[cfg(feature = "compare")]
    Tls(crate::Cipher),
    /// rust-libp2p: TCP, noise (ChaCha20-Poly1305), yamux, one stream per measurement.
    #[cfg(feature = "compare")]
    Libp2p,
}

/// How the sending application writes messages into the byte stream.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Framing {
    /// Through a 256 KiB buffer written out only when full: the application batches, and a
    /// message may wait for the ones after it (fine for a saturating sender, not for a
    /// messaging layer that must deliver each message promptly).
    Buffered,
    /// Each message written and flushed on its own, so that it is delivered at once: what a
    /// messaging layer over a byte stream does (the Go Glueberry writes each message to its
    /// libp2p stream).
    PerMessage,
}

/// A connected byte stream, and whatever must live as long as it.
pub(crate) struct Conn {
    pub io: Box<dyn Io>,
    _guard: Option<AbortOnDrop>,
}

/// A byte stream of any stack.
pub(crate) trait Io: AsyncRead + AsyncWrite + Unpin + Send {}
impl<T: AsyncRead + AsyncWrite + Unpin + Send> Io for T {}

/// Stops a background task (a libp2p swarm) when dropped.
pub(crate) struct AbortOnDrop(pub tokio::task::JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

impl Conn {
    pub(crate) fn new(io: impl Io + 'static, guard: Option<AbortOnDrop>) -> Self {
        Self {
            io: Box::new(io),
            _guard: guard,
        }
    }
}

/// The listening end of a stack.
pub(crate) enum Listener {
    Tcp(TcpListener),
    #[cfg(feature = "compare")]
    Tls(TcpListener, tokio_rustls::TlsAcceptor),
    #[cfg(feature = "compare")]
    Libp2p(crate::libp2p_peer::Listener),
}

/// What a dialler needs to reach a listener.
#[derive(Clone)]
pub(crate) enum Endpoint {
    Tcp(SocketAddr),
    #[cfg(feature = "compare")]
    Tls(SocketAddr, Arc<rustls::ClientConfig>),
    #[cfg(feature = "compare")]
    Libp2p(crate::libp2p_peer::Endpoint),
}

impl Stack {
    /// Listens on loopback (inside a tokio runtime).
    pub(crate) async fn listen(self) -> io::Result<(Listener, Endpoint)> {
        match self {
            Stack::Tcp => {
                let listener = TcpListener::bind("127.0.0.1:0").await?;
                let addr = listener.local_addr()?;
                Ok((Listener::Tcp(listener), Endpoint::Tcp(addr)))
            }
            #[cfg(feature = "compare")]
            Stack::Tls(cipher) => {
                let (acceptor, client) = crate::tls::configs(cipher)?;
                let listener = TcpListener::bind("127.0.0.1:0").await?;
                let addr = listener.local_addr()?;
                Ok((
                    Listener::Tls(listener, acceptor),
                    Endpoint::Tls(addr, client),
                ))
            }
            #[cfg(feature = "compare")]
            Stack::Libp2p => {
                let (listener, endpoint) = crate::libp2p_peer::listen().await?;
                Ok((Listener::Libp2p(listener), Endpoint::Libp2p(endpoint)))
            }
        }
    }
}

impl Listener {
    /// The next connection, its handshake complete.
    pub(crate) async fn accept(&mut self) -> io::Result<Conn> {
        match self {
            Listener::Tcp(listener) => {
                let (socket, _) = listener.accept().await?;
                socket.set_nodelay(true)?;
                Ok(Conn::new(socket, None))
            }
            #[cfg(feature = "compare")]
            Listener::Tls(listener, acceptor) => {
                let (socket, _) = listener.accept().await?;
                socket.set_nodelay(true)?;
                Ok(Conn::new(acceptor.accept(socket).await?, None))
            }
            #[cfg(feature = "compare")]
            Listener::Libp2p(listener) => listener.accept().await,
        }
    }
}

impl Endpoint {
    /// A new connection, its handshake complete (inside a tokio runtime).
    pub(crate) async fn connect(&self) -> io::Result<Conn> {
        match self {
            Endpoint::Tcp(addr) => {
                let socket = TcpStream::connect(addr).await?;
                socket.set_nodelay(true)?;
                Ok(Conn::new(socket, None))
            }
            #[cfg(feature = "compare")]
            Endpoint::Tls(addr, config) => {
                let socket = TcpStream::connect(addr).await?;
                socket.set_nodelay(true)?;
                let connector = tokio_rustls::TlsConnector::from(config.clone());
                let name = rustls::pki_types::ServerName::try_from("localhost")
                    .map_err(io::Error::other)?;
                Ok(Conn::new(connector.connect(name, socket).await?, None))
            }
            #[cfg(feature = "compare")]
            Endpoint::Libp2p(endpoint) => endpoint.connect().await,
        }
    }
}

fn runtime() -> io::Result<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
}

/// Runs `serve` on a listener in its own thread; returns the endpoint and the thread.
fn spawn_listener<F>(
    stack: Stack,
    serve: impl FnOnce(Listener) -> F + Send + 'static,
) -> Result<(Endpoint, std::thread::JoinHandle<()>), String>
where
    F: Future<Output = ()>,
{
    let (tx, rx) = std::sync::mpsc::channel();
    let thread = std::thread::spawn(move || {
        let rt = match runtime() {
            Ok(rt) => rt,
            Err(e) => return drop(tx.send(Err(e.to_string()))),
        };
        rt.block_on(async move {
            match stack.listen().await {
                Ok((listener, endpoint)) => {
                    let _ = tx.send(Ok(endpoint));
                    serve(listener).await;
                }
                Err(e) => drop(tx.send(Err(e.to_string()))),
            }
        });
    });
    let endpoint = rx
        .recv()
        .map_err(|_| "the listener thread died".to_string())??;
    Ok((endpoint, thread))
}

/// Reads length-prefixed messages until EOF, counting them.
async fn sink(mut io: Box<dyn Io>, received: &AtomicU64) {
    let mut buf = vec![0u8; 256 * 1024];
    let (mut pending, mut header, mut count) = (0usize, [0u8; 4], 0u64);
    let mut header_len = 0;
    while let Ok(n) = io.read(&mut buf).await {
        if n == 0 {
            break;
        }
        let mut at = 0;
        while at < n {
            if pending == 0 {
                let take = (4 - header_len).min(n - at);
                header[header_len..header_len + take].copy_from_slice(&buf[at..at + take]);
                header_len += take;
                at += take;
                if header_len == 4 {
                    pending = u32::from_be_bytes(header) as usize;
                    header_len = 0;
                }
            } else {
                let take = pending.min(n - at);
                pending -= take;
                at += take;
                if pending == 0 {
                    count += 1;
                    received.store(count, Ordering::Relaxed);
                }
            }
        }
    }
}

/// One-way throughput of `size`-byte messages from a dialler to a listener.
pub(crate) fn throughput(
    stack: Stack,
    framing: Framing,
    size: usize,
    length: Length,
    report: Progress<'_>,
) -> Result<Figures, String> {
    let received = Arc::new(AtomicU64::new(0));
    let counter = received.clone();
    let (endpoint, receiver) = spawn_listener(stack, move |mut listener| async move {
        if let Ok(conn) = listener.accept().await {
            sink(conn.io, &counter).await;
        }
    })?;
    let stop = Arc::new(AtomicBool::new(false));
    let sender = {
        let stop = stop.clone();
        std::thread::spawn(move || -> Result<(), String> {
            let rt = runtime().map_err(|e| e.to_string())?;
            rt.block_on(async move {
                let Conn { io, _guard } = endpoint.connect().await.map_err(|e| e.to_string())?;
                let capacity = match framing {
                    Framing::Buffered => 256 * 1024,
                    Framing::PerMessage => size + 4,
                };
                let mut out = BufWriter::with_capacity(capacity, io);
                let message = vec![0x5au8; size];
                let len = (size as u32).to_be_bytes();
                while !stop.load(Ordering::Relaxed) {
                    for _ in 0..64 {
                        out.write_all(&len).await.map_err(|e| e.to_string())?;
                        out.write_all(&message).await.map_err(|e| e.to_string())?;
                        if framing == Framing::PerMessage {
                            out.flush().await.map_err(|e| e.to_string())?;
                        }
                    }
                }
                let _ = out.flush().await;
                let _ = out.shutdown().await;
                // libp2p: keep the swarm alive until the listener read everything.
                tokio::time::sleep(Duration::from_millis(20)).await;
                drop(_guard);
                Ok(())
            })
        })
    };
    let figures = figures::measure(&received, size, length, report);
    stop.store(true, Ordering::Relaxed);
    let sent = sender.join().map_err(|_| "the sender panicked")?;
    let _ = receiver.join();
    sent?;
    Ok(figures)
}

/// Request/response round trips of `size`-byte messages, one at a time.
pub(crate) fn latency(stack: Stack, size: usize, duration: Duration) -> Result<Figures, String> {
    let (endpoint, echo) = spawn_listener(stack, move |mut listener| async move {
        let Ok(mut conn) = listener.accept().await else {
            return;
        };
        let mut buf = vec![0u8; size];
        while conn.io.read_exact(&mut buf).await.is_ok() {
            if conn.io.write_all(&buf).await.is_err() || conn.io.flush().await.is_err() {
                return;
            }
        }
    })?;
    let rt = runtime().map_err(|e| e.to_string())?;
    let samples = rt.block_on(async move {
        let mut conn = endpoint.connect().await.map_err(|e| e.to_string())?;
        let mut samples = figures::Latencies::new();
        let mut buf = vec![0x5au8; size];
        let end = Instant::now() + duration;
        while Instant::now() < end {
            let start = Instant::now();
            conn.io.write_all(&buf).await.map_err(|e| e.to_string())?;
            conn.io.flush().await.map_err(|e| e.to_string())?;
            conn.io
                .read_exact(&mut buf)
                .await
                .map_err(|e| e.to_string())?;
            samples.record(start.elapsed());
        }
        let _ = conn.io.shutdown().await;
        Ok::<_, String>(samples)
    });
    // Dropping the runtime drops the connection (and a libp2p swarm), which ends the echo.
    drop(rt);
    let samples = samples?;
    let _ = echo.join();
    Ok(figures::percentiles(&samples, size, duration.as_secs_f64()))
}

/// New connections per second, each with its full handshake and one 1-byte round trip.
pub(crate) fn handshakes(stack: Stack, duration: Duration) -> Result<Figures, String> {
    let stop = Arc::new(tokio::sync::Notify::new());
    let stopped = stop.clone();
    let (endpoint, acceptor) = spawn_listener(stack, move |mut listener| async move {
        loop {
            let conn = tokio::select! {
                conn = listener.accept() => conn,
                () = stopped.notified() => return,
            };
            let Ok(mut conn) = conn else { continue };
            let mut byte = [0u8; 1];
            if conn.io.read_exact(&mut byte).await.is_ok() {
                let _ = conn.io.write_all(&byte).await;
                let _ = conn.io.flush().await;
            }
        }
    })?;
    let rt = runtime().map_err(|e| e.to_string())?;
    let result = rt.block_on(async move {
        let (start, mut count) = (Instant::now(), 0);
        let mut byte = [1u8; 1];
        while start.elapsed() < duration {
            let mut conn = endpoint.connect().await.map_err(|e| e.to_string())?;
            conn.io.write_all(&byte).await.map_err(|e| e.to_string())?;
            conn.io.flush().await.map_err(|e| e.to_string())?;
            conn.io
                .read_exact(&mut byte)
                .await
                .map_err(|e| e.to_string())?;
            count += 1;
        }
        Ok::<_, String>(figures::rate(count, start))
    });
    drop(rt);
    stop.notify_one();
    let _ = acceptor.join();
    result
}
