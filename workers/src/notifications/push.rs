//! The users' push devices: the public RPCs `push.vapid`, `push.subscribe` and
//! `push.unsubscribe` (docs/protocol.md §10.4), in the queue group `push`. A call acts on
//! the caller's (`Rt-User`) devices only.
//!
//! | method | params | result |
//! | --- | --- | --- |
//! | `push.vapid` | `{}` | `{"publicKey":"<base64url P-256 point>"}` |
//! | `push.subscribe` | `{"subscription":{"endpoint":"https://...","keys":{"p256dh":"...","auth":"..."}},"device":"d1"}` | `{"device":"d1"}` |
//! | `push.subscribe` | `{"fcm":"<registration token>","device":"d1"}` | `{"device":"d1"}` |
//! | `push.subscribe` | `{"apns":"<device token>","topic":"<bundle id>","device":"d1"}` | `{"device":"d1"}` |
//! | `push.unsubscribe` | `{"endpoint":"https://..."}`, `{"fcm":"..."}` or `{"apns":"..."}` | `{"removed":true\|false}` |
//!
//! A device has one registration, of one kind: subscribing again replaces it, and an
//! endpoint or token belongs to one user (the last who subscribed it, as when another
//! person signs in on the same browser or phone). Endpoints must be on a host in
//! `SWITCHBOARD_PUSH_ENDPOINT_HOSTS`: the workers never send a request to an address a
//! user chose; FCM and APNs tokens go only to the configured push service. A kind that
//! is not configured is refused with `not_found`.
//!
//! It owns `switchboard.push_subscriptions` (Web Push) and `switchboard.mobile_devices`
//! (FCM, APNs); the dispatcher reads them and deletes the registrations push services
//! refuse (404/410, unregistered or invalid tokens).

use std::sync::Arc;

use serde::Deserialize;
use sqlx::PgPool;
use switchboard_schemas::{ErrorCode, UserId};

use super::mobile::{self, APNS, FCM};
use super::webpush::{EndpointHosts, Subscription, WebPush};
use crate::responder::{Call, Method, Reply, RpcError, Service};

const VAPID: &str = "push.vapid";
const SUBSCRIBE: &str = "push.subscribe";
const UNSUBSCRIBE: &str = "push.unsubscribe";

/// Longest device id.
const MAX_DEVICE: usize = 128;
/// Longest endpoint URL kept (push services' are a few hundred bytes).
const MAX_ENDPOINT: usize = 2048;
/// Most devices one user may register; the oldest goes when one more subscribes.
const MAX_DEVICES: i64 = 20;
/// The rows of a user past their `MAX_DEVICES` newest, in each device table.
const PRUNE_MOBILE: &str = "
DELETE FROM switchboard.mobile_devices WHERE id IN (
    SELECT id FROM switchboard.mobile_devices WHERE user_id = $1
     ORDER BY updated_at DESC, id DESC OFFSET $2)";
const PRUNE_BROWSERS: &str = "
DELETE FROM switchboard.push_subscriptions WHERE id IN (
    SELECT id FROM switchboard.push_subscriptions WHERE user_id = $1
     ORDER BY updated_at DESC, id DESC OFFSET $2)";

/// Keeps a user's `MAX_DEVICES` newest devices of one kind (`prune` is one of the two
/// queries above), inside the subscribing transaction.
async fn keep_newest(
    tx: &mut sqlx::PgConnection,
    prune: &'static str,
    user: &UserId,
) -> Result<(), sqlx::Error> {
    sqlx::query(prune)
        .bind(user.as_str())
        .bind(MAX_DEVICES)
        .execute(tx)
        .await?;
    Ok(())
}

/// `push.*` in the queue group `push`.
pub struct Push {
    db: PgPool,
    webpush: Option<Arc<WebPush>>,
    hosts: EndpointHosts,
    /// The mobile push services configured: `fcm`, `apns`.
    mobile: Vec<&'static str>,
}

/// One of `subscription`, `fcm` or `apns` (with `topic`).
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct SubscribeParams {
    #[serde(default)]
    subscription: Option<BrowserSubscription>,
    #[serde(default)]
    fcm: Option<String>,
    #[serde(default)]
    apns: Option<String>,
    #[serde(default)]
    topic: Option<String>,
    device: String,
}

/// The browser's `PushSubscription.toJSON()`.
#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct BrowserSubscription {
    endpoint: String,
    keys: SubscriptionKeys,
    /// Browsers send it (usually `null`); push services expire subscriptions by 404/410.
    #[serde(default, rename = "expirationTime")]
    _expiration_time: Option<serde_json::Value>,
}

