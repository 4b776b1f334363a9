//! The SiLA 2 adapter: drives a SiLA 2 server (gRPC over HTTP/2) through the features
//! the site maps, without code generated for any particular feature.
//!
//! On connecting it reads the server's SiLAService (name, UUID, implemented features),
//! checks that the features the site expects are implemented, and fetches their
//! feature definitions (FDL XML) from the server itself. The FDL says how a command's
//! parameters and responses are laid out on the wire (field N is the Nth parameter, each
//! a SiLA basic type wrapped in its framework message), so parameters are encoded and
//! responses decoded from it at run time.
//!
//! - Observable command `X`: `X` returns a command execution UUID (recorded by the
//!   executor before it waits); `X_Info` streams status and progress;
//!   `X_Intermediate` streams intermediate responses; `X_Result` gives the responses
//!   or the error. Unobservable command: `X` returns the responses.
//! - Property `P`: `Get_P` (unobservable) or `Subscribe_P` (observable).
//! - Errors: gRPC `ABORTED` with a base64-encoded `SiLAError` in the message, decoded
//!   into [`Error::Validation`], [`Error::DefinedExecution`],
//!   [`Error::UndefinedExecution`] or [`Error::Framework`].
//! - TLS with the server's certificate pinned exactly; plain HTTP/2 only when the site
//!   configures `insecure = true`.
//!
//! Supported data types: the basic types String, Integer, Real and Boolean, constrained
//! or in lists. Structures, custom data types, binaries, dates and SiLA client metadata
//! are not (a mapping that needs them is refused with a clear error).

use super::{bounded, BoxFuture, BoxStream, Error, Execution, Instrument, Status, StepRequest};
use super::{Update, Value, Values};
use crate::config::SilaConfig;
use base64::Engine;
use bytes::{Buf, BufMut};
use prost::Message;
use std::collections::BTreeMap;
use std::str::FromStr;
use std::sync::Arc;
use std::time::Duration;
use tonic::codec::{Codec, DecodeBuf, Decoder, EncodeBuf, Encoder};
use tonic::transport::Channel;

/// The SiLA 2 framework messages (`SiLAFramework.proto`).
#[allow(clippy::doc_lazy_continuation, clippy::enum_variant_names)]
pub mod pb {
    tonic::include_proto!("sila2.org.silastandard");
}

const SILA_SERVICE: &str = "/sila2.org.silastandard.core.silaservice.v1.SiLAService";

/// A SiLA basic type, as the FDL names it.
#[derive(Debug, Clone, PartialEq)]
pub enum DataType {
    String,
    Integer,
    Real,
    Boolean,
    List(Box<DataType>),
    /// A type this adapter does not handle, by its FDL name.
    Unsupported(String),
}

/// A parameter, response, intermediate response or property: identifier and type.
#[derive(Debug, Clone, PartialEq)]
pub struct Element {
    pub identifier: String,
    pub data_type: DataType,
}

#[derive(Debug, Clone, PartialEq)]
pub struct Command {
    pub identifier: String,
    pub observable: bool,
    pub parameters: Vec<Element>,
    pub responses: Vec<Element>,
    pub intermediate_responses: Vec<Element>,
}

#[derive(Debug, Clone, PartialEq)]
pub struct Property {
    pub element: Element,
    pub observable: bool,
}

/// What the adapter needs of a feature definition.
#[derive(Debug, Clone, PartialEq)]
pub struct Feature {
    /// Fully qualified identifier, e.g. `org.carrel/bioprocess/CellExpansionController/v1`.
    pub fully_qualified: String,
    /// gRPC service path, e.g. `/sila2.org.carrel.bioprocess.cellexpansioncontroller.v1.CellExpansionController`.
    pub service: String,
    pub commands: BTreeMap<String, Command>,
    pub properties: BTreeMap<String, Property>,
}

