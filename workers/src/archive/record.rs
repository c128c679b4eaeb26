//! Reading a stored event as an archive row: the boundary where an untrusted NATS message
//! becomes a typed [`Record`], or is refused with the reason it is poison.
//!
//! Pure functions of the message: no I/O here.

use serde_json::Value;
use switchboard_schemas::event::types;
use switchboard_schemas::{ChannelName, Envelope, Namespace, SubjectKind, UserId};

/// One event as the archive stores it.
#[derive(Debug, Clone, PartialEq)]
pub struct Record {
    pub channel: ChannelName,
    pub seq: u64,
    pub event_id: String,
    pub ty: String,
    pub actor: Option<String>,
    /// The envelope's `timestamp`, RFC 3339.
    pub timestamp: String,
    /// The envelope as JSON text, ready for `jsonb`.
    pub envelope: String,
    /// `message.edited` / `message.deleted`: the original's seq.
    pub ref_seq: Option<u64>,
    /// `message.new`: its text.
    pub text: Option<String>,
    /// What the event means for the inbox, on conversation channels.
    pub fact: Option<Fact>,
}

/// What an archived conversation event changes in its participants' inboxes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Fact {
    /// `message.new`, `message.edited`, `message.deleted`: every participant's entry.
    Message,
    /// A participant joined (`true`) or left: that user's entry.
    Member { user: UserId, active: bool },
    /// `message.receipt`: the user's read cursor.
    Read { user: UserId, read: u64 },
}

