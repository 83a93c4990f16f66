//! rust-libp2p as a comparison peer: TCP, noise (XX, ChaCha20-Poly1305), yamux, and
//! `libp2p-stream` for a plain byte stream per measurement — the stack the Go Glueberry stands
//! on, in Rust. Each connection of the handshake scenario is a new swarm with a new identity.

use std::io;
use std::time::Duration;

use futures::StreamExt as _;
use libp2p::swarm::SwarmEvent;
use libp2p::{Multiaddr, PeerId, StreamProtocol, Swarm, SwarmBuilder, noise, tcp, yamux};
use tokio_util::compat::FuturesAsyncReadCompatExt as _;

use crate::streams::{AbortOnDrop, Conn};

const PROTOCOL: StreamProtocol = StreamProtocol::new("/glueberry-perf/1");

fn err(e: impl std::fmt::Display) -> io::Error {
    io::Error::other(e.to_string())
}

fn swarm() -> io::Result<Swarm<libp2p_stream::Behaviour>> {
    Ok(SwarmBuilder::with_new_identity()
        .with_tokio()
        .with_tcp(
            tcp::Config::default().nodelay(true),
            noise::Config::new,
            yamux::Config::default,
        )
        .map_err(err)?
        .with_behaviour(|_| libp2p_stream::Behaviour::new())
        .map_err(err)?
        .with_swarm_config(|c| c.with_idle_connection_timeout(Duration::from_secs(60)))
        .build())
}

/// Drives a swarm in the background of the current runtime.
fn drive(mut swarm: Swarm<libp2p_stream::Behaviour>) -> AbortOnDrop {
    AbortOnDrop(tokio::spawn(async move {
        loop {
            swarm.select_next_some().await;
        }
    }))
}

/// A listening swarm and the streams opened to it.
pub(crate) struct Listener {
    incoming: libp2p_stream::IncomingStreams,
    _swarm: AbortOnDrop,
}

/// A listener's peer id and address.
#[derive(Clone)]
pub(crate) struct Endpoint {
    peer: PeerId,
    addr: Multiaddr,
}

/// A swarm listening on loopback.
pub(crate) async fn listen() -> io::Result<(Listener, Endpoint)> {
    let mut swarm = swarm()?;
    let incoming = swarm
        .behaviour()
        .new_control()
        .accept(PROTOCOL)
        .map_err(err)?;
    let any: Multiaddr = "/ip4/127.0.0.1/tcp/0".parse().map_err(err)?;
    swarm.listen_on(any).map_err(err)?;
    let addr = loop {
        if let SwarmEvent::NewListenAddr { address, .. } = swarm.select_next_some().await {
            break address;
        }
    };
    let peer = *swarm.local_peer_id();
    Ok((
        Listener {
            incoming,
            _swarm: drive(swarm),
        },
        Endpoint { peer, addr },
    ))
}

impl Listener {
    pub(crate) async fn accept(&mut self) -> io::Result<Conn> {
        let (_, stream) = self
            .incoming
            .next()
            .await
            .ok_or_else(|| err("the swarm stopped"))?;
        Ok(Conn::new(stream.compat(), None))
    }
}

impl Endpoint {
    /// A new swarm, connected (TCP, noise, yamux) and with one stream open.
    pub(crate) async fn connect(&self) -> io::Result<Conn> {
        let mut swarm = swarm()?;
        swarm.dial(self.addr.clone()).map_err(err)?;
        loop {
            match swarm.select_next_some().await {
                SwarmEvent::ConnectionEstablished { .. } => break,
                SwarmEvent::OutgoingConnectionError { error, .. } => return Err(err(error)),
                _ => {}
            }
        }
        let mut control = swarm.behaviour().new_control();
        let task = drive(swarm);
        let stream = control
            .open_stream(self.peer, PROTOCOL)
            .await
            .map_err(err)?;
        Ok(Conn::new(stream.compat(), Some(task)))
    }
}
