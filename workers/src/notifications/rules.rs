//! Notification rules: which events notify whom, in which category and priority, with
//! which words. Rules are configuration: a JSON file (`SWITCHBOARD_NOTIFICATIONS_RULES`),
//! by default the one shipped in `workers/rules/notifications.json` and compiled in.
//!
//! ```json
//! {"rules": [
//!   {"on": "bid.new", "namespaces": ["project"], "to": {"members": ["owner"]},
//!    "category": "bid", "priority": "high",
//!    "title": "New bid", "message": "{actor.id|Someone} bid {data.amount|} on {channel.id}"}
//! ]}
//! ```
//!
//! - `on`: an event type, `prefix.*` or `*` (the subscription filter grammar).
//! - `namespaces`: the channel namespaces the rule applies to; absent or empty = all but
//!   `presence`, unless `on` matches `user.presence` (see [`Rule::applies_in`]).
//! - `to`: who is notified, the union of
//!   - `members`: `"all"` or a list of roles (`owner`, `member`, `contractor`, `viewer`):
//!     the channel's active members with one of those roles (conversation participants
//!     are members with role `member`);
//!   - `data_users`: JSON pointers into `data` (`"/assignee"`) naming a user id or a list;
//!   - `channel_user`: `true` to notify the owner of a `user:<id>` channel;
//!   - minus the actor, with `except_actor: true`.
//! - `category`: `bid`, `message`, `payment`, `job`, `project` or `system`.
//! - `priority`: `low`, `normal` (default), `high` or `urgent`. `low` stays in-app: it is
//!   never pushed or emailed.
//! - `title`, `message`: templates (see [`template`](super::template)).
//! - `push_after`, `email_after`: seconds a notification may stay unread before it is
//!   pushed to a user who is online, or emailed; `"never"` turns that off for the rule.
//!   Absent: the worker's defaults (see [`escalation`](super::escalation)).
//! - `description`: free text for the reader of the file.
//!
//! The first rule that matches an event's type and namespace decides; an event no rule
//! matches notifies nobody. Rules may not match `user.notification` or `notification.*`,
//! the worker's own output, which would notify about notifications.
//!
//! Pure: no I/O except reading the file in [`Rules::load`].

use std::path::Path;

use serde::Deserialize;
use serde_json::Value;
use switchboard_schemas::event::types;
use switchboard_schemas::shapes::{MemberRole, NotificationCategory, Priority};
use switchboard_schemas::{ChannelName, Envelope, Namespace, TypeFilter, UserId};

use super::escalation::After;
use super::template::{EventView, Template, TemplateError};

/// The rules compiled into the binary.
pub const DEFAULT_RULES: &str = include_str!("../../rules/notifications.json");

/// Most users one event may notify; recipients beyond it are dropped with a warning.
pub const MAX_RECIPIENTS: usize = 10_000;
/// Longest title and message, in characters; longer ones are cut with `…`.
const MAX_TITLE_CHARS: usize = 200;
const MAX_MESSAGE_CHARS: usize = 1_000;

#[derive(Debug, thiserror::Error)]
pub enum RulesError {
    #[error("cannot read the rules file {path}: {source}")]
    Read {
        path: String,
        source: std::io::Error,
    },
    #[error("rules file {origin}: {message}")]
    Invalid { origin: String, message: String },
}

/// The loaded rules, in file order.
#[derive(Debug, Clone)]
pub struct Rules(Vec<Rule>);

/// One rule, checked.
#[derive(Debug, Clone)]
pub struct Rule {
    pub on: TypeFilter,
    /// Empty: every namespace but `presence` ([`Rule::applies_in`]).
    pub namespaces: Vec<Namespace>,
    pub to: Recipients,
    pub category: NotificationCategory,
    pub priority: Priority,
    pub title: Template,
    pub message: Template,
    /// The rule's own escalation delays; `None` leaves them to the worker's defaults.
    pub push_after: Option<After>,
    pub email_after: Option<After>,
}

