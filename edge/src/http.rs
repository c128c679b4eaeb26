//! The edge's HTTP surface: the WebSocket endpoint, the SSE and long-poll fallbacks,
//! publishing and RPC for plain HTTP clients, health, readiness and metrics.
//!
//! Handlers stay thin: they authenticate, parse, and hand over to the session, the
//! subscription core or the publisher. Errors before a stream starts are HTTP statuses
//! with the JSON body `{"code": "...", "message": "..."}`.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use axum::body::Bytes;
use axum::extract::{ConnectInfo, Path, State, WebSocketUpgrade};
use axum::http::{HeaderMap, HeaderName, HeaderValue, Method, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Extension, Json, Router};
use serde::Deserialize;
use switchboard_bus::Encoding;
use switchboard_schemas::channel::SYSTEM_BROADCAST;
use switchboard_schemas::frame::RpcMethod;
use switchboard_schemas::shapes::Role;
use switchboard_schemas::{
    Actor, ChannelName, Envelope, ErrorCode, EventId, EventType, InitialPresence, Metadata,
    RawJson, TraceParent,
};
use tower_http::cors::{AllowOrigin, CorsLayer};

use crate::Edge;
use crate::admission::{OpenQuery, authenticate, check_origin, client_address, token};
use crate::refusal::Refusal;
use crate::server::Socket;
use crate::session::{self, Admitted, Declared};
use crate::{fallback, lifecycle, rpc, subscribe};

pub fn router(edge: Arc<Edge>) -> Router {
    let router = match edge.config.web_dir() {
        Some(_) => Router::new()
            .route(
                "/",
                get(|state| demo(state, Path(String::from("index.html")))),
            )
            .route("/web/{*path}", get(demo)),
        None => Router::new(),
    };
    // The part of the API a page on another origin may call: CORS answers there only.
    let cross_origin = Router::new()
        .route("/v1/sse", get(fallback::sse))
        .route("/v1/poll", get(fallback::poll))
        .route("/v1/publish", post(publish))
        .route("/v1/rpc/{method}", post(call))
        .layer(cors(&edge.config.allowed_origins));
    router
        .merge(cross_origin)
        .route("/v1/ws", get(websocket))
        .route("/healthz", get(|| async { "ok" }))
        .route("/readyz", get(ready))
        .route("/metrics", get(metrics))
        .with_state(edge)
}

/// CORS for the HTTP API (docs/protocol.md, "HTTP fallbacks and APIs"): a preflight or a
/// request from an origin in `SWITCHBOARD_ALLOWED_ORIGINS` gets the CORS headers; any
/// other origin gets none, and the handlers refuse it. An empty list (which lets any
/// origin open a WebSocket) gives no page on another origin the HTTP API: reading it
/// cross-origin needs the origin named. The WebSocket needs no CORS.
fn cors(origins: &[String]) -> CorsLayer {
    // The configuration checked each origin at start-up (config.rs, `parse_origin`).
    let origins = origins.iter().filter_map(|o| HeaderValue::from_str(o).ok());
    CorsLayer::new()
        .allow_origin(AllowOrigin::list(origins))
        .allow_methods([Method::GET, Method::POST])
        .allow_headers([
            header::AUTHORIZATION,
            header::CONTENT_TYPE,
            HeaderName::from_static("last-event-id"),
            HeaderName::from_static("traceparent"),
        ])
        .max_age(Duration::from_secs(600))
}

