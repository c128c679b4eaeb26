//! A minimal HTTP/1.1 client for the webhook sink: one `POST` of a JSON body per
//! connection (`Connection: close`), answered by a status code.
//!
//! Only `http://` URLs: the webhook is expected to be a service next to the workers (or
//! a TLS-terminating proxy in front of a remote one). A whole HTTP stack would be a heavy
//! dependency for one request shape; this is the part of HTTP/1.1 that shape needs. The
//! response body is not read: the status line decides.

use std::fmt;
use std::str::FromStr;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// Longest status line and headers read from a response.
const MAX_HEAD: usize = 16 * 1024;

/// A parsed `http://host[:port][/path][?query]` URL.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WebhookUrl {
    text: String,
    host: String,
    port: u16,
    /// Path and query, at least `/`.
    target: String,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid webhook URL {url:?}: {reason}")]
pub struct UrlError {
    url: String,
    reason: &'static str,
}

impl FromStr for WebhookUrl {
    type Err = UrlError;

    fn from_str(text: &str) -> Result<WebhookUrl, UrlError> {
        let error = |reason| UrlError {
            url: switchboard_bus::connect::redact_url(text),
            reason,
        };
        let rest = text.strip_prefix("http://").ok_or_else(|| {
            error("only http:// is supported; put a TLS-terminating proxy in front of an https endpoint")
        })?;
        if text.bytes().any(|b| b.is_ascii_control() || b == b' ') {
            return Err(error("it contains spaces or control characters"));
        }
        let (authority, target) = match rest.find(['/', '?']) {
            Some(index) if rest[index..].starts_with('?') => {
                (&rest[..index], format!("/{}", &rest[index..]))
            }
            Some(index) => (&rest[..index], rest[index..].to_string()),
            None => (rest, "/".to_string()),
        };
        let target = target.split('#').next().unwrap_or("/").to_string();
        if authority.contains('@') {
            return Err(error("credentials in the URL are not supported"));
        }
        let (host, port) = if let Some(bracketed) = authority.strip_prefix('[') {
            let (host, after) = bracketed
                .split_once(']')
                .ok_or_else(|| error("unclosed [ in the host"))?;
            let port = match after.strip_prefix(':') {
                Some(port) => port.parse().map_err(|_| error("bad port"))?,
                None if after.is_empty() => 80,
                None => return Err(error("bad host")),
            };
            (host.to_string(), port)
        } else {
            match authority.rsplit_once(':') {
                Some((host, port)) => (
                    host.to_string(),
                    port.parse().map_err(|_| error("bad port"))?,
                ),
                None => (authority.to_string(), 80),
            }
        };
        if host.is_empty() {
            return Err(error("no host"));
        }
        Ok(WebhookUrl {
            text: text.to_string(),
            host,
            port,
            target,
        })
    }
}

/// Reads `--notify-webhook-url` for clap. A refusal names the setting and the reason with
/// the URL redacted: clap's own message for a bad value would repeat the value whole, and
/// the value may hold a credential.
#[derive(Debug, Clone, Copy)]
pub struct WebhookUrlParser;

impl clap::builder::TypedValueParser for WebhookUrlParser {
    type Value = WebhookUrl;

    fn parse_ref(
        &self,
        _command: &clap::Command,
        _arg: Option<&clap::Arg>,
        value: &std::ffi::OsStr,
    ) -> Result<WebhookUrl, clap::Error> {
        use clap::error::ErrorKind;
        let text = value.to_str().ok_or_else(|| {
            clap::Error::raw(
                ErrorKind::InvalidUtf8,
                "SWITCHBOARD_NOTIFY_WEBHOOK_URL is not UTF-8\n",
            )
        })?;
        text.parse().map_err(|error: UrlError| {
            clap::Error::raw(
                ErrorKind::ValueValidation,
                format!("SWITCHBOARD_NOTIFY_WEBHOOK_URL: {error}\n"),
            )
        })
    }
}

/// Shown without its query, which may carry the receiver's token.
impl fmt::Display for WebhookUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&switchboard_bus::connect::redact_url(&self.text))
    }
}

