//! The presence worker as a process, against a real nats-server and PostgreSQL. No edge
//! is needed: the tests write connection entries into the KV bucket `presence` exactly
//! as edges do (`$KV.presence.<user>.<conn>` with a `Nats-TTL` header, deleted on clean
//! close, left to expire when an edge dies) and read the `user.presence` events stored on
//! `presence:<user>`, the rows in PostgreSQL and the answers of the privacy RPCs.

mod support;

use std::time::{Duration, Instant};

use async_nats::HeaderMap;
use async_nats::jetstream::{kv, message::PublishMessage};
use futures_util::StreamExt;
use serde_json::{Value, json};
use switchboard_bus::{PRESENCE_BUCKET, headers};
use switchboard_schemas::{Actor, Timestamp};

use support::{
    Setup, Worker, channel, event, eventually, eventually_within, request, rpc, setup, stored,
};

/// The TTL of entries that are not meant to expire during a test.
const LONG_TTL: u64 = 120;

/// Writes (or refreshes) a connection's entry as an edge does; its revision.
async fn put(setup: &Setup, key: &str, status: &str, text: Option<&str>, ttl_secs: u64) -> u64 {
    let (user, conn) = key.split_once('.').unwrap();
    let value = json!({
        "user": user,
        "conn": conn,
        "device": "d1",
        "status": status,
        "text": text,
        "edge": "edge-test",
        "at": 1_795_000_000_000u64,
    });
    let mut entry_headers = HeaderMap::new();
    entry_headers.insert(headers::NATS_TTL, ttl_secs.to_string().as_str());
    let message = PublishMessage::build()
        .payload(value.to_string().into())
        .headers(entry_headers);
    // Retried while the client reconnects after a NATS restart.
    eventually(&format!("{key} to be written"), || async {
        let ack = setup
            .js
            .send_publish(format!("$KV.{PRESENCE_BUCKET}.{key}"), message.clone())
            .await
            .ok()?;
        Some(ack.await.ok()?.sequence)
    })
    .await
}

/// A connection closed cleanly: its entry deleted.
async fn close(setup: &Setup, key: &str) {
    setup.presence.delete(key).await.unwrap();
}

/// The `data` of every `user.presence` stored on `presence:<user>`, oldest first.
async fn events(setup: &Setup, user: &str) -> Vec<Value> {
    stored(setup, &format!("rt.presence.{user}"))
        .await
        .into_iter()
        .map(|(_, _, event)| {
            assert_eq!(event.ty.as_str(), "user.presence");
            assert_eq!(event.actor.unwrap().id, user);
            let data: Value = serde_json::from_str(event.data.as_str()).unwrap();
            assert_eq!(data["user"], user);
            data
        })
        .collect()
}

/// Waits for the `count`th event on `presence:<user>` and returns it.
async fn nth_event(setup: &Setup, user: &str, count: usize) -> Value {
    eventually(&format!("event {count} on presence:{user}"), || async {
        events(setup, user).await.get(count - 1).cloned()
    })
    .await
}

/// (status, devices, text) of an event.
fn summary(data: &Value) -> (&str, u64, Option<&str>) {
    (
        data["status"].as_str().unwrap(),
        data["devices"].as_u64().unwrap(),
        data["text"].as_str(),
    )
}

fn last_seen(data: &Value) -> Option<Timestamp> {
    data.get("lastSeen")
        .and_then(Value::as_str)
        .map(|text| Timestamp::parse(text).unwrap())
}

/// (last_seen as unix microseconds, status) of a user's row in
/// `switchboard.presence_state`, once they went offline.
async fn last_seen_row(setup: &Setup, user: &str) -> Option<(i64, String)> {
    sqlx::query_as(
        "SELECT (extract(epoch FROM last_seen) * 1000000)::bigint, status
           FROM switchboard.presence_state WHERE user_id = $1 AND last_seen IS NOT NULL",
    )
    .bind(user)
    .fetch_optional(&setup.db)
    .await
    .unwrap()
}

/// Waits for the last-seen `micros` to be written (at most a second after it was
/// published); the row's status then.
async fn saved_last_seen(setup: &Setup, user: &str, micros: i64) -> String {
    eventually("last-seen written", || async {
        last_seen_row(setup, user)
            .await
            .and_then(|(stored, status)| (stored == micros).then_some(status))
    })
    .await
}

fn micros(timestamp: Timestamp) -> i64 {
    (timestamp.unix_nanos() / 1000) as i64
}

/// Lets the workers settle, then checks `user` got exactly `count` events.
async fn assert_no_more_events(setup: &Setup, user: &str, count: usize) {
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let all = events(setup, user).await;
    assert_eq!(all.len(), count, "presence:{user}: {all:#?}");
}

