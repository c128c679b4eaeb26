//! Writing a [`Change`] to its two mirrors: the row in `switchboard.channel_members` (the
//! record, with `seq` as its watermark) and the key in the KV bucket `members` (what the
//! edges read).
//!
//! # Why the order is safe
//!
//! One PostgreSQL transaction per change:
//!
//! 1. take the advisory lock of (channel, user), so no other writer of this key runs
//!    meanwhile: another copy of this worker, or `switchboard members rebuild`;
//! 2. upsert the row only if the event's stream sequence is above the row's `seq`, so an
//!    old event delivered again never undoes a newer one;
//! 3. read the row back and write the KV key from it (active: put the role; inactive:
//!    delete), whether or not step 2 changed anything, so a crash that came after the
//!    commit but before the KV write of an earlier try is repaired;
//! 4. commit; then the caller acks.
//!
//! A crash between any two steps leaves the event unacked; its redelivery repeats the
//! steps and converges on the same row and key.
//!
//! The lock key is `hashtextextended(channel || '/' || user_id, 0)`; every writer of the
//! bucket must take it while it writes a key.

use async_nats::jetstream::{self, kv};
use serde::Serialize;
use sqlx::{Connection, PgPool, Postgres, Transaction};
use switchboard_bus::MEMBERS_BUCKET;
use switchboard_schemas::shapes::MemberRole;
use tokio::sync::OnceCell;

use super::change::Change;
use crate::dedicated::Dedicated;

const LOCK: &str = "SELECT pg_advisory_xact_lock(hashtextextended($1 || '/' || $2, 0))";

const UPSERT: &str = "
INSERT INTO switchboard.channel_members AS m (channel, user_id, role, active, seq, event_id)
VALUES ($1, $2, COALESCE($3, 'member'), $4, $5, $6)
ON CONFLICT (channel, user_id) DO UPDATE
   SET role = COALESCE($3, m.role), active = EXCLUDED.active, seq = EXCLUDED.seq,
       event_id = EXCLUDED.event_id, updated_at = now()
 WHERE m.seq < EXCLUDED.seq";

const CURRENT: &str =
    "SELECT role, active FROM switchboard.channel_members WHERE channel = $1 AND user_id = $2";

#[derive(Debug, thiserror::Error)]
pub enum MirrorError {
    #[error("PostgreSQL: {0}")]
    Database(#[from] sqlx::Error),
    #[error("KV bucket {MEMBERS_BUCKET} unavailable: {0}")]
    Bucket(#[from] jetstream::context::KeyValueError),
    #[error("writing KV key {key}: {message}")]
    Kv { key: String, message: String },
    #[error("stream sequence {0} does not fit a bigint")]
    Seq(u64),
    #[error("row has unknown role {0:?}")]
    Role(String),
}

/// The state of one membership after a change was applied.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Member {
    pub role: MemberRole,
    pub active: bool,
}

/// The value stored under a member's key: `{"role":"owner"}`.
#[derive(Serialize)]
struct KeyValue {
    role: MemberRole,
}

/// Applies changes to PostgreSQL and the `members` bucket.
pub struct Mirror {
    /// Changes are applied one at a time, every one in a transaction: on a connection of
    /// the job's own ([`Dedicated`]).
    conn: Dedicated,
    js: jetstream::Context,
    bucket: OnceCell<kv::Store>,
}

impl Mirror {
    pub fn new(db: PgPool, js: jetstream::Context) -> Mirror {
        Mirror {
            conn: Dedicated::new(&db),
            js,
            bucket: OnceCell::new(),
        }
    }

    /// Applies `change`, stored at stream sequence `seq`; see the module docs.
    pub async fn apply(&self, change: &Change, seq: u64) -> Result<Member, MirrorError> {
        let seq = i64::try_from(seq).map_err(|_| MirrorError::Seq(seq))?;
        self.conn
            .run(async |conn| {
                let mut tx = conn.begin().await?;
                lock(&mut tx, change).await?;
                sqlx::query(UPSERT)
                    .bind(change.channel.as_str())
                    .bind(change.user.as_str())
                    .bind(change.role.map(role_name))
                    .bind(change.active)
                    .bind(seq)
                    .bind(change.event_id.as_str())
                    .execute(&mut *tx)
                    .await?;
                let member = current(&mut tx, change).await?;
                self.write_key(&change.key(), member).await?;
                tx.commit().await?;
                Ok(member)
            })
            .await
    }

    async fn write_key(&self, key: &str, member: Member) -> Result<(), MirrorError> {
        let bucket = self
            .bucket
            .get_or_try_init(|| self.js.get_key_value(MEMBERS_BUCKET))
            .await?;
        let kv_error = |message: String| MirrorError::Kv {
            key: key.to_string(),
            message,
        };
        if member.active {
            let value = serde_json::to_vec(&KeyValue { role: member.role })
                .map_err(|e| kv_error(e.to_string()))?;
            bucket
                .put(key, value.into())
                .await
                .map_err(|e| kv_error(e.to_string()))?;
        } else {
            bucket
                .delete(key)
                .await
                .map_err(|e| kv_error(e.to_string()))?;
        }
        Ok(())
    }
}

async fn lock(tx: &mut Transaction<'_, Postgres>, change: &Change) -> Result<(), sqlx::Error> {
    sqlx::query(LOCK)
        .bind(change.channel.as_str())
        .bind(change.user.as_str())
        .execute(&mut **tx)
        .await?;
    Ok(())
}

async fn current(
    tx: &mut Transaction<'_, Postgres>,
    change: &Change,
) -> Result<Member, MirrorError> {
    let (role, active): (String, bool) = sqlx::query_as(CURRENT)
        .bind(change.channel.as_str())
        .bind(change.user.as_str())
        .fetch_one(&mut **tx)
        .await?;
    Ok(Member {
        role: parse_role(&role).ok_or(MirrorError::Role(role))?,
        active,
    })
}

pub(crate) fn role_name(role: MemberRole) -> &'static str {
    match role {
        MemberRole::Owner => "owner",
        MemberRole::Member => "member",
        MemberRole::Contractor => "contractor",
        MemberRole::Viewer => "viewer",
    }
}

fn parse_role(name: &str) -> Option<MemberRole> {
    [
        MemberRole::Owner,
        MemberRole::Member,
        MemberRole::Contractor,
        MemberRole::Viewer,
    ]
    .into_iter()
    .find(|role| role_name(*role) == name)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn role_names_are_the_json_ones() {
        for name in ["owner", "member", "contractor", "viewer"] {
            let role = parse_role(name).unwrap();
            assert_eq!(role_name(role), name);
            assert_eq!(serde_json::to_string(&role).unwrap(), format!("\"{name}\""));
        }
        assert_eq!(parse_role("admin"), None);
        assert_eq!(
            serde_json::to_string(&KeyValue {
                role: MemberRole::Owner
            })
            .unwrap(),
            r#"{"role":"owner"}"#
        );
    }
}
