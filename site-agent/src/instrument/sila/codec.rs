//! The wire codec: SiLA messages encoded and decoded as protobuf from the layout
//! the feature definition gives (field N is the Nth element, each a SiLA basic type
//! wrapped in its framework message), and SiLA errors read from gRPC statuses.

use super::fdl::{DataType, Element};
use super::pb;
use crate::instrument::{Error, Value, Values};
use base64::Engine;
use bytes::{Buf, BufMut};
use prost::Message;
use tonic::codec::{Codec, DecodeBuf, Decoder, EncodeBuf, Encoder};

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
pub(super) fn encode_message(elements: &[Element], values: &Values) -> Result<Vec<u8>, Error> {
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

pub(super) fn put_field(out: &mut Vec<u8>, number: usize, bytes: &[u8]) {
    prost::encoding::encode_key(
        number as u32,
        prost::encoding::WireType::LengthDelimited,
        out,
    );
    prost::encoding::encode_varint(bytes.len() as u64, out);
    out.put_slice(bytes);
}

/// The length-delimited fields of a message, in order, by number.
pub(super) fn fields(mut bytes: &[u8]) -> Result<Vec<(u32, Vec<u8>)>, Error> {
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
pub(super) fn decode_message(bytes: &[u8], elements: &[Element]) -> Result<Values, Error> {
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
pub(super) struct RawCodec;

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

pub(super) fn property_value(bytes: &[u8], element: &Element) -> Result<Value, Error> {
    decode_message(bytes, std::slice::from_ref(element))?
        .remove(&element.identifier)
        .ok_or_else(|| Error::Mapping(format!("property {} has no value", element.identifier)))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::instrument::sila::Feature;

    const FDL: &str = include_str!("../../../../tests/peers/sila/CellExpansionController.sila.xml");

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