/// Waits until a presence worker answers RPCs: it has started.
async fn wait_for_worker(setup: &Setup) {
    rpc(setup, "presence.privacy.get", Some("probe"), json!({})).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn devices_come_and_go_and_last_seen_is_stored() {
    let setup = setup().await;
    let worker = Worker::start(&setup, "presence", &[]);

    put(&setup, "u1.c1", "online", None, LONG_TTL).await;
    let first = nth_event(&setup, "u1", 1).await;
    assert_eq!(summary(&first), ("online", 1, None));
    assert_eq!(last_seen(&first), None, "never seen before");

    put(&setup, "u1.c2", "online", None, LONG_TTL).await;
    assert_eq!(
        summary(&nth_event(&setup, "u1", 2).await),
        ("online", 2, None)
    );
    // A refresh (the heartbeat rewriting the entry) is no change.
    put(&setup, "u1.c1", "online", None, LONG_TTL).await;

    close(&setup, "u1.c1").await;
    assert_eq!(
        summary(&nth_event(&setup, "u1", 3).await),
        ("online", 1, None)
    );
    close(&setup, "u1.c2").await;
    let offline = nth_event(&setup, "u1", 4).await;
    assert_eq!(summary(&offline), ("offline", 0, None));
    let seen = last_seen(&offline).expect("offline carries lastSeen");
    let age = Timestamp::now().unix_nanos() - seen.unix_nanos();
    assert!(
        (0..10_000_000_000).contains(&age),
        "lastSeen is recent: {seen}"
    );
    assert_eq!(saved_last_seen(&setup, "u1", micros(seen)).await, "offline");
    assert_no_more_events(&setup, "u1", 4).await;

    // Back online: lastSeen is the stored one until the next time they leave.
    put(&setup, "u1.c3", "online", None, LONG_TTL).await;
    let back = nth_event(&setup, "u1", 5).await;
    assert_eq!(summary(&back), ("online", 1, None));
    assert_eq!(last_seen(&back).map(micros), Some(micros(seen)));

    let status = worker.terminate().await;
    assert!(
        status.success(),
        "SIGTERM stops the worker cleanly: {status}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn the_watch_survives_a_nats_restart() {
    let mut setup = setup().await;
    let _worker = Worker::start(&setup, "presence", &[]);
    put(&setup, "u1.c1", "online", None, LONG_TTL).await;
    assert_eq!(
        summary(&nth_event(&setup, "u1", 1).await),
        ("online", 1, None)
    );

    setup.nats.stop();
    setup.nats.start_again().unwrap();
    put(&setup, "u1.c2", "busy", None, LONG_TTL).await;
    assert_eq!(
        summary(&nth_event(&setup, "u1", 2).await),
        ("busy", 2, None)
    );
    close(&setup, "u1.c2").await;
    close(&setup, "u1.c1").await;
    let offline = nth_event(&setup, "u1", 4).await;
    assert_eq!(summary(&offline), ("offline", 0, None));
    assert_no_more_events(&setup, "u1", 4).await;
}

/// How PostgreSQL goes away in [`presence_goes_on_while_postgresql_is_away`].
enum Away {
    /// Killed: connections refused.
    Down,
    /// Stopped (SIGSTOP): connections open, nothing answered.
    Hung,
}

#[tokio::test(flavor = "multi_thread")]
async fn presence_goes_on_while_postgresql_is_down_and_is_written_when_it_returns() {
    presence_goes_on_while_postgresql_is_away(Away::Down).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn presence_goes_on_while_postgresql_hangs_and_is_written_when_it_answers() {
    presence_goes_on_while_postgresql_is_away(Away::Hung).await;
}

async fn presence_goes_on_while_postgresql_is_away(away: Away) {
    let mut setup = setup().await;
    let _worker = Worker::start(&setup, "presence", &[]);
    put(&setup, "u1.c1", "online", None, LONG_TTL).await;
    nth_event(&setup, "u1", 1).await;
    close(&setup, "u1.c1").await;
    let seen = last_seen(&nth_event(&setup, "u1", 2).await).unwrap();
    saved_last_seen(&setup, "u1", micros(seen)).await;

    match away {
        Away::Down => setup.pg.stop(),
        Away::Hung => setup.pg.pause(),
    }
    // Every change is still told at once (when PostgreSQL hangs, the first waits until
    // its last-seen read is given up, 2 s). Who went offline carries their own lastSeen;
    // who comes back carries it when this worker recorded it itself, and goes without
    // it when only PostgreSQL knows it.
    put(&setup, "u2.c1", "online", None, LONG_TTL).await;
    assert_eq!(
        summary(&nth_event(&setup, "u2", 1).await),
        ("online", 1, None)
    );
    close(&setup, "u2.c1").await;
    let u2_offline = nth_event(&setup, "u2", 2).await;
    assert_eq!(summary(&u2_offline), ("offline", 0, None));
    let u2_seen = last_seen(&u2_offline).expect("offline carries lastSeen");
    put(&setup, "u2.c2", "busy", None, LONG_TTL).await;
    let u2_back = nth_event(&setup, "u2", 3).await;
    assert_eq!(summary(&u2_back), ("busy", 1, None));
    assert_eq!(last_seen(&u2_back).map(micros), Some(micros(u2_seen)));
    put(&setup, "u1.c2", "online", None, LONG_TTL).await;
    let u1_back = nth_event(&setup, "u1", 3).await;
    assert_eq!(summary(&u1_back), ("online", 1, None));
    assert_eq!(last_seen(&u1_back), None, "only PostgreSQL knows it");

    // Back: what was published meanwhile is written.
    match away {
        Away::Down => setup.pg.start_again().unwrap(),
        Away::Hung => setup.pg.resume(),
    }
    let row = |user: &'static str| {
        let db = setup.db.clone();
        async move {
            // The test's own pool reconnects too: a query may fail at first.
            sqlx::query_as::<_, (String, Option<i64>)>(
                "SELECT status, (extract(epoch FROM last_seen) * 1000000)::bigint
                   FROM switchboard.presence_state WHERE user_id = $1",
            )
            .bind(user)
            .fetch_optional(&db)
            .await
            .ok()
            .flatten()
        }
    };
    eventually_within(Duration::from_secs(60), "u2's row", || async {
        row("u2")
            .await
            .filter(|(status, at)| status == "busy" && *at == Some(micros(u2_seen)))
    })
    .await;
    eventually_within(Duration::from_secs(60), "u1's row", || async {
        row("u1")
            .await
            .filter(|(status, at)| status == "online" && *at == Some(micros(seen)))
    })
    .await;
    assert_no_more_events(&setup, "u1", 3).await;
    assert_no_more_events(&setup, "u2", 3).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn an_entry_left_to_expire_goes_offline_within_three_ttls() {
    let setup = setup().await;
    let _worker = Worker::start(&setup, "presence", &[]);
    wait_for_worker(&setup).await;

    let ttl = Duration::from_secs(2);
    let written = Instant::now();
    put(&setup, "u1.c1", "busy", Some("On site"), ttl.as_secs()).await;
    assert_eq!(
        summary(&nth_event(&setup, "u1", 1).await),
        ("busy", 1, Some("On site"))
    );
    // No refresh and no delete: the edge holding the connection died.
    let offline = nth_event(&setup, "u1", 2).await;
    let elapsed = written.elapsed();
    assert_eq!(summary(&offline), ("offline", 0, None));
    assert!(elapsed >= ttl, "not before the TTL ran out: {elapsed:?}");
    assert!(elapsed <= ttl * 3, "offline within three TTLs: {elapsed:?}");
    let seen = last_seen(&offline).unwrap();
    saved_last_seen(&setup, "u1", micros(seen)).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn busy_beats_online_beats_away_and_invisible_looks_offline() {
    let setup = setup().await;
    let _worker = Worker::start(&setup, "presence", &[]);
    wait_for_worker(&setup).await;

    // Invisible alone: nothing to tell anyone.
    put(&setup, "u1.c1", "invisible", Some("Hiding"), LONG_TTL).await;
    put(&setup, "u1.c2", "away", None, LONG_TTL).await;
    assert_eq!(
        summary(&nth_event(&setup, "u1", 1).await),
        ("away", 1, None)
    );
    put(&setup, "u1.c3", "online", Some("On site"), LONG_TTL).await;
    assert_eq!(
        summary(&nth_event(&setup, "u1", 2).await),
        ("online", 2, Some("On site"))
    );
    put(&setup, "u1.c2", "busy", None, LONG_TTL).await;
    assert_eq!(
        summary(&nth_event(&setup, "u1", 3).await),
        ("busy", 2, Some("On site"))
    );
    put(&setup, "u1.c3", "invisible", Some("On site"), LONG_TTL).await;
    assert_eq!(
        summary(&nth_event(&setup, "u1", 4).await),
        ("busy", 1, None)
    );
    put(&setup, "u1.c2", "invisible", None, LONG_TTL).await;
    let hidden = nth_event(&setup, "u1", 5).await;
    assert_eq!(summary(&hidden), ("offline", 0, None));
    assert!(last_seen(&hidden).is_some());

    // A user invisible on every device never appears.
    put(&setup, "u2.c1", "invisible", None, LONG_TTL).await;
    put(&setup, "u2.c2", "invisible", Some("x"), LONG_TTL).await;
    close(&setup, "u2.c1").await;
    assert_no_more_events(&setup, "u1", 5).await;
    assert!(events(&setup, "u2").await.is_empty());
}

#[tokio::test(flavor = "multi_thread")]
async fn a_restart_emits_no_false_transition_but_reports_who_left_meanwhile() {
    let setup = setup().await;
    let first = Worker::start(&setup, "presence", &[]);
    put(&setup, "stays.c1", "online", None, LONG_TTL).await;
    put(&setup, "stays.c2", "online", Some("Hi"), LONG_TTL).await;
    put(&setup, "closes.c1", "busy", Some("Call"), LONG_TTL).await;
    eventually("everyone to be published", || async {
        let stays = events(&setup, "stays").await;
        let settled = stays
            .last()
            .is_some_and(|data| summary(data) == ("online", 2, Some("Hi")));
        (settled && events(&setup, "closes").await.len() == 1).then_some(())
    })
    .await;
    let stays_before = events(&setup, "stays").await.len();
    // Its edge dies with the worker: nobody refreshes the entry.
    put(&setup, "expires.c1", "away", None, 2).await;
    nth_event(&setup, "expires", 1).await;
    first.kill().await;
    assert_eq!(events(&setup, "expires").await.len(), 1);

    // While no worker watches: one user closes, one expires, one arrives, one refreshes.
    close(&setup, "closes.c1").await;
    put(&setup, "arrives.c1", "online", None, LONG_TTL).await;
    put(&setup, "stays.c1", "online", None, LONG_TTL).await;
    eventually("the entry to expire", || async {
        setup
            .presence
            .entry("expires.c1")
            .await
            .unwrap()
            .is_some_and(|entry| entry.operation == kv::Operation::Purge)
            .then_some(())
    })
    .await;

    let _second = Worker::start(&setup, "presence", &[]);
    assert_eq!(
        summary(&nth_event(&setup, "closes", 2).await),
        ("offline", 0, None)
    );
    assert_eq!(
        summary(&nth_event(&setup, "expires", 2).await),
        ("offline", 0, None)
    );
    assert_eq!(
        summary(&nth_event(&setup, "arrives", 1).await),
        ("online", 1, None)
    );
    for user in ["closes", "expires"] {
        let seen = last_seen(&nth_event(&setup, user, 2).await).unwrap();
        saved_last_seen(&setup, user, micros(seen)).await;
    }
    assert_no_more_events(&setup, "stays", stays_before).await;

    // And it follows the bucket from there.
    close(&setup, "stays.c1").await;
    let fewer = nth_event(&setup, "stays", stays_before + 1).await;
    assert_eq!(summary(&fewer), ("online", 1, Some("Hi")));
}

/// What a worker killed after publishing transitions and before writing them leaves
/// behind: the events in the stream, no rows. The next start reads them back: a user
/// still connected gets nothing more, one whose connection is gone meanwhile gets their
/// `offline`, and both rows are written.
#[tokio::test(flavor = "multi_thread")]
async fn events_published_but_not_written_before_a_crash_are_read_back_at_start() {
    let setup = setup().await;
    put(&setup, "stays.c1", "online", None, LONG_TTL).await;
    let mut seqs = Vec::new();
    for user in ["ghost", "stays"] {
        let data = json!({"user": user, "status": "online", "devices": 1});
        let mut event = event("user.presence", data);
        event.actor = Some(Actor {
            id: user.into(),
            kind: "user".into(),
        });
        let channel = channel(&format!("presence:{user}"));
        seqs.push(setup.publisher.publish(&channel, &event).await.unwrap().seq);
    }

    let _worker = Worker::start(&setup, "presence", &[]);
    // Watchers were told "online"; the bucket has nothing of the user: offline.
    let offline = nth_event(&setup, "ghost", 2).await;
    assert_eq!(summary(&offline), ("offline", 0, None));
    let seen = last_seen(&offline).unwrap();
    assert_eq!(
        saved_last_seen(&setup, "ghost", micros(seen)).await,
        "offline"
    );
    // The one still connected was told already: written as the stream has it.
    let row = eventually("the read-back event written", || async {
        sqlx::query_as::<_, (String, i64)>(
            "SELECT status, seq FROM switchboard.presence_state WHERE user_id = 'stays'",
        )
        .fetch_optional(&setup.db)
        .await
        .unwrap()
    })
    .await;
    assert_eq!(row, ("online".to_string(), seqs[1] as i64));
    assert_no_more_events(&setup, "stays", 1).await;
    assert_no_more_events(&setup, "ghost", 2).await;
}

/// Until it is written, what was published is what `presence.get` answers; a worker
/// killed before writing leaves it to the next start, which writes it without telling
/// watchers again.
#[tokio::test(flavor = "multi_thread")]
async fn what_is_published_is_answered_before_it_is_written_and_survives_a_kill() {
    let setup = setup().await;
    let hour = ("SWITCHBOARD_PRESENCE_SAVE_MS", "3600000".to_string());
    let first = Worker::start(&setup, "presence", &[hour]);
    wait_for_worker(&setup).await;
    put(&setup, "u1.c1", "busy", Some("On site"), LONG_TTL).await;
    nth_event(&setup, "u1", 1).await;
    let answer = presence_get(&setup, Some("u1"), json!({"users": ["u1"]})).await;
    assert_eq!(
        answer["result"]["presence"],
        json!([{"user": "u1", "status": "busy", "devices": 1, "text": "On site"}]),
        "{answer}"
    );
    let row = || async {
        sqlx::query_as::<_, (String, i64)>(
            "SELECT status, seq FROM switchboard.presence_state WHERE user_id = 'u1'",
        )
        .fetch_optional(&setup.db)
        .await
        .unwrap()
    };
    assert_eq!(row().await, None, "not written yet");
    first.kill().await;

    let _second = Worker::start(&setup, "presence", &[]);
    let stored = setup.store.forward("rt.presence.u1", 1, 10).await.unwrap();
    let written = eventually("the event written by the next start", row).await;
    assert_eq!(written, ("busy".to_string(), stored[0].seq as i64));
    assert_no_more_events(&setup, "u1", 1).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn two_workers_publish_each_change_once() {
    let setup = setup().await;
    let _first = Worker::start(&setup, "presence", &[]);
    let _second = Worker::start(&setup, "presence", &[]);
    wait_for_worker(&setup).await;

    put(&setup, "u1.c1", "online", None, LONG_TTL).await;
    nth_event(&setup, "u1", 1).await;
    put(&setup, "u1.c2", "away", None, LONG_TTL).await;
    nth_event(&setup, "u1", 2).await;
    close(&setup, "u1.c1").await;
    nth_event(&setup, "u1", 3).await;
    close(&setup, "u1.c2").await;
    nth_event(&setup, "u1", 4).await;
    assert_no_more_events(&setup, "u1", 4).await;
    let all = events(&setup, "u1").await;
    let summaries: Vec<_> = all.iter().map(summary).collect();
    assert_eq!(
        summaries,
        [
            ("online", 1, None),
            ("online", 2, None),
            ("away", 1, None),
            ("offline", 0, None)
        ]
    );
}

/// A burst of entries, written without waiting for each (as many edges do when clients
/// rush in), reaches the worker many at a time: every user who stays gets exactly one
/// `online`; one who connects and leaves inside the burst gets `online` then `offline`,
/// or nothing at all when the bucket (one value per key) already held the delete when
/// the worker read it. Never a duplicate, never a lasting wrong state.
#[tokio::test(flavor = "multi_thread")]
async fn a_burst_of_connections_leaves_every_user_right_with_no_duplicate() {
    const USERS: usize = 600;
    let setup = setup().await;
    let _worker = Worker::start(&setup, "presence", &[]);
    wait_for_worker(&setup).await;

    let entry = |user: usize| {
        let value = json!({"user": format!("b{user}"), "conn": "c1", "device": "d1",
            "status": "online", "edge": "edge-test", "at": 1_795_000_000_000u64});
        (
            format!("$KV.{PRESENCE_BUCKET}.b{user}.c1"),
            value.to_string(),
        )
    };
    // Every user comes online; every third leaves again within the same burst.
    let mut acks = Vec::new();
    for user in 0..USERS {
        let (subject, value) = entry(user);
        acks.push(setup.js.publish(subject, value.into()).await.unwrap());
    }
    for user in (0..USERS).step_by(3) {
        let mut delete = HeaderMap::new();
        delete.insert("KV-Operation", "DEL");
        let message = PublishMessage::build().headers(delete);
        let subject = format!("$KV.{PRESENCE_BUCKET}.b{user}.c1");
        acks.push(setup.js.send_publish(subject, message).await.unwrap());
    }
    for ack in acks {
        ack.await.unwrap();
    }

    // One worker handles the bucket in order: once an entry written after the burst has
    // its event, so has every change of the burst; a moment more for any duplicate.
    put(&setup, "last.c1", "online", None, LONG_TTL).await;
    nth_event(&setup, "last", 1).await;
    assert_no_more_events(&setup, "last", 1).await;
    // Written in order too: once its row is, so is every row of the burst.
    eventually("the burst written", || async {
        sqlx::query_scalar::<_, String>(
            "SELECT status FROM switchboard.presence_state WHERE user_id = 'last'",
        )
        .fetch_optional(&setup.db)
        .await
        .unwrap()
    })
    .await;
    let mut left_seen = 0;
    for user in 0..USERS {
        let name = format!("b{user}");
        let all = events(&setup, &name).await;
        let summaries: Vec<_> = all.iter().map(summary).collect();
        if user % 3 != 0 {
            assert_eq!(summaries, [("online", 1, None)], "{name}");
        } else if summaries.is_empty() {
            assert!(last_seen_row(&setup, &name).await.is_none(), "{name}");
        } else {
            assert_eq!(
                summaries,
                [("online", 1, None), ("offline", 0, None)],
                "{name}"
            );
            assert!(last_seen_row(&setup, &name).await.is_some(), "{name}");
            left_seen += 1;
        }
    }
    eprintln!(
        "{left_seen} of {} leavers were seen online first",
        USERS / 3
    );
}

/// Publishes a membership event on `channel`.
async fn member(setup: &Setup, channel_name: &str, ty: &str, user: &str) {
    let data = if ty.starts_with("member.") {
        json!({"user": user, "role": "member"})
    } else {
        json!({"user": user})
    };
    setup
        .publisher
        .publish(&channel(channel_name), &event(ty, data))
        .await
        .unwrap();
}

async fn authorize(setup: &Setup, watcher: Option<&str>, params: Value) -> Value {
    let headers: Vec<_> = watcher.map(|user| ("Rt-User", user)).into_iter().collect();
    request(setup, "int.presence.authorize", &headers, params).await
}

/// Asks `int.presence.authorize` as the edge does before a `presence:` subscription.
async fn allowed(setup: &Setup, watcher: &str, target: &str) -> bool {
    let answer = authorize(setup, Some(watcher), json!({"target": target})).await;
    answer["result"]["allowed"]
        .as_bool()
        .unwrap_or_else(|| panic!("{answer}"))
}

async fn set_visibility(setup: &Setup, user: &str, visibility: &str) {
    let answer = rpc(
        setup,
        "presence.privacy.set",
        Some(user),
        json!({"visibility": visibility}),
    )
    .await;
    assert_eq!(answer, json!({"result": {"visibility": visibility}}));
}

#[tokio::test(flavor = "multi_thread")]
async fn privacy_decides_who_may_watch() {
    let setup = setup().await;
    let _worker = Worker::start(&setup, "membership,presence", &[]);
    member(
        &setup,
        "conversation:c1",
        "conversation.participant_added",
        "u1",
    )
    .await;
    member(
        &setup,
        "conversation:c1",
        "conversation.participant_added",
        "chat",
    )
    .await;
    member(&setup, "project:p1", "member.added", "u1").await;
    member(&setup, "project:p1", "member.added", "bidder").await;
    member(&setup, "group:g1", "member.added", "u1").await;
    member(&setup, "group:g1", "member.added", "grouped").await;

    let default = rpc(&setup, "presence.privacy.get", Some("u1"), json!({})).await;
    assert_eq!(default, json!({"result": {"visibility": "contacts"}}));
    eventually("memberships to be mirrored", || async {
        (allowed(&setup, "chat", "u1").await && allowed(&setup, "bidder", "u1").await).then_some(())
    })
    .await;
    assert!(
        !allowed(&setup, "grouped", "u1").await,
        "groups are not contacts"
    );
    assert!(!allowed(&setup, "stranger", "u1").await);
    assert!(allowed(&setup, "u1", "u1").await);

    set_visibility(&setup, "u1", "everyone").await;
    let everyone = rpc(&setup, "presence.privacy.get", Some("u1"), json!({})).await;
    assert_eq!(everyone, json!({"result": {"visibility": "everyone"}}));
    assert!(allowed(&setup, "stranger", "u1").await);
    assert!(allowed(&setup, "grouped", "u1").await);

    set_visibility(&setup, "u1", "nobody").await;
    assert!(!allowed(&setup, "chat", "u1").await);
    assert!(!allowed(&setup, "bidder", "u1").await);
    assert!(
        allowed(&setup, "u1", "u1").await,
        "a user may always watch themself"
    );
    // One user's setting says nothing about another's.
    assert!(allowed(&setup, "u1", "chat").await);

    set_visibility(&setup, "u1", "contacts").await;
    assert!(allowed(&setup, "chat", "u1").await);
    member(
        &setup,
        "conversation:c1",
        "conversation.participant_removed",
        "chat",
    )
    .await;
    eventually("a removed participant to stop being a contact", || async {
        (!allowed(&setup, "chat", "u1").await).then_some(())
    })
    .await;

    for (method, params) in [
        ("presence.privacy.set", json!({"visibility": "friends"})),
        ("presence.privacy.set", json!({})),
    ] {
        let answer = rpc(&setup, method, Some("u1"), params.clone()).await;
        assert_eq!(
            answer["error"]["code"], "bad_request",
            "{method} {params}: {answer}"
        );
    }
    for params in [json!({"target": "a.b"}), json!({})] {
        let answer = authorize(&setup, Some("u1"), params.clone()).await;
        assert_eq!(answer["error"]["code"], "bad_request", "{params}: {answer}");
    }
    let anonymous = authorize(&setup, None, json!({"target": "u1"})).await;
    assert_eq!(anonymous["error"]["code"], "unauthorized");
}

/// `presence.get` as `user`: the whole reply.
async fn presence_get(setup: &Setup, user: Option<&str>, params: Value) -> Value {
    rpc(setup, "presence.get", user, params).await
}

#[tokio::test(flavor = "multi_thread")]
async fn presence_get_answers_for_the_users_the_caller_may_see() {
    let setup = setup().await;
    let _worker = Worker::start(&setup, "membership,presence", &[]);
    for user in ["u1", "pal", "hermit", "ghost", "gone", "fresh"] {
        member(
            &setup,
            "conversation:c1",
            "conversation.participant_added",
            user,
        )
        .await;
    }
    member(&setup, "project:p1", "member.added", "u1").await;
    member(&setup, "project:p1", "member.added", "bidder").await;
    wait_for_worker(&setup).await;
    set_visibility(&setup, "open", "everyone").await;
    set_visibility(&setup, "hermit", "nobody").await;

    put(&setup, "pal.c1", "online", Some("At desk"), LONG_TTL).await;
    put(&setup, "pal.c2", "away", None, LONG_TTL).await;
    put(&setup, "bidder.c1", "busy", None, LONG_TTL).await;
    put(&setup, "open.c1", "away", Some("Lunch"), LONG_TTL).await;
    put(&setup, "hermit.c1", "online", None, LONG_TTL).await;
    put(&setup, "stranger.c1", "online", None, LONG_TTL).await;
    put(&setup, "ghost.c1", "invisible", Some("hidden"), LONG_TTL).await;
    put(&setup, "gone.c1", "online", None, LONG_TTL).await;
    nth_event(&setup, "gone", 1).await;
    close(&setup, "gone.c1").await;
    let gone = nth_event(&setup, "gone", 2).await;
    // As stored: PostgreSQL keeps microseconds, the event may say more.
    let gone_seen = Timestamp::from_unix_nanos(
        i128::from(micros(last_seen(&gone).expect("offline has lastSeen"))) * 1000,
    )
    .unwrap()
    .to_string();
    assert_eq!(
        summary(&nth_event(&setup, "pal", 2).await),
        ("online", 2, Some("At desk"))
    );
    for user in ["bidder", "open", "hermit", "stranger"] {
        nth_event(&setup, user, 1).await;
    }

    let asked = json!({"users": [
        "pal", "bidder", "open", "hermit", "stranger", "ghost", "gone", "u1", "fresh", "pal",
        "nobody-knows"
    ]});
    // Asked in that order, answered in that order, each once; `hermit` (nobody),
    // `stranger` and `nobody-knows` (no shared channel) are left out, indistinguishable.
    let expected = json!({"result": {"presence": [
        {"user": "pal", "status": "online", "devices": 2, "text": "At desk"},
        {"user": "bidder", "status": "busy", "devices": 1},
        {"user": "open", "status": "away", "devices": 1, "text": "Lunch"},
        {"user": "ghost", "status": "offline", "devices": 0},
        {"user": "gone", "status": "offline", "devices": 0, "lastSeen": gone_seen},
        {"user": "u1", "status": "offline", "devices": 0},
        {"user": "fresh", "status": "offline", "devices": 0},
    ]}});
    eventually("memberships to be mirrored", || async {
        let answer = presence_get(&setup, Some("u1"), asked.clone()).await;
        (answer == expected).then_some(())
    })
    .await;
    // A user back online after being seen offline: lastSeen says when that was.
    put(&setup, "gone.c2", "online", None, LONG_TTL).await;
    nth_event(&setup, "gone", 3).await;
    let back = presence_get(&setup, Some("u1"), json!({"users": ["gone"]})).await;
    assert_eq!(
        back,
        json!({"result": {"presence": [
            {"user": "gone", "status": "online", "devices": 1, "lastSeen": gone_seen}
        ]}})
    );
    // What a stranger sees: only those who show themselves to everyone, and themself.
    let stranger = presence_get(&setup, Some("stranger"), asked.clone()).await;
    assert_eq!(
        stranger,
        json!({"result": {"presence": [
            {"user": "open", "status": "away", "devices": 1, "text": "Lunch"},
            {"user": "stranger", "status": "online", "devices": 1},
        ]}}),
        "{asked}"
    );
    let nothing = presence_get(&setup, Some("u1"), json!({"users": []})).await;
    assert_eq!(nothing, json!({"result": {"presence": []}}));

    let too_many: Vec<String> = (0..101).map(|i| format!("u{i}")).collect();
    let hundred: Vec<String> = (0..100).map(|i| format!("u{i}")).collect();
    let full = presence_get(&setup, Some("u1"), json!({ "users": hundred })).await;
    assert!(
        full["result"]["presence"].is_array(),
        "100 users is fine: {full}"
    );
    let long = presence_get(&setup, Some("u1"), json!({ "users": too_many })).await;
    assert_eq!(long["error"]["code"], "bad_request", "{long}");
    assert!(
        long["error"]["message"]
            .as_str()
            .unwrap()
            .contains("at most 100"),
        "{long}"
    );
    for params in [
        json!({"users": ["pal", "a.b"]}),
        json!({"users": [""]}),
        json!({"users": [7]}),
        json!({"users": "pal"}),
        json!({}),
    ] {
        let answer = presence_get(&setup, Some("u1"), params.clone()).await;
        assert_eq!(answer["error"]["code"], "bad_request", "{params}: {answer}");
    }
    let anonymous = presence_get(&setup, None, json!({"users": ["pal"]})).await;
    assert_eq!(anonymous["error"]["code"], "unauthorized");
}

/// `int.presence.visible` as the edge asks it: from the edge's role, for `watcher`.
async fn visible(edge: &async_nats::Client, watcher: Option<&str>, params: Value) -> Value {
    let mut map = HeaderMap::new();
    if let Some(watcher) = watcher {
        map.insert("Rt-User", watcher);
    }
    eventually("an answer on int.presence.visible", || async {
        let reply = edge
            .request_with_headers(
                "int.presence.visible",
                map.clone(),
                params.to_string().into(),
            )
            .await
            .ok()?;
        Some(serde_json::from_slice(&reply.payload).unwrap())
    })
    .await
}

#[tokio::test(flavor = "multi_thread")]
async fn presence_visible_filters_a_whole_list_for_the_edge() {
    let setup = setup().await;
    let _worker = Worker::start(&setup, "membership,presence", &[]);
    let edge = setup.nats.connect(support::Role::Edge).await.unwrap();
    for user in ["u1", "pal", "hermit"] {
        member(
            &setup,
            "conversation:c1",
            "conversation.participant_added",
            user,
        )
        .await;
    }
    member(&setup, "group:g1", "member.added", "u1").await;
    member(&setup, "group:g1", "member.added", "grouped").await;
    wait_for_worker(&setup).await;
    set_visibility(&setup, "open", "everyone").await;
    set_visibility(&setup, "hermit", "nobody").await;

    // A `who` list of 1000: strangers, with the few the watcher may see among them.
    let mut users: Vec<String> = (0..995).map(|i| format!("s{i}")).collect();
    for (at, user) in [
        (0, "hermit"),
        (10, "pal"),
        (500, "open"),
        (700, "u1"),
        (990, "grouped"),
    ] {
        users.insert(at, user.to_string());
    }
    assert_eq!(users.len(), 1000);
    let expected = json!({"result": {"visible": ["pal", "open", "u1"]}});
    eventually("memberships to be mirrored", || async {
        let answer = visible(&edge, Some("u1"), json!({ "users": users })).await;
        (answer == expected).then_some(())
    })
    .await;
    let start = Instant::now();
    let answer = visible(&edge, Some("u1"), json!({ "users": users })).await;
    println!(
        "int.presence.visible: 1000 users filtered in {:?}",
        start.elapsed()
    );
    assert_eq!(answer, expected);
    let alone = visible(
        &edge,
        Some("grouped"),
        json!({"users": ["u1", "open", "grouped"]}),
    )
    .await;
    assert_eq!(alone, json!({"result": {"visible": ["open", "grouped"]}}));
    let empty = visible(&edge, Some("u1"), json!({"users": []})).await;
    assert_eq!(empty, json!({"result": {"visible": []}}));

    users.push("one-too-many".into());
    for params in [
        json!({ "users": users }),
        json!({"users": ["pal", "a.b"]}),
        json!({"users": [null]}),
        json!({"users": {}}),
        json!({}),
    ] {
        let answer = visible(&edge, Some("u1"), params.clone()).await;
        assert_eq!(answer["error"]["code"], "bad_request", "{answer}");
    }
    let anonymous = visible(&edge, None, json!({"users": ["pal"]})).await;
    assert_eq!(anonymous["error"]["code"], "unauthorized");
    // Internal: no `rpc` reaches it, since the edge relays to `svc.` only.
    let relayed = setup
        .client
        .request(
            "svc.presence.visible",
            json!({"users": ["pal"]}).to_string().into(),
        )
        .await;
    assert!(relayed.is_err(), "nothing serves svc.presence.visible");
}

/// The next notice on `int.privacy.>`: (subject, body).
async fn next_change(changes: &mut async_nats::Subscriber) -> (String, Value) {
    let message = tokio::time::timeout(Duration::from_secs(5), changes.next())
        .await
        .expect("a privacy change within 5 s")
        .unwrap();
    let body: Value = serde_json::from_slice(&message.payload).unwrap();
    (message.subject.to_string(), body)
}

#[tokio::test(flavor = "multi_thread")]
async fn a_privacy_change_is_announced_to_the_edges_after_it_is_stored() {
    let setup = setup().await;
    let _worker = Worker::start(&setup, "membership,presence", &[]);
    member(
        &setup,
        "conversation:c1",
        "conversation.participant_added",
        "u1",
    )
    .await;
    member(
        &setup,
        "conversation:c1",
        "conversation.participant_added",
        "pal",
    )
    .await;
    wait_for_worker(&setup).await;
    // As an edge listens: its own role, every user.
    let edge = setup.nats.connect(support::Role::Edge).await.unwrap();
    let mut changes = edge.subscribe("int.privacy.>").await.unwrap();
    switchboard_testkit::synced(&edge).await.unwrap();

    // The first choice of the default changes nothing: no notice. The next message is
    // the real change, so none came in between (one publisher, one subscription: order
    // is kept).
    set_visibility(&setup, "u1", "contacts").await;
    set_visibility(&setup, "u1", "nobody").await;
    let (subject, body) = next_change(&mut changes).await;
    assert_eq!(subject, "int.privacy.u1");
    assert_eq!(body, json!({"user": "u1", "visibility": "nobody"}));
    // Stored before announced: an edge re-checking at once sees the new setting.
    assert!(!allowed(&setup, "pal", "u1").await);

    // Repeats are no-ops; every real change is announced, for whoever changed.
    set_visibility(&setup, "u1", "nobody").await;
    set_visibility(&setup, "pal", "everyone").await;
    set_visibility(&setup, "u1", "contacts").await;
    assert_eq!(
        next_change(&mut changes).await,
        (
            "int.privacy.pal".to_string(),
            json!({"user": "pal", "visibility": "everyone"})
        )
    );
    assert_eq!(
        next_change(&mut changes).await,
        (
            "int.privacy.u1".to_string(),
            json!({"user": "u1", "visibility": "contacts"})
        )
    );
    // A refused change stores and announces nothing.
    let refused = rpc(
        &setup,
        "presence.privacy.set",
        Some("u1"),
        json!({"visibility": "friends"}),
    )
    .await;
    assert_eq!(refused["error"]["code"], "bad_request");
    set_visibility(&setup, "u1", "everyone").await;
    assert_eq!(
        next_change(&mut changes).await.1,
        json!({"user": "u1", "visibility": "everyone"})
    );
}
