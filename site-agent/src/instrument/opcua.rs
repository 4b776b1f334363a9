//! The OPC UA adapter (async-opcua client): reads, follows (subscriptions) and writes
//! variables by node id, and calls methods, over security policy Basic256Sha256 with
//! Sign & Encrypt (or None, only when the site says `insecure = true`).
//!
//! Trust: the adapter keeps its own PKI directory per instrument, rebuilt at start:
//! the agent's application instance certificate and key as configured, and exactly one
//! trusted server certificate, the configured one. Any other server certificate is
//! refused. Every connection attempt is bounded by `timeout_ms`: the client library
//! retries a session forever by itself, including against a certificate it will never
//! accept.
//!
//! A step mapped to an OPC UA instrument calls a method: `command` is
//! `<object node id>|<method node id>(<argument>, ...)`, the arguments named in the
//! order the method takes them and given in the mapping's `parameters`. The call's
//! output arguments are the step's result, `out1`, `out2`, ... The agent signs in
//! anonymously, as a user with a password (read from a file), or with an X.509 user
//! certificate. Not covered: Alarms & Conditions events, browsing.

use super::{bounded, BoxFuture, BoxStream, Error, Execution, Instrument, StepRequest, Update};
use super::{Value, Values};
use crate::config::OpcuaConfig;
use opcua::client::{Client, ClientBuilder, DataChangeCallback, IdentityToken, Session};
use opcua::crypto::{CertificateStore, PrivateKey, SecurityPolicy, X509};
use opcua::types::{
    Argument, AttributeId, BrowseDescription, BrowseDirection, BrowseResultMask, CallMethodRequest,
    DataTypeId, DataValue, MessageSecurityMode, MonitoredItemCreateRequest, NodeId, ReadValueId,
    ReferenceTypeId, StatusCode, TimestampsToReturn, UAString, UserTokenPolicy, Variant,
    WriteValue,
};
use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::sync::Arc;
use std::time::Duration;

struct Connected {
    session: Arc<Session>,
    event_loop: tokio::task::JoinHandle<StatusCode>,
}

impl Drop for Connected {
    fn drop(&mut self) {
        self.event_loop.abort();
    }
}

/// An OPC UA server the site configured.
pub struct OpcuaInstrument {
    config: OpcuaConfig,
    pki_dir: PathBuf,
    /// Who the agent signs in as: anonymous, a user name and password, or a user certificate.
    identity: IdentityToken,
    connected: tokio::sync::Mutex<Option<Arc<Connected>>>,
}

impl OpcuaInstrument {
    /// Prepares the instrument's PKI directory under `pki_root`; connects to nothing yet.
    pub fn new(config: &OpcuaConfig, pki_root: &Path) -> Result<OpcuaInstrument, Error> {
        let pki_dir = pki_root.join(&config.name);
        let bad = |what: String| Error::Mapping(format!("instrument {}: {what}", config.name));
        // Start from nothing, so the only trusted certificate is the configured one.
        if pki_dir.exists() {
            std::fs::remove_dir_all(&pki_dir)
                .map_err(|e| bad(format!("clearing {}: {e}", pki_dir.display())))?;
        }
        let store = CertificateStore::new(&pki_dir);
        store.ensure_pki_path().map_err(bad)?;
        if let Some(path) = &config.server_certificate {
            let cert = read_certificate(path).map_err(bad)?;
            let trusted = store
                .trusted_certs_dir()
                .join(CertificateStore::cert_file_name(&cert));
            let der = cert
                .to_der()
                .map_err(|e| bad(format!("server_certificate {}: {e:?}", path.display())))?;
            std::fs::write(&trusted, der)
                .map_err(|e| bad(format!("writing {}: {e}", trusted.display())))?;
        }
        for (what, path) in [
            ("client_certificate", &config.client_certificate),
            ("client_key", &config.client_key),
        ] {
            if let Some(path) = path {
                if !path.exists() {
                    return Err(bad(format!("{what} {} does not exist", path.display())));
                }
            }
        }
        if let Some(path) = &config.client_certificate {
            read_certificate(path).map_err(bad)?;
        }
        let identity = match (
            &config.username,
            &config.password_file,
            &config.user_certificate,
            &config.user_key,
        ) {
            (Some(user), Some(file), _, _) => {
                let text = std::fs::read_to_string(file)
                    .map_err(|e| bad(format!("password_file {}: {e}", file.display())))?;
                let password = text.lines().next().unwrap_or_default().to_owned();
                if password.is_empty() {
                    return Err(bad(format!("password_file {} is empty", file.display())));
                }
                IdentityToken::new_user_name(user.clone(), password)
            }
            (_, _, Some(cert), Some(key)) => {
                let cert = read_certificate(cert).map_err(bad)?;
                let key = PrivateKey::read_pem_file(key)
                    .map_err(|e| bad(format!("user_key {}: {e:?}", key.display())))?;
                IdentityToken::new_x509(cert, key)
            }
            _ => IdentityToken::Anonymous,
        };
        Ok(OpcuaInstrument {
            config: config.clone(),
            pki_dir,
            identity,
            connected: tokio::sync::Mutex::new(None),
        })
    }

