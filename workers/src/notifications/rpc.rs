//! The notification RPCs on `svc.notifications.*` (docs/protocol.md, section 10.4), served through
//! [`responder`](crate::responder) in the queue group `notifications`, so every copy of
//! the worker takes a share of the requests. A call acts on the caller's (`Rt-User`)
//! notifications only: there is nothing else to authorize.
//!
//! | method | params | result |
//! | --- | --- | --- |
//! | `notifications.list` | `{"limit":20,"before":"ntf_...","unread_only":false}` | `{"items":[...],"unread":3,"next":"ntf_..."\|null}` |
//! | `notifications.read` | `{"ids":["ntf_..."]}` or `{"all":true}` | `{"unread":0}` |
//! | `notifications.preferences.get` | `{}` | `{"categories":{"bid":{...}, ...}}` |
//! | `notifications.preferences.set` | `{"categories":{"bid":{"push":false}}}` (partial) | as `get` |
//!
//! `read` marks the user's notifications read, cancels their push and email still
//! waiting and, when any was unread, emits `notification.read`
//! (`{"ids":[...],"unread":N}`) on `user:<id>` through the outbox in the same
//! transaction, which the edges fan out to every device of the user ([`store::read`]).

use serde::{Deserialize, Serialize};
use sqlx::PgPool;
use switchboard_schemas::shapes::{NotificationData, NotificationRef};
use switchboard_schemas::{ChannelName, ErrorCode, Namespace, Timestamp, UserId};

use super::preferences::{AllPreferences, SetPreferences};
use super::store::{self, ReadTarget, StoreError, StoredNotification};
use crate::responder::{Call, Method, Reply, RpcError, Service};

/// `list` page size: default and maximum.
const DEFAULT_LIMIT: u32 = 20;
const MAX_LIMIT: u32 = 100;
/// Most ids one `read` takes.
const MAX_READ_IDS: usize = store::MAX_READ_IDS;

const LIST: &str = "notifications.list";
const READ: &str = "notifications.read";
const PREFERENCES_GET: &str = "notifications.preferences.get";
const PREFERENCES_SET: &str = "notifications.preferences.set";

#[derive(Debug, Deserialize)]
struct ListParams {
    #[serde(default)]
    limit: Option<u32>,
    #[serde(default)]
    before: Option<String>,
    #[serde(default)]
    unread_only: bool,
}

#[derive(Debug, Deserialize)]
struct ReadParams {
    #[serde(default)]
    ids: Option<Vec<String>>,
    #[serde(default)]
    all: bool,
}

/// One item of `list`: the `user.notification` data, with `unread` the user's unread
/// count now, plus `readAt` (`null` while unread).
#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
struct Item {
    #[serde(flatten)]
    data: NotificationData,
    read_at: Option<Timestamp>,
}

#[derive(Debug, Serialize)]
struct ListResult {
    items: Vec<Item>,
    unread: u64,
    next: Option<String>,
}

#[derive(Debug, Serialize)]
struct UnreadResult {
    unread: u64,
}

/// Answers the notification RPCs.
pub struct Rpc {
    db: PgPool,
}

impl Service for Rpc {
    const NAME: &'static str = "notifications";

    fn methods(&self) -> &'static [Method] {
        const METHODS: &[Method] = &[
            Method::public(LIST),
            Method::public(READ),
            Method::public(PREFERENCES_GET),
            Method::public(PREFERENCES_SET),
        ];
        METHODS
    }

    async fn call(&self, method: &str, call: Call) -> Reply {
        let user = &call.caller;
        let answer = match method {
            LIST => self.list(user, call.params()?).await.and_then(to_json),
            READ => self.read(user, call.params()?).await.and_then(to_json),
            PREFERENCES_GET => self.preferences(user).await.and_then(to_json),
            PREFERENCES_SET => {
                let change: SetPreferences = call.params()?;
                match self.set_preferences(user, change).await {
                    Ok(()) => self.preferences(user).await.and_then(to_json),
                    Err(failure) => Err(failure),
                }
            }
            _ => return Err(RpcError::new(ErrorCode::NotFound, "no such method")),
        };
        answer.map_err(|failure| failure.into_rpc(method))
    }
}

/// A refusal of the params, or a failure underneath.
enum Failure {
    Refused(RpcError),
    Store(StoreError),
}

impl Failure {
    fn into_rpc(self, method: &str) -> RpcError {
        match self {
            Failure::Refused(error) => error,
            Failure::Store(StoreError::Database(error)) => RpcError::unavailable(method, error),
            Failure::Store(StoreError::Row(reason)) => {
                tracing::error!(method, %reason, "unreadable notification row");
                RpcError::new(ErrorCode::Internal, "a stored notification is unreadable")
            }
        }
    }
}

impl From<StoreError> for Failure {
    fn from(error: StoreError) -> Failure {
        Failure::Store(error)
    }
}

impl From<sqlx::Error> for Failure {
    fn from(error: sqlx::Error) -> Failure {
        Failure::Store(StoreError::Database(error))
    }
}

fn bad_request(message: impl Into<String>) -> Failure {
    Failure::Refused(RpcError::new(ErrorCode::BadRequest, message))
}

fn to_json(value: impl Serialize) -> Result<serde_json::Value, Failure> {
    serde_json::to_value(value)
        .map_err(|e| Failure::Refused(RpcError::new(ErrorCode::Internal, e.to_string())))
}

impl Rpc {
    pub fn new(db: PgPool) -> Rpc {
        Rpc { db }
    }

