//! Client -> server frames: decoding (untrusted text to a typed [`Request`]) and
//! encoding (for Rust clients such as the CLI).

use std::fmt;

use serde::ser::SerializeMap;
use serde::{Deserialize, Serialize, Serializer};
use serde_json::value::RawValue;

use crate::channel::{ChannelError, ChannelName};
use crate::error::{ErrorCode, excerpt};
use crate::event::{EventFieldError, EventType, Timestamp, TypeFilter, TypeFilters};
use crate::json::RawJson;
use crate::presence::{InitialPresence, PresenceStatus};
use crate::trace::TraceParent;

/// One decoded client frame with the `id` its reply must echo.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Request {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub id: Option<u64>,
    #[serde(flatten)]
    pub frame: ClientFrame,
}

/// One client operation of `switchboard.v1` (docs/protocol.md, section 4), with every field checked.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(tag = "op", rename_all = "snake_case")]
pub enum ClientFrame {
    Hello {
        token: String,
        #[serde(skip_serializing_if = "Option::is_none")]
        device: Option<String>,
        /// The status the connection starts with (`online` when absent).
        #[serde(skip_serializing_if = "Option::is_none")]
        presence: Option<InitialPresence>,
    },
    Sub {
        ch: ChannelName,
        /// Empty when the frame had no `types`: everything passes.
        #[serde(skip_serializing_if = "is_all")]
        types: TypeFilters,
        #[serde(skip_serializing_if = "Option::is_none")]
        since: Option<ResumeFrom>,
    },
    Unsub {
        ch: ChannelName,
    },
    Pub {
        ch: ChannelName,
        #[serde(rename = "type")]
        ty: EventType,
        /// `null` when the frame had no `data`.
        data: RawJson,
        /// The client's idempotency key.
        #[serde(skip_serializing_if = "Option::is_none")]
        key: Option<String>,
        /// W3C `traceparent` to continue (an invalid one is ignored).
        #[serde(skip_serializing_if = "Option::is_none")]
        trace: Option<TraceParent>,
    },
    Sig {
        ch: ChannelName,
        #[serde(rename = "type")]
        ty: SignalType,
        /// `null` when the frame had no `data`.
        data: RawJson,
    },
    Ack {
        ch: ChannelName,
        seq: u64,
    },
    Read {
        ch: ChannelName,
        seq: u64,
    },
    Presence {
        status: PresenceStatus,
        #[serde(skip_serializing_if = "Option::is_none")]
        text: Option<String>,
    },
    Who {
        ch: ChannelName,
    },
    History {
        ch: ChannelName,
        #[serde(skip_serializing_if = "Option::is_none")]
        before: Option<u64>,
        #[serde(skip_serializing_if = "Option::is_none")]
        limit: Option<u32>,
    },
    Refresh {
        token: String,
    },
    Ping,
    Rpc {
        method: RpcMethod,
        /// `{}` when the frame had no `params`.
        params: RawJson,
        /// W3C `traceparent` to continue (an invalid one is ignored).
        #[serde(skip_serializing_if = "Option::is_none")]
        trace: Option<TraceParent>,
    },
}

fn is_all(types: &TypeFilters) -> bool {
    types.as_slice().is_empty()
}

/// Where a `sub` resumes: the `since` object, exactly one of its three forms.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ResumeFrom {
    /// `{"seq":N,"epoch":E}`: after stream sequence `N` of stream incarnation `E`.
    Seq { seq: u64, epoch: String },
    /// `{"time":"RFC3339"}`: from this stream time, inclusive.
    Time(Timestamp),
    /// `{"last":N}`: the channel's last `N` stored events.
    Last(u64),
}

impl Serialize for ResumeFrom {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        match self {
            ResumeFrom::Seq { seq, epoch } => {
                let mut map = serializer.serialize_map(Some(2))?;
                map.serialize_entry("seq", seq)?;
                map.serialize_entry("epoch", epoch)?;
                map.end()
            }
            ResumeFrom::Time(time) => {
                let mut map = serializer.serialize_map(Some(1))?;
                map.serialize_entry("time", time)?;
                map.end()
            }
            ResumeFrom::Last(count) => {
                let mut map = serializer.serialize_map(Some(1))?;
                map.serialize_entry("last", count)?;
                map.end()
            }
        }
    }
}