    fn timeout(&self) -> Duration {
        Duration::from_millis(self.config.timeout_ms)
    }

    fn client(&self) -> Result<Client, Error> {
        let mut builder = ClientBuilder::new()
            .application_name("Carrel site agent")
            .application_uri("urn:carrel:site-agent")
            .product_uri("urn:carrel:site-agent")
            .pki_dir(&self.pki_dir)
            .create_sample_keypair(false)
            .trust_server_certs(false)
            .verify_server_certs(true)
            .session_retry_limit(3)
            .session_retry_initial(Duration::from_millis(200))
            .session_retry_max(Duration::from_secs(2))
            .request_timeout(self.timeout())
            .session_timeout(60_000);
        if let Some(cert) = &self.config.client_certificate {
            builder = builder.certificate_path(cert);
        }
        if let Some(key) = &self.config.client_key {
            builder = builder.private_key_path(key);
        }
        builder.client().map_err(|problems| {
            Error::Mapping(format!(
                "instrument {}: OPC UA client configuration: {}",
                self.config.name,
                problems.join("; ")
            ))
        })
    }

    /// The session, connecting if needed (bounded by `timeout_ms`).
    async fn session(&self) -> Result<Arc<Session>, Error> {
        let mut connected = self.connected.lock().await;
        if let Some(c) = connected.as_ref() {
            if !c.event_loop.is_finished() {
                return Ok(c.session.clone());
            }
        }
        *connected = None;
        let (policy, mode) = match (
            self.config.security_policy.as_str(),
            self.config.security_mode.as_str(),
        ) {
            ("None", _) => (SecurityPolicy::None, MessageSecurityMode::None),
            (_, "Sign") => (SecurityPolicy::Basic256Sha256, MessageSecurityMode::Sign),
            _ => (
                SecurityPolicy::Basic256Sha256,
                MessageSecurityMode::SignAndEncrypt,
            ),
        };
        let mut client = self.client()?;
        let endpoint = (
            self.config.endpoint.as_str(),
            policy.to_str(),
            mode,
            UserTokenPolicy::anonymous(),
        );
        let attempt = async {
            let (session, event_loop) = client
                .connect_to_matching_endpoint(endpoint, self.identity.clone())
                .await
                .map_err(|e| session_error(e.status(), &e.to_string()))?;
            // Dropped (and its event loop aborted) if the attempt times out.
            let mut connection = Connected {
                session: session.clone(),
                event_loop: event_loop.spawn(),
            };
            let connected = tokio::select! {
                connected = session.wait_for_connection() => Some(connected),
                _ = wait_finished(&connection.event_loop) => None,
            };
            match connected {
                Some(true) => Ok(connection),
                Some(false) => Err(Error::Connection(
                    "the session could not be established".into(),
                )),
                // The event loop gave up (its retry limit): say why.
                None => {
                    let status = (&mut connection.event_loop)
                        .await
                        .unwrap_or(StatusCode::BadUnexpectedError);
                    Err(session_error(status, "the session ended while connecting"))
                }
            }
        };
        let connection = bounded(self.timeout(), attempt)
            .await
            .map_err(|e| match e {
                Error::Connection(why) => Error::Connection(format!(
                    "OPC UA server {} ({} {}): {why}",
                    self.config.endpoint, self.config.security_policy, self.config.security_mode
                )),
                other => other,
            })?;
        tracing::info!(instrument = %self.config.name, endpoint = %self.config.endpoint, "connected to the OPC UA server");
        let session = connection.session.clone();
        *connected = Some(Arc::new(connection));
        Ok(session)
    }

