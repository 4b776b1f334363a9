//! TLS for the agent's outbound connections: its one link to the hub (invariant 1:
//! the agent dials) and its links to TLS instruments.
//!
//! After enrollment the agent presents its certificate and trusts only the hub CA it
//! received. At enrollment it has no CA yet: it trusts the server only if the chain
//! the hub presents contains a CA certificate whose SHA-256 equals the fingerprint in
//! the token, and the server certificate verifies against that CA. TLS 1.3 only.
//!
//! An instrument is trusted by its own certificate, pinned exactly, or by the CA the
//! site pins for it together with the name its certificate must carry. A server the
//! pin does not name is [`Error::Untrusted`]: not a network failure to retry, but
//! another machine (or someone in between) answering at the instrument's address.

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::client::WebPkiServerVerifier;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName, UnixTime};
use rustls::{ClientConfig, DigitallySignedStruct, RootCertStore, SignatureScheme};
use sha2::{Digest, Sha256};
use std::sync::Arc;
use std::time::Duration;
use tokio::net::TcpStream;
use tokio_rustls::TlsConnector;
use tonic::transport::{Channel, Endpoint};

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("TLS configuration: {0}")]
    Rustls(#[from] rustls::Error),
    #[error("{0}")]
    Pem(String),
    #[error("{peer} address {address:?} is not a valid https:// URL")]
    Address { peer: Peer, address: String },
    #[error("connecting to {peer}: {source}")]
    Connect {
        peer: Peer,
        source: tonic::transport::Error,
    },
    /// The server's certificate is not the one the pin names (another server, a
    /// renewed certificate nobody pinned, or someone in between).
    #[error("{peer} at {address} is not the server its pin names: {reason}")]
    Untrusted {
        peer: Peer,
        address: String,
        reason: String,
    },
}

/// Who the agent connects to, as errors name it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Peer {
    Hub,
    Instrument,
}

impl std::fmt::Display for Peer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Peer::Hub => "the hub",
            Peer::Instrument => "the instrument",
        })
    }
}

/// A certificate the verifier refused, kept apart from other handshake failures so
/// that [`connect`] can tell "not the pinned server" from "cannot connect".
#[derive(Debug)]
struct Refused(String);

impl std::fmt::Display for Refused {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for Refused {}

fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

pub fn certs_from_pem(pem: &str) -> Result<Vec<CertificateDer<'static>>, Error> {
    let certs: Result<Vec<_>, _> = rustls_pemfile::certs(&mut pem.as_bytes()).collect();
    let certs = certs.map_err(|e| Error::Pem(format!("certificate PEM: {e}")))?;
    if certs.is_empty() {
        return Err(Error::Pem("no certificate in PEM".into()));
    }
    Ok(certs)
}

pub fn fingerprint(der: &[u8]) -> String {
    hex::encode(Sha256::digest(der))
}

/// Mutual TLS with the site's certificate, trusting only the hub CA.
pub fn mtls_config(
    ca_pem: &str,
    cert_pem: &str,
    key_pem: &str,
) -> Result<Arc<ClientConfig>, Error> {
    let mut roots = RootCertStore::empty();
    for cert in certs_from_pem(ca_pem)? {
        roots.add(cert)?;
    }
    let key = rustls_pemfile::private_key(&mut key_pem.as_bytes())
        .map_err(|e| Error::Pem(format!("site key: {e}")))?
        .ok_or_else(|| Error::Pem("no private key in the site key file".into()))?;
    let mut config = ClientConfig::builder_with_provider(provider())
        .with_protocol_versions(&[&rustls::version::TLS13])?
        .with_root_certificates(roots)
        .with_client_auth_cert(certs_from_pem(cert_pem)?, key)?;
    config.alpn_protocols = vec![b"h2".to_vec()];
    Ok(Arc::new(config))
}

/// TLS for enrollment: the hub is trusted through the CA fingerprint in the token.
pub fn pinned_config(ca_sha256: &str) -> Result<Arc<ClientConfig>, Error> {
    let verifier = Arc::new(Pinned {
        pin: Pin::CaSha256(ca_sha256.to_ascii_lowercase()),
        provider: provider(),
    });
    let mut config = ClientConfig::builder_with_provider(provider())
        .with_protocol_versions(&[&rustls::version::TLS13])?
        .dangerous()
        .with_custom_certificate_verifier(verifier)
        .with_no_client_auth();
    config.alpn_protocols = vec![b"h2".to_vec()];
    Ok(Arc::new(config))
}

