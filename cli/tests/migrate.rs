//! `switchboard migrate` and the outbox function, against a real PostgreSQL.

use std::process::Command;

use sqlx::{Connection, PgConnection};
use switchboard_testkit::Postgres;

fn migrate(url: &str) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_switchboard"))
        .args(["migrate"])
        .env("DATABASE_URL", url)
        .output()
        .unwrap()
}

async fn migrated(pg: &Postgres) -> PgConnection {
    let url = pg.empty_database().await.unwrap();
    for _ in 0..2 {
        let output = migrate(&url);
        assert!(
            output.status.success(),
            "migrate failed: {}",
            String::from_utf8_lossy(&output.stderr)
        );
    }
    PgConnection::connect(&url).await.unwrap()
}

async fn outbox_rows(conn: &mut PgConnection) -> Vec<(String, String, String, serde_json::Value)> {
    sqlx::query_as("SELECT event_id, channel, type, data FROM switchboard.outbox ORDER BY seq")
        .fetch_all(conn)
        .await
        .unwrap()
}

#[tokio::test]
async fn migrations_apply_to_an_empty_database_twice() {
    let pg = Postgres::start().unwrap();
    let mut conn = migrated(&pg).await;
    let tables: Vec<String> = sqlx::query_scalar(
        "SELECT table_name::text FROM information_schema.tables
         WHERE table_schema = 'switchboard' ORDER BY 1",
    )
    .fetch_all(&mut conn)
    .await
    .unwrap();
    assert_eq!(
        tables,
        [
            "archive",
            "archive_coverage",
            "channel_members",
            "contacts",
            "erased_events",
            "inbox_entries",
            "mobile_devices",
            "notification_deliveries",
            "notification_preferences",
            "notifications",
            "outbox",
            "presence_privacy",
            "presence_state",
            "processed_events",
            "push_subscriptions",
            "receipt_cursors"
        ]
    );
}

#[tokio::test]
async fn emit_writes_inside_the_transaction_and_nothing_on_rollback() {
    let pg = Postgres::start().unwrap();
    let mut conn = migrated(&pg).await;

    let mut tx = conn.begin().await.unwrap();
    let id: String = sqlx::query_scalar(
        "SELECT switchboard.emit('project:p1', 'bid.new', '{\"amount\": 5000}'::jsonb)",
    )
    .fetch_one(&mut *tx)
    .await
    .unwrap();
    assert!(id.starts_with("evt_"), "{id}");
    tx.commit().await.unwrap();

    let mut tx = conn.begin().await.unwrap();
    let _: String = sqlx::query_scalar(
        "SELECT switchboard.emit('project:p1', 'bid.update', '{}'::jsonb, NULL, 'evt_rolled_back')",
    )
    .fetch_one(&mut *tx)
    .await
    .unwrap();
    tx.rollback().await.unwrap();

    let rows = outbox_rows(&mut conn).await;
    assert_eq!(
        rows,
        [(
            id,
            "project:p1".to_string(),
            "bid.new".to_string(),
            serde_json::json!({"amount": 5000})
        )]
    );
}

#[tokio::test]
async fn emit_with_a_known_event_id_inserts_nothing_and_returns_it() {
    let pg = Postgres::start().unwrap();
    let mut conn = migrated(&pg).await;
    for _ in 0..2 {
        let id: String = sqlx::query_scalar(
            "SELECT switchboard.emit('conversation:c1', 'message.new', '{\"text\":\"hi\"}', \
             '{\"id\":\"u1\",\"type\":\"user\"}', 'evt_fixed_1')",
        )
        .fetch_one(&mut conn)
        .await
        .unwrap();
        assert_eq!(id, "evt_fixed_1");
    }
    assert_eq!(outbox_rows(&mut conn).await.len(), 1);
}

#[tokio::test]
async fn emit_refuses_bad_input_with_a_clear_error() {
    let pg = Postgres::start().unwrap();
    let mut conn = migrated(&pg).await;
    let cases = [
        (
            "SELECT switchboard.emit('project:p1.x', 'bid.new', '{}')",
            "invalid channel",
        ),
        (
            "SELECT switchboard.emit('project:>', 'bid.new', '{}')",
            "invalid channel",
        ),
        (
            "SELECT switchboard.emit('nope:p1', 'bid.new', '{}')",
            "invalid channel",
        ),
        (
            "SELECT switchboard.emit('project:p1', 'Bid.New', '{}')",
            "invalid event type",
        ),
        (
            "SELECT switchboard.emit('project:p1', 'bid..new', '{}')",
            "invalid event type",
        ),
        (
            "SELECT switchboard.emit('project:p1', 'bid.new', '{}', '[1]')",
            "actor must be",
        ),
        (
            "SELECT switchboard.emit('project:p1', 'bid.new', '{}', NULL, 'evt bad')",
            "invalid event id",
        ),
        (
            "SELECT switchboard.emit('project:p1', 'bid.new', '{}', NULL, 'nope')",
            "invalid event id",
        ),
    ];
    for (sql, expected) in cases {
        let error = sqlx::query(sql).execute(&mut conn).await.unwrap_err();
        assert!(error.to_string().contains(expected), "{sql}: {error}");
    }
    assert!(outbox_rows(&mut conn).await.is_empty());
}

