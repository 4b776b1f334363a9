//! The client: connecting to a SiLA 2 server (TLS pinned, or plain HTTP/2 when the
//! site says so), reading its SiLAService and feature definitions, and running
//! commands and reading properties for the executor.

use super::codec::{
    decode_message, encode_message, error_from_status, fields, property_value, put_field, RawCodec,
};
use super::fdl::{Command, Feature, Property};
use super::pb;
use crate::config::SilaConfig;
use crate::instrument::{
    bounded, BoxFuture, BoxStream, Error, Execution, Instrument, Status, StepRequest, Update, Value,
};
use prost::Message;
use std::str::FromStr;
use std::sync::Arc;
use std::time::Duration;
use tonic::transport::Channel;

const SILA_SERVICE: &str = "/sila2.org.silastandard.core.silaservice.v1.SiLAService";

/// A connected server: its identity and the features the site uses.
#[derive(Debug)]
pub struct Server {
    channel: Channel,
    pub name: String,
    pub uuid: String,
    pub implemented_features: Vec<String>,
    pub features: Vec<Feature>,
}

impl Server {
    async fn unary(&self, path: &str, body: Vec<u8>) -> Result<Vec<u8>, Error> {
        let mut grpc = tonic::client::Grpc::new(self.channel.clone());
        grpc.ready()
            .await
            .map_err(|e| Error::Connection(e.to_string()))?;
        let path = http::uri::PathAndQuery::from_str(path)
            .map_err(|e| Error::Mapping(format!("gRPC path {path}: {e}")))?;
        grpc.unary(tonic::Request::new(body), path, RawCodec)
            .await
            .map(tonic::Response::into_inner)
            .map_err(|s| error_from_status(&s))
    }

    async fn server_stream(
        &self,
        path: &str,
        body: Vec<u8>,
    ) -> Result<tonic::Streaming<Vec<u8>>, Error> {
        let mut grpc = tonic::client::Grpc::new(self.channel.clone());
        grpc.ready()
            .await
            .map_err(|e| Error::Connection(e.to_string()))?;
        let path = http::uri::PathAndQuery::from_str(path)
            .map_err(|e| Error::Mapping(format!("gRPC path {path}: {e}")))?;
        grpc.server_streaming(tonic::Request::new(body), path, RawCodec)
            .await
            .map(tonic::Response::into_inner)
            .map_err(|s| error_from_status(&s))
    }

    /// A SiLAService property (a String, or a list of Strings).
    async fn service_property(&self, property: &str) -> Result<Vec<String>, Error> {
        let bytes = self
            .unary(&format!("{SILA_SERVICE}/Get_{property}"), Vec::new())
            .await?;
        fields(&bytes)?
            .into_iter()
            .filter(|(number, _)| *number == 1)
            .map(|(_, field)| {
                pb::String::decode(field.as_slice())
                    .map(|s| s.value)
                    .map_err(|e| Error::Mapping(format!("SiLAService {property}: {e}")))
            })
            .collect()
    }

    async fn feature_definition(&self, feature: &str) -> Result<String, Error> {
        let mut body = Vec::new();
        put_field(
            &mut body,
            1,
            &pb::String {
                value: feature.to_owned(),
            }
            .encode_to_vec(),
        );
        let bytes = self
            .unary(&format!("{SILA_SERVICE}/GetFeatureDefinition"), body)
            .await?;
        let field = fields(&bytes)?
            .into_iter()
            .find(|(number, _)| *number == 1)
            .ok_or_else(|| Error::Mapping(format!("no feature definition for {feature}")))?;
        Ok(pb::String::decode(field.1.as_slice())
            .map_err(|e| Error::Mapping(format!("feature definition of {feature}: {e}")))?
            .value)
    }

    /// Finds `<feature>/Command/<X>`, or `<X>` in the only feature that has it.
    fn command(&self, name: &str) -> Result<(&Feature, &Command), Error> {
        self.find(name, "Command", |f, id| f.commands.get(id))
    }

    fn property(&self, name: &str) -> Result<(&Feature, &Property), Error> {
        self.find(name, "Property", |f, id| f.properties.get(id))
    }