impl Feature {
    /// Parses a feature definition (FDL XML).
    pub fn from_fdl(xml: &str) -> Result<Feature, Error> {
        let bad = |what: &str| Error::Mapping(format!("feature definition: {what}"));
        let doc =
            roxmltree::Document::parse(xml).map_err(|e| bad(&format!("not valid XML: {e}")))?;
        let root = doc.root_element();
        if root.tag_name().name() != "Feature" {
            return Err(bad("the root element is not <Feature>"));
        }
        let originator = root
            .attribute("Originator")
            .ok_or_else(|| bad("no Originator"))?;
        let category = root.attribute("Category").unwrap_or("none");
        let major = root
            .attribute("FeatureVersion")
            .and_then(|v| v.split('.').next())
            .ok_or_else(|| bad("no FeatureVersion"))?;
        let identifier = text_of(root, "Identifier").ok_or_else(|| bad("no Identifier"))?;
        let package = format!(
            "sila2.{originator}.{category}.{}.v{major}",
            identifier.to_ascii_lowercase()
        );
        let mut feature = Feature {
            fully_qualified: format!("{originator}/{category}/{identifier}/v{major}"),
            service: format!("/{package}.{identifier}"),
            commands: BTreeMap::new(),
            properties: BTreeMap::new(),
        };
        for node in root.children().filter(|n| n.is_element()) {
            match node.tag_name().name() {
                "Command" => {
                    let command = Command {
                        identifier: text_of(node, "Identifier")
                            .ok_or_else(|| bad("a command without Identifier"))?,
                        observable: text_of(node, "Observable").as_deref() == Some("Yes"),
                        parameters: elements(node, "Parameter")?,
                        responses: elements(node, "Response")?,
                        intermediate_responses: elements(node, "IntermediateResponse")?,
                    };
                    feature.commands.insert(command.identifier.clone(), command);
                }
                "Property" => {
                    let property = Property {
                        element: element(node)?,
                        observable: text_of(node, "Observable").as_deref() == Some("Yes"),
                    };
                    feature
                        .properties
                        .insert(property.element.identifier.clone(), property);
                }
                _ => {}
            }
        }
        Ok(feature)
    }
}

fn child<'a, 'i>(node: roxmltree::Node<'a, 'i>, name: &str) -> Option<roxmltree::Node<'a, 'i>> {
    node.children()
        .find(|n| n.is_element() && n.tag_name().name() == name)
}

fn text_of(node: roxmltree::Node<'_, '_>, name: &str) -> Option<String> {
    child(node, name)
        .and_then(|n| n.text())
        .map(|t| t.trim().to_owned())
}

fn elements(node: roxmltree::Node<'_, '_>, name: &str) -> Result<Vec<Element>, Error> {
    node.children()
        .filter(|n| n.is_element() && n.tag_name().name() == name)
        .map(element)
        .collect()
}

fn element(node: roxmltree::Node<'_, '_>) -> Result<Element, Error> {
    let identifier = text_of(node, "Identifier").ok_or_else(|| {
        Error::Mapping("feature definition: an element without Identifier".into())
    })?;
    let data_type = child(node, "DataType")
        .map(data_type)
        .unwrap_or(DataType::Unsupported("none".into()));
    Ok(Element {
        identifier,
        data_type,
    })
}

fn data_type(node: roxmltree::Node<'_, '_>) -> DataType {
    let Some(inner) = node.children().find(|n| n.is_element()) else {
        return DataType::Unsupported("empty".into());
    };
    match inner.tag_name().name() {
        "Basic" => match inner.text().map(str::trim) {
            Some("String") => DataType::String,
            Some("Integer") => DataType::Integer,
            Some("Real") => DataType::Real,
            Some("Boolean") => DataType::Boolean,
            other => DataType::Unsupported(other.unwrap_or("Basic").to_owned()),
        },
        "Constrained" => child(inner, "DataType")
            .map(data_type)
            .unwrap_or(DataType::Unsupported("Constrained".into())),
        "List" => DataType::List(Box::new(
            child(inner, "DataType")
                .map(data_type)
                .unwrap_or(DataType::Unsupported("List".into())),
        )),
        other => DataType::Unsupported(other.to_owned()),
    }
}

