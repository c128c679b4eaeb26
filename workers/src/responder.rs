//! Answering the RPCs the edge forwards: `svc.<method>` request/reply on core NATS
//! (docs/protocol.md §10.4), and the internal requests of Switchboard's own processes on
//! `int.<method>`, which no client's `rpc` can reach.
//!
//! A [`Service`] says which methods it answers and what one call returns; [`serve`] owns
//! everything around that:
//!
//! - **Sharing.** Every copy of the worker subscribes in the same queue group (the
//!   service's name), so NATS hands each request to one of them.
//! - **Caller.** The `Rt-User` header (set by the edge, never by the client) becomes a
//!   [`UserId`] before the service sees the request; without one the call is refused
//!   with `unauthorized`. `Rt-Role` (also the edge's) says whether a user or a backend
//!   service calls: a [`Access::ServiceOnly`] method refuses users with `forbidden`.
//! - **Reach.** Public and service-only methods listen on `svc.<method>`, internal ones
//!   on `int.<method>`: NATS permissions let only Switchboard's roles publish there
//!   (docs/operations.md, "NATS roles"), and the edge relays `rpc` to `svc.` only.
//! - **Answers.** `{"result": ...}` or `{"error": {"code", "message"}}`, where `code` is
//!   one of the protocol's error codes.
//! - **Bounds.** At most [`IN_FLIGHT`] calls at once per service and process; the next
//!   request waits for a slot (NATS buffers it, and the edge times out on its own).
//! - **Shutdown.** When `shutdown` fires the subscriptions end and calls in hand finish.
//!
//! It owns no state and touches no table: services do.

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use futures_util::StreamExt;
use futures_util::stream::SelectAll;
use serde::Serialize;
use switchboard_bus::headers;
use switchboard_schemas::{ErrorCode, UserId};
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::backoff::Backoff;

/// Calls one service handles at once in one process.
const IN_FLIGHT: usize = 64;
/// Request payloads above this are refused without being parsed.
const MAX_PARAMS: usize = 64 * 1024;

/// A request/reply service on `svc.<method>` subjects.
pub trait Service: Send + Sync + 'static {
    /// The queue group, and the service's name in logs.
    const NAME: &'static str;

    /// The methods answered, each with who may call it.
    fn methods(&self) -> &'static [Method];

    /// Answers one call of `method` (one of [`Service::methods`]).
    fn call(&self, method: &str, call: Call) -> impl Future<Output = Reply> + Send;
}

/// One method of a service.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Method {
    /// The name clients use, without a subject prefix (`receipts.get`).
    pub name: &'static str,
    pub access: Access,
}

/// Who may call a method (docs/protocol.md §10.4).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Access {
    /// Any user, acting as themself; backends too.
    Public,
    /// Backends only (a token with `role: service`); users get `forbidden`.
    ServiceOnly,
    /// Switchboard's own processes, on `int.<name>`: never reachable through `rpc`.
    Internal,
}

impl Method {
    pub const fn public(name: &'static str) -> Method {
        Method {
            name,
            access: Access::Public,
        }
    }

    pub const fn service_only(name: &'static str) -> Method {
        Method {
            name,
            access: Access::ServiceOnly,
        }
    }

    pub const fn internal(name: &'static str) -> Method {
        Method {
            name,
            access: Access::Internal,
        }
    }

    /// Where the method listens.
    pub fn subject(&self) -> String {
        match self.access {
            Access::Public | Access::ServiceOnly => format!("svc.{}", self.name),
            Access::Internal => format!("int.{}", self.name),
        }
    }
}

/// Who calls, as the edge authenticated them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CallerRole {
    User,
    Service,
}

/// One authenticated call.
#[derive(Debug, Clone)]
pub struct Call {
    /// The user the edge authenticated.
    pub caller: UserId,
    /// The client's `params`, as JSON text (`{}` when the client sent none).
    pub params: Bytes,
}

impl Call {
    /// Reads the params as `T`; anything else is `bad_request`.
    pub fn params<'a, T: serde::Deserialize<'a>>(&'a self) -> Result<T, RpcError> {
        let text: &[u8] = if self.params.iter().all(u8::is_ascii_whitespace) {
            b"{}"
        } else {
            &self.params
        };
        serde_json::from_slice(text)
            .map_err(|e| RpcError::new(ErrorCode::BadRequest, format!("invalid params: {e}")))
    }
}

/// A call's answer: the `result` object, or an error for the client.
pub type Reply = Result<serde_json::Value, RpcError>;

/// A refusal or failure the client sees as an `err` frame.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, thiserror::Error)]
#[error("{code}: {message}")]
pub struct RpcError {
    pub code: ErrorCode,
    pub message: String,
}

impl RpcError {
    pub fn new(code: ErrorCode, message: impl Into<String>) -> RpcError {
        RpcError {
            code,
            message: message.into(),
        }
    }

    /// A failure of something the service needs (PostgreSQL): logged here with its
    /// cause, answered `unavailable` without it.
    pub fn unavailable(method: &str, error: impl std::fmt::Display) -> RpcError {
        tracing::warn!(method, %error, "rpc failed");
        RpcError::new(
            ErrorCode::Unavailable,
            "the service cannot answer right now; try again",
        )
    }
}

