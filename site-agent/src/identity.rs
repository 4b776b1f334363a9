//! The site's identity: its key pair (made here, never sent anywhere), the
//! certificate the hub issued at enrollment, and the hub CA it trusts.

use crate::tls;
use carrel_proto::enrollment::{public_key_of, site_id_of, validity_of, Token};
use carrel_proto::pb;
use std::path::{Path, PathBuf};
use std::time::Duration;

const KEY_FILE: &str = "site.key";
const CERT_FILE: &str = "site.crt";
const CA_FILE: &str = "ca.crt";
/// A renewal in flight: the new key, made before the request was sent, and the
/// certificate the hub issued for it once it has arrived.
const NEXT_KEY_FILE: &str = "site.key.next";
const NEXT_CERT_FILE: &str = "site.crt.next";
/// The share of a certificate's lifetime left at which the site renews on its own,
/// whether or not the hub asked.
const RENEW_AT_REMAINING: f64 = 1.0 / 3.0;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("the enrollment token is malformed (expected carrel1.<secret>.<ca-sha256>)")]
    BadToken,
    #[error("{dir} already holds an enrolled site ({site}); enroll into a new data directory")]
    AlreadyEnrolled { dir: PathBuf, site: String },
    #[error("{dir} holds no enrolled site; run `carrel-site-agent enroll` first")]
    NotEnrolled { dir: PathBuf },
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("key or certificate: {0}")]
    Cert(String),
    #[error(transparent)]
    Tls(#[from] tls::Error),
    #[error("the hub refused enrollment: {0}")]
    Refused(String),
    #[error("the hub returned a CA certificate that does not match the token's fingerprint")]
    CaMismatch,
}

fn io(path: &Path) -> impl FnOnce(std::io::Error) -> Error + '_ {
    move |source| Error::Io {
        path: path.to_owned(),
        source,
    }
}

fn write_file(path: &Path, contents: &str, private: bool) -> Result<(), Error> {
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create(true).truncate(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        options.mode(if private { 0o600 } else { 0o644 });
    }
    #[cfg(not(unix))]
    let _ = private;
    let mut file = options.open(path).map_err(io(path))?;
    std::io::Write::write_all(&mut file, contents.as_bytes()).map_err(io(path))?;
    file.sync_all().map_err(io(path))
}

/// The loaded identity of an enrolled site.
#[derive(Clone)]
pub struct Identity {
    pub site_id: String,
    pub key_pem: String,
    pub cert_pem: String,
    pub ca_pem: String,
}

impl Identity {
    pub fn is_enrolled(data_dir: &Path) -> bool {
        data_dir.join(CERT_FILE).exists()
    }

    pub fn load(data_dir: &Path) -> Result<Identity, Error> {
        if !Self::is_enrolled(data_dir) {
            return Err(Error::NotEnrolled {
                dir: data_dir.to_owned(),
            });
        }
        let read = |name: &str| {
            let path = data_dir.join(name);
            std::fs::read_to_string(&path).map_err(io(&path))
        };
        let cert_pem = read(CERT_FILE)?;
        let key_pem = read(KEY_FILE)?;
        tls::key_from_pem(&key_pem)?;
        let der = tls::certs_from_pem(&cert_pem)?.remove(0);
        let site_id = site_id_of(der.as_ref())
            .ok_or_else(|| Error::Cert("the site certificate names no site".into()))?;
        Ok(Identity {
            site_id,
            key_pem,
            cert_pem,
            ca_pem: read(CA_FILE)?,
        })
    }
}

impl Identity {
    /// Mutual TLS with this identity.
    pub fn tls(&self) -> Result<std::sync::Arc<rustls::ClientConfig>, Error> {
        Ok(tls::mtls_config(
            &self.ca_pem,
            &self.cert_pem,
            &self.key_pem,
        )?)
    }

    /// Whether less than a third of the certificate's lifetime is left at `now`
    /// (Unix seconds).
    pub fn due_for_renewal(&self, now: i64) -> bool {
        let Some((from, until)) = tls::certs_from_pem(&self.cert_pem)
            .ok()
            .and_then(|certs| certs.first().and_then(|c| validity_of(c.as_ref())))
        else {
            return true;
        };
        let lifetime = (until - from).max(1) as f64;
        ((until - now) as f64) < lifetime * RENEW_AT_REMAINING
    }
}