/// The `type` of a signal (`typing`, `cursor`, ...): 1..=64 characters of `[a-z0-9_.-]`.
/// Signals are never stored, so they do not need the event type grammar.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Deserialize)]
#[serde(try_from = "String")]
pub struct SignalType(String);

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid signal type {0}: expected 1 to 64 characters of [a-z0-9_.-]")]
pub struct InvalidSignalType(String);

impl SignalType {
    pub fn parse(text: &str) -> Result<SignalType, InvalidSignalType> {
        let valid = (1..=64).contains(&text.len())
            && text.bytes().all(|b| {
                b.is_ascii_lowercase() || b.is_ascii_digit() || matches!(b, b'_' | b'.' | b'-')
            });
        if valid {
            Ok(SignalType(text.to_owned()))
        } else {
            Err(InvalidSignalType(excerpt(text)))
        }
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl TryFrom<String> for SignalType {
    type Error = InvalidSignalType;

    fn try_from(text: String) -> Result<SignalType, InvalidSignalType> {
        SignalType::parse(&text)
    }
}

impl Serialize for SignalType {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(&self.0)
    }
}

impl fmt::Display for SignalType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// The `method` of an `rpc` frame: dot-separated segments of `[a-z0-9_]`, at most 128
/// characters. The edge forwards it to the NATS subject [`RpcMethod::subject`], so
/// the grammar keeps wildcards and empty tokens out.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct RpcMethod(String);

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error(
    "invalid rpc method {0}: expected dot-separated segments of [a-z0-9_], at most 128 characters"
)]
pub struct InvalidRpcMethod(String);

impl RpcMethod {
    pub fn parse(text: &str) -> Result<RpcMethod, InvalidRpcMethod> {
        if crate::event::is_dotted_name(text, 128) {
            Ok(RpcMethod(text.to_owned()))
        } else {
            Err(InvalidRpcMethod(excerpt(text)))
        }
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// `svc.<method>`, where the worker serving it listens.
    pub fn subject(&self) -> String {
        format!("svc.{}", self.0)
    }
}

impl Serialize for RpcMethod {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(&self.0)
    }
}