    async fn forget_if_broken(&self, error: &Error) {
        if error.is_transient() || matches!(error, Error::Unconfirmed(_)) {
            *self.connected.lock().await = None;
        }
    }

    async fn with_session<T, F, Fut>(&self, call: F) -> Result<T, Error>
    where
        F: FnOnce(Arc<Session>) -> Fut,
        Fut: std::future::Future<Output = Result<T, Error>>,
    {
        let session = self.session().await?;
        let result = bounded(self.timeout(), call(session)).await;
        if let Err(e) = &result {
            self.forget_if_broken(e).await;
        }
        result
    }

    async fn write_value(&self, node: &str, value: &Value) -> Result<(), Error> {
        let node_id = node_id(node)?;
        let variant = to_variant(value)?;
        self.with_session(|session| async move {
            let statuses = session
                .write(&[WriteValue {
                    node_id,
                    attribute_id: AttributeId::Value as u32,
                    index_range: Default::default(),
                    value: DataValue::value_only(variant),
                }])
                .await
                .map_err(|e| ua_error(e.status(), &e.to_string()))?;
            match statuses.first() {
                Some(status) if status.is_good() => Ok(()),
                Some(status) => Err(ua_error(*status, &format!("writing {node}"))),
                None => Err(Error::Connection(format!("writing {node}: no result"))),
            }
        })
        .await
    }
}