fn rename(from: &Path, to: &Path) -> Result<(), Error> {
    std::fs::rename(from, to).map_err(io(from))?;
    if let Some(dir) = to.parent() {
        std::fs::File::open(dir)
            .and_then(|d| d.sync_all())
            .map_err(io(dir))?;
    }
    Ok(())
}

/// At start: completes a renewal that a crash interrupted after its answer was saved,
/// or drops one whose answer never came (the hub still accepts the old certificate).
pub fn finish_interrupted_renewal(data_dir: &Path) -> Result<(), Error> {
    let (next_key, next_cert) = (data_dir.join(NEXT_KEY_FILE), data_dir.join(NEXT_CERT_FILE));
    match (next_key.exists(), next_cert.exists()) {
        (true, true) => {
            rename(&next_key, &data_dir.join(KEY_FILE))?;
            rename(&next_cert, &data_dir.join(CERT_FILE))?;
            tracing::info!("completed a certificate renewal interrupted by a restart");
        }
        (false, true) => rename(&next_cert, &data_dir.join(CERT_FILE))?,
        (true, false) => {
            std::fs::remove_file(&next_key).map_err(io(&next_key))?;
            tracing::info!("dropped a certificate renewal that got no answer; it is asked again");
        }
        (false, false) => {}
    }
    Ok(())
}

/// Starts a renewal: a new key pair made and kept here, and the CSR to send.
pub fn begin_renewal(data_dir: &Path) -> Result<String, Error> {
    let key = rcgen::KeyPair::generate().map_err(|e| Error::Cert(e.to_string()))?;
    let csr = rcgen::CertificateParams::default()
        .serialize_request(&key)
        .and_then(|csr| csr.pem())
        .map_err(|e| Error::Cert(e.to_string()))?;
    write_file(&data_dir.join(NEXT_KEY_FILE), &key.serialize_pem(), true)?;
    Ok(csr)
}

/// Takes the hub's answer to a renewal: checks that the certificate is for this
/// site and for the key made in [`begin_renewal`], keeps the CA bundle, and swaps
/// the new key and certificate in. Returns the identity now in force.
pub fn complete_renewal(
    data_dir: &Path,
    cert_pem: &str,
    trusted_ca_pem: &str,
) -> Result<Identity, Error> {
    let current = Identity::load(data_dir)?;
    let next_key = data_dir.join(NEXT_KEY_FILE);
    let key_pem = std::fs::read_to_string(&next_key).map_err(io(&next_key))?;
    let key = rcgen::KeyPair::from_pem(&key_pem).map_err(|e| Error::Cert(e.to_string()))?;
    let der = tls::certs_from_pem(cert_pem)?.remove(0);
    if site_id_of(der.as_ref()).as_deref() != Some(current.site_id.as_str()) {
        return Err(Error::Cert(format!(
            "the renewed certificate does not name this site ({})",
            current.site_id
        )));
    }
    if public_key_of(der.as_ref()).as_deref() != Some(key.public_key_der().as_slice()) {
        return Err(Error::Cert(
            "the renewed certificate is not for the key this site made for it".into(),
        ));
    }
    if !trusted_ca_pem.trim().is_empty() {
        store_trust_bundle(data_dir, trusted_ca_pem)?;
    }
    // The certificate is kept before anything is swapped: from here a crash is
    // completed at the next start (finish_interrupted_renewal).
    write_file(&data_dir.join(NEXT_CERT_FILE), cert_pem, false)?;
    rename(&next_key, &data_dir.join(KEY_FILE))?;
    rename(&data_dir.join(NEXT_CERT_FILE), &data_dir.join(CERT_FILE))?;
    Identity::load(data_dir)
}

/// Replaces the CA bundle the site trusts for the hub (sent by the hub over a link
/// that the current bundle verified). Returns whether it changed.
pub fn store_trust_bundle(data_dir: &Path, pem: &str) -> Result<bool, Error> {
    let certs = tls::certs_from_pem(pem)?;
    if certs.is_empty() {
        return Err(Error::Cert("the hub sent an empty CA bundle".into()));
    }
    let path = data_dir.join(CA_FILE);
    if std::fs::read_to_string(&path).ok().as_deref() == Some(pem) {
        return Ok(false);
    }
    let next = data_dir.join("ca.crt.next");
    write_file(&next, pem, false)?;
    rename(&next, &path)?;
    Ok(true)
}

/// Result of a successful enrollment.
#[derive(Debug, Clone)]
pub struct Enrolled {
    pub site_id: String,
    pub site_name: String,
}

