//! A node's long-term Ed25519 identity: generate, load, save, sign.

use std::fs::File;
use std::io::{self, Read};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

use ed25519_dalek::{Signature, Signer, SigningKey};
use zeroize::Zeroizing;

use crate::PeerId;

/// Length of the seed an identity is made from, and of an identity key file.
pub const SEED_LEN: usize = 32;

/// A node's Ed25519 key pair.
///
/// The secret key is wiped from memory when the `Identity` is dropped (each clone's copy too).
/// It is used only to sign (the handshake binds it to a fresh X25519 key); it never takes part
/// in a Diffie-Hellman. `Debug` prints the peer id, never the key.
#[derive(Clone)]
pub struct Identity {
    signing_key: SigningKey,
    peer_id: PeerId,
}

impl Identity {
    /// A new random identity from the operating system's random source.
    pub fn generate() -> Result<Self, IdentityError> {
        let mut seed = Zeroizing::new([0u8; SEED_LEN]);
        getrandom::fill(seed.as_mut_slice()).map_err(|e| IdentityError::Random(e.to_string()))?;
        Ok(Self::from_seed(&seed))
    }

    /// The identity whose Ed25519 secret key is `seed` (RFC 8032's 32-byte private key).
    ///
    /// Every seed gives a valid key pair: the public key is derived with clamping, so it is never
    /// a small-order point.
    pub fn from_seed(seed: &[u8; SEED_LEN]) -> Self {
        let signing_key = SigningKey::from_bytes(seed);
        let public = signing_key.verifying_key().to_bytes();
        // A derived public key is a multiple of the base point: never weak, always valid.
        let peer_id = match PeerId::from_public_key(&public) {
            Ok(id) => id,
            Err(e) => unreachable!("RFC 8032 key derivation produced an invalid key: {e}"),
        };
        Self {
            signing_key,
            peer_id,
        }
    }

    /// Loads an identity from a key file written by [`Identity::save`]: exactly 32 raw bytes.
    ///
    /// Refuses a file that other users may read (any of the mode bits 0o077), as ssh does: a
    /// validator's identity key that others could read is already compromised.
    pub fn load(path: &Path) -> Result<Self, IdentityError> {
        let io_err = |op: &'static str| {
            let path = path.to_path_buf();
            move |source| IdentityError::Io { op, path, source }
        };
        let file = File::open(path).map_err(io_err("open"))?;
        let mode = file
            .metadata()
            .map_err(io_err("stat"))?
            .permissions()
            .mode();
        if mode & 0o077 != 0 {
            return Err(IdentityError::InsecurePermissions {
                path: path.to_path_buf(),
                mode: mode & 0o777,
            });
        }
        let mut seed = Zeroizing::new([0u8; SEED_LEN]);
        let mut limited = file.take(SEED_LEN as u64 + 1);
        let mut len = 0;
        loop {
            let mut extra = [0u8; 1];
            let dst = match seed.get_mut(len..) {
                Some(rest) if !rest.is_empty() => rest,
                _ => &mut extra[..],
            };
            match limited.read(dst) {
                Ok(0) => break,
                Ok(n) => len += n,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => return Err(io_err("read")(e)),
            }
        }
        if len != SEED_LEN {
            return Err(IdentityError::BadKeyFile {
                path: path.to_path_buf(),
            });
        }
        Ok(Self::from_seed(&seed))
    }

    /// Saves the secret seed to `path` with mode 0600, atomically: written to a temporary file in
    /// the same directory, synced, renamed over `path`, and the directory synced, so a crash
    /// leaves either the old file or the new one, never a torn key.
    pub fn save(&self, path: &Path) -> Result<(), IdentityError> {
        crate::file::write_atomically(path, self.signing_key.as_bytes(), 0o600).map_err(|e| {
            IdentityError::Io {
                op: e.op,
                path: e.path,
                source: e.source,
            }
        })
    }

    /// This identity's peer id.
    pub fn peer_id(&self) -> PeerId {
        self.peer_id
    }

    /// The Ed25519 public key.
    pub fn public_key(&self) -> &[u8; 32] {
        self.peer_id.public_key()
    }

    /// Signs `message` with the identity key.
    pub fn sign(&self, message: &[u8]) -> [u8; 64] {
        let signature: Signature = self.signing_key.sign(message);
        signature.to_bytes()
    }
}