/// Why a stored message cannot be archived.
#[derive(Debug, thiserror::Error)]
pub enum Invalid {
    #[error("not a durable channel subject: {0}")]
    Subject(String),
    #[error("undecodable envelope: {0}")]
    Envelope(#[from] switchboard_schemas::EnvelopeError),
    #[error("the envelope is not JSON PostgreSQL can store: {0}")]
    Json(serde_json::Error),
}

impl Record {
    /// The record for the event stored at `seq` on `subject`.
    pub fn read(subject: &str, seq: u64, payload: &[u8], json: bool) -> Result<Record, Invalid> {
        let channel = match ChannelName::from_subject(subject) {
            Ok((SubjectKind::Durable, channel)) => channel,
            _ => return Err(Invalid::Subject(subject.chars().take(200).collect())),
        };
        let mut envelope = Envelope::decode(payload, json)?;
        let ty = envelope.ty.as_str().to_string();
        let data: Value = envelope.data.decode().unwrap_or(Value::Null);
        let ref_seq = match ty.as_str() {
            types::MESSAGE_EDITED | types::MESSAGE_DELETED => {
                data.get("seq").and_then(Value::as_u64)
            }
            _ => None,
        };
        let text = match ty.as_str() {
            types::MESSAGE_NEW => data.get("text").and_then(Value::as_str).map(without_nul),
            _ => None,
        };
        // A deletion keeps only what it points at: the text it might carry goes with the
        // message it deletes.
        if ty == types::MESSAGE_DELETED
            && let Some(target) = ref_seq
        {
            envelope.data =
                switchboard_schemas::RawJson::encode(&serde_json::json!({ "seq": target }))
                    .map_err(Invalid::Json)?;
        }
        let fact = if channel.namespace() == Namespace::Conversation {
            fact(&ty, &data, envelope.actor.as_ref().map(|a| a.id.as_str()))
        } else {
            None
        };
        Ok(Record {
            seq,
            event_id: envelope.id.as_str().to_string(),
            actor: envelope.actor.as_ref().map(|actor| without_nul(&actor.id)),
            timestamp: envelope.timestamp.to_rfc3339(),
            envelope: storable(envelope.to_json())?,
            channel,
            ty,
            ref_seq,
            text,
            fact,
        })
    }
}

fn fact(ty: &str, data: &Value, actor: Option<&str>) -> Option<Fact> {
    let user = || {
        data.get("user")
            .and_then(Value::as_str)
            .and_then(|user| UserId::parse(user).ok())
    };
    match ty {
        types::MESSAGE_NEW | types::MESSAGE_EDITED | types::MESSAGE_DELETED => Some(Fact::Message),
        types::CONVERSATION_PARTICIPANT_ADDED | types::MEMBER_ADDED => Some(Fact::Member {
            user: user()?,
            active: true,
        }),
        types::CONVERSATION_PARTICIPANT_REMOVED | types::MEMBER_REMOVED => Some(Fact::Member {
            user: user()?,
            active: false,
        }),
        // Only the receipts job's own events, whose actor is the user they are about
        // (docs/protocol.md §10.5), move a read cursor.
        types::MESSAGE_RECEIPT => {
            let user = user()?;
            let read = data.get("read").and_then(Value::as_u64)?;
            (actor == Some(user.as_str())).then_some(Fact::Read { user, read })
        }
        _ => None,
    }
}

/// PostgreSQL's `text` and `jsonb` refuse the NUL character; it becomes U+FFFD.
fn without_nul(text: &str) -> String {
    text.replace('\0', "\u{FFFD}")
}

/// The envelope's JSON with every NUL (`\u0000` in a string) replaced, so `jsonb` takes it.
fn storable(json: Vec<u8>) -> Result<String, Invalid> {
    let text = String::from_utf8(json).map_err(|e| {
        Invalid::Json(serde_json::Error::io(std::io::Error::new(
            std::io::ErrorKind::InvalidData,
            e,
        )))
    })?;
    // `jsonb` refuses NUL and lone surrogates, both only ever written as escapes; a
    // round trip through serde_json turns the rest into plain characters and refuses a
    // lone surrogate.
    if !text.contains("\\u0000") && !text.contains("\\ud") && !text.contains("\\uD") {
        return Ok(text);
    }
    let mut value: Value = serde_json::from_str(&text).map_err(Invalid::Json)?;
    scrub(&mut value);
    Ok(value.to_string())
}

fn scrub(value: &mut Value) {
    match value {
        Value::String(text) if text.contains('\0') => *text = without_nul(text),
        Value::Array(items) => items.iter_mut().for_each(scrub),
        Value::Object(fields) => {
            let keys: Vec<String> = fields
                .keys()
                .filter(|k| k.contains('\0'))
                .cloned()
                .collect();
            for key in keys {
                if let Some(item) = fields.remove(&key) {
                    fields.insert(without_nul(&key), item);
                }
            }
            fields.values_mut().for_each(scrub);
        }
        _ => {}
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use switchboard_schemas::{Actor, EventType, RawJson};

    fn envelope(ty: &str, data: Value, actor: Option<&str>) -> Envelope {
        let mut event = Envelope::new(
            EventType::parse(ty).unwrap(),
            RawJson::from_string(data.to_string()).unwrap(),
        );
        event.actor = actor.map(|id| Actor {
            id: id.into(),
            kind: "user".into(),
        });
        event
    }

    fn read(subject: &str, event: &Envelope) -> Record {
        Record::read(subject, 7, &event.to_json(), true).unwrap()
    }

    #[test]
    fn a_message_carries_its_text_and_touches_every_entry() {
        let event = envelope("message.new", serde_json::json!({"text": "hi"}), Some("u1"));
        let record = read("rt.conversation.c1", &event);
        assert_eq!(record.channel.as_str(), "conversation:c1");
        assert_eq!(record.seq, 7);
        assert_eq!(record.text.as_deref(), Some("hi"));
        assert_eq!(record.actor.as_deref(), Some("u1"));
        assert_eq!(record.fact, Some(Fact::Message));
        assert_eq!(record.ref_seq, None);
    }

    #[test]
    fn edits_and_deletes_point_at_their_original_and_a_deletion_keeps_no_text() {
        let edit = envelope(
            "message.edited",
            serde_json::json!({"seq": 3, "text": "new"}),
            Some("u1"),
        );
        let record = read("rt.conversation.c1", &edit);
        assert_eq!((record.ref_seq, record.text), (Some(3), None));
        let delete = envelope(
            "message.deleted",
            serde_json::json!({"seq": 3, "text": "old words"}),
            Some("u1"),
        );
        let record = read("rt.conversation.c1", &delete);
        assert_eq!(record.ref_seq, Some(3));
        assert!(
            !record.envelope.contains("old words"),
            "{}",
            record.envelope
        );
    }

    #[test]
    fn receipts_move_only_their_own_users_cursor() {
        let data = serde_json::json!({"user": "u2", "delivered": 5, "read": 4});
        let own = envelope("message.receipt", data.clone(), Some("u2"));
        assert_eq!(
            read("rt.conversation.c1", &own).fact,
            Some(Fact::Read {
                user: UserId::parse("u2").unwrap(),
                read: 4
            })
        );
        let forged = envelope("message.receipt", data, Some("u3"));
        assert_eq!(read("rt.conversation.c1", &forged).fact, None);
    }

    #[test]
    fn membership_counts_only_on_conversations() {
        let joined = envelope(
            "conversation.participant_added",
            serde_json::json!({"user": "u2"}),
            None,
        );
        assert_eq!(
            read("rt.conversation.c1", &joined).fact,
            Some(Fact::Member {
                user: UserId::parse("u2").unwrap(),
                active: true
            })
        );
        let message = envelope("message.new", serde_json::json!({"text": "x"}), None);
        assert_eq!(read("rt.group.g1", &message).fact, None);
    }

    #[test]
    fn nul_characters_never_reach_postgresql() {
        let event = envelope(
            "message.new",
            serde_json::json!({"text": "a\u{0}b", "k\u{0}": ["\u{0}"]}),
            Some("u\u{0}1"),
        );
        let record = read("rt.conversation.c1", &event);
        assert_eq!(record.text.as_deref(), Some("a\u{FFFD}b"));
        assert!(!record.envelope.contains("\\u0000"), "{}", record.envelope);
        assert!(!record.actor.unwrap().contains('\0'));
    }

    #[test]
    fn poison_is_refused_with_a_reason() {
        assert!(Record::read("rt.conversation.c1", 1, b"{", true).is_err());
        let event = envelope("message.new", serde_json::json!({}), None);
        assert!(Record::read("live.conversation.c1", 1, &event.to_json(), true).is_err());
        assert!(Record::read("rt.conversation", 1, &event.to_json(), true).is_err());
    }
}
