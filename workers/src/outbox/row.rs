//! One row of `switchboard.outbox` read as the event it stands for: the boundary where a
//! SQL row becomes a typed [`Envelope`] on a [`ChannelName`], or is refused with the
//! reason it can never be published.
//!
//! `switchboard.emit(...)` checks everything checked here, so a refusal means the row was
//! written some other way (a plain `INSERT`, a row from before the second migration).
//!
//! Pure functions: no I/O here.

use serde::Deserialize;
use switchboard_schemas::{Actor, ChannelName, Envelope, EventId, EventType, RawJson, Timestamp};

/// An unsent row as the relay reads it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OutboxRow {
    pub seq: i64,
    pub event_id: String,
    pub channel: String,
    pub ty: String,
    /// `data` as JSON text.
    pub data: String,
    /// `actor` as JSON text, if any.
    pub actor: Option<String>,
    /// `created_at` in microseconds since the Unix epoch: the envelope's timestamp.
    pub created_micros: i64,
}

/// Why a row can never become an event.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Unpublishable {
    #[error("{0}")]
    Channel(String),
    #[error("{0} is an alias; events go to the base channel")]
    Alias(String),
    #[error("{0}")]
    Field(String),
    #[error(
        "actor must be an object with a string \"id\" and a string \"type\" (switchboard.emit enforces it): {0}"
    )]
    Actor(String),
    #[error("data is not JSON: {0}")]
    Data(String),
}

#[derive(Deserialize)]
struct RowActor {
    id: String,
    #[serde(rename = "type")]
    kind: String,
}

impl OutboxRow {
    /// The channel and the envelope to publish there.
    pub fn to_event(&self) -> Result<(ChannelName, Envelope), Unpublishable> {
        let channel =
            ChannelName::parse(&self.channel).map_err(|e| Unpublishable::Channel(e.to_string()))?;
        if channel.alias().is_some() {
            return Err(Unpublishable::Alias(self.channel.clone()));
        }
        let field = |e: switchboard_schemas::EventFieldError| Unpublishable::Field(e.to_string());
        let actor = match &self.actor {
            None => None,
            Some(text) => {
                let actor: RowActor =
                    serde_json::from_str(text).map_err(|e| Unpublishable::Actor(e.to_string()))?;
                Some(Actor {
                    id: actor.id,
                    kind: actor.kind,
                })
            }
        };
        let envelope = Envelope {
            id: EventId::parse(&self.event_id).map_err(field)?,
            ty: EventType::parse(&self.ty).map_err(field)?,
            timestamp: Timestamp::from_unix_nanos(i128::from(self.created_micros) * 1000)
                .map_err(field)?,
            source: None,
            subject: None,
            actor,
            data: RawJson::from_string(self.data.clone())
                .map_err(|e| Unpublishable::Data(e.to_string()))?,
            metadata: None,
        };
        Ok((channel, envelope))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn row() -> OutboxRow {
        OutboxRow {
            seq: 1,
            event_id: "evt_0193a2c4e0a83f9c2b7d41e6a9".into(),
            channel: "project:p1".into(),
            ty: "project.update".into(),
            data: r#"{"status": "open"}"#.into(),
            actor: Some(r#"{"id": "u1", "type": "user", "extra": 1}"#.into()),
            created_micros: 1_795_000_000_123_456,
        }
    }

    #[test]
    fn a_row_becomes_its_event() {
        let (channel, envelope) = row().to_event().unwrap();
        assert_eq!(channel.as_str(), "project:p1");
        assert_eq!(envelope.id.as_str(), "evt_0193a2c4e0a83f9c2b7d41e6a9");
        assert_eq!(envelope.ty.as_str(), "project.update");
        assert_eq!(envelope.data.as_str(), r#"{"status": "open"}"#);
        let actor = envelope.actor.unwrap();
        assert_eq!((actor.id.as_str(), actor.kind.as_str()), ("u1", "user"));
        assert_eq!(envelope.timestamp.unix_nanos(), 1_795_000_000_123_456_000);
        let bare = OutboxRow {
            actor: None,
            ..row()
        };
        assert!(bare.to_event().unwrap().1.actor.is_none());
    }

    #[test]
    fn rows_that_cannot_be_events_say_why() {
        let cases = [
            (
                OutboxRow {
                    channel: "project:a.b".into(),
                    ..row()
                },
                "Channel",
            ),
            (
                OutboxRow {
                    channel: "user:u1:messages".into(),
                    ..row()
                },
                "Alias",
            ),
            (
                OutboxRow {
                    event_id: "1".into(),
                    ..row()
                },
                "Field",
            ),
            (
                OutboxRow {
                    ty: "Project".into(),
                    ..row()
                },
                "Field",
            ),
            (
                OutboxRow {
                    actor: Some(r#"{"id":"u1"}"#.into()),
                    ..row()
                },
                "Actor",
            ),
            (
                OutboxRow {
                    actor: Some(r#""u1""#.into()),
                    ..row()
                },
                "Actor",
            ),
            (
                OutboxRow {
                    data: "{".into(),
                    ..row()
                },
                "Data",
            ),
            (
                OutboxRow {
                    created_micros: i64::MAX,
                    ..row()
                },
                "Field",
            ),
        ];
        for (row, kind) in cases {
            let error = row.to_event().unwrap_err();
            assert!(format!("{error:?}").starts_with(kind), "{row:?}: {error:?}");
        }
    }
}
