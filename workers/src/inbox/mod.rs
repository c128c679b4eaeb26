//! The inbox (docs/protocol.md §10.11): each user's conversations with unread counts and
//! last message, the RPCs `inbox.list` and `inbox.mute`, and the `inbox` signal on
//! `user:<id>` whenever an entry changes.
//!
//! The entries (`switchboard.inbox_entries`) are written by the archive job in the same
//! transaction as the events that change them ([`crate::archive`]); this module reads
//! them, sets `muted`, and tells the user's devices.
//!
//! - [`cursor`]: the opaque paging cursors.
//! - [`Signals`]: changed entries are gathered for [`COALESCE`] and sent once each, with
//!   their state at sending time, so a burst of messages is one signal per conversation.

pub mod cursor;

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::time::Duration;

use serde::Deserialize;
use serde_json::{Value, json};
use sqlx::PgPool;
use switchboard_schemas::shapes::SignalMessage;
use switchboard_schemas::{
    ChannelName, ErrorCode, Namespace, RawJson, SubjectKind, UserId, frame::SignalType,
};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use crate::responder::{Call, Method, Reply, RpcError, Service};
use cursor::Cursor;

/// How long changes are gathered before their signals go out: well inside the 1 s the
/// protocol promises.
pub const COALESCE: Duration = Duration::from_millis(200);
/// Batches of changed entries waiting for the signal task.
const QUEUE: usize = 256;
const DEFAULT_LIMIT: u32 = 20;
const MAX_LIMIT: u32 = 100;

/// The columns every entry view reads, joined with its last message; `{entries}` is the
/// entries to show (the table, or a page of it chosen before the join).
const ENTRY_COLUMNS: &str = "
SELECT e.user_id, e.channel, e.active, e.unread, e.read_seq, e.muted,
       to_char(e.activity_at AT TIME ZONE 'UTC', 'YYYY-MM-DD\"T\"HH24:MI:SS.US\"Z\"'),
       (extract(epoch FROM e.activity_at) * 1000000)::bigint,
       a.seq, a.event_id, a.type, a.actor_id, a.text, a.envelope ->> 'timestamp'
  FROM {entries} e
  LEFT JOIN switchboard.archive a
    ON a.channel = e.channel AND a.epoch = e.epoch AND a.seq = e.last_seq AND NOT a.deleted";

/// A page of a user's entries, most recent activity first. The page is chosen before the
/// last messages are joined, so a page costs a sort of the user's entries and `$4`
/// lookups, not one per conversation the user is in.
const PAGE: &str = "
(SELECT * FROM switchboard.inbox_entries
  WHERE user_id = $1 AND active
    AND ($2::bigint IS NULL
         OR (activity_at, channel) < (timestamptz 'epoch' + $2 * interval '1 microsecond', $3))
  ORDER BY activity_at DESC, channel DESC
  LIMIT $4)";

const PAGE_ORDER: &str = "
 ORDER BY e.activity_at DESC, e.channel DESC";

const KEYS_WHERE: &str = "
 WHERE (e.user_id, e.channel) IN (SELECT * FROM unnest($1::text[], $2::text[]))";

const TOTALS: &str = "
SELECT user_id, coalesce(sum(unread) FILTER (WHERE active AND NOT muted), 0)::bigint
  FROM switchboard.inbox_entries
 WHERE user_id = ANY($1::text[])
 GROUP BY user_id";

const MUTE: &str = "
UPDATE switchboard.inbox_entries SET muted = $3, updated_at = now()
 WHERE user_id = $1 AND channel = $2 AND active
RETURNING user_id";

type EntryRow = (
    String,
    String,
    bool,
    i32,
    i64,
    bool,
    String,
    i64,
    Option<i64>,
    Option<String>,
    Option<String>,
    Option<String>,
    Option<String>,
    Option<String>,
);

/// One inbox entry as the protocol shows it.
struct Entry {
    user: String,
    channel: String,
    active: bool,
    /// Paging position: activity time in unix microseconds.
    activity_micros: i64,
    json: Value,
}

