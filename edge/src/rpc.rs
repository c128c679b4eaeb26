//! Calls to worker services: `rpc` frames and `POST /v1/rpc/<method>` alike.
//!
//! A call is a NATS request to `svc.<method>` carrying the authenticated user in header
//! `Rt-User` (set here, never taken from the client). The service answers
//! `{"result": <json>}` or `{"error": {"code": "<protocol code>", "message": "..."}}`.

use bytes::Bytes;
use serde::{Deserialize, Deserializer};
use switchboard_bus::headers;
use switchboard_schemas::frame::RpcMethod;
use switchboard_schemas::{ErrorCode, RawJson};

use crate::Edge;

/// Calls `method` as `user`; the service's result, or the error for the client.
pub async fn call(
    edge: &Edge,
    user: &str,
    method: &RpcMethod,
    params: &RawJson,
) -> Result<RawJson, (ErrorCode, String)> {
    let mut h = async_nats::HeaderMap::new();
    h.insert(headers::RT_USER, user);
    let request = edge.nats.request_with_headers(
        method.subject(),
        h,
        Bytes::copy_from_slice(params.as_bytes()),
    );
    let late = || {
        (
            ErrorCode::Unavailable,
            "the service did not answer in time".to_string(),
        )
    };
    let reply = match tokio::time::timeout(edge.config.rpc_timeout(), request).await {
        Err(_) => return Err(late()),
        Ok(Err(e)) => {
            return Err(match e.kind() {
                async_nats::RequestErrorKind::NoResponders => (
                    ErrorCode::NotFound,
                    format!("unknown method {}", method.as_str()),
                ),
                async_nats::RequestErrorKind::TimedOut => late(),
                _ => (ErrorCode::Unavailable, e.to_string()),
            });
        }
        Ok(Ok(reply)) => reply,
    };
    read_reply(&reply.payload)
}

/// Reads a service's answer; anything but the two documented shapes is `internal`.
fn read_reply(payload: &[u8]) -> Result<RawJson, (ErrorCode, String)> {
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
        Ok(Reply { error: Some(e), .. }) => Err((e.code, e.message)),
        Ok(Reply {
            result: Some(result),
            ..
        }) => Ok(result.unwrap_or_else(RawJson::null)),
        _ => Err((
            ErrorCode::Internal,
            "the service sent an unreadable answer".to_string(),
        )),
    }
}
