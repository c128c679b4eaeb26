//! `switchboard members rebuild`: rewrite the KV bucket `members` from PostgreSQL.
//!
//! The membership worker keeps the bucket (what edges read to authorize subscriptions) in
//! step with `switchboard.channel_members` (the record). This command repairs the bucket
//! when the two drifted apart: a purged or recreated bucket, a restored NATS backup, a
//! key written by hand. Every active row gets its key (`<ns>.<id>.<user>` ->
//! `{"role":...}`), and every key without an active row is deleted, which revokes that
//! user's live subscriptions on every edge.
//!
//! It is safe while workers run: each key is decided and written inside a transaction
//! holding the advisory lock the membership worker takes for the same (channel, user),
//! from the row as it is at that moment, so a membership event handled meanwhile is
//! never undone.

use std::collections::{BTreeSet, HashMap};

use anyhow::Context;
use async_nats::jetstream::{self, kv, response::Response};
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};
use sqlx::{Connection, PgConnection};
use switchboard_bus::MEMBERS_BUCKET;
use switchboard_schemas::{ChannelName, Membership, UserId};

use crate::output;

/// The lock the membership worker holds while it writes a key (see its `mirror` module).
const LOCK: &str = "SELECT pg_advisory_xact_lock(hashtextextended($1 || '/' || $2, 0))";

const ACTIVE_ROWS: &str = "SELECT channel, user_id FROM switchboard.channel_members
                           WHERE active ORDER BY channel, user_id";

const ACTIVE_ROLE: &str = "SELECT role FROM switchboard.channel_members
                           WHERE channel = $1 AND user_id = $2 AND active";

#[derive(Debug, clap::Args)]
pub struct Args {
    #[command(subcommand)]
    command: Action,
}

#[derive(Debug, clap::Subcommand)]
enum Action {
    /// Rewrite the KV bucket `members` from the active rows of
    /// switchboard.channel_members: restore missing keys, fix wrong roles, delete keys
    /// with no active row. Safe while workers run.
    ///
    /// Example: switchboard members rebuild --database-url postgres://localhost/switchboard
    Rebuild(RebuildArgs),
}

#[derive(Debug, clap::Args)]
struct RebuildArgs {
    /// PostgreSQL URL.
    #[arg(long, env = "DATABASE_URL", hide_env_values = true)]
    database_url: String,
}

pub async fn run(nats: &crate::Nats, json: bool, args: Args) -> anyhow::Result<()> {
    match args.command {
        Action::Rebuild(rebuild_args) => {
            let report = rebuild(nats, &rebuild_args).await?;
            print(&report, json)
        }
    }
}

/// What happened to one key.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
enum KeyAction {
    /// An active member had no key; it was written.
    Restored,
    /// The key held another role; it was rewritten.
    Updated,
    /// The key was already right.
    Unchanged,
    /// A key without an active row was deleted.
    Removed,
}

#[derive(Debug, Serialize)]
struct Change {
    key: String,
    action: KeyAction,
}

#[derive(Debug, Default, Serialize)]
struct Report {
    active_rows: usize,
    keys_before: usize,
    restored: usize,
    updated: usize,
    unchanged: usize,
    removed: usize,
    /// Rows whose channel or user cannot form a key (written by something else).
    skipped: usize,
    /// Every key that changed.
    changes: Vec<Change>,
}

impl Report {
    fn record(&mut self, key: String, Synced { existed, action }: Synced) {
        self.keys_before += usize::from(existed);
        let count = match action {
            KeyAction::Restored => &mut self.restored,
            KeyAction::Updated => &mut self.updated,
            KeyAction::Unchanged => &mut self.unchanged,
            KeyAction::Removed => &mut self.removed,
        };
        *count += 1;
        if action != KeyAction::Unchanged {
            self.changes.push(Change { key, action });
        }
    }
}

async fn rebuild(nats: &crate::Nats, args: &RebuildArgs) -> anyhow::Result<Report> {
    let mut db = PgConnection::connect(&args.database_url)
        .await
        .context("cannot connect to PostgreSQL (set --database-url or DATABASE_URL)")?;
    let js = jetstream::new(nats.connect().await?);
    let bucket = js.get_key_value(MEMBERS_BUCKET).await.with_context(|| {
        format!("cannot open KV bucket {MEMBERS_BUCKET} (has `switchboard init` run?)")
    })?;

    let active: Vec<(String, String)> = sqlx::query_as(ACTIVE_ROWS)
        .fetch_all(&mut db)
        .await
        .context("cannot read switchboard.channel_members (has `switchboard migrate` run?)")?;
    let mut report = Report {
        active_rows: active.len(),
        ..Report::default()
    };
    let mut wanted = BTreeSet::new();
    for (channel, user) in &active {
        let Some(key) = key_of(channel, user) else {
            eprintln!("skipped row ({channel}, {user}): not a valid channel and user id");
            report.skipped += 1;
            continue;
        };
        let synced = sync_key(&mut db, &bucket, &key, Some((channel, user))).await?;
        report.record(key.clone(), synced);
        wanted.insert(key);
    }
    for key in written_keys(&js, ">").await? {
        if wanted.contains(&key) {
            continue;
        }
        let member = member_of(&key);
        let member = member.as_ref().map(|(c, u)| (c.as_str(), u.as_str()));
        let synced = sync_key(&mut db, &bucket, &key, member).await?;
        // A key whose last write was a delete is not a key at all.
        if synced.existed {
            report.record(key, synced);
        }
    }
    Ok(report)
}

/// The outcome of [`sync_key`].
struct Synced {
    /// Whether the key was present before.
    existed: bool,
    action: KeyAction,
}

