//! What FCM ([`super::fcm`]) and APNs ([`super::apns`]) share: the registration tokens
//! `push.subscribe` takes, how one send ends, the message a phone receives, and the
//! bearer token each keeps for its requests.
//!
//! Registrations live in `switchboard.mobile_devices`, one per (user, device), written by
//! [`super::push`] and read by the dispatcher ([`super::sink`]), which deletes a device
//! its push service calls unregistered or invalid.

use std::future::Future;
use std::path::Path;
use std::time::{Duration, Instant};

use serde::Serialize;
use switchboard_schemas::Timestamp;
use switchboard_schemas::shapes::{NotificationCategory, NotificationRef, Priority};
use tokio::sync::Mutex;

/// `fcm`, `apns`: the `platform` column, and the sink names.
pub const FCM: &str = "fcm";
pub const APNS: &str = "apns";

/// Longest registration token kept (FCM's are about 160 characters, APNs' 64 hex).
const MAX_TOKEN: usize = 4096;
/// Longest APNs topic (a bundle id, with `.voip` and the like).
const MAX_TOPIC: usize = 255;

/// How one send to a push service ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Sent {
    Delivered,
    /// The token is unregistered or invalid: the device is to be removed.
    Gone(String),
    Retry(String),
    Failed(String),
}

/// The notification JSON of `user.notification` (docs/protocol.md), as the app receives
/// it beside the visible alert.
#[derive(Debug, Clone, Serialize, serde::Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Notification {
    #[serde(alias = "notificationId")]
    pub id: Option<String>,
    pub category: NotificationCategory,
    pub title: String,
    pub message: String,
    pub priority: Priority,
    #[serde(rename = "ref")]
    pub reference: NotificationRef,
    pub unread: Option<u64>,
    pub created_at: Timestamp,
}

impl Notification {
    /// Whether the push should wake the device now (`high`, `urgent`).
    pub fn urgent(&self) -> bool {
        matches!(self.priority, Priority::High | Priority::Urgent)
    }
}

/// An FCM registration token: 1 to 4096 of `[A-Za-z0-9_:-]`.
pub fn fcm_token(text: &str) -> Result<&str, &'static str> {
    let valid = !text.is_empty()
        && text.len() <= MAX_TOKEN
        && text
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b':' | b'-'));
    valid
        .then_some(text)
        .ok_or("fcm must be an FCM registration token (A-Z, a-z, 0-9, '_', ':', '-')")
}

/// An APNs device token: an even number (16 to 200) of hex digits, kept lowercase.
pub fn apns_token(text: &str) -> Result<String, &'static str> {
    let valid = (16..=200).contains(&text.len())
        && text.len().is_multiple_of(2)
        && text.bytes().all(|b| b.is_ascii_hexdigit());
    valid
        .then(|| text.to_ascii_lowercase())
        .ok_or("apns must be an APNs device token (hex digits)")
}

/// An APNs topic: the app's bundle id, `[A-Za-z0-9.-]`, 1 to 255.
pub fn apns_topic(text: &str) -> Result<&str, &'static str> {
    let valid = !text.is_empty()
        && text.len() <= MAX_TOPIC
        && text
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'-' | b'_'));
    valid
        .then_some(text)
        .ok_or("topic must be the app's bundle id (A-Z, a-z, 0-9, '.', '-', '_')")
}

/// The bearer token a push service takes (FCM's OAuth access token, APNs' provider
/// token), kept until it is due to be made again. One is made at a time: senders that
/// find none wait for it rather than each asking for their own.
#[derive(Default)]
pub struct CachedToken(Mutex<Option<(String, Instant)>>);

impl CachedToken {
    /// The kept token while it is fresh; otherwise the one `make` returns, kept for the
    /// time `make` says.
    pub async fn get<F>(&self, make: impl FnOnce() -> F) -> Result<String, String>
    where
        F: Future<Output = Result<(String, Duration), String>>,
    {
        let mut kept = self.0.lock().await;
        if let Some((token, until)) = kept.as_ref()
            && Instant::now() < *until
        {
            return Ok(token.clone());
        }
        let (token, keep_for) = make().await?;
        *kept = Some((token.clone(), Instant::now() + keep_for));
        Ok(token)
    }

    /// The service refused the kept token (revoked, expired early): the next send makes
    /// another.
    pub async fn forget(&self) {
        *self.0.lock().await = None;
    }
}

/// A secret setting that holds either the text itself or the path of a file with it:
/// text that starts like JSON or PEM is the value.
pub fn inline_or_file(setting: &'static str, value: &str) -> Result<String, String> {
    let trimmed = value.trim_start();
    if trimmed.starts_with('{') || trimmed.starts_with("-----BEGIN") {
        return Ok(value.to_string());
    }
    std::fs::read_to_string(Path::new(value))
        .map_err(|e| format!("{setting}: cannot read the file it names: {e}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_and_topics_are_checked() {
        assert!(fcm_token("dGVzdA:APA91b-x_y").is_ok());
        for bad in ["", "a b", "tok/1", &"x".repeat(4097)] {
            assert!(fcm_token(bad).is_err(), "{bad:?}");
        }
        assert_eq!(
            apns_token(&"AB".repeat(32)).unwrap(),
            "ab".repeat(32),
            "kept lowercase"
        );
        for bad in ["", "abc", &"zz".repeat(32), &"a".repeat(202)] {
            assert!(apns_token(bad).is_err(), "{bad:?}");
        }
        assert!(apns_topic("com.example.app").is_ok());
        assert!(apns_topic("com.example app").is_err());
        assert!(apns_topic("").is_err());
    }

    #[test]
    fn a_setting_is_its_value_or_a_file() {
        assert_eq!(inline_or_file("X", "{\"a\":1}").unwrap(), "{\"a\":1}");
        assert!(
            inline_or_file("X", "-----BEGIN PRIVATE KEY-----\n")
                .unwrap()
                .starts_with("-----BEGIN")
        );
        let error = inline_or_file("SWITCHBOARD_X", "/nonexistent/file").unwrap_err();
        assert!(error.starts_with("SWITCHBOARD_X: cannot read"), "{error}");
    }

    #[tokio::test]
    async fn a_token_is_kept_while_fresh_and_made_again_when_due_or_forgotten() {
        let made = std::sync::atomic::AtomicU32::new(0);
        let make = |keep_for| {
            let n = made.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            async move { Ok((format!("t{n}"), keep_for)) }
        };
        let hour = Duration::from_secs(3600);
        let cache = CachedToken::default();
        assert_eq!(cache.get(|| make(hour)).await.unwrap(), "t0");
        assert_eq!(cache.get(|| make(hour)).await.unwrap(), "t0", "still fresh");
        cache.forget().await;
        assert_eq!(cache.get(|| make(Duration::ZERO)).await.unwrap(), "t1");
        assert_eq!(
            cache.get(|| make(hour)).await.unwrap(),
            "t2",
            "t1 was due at once"
        );
        let refused = cache.get(|| async { Err("down".to_string()) }).await;
        assert_eq!(refused.unwrap(), "t2", "a fresh token is not made again");
        cache.forget().await;
        let refused = cache.get(|| async { Err("down".to_string()) }).await;
        assert_eq!(refused.unwrap_err(), "down");
    }
}