#[derive(Deserialize)]
struct SubscriptionKeys {
    p256dh: String,
    auth: String,
}

/// One of `endpoint`, `fcm` or `apns`.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct UnsubscribeParams {
    #[serde(default)]
    endpoint: Option<String>,
    #[serde(default)]
    fcm: Option<String>,
    #[serde(default)]
    apns: Option<String>,
}

impl Push {
    pub fn new(
        db: PgPool,
        webpush: Option<Arc<WebPush>>,
        hosts: EndpointHosts,
        mobile: Vec<&'static str>,
    ) -> Push {
        Push {
            db,
            webpush,
            hosts,
            mobile,
        }
    }

    fn mobile(&self, platform: &'static str) -> Result<(), RpcError> {
        if self.mobile.contains(&platform) {
            Ok(())
        } else {
            let name = if platform == FCM { "FCM" } else { "APNs" };
            Err(RpcError::new(
                ErrorCode::NotFound,
                format!("{name} is not configured on this server"),
            ))
        }
    }

    fn webpush(&self) -> Result<&WebPush, RpcError> {
        self.webpush.as_deref().ok_or_else(|| {
            RpcError::new(
                ErrorCode::NotFound,
                "Web Push is not configured on this server",
            )
        })
    }

    async fn subscribe(&self, caller: &UserId, params: SubscribeParams) -> Reply {
        let device = device_id(&params.device)?;
        if params.topic.is_some() && params.apns.is_none() {
            return Err(bad_request("topic goes with apns only"));
        }
        match (&params.subscription, &params.fcm, &params.apns) {
            (Some(subscription), None, None) => {
                self.subscribe_browser(caller, device, subscription).await
            }
            (None, Some(token), None) => {
                self.mobile(FCM)?;
                let token = mobile::fcm_token(token).map_err(bad_request)?;
                self.subscribe_mobile(caller, device, FCM, token, None)
                    .await
            }
            (None, None, Some(token)) => {
                self.mobile(APNS)?;
                let token = mobile::apns_token(token).map_err(bad_request)?;
                let topic = params
                    .topic
                    .as_deref()
                    .ok_or_else(|| bad_request("apns needs topic, the app's bundle id"))?;
                let topic = mobile::apns_topic(topic).map_err(bad_request)?;
                self.subscribe_mobile(caller, device, APNS, &token, Some(topic))
                    .await
            }
            _ => Err(bad_request(
                "give exactly one of subscription (Web Push), fcm or apns",
            )),
        }
    }

    async fn subscribe_mobile(
        &self,
        caller: &UserId,
        device: &str,
        platform: &'static str,
        token: &str,
        topic: Option<&str>,
    ) -> Reply {
        let unavailable = |e| RpcError::unavailable(SUBSCRIBE, e);
        let mut tx = self.db.begin().await.map_err(unavailable)?;
        sqlx::query(
            "DELETE FROM switchboard.push_subscriptions WHERE user_id = $1 AND device = $2",
        )
        .bind(caller.as_str())
        .bind(device)
        .execute(&mut *tx)
        .await
        .map_err(unavailable)?;
        sqlx::query(
            "DELETE FROM switchboard.mobile_devices
              WHERE (platform = $3 AND token = $4) OR (user_id = $1 AND device = $2)",
        )
        .bind(caller.as_str())
        .bind(device)
        .bind(platform)
        .bind(token)
        .execute(&mut *tx)
        .await
        .map_err(unavailable)?;
        sqlx::query(
            "INSERT INTO switchboard.mobile_devices (user_id, device, platform, token, topic)
             VALUES ($1, $2, $3, $4, $5)",
        )
        .bind(caller.as_str())
        .bind(device)
        .bind(platform)
        .bind(token)
        .bind(topic)
        .execute(&mut *tx)
        .await
        .map_err(unavailable)?;
        keep_newest(&mut tx, PRUNE_MOBILE, caller)
            .await
            .map_err(unavailable)?;
        tx.commit().await.map_err(unavailable)?;
        Ok(serde_json::json!({ "device": device }))
    }

