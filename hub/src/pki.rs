//! The hub's certificate authority: the root of every site's identity.
//!
//! The CA is created on first start (or supplied in config). It signs the hub's own
//! server certificate and, at enrollment, each site's client certificate, whose only
//! identity is a URI SAN `urn:carrel:site:<site_id>` set by the hub (whatever the CSR
//! asked for is ignored). The site's private key never leaves the site.
//!
//! **Rotation.** `carrel-hub ca rotate` makes a new CA beside the old one and a
//! cross-certificate (the new CA's name and key, signed by the old CA). While the old
//! CA's certificate is kept as `ca-previous.crt`, the hub trusts site certificates of
//! both, serves a chain that sites trusting only the old CA still verify (through the
//! cross-certificate), sends both CAs to every site in `Welcome`, and asks each site
//! whose certificate the old CA issued to renew over its link. `carrel-hub ca
//! retire-previous` ends the overlap once every site holds a certificate of the new CA.

use chrono::{DateTime, Datelike, Duration, SubsecRound, Utc};
use rcgen::{
    BasicConstraints, CertificateParams, CertificateSigningRequestParams, DnType,
    ExtendedKeyUsagePurpose, IsCa, KeyPair, KeyUsagePurpose, SanType,
};
use sha2::{Digest, Sha256};
use std::net::IpAddr;
use std::path::{Path, PathBuf};

pub use carrel_proto::enrollment::{site_id_of, SITE_URI_PREFIX};

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("certificate: {0}")]
    Rcgen(#[from] rcgen::Error),
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("the certificate signing request is not valid: {0}")]
    BadCsr(String),
    #[error("CA: {0}")]
    Config(String),
}

/// The CA's certificate (as clients trust it) and its signing key.
pub struct Ca {
    cert_pem: String,
    cert_der: Vec<u8>,
    /// SHA-256 of `cert_der`, computed once.
    sha256: String,
    /// During a rotation: the previous CA's certificate (still trusted) and the
    /// cross-certificate that chains this CA to it.
    previous_pem: Option<String>,
    cross_pem: Option<String>,
    /// The CA certificate as an rcgen issuer (re-signed from the same params and key,
    /// so certificates it signs verify against `cert_pem`).
    issuer: rcgen::Certificate,
    key: KeyPair,
}

/// A certificate and its private key, PEM.
pub struct Issued {
    pub cert_pem: String,
    pub key_pem: String,
}

/// A site certificate the CA signed.
#[derive(Debug, Clone)]
pub struct SiteCert {
    pub cert_pem: String,
    pub sha256: String,
    pub not_after: DateTime<Utc>,
    /// Fingerprint of the CA that signed it.
    pub ca_sha256: String,
}

/// Files beside the CA certificate that exist during a rotation.
pub fn rotation_paths(ca_cert: &Path) -> (PathBuf, PathBuf) {
    let dir = ca_cert.parent().unwrap_or(Path::new("."));
    (dir.join("ca-previous.crt"), dir.join("ca-cross.crt"))
}

fn offset(at: DateTime<Utc>) -> Result<time::OffsetDateTime, Error> {
    time::OffsetDateTime::from_unix_timestamp(at.timestamp())
        .map_err(|e| Error::Config(format!("time {at}: {e}")))
}

/// Why a site holding certificate `leaf_der` should renew it now, if it should: it
/// was issued by another CA than the one signing now (a rotation), or it expires
/// within `renew_before`.
pub fn renewal_reason(
    leaf_der: &[u8],
    ca: &Ca,
    renew_before: Duration,
    now: DateTime<Utc>,
) -> Option<String> {
    let (_, leaf) = x509_parser::parse_x509_certificate(leaf_der).ok()?;
    let (_, signer) = x509_parser::parse_x509_certificate(&ca.cert_der).ok()?;
    if leaf.issuer().as_raw() != signer.subject().as_raw() {
        return Some(format!(
            "the certificate was issued by {}, not by the hub's current CA {}",
            leaf.issuer(),
            signer.subject()
        ));
    }
    let expires = DateTime::<Utc>::from_timestamp(leaf.validity().not_after.timestamp(), 0)?;
    (expires - now < renew_before)
        .then(|| format!("the certificate expires at {}", expires.to_rfc3339()))
}