/// Encodes one value as the SiLA framework message of its type.
fn encode_value(identifier: &str, value: &Value, data_type: &DataType) -> Result<Vec<u8>, Error> {
    let mismatch = || {
        Error::Mapping(format!(
            "parameter {identifier}: {value} does not fit the instrument's type {data_type:?}"
        ))
    };
    Ok(match (data_type, value) {
        (DataType::Real, Value::Real(v)) => pb::Real { value: *v }.encode_to_vec(),
        (DataType::Real, Value::Integer(v)) => pb::Real { value: *v as f64 }.encode_to_vec(),
        (DataType::Integer, Value::Integer(v)) => pb::Integer { value: *v }.encode_to_vec(),
        (DataType::Boolean, Value::Boolean(v)) => pb::Boolean { value: *v }.encode_to_vec(),
        (DataType::String, Value::String(v)) => pb::String { value: v.clone() }.encode_to_vec(),
        (DataType::Unsupported(name), _) => {
            return Err(Error::Mapping(format!(
                "parameter {identifier}: SiLA type {name} is not supported by this adapter"
            )))
        }
        _ => return Err(mismatch()),
    })
}

/// Encodes a parameters message: field N holds the Nth element, wrapped.
fn encode_message(elements: &[Element], values: &Values) -> Result<Vec<u8>, Error> {
    if let Some(unknown) = values
        .keys()
        .find(|k| !elements.iter().any(|e| e.identifier == **k))
    {
        return Err(Error::Mapping(format!(
            "parameter {unknown} is not a parameter of the command (it has: {})",
            elements
                .iter()
                .map(|e| e.identifier.as_str())
                .collect::<Vec<_>>()
                .join(", ")
        )));
    }
    let mut out = Vec::new();
    for (index, element) in elements.iter().enumerate() {
        let value = values.get(&element.identifier).ok_or_else(|| {
            Error::Mapping(format!(
                "parameter {} of the command is not mapped",
                element.identifier
            ))
        })?;
        let inner = match (&element.data_type, value) {
            (DataType::List(item), Value::List(items)) => {
                for item_value in items {
                    let bytes = encode_value(&element.identifier, item_value, item)?;
                    put_field(&mut out, index + 1, &bytes);
                }
                continue;
            }
            (data_type, value) => encode_value(&element.identifier, value, data_type)?,
        };
        put_field(&mut out, index + 1, &inner);
    }
    Ok(out)
}

fn put_field(out: &mut Vec<u8>, number: usize, bytes: &[u8]) {
    prost::encoding::encode_key(
        number as u32,
        prost::encoding::WireType::LengthDelimited,
        out,
    );
    prost::encoding::encode_varint(bytes.len() as u64, out);
    out.put_slice(bytes);
}

/// The length-delimited fields of a message, in order, by number.
fn fields(mut bytes: &[u8]) -> Result<Vec<(u32, Vec<u8>)>, Error> {
    let malformed = |e: prost::DecodeError| Error::Mapping(format!("malformed SiLA message: {e}"));
    let mut out = Vec::new();
    while bytes.has_remaining() {
        let (number, wire_type) = prost::encoding::decode_key(&mut bytes).map_err(malformed)?;
        if wire_type == prost::encoding::WireType::LengthDelimited {
            let len = prost::encoding::decode_varint(&mut bytes).map_err(malformed)? as usize;
            if len > bytes.remaining() {
                return Err(Error::Mapping(
                    "malformed SiLA message: truncated field".into(),
                ));
            }
            out.push((number, bytes[..len].to_vec()));
            bytes.advance(len);
        } else {
            prost::encoding::skip_field(
                wire_type,
                number,
                &mut bytes,
                prost::encoding::DecodeContext::default(),
            )
            .map_err(malformed)?;
        }
    }
    Ok(out)
}

