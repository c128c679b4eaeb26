//! Firebase Cloud Messaging, HTTP v1 API (docs/operations.md §4, "Mobile push"): one
//! `POST <endpoint>/v1/projects/<project>/messages:send` per device, authorized by an
//! OAuth 2 access token that the service account's key obtains.
//!
//! - **Credentials.** `SWITCHBOARD_FCM_CREDENTIALS`: the service-account JSON Firebase
//!   gives (`project_id`, `client_email`, `private_key`, `token_uri`), inline or as a
//!   file path. The private key never leaves this module and no message shows it.
//! - **Access token.** A JWT signed RS256 with the private key (`iss` the account's
//!   email, `scope` firebase.messaging, `aud` the token URL, one hour) is exchanged at
//!   the token URL (`SWITCHBOARD_FCM_TOKEN_URL`, else the account's `token_uri`) for an
//!   access token, kept until a minute before it expires and fetched again after a 401.
//! - **Outcome.** 2xx delivers; 404 (`UNREGISTERED`), 400 `INVALID_ARGUMENT` and 403
//!   `SENDER_ID_MISMATCH` mean the token is no good: [`Sent::Gone`], the device is
//!   removed; 401, 408, 429, 5xx and network errors retry; anything else fails the row.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use jsonwebtoken::{Algorithm, EncodingKey, Header};
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};
use switchboard_bus::logging::error_chain;

use super::mobile::{CachedToken, Notification, Sent, inline_or_file};
use super::settings::http_client;

/// Google's endpoints, when the settings do not override them.
pub const DEFAULT_ENDPOINT: &str = "https://fcm.googleapis.com";
const DEFAULT_TOKEN_URL: &str = "https://oauth2.googleapis.com/token";
const SCOPE: &str = "https://www.googleapis.com/auth/firebase.messaging";
/// How long a signed assertion is valid (Google accepts at most an hour).
const ASSERTION_LIFETIME: u64 = 3600;
/// An access token is fetched again this long before it expires.
const REFRESH_EARLY: Duration = Duration::from_secs(60);

#[derive(Debug, thiserror::Error)]
pub enum FcmError {
    #[error("SWITCHBOARD_FCM_CREDENTIALS: {0}")]
    Credentials(String),
    #[error("cannot set up the FCM HTTP client: {0}")]
    Client(String),
}

/// The fields of a service-account JSON this module uses.
#[derive(Deserialize)]
struct ServiceAccount {
    project_id: String,
    client_email: String,
    private_key: String,
    #[serde(default)]
    token_uri: Option<String>,
}

#[derive(Serialize)]
struct Assertion<'a> {
    iss: &'a str,
    scope: &'a str,
    aud: &'a str,
    iat: u64,
    exp: u64,
}

#[derive(Deserialize)]
struct AccessToken {
    access_token: String,
    #[serde(default)]
    expires_in: Option<u64>,
}

/// The FCM sender: service account, endpoints, client and the current access token.
pub struct Fcm {
    project_id: String,
    client_email: String,
    key: EncodingKey,
    token_url: String,
    send_url: String,
    client: reqwest::Client,
    access: CachedToken,
}

impl std::fmt::Debug for Fcm {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Fcm")
            .field("project_id", &self.project_id)
            .field("client_email", &self.client_email)
            .field("token_url", &self.token_url)
            .field("send_url", &self.send_url)
            .finish_non_exhaustive()
    }
}

impl Fcm {
    /// From the credentials setting (JSON or a path to it) and the optional endpoint
    /// overrides; each request takes at most `timeout`.
    pub fn new(
        credentials: &str,
        token_url: Option<&str>,
        endpoint: Option<&str>,
        timeout: Duration,
    ) -> Result<Fcm, FcmError> {
        let text = inline_or_file("SWITCHBOARD_FCM_CREDENTIALS", credentials)
            .map_err(FcmError::Credentials)?;
        let account: ServiceAccount = serde_json::from_str(&text).map_err(|e| {
            FcmError::Credentials(format!(
                "not a service-account JSON (project_id, client_email, private_key): {}",
                // serde's message may quote the input: only its position is shown.
                format_args!("line {} column {}", e.line(), e.column())
            ))
        })?;
        let key = EncodingKey::from_rsa_pem(account.private_key.as_bytes()).map_err(|_| {
            FcmError::Credentials("private_key is not an RSA private key in PEM".into())
        })?;
        if account.project_id.is_empty()
            || !account
                .project_id
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-')
        {
            return Err(FcmError::Credentials(
                "project_id must be a Firebase project id".into(),
            ));
        }
        let token_url = token_url
            .map(str::to_string)
            .or(account.token_uri)
            .unwrap_or_else(|| DEFAULT_TOKEN_URL.to_string());
        let endpoint = endpoint.unwrap_or(DEFAULT_ENDPOINT).trim_end_matches('/');
        let send_url = format!(
            "{endpoint}/v1/projects/{}/messages:send",
            account.project_id
        );
        let client = http_client(timeout, Duration::from_secs(60))
            .build()
            .map_err(|e| FcmError::Client(error_chain(&e)))?;
        Ok(Fcm {
            project_id: account.project_id,
            client_email: account.client_email,
            key,
            token_url,
            send_url,
            client,
            access: CachedToken::default(),
        })
    }