/// Makes `key` match the active row of `member` (none for a key no membership can
/// have), under the worker's lock.
async fn sync_key(
    db: &mut PgConnection,
    bucket: &kv::Store,
    key: &str,
    member: Option<(&str, &str)>,
) -> anyhow::Result<Synced> {
    let database = || format!("PostgreSQL failed while rebuilding key {key}");
    let mut tx = db.begin().await.with_context(database)?;
    let mut role: Option<String> = None;
    if let Some((channel, user)) = member {
        sqlx::query(LOCK)
            .bind(channel)
            .bind(user)
            .execute(&mut *tx)
            .await
            .with_context(database)?;
        role = sqlx::query_scalar(ACTIVE_ROLE)
            .bind(channel)
            .bind(user)
            .fetch_optional(&mut *tx)
            .await
            .with_context(database)?;
    }
    let current: Option<Value> = bucket
        .get(key)
        .await
        .with_context(|| format!("cannot read key {key}"))?
        .map(|value| serde_json::from_slice(&value).unwrap_or(Value::Null));
    let existed = current.is_some();
    let action = match (role, current) {
        (Some(role), current) => {
            let wanted = json!({ "role": role });
            if current.as_ref() == Some(&wanted) {
                KeyAction::Unchanged
            } else {
                bucket
                    .put(key, wanted.to_string().into())
                    .await
                    .with_context(|| format!("cannot write key {key}"))?;
                if existed {
                    KeyAction::Updated
                } else {
                    KeyAction::Restored
                }
            }
        }
        (None, Some(_)) => {
            delete(bucket, key).await?;
            KeyAction::Removed
        }
        (None, None) => KeyAction::Unchanged,
    };
    tx.commit().await.with_context(database)?;
    Ok(Synced { existed, action })
}

/// Every key matching `key_filter` (a subject filter over keys: `>` for all,
/// `*.*.u1` for one user's) that the bucket has a last message for, present or deleted,
/// read page by page from the bucket stream's subject list (one request per 100,000
/// keys).
pub(crate) async fn written_keys(
    js: &jetstream::Context,
    key_filter: &str,
) -> anyhow::Result<Vec<String>> {
    let prefix = format!("$KV.{MEMBERS_BUCKET}.");
    let filter = format!("{prefix}{key_filter}");
    let mut keys = Vec::new();
    loop {
        let request = json!({ "offset": keys.len(), "subjects_filter": filter });
        let response: Response<SubjectsPage> = js
            .request(format!("STREAM.INFO.KV_{MEMBERS_BUCKET}"), &request)
            .await
            .context("cannot list the keys of the members bucket")?;
        let page = match response {
            Response::Ok(page) => page,
            Response::Err { error } => {
                anyhow::bail!("cannot list the keys of the members bucket: {error}")
            }
        };
        let before = keys.len();
        keys.extend(
            page.state
                .subjects
                .into_keys()
                .filter_map(|subject| subject.strip_prefix(&prefix).map(str::to_string)),
        );
        if keys.len() == before || keys.len() >= page.total {
            return Ok(keys);
        }
    }
}

/// The part of a stream info reply that lists subjects.
#[derive(Debug, Deserialize)]
struct SubjectsPage {
    #[serde(default)]
    total: usize,
    state: SubjectsState,
}

#[derive(Debug, Deserialize)]
struct SubjectsState {
    #[serde(default)]
    subjects: HashMap<String, u64>,
}

async fn delete(bucket: &kv::Store, key: &str) -> anyhow::Result<()> {
    bucket
        .delete(key)
        .await
        .with_context(|| format!("cannot delete key {key}"))
}

/// `<ns>.<id>.<user>` for a row's channel (`<ns>:<id>`) and user; `None` if either is
/// not valid. A user id has the grammar of a channel id: it is the id of `user:<id>`.
fn key_of(channel: &str, user: &str) -> Option<String> {
    let channel = ChannelName::parse(channel).ok()?;
    if channel.alias().is_some() {
        return None;
    }
    Some(Membership::new(&channel, UserId::parse(user).ok()?).key())
}

/// The (channel, user) a key stands for; `None` for a key no membership can have.
fn member_of(key: &str) -> Option<(String, String)> {
    let member = Membership::from_key(key)?;
    Some((member.channel.to_string(), member.user.to_string()))
}

fn print(report: &Report, json: bool) -> anyhow::Result<()> {
    if json {
        return output::json(report);
    }
    for change in &report.changes {
        let action = match change.action {
            KeyAction::Restored => "restored",
            KeyAction::Updated => "updated",
            KeyAction::Unchanged => "unchanged",
            KeyAction::Removed => "removed",
        };
        println!("{action:<9} {}", change.key);
    }
    println!(
        "members bucket rebuilt from {} active rows ({} keys before): {} restored, {} updated, \
         {} unchanged, {} removed, {} skipped",
        report.active_rows,
        report.keys_before,
        report.restored,
        report.updated,
        report.unchanged,
        report.removed,
        report.skipped
    );
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_and_members_map_both_ways() {
        assert_eq!(key_of("project:p1", "u1").as_deref(), Some("project.p1.u1"));
        assert_eq!(
            member_of("conversation.c1.u-2"),
            Some(("conversation:c1".into(), "u-2".into()))
        );
        assert_eq!(key_of("project:p1", "a.b"), None);
        assert_eq!(key_of("user:u1:messages", "u1"), None);
        assert_eq!(key_of("nope:p1", "u1"), None);
        assert_eq!(member_of("project.p1"), None);
        assert_eq!(member_of("project.p1.u1.x"), None);
        assert_eq!(member_of("nope.p1.u1"), None);
    }
}