async fn websocket(
    State(edge): State<Arc<Edge>>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    headers: HeaderMap,
    query: OpenQuery,
    socket: Option<Extension<Socket>>,
    upgrade: WebSocketUpgrade,
) -> Response {
    let client = client_address(peer, &headers, &edge.config.trusted_proxies);
    if edge.draining.is_cancelled() {
        return Refusal::new(
            ErrorCode::Unavailable,
            "this edge is draining; connect to another",
        )
        .into_response();
    }
    if let Err(refused) = check_origin(&edge, &headers) {
        return refused.into_response();
    }
    let presence = match query.presence() {
        Ok(status) => status.map(|status| InitialPresence { status, text: None }),
        Err(refused) => return refused.into_response(),
    };
    // A token on the upgrade is checked before any socket exists, and so are the channels
    // the upgrade subscribes (`?ch=`), as for SSE.
    let admitted = match token(&headers, query.token.as_deref()) {
        Ok(Some(_)) => {
            let admitted = async {
                let (identity, slot) =
                    authenticate(&edge, &headers, query.token.as_deref()).await?;
                let mut declared = Declared::new(query.device.clone(), presence)?;
                if !query.channels.is_empty() {
                    // Boxed: asking the presence service is a large future, and every
                    // upgrade's would carry room for it.
                    let checked = lifecycle::check_named(&edge, &identity, &query.channels);
                    declared.channels = Box::pin(checked).await?;
                    if declared
                        .channels
                        .iter()
                        .any(|(ch, _)| ch.as_str() == SYSTEM_BROADCAST)
                    {
                        return Err(Refusal::bad_request(
                            "system:broadcast: every connection is subscribed to it already",
                        ));
                    }
                }
                let own = subscribe::warm_own(&edge, &identity).await;
                Ok::<_, Refusal>(Admitted::Authenticated(identity, slot, declared, own))
            };
            match admitted.await {
                Ok(admitted) => admitted,
                Err(refused) => return refused.into_response(),
            }
        }
        Ok(None) if !query.channels.is_empty() => {
            return Refusal::bad_request(
                "subscribing on the upgrade (?ch=) needs the token there too: \
                 Authorization: Bearer or ?token=",
            )
            .into_response();
        }
        Ok(None) => match edge
            .users
            .admit_unauthenticated(client, client != peer.ip())
        {
            Some(pending) => Admitted::Pending(pending, presence),
            None => {
                return Refusal::new(ErrorCode::RateLimited, "too many unauthenticated sockets")
                    .into_response();
            }
        },
        Err(refused) => {
            edge.metrics.auth_failure("malformed");
            return refused.into_response();
        }
    };
    // `welcome` follows the `101` at once when the token came with the upgrade: both go
    // in one segment (server::Socket).
    let held = match (&admitted, socket) {
        (Admitted::Authenticated(..), Some(Extension(socket))) => {
            socket.hold();
            Some(socket)
        }
        _ => None,
    };
    let hard = edge.config.hard_frame_bytes;
    let sessions = edge.sessions.clone();
    upgrade
        .protocols(["switchboard.v1"])
        .max_message_size(hard)
        .max_frame_size(hard)
        // tungstenite's default buffers are 128 KiB each; idle sockets need little. The
        // read buffer is zeroed up to this size on every poll of the socket, which the
        // session does on every wake-up, delivery or not: client frames are small, so
        // keep it small. The write buffer is a threshold, not an allocation: frames fed
        // in one batch collect up to it and leave in one write instead of one each.
        .read_buffer_size(session::READ_BUFFER)
        .write_buffer_size(session::WRITE_BUFFER)
        .on_upgrade(move |socket| {
            sessions.track_future(session::run(edge, socket, Box::new(admitted), held))
        })
}

/// `POST /v1/publish` body.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct PublishRequest {
    channel: String,
    #[serde(rename = "type")]
    ty: String,
    #[serde(default = "RawJson::null")]
    data: RawJson,
    id: Option<String>,
    actor: Option<Actor>,
    source: Option<String>,
    subject: Option<String>,
    metadata: Option<Metadata>,
}