/// Serves `service` until `shutdown` fires, then waits for the calls in hand.
///
/// Survives NATS outages: the client re-subscribes by itself after a reconnect, and a
/// subscription that fails is made again after a backoff.
pub async fn serve<S: Service>(
    service: Arc<S>,
    client: async_nats::Client,
    shutdown: CancellationToken,
) {
    let calls = TaskTracker::new();
    let slots = Arc::new(Semaphore::new(IN_FLIGHT));
    let mut backoff = Backoff::standard();
    while !shutdown.is_cancelled() {
        let mut requests = match subscribe(&*service, &client).await {
            Ok(requests) => requests,
            Err(error) => {
                tracing::warn!(service = S::NAME, %error, "cannot subscribe; retrying");
                tokio::select! {
                    () = shutdown.cancelled() => break,
                    () = tokio::time::sleep(backoff.next_delay()) => continue,
                }
            }
        };
        backoff.reset();
        let names: Vec<String> = service.methods().iter().map(Method::subject).collect();
        tracing::info!(service = S::NAME, methods = ?names, "serving");
        loop {
            let request = tokio::select! {
                biased;
                () = shutdown.cancelled() => break,
                request = requests.next() => request,
            };
            let Some(request) = request else {
                tracing::warn!(service = S::NAME, "subscriptions ended; subscribing again");
                break;
            };
            let Ok(slot) = slots.clone().acquire_owned().await else {
                break;
            };
            let (service, client) = (service.clone(), client.clone());
            calls.spawn(async move {
                answer(&*service, &client, request).await;
                drop(slot);
            });
        }
    }
    calls.close();
    if tokio::time::timeout(Duration::from_secs(5), calls.wait())
        .await
        .is_err()
    {
        tracing::warn!(
            service = S::NAME,
            "calls still running at shutdown were dropped"
        );
    }
}

async fn subscribe<S: Service>(
    service: &S,
    client: &async_nats::Client,
) -> Result<SelectAll<async_nats::Subscriber>, async_nats::SubscribeError> {
    let mut all = SelectAll::new();
    for method in service.methods() {
        all.push(
            client
                .queue_subscribe(method.subject(), S::NAME.into())
                .await?,
        );
    }
    Ok(all)
}

/// Handles one request to its reply.
async fn answer<S: Service>(
    service: &S,
    client: &async_nats::Client,
    request: async_nats::Message,
) {
    let Some(reply_to) = request.reply.clone() else {
        tracing::debug!(subject = %request.subject, "request without a reply subject ignored");
        return;
    };
    let method = service
        .methods()
        .iter()
        .find(|known| known.subject() == request.subject.as_str());
    let reply = match (method, caller(&request)) {
        (None, _) => Err(RpcError::new(ErrorCode::NotFound, "no such method")),
        (_, Err(error)) => Err(error),
        (Some(method), Ok((_, CallerRole::User))) if method.access == Access::ServiceOnly => {
            Err(RpcError::new(
                ErrorCode::Forbidden,
                format!("{} is for backend services only", method.name),
            ))
        }
        (Some(_), Ok(_)) if request.payload.len() > MAX_PARAMS => Err(RpcError::new(
            ErrorCode::TooLarge,
            format!("params above {MAX_PARAMS} bytes"),
        )),
        (Some(method), Ok((caller, _))) => {
            let call = Call {
                caller,
                params: request.payload.clone(),
            };
            service.call(method.name, call).await
        }
    };
    if let Err(error) = client.publish(reply_to, encode(reply)).await {
        tracing::warn!(service = S::NAME, subject = %request.subject, %error, "reply not sent");
    }
}

fn caller(request: &async_nats::Message) -> Result<(UserId, CallerRole), RpcError> {
    let header = |name| {
        request
            .headers
            .as_ref()
            .and_then(|h| h.get(name))
            .map(|value| value.as_str())
    };
    let user = header(headers::RT_USER)
        .ok_or_else(|| RpcError::new(ErrorCode::Unauthorized, "no authenticated user"))?;
    let user = UserId::parse(user)
        .map_err(|_| RpcError::new(ErrorCode::Unauthorized, "invalid Rt-User"))?;
    // Anything but an explicit `service` is a user: the narrower right.
    let role = match header(headers::RT_ROLE) {
        Some("service") => CallerRole::Service,
        _ => CallerRole::User,
    };
    Ok((user, role))
}

fn encode(reply: Reply) -> Bytes {
    let body = match reply {
        Ok(result) => serde_json::json!({ "result": result }),
        Err(error) => serde_json::json!({ "error": error }),
    };
    Bytes::from(body.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn replies_have_the_protocol_shape() {
        let ok = encode(Ok(serde_json::json!({"visibility": "everyone"})));
        assert_eq!(&ok[..], br#"{"result":{"visibility":"everyone"}}"#);
        let refused = encode(Err(RpcError::new(
            ErrorCode::Forbidden,
            "not a participant",
        )));
        assert_eq!(
            &refused[..],
            br#"{"error":{"code":"forbidden","message":"not a participant"}}"#
        );
    }

    #[test]
    fn internal_methods_listen_outside_the_rpc_subjects() {
        assert_eq!(Method::public("receipts.get").subject(), "svc.receipts.get");
        assert_eq!(
            Method::service_only("contacts.set").subject(),
            "svc.contacts.set"
        );
        assert_eq!(
            Method::internal("presence.authorize").subject(),
            "int.presence.authorize"
        );
    }

    #[test]
    fn params_default_to_an_empty_object_and_refuse_garbage() {
        #[derive(serde::Deserialize)]
        struct Params {
            #[serde(default)]
            limit: Option<u32>,
        }
        let call = |params: &'static [u8]| Call {
            caller: UserId::parse("u1").unwrap(),
            params: Bytes::from_static(params),
        };
        assert_eq!(call(b"").params::<Params>().unwrap().limit, None);
        assert_eq!(
            call(b"{\"limit\":3}").params::<Params>().unwrap().limit,
            Some(3)
        );
        let error = call(b"[").params::<Params>().err().unwrap();
        assert_eq!(error.code, ErrorCode::BadRequest);
    }
}