    fn find<'s, T>(
        &'s self,
        name: &str,
        kind: &str,
        get: impl Fn(&'s Feature, &str) -> Option<&'s T>,
    ) -> Result<(&'s Feature, &'s T), Error> {
        let marker = format!("/{kind}/");
        let found: Vec<(&Feature, &T)> = match name.rsplit_once(&marker) {
            Some((feature, id)) => self
                .features
                .iter()
                .filter(|f| f.fully_qualified == feature)
                .filter_map(|f| get(f, id).map(|t| (f, t)))
                .collect(),
            None => self
                .features
                .iter()
                .filter_map(|f| get(f, name).map(|t| (f, t)))
                .collect(),
        };
        match found.as_slice() {
            [one] => Ok(*one),
            [] => Err(Error::Mapping(format!(
                "server {} has no {} {name} in the features the site configured ({})",
                self.name,
                kind.to_ascii_lowercase(),
                self.features
                    .iter()
                    .map(|f| f.fully_qualified.as_str())
                    .collect::<Vec<_>>()
                    .join(", ")
            ))),
            _ => Err(Error::Mapping(format!(
                "{name} is in several features of server {}: name it as <feature>/{kind}/{name}",
                self.name
            ))),
        }
    }
}

/// A SiLA 2 server the site configured.
pub struct SilaInstrument {
    config: SilaConfig,
    tls: Option<Arc<rustls::ClientConfig>>,
    connected: Arc<tokio::sync::Mutex<Option<Arc<Server>>>>,
}

impl SilaInstrument {
    /// Reads the pinned certificate; connects to nothing yet.
    pub fn new(config: &SilaConfig) -> Result<SilaInstrument, Error> {
        let read = |what: &str, path: &std::path::Path| {
            std::fs::read_to_string(path).map_err(|e| {
                Error::Mapping(format!(
                    "instrument {}: reading {what} {}: {e}",
                    config.name,
                    path.display()
                ))
            })
        };
        let unusable = |what: &str, path: &std::path::Path, e: crate::tls::Error| {
            Error::Mapping(format!(
                "instrument {}: {what} {}: {e}",
                config.name,
                path.display()
            ))
        };
        let tls = match (&config.pinned_certificate, &config.ca_certificate) {
            (Some(path), _) => Some(
                crate::tls::pinned_certificate_config(&read("pinned_certificate", path)?)
                    .map_err(|e| unusable("pinned_certificate", path, e))?,
            ),
            (None, Some(path)) => Some(
                crate::tls::pinned_ca_config(&read("ca_certificate", path)?)
                    .map_err(|e| unusable("ca_certificate", path, e))?,
            ),
            (None, None) if config.insecure => None,
            (None, None) => {
                return Err(Error::Mapping(format!(
                    "instrument {}: no pinned_certificate or ca_certificate, and not insecure",
                    config.name
                )))
            }
        };
        Ok(SilaInstrument {
            config: config.clone(),
            tls,
            connected: Arc::new(tokio::sync::Mutex::new(None)),
        })
    }

    fn timeout(&self) -> Duration {
        Duration::from_millis(self.config.timeout_ms)
    }

    /// The connected server, connecting (and checking its features) if needed.
    pub async fn server(&self) -> Result<Arc<Server>, Error> {
        let mut connected = self.connected.lock().await;
        if let Some(server) = connected.as_ref() {
            return Ok(server.clone());
        }
        let server = Arc::new(bounded(self.timeout(), self.connect()).await?);
        tracing::info!(instrument = %self.config.name, server = %server.name, uuid = %server.uuid,
            "connected to the SiLA 2 server");
        *connected = Some(server.clone());
        Ok(server)
    }

    /// Drops the connection after an error that may have broken it.
    async fn forget_if_broken(&self, error: &Error) {
        if error.is_transient() || matches!(error, Error::Unconfirmed(_)) {
            *self.connected.lock().await = None;
        }
    }

