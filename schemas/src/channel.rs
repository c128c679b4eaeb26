//! Channels (`<namespace>:<id>`), their NATS subjects, and the channel patterns a
//! token may grant.
//!
//! A channel string from a client becomes a [`ChannelName`] once, here; a
//! `ChannelName` always maps to a subject, and every subject made here maps back. The
//! grammar leaves no room for NATS wildcards (`*`, `>`) or token separators (`.`), so
//! no client input can widen a subscription.
//!
//! This module knows the syntax only: who may subscribe or publish where is the
//! edge's configuration.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize, Serializer};

use crate::error::excerpt;

/// Why a string is not a channel, subject or channel pattern. Each variant holds a
/// bounded excerpt of the refused input.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ChannelError {
    #[error("channel {0} is not `<namespace>:<id>`")]
    Malformed(String),
    #[error(
        "unknown namespace {0}; namespaces are user, project, bid, job, group, team, conversation, presence, domain, system"
    )]
    UnknownNamespace(String),
    #[error("invalid channel id {0}: expected 1 to 128 characters of [A-Za-z0-9_-]")]
    InvalidId(String),
    #[error(
        "channel {0} has an unexpected part after its id; only `user:<id>:notifications` and `user:<id>:messages` have one"
    )]
    ExtraPart(String),
    #[error("subject {0} is not `rt|live|sig.<namespace>.<id>`")]
    InvalidSubject(String),
    #[error("invalid channel pattern {0}: expected a channel, `<namespace>:*` or `*`")]
    InvalidPattern(String),
}

/// The first part of a channel. The set is fixed by the protocol version; what each
/// namespace allows is configured in the edge.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Namespace {
    User,
    Project,
    Bid,
    Job,
    Group,
    Team,
    Conversation,
    Presence,
    Domain,
    System,
}

impl Namespace {
    pub const ALL: [Namespace; 10] = [
        Namespace::User,
        Namespace::Project,
        Namespace::Bid,
        Namespace::Job,
        Namespace::Group,
        Namespace::Team,
        Namespace::Conversation,
        Namespace::Presence,
        Namespace::Domain,
        Namespace::System,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Namespace::User => "user",
            Namespace::Project => "project",
            Namespace::Bid => "bid",
            Namespace::Job => "job",
            Namespace::Group => "group",
            Namespace::Team => "team",
            Namespace::Conversation => "conversation",
            Namespace::Presence => "presence",
            Namespace::Domain => "domain",
            Namespace::System => "system",
        }
    }
}

impl FromStr for Namespace {
    type Err = ChannelError;

    fn from_str(text: &str) -> Result<Namespace, ChannelError> {
        Namespace::ALL
            .into_iter()
            .find(|ns| ns.as_str() == text)
            .ok_or_else(|| ChannelError::UnknownNamespace(excerpt(text)))
    }
}

impl fmt::Display for Namespace {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A filtered view of a user's own channel: `user:<id>:notifications` or
/// `user:<id>:messages`. It reads the same stream as `user:<id>`, narrowed by type.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum UserAlias {
    Notifications,
    Messages,
}

impl UserAlias {
    pub fn as_str(self) -> &'static str {
        match self {
            UserAlias::Notifications => "notifications",
            UserAlias::Messages => "messages",
        }
    }

    /// Whether an event of type `ty` on the base channel shows through this alias.
    pub fn admits(self, ty: &str) -> bool {
        match self {
            UserAlias::Notifications => {
                ty == crate::event::types::USER_NOTIFICATION || ty.starts_with("notification.")
            }
            UserAlias::Messages => ty.starts_with("message."),
        }
    }
}

impl fmt::Display for UserAlias {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A valid channel: `<namespace>:<id>` with an id of `[A-Za-z0-9_-]{1,128}`, or a
/// [`UserAlias`] of a user channel.
///
/// Keeps the exact text it was parsed from (the protocol echoes a channel exactly as
/// the client wrote it); equality, hashing and ordering are those of that text.
#[derive(Debug, Clone, Deserialize)]
#[serde(try_from = "String")]
pub struct ChannelName {
    text: String,
    ns: Namespace,
    alias: Option<UserAlias>,
}

const MAX_ID_LEN: usize = 128;

/// The channel every WebSocket connection holds without asking (docs/protocol.md,
/// "`system:broadcast`").
pub const SYSTEM_BROADCAST: &str = "system:broadcast";

fn is_channel_id(id: &str) -> bool {
    (1..=MAX_ID_LEN).contains(&id.len())
        && id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-')
}

impl ChannelName {
    pub fn parse(text: &str) -> Result<ChannelName, ChannelError> {
        let (ns, rest) = text
            .split_once(':')
            .ok_or_else(|| ChannelError::Malformed(excerpt(text)))?;
        let ns: Namespace = ns.parse()?;
        let (id, alias) = match rest.split_once(':') {
            Some((id, alias)) => (id, Some(alias)),
            None => (rest, None),
        };
        if !is_channel_id(id) {
            return Err(ChannelError::InvalidId(excerpt(id)));
        }
        let alias = match (ns, alias) {
            (_, None) => None,
            (Namespace::User, Some("notifications")) => Some(UserAlias::Notifications),
            (Namespace::User, Some("messages")) => Some(UserAlias::Messages),
            (_, Some(_)) => return Err(ChannelError::ExtraPart(excerpt(text))),
        };
        Ok(ChannelName {
            text: text.to_owned(),
            ns,
            alias,
        })
    }

