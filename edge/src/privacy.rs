//! What the edge asks the presence service about privacy (docs/protocol.md, section 9.4):
//! whether a user may watch another's presence, which of a list of users one may see,
//! and how a user shows themself. The settings live with the workers; the edge asks on
//! `int.` subjects no client can reach and never decides by itself.

use std::collections::HashSet;

use serde::Deserialize;
use switchboard_schemas::{ChannelName, ErrorCode, Namespace, RawJson};

use crate::Edge;
use crate::auth::Identity;
use crate::refusal::Refusal;
use crate::rpc;

/// Most users one `int.presence.visible` request names.
const VISIBLE_BATCH: usize = 500;

/// A user's setting: who sees them online, in `who` and in `join`/`leave`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Visibility {
    Everyone,
    Contacts,
    Nobody,
}

impl Visibility {
    /// Whether this user's `join`/`leave` on `channel` may go to everyone there. With
    /// `contacts`, the others on a conversation or project share that membership and so
    /// are contacts; elsewhere (a bid, a group) they may not be, and the signal would tell
    /// strangers: it is not sent.
    pub fn announces_on(self, channel: &ChannelName) -> bool {
        match self {
            Visibility::Everyone => true,
            Visibility::Nobody => false,
            Visibility::Contacts => matches!(
                channel.namespace(),
                Namespace::Conversation | Namespace::Project
            ),
        }
    }
}

/// No responder means no presence worker: the question cannot be answered.
fn unanswered(refusal: Refusal) -> Refusal {
    if refusal.code == ErrorCode::NotFound {
        Refusal::unavailable("the presence service is not running")
    } else {
        refusal
    }
}

/// Whether `user` may watch `target`'s presence (`int.presence.authorize`).
pub async fn may_watch(edge: &Edge, user: &str, target: &str) -> Result<bool, Refusal> {
    #[derive(Deserialize)]
    struct Answer {
        allowed: bool,
    }
    let params = RawJson::encode(&serde_json::json!({ "target": target }))
        .map_err(|e| Refusal::new(ErrorCode::Internal, e.to_string()))?;
    let result = rpc::ask_internal(edge, user, "presence.authorize", &params)
        .await
        .map_err(unanswered)?;
    Ok(result.decode::<Answer>().is_ok_and(|a| a.allowed))
}

/// The users of `users` that `user` may see (`int.presence.visible`, in batches).
pub async fn visible_to(
    edge: &Edge,
    user: &str,
    users: Vec<String>,
) -> Result<HashSet<String>, Refusal> {
    #[derive(Deserialize)]
    struct Answer {
        visible: Vec<String>,
    }
    let mut visible = HashSet::new();
    for batch in users.chunks(VISIBLE_BATCH) {
        let params = RawJson::encode(&serde_json::json!({ "users": batch }))
            .map_err(|e| Refusal::new(ErrorCode::Internal, e.to_string()))?;
        let result = rpc::ask_internal(edge, user, "presence.visible", &params)
            .await
            .map_err(unanswered)?;
        let answer: Answer = result
            .decode()
            .map_err(|_| Refusal::new(ErrorCode::Internal, "unreadable answer on visibility"))?;
        visible.extend(answer.visible);
    }
    Ok(visible)
}

/// How `identity` shows themself (`presence.privacy.get`, asked as them). Without a
/// presence service nobody can have chosen anything: the default, `contacts`, holds.
pub async fn own_visibility(edge: &Edge, identity: &Identity) -> Result<Visibility, Refusal> {
    #[derive(Deserialize)]
    struct Answer {
        visibility: Visibility,
    }
    let method = switchboard_schemas::frame::RpcMethod::parse("presence.privacy.get")
        .map_err(|e| Refusal::new(ErrorCode::Internal, e.to_string()))?;
    match rpc::call(edge, identity, &method, &RawJson::empty_object(), None).await {
        Ok(result) => result
            .decode::<Answer>()
            .map(|a| a.visibility)
            .map_err(|_| Refusal::new(ErrorCode::Internal, "unreadable privacy setting")),
        Err(refusal) if refusal.code == ErrorCode::NotFound => Ok(Visibility::Contacts),
        Err(refusal) => Err(refusal),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn join_and_leave_reach_only_those_who_may_see() {
        let ch = |name| ChannelName::parse(name).unwrap();
        assert!(Visibility::Everyone.announces_on(&ch("group:g1")));
        assert!(!Visibility::Nobody.announces_on(&ch("conversation:c1")));
        assert!(Visibility::Contacts.announces_on(&ch("conversation:c1")));
        assert!(Visibility::Contacts.announces_on(&ch("project:p1")));
        assert!(!Visibility::Contacts.announces_on(&ch("group:g1")));
        assert!(!Visibility::Contacts.announces_on(&ch("bid:b1")));
    }
}
