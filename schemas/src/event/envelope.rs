//! [`Envelope`]: one event, and its two encodings.
//!
//! JSON is the public form (clients, HTTP, non-Rust publishers). Postcard is the form
//! Rust processes store in JetStream: smaller and several times faster to decode. The
//! postcard form opens with a format version byte because postcard has no field names:
//! appending a field changes the layout, so a new layout gets a new version and old
//! stored events stay readable.

use serde::{Deserialize, Serialize};

use super::{EventFieldError, EventId, EventType, Timestamp};
use crate::json::RawJson;

/// Who caused an event: `{"id":"user_456","type":"contractor"}`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Actor {
    pub id: String,
    /// The JSON field `type`: what kind of actor (`user`, `contractor`, `service`, ...).
    #[serde(rename = "type")]
    pub kind: String,
}

/// Tracing data carried along with an event; every field is optional.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Metadata {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub correlation_id: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub causation_id: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub version: Option<String>,
}

/// One event, field for field as in docs/protocol.md, section 10.2.
///
/// `Serialize`/`Deserialize` are the JSON form: fields in the documented order, absent
/// optionals left out, unknown fields ignored, a missing `data` read as `null`. The
/// postcard form has its own functions ([`Envelope::to_postcard`],
/// [`Envelope::from_postcard`]) because it cannot skip fields.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Envelope {
    pub id: EventId,
    #[serde(rename = "type")]
    pub ty: EventType,
    pub timestamp: Timestamp,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub source: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub subject: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub actor: Option<Actor>,
    #[serde(default)]
    pub data: RawJson,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub metadata: Option<Metadata>,
}

/// Why a payload is not an envelope.
#[derive(Debug, thiserror::Error)]
pub enum EnvelopeError {
    #[error("invalid JSON envelope: {0}")]
    Json(#[from] serde_json::Error),
    #[error("empty envelope payload")]
    Empty,
    #[error("postcard envelope format version {0} is not supported (this build reads version 1)")]
    UnsupportedVersion(u8),
    #[error("malformed postcard envelope: {0}")]
    Postcard(#[from] postcard::Error),
    #[error("postcard envelope followed by {0} unexpected bytes")]
    TrailingBytes(usize),
    #[error("invalid postcard envelope: {0}")]
    Field(#[from] EventFieldError),
    #[error("postcard envelope data is not JSON: {0}")]
    Data(#[source] serde_json::Error),
}

/// The one postcard layout this build writes and reads.
const POSTCARD_VERSION: u8 = 1;

/// The postcard layout of version 1. Field order is the format: never reorder, and
/// add fields only under a new version. Borrowed, so decoding copies each string once,
/// into the `Envelope`.
#[derive(Serialize, Deserialize)]
struct WireV1<'a> {
    id: &'a str,
    ty: &'a str,
    /// Unix time in nanoseconds.
    timestamp: i128,
    source: Option<&'a str>,
    subject: Option<&'a str>,
    #[serde(borrow)]
    actor: Option<WireActor<'a>>,
    /// The JSON text of `data`, as a length-prefixed byte string.
    data: &'a str,
    #[serde(borrow)]
    metadata: Option<WireMetadata<'a>>,
}

#[derive(Serialize, Deserialize)]
struct WireActor<'a> {
    id: &'a str,
    kind: &'a str,
}

#[derive(Serialize, Deserialize)]
struct WireMetadata<'a> {
    correlation_id: Option<&'a str>,
    causation_id: Option<&'a str>,
    version: Option<&'a str>,
}

impl Envelope {
    /// A new event with a fresh id, stamped now, and no optional fields.
    pub fn new(ty: EventType, data: RawJson) -> Envelope {
        Envelope {
            id: EventId::generate(),
            ty,
            timestamp: Timestamp::now(),
            source: None,
            subject: None,
            actor: None,
            data,
            metadata: None,
        }
    }

    /// Decodes a NATS payload: JSON when the message had `Content-Type:
    /// application/json`, postcard otherwise.
    pub fn decode(payload: &[u8], json: bool) -> Result<Envelope, EnvelopeError> {
        if json {
            Envelope::from_json(payload)
        } else {
            Envelope::from_postcard(payload)
        }
    }

    pub fn from_json(payload: &[u8]) -> Result<Envelope, EnvelopeError> {
        Ok(serde_json::from_slice(payload)?)
    }

    pub fn to_json(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(self.data.as_str().len() + 192);
        self.write_json(&mut out);
        out
    }