/// What a pinned connection trusts instead of a root store.
#[derive(Debug)]
enum Pin {
    /// Enrollment: the CA certificate that the hub sends in its chain and whose
    /// fingerprint the token carries. Full WebPKI verification happens; only the trust
    /// anchor comes from the chain, and only if it matches the pin.
    CaSha256(String),
    /// An instrument's self-signed certificate, exactly (see
    /// [`pinned_certificate_config`]).
    Certificate(CertificateDer<'static>),
}

#[derive(Debug)]
struct Pinned {
    pin: Pin,
    provider: Arc<rustls::crypto::CryptoProvider>,
}

/// A certificate refused by a pin, in words.
fn refused(reason: String) -> rustls::Error {
    rustls::Error::InvalidCertificate(rustls::CertificateError::Other(rustls::OtherError(
        Arc::new(Refused(reason)),
    )))
}

/// The reason, when a handshake failed because the server's certificate was refused.
fn refusal_of(error: &std::io::Error) -> Option<String> {
    match error.get_ref()?.downcast_ref::<rustls::Error>()? {
        rustls::Error::InvalidCertificate(rustls::CertificateError::Other(other)) => {
            Some(other.0.to_string())
        }
        rustls::Error::InvalidCertificate(refused) => Some(refused.to_string()),
        _ => None,
    }
}

impl ServerCertVerifier for Pinned {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        server_name: &ServerName<'_>,
        ocsp_response: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        match &self.pin {
            Pin::CaSha256(ca_sha256) => {
                let ca = intermediates
                    .iter()
                    .find(|c| fingerprint(c.as_ref()) == *ca_sha256)
                    .ok_or_else(|| {
                        refused(
                            "it did not present the CA named in the enrollment token (wrong hub, or a forged token)".into(),
                        )
                    })?;
                let mut roots = RootCertStore::empty();
                roots.add(ca.clone().into_owned())?;
                let webpki = WebPkiServerVerifier::builder_with_provider(
                    Arc::new(roots),
                    self.provider.clone(),
                )
                .build()
                .map_err(|e| rustls::Error::General(e.to_string()))?;
                webpki.verify_server_cert(end_entity, &[], server_name, ocsp_response, now)
            }
            Pin::Certificate(pinned) if end_entity.as_ref() == pinned.as_ref() => {
                Ok(ServerCertVerified::assertion())
            }
            Pin::Certificate(pinned) => Err(refused(format!(
                "it presented certificate SHA-256 {}, not the pinned one {}",
                fingerprint(end_entity.as_ref()),
                fingerprint(pinned.as_ref())
            ))),
        }
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.provider
            .signature_verification_algorithms
            .supported_schemes()
    }
}

/// A gRPC channel to `url` (`https://host:port`) over our own TLS configuration.
/// The server's certificate is checked for `server_name` when given (an instrument
/// whose CA is pinned, addressed by IP), else for the URL's host.
///
/// tonic is given a plain `http://` endpoint so that it leaves TLS to the connector
/// here; the bytes on the wire are TLS all the same.
pub async fn connect(
    peer: Peer,
    url: &str,
    server_name: Option<&str>,
    tls: Arc<ClientConfig>,
    timeout: Duration,
) -> Result<Channel, Error> {
    let bad_address = || Error::Address {
        peer,
        address: url.to_owned(),
    };
    let uri: http::Uri = url.parse().map_err(|_| bad_address())?;
    if uri.scheme_str() != Some("https") {
        return Err(bad_address());
    }
    let host = uri.host().ok_or_else(bad_address)?.to_owned();
    let port = uri.port_u16().unwrap_or(443);
    let name_text = server_name
        .unwrap_or(host.trim_start_matches('[').trim_end_matches(']'))
        .to_owned();
    let server_name = ServerName::try_from(name_text).map_err(|_| bad_address())?;
    let connector = TlsConnector::from(tls);
    let endpoint = Endpoint::from_shared(format!("http://{host}:{port}"))
        .map_err(|_| bad_address())?
        .connect_timeout(timeout)
        .http2_keep_alive_interval(Duration::from_secs(20))
        .keep_alive_timeout(Duration::from_secs(10))
        .keep_alive_while_idle(true);
    let address = format!("{host}:{port}");
    let dial = address.clone();
    let connected = endpoint
        .connect_with_connector(tower::service_fn(move |_: http::Uri| {
            let connector = connector.clone();
            let server_name = server_name.clone();
            let address = dial.clone();
            async move {
                let tcp = TcpStream::connect(address).await?;
                tcp.set_nodelay(true)?;
                let tls =
                    connector.connect(server_name, tcp).await.map_err(|e| {
                        match refusal_of(&e) {
                            Some(reason) => std::io::Error::other(Refused(reason)),
                            None => e,
                        }
                    })?;
                Ok::<_, std::io::Error>(hyper_util::rt::TokioIo::new(tls))
            }
        }))
        .await;
    connected.map_err(|source| match refusal_in(&source) {
        Some(reason) => Error::Untrusted {
            peer,
            address,
            reason,
        },
        None => Error::Connect { peer, source },
    })
}

