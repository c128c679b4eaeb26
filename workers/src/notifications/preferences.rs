//! Per-user, per-category delivery preferences (docs/operations.md, section 3), as the RPC shows them:
//! `{"categories":{"bid":{"in_app":true,"push":true,"email":false,"muted":false}, ...}}`.
//!
//! A category without a row in `switchboard.notification_preferences` has the defaults,
//! which are the table's column defaults: in-app and push on, email off, not muted.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use switchboard_schemas::shapes::NotificationCategory;

/// How one user wants one category delivered.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Preferences {
    /// Stored and shown in the app (`user.notification`, `notifications.list`).
    pub in_app: bool,
    /// Pushed while the user is offline.
    pub push: bool,
    /// Emailed while the user is offline.
    pub email: bool,
    /// Nothing at all: no notification, no push, no email.
    pub muted: bool,
}

impl Default for Preferences {
    fn default() -> Preferences {
        Preferences {
            in_app: true,
            push: true,
            email: false,
            muted: false,
        }
    }
}

impl Preferences {
    /// Whether a notification is stored for this user (in the app, and not muted).
    pub fn stores_in_app(&self) -> bool {
        self.in_app && !self.muted
    }
}

/// A partial change of one category's preferences: absent fields stay as they are.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PreferencesPatch {
    pub in_app: Option<bool>,
    pub push: Option<bool>,
    pub email: Option<bool>,
    pub muted: Option<bool>,
}

impl PreferencesPatch {
    pub fn apply(&self, to: Preferences) -> Preferences {
        Preferences {
            in_app: self.in_app.unwrap_or(to.in_app),
            push: self.push.unwrap_or(to.push),
            email: self.email.unwrap_or(to.email),
            muted: self.muted.unwrap_or(to.muted),
        }
    }
}

/// Every category's preferences: the result of `preferences.get` and `.set`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct AllPreferences {
    pub categories: BTreeMap<NotificationCategory, Preferences>,
}

impl AllPreferences {
    /// The defaults for every category, overridden by the stored rows.
    pub fn from_stored(
        stored: impl IntoIterator<Item = (NotificationCategory, Preferences)>,
    ) -> AllPreferences {
        let mut categories: BTreeMap<_, _> = NotificationCategory::ALL
            .into_iter()
            .map(|category| (category, Preferences::default()))
            .collect();
        categories.extend(stored);
        AllPreferences { categories }
    }
}

/// The params of `preferences.set`: the same shape as the result, every part optional.
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SetPreferences {
    #[serde(default)]
    pub categories: BTreeMap<NotificationCategory, PreferencesPatch>,
}

/// The category's name in SQL rows and JSON.
pub fn category_name(category: NotificationCategory) -> &'static str {
    category.as_str()
}

pub fn parse_category(name: &str) -> Option<NotificationCategory> {
    NotificationCategory::ALL
        .into_iter()
        .find(|category| category.as_str() == name)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_category_is_shown_with_defaults_filled_in() {
        let muted_bids = Preferences {
            muted: true,
            ..Preferences::default()
        };
        let all = AllPreferences::from_stored([(NotificationCategory::Bid, muted_bids)]);
        let json = serde_json::to_value(&all).unwrap();
        assert_eq!(
            json["categories"]["bid"],
            serde_json::json!({"in_app":true,"push":true,"email":false,"muted":true})
        );
        assert_eq!(
            json["categories"]["system"],
            serde_json::json!({"in_app":true,"push":true,"email":false,"muted":false})
        );
        assert_eq!(json["categories"].as_object().unwrap().len(), 6);
    }

    #[test]
    fn set_is_partial_and_strict() {
        let set: SetPreferences =
            serde_json::from_str(r#"{"categories":{"bid":{"email":true},"job":{}}}"#).unwrap();
        let patched = set.categories[&NotificationCategory::Bid].apply(Preferences::default());
        assert_eq!(
            patched,
            Preferences {
                email: true,
                ..Preferences::default()
            }
        );
        assert_eq!(
            set.categories[&NotificationCategory::Job].apply(Preferences::default()),
            Preferences::default()
        );
        for bad in [
            r#"{"categories":{"news":{}}}"#,
            r#"{"categories":{"bid":{"sms":true}}}"#,
            r#"{"categories":{"bid":{"push":"yes"}}}"#,
            r#"{"other":1}"#,
        ] {
            assert!(
                serde_json::from_str::<SetPreferences>(bad).is_err(),
                "{bad}"
            );
        }
        for category in NotificationCategory::ALL {
            assert_eq!(parse_category(category_name(category)), Some(category));
        }
        assert_eq!(parse_category("news"), None);
    }
}
