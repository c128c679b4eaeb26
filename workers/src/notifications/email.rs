//! The email sink's SMTP side (docs/operations.md §4): the `SWITCHBOARD_SMTP_URL` and
//! `SWITCHBOARD_EMAIL_FROM` settings, the message made from a notification, and one
//! send per attempt through lettre's pooled SMTP transport (tokio, rustls with ring).
//!
//! The URL chooses the transport security: `smtp://` plain (a relay on the same host or
//! network), `smtp://...?tls=starttls` upgraded with STARTTLS (required, never silently
//! plain), `smtps://` TLS from the first byte. Credentials sit in the URL's userinfo
//! (percent-encoded) and are used for SMTP AUTH; they appear in no message: the URL is
//! shown only through `redact_url`.
//!
//! This module owns no table and decides no retry: it says whether the server took the
//! message, refused it for good (5xx) or could not be reached, and the dispatcher
//! ([`super::sink`]) decides.

use std::fmt;
use std::path::Path;
use std::str::FromStr;
use std::time::Duration;

use lettre::message::{Mailbox, MultiPart};
use lettre::transport::smtp::authentication::Credentials;
use lettre::transport::smtp::client::{Certificate, Tls, TlsParameters};
use lettre::{AsyncSmtpTransport, AsyncTransport, Message, Tokio1Executor};
use sha2::{Digest, Sha256};
use switchboard_bus::connect::redact_url;
use switchboard_bus::logging::error_chain;

use super::settings::{SecretParser, UrlError, parse_url};

/// The standard ports (RFC 5321, RFC 6409, RFC 8314) when the URL names none.
const SMTP_PORT: u16 = 25;
const SUBMISSION_PORT: u16 = 587;
const SUBMISSIONS_PORT: u16 = 465;

/// How the connection to the SMTP server is protected.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Security {
    Plain,
    StartTls,
    Tls,
}

/// A checked `SWITCHBOARD_SMTP_URL`.
#[derive(Clone, PartialEq, Eq)]
pub struct SmtpUrl {
    host: String,
    port: u16,
    security: Security,
    /// Decoded user name and password, for SMTP AUTH.
    credentials: Option<(String, String)>,
    /// The URL as logs may show it.
    shown: String,
}

impl FromStr for SmtpUrl {
    type Err = UrlError;

    fn from_str(text: &str) -> Result<SmtpUrl, UrlError> {
        let error = |reason| UrlError::new("SMTP", text, reason);
        let url = parse_url("SMTP", text)?;
        let mut starttls = false;
        for (name, value) in url.query_pairs() {
            match (name.as_ref(), value.as_ref()) {
                ("tls", "starttls") => starttls = true,
                _ => return Err(error("the only query it takes is ?tls=starttls")),
            }
        }
        let security = match (url.scheme(), starttls) {
            ("smtp", false) => Security::Plain,
            ("smtp", true) => Security::StartTls,
            ("smtps", false) => Security::Tls,
            ("smtps", true) => return Err(error("smtps:// is TLS already; drop ?tls=starttls")),
            _ => return Err(error("only smtp:// and smtps:// are supported")),
        };
        let host = match url.host_str() {
            Some(host) if !host.is_empty() => host.trim_start_matches('[').trim_end_matches(']'),
            _ => return Err(error("no host")),
        }
        .to_string();
        let port = url.port().unwrap_or(match security {
            Security::Plain => SMTP_PORT,
            Security::StartTls => SUBMISSION_PORT,
            Security::Tls => SUBMISSIONS_PORT,
        });
        let decode =
            |part: &str| percent_decode(part).ok_or_else(|| error("the credentials are not UTF-8"));
        let credentials = match url.password() {
            Some(password) => Some((decode(url.username())?, decode(password)?)),
            None if !url.username().is_empty() => {
                return Err(error(
                    "a user name needs a password (smtp://user:password@host)",
                ));
            }
            None => None,
        };
        if credentials.is_some() && security == Security::Plain && !is_loopback(&host) {
            return Err(error(
                "credentials would cross the network in the clear: use smtps:// or ?tls=starttls",
            ));
        }
        Ok(SmtpUrl {
            host,
            port,
            security,
            credentials,
            shown: redact_url(text),
        })
    }
}