async fn wait_finished(handle: &tokio::task::JoinHandle<StatusCode>) {
    loop {
        if handle.is_finished() {
            return;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

fn read_certificate(path: &Path) -> Result<X509, String> {
    let bytes = std::fs::read(path).map_err(|e| format!("reading {}: {e}", path.display()))?;
    let cert = if bytes.starts_with(b"-----BEGIN") {
        X509::from_pem(&bytes)
    } else {
        X509::from_der(&bytes)
    };
    cert.map_err(|e| format!("{} is not a certificate: {e:?}", path.display()))
}

fn node_id(text: &str) -> Result<NodeId, Error> {
    NodeId::from_str(text.trim())
        .map_err(|_| Error::Mapping(format!("{text:?} is not an OPC UA node id")))
}

/// A status code in domain terms: refused values are validation errors, lost
/// connections and certificates are connection errors.
/// A status code of opening a session: a refused user identity is a configuration
/// error (trying again will not help); the rest as [`ua_error`].
fn session_error(status: StatusCode, context: &str) -> Error {
    if status == StatusCode::BadIdentityTokenRejected
        || status == StatusCode::BadIdentityTokenInvalid
        || status == StatusCode::BadUserSignatureInvalid
        || status == StatusCode::BadUserAccessDenied
    {
        return Error::Mapping(format!(
            "{context}: the instrument refused the agent's user identity ({status}); check username and password_file (or user_certificate) in its configuration"
        ));
    }
    // No endpoint takes this policy, mode and kind of user identity together (a
    // server that wants a user, asked anonymously): the configuration must change.
    if status == StatusCode::BadSecurityPolicyRejected {
        return Error::Mapping(format!(
            "{context}: the instrument offers no endpoint for this security policy, mode and user identity ({status}); a server that requires a user needs username and password_file (or user_certificate)"
        ));
    }
    ua_error(status, context)
}

fn ua_error(status: StatusCode, context: &str) -> Error {
    let name = status.to_string();
    let message = format!("{context}: {name}");
    if status == StatusCode::BadOutOfRange
        || status == StatusCode::BadTypeMismatch
        || status == StatusCode::BadInvalidArgument
        || status == StatusCode::BadArgumentsMissing
        || status == StatusCode::BadTooManyArguments
        || status == StatusCode::BadUserAccessDenied
        || status == StatusCode::BadNotWritable
    {
        return Error::Validation {
            parameter: context.to_owned(),
            message: name,
        };
    }
    if status == StatusCode::BadNodeIdUnknown
        || status == StatusCode::BadNodeIdInvalid
        || status == StatusCode::BadMethodInvalid
    {
        return Error::Mapping(message);
    }

    if status == StatusCode::BadTimeout || status == StatusCode::BadRequestTimeout {
        return Error::Timeout(Duration::ZERO);
    }
    Error::Connection(message)
}

/// The method's declared input arguments (its `InputArguments` property), or `None`
/// for a method that declares none.
async fn input_arguments(
    session: &Session,
    method: &NodeId,
) -> Result<Option<Vec<Argument>>, Error> {
    let browsed = session
        .browse(
            &[BrowseDescription {
                node_id: method.clone(),
                browse_direction: BrowseDirection::Forward,
                reference_type_id: ReferenceTypeId::HasProperty.into(),
                include_subtypes: true,
                node_class_mask: 0,
                result_mask: BrowseResultMask::All as u32,
            }],
            0,
            None,
        )
        .await
        .map_err(|e| ua_error(e.status(), "browsing the method's arguments"))?;
    let Some(property) = browsed
        .first()
        .and_then(|r| r.references.as_ref())
        .and_then(|refs| {
            refs.iter()
                .find(|r| r.browse_name.name.as_ref() == "InputArguments")
        })
        .map(|r| r.node_id.node_id.clone())
    else {
        return Ok(None);
    };
    let values = session
        .read(
            &[ReadValueId::from(property)],
            TimestampsToReturn::Neither,
            0.0,
        )
        .await
        .map_err(|e| ua_error(e.status(), "reading the method's InputArguments"))?;
    let Some(Variant::Array(array)) = values.first().and_then(|v| v.value.as_ref()) else {
        return Ok(None);
    };
    array
        .values
        .iter()
        .map(|v| match v {
            Variant::ExtensionObject(object) => {
                object.inner_as::<Argument>().cloned().ok_or_else(|| {
                    Error::Mapping(
                        "the method's InputArguments holds something other than arguments".into(),
                    )
                })
            }
            other => Err(Error::Mapping(format!(
                "the method's InputArguments holds {other:?}"
            ))),
        })
        .collect::<Result<Vec<_>, _>>()
        .map(Some)
}

/// A mapped value as the type the method declares for the argument; `Err` says why
/// it cannot be.
fn as_declared(value: &Value, argument: &Argument) -> Result<Variant, String> {
    let ty = &argument.data_type;
    let declared = ty.as_data_type_id().ok();
    let is = |id: DataTypeId| declared == Some(id);
    let whole = |v: &Value| match v {
        Value::Integer(i) => Ok(*i),
        Value::Real(r) if r.fract() == 0.0 && r.abs() < 9.0e15 => Ok(*r as i64),
        other => Err(format!("{other} is not a whole number")),
    };
    let fits = |n: i64, low: i64, high: i64, name: &str| {
        if (low..=high).contains(&n) {
            Ok(n)
        } else {
            Err(format!("{n} does not fit in {name} ({low} to {high})"))
        }
    };
    Ok(match value {
        _ if is(DataTypeId::Double) => Variant::Double(
            value
                .as_f64()
                .ok_or_else(|| format!("{value} is not a number"))?,
        ),
        _ if is(DataTypeId::Float) => Variant::Float(
            value
                .as_f64()
                .ok_or_else(|| format!("{value} is not a number"))? as f32,
        ),
        _ if is(DataTypeId::Int64) => Variant::Int64(whole(value)?),
        _ if is(DataTypeId::Int32) => {
            Variant::Int32(fits(whole(value)?, i32::MIN.into(), i32::MAX.into(), "Int32")? as i32)
        }
        _ if is(DataTypeId::Int16) => {
            Variant::Int16(fits(whole(value)?, i16::MIN.into(), i16::MAX.into(), "Int16")? as i16)
        }
        _ if is(DataTypeId::UInt32) => {
            Variant::UInt32(fits(whole(value)?, 0, u32::MAX.into(), "UInt32")? as u32)
        }
        _ if is(DataTypeId::UInt16) => {
            Variant::UInt16(fits(whole(value)?, 0, u16::MAX.into(), "UInt16")? as u16)
        }
        _ if is(DataTypeId::Byte) => {
            Variant::Byte(fits(whole(value)?, 0, u8::MAX.into(), "Byte")? as u8)
        }
        _ if is(DataTypeId::Boolean) => match value {
            Value::Boolean(b) => Variant::Boolean(*b),
            other => return Err(format!("{other} is not true or false")),
        },
        _ if is(DataTypeId::String) => Variant::String(UAString::from(value.to_string().as_str())),
        // A type this adapter does not convert: sent as the mapping has it.
        _ => to_variant(value).map_err(|e| e.to_string())?,
    })
}

fn to_variant(value: &Value) -> Result<Variant, Error> {
    Ok(match value {
        Value::Real(v) => Variant::Double(*v),
        Value::Integer(v) => Variant::Int64(*v),
        Value::Boolean(v) => Variant::Boolean(*v),
        Value::String(v) => Variant::String(UAString::from(v.as_str())),
        Value::List(_) => {
            return Err(Error::Mapping(
                "OPC UA arrays are not supported by this adapter".into(),
            ))
        }
        Value::Structure(_) => {
            return Err(Error::Mapping(
                "OPC UA structures are not supported by this adapter".into(),
            ))
        }
    })
}

fn from_variant(variant: &Variant) -> Result<Value, Error> {
    Ok(match variant {
        Variant::Double(v) => Value::Real(*v),
        Variant::Float(v) => Value::Real(f64::from(*v)),
        Variant::Boolean(v) => Value::Boolean(*v),
        Variant::SByte(v) => Value::Integer(i64::from(*v)),
        Variant::Byte(v) => Value::Integer(i64::from(*v)),
        Variant::Int16(v) => Value::Integer(i64::from(*v)),
        Variant::UInt16(v) => Value::Integer(i64::from(*v)),
        Variant::Int32(v) => Value::Integer(i64::from(*v)),
        Variant::UInt32(v) => Value::Integer(i64::from(*v)),
        Variant::Int64(v) => Value::Integer(*v),
        Variant::String(v) => Value::String(v.as_ref().to_owned()),
        Variant::DateTime(v) => Value::String(v.to_rfc3339()),
        other => {
            return Err(Error::Mapping(format!(
                "OPC UA value {other:?} is not a number, boolean, string or time"
            )))
        }
    })
}

fn data_value(value: &DataValue, node: &str) -> Result<Value, Error> {
    if let Some(status) = value.status {
        if !status.is_good() {
            return Err(ua_error(status, &format!("reading {node}")));
        }
    }
    match &value.value {
        Some(variant) => from_variant(variant),
        None => Err(Error::Mapping(format!("{node} has no value"))),
    }
}

/// `<object>|<method>(<arg>, ...)`: the object, the method and the argument names.
fn parse_method(command: &str) -> Result<(NodeId, NodeId, Vec<String>), Error> {
    let bad = || {
        Error::Mapping(format!(
            "OPC UA command {command:?} is not <object node id>|<method node id>(<argument>, ...)"
        ))
    };
    let (object, rest) = command.split_once('|').ok_or_else(bad)?;
    let (method, arguments) = match rest.split_once('(') {
        Some((method, arguments)) => (
            method,
            arguments
                .strip_suffix(')')
                .ok_or_else(bad)?
                .split(',')
                .map(|a| a.trim().to_owned())
                .filter(|a| !a.is_empty())
                .collect(),
        ),
        None => (rest, Vec::new()),
    };
    Ok((node_id(object)?, node_id(method)?, arguments))
}

impl Instrument for OpcuaInstrument {
    fn id(&self) -> &str {
        &self.config.name
    }

    fn connect(&self) -> BoxFuture<'_, Result<(), Error>> {
        Box::pin(async move { self.session().await.map(drop) })
    }

    /// Calls the method; its output arguments are the result.
    fn start<'a>(&'a self, request: &'a StepRequest) -> BoxFuture<'a, Result<Execution, Error>> {
        Box::pin(async move {
            let (object_id, method_id, names) = parse_method(&request.command)?;
            if let Some(extra) = request.parameters.keys().find(|k| !names.contains(k)) {
                return Err(Error::Mapping(format!(
                    "parameter {extra} is not an argument of {}",
                    request.command
                )));
            }
            let arguments = names
                .iter()
                .map(|name| {
                    request
                        .parameters
                        .get(name)
                        .ok_or_else(|| Error::Mapping(format!("argument {name} is not mapped")))
                        .and_then(to_variant)
                })
                .collect::<Result<Vec<_>, _>>()?;
            let command = request.command.clone();
            let outputs = self
                .with_session(|session| async move {
                    // Each value as the type the method declares (a TOML integer for a
                    // Double argument is sent as a Double, not refused as an Int64).
                    let arguments = match input_arguments(&session, &method_id).await? {
                        None => arguments,
                        Some(declared) => {
                            if declared.len() != arguments.len() {
                                return Err(Error::Mapping(format!(
                                    "{command}: the method takes {} argument(s) ({}); the mapping names {}",
                                    declared.len(),
                                    declared.iter().map(|a| a.name.as_ref().to_owned()).collect::<Vec<_>>().join(", "),
                                    names.len()
                                )));
                            }
                            names
                                .iter()
                                .zip(&declared)
                                .map(|(name, argument)| {
                                    let value = &request.parameters[name];
                                    as_declared(value, argument).map_err(|why| {
                                        Error::Mapping(format!("argument {name} ({}): {why}", argument.name.as_ref()))
                                    })
                                })
                                .collect::<Result<Vec<_>, _>>()?
                        }
                    };
                    let result = session
                        .call_one(CallMethodRequest {
                            object_id,
                            method_id,
                            input_arguments: Some(arguments),
                        })
                        .await
                        // Sent: a lost answer means the method may have run.
                        .map_err(|e| ua_error(e.status(), &e.to_string()).after_sending())?;
                    if !result.status_code.is_good() {
                        return Err(ua_error(result.status_code, &command));
                    }
                    result
                        .output_arguments
                        .unwrap_or_default()
                        .iter()
                        .enumerate()
                        .map(|(i, v)| Ok((format!("out{}", i + 1), from_variant(v)?)))
                        .collect::<Result<Values, Error>>()
                })
                .await
                .map_err(|e| match e {
                    // The method call itself took longer than the bound: it may have run.
                    Error::Timeout(_) => e.after_sending(),
                    e => e,
                })?;
            Ok(Execution {
                id: String::new(),
                reattachable: false,
                updates: Box::pin(futures_util::stream::iter([Ok(Update::Finished(outputs))])),
            })
        })
    }

    fn attach<'a>(
        &'a self,
        _request: &'a StepRequest,
        execution_id: &'a str,
    ) -> BoxFuture<'a, Result<Execution, Error>> {
        Box::pin(async move {
            Err(Error::Mapping(format!(
                "OPC UA method calls have no execution {execution_id} to re-attach to"
            )))
        })
    }

    fn cancel<'a>(&'a self, _execution_id: &'a str) -> BoxFuture<'a, Result<(), Error>> {
        Box::pin(async {
            Err(Error::Mapping(
                "an OPC UA method call completes at once; map a stop method instead".into(),
            ))
        })
    }

    fn write<'a>(&'a self, target: &'a str, value: &'a Value) -> BoxFuture<'a, Result<(), Error>> {
        Box::pin(self.write_value(target, value))
    }

    fn read<'a>(&'a self, source: &'a str) -> BoxFuture<'a, Result<Value, Error>> {
        Box::pin(async move {
            let node = node_id(source)?;
            self.with_session(|session| async move {
                let values = session
                    .read(&[ReadValueId::from(node)], TimestampsToReturn::Neither, 0.0)
                    .await
                    .map_err(|e| ua_error(e.status(), &format!("reading {source}")))?;
                let value = values
                    .first()
                    .ok_or_else(|| Error::Connection(format!("reading {source}: no result")))?;
                data_value(value, source)
            })
            .await
        })
    }

    fn subscribe<'a>(&'a self, source: &'a str) -> BoxFuture<'a, Result<BoxStream<Value>, Error>> {
        Box::pin(async move {
            let node = node_id(source)?;
            let name = source.to_owned();
            self.with_session(|session| async move {
                let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
                let subscription = session
                    .create_subscription(
                        Duration::from_millis(100),
                        60,
                        10,
                        0,
                        0,
                        true,
                        DataChangeCallback::new(move |value, _item| {
                            let _ = tx.send(data_value(&value, &name));
                        }),
                    )
                    .await
                    .map_err(|e| ua_error(e.status(), "creating a subscription"))?;
                let created = session
                    .create_monitored_items(
                        subscription,
                        TimestampsToReturn::Neither,
                        vec![MonitoredItemCreateRequest::from(node)],
                    )
                    .await
                    .map_err(|e| ua_error(e.status(), &format!("monitoring {source}")))?;
                if let Some(item) = created.first() {
                    if !item.result.status_code.is_good() {
                        return Err(ua_error(
                            item.result.status_code,
                            &format!("monitoring {source}"),
                        ));
                    }
                }
                Ok(
                    Box::pin(tokio_stream::wrappers::UnboundedReceiverStream::new(rx))
                        as BoxStream<Value>,
                )
            })
            .await
        })
    }
}
