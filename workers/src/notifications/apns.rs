//! Apple Push Notification service over HTTP/2 with a token key (docs/operations.md §4,
//! "Mobile push"): one `POST <endpoint>/3/device/<token>` per device.
//!
//! - **Key.** `SWITCHBOARD_APNS_KEY` (the `.p8` P-256 key Apple gives, inline PEM or a
//!   path), `SWITCHBOARD_APNS_KEY_ID`, `SWITCHBOARD_APNS_TEAM_ID`. The provider token is
//!   a JWT signed ES256 (`kid` the key id, `iss` the team, `iat`), made again every 50
//!   minutes (Apple refuses ones older than an hour and too frequent new ones).
//! - **Endpoint.** `SWITCHBOARD_APNS_ENDPOINT`, default `https://api.push.apple.com`
//!   (`https://api.sandbox.push.apple.com` for development builds). APNs speaks only
//!   HTTP/2: the client uses HTTP/2 from the first byte, over TLS or, for an `http://`
//!   endpoint (a local test server), cleartext (h2c with prior knowledge).
//! - **Request.** Headers `apns-topic` (the bundle id registered with the token),
//!   `apns-push-type: alert`, `apns-priority` 10 for `high`/`urgent` else 5,
//!   `apns-expiration` (now + `SWITCHBOARD_PUSH_TTL_S`); body
//!   `{"aps":{"alert":{"title","body"},"sound":"default"},"notification":{...}}`.
//! - **Outcome.** 200 delivers; 410 (`Unregistered`) and 400 `BadDeviceToken` /
//!   `DeviceTokenNotForTopic` mean the token is no good: [`Sent::Gone`]; 403
//!   `ExpiredProviderToken` / `InvalidProviderToken` make a new provider token and retry,
//!   as do 429, 5xx and network errors; anything else fails the row.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use jsonwebtoken::{Algorithm, EncodingKey, Header};
use serde::Serialize;
use serde_json::{Value, json};
use switchboard_bus::logging::error_chain;

use super::mobile::{CachedToken, Notification, Sent, inline_or_file};
use super::settings::http_client;

pub const DEFAULT_ENDPOINT: &str = "https://api.push.apple.com";
/// How long a provider token is used before a new one is made.
const TOKEN_LIFETIME: Duration = Duration::from_secs(50 * 60);

#[derive(Debug, thiserror::Error)]
pub enum ApnsError {
    #[error("SWITCHBOARD_APNS_KEY: {0}")]
    Key(String),
    #[error("{0} is required with SWITCHBOARD_APNS_KEY")]
    Missing(&'static str),
    #[error("{0} must be Apple's 10-character id (A-Z, 0-9)")]
    Id(&'static str),
    #[error("SWITCHBOARD_APNS_ENDPOINT must be an http:// or https:// URL")]
    Endpoint,
    #[error("cannot set up the APNs HTTP/2 client: {0}")]
    Client(String),
}

#[derive(Serialize)]
struct Claims<'a> {
    iss: &'a str,
    iat: u64,
}

/// The APNs sender: key, ids, endpoint, HTTP/2 client and the current provider token.
pub struct Apns {
    key: EncodingKey,
    key_id: String,
    team_id: String,
    endpoint: String,
    ttl: Duration,
    client: reqwest::Client,
    token: CachedToken,
}

impl std::fmt::Debug for Apns {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Apns")
            .field("key_id", &self.key_id)
            .field("team_id", &self.team_id)
            .field("endpoint", &self.endpoint)
            .finish_non_exhaustive()
    }
}

