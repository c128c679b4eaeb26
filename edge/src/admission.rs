//! Who gets in over HTTP: the browser origin, the token (`Authorization: Bearer` or
//! `?token=`), and a place among the user's connections on this edge
//! (docs/protocol.md, section 2). Shared by the WebSocket upgrade, SSE, long polling,
//! publishing and RPC, so every door checks the same things in the same order.

use axum::http::{HeaderMap, header};
use serde::Deserialize;
use switchboard_schemas::{ErrorCode, PresenceStatus};

use crate::Edge;
use crate::auth::Identity;
use crate::limits::UserSlot;
use crate::refusal::Refusal;

/// The query parameters every authenticated endpoint reads.
#[derive(Debug, Deserialize)]
pub struct TokenQuery {
    pub token: Option<String>,
    pub device: Option<String>,
    /// The connection's initial status (`online`, `away`, `busy`, `invisible`).
    pub presence: Option<String>,
}

impl TokenQuery {
    /// `?presence=` as a status; a value that is none is refused, not ignored.
    pub fn presence(&self) -> Result<Option<PresenceStatus>, Refusal> {
        self.presence
            .as_deref()
            .map(|text| {
                PresenceStatus::parse(text).ok_or_else(|| {
                    Refusal::bad_request("presence must be one of online, away, busy, invisible")
                })
            })
            .transpose()
    }
}

/// The token of an HTTP request: `Authorization: Bearer`, else `?token=`. An
/// `Authorization` header that is not a bearer token is an error, not an absence.
pub fn token<'a>(
    headers: &'a HeaderMap,
    query_token: Option<&'a str>,
) -> Result<Option<&'a str>, &'static str> {
    let Some(value) = headers.get(header::AUTHORIZATION) else {
        return Ok(query_token);
    };
    let bearer = value.to_str().ok().and_then(|v| {
        let (scheme, token) = v.split_once(' ')?;
        scheme.eq_ignore_ascii_case("bearer").then(|| token.trim())
    });
    match bearer {
        Some(token) if !token.is_empty() => Ok(Some(token)),
        _ => Err("the Authorization header must be `Bearer <token>`"),
    }
}

/// Refuses a browser request from an origin not in `SWITCHBOARD_ALLOWED_ORIGINS`.
pub fn check_origin(edge: &Edge, headers: &HeaderMap) -> Result<(), Refusal> {
    let allowed = &edge.config.allowed_origins;
    if allowed.is_empty() {
        return Ok(());
    }
    match headers.get(header::ORIGIN).map(|o| o.to_str()) {
        None => Ok(()),
        Some(Ok(origin)) if allowed.iter().any(|a| a == origin) => Ok(()),
        Some(_) => Err(Refusal::forbidden("origin not allowed")),
    }
}

/// Authenticates a plain HTTP request and takes a connection slot for its user.
pub async fn authenticate(
    edge: &Edge,
    headers: &HeaderMap,
    query_token: Option<&str>,
) -> Result<(Identity, UserSlot), Refusal> {
    check_origin(edge, headers)?;
    let token = match token(headers, query_token) {
        Ok(Some(token)) => token,
        Ok(None) => {
            edge.metrics.auth_failure("missing");
            return Err(Refusal::new(ErrorCode::Unauthorized, "a token is required"));
        }
        Err(why) => {
            edge.metrics.auth_failure("malformed");
            return Err(Refusal::new(ErrorCode::Unauthorized, why));
        }
    };
    let identity = edge.verifier.verify(token).await.map_err(|e| {
        edge.metrics.auth_failure(e.reason());
        Refusal::new(ErrorCode::Unauthorized, e.to_string())
    })?;
    let slot = edge.users.admit(&identity.user).ok_or_else(|| {
        Refusal::new(ErrorCode::RateLimited, "too many connections for this user")
    })?;
    Ok((identity, slot))
}