    /// Sends `notification` to the device with registration `token`.
    pub async fn send(&self, token: &str, notification: &Notification) -> Sent {
        let access = match self.access.get(|| self.fetch_access_token()).await {
            Ok(access) => access,
            Err(reason) => return Sent::Retry(reason),
        };
        let Ok(data) = serde_json::to_string(notification) else {
            return Sent::Failed("unserializable notification".into());
        };
        let body = json!({"message": {
            "token": token,
            "notification": {"title": notification.title, "body": notification.message},
            "data": {"notification": data},
            "android": {"priority": if notification.urgent() { "HIGH" } else { "NORMAL" }},
        }});
        let response = self
            .client
            .post(&self.send_url)
            .bearer_auth(&access)
            .header(reqwest::header::CONTENT_TYPE, "application/json")
            .body(body.to_string())
            .send()
            .await;
        let response = match response {
            Ok(response) => response,
            Err(error) => {
                return Sent::Retry(format!("FCM: {}", error_chain(&error.without_url())));
            }
        };
        let status = response.status().as_u16();
        if (200..300).contains(&status) {
            return Sent::Delivered;
        }
        let answer: Value = match response.bytes().await {
            Ok(bytes) => serde_json::from_slice(&bytes).unwrap_or(Value::Null),
            Err(_) => Value::Null,
        };
        let code = error_code(&answer);
        let reason = format!("FCM answered {status} {code}");
        match (status, code.as_str()) {
            (404, _) | (400, "INVALID_ARGUMENT") | (403, "SENDER_ID_MISMATCH") => {
                Sent::Gone(reason)
            }
            (401, _) => {
                // The access token was revoked or expired early: fetch another.
                self.access.forget().await;
                Sent::Retry(reason)
            }
            (408 | 429, _) | (500.., _) => Sent::Retry(reason),
            _ => Sent::Failed(reason),
        }
    }

    /// A new access token, and how long to keep it: until a minute before it expires.
    async fn fetch_access_token(&self) -> Result<(String, Duration), String> {
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_secs());
        let assertion = Assertion {
            iss: &self.client_email,
            scope: SCOPE,
            aud: &self.token_url,
            iat: now,
            exp: now + ASSERTION_LIFETIME,
        };
        let jwt = jsonwebtoken::encode(&Header::new(Algorithm::RS256), &assertion, &self.key)
            .map_err(|e| format!("signing the FCM assertion: {e}"))?;
        // The JWT is base64url and dots: nothing in it needs escaping in a form.
        let form = format!(
            "grant_type=urn%3Aietf%3Aparams%3Aoauth%3Agrant-type%3Ajwt-bearer&assertion={jwt}"
        );
        let response = self
            .client
            .post(&self.token_url)
            .header(
                reqwest::header::CONTENT_TYPE,
                "application/x-www-form-urlencoded",
            )
            .body(form)
            .send()
            .await
            .map_err(|e| format!("FCM token: {}", error_chain(&e.without_url())))?;
        let status = response.status();
        if !status.is_success() {
            return Err(format!("FCM token URL answered {}", status.as_u16()));
        }
        let bytes = response
            .bytes()
            .await
            .map_err(|e| format!("FCM token: {}", error_chain(&e.without_url())))?;
        let token: AccessToken = serde_json::from_slice(&bytes)
            .map_err(|_| "FCM token URL sent no access_token".to_string())?;
        let lifetime = Duration::from_secs(token.expires_in.unwrap_or(ASSERTION_LIFETIME));
        Ok((token.access_token, lifetime.saturating_sub(REFRESH_EARLY)))
    }
}

/// FCM's error code: `details[].errorCode` (`UNREGISTERED`, ...) or else `error.status`.
fn error_code(answer: &Value) -> String {
    let error = &answer["error"];
    error["details"]
        .as_array()
        .into_iter()
        .flatten()
        .find_map(|detail| detail["errorCode"].as_str())
        .or_else(|| error["status"].as_str())
        .unwrap_or("")
        .chars()
        .filter(|c| c.is_ascii_alphanumeric() || *c == '_')
        .take(64)
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_error_code_comes_from_the_details_or_the_status() {
        let unregistered = json!({"error": {"code": 404, "status": "NOT_FOUND", "details": [
            {"@type": "type.googleapis.com/google.firebase.fcm.v1.FcmError", "errorCode": "UNREGISTERED"}
        ]}});
        assert_eq!(error_code(&unregistered), "UNREGISTERED");
        let invalid = json!({"error": {"code": 400, "status": "INVALID_ARGUMENT"}});
        assert_eq!(error_code(&invalid), "INVALID_ARGUMENT");
        assert_eq!(error_code(&Value::Null), "");
        assert_eq!(
            error_code(&json!({"error": {"status": "<script>"}})),
            "script"
        );
    }

    #[test]
    fn bad_credentials_are_refused_without_showing_them() {
        let timeout = Duration::from_secs(1);
        for (credentials, reason) in [
            ("{\"project_id\":\"p\"}", "not a service-account JSON"),
            (
                "{\"project_id\":\"p\",\"client_email\":\"a@b\",\"private_key\":\"secret-bytes\"}",
                "not an RSA private key",
            ),
            ("/nonexistent/sa.json", "cannot read"),
        ] {
            let error = Fcm::new(credentials, None, None, timeout)
                .unwrap_err()
                .to_string();
            assert!(error.contains(reason), "{error}");
            assert!(!error.contains("secret-bytes"), "{error}");
        }
    }
}