impl Entry {
    fn from_row(row: EntryRow) -> Entry {
        let (
            user,
            channel,
            active,
            unread,
            read,
            muted,
            updated_at,
            micros,
            seq,
            id,
            ty,
            actor,
            text,
            timestamp,
        ) = row;
        let last = seq.map(|seq| {
            json!({
                "seq": seq,
                "id": id,
                "type": ty,
                "actor": actor.map(|id| json!({ "id": id })),
                "text": text,
                "timestamp": timestamp,
            })
        });
        let json = json!({
            "ch": channel,
            "unread": unread,
            "read": read,
            "last": last,
            "muted": muted,
            "updatedAt": updated_at,
        });
        Entry {
            user,
            channel,
            active,
            activity_micros: micros,
            json,
        }
    }
}

async fn total(db: &PgPool, user: &str) -> Result<i64, sqlx::Error> {
    let totals: Vec<(String, i64)> = sqlx::query_as(TOTALS)
        .bind(vec![user])
        .fetch_all(db)
        .await?;
    Ok(totals.first().map_or(0, |(_, total)| *total))
}

async fn entries(
    db: &PgPool,
    keys: &BTreeSet<(String, String)>,
) -> Result<Vec<Entry>, sqlx::Error> {
    let table = ENTRY_COLUMNS.replace("{entries}", "switchboard.inbox_entries");
    let sql = format!("{table}{KEYS_WHERE}");
    let rows: Vec<EntryRow> = sqlx::query_as(sqlx::AssertSqlSafe(sql))
        .bind(keys.iter().map(|(u, _)| u.as_str()).collect::<Vec<_>>())
        .bind(keys.iter().map(|(_, c)| c.as_str()).collect::<Vec<_>>())
        .fetch_all(db)
        .await?;
    Ok(rows.into_iter().map(Entry::from_row).collect())
}

/// Hands changed entries to the task that signals them.
#[derive(Debug, Clone)]
pub struct Signals {
    queue: mpsc::Sender<BTreeSet<(String, String)>>,
}

impl Signals {
    /// The handle, and the task that sends the signals until `shutdown` fires.
    pub fn start(
        db: PgPool,
        client: async_nats::Client,
        shutdown: CancellationToken,
    ) -> (Arc<Signals>, impl std::future::Future<Output = ()> + Send) {
        let (queue, changes) = mpsc::channel(QUEUE);
        (
            Arc::new(Signals { queue }),
            send_signals(db, client, changes, shutdown),
        )
    }

    /// These (user, conversation) entries changed.
    pub async fn changed(&self, keys: BTreeSet<(String, String)>) {
        if !keys.is_empty() {
            // Fails only when the task has stopped (shutdown): nobody to tell.
            let _ = self.queue.send(keys).await;
        }
    }
}

async fn send_signals(
    db: PgPool,
    client: async_nats::Client,
    mut changes: mpsc::Receiver<BTreeSet<(String, String)>>,
    shutdown: CancellationToken,
) {
    let mut pending: BTreeSet<(String, String)> = BTreeSet::new();
    let mut every = tokio::time::interval(COALESCE);
    every.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            biased;
            () = shutdown.cancelled() => return,
            Some(keys) = changes.recv() => pending.extend(keys),
            _ = every.tick() => {
                if pending.is_empty() {
                    continue;
                }
                let keys = std::mem::take(&mut pending);
                if let Err(error) = signal(&db, &client, &keys).await {
                    tracing::warn!(%error, entries = keys.len(), "inbox signals not sent; trying again");
                    pending.extend(keys);
                }
            }
        }
    }
}

/// Sends one `inbox` signal per entry in `keys`, with its state now and the user's total.
async fn signal(
    db: &PgPool,
    client: &async_nats::Client,
    keys: &BTreeSet<(String, String)>,
) -> Result<(), Box<dyn std::error::Error + Send + Sync>> {
    let entries = entries(db, keys).await?;
    let users: BTreeSet<&str> = entries.iter().map(|e| e.user.as_str()).collect();
    let totals: BTreeMap<String, i64> = sqlx::query_as(TOTALS)
        .bind(users.into_iter().collect::<Vec<_>>())
        .fetch_all(db)
        .await?
        .into_iter()
        .collect();
    for entry in entries {
        let total = totals.get(&entry.user).copied().unwrap_or(0);
        let data = if entry.active {
            let mut data = entry.json;
            data["total"] = json!(total);
            data
        } else {
            json!({ "ch": entry.channel, "removed": true, "total": total })
        };
        let Ok(user) = UserId::parse(&entry.user) else {
            continue;
        };
        let Ok(channel) = ChannelName::new(Namespace::User, user.as_str()) else {
            continue;
        };
        let message = SignalMessage {
            from: "switchboard".into(),
            ty: SignalType::parse("inbox").expect("inbox is a signal type"),
            data: RawJson::encode(&data)?,
        };
        client
            .publish(
                channel.subject(SubjectKind::Signal),
                serde_json::to_vec(&message)?.into(),
            )
            .await?;
    }
    Ok(())
}

