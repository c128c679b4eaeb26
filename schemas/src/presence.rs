//! Presence statuses: what a device sets, and what other users see.
//!
//! Two types because `invisible` must never reach another user: a device may be
//! invisible, but others only ever see a [`VisibleStatus`], where it is `offline`.

use serde::{Deserialize, Serialize};

/// The status a connection sets with the `presence` frame.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum PresenceStatus {
    Online,
    Away,
    Busy,
    Invisible,
}

/// The presence a connection declares as it opens (docs/protocol.md, section 9): in
/// `hello`'s `presence` field, or `?presence=<status>` on the upgrade. A connection
/// declared `invisible` is never shown online, not even for a moment.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct InitialPresence {
    pub status: PresenceStatus,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub text: Option<String>,
}

impl PresenceStatus {
    /// The status named in a query string (`online`, `away`, `busy`, `invisible`).
    pub fn parse(text: &str) -> Option<PresenceStatus> {
        serde_json::from_value(serde_json::Value::String(text.to_string())).ok()
    }
}

/// A user's status as others see it (`user.presence`, `who`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum VisibleStatus {
    Online,
    Away,
    Busy,
    Offline,
}

impl VisibleStatus {
    /// One user's status across all their devices (docs/protocol.md, section 9): `busy` > `online` >
    /// `away`; invisible devices are left out; nothing left means `offline`.
    pub fn aggregate(devices: impl IntoIterator<Item = PresenceStatus>) -> VisibleStatus {
        devices
            .into_iter()
            .filter_map(|status| match status {
                PresenceStatus::Busy => Some(VisibleStatus::Busy),
                PresenceStatus::Online => Some(VisibleStatus::Online),
                PresenceStatus::Away => Some(VisibleStatus::Away),
                PresenceStatus::Invisible => None,
            })
            .max_by_key(|status| match status {
                VisibleStatus::Busy => 3,
                VisibleStatus::Online => 2,
                VisibleStatus::Away => 1,
                VisibleStatus::Offline => 0,
            })
            .unwrap_or(VisibleStatus::Offline)
    }
}

#[cfg(test)]
mod tests {
    use super::PresenceStatus::*;
    use super::*;

    #[test]
    fn aggregates_devices() {
        assert_eq!(VisibleStatus::aggregate([]), VisibleStatus::Offline);
        assert_eq!(
            VisibleStatus::aggregate([Invisible]),
            VisibleStatus::Offline
        );
        assert_eq!(
            VisibleStatus::aggregate([Away, Invisible]),
            VisibleStatus::Away
        );
        assert_eq!(
            VisibleStatus::aggregate([Away, Online]),
            VisibleStatus::Online
        );
        assert_eq!(
            VisibleStatus::aggregate([Online, Busy, Away]),
            VisibleStatus::Busy
        );
    }

    #[test]
    fn serializes_lowercase() {
        assert_eq!(serde_json::to_string(&Invisible).unwrap(), r#""invisible""#);
        assert_eq!(
            serde_json::to_string(&VisibleStatus::Offline).unwrap(),
            r#""offline""#
        );
        assert!(serde_json::from_str::<PresenceStatus>(r#""offline""#).is_err());
    }
}