fn percent_decode(text: &str) -> Option<String> {
    let bytes = text.as_bytes();
    let mut decoded = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' {
            let hex = std::str::from_utf8(bytes.get(i + 1..i + 3)?).ok()?;
            decoded.push(u8::from_str_radix(hex, 16).ok()?);
            i += 3;
        } else {
            decoded.push(bytes[i]);
            i += 1;
        }
    }
    String::from_utf8(decoded).ok()
}

fn is_loopback(host: &str) -> bool {
    host == "localhost"
        || host
            .parse::<std::net::IpAddr>()
            .is_ok_and(|address| address.is_loopback())
}

/// Without the credentials or the query.
impl fmt::Display for SmtpUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.shown)
    }
}

impl fmt::Debug for SmtpUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "SmtpUrl({self})")
    }
}

/// `--smtp-url`: a refusal names the setting and the reason, and shows the URL redacted.
pub fn url_parser() -> SecretParser<SmtpUrl> {
    SecretParser::new("SWITCHBOARD_SMTP_URL", |text| {
        text.parse().map_err(|e: UrlError| e.to_string())
    })
}

#[derive(Debug, thiserror::Error)]
pub enum EmailError {
    #[error("SWITCHBOARD_EMAIL_FROM is required with SWITCHBOARD_SMTP_URL")]
    NoFrom,
    #[error(
        "SWITCHBOARD_EMAIL_FROM is not a mailbox (`alerts@example.com` or `Example <alerts@example.com>`)"
    )]
    From,
    #[error("cannot set up TLS for SMTP: {0}")]
    Tls(String),
    #[error("cannot read SWITCHBOARD_SMTP_CA {path}: {error}")]
    ReadCa { path: String, error: String },
    #[error("SWITCHBOARD_SMTP_CA {path} holds no PEM certificate")]
    BadCa { path: String },
}

/// Why one message was not sent.
#[derive(Debug, thiserror::Error)]
pub enum SendError {
    /// The recipient, or the message, is refused for good: sending again changes nothing.
    #[error("{0}")]
    Permanent(String),
    /// The server is unreachable, busy (4xx), or refuses the sender's own configuration.
    #[error("{0}")]
    Transient(String),
}

/// The subject and both bodies of one email.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Letter {
    pub subject: String,
    pub text: String,
    pub html: String,
}

impl Letter {
    /// The notification's title as the subject; its message as plain text and as HTML.
    pub fn new(title: &str, message: &str) -> Letter {
        let subject: String = title.chars().filter(|c| !c.is_control()).collect();
        Letter {
            text: format!("{title}\n\n{message}\n"),
            html: format!(
                "<!DOCTYPE html>\n<html><body>\n<h1 style=\"font-size:1.2em\">{}</h1>\n<p>{}</p>\n</body></html>\n",
                escape_html(title),
                escape_html(message).replace('\n', "<br>\n")
            ),
            subject,
        }
    }
}

impl Letter {
    /// One email for several notifications (title, message), in the order given: the
    /// subject counts them; each is a heading and its message.
    pub fn digest(items: &[(String, String)]) -> Letter {
        let mut text = String::new();
        let mut html = String::from("<!DOCTYPE html>\n<html><body>\n");
        for (title, message) in items {
            text.push_str(&format!("{title}\n{message}\n\n"));
            html.push_str(&format!(
                "<h2 style=\"font-size:1.1em\">{}</h2>\n<p>{}</p>\n",
                escape_html(title),
                escape_html(message).replace('\n', "<br>\n")
            ));
        }
        html.push_str("</body></html>\n");
        Letter {
            subject: format!("{} new notifications", items.len()),
            text,
            html,
        }
    }
}

fn escape_html(text: &str) -> String {
    let mut escaped = String::with_capacity(text.len());
    for c in text.chars() {
        match c {
            '&' => escaped.push_str("&amp;"),
            '<' => escaped.push_str("&lt;"),
            '>' => escaped.push_str("&gt;"),
            '"' => escaped.push_str("&quot;"),
            '\'' => escaped.push_str("&#39;"),
            c => escaped.push(c),
        }
    }
    escaped
}

/// The SMTP server, the sender and the connection pool.
#[derive(Clone)]
pub struct Mailer {
    url: SmtpUrl,
    from: Mailbox,
    transport: AsyncSmtpTransport<Tokio1Executor>,
}

