//! tokio + rustls: TLS 1.3 over TCP with one cipher suite and mutual certificate authentication
//! (both ends prove a key, as in Glueberry's handshake). Certificates are made for the run: one
//! CA, a server and a client certificate (ECDSA P-256), with ring as rustls' crypto provider.

use std::io;
use std::sync::Arc;

use rcgen::{BasicConstraints, CertificateParams, CertifiedIssuer, IsCa, KeyPair};
use rustls::crypto::{CryptoProvider, ring};
use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};
use rustls::server::WebPkiClientVerifier;
use rustls::{ClientConfig, RootCertStore, ServerConfig};

use crate::Cipher;

fn err(e: impl std::fmt::Display) -> io::Error {
    io::Error::other(e.to_string())
}

/// The server's acceptor and the client's configuration, for `cipher` only.
pub(crate) fn configs(
    cipher: Cipher,
) -> io::Result<(tokio_rustls::TlsAcceptor, Arc<ClientConfig>)> {
    let suite = match cipher {
        Cipher::ChaCha => ring::cipher_suite::TLS13_CHACHA20_POLY1305_SHA256,
        Cipher::Aes => ring::cipher_suite::TLS13_AES_256_GCM_SHA384,
        Cipher::DangerNull => return Err(err("TLS has no null cipher")),
    };
    let provider = Arc::new(CryptoProvider {
        cipher_suites: vec![suite],
        ..ring::default_provider()
    });

    let mut ca = CertificateParams::new(Vec::<String>::new()).map_err(err)?;
    ca.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    let ca = CertifiedIssuer::self_signed(ca, KeyPair::generate().map_err(err)?).map_err(err)?;
    let leaf = |name: &str| -> io::Result<(CertificateDer<'static>, PrivateKeyDer<'static>)> {
        let key = KeyPair::generate().map_err(err)?;
        let cert = CertificateParams::new(vec![name.to_string()])
            .map_err(err)?
            .signed_by(&key, &ca)
            .map_err(err)?;
        let key = PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(key.serialize_der()));
        Ok((cert.der().clone(), key))
    };
    let mut roots = RootCertStore::empty();
    roots.add(ca.der().clone()).map_err(err)?;
    let roots = Arc::new(roots);

    let (server_cert, server_key) = leaf("localhost")?;
    let verifier = WebPkiClientVerifier::builder_with_provider(roots.clone(), provider.clone())
        .build()
        .map_err(err)?;
    let server = ServerConfig::builder_with_provider(provider.clone())
        .with_protocol_versions(&[&rustls::version::TLS13])
        .map_err(err)?
        .with_client_cert_verifier(verifier)
        .with_single_cert(vec![server_cert], server_key)
        .map_err(err)?;

    let (client_cert, client_key) = leaf("client")?;
    let client = ClientConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13])
        .map_err(err)?
        .with_root_certificates(roots)
        .with_client_auth_cert(vec![client_cert], client_key)
        .map_err(err)?;
    Ok((
        tokio_rustls::TlsAcceptor::from(Arc::new(server)),
        Arc::new(client),
    ))
}
