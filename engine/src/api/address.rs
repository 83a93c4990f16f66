//! `PeerAddr`: a peer's id and where to reach it, in the `ID@host:port` form users paste into
//! configuration files.

use std::net::{IpAddr, SocketAddr};

use glueberry_crypto::PeerId;

/// A host to dial: an IP address, or a DNS name resolved each time the peer is dialled (on a
/// resolver thread, never on a shard).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Host {
    /// An IPv4 or IPv6 address.
    Ip(IpAddr),
    /// A DNS name (letters, digits, `-` and `.`; at most 253 bytes).
    Name(String),
}

impl std::fmt::Display for Host {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Host::Ip(IpAddr::V6(ip)) => write!(f, "[{ip}]"),
            Host::Ip(ip) => write!(f, "{ip}"),
            Host::Name(name) => f.write_str(name),
        }
    }
}

/// A peer and where to reach it: `gbp1…@203.0.113.7:26656`, `gbp1…@[2001:db8::7]:26656` or
/// `gbp1…@validator-3.example.net:26656`. Parsed with `str::parse`, printed back the same way;
/// dialled with [`Node::connect_to`].
///
/// ```
/// use glueberry::{Host, PeerAddr};
/// # let id = glueberry::crypto::Identity::from_seed(&[7; 32]).peer_id();
/// let text = format!("{id}@localhost:26656");
/// let addr: PeerAddr = text.parse()?;
/// assert_eq!(addr.peer, id);
/// assert_eq!(addr.host, Host::Name("localhost".into()));
/// assert_eq!(addr.port, 26656);
/// assert_eq!(addr.to_string(), text);
/// # Ok::<(), glueberry::PeerAddrError>(())
/// ```
///
/// [`Node::connect_to`]: crate::Node::connect_to
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct PeerAddr {
    /// The peer's identity: the handshake fails unless the remote proves it.
    pub peer: PeerId,
    /// Where it is.
    pub host: Host,
    /// Its TCP port.
    pub port: u16,
}

/// Why a `PeerAddr` did not parse.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum PeerAddrError {
    /// No `@` between the peer id and the address.
    #[error("expected PEER_ID@host:port")]
    MissingAt,
    /// The part before `@` is not a peer id.
    #[error("invalid peer id: {0}")]
    PeerId(String),
    /// No `:port` after the host, or the port is not a number in 1–65535.
    #[error("expected host:port with a port from 1 to 65535")]
    Port,
    /// The host is neither an IP address nor a DNS name.
    #[error("invalid host {0:?}")]
    Host(String),
}

impl PeerAddr {
    /// The socket address, if the host is an IP address (a name must be resolved).
    pub fn socket_addr(&self) -> Option<SocketAddr> {
        match self.host {
            Host::Ip(ip) => Some(SocketAddr::new(ip, self.port)),
            Host::Name(_) => None,
        }
    }
}

impl std::fmt::Display for PeerAddr {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}@{}:{}", self.peer, self.host, self.port)
    }
}

impl std::str::FromStr for PeerAddr {
    type Err = PeerAddrError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let (peer, rest) = s.trim().split_once('@').ok_or(PeerAddrError::MissingAt)?;
        let peer: PeerId = peer
            .parse()
            .map_err(|e: glueberry_crypto::PeerIdError| PeerAddrError::PeerId(e.to_string()))?;
        let (host, port) = if let Some(bracketed) = rest.strip_prefix('[') {
            // An IPv6 address: [addr]:port.
            let (ip, port) = bracketed.split_once("]:").ok_or(PeerAddrError::Port)?;
            let ip: std::net::Ipv6Addr = ip.parse().map_err(|_| PeerAddrError::Host(ip.into()))?;
            (Host::Ip(IpAddr::V6(ip)), port)
        } else {
            let (host, port) = rest.rsplit_once(':').ok_or(PeerAddrError::Port)?;
            let host = match host.parse::<std::net::Ipv4Addr>() {
                Ok(ip) => Host::Ip(IpAddr::V4(ip)),
                Err(_) if is_dns_name(host) => Host::Name(host.to_ascii_lowercase()),
                Err(_) => return Err(PeerAddrError::Host(host.into())),
            };
            (host, port)
        };
        let port: u16 = port
            .parse()
            .ok()
            .filter(|&p| p != 0)
            .ok_or(PeerAddrError::Port)?;
        Ok(PeerAddr { peer, host, port })
    }
}

/// Letters, digits and `-` in dot-separated labels of 1–63 bytes, 253 bytes in all, not all
/// digits (that would be a malformed IPv4 address).
fn is_dns_name(name: &str) -> bool {
    let name = name.strip_suffix('.').unwrap_or(name);
    !name.is_empty()
        && name.len() <= 253
        && name.split('.').all(|label| {
            !label.is_empty()
                && label.len() <= 63
                && !label.starts_with('-')
                && !label.ends_with('-')
                && label
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'-')
        })
        && !name.bytes().all(|b| b.is_ascii_digit() || b == b'.')
}

#[cfg(test)]
mod tests {
    use super::*;

    fn id() -> PeerId {
        glueberry_crypto::Identity::from_seed(&[3; 32]).peer_id()
    }

    #[test]
    fn ipv4_ipv6_and_names_parse_and_print_back() {
        for text in [
            format!("{}@127.0.0.1:26656", id()),
            format!("{}@[::1]:9000", id()),
            format!("{}@validator-3.example.net:1", id()),
        ] {
            let addr: PeerAddr = text.parse().unwrap();
            assert_eq!(addr.to_string(), text);
        }
        let v6: PeerAddr = format!("{}@[2001:db8::7]:26656", id()).parse().unwrap();
        assert_eq!(
            v6.socket_addr(),
            Some("[2001:db8::7]:26656".parse().unwrap())
        );
    }

    #[test]
    fn malformed_forms_are_refused_with_the_reason() {
        let id = id();
        let cases = [
            ("127.0.0.1:1".to_string(), PeerAddrError::MissingAt),
            (format!("{id}@127.0.0.1"), PeerAddrError::Port),
            (format!("{id}@127.0.0.1:0"), PeerAddrError::Port),
            (format!("{id}@127.0.0.1:65536"), PeerAddrError::Port),
            (format!("{id}@[::1:9"), PeerAddrError::Port),
            (format!("{id}@[zz]:9"), PeerAddrError::Host("zz".into())),
            (
                format!("{id}@bad_host:9"),
                PeerAddrError::Host("bad_host".into()),
            ),
            (format!("{id}@1.2.3:9"), PeerAddrError::Host("1.2.3".into())),
            (format!("{id}@-a.b:9"), PeerAddrError::Host("-a.b".into())),
        ];
        for (text, want) in cases {
            assert_eq!(text.parse::<PeerAddr>(), Err(want), "{text}");
        }
        assert!(matches!(
            "nope@127.0.0.1:1".parse::<PeerAddr>(),
            Err(PeerAddrError::PeerId(_))
        ));
    }
}
