//! The archive job: every event of the archived namespaces, kept in PostgreSQL after
//! `EVENTS` lets it go (docs/operations.md §12), and the conversation features built on
//! it: the inbox, search, and the edges' reads of old history.
//!
//! - [`record`]: a stored message becomes a typed [`Record`], or poison with a reason.
//! - [`store`]: a batch of records is archived, edits and deletes applied to their
//!   originals, and the inbox entries they change recomputed, in one transaction.
//! - [`consumer`]: the durable consumer `archive` on `rt.<ns>.>`, a batch at a time.
//! - [`read`]: `int.archive.read`, which the edges call for history and resume.
//! - Beside them this job serves `inbox.list` / `inbox.mute` ([`crate::inbox`]) and
//!   `messages.search` ([`crate::search`]), sends the `inbox` signals, and deletes rows
//!   older than `SWITCHBOARD_ARCHIVE_RETENTION_DAYS`.
//!
//! It owns `switchboard.archive` and `switchboard.inbox_entries`; it reads
//! `switchboard.channel_members` (search) and publishes only signals.

pub mod consumer;
pub mod read;
pub mod record;
pub mod store;

use std::sync::Arc;
use std::time::Duration;

use async_nats::jetstream;
use sqlx::PgPool;
use switchboard_bus::store::Store;
use switchboard_schemas::{Namespace, SubjectKind};
use tokio_util::sync::CancellationToken;

pub use record::Record;
pub use store::ArchiveStore;

use crate::inbox::{InboxService, Signals};
use crate::job::Settings;
use crate::responder;
use crate::search::SearchService;

/// Rows deleted per statement, so a long backlog never holds one huge transaction.
const RETENTION_BATCH: i64 = 5_000;

const EXPIRE: &str = "
DELETE FROM switchboard.archive
 WHERE ctid IN (SELECT ctid FROM switchboard.archive
                 WHERE ts < now() - $1 * interval '1 day'
                 LIMIT $2)";

/// The archive's settings.
#[derive(Debug, Clone, clap::Args)]
pub struct ArchiveConfig {
    /// Namespaces whose events are archived, comma separated.
    #[arg(
        long,
        env = "SWITCHBOARD_ARCHIVE_NAMESPACES",
        value_delimiter = ',',
        default_value = "conversation"
    )]
    pub archive_namespaces: Vec<Namespace>,

    /// Days archived events are kept (by their timestamp); unset keeps them forever.
    #[arg(long, env = "SWITCHBOARD_ARCHIVE_RETENTION_DAYS")]
    pub archive_retention_days: Option<u32>,

    /// How often rows past the retention are looked for and deleted.
    #[arg(
        long,
        env = "SWITCHBOARD_ARCHIVE_RETENTION_INTERVAL_MS",
        default_value_t = 3_600_000
    )]
    pub archive_retention_interval_ms: u64,
}

impl ArchiveConfig {
    /// The consumer's filter: `rt.<ns>.>` for each namespace, each once.
    pub fn subjects(&self) -> Vec<String> {
        let mut subjects: Vec<String> = self
            .archive_namespaces
            .iter()
            .map(|ns| SubjectKind::Durable.namespace_wildcard(*ns))
            .collect();
        subjects.sort();
        subjects.dedup();
        subjects
    }
}

/// Runs the consumer, the services and the retention pass until `shutdown` fires.
pub async fn run(
    config: ArchiveConfig,
    db: PgPool,
    client: async_nats::Client,
    js: jetstream::Context,
    settings: Settings,
    shutdown: CancellationToken,
) {
    let positions = Store::new(client.clone());
    let (signals, send_signals) = Signals::start(db.clone(), client.clone(), shutdown.clone());
    let consumer = consumer::Consumer {
        store: ArchiveStore::new(db.clone()),
        js: js.clone(),
        positions: positions.clone(),
        subjects: config.subjects(),
        settings,
        signals: signals.clone(),
        shutdown: shutdown.clone(),
    };
    let reader = Arc::new(read::ArchiveReader::new(db.clone(), js, positions));
    let inbox = Arc::new(InboxService::new(db.clone(), signals));
    let search = Arc::new(SearchService::new(db.clone()));
    tokio::join!(
        consumer.run(),
        send_signals,
        responder::serve(reader, client.clone(), shutdown.clone()),
        responder::serve(inbox, client.clone(), shutdown.clone()),
        responder::serve(search, client, shutdown.clone()),
        expire(
            db,
            config.archive_retention_days,
            Duration::from_millis(config.archive_retention_interval_ms.max(10)),
            shutdown
        ),
    );
}

/// Deletes rows older than the retention, every `interval`, until shutdown.
async fn expire(db: PgPool, days: Option<u32>, interval: Duration, shutdown: CancellationToken) {
    let Some(days) = days else {
        return;
    };
    let mut every = tokio::time::interval(interval);
    loop {
        tokio::select! {
            () = shutdown.cancelled() => return,
            _ = every.tick() => {}
        }
        let mut removed: u64 = 0;
        loop {
            match sqlx::query(EXPIRE)
                .bind(f64::from(days))
                .bind(RETENTION_BATCH)
                .execute(&db)
                .await
            {
                Ok(done) => {
                    removed += done.rows_affected();
                    if done.rows_affected() < RETENTION_BATCH as u64 {
                        break;
                    }
                }
                Err(error) => {
                    tracing::warn!(%error, "archive retention pass failed; next pass later");
                    break;
                }
            }
        }
        if removed > 0 {
            tracing::info!(removed, days, "archived events past the retention deleted");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    #[derive(Parser)]
    struct Flags {
        #[command(flatten)]
        archive: ArchiveConfig,
    }

    #[test]
    fn conversations_are_archived_by_default_and_namespaces_are_checked() {
        let flags = Flags::try_parse_from(["x"]).unwrap();
        assert_eq!(flags.archive.subjects(), ["rt.conversation.>"]);
        assert_eq!(flags.archive.archive_retention_days, None);
        let flags = Flags::try_parse_from([
            "x",
            "--archive-namespaces",
            "group,conversation,group",
            "--archive-retention-days",
            "30",
        ])
        .unwrap();
        assert_eq!(
            flags.archive.subjects(),
            ["rt.conversation.>", "rt.group.>"]
        );
        assert_eq!(flags.archive.archive_retention_days, Some(30));
        assert!(Flags::try_parse_from(["x", "--archive-namespaces", "nope"]).is_err());
    }
}
