//! Server -> client frames, encoded once and shared by every connection they go to.

use bytes::Bytes;
use serde::Serialize;

use super::client::{FrameError, SignalType};
use crate::channel::ChannelName;
use crate::error::{ByeCode, ErrorCode, UnsubCode};
use crate::event::{Envelope, EventId};
use crate::json::RawJson;
use crate::presence::VisibleStatus;

/// Every server frame except `evt`, which has its own fast path ([`EvtFrame`]).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(tag = "op", rename_all = "snake_case")]
pub enum ServerFrame {
    Welcome {
        user: String,
        session: String,
        heartbeat_ms: u64,
    },
    /// A successful reply; the `id` is the request's, left out when it had none.
    Ok {
        #[serde(skip_serializing_if = "Option::is_none")]
        id: Option<u64>,
        #[serde(flatten)]
        reply: OkReply,
    },
    Err {
        #[serde(skip_serializing_if = "Option::is_none")]
        id: Option<u64>,
        code: ErrorCode,
        message: String,
    },
    Unsubbed {
        ch: ChannelName,
        code: UnsubCode,
    },
    Bye {
        code: ByeCode,
        reconnect: bool,
    },
    Pong {
        #[serde(skip_serializing_if = "Option::is_none")]
        id: Option<u64>,
    },
    Sig {
        ch: ChannelName,
        from: String,
        #[serde(rename = "type")]
        ty: SignalType,
        data: RawJson,
    },
}

/// What an `ok` carries besides `op` and `id`; its fields are written inline.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(untagged)]
pub enum OkReply {
    /// `{"op":"ok","id":3}`: `unsub`, `presence`, `refresh`.
    Done {},
    /// `sub`: the channel as the client wrote it, the channel's last `seq` (0 when
    /// empty), the stream `epoch`, and whether `since` could be honoured.
    Subscribed {
        ch: ChannelName,
        seq: u64,
        epoch: String,
        recovered: bool,
    },
    /// `pub`: where the event was stored (the same for a retry with the same key).
    Published { seq: u64, event_id: EventId },
    /// `who`.
    Members { members: Vec<Member> },
    /// `history`: `evt` frames in ascending `seq` order.
    History { events: Vec<EvtFrame> },
    /// `rpc`: the worker's answer, as it sent it.
    Rpc { result: RawJson },
}

/// One entry of a `who` reply.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Member {
    pub user: String,
    pub status: VisibleStatus,
}

impl ServerFrame {
    /// A plain `ok` with no payload.
    pub fn ok(id: Option<u64>) -> ServerFrame {
        ServerFrame::Ok {
            id,
            reply: OkReply::Done {},
        }
    }

    pub fn error(id: Option<u64>, code: ErrorCode, message: impl Into<String>) -> ServerFrame {
        ServerFrame::Err {
            id,
            code,
            message: message.into(),
        }
    }

    /// A `bye` whose `reconnect` follows from the code.
    pub fn bye(code: ByeCode) -> ServerFrame {
        ServerFrame::Bye {
            code,
            reconnect: code.reconnect(),
        }
    }

    /// The frame as JSON text, ready to be shared between connections.
    pub fn encode(&self) -> Bytes {
        Bytes::from(serde_json::to_vec(self).expect(
            "server frames have string keys only and checked fields, which always serialize",
        ))
    }
}

impl From<&FrameError> for ServerFrame {
    fn from(error: &FrameError) -> ServerFrame {
        ServerFrame::error(error.id, error.code(), error.to_string())
    }
}

/// `{"op":"evt","ch":"project:p1","seq":1240,"event":{<envelope>}}`: a durable event
/// on a channel, as delivered live and in `history` replies.
///
/// `ch` is the channel exactly as the client subscribed (an alias stays an alias);
/// `seq` is the `EVENTS` stream sequence.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(tag = "op", rename = "evt")]
pub struct EvtFrame {
    pub ch: ChannelName,
    pub seq: u64,
    pub event: Envelope,
}

impl EvtFrame {
    pub fn encode(&self) -> Bytes {
        encode_evt_from(self.ch.as_str(), self.seq, &self.event)
    }
}