impl Apns {
    /// From the key setting (PEM or a path to it), its id and the team's; pushes expire
    /// after `ttl`; each request takes at most `timeout`.
    pub fn new(
        key: &str,
        key_id: Option<&str>,
        team_id: Option<&str>,
        endpoint: Option<&str>,
        ttl: Duration,
        timeout: Duration,
    ) -> Result<Apns, ApnsError> {
        let pem = inline_or_file("SWITCHBOARD_APNS_KEY", key).map_err(ApnsError::Key)?;
        let key = EncodingKey::from_ec_pem(pem.as_bytes())
            .map_err(|_| ApnsError::Key("not a P-256 private key in PEM (.p8)".into()))?;
        let id = |value: Option<&str>, name: &'static str| {
            let value = value.ok_or(ApnsError::Missing(name))?;
            let valid = value.len() == 10 && value.bytes().all(|b| b.is_ascii_alphanumeric());
            valid.then(|| value.to_string()).ok_or(ApnsError::Id(name))
        };
        let key_id = id(key_id, "SWITCHBOARD_APNS_KEY_ID")?;
        let team_id = id(team_id, "SWITCHBOARD_APNS_TEAM_ID")?;
        let endpoint = endpoint
            .unwrap_or(DEFAULT_ENDPOINT)
            .trim_end_matches('/')
            .to_string();
        if !(endpoint.starts_with("https://") || endpoint.starts_with("http://")) {
            return Err(ApnsError::Endpoint);
        }
        let client = http_client(timeout, Duration::from_secs(300))
            .http2_prior_knowledge()
            .build()
            .map_err(|e| ApnsError::Client(error_chain(&e)))?;
        Ok(Apns {
            key,
            key_id,
            team_id,
            endpoint,
            ttl,
            client,
            token: CachedToken::default(),
        })
    }

    /// Sends `notification` to the device `token` of the app `topic`.
    pub async fn send(&self, token: &str, topic: &str, notification: &Notification) -> Sent {
        let provider = match self.token.get(|| async { self.provider_token() }).await {
            Ok(provider) => provider,
            Err(reason) => return Sent::Failed(reason),
        };
        let expiration = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_secs())
            + self.ttl.as_secs();
        let body = json!({
            "aps": {
                "alert": {"title": notification.title, "body": notification.message},
                "sound": "default",
            },
            "notification": notification,
        });
        let response = self
            .client
            .post(format!("{}/3/device/{token}", self.endpoint))
            .header(reqwest::header::AUTHORIZATION, format!("bearer {provider}"))
            .header("apns-topic", topic)
            .header("apns-push-type", "alert")
            .header(
                "apns-priority",
                if notification.urgent() { "10" } else { "5" },
            )
            .header("apns-expiration", expiration.to_string())
            .header(reqwest::header::CONTENT_TYPE, "application/json")
            .body(body.to_string())
            .send()
            .await;
        let response = match response {
            Ok(response) => response,
            Err(error) => {
                return Sent::Retry(format!("APNs: {}", error_chain(&error.without_url())));
            }
        };
        let status = response.status().as_u16();
        if status == 200 {
            return Sent::Delivered;
        }
        let answer: Value = match response.bytes().await {
            Ok(bytes) => serde_json::from_slice(&bytes).unwrap_or(Value::Null),
            Err(_) => Value::Null,
        };
        let reason_code: String = answer["reason"]
            .as_str()
            .unwrap_or("")
            .chars()
            .filter(char::is_ascii_alphanumeric)
            .take(64)
            .collect();
        let reason = format!("APNs answered {status} {reason_code}");
        match (status, reason_code.as_str()) {
            (410, _) | (400, "BadDeviceToken" | "DeviceTokenNotForTopic") => Sent::Gone(reason),
            (403, "ExpiredProviderToken" | "InvalidProviderToken") => {
                self.token.forget().await;
                Sent::Retry(reason)
            }
            (429, _) | (500.., _) => Sent::Retry(reason),
            _ => Sent::Failed(reason),
        }
    }

    /// A new provider token, and how long to use it: 50 minutes.
    fn provider_token(&self) -> Result<(String, Duration), String> {
        let mut header = Header::new(Algorithm::ES256);
        header.kid = Some(self.key_id.clone());
        let claims = Claims {
            iss: &self.team_id,
            iat: SystemTime::now()
                .duration_since(UNIX_EPOCH)
                .map_or(0, |d| d.as_secs()),
        };
        let jwt = jsonwebtoken::encode(&header, &claims, &self.key)
            .map_err(|e| format!("signing the APNs provider token: {e}"))?;
        Ok((jwt, TOKEN_LIFETIME))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bad_settings_are_refused_by_name() {
        let (ttl, timeout) = (Duration::from_secs(60), Duration::from_secs(1));
        let error = Apns::new("not a key", None, None, None, ttl, timeout).unwrap_err();
        assert!(
            error.to_string().starts_with("SWITCHBOARD_APNS_KEY"),
            "{error}"
        );
        let error = Apns::new(
            "-----BEGIN PRIVATE KEY-----\nAAAA\n-----END PRIVATE KEY-----\n",
            Some("ABCDE12345"),
            Some("TEAM123456"),
            None,
            ttl,
            timeout,
        )
        .unwrap_err();
        assert!(error.to_string().contains("P-256"), "{error}");
    }
}