/// Enrolls this site: makes a key pair and CSR here, sends the CSR with the one-time
/// token, and stores the signed certificate and the hub CA in `data_dir`.
pub async fn enroll(
    hub: &str,
    token: &str,
    data_dir: &Path,
    agent_version: &str,
) -> Result<Enrolled, Error> {
    let token = Token::parse(token).ok_or(Error::BadToken)?;
    std::fs::create_dir_all(data_dir).map_err(io(data_dir))?;
    if let Ok(existing) = Identity::load(data_dir) {
        return Err(Error::AlreadyEnrolled {
            dir: data_dir.to_owned(),
            site: existing.site_id,
        });
    }
    let key = rcgen::KeyPair::generate().map_err(|e| Error::Cert(e.to_string()))?;
    let csr = rcgen::CertificateParams::default()
        .serialize_request(&key)
        .and_then(|csr| csr.pem())
        .map_err(|e| Error::Cert(e.to_string()))?;
    let tls = tls::pinned_config(&token.ca_sha256)?;
    let channel = tls::connect(tls::Peer::Hub, hub, None, tls, Duration::from_secs(10)).await?;
    let response = pb::site_link_service_client::SiteLinkServiceClient::new(channel)
        .enroll(pb::EnrollRequest {
            token: token.encode(),
            csr_pem: csr,
            agent_version: agent_version.to_owned(),
        })
        .await
        .map_err(|s| Error::Refused(format!("{:?}: {}", s.code(), s.message())))?
        .into_inner();
    let ca = tls::certs_from_pem(&response.ca_certificate_pem)?;
    if tls::fingerprint(ca[0].as_ref()) != token.ca_sha256 {
        return Err(Error::CaMismatch);
    }
    write_file(&data_dir.join(KEY_FILE), &key.serialize_pem(), true)?;
    write_file(&data_dir.join(CA_FILE), &response.ca_certificate_pem, false)?;
    // The certificate last: its presence is what marks the directory as enrolled.
    write_file(&data_dir.join(CERT_FILE), &response.certificate_pem, false)?;
    Ok(Enrolled {
        site_id: response.site_id,
        site_name: response.site_name,
    })
}

#[cfg(test)]
mod renewal_tests {
    use super::*;

    fn files(dir: &Path, names: &[(&str, &str)]) {
        for (name, text) in names {
            std::fs::write(dir.join(name), text).expect("write");
        }
    }

    fn read(dir: &Path, name: &str) -> Option<String> {
        std::fs::read_to_string(dir.join(name)).ok()
    }

    #[test]
    fn a_renewal_cut_short_by_a_crash_is_completed_or_dropped_at_start() {
        // The answer was saved, nothing swapped yet: both are swapped in.
        let dir = tempfile::tempdir().expect("tempdir");
        files(
            dir.path(),
            &[
                (KEY_FILE, "old key"),
                (CERT_FILE, "old cert"),
                (NEXT_KEY_FILE, "new key"),
                (NEXT_CERT_FILE, "new cert"),
            ],
        );
        finish_interrupted_renewal(dir.path()).expect("finish");
        assert_eq!(read(dir.path(), KEY_FILE).as_deref(), Some("new key"));
        assert_eq!(read(dir.path(), CERT_FILE).as_deref(), Some("new cert"));
        assert_eq!(read(dir.path(), NEXT_KEY_FILE), None);
        assert_eq!(read(dir.path(), NEXT_CERT_FILE), None);

        // The key was swapped, the certificate not yet: it follows.
        let dir = tempfile::tempdir().expect("tempdir");
        files(
            dir.path(),
            &[
                (KEY_FILE, "new key"),
                (CERT_FILE, "old cert"),
                (NEXT_CERT_FILE, "new cert"),
            ],
        );
        finish_interrupted_renewal(dir.path()).expect("finish");
        assert_eq!(read(dir.path(), CERT_FILE).as_deref(), Some("new cert"));

        // The request went out, no answer came: the old identity stands.
        let dir = tempfile::tempdir().expect("tempdir");
        files(
            dir.path(),
            &[
                (KEY_FILE, "old key"),
                (CERT_FILE, "old cert"),
                (NEXT_KEY_FILE, "new key"),
            ],
        );
        finish_interrupted_renewal(dir.path()).expect("finish");
        assert_eq!(read(dir.path(), KEY_FILE).as_deref(), Some("old key"));
        assert_eq!(read(dir.path(), CERT_FILE).as_deref(), Some("old cert"));
        assert_eq!(read(dir.path(), NEXT_KEY_FILE), None);
    }
}