fn decode_value(bytes: &[u8], data_type: &DataType) -> Result<Value, Error> {
    let malformed = |e: prost::DecodeError| Error::Mapping(format!("malformed SiLA value: {e}"));
    Ok(match data_type {
        DataType::Real => Value::Real(pb::Real::decode(bytes).map_err(malformed)?.value),
        DataType::Integer => Value::Integer(pb::Integer::decode(bytes).map_err(malformed)?.value),
        DataType::Boolean => Value::Boolean(pb::Boolean::decode(bytes).map_err(malformed)?.value),
        DataType::String => Value::String(pb::String::decode(bytes).map_err(malformed)?.value),
        DataType::List(item) => Value::List(vec![decode_value(bytes, item)?]),
        DataType::Unsupported(name) => {
            return Err(Error::Mapping(format!(
                "SiLA type {name} is not supported by this adapter"
            )))
        }
    })
}

/// Decodes a responses message: field N is the Nth element.
fn decode_message(bytes: &[u8], elements: &[Element]) -> Result<Values, Error> {
    let mut values = Values::new();
    for (number, field) in fields(bytes)? {
        let Some(element) = elements.get(number as usize - 1) else {
            continue;
        };
        let value = decode_value(&field, &element.data_type)?;
        match (values.get_mut(&element.identifier), value) {
            (Some(Value::List(items)), Value::List(more)) => items.extend(more),
            (_, value) => {
                values.insert(element.identifier.clone(), value);
            }
        }
    }
    // A list with no item is absent on the wire.
    for element in elements {
        if matches!(element.data_type, DataType::List(_)) {
            values
                .entry(element.identifier.clone())
                .or_insert(Value::List(Vec::new()));
        }
    }
    Ok(values)
}

/// A SiLA error from a gRPC status, else the status in domain terms.
pub fn error_from_status(status: &tonic::Status) -> Error {
    use pb::si_la_error::Error as E;
    if status.code() == tonic::Code::Aborted {
        let decoded = base64::engine::general_purpose::STANDARD
            .decode(status.message().trim())
            .ok()
            .and_then(|bytes| pb::SiLaError::decode(bytes.as_slice()).ok())
            .and_then(|e| e.error);
        match decoded {
            Some(E::ValidationError(e)) => {
                return Error::Validation {
                    parameter: e.parameter,
                    message: e.message,
                }
            }
            Some(E::DefinedExecutionError(e)) => {
                return Error::DefinedExecution {
                    identifier: e.error_identifier,
                    message: e.message,
                }
            }
            Some(E::UndefinedExecutionError(e)) => return Error::UndefinedExecution(e.message),
            Some(E::FrameworkError(e)) => {
                let kind = pb::framework_error::ErrorType::try_from(e.error_type)
                    .map(|t| t.as_str_name().to_owned())
                    .unwrap_or_else(|_| format!("error type {}", e.error_type));
                return Error::Framework {
                    kind,
                    message: e.message,
                };
            }
            None => {}
        }
    }
    match status.code() {
        tonic::Code::Unimplemented => Error::Mapping(format!(
            "the server does not implement this call: {}",
            status.message()
        )),
        tonic::Code::DeadlineExceeded => {
            Error::Connection(format!("deadline exceeded: {}", status.message()))
        }
        code => Error::Connection(format!("{code:?}: {}", status.message())),
    }
}

/// Passes protobuf bytes through unchanged: messages are encoded from the FDL here.
#[derive(Debug, Clone, Copy, Default)]
struct RawCodec;

impl Codec for RawCodec {
    type Encode = Vec<u8>;
    type Decode = Vec<u8>;
    type Encoder = RawCodec;
    type Decoder = RawCodec;

    fn encoder(&mut self) -> RawCodec {
        RawCodec
    }

    fn decoder(&mut self) -> RawCodec {
        RawCodec
    }
}

impl Encoder for RawCodec {
    type Item = Vec<u8>;
    type Error = tonic::Status;

