//! The codes a client can see: why a frame was refused (`err`), why a subscription
//! ended (`unsubbed`) and why the server is closing the socket (`bye`).
//!
//! Every failure anywhere in Switchboard that reaches a client maps to exactly one of
//! these, so they are closed enums: a new code is a protocol change.

use std::fmt;

use serde::{Deserialize, Serialize};

/// The `code` of an `err` frame (and of the JSON error body on HTTP).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ErrorCode {
    BadRequest,
    Unauthorized,
    Forbidden,
    NotFound,
    RateLimited,
    TooLarge,
    Unavailable,
    Internal,
}

impl ErrorCode {
    pub fn as_str(self) -> &'static str {
        match self {
            ErrorCode::BadRequest => "bad_request",
            ErrorCode::Unauthorized => "unauthorized",
            ErrorCode::Forbidden => "forbidden",
            ErrorCode::NotFound => "not_found",
            ErrorCode::RateLimited => "rate_limited",
            ErrorCode::TooLarge => "too_large",
            ErrorCode::Unavailable => "unavailable",
            ErrorCode::Internal => "internal",
        }
    }

    /// The HTTP status the same refusal gets on the HTTP endpoints.
    pub fn http_status(self) -> u16 {
        match self {
            ErrorCode::BadRequest => 400,
            ErrorCode::Unauthorized => 401,
            ErrorCode::Forbidden => 403,
            ErrorCode::NotFound => 404,
            ErrorCode::TooLarge => 413,
            ErrorCode::RateLimited => 429,
            ErrorCode::Internal => 500,
            ErrorCode::Unavailable => 503,
        }
    }
}

impl fmt::Display for ErrorCode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The `code` of a `bye` frame, sent just before the server closes the socket.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ByeCode {
    TokenExpired,
    Draining,
    SlowConsumer,
    RateLimited,
    ProtocolError,
    Unauthorized,
}

impl ByeCode {
    pub fn as_str(self) -> &'static str {
        match self {
            ByeCode::TokenExpired => "token_expired",
            ByeCode::Draining => "draining",
            ByeCode::SlowConsumer => "slow_consumer",
            ByeCode::RateLimited => "rate_limited",
            ByeCode::ProtocolError => "protocol_error",
            ByeCode::Unauthorized => "unauthorized",
        }
    }

    /// The WebSocket close code that follows the `bye` (docs/protocol.md, section 7).
    pub fn close_code(self) -> u16 {
        match self {
            ByeCode::TokenExpired | ByeCode::Unauthorized => 4401,
            ByeCode::RateLimited => 4408,
            ByeCode::SlowConsumer => 4409,
            ByeCode::Draining => 4410,
            ByeCode::ProtocolError => 4400,
        }
    }

    /// Whether the client should reconnect (with backoff) after this `bye`.
    ///
    /// An expired token is routine: the client fetches a new one and reconnects. A
    /// client that never authenticated would only be refused again.
    pub fn reconnect(self) -> bool {
        !matches!(self, ByeCode::Unauthorized)
    }
}

impl fmt::Display for ByeCode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The `code` of an `unsubbed` frame: why the server ended a subscription.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum UnsubCode {
    /// The user lost the right to read the channel (e.g. removed from a project).
    Revoked,
}

/// A short, single-line, quoted rendering of untrusted input for error messages,
/// e.g. `` `project:p.1` ``.
///
/// Errors travel back to clients and into logs; echoing a 64 KiB frame field back
/// verbatim would turn every refusal into an amplifier, and a raw newline would forge
/// log lines.
/// The bound is on what is shown, escapes included: a control character shows as up to
/// ten (`\u{10ffff}`), so bounding the input alone let 64 of them echo 640.
pub(crate) fn excerpt(input: &str) -> String {
    const MAX_CHARS: usize = 64;
    let mut shown = String::new();
    let mut length = 0;
    let mut more = "";
    for c in input.chars() {
        let escaped = c.escape_debug();
        let width = escaped.len();
        if length + width > MAX_CHARS {
            more = "…";
            break;
        }
        shown.extend(escaped);
        length += width;
    }
    format!("`{shown}{more}`")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn codes_serialize_as_snake_case() {
        assert_eq!(
            serde_json::to_string(&ErrorCode::BadRequest).unwrap(),
            r#""bad_request""#
        );
        assert_eq!(
            serde_json::to_string(&ByeCode::SlowConsumer).unwrap(),
            r#""slow_consumer""#
        );
        assert_eq!(
            serde_json::to_string(&UnsubCode::Revoked).unwrap(),
            r#""revoked""#
        );
        for code in [ErrorCode::TooLarge, ErrorCode::NotFound] {
            assert_eq!(serde_json::to_string(&code).unwrap(), format!("\"{code}\""));
        }
    }

    #[test]
    fn bye_close_codes_follow_the_design() {
        assert_eq!(ByeCode::Unauthorized.close_code(), 4401);
        assert_eq!(ByeCode::TokenExpired.close_code(), 4401);
        assert_eq!(ByeCode::RateLimited.close_code(), 4408);
        assert_eq!(ByeCode::SlowConsumer.close_code(), 4409);
        assert_eq!(ByeCode::Draining.close_code(), 4410);
        assert_eq!(ByeCode::ProtocolError.close_code(), 4400);
        assert!(ByeCode::TokenExpired.reconnect());
        assert!(!ByeCode::Unauthorized.reconnect());
    }

    #[test]
    fn excerpt_bounds_what_is_echoed() {
        assert_eq!(excerpt("a.b"), "`a.b`");
        assert_eq!(excerpt("a\nb"), "`a\\nb`");
        let long = "x".repeat(1000);
        assert_eq!(excerpt(&long).chars().count(), 64 + 3);
        for escaped in ["\u{18}", "\u{d70d7}", "\n", "é"] {
            let long = escaped.repeat(1000);
            let shown = excerpt(&long);
            assert!(shown.chars().count() <= 64 + 3, "{shown}");
            assert!(shown.ends_with("…`"), "{shown}");
        }
    }
}
