//! Reading a stored event as a membership change: the boundary where an untrusted NATS
//! message becomes a typed [`Change`], or is refused with the reason it is poison.
//!
//! Pure functions of the message: no I/O here.

use switchboard_schemas::event::types;
use switchboard_schemas::shapes::{MemberData, MemberRole, ParticipantData};
use switchboard_schemas::{
    ChannelName, Envelope, EventId, Membership, Namespace, SubjectKind, UserId,
};

/// One membership fact from the log: `user` is (or is no longer) a member of `channel`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Change {
    pub channel: ChannelName,
    pub user: UserId,
    /// The role granted; `None` on removals, which keep the role the row had.
    pub role: Option<MemberRole>,
    pub active: bool,
    pub event_id: EventId,
}

/// The four event types that change membership.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    MemberAdded,
    MemberRemoved,
    ParticipantAdded,
    ParticipantRemoved,
}

impl Kind {
    fn of(ty: &str) -> Option<Kind> {
        match ty {
            types::MEMBER_ADDED => Some(Kind::MemberAdded),
            types::MEMBER_REMOVED => Some(Kind::MemberRemoved),
            types::CONVERSATION_PARTICIPANT_ADDED => Some(Kind::ParticipantAdded),
            types::CONVERSATION_PARTICIPANT_REMOVED => Some(Kind::ParticipantRemoved),
            _ => None,
        }
    }
}