    /// The base channel `<ns>:<id>`, e.g. `user:<sub>` for a token's subject.
    pub fn new(ns: Namespace, id: &str) -> Result<ChannelName, ChannelError> {
        if !is_channel_id(id) {
            return Err(ChannelError::InvalidId(excerpt(id)));
        }
        Ok(ChannelName {
            text: format!("{ns}:{id}"),
            ns,
            alias: None,
        })
    }

    /// `system:broadcast`, which every connection is implicitly subscribed to.
    pub fn system_broadcast() -> ChannelName {
        ChannelName {
            text: SYSTEM_BROADCAST.to_owned(),
            ns: Namespace::System,
            alias: None,
        }
    }

    pub fn as_str(&self) -> &str {
        &self.text
    }

    pub fn namespace(&self) -> Namespace {
        self.ns
    }

    pub fn id(&self) -> &str {
        let start = self.ns.as_str().len() + 1;
        let end = self.text.len() - self.alias.map_or(0, |alias| alias.as_str().len() + 1);
        &self.text[start..end]
    }

    pub fn alias(&self) -> Option<UserAlias> {
        self.alias
    }

    /// The channel without its alias: the one whose stream an alias reads.
    pub fn base(&self) -> ChannelName {
        match self.alias {
            None => self.clone(),
            Some(_) => ChannelName {
                text: format!("{}:{}", self.ns, self.id()),
                ns: self.ns,
                alias: None,
            },
        }
    }

    /// Whether an event of type `ty` on the base channel is delivered on this one:
    /// always for a base channel, by type for an alias.
    pub fn admits(&self, ty: &str) -> bool {
        self.alias.is_none_or(|alias| alias.admits(ty))
    }

    /// `rt.<ns>.<id>`, `live.<ns>.<id>` or `sig.<ns>.<id>`; an alias maps to the
    /// subject of its base channel.
    pub fn subject(&self, kind: SubjectKind) -> String {
        format!("{}.{}.{}", kind.prefix(), self.ns, self.id())
    }

    /// The inverse of [`ChannelName::subject`] (which always yields a base channel).
    pub fn from_subject(subject: &str) -> Result<(SubjectKind, ChannelName), ChannelError> {
        let invalid = || ChannelError::InvalidSubject(excerpt(subject));
        let mut tokens = subject.split('.');
        let (Some(prefix), Some(ns), Some(id), None) =
            (tokens.next(), tokens.next(), tokens.next(), tokens.next())
        else {
            return Err(invalid());
        };
        let kind = SubjectKind::ALL
            .into_iter()
            .find(|kind| kind.prefix() == prefix)
            .ok_or_else(invalid)?;
        let ns = ns.parse().map_err(|_| invalid())?;
        let channel = ChannelName::new(ns, id).map_err(|_| invalid())?;
        Ok((kind, channel))
    }
}

impl PartialEq for ChannelName {
    fn eq(&self, other: &ChannelName) -> bool {
        self.text == other.text
    }
}

impl Eq for ChannelName {}

impl std::hash::Hash for ChannelName {
    fn hash<H: std::hash::Hasher>(&self, state: &mut H) {
        self.text.hash(state);
    }
}

impl PartialOrd for ChannelName {
    fn partial_cmp(&self, other: &ChannelName) -> Option<std::cmp::Ordering> {
        Some(self.cmp(other))
    }
}

impl Ord for ChannelName {
    fn cmp(&self, other: &ChannelName) -> std::cmp::Ordering {
        self.text.cmp(&other.text)
    }
}

impl TryFrom<String> for ChannelName {
    type Error = ChannelError;

    fn try_from(text: String) -> Result<ChannelName, ChannelError> {
        ChannelName::parse(&text)
    }
}

impl FromStr for ChannelName {
    type Err = ChannelError;

    fn from_str(text: &str) -> Result<ChannelName, ChannelError> {
        ChannelName::parse(text)
    }
}

impl Serialize for ChannelName {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(&self.text)
    }
}

