//! The outbox relay as a process (`SWITCHBOARD_WORKERS=outbox`), against a real
//! nats-server and PostgreSQL: rows go in through `switchboard.emit(...)` in the test's
//! own transactions; the tests read the `EVENTS` stream back and count its messages.

mod support;

use std::collections::HashSet;
use std::time::Duration;

use serde_json::{Value, json};
use sqlx::{Connection, PgConnection};
use switchboard_bus::EVENTS_STREAM;

use support::{Setup, Worker, eventually, setup, stored, stream_messages, wait_until_sent};

const EXAMPLE_TRIGGER: &str = include_str!("../sql/example_project_update_trigger.sql");

fn relay(setup: &Setup, env: &[(&str, String)]) -> Worker {
    Worker::start(setup, "outbox", env)
}

/// Emits `count` `project.update` events in one transaction, over five channels; their
/// event ids in emit order.
async fn emit_many(setup: &Setup, count: i32) -> Vec<String> {
    sqlx::query_scalar(
        "SELECT switchboard.emit('project:p' || (i % 5), 'project.update', jsonb_build_object('i', i))
           FROM generate_series(1, $1) AS i",
    )
    .bind(count)
    .fetch_all(&setup.db)
    .await
    .unwrap()
}

async fn rows(setup: &Setup, condition: &'static str) -> i64 {
    let query = match condition {
        "all" => "SELECT count(*) FROM switchboard.outbox",
        "sent" => "SELECT count(*) FROM switchboard.outbox WHERE sent_at IS NOT NULL",
        "failed" => "SELECT count(*) FROM switchboard.outbox WHERE failed_at IS NOT NULL",
        _ => unreachable!("unknown condition {condition}"),
    };
    sqlx::query_scalar(query)
        .fetch_one(&setup.db)
        .await
        .unwrap()
}

/// The event ids of the outbox, in `seq` order.
async fn outbox_order(setup: &Setup) -> Vec<String> {
    sqlx::query_scalar(
        "SELECT event_id FROM switchboard.outbox WHERE failed_at IS NULL ORDER BY seq",
    )
    .fetch_all(&setup.db)
    .await
    .unwrap()
}

/// The event ids in the stream, in stream order, checking each is there once.
async fn stream_order(setup: &Setup) -> Vec<String> {
    let ids: Vec<String> = stored(setup, "rt.>")
        .await
        .into_iter()
        .map(|(_, _, envelope)| envelope.id.to_string())
        .collect();
    let distinct: HashSet<&String> = ids.iter().collect();
    assert_eq!(distinct.len(), ids.len(), "an event id is stored twice");
    ids
}

/// A relay leads once it holds the advisory lock, and hears `pg_notify` once its
/// listener has run `LISTEN`.
async fn wait_until_leading(setup: &Setup) {
    eventually("a relay to lead and listen", || async {
        let (held, listening): (i64, i64) = sqlx::query_as(
            "SELECT (SELECT count(*) FROM pg_locks JOIN pg_stat_activity USING (pid)
                      WHERE locktype = 'advisory' AND granted
                        AND application_name = 'switchboard-outbox-relay'),
                    (SELECT count(*) FROM pg_stat_activity
                      WHERE application_name = 'switchboard-outbox-relay' AND query LIKE 'LISTEN %')",
        )
        .fetch_one(&setup.db)
        .await
        .unwrap();
        (held == 1 && listening >= 1).then_some(())
    })
    .await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_row_committed_while_the_relay_is_down_is_published_after_it_starts() {
    let setup = setup().await;
    let mut tx = setup.db.begin().await.unwrap();
    let committed: String = sqlx::query_scalar(
        "SELECT switchboard.emit('project:p1', 'bid.update', $1::jsonb, $2::jsonb)",
    )
    .bind(json!({"bidId": "bid_1", "status": "accepted"}).to_string())
    .bind(json!({"id": "user_456", "type": "contractor"}).to_string())
    .fetch_one(&mut *tx)
    .await
    .unwrap();
    tx.commit().await.unwrap();

    let mut rolled_back = setup.db.begin().await.unwrap();
    let _: String = sqlx::query_scalar("SELECT switchboard.emit('project:p1', 'bid.new', '{}')")
        .fetch_one(&mut *rolled_back)
        .await
        .unwrap();
    rolled_back.rollback().await.unwrap();

    // Emitting an existing event id again inserts nothing and returns it.
    let again: String =
        sqlx::query_scalar("SELECT switchboard.emit('project:p1', 'bid.update', '{}', NULL, $1)")
            .bind(&committed)
            .fetch_one(&setup.db)
            .await
            .unwrap();
    assert_eq!(again, committed);
    assert_eq!(rows(&setup, "all").await, 1);

    let _relay = relay(&setup, &[]);
    wait_until_sent(&setup, support::DEADLINE).await;
    let events = stored(&setup, "rt.>").await;
    assert_eq!(events.len(), 1, "the rolled-back row published nothing");
    let (_, subject, envelope) = &events[0];
    assert_eq!(subject, "rt.project.p1");
    assert_eq!(envelope.id.as_str(), committed);
    assert_eq!(envelope.ty.as_str(), "bid.update");
    let data: Value = envelope.data.decode().unwrap();
    assert_eq!(data, json!({"bidId": "bid_1", "status": "accepted"}));
    let actor = envelope.actor.as_ref().unwrap();
    assert_eq!(
        (actor.id.as_str(), actor.kind.as_str()),
        ("user_456", "contractor")
    );
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(stream_messages(&setup).await, 1);
}

