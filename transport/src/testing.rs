//! Helpers for tests and benchmarks that need a pair of connections wired back to back.

use std::sync::Arc;
use std::time::Instant;

use glueberry_crypto::handshake::complete_in_memory;
use glueberry_crypto::record::danger_null_channel;
use glueberry_crypto::{Handshake, HandshakeConfig, Identity};

use crate::{Connection, ConnectionConfig, Direction};

/// Whether a [`connected_pair`] encrypts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Cipher {
    /// A real handshake and the given suite.
    Real(glueberry_crypto::Suite),
    /// [`danger_null_channel`]: no AEAD, to measure everything around it.
    DangerNull,
}

/// Two connections (outbound, inbound) over one secure session, both Connected, with their
/// first flight (SETTINGS) not yet exchanged. For tests and benchmarks.
pub fn connected_pair(
    config: Arc<ConnectionConfig>,
    cipher: Cipher,
) -> Result<(Connection, Connection), Box<dyn std::error::Error + Send + Sync>> {
    let now = Instant::now();
    let a_id = Identity::from_seed(&[0xa1; 32]);
    let b_id = Identity::from_seed(&[0xb2; 32]);
    match cipher {
        Cipher::DangerNull => {
            let (a_seal, a_open) = danger_null_channel();
            let (b_seal, b_open) = danger_null_channel();
            Ok((
                Connection::from_channel(
                    config.clone(),
                    b_id.peer_id(),
                    (a_seal, a_open),
                    Direction::Outbound,
                    now,
                ),
                Connection::from_channel(
                    config,
                    a_id.peer_id(),
                    (b_seal, b_open),
                    Direction::Inbound,
                    now,
                ),
            ))
        }
        Cipher::Real(suite) => {
            let handshake = |id: &Identity| {
                HandshakeConfig::new(id, "testing")
                    .and_then(|c| c.with_suites(&[suite]))
                    .map(Arc::new)
            };
            let (a_cfg, b_cfg) = (handshake(&a_id)?, handshake(&b_id)?);
            let initiator = Handshake::initiator(a_cfg, None)?;
            let (a, b) = complete_in_memory(initiator, Handshake::responder(b_cfg))?;
            Ok((
                Connection::from_session(config.clone(), a, Direction::Outbound, now),
                Connection::from_session(config, b, Direction::Inbound, now),
            ))
        }
    }
}

/// Runs `conn`'s secure handshake over a blocking byte stream (a `TcpStream`, say) until the
/// peer is authenticated and our last handshake message is written: for clients in tests and
/// benchmarks that speak the protocol without an engine.
pub fn handshake_blocking(
    conn: &mut Connection,
    socket: &mut (impl std::io::Read + std::io::Write),
) -> std::io::Result<()> {
    let mut buf = vec![0u8; 16 * 1024];
    while conn.peer().is_none() || conn.has_pending_output() {
        let n = conn.poll_transmit(&mut buf);
        socket.write_all(&buf[..n])?;
        if conn.peer().is_some() {
            continue;
        }
        let n = socket.read(&mut buf)?;
        if n == 0 {
            return Err(std::io::Error::new(
                std::io::ErrorKind::UnexpectedEof,
                "the peer closed during the handshake",
            ));
        }
        conn.handle_input(Instant::now(), &buf[..n]);
        if conn.is_closed() {
            return Err(std::io::Error::other(format!(
                "handshake failed: {:?}",
                conn.close_reason()
            )));
        }
    }
    Ok(())
}