/// `svc.inbox.list` and `svc.inbox.mute`.
pub struct InboxService {
    db: PgPool,
    signals: Arc<Signals>,
}

impl InboxService {
    pub fn new(db: PgPool, signals: Arc<Signals>) -> InboxService {
        InboxService { db, signals }
    }

    async fn list(&self, call: &Call) -> Reply {
        #[derive(Deserialize)]
        #[serde(deny_unknown_fields)]
        struct Params {
            limit: Option<u32>,
            before: Option<String>,
        }
        let params: Params = call.params()?;
        let limit = params.limit.unwrap_or(DEFAULT_LIMIT);
        if !(1..=MAX_LIMIT).contains(&limit) {
            return Err(RpcError::new(
                ErrorCode::BadRequest,
                format!("limit must be 1 to {MAX_LIMIT}"),
            ));
        }
        let before = params
            .before
            .as_deref()
            .map(Cursor::parse)
            .transpose()
            .map_err(|e| RpcError::new(ErrorCode::BadRequest, e.to_string()))?;
        let sql = format!("{}{PAGE_ORDER}", ENTRY_COLUMNS.replace("{entries}", PAGE));
        let unavailable = |e| RpcError::unavailable("inbox.list", e);
        let rows: Vec<EntryRow> = sqlx::query_as(sqlx::AssertSqlSafe(sql))
            .bind(call.caller.as_str())
            .bind(before.as_ref().map(|c| c.micros))
            .bind(before.as_ref().map(|c| c.key.as_str()))
            .bind(i64::from(limit) + 1)
            .fetch_all(&self.db)
            .await
            .map_err(unavailable)?;
        let total = total(&self.db, call.caller.as_str())
            .await
            .map_err(unavailable)?;
        let mut page: Vec<Entry> = rows.into_iter().map(Entry::from_row).collect();
        let more = page.len() > limit as usize;
        page.truncate(limit as usize);
        let next = more.then(|| page.last()).flatten().map(|last| {
            Cursor {
                micros: last.activity_micros,
                key: last.channel.clone(),
            }
            .encode()
        });
        let conversations: Vec<Value> = page.into_iter().map(|e| e.json).collect();
        Ok(json!({ "conversations": conversations, "unread": total, "next": next }))
    }

    async fn mute(&self, call: &Call) -> Reply {
        #[derive(Deserialize)]
        #[serde(deny_unknown_fields)]
        struct Params {
            ch: String,
            muted: bool,
        }
        let params: Params = call.params()?;
        let channel = ChannelName::parse(&params.ch)
            .map_err(|e| RpcError::new(ErrorCode::BadRequest, e.to_string()))?;
        let unavailable = |e| RpcError::unavailable("inbox.mute", e);
        let user = call.caller.as_str();
        let updated: Option<String> = sqlx::query_scalar(MUTE)
            .bind(user)
            .bind(channel.as_str())
            .bind(params.muted)
            .fetch_optional(&self.db)
            .await
            .map_err(unavailable)?;
        if updated.is_none() {
            return Err(not_a_participant());
        }
        let key = BTreeSet::from([(user.to_string(), channel.as_str().to_string())]);
        let entry = entries(&self.db, &key)
            .await
            .map_err(unavailable)?
            .into_iter()
            .find(|e| e.active)
            .ok_or_else(not_a_participant)?;
        self.signals.changed(key).await;
        let total = total(&self.db, user).await.map_err(unavailable)?;
        let mut json = entry.json;
        json["total"] = json!(total);
        Ok(json)
    }
}

/// The same answer whether the conversation exists or not: nothing leaks.
fn not_a_participant() -> RpcError {
    RpcError::new(
        ErrorCode::Forbidden,
        "not a participant of this conversation",
    )
}

impl Service for InboxService {
    const NAME: &'static str = "inbox";

    fn methods(&self) -> &'static [Method] {
        const METHODS: &[Method] = &[Method::public("inbox.list"), Method::public("inbox.mute")];
        METHODS
    }

    async fn call(&self, method: &str, call: Call) -> Reply {
        match method {
            "inbox.list" => self.list(&call).await,
            _ => self.mute(&call).await,
        }
    }
}
