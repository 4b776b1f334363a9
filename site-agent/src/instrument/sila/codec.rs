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
            "parameter {identifier}: {value} does not fit the instrument's type {}",
            data_type.name()
        ))
    };
    let time_text = |what: &str| match value {
        Value::String(text) => Ok(text.as_str()),
        _ => Err(Error::Mapping(format!(
            "parameter {identifier}: {value} is not a {what} (give it as text, for example {})",
            match what {
                "date" => "2026-12-05 or 2026-12-05+01:00",
                "time" => "14:30:00 or 14:30:00+01:00",
                _ => "2026-12-05T14:30:00Z",
            }
        ))),
    };
    let bad_time = |e: String| Error::Mapping(format!("parameter {identifier}: {e}"));
    Ok(match (data_type, value) {
        (DataType::Real, Value::Real(v)) => pb::Real { value: *v }.encode_to_vec(),
        (DataType::Real, Value::Integer(v)) => pb::Real { value: *v as f64 }.encode_to_vec(),
        (DataType::Integer, Value::Integer(v)) => pb::Integer { value: *v }.encode_to_vec(),
        (DataType::Boolean, Value::Boolean(v)) => pb::Boolean { value: *v }.encode_to_vec(),
        (DataType::String, Value::String(v)) => pb::String { value: v.clone() }.encode_to_vec(),
        (DataType::Date, _) => times::date(time_text("date")?)
            .map_err(bad_time)?
            .encode_to_vec(),
        (DataType::Time, _) => times::time(time_text("time")?)
            .map_err(bad_time)?
            .encode_to_vec(),
        (DataType::Timestamp, _) => times::timestamp(time_text("timestamp")?)
            .map_err(bad_time)?
            .encode_to_vec(),
        (DataType::Structure(elements), Value::Structure(values)) => {
            encode_fields(elements, values, &format!("structure {identifier}"))?
        }
        (DataType::Custom(_, inner), value) => {
            let mut out = Vec::new();
            put_field(&mut out, 1, &encode_value(identifier, value, inner)?);
            out
        }
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
    encode_fields(elements, values, "the command")
}

/// Encodes `values` as the fields `elements` lay out: a command's parameters, or the
/// elements of a structure (`whose` names which, for errors).
fn encode_fields(elements: &[Element], values: &Values, whose: &str) -> Result<Vec<u8>, Error> {
    if let Some(unknown) = values
        .keys()
        .find(|k| !elements.iter().any(|e| e.identifier == **k))
    {
        return Err(Error::Mapping(format!(
            "{unknown} is not a parameter of {whose} (it has: {})",
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
                "parameter {} of {whose} is not mapped",
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
    let invalid = |e: String| Error::Mapping(format!("the instrument sent {e}"));
    Ok(match data_type {
        DataType::Real => Value::Real(pb::Real::decode(bytes).map_err(malformed)?.value),
        DataType::Integer => Value::Integer(pb::Integer::decode(bytes).map_err(malformed)?.value),
        DataType::Boolean => Value::Boolean(pb::Boolean::decode(bytes).map_err(malformed)?.value),
        DataType::String => Value::String(pb::String::decode(bytes).map_err(malformed)?.value),
        DataType::Date => Value::String(
            times::date_text(&pb::Date::decode(bytes).map_err(malformed)?).map_err(invalid)?,
        ),
        DataType::Time => Value::String(
            times::time_text(&pb::Time::decode(bytes).map_err(malformed)?).map_err(invalid)?,
        ),
        DataType::Timestamp => Value::String(
            times::timestamp_text(&pb::Timestamp::decode(bytes).map_err(malformed)?)
                .map_err(invalid)?,
        ),
        DataType::List(item) => Value::List(vec![decode_value(bytes, item)?]),
        DataType::Structure(elements) => Value::Structure(decode_message(bytes, elements)?),
        DataType::Custom(name, inner) => {
            let fields = fields(bytes)?;
            let (_, field) = fields
                .iter()
                .find(|(number, _)| *number == 1)
                .ok_or_else(|| Error::Mapping(format!("the instrument sent an empty {name}")))?;
            decode_value(field, inner)?
        }
        DataType::Unsupported(name) => {
            return Err(Error::Mapping(format!(
                "SiLA type {name} is not supported by this adapter"
            )))
        }
    })
}

/// SiLA dates and times to and from the text the record keeps: ISO 8601 with the
/// UTC offset (`2026-12-05+01:00`, `14:30:00.250Z`, RFC 3339 timestamps).
mod times {
    use super::pb;
    use chrono::{FixedOffset, NaiveDate, NaiveTime, SecondsFormat, TimeZone, Timelike};

    /// The offset a SiLA timezone gives, in minutes (minutes add to the hours).
    fn offset_minutes(zone: Option<&pb::Timezone>) -> Result<i32, String> {
        let Some(zone) = zone else { return Ok(0) };
        if zone.minutes >= 60 {
            return Err(format!("a timezone with {} minutes", zone.minutes));
        }
        let minutes = zone.hours * 60 + zone.minutes as i32;
        if !(-14 * 60..=14 * 60).contains(&minutes) {
            return Err(format!("a UTC offset of {minutes} minutes"));
        }
        Ok(minutes)
    }

    fn zone(minutes: i32) -> pb::Timezone {
        pb::Timezone {
            hours: minutes.div_euclid(60),
            minutes: minutes.rem_euclid(60) as u32,
        }
    }

    fn offset_text(minutes: i32) -> String {
        if minutes == 0 {
            "Z".into()
        } else {
            let sign = if minutes < 0 { '-' } else { '+' };
            format!("{sign}{:02}:{:02}", minutes.abs() / 60, minutes.abs() % 60)
        }
    }

    /// Splits a trailing `Z` or `±hh:mm` off; none means UTC.
    fn split_offset(text: &str) -> Result<(&str, i32), String> {
        let text = text.trim();
        if let Some(body) = text.strip_suffix(['Z', 'z']) {
            return Ok((body, 0));
        }
        if text.len() > 6 {
            let (body, zone) = text.split_at(text.len() - 6);
            let bytes = zone.as_bytes();
            if (bytes[0] == b'+' || bytes[0] == b'-') && bytes[3] == b':' {
                let hours: i32 = zone[1..3]
                    .parse()
                    .map_err(|_| format!("{zone:?} is not a UTC offset"))?;
                let minutes: i32 = zone[4..6]
                    .parse()
                    .map_err(|_| format!("{zone:?} is not a UTC offset"))?;
                let total = hours * 60 + minutes;
                return Ok((body, if bytes[0] == b'-' { -total } else { total }));
            }
        }
        Ok((text, 0))
    }

    pub fn date(text: &str) -> Result<pb::Date, String> {
        let (body, offset) = split_offset(text)?;
        let date = NaiveDate::parse_from_str(body, "%Y-%m-%d").map_err(|_| {
            format!("{text:?} is not a date (year-month-day, for example 2026-12-05)")
        })?;
        Ok(pb::Date {
            day: chrono::Datelike::day(&date),
            month: chrono::Datelike::month(&date),
            year: u32::try_from(chrono::Datelike::year(&date))
                .map_err(|_| format!("{text:?} is before year 0"))?,
            timezone: Some(zone(offset)),
        })
    }

    pub fn time(text: &str) -> Result<pb::Time, String> {
        let (body, offset) = split_offset(text)?;
        let time = NaiveTime::parse_from_str(body, "%H:%M:%S%.f")
            .or_else(|_| NaiveTime::parse_from_str(body, "%H:%M"))
            .map_err(|_| format!("{text:?} is not a time of day (for example 14:30:00)"))?;
        Ok(pb::Time {
            second: time.second(),
            minute: time.minute(),
            hour: time.hour(),
            timezone: Some(zone(offset)),
            millisecond: time.nanosecond() / 1_000_000,
        })
    }

    pub fn timestamp(text: &str) -> Result<pb::Timestamp, String> {
        let at = chrono::DateTime::parse_from_rfc3339(text.trim()).map_err(|_| {
            format!("{text:?} is not a timestamp with its UTC offset (RFC 3339, for example 2026-12-05T14:30:00Z)")
        })?;
        let local = at.naive_local();
        Ok(pb::Timestamp {
            second: local.second(),
            minute: local.minute(),
            hour: local.hour(),
            day: chrono::Datelike::day(&local),
            month: chrono::Datelike::month(&local),
            year: u32::try_from(chrono::Datelike::year(&local))
                .map_err(|_| format!("{text:?} is before year 0"))?,
            timezone: Some(zone(at.offset().local_minus_utc() / 60)),
            millisecond: local.nanosecond() / 1_000_000,
        })
    }

    pub fn date_text(date: &pb::Date) -> Result<String, String> {
        let offset = offset_minutes(date.timezone.as_ref())?;
        let day =
            NaiveDate::from_ymd_opt(date.year as i32, date.month, date.day).ok_or_else(|| {
                format!(
                    "a date that does not exist ({}-{}-{})",
                    date.year, date.month, date.day
                )
            })?;
        Ok(format!("{}{}", day.format("%Y-%m-%d"), offset_text(offset)))
    }

    pub fn time_text(time: &pb::Time) -> Result<String, String> {
        let offset = offset_minutes(time.timezone.as_ref())?;
        let at =
            NaiveTime::from_hms_milli_opt(time.hour, time.minute, time.second, time.millisecond)
                .filter(|_| time.millisecond < 1000)
                .ok_or_else(|| {
                    format!(
                        "a time that does not exist ({}:{}:{}.{})",
                        time.hour, time.minute, time.second, time.millisecond
                    )
                })?;
        let format = if time.millisecond > 0 {
            "%H:%M:%S%.3f"
        } else {
            "%H:%M:%S"
        };
        Ok(format!("{}{}", at.format(format), offset_text(offset)))
    }

    pub fn timestamp_text(at: &pb::Timestamp) -> Result<String, String> {
        let offset = offset_minutes(at.timezone.as_ref())?;
        let zone = FixedOffset::east_opt(offset * 60)
            .ok_or_else(|| format!("a UTC offset of {offset} minutes"))?;
        let local = NaiveDate::from_ymd_opt(at.year as i32, at.month, at.day)
            .and_then(|d| d.and_hms_milli_opt(at.hour, at.minute, at.second, at.millisecond))
            .filter(|_| at.millisecond < 1000)
            .ok_or_else(|| {
                format!(
                    "a timestamp that does not exist ({}-{}-{} {}:{}:{}.{})",
                    at.year, at.month, at.day, at.hour, at.minute, at.second, at.millisecond
                )
            })?;
        let stamped = zone
            .from_local_datetime(&local)
            .single()
            .ok_or_else(|| "a timestamp without a single meaning".to_owned())?;
        let precision = if at.millisecond > 0 {
            SecondsFormat::Millis
        } else {
            SecondsFormat::Secs
        };
        Ok(stamped.to_rfc3339_opts(precision, true))
    }
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
    fn dates_and_times_keep_their_utc_offset_both_ways() {
        // Minutes add to the hours: -05:30 is hours -6, minutes 30 on the wire.
        let time = times::time("23:45:10.500-05:30").expect("time");
        let zone = time.timezone.expect("zone");
        assert_eq!((zone.hours, zone.minutes), (-6, 30));
        assert_eq!(times::time_text(&time).as_deref(), Ok("23:45:10.500-05:30"));
        let date = times::date("2026-12-05+01:00").expect("date");
        assert_eq!((date.year, date.month, date.day), (2026, 12, 5));
        assert_eq!(times::date_text(&date).as_deref(), Ok("2026-12-05+01:00"));
        assert_eq!(
            times::date_text(&times::date("2026-12-05").expect("date")).as_deref(),
            Ok("2026-12-05Z")
        );
        let stamp = times::timestamp("2026-03-29T01:30:00.250+05:45").expect("timestamp");
        assert_eq!(
            times::timestamp_text(&stamp).as_deref(),
            Ok("2026-03-29T01:30:00.250+05:45")
        );
        // What an instrument cannot mean is refused, with what it sent.
        let bad = pb::Date {
            day: 30,
            month: 2,
            year: 2026,
            timezone: None,
        };
        assert!(times::date_text(&bad)
            .expect_err("30 February")
            .contains("2026-2-30"));
        let odd_zone = pb::Timestamp {
            timezone: Some(pb::Timezone {
                hours: 1,
                minutes: 75,
            }),
            ..stamp
        };
        assert!(times::timestamp_text(&odd_zone).is_err());
        assert!(times::date("05/12/2026").is_err());
        assert!(times::timestamp("2026-12-05 14:30").is_err());
    }

    #[test]
    fn structures_and_custom_types_nest_as_fields() {
        let count = DataType::Custom(
            "CellCount".into(),
            Box::new(DataType::Structure(vec![
                Element {
                    identifier: "Viability".into(),
                    data_type: DataType::Real,
                },
                Element {
                    identifier: "DrawnAt".into(),
                    data_type: DataType::Timestamp,
                },
            ])),
        );
        let elements = [Element {
            identifier: "Count".into(),
            data_type: count,
        }];
        let value = Value::Structure(Values::from([
            ("Viability".to_owned(), Value::Real(81.5)),
            (
                "DrawnAt".to_owned(),
                Value::String("2026-12-05T14:30:00+01:00".into()),
            ),
        ]));
        let values = Values::from([("Count".to_owned(), value.clone())]);
        let bytes = encode_message(&elements, &values).expect("encodes");
        assert_eq!(decode_message(&bytes, &elements).expect("decodes"), values);
        // An element the structure does not have is named with the structure.
        let wrong = Values::from([(
            "Count".to_owned(),
            Value::Structure(Values::from([("Viabilty".to_owned(), Value::Real(1.0))])),
        )]);
        let refused = encode_message(&elements, &wrong).expect_err("misspelt");
        assert!(
            refused
                .to_string()
                .contains("Viabilty is not a parameter of structure Count"),
            "{refused}"
        );
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