pub(crate) fn read(path: &Path) -> Result<String, Error> {
    std::fs::read_to_string(path).map_err(|source| Error::Io {
        path: path.to_owned(),
        source,
    })
}

/// Writes a file durably; private files are readable by the owner only.
pub fn write_file(path: &Path, contents: &str, private: bool) -> Result<(), Error> {
    let io = |source| Error::Io {
        path: path.to_owned(),
        source,
    };
    if let Some(parent) = path.parent() {
        std::fs::create_dir_all(parent).map_err(io)?;
    }
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create(true).truncate(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        options.mode(if private { 0o600 } else { 0o644 });
    }
    #[cfg(not(unix))]
    let _ = private;
    let mut file = options.open(path).map_err(io)?;
    std::io::Write::write_all(&mut file, contents.as_bytes()).map_err(io)?;
    file.sync_all().map_err(io)
}

fn ymd(at: DateTime<Utc>) -> time::OffsetDateTime {
    rcgen::date_time_ymd(at.year(), at.month() as u8, at.day().min(28) as u8)
}

/// SHA-256 (hex) of a DER certificate: how a certificate is pinned and compared.
pub fn fingerprint(der: &[u8]) -> String {
    hex::encode(Sha256::digest(der))
}

/// DER of the first certificate in a PEM text.
pub fn first_cert_der(pem: &str) -> Result<Vec<u8>, Error> {
    let mut reader = pem.as_bytes();
    let first = rustls_pemfile::certs(&mut reader).next();
    match first {
        Some(Ok(der)) => Ok(der.to_vec()),
        Some(Err(e)) => Err(Error::Config(format!("certificate PEM: {e}"))),
        None => Err(Error::Config("no certificate in PEM".into())),
    }
}

impl Ca {
    /// Creates a new CA, valid for ten years.
    pub fn create(common_name: &str) -> Result<Ca, Error> {
        let key = KeyPair::generate()?;
        let mut params = CertificateParams::default();
        params
            .distinguished_name
            .push(DnType::CommonName, common_name);
        params
            .distinguished_name
            .push(DnType::OrganizationName, "Carrel");
        params.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
        params.key_usages = vec![
            KeyUsagePurpose::KeyCertSign,
            KeyUsagePurpose::CrlSign,
            KeyUsagePurpose::DigitalSignature,
        ];
        let now = Utc::now();
        params.not_before = ymd(now - Duration::days(1));
        params.not_after = ymd(now + Duration::days(3650));
        let cert = params.self_signed(&key)?;
        Ca::from_pem(&cert.pem(), &key.serialize_pem())
    }

    /// Takes an existing CA certificate and key.
    pub fn from_pem(cert_pem: &str, key_pem: &str) -> Result<Ca, Error> {
        let key = KeyPair::from_pem(key_pem)?;
        let cert_der = first_cert_der(cert_pem)?;
        let params = CertificateParams::from_ca_cert_pem(cert_pem)?;
        let issuer = params.self_signed(&key)?;
        Ok(Ca {
            cert_pem: cert_pem.to_owned(),
            sha256: fingerprint(&cert_der),
            cert_der,
            previous_pem: None,
            cross_pem: None,
            issuer,
            key,
        })
    }

    /// Loads the CA and, during a rotation, the previous CA and the cross-certificate
    /// beside it (see [`rotation_paths`]).
    pub fn load(cert: &Path, key: &Path) -> Result<Ca, Error> {
        let mut ca = Ca::load_or_create(cert, key)?;
        let (previous, cross) = rotation_paths(cert);
        match (previous.exists(), cross.exists()) {
            (false, false) => {}
            (true, true) => {
                let previous_pem = read(&previous)?;
                let cross_pem = read(&cross)?;
                first_cert_der(&previous_pem)?;
                first_cert_der(&cross_pem)?;
                ca.previous_pem = Some(previous_pem);
                ca.cross_pem = Some(cross_pem);
            }
            _ => {
                return Err(Error::Config(format!(
                "found only one of {} and {}; a CA rotation needs both (or neither, once retired)",
                previous.display(),
                cross.display()
            )))
            }
        }
        Ok(ca)
    }

