//! The users' addresses outside the app, kept for the email sink: the service-only RPCs
//! `contacts.set` and `contacts.get` (docs/protocol.md §10.4). Backends own this data
//! (the app knows its users' addresses; Switchboard does not ask users), so a user token
//! calling either is refused `forbidden` by the responder before anything here runs.
//!
//! | method | params | result |
//! | --- | --- | --- |
//! | `contacts.set` | `{"user":"u1","email":"ann@example.com"}` (`null` removes) | `{"user":"u1","email":...}` |
//! | `contacts.get` | `{"user":"u1"}` | `{"user":"u1","email":...\|null}` |
//!
//! It owns `switchboard.contacts`.

use serde::Deserialize;
use sqlx::PgPool;
use switchboard_schemas::{ErrorCode, UserId};

use crate::responder::{Call, Method, Reply, RpcError, Service};

const SET: &str = "contacts.set";
const GET: &str = "contacts.get";

/// `contacts.*` in the queue group `contacts`.
pub struct Contacts {
    db: PgPool,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct SetParams {
    user: String,
    email: Option<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct GetParams {
    user: String,
}

impl Contacts {
    pub fn new(db: PgPool) -> Contacts {
        Contacts { db }
    }
}

impl Service for Contacts {
    const NAME: &'static str = "contacts";

    fn methods(&self) -> &'static [Method] {
        const METHODS: &[Method] = &[Method::service_only(SET), Method::service_only(GET)];
        METHODS
    }

    async fn call(&self, method: &str, call: Call) -> Reply {
        let unavailable = |e| RpcError::unavailable(method, e);
        match method {
            SET => {
                let params: SetParams = call.params()?;
                let user = user_id(&params.user)?;
                match params.email.as_deref().map(email).transpose()? {
                    Some(address) => {
                        sqlx::query(
                            "INSERT INTO switchboard.contacts (user_id, email) VALUES ($1, $2)
                             ON CONFLICT (user_id) DO UPDATE
                             SET email = excluded.email, updated_at = now()",
                        )
                        .bind(user.as_str())
                        .bind(address)
                        .execute(&self.db)
                        .await
                        .map_err(unavailable)?;
                        Ok(serde_json::json!({ "user": user.as_str(), "email": address }))
                    }
                    None => {
                        sqlx::query("DELETE FROM switchboard.contacts WHERE user_id = $1")
                            .bind(user.as_str())
                            .execute(&self.db)
                            .await
                            .map_err(unavailable)?;
                        Ok(serde_json::json!({ "user": user.as_str(), "email": null }))
                    }
                }
            }
            GET => {
                let params: GetParams = call.params()?;
                let user = user_id(&params.user)?;
                let address: Option<String> =
                    sqlx::query_scalar("SELECT email FROM switchboard.contacts WHERE user_id = $1")
                        .bind(user.as_str())
                        .fetch_optional(&self.db)
                        .await
                        .map_err(unavailable)?;
                Ok(serde_json::json!({ "user": user.as_str(), "email": address }))
            }
            _ => Err(RpcError::new(ErrorCode::NotFound, "no such method")),
        }
    }
}

fn user_id(text: &str) -> Result<UserId, RpcError> {
    UserId::parse(text).map_err(|e| RpcError::new(ErrorCode::BadRequest, e.to_string()))
}

/// A plausible address: one `@` between a non-empty local part and a dotted domain, no
/// spaces or control characters, at most 254 bytes (RFC 5321's path limit). Whether it
/// receives mail is for the mail server to say.
fn email(text: &str) -> Result<&str, RpcError> {
    let refuse = || RpcError::new(ErrorCode::BadRequest, "email is not a valid address");
    if text.len() > 254 || text.chars().any(|c| c.is_whitespace() || c.is_control()) {
        return Err(refuse());
    }
    let (local, domain) = text.split_once('@').ok_or_else(refuse)?;
    let domain_ok = domain.contains('.')
        && !domain.contains('@')
        && domain.split('.').all(|label| !label.is_empty());
    if local.is_empty() || !domain_ok {
        return Err(refuse());
    }
    Ok(text)
}

#[cfg(test)]
mod tests {
    use super::email;

    #[test]
    fn addresses_are_checked_for_shape_only() {
        assert!(email("ann@example.com").is_ok());
        assert!(email("a.b+c@mail.example.co.uk").is_ok());
        for bad in [
            "",
            "ann",
            "@example.com",
            "ann@",
            "ann@example",
            "ann@@example.com",
            "ann @example.com",
            "ann@example..com",
            "ann@exa\nmple.com",
        ] {
            assert!(email(bad).is_err(), "{bad:?}");
        }
        assert!(email(&format!("{}@example.com", "a".repeat(250))).is_err());
    }
}
