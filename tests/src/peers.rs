//! Real servers written by others (`tests/peers/`: a SiLA 2 server on the Python
//! `sila2` package, an OPC UA server on `asyncua`, an SMTP server on `aiosmtpd`) as
//! test processes: each
//! starts on a port the OS picks, is waited for until it says `READY`, and is killed
//! by its PID when dropped.
//!
//! The peers need Python 3.10 or newer (`tests/peers/setup` makes their virtualenv).
//! Without any `python3` a test is skipped with a message, except under `CI=true`,
//! where a missing peer fails the test.

use std::collections::HashMap;
use std::io::BufRead;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

/// Where the peers live.
pub fn peers_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("peers")
}

/// The peers' Python, set up once per test process; `None` (after saying why) when
/// this machine has no Python and this is not CI.
pub fn python() -> Option<PathBuf> {
    static PYTHON: std::sync::OnceLock<Option<PathBuf>> = std::sync::OnceLock::new();
    PYTHON
        .get_or_init(|| {
            let in_ci = std::env::var("CI").is_ok_and(|v| v == "true" || v == "1");
            let has_python = Command::new("python3")
                .arg("--version")
                .output()
                .is_ok_and(|o| o.status.success());
            if !has_python {
                assert!(
                    !in_ci,
                    "CI=true: python3 is needed for the instrument peers in tests/peers"
                );
                eprintln!("SKIPPED: no python3 on this machine, so the instrument peers in tests/peers cannot run (CI=true makes this a failure)");
                return None;
            }
            let out = Command::new(peers_dir().join("setup"))
                .stderr(Stdio::inherit())
                .output()
                .expect("run tests/peers/setup");
            assert!(
                out.status.success(),
                "tests/peers/setup failed: {}",
                String::from_utf8_lossy(&out.stdout)
            );
            let text = String::from_utf8_lossy(&out.stdout);
            let python = text.lines().last().expect("setup prints the python").trim();
            Some(PathBuf::from(python))
        })
        .clone()
}

/// A running peer process.
pub struct Peer {
    pub dir: tempfile::TempDir,
    /// `key=value` fields of every line the peer printed before it was ready.
    pub fields: HashMap<String, String>,
    pub port: u16,
    child: Child,
    log: PathBuf,
}