#[tokio::test(flavor = "multi_thread")]
async fn bad_input_fails_the_callers_transaction_and_bad_rows_never_block() {
    let setup = setup().await;
    for (actor, data) in [
        (json!({"id": "user_456"}), json!({})),
        (json!("user_456"), json!({})),
        (Value::Null, json!({"blob": "x".repeat(1_000_001)})),
    ] {
        let actor = (!actor.is_null()).then(|| actor.to_string());
        let error = sqlx::query_scalar::<_, String>(
            "SELECT switchboard.emit('project:p1', 'bid.new', $1::jsonb, $2::jsonb)",
        )
        .bind(data.to_string())
        .bind(actor)
        .fetch_one(&setup.db)
        .await
        .unwrap_err();
        let code = error.as_database_error().and_then(|e| e.code()).unwrap();
        assert_eq!(code, "22023", "invalid_parameter_value: {error}");
    }

    // Rows written around switchboard.emit: one the relay can never publish, one good.
    sqlx::query(
        "INSERT INTO switchboard.outbox (event_id, channel, type, data, actor)
         VALUES ('evt_hand_1', 'project:p1', 'bid.new', '{}', '{\"id\":\"u1\"}'),
                ('evt_hand_2', 'project:p1', 'bid.new', '{}', NULL)",
    )
    .execute(&setup.db)
    .await
    .unwrap();
    let _relay = relay(&setup, &[]);
    wait_until_sent(&setup, support::DEADLINE).await;
    let error: String = sqlx::query_scalar(
        "SELECT error FROM switchboard.outbox WHERE event_id = 'evt_hand_1' AND failed_at IS NOT NULL",
    )
    .fetch_one(&setup.db)
    .await
    .unwrap();
    assert!(error.contains("actor"), "{error}");
    assert_eq!(stream_order(&setup).await, ["evt_hand_2"]);
}