    async fn connect(&self) -> Result<Server, Error> {
        let address = &self.config.address;
        let channel = match &self.tls {
            Some(tls) => crate::tls::connect(
                crate::tls::Peer::Instrument,
                &format!("https://{address}"),
                self.config.server_name.as_deref(),
                tls.clone(),
                self.timeout(),
            )
            .await
            .map_err(|e| match e {
                untrusted @ crate::tls::Error::Untrusted { .. } => {
                    Error::Untrusted(untrusted.to_string())
                }
                other => Error::Connection(format!("{address}: {}", error_chain(&other))),
            })?,
            None => tonic::transport::Endpoint::from_shared(format!("http://{address}"))
                .map_err(|e| Error::Mapping(format!("address {address}: {e}")))?
                .connect_timeout(self.timeout())
                .http2_keep_alive_interval(Duration::from_secs(20))
                .keep_alive_timeout(Duration::from_secs(10))
                .keep_alive_while_idle(true)
                .connect()
                .await
                .map_err(|e| Error::Connection(format!("{address}: {}", error_chain(&e))))?,
        };
        let mut server = Server {
            channel,
            name: String::new(),
            uuid: String::new(),
            implemented_features: Vec::new(),
            features: Vec::new(),
        };
        server.name = server.service_property("ServerName").await?.concat();
        server.uuid = server.service_property("ServerUUID").await?.concat();
        if let Some(expected) = &self.config.server_uuid {
            if !server.uuid.eq_ignore_ascii_case(expected) {
                return Err(Error::Mapping(format!(
                    "the SiLA server at {address} is {} ({}), not the configured server {expected}",
                    server.name, server.uuid
                )));
            }
        }
        server.implemented_features = server.service_property("ImplementedFeatures").await?;
        for expected in &self.config.features {
            if !server.implemented_features.contains(expected) {
                return Err(Error::Mapping(format!(
                    "SiLA server {} ({}) at {address} does not implement feature {expected}; it implements {}",
                    server.name,
                    server.uuid,
                    server.implemented_features.join(", ")
                )));
            }
            let fdl = server.feature_definition(expected).await?;
            server.features.push(Feature::from_fdl(&fdl)?);
        }
        Ok(server)
    }

    async fn with_server<T, F, Fut>(&self, call: F) -> Result<T, Error>
    where
        F: FnOnce(Arc<Server>) -> Fut,
        Fut: std::future::Future<Output = Result<T, Error>>,
    {
        let server = self.server().await?;
        let result = call(server).await;
        if let Err(e) = &result {
            self.forget_if_broken(e).await;
        }
        result
    }

    /// Follows an observable command's execution: status and progress from `X_Info`,
    /// intermediate responses from `X_Intermediate`, then the result from `X_Result`.
    async fn follow(
        &self,
        server: Arc<Server>,
        command_name: &str,
        uuid: &str,
    ) -> Result<Execution, Error> {
        let (feature, command) = server.command(command_name)?;
        if !command.observable {
            return Err(Error::Mapping(format!(
                "command {} is not observable: it has no execution to attach to",
                command.identifier
            )));
        }
        let base = format!("{}/{}", feature.service, command.identifier);
        let id = pb::CommandExecutionUuid {
            value: uuid.to_owned(),
        }
        .encode_to_vec();
        let with_intermediates = !command.intermediate_responses.is_empty();
        let intermediates = command.intermediate_responses.clone();
        let responses = command.responses.clone();
        let timeout = self.timeout();
        let (tx, rx) = tokio::sync::mpsc::channel(16);
        let server = server.clone();
        let connected = self.connected.clone();
        // Reports an error of the execution's streams, dropping a connection it broke
        // so that the next call connects again.
        let fail = move |tx: tokio::sync::mpsc::Sender<Result<Update, Error>>,
                         server: Arc<Server>,
                         e: Error| async move {
            if e.is_transient() {
                let mut connected = connected.lock().await;
                if connected.as_ref().is_some_and(|c| Arc::ptr_eq(c, &server)) {
                    *connected = None;
                }
            }
            let _ = tx.send(Err(e)).await;
        };
        tokio::spawn(async move {
            // Opened here, not before returning: a server sends a stream's first
            // message (and with it the response headers) when it has something to
            // say, and a slow measurement's first intermediate response can come
            // long after any connect timeout. A dead server is found by the
            // channel's HTTP/2 keep-alive pings instead.
            let mut info = match server
                .server_stream(&format!("{base}_Info"), id.clone())
                .await
            {
                Ok(stream) => stream,
                Err(e) => return fail(tx, server, e).await,
            };
            let mut intermediate = if with_intermediates {
                let opened = server
                    .server_stream(&format!("{base}_Intermediate"), id.clone())
                    .await;
                match opened {
                    Ok(stream) => Some(stream),
                    Err(e) => return fail(tx, server, e).await,
                }
            } else {
                None
            };
            let finished = loop {
                tokio::select! {
                    _ = tx.closed() => return,
                    message = info.message() => match message {
                        Ok(Some(bytes)) => {
                            let update = match pb::ExecutionInfo::decode(bytes.as_slice()) {
                                Ok(info) => info,
                                Err(e) => {
                                    let _ = tx.send(Err(Error::Mapping(format!("malformed ExecutionInfo: {e}")))).await;
                                    return;
                                }
                            };
                            let status = match update.command_status() {
                                pb::execution_info::CommandStatus::Waiting => Status::Waiting,
                                pb::execution_info::CommandStatus::Running => Status::Running,
                                pb::execution_info::CommandStatus::FinishedSuccessfully => Status::FinishedSuccessfully,
                                pb::execution_info::CommandStatus::FinishedWithError => Status::FinishedWithError,
                            };
                            let sent = tx.send(Ok(Update::Status {
                                status,
                                progress: update.progress_info.map(|p| p.value),
                                remaining: update.estimated_remaining_time.map(|d| {
                                    Duration::new(d.seconds.max(0) as u64, d.nanos.max(0) as u32)
                                }),
                            })).await;
                            if sent.is_err() {
                                return;
                            }
                            if matches!(status, Status::FinishedSuccessfully | Status::FinishedWithError) {
                                break true;
                            }
                        }
                        // The stream ended without a final status: ask for the result anyway.
                        Ok(None) => break false,
                        Err(status) => return fail(tx, server, error_from_status(&status)).await,
                    },
                    message = next_message(&mut intermediate), if intermediate.is_some() => match message {
                        Some(bytes) => match decode_message(&bytes, &intermediates) {
                            Ok(values) => {
                                if tx.send(Ok(Update::Intermediate(values))).await.is_err() {
                                    return;
                                }
                            }
                            Err(e) => tracing::warn!(error = %e, "undecodable intermediate response"),
                        },
                        None => intermediate = None,
                    },
                }
            };
            tracing::debug!(finished, "execution info ended; asking for the result");
            let result = bounded(timeout, server.unary(&format!("{base}_Result"), id))
                .await
                .and_then(|bytes| decode_message(&bytes, &responses));
            match result {
                Ok(values) => {
                    let _ = tx.send(Ok(Update::Finished(values))).await;
                }
                Err(e) => fail(tx, server, e).await,
            }
        });
        Ok(Execution {
            id: uuid.to_owned(),
            reattachable: true,
            updates: Box::pin(tokio_stream::wrappers::ReceiverStream::new(rx)),
        })
    }
}

