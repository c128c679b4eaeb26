//! The presence RPCs (docs/protocol.md §9, §10.4), and the notice an edge needs when a
//! privacy setting changes.
//!
//! Public, for the caller (`svc.`):
//! - `presence.privacy.set` `{"visibility":"everyone|contacts|nobody"}` -> the same;
//!   `presence.privacy.get` -> `{"visibility":...}`.
//! - `presence.get` `{"users":[...]}` (at most [`GET_MAX`]) -> `{"presence":[<user.presence
//!   data>, ...]}` for the users the caller may see; the others are left out, never
//!   named, so an answer does not tell a hidden user from one that does not exist.
//!
//! Internal, for the edge (`int.`, out of every client's reach):
//! - `presence.authorize` `{"target":"u2"}` -> `{"allowed":bool}`: before a
//!   `presence:<target>` subscription without a token grant.
//! - `presence.visible` `{"users":[...]}` (at most [`VISIBLE_MAX`]) -> `{"visible":[...]}`:
//!   the subset the caller may see, to filter `who`, `join` and `leave`.
//!
//! Every answer about who may see whom comes from [`Privacy`]'s one rule. When
//! `presence.privacy.set` changes a setting, `{"user","visibility"}` goes out on core NATS
//! subject `int.privacy.<user>` once the row is committed: edges re-check the watchers of
//! `presence:<user>` there and revoke the ones no longer allowed. The message is a
//! prompt, not the truth: two quick changes may arrive in either order, so an edge asks
//! the rule again instead of trusting `visibility`.

use std::collections::HashSet;

use serde::{Deserialize, Serialize};
use switchboard_schemas::{ErrorCode, UserId};

use super::privacy::{Privacy, Visibility};
use super::state::State;
use crate::responder::{Call, Method, Reply, RpcError, Service};

/// Most users one `presence.get` may ask about: a contact list's screen.
pub const GET_MAX: usize = 100;
/// Most users one `presence.visible` may ask about: an edge's `who` answer, in chunks.
pub const VISIBLE_MAX: usize = 1000;
/// Where privacy changes are announced: `int.privacy.<user>`.
pub const PRIVACY_CHANGES: &str = "int.privacy";

/// `svc.presence.privacy.set|get`, `svc.presence.get`, `int.presence.authorize`,
/// `int.presence.visible`.
pub struct PresenceService {
    privacy: Privacy,
    state: State,
    client: async_nats::Client,
}

#[derive(Deserialize)]
struct SetParams {
    visibility: Visibility,
}

#[derive(Deserialize)]
struct AuthorizeParams {
    target: String,
}

#[derive(Deserialize)]
struct UsersParams {
    users: Vec<String>,
}

/// The message on `int.privacy.<user>`.
#[derive(Debug, Serialize)]
struct PrivacyChange<'a> {
    user: &'a str,
    visibility: Visibility,
}

/// The users a list names: valid ids, each once, in the order first named. More than
/// `max` entries, or one invalid id, refuses the whole list.
fn user_list(params: UsersParams, max: usize) -> Result<Vec<UserId>, RpcError> {
    if params.users.len() > max {
        return Err(RpcError::new(
            ErrorCode::BadRequest,
            format!(
                "at most {max} users per call, got {}; ask in chunks",
                params.users.len()
            ),
        ));
    }
    let mut seen = HashSet::with_capacity(params.users.len());
    let mut users = Vec::with_capacity(params.users.len());
    for id in &params.users {
        let user =
            UserId::parse(id).map_err(|e| RpcError::new(ErrorCode::BadRequest, e.to_string()))?;
        if seen.insert(user.clone()) {
            users.push(user);
        }
    }
    Ok(users)
}

impl PresenceService {
    pub fn new(privacy: Privacy, state: State, client: async_nats::Client) -> PresenceService {
        PresenceService {
            privacy,
            state,
            client,
        }
    }

    /// Tells the edges that `user`'s setting is now `visibility`. Core NATS, at most once:
    /// a lost notice leaves a watcher until their next re-check, which is why it is
    /// logged.
    async fn announce(&self, user: &UserId, visibility: Visibility) {
        let change = PrivacyChange {
            user: user.as_str(),
            visibility,
        };
        let body = match serde_json::to_vec(&change) {
            Ok(body) => body,
            Err(error) => {
                tracing::error!(%user, %error, "privacy change not encoded");
                return;
            }
        };
        let subject = format!("{PRIVACY_CHANGES}.{user}");
        if let Err(error) = self.client.publish(subject, body.into()).await {
            tracing::warn!(%user, %error, "privacy change not announced to the edges");
        }
    }
}

