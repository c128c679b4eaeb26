//! What the sinks' settings share (docs/operations.md §4): a URL setting checked once at
//! start-up and refused with its credentials and query hidden, a clap parser whose
//! refusal never repeats the value, the HTTP client every sender starts from, and a
//! request sent in the event's trace (docs/protocol.md §10.4).
//!
//! Each sink keeps its own rules (schemes, credentials, ports): this module only does
//! what every one of them does first.

use std::fmt;
use std::time::Duration;

use switchboard_bus::connect::redact_url;
use switchboard_bus::traces;
use tracing::Instrument as _;

use super::webhook::TRACEPARENT;

/// The longest wait for a TCP (and TLS) connection, within the request timeout.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);

/// A URL setting refused: which kind of URL, shown redacted, and why.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid {kind} URL {url}: {reason}")]
pub struct UrlError {
    /// `SMTP`, `webhook`: what the URL is for.
    kind: &'static str,
    /// Redacted: never the credentials or the query.
    url: String,
    reason: &'static str,
}

impl UrlError {
    /// `text` refused for `reason`; only its redacted form is kept.
    pub fn new(kind: &'static str, text: &str, reason: &'static str) -> UrlError {
        UrlError {
            kind,
            url: redact_url(text),
            reason,
        }
    }
}

/// The checks every URL setting starts with: no spaces or control characters (a value
/// pasted with a newline), and a URL at all. The caller checks the rest.
pub fn parse_url(kind: &'static str, text: &str) -> Result<reqwest::Url, UrlError> {
    if text.bytes().any(|b| b.is_ascii_control() || b == b' ') {
        return Err(UrlError::new(
            kind,
            text,
            "it contains spaces or control characters",
        ));
    }
    reqwest::Url::parse(text).map_err(|_| UrlError::new(kind, text, "not a URL"))
}

/// A secret setting's text, never shown (`Debug` prints `***`).
#[derive(Clone)]
pub struct Hidden(pub String);

impl Hidden {
    /// The parser of a secret setting taken as it is: only a value that is not UTF-8 is
    /// refused, by the setting's name.
    pub const fn parser(setting: &'static str) -> SecretParser<Hidden> {
        SecretParser::new(setting, |text| Ok(Hidden(text.to_string())))
    }
}

impl fmt::Debug for Hidden {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("***")
    }
}

/// A clap value parser whose refusal names the setting and the reason, never the value:
/// clap's own message would repeat the value whole, and it may be a credential.
#[derive(Clone, Copy)]
pub struct SecretParser<T> {
    setting: &'static str,
    parse: fn(&str) -> Result<T, String>,
}

impl<T> SecretParser<T> {
    pub const fn new(setting: &'static str, parse: fn(&str) -> Result<T, String>) -> Self {
        SecretParser { setting, parse }
    }
}

impl<T: Clone + Send + Sync + 'static> clap::builder::TypedValueParser for SecretParser<T> {
    type Value = T;

    fn parse_ref(
        &self,
        _command: &clap::Command,
        _arg: Option<&clap::Arg>,
        value: &std::ffi::OsStr,
    ) -> Result<T, clap::Error> {
        use clap::error::ErrorKind;
        let text = value.to_str().ok_or_else(|| {
            clap::Error::raw(
                ErrorKind::InvalidUtf8,
                format!("{} is not UTF-8\n", self.setting),
            )
        })?;
        (self.parse)(text).map_err(|reason| {
            clap::Error::raw(
                ErrorKind::ValueValidation,
                format!("{}: {reason}\n", self.setting),
            )
        })
    }
}

/// The HTTP client a sender starts from: requests take at most `timeout` (connecting at
/// most 5 s of it), idle connections are kept `idle`, a redirect is an answer (never
/// followed: it is not the target the settings name), and the user agent names us. The
/// caller adds what is its own (HTTP/2, a CA) and builds it.
pub fn http_client(timeout: Duration, idle: Duration) -> reqwest::ClientBuilder {
    // reqwest is built without a bundled provider and uses the process default; ring is
    // the provider async-nats's rustls already brings. An error means one is installed
    // already, which serves as well.
    let _ = rustls::crypto::ring::default_provider().install_default();
    reqwest::Client::builder()
        .timeout(timeout)
        .connect_timeout(CONNECT_TIMEOUT.min(timeout))
        .pool_idle_timeout(idle)
        .redirect(reqwest::redirect::Policy::none())
        .user_agent(concat!("switchboard-workers/", env!("CARGO_PKG_VERSION")))
}

/// Sends `request` inside `span`, which continues the event's trace (`traceparent`, when
/// it had one); the receiver gets the span as its parent in a `traceparent` header.
pub async fn send_traced(
    request: reqwest::RequestBuilder,
    span: tracing::Span,
    traceparent: Option<&str>,
) -> Result<reqwest::Response, reqwest::Error> {
    traces::continue_trace(&span, traceparent);
    let request = match traces::traceparent(&span, traceparent) {
        Some(traceparent) => request.header(TRACEPARENT, traceparent.as_str()),
        None => request,
    };
    request.send().instrument(span).await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_url_setting_is_refused_redacted_and_by_kind() {
        assert!(parse_url("webhook", "https://example.com/hook?token=t").is_ok());
        let error = parse_url("SMTP", "smtp://ann:secret@mail.example.com\n")
            .unwrap_err()
            .to_string();
        assert!(error.starts_with("invalid SMTP URL "), "{error}");
        assert!(error.contains("spaces or control characters"), "{error}");
        assert!(!error.contains("secret"), "{error}");
        let error = parse_url("webhook", "no-scheme").unwrap_err().to_string();
        assert!(
            error.starts_with("invalid webhook URL ") && error.ends_with(": not a URL"),
            "{error}"
        );
    }
}
