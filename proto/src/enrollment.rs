//! The one-time enrollment token an administrator gives a new site.
//!
//! `carrel1.<secret>.<sha256 of the hub CA certificate>`: the secret proves to the hub
//! that the site was registered; the fingerprint lets the agent verify, on its very
//! first connection, that it talks to the right hub (kubeadm-style discovery),
//! without ever skipping certificate verification.

/// An enrollment token: the one-time secret and the fingerprint of the hub CA the
/// agent must find at the other end of its first connection (kubeadm-style discovery).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Token {
    pub secret: String,
    pub ca_sha256: String,
}

impl Token {
    const PREFIX: &'static str = "carrel1";

    pub fn encode(&self) -> String {
        format!("{}.{}.{}", Self::PREFIX, self.secret, self.ca_sha256)
    }

    pub fn parse(text: &str) -> Option<Token> {
        let mut parts = text.trim().split('.');
        let (prefix, secret, ca) = (parts.next()?, parts.next()?, parts.next()?);
        let well_formed = prefix == Self::PREFIX
            && parts.next().is_none()
            && secret.len() >= 32
            && ca.len() == 64
            && ca.chars().all(|c| c.is_ascii_hexdigit());
        well_formed.then(|| Token {
            secret: secret.to_owned(),
            ca_sha256: ca.to_ascii_lowercase(),
        })
    }
}

/// URI prefix of the SAN that names a site in the certificate the hub issues it.
pub const SITE_URI_PREFIX: &str = "urn:carrel:site:";

/// The site a certificate (DER) names in its `urn:carrel:site:` URI SAN, if any.
pub fn site_id_of(cert_der: &[u8]) -> Option<String> {
    let (_, cert) = x509_parser::parse_x509_certificate(cert_der).ok()?;
    let san = cert.subject_alternative_name().ok()??;
    san.value.general_names.iter().find_map(|name| match name {
        x509_parser::extensions::GeneralName::URI(uri) => {
            uri.strip_prefix(SITE_URI_PREFIX).map(str::to_owned)
        }
        _ => None,
    })
}

/// A certificate's (DER) validity as Unix seconds: (not before, not after).
pub fn validity_of(cert_der: &[u8]) -> Option<(i64, i64)> {
    let (_, cert) = x509_parser::parse_x509_certificate(cert_der).ok()?;
    let validity = cert.validity();
    Some((
        validity.not_before.timestamp(),
        validity.not_after.timestamp(),
    ))
}

/// The certificate's public key (DER SubjectPublicKeyInfo).
pub fn public_key_of(cert_der: &[u8]) -> Option<Vec<u8>> {
    let (_, cert) = x509_parser::parse_x509_certificate(cert_der).ok()?;
    Some(cert.public_key().raw.to_vec())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn token_round_trips_and_garbage_is_refused() {
        let token = Token {
            secret: "s".repeat(43),
            ca_sha256: "ab".repeat(32),
        };
        assert_eq!(Token::parse(&token.encode()), Some(token));
        assert_eq!(Token::parse("carrel1.short.abcd"), None);
        assert_eq!(Token::parse("hello"), None);
        assert_eq!(
            Token::parse(&format!("carrel2.{}.{}", "s".repeat(43), "ab".repeat(32))),
            None
        );
    }
}
