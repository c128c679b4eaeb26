//! The webhook sink's HTTP side: the URL and signing secret settings, and one signed
//! `POST` per attempt through a pooled reqwest client (docs/operations.md §4).
//!
//! Requests are signed per the Standard Webhooks spec so that a receiver can tell them
//! from anyone else's: `webhook-id` (the delivery's key, the same on every attempt),
//! `webhook-timestamp` (unix seconds of this attempt) and `webhook-signature:
//! v1,<base64 HMAC-SHA256(key, "<id>.<timestamp>.<body>")>`. The timestamp is signed
//! with each attempt so a receiver may refuse old replays.
//!
//! This module owns no table and decides no retry: it says what the receiver answered,
//! and the dispatcher ([`super::sink`]) decides. Nothing here shows the URL's
//! credentials or query (they may carry the receiver's token) or the secret.

use std::fmt;
use std::path::Path;
use std::str::FromStr;
use std::time::{Duration, SystemTime, UNIX_EPOCH};
use switchboard_bus::logging::error_chain;

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD;
use hmac::{Hmac, Mac};
use sha2::Sha256;
use switchboard_bus::connect::redact_url;
use switchboard_bus::traces;

use super::settings::{SecretParser, UrlError, http_client, parse_url, send_traced};

/// How long an idle connection to the receiver is kept for the next request.
const IDLE_CONNECTION: Duration = Duration::from_secs(60);
/// Idle connections kept per receiver host.
const IDLE_PER_HOST: usize = 8;
/// Secrets shorter than this are refused: an HMAC key guessable by brute force is none.
const MIN_SECRET_BYTES: usize = 16;

/// The W3C trace context header passed on from the event (docs/protocol.md §10.4).
pub const TRACEPARENT: &str = "traceparent";

/// A checked `http://` or `https://` URL without credentials.
#[derive(Clone, PartialEq, Eq)]
pub struct WebhookUrl(reqwest::Url);

impl FromStr for WebhookUrl {
    type Err = UrlError;

    fn from_str(text: &str) -> Result<WebhookUrl, UrlError> {
        let error = |reason| UrlError::new("webhook", text, reason);
        let url = parse_url("webhook", text)?;
        if !matches!(url.scheme(), "http" | "https") {
            return Err(error("only http:// and https:// are supported"));
        }
        if url.host_str().is_none_or(str::is_empty) {
            return Err(error("no host"));
        }
        if !url.username().is_empty() || url.password().is_some() {
            return Err(error(
                "credentials in the URL are not supported; the receiver checks the signature \
                 (SWITCHBOARD_NOTIFY_WEBHOOK_SECRET)",
            ));
        }
        Ok(WebhookUrl(url))
    }
}

/// Shown without its query, which may carry the receiver's token.
impl fmt::Display for WebhookUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&redact_url(self.0.as_str()))
    }
}

impl fmt::Debug for WebhookUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "WebhookUrl({self})")
    }
}

/// The Standard Webhooks signing key, from `whsec_<base64 key>`.
#[derive(Clone, PartialEq, Eq)]
pub struct WebhookSecret(Vec<u8>);

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SecretError {
    #[error("it must start with whsec_")]
    Prefix,
    #[error("the part after whsec_ is not base64")]
    Base64,
    #[error("the key is shorter than {MIN_SECRET_BYTES} bytes")]
    TooShort,
}

impl FromStr for WebhookSecret {
    type Err = SecretError;

    fn from_str(text: &str) -> Result<WebhookSecret, SecretError> {
        let encoded = text
            .trim()
            .strip_prefix("whsec_")
            .ok_or(SecretError::Prefix)?;
        let key = STANDARD.decode(encoded).map_err(|_| SecretError::Base64)?;
        if key.len() < MIN_SECRET_BYTES {
            return Err(SecretError::TooShort);
        }
        Ok(WebhookSecret(key))
    }
}