    async fn list(&self, user: &UserId, params: ListParams) -> Result<ListResult, Failure> {
        let limit = params.limit.unwrap_or(DEFAULT_LIMIT).clamp(1, MAX_LIMIT);
        if let Some(before) = &params.before {
            check_notification_id(before)?;
        }
        let mut rows = store::list(
            &self.db,
            user,
            params.before.as_deref(),
            params.unread_only,
            limit + 1,
        )
        .await?;
        let more = rows.len() > limit as usize;
        rows.truncate(limit as usize);
        let unread = store::unread_count(&self.db, user).await?;
        let next = if more {
            rows.last().map(|row| row.id.clone())
        } else {
            None
        };
        let items = rows
            .into_iter()
            .filter_map(|row| item(row, unread))
            .collect();
        Ok(ListResult {
            items,
            unread,
            next,
        })
    }

    async fn read(&self, user: &UserId, params: ReadParams) -> Result<UnreadResult, Failure> {
        let target = match (&params.ids, params.all) {
            (_, true) => ReadTarget::All,
            (Some(ids), false) => {
                if ids.len() > MAX_READ_IDS {
                    return Err(bad_request(format!(
                        "at most {MAX_READ_IDS} ids per call; use {{\"all\":true}} to read everything"
                    )));
                }
                ids.iter().try_for_each(|id| check_notification_id(id))?;
                ReadTarget::Ids(ids)
            }
            (None, false) => {
                return Err(bad_request(
                    "give the ids to mark read ({\"ids\":[\"ntf_...\"]}) or {\"all\":true}",
                ));
            }
        };
        let unread = store::read(&self.db, user, target).await?;
        Ok(UnreadResult { unread })
    }

    async fn preferences(&self, user: &UserId) -> Result<AllPreferences, Failure> {
        Ok(AllPreferences::from_stored(
            store::preferences_of(&self.db, user).await?,
        ))
    }

    async fn set_preferences(&self, user: &UserId, change: SetPreferences) -> Result<(), Failure> {
        let mut tx = self.db.begin().await?;
        for (category, patch) in &change.categories {
            store::set_preferences(&mut tx, user, *category, patch).await?;
        }
        tx.commit().await?;
        Ok(())
    }
}

fn check_notification_id(id: &str) -> Result<(), Failure> {
    let valid = id.strip_prefix("ntf_").is_some_and(|rest| {
        (1..=128).contains(&rest.len())
            && rest
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-')
    });
    if valid {
        Ok(())
    } else {
        Err(bad_request(format!(
            "invalid notification id {:?}: expected ntf_...",
            id.chars().take(64).collect::<String>()
        )))
    }
}

fn item(row: StoredNotification, unread: u64) -> Option<Item> {
    let reference = match (&row.ref_channel, row.ref_seq) {
        (Some(channel), Some(seq)) => NotificationRef {
            channel: ChannelName::parse(channel).ok()?,
            seq: u64::try_from(seq).ok()?,
        },
        _ => {
            tracing::warn!(id = %row.id, "notification without a reference left out of the list");
            return None;
        }
    };
    Some(Item {
        data: NotificationData {
            id: row.id,
            category: row.category,
            title: row.title,
            message: row.message,
            priority: row.priority,
            reference,
            unread,
            created_at: row.created_at,
        },
        read_at: row.read_at,
    })
}

/// `user:<id>`; a user id is always a valid channel id.
pub fn user_channel(user: &UserId) -> ChannelName {
    ChannelName::new(Namespace::User, user.as_str()).expect("user ids share the channel id grammar")
}

#[cfg(test)]
mod tests {
    use bytes::Bytes;

    use super::*;

    fn call(params: &'static [u8]) -> Call {
        Call {
            caller: UserId::parse("u1").unwrap(),
            params: Bytes::from_static(params),
        }
    }

    #[test]
    fn list_params_are_optional_and_typed() {
        let list: ListParams = call(b"").params().unwrap();
        assert_eq!((list.limit, list.unread_only), (None, false));
        let list: ListParams = call(br#"{"limit":5,"before":"ntf_1","unread_only":true,"x":1}"#)
            .params()
            .unwrap();
        assert_eq!(list.limit, Some(5));
        assert!(list.unread_only);
        for bad in [&b"{\"limit\":-1}"[..], b"{\"unread_only\":\"yes\"}", b"{"] {
            let error = Call {
                caller: UserId::parse("u1").unwrap(),
                params: Bytes::copy_from_slice(bad),
            }
            .params::<ListParams>()
            .unwrap_err();
            assert_eq!(error.code, ErrorCode::BadRequest);
        }
    }

    #[test]
    fn notification_ids_are_checked() {
        assert!(check_notification_id("ntf_01JD3X").is_ok());
        for bad in ["", "ntf_", "evt_1", "ntf_a b", "ntf_a.b"] {
            assert!(check_notification_id(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn read_events_say_all_only_when_all() {
        use store::ReadEvent;
        let ids = ["ntf_1".to_string()];
        let some = ReadEvent {
            ids: &ids,
            unread: 2,
            all: false,
        };
        assert_eq!(
            serde_json::to_string(&some).unwrap(),
            r#"{"ids":["ntf_1"],"unread":2}"#
        );
        let all = ReadEvent {
            ids: &ids,
            unread: 0,
            all: true,
        };
        assert_eq!(
            serde_json::to_string(&all).unwrap(),
            r#"{"ids":["ntf_1"],"unread":0,"all":true}"#
        );
    }
}