    /// Makes a new CA to replace the one in `cert`/`key`: the old certificate becomes
    /// `ca-previous.crt`, a cross-certificate is written beside it, and the new CA takes
    /// the old one's files. Refused while a rotation is still in its overlap.
    pub fn rotate(cert: &Path, key: &Path) -> Result<Ca, Error> {
        let (previous, cross) = rotation_paths(cert);
        if previous.exists() || cross.exists() {
            return Err(Error::Config(format!(
                "a CA rotation is still in progress ({} exists); run `carrel-hub ca retire-previous` once every site has renewed",
                previous.display()
            )));
        }
        let old = Ca::from_pem(&read(cert)?, &read(key)?)?;
        let name = format!("Carrel hub CA {}", Utc::now().format("%Y-%m-%d %H%M%S"));
        let new = Ca::create(&name)?;
        let params = CertificateParams::from_ca_cert_pem(&new.cert_pem)?;
        let cross_cert = params.signed_by(&new.key, &old.issuer, &old.key)?;
        // The old certificate first, then the cross-certificate; the new key and
        // certificate replace the old ones last (each file is written durably).
        write_file(&previous, &old.cert_pem, false)?;
        write_file(&cross, &cross_cert.pem(), false)?;
        write_file(key, &new.key.serialize_pem(), true)?;
        write_file(cert, &new.cert_pem, false)?;
        Ca::load(cert, key)
    }

    /// Ends a rotation's overlap: the previous CA is no longer trusted.
    pub fn retire_previous(cert: &Path) -> Result<bool, Error> {
        let (previous, cross) = rotation_paths(cert);
        let existed = previous.exists() || cross.exists();
        for path in [cross, previous] {
            if path.exists() {
                std::fs::remove_file(&path).map_err(|source| Error::Io { path, source })?;
            }
        }
        Ok(existed)
    }

    /// Every CA certificate sites should trust: this one, then the previous one
    /// during a rotation.
    pub fn trust_bundle(&self) -> String {
        let mut pem = self.cert_pem.clone();
        if let Some(previous) = &self.previous_pem {
            pem.push_str(previous);
        }
        pem
    }

    /// Fingerprint of the previous CA during a rotation.
    pub fn previous_fingerprint(&self) -> Option<String> {
        let pem = self.previous_pem.as_deref()?;
        first_cert_der(pem).ok().map(|der| fingerprint(&der))
    }

    /// The chain the hub serves after its own certificate: this CA, and during a
    /// rotation the cross-certificate and the previous CA, so that sites trusting
    /// either CA (and enrollment tokens pinning either) verify the hub.
    pub fn server_chain_pem(&self) -> String {
        let mut pem = self.cert_pem.clone();
        if let (Some(cross), Some(previous)) = (&self.cross_pem, &self.previous_pem) {
            pem.push_str(cross);
            pem.push_str(previous);
        }
        pem
    }

    /// When this CA's own certificate expires.
    pub fn not_after(&self) -> Option<DateTime<Utc>> {
        let (_, cert) = x509_parser::parse_x509_certificate(&self.cert_der).ok()?;
        DateTime::<Utc>::from_timestamp(cert.validity().not_after.timestamp(), 0)
    }

    /// Loads the CA from `cert`/`key` files, creating both when neither exists.
    pub fn load_or_create(cert: &Path, key: &Path) -> Result<Ca, Error> {
        match (cert.exists(), key.exists()) {
            (true, true) => Ca::from_pem(&read(cert)?, &read(key)?),
            (false, false) => {
                let ca = Ca::create("Carrel hub CA")?;
                write_file(key, &ca.key.serialize_pem(), true)?;
                write_file(cert, &ca.cert_pem, false)?;
                tracing::info!(cert = %cert.display(), fingerprint = %ca.fingerprint(), "created a new hub CA");
                Ok(ca)
            }
            _ => Err(Error::Config(format!(
                "found only one of {} and {}; both the CA certificate and its key are needed",
                cert.display(),
                key.display()
            ))),
        }
    }

    pub fn cert_pem(&self) -> &str {
        &self.cert_pem
    }

