//! Which I/O backend the shards run on, and how `Auto` chooses.

use std::io;

/// The I/O backend of a node's shards. Both run the same shards, transport and batching; they
/// differ in how the shard talks to the kernel.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
#[non_exhaustive]
pub enum Backend {
    /// io_uring where it can run, the poll backend where it cannot (the default). The choice
    /// is made once at start, logged with its cause, and reported by [`Node::backend`] and
    /// the `backend` health check.
    ///
    /// [`Node::backend`]: crate::Node::backend
    #[default]
    Auto,
    /// io_uring (Linux 5.19+): batched submissions, registered send buffers, cross-shard
    /// wake-ups without a system call. Where it cannot run, [`Node::start`] refuses with
    /// [`StartError::IoUringUnavailable`].
    ///
    /// [`Node::start`]: crate::Node::start
    /// [`StartError::IoUringUnavailable`]: crate::StartError::IoUringUnavailable
    IoUring,
    /// Readiness (epoll): non-blocking system calls made when a socket is ready. Runs under
    /// Docker's and containerd's default seccomp profiles and with `kernel.io_uring_disabled`.
    Poll,
}

impl Backend {
    /// The name used in logs, health and configuration (`auto`, `io_uring`, `poll`).
    pub fn name(self) -> &'static str {
        match self {
            Backend::Auto => "auto",
            Backend::IoUring => "io_uring",
            Backend::Poll => "poll",
        }
    }

    /// The backend asked for by the environment variable `GLUEBERRY_BACKEND` (`auto`,
    /// `io_uring` or `poll`), if it is set: the default of [`NodeConfig::backend`], so that an
    /// operator, or a test run, can choose without a code change.
    ///
    /// [`NodeConfig::backend`]: crate::NodeConfig::backend
    pub fn from_env() -> Option<Backend> {
        std::env::var("GLUEBERRY_BACKEND").ok()?.parse().ok()
    }
}

impl std::fmt::Display for Backend {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

impl std::str::FromStr for Backend {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "auto" => Ok(Backend::Auto),
            "io_uring" | "io-uring" | "uring" => Ok(Backend::IoUring),
            "poll" | "epoll" => Ok(Backend::Poll),
            other => Err(format!(
                "unknown backend {other:?}: expected auto, io_uring or poll"
            )),
        }
    }
}

/// The backend the shards will run on for `asked` (never `Auto`): io_uring is probed with a
/// ring of `entries` entries. `Err` only when io_uring was asked for and cannot run.
pub(crate) fn choose(asked: Backend, entries: u32) -> Result<Backend, io::Error> {
    // The probe ring is made and closed on a thread of its own: the kernel tears a ring down
    // with task work on the thread that made it, which interrupts that thread's next blocking
    // system call (EINTR) — it must not be the application's.
    let probe = || {
        std::thread::spawn(move || crate::sys::ring::Ring::probe(entries))
            .join()
            .unwrap_or_else(|_| Err(io::Error::other("the io_uring probe panicked")))
    };
    match asked {
        Backend::Poll => Ok(Backend::Poll),
        Backend::IoUring => probe().map(|()| Backend::IoUring),
        Backend::Auto => match probe() {
            Ok(()) => Ok(Backend::IoUring),
            Err(e) => {
                tracing::warn!(
                    cause = %unavailable_cause(&e),
                    "io_uring cannot run here; using the poll backend (epoll)"
                );
                Ok(Backend::Poll)
            }
        },
    }
}

/// Why io_uring failed to set up, in the terms an operator can act on.
pub(super) fn unavailable_cause(e: &io::Error) -> String {
    let sysctl = std::fs::read_to_string("/proc/sys/kernel/io_uring_disabled")
        .ok()
        .and_then(|s| s.trim().parse::<u8>().ok())
        .filter(|&v| v != 0);
    match (e.raw_os_error(), sysctl) {
        (_, Some(v)) => format!("kernel.io_uring_disabled = {v} ({e})"),
        (Some(libc::EPERM), None) => format!(
            "io_uring_setup refused ({e}): a seccomp profile blocks it (Docker 25+ and \
             containerd's RuntimeDefault do)"
        ),
        (Some(libc::ENOSYS), None) => {
            format!("io_uring_setup does not exist here ({e}): kernel without io_uring, or seccomp")
        }
        _ => format!("io_uring setup failed ({e})"),
    }
}

#[cfg(test)]
mod tests {
    use super::Backend;

    #[test]
    fn names_parse_back() {
        for backend in [Backend::Auto, Backend::IoUring, Backend::Poll] {
            assert_eq!(backend.name().parse::<Backend>(), Ok(backend));
        }
        assert!("kqueue".parse::<Backend>().is_err());
    }

    #[test]
    fn poll_is_chosen_when_asked_and_auto_falls_back_when_io_uring_cannot_start() {
        assert_eq!(super::choose(Backend::Poll, 4096).ok(), Some(Backend::Poll));
        // A ring of 0 entries is refused (EINVAL) by every kernel.
        assert_eq!(super::choose(Backend::Auto, 0).ok(), Some(Backend::Poll));
        assert!(super::choose(Backend::IoUring, 0).is_err());
    }
}