impl AsRef<str> for ChannelName {
    fn as_ref(&self) -> &str {
        &self.text
    }
}

impl fmt::Display for ChannelName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.text)
    }
}

/// Which of a channel's three subjects (docs/protocol.md, section 3).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum SubjectKind {
    /// `rt.<ns>.<id>`: where events are published and stored (stream `EVENTS`).
    Durable,
    /// `live.<ns>.<id>`: the stream's republished copy that edges subscribe to.
    Live,
    /// `sig.<ns>.<id>`: ephemeral signals on core NATS, never stored.
    Signal,
}

impl SubjectKind {
    pub const ALL: [SubjectKind; 3] =
        [SubjectKind::Durable, SubjectKind::Live, SubjectKind::Signal];

    /// The first subject token: `rt`, `live` or `sig`.
    pub fn prefix(self) -> &'static str {
        match self {
            SubjectKind::Durable => "rt",
            SubjectKind::Live => "live",
            SubjectKind::Signal => "sig",
        }
    }

    /// Every channel's subject of this kind: `rt.>`, `live.>` or `sig.>`.
    pub fn wildcard(self) -> &'static str {
        match self {
            SubjectKind::Durable => "rt.>",
            SubjectKind::Live => "live.>",
            SubjectKind::Signal => "sig.>",
        }
    }

    /// Every channel's subject of this kind in one namespace: `rt.<ns>.>`, ...
    pub fn namespace_wildcard(self, ns: Namespace) -> String {
        format!("{}.{}.>", self.prefix(), ns.as_str())
    }
}

/// One entry of a token's `channels` claim: the channels it grants.
///
/// - `project:p1` grants that channel, and both aliases when it is a user channel;
///   `user:u1:messages` grants only that alias.
/// - `domain:*` grants every channel of a namespace.
/// - `*` grants every channel; meant for service tokens, since a token issuer that
///   writes it gives up every per-channel check.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Deserialize)]
#[serde(try_from = "String")]
pub enum ChannelPattern {
    All,
    Namespace(Namespace),
    Exact(ChannelName),
}

impl ChannelPattern {
    pub fn parse(text: &str) -> Result<ChannelPattern, ChannelError> {
        let invalid = || ChannelError::InvalidPattern(excerpt(text));
        if text == "*" {
            return Ok(ChannelPattern::All);
        }
        if let Some(ns) = text.strip_suffix(":*") {
            return ns
                .parse()
                .map(ChannelPattern::Namespace)
                .map_err(|_| invalid());
        }
        ChannelName::parse(text)
            .map(ChannelPattern::Exact)
            .map_err(|_| invalid())
    }

    pub fn matches(&self, channel: &ChannelName) -> bool {
        match self {
            ChannelPattern::All => true,
            ChannelPattern::Namespace(ns) => channel.namespace() == *ns,
            ChannelPattern::Exact(granted) => {
                granted.namespace() == channel.namespace()
                    && granted.id() == channel.id()
                    && (granted.alias().is_none() || granted.alias() == channel.alias())
            }
        }
    }
}

impl TryFrom<String> for ChannelPattern {
    type Error = ChannelError;

    fn try_from(text: String) -> Result<ChannelPattern, ChannelError> {
        ChannelPattern::parse(&text)
    }
}

impl FromStr for ChannelPattern {
    type Err = ChannelError;

    fn from_str(text: &str) -> Result<ChannelPattern, ChannelError> {
        ChannelPattern::parse(text)
    }
}

impl Serialize for ChannelPattern {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.collect_str(self)
    }
}