/// Publishing for backends that cannot speak NATS; service tokens only.
async fn publish(
    State(edge): State<Arc<Edge>>,
    headers: HeaderMap,
    query: OpenQuery,
    body: Bytes,
) -> Result<Response, Refusal> {
    let (identity, _slot) = authenticate(&edge, &headers, query.token.as_deref()).await?;
    let bad = |message: String| Refusal::new(ErrorCode::BadRequest, message);
    if identity.role != Role::Service {
        return Err(Refusal::new(
            ErrorCode::Forbidden,
            "publishing needs a service token (role: service)",
        ));
    }
    let request: PublishRequest =
        serde_json::from_slice(&body).map_err(|e| bad(format!("invalid body: {e}")))?;
    let channel = ChannelName::parse(&request.channel).map_err(|e| bad(e.to_string()))?;
    if channel.alias().is_some() {
        return Err(bad("publish to the base channel, not an alias".into()));
    }
    let ty = EventType::parse(&request.ty).map_err(|e| bad(e.to_string()))?;
    let mut event = Envelope::new(ty, request.data);
    if let Some(id) = &request.id {
        event.id = EventId::parse(id).map_err(|e| bad(e.to_string()))?;
    }
    event.actor = request.actor;
    event.source = request.source.or_else(|| Some(identity.user.to_string()));
    event.subject = request.subject;
    event.metadata = request.metadata;
    let published = edge
        .publisher
        .publish_traced(
            &channel,
            &event,
            Encoding::Postcard,
            trace(&headers).as_ref(),
        )
        .await
        .map_err(|e| Refusal::new(ErrorCode::Unavailable, e.to_string()))?;
    edge.metrics.count(&edge.metrics.published, 1);
    Ok(Json(serde_json::json!({
        "seq": published.seq,
        "event_id": event.id,
        "duplicate": published.duplicate,
    }))
    .into_response())
}

/// The request's W3C `traceparent` header, when it holds one (an invalid one is ignored).
fn trace(headers: &HeaderMap) -> Option<TraceParent> {
    let value = headers.get("traceparent")?.to_str().ok()?;
    TraceParent::parse(value.trim())
}

/// `POST /v1/rpc/<method>`: the same calls as the `rpc` frame.
async fn call(
    State(edge): State<Arc<Edge>>,
    Path(method): Path<String>,
    headers: HeaderMap,
    query: OpenQuery,
    body: Bytes,
) -> Result<Response, Refusal> {
    let (identity, _slot) = authenticate(&edge, &headers, query.token.as_deref()).await?;
    let bad = |message: String| Refusal::new(ErrorCode::BadRequest, message);
    let method = RpcMethod::parse(&method).map_err(|e| bad(e.to_string()))?;
    let params = if body.iter().all(u8::is_ascii_whitespace) {
        RawJson::empty_object()
    } else {
        RawJson::from_slice(&body).map_err(|e| bad(format!("invalid JSON body: {e}")))?
    };
    let result = rpc::call(&edge, &identity, &method, &params, trace(&headers).as_ref()).await?;
    let body = format!("{{\"result\":{}}}", result.as_str());
    Ok(([(header::CONTENT_TYPE, "application/json")], body).into_response())
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

/// Development mode only: a file of the demo app. Paths are confined to the directory.
async fn demo(State(edge): State<Arc<Edge>>, Path(path): Path<String>) -> Response {
    let Some(root) = edge.config.web_dir() else {
        return Refusal::new(ErrorCode::NotFound, "no demo app on this edge").into_response();
    };
    let safe = !path.is_empty()
        && path
            .split('/')
            .all(|part| !part.is_empty() && part != ".." && !part.starts_with('.'));
    if !safe {
        return Refusal::new(ErrorCode::NotFound, "no such file").into_response();
    }
    let file = root.join(&path);
    let content_type = match file.extension().and_then(|e| e.to_str()) {
        Some("html") => "text/html; charset=utf-8",
        Some("js" | "mjs") => "text/javascript; charset=utf-8",
        Some("css") => "text/css; charset=utf-8",
        Some("json" | "map") => "application/json",
        Some("svg") => "image/svg+xml",
        Some("png") => "image/png",
        _ => "application/octet-stream",
    };
    match tokio::fs::read(&file).await {
        Ok(bytes) => ([(header::CONTENT_TYPE, content_type)], bytes).into_response(),
        Err(_) => Refusal::new(ErrorCode::NotFound, "no such file").into_response(),
    }
}

async fn metrics(State(edge): State<Arc<Edge>>) -> Response {
    (
        [(
            header::CONTENT_TYPE,
            switchboard_bus::exposition::CONTENT_TYPE,
        )],
        edge.metrics.render(edge.hub.len()),
    )
        .into_response()
}