    fn encode(&mut self, item: Vec<u8>, dst: &mut EncodeBuf<'_>) -> Result<(), tonic::Status> {
        dst.put_slice(&item);
        Ok(())
    }
}

impl Decoder for RawCodec {
    type Item = Vec<u8>;
    type Error = tonic::Status;

    fn decode(&mut self, src: &mut DecodeBuf<'_>) -> Result<Option<Vec<u8>>, tonic::Status> {
        let len = src.remaining();
        Ok(Some(src.copy_to_bytes(len).to_vec()))
    }
}

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
    connected: tokio::sync::Mutex<Option<Arc<Server>>>,
}

impl SilaInstrument {
    /// Reads the pinned certificate; connects to nothing yet.
    pub fn new(config: &SilaConfig) -> Result<SilaInstrument, Error> {
        let tls = match (&config.pinned_certificate, config.insecure) {
            (Some(path), _) => {
                let pem = std::fs::read_to_string(path).map_err(|e| {
                    Error::Mapping(format!(
                        "instrument {}: reading pinned_certificate {}: {e}",
                        config.name,
                        path.display()
                    ))
                })?;
                Some(crate::tls::pinned_certificate_config(&pem).map_err(|e| {
                    Error::Mapping(format!(
                        "instrument {}: pinned_certificate {}: {e}",
                        config.name,
                        path.display()
                    ))
                })?)
            }
            (None, true) => None,
            (None, false) => {
                return Err(Error::Mapping(format!(
                    "instrument {}: no pinned_certificate and not insecure",
                    config.name
                )))
            }
        };
        Ok(SilaInstrument {
            config: config.clone(),
            tls,
            connected: tokio::sync::Mutex::new(None),
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
        if error.is_transient() {
            *self.connected.lock().await = None;
        }
    }

    async fn connect(&self) -> Result<Server, Error> {
        let address = &self.config.address;
        let channel = match &self.tls {
            Some(tls) => {
                crate::tls::connect(&format!("https://{address}"), tls.clone(), self.timeout())
                    .await
                    .map_err(|e| Error::Connection(format!("{address}: {}", error_chain(&e))))?
            }
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
        let mut info = bounded(
            self.timeout(),
            server.server_stream(&format!("{base}_Info"), id.clone()),
        )
        .await?;
        let mut intermediate = if command.intermediate_responses.is_empty() {
            None
        } else {
            Some(
                bounded(
                    self.timeout(),
                    server.server_stream(&format!("{base}_Intermediate"), id.clone()),
                )
                .await?,
            )
        };
        let intermediates = command.intermediate_responses.clone();
        let responses = command.responses.clone();
        let timeout = self.timeout();
        let (tx, rx) = tokio::sync::mpsc::channel(16);
        let server = server.clone();
        tokio::spawn(async move {
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
                        Err(status) => {
                            let _ = tx.send(Err(error_from_status(&status))).await;
                            return;
                        }
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
            let _ = tx.send(result.map(Update::Finished)).await;
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
            let answer = answer?;
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
                let (feature, property) = server.property(source)?;
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
                property_value(&bytes, &property.element)
            })
            .await
        })
    }

    fn subscribe<'a>(&'a self, source: &'a str) -> BoxFuture<'a, Result<BoxStream<Value>, Error>> {
        Box::pin(async move {
            self.with_server(|server| async move {
                let (feature, property) = server.property(source)?;
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
                });
                Ok(Box::pin(values) as BoxStream<Value>)
            })
            .await
        })
    }
}

fn property_value(bytes: &[u8], element: &Element) -> Result<Value, Error> {
    decode_message(bytes, std::slice::from_ref(element))?
        .remove(&element.identifier)
        .ok_or_else(|| Error::Mapping(format!("property {} has no value", element.identifier)))
}

#[cfg(test)]
mod tests {
    use super::*;

    const FDL: &str = include_str!("../../../tests/peers/sila/CellExpansionController.sila.xml");