/// The migration that moved pending presence events into batches keeps what an earlier
/// version left pending: one batch, in user order, and the users' rows as they were; the
/// one after it keeps the rows.
#[tokio::test]
async fn presence_events_left_pending_by_an_earlier_version_become_one_batch() {
    const MOVED_IN: &str = "20261212000001";
    let pg = Postgres::start().unwrap();
    let url = pg.empty_database().await.unwrap();
    let mut conn = PgConnection::connect(&url).await.unwrap();
    let mut files: Vec<_> =
        std::fs::read_dir(concat!(env!("CARGO_MANIFEST_DIR"), "/../migrations"))
            .unwrap()
            .map(|entry| entry.unwrap().path())
            .filter(|path| path.extension().is_some_and(|e| e == "sql"))
            .collect();
    files.sort();
    let (earlier, later): (Vec<_>, Vec<_>) = files
        .into_iter()
        .partition(|path| path.file_name().unwrap().to_str().unwrap() < MOVED_IN);
    let apply = async |conn: &mut PgConnection, files: &[std::path::PathBuf]| {
        for file in files {
            let sql = std::fs::read_to_string(file).unwrap();
            sqlx::raw_sql(sqlx::AssertSqlSafe(sql))
                .execute(&mut *conn)
                .await
                .unwrap_or_else(|e| panic!("{}: {e}", file.display()));
        }
    };
    // The next one drops the batches again: it is checked after this one's.
    let (moved_in, after) = later.split_at(1);
    apply(&mut conn, &earlier).await;
    sqlx::raw_sql(
        "INSERT INTO switchboard.presence_state (user_id, status, devices, revision, pending)
         VALUES ('u2', 'offline', 0, 5, '\\x02'), ('u1', 'online', 1, 1, '\\x01'),
                ('u3', 'online', 2, 3, NULL)",
    )
    .execute(&mut conn)
    .await
    .unwrap();
    apply(&mut conn, moved_in).await;

    let batches: Vec<(i64, Vec<String>, Vec<Vec<u8>>)> =
        sqlx::query_as("SELECT batch, users, events FROM switchboard.presence_pending")
            .fetch_all(&mut conn)
            .await
            .unwrap();
    assert_eq!(
        batches,
        [(0, vec!["u1".into(), "u2".into()], vec![vec![1], vec![2]])]
    );
    let rows: Vec<(String, String, i32, i64)> = sqlx::query_as(
        "SELECT user_id, status, devices, revision FROM switchboard.presence_state ORDER BY 1",
    )
    .fetch_all(&mut conn)
    .await
    .unwrap();
    assert_eq!(
        rows,
        [
            ("u1".into(), "online".into(), 1, 1),
            ("u2".into(), "offline".into(), 0, 5),
            ("u3".into(), "online".into(), 2, 3)
        ]
    );

    // Written after publishing since: the rows stay, at seq 0 (the first start reads the
    // stream's presence events back), with last-seen moved into them (a user known only
    // there gets an offline row), and the pending batches go.
    sqlx::raw_sql(
        "INSERT INTO switchboard.presence_last_seen (user_id, last_seen, status)
         VALUES ('u2', '2026-11-22T09:00:00Z', 'offline'),
                ('u4', '2026-11-21T08:00:00Z', 'offline')",
    )
    .execute(&mut conn)
    .await
    .unwrap();
    apply(&mut conn, after).await;
    let rows: Vec<(String, String, i64, Option<String>)> = sqlx::query_as(
        "SELECT user_id, status, seq, to_char(last_seen AT TIME ZONE 'UTC', 'YYYY-MM-DD HH24:MI')
           FROM switchboard.presence_state ORDER BY 1",
    )
    .fetch_all(&mut conn)
    .await
    .unwrap();
    let row = |user: &str, status: &str, seen: Option<&str>| {
        (user.into(), status.into(), 0, seen.map(String::from))
    };
    assert_eq!(
        rows,
        [
            row("u1", "online", None),
            row("u2", "offline", Some("2026-11-22 09:00")),
            row("u3", "online", None),
            row("u4", "offline", Some("2026-11-21 08:00")),
        ]
    );
    for gone in ["presence_pending", "presence_last_seen"] {
        let table: Option<String> = sqlx::query_scalar("SELECT to_regclass($1)::text")
            .bind(format!("switchboard.{gone}"))
            .fetch_one(&mut conn)
            .await
            .unwrap();
        assert_eq!(table, None);
    }
}