impl fmt::Display for ChannelPattern {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ChannelPattern::All => f.write_str("*"),
            ChannelPattern::Namespace(ns) => write!(f, "{ns}:*"),
            ChannelPattern::Exact(channel) => f.write_str(channel.as_str()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ch(text: &str) -> ChannelName {
        ChannelName::parse(text).unwrap()
    }

    #[test]
    fn parses_channels_and_aliases() {
        let project = ch("project:p1");
        assert_eq!(project.namespace(), Namespace::Project);
        assert_eq!(project.id(), "p1");
        assert_eq!(project.alias(), None);

        let alias = ch("user:u-1:notifications");
        assert_eq!(alias.namespace(), Namespace::User);
        assert_eq!(alias.id(), "u-1");
        assert_eq!(alias.alias(), Some(UserAlias::Notifications));
        assert_eq!(alias.base(), ch("user:u-1"));
        assert_eq!(alias.to_string(), "user:u-1:notifications");
        assert_eq!(ch("user:u_1:messages").alias(), Some(UserAlias::Messages));
    }

    #[test]
    fn refuses_everything_else() {
        let cases = [
            ("project", "not `<namespace>:<id>`"),
            ("", "not `<namespace>:<id>`"),
            ("projects:p1", "unknown namespace"),
            (":p1", "unknown namespace"),
            ("Project:p1", "unknown namespace"),
            ("project:", "invalid channel id"),
            ("project:p.1", "invalid channel id"),
            ("project:*", "invalid channel id"),
            ("project:>", "invalid channel id"),
            ("project:p 1", "invalid channel id"),
            ("project:pé", "invalid channel id"),
            ("project:p1:messages", "unexpected part"),
            ("project:p1:x:y", "unexpected part"),
            ("user:u1:", "unexpected part"),
            ("user:u1:inbox", "unexpected part"),
            ("user:u1:messages:x", "unexpected part"),
            ("user::messages", "invalid channel id"),
        ];
        for (text, message) in cases {
            let error = ChannelName::parse(text).unwrap_err().to_string();
            assert!(error.contains(message), "{text:?}: {error}");
        }
        assert!(ChannelName::parse(&format!("job:{}", "a".repeat(128))).is_ok());
        assert!(ChannelName::parse(&format!("job:{}", "a".repeat(129))).is_err());
    }

    #[test]
    fn subjects_map_both_ways() {
        let channel = ch("conversation:c1");
        assert_eq!(channel.subject(SubjectKind::Durable), "rt.conversation.c1");
        assert_eq!(channel.subject(SubjectKind::Live), "live.conversation.c1");
        assert_eq!(channel.subject(SubjectKind::Signal), "sig.conversation.c1");
        assert_eq!(
            ch("user:u1:messages").subject(SubjectKind::Durable),
            "rt.user.u1"
        );
        assert_eq!(
            ChannelName::from_subject("live.conversation.c1").unwrap(),
            (SubjectKind::Live, channel)
        );
        for bad in [
            "rt.conversation",
            "rt.conversation.c1.x",
            "cmd.receipts.c1",
            "rt.nope.c1",
            "rt.user.*",
            "rt.user.>",
            "",
        ] {
            assert!(ChannelName::from_subject(bad).is_err(), "{bad}");
        }
        assert_eq!(SubjectKind::Durable.wildcard(), "rt.>");
        assert_eq!(
            SubjectKind::Durable.namespace_wildcard(Namespace::Conversation),
            "rt.conversation.>"
        );
    }

    #[test]
    fn aliases_admit_their_types() {
        let notifications = ch("user:u1:notifications");
        assert!(notifications.admits("user.notification"));
        assert!(notifications.admits("notification.read"));
        assert!(!notifications.admits("message.new"));
        assert!(!notifications.admits("user.presence"));
        let messages = ch("user:u1:messages");
        assert!(messages.admits("message.new"));
        assert!(!messages.admits("user.notification"));
        assert!(ch("user:u1").admits("anything"));
    }

    #[test]
    fn patterns_grant_channels() {
        let exact = ChannelPattern::parse("project:p1").unwrap();
        assert!(exact.matches(&ch("project:p1")));
        assert!(!exact.matches(&ch("project:p2")));
        let user = ChannelPattern::parse("user:u1").unwrap();
        assert!(user.matches(&ch("user:u1:messages")));
        let alias = ChannelPattern::parse("user:u1:messages").unwrap();
        assert!(alias.matches(&ch("user:u1:messages")));
        assert!(!alias.matches(&ch("user:u1")));
        assert!(!alias.matches(&ch("user:u1:notifications")));
        let domain = ChannelPattern::parse("domain:*").unwrap();
        assert!(domain.matches(&ch("domain:d1")));
        assert!(!domain.matches(&ch("project:d1")));
        assert!(
            ChannelPattern::parse("*")
                .unwrap()
                .matches(&ch("system:broadcast"))
        );
        for bad in ["domain:", "*:*", "nope:*", "domain:a*", "domain:**", ""] {
            assert!(ChannelPattern::parse(bad).is_err(), "{bad}");
        }
        for text in ["*", "domain:*", "user:u1:messages"] {
            let json = serde_json::to_string(&ChannelPattern::parse(text).unwrap()).unwrap();
            assert_eq!(json, format!("\"{text}\""));
            assert_eq!(
                serde_json::from_str::<ChannelPattern>(&json).unwrap(),
                ChannelPattern::parse(text).unwrap()
            );
        }
    }

    #[test]
    fn namespaces_round_trip() {
        for ns in Namespace::ALL {
            assert_eq!(ns.as_str().parse::<Namespace>().unwrap(), ns);
        }
        assert_eq!(ChannelName::system_broadcast(), ch("system:broadcast"));
        assert_eq!(
            ChannelName::new(Namespace::User, "u1").unwrap(),
            ch("user:u1")
        );
        assert!(ChannelName::new(Namespace::User, "u.1").is_err());
    }
}
