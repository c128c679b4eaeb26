//! When push and email go out (docs/operations.md §4, "When push and email go out").
//!
//! - **Push** goes at once to a user with no open connection when the notification is
//!   created. A user who is online is pushed only if the notification is still unread
//!   `push_after` seconds later; without a `push_after`, never.
//! - **Email** goes for a notification still unread `email_after` seconds after it was
//!   created, online or not; without an `email_after`, never. A user's emails waiting
//!   when the first of them is due leave together, as one digest ([`super::sink`]).
//! - Reading the notification, on any device or by a conversation's `read` receipt,
//!   cancels its push and email that are still waiting ([`super::store::read`]).
//!
//! The delays come from the rule (`push_after`, `email_after`: seconds or `"never"`),
//! else from `SWITCHBOARD_NOTIFY_PUSH_AFTER_S` / `SWITCHBOARD_NOTIFY_EMAIL_AFTER_S`, else
//! from the defaults: push offline only, email after [`DEFAULT_EMAIL_AFTER`] for `high`
//! and `urgent` notifications and never for the others.
//!
//! A waiting push or email is a delivery row whose `next_attempt_at` lies ahead, so it
//! survives restarts and is claimed by one copy of the worker when due, like a retry.
//!
//! Pure: no I/O.

use std::time::Duration;

use serde_json::Value;
use switchboard_schemas::shapes::{Priority, ReceiptData};
use switchboard_schemas::{ChannelName, Envelope, Namespace, UserId};

use super::rules::Rule;

/// How long a `high` or `urgent` notification stays unread before it is emailed, unless
/// the rule or `SWITCHBOARD_NOTIFY_EMAIL_AFTER_S` says otherwise.
pub const DEFAULT_EMAIL_AFTER: Duration = Duration::from_secs(900);

/// A rule's `push_after` or `email_after`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum After {
    Seconds(u64),
    Never,
}

impl After {
    /// A whole number of seconds (0 or more) or the string `"never"`.
    pub fn parse(value: &Value) -> Result<After, &'static str> {
        match value {
            Value::String(word) if word == "never" => Ok(After::Never),
            Value::Number(number) => number
                .as_u64()
                .map(After::Seconds)
                .ok_or("seconds are a whole number, 0 or more"),
            _ => Err("give a number of seconds or \"never\""),
        }
    }

    fn delay(self) -> Option<Duration> {
        match self {
            After::Seconds(seconds) => Some(Duration::from_secs(seconds)),
            After::Never => None,
        }
    }
}

/// The worker-wide defaults, from the environment.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Escalation {
    /// `SWITCHBOARD_NOTIFY_PUSH_AFTER_S`: unset pushes offline users only.
    pub push_after: Option<Duration>,
    /// `SWITCHBOARD_NOTIFY_EMAIL_AFTER_S`: unset keeps the default by priority.
    pub email_after: Option<Duration>,
}

impl Escalation {
    /// How long a notification of `rule` may stay unread before a user who is online is
    /// pushed; `None`: such a user is not pushed.
    pub fn push_after(&self, rule: &Rule) -> Option<Duration> {
        match rule.push_after {
            Some(after) => after.delay(),
            None => self.push_after,
        }
    }

    /// How long a notification of `rule` may stay unread before it is emailed; `None`:
    /// it is never emailed.
    pub fn email_after(&self, rule: &Rule) -> Option<Duration> {
        match rule.email_after {
            Some(after) => after.delay(),
            None => self.email_after.or(match rule.priority {
                Priority::High | Priority::Urgent => Some(DEFAULT_EMAIL_AFTER),
                Priority::Low | Priority::Normal => None,
            }),
        }
    }
}

/// A `read` cursor that moved on a conversation: the reader's notifications about that
/// conversation's messages up to `seq` are read.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReadUpTo {
    pub user: UserId,
    pub conversation: ChannelName,
    pub seq: u64,
}