    /// SHA-256 of the CA certificate: what an enrollment token pins.
    pub fn fingerprint(&self) -> &str {
        &self.sha256
    }

    /// A TLS server certificate for the hub, for the given DNS names and IP addresses.
    pub fn issue_server_cert(&self, names: &[String]) -> Result<Issued, Error> {
        let key = KeyPair::generate()?;
        let mut params = CertificateParams::default();
        params
            .distinguished_name
            .push(DnType::CommonName, "carrel-hub");
        for name in names {
            let san = match name.parse::<IpAddr>() {
                Ok(ip) => SanType::IpAddress(ip),
                Err(_) => SanType::DnsName(name.clone().try_into()?),
            };
            params.subject_alt_names.push(san);
        }
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
        params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        let now = Utc::now();
        params.not_before = ymd(now - Duration::days(1));
        params.not_after = ymd(now + Duration::days(365));
        let cert = params.signed_by(&key, &self.issuer, &self.key)?;
        Ok(Issued {
            cert_pem: cert.pem(),
            key_pem: key.serialize_pem(),
        })
    }

    /// Signs a site's CSR, valid for `validity` from now. The certificate names the
    /// site by a URI SAN the hub sets; everything the CSR requested besides its public
    /// key is ignored.
    pub fn sign_site_csr(
        &self,
        csr_pem: &str,
        site_id: &str,
        validity: Duration,
    ) -> Result<SiteCert, Error> {
        let mut csr = CertificateSigningRequestParams::from_pem(csr_pem)
            .map_err(|e| Error::BadCsr(e.to_string()))?;
        let mut params = CertificateParams::default();
        params.distinguished_name.push(DnType::CommonName, site_id);
        params
            .distinguished_name
            .push(DnType::OrganizationName, "Carrel site");
        params.subject_alt_names = vec![SanType::URI(
            format!("{SITE_URI_PREFIX}{site_id}").try_into()?,
        )];
        params.is_ca = IsCa::ExplicitNoCa;
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
        params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        let now = Utc::now().trunc_subsecs(0);
        // An hour's grace for a site clock a little behind the hub's.
        params.not_before = offset(now - Duration::hours(1))?;
        let not_after = now + validity;
        params.not_after = offset(not_after)?;
        csr.params = params;
        let cert = csr.signed_by(&self.issuer, &self.key)?;
        Ok(SiteCert {
            cert_pem: cert.pem(),
            sha256: fingerprint(cert.der()),
            not_after,
            ca_sha256: self.sha256.clone(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn site_certificate_names_the_site_the_hub_chose() {
        let ca = Ca::create("test CA").expect("CA");
        let key = KeyPair::generate().expect("key");
        let mut asked = CertificateParams::new(vec!["evil.example".to_string()]).expect("params");
        asked.subject_alt_names.push(SanType::URI(
            format!("{SITE_URI_PREFIX}other-site")
                .try_into()
                .expect("ia5"),
        ));
        let csr = asked
            .serialize_request(&key)
            .expect("csr")
            .pem()
            .expect("pem");
        let cert = ca
            .sign_site_csr(&csr, "site-a", Duration::days(30))
            .expect("signed");
        let der = first_cert_der(&cert.cert_pem).expect("der");
        assert_eq!(site_id_of(&der).as_deref(), Some("site-a"));
    }

    #[test]
    fn garbage_csr_is_refused_with_a_reason() {
        let ca = Ca::create("test CA").expect("CA");
        let err = ca
            .sign_site_csr("not a csr", "site-a", Duration::days(30))
            .expect_err("refused");
        assert!(
            err.to_string().contains("signing request is not valid"),
            "{err}"
        );
    }

    #[test]
    fn reloaded_ca_keeps_its_fingerprint() {
        let dir = tempfile::tempdir().expect("tempdir");
        let (cert, key) = (dir.path().join("ca.crt"), dir.path().join("ca.key"));
        let first = Ca::load_or_create(&cert, &key).expect("created");
        let again = Ca::load_or_create(&cert, &key).expect("loaded");
        assert_eq!(first.fingerprint(), again.fingerprint());
        std::fs::remove_file(&key).expect("rm");
        assert!(Ca::load_or_create(&cert, &key).is_err());
    }
}