/// Who a rule notifies.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Recipients {
    pub members: Option<MemberFilter>,
    /// JSON pointers into `data`.
    pub data_users: Vec<String>,
    pub channel_user: bool,
    pub except_actor: bool,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum MemberFilter {
    All,
    Roles(Vec<MemberRole>),
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RulesFile {
    rules: Vec<RawRule>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawRule {
    on: String,
    #[serde(default)]
    namespaces: Vec<String>,
    to: RawRecipients,
    category: NotificationCategory,
    #[serde(default)]
    priority: Priority,
    title: String,
    message: String,
    #[serde(default)]
    push_after: Option<Value>,
    #[serde(default)]
    email_after: Option<Value>,
    #[serde(default, rename = "description")]
    _description: Option<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawRecipients {
    #[serde(default)]
    members: Option<Value>,
    #[serde(default)]
    data_users: Vec<String>,
    #[serde(default)]
    channel_user: bool,
    #[serde(default)]
    except_actor: bool,
}

impl Rules {
    /// The rules in `path`, or the shipped default without one.
    pub fn load(path: Option<&Path>) -> Result<Rules, RulesError> {
        match path {
            None => Rules::parse("the built-in default", DEFAULT_RULES),
            Some(path) => {
                let text = std::fs::read_to_string(path).map_err(|source| RulesError::Read {
                    path: path.display().to_string(),
                    source,
                })?;
                Rules::parse(&path.display().to_string(), &text)
            }
        }
    }

    /// Parses and checks a rules file's text; `origin` names it in errors.
    pub fn parse(origin: &str, text: &str) -> Result<Rules, RulesError> {
        let invalid = |message: String| RulesError::Invalid {
            origin: origin.to_string(),
            message,
        };
        let file: RulesFile = serde_json::from_str(text).map_err(|e| invalid(e.to_string()))?;
        file.rules
            .into_iter()
            .enumerate()
            .map(|(index, raw)| {
                let on = raw.on.clone();
                Rule::check(raw)
                    .map_err(|message| invalid(format!("rule {index} ({on}): {message}")))
            })
            .collect::<Result<Vec<_>, _>>()
            .map(Rules)
    }

    /// Whether some rule may apply to events of type `ty`: when not, the worker sets the
    /// event aside without decoding it.
    pub fn wants_type(&self, ty: &str) -> bool {
        self.0.iter().any(|rule| rule.on.matches(ty))
    }

    /// The rule that decides for an event of type `ty` on a channel of namespace `ns`.
    pub fn find(&self, ty: &str, ns: Namespace) -> Option<&Rule> {
        self.0
            .iter()
            .find(|rule| rule.on.matches(ty) && rule.applies_in(ns))
    }

    /// Whether some rule applies on channels of namespace `ns`.
    pub fn apply_in(&self, ns: Namespace) -> bool {
        self.0.iter().any(|rule| rule.applies_in(ns))
    }

    pub fn len(&self) -> usize {
        self.0.len()
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

impl Rule {
    /// Whether the rule applies on channels of namespace `ns`: those it names, or without
    /// names every namespace but `presence`, which only a rule about `user.presence`
    /// reaches (its channels carry the presence job's events, one per user coming and
    /// going: the worker does not read them for rules that cannot want them).
    pub fn applies_in(&self, ns: Namespace) -> bool {
        if self.namespaces.is_empty() {
            ns != Namespace::Presence || self.on.matches(types::USER_PRESENCE)
        } else {
            self.namespaces.contains(&ns)
        }
    }

    fn check(raw: RawRule) -> Result<Rule, String> {
        let on = TypeFilter::parse(&raw.on).map_err(|e| e.to_string())?;
        for own in [types::USER_NOTIFICATION, types::NOTIFICATION_READ] {
            if on.matches(own) {
                return Err(format!(
                    "`on` matches {own}, the worker's own output: notifications would notify about themselves"
                ));
            }
        }
        let namespaces = raw
            .namespaces
            .iter()
            .map(|ns| ns.parse::<Namespace>().map_err(|e| e.to_string()))
            .collect::<Result<Vec<_>, _>>()?;
        let members = match raw.to.members {
            None => None,
            Some(Value::String(all)) if all == "all" => Some(MemberFilter::All),
            Some(Value::Array(roles)) if !roles.is_empty() => Some(MemberFilter::Roles(
                serde_json::from_value(Value::Array(roles))
                    .map_err(|e| format!("`to.members`: {e}"))?,
            )),
            Some(_) => {
                return Err(
                    "`to.members` must be \"all\" or a non-empty list of roles (owner, member, contractor, viewer)"
                        .into(),
                );
            }
        };
        if let Some(pointer) = raw.to.data_users.iter().find(|p| !p.starts_with('/')) {
            return Err(format!(
                "`to.data_users` entry {pointer:?} is not a JSON pointer (it starts with `/`)"
            ));
        }
        let to = Recipients {
            members,
            data_users: raw.to.data_users,
            channel_user: raw.to.channel_user,
            except_actor: raw.to.except_actor,
        };
        if to.members.is_none() && to.data_users.is_empty() && !to.channel_user {
            return Err("`to` names nobody: give members, data_users or channel_user".into());
        }
        let template = |text: &str| Template::parse(text).map_err(|e: TemplateError| e.to_string());
        let after = |field: &str, value: Option<&Value>| {
            value
                .map(|value| After::parse(value).map_err(|e| format!("`{field}`: {e}")))
                .transpose()
        };
        Ok(Rule {
            push_after: after("push_after", raw.push_after.as_ref())?,
            email_after: after("email_after", raw.email_after.as_ref())?,
            on,
            namespaces,
            to,
            category: raw.category,
            priority: raw.priority,
            title: template(&raw.title)?,
            message: template(&raw.message)?,
        })
    }

    /// The title and message for `envelope` on `channel`, cut to their maximum lengths.
    pub fn render(
        &self,
        envelope: &Envelope,
        channel: &ChannelName,
        data: &Value,
    ) -> (String, String) {
        let view = EventView {
            envelope,
            channel,
            data,
        };
        (
            cut(self.title.render(&view), MAX_TITLE_CHARS),
            cut(self.message.render(&view), MAX_MESSAGE_CHARS),
        )
    }

    /// The recipients this rule names without asking PostgreSQL: users named in `data`
    /// and the owner of a user channel. Ids that are not user ids are skipped.
    pub fn direct_recipients(&self, channel: &ChannelName, data: &Value) -> Vec<UserId> {
        let mut users = Vec::new();
        if self.to.channel_user && channel.namespace() == Namespace::User {
            users.extend(UserId::parse(channel.id()).ok());
        }
        for pointer in &self.to.data_users {
            match data.pointer(pointer) {
                Some(Value::String(user)) => users.extend(UserId::parse(user).ok()),
                Some(Value::Array(items)) => users.extend(
                    items
                        .iter()
                        .filter_map(Value::as_str)
                        .filter_map(|user| UserId::parse(user).ok()),
                ),
                _ => {}
            }
        }
        users
    }
}

fn cut(mut text: String, max_chars: usize) -> String {
    if let Some((index, _)) = text.char_indices().nth(max_chars) {
        let keep = text[..index]
            .char_indices()
            .last()
            .map_or(0, |(last, _)| last);
        text.truncate(keep);
        text.push('…');
    }
    text
}

#[cfg(test)]
mod tests {
    use serde_json::json;
    use switchboard_schemas::{EventType, RawJson};

    use super::*;

    #[test]
    fn the_default_rules_are_the_designs() {
        let rules = Rules::load(None).unwrap();
        let bid = rules.find("bid.new", Namespace::Project).unwrap();
        assert_eq!(
            bid.to.members,
            Some(MemberFilter::Roles(vec![MemberRole::Owner]))
        );
        assert!(!bid.to.except_actor);
        assert_eq!(bid.category, NotificationCategory::Bid);
        let update = rules.find("bid.update", Namespace::Project).unwrap();
        assert_eq!(
            update.to.members,
            Some(MemberFilter::Roles(vec![MemberRole::Owner]))
        );
        assert!(rules.find("bid.new", Namespace::Job).is_none());

        let message = rules.find("message.new", Namespace::Conversation).unwrap();
        assert_eq!(message.to.members, Some(MemberFilter::All));
        assert!(message.to.except_actor);
        assert_eq!(message.category, NotificationCategory::Message);
        for (ty, category) in [
            ("payment.status", NotificationCategory::Payment),
            ("job.status", NotificationCategory::Job),
        ] {
            for ns in [Namespace::Project, Namespace::Job] {
                let rule = rules.find(ty, ns).unwrap();
                assert_eq!(rule.to.members, Some(MemberFilter::All), "{ty}");
                assert!(rule.to.except_actor, "{ty}");
                assert_eq!(rule.category, category);
            }
        }
        for ty in [
            "member.added",
            "message.receipt",
            "user.notification",
            "notification.read",
        ] {
            assert!(!rules.wants_type(ty), "{ty}");
        }
        assert!(rules.wants_type("bid.new"));
    }

    #[test]
    fn presence_channels_are_reached_only_by_rules_that_say_so() {
        let parse = |rule: &str| Rules::parse("t", &format!(r#"{{"rules":[{rule}]}}"#)).unwrap();
        let rule = |on: &str, namespaces: &str| {
            format!(
                r#"{{"on":"{on}","namespaces":{namespaces},"to":{{"channel_user":true}},"category":"system","title":"t","message":"m"}}"#
            )
        };
        let defaults = Rules::load(None).unwrap();
        assert!(!defaults.apply_in(Namespace::Presence));
        assert!(defaults.apply_in(Namespace::Team));
        assert!(defaults.find("job.status", Namespace::Presence).is_none());
        assert!(defaults.find("job.status", Namespace::Team).is_some());

        // (on, namespaces, an event type on a presence channel, whether the rule applies)
        for (on, namespaces, ty, in_presence) in [
            ("job.status", "[]", "job.status", false),
            ("user.presence", "[]", "user.presence", true),
            ("job.status", r#"["presence"]"#, "job.status", true),
            ("user.presence", r#"["project"]"#, "user.presence", false),
        ] {
            let rules = parse(&rule(on, namespaces));
            let case = format!("{on} {namespaces}");
            assert_eq!(rules.apply_in(Namespace::Presence), in_presence, "{case}");
            assert_eq!(
                rules.find(ty, Namespace::Presence).is_some(),
                in_presence,
                "{case}"
            );
        }
    }

    #[test]
    fn refuses_rules_that_cannot_work() {
        let rule = |fields: &str| {
            format!(
                r#"{{"rules":[{{"on":"bid.new","to":{{"members":["owner"]}},"category":"bid","title":"t","message":"m"{fields}}}]}}"#
            )
        };
        assert!(Rules::parse("t", &rule("")).is_ok());
        let timed = Rules::parse("t", &rule(r#","push_after":60,"email_after":"never""#)).unwrap();
        let timed = timed.find("bid.new", Namespace::Project).unwrap();
        assert_eq!(timed.push_after, Some(After::Seconds(60)));
        assert_eq!(timed.email_after, Some(After::Never));
        let bad = [
            rule(r#","priority":"huge""#),
            rule(r#","namespaces":["nowhere"]"#),
            rule(r#","extra":1"#),
            rule(r#","push_after":-1"#),
            rule(r#","email_after":"soon""#),
            rule(r#","email_after":1.5"#),
            r#"{"rules":[{"on":"bid.new","to":{},"category":"bid","title":"t","message":"m"}]}"#.into(),
            r#"{"rules":[{"on":"bid.new","to":{"members":"some"},"category":"bid","title":"t","message":"m"}]}"#.into(),
            r#"{"rules":[{"on":"bid.new","to":{"members":["admin"]},"category":"bid","title":"t","message":"m"}]}"#.into(),
            r#"{"rules":[{"on":"bid.new","to":{"data_users":["user"]},"category":"bid","title":"t","message":"m"}]}"#.into(),
            r#"{"rules":[{"on":"bid.new","to":{"members":"all"},"category":"news","title":"t","message":"m"}]}"#.into(),
            r#"{"rules":[{"on":"bid.new","to":{"members":"all"},"category":"bid","title":"{nope}","message":"m"}]}"#.into(),
            r#"{"rules":[{"on":"*","to":{"members":"all"},"category":"bid","title":"t","message":"m"}]}"#.into(),
            r#"{"rules":[{"on":"notification.*","to":{"members":"all"},"category":"bid","title":"t","message":"m"}]}"#.into(),
            r#"{"rules":[{"on":"Bid","to":{"members":"all"},"category":"bid","title":"t","message":"m"}]}"#.into(),
            "[]".into(),
        ];
        for text in bad {
            let error = Rules::parse("t", &text).unwrap_err();
            assert!(
                matches!(error, RulesError::Invalid { .. }),
                "{text}: {error}"
            );
        }
        assert!(matches!(
            Rules::load(Some(Path::new("/nonexistent/rules.json"))),
            Err(RulesError::Read { .. })
        ));
    }

    #[test]
    fn the_first_matching_rule_decides_and_namespaces_narrow() {
        let rules = Rules::parse(
            "t",
            r#"{"rules":[
                {"on":"job.status","namespaces":["job"],"to":{"members":["owner"]},"category":"job","title":"a","message":"m"},
                {"on":"job.*","to":{"members":"all"},"category":"project","priority":"low","title":"b","message":"m"}
            ]}"#,
        )
        .unwrap();
        assert_eq!(rules.len(), 2);
        assert_eq!(
            rules.find("job.status", Namespace::Job).unwrap().category,
            NotificationCategory::Job
        );
        let fallback = rules.find("job.status", Namespace::Project).unwrap();
        assert_eq!(fallback.category, NotificationCategory::Project);
        assert_eq!(fallback.priority, Priority::Low);
        assert!(rules.find("job", Namespace::Job).is_none());
    }

    #[test]
    fn direct_recipients_and_rendering() {
        let rules = Rules::parse(
            "t",
            r#"{"rules":[{"on":"user.verification","to":{"channel_user":true,"data_users":["/reviewer","/watchers"]},
                "category":"system","title":"{data.title}","message":"{data.body}"}]}"#,
        )
        .unwrap();
        let rule = rules.find("user.verification", Namespace::User).unwrap();
        let channel = ChannelName::parse("user:u1").unwrap();
        let data = json!({"reviewer": "u2", "watchers": ["u3", "bad id", 4], "title": "x".repeat(300), "body": "ok"});
        let users: Vec<String> = rule
            .direct_recipients(&channel, &data)
            .iter()
            .map(|u| u.to_string())
            .collect();
        assert_eq!(users, ["u1", "u2", "u3"]);
        let project = ChannelName::parse("project:u1").unwrap();
        assert_eq!(rule.direct_recipients(&project, &json!({})), []);

        let envelope = Envelope::new(
            EventType::parse("user.verification").unwrap(),
            RawJson::encode(&data).unwrap(),
        );
        let (title, message) = rule.render(&envelope, &channel, &data);
        assert_eq!(title.chars().count(), MAX_TITLE_CHARS);
        assert!(title.ends_with('…'));
        assert_eq!(message, "ok");
        assert_eq!(cut("héllo".into(), 3), "hé…");
        assert_eq!(cut("abc".into(), 3), "abc");
    }
}