#[derive(Debug, thiserror::Error)]
pub enum HttpError {
    #[error("connecting to {0} failed: {1}")]
    Connect(String, std::io::Error),
    #[error("sending the request failed: {0}")]
    Io(#[from] std::io::Error),
    #[error("no response within {0:?}")]
    Timeout(Duration),
    #[error("unreadable response: {0}")]
    Response(String),
}

/// Posts `body` as JSON with the extra `headers`, and returns the response status.
pub async fn post_json(
    url: &WebhookUrl,
    headers: &[(&str, &str)],
    body: &[u8],
    timeout: Duration,
) -> Result<u16, HttpError> {
    tokio::time::timeout(timeout, exchange(url, headers, body))
        .await
        .map_err(|_| HttpError::Timeout(timeout))?
}

async fn exchange(
    url: &WebhookUrl,
    headers: &[(&str, &str)],
    body: &[u8],
) -> Result<u16, HttpError> {
    let mut stream = TcpStream::connect((url.host.as_str(), url.port))
        .await
        .map_err(|e| HttpError::Connect(format!("{}:{}", url.host, url.port), e))?;
    let host = if url.host.contains(':') {
        format!("[{}]:{}", url.host, url.port)
    } else {
        format!("{}:{}", url.host, url.port)
    };
    let mut request = format!(
        "POST {} HTTP/1.1\r\nHost: {host}\r\nUser-Agent: switchboard-workers/{}\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n",
        url.target,
        env!("CARGO_PKG_VERSION"),
        body.len()
    );
    for (name, value) in headers {
        // Header values here are ids the worker made; refuse rather than split a header.
        if value.bytes().any(|b| b == b'\r' || b == b'\n') {
            return Err(HttpError::Response(format!(
                "header {name} has a line break"
            )));
        }
        request.push_str(&format!("{name}: {value}\r\n"));
    }
    request.push_str("\r\n");
    stream.write_all(request.as_bytes()).await?;
    stream.write_all(body).await?;
    stream.flush().await?;

    let mut head = Vec::with_capacity(1024);
    let mut buffer = [0u8; 1024];
    while !head.windows(2).any(|w| w == b"\r\n") {
        let read = stream.read(&mut buffer).await?;
        if read == 0 {
            return Err(HttpError::Response(
                "connection closed before a status line".into(),
            ));
        }
        head.extend_from_slice(&buffer[..read]);
        if head.len() > MAX_HEAD {
            return Err(HttpError::Response("status line too long".into()));
        }
    }
    parse_status(&head)
}

/// The code of a status line such as `HTTP/1.1 204 No Content`.
fn parse_status(head: &[u8]) -> Result<u16, HttpError> {
    let line_end = head
        .windows(2)
        .position(|w| w == b"\r\n")
        .unwrap_or(head.len());
    let line = String::from_utf8_lossy(&head[..line_end]);
    let mut parts = line.splitn(3, ' ');
    match (parts.next(), parts.next()) {
        (Some(version), Some(code)) if version.starts_with("HTTP/1.") => code
            .parse::<u16>()
            .ok()
            .filter(|code| (100..=599).contains(code))
            .ok_or_else(|| HttpError::Response(format!("bad status line {line:?}"))),
        _ => Err(HttpError::Response(format!("bad status line {line:?}"))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn url(text: &str) -> WebhookUrl {
        text.parse().unwrap()
    }

    #[test]
    fn parses_http_urls() {
        let plain = url("http://hooks.local");
        assert_eq!(
            (plain.host.as_str(), plain.port, plain.target.as_str()),
            ("hooks.local", 80, "/")
        );
        let full = url("http://127.0.0.1:8081/push/v1?token=abc#frag");
        assert_eq!(
            (full.host.as_str(), full.port, full.target.as_str()),
            ("127.0.0.1", 8081, "/push/v1?token=abc")
        );
        let query = url("http://h:1?x=1");
        assert_eq!(query.target, "/?x=1");
        let v6 = url("http://[::1]:9000/hook");
        assert_eq!((v6.host.as_str(), v6.port), ("::1", 9000));
        assert_eq!(
            full.to_string(),
            "http://127.0.0.1:8081/push/v1?***",
            "shown without the query's token"
        );
        let refused = "http://user:pw@h/".parse::<WebhookUrl>().unwrap_err();
        assert!(!refused.to_string().contains("pw"), "{refused}");
        for bad in [
            "https://hooks.example.com/push",
            "ftp://x",
            "http://",
            "http://h:port/",
            "http://user:pw@h/",
            "http://h/a b",
            "http://[::1/",
            "hooks.local",
        ] {
            assert!(bad.parse::<WebhookUrl>().is_err(), "{bad}");
        }
    }

    #[test]
    fn reads_status_lines() {
        assert_eq!(parse_status(b"HTTP/1.1 204 No Content\r\n").unwrap(), 204);
        assert_eq!(parse_status(b"HTTP/1.0 500\r\n\r\n").unwrap(), 500);
        assert!(parse_status(b"HTTP/2 200\r\n").is_err());
        assert!(parse_status(b"HTTP/1.1 abc\r\n").is_err());
        assert!(parse_status(b"garbage\r\n").is_err());
    }

    #[tokio::test]
    async fn posts_to_a_local_server() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let server = tokio::spawn(async move {
            let (mut socket, _) = listener.accept().await.unwrap();
            let mut received = Vec::new();
            let mut buffer = [0u8; 4096];
            loop {
                let read = socket.read(&mut buffer).await.unwrap();
                received.extend_from_slice(&buffer[..read]);
                let text = String::from_utf8_lossy(&received);
                if let Some((_, body)) = text.split_once("\r\n\r\n")
                    && body.len() >= 7
                {
                    break;
                }
            }
            socket
                .write_all(b"HTTP/1.1 202 Accepted\r\nContent-Length: 0\r\n\r\n")
                .await
                .unwrap();
            String::from_utf8(received).unwrap()
        });
        let target = url(&format!("http://127.0.0.1:{port}/hook"));
        let status = post_json(
            &target,
            &[("Idempotency-Key", "k1")],
            br#"{"a":1}"#,
            Duration::from_secs(5),
        )
        .await
        .unwrap();
        assert_eq!(status, 202);
        let request = server.await.unwrap();
        assert!(request.starts_with("POST /hook HTTP/1.1\r\n"), "{request}");
        assert!(request.contains("Idempotency-Key: k1\r\n"));
        assert!(request.contains("Content-Length: 7\r\n"));
        assert!(request.ends_with("\r\n\r\n{\"a\":1}"));

        let closed = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let nobody = url(&format!(
            "http://127.0.0.1:{}/",
            closed.local_addr().unwrap().port()
        ));
        drop(closed);
        assert!(
            post_json(&nobody, &[], b"{}", Duration::from_secs(5))
                .await
                .is_err()
        );
    }
}