/// The certificate refusal somewhere in an error's sources.
fn refusal_in(error: &(dyn std::error::Error + 'static)) -> Option<String> {
    let mut next = Some(error);
    while let Some(e) = next {
        if let Some(refused) = e.downcast_ref::<Refused>() {
            return Some(refused.0.clone());
        }
        if let Some(refused) = e
            .downcast_ref::<std::io::Error>()
            .and_then(|io| io.get_ref())
            .and_then(|inner| inner.downcast_ref::<Refused>())
        {
            return Some(refused.0.clone());
        }
        next = e.source();
    }
    None
}

/// Parses a PEM private key (for checks at load time).
pub fn key_from_pem(pem: &str) -> Result<PrivateKeyDer<'static>, Error> {
    rustls_pemfile::private_key(&mut pem.as_bytes())
        .map_err(|e| Error::Pem(format!("site key: {e}")))?
        .ok_or_else(|| Error::Pem("no private key in the site key file".into()))
}

/// TLS to an instrument whose certificate a CA the site pins has issued: the chain
/// must lead to that CA (and nothing else: no system roots), and the certificate must
/// name the server name [`connect`] is given.
pub fn pinned_ca_config(ca_pem: &str) -> Result<Arc<ClientConfig>, Error> {
    let mut roots = RootCertStore::empty();
    for cert in certs_from_pem(ca_pem)? {
        roots.add(cert)?;
    }
    let webpki = WebPkiServerVerifier::builder_with_provider(Arc::new(roots), provider())
        .build()
        .map_err(|e| Error::Pem(format!("CA certificate: {e}")))?;
    let mut config = ClientConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()?
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(CaPinned { webpki }))
        .with_no_client_auth();
    config.alpn_protocols = vec![b"h2".to_vec()];
    Ok(Arc::new(config))
}

/// WebPKI verification against the pinned CA, its refusals marked as such.
#[derive(Debug)]
struct CaPinned {
    webpki: Arc<WebPkiServerVerifier>,
}

impl ServerCertVerifier for CaPinned {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        server_name: &ServerName<'_>,
        ocsp_response: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        self.webpki
            .verify_server_cert(end_entity, intermediates, server_name, ocsp_response, now)
            .map_err(|e| match e {
                rustls::Error::InvalidCertificate(why) => refused(format!(
                    "its certificate (SHA-256 {}) does not verify against the pinned CA for {}: {why}",
                    fingerprint(end_entity.as_ref()),
                    server_name.to_str()
                )),
                other => other,
            })
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.webpki.verify_tls12_signature(message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.webpki.verify_tls13_signature(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.webpki.supported_verify_schemes()
    }
}

/// TLS to an instrument that presents a self-signed certificate (SiLA 2 servers
/// commonly do, naming only their IP address): the server must present exactly the
/// pinned certificate and prove it holds its key. No CA, name or validity check: the
/// pin is the identity, and replacing the instrument's certificate means pinning the
/// new one.
pub fn pinned_certificate_config(pinned_pem: &str) -> Result<Arc<ClientConfig>, Error> {
    let pinned = certs_from_pem(pinned_pem)?.remove(0);
    let verifier = Arc::new(Pinned {
        pin: Pin::Certificate(pinned),
        provider: provider(),
    });
    let mut config = ClientConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()?
        .dangerous()
        .with_custom_certificate_verifier(verifier)
        .with_no_client_auth();
    config.alpn_protocols = vec![b"h2".to_vec()];
    Ok(Arc::new(config))
}