async fn next_message(stream: &mut Option<tonic::Streaming<Vec<u8>>>) -> Option<Vec<u8>> {
    match stream {
        Some(stream) => stream.message().await.ok().flatten(),
        None => std::future::pending().await,
    }
}

/// A property and the path to an element inside its structure:
/// `CellCount.Viability` (or `<feature>/Property/CellCount.Viability`) is the
/// element `Viability` of the property `CellCount`.
fn field_path(source: &str) -> (&str, Vec<&str>) {
    let tail = source.rfind('/').map_or(0, |i| i + 1);
    match source[tail..].find('.') {
        Some(dot) => (
            &source[..tail + dot],
            source[tail + dot + 1..].split('.').collect(),
        ),
        None => (source, Vec::new()),
    }
}

/// The element at `path` of a property's value.
fn element_at(value: Value, property: &str, path: &[&str]) -> Result<Value, Error> {
    value.at(path).cloned().ok_or_else(|| {
        Error::Mapping(format!(
            "property {property} has no element {} (its value is {value})",
            path.join(".")
        ))
    })
}

/// An error with its sources, which is where TLS says what it refused.
fn error_chain(error: &dyn std::error::Error) -> String {
    let mut text = error.to_string();
    let mut source = error.source();
    while let Some(e) = source {
        text.push_str(": ");
        text.push_str(&e.to_string());
        source = e.source();
    }
    text
}

impl Instrument for SilaInstrument {
    fn id(&self) -> &str {
        &self.config.name
    }

