//! Reading an entry of the KV bucket `presence` as a typed [`Change`] to one
//! connection, or refusing it with the reason.
//!
//! The edges write one entry per live connection (docs/protocol.md §9.1): key
//! `<user>.<conn>`, value
//! `{"user","conn","device","status","text","edge","at"}`, refreshed with a per-message
//! TTL and deleted on clean close. An expired entry reaches watchers as a purge marker.
//!
//! Pure functions: no I/O here.

use serde::Deserialize;
use switchboard_schemas::{PresenceStatus, UserId};

/// A key of the bucket: which user, which of their connections.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Key {
    pub user: UserId,
    pub conn: String,
}

/// What an entry says about its connection.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Change {
    /// The connection is live with this status and text.
    Live {
        status: PresenceStatus,
        text: Option<String>,
    },
    /// The connection is gone: deleted on close, or expired (a purge marker).
    Gone,
}

/// The fields of a value the aggregate needs; the rest (`device`, `edge`, `at`) are for
/// operators and are not checked.
#[derive(Debug, Deserialize)]
struct Value {
    status: PresenceStatus,
    #[serde(default)]
    text: Option<String>,
}

#[derive(Debug, thiserror::Error)]
pub enum Invalid {
    #[error("key {0:?} is not <user>.<conn>")]
    Key(String),
    #[error("value of {key:?} is not a presence entry: {source}")]
    Value {
        key: String,
        source: serde_json::Error,
    },
}

impl Key {
    pub fn parse(key: &str) -> Result<Key, Invalid> {
        let invalid = || Invalid::Key(key.chars().take(300).collect());
        let (user, conn) = key.split_once('.').ok_or_else(invalid)?;
        let user = UserId::parse(user).map_err(|_| invalid())?;
        let conn_ok = !conn.is_empty()
            && conn
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-');
        if !conn_ok {
            return Err(invalid());
        }
        Ok(Key {
            user,
            conn: conn.to_string(),
        })
    }
}

impl Change {
    /// The change a live entry's value describes. An empty text is no text.
    pub fn live(key: &str, value: &[u8]) -> Result<Change, Invalid> {
        let value: Value = serde_json::from_slice(value).map_err(|source| Invalid::Value {
            key: key.to_string(),
            source,
        })?;
        Ok(Change::Live {
            status: value.status,
            text: value.text.filter(|text| !text.is_empty()),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_are_user_dot_connection() {
        let key = Key::parse("u1.edge-abc-5").unwrap();
        assert_eq!((key.user.as_str(), key.conn.as_str()), ("u1", "edge-abc-5"));
        for bad in ["u1", "u1.", ".c1", "u1.c.1", "u 1.c1", "u1.c*"] {
            assert!(Key::parse(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn values_give_status_and_text() {
        let value = br#"{"user":"u1","conn":"edge-abc-5","device":"d1","status":"busy","text":"On site","edge":"edge-abc","at":1795000000000}"#;
        assert_eq!(
            Change::live("u1.edge-abc-5", value).unwrap(),
            Change::Live {
                status: PresenceStatus::Busy,
                text: Some("On site".into())
            }
        );
        let bare = br#"{"user":"u1","conn":"c","device":null,"status":"invisible","text":null,"edge":"e","at":1}"#;
        assert_eq!(
            Change::live("u1.c", bare).unwrap(),
            Change::Live {
                status: PresenceStatus::Invisible,
                text: None
            }
        );
        let empty_text = br#"{"status":"away","text":""}"#;
        assert_eq!(
            Change::live("u1.c", empty_text).unwrap(),
            Change::Live {
                status: PresenceStatus::Away,
                text: None
            }
        );
        assert!(Change::live("u1.c", br#"{"status":"offline"}"#).is_err());
        assert!(Change::live("u1.c", b"").is_err());
    }
}
