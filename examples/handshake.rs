//! The secure channel over a real TCP connection, with nothing but `std`: two nodes handshake
//! on loopback, then exchange encrypted records.
//!
//! Run it with `cargo run -p glueberry-examples --example handshake`.
//!
//! This shows how the sans-IO [`Handshake`] and the record layer are driven; applications use
//! the `glueberry` engine, which does the same on io_uring for many peers at once.

use std::error::Error;
use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::sync::Arc;
use std::thread;

use glueberry_crypto::record::{HEADER_LEN, RecordHeader, TAG_LEN};
use glueberry_crypto::{Handshake, HandshakeConfig, Identity, RecordOpener, RecordSealer};

const NETWORK: &str = "example-chain-1";

fn main() -> Result<(), Box<dyn Error>> {
    let server_identity = Identity::generate()?;
    let server_id = server_identity.peer_id();
    let server_config = Arc::new(
        HandshakeConfig::new(&server_identity, NETWORK)?
            .with_hello_payload(b"height=1200".to_vec())?,
    );
    let listener = TcpListener::bind("127.0.0.1:0")?;
    let address = listener.local_addr()?;
    println!("server {server_id} listening on {address}");

    let server = thread::spawn(move || -> Result<(), Box<dyn Error + Send + Sync>> {
        let (mut stream, from) = listener.accept()?;
        let handshake = Handshake::responder(server_config);
        let (session, leftover) = run_handshake(handshake, &mut stream)?;
        println!(
            "server: authenticated {} from {from}, suite {:?}, their hello {:?}",
            session.peer_id(),
            session.suite(),
            String::from_utf8_lossy(session.remote_hello())
        );
        let (mut sealer, mut opener) = session.into_channel();
        let mut reader = RecordReader::new(leftover);
        while let Some(message) = reader.next(&mut stream, &mut opener)? {
            let reply = format!("echo: {}", String::from_utf8_lossy(&message));
            write_record(&mut stream, &mut sealer, reply.as_bytes())?;
        }
        Ok(())
    });

    let client_identity = Identity::generate()?;
    let client_config = Arc::new(HandshakeConfig::new(&client_identity, NETWORK)?);
    let mut stream = TcpStream::connect(address)?;
    // Dial the server and insist on its identity.
    let handshake = Handshake::initiator(client_config, Some(server_id))?;
    let (session, leftover) = run_handshake(handshake, &mut stream).map_err(|e| e.to_string())?;
    println!(
        "client: authenticated {}, their hello {:?}",
        session.peer_id(),
        String::from_utf8_lossy(session.remote_hello())
    );
    let (mut sealer, mut opener) = session.into_channel();
    let mut reader = RecordReader::new(leftover);
    for text in ["hello", "glueberry"] {
        write_record(&mut stream, &mut sealer, text.as_bytes()).map_err(|e| e.to_string())?;
        let reply = reader
            .next(&mut stream, &mut opener)
            .map_err(|e| e.to_string())?
            .ok_or("server closed")?;
        println!("client: got {:?}", String::from_utf8_lossy(&reply));
    }
    drop(stream);
    server
        .join()
        .map_err(|_| "server panicked")?
        .map_err(|e| e.to_string())?;
    Ok(())
}

type BoxError = Box<dyn Error + Send + Sync>;

/// Drives a handshake over a blocking stream. Returns the session and any bytes read past the
/// handshake (the peer's first records).
fn run_handshake(
    mut handshake: Handshake,
    stream: &mut TcpStream,
) -> Result<(glueberry_crypto::Session, Vec<u8>), BoxError> {
    let mut out = Vec::new();
    let mut buf = [0u8; 4096];
    loop {
        if handshake.poll_transmit(&mut out) > 0 {
            stream.write_all(&out)?;
            out.clear();
        }
        if handshake.is_finished() {
            return Ok((handshake.into_session()?, Vec::new()));
        }
        let n = stream.read(&mut buf)?;
        if n == 0 {
            return Err("peer closed during the handshake".into());
        }
        let result = handshake.handle_input(&buf[..n]);
        // Send what the handshake still holds (a HelloReject on failure) before giving up.
        if handshake.poll_transmit(&mut out) > 0 {
            stream.write_all(&out)?;
            out.clear();
        }
        let used = result?;
        if handshake.is_finished() {
            return Ok((handshake.into_session()?, buf[used..n].to_vec()));
        }
    }
}

fn write_record(
    stream: &mut TcpStream,
    sealer: &mut RecordSealer,
    message: &[u8],
) -> Result<(), BoxError> {
    let mut record = vec![0u8; HEADER_LEN + message.len() + TAG_LEN];
    record[HEADER_LEN..HEADER_LEN + message.len()].copy_from_slice(message);
    let len = sealer.seal_in_place(&mut record, message.len())?;
    stream.write_all(&record[..len])?;
    Ok(())
}

/// Reassembles records from a byte stream using their headers.
struct RecordReader {
    pending: Vec<u8>,
}

impl RecordReader {
    fn new(leftover: Vec<u8>) -> Self {
        Self { pending: leftover }
    }

    fn next(
        &mut self,
        stream: &mut TcpStream,
        opener: &mut RecordOpener,
    ) -> Result<Option<Vec<u8>>, BoxError> {
        let mut buf = [0u8; 4096];
        loop {
            if let Some(head) = self.pending.first_chunk::<HEADER_LEN>() {
                let header = RecordHeader::decode(*head)?;
                if self.pending.len() >= header.record_len() {
                    let mut record: Vec<u8> = self.pending.drain(..header.record_len()).collect();
                    return Ok(Some(opener.open_in_place(&mut record)?.to_vec()));
                }
            }
            let n = stream.read(&mut buf)?;
            if n == 0 {
                return Ok(None);
            }
            self.pending.extend_from_slice(&buf[..n]);
        }
    }
}
