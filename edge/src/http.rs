//! The edge's HTTP surface: the WebSocket endpoint, health and readiness.

use std::sync::Arc;

use axum::Json;
use axum::extract::{Query, State, WebSocketUpgrade};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use serde::Deserialize;
use switchboard_schemas::ErrorCode;

use crate::Edge;
use crate::session;

pub fn router(edge: Arc<Edge>) -> axum::Router {
    axum::Router::new()
        .route("/v1/ws", get(websocket))
        .route("/healthz", get(|| async { "ok" }))
        .route("/readyz", get(ready))
        .with_state(edge)
}

#[derive(Debug, Deserialize)]
pub struct TokenQuery {
    token: Option<String>,
}

/// The token of an HTTP request: `Authorization: Bearer`, else `?token=`. An
/// `Authorization` header that is not a bearer token is an error, not an absence.
pub fn token<'a>(
    headers: &'a HeaderMap,
    query: &'a TokenQuery,
) -> Result<Option<&'a str>, &'static str> {
    let Some(value) = headers.get(header::AUTHORIZATION) else {
        return Ok(query.token.as_deref());
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

/// An HTTP error with the JSON body of docs/protocol.md.
pub fn error(code: ErrorCode, message: impl Into<String>) -> Response {
    let status = StatusCode::from_u16(code.http_status()).unwrap_or(StatusCode::BAD_REQUEST);
    let body = serde_json::json!({ "code": code, "message": message.into() });
    (status, Json(body)).into_response()
}

async fn websocket(
    State(edge): State<Arc<Edge>>,
    headers: HeaderMap,
    Query(query): Query<TokenQuery>,
    upgrade: WebSocketUpgrade,
) -> Response {
    if edge.draining.is_cancelled() {
        return error(
            ErrorCode::Unavailable,
            "this edge is draining; connect to another",
        );
    }
    // A token on the upgrade is checked before any socket exists.
    let token = match token(&headers, &query) {
        Ok(token) => token,
        Err(why) => return error(ErrorCode::Unauthorized, why),
    };
    let identity = match token {
        Some(token) => match edge.verifier.verify(token) {
            Ok(identity) => Some(identity),
            Err(e) => return error(ErrorCode::Unauthorized, e.to_string()),
        },
        None => None,
    };
    let hard = edge.config.hard_frame_bytes;
    let sessions = edge.sessions.clone();
    upgrade
        .protocols(["switchboard.v1"])
        .max_message_size(hard)
        .max_frame_size(hard)
        // tungstenite's default buffers are 128 KiB each; idle sockets need little.
        .read_buffer_size(4 * 1024)
        .write_buffer_size(0)
        .on_upgrade(move |socket| sessions.track_future(session::run(edge, socket, identity)))
}

async fn ready(State(edge): State<Arc<Edge>>) -> Response {
    let nats_up = edge.nats.connection_state() == async_nats::connection::State::Connected;
    let stream = edge.store.position().await.is_ok();
    let members = edge.members.is_loaded();
    let body = serde_json::json!({ "nats": nats_up, "streams": stream, "members": members });
    if nats_up && stream && members && !edge.draining.is_cancelled() {
        (StatusCode::OK, Json(body)).into_response()
    } else {
        (StatusCode::SERVICE_UNAVAILABLE, Json(body)).into_response()
    }
}