/// Builds an `evt` frame around an already-encoded envelope in one buffer.
///
/// `envelope_json` is spliced verbatim, so it must be one JSON value (what
/// [`Envelope::to_json`] produces). This is the fan-out hot path: the frame is built
/// once per event and channel, then shared by every connection that receives it.
pub fn encode_evt(ch: &str, seq: u64, envelope_json: &[u8]) -> Bytes {
    let mut out = evt_prefix(ch, seq, envelope_json.len());
    out.extend_from_slice(envelope_json);
    out.push(b'}');
    Bytes::from(out)
}

/// [`encode_evt`] for an envelope not yet encoded: writes it straight into the frame.
pub fn encode_evt_from(ch: &str, seq: u64, envelope: &Envelope) -> Bytes {
    // The fixed fields of an envelope rarely take more than 256 bytes besides `data`.
    let mut out = evt_prefix(ch, seq, envelope.data.as_str().len() + 256);
    envelope.write_json(&mut out);
    out.push(b'}');
    Bytes::from(out)
}

/// `{"op":"evt","ch":<ch>,"seq":<seq>,"event":` in a buffer with room for the rest.
fn evt_prefix(ch: &str, seq: u64, event_len: usize) -> Vec<u8> {
    const HEAD: &[u8] = br#"{"op":"evt","ch":"#;
    const SEQ: &[u8] = br#","seq":"#;
    const EVENT: &[u8] = br#","event":"#;
    // A valid channel needs no escaping (two quotes), and 20 digits hold any u64.
    let capacity = HEAD.len() + ch.len() + 2 + SEQ.len() + 20 + EVENT.len() + event_len + 1;
    let mut out = Vec::with_capacity(capacity);
    out.extend_from_slice(HEAD);
    serde_json::to_writer(&mut out, ch).expect("a string always serializes into a Vec");
    out.extend_from_slice(SEQ);
    write_decimal(&mut out, seq);
    out.extend_from_slice(EVENT);
    out
}