    /// Appends the JSON form to `out`, so a frame around it can be built in one buffer.
    pub fn write_json(&self, out: &mut Vec<u8>) {
        serde_json::to_writer(out, self)
            .expect("an envelope always serializes: string keys, checked fields, and a Vec cannot fail to grow");
    }

    pub fn to_postcard(&self) -> Vec<u8> {
        let wire = WireV1 {
            id: self.id.as_str(),
            ty: self.ty.as_str(),
            timestamp: self.timestamp.unix_nanos(),
            source: self.source.as_deref(),
            subject: self.subject.as_deref(),
            actor: self.actor.as_ref().map(|actor| WireActor {
                id: &actor.id,
                kind: &actor.kind,
            }),
            data: self.data.as_str(),
            metadata: self.metadata.as_ref().map(|metadata| WireMetadata {
                correlation_id: metadata.correlation_id.as_deref(),
                causation_id: metadata.causation_id.as_deref(),
                version: metadata.version.as_deref(),
            }),
        };
        let mut out = Vec::with_capacity(self.data.as_str().len() + 128);
        out.push(POSTCARD_VERSION);
        postcard::to_extend(&wire, out).expect(
            "the wire struct has only strings, integers and options, which postcard always encodes",
        )
    }

    /// Decodes the postcard form, checking every field as the JSON path does (an id,
    /// a type and a timestamp in range, `data` that is JSON) and that nothing follows.
    pub fn from_postcard(payload: &[u8]) -> Result<Envelope, EnvelopeError> {
        let (&version, body) = payload.split_first().ok_or(EnvelopeError::Empty)?;
        if version != POSTCARD_VERSION {
            return Err(EnvelopeError::UnsupportedVersion(version));
        }
        let (wire, rest) = postcard::take_from_bytes::<WireV1<'_>>(body)?;
        if !rest.is_empty() {
            return Err(EnvelopeError::TrailingBytes(rest.len()));
        }
        Ok(Envelope {
            id: EventId::parse(wire.id)?,
            ty: EventType::parse(wire.ty)?,
            timestamp: Timestamp::from_unix_nanos(wire.timestamp)?,
            source: wire.source.map(str::to_owned),
            subject: wire.subject.map(str::to_owned),
            actor: wire.actor.map(|actor| Actor {
                id: actor.id.to_owned(),
                kind: actor.kind.to_owned(),
            }),
            data: RawJson::from_string(wire.data.to_owned()).map_err(EnvelopeError::Data)?,
            metadata: wire.metadata.map(|metadata| Metadata {
                correlation_id: metadata.correlation_id.map(str::to_owned),
                causation_id: metadata.causation_id.map(str::to_owned),
                version: metadata.version.map(str::to_owned),
            }),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const FULL: &str = r#"{"id":"evt_01JD0000000000000000000000","type":"bid.new","timestamp":"2026-11-22T14:30:00Z","source":"bidding-service","subject":"project_789","actor":{"id":"user_456","type":"contractor"},"data":{"bidId":"bid_101112","amount":5000},"metadata":{"correlationId":"corr_13579","causationId":"evt_x","version":"1.0"}}"#;

    #[test]
    fn json_round_trips_byte_for_byte() {
        let envelope = Envelope::from_json(FULL.as_bytes()).unwrap();
        assert_eq!(envelope.actor.as_ref().unwrap().kind, "contractor");
        assert_eq!(String::from_utf8(envelope.to_json()).unwrap(), FULL);
    }

    #[test]
    fn json_omits_absent_fields_and_defaults_data_to_null() {
        let minimal = r#"{"id":"evt_1","type":"system.status","timestamp":"2026-11-22T14:30:00Z","extra":[1,2]}"#;
        let envelope = Envelope::from_json(minimal.as_bytes()).unwrap();
        assert_eq!(envelope.data, RawJson::null());
        assert_eq!(
            String::from_utf8(envelope.to_json()).unwrap(),
            r#"{"id":"evt_1","type":"system.status","timestamp":"2026-11-22T14:30:00Z","data":null}"#
        );
    }

    #[test]
    fn json_keeps_data_text_as_given() {
        let spaced = r#"{"id":"evt_1","type":"a","timestamp":"2026-11-22T14:30:00Z","data": { "k" : [1, 2.50] } }"#;
        let envelope = Envelope::from_json(spaced.as_bytes()).unwrap();
        assert_eq!(envelope.data.as_str(), r#"{ "k" : [1, 2.50] }"#);
    }

    #[test]
    fn json_rejects_invalid_fields() {
        for bad in [
            r#"{"id":"1","type":"a","timestamp":"2026-11-22T14:30:00Z"}"#,
            r#"{"id":"evt_1","type":"A","timestamp":"2026-11-22T14:30:00Z"}"#,
            r#"{"id":"evt_1","type":"a","timestamp":"noon"}"#,
            r#"{"id":"evt_1","type":"a"}"#,
            r#"{"id":"evt_1","type":"a","timestamp":"2026-11-22T14:30:00Z","actor":{"id":"u"}}"#,
            r#"[]"#,
            "",
        ] {
            assert!(Envelope::from_json(bad.as_bytes()).is_err(), "{bad}");
        }
    }

    #[test]
    fn write_json_appends() {
        let envelope = Envelope::from_json(FULL.as_bytes()).unwrap();
        let mut out = b"prefix:".to_vec();
        envelope.write_json(&mut out);
        assert_eq!(out, [b"prefix:".as_slice(), FULL.as_bytes()].concat());
    }

    #[test]
    fn postcard_round_trips() {
        let envelope = Envelope::from_json(FULL.as_bytes()).unwrap();
        let bytes = envelope.to_postcard();
        assert_eq!(bytes[0], POSTCARD_VERSION);
        assert!(bytes.len() < FULL.len());
        assert_eq!(Envelope::from_postcard(&bytes).unwrap(), envelope);
        assert_eq!(Envelope::decode(&bytes, false).unwrap(), envelope);
        assert_eq!(Envelope::decode(FULL.as_bytes(), true).unwrap(), envelope);

        let fresh = Envelope::new(EventType::parse("bid.new").unwrap(), RawJson::null());
        assert_eq!(
            Envelope::from_postcard(&fresh.to_postcard()).unwrap(),
            fresh
        );
    }

    #[test]
    fn deep_data_costs_no_stack() {
        let deep = format!("{}{}", "[".repeat(100_000), "]".repeat(100_000));
        let envelope = Envelope::new(
            EventType::parse("bid.new").unwrap(),
            RawJson::from_string(deep).unwrap(),
        );
        assert_eq!(
            Envelope::from_postcard(&envelope.to_postcard()).unwrap(),
            envelope
        );
        assert_eq!(Envelope::from_json(&envelope.to_json()).unwrap(), envelope);
    }

    #[test]
    fn postcard_refuses_other_versions_and_trailing_bytes() {
        let bytes = Envelope::from_json(FULL.as_bytes()).unwrap().to_postcard();
        let mut other = bytes.clone();
        other[0] = 2;
        assert!(matches!(
            Envelope::from_postcard(&other),
            Err(EnvelopeError::UnsupportedVersion(2))
        ));
        let mut longer = bytes.clone();
        longer.push(0);
        assert!(matches!(
            Envelope::from_postcard(&longer),
            Err(EnvelopeError::TrailingBytes(1))
        ));
        assert!(matches!(
            Envelope::from_postcard(&[]),
            Err(EnvelopeError::Empty)
        ));
        assert!(matches!(
            Envelope::from_postcard(&bytes[..bytes.len() - 1]),
            Err(EnvelopeError::Postcard(_))
        ));
    }

    #[test]
    fn postcard_checks_fields_like_json_does() {
        let valid = Envelope::from_json(FULL.as_bytes()).unwrap();
        let with = |edit: &dyn Fn(&mut WireV1<'_>)| {
            let mut wire = WireV1 {
                id: valid.id.as_str(),
                ty: valid.ty.as_str(),
                timestamp: valid.timestamp.unix_nanos(),
                source: None,
                subject: None,
                actor: None,
                data: "{}",
                metadata: None,
            };
            edit(&mut wire);
            postcard::to_extend(&wire, vec![POSTCARD_VERSION]).unwrap()
        };
        assert!(Envelope::from_postcard(&with(&|_| {})).is_ok());
        assert!(matches!(
            Envelope::from_postcard(&with(&|w| w.data = "{")),
            Err(EnvelopeError::Data(_))
        ));
        assert!(matches!(
            Envelope::from_postcard(&with(&|w| w.id = "nope")),
            Err(EnvelopeError::Field(EventFieldError::Id(_)))
        ));
        assert!(matches!(
            Envelope::from_postcard(&with(&|w| w.ty = "No")),
            Err(EnvelopeError::Field(EventFieldError::Type(_)))
        ));
        assert!(matches!(
            Envelope::from_postcard(&with(&|w| w.timestamp = i128::MAX)),
            Err(EnvelopeError::Field(EventFieldError::Timestamp(_)))
        ));
    }
}