impl ReadUpTo {
    /// The read cursor of a `message.receipt` event on `channel`, if it says something
    /// was read; `Err` for data that is not a receipt.
    pub fn from_receipt(
        envelope: &Envelope,
        channel: &ChannelName,
    ) -> Result<Option<ReadUpTo>, String> {
        if channel.namespace() != Namespace::Conversation {
            return Ok(None);
        }
        let data: ReceiptData = envelope
            .data
            .decode()
            .map_err(|e| format!("message.receipt data: {e}"))?;
        let user = UserId::parse(&data.user).map_err(|e| format!("message.receipt user: {e}"))?;
        Ok((data.read > 0).then(|| ReadUpTo {
            user,
            conversation: channel.clone(),
            seq: data.read,
        }))
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;
    use switchboard_schemas::{EventType, RawJson};

    use super::*;
    use crate::notifications::rules::Rules;

    fn rule(priority: &str, timing: &str) -> Rule {
        let text = format!(
            r#"{{"rules":[{{"on":"bid.new","to":{{"members":"all"}},"category":"bid","priority":"{priority}","title":"t","message":"m"{timing}}}]}}"#
        );
        let rules = Rules::parse("t", &text).unwrap();
        rules.find("bid.new", Namespace::Project).unwrap().clone()
    }

    #[test]
    fn the_rule_then_the_environment_then_the_priority_decide() {
        let defaults = Escalation::default();
        assert_eq!(defaults.push_after(&rule("high", "")), None);
        assert_eq!(
            defaults.email_after(&rule("high", "")),
            Some(DEFAULT_EMAIL_AFTER)
        );
        assert_eq!(
            defaults.email_after(&rule("urgent", "")),
            Some(DEFAULT_EMAIL_AFTER)
        );
        assert_eq!(defaults.email_after(&rule("normal", "")), None);

        let env = Escalation {
            push_after: Some(Duration::from_secs(30)),
            email_after: Some(Duration::from_secs(2)),
        };
        assert_eq!(
            env.push_after(&rule("normal", "")),
            Some(Duration::from_secs(30))
        );
        assert_eq!(
            env.email_after(&rule("normal", "")),
            Some(Duration::from_secs(2))
        );
        assert_eq!(
            env.email_after(&rule("high", "")),
            Some(Duration::from_secs(2))
        );

        let own = rule("high", r#","push_after":5,"email_after":"never""#);
        assert_eq!(env.push_after(&own), Some(Duration::from_secs(5)));
        assert_eq!(env.email_after(&own), None);
        let off = rule("normal", r#","push_after":"never","email_after":0"#);
        assert_eq!(env.push_after(&off), None);
        assert_eq!(env.email_after(&off), Some(Duration::ZERO));
    }

    #[test]
    fn after_is_seconds_or_never() {
        assert_eq!(After::parse(&json!(0)), Ok(After::Seconds(0)));
        assert_eq!(After::parse(&json!(900)), Ok(After::Seconds(900)));
        assert_eq!(After::parse(&json!("never")), Ok(After::Never));
        for bad in [json!(-1), json!(1.5), json!("soon"), json!(null), json!([])] {
            assert!(After::parse(&bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn a_receipt_reads_up_to_its_read_cursor_on_conversations_only() {
        let receipt = |data: Value| {
            Envelope::new(
                EventType::parse("message.receipt").unwrap(),
                RawJson::encode(&data).unwrap(),
            )
        };
        let conversation = ChannelName::parse("conversation:c1").unwrap();
        let read = ReadUpTo::from_receipt(
            &receipt(json!({"user": "u2", "delivered": 9, "read": 7})),
            &conversation,
        )
        .unwrap()
        .unwrap();
        assert_eq!(
            (read.user.as_str(), read.conversation.as_str(), read.seq),
            ("u2", "conversation:c1", 7)
        );
        let delivered_only = receipt(json!({"user": "u2", "delivered": 9, "read": 0}));
        assert_eq!(
            ReadUpTo::from_receipt(&delivered_only, &conversation),
            Ok(None)
        );
        let project = ChannelName::parse("project:p1").unwrap();
        assert_eq!(
            ReadUpTo::from_receipt(
                &receipt(json!({"user": "u2", "delivered": 9, "read": 7})),
                &project
            ),
            Ok(None)
        );
        assert!(ReadUpTo::from_receipt(&receipt(json!({"user": 1})), &conversation).is_err());
    }
}