fn write_decimal(out: &mut Vec<u8>, mut value: u64) {
    let mut digits = [0u8; 20];
    let mut start = digits.len();
    loop {
        start -= 1;
        digits[start] = b'0' + (value % 10) as u8;
        value /= 10;
        if value == 0 {
            break;
        }
    }
    out.extend_from_slice(&digits[start..]);
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::event::Timestamp;

    fn ch(text: &str) -> ChannelName {
        ChannelName::parse(text).unwrap()
    }

    fn json(frame: &ServerFrame) -> String {
        String::from_utf8(frame.encode().to_vec()).unwrap()
    }

    fn envelope() -> Envelope {
        Envelope::from_json(
            br#"{"id":"evt_01JD","type":"bid.new","timestamp":"2026-11-22T14:30:00Z","data":{"amount":5000}}"#,
        )
        .unwrap()
    }

    #[test]
    fn welcome_err_bye_pong_unsubbed() {
        let welcome = ServerFrame::Welcome {
            user: "u1".into(),
            session: "s1".into(),
            heartbeat_ms: 25000,
        };
        assert_eq!(
            json(&welcome),
            r#"{"op":"welcome","user":"u1","session":"s1","heartbeat_ms":25000}"#
        );
        assert_eq!(
            json(&ServerFrame::error(Some(2), ErrorCode::Forbidden, "no")),
            r#"{"op":"err","id":2,"code":"forbidden","message":"no"}"#
        );
        assert_eq!(
            json(&ServerFrame::error(
                None,
                ErrorCode::TooLarge,
                "frame too large"
            )),
            r#"{"op":"err","code":"too_large","message":"frame too large"}"#
        );
        assert_eq!(
            json(&ServerFrame::bye(ByeCode::Draining)),
            r#"{"op":"bye","code":"draining","reconnect":true}"#
        );
        assert_eq!(
            json(&ServerFrame::bye(ByeCode::Unauthorized)),
            r#"{"op":"bye","code":"unauthorized","reconnect":false}"#
        );
        assert_eq!(
            json(&ServerFrame::Pong { id: Some(8) }),
            r#"{"op":"pong","id":8}"#
        );
        assert_eq!(
            json(&ServerFrame::Unsubbed {
                ch: ch("project:p1"),
                code: UnsubCode::Revoked
            }),
            r#"{"op":"unsubbed","ch":"project:p1","code":"revoked"}"#
        );
    }

    #[test]
    fn ok_shapes() {
        assert_eq!(json(&ServerFrame::ok(Some(3))), r#"{"op":"ok","id":3}"#);
        assert_eq!(json(&ServerFrame::ok(None)), r#"{"op":"ok"}"#);
        let ok = |id, reply| {
            json(&ServerFrame::Ok {
                id: Some(id),
                reply,
            })
        };
        assert_eq!(
            ok(
                2,
                OkReply::Subscribed {
                    ch: ch("project:p1"),
                    seq: 0,
                    epoch: "e1".into(),
                    recovered: true
                }
            ),
            r#"{"op":"ok","id":2,"ch":"project:p1","seq":0,"epoch":"e1","recovered":true}"#
        );
        assert_eq!(
            ok(
                4,
                OkReply::Published {
                    seq: 1301,
                    event_id: EventId::parse("evt_01JD").unwrap()
                }
            ),
            r#"{"op":"ok","id":4,"seq":1301,"event_id":"evt_01JD"}"#
        );
        assert_eq!(
            ok(
                5,
                OkReply::Members {
                    members: vec![Member {
                        user: "u2".into(),
                        status: VisibleStatus::Online
                    }]
                }
            ),
            r#"{"op":"ok","id":5,"members":[{"user":"u2","status":"online"}]}"#
        );
        assert_eq!(
            ok(
                9,
                OkReply::Rpc {
                    result: RawJson::from_slice(br#"{"unread":0}"#).unwrap()
                }
            ),
            r#"{"op":"ok","id":9,"result":{"unread":0}}"#
        );
        let evt = EvtFrame {
            ch: ch("conversation:c1"),
            seq: 1300,
            event: envelope(),
        };
        assert_eq!(
            ok(
                6,
                OkReply::History {
                    events: vec![evt.clone(), evt]
                }
            ),
            format!(
                r#"{{"op":"ok","id":6,"events":[{e},{e}]}}"#,
                e = r#"{"op":"evt","ch":"conversation:c1","seq":1300,"event":{"id":"evt_01JD","type":"bid.new","timestamp":"2026-11-22T14:30:00Z","data":{"amount":5000}}}"#
            )
        );
        assert_eq!(
            ok(6, OkReply::History { events: vec![] }),
            r#"{"op":"ok","id":6,"events":[]}"#
        );
    }

    #[test]
    fn sig_frame() {
        let sig = ServerFrame::Sig {
            ch: ch("conversation:c1"),
            from: "u2".into(),
            ty: SignalType::parse("typing").unwrap(),
            data: RawJson::from_slice(br#"{"typing":true}"#).unwrap(),
        };
        assert_eq!(
            json(&sig),
            r#"{"op":"sig","ch":"conversation:c1","from":"u2","type":"typing","data":{"typing":true}}"#
        );
    }

    #[test]
    fn evt_fast_path_equals_serde() {
        let mut event = envelope();
        event.timestamp = Timestamp::now();
        for (channel, seq) in [
            ("project:p1", 0),
            ("user:u1:messages", 1240),
            ("job:j", u64::MAX),
        ] {
            let frame = EvtFrame {
                ch: ch(channel),
                seq,
                event: event.clone(),
            };
            let serde = serde_json::to_vec(&frame).unwrap();
            assert_eq!(frame.encode(), serde);
            assert_eq!(encode_evt_from(channel, seq, &event), serde);
            assert_eq!(encode_evt(channel, seq, &event.to_json()), serde);
        }
        assert_eq!(
            encode_evt("project:p1", 1240, b"{}"),
            br#"{"op":"evt","ch":"project:p1","seq":1240,"event":{}}"#.as_slice()
        );
    }

    #[test]
    fn evt_fast_path_escapes_the_channel() {
        let odd = "a\"b\\c\n\u{1}é";
        let frame = encode_evt(odd, 7, b"null");
        let parsed: serde_json::Value = serde_json::from_slice(&frame).unwrap();
        assert_eq!(parsed["ch"], odd);
        assert_eq!(parsed["seq"], 7);
    }

    #[test]
    fn frame_errors_become_err_frames() {
        let error = crate::frame::Request::decode(br#"{"op":"nope","id":7}"#).unwrap_err();
        assert_eq!(
            json(&ServerFrame::from(&error)),
            r#"{"op":"err","id":7,"code":"bad_request","message":"unknown op `nope`"}"#
        );
    }
}
