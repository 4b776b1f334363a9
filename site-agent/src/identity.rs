//! The site's identity: its key pair (made here, never sent anywhere), the
//! certificate the hub issued at enrollment, and the hub CA it trusts.

use crate::tls;
use carrel_proto::enrollment::{site_id_of, Token};
use carrel_proto::pb;
use std::path::{Path, PathBuf};
use std::time::Duration;

const KEY_FILE: &str = "site.key";
const CERT_FILE: &str = "site.crt";
const CA_FILE: &str = "ca.crt";

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
    let channel = tls::connect(hub, tls, Duration::from_secs(10)).await?;
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