impl Peer {
    fn start(python: &Path, script: &str, args: &[String], dir: tempfile::TempDir) -> Peer {
        let log = dir.path().join("peer.log");
        let mut child = Command::new(python)
            .arg(peers_dir().join(script))
            .args(args)
            .stdout(Stdio::piped())
            .stderr(std::fs::File::create(&log).expect("peer log"))
            .spawn()
            .unwrap_or_else(|e| panic!("start {script}: {e}"));
        let stdout = child.stdout.take().expect("piped stdout");
        let (tx, rx) = mpsc::channel();
        std::thread::spawn(move || {
            for line in std::io::BufReader::new(stdout).lines() {
                let Ok(line) = line else { break };
                if tx.send(line).is_err() {
                    // Nobody listens any more: keep draining so the peer never blocks.
                    continue;
                }
            }
        });
        let deadline = Instant::now() + Duration::from_secs(60);
        let mut fields = HashMap::new();
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match rx.recv_timeout(left.min(Duration::from_millis(200))) {
                Ok(line) => {
                    let mut words = line.split_whitespace();
                    let head = words.next().unwrap_or_default().to_owned();
                    for word in words {
                        if let Some((k, v)) = word.split_once('=') {
                            fields.insert(format!("{head}.{k}"), v.to_owned());
                        }
                    }
                    if head == "READY" {
                        break;
                    }
                }
                Err(_) => {
                    if let Ok(Some(status)) = child.try_wait() {
                        panic!(
                            "{script} exited with {status} before it was ready:\n{}",
                            std::fs::read_to_string(&log).unwrap_or_default()
                        );
                    }
                    assert!(
                        Instant::now() < deadline,
                        "{script} did not say READY within 60 s:\n{}",
                        std::fs::read_to_string(&log).unwrap_or_default()
                    );
                }
            }
        }
        let port = fields["READY.port"].parse().expect("READY port=<port>");
        Peer {
            dir,
            fields,
            port,
            child,
            log,
        }
    }

    /// A SiLA 2 server with TLS and a self-signed certificate written to
    /// [`Peer::sila_certificate`], plus `extra` launcher arguments.
    pub fn sila(python: &Path, extra: &[&str]) -> Peer {
        let dir = tempdir("carrel-sila-peer-");
        let mut args: Vec<String> = vec!["--port".into(), "0".into()];
        if !extra.contains(&"--insecure") {
            args.push("--cert-out".into());
            args.push(dir.path().join("sila-cert.pem").display().to_string());
        }
        args.extend(extra.iter().map(|s| s.to_string()));
        Peer::start(python, "sila/launch.py", &args, dir)
    }

    /// An OPC UA server with its PKI in a temporary directory, plus `extra` arguments.
    pub fn opcua(python: &Path, extra: &[&str]) -> Peer {
        let dir = tempdir("carrel-opcua-peer-");
        let mut args: Vec<String> = vec![
            "--port".into(),
            "0".into(),
            "--pki-dir".into(),
            dir.path().join("pki").display().to_string(),
        ];
        args.extend(extra.iter().map(|s| s.to_string()));
        Peer::start(python, "opcua/server.py", &args, dir)
    }

    /// An SMTP server (aiosmtpd) on `port` (0: any) that saves each message it accepts
    /// as a file in `out_dir` (names sort in order of arrival).
    pub fn smtp(python: &Path, port: u16, out_dir: &Path) -> Peer {
        let args = vec![
            "--port".into(),
            port.to_string(),
            "--out-dir".into(),
            out_dir.display().to_string(),
        ];
        Peer::start(
            python,
            "smtp/server.py",
            &args,
            tempdir("carrel-smtp-peer-"),
        )
    }

    /// `host:port` of the peer.
    pub fn address(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    /// The SiLA server's self-signed certificate (PEM file).
    pub fn sila_certificate(&self) -> PathBuf {
        self.dir.path().join("sila-cert.pem")
    }

    /// The SiLA server's UUID, as it announced it.
    pub fn sila_uuid(&self) -> &str {
        &self.fields["READY.uuid"]
    }

    /// The OPC UA server's endpoint URL.
    pub fn opcua_endpoint(&self) -> &str {
        &self.fields["ENDPOINT.url"]
    }

    /// The OPC UA server's certificate (DER file).
    pub fn opcua_certificate(&self) -> PathBuf {
        PathBuf::from(&self.fields["PKI.cert"])
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// Stops the peer by its PID: SIGTERM, then SIGKILL if it lingers.
    pub fn stop(&mut self) {
        if self.child.try_wait().ok().flatten().is_some() {
            return;
        }
        let _ = Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .status();
        let deadline = Instant::now() + Duration::from_secs(5);
        while self.child.try_wait().ok().flatten().is_none() && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for Peer {
    fn drop(&mut self) {
        self.stop();
        if std::thread::panicking() {
            eprintln!(
                "---- peer log ({}) ----\n{}",
                self.log.display(),
                self.log()
            );
        }
    }
}

fn tempdir(prefix: &str) -> tempfile::TempDir {
    tempfile::Builder::new()
        .prefix(prefix)
        .tempdir()
        .expect("tempdir")
}

/// Makes an OPC UA application instance certificate (RSA 2048, self-signed, with the
/// application URI in its SAN, as OPC UA wants) and its key in `dir`, with the peers'
/// Python `cryptography`. Returns (certificate DER path, key PEM path).
pub fn opcua_client_identity(python: &Path, dir: &Path, name: &str) -> (PathBuf, PathBuf) {
    let cert = dir.join(format!("{name}.der"));
    let key = dir.join(format!("{name}.pem"));
    let script = r#"
import datetime, sys
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from cryptography.x509.oid import NameOID, ExtendedKeyUsageOID
cert_path, key_path, uri = sys.argv[1], sys.argv[2], sys.argv[3]
key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "Carrel site agent")])
now = datetime.datetime.now(datetime.timezone.utc)
cert = (x509.CertificateBuilder().subject_name(name).issuer_name(name).public_key(key.public_key())
    .serial_number(x509.random_serial_number()).not_valid_before(now - datetime.timedelta(hours=1))
    .not_valid_after(now + datetime.timedelta(days=30))
    .add_extension(x509.SubjectAlternativeName([x509.UniformResourceIdentifier(uri), x509.DNSName("localhost")]), critical=False)
    .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
    .add_extension(x509.KeyUsage(digital_signature=True, content_commitment=True, key_encipherment=True,
        data_encipherment=True, key_agreement=False, key_cert_sign=False, crl_sign=False,
        encipher_only=False, decipher_only=False), critical=True)
    .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.CLIENT_AUTH, ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
    .sign(key, hashes.SHA256()))
open(cert_path, "wb").write(cert.public_bytes(serialization.Encoding.DER))
open(key_path, "wb").write(key.private_bytes(serialization.Encoding.PEM,
    serialization.PrivateFormat.TraditionalOpenSSL, serialization.NoEncryption()))
"#;
    let out = Command::new(python)
        .args(["-c", script])
        .arg(&cert)
        .arg(&key)
        .arg("urn:carrel:site-agent")
        .output()
        .expect("run python");
    assert!(
        out.status.success(),
        "making an OPC UA client certificate failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    (cert, key)
}
