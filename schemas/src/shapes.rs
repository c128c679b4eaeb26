//! Data shapes that cross process boundaries (docs/protocol.md, section 10): token claims, the `data`
//! of the events workers publish or react to, and the commands edges send to workers.
//!
//! Field names are the JSON ones of the design; the structs only give them types.

use serde::{Deserialize, Serialize};

use crate::channel::{ChannelError, ChannelName, ChannelPattern, Namespace};
use crate::event::Timestamp;
use crate::frame::SignalType;
use crate::json::RawJson;
use crate::presence::VisibleStatus;

/// The claims of a Switchboard JWT. Signature, `exp`, `nbf`, `iss` and `aud` are
/// checked by the JWT library; this is what the token says once it is trusted.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Claims {
    /// The user id.
    pub sub: String,
    /// Expiry, seconds since the Unix epoch.
    pub exp: i64,
    /// Not valid before, seconds since the Unix epoch.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub nbf: Option<i64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub iss: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub aud: Option<Audience>,
    /// Display name.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    #[serde(default)]
    pub role: Role,
    /// Channels granted by the token itself, on top of membership. A token with a
    /// malformed pattern is refused as a whole rather than silently granting less.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub channels: Vec<ChannelPattern>,
}

impl Claims {
    /// `user:<sub>`, the user's own channel; an error when `sub` is not a valid
    /// channel id.
    pub fn user_channel(&self) -> Result<ChannelName, ChannelError> {
        ChannelName::new(Namespace::User, &self.sub)
    }

    /// Whether the `channels` claim grants `channel`.
    pub fn grants(&self, channel: &ChannelName) -> bool {
        self.channels.iter().any(|pattern| pattern.matches(channel))
    }
}

/// The JWT `aud` claim: one string or a list.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum Audience {
    One(String),
    Many(Vec<String>),
}

impl Audience {
    pub fn contains(&self, audience: &str) -> bool {
        match self {
            Audience::One(one) => one == audience,
            Audience::Many(many) => many.iter().any(|one| one == audience),
        }
    }
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Role {
    /// An end user on a client connection.
    #[default]
    User,
    /// A backend: may use `POST /v1/publish`.
    Service,
}

/// `data` of `member.added` / `member.removed`: `{"user":"u1","role":"owner"}`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct MemberData {
    pub user: String,
    pub role: MemberRole,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum MemberRole {
    Owner,
    Member,
    Contractor,
    Viewer,
}

/// `data` of `conversation.participant_added` / `_removed`: `{"user":"u2"}`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ParticipantData {
    pub user: String,
}

/// `data` of `message.receipt`: a participant's cursors on the conversation.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ReceiptData {
    pub user: String,
    pub delivered: u64,
    pub read: u64,
}

/// `data` of `user.presence` on `presence:<user>`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct PresenceData {
    pub user: String,
    pub status: VisibleStatus,
    /// Connected devices that count towards the status (invisible ones do not).
    pub devices: u32,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_seen: Option<Timestamp>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub text: Option<String>,
}

/// `data` of `user.notification` on `user:<id>`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct NotificationData {
    /// `ntf_...`
    pub id: String,
    pub category: NotificationCategory,
    pub title: String,
    pub message: String,
    pub priority: Priority,
    /// The event the notification is about.
    #[serde(rename = "ref")]
    pub reference: NotificationRef,
    /// The user's unread count after this notification.
    pub unread: u64,
    pub created_at: Timestamp,
}

/// Notification categories, the unit of per-user preferences (docs/operations.md, section 3).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum NotificationCategory {
    Bid,
    Message,
    Payment,
    Job,
    Project,
    System,
}

impl NotificationCategory {
    pub const ALL: [NotificationCategory; 6] = [
        NotificationCategory::Bid,
        NotificationCategory::Message,
        NotificationCategory::Payment,
        NotificationCategory::Job,
        NotificationCategory::Project,
        NotificationCategory::System,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            NotificationCategory::Bid => "bid",
            NotificationCategory::Message => "message",
            NotificationCategory::Payment => "payment",
            NotificationCategory::Job => "job",
            NotificationCategory::Project => "project",
            NotificationCategory::System => "system",
        }
    }
}

#[derive(
    Debug, Clone, Copy, Default, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize,
)]
#[serde(rename_all = "snake_case")]
pub enum Priority {
    Low,
    #[default]
    Normal,
    High,
    Urgent,
}

/// Where the event behind a notification is stored: `{"channel":"project:p1","seq":42}`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct NotificationRef {
    pub channel: ChannelName,
    pub seq: u64,
}

/// `data` of `notification.read` on `user:<id>`: `{"ids":["ntf_..."],"unread":0}`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct NotificationReadData {
    pub ids: Vec<String>,
    pub unread: u64,
}

/// A signal as it travels on `sig.<ns>.<id>`: `{"from":"u2","type":"typing","data":{...}}`.
/// Edges and backends both publish these; the edge forwards them as `sig` frames.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SignalMessage {
    /// The sending user; the edge uses it not to echo a signal to its sender.
    pub from: String,
    #[serde(rename = "type")]
    pub ty: SignalType,
    #[serde(default)]
    pub data: RawJson,
}