impl fmt::Display for RpcMethod {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// A client frame that could not be decoded. Always answered `bad_request`.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{kind}")]
pub struct FrameError {
    /// The frame's `id`, whenever the frame was an object with a valid `id`, so the
    /// `err` reply can echo it.
    pub id: Option<u64>,
    pub kind: FrameErrorKind,
}

impl FrameError {
    pub fn code(&self) -> ErrorCode {
        ErrorCode::BadRequest
    }
}

/// What was wrong with a client frame; the `Display` is the `err` frame's `message`.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum FrameErrorKind {
    #[error("frame is not valid JSON: {0}")]
    Json(String),
    #[error("frame is not a JSON object")]
    NotAnObject,
    #[error("frame has no `op`")]
    MissingOp,
    #[error("unknown op {0}")]
    UnknownOp(String),
    #[error("`{field}` is required for `{op}`")]
    MissingField {
        op: &'static str,
        field: &'static str,
    },
    #[error("`{field}` must be {expected}")]
    InvalidField {
        field: &'static str,
        expected: &'static str,
    },
    #[error(transparent)]
    Channel(#[from] ChannelError),
    #[error(transparent)]
    EventField(#[from] EventFieldError),
    #[error(transparent)]
    SignalType(#[from] InvalidSignalType),
    #[error(transparent)]
    RpcMethod(#[from] InvalidRpcMethod),
}

/// Every field any op may carry, each captured as raw JSON.
///
/// Decoding is two steps because of what serde can and cannot do: an internally
/// tagged enum buffers its content and so cannot hold `RawValue`s, and one failing
/// field would lose the `id` the error reply must echo. Capturing first and
/// converting field by field keeps `data` unparsed and the `id` readable.
#[derive(Deserialize)]
struct RawFields<'a> {
    #[serde(borrow)]
    op: Option<&'a RawValue>,
    #[serde(borrow)]
    id: Option<&'a RawValue>,
    #[serde(borrow)]
    token: Option<&'a RawValue>,
    #[serde(borrow)]
    device: Option<&'a RawValue>,
    #[serde(borrow)]
    presence: Option<&'a RawValue>,
    #[serde(borrow)]
    trace: Option<&'a RawValue>,
    #[serde(borrow)]
    ch: Option<&'a RawValue>,
    #[serde(borrow)]
    types: Option<&'a RawValue>,
    #[serde(borrow)]
    since: Option<&'a RawValue>,
    #[serde(borrow, rename = "type")]
    ty: Option<&'a RawValue>,
    #[serde(borrow)]
    data: Option<&'a RawValue>,
    #[serde(borrow)]
    key: Option<&'a RawValue>,
    #[serde(borrow)]
    seq: Option<&'a RawValue>,
    #[serde(borrow)]
    status: Option<&'a RawValue>,
    #[serde(borrow)]
    text: Option<&'a RawValue>,
    #[serde(borrow)]
    before: Option<&'a RawValue>,
    #[serde(borrow)]
    limit: Option<&'a RawValue>,
    #[serde(borrow)]
    method: Option<&'a RawValue>,
    #[serde(borrow)]
    params: Option<&'a RawValue>,
}

/// The `since` object before it is narrowed to one [`ResumeFrom`] form.
#[derive(Deserialize)]
struct RawSince {
    seq: Option<u64>,
    epoch: Option<String>,
    time: Option<String>,
    last: Option<u64>,
}

const SINCE_FORMS: &str = r#"one of {"seq":N,"epoch":"..."}, {"time":"RFC3339"} or {"last":N}"#;
const NON_NEGATIVE: &str = "a non-negative integer";
const STRING: &str = "a string";

impl Request {
    /// Decodes one client text frame: UTF-8 JSON text, refused whole when any byte of
    /// it is not UTF-8. Never panics, whatever the input.
    pub fn decode(text: &[u8]) -> Result<Request, FrameError> {
        let error = |id, kind| FrameError { id, kind };
        // serde_json checks UTF-8 only in the strings it reads, not in those it skips
        // (unknown fields), and a frame must be UTF-8 as a whole. Checked here, once,
        // serde_json then reads `&str` without checking again.
        let text = std::str::from_utf8(text).map_err(|utf8| {
            error(
                None,
                FrameErrorKind::Json(format!("invalid UTF-8 at byte {}", utf8.valid_up_to())),
            )
        })?;
        // A JSON array would otherwise decode positionally into the struct.
        if !text
            .trim_start_matches(|c: char| c.is_ascii_whitespace())
            .starts_with('{')
        {
            return Err(match serde_json::from_str::<serde::de::IgnoredAny>(text) {
                Ok(_) => error(None, FrameErrorKind::NotAnObject),
                Err(json) => error(None, FrameErrorKind::Json(json.to_string())),
            });
        }
        let fields: RawFields<'_> = serde_json::from_str(text)
            .map_err(|json| error(None, FrameErrorKind::Json(json.to_string())))?;
        let id = optional(fields.id, "id", NON_NEGATIVE).map_err(|kind| error(None, kind))?;
        let frame = fields.into_frame().map_err(|kind| error(id, kind))?;
        Ok(Request { id, frame })
    }

    /// The JSON text of this frame, as a client sends it.
    pub fn encode(&self) -> String {
        serde_json::to_string(self).expect(
            "client frames have string keys only and checked fields, which always serialize",
        )
    }
}

impl ClientFrame {
    /// The frame's `op`, e.g. for metrics labels.
    pub fn op(&self) -> &'static str {
        let op = match self {
            ClientFrame::Hello { .. } => Op::Hello,
            ClientFrame::Sub { .. } => Op::Sub,
            ClientFrame::Unsub { .. } => Op::Unsub,
            ClientFrame::Pub { .. } => Op::Pub,
            ClientFrame::Sig { .. } => Op::Sig,
            ClientFrame::Ack { .. } => Op::Ack,
            ClientFrame::Read { .. } => Op::Read,
            ClientFrame::Presence { .. } => Op::Presence,
            ClientFrame::Who { .. } => Op::Who,
            ClientFrame::History { .. } => Op::History,
            ClientFrame::Refresh { .. } => Op::Refresh,
            ClientFrame::Ping => Op::Ping,
            ClientFrame::Rpc { .. } => Op::Rpc,
        };
        op.name()
    }
}

/// The ops, named once: decoding looks names up here, and [`ClientFrame::op`] maps
/// back. Encoding uses serde's `snake_case` of the variant names, which the
/// round-trip tests hold to the same names.
#[derive(Clone, Copy)]
enum Op {
    Hello,
    Sub,
    Unsub,
    Pub,
    Sig,
    Ack,
    Read,
    Presence,
    Who,
    History,
    Refresh,
    Ping,
    Rpc,
}

impl Op {
    const ALL: [Op; 13] = [
        Op::Hello,
        Op::Sub,
        Op::Unsub,
        Op::Pub,
        Op::Sig,
        Op::Ack,
        Op::Read,
        Op::Presence,
        Op::Who,
        Op::History,
        Op::Refresh,
        Op::Ping,
        Op::Rpc,
    ];

    fn name(self) -> &'static str {
        match self {
            Op::Hello => "hello",
            Op::Sub => "sub",
            Op::Unsub => "unsub",
            Op::Pub => "pub",
            Op::Sig => "sig",
            Op::Ack => "ack",
            Op::Read => "read",
            Op::Presence => "presence",
            Op::Who => "who",
            Op::History => "history",
            Op::Refresh => "refresh",
            Op::Ping => "ping",
            Op::Rpc => "rpc",
        }
    }
}

fn optional<'a, T: Deserialize<'a>>(
    raw: Option<&'a RawValue>,
    field: &'static str,
    expected: &'static str,
) -> Result<Option<T>, FrameErrorKind> {
    raw.map(|raw| {
        serde_json::from_str(raw.get())
            .map_err(|_| FrameErrorKind::InvalidField { field, expected })
    })
    .transpose()
}

impl<'a> RawFields<'a> {
    fn into_frame(self) -> Result<ClientFrame, FrameErrorKind> {
        let name: String = optional(self.op, "op", STRING)?.ok_or(FrameErrorKind::MissingOp)?;
        let op = Op::ALL
            .into_iter()
            .find(|op| op.name() == name)
            .ok_or_else(|| FrameErrorKind::UnknownOp(excerpt(&name)))?;
        let missing = |field| FrameErrorKind::MissingField {
            op: op.name(),
            field,
        };
        let required_string = |raw: Option<&'a RawValue>, field: &'static str| {
            optional::<String>(raw, field, STRING)?.ok_or_else(|| missing(field))
        };
        let required_u64 = |raw: Option<&'a RawValue>, field: &'static str| {
            optional::<u64>(raw, field, NON_NEGATIVE)?.ok_or_else(|| missing(field))
        };
        let ch = || -> Result<ChannelName, FrameErrorKind> {
            Ok(ChannelName::parse(&required_string(self.ch, "ch")?)?)
        };
        let data = || self.data.map_or_else(RawJson::null, RawJson::from);

        Ok(match op {
            Op::Hello => ClientFrame::Hello {
                token: required_string(self.token, "token")?,
                device: optional(self.device, "device", STRING)?,
                presence: optional(
                    self.presence,
                    "presence",
                    "an object with `status` (`online`, `away`, `busy`, `invisible`) and optional `text`",
                )?,
            },
            Op::Sub => ClientFrame::Sub {
                ch: ch()?,
                types: self.types()?,
                since: self.since()?,
            },
            Op::Unsub => ClientFrame::Unsub { ch: ch()? },
            Op::Pub => ClientFrame::Pub {
                ch: ch()?,
                ty: EventType::parse(&required_string(self.ty, "type")?)?,
                data: data(),
                key: optional(self.key, "key", STRING)?,
                trace: self.trace(),
            },
            Op::Sig => ClientFrame::Sig {
                ch: ch()?,
                ty: SignalType::parse(&required_string(self.ty, "type")?)?,
                data: data(),
            },
            Op::Ack => ClientFrame::Ack {
                ch: ch()?,
                seq: required_u64(self.seq, "seq")?,
            },
            Op::Read => ClientFrame::Read {
                ch: ch()?,
                seq: required_u64(self.seq, "seq")?,
            },
            Op::Presence => ClientFrame::Presence {
                status: optional(
                    self.status,
                    "status",
                    "one of `online`, `away`, `busy`, `invisible`",
                )?
                .ok_or_else(|| missing("status"))?,
                text: optional(self.text, "text", STRING)?,
            },
            Op::Who => ClientFrame::Who { ch: ch()? },
            Op::History => ClientFrame::History {
                ch: ch()?,
                before: optional(self.before, "before", NON_NEGATIVE)?,
                limit: optional(self.limit, "limit", "a non-negative 32-bit integer")?,
            },
            Op::Refresh => ClientFrame::Refresh {
                token: required_string(self.token, "token")?,
            },
            Op::Ping => ClientFrame::Ping,
            Op::Rpc => ClientFrame::Rpc {
                method: RpcMethod::parse(&required_string(self.method, "method")?)?,
                params: self
                    .params
                    .map_or_else(RawJson::empty_object, RawJson::from),
                trace: self.trace(),
            },
        })
    }