impl Service for PresenceService {
    const NAME: &'static str = "presence";

    fn methods(&self) -> &'static [Method] {
        const METHODS: &[Method] = &[
            Method::public("presence.privacy.set"),
            Method::public("presence.privacy.get"),
            Method::public("presence.get"),
            // Asked by the edge, never by clients.
            Method::internal("presence.authorize"),
            Method::internal("presence.visible"),
        ];
        METHODS
    }

    async fn call(&self, method: &str, call: Call) -> Reply {
        let unavailable = |e: &dyn std::fmt::Display| RpcError::unavailable(method, e);
        let caller = &call.caller;
        match method {
            "presence.privacy.set" => {
                let params: SetParams = call.params()?;
                let changed = self
                    .privacy
                    .set(caller, params.visibility)
                    .await
                    .map_err(|e| unavailable(&e))?;
                if changed {
                    self.announce(caller, params.visibility).await;
                }
                Ok(serde_json::json!({ "visibility": params.visibility }))
            }
            "presence.privacy.get" => {
                let visibility = self
                    .privacy
                    .visibility(caller)
                    .await
                    .map_err(|e| unavailable(&e))?;
                Ok(serde_json::json!({ "visibility": visibility }))
            }
            "presence.get" => {
                let users = user_list(call.params()?, GET_MAX)?;
                let visible = self
                    .privacy
                    .visible(caller, &users)
                    .await
                    .map_err(|e| unavailable(&e))?;
                let presence = self
                    .state
                    .summaries(&visible)
                    .await
                    .map_err(|e| unavailable(&e))?;
                Ok(serde_json::json!({ "presence": presence }))
            }
            "presence.visible" => {
                let users = user_list(call.params()?, VISIBLE_MAX)?;
                let visible = self
                    .privacy
                    .visible(caller, &users)
                    .await
                    .map_err(|e| unavailable(&e))?;
                let visible: Vec<&str> = visible.iter().map(UserId::as_str).collect();
                Ok(serde_json::json!({ "visible": visible }))
            }
            _ => {
                let params: AuthorizeParams = call.params()?;
                let target = UserId::parse(&params.target)
                    .map_err(|e| RpcError::new(ErrorCode::BadRequest, e.to_string()))?;
                let allowed = self
                    .privacy
                    .allowed(caller, &target)
                    .await
                    .map_err(|e| unavailable(&e))?;
                Ok(serde_json::json!({ "allowed": allowed }))
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn list(json: &str, max: usize) -> Result<Vec<String>, RpcError> {
        let params: UsersParams = serde_json::from_str(json).unwrap();
        user_list(params, max).map(|users| users.iter().map(UserId::to_string).collect())
    }

    #[test]
    fn user_lists_are_bounded_valid_and_without_repeats() {
        assert_eq!(list(r#"{"users":[]}"#, 3).unwrap(), Vec::<String>::new());
        assert_eq!(
            list(r#"{"users":["u2","u1","u2","u3","u1"]}"#, 5).unwrap(),
            ["u2", "u1", "u3"]
        );
        let long = list(r#"{"users":["a","b","c","d"]}"#, 3).unwrap_err();
        assert_eq!(long.code, ErrorCode::BadRequest);
        assert!(long.message.contains("at most 3"), "{}", long.message);
        let bad = list(r#"{"users":["u1","a.b"]}"#, 3).unwrap_err();
        assert_eq!(bad.code, ErrorCode::BadRequest);
        assert!(bad.message.contains("a.b"), "{}", bad.message);
        assert!(list(r#"{"users":[""]}"#, 3).is_err());
        assert!(serde_json::from_str::<UsersParams>(r#"{"users":[1]}"#).is_err());
        assert!(serde_json::from_str::<UsersParams>(r#"{"users":"u1"}"#).is_err());
    }

    #[test]
    fn a_privacy_change_names_the_user_and_the_new_setting() {
        let change = PrivacyChange {
            user: "u1",
            visibility: Visibility::Contacts,
        };
        assert_eq!(
            serde_json::to_string(&change).unwrap(),
            r#"{"user":"u1","visibility":"contacts"}"#
        );
        assert!(serde_json::from_str::<SetParams>(r#"{"visibility":"friends"}"#).is_err());
    }
}
