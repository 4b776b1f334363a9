//! How the client commands reach the hub: the address, CA and token file
//! ([`ClientArgs`]), the TLS channel, the session token on every request, and
//! `carrel-hub login`, which keeps that token.

use anyhow::{bail, Context};
use carrel_proto::pb;
use clap::Args;
use std::io::{BufRead, IsTerminal};
use std::path::{Path, PathBuf};
use tonic::service::interceptor::InterceptedService;
use tonic::transport::{Certificate, Channel, ClientTlsConfig, Endpoint};

/// How a client command reaches the hub.
#[derive(Debug, Clone, Args)]
pub struct ClientArgs {
    /// Hub address.
    #[arg(long, env = "CARREL_ADDR", default_value = "https://127.0.0.1:7443")]
    pub addr: String,
    /// CA certificate that signed the hub's certificate (PEM).
    #[arg(long, env = "CARREL_CA_CERT")]
    pub ca_cert: Option<PathBuf>,
    /// Where the session token is kept (default ~/.carrel/token).
    #[arg(long, env = "CARREL_TOKEN_FILE")]
    pub token_file: Option<PathBuf>,
    /// Print JSON instead of text.
    #[arg(long)]
    pub json: bool,
}

/// Signs in as `user` and keeps the session token in the token file.
pub async fn login(client: ClientArgs, user: String) -> anyhow::Result<()> {
    let password = read_secret(&format!("Password for {user}: "))?;
    let channel = connect(&client).await?;
    let response = pb::auth_service_client::AuthServiceClient::new(channel)
        .login(pb::LoginRequest {
            username: user.clone(),
            password,
        })
        .await?
        .into_inner();
    let path = token_path(&client)?;
    crate::pki::write_file(&path, &response.token, true)?;
    let role = response
        .user
        .as_ref()
        .and_then(|u| pb::Role::try_from(u.role).ok())
        .map(|r| r.as_str_name().trim_start_matches("ROLE_").to_lowercase())
        .unwrap_or_default();
    println!(
        "Signed in as {user} ({role}). Token kept in {}.",
        path.display()
    );
    Ok(())
}

/// Reads a secret: a hidden prompt on a terminal, else one line of standard input.
/// One line typed in answer to `prompt` (on standard error), without its newline.
pub fn read_line(prompt: &str) -> anyhow::Result<String> {
    eprint!("{prompt}");
    let mut line = String::new();
    std::io::stdin().lock().read_line(&mut line)?;
    Ok(line.trim_end_matches(['\r', '\n']).to_owned())
}

pub fn read_secret(prompt: &str) -> anyhow::Result<String> {
    let secret = if std::io::stdin().is_terminal() {
        rpassword::prompt_password(prompt)?
    } else {
        let mut line = String::new();
        std::io::stdin().lock().read_line(&mut line)?;
        line.trim_end_matches(['\r', '\n']).to_owned()
    };
    if secret.is_empty() {
        bail!("no password given");
    }
    Ok(secret)
}

fn token_path(client: &ClientArgs) -> anyhow::Result<PathBuf> {
    if let Some(path) = &client.token_file {
        return Ok(path.clone());
    }
    let home = std::env::var_os("HOME").context("HOME is not set; pass --token-file")?;
    Ok(Path::new(&home).join(".carrel/token"))
}

/// A TLS channel to the hub, trusting the given CA.
pub async fn connect(client: &ClientArgs) -> anyhow::Result<Channel> {
    let uri: http::Uri = client
        .addr
        .parse()
        .with_context(|| format!("hub address {:?}", client.addr))?;
    if uri.scheme_str() != Some("https") {
        bail!("hub address {:?} must start with https://", client.addr);
    }
    let host = uri
        .host()
        .context("hub address has no host")?
        .trim_matches(['[', ']'])
        .to_owned();
    let mut tls = ClientTlsConfig::new().domain_name(host);
    match &client.ca_cert {
        Some(path) => {
            let pem = std::fs::read_to_string(path)
                .with_context(|| format!("reading CA certificate {}", path.display()))?;
            tls = tls.ca_certificate(Certificate::from_pem(pem));
        }
        None => bail!("pass --ca-cert (or set CARREL_CA_CERT) with the hub's CA certificate"),
    }
    Endpoint::from_shared(client.addr.clone())?
        .tls_config(tls)?
        .connect()
        .await
        .with_context(|| format!("connecting to the hub at {}", client.addr))
}

pub type Authed = InterceptedService<Channel, BearerToken>;

/// Adds the session token to every request.
#[derive(Clone)]
pub struct BearerToken(tonic::metadata::MetadataValue<tonic::metadata::Ascii>);

impl tonic::service::Interceptor for BearerToken {
    fn call(
        &mut self,
        mut request: tonic::Request<()>,
    ) -> Result<tonic::Request<()>, tonic::Status> {
        request
            .metadata_mut()
            .insert("authorization", self.0.clone());
        Ok(request)
    }
}

pub fn with_token(channel: Channel, token: &str) -> anyhow::Result<Authed> {
    let value = format!("Bearer {}", token.trim())
        .parse()
        .context("token is not valid ASCII")?;
    Ok(InterceptedService::new(channel, BearerToken(value)))
}

pub async fn authed(client: &ClientArgs) -> anyhow::Result<Authed> {
    let path = token_path(client)?;
    let token = std::fs::read_to_string(&path).with_context(|| {
        format!(
            "no session token at {}; run `carrel-hub login --user NAME` first",
            path.display()
        )
    })?;
    with_token(connect(client).await?, &token)
}
