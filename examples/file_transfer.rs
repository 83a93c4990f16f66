//! A large file sent between two nodes in chunks, with a progress bar, resumed after the sender
//! dies, and verified by its SHA-256 at the end.
//!
//! - The receiver serves `file` requests: `OFFER name size sha256` is answered with how many
//!   bytes of that file it already holds on disk (0 for a new file); `CHUNK offset bytes`
//!   appends at `offset` (which must be where its file ends) and is answered with the new
//!   length, once written: an answer is an acknowledgement.
//! - The sender offers the file, then sends chunks from the offset it was given, several
//!   requests in flight (a window), advancing a progress bar (`indicatif`) on each
//!   acknowledgement.
//! - Part-way, the sender's node stops, as if its process died. A new sender node (same file,
//!   new connection) offers the file again, is told where the receiver's file ends, and resumes
//!   from there: what the receiver had acknowledged is not sent again.
//! - The receiver checks the SHA-256 of what it assembled against the offer, and only then
//!   renames the partial file to its final name.
//!
//! Run: `cargo run -p glueberry-examples --example file-transfer [-- SIZE_MIB]` (default 64).
//! It checks its own results and exits with an error if one is wrong.

use std::fs::{self, File, OpenOptions};
use std::io::{Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use bytes::{BufMut, Bytes, BytesMut};
use glueberry::crypto::Identity;
use glueberry::testing::establish;
use glueberry::{Node, NodeConfig, PeerId, RequestError};
use indicatif::{ProgressBar, ProgressStyle};
use sha2::{Digest, Sha256};

const NETWORK: &str = "file-transfer-example";
const STREAM: &str = "file";
/// Bytes per chunk (each one request).
const CHUNK: usize = 256 * 1024;
/// Chunks in flight at once.
const WINDOW: usize = 8;
const TIMEOUT: Duration = Duration::from_secs(10);

type Error = Box<dyn std::error::Error>;

fn start() -> Result<Node, Error> {
    let config = NodeConfig::new(Identity::generate()?, NETWORK, "127.0.0.1:0".parse()?).shards(1);
    Ok(Node::start(config)?)
}

/// The receiver: files land in `dir`, as `NAME.part` until complete and verified.
async fn receive(mut requests: glueberry::Requests, dir: PathBuf) -> Result<PathBuf, String> {
    let mut offer: Option<(String, u64, [u8; 32])> = None;
    while let Some(request) = requests.recv().await {
        let data = request.data.clone();
        let answer = if let Some(rest) = data.strip_prefix(b"OFFER ") {
            let text = String::from_utf8_lossy(rest).to_string();
            let mut words = text.split(' ');
            let (Some(name), Some(size), Some(digest)) = (words.next(), words.next(), words.next())
            else {
                let _ = request.refuse().await;
                continue;
            };
            let name = Path::new(name)
                .file_name()
                .ok_or("bad name")?
                .to_string_lossy();
            let size: u64 = size.parse().map_err(|_| "bad size")?;
            let digest = hex_decode(digest).ok_or("bad digest")?;
            let have = fs::metadata(dir.join(format!("{name}.part"))).map_or(0, |m| m.len());
            offer = Some((name.to_string(), size, digest));
            have
        } else if let Some(rest) = data.strip_prefix(b"CHUNK ") {
            let Some((name, size, digest)) = &offer else {
                let _ = request.refuse().await;
                continue;
            };
            let (offset, bytes) = rest.split_at(8);
            let offset = u64::from_be_bytes(offset.try_into().map_err(|_| "short chunk")?);
            let part = dir.join(format!("{name}.part"));
            let mut file = OpenOptions::new()
                .create(true)
                .append(true)
                .open(&part)
                .map_err(|e| e.to_string())?;
            let len = file.metadata().map_err(|e| e.to_string())?.len();
            if offset != len {
                // Out of place (a chunk from a sender that died): tell it where the file ends.
                let _ = request
                    .respond(Bytes::copy_from_slice(&len.to_be_bytes()))
                    .await;
                continue;
            }
            file.write_all(bytes).map_err(|e| e.to_string())?;
            let len = len + bytes.len() as u64;
            if len == *size {
                file.sync_all().map_err(|e| e.to_string())?;
                if sha256_of(&part).map_err(|e| e.to_string())? != *digest {
                    return Err("checksum mismatch".into());
                }
                let done = dir.join(name);
                fs::rename(&part, &done).map_err(|e| e.to_string())?;
                let _ = request
                    .respond(Bytes::copy_from_slice(&len.to_be_bytes()))
                    .await;
                return Ok(done);
            }
            len
        } else {
            let _ = request.refuse().await;
            continue;
        };
        let _ = request
            .respond(Bytes::copy_from_slice(&answer.to_be_bytes()))
            .await;
    }
    Err("the receiver's node stopped".into())
}

/// Sends `path` to `peer` from where the receiver's copy ends. Stops (as if the process died)
/// once `stop_after` bytes are acknowledged, if given. Returns (resumed from, acknowledged).
async fn send(
    node: &Node,
    peer: PeerId,
    path: &Path,
    digest: [u8; 32],
    stop_after: Option<u64>,
) -> Result<(u64, u64), Error> {
    let size = fs::metadata(path)?.len();
    let name = path.file_name().ok_or("no file name")?.to_string_lossy();
    let offer = format!("OFFER {name} {size} {}", hex_encode(&digest));
    let from = number(
        node.request(peer, STREAM, Bytes::from(offer), TIMEOUT)
            .await?,
    )?;

    let bar = ProgressBar::new(size);
    bar.set_style(ProgressStyle::with_template(
        "{bar:40} {bytes}/{total_bytes} {bytes_per_sec} eta {eta}",
    )?);
    bar.set_position(from);

    let mut file = File::open(path)?;
    file.seek(SeekFrom::Start(from))?;
    let mut offset = from;
    let mut acknowledged = from;
    let mut in_flight = futures::stream::FuturesOrdered::new();
    loop {
        // Keep WINDOW chunks in flight; each answer acknowledges its chunk.
        while in_flight.len() < WINDOW && offset < size {
            let len = CHUNK.min((size - offset) as usize);
            let mut chunk = BytesMut::with_capacity(6 + 8 + len);
            chunk.put_slice(b"CHUNK ");
            chunk.put_u64(offset);
            chunk.resize(6 + 8 + len, 0);
            file.read_exact(&mut chunk[14..])?;
            offset += len as u64;
            in_flight.push_back(node.request(peer, STREAM, chunk.freeze(), TIMEOUT));
        }
        let Some(answer) = futures::StreamExt::next(&mut in_flight).await else {
            break;
        };
        acknowledged = number(answer?)?;
        bar.set_position(acknowledged);
        if stop_after.is_some_and(|limit| acknowledged >= limit) {
            bar.abandon_with_message("sender died");
            // The process dies: the node stops with chunks still in flight.
            drop(in_flight);
            node.stop().await;
            return Ok((from, acknowledged));
        }
    }
    bar.finish();
    Ok((from, acknowledged))
}

fn number(answer: Bytes) -> Result<u64, Error> {
    Ok(u64::from_be_bytes(answer[..].try_into()?))
}

fn sha256_of(path: &Path) -> std::io::Result<[u8; 32]> {
    let mut file = File::open(path)?;
    let mut hasher = Sha256::new();
    let mut buf = vec![0u8; 1 << 20];
    loop {
        let n = file.read(&mut buf)?;
        if n == 0 {
            return Ok(hasher.finalize().into());
        }
        hasher.update(&buf[..n]);
    }
}

fn hex_encode(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn hex_decode(text: &str) -> Option<[u8; 32]> {
    let mut out = [0u8; 32];
    if text.len() != 64 {
        return None;
    }
    for (i, byte) in out.iter_mut().enumerate() {
        *byte = u8::from_str_radix(text.get(2 * i..2 * i + 2)?, 16).ok()?;
    }
    Some(out)
}

#[tokio::main(flavor = "current_thread")]
async fn main() -> Result<(), Error> {
    let mib: u64 = std::env::args().nth(1).map_or(Ok(64), |a| a.parse())?;
    let dir = tempfile::tempdir()?;
    let (outbox, inbox) = (dir.path().join("outbox"), dir.path().join("inbox"));
    fs::create_dir_all(&outbox)?;
    fs::create_dir_all(&inbox)?;

    // A file of pseudo-random bytes.
    let path = outbox.join("snapshot.bin");
    let mut file = File::create(&path)?;
    let mut state = 0x9e37_79b9_7f4a_7c15_u64;
    let mut block = vec![0u8; 1 << 20];
    for _ in 0..mib {
        for word in block.chunks_mut(8) {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            word.copy_from_slice(&state.to_le_bytes());
        }
        file.write_all(&block)?;
    }
    drop(file);
    let size = mib << 20;
    let digest = sha256_of(&path)?;

    let receiver = start()?;
    let requests = receiver.requests(STREAM)?;
    let receiving = tokio::spawn(receive(requests, inbox.clone()));
    let peer = receiver.peer_id();

    // The first sender dies after 40 % is acknowledged.
    let started = Instant::now();
    let first = start()?;
    establish(&first, &receiver, &[STREAM], TIMEOUT)?;
    let (from, died_at) = send(&first, peer, &path, digest, Some(size * 2 / 5)).await?;
    assert_eq!(from, 0);
    println!("first sender died after {died_at} bytes acknowledged");

    // A new sender resumes where the receiver's file ends: at or past what was acknowledged.
    let second = start()?;
    establish(&second, &receiver, &[STREAM], TIMEOUT)?;
    let (resumed_from, done) = match send(&second, peer, &path, digest, None).await {
        Ok(result) => result,
        Err(e) => match e.downcast_ref::<RequestError>() {
            Some(e) => return Err(format!("second sender: {e}").into()),
            None => return Err(e),
        },
    };
    let elapsed = started.elapsed();
    let received = receiving.await?.map_err(|e| format!("receiver: {e}"))?;
    println!(
        "resumed from {resumed_from} bytes; {done} bytes acknowledged; {:.1} MiB/s",
        size as f64 / (1 << 20) as f64 / elapsed.as_secs_f64()
    );

    let mut ok = true;
    ok &= check(
        "the first sender stopped part-way",
        died_at > 0 && died_at < size,
    );
    ok &= check(
        "the second resumed from what was acknowledged, not from 0",
        resumed_from >= died_at && resumed_from < size,
    );
    ok &= check("every byte acknowledged", done == size);
    ok &= check(
        "the received file's SHA-256 matches",
        sha256_of(&received)? == digest,
    );
    ok &= check(
        "no partial file left",
        !inbox.join("snapshot.bin.part").exists(),
    );
    second.stop().await;
    receiver.stop().await;
    if !ok {
        return Err("a check failed".into());
    }
    Ok(())
}

fn check(what: &str, ok: bool) -> bool {
    println!("{} {what}", if ok { "ok  " } else { "FAIL" });
    ok
}
