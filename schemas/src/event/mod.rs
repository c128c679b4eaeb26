//! Events: the [`Envelope`] and the typed fields it is made of.
//!
//! Each field type checks its grammar when it is built (from JSON, postcard or a
//! string), so code holding an `Envelope` never re-checks an id, a type or a time.

mod envelope;
mod event_type;
mod id;
mod timestamp;

pub use envelope::{Actor, Envelope, EnvelopeError, Metadata};
pub(crate) use event_type::is_dotted_name;
pub use event_type::{EventType, TypeFilter, TypeFilters};
pub use id::EventId;
pub use timestamp::Timestamp;

/// Why a string is not a valid event id, type, type filter or timestamp. Each variant
/// holds a bounded excerpt of the refused input.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum EventFieldError {
    #[error(
        "invalid event id {0}: expected `evt_` followed by 1 to 128 characters of [A-Za-z0-9_-]"
    )]
    Id(String),
    #[error(
        "invalid event type {0}: expected dot-separated segments of [a-z0-9_], at most 128 characters"
    )]
    Type(String),
    #[error("invalid type filter {0}: expected an event type, `prefix.*` or `*`")]
    TypeFilter(String),
    #[error(
        "invalid timestamp {0}: expected RFC 3339 (e.g. 2026-11-22T14:30:00Z) in years 0000-9999"
    )]
    Timestamp(String),
}

/// The event types Switchboard itself publishes or reacts to (docs/protocol.md, section 10.2). Backends may
/// publish any other type that fits the grammar.
pub mod types {
    pub const SYSTEM_STATUS: &str = "system.status";
    pub const SYSTEM_CONFIG: &str = "system.config";
    pub const SYSTEM_BROADCAST: &str = "system.broadcast";
    pub const USER_NOTIFICATION: &str = "user.notification";
    pub const USER_PRESENCE: &str = "user.presence";
    pub const USER_ACTIVITY: &str = "user.activity";
    pub const USER_VERIFICATION: &str = "user.verification";
    pub const PROJECT_UPDATE: &str = "project.update";
    pub const BID_NEW: &str = "bid.new";
    pub const BID_UPDATE: &str = "bid.update";
    pub const PAYMENT_STATUS: &str = "payment.status";
    pub const JOB_STATUS: &str = "job.status";
    pub const MESSAGE_NEW: &str = "message.new";
    pub const MESSAGE_EDITED: &str = "message.edited";
    pub const MESSAGE_DELETED: &str = "message.deleted";
    pub const MESSAGE_RECEIPT: &str = "message.receipt";
    pub const NOTIFICATION_READ: &str = "notification.read";
    pub const CONVERSATION_PARTICIPANT_ADDED: &str = "conversation.participant_added";
    pub const CONVERSATION_PARTICIPANT_REMOVED: &str = "conversation.participant_removed";
    pub const MEMBER_ADDED: &str = "member.added";
    pub const MEMBER_REMOVED: &str = "member.removed";

    /// The only types a client may publish (docs/protocol.md, section 4.4); everything else comes from
    /// backends and workers.
    pub const CLIENT_PUBLISHABLE: [&str; 3] = [MESSAGE_NEW, MESSAGE_EDITED, MESSAGE_DELETED];

    /// Every type above, e.g. to check them against the grammar.
    pub const ALL: [&str; 21] = [
        SYSTEM_STATUS,
        SYSTEM_CONFIG,
        SYSTEM_BROADCAST,
        USER_NOTIFICATION,
        USER_PRESENCE,
        USER_ACTIVITY,
        USER_VERIFICATION,
        PROJECT_UPDATE,
        BID_NEW,
        BID_UPDATE,
        PAYMENT_STATUS,
        JOB_STATUS,
        MESSAGE_NEW,
        MESSAGE_EDITED,
        MESSAGE_DELETED,
        MESSAGE_RECEIPT,
        NOTIFICATION_READ,
        CONVERSATION_PARTICIPANT_ADDED,
        CONVERSATION_PARTICIPANT_REMOVED,
        MEMBER_ADDED,
        MEMBER_REMOVED,
    ];
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn known_types_fit_the_grammar() {
        for ty in types::ALL {
            assert!(EventType::parse(ty).is_ok(), "{ty}");
        }
    }
}