impl fmt::Debug for Mailer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Mailer")
            .field("url", &self.url)
            .field("from", &self.from.to_string())
            .finish_non_exhaustive()
    }
}

impl Mailer {
    /// A transport to `url` sending as `from`, trusting the certificates in the PEM file
    /// `ca` besides the system's; each SMTP command waits at most `timeout`.
    pub fn new(
        url: SmtpUrl,
        from: Option<&str>,
        ca: Option<&Path>,
        timeout: Duration,
    ) -> Result<Mailer, EmailError> {
        let from: Mailbox = from
            .ok_or(EmailError::NoFrom)?
            .trim()
            .parse()
            .map_err(|_| EmailError::From)?;
        // lettre takes the process's default provider; ring is the one the build already
        // has (docs/operations.md §4). An error means one is installed, which serves.
        let _ = rustls::crypto::ring::default_provider().install_default();
        let extra_roots = ca.map(extra_roots).transpose()?;
        let tls = || {
            let mut builder = TlsParameters::builder(url.host.clone());
            for pem in extra_roots.iter().flatten() {
                let root =
                    Certificate::from_pem(pem).map_err(|e| EmailError::Tls(error_chain(&e)))?;
                builder = builder.add_root_certificate(root);
            }
            builder
                .build()
                .map_err(|e| EmailError::Tls(error_chain(&e)))
        };
        let security = match url.security {
            Security::Plain => Tls::None,
            Security::StartTls => Tls::Required(tls()?),
            Security::Tls => Tls::Wrapper(tls()?),
        };
        let mut builder = AsyncSmtpTransport::<Tokio1Executor>::builder_dangerous(&url.host)
            .port(url.port)
            .tls(security)
            .timeout(Some(timeout));
        if let Some((user, password)) = &url.credentials {
            builder = builder.credentials(Credentials::new(user.clone(), password.clone()));
        }
        Ok(Mailer {
            transport: builder.build(),
            url,
            from,
        })
    }

    pub fn url(&self) -> &SmtpUrl {
        &self.url
    }

    /// Sends `letter` to `to` as message `key` (the delivery's key: every attempt carries
    /// the same `Message-ID`, so a receiving system can tell a repeat).
    pub async fn send(&self, key: &str, to: &str, letter: &Letter) -> Result<(), SendError> {
        let to: Mailbox = to
            .parse()
            .map_err(|_| SendError::Permanent("the stored address is not a mailbox".into()))?;
        let domain = self.from.email.domain();
        let digest = Sha256::digest(key.as_bytes());
        let id: String = digest[..16].iter().map(|b| format!("{b:02x}")).collect();
        let message = Message::builder()
            .from(self.from.clone())
            .to(to)
            .subject(letter.subject.clone())
            .message_id(Some(format!("<{id}.switchboard@{domain}>")))
            .multipart(MultiPart::alternative_plain_html(
                letter.text.clone(),
                letter.html.clone(),
            ))
            .map_err(|e| SendError::Permanent(format!("cannot build the message: {e}")))?;
        match self.transport.send(message).await {
            Ok(_) => Ok(()),
            Err(error) => Err(classify(&error)),
        }
    }
}

/// The certificates of the PEM file at `path`, each on its own (lettre's `Certificate`
/// is not `Clone`, and a bundle is read as one); at least one.
fn extra_roots(path: &Path) -> Result<Vec<Vec<u8>>, EmailError> {
    let shown = || path.display().to_string();
    let text = std::fs::read_to_string(path).map_err(|e| EmailError::ReadCa {
        path: shown(),
        error: e.to_string(),
    })?;
    const END: &str = "-----END CERTIFICATE-----";
    let pems: Vec<Vec<u8>> = text
        .split_inclusive(END)
        .filter(|block| block.contains("-----BEGIN CERTIFICATE-----") && block.ends_with(END))
        .map(|block| block.trim().as_bytes().to_vec())
        .collect();
    if pems.is_empty() || pems.iter().any(|pem| Certificate::from_pem(pem).is_err()) {
        return Err(EmailError::BadCa { path: shown() });
    }
    Ok(pems)
}