/// Never the key.
impl fmt::Debug for WebhookSecret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("WebhookSecret(***)")
    }
}

impl WebhookSecret {
    /// `v1,<base64 HMAC-SHA256(key, "<id>.<timestamp>.<body>")>`.
    pub fn sign(&self, id: &str, timestamp: u64, body: &[u8]) -> String {
        // Any key length is valid for HMAC; `new_from_slice` cannot fail here.
        let mut mac = <Hmac<Sha256>>::new_from_slice(&self.0).expect("HMAC takes any key length");
        mac.update(id.as_bytes());
        mac.update(b".");
        mac.update(timestamp.to_string().as_bytes());
        mac.update(b".");
        mac.update(body);
        format!("v1,{}", STANDARD.encode(mac.finalize().into_bytes()))
    }
}

/// `--notify-webhook-url`: the URL redacted in a refusal.
pub fn url_parser() -> SecretParser<WebhookUrl> {
    SecretParser::new("SWITCHBOARD_NOTIFY_WEBHOOK_URL", |text| {
        text.parse().map_err(|e: UrlError| e.to_string())
    })
}

/// `--notify-webhook-secret`: a refusal says why, never what.
pub fn secret_parser() -> SecretParser<WebhookSecret> {
    SecretParser::new("SWITCHBOARD_NOTIFY_WEBHOOK_SECRET", |text| {
        text.parse()
            .map_err(|e: SecretError| format!("not a Standard Webhooks secret: {e}"))
    })
}

#[derive(Debug, thiserror::Error)]
pub enum WebhookError {
    #[error("cannot read SWITCHBOARD_NOTIFY_WEBHOOK_CA {path}: {error}")]
    ReadCa { path: String, error: String },
    #[error("SWITCHBOARD_NOTIFY_WEBHOOK_CA {path} holds no PEM certificate: {error}")]
    BadCa { path: String, error: String },
    #[error("cannot set up the webhook's HTTP client: {0}")]
    Client(String),
    #[error("webhook request failed: {0}")]
    Request(String),
}

/// The receiver, signing key and connection pool.
#[derive(Clone)]
pub struct Webhook {
    url: WebhookUrl,
    secret: Option<WebhookSecret>,
    client: reqwest::Client,
}

impl fmt::Debug for Webhook {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Webhook")
            .field("url", &self.url)
            .field("signed", &self.secret.is_some())
            .finish()
    }
}

impl Webhook {
    /// A client for `url` trusting the system's roots and, when given, the CA
    /// certificates in the PEM file `ca`; each request takes at most `timeout`.
    pub fn new(
        url: WebhookUrl,
        secret: Option<WebhookSecret>,
        ca: Option<&Path>,
        timeout: Duration,
    ) -> Result<Webhook, WebhookError> {
        // A redirect is an answer (failed for good), not a new target to sign for.
        let mut builder =
            http_client(timeout, IDLE_CONNECTION).pool_max_idle_per_host(IDLE_PER_HOST);
        if let Some(path) = ca {
            let pem = std::fs::read(path).map_err(|e| WebhookError::ReadCa {
                path: path.display().to_string(),
                error: e.to_string(),
            })?;
            let certificates =
                reqwest::Certificate::from_pem_bundle(&pem).map_err(|e| WebhookError::BadCa {
                    path: path.display().to_string(),
                    error: error_chain(&e),
                })?;
            if certificates.is_empty() {
                return Err(WebhookError::BadCa {
                    path: path.display().to_string(),
                    error: "no certificate found".into(),
                });
            }
            builder = builder.tls_certs_merge(certificates);
        }
        let client = builder
            .build()
            .map_err(|e| WebhookError::Client(error_chain(&e)))?;
        Ok(Webhook {
            url,
            secret,
            client,
        })
    }

    pub fn url(&self) -> &WebhookUrl {
        &self.url
    }

    pub fn signed(&self) -> bool {
        self.secret.is_some()
    }

