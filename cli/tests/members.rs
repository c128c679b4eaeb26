//! `switchboard members rebuild` against a real nats-server and PostgreSQL.

use std::process::{Command, Output};

use async_nats::jetstream::{self, kv};
use serde_json::{Value, json};
use sqlx::PgPool;
use switchboard_bus::definitions::Definitions;
use switchboard_bus::{MEMBERS_BUCKET, Role};
use switchboard_testkit::{Nats, Postgres, free_port};

fn switchboard(nats: &Nats, database_url: &str, args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_switchboard"))
        .args(args)
        .envs(nats.env(Role::Admin))
        .env("DATABASE_URL", database_url)
        .output()
        .expect("run switchboard")
}

fn report(output: &Output) -> Value {
    assert!(
        output.status.success(),
        "switchboard failed: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    serde_json::from_slice(&output.stdout).expect("--json prints JSON")
}

fn counts(report: &Value) -> [u64; 5] {
    ["restored", "updated", "unchanged", "removed", "skipped"].map(|field| {
        report[field]
            .as_u64()
            .unwrap_or_else(|| panic!("{field} in {report}"))
    })
}

async fn bucket(nats: &Nats) -> kv::Store {
    let js = jetstream::new(nats.connect(Role::Admin).await.unwrap());
    Definitions::builtin().apply(&js).await.unwrap();
    js.get_key_value(MEMBERS_BUCKET).await.unwrap()
}

async fn value(kv: &kv::Store, key: &str) -> Option<Value> {
    let bytes = kv.get(key).await.unwrap()?;
    Some(serde_json::from_slice(&bytes).unwrap_or(Value::Null))
}

async fn insert_row(db: &PgPool, channel: &str, user: &str, role: &str, active: bool) {
    sqlx::query(
        "INSERT INTO switchboard.channel_members (channel, user_id, role, active, seq, event_id)
         VALUES ($1, $2, $3, $4, 1, 'evt_test')",
    )
    .bind(channel)
    .bind(user)
    .bind(role)
    .bind(active)
    .execute(db)
    .await
    .unwrap();
}

#[tokio::test(flavor = "multi_thread")]
async fn members_rebuild_restores_lost_keys_and_removes_strays() {
    let nats = Nats::start().unwrap();
    let pg = Postgres::start().unwrap();
    let database_url = pg.database().await.unwrap();
    let db = PgPool::connect(&database_url).await.unwrap();
    let kv = bucket(&nats).await;

    insert_row(&db, "project:p1", "u1", "owner", true).await;
    insert_row(&db, "conversation:c1", "u2", "member", true).await;
    insert_row(&db, "project:p1", "u3", "viewer", false).await;
    insert_row(&db, "job:j1", "u4", "contractor", true).await;

    // Right already.
    kv.put("project.p1.u1", r#"{"role":"owner"}"#.into())
        .await
        .unwrap();
    // Lost: purged by hand.
    kv.put("conversation.c1.u2", r#"{"role":"member"}"#.into())
        .await
        .unwrap();
    kv.purge("conversation.c1.u2").await.unwrap();
    // Stray: the row says removed.
    kv.put("project.p1.u3", r#"{"role":"viewer"}"#.into())
        .await
        .unwrap();
    // Wrong role.
    kv.put("job.j1.u4", r#"{"role":"viewer"}"#.into())
        .await
        .unwrap();
    // Not a membership key at all.
    kv.put("junk", "x".into()).await.unwrap();
    // Deleted earlier: not a key, nothing to do.
    kv.put("project.p9.u9", r#"{"role":"owner"}"#.into())
        .await
        .unwrap();
    kv.delete("project.p9.u9").await.unwrap();

    let first = report(&switchboard(
        &nats,
        &database_url,
        &["members", "rebuild", "--json"],
    ));
    assert_eq!(first["active_rows"], 3, "{first}");
    assert_eq!(first["keys_before"], 4, "{first}");
    assert_eq!(counts(&first), [1, 1, 1, 2, 0], "{first}");
    let mut changes: Vec<(String, String)> = first["changes"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| {
            (
                c["key"].as_str().unwrap().into(),
                c["action"].as_str().unwrap().into(),
            )
        })
        .collect();
    changes.sort();
    assert_eq!(
        changes,
        [
            ("conversation.c1.u2", "restored"),
            ("job.j1.u4", "updated"),
            ("junk", "removed"),
            ("project.p1.u3", "removed"),
        ]
        .map(|(k, a)| (k.to_string(), a.to_string()))
    );

    assert_eq!(
        value(&kv, "project.p1.u1").await,
        Some(json!({"role": "owner"}))
    );
    assert_eq!(
        value(&kv, "conversation.c1.u2").await,
        Some(json!({"role": "member"}))
    );
    assert_eq!(
        value(&kv, "job.j1.u4").await,
        Some(json!({"role": "contractor"}))
    );
    for gone in ["project.p1.u3", "junk", "project.p9.u9"] {
        assert_eq!(value(&kv, gone).await, None, "{gone}");
    }

    // A second run finds nothing to do; the human form says so.
    let again = switchboard(&nats, &database_url, &["members", "rebuild"]);
    assert!(again.status.success());
    let text = String::from_utf8_lossy(&again.stdout);
    assert!(
        text.contains(
            "from 3 active rows (3 keys before): 0 restored, 0 updated, 3 unchanged, 0 removed"
        ),
        "{text}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn members_rebuild_says_what_is_missing() {
    let nats = Nats::start().unwrap();
    let pg = Postgres::start().unwrap();
    let migrated = pg.database().await.unwrap();
    let unmigrated = pg.empty_database().await.unwrap();
    let nowhere = format!("postgres://postgres@127.0.0.1:{}/none", free_port());

    let stderr = |output: Output| {
        assert!(!output.status.success());
        String::from_utf8_lossy(&output.stderr).into_owned()
    };
    let rebuild = ["members", "rebuild"];

    let no_bucket = stderr(switchboard(&nats, &migrated, &rebuild));
    assert!(no_bucket.contains("switchboard init"), "{no_bucket}");

    bucket(&nats).await;
    let no_db = stderr(switchboard(&nats, &nowhere, &rebuild));
    assert!(no_db.contains("cannot connect to PostgreSQL"), "{no_db}");
    let no_table = stderr(switchboard(&nats, &unmigrated, &rebuild));
    assert!(no_table.contains("switchboard migrate"), "{no_table}");
}