    /// `trace`, when it is a string holding a valid `traceparent`; anything else is no
    /// trace context (W3C: ignored, never an error).
    fn trace(&self) -> Option<TraceParent> {
        let text: String = serde_json::from_str(self.trace?.get()).ok()?;
        TraceParent::parse(&text)
    }

    fn types(&self) -> Result<TypeFilters, FrameErrorKind> {
        let Some(types) = optional::<Vec<String>>(self.types, "types", "an array of strings")?
        else {
            return Ok(TypeFilters::all());
        };
        types
            .iter()
            .map(|filter| TypeFilter::parse(filter).map_err(FrameErrorKind::from))
            .collect()
    }

    fn since(&self) -> Result<Option<ResumeFrom>, FrameErrorKind> {
        let invalid = FrameErrorKind::InvalidField {
            field: "since",
            expected: SINCE_FORMS,
        };
        let Some(since) = optional::<RawSince>(self.since, "since", SINCE_FORMS)? else {
            return Ok(None);
        };
        Ok(Some(match since {
            RawSince {
                seq: Some(seq),
                epoch: Some(epoch),
                time: None,
                last: None,
            } => ResumeFrom::Seq { seq, epoch },
            RawSince {
                seq: None,
                epoch: None,
                time: Some(time),
                last: None,
            } => ResumeFrom::Time(Timestamp::parse(&time)?),
            RawSince {
                seq: None,
                epoch: None,
                time: None,
                last: Some(last),
            } => ResumeFrom::Last(last),
            _ => return Err(invalid),
        }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn decode(text: &str) -> Result<Request, FrameError> {
        Request::decode(text.as_bytes())
    }

    fn frame(text: &str) -> ClientFrame {
        decode(text).unwrap().frame
    }

    fn ch(text: &str) -> ChannelName {
        ChannelName::parse(text).unwrap()
    }

    fn raw(text: &str) -> RawJson {
        RawJson::from_slice(text.as_bytes()).unwrap()
    }

    #[test]
    fn decodes_the_design_examples() {
        assert_eq!(
            frame(r#"{"op":"hello","token":"t","device":"d1"}"#),
            ClientFrame::Hello {
                token: "t".into(),
                device: Some("d1".into()),
                presence: None,
            }
        );
        assert_eq!(
            frame(r#"{"op":"hello","token":"t","presence":{"status":"invisible"}}"#),
            ClientFrame::Hello {
                token: "t".into(),
                device: None,
                presence: Some(InitialPresence {
                    status: PresenceStatus::Invisible,
                    text: None
                }),
            }
        );
        assert!(decode(r#"{"op":"hello","token":"t","presence":{"status":"gone"}}"#).is_err());
        let sub = decode(
            r#"{"op":"sub","id":2,"ch":"project:p1","types":["bid.*"],"since":{"seq":1234,"epoch":"e"}}"#,
        )
        .unwrap();
        assert_eq!(sub.id, Some(2));
        assert_eq!(
            sub.frame,
            ClientFrame::Sub {
                ch: ch("project:p1"),
                types: vec![TypeFilter::parse("bid.*").unwrap()].into(),
                since: Some(ResumeFrom::Seq {
                    seq: 1234,
                    epoch: "e".into()
                }),
            }
        );
        assert_eq!(
            frame(r#"{"op":"unsub","id":3,"ch":"project:p1"}"#),
            ClientFrame::Unsub {
                ch: ch("project:p1")
            }
        );
        assert_eq!(
            frame(
                r#"{"op":"pub","id":4,"ch":"conversation:c1","type":"message.new","data":{"text":"hi"},"key":"k-123"}"#
            ),
            ClientFrame::Pub {
                ch: ch("conversation:c1"),
                ty: EventType::parse("message.new").unwrap(),
                data: raw(r#"{"text":"hi"}"#),
                key: Some("k-123".into()),
                trace: None,
            }
        );
        assert_eq!(
            frame(r#"{"op":"sig","ch":"conversation:c1","type":"typing","data":{"typing":true}}"#),
            ClientFrame::Sig {
                ch: ch("conversation:c1"),
                ty: SignalType::parse("typing").unwrap(),
                data: raw(r#"{"typing":true}"#),
            }
        );
        assert_eq!(
            frame(r#"{"op":"ack","ch":"conversation:c1","seq":1301}"#),
            ClientFrame::Ack {
                ch: ch("conversation:c1"),
                seq: 1301
            }
        );
        assert_eq!(
            frame(r#"{"op":"read","ch":"conversation:c1","seq":1301}"#),
            ClientFrame::Read {
                ch: ch("conversation:c1"),
                seq: 1301
            }
        );
        assert_eq!(
            frame(r#"{"op":"presence","status":"online","text":"On site"}"#),
            ClientFrame::Presence {
                status: PresenceStatus::Online,
                text: Some("On site".into())
            }
        );
        assert_eq!(
            frame(r#"{"op":"who","id":5,"ch":"project:p1"}"#),
            ClientFrame::Who {
                ch: ch("project:p1")
            }
        );
        assert_eq!(
            frame(r#"{"op":"history","id":6,"ch":"conversation:c1","before":1301,"limit":50}"#),
            ClientFrame::History {
                ch: ch("conversation:c1"),
                before: Some(1301),
                limit: Some(50)
            }
        );
        assert_eq!(
            frame(r#"{"op":"refresh","id":7,"token":"t2"}"#),
            ClientFrame::Refresh { token: "t2".into() }
        );
        let ping = decode(r#"{"op":"ping","id":8}"#).unwrap();
        assert_eq!((ping.id, ping.frame), (Some(8), ClientFrame::Ping));
        assert_eq!(
            frame(r#"{"op":"rpc","id":9,"method":"notifications.list","params":{"limit":20}}"#),
            ClientFrame::Rpc {
                method: RpcMethod::parse("notifications.list").unwrap(),
                params: raw(r#"{"limit":20}"#),
                trace: None,
            }
        );
        let traced = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";
        assert_eq!(
            frame(&format!(
                r#"{{"op":"rpc","method":"m.x","trace":"{traced}"}}"#
            )),
            ClientFrame::Rpc {
                method: RpcMethod::parse("m.x").unwrap(),
                params: RawJson::empty_object(),
                trace: TraceParent::parse(traced),
            }
        );
        // A trace context that is none is ignored, as W3C asks, not refused.
        assert!(matches!(
            frame(r#"{"op":"pub","ch":"conversation:c1","type":"message.new","trace":7}"#),
            ClientFrame::Pub { trace: None, .. }
        ));
    }

    #[test]
    fn fills_defaults() {
        assert_eq!(
            frame(r#"{"op":"sub","ch":"user:u1:messages"}"#),
            ClientFrame::Sub {
                ch: ch("user:u1:messages"),
                types: TypeFilters::all(),
                since: None
            }
        );
        assert_eq!(
            frame(r#"{"op":"pub","ch":"conversation:c1","type":"message.new"}"#),
            ClientFrame::Pub {
                ch: ch("conversation:c1"),
                ty: EventType::parse("message.new").unwrap(),
                data: RawJson::null(),
                key: None,
                trace: None,
            }
        );
        assert_eq!(
            frame(r#"{"op":"rpc","method":"presence.privacy.set"}"#),
            ClientFrame::Rpc {
                method: RpcMethod::parse("presence.privacy.set").unwrap(),
                params: RawJson::empty_object(),
                trace: None,
            }
        );
        assert_eq!(
            frame(r#" {"op":"ping","future_field":[1,{"x":2}]} "#),
            ClientFrame::Ping
        );
    }

    #[test]
    fn reads_every_since_form() {
        let since = |json: &str| match frame(&format!(
            r#"{{"op":"sub","ch":"project:p1","since":{json}}}"#
        )) {
            ClientFrame::Sub { since, .. } => since,
            other => panic!("{other:?}"),
        };
        assert_eq!(
            since(r#"{"time":"2026-11-22T14:30:00Z"}"#),
            Some(ResumeFrom::Time(
                Timestamp::parse("2026-11-22T14:30:00Z").unwrap()
            ))
        );
        assert_eq!(since(r#"{"last":10}"#), Some(ResumeFrom::Last(10)));
        assert_eq!(since("null"), None);
        for bad in [
            r#"{}"#,
            r#"{"seq":1}"#,
            r#"{"epoch":"e"}"#,
            r#"{"seq":1,"epoch":"e","last":2}"#,
            r#"{"time":"2026-11-22T14:30:00Z","last":2}"#,
            r#"{"time":"noon"}"#,
            r#"{"last":-1}"#,
            r#"[1]"#,
            r#""since""#,
        ] {
            let error = decode(&format!(
                r#"{{"op":"sub","id":1,"ch":"project:p1","since":{bad}}}"#
            ))
            .unwrap_err();
            assert_eq!(error.id, Some(1), "{bad}");
        }
    }

    #[test]
    fn errors_keep_the_id_and_say_what_is_wrong() {
        let cases = [
            (r#"{"op":"nope","id":7}"#, Some(7), "unknown op `nope`"),
            (r#"{"id":7}"#, Some(7), "frame has no `op`"),
            (r#"{"op":7,"id":7}"#, Some(7), "`op` must be a string"),
            (
                r#"{"op":"sub","id":2}"#,
                Some(2),
                "`ch` is required for `sub`",
            ),
            (
                r#"{"op":"sub","id":2,"ch":"project:p.1"}"#,
                Some(2),
                "invalid channel id `p.1`",
            ),
            (
                r#"{"op":"sub","id":2,"ch":"nope:p1"}"#,
                Some(2),
                "unknown namespace `nope`",
            ),
            (
                r#"{"op":"sub","id":2,"ch":5}"#,
                Some(2),
                "`ch` must be a string",
            ),
            (
                r#"{"op":"sub","id":2,"ch":"project:p1","types":"bid.*"}"#,
                Some(2),
                "`types` must be an array",
            ),
            (
                r#"{"op":"sub","id":2,"ch":"project:p1","types":["bid.>"]}"#,
                Some(2),
                "invalid type filter",
            ),
            (
                r#"{"op":"pub","id":4,"ch":"conversation:c1"}"#,
                Some(4),
                "`type` is required for `pub`",
            ),
            (
                r#"{"op":"pub","id":4,"ch":"conversation:c1","type":"Message"}"#,
                Some(4),
                "invalid event type",
            ),
            (
                r#"{"op":"sig","ch":"conversation:c1","type":"Typing!"}"#,
                None,
                "invalid signal type",
            ),
            (
                r#"{"op":"ack","id":1,"ch":"conversation:c1"}"#,
                Some(1),
                "`seq` is required for `ack`",
            ),
            (
                r#"{"op":"ack","id":1,"ch":"conversation:c1","seq":-1}"#,
                Some(1),
                "`seq` must be a non-negative integer",
            ),
            (
                r#"{"op":"ack","id":1,"ch":"conversation:c1","seq":1.5}"#,
                Some(1),
                "`seq` must be",
            ),
            (
                r#"{"op":"presence","id":1}"#,
                Some(1),
                "`status` is required",
            ),
            (
                r#"{"op":"presence","id":1,"status":"offline"}"#,
                Some(1),
                "`status` must be one of",
            ),
            (
                r#"{"op":"history","id":1,"ch":"job:j","limit":4294967296}"#,
                Some(1),
                "`limit` must be",
            ),
            (
                r#"{"op":"rpc","id":9,"method":"svc.*"}"#,
                Some(9),
                "invalid rpc method",
            ),
            (
                r#"{"op":"rpc","id":9,"method":"a..b"}"#,
                Some(9),
                "invalid rpc method",
            ),
            (
                r#"{"op":"hello","id":1,"token":null}"#,
                Some(1),
                "`token` is required",
            ),
            (
                r#"{"op":"ping","id":-1}"#,
                None,
                "`id` must be a non-negative integer",
            ),
            (r#"{"op":"ping","id":"8"}"#, None, "`id` must be"),
            (r#"["ping"]"#, None, "not a JSON object"),
            (r#""ping""#, None, "not a JSON object"),
            (r#"{"op":"ping""#, None, "not valid JSON"),
            ("", None, "not valid JSON"),
            (r#"{"op":"ping","op":"ping"}"#, None, "not valid JSON"),
        ];
        for (text, id, message) in cases {
            let error = decode(text).unwrap_err();
            assert_eq!(error.id, id, "{text}");
            assert!(error.to_string().contains(message), "{text}: {error}");
            assert_eq!(error.code(), ErrorCode::BadRequest);
        }
    }

    #[test]
    fn refuses_invalid_utf8() {
        let error = Request::decode(b"{\"op\":\"hello\",\"token\":\"\xff\"}").unwrap_err();
        assert!(matches!(error.kind, FrameErrorKind::Json(_)), "{error}");
        // Found by fuzzing: serde_json skips unknown fields without checking UTF-8.
        let error = Request::decode(b"{\"op\":\"ping\",\"id\":3,\"x\":{\"\x9b\":1}}").unwrap_err();
        assert_eq!(error.id, None);
        assert_eq!(
            error.to_string(),
            "frame is not valid JSON: invalid UTF-8 at byte 26"
        );
        assert!(Request::decode(b"[\"\xff\"]").is_err());
        assert!(Request::decode(b"{\"op\":\"pub\",\"ch\":\"conversation:c1\",\"type\":\"message.new\",\"data\":\"\xc3\"}").is_err());
    }

    #[test]
    fn deep_nesting_is_carried_without_recursion() {
        // `data` is only scanned, never built into a tree, so depth costs no stack.
        let data = format!("{}{}", "[".repeat(100_000), "]".repeat(100_000));
        let text = format!(
            r#"{{"op":"pub","id":1,"ch":"conversation:c1","type":"message.new","data":{data}}}"#
        );
        let ClientFrame::Pub { data: decoded, .. } = frame(&text) else {
            panic!("not a pub");
        };
        assert_eq!(decoded.as_str(), data);
    }

    #[test]
    fn unknown_ops_are_quoted_safely() {
        let long = "x".repeat(10_000);
        let error = decode(&format!(r#"{{"op":"{long}\n"}}"#)).unwrap_err();
        assert!(error.to_string().len() < 100, "{error}");
    }

    #[test]
    fn encodes_what_it_decodes() {
        let text = r#"{"id":2,"op":"sub","ch":"project:p1","types":["bid.*","*"],"since":{"seq":1234,"epoch":"e"}}"#;
        let request = decode(text).unwrap();
        assert_eq!(request.encode(), text);
        let ping = Request {
            id: None,
            frame: ClientFrame::Ping,
        };
        assert_eq!(ping.encode(), r#"{"op":"ping"}"#);
        assert_eq!(ping.frame.op(), "ping");
    }
}