    fn connect(&self) -> BoxFuture<'_, Result<(), Error>> {
        Box::pin(async move { self.server().await.map(drop) })
    }

    fn start<'a>(&'a self, request: &'a StepRequest) -> BoxFuture<'a, Result<Execution, Error>> {
        Box::pin(async move {
            let server = self.server().await?;
            let (feature, command) = server.command(&request.command)?;
            let body = encode_message(&command.parameters, &request.parameters)?;
            let path = format!("{}/{}", feature.service, command.identifier);
            let answer = bounded(self.timeout(), server.unary(&path, body)).await;
            if let Err(e) = &answer {
                self.forget_if_broken(e).await;
            }
            // Sent: from here a lost answer means the command may be running.
            let answer = answer.map_err(Error::after_sending)?;
            if !command.observable {
                let values = decode_message(&answer, &command.responses)?;
                return Ok(Execution {
                    id: String::new(),
                    reattachable: false,
                    updates: Box::pin(futures_util::stream::iter([Ok(Update::Finished(values))])),
                });
            }
            let confirmation = pb::CommandConfirmation::decode(answer.as_slice())
                .map_err(|e| Error::Mapping(format!("malformed CommandConfirmation: {e}")))?;
            let uuid = confirmation
                .command_execution_uuid
                .map(|u| u.value)
                .filter(|u| !u.is_empty())
                .ok_or_else(|| Error::Mapping("CommandConfirmation without a UUID".into()))?;
            tracing::info!(instrument = %self.config.name, command = %command.identifier, execution = %uuid,
                "SiLA command accepted");
            self.follow(server.clone(), &request.command, &uuid).await
        })
    }

    fn attach<'a>(
        &'a self,
        request: &'a StepRequest,
        execution_id: &'a str,
    ) -> BoxFuture<'a, Result<Execution, Error>> {
        Box::pin(async move {
            self.with_server(|server| self.follow(server, &request.command, execution_id))
                .await
        })
    }

    /// SiLA 2 cancels through the core feature CancelController, which servers
    /// implement optionally.
    fn cancel<'a>(&'a self, execution_id: &'a str) -> BoxFuture<'a, Result<(), Error>> {
        const CANCEL: &str = "org.silastandard/core.commands/CancelController/v1";
        Box::pin(async move {
            self.with_server(|server| async move {
                if !server.implemented_features.iter().any(|f| f == CANCEL) {
                    return Err(Error::Mapping(format!(
                        "SiLA server {} does not implement {CANCEL}: its commands cannot be cancelled",
                        server.name
                    )));
                }
                // CancelCommand(CommandExecutionUUID: the UUID data type, a structure
                // holding one String).
                let mut uuid = Vec::new();
                put_field(
                    &mut uuid,
                    1,
                    &pb::String {
                        value: execution_id.to_owned(),
                    }
                    .encode_to_vec(),
                );
                let mut body = Vec::new();
                put_field(&mut body, 1, &uuid);
                bounded(
                    self.timeout(),
                    server.unary(
                        "/sila2.org.silastandard.core.commands.cancelcontroller.v1.CancelController/CancelCommand",
                        body,
                    ),
                )
                .await
                .map(|_| ())
            })
            .await
        })
    }

    fn read<'a>(&'a self, source: &'a str) -> BoxFuture<'a, Result<Value, Error>> {
        Box::pin(async move {
            self.with_server(|server| async move {
                let (name, path) = field_path(source);
                let (feature, property) = server.property(name)?;
                let id = &property.element.identifier;
                let bytes = if property.observable {
                    // An observable property has only Subscribe_P: its first message is the value now.
                    let mut stream = bounded(
                        self.timeout(),
                        server.server_stream(
                            &format!("{}/Subscribe_{id}", feature.service),
                            Vec::new(),
                        ),
                    )
                    .await?;
                    bounded(self.timeout(), async {
                        stream
                            .message()
                            .await
                            .map_err(|s| error_from_status(&s))?
                            .ok_or_else(|| {
                                Error::Connection(format!("Subscribe_{id} ended without a value"))
                            })
                    })
                    .await?
                } else {
                    bounded(
                        self.timeout(),
                        server.unary(&format!("{}/Get_{id}", feature.service), Vec::new()),
                    )
                    .await?
                };
                element_at(property_value(&bytes, &property.element)?, id, &path)
            })
            .await
        })
    }

    fn subscribe<'a>(&'a self, source: &'a str) -> BoxFuture<'a, Result<BoxStream<Value>, Error>> {
        Box::pin(async move {
            self.with_server(|server| async move {
                let (name, path) = field_path(source);
                let path: Vec<String> = path.into_iter().map(str::to_owned).collect();
                let (feature, property) = server.property(name)?;
                if !property.observable {
                    return Err(Error::Mapping(format!(
                        "property {} is not observable: read it instead",
                        property.element.identifier
                    )));
                }
                let element = property.element.clone();
                let stream = bounded(
                    self.timeout(),
                    server.server_stream(
                        &format!("{}/Subscribe_{}", feature.service, element.identifier),
                        Vec::new(),
                    ),
                )
                .await?;
                let values = futures_util::StreamExt::map(stream, move |message| {
                    message
                        .map_err(|s| error_from_status(&s))
                        .and_then(|bytes| property_value(&bytes, &element))
                        .and_then(|value| {
                            let path: Vec<&str> = path.iter().map(String::as_str).collect();
                            element_at(value, &element.identifier, &path)
                        })
                });
                Ok(Box::pin(values) as BoxStream<Value>)
            })
            .await
        })
    }
}
