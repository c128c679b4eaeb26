//! One refusal type for every transport (docs/protocol.md, section 7).
//!
//! A [`Refusal`] is a protocol error code and a message, made once where the decision is
//! taken and rendered where it leaves: an `err` frame on a socket; an HTTP status with
//! the JSON body `{"code": "...", "message": "..."}` for a request refused before its SSE
//! stream starts, and for a poll (also when a channel fails while it waits); an `err`
//! event (the frame without `id`) before the `bye` of an SSE stream whose channel failed
//! after it started (docs/protocol.md, section 11). Ending a whole session (or an SSE
//! stream) is a `bye` with its own code, not a refusal.

use axum::Json;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use bytes::Bytes;
use switchboard_schemas::{ErrorCode, ServerFrame};

/// A refused request: what the client gets told, in every transport's own form.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{code}: {message}")]
pub struct Refusal {
    pub code: ErrorCode,
    pub message: String,
}

impl Refusal {
    pub fn new(code: ErrorCode, message: impl Into<String>) -> Refusal {
        Refusal {
            code,
            message: message.into(),
        }
    }

    pub fn bad_request(message: impl Into<String>) -> Refusal {
        Refusal::new(ErrorCode::BadRequest, message)
    }

    pub fn forbidden(message: impl std::fmt::Display) -> Refusal {
        Refusal::new(ErrorCode::Forbidden, message.to_string())
    }

    pub fn unavailable(message: impl std::fmt::Display) -> Refusal {
        Refusal::new(ErrorCode::Unavailable, message.to_string())
    }

    pub fn unauthorized(message: impl std::fmt::Display) -> Refusal {
        Refusal::new(ErrorCode::Unauthorized, message.to_string())
    }

    pub fn rate_limited(message: impl Into<String>) -> Refusal {
        Refusal::new(ErrorCode::RateLimited, message)
    }

    /// A frame above the limit; its `err` carries no id (see [`Refusal::frame`]).
    pub fn too_large(message: impl Into<String>) -> Refusal {
        Refusal::new(ErrorCode::TooLarge, message)
    }

    /// The `err` frame answering the request `id`. `too_large` carries no id: the frame
    /// that was too large was not read far enough to know it.
    pub fn frame(&self, id: Option<u64>) -> Bytes {
        let id = if self.code == ErrorCode::TooLarge {
            None
        } else {
            id
        };
        ServerFrame::error(id, self.code, self.message.clone()).encode()
    }

    /// The HTTP status of this refusal.
    pub fn status(&self) -> StatusCode {
        StatusCode::from_u16(self.code.http_status()).unwrap_or(StatusCode::BAD_REQUEST)
    }
}

impl IntoResponse for Refusal {
    fn into_response(self) -> Response {
        let body = serde_json::json!({ "code": self.code, "message": self.message });
        (self.status(), Json(body)).into_response()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_refusal_renders_as_a_frame_and_as_an_http_error() {
        let refusal = Refusal::forbidden("not a member of project:p1");
        let frame: serde_json::Value = serde_json::from_slice(&refusal.frame(Some(4))).unwrap();
        assert_eq!(
            frame,
            serde_json::json!({"op":"err","id":4,"code":"forbidden","message":"not a member of project:p1"})
        );
        assert_eq!(refusal.status(), StatusCode::FORBIDDEN);
        assert_eq!(
            Refusal::new(ErrorCode::RateLimited, "slow down").status(),
            StatusCode::TOO_MANY_REQUESTS
        );
    }

    #[test]
    fn too_large_carries_no_id() {
        let frame: serde_json::Value =
            serde_json::from_slice(&Refusal::new(ErrorCode::TooLarge, "big").frame(Some(9)))
                .unwrap();
        assert!(frame.get("id").is_none(), "{frame}");
    }
}