/// 5xx refuses for good, except the replies about the sender's own authentication
/// (530, 534, 535, 538: RFC 4954), which an operator fixes without the message changing.
fn classify(error: &lettre::transport::smtp::Error) -> SendError {
    // lettre's message already ends with its source's.
    let text = format!("SMTP: {error}");
    let own_configuration = error
        .status()
        .is_some_and(|code| matches!(code.to_string().as_str(), "530" | "534" | "535" | "538"));
    if error.is_permanent() && !own_configuration {
        SendError::Permanent(text)
    } else {
        SendError::Transient(text)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls_choose_security_and_ports_and_are_shown_redacted() {
        let plain: SmtpUrl = "smtp://127.0.0.1:2525".parse().unwrap();
        assert_eq!((plain.security, plain.port), (Security::Plain, 2525));
        assert_eq!(plain.credentials, None);
        let starttls: SmtpUrl = "smtp://mail.example.com?tls=starttls".parse().unwrap();
        assert_eq!(
            (starttls.security, starttls.port),
            (Security::StartTls, 587)
        );
        let tls: SmtpUrl = "smtps://ann:p%40ss@mail.example.com".parse().unwrap();
        assert_eq!((tls.security, tls.port), (Security::Tls, 465));
        assert_eq!(tls.credentials, Some(("ann".into(), "p@ss".into())));
        assert_eq!(tls.to_string(), "smtps://ann:***@mail.example.com");
        assert!(!format!("{tls:?}").contains("p%40ss"));
        let local: SmtpUrl = "smtp://u:pw@localhost:25".parse().unwrap();
        assert_eq!(local.security, Security::Plain);
        let v6: SmtpUrl = "smtp://[::1]:2525".parse().unwrap();
        assert_eq!(v6.host, "::1");
    }

    #[test]
    fn bad_urls_are_refused_without_their_secrets() {
        for bad in [
            "http://mail.example.com",
            "smtp://",
            "smtp://mail.example.com?tls=opportunistic",
            "smtps://mail.example.com?tls=starttls",
            "smtp://ann:hunter2@mail.example.com",
            "smtp://ann@mail.example.com",
            "smtp://mail.example.com/a b",
            "mail.example.com",
        ] {
            let error = bad.parse::<SmtpUrl>().unwrap_err().to_string();
            assert!(!error.contains("hunter2"), "{error}");
        }
    }

    #[test]
    fn letters_carry_the_title_and_escape_the_html() {
        let letter = Letter::new("New bid <b>", "c9 placed a bid & more\nline 2");
        assert_eq!(letter.subject, "New bid <b>");
        assert_eq!(
            letter.text,
            "New bid <b>\n\nc9 placed a bid & more\nline 2\n"
        );
        assert!(letter.html.contains("New bid &lt;b&gt;"), "{}", letter.html);
        assert!(letter.html.contains("bid &amp; more<br>\nline 2"));
        assert_eq!(Letter::new("a\r\nBcc: x", "m").subject, "aBcc: x");
    }

    #[test]
    fn a_digest_lists_each_notification_in_turn() {
        let items = [
            ("New bid".to_string(), "c9 bid 5".to_string()),
            ("Payment <ok>".to_string(), "paid\nthanks".to_string()),
        ];
        let letter = Letter::digest(&items);
        assert_eq!(letter.subject, "2 new notifications");
        assert_eq!(
            letter.text,
            "New bid\nc9 bid 5\n\nPayment <ok>\npaid\nthanks\n\n"
        );
        let first = letter.html.find("New bid").unwrap();
        let second = letter.html.find("Payment &lt;ok&gt;").unwrap();
        assert!(first < second, "{}", letter.html);
        assert!(letter.html.contains("paid<br>\nthanks"));
    }

    /// In a runtime: the transport's pool lives on it.
    #[tokio::test]
    async fn from_is_a_mailbox() {
        let url: SmtpUrl = "smtp://127.0.0.1:2525".parse().unwrap();
        let timeout = Duration::from_secs(1);
        assert!(
            Mailer::new(
                url.clone(),
                Some("Alerts <alerts@example.com>"),
                None,
                timeout
            )
            .is_ok()
        );
        assert!(matches!(
            Mailer::new(url.clone(), None, None, timeout),
            Err(EmailError::NoFrom)
        ));
        assert!(matches!(
            Mailer::new(url, Some("not an address"), None, timeout),
            Err(EmailError::From)
        ));
    }
}
