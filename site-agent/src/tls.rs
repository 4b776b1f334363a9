//! TLS for the agent's one outbound connection (invariant 1: the agent dials).
//!
//! After enrollment the agent presents its certificate and trusts only the hub CA it
//! received. At enrollment it has no CA yet: it trusts the server only if the chain
//! the hub presents contains a CA certificate whose SHA-256 equals the fingerprint in
//! the token, and the server certificate verifies against that CA. TLS 1.3 only.

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
    #[error("hub address {0:?} is not a valid https:// URL")]
    Address(String),
    #[error("connecting to the hub: {0}")]
    Connect(#[from] tonic::transport::Error),
}

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
                        rustls::Error::General(
                            "the hub did not present the CA named in the enrollment token (wrong hub, or a forged token)".into(),
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
            Pin::Certificate(pinned) => Err(rustls::Error::General(format!(
                "the instrument presented certificate SHA-256 {}, not the pinned one {}",
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

/// A gRPC channel to the hub over our own TLS configuration.
///
/// tonic is given a plain `http://` endpoint so that it leaves TLS to the connector
/// here; the bytes on the wire are TLS all the same.
pub async fn connect(
    hub: &str,
    tls: Arc<ClientConfig>,
    timeout: Duration,
) -> Result<Channel, Error> {
    let uri: http::Uri = hub.parse().map_err(|_| Error::Address(hub.to_owned()))?;
    if uri.scheme_str() != Some("https") {
        return Err(Error::Address(hub.to_owned()));
    }
    let host = uri
        .host()
        .ok_or_else(|| Error::Address(hub.to_owned()))?
        .to_owned();
    let port = uri.port_u16().unwrap_or(443);
    let name_text = host
        .trim_start_matches('[')
        .trim_end_matches(']')
        .to_owned();
    let server_name =
        ServerName::try_from(name_text).map_err(|_| Error::Address(hub.to_owned()))?;
    let connector = TlsConnector::from(tls);
    let endpoint = Endpoint::from_shared(format!("http://{host}:{port}"))
        .map_err(|_| Error::Address(hub.to_owned()))?
        .connect_timeout(timeout)
        .http2_keep_alive_interval(Duration::from_secs(20))
        .keep_alive_timeout(Duration::from_secs(10))
        .keep_alive_while_idle(true);
    let address = format!("{host}:{port}");
    let channel = endpoint
        .connect_with_connector(tower::service_fn(move |_: http::Uri| {
            let connector = connector.clone();
            let server_name = server_name.clone();
            let address = address.clone();
            async move {
                let tcp = TcpStream::connect(address).await?;
                tcp.set_nodelay(true)?;
                let tls = connector.connect(server_name, tcp).await?;
                Ok::<_, std::io::Error>(hyper_util::rt::TokioIo::new(tls))
            }
        }))
        .await?;
    Ok(channel)
}

/// Parses a PEM private key (for checks at load time).
pub fn key_from_pem(pem: &str) -> Result<PrivateKeyDer<'static>, Error> {
    rustls_pemfile::private_key(&mut pem.as_bytes())
        .map_err(|e| Error::Pem(format!("site key: {e}")))?
        .ok_or_else(|| Error::Pem("no private key in the site key file".into()))
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