#[tokio::test(flavor = "multi_thread")]
async fn killing_the_relay_mid_batch_duplicates_nothing() {
    let setup = setup().await;
    let emitted = emit_many(&setup, 6_000).await;
    let mut caught_mid_batch = false;
    for _ in 0..5 {
        let worker = relay(&setup, &[("SWITCHBOARD_OUTBOX_BATCH", "500".into())]);
        let before = stream_messages(&setup).await;
        eventually("the relay to publish some rows", || async {
            (stream_messages(&setup).await >= before + 300).then_some(())
        })
        .await;
        worker.kill().await;
        let (published, sent) = (stream_messages(&setup).await, rows(&setup, "sent").await);
        assert!(published >= sent as u64);
        if published > sent as u64 {
            // Published but not marked sent: the next relay publishes them again.
            caught_mid_batch = true;
            break;
        }
    }
    assert!(
        caught_mid_batch,
        "the relay was never killed between publish and mark"
    );

    let (published, sent) = (stream_messages(&setup).await, rows(&setup, "sent").await);

    let _relay = relay(&setup, &[("SWITCHBOARD_OUTBOX_BATCH", "500".into())]);
    wait_until_sent(&setup, Duration::from_secs(60)).await;
    assert_eq!(stream_messages(&setup).await, emitted.len() as u64);
    assert_eq!(stream_order(&setup).await, emitted);
    println!(
        "outbox relay killed mid-batch: {} rows, killed with {published} published and {sent} \
         marked sent; after a restart {} events in the stream, each once, in seq order",
        emitted.len(),
        emitted.len()
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn ten_thousand_rows_drain_in_seq_order() {
    let setup = setup().await;
    let mut emitted = Vec::new();
    for _ in 0..10 {
        emitted.extend(emit_many(&setup, 1_000).await);
    }
    assert_eq!(outbox_order(&setup).await, emitted);

    let _relay = relay(&setup, &[]);
    wait_until_sent(&setup, Duration::from_secs(120)).await;
    assert_eq!(stream_messages(&setup).await, 10_000);
    assert_eq!(stream_order(&setup).await, emitted);
}

#[tokio::test(flavor = "multi_thread")]
async fn several_relays_never_publish_a_row_twice() {
    let setup = setup().await;
    let fast = || [("SWITCHBOARD_OUTBOX_POLL_MS", "100".to_string())];
    let mut relays: Vec<Worker> = (0..3).map(|_| relay(&setup, &fast())).collect();
    wait_until_leading(&setup).await;
    let mut emitted = Vec::new();
    for round in 0..12 {
        emitted.extend(emit_many(&setup, 250).await);
        match round {
            // The leader's PostgreSQL session dies mid-stream: it loses the lock, a standby
            // takes over, and whatever both publish is deduplicated.
            3 | 7 => {
                sqlx::query(
                    "SELECT pg_terminate_backend(pid) FROM pg_locks JOIN pg_stat_activity USING (pid)
                      WHERE locktype = 'advisory' AND granted
                        AND application_name = 'switchboard-outbox-relay'",
                )
                .execute(&setup.db)
                .await
                .unwrap();
            }
            // A copy dies outright (the leader or not).
            5 => relays.remove(0).kill().await,
            _ => {}
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    wait_until_sent(&setup, Duration::from_secs(60)).await;
    assert_eq!(stream_messages(&setup).await, emitted.len() as u64);
    assert_eq!(stream_order(&setup).await, emitted);
}

#[tokio::test(flavor = "multi_thread")]
async fn the_relay_survives_postgres_and_nats_restarts() {
    let mut setup = setup().await;
    let mut relay = relay(&setup, &[]);
    let mut emitted = emit_many(&setup, 10).await;
    wait_until_sent(&setup, support::DEADLINE).await;

    setup.pg.stop();
    tokio::time::sleep(Duration::from_secs(1)).await;
    setup.pg.start_again().unwrap();
    // The test's own pool reconnects too.
    emitted.extend(
        eventually("PostgreSQL to accept emits again", || async {
            let ids: Result<Vec<String>, _> = sqlx::query_scalar(
                "SELECT switchboard.emit('project:p1', 'project.update', '{}') FROM generate_series(1, 10)",
            )
            .fetch_all(&setup.db)
            .await;
            ids.ok()
        })
        .await,
    );
    wait_until_sent(&setup, Duration::from_secs(30)).await;

    setup.nats.stop();
    emitted.extend(emit_many(&setup, 10).await);
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert!(
        rows(&setup, "sent").await < 30,
        "nothing is marked sent while NATS is down"
    );
    setup.nats.start_again().unwrap();
    wait_until_sent(&setup, Duration::from_secs(30)).await;
    assert_eq!(stream_messages(&setup).await, 30);
    assert_eq!(stream_order(&setup).await, emitted);
    assert!(relay.is_running(), "the relay waits outages out");
    println!(
        "outbox relay across PostgreSQL and NATS restarts: 30 rows emitted (10 before, 10 \
         after a PostgreSQL restart, 10 while NATS was down), none marked sent while NATS \
         was down, 30 events in the stream, each once, in emit order; the relay kept running"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn the_relay_wakes_on_notify_and_also_polls() {
    let setup = setup().await;
    // Polling every ten minutes: only a notification can wake this one.
    let sleepy = relay(&setup, &[("SWITCHBOARD_OUTBOX_POLL_MS", "600000".into())]);
    wait_until_leading(&setup).await;
    emit_many(&setup, 1).await;
    wait_until_sent(&setup, Duration::from_secs(5)).await;

    // A row inserted without pg_notify waits for a poll that does not come.
    let insert = |id: &'static str| {
        let setup = &setup;
        async move {
            sqlx::query(
                "INSERT INTO switchboard.outbox (event_id, channel, type) VALUES ($1, 'project:p1', 'project.update')",
            )
            .bind(id)
            .execute(&setup.db)
            .await
            .unwrap();
        }
    };
    insert("evt_quiet_1").await;
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert_eq!(rows(&setup, "sent").await, 1);
    assert!(sleepy.terminate().await.success());

    let _polling = relay(&setup, &[("SWITCHBOARD_OUTBOX_POLL_MS", "200".into())]);
    wait_until_sent(&setup, Duration::from_secs(10)).await;
    wait_until_leading(&setup).await;
    insert("evt_quiet_2").await;
    wait_until_sent(&setup, Duration::from_secs(5)).await;
    assert_eq!(stream_messages(&setup).await, 3);
}

#[tokio::test(flavor = "multi_thread")]
async fn the_example_trigger_emits_project_update_with_the_change() {
    let setup = setup().await;
    let mut conn = PgConnection::connect(&setup.database_url).await.unwrap();
    sqlx::raw_sql("CREATE TABLE projects (id text PRIMARY KEY, title text, status text)")
        .execute(&mut conn)
        .await
        .unwrap();
    sqlx::raw_sql(EXAMPLE_TRIGGER)
        .execute(&mut conn)
        .await
        .unwrap();
    let _relay = relay(&setup, &[]);

    let mut tx = conn.begin().await.unwrap();
    sqlx::query("SET LOCAL switchboard.actor = '{\"id\":\"user_456\",\"type\":\"homeowner\"}'")
        .execute(&mut *tx)
        .await
        .unwrap();
    sqlx::query("INSERT INTO projects VALUES ('p7', 'Kitchen', 'open')")
        .execute(&mut *tx)
        .await
        .unwrap();
    tx.commit().await.unwrap();
    sqlx::query("UPDATE projects SET status = 'awarded' WHERE id = 'p7'")
        .execute(&mut conn)
        .await
        .unwrap();
    // Not a change: no event. A rolled-back change: no event.
    sqlx::query("UPDATE projects SET status = 'awarded' WHERE id = 'p7'")
        .execute(&mut conn)
        .await
        .unwrap();
    let mut tx = conn.begin().await.unwrap();
    sqlx::query("UPDATE projects SET status = 'closed' WHERE id = 'p7'")
        .execute(&mut *tx)
        .await
        .unwrap();
    tx.rollback().await.unwrap();

    wait_until_sent(&setup, support::DEADLINE).await;
    let events = stored(&setup, "rt.project.p7").await;
    assert_eq!(events.len(), 2, "{events:?}");
    let data: Vec<Value> = events
        .iter()
        .map(|(_, _, envelope)| envelope.data.decode().unwrap())
        .collect();
    assert_eq!(
        data[0],
        json!({"op": "insert", "project": {"id": "p7", "title": "Kitchen", "status": "open"}})
    );
    assert_eq!(
        data[1],
        json!({"op": "update", "project": {"id": "p7", "title": "Kitchen", "status": "awarded"}})
    );
    assert_eq!(events[0].2.ty.as_str(), "project.update");
    assert_eq!(events[0].2.actor.as_ref().unwrap().kind, "homeowner");
    assert!(events[1].2.actor.is_none());
    let info = setup
        .js
        .get_stream(EVENTS_STREAM)
        .await
        .unwrap()
        .info()
        .await
        .unwrap()
        .state
        .messages;
    assert_eq!(info, 2);
}
