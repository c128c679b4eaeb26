//! Who may watch a user's presence: the `presence.privacy.*` and `presence.authorize`
//! RPCs (DESIGN §4.1).
//!
//! - `presence.privacy.set` `{"visibility":"everyone|contacts|nobody"}` and
//!   `presence.privacy.get` -> `{"visibility":...}`, for the caller.
//! - `presence.authorize` `{"target":"u2"}` -> `{"allowed":bool}`: whether the caller may
//!   watch `presence:<target>`. Always for oneself; otherwise by the target's setting:
//!   `everyone`; `contacts` (the default) when both are active members of one
//!   `conversation:` or `project:` channel; `nobody` never. The edge asks this when a
//!   client subscribes to `presence:<target>` without a token grant for it.
//!
//! It owns `switchboard.presence_privacy` and reads `switchboard.channel_members`.

use serde::{Deserialize, Serialize};
use sqlx::PgPool;
use switchboard_schemas::{ErrorCode, UserId};

use crate::responder::{Call, Method, Reply, RpcError, Service};

const GET: &str = "SELECT visibility FROM switchboard.presence_privacy WHERE user_id = $1";

const SET: &str = "
INSERT INTO switchboard.presence_privacy (user_id, visibility) VALUES ($1, $2)
ON CONFLICT (user_id) DO UPDATE SET visibility = EXCLUDED.visibility";

/// Whether two users are both active in one conversation or project. Starts from the
/// watcher's memberships (index `channel_members_by_user`), then looks up the target in
/// each by primary key.
const CONTACTS: &str = "
SELECT EXISTS (
    SELECT 1 FROM switchboard.channel_members mine
      JOIN switchboard.channel_members theirs
        ON theirs.channel = mine.channel AND theirs.user_id = $2 AND theirs.active
     WHERE mine.user_id = $1 AND mine.active
       AND (mine.channel LIKE 'conversation:%' OR mine.channel LIKE 'project:%'))";

/// A user's presence privacy setting.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Visibility {
    Everyone,
    #[default]
    Contacts,
    Nobody,
}

impl Visibility {
    pub fn as_str(self) -> &'static str {
        match self {
            Visibility::Everyone => "everyone",
            Visibility::Contacts => "contacts",
            Visibility::Nobody => "nobody",
        }
    }

    fn parse(name: &str) -> Option<Visibility> {
        [
            Visibility::Everyone,
            Visibility::Contacts,
            Visibility::Nobody,
        ]
        .into_iter()
        .find(|v| v.as_str() == name)
    }
}

/// The answer of `presence.authorize`, before any query: decided by the setting alone,
/// or depending on shared membership.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Rule {
    Allow,
    Deny,
    IfContacts,
}

fn rule(watcher: &UserId, target: &UserId, visibility: Visibility) -> Rule {
    if watcher == target {
        return Rule::Allow;
    }
    match visibility {
        Visibility::Everyone => Rule::Allow,
        Visibility::Contacts => Rule::IfContacts,
        Visibility::Nobody => Rule::Deny,
    }
}

/// `svc.presence.privacy.set|get`, `int.presence.authorize`.
pub struct PrivacyService {
    db: PgPool,
}

#[derive(Deserialize)]
struct SetParams {
    visibility: Visibility,
}

#[derive(Deserialize)]
struct AuthorizeParams {
    target: String,
}

impl PrivacyService {
    pub fn new(db: PgPool) -> PrivacyService {
        PrivacyService { db }
    }

    async fn visibility(&self, user: &UserId) -> Result<Visibility, sqlx::Error> {
        let stored: Option<String> = sqlx::query_scalar(GET)
            .bind(user.as_str())
            .fetch_optional(&self.db)
            .await?;
        Ok(stored
            .as_deref()
            .and_then(Visibility::parse)
            .unwrap_or_default())
    }

    async fn set(&self, user: &UserId, visibility: Visibility) -> Result<(), sqlx::Error> {
        sqlx::query(SET)
            .bind(user.as_str())
            .bind(visibility.as_str())
            .execute(&self.db)
            .await?;
        Ok(())
    }

    async fn allowed(&self, watcher: &UserId, target: &UserId) -> Result<bool, sqlx::Error> {
        let visibility = if watcher == target {
            Visibility::default()
        } else {
            self.visibility(target).await?
        };
        match rule(watcher, target, visibility) {
            Rule::Allow => Ok(true),
            Rule::Deny => Ok(false),
            Rule::IfContacts => {
                sqlx::query_scalar(CONTACTS)
                    .bind(watcher.as_str())
                    .bind(target.as_str())
                    .fetch_one(&self.db)
                    .await
            }
        }
    }
}

impl Service for PrivacyService {
    const NAME: &'static str = "presence";

    fn methods(&self) -> &'static [Method] {
        const METHODS: &[Method] = &[
            Method::public("presence.privacy.set"),
            Method::public("presence.privacy.get"),
            // Asked by the edge before a `presence:<user>` subscription, never by clients.
            Method::internal("presence.authorize"),
        ];
        METHODS
    }

    async fn call(&self, method: &str, call: Call) -> Reply {
        let unavailable = |e| RpcError::unavailable(method, e);
        match method {
            "presence.privacy.set" => {
                let params: SetParams = call.params()?;
                self.set(&call.caller, params.visibility)
                    .await
                    .map_err(unavailable)?;
                Ok(serde_json::json!({ "visibility": params.visibility }))
            }
            "presence.privacy.get" => {
                let visibility = self.visibility(&call.caller).await.map_err(unavailable)?;
                Ok(serde_json::json!({ "visibility": visibility }))
            }
            _ => {
                let params: AuthorizeParams = call.params()?;
                let target = UserId::parse(&params.target)
                    .map_err(|e| RpcError::new(ErrorCode::BadRequest, e.to_string()))?;
                let allowed = self
                    .allowed(&call.caller, &target)
                    .await
                    .map_err(unavailable)?;
                Ok(serde_json::json!({ "allowed": allowed }))
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_setting_decides_unless_watching_oneself() {
        let (u1, u2) = (UserId::parse("u1").unwrap(), UserId::parse("u2").unwrap());
        assert_eq!(rule(&u1, &u1, Visibility::Nobody), Rule::Allow);
        assert_eq!(rule(&u1, &u2, Visibility::Everyone), Rule::Allow);
        assert_eq!(rule(&u1, &u2, Visibility::Contacts), Rule::IfContacts);
        assert_eq!(rule(&u1, &u2, Visibility::Nobody), Rule::Deny);
        assert_eq!(Visibility::default(), Visibility::Contacts);
        for v in [
            Visibility::Everyone,
            Visibility::Contacts,
            Visibility::Nobody,
        ] {
            assert_eq!(Visibility::parse(v.as_str()), Some(v));
            assert_eq!(
                serde_json::to_string(&v).unwrap(),
                format!("\"{}\"", v.as_str())
            );
        }
        assert!(serde_json::from_str::<SetParams>(r#"{"visibility":"friends"}"#).is_err());
    }
}