    async fn subscribe_browser(
        &self,
        caller: &UserId,
        device: &str,
        browser: &BrowserSubscription,
    ) -> Reply {
        self.webpush()?;
        let endpoint = &browser.endpoint;
        if endpoint.len() > MAX_ENDPOINT {
            return Err(bad_request("subscription.endpoint is too long"));
        }
        let keys = &browser.keys;
        let subscription = Subscription::parse(endpoint, &keys.p256dh, &keys.auth, &self.hosts)
            .map_err(|e| bad_request(format!("subscription: {e}")))?;
        let unavailable = |e| RpcError::unavailable(SUBSCRIBE, e);
        let mut tx = self.db.begin().await.map_err(unavailable)?;
        sqlx::query("DELETE FROM switchboard.mobile_devices WHERE user_id = $1 AND device = $2")
            .bind(caller.as_str())
            .bind(device)
            .execute(&mut *tx)
            .await
            .map_err(unavailable)?;
        sqlx::query(
            "DELETE FROM switchboard.push_subscriptions
              WHERE endpoint = $3 OR (user_id = $1 AND device = $2)",
        )
        .bind(caller.as_str())
        .bind(device)
        .bind(subscription.endpoint.as_str())
        .execute(&mut *tx)
        .await
        .map_err(unavailable)?;
        sqlx::query(
            "INSERT INTO switchboard.push_subscriptions (user_id, device, endpoint, p256dh, auth)
             VALUES ($1, $2, $3, $4, $5)",
        )
        .bind(caller.as_str())
        .bind(device)
        .bind(subscription.endpoint.as_str())
        .bind(&keys.p256dh)
        .bind(&keys.auth)
        .execute(&mut *tx)
        .await
        .map_err(unavailable)?;
        keep_newest(&mut tx, PRUNE_BROWSERS, caller)
            .await
            .map_err(unavailable)?;
        tx.commit().await.map_err(unavailable)?;
        Ok(serde_json::json!({ "device": device }))
    }
}

impl Service for Push {
    const NAME: &'static str = "push";

    fn methods(&self) -> &'static [Method] {
        const METHODS: &[Method] = &[
            Method::public(VAPID),
            Method::public(SUBSCRIBE),
            Method::public(UNSUBSCRIBE),
        ];
        METHODS
    }

    async fn call(&self, method: &str, call: Call) -> Reply {
        match method {
            VAPID => {
                let webpush = self.webpush()?;
                Ok(serde_json::json!({ "publicKey": webpush.vapid().public_key() }))
            }
            SUBSCRIBE => {
                let params: SubscribeParams = call.params()?;
                self.subscribe(&call.caller, params).await
            }
            UNSUBSCRIBE => {
                let params: UnsubscribeParams = call.params()?;
                let query = match (&params.endpoint, &params.fcm, &params.apns) {
                    (Some(endpoint), None, None) => sqlx::query(
                        "DELETE FROM switchboard.push_subscriptions WHERE user_id = $1 AND endpoint = $2",
                    )
                    .bind(call.caller.as_str())
                    .bind(endpoint.clone()),
                    (None, Some(token), None) => sqlx::query(
                        "DELETE FROM switchboard.mobile_devices
                          WHERE user_id = $1 AND platform = 'fcm' AND token = $2",
                    )
                    .bind(call.caller.as_str())
                    .bind(token.clone()),
                    (None, None, Some(token)) => sqlx::query(
                        "DELETE FROM switchboard.mobile_devices
                          WHERE user_id = $1 AND platform = 'apns' AND token = lower($2)",
                    )
                    .bind(call.caller.as_str())
                    .bind(token.clone()),
                    _ => {
                        return Err(bad_request(
                            "give exactly one of endpoint (Web Push), fcm or apns",
                        ));
                    }
                };
                let removed = query
                    .execute(&self.db)
                    .await
                    .map_err(|e| RpcError::unavailable(method, e))?
                    .rows_affected();
                Ok(serde_json::json!({ "removed": removed > 0 }))
            }
            _ => Err(RpcError::new(ErrorCode::NotFound, "no such method")),
        }
    }
}

fn bad_request(message: impl Into<String>) -> RpcError {
    RpcError::new(ErrorCode::BadRequest, message)
}

/// 1 to 128 of `[A-Za-z0-9._:-]`: an id the app chose for the device.
fn device_id(text: &str) -> Result<&str, RpcError> {
    let valid = !text.is_empty()
        && text.len() <= MAX_DEVICE
        && text
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b':' | b'-'));
    if valid {
        Ok(text)
    } else {
        Err(bad_request(
            "device must be 1 to 128 of A-Z, a-z, 0-9, '.', '_', ':', '-'",
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::device_id;

    #[test]
    fn device_ids_are_short_and_plain() {
        assert!(device_id("d1").is_ok());
        assert!(device_id("phone:ann.2-b_c").is_ok());
        for bad in ["", "a b", "d/1", &"x".repeat(129)] {
            assert!(device_id(bad).is_err(), "{bad:?}");
        }
    }
}