impl std::fmt::Debug for Identity {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Never the secret key.
        f.debug_struct("Identity")
            .field("peer_id", &self.peer_id)
            .finish_non_exhaustive()
    }
}

/// Why an identity could not be made, loaded or saved.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum IdentityError {
    /// The operating system's random source failed.
    #[error("the OS random source failed: {0}")]
    Random(String),
    /// A file operation failed.
    #[error("{op} {path}: {source}")]
    Io {
        /// The operation: open, read, create, write, fsync, rename.
        op: &'static str,
        /// The file it was done on.
        path: PathBuf,
        /// The OS error.
        source: io::Error,
    },
    /// The key file is not exactly 32 bytes.
    #[error("{path} is not an identity key file (expected exactly {SEED_LEN} bytes)")]
    BadKeyFile {
        /// The file.
        path: PathBuf,
    },
    /// The key file may be read by other users.
    #[error("{path} has mode {mode:o}: other users may read this key; run `chmod 600` on it")]
    InsecurePermissions {
        /// The file.
        path: PathBuf,
        /// Its permission bits.
        mode: u32,
    },
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::fs::{self, OpenOptions};
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;

    #[test]
    fn same_seed_same_identity() {
        let a = Identity::from_seed(&[1; 32]);
        let b = Identity::from_seed(&[1; 32]);
        let c = Identity::from_seed(&[2; 32]);
        assert_eq!(a.peer_id(), b.peer_id());
        assert_ne!(a.peer_id(), c.peer_id());
        assert!(!format!("{a:?}").contains("0101"));
    }

    #[test]
    fn save_then_load_with_mode_0600() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("node.key");
        let id = Identity::generate().expect("rng");
        id.save(&path).expect("save");
        let mode = fs::metadata(&path).expect("stat").permissions().mode() & 0o777;
        assert_eq!(mode, 0o600);
        assert_eq!(Identity::load(&path).expect("load").peer_id(), id.peer_id());
        // Saving again replaces the file atomically and leaves no temporary behind.
        Identity::from_seed(&[9; 32]).save(&path).expect("save");
        assert_eq!(fs::read_dir(dir.path()).expect("ls").count(), 1);
        assert_eq!(
            Identity::load(&path).expect("load").peer_id(),
            Identity::from_seed(&[9; 32]).peer_id()
        );
    }

    #[test]
    fn load_rejects_bad_files() {
        let dir = tempfile::tempdir().expect("tempdir");
        let short = dir.path().join("short");
        let long = dir.path().join("long");
        let open = dir.path().join("open");
        for (path, len, mode) in [(&short, 31, 0o600), (&long, 33, 0o600), (&open, 32, 0o644)] {
            let mut f = OpenOptions::new()
                .write(true)
                .create(true)
                .mode(mode)
                .open(path)
                .expect("create");
            f.write_all(&vec![5u8; len]).expect("write");
            fs::set_permissions(path, fs::Permissions::from_mode(mode)).expect("chmod");
        }
        assert!(matches!(
            Identity::load(&short),
            Err(IdentityError::BadKeyFile { .. })
        ));
        assert!(matches!(
            Identity::load(&long),
            Err(IdentityError::BadKeyFile { .. })
        ));
        assert!(matches!(
            Identity::load(&open),
            Err(IdentityError::InsecurePermissions { mode: 0o644, .. })
        ));
        assert!(matches!(
            Identity::load(&dir.path().join("missing")),
            Err(IdentityError::Io { op: "open", .. })
        ));
    }
}