    #[test]
    fn feature_definition_gives_wire_layout() {
        let feature = Feature::from_fdl(FDL).expect("our FDL parses");
        assert_eq!(
            feature.fully_qualified,
            "org.carrel/bioprocess/CellExpansionController/v1"
        );
        assert_eq!(
            feature.service,
            "/sila2.org.carrel.bioprocess.cellexpansioncontroller.v1.CellExpansionController"
        );
        let run = &feature.commands["RunExpansion"];
        assert!(run.observable);
        let names: Vec<_> = run
            .parameters
            .iter()
            .map(|p| p.identifier.as_str())
            .collect();
        assert_eq!(names, ["DurationHours", "TargetDensity", "BatchId"]);
        assert_eq!(run.parameters[2].data_type, DataType::String);
        assert_eq!(run.intermediate_responses.len(), 2);
        assert!(!feature.commands["SetTemperatureSetpoint"].observable);
        assert!(feature.properties["CurrentTemperature"].observable);
        assert!(!feature.properties["TemperatureSetpoint"].observable);
    }

    #[test]
    fn parameters_encode_as_wrapped_fields_in_fdl_order() {
        let feature = Feature::from_fdl(FDL).expect("our FDL parses");
        let run = &feature.commands["RunExpansion"];
        let values = Values::from([
            ("DurationHours".to_owned(), Value::Integer(2)),
            ("TargetDensity".to_owned(), Value::Real(8.0)),
            ("BatchId".to_owned(), Value::String("B-1".into())),
        ]);
        let bytes = encode_message(&run.parameters, &values).expect("encodes");
        let decoded = decode_message(&bytes, &run.parameters).expect("decodes");
        assert_eq!(decoded["DurationHours"], Value::Real(2.0));
        assert_eq!(decoded["BatchId"], Value::String("B-1".into()));
        let mut missing = values.clone();
        missing.remove("BatchId");
        assert!(encode_message(&run.parameters, &missing)
            .expect_err("a missing parameter")
            .to_string()
            .contains("BatchId"));
        let mut wrong = values;
        wrong.insert("BatchId".into(), Value::Real(1.0));
        assert!(encode_message(&run.parameters, &wrong).is_err());
    }

    #[test]
    fn sila_errors_decode_from_aborted_statuses() {
        // As the peer sends a validation error (tests/peers/README.md).
        let message = "CqMBCm1vcmcuY2FycmVsL2Jpb3Byb2Nlc3MvQ2VsbEV4cGFuc2lvbkNvbnRyb2xsZXIvdjEvQ29tbWFuZC9TZXRUZW1wZXJhdHVyZVNldHBvaW50L1BhcmFtZXRlci9UZW1wZXJhdHVyZVNldHBvaW50EjJDb25zdHJhaW50IHZpb2xhdGVkOiBNYXhpbWFsSW5jbHVzaXZlKDQwLjApICg0NS4wKQ==";
        match error_from_status(&tonic::Status::aborted(message)) {
            Error::Validation { parameter, message } => {
                assert!(
                    parameter.ends_with("/Parameter/TemperatureSetpoint"),
                    "{parameter}"
                );
                assert!(message.contains("MaximalInclusive"), "{message}");
            }
            other => panic!("not a validation error: {other:?}"),
        }
        let framework = pb::SiLaError {
            error: Some(pb::si_la_error::Error::FrameworkError(pb::FrameworkError {
                error_type: 0,
                message: "not accepted".into(),
            })),
        };
        let encoded = base64::engine::general_purpose::STANDARD.encode(framework.encode_to_vec());
        assert_eq!(
            error_from_status(&tonic::Status::aborted(encoded)),
            Error::Framework {
                kind: "COMMAND_EXECUTION_NOT_ACCEPTED".into(),
                message: "not accepted".into()
            }
        );
        assert!(matches!(
            error_from_status(&tonic::Status::unavailable("gone")),
            Error::Connection(_)
        ));
    }
}
