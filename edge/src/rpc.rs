//! Calls to worker services: `rpc` frames and `POST /v1/rpc/<method>` alike, and the
//! edge's own internal requests.
//!
//! A call is a NATS request to `svc.<method>` carrying the authenticated user in header
//! `Rt-User` and the token's role (`user` or `service`) in `Rt-Role`, both set here and
//! never taken from the client; service-only methods refuse users (docs/protocol.md
//! §10.4). What the edge itself asks the workers (may this user watch that user's
//! presence?) goes to `int.<method>`, a subject no `rpc` can name: a client's method
//! always lands under `svc.`. The service answers `{"result": <json>}` or
//! `{"error": {"code": "<protocol code>", "message": "..."}}`.

use bytes::Bytes;
use serde::{Deserialize, Deserializer};
use switchboard_bus::{headers, traces};
use switchboard_schemas::frame::RpcMethod;
use switchboard_schemas::shapes::Role;
use switchboard_schemas::{ErrorCode, RawJson, TraceParent};
use tracing::Instrument as _;

use crate::Edge;
use crate::auth::Identity;
use crate::refusal::Refusal;

/// Calls `method` as the token's holder; the service's result, or the error for the
/// client.
pub async fn call(
    edge: &Edge,
    caller: &Identity,
    method: &RpcMethod,
    params: &RawJson,
    trace: Option<&TraceParent>,
) -> Result<RawJson, Refusal> {
    let role = match caller.role {
        Role::User => "user",
        Role::Service => "service",
    };
    request(
        edge,
        method.subject(),
        &caller.user,
        role,
        method.as_str(),
        params,
        trace,
    )
    .await
}

/// Asks the workers' internal method `int.<method>` on behalf of `user`.
pub async fn ask_internal(
    edge: &Edge,
    user: &str,
    method: &str,
    params: &RawJson,
) -> Result<RawJson, Refusal> {
    request(
        edge,
        format!("int.{method}"),
        user,
        "user",
        method,
        params,
        None,
    )
    .await
}

async fn request(
    edge: &Edge,
    subject: String,
    user: &str,
    role: &str,
    method: &str,
    params: &RawJson,
    trace: Option<&TraceParent>,
) -> Result<RawJson, Refusal> {
    // While spans are exported, the call is span `rpc` continuing the caller's trace, and
    // the service sees that span as its parent (docs/operations.md, "Traces").
    let span =
        traces::span(|| tracing::info_span!("rpc", method, trace_id = tracing::field::Empty));
    let incoming = trace.map(TraceParent::as_str);
    traces::continue_trace(&span, incoming);
    let mut h = async_nats::HeaderMap::new();
    h.insert(headers::RT_USER, user);
    h.insert(headers::RT_ROLE, role);
    if let Some(trace) = traces::traceparent(&span, incoming) {
        h.insert(headers::TRACEPARENT, trace.as_str());
    }
    let request = edge
        .nats
        .request_with_headers(subject, h, Bytes::copy_from_slice(params.as_bytes()))
        .instrument(span);
    let late = || Refusal::unavailable("the service did not answer in time");
    let reply = match tokio::time::timeout(edge.config.rpc_timeout(), request).await {
        Err(_) => return Err(late()),
        Ok(Err(e)) => {
            return Err(match e.kind() {
                async_nats::RequestErrorKind::NoResponders => {
                    Refusal::new(ErrorCode::NotFound, format!("unknown method {method}"))
                }
                async_nats::RequestErrorKind::TimedOut => late(),
                _ => Refusal::unavailable(e),
            });
        }
        Ok(Ok(reply)) => reply,
    };
    read_reply(&reply.payload)
}

/// Reads a service's answer; anything but the two documented shapes is `internal`.
fn read_reply(payload: &[u8]) -> Result<RawJson, Refusal> {
    #[derive(Deserialize)]
    struct Reply {
        // Present but `null` is a result too: hence the double option.
        #[serde(default, deserialize_with = "present")]
        result: Option<Option<RawJson>>,
        error: Option<ServiceError>,
    }
    #[derive(Deserialize)]
    struct ServiceError {
        code: ErrorCode,
        message: String,
    }
    fn present<'de, D: Deserializer<'de>>(d: D) -> Result<Option<Option<RawJson>>, D::Error> {
        Deserialize::deserialize(d).map(Some)
    }
    match serde_json::from_slice::<Reply>(payload) {
        Ok(Reply { error: Some(e), .. }) => Err(Refusal::new(e.code, e.message)),
        Ok(Reply {
            result: Some(result),
            ..
        }) => Ok(result.unwrap_or_else(RawJson::null)),
        _ => Err(Refusal::new(
            ErrorCode::Internal,
            "the service sent an unreadable answer",
        )),
    }
}