/// Why a message that claims to be a membership change cannot be one.
#[derive(Debug, thiserror::Error)]
pub enum Invalid {
    #[error("undecodable envelope: {0}")]
    Envelope(#[from] switchboard_schemas::EnvelopeError),
    #[error("Rt-Type header {header:?} disagrees with the envelope's type {envelope:?}")]
    TypeMismatch { header: String, envelope: String },
    #[error("{0}")]
    Subject(#[from] switchboard_schemas::ChannelError),
    #[error("bad data for {ty}: {source}")]
    Data {
        ty: &'static str,
        source: serde_json::Error,
    },
    #[error("invalid user id {0:?}: expected 1 to 128 characters of [A-Za-z0-9_-]")]
    User(String),
    #[error("{ty} on {channel}: participants belong to conversation channels")]
    NotAConversation { ty: &'static str, channel: String },
}

impl Change {
    /// The change a stored event describes; `None` for events of any other type.
    ///
    /// `rt_type` is the `Rt-Type` header: when present and not a membership type, the
    /// payload is not even decoded. When absent, the envelope says what the event is.
    pub fn read(
        subject: &str,
        rt_type: Option<&str>,
        payload: &[u8],
        json: bool,
    ) -> Result<Option<Change>, Invalid> {
        if rt_type.is_some_and(|ty| Kind::of(ty).is_none()) {
            return Ok(None);
        }
        let envelope = Envelope::decode(payload, json)?;
        let ty = envelope.ty.as_str();
        if let Some(header) = rt_type.filter(|header| *header != ty) {
            return Err(Invalid::TypeMismatch {
                header: header.to_string(),
                envelope: ty.to_string(),
            });
        }
        let Some(kind) = Kind::of(ty) else {
            return Ok(None);
        };
        let channel = durable_channel(subject)?;
        Change::from_event(kind, channel, envelope).map(Some)
    }

    fn from_event(kind: Kind, channel: ChannelName, envelope: Envelope) -> Result<Change, Invalid> {
        let (user, role, active) = match kind {
            Kind::MemberAdded => {
                let data: MemberData = decode(&envelope, types::MEMBER_ADDED)?;
                (data.user, Some(data.role), true)
            }
            Kind::MemberRemoved => {
                let data: ParticipantData = decode(&envelope, types::MEMBER_REMOVED)?;
                (data.user, None, false)
            }
            Kind::ParticipantAdded => {
                let ty = types::CONVERSATION_PARTICIPANT_ADDED;
                require_conversation(ty, &channel)?;
                let data: ParticipantData = decode(&envelope, ty)?;
                (data.user, Some(MemberRole::Member), true)
            }
            Kind::ParticipantRemoved => {
                let ty = types::CONVERSATION_PARTICIPANT_REMOVED;
                require_conversation(ty, &channel)?;
                let data: ParticipantData = decode(&envelope, ty)?;
                (data.user, None, false)
            }
        };
        Ok(Change {
            channel,
            user: UserId::parse(&user).map_err(|e| Invalid::User(e.0))?,
            role,
            active,
            event_id: envelope.id,
        })
    }

    /// The key in the `members` bucket: `<ns>.<id>.<user>`.
    pub fn key(&self) -> String {
        Membership::new(&self.channel, self.user.clone()).key()
    }
}

fn durable_channel(subject: &str) -> Result<ChannelName, Invalid> {
    match ChannelName::from_subject(subject)? {
        (SubjectKind::Durable, channel) => Ok(channel),
        _ => Err(switchboard_schemas::ChannelError::InvalidSubject(subject.to_string()).into()),
    }
}

fn decode<'a, T: serde::Deserialize<'a>>(
    envelope: &'a Envelope,
    ty: &'static str,
) -> Result<T, Invalid> {
    envelope
        .data
        .decode()
        .map_err(|source| Invalid::Data { ty, source })
}

fn require_conversation(ty: &'static str, channel: &ChannelName) -> Result<(), Invalid> {
    if channel.namespace() == Namespace::Conversation {
        Ok(())
    } else {
        Err(Invalid::NotAConversation {
            ty,
            channel: channel.to_string(),
        })
    }
}

#[cfg(test)]
mod tests {
    use switchboard_schemas::{EventType, RawJson};

    use super::*;

    fn event(ty: &str, data: &str) -> Envelope {
        Envelope::new(
            EventType::parse(ty).unwrap(),
            RawJson::from_string(data.to_string()).unwrap(),
        )
    }

    fn read(
        subject: &str,
        header: Option<&str>,
        event: &Envelope,
    ) -> Result<Option<Change>, Invalid> {
        Change::read(subject, header, &event.to_postcard(), false)
    }

    #[test]
    fn member_added_and_removed() {
        let added = event("member.added", r#"{"user":"u1","role":"owner"}"#);
        let change = read("rt.project.p1", Some("member.added"), &added)
            .unwrap()
            .unwrap();
        assert_eq!(change.channel.as_str(), "project:p1");
        assert_eq!(change.user.as_str(), "u1");
        assert_eq!(change.role, Some(MemberRole::Owner));
        assert!(change.active);
        assert_eq!(change.event_id, added.id);
        assert_eq!(change.key(), "project.p1.u1");

        // A removal needs only the user; a role, if given, changes nothing.
        let removed = event("member.removed", r#"{"user":"u1","role":"viewer"}"#);
        let change = read("rt.project.p1", None, &removed).unwrap().unwrap();
        assert_eq!((change.role, change.active), (None, false));
    }

    #[test]
    fn participants_are_members_of_conversations_only() {
        let added = event("conversation.participant_added", r#"{"user":"u2"}"#);
        let json = added.to_json();
        let change = Change::read("rt.conversation.c1", None, &json, true)
            .unwrap()
            .unwrap();
        assert_eq!(change.role, Some(MemberRole::Member));
        assert_eq!(change.key(), "conversation.c1.u2");

        let error = read("rt.project.p1", None, &added).unwrap_err();
        assert!(matches!(error, Invalid::NotAConversation { .. }), "{error}");
    }

    #[test]
    fn other_types_are_ignored_without_decoding() {
        assert!(
            Change::read("rt.project.p1", Some("bid.new"), b"garbage", false)
                .unwrap()
                .is_none()
        );
        let bid = event("bid.new", r#"{"amount":1}"#);
        assert!(read("rt.project.p1", None, &bid).unwrap().is_none());
    }

    #[test]
    fn poison_is_refused_with_a_reason() {
        let garbage = Change::read("rt.project.p1", Some("member.added"), b"garbage", false);
        assert!(matches!(garbage, Err(Invalid::Envelope(_))));

        let cases = [
            (
                "rt.project.p1",
                Some("member.added"),
                "member.added",
                r#"{"user":"u 1","role":"owner"}"#,
            ),
            (
                "rt.project.p1",
                None,
                "member.added",
                r#"{"user":"a.b","role":"owner"}"#,
            ),
            (
                "rt.project.p1",
                None,
                "member.added",
                r#"{"user":"u1","role":"admin"}"#,
            ),
            ("rt.project.p1", None, "member.added", r#"{"role":"owner"}"#),
            ("rt.project.p1", None, "member.removed", r#"[]"#),
            (
                "rt.project.p1",
                Some("member.removed"),
                "member.added",
                r#"{"user":"u1","role":"owner"}"#,
            ),
            (
                "live.project.p1",
                None,
                "member.added",
                r#"{"user":"u1","role":"owner"}"#,
            ),
            (
                "rt.nope.p1",
                None,
                "member.added",
                r#"{"user":"u1","role":"owner"}"#,
            ),
        ];
        for (subject, header, ty, data) in cases {
            let result = read(subject, header, &event(ty, data));
            assert!(result.is_err(), "{subject} {ty} {data}: {result:?}");
        }
        assert!(UserId::parse(&"u".repeat(128)).is_ok());
        assert!(UserId::parse(&"u".repeat(129)).is_err());
        assert!(UserId::parse("").is_err());
    }
}