    /// Posts `body` (JSON) as message `id`; the receiver's status code.
    pub async fn post(
        &self,
        id: &str,
        body: &[u8],
        traceparent: Option<&str>,
    ) -> Result<u16, WebhookError> {
        let mut request = self
            .client
            .post(self.url.0.clone())
            .header(reqwest::header::CONTENT_TYPE, "application/json")
            .header("Idempotency-Key", id)
            .header("webhook-id", id);
        if let Some(secret) = &self.secret {
            let timestamp = SystemTime::now()
                .duration_since(UNIX_EPOCH)
                .map_or(0, |d| d.as_secs());
            request = request
                .header("webhook-timestamp", timestamp.to_string())
                .header("webhook-signature", secret.sign(id, timestamp, body));
        }
        let span =
            traces::span(|| tracing::info_span!("webhook", trace_id = tracing::field::Empty));
        let response = send_traced(request.body(body.to_vec()), span, traceparent)
            .await
            // reqwest's message names the URL, query included: leave it out.
            .map_err(|e| WebhookError::Request(error_chain(&e.without_url())))?;
        Ok(response.status().as_u16())
    }
}

/// A W3C `traceparent` (checked as `switchboard_schemas::TraceParent` does): anything
/// else in the header is not passed on.
pub fn valid_traceparent(text: &str) -> bool {
    switchboard_schemas::TraceParent::parse(text).is_some()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls_are_http_or_https_without_credentials_and_shown_redacted() {
        for good in [
            "http://hooks.local",
            "https://hooks.example.com/push?token=abc",
            "http://[::1]:9000/hook",
            "http://127.0.0.1:8081/push/v1",
        ] {
            assert!(good.parse::<WebhookUrl>().is_ok(), "{good}");
        }
        let url: WebhookUrl = "https://h.example/push?token=abc".parse().unwrap();
        assert_eq!(url.to_string(), "https://h.example/push?***");
        assert!(!format!("{url:?}").contains("abc"));
        for bad in [
            "ftp://x",
            "http://",
            "http://h:port/",
            "http://user:pw@h/",
            "https://token@h/",
            "http://h/a b",
            "hooks.local",
        ] {
            let error = bad.parse::<WebhookUrl>().unwrap_err().to_string();
            assert!(
                !error.contains("pw") && !error.contains("token@"),
                "{error}"
            );
        }
    }

    #[test]
    fn secrets_are_whsec_base64_and_never_shown() {
        let secret: WebhookSecret = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw".parse().unwrap();
        assert_eq!(format!("{secret:?}"), "WebhookSecret(***)");
        assert_eq!(
            "MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw".parse::<WebhookSecret>(),
            Err(SecretError::Prefix)
        );
        assert_eq!(
            "whsec_not*base64".parse::<WebhookSecret>(),
            Err(SecretError::Base64)
        );
        assert_eq!(
            "whsec_c2hvcnQ=".parse::<WebhookSecret>(),
            Err(SecretError::TooShort)
        );
    }

    /// The example of the Standard Webhooks reference libraries.
    #[test]
    fn signatures_match_the_standard_webhooks_reference() {
        let secret: WebhookSecret = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw".parse().unwrap();
        let signature = secret.sign(
            "msg_p5jXN8AQM9LWM0D4loKWxJek",
            1_614_265_330,
            br#"{"test": 2432232314}"#,
        );
        assert_eq!(signature, "v1,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE=");
    }

    #[test]
    fn only_well_formed_traceparents_pass() {
        assert!(valid_traceparent(
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"
        ));
        for bad in [
            "",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7",
            "00-00000000000000000000000000000000-00f067aa0ba902b7-01",
            "00-4BF92F3577B34DA6A3CE929D0E0E4736-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01\r\nx: y",
        ] {
            assert!(!valid_traceparent(bad), "{bad:?}");
        }
    }
}