/// What an edge sends on `cmd.receipts.<conversation id>` when a client acks or reads:
/// a user's cursors moved (cumulative; either may be absent).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ReceiptCommand {
    /// The conversation channel, e.g. `conversation:c1`.
    pub conversation: ChannelName,
    pub user: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub delivered: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub read: Option<u64>,
}

impl ReceiptCommand {
    /// Every receipt command: what the receipts worker consumes.
    pub const SUBJECTS: &'static str = "cmd.receipts.>";

    /// `cmd.receipts.<conversation id>`.
    pub fn subject(&self) -> String {
        format!("cmd.receipts.{}", self.conversation.id())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn claims_read_defaults_and_both_audience_forms() {
        let minimal: Claims = serde_json::from_str(r#"{"sub":"u1","exp":1700000000}"#).unwrap();
        assert_eq!(minimal.role, Role::User);
        assert!(minimal.channels.is_empty());
        assert_eq!(minimal.user_channel().unwrap().as_str(), "user:u1");
        assert_eq!(
            serde_json::to_string(&minimal).unwrap(),
            r#"{"sub":"u1","exp":1700000000,"role":"user"}"#
        );

        let full: Claims = serde_json::from_str(
            r#"{"sub":"svc","exp":1,"nbf":0,"iss":"me","aud":["a","b"],"name":"S","role":"service","channels":["project:p1","domain:*"]}"#,
        )
        .unwrap();
        assert_eq!(full.role, Role::Service);
        assert!(full.aud.as_ref().unwrap().contains("b"));
        assert!(Audience::One("a".into()).contains("a"));
        assert!(full.grants(&ChannelName::parse("domain:x").unwrap()));
        assert!(!full.grants(&ChannelName::parse("project:p2").unwrap()));

        assert!(
            serde_json::from_str::<Claims>(r#"{"sub":"u","exp":1,"channels":["project:a.b"]}"#)
                .is_err()
        );
        assert!(serde_json::from_str::<Claims>(r#"{"sub":"u","exp":1,"role":"root"}"#).is_err());
    }

    #[test]
    fn event_data_shapes_match_the_design() {
        let member: MemberData = serde_json::from_str(r#"{"user":"u1","role":"owner"}"#).unwrap();
        assert_eq!(member.role, MemberRole::Owner);

        let presence = PresenceData {
            user: "u1".into(),
            status: VisibleStatus::Busy,
            devices: 2,
            last_seen: Some(Timestamp::parse("2026-11-22T14:30:00Z").unwrap()),
            text: Some("On site".into()),
        };
        assert_eq!(
            serde_json::to_string(&presence).unwrap(),
            r#"{"user":"u1","status":"busy","devices":2,"lastSeen":"2026-11-22T14:30:00Z","text":"On site"}"#
        );

        let notification = r#"{"id":"ntf_1","category":"bid","title":"New bid","message":"5000","priority":"high","ref":{"channel":"project:p1","seq":42},"unread":3,"createdAt":"2026-11-22T14:30:00Z"}"#;
        let parsed: NotificationData = serde_json::from_str(notification).unwrap();
        assert_eq!(parsed.reference.seq, 42);
        assert_eq!(serde_json::to_string(&parsed).unwrap(), notification);

        let receipt = r#"{"user":"u2","delivered":10,"read":9}"#;
        let parsed: ReceiptData = serde_json::from_str(receipt).unwrap();
        assert_eq!(serde_json::to_string(&parsed).unwrap(), receipt);

        let read = r#"{"ids":["ntf_1"],"unread":0}"#;
        let parsed: NotificationReadData = serde_json::from_str(read).unwrap();
        assert_eq!(serde_json::to_string(&parsed).unwrap(), read);

        for category in NotificationCategory::ALL {
            assert_eq!(
                serde_json::to_string(&category).unwrap(),
                format!("\"{}\"", category.as_str())
            );
        }
    }

    #[test]
    fn signals_and_receipt_commands() {
        let signal = r#"{"from":"u2","type":"typing","data":{"typing":true}}"#;
        let parsed: SignalMessage = serde_json::from_str(signal).unwrap();
        assert_eq!(serde_json::to_string(&parsed).unwrap(), signal);
        let bare: SignalMessage = serde_json::from_str(r#"{"from":"u2","type":"focus"}"#).unwrap();
        assert_eq!(bare.data, RawJson::null());
        assert!(serde_json::from_str::<SignalMessage>(r#"{"from":"u","type":"A B"}"#).is_err());

        let command = ReceiptCommand {
            conversation: ChannelName::parse("conversation:c1").unwrap(),
            user: "u2".into(),
            delivered: None,
            read: Some(1301),
        };
        assert_eq!(command.subject(), "cmd.receipts.c1");
        assert_eq!(
            serde_json::to_string(&command).unwrap(),
            r#"{"conversation":"conversation:c1","user":"u2","read":1301}"#
        );
    }
}
