//! Who belongs to which channel, as named in the KV bucket `members`.
//!
//! A membership's key is `<ns>.<id>.<user>`: channel ids and user ids share the grammar
//! `[A-Za-z0-9_-]{1,128}`, so a key has exactly three dot-separated tokens and maps back
//! to one membership. The membership worker writes these keys, the edge reads them, and
//! `switchboard members rebuild` restores them.

use std::fmt;

use crate::channel::{ChannelName, Namespace};

/// A user id: 1 to 128 characters of `[A-Za-z0-9_-]`, the grammar of channel ids, since
/// a user's id is also the id of their `user:` channel and a token of KV keys.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct UserId(String);

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid user id `{0}`: expected 1 to 128 characters of [A-Za-z0-9_-]")]
pub struct InvalidUserId(pub String);

impl UserId {
    pub fn parse(text: &str) -> Result<UserId, InvalidUserId> {
        if ChannelName::new(Namespace::User, text).is_ok() {
            Ok(UserId(text.to_string()))
        } else {
            Err(InvalidUserId(text.chars().take(64).collect()))
        }
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for UserId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// One (channel, user) membership.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Membership {
    /// Always a base channel (no alias).
    pub channel: ChannelName,
    pub user: UserId,
}

impl Membership {
    /// The membership of `user` in `channel`'s base channel.
    pub fn new(channel: &ChannelName, user: UserId) -> Membership {
        Membership {
            channel: channel.base(),
            user,
        }
    }

    /// The key in the `members` bucket: `<ns>.<id>.<user>`.
    pub fn key(&self) -> String {
        format!(
            "{}.{}.{}",
            self.channel.namespace().as_str(),
            self.channel.id(),
            self.user
        )
    }

    /// The membership a key stands for; `None` for a key no membership can have.
    pub fn from_key(key: &str) -> Option<Membership> {
        let mut parts = key.split('.');
        let (Some(ns), Some(id), Some(user), None) =
            (parts.next(), parts.next(), parts.next(), parts.next())
        else {
            return None;
        };
        Some(Membership {
            channel: ChannelName::new(ns.parse().ok()?, id).ok()?,
            user: UserId::parse(user).ok()?,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_round_trip() {
        let m = Membership::new(
            &ChannelName::parse("user:u1:notifications").unwrap(),
            UserId::parse("u-2").unwrap(),
        );
        assert_eq!(m.key(), "user.u1.u-2");
        assert_eq!(Membership::from_key(&m.key()), Some(m));
        for bad in [
            "project.p1",
            "project.p1.u1.x",
            "nope.p1.u1",
            "project.p1.",
            "project..u1",
        ] {
            assert_eq!(Membership::from_key(bad), None, "{bad}");
        }
        assert!(UserId::parse("u1.>").is_err());
        assert!(UserId::parse("").is_err());
        assert!(UserId::parse(&"a".repeat(129)).is_err());
    }
}
