//! The membership worker as a process, against a real nats-server and PostgreSQL: events
//! go in through the publishing API, and the tests watch the row in
//! `switchboard.channel_members` and the key in the KV bucket `members`.

mod support;

use std::collections::BTreeMap;
use std::time::Duration;

use async_nats::HeaderMap;
use async_nats::jetstream::{kv, message::PublishMessage};
use futures_util::TryStreamExt;
use serde_json::{Value, json};
use switchboard_bus::{EVENTS_STREAM, Encoding, headers};
use switchboard_schemas::Membership;

use support::{
    Setup, Worker, channel, event, eventually, next_pick, publish, setup, wait_until_caught_up,
};

/// Publishes raw bytes on a subject with the given headers, as a non-Rust service might.
async fn publish_raw(setup: &Setup, subject: &str, headers: HeaderMap, payload: Vec<u8>) -> u64 {
    let message = PublishMessage::build()
        .payload(payload.into())
        .headers(headers);
    let ack = setup
        .js
        .send_publish(subject.to_string(), message)
        .await
        .unwrap();
    ack.await.unwrap().sequence
}

/// (role, active, seq, event_id) of a row.
type Row = (String, bool, i64, String);

async fn row(setup: &Setup, channel: &str, user: &str) -> Option<Row> {
    sqlx::query_as(
        "SELECT role, active, seq, event_id FROM switchboard.channel_members
         WHERE channel = $1 AND user_id = $2",
    )
    .bind(channel)
    .bind(user)
    .fetch_optional(&setup.db)
    .await
    .unwrap()
}

/// Every row as (channel, user) -> (role, active).
async fn rows(setup: &Setup) -> BTreeMap<(String, String), (String, bool)> {
    let all: Vec<(String, String, String, bool)> =
        sqlx::query_as("SELECT channel, user_id, role, active FROM switchboard.channel_members")
            .fetch_all(&setup.db)
            .await
            .unwrap();
    all.into_iter()
        .map(|(channel, user, role, active)| ((channel, user), (role, active)))
        .collect()
}

async fn key(setup: &Setup, key: &str) -> Option<Value> {
    let value = setup.members.get(key).await.unwrap()?;
    Some(serde_json::from_slice(&value).unwrap())
}

/// Every present key of the bucket with its value.
async fn bucket(setup: &Setup) -> BTreeMap<String, Value> {
    let keys: Vec<String> = setup
        .members
        .keys()
        .await
        .unwrap()
        .try_collect()
        .await
        .unwrap();
    let mut all = BTreeMap::new();
    for name in keys {
        if let Some(value) = key(setup, &name).await {
            all.insert(name, value);
        }
    }
    all
}

/// Waits for the key `<ns>.<id>.<user>` to be `expected`, and for the row to agree with
/// it: the worker writes the key before it commits the row (both under the row's lock),
/// so a key alone does not say the row is visible yet.
async fn wait_for_key(setup: &Setup, name: &str, expected: Option<Value>) {
    let member = Membership::from_key(name).expect("a members key");
    let (channel, user) = (member.channel.as_str(), member.user.as_str());
    let role = expected
        .as_ref()
        .map(|v| v["role"].as_str().unwrap().to_string());
    eventually(
        &format!("key {name} and its row to be {expected:?}"),
        || async {
            let row = row(setup, channel, user).await;
            let row_agrees = match (&role, row) {
                (Some(role), Some((r, active, _, _))) => active && r == *role,
                (Some(_), None) => false,
                (None, row) => row.is_none_or(|(_, active, _, _)| !active),
            };
            (row_agrees && key(setup, name).await == expected).then_some(())
        },
    )
    .await;
}

#[tokio::test(flavor = "multi_thread")]
async fn member_added_then_removed_is_mirrored_to_the_row_and_the_key() {
    let setup = setup().await;
    let _worker = Worker::start(&setup, "membership", &[]);

    let added = event("member.added", json!({"user": "u1", "role": "owner"}));
    let added_seq = publish(&setup, "project:p1", &added).await;
    wait_for_key(&setup, "project.p1.u1", Some(json!({"role": "owner"}))).await;
    let expected = ("owner".into(), true, added_seq as i64, added.id.to_string());
    assert_eq!(row(&setup, "project:p1", "u1").await, Some(expected));

    let demoted = event("member.added", json!({"user": "u1", "role": "viewer"}));
    publish(&setup, "project:p1", &demoted).await;
    wait_for_key(&setup, "project.p1.u1", Some(json!({"role": "viewer"}))).await;

    let removed = event("member.removed", json!({"user": "u1", "role": "viewer"}));
    let removed_seq = publish(&setup, "project:p1", &removed).await;
    wait_for_key(&setup, "project.p1.u1", None).await;
    // Edges watching the bucket see a delete, which is what revokes subscriptions.
    let entry = setup.members.entry("project.p1.u1").await.unwrap().unwrap();
    assert_eq!(entry.operation, kv::Operation::Delete);
    let expected = (
        "viewer".into(),
        false,
        removed_seq as i64,
        removed.id.to_string(),
    );
    assert_eq!(row(&setup, "project:p1", "u1").await, Some(expected));
}

#[tokio::test(flavor = "multi_thread")]
async fn conversation_participants_are_members_with_role_member() {
    let setup = setup().await;
    let _worker = Worker::start(&setup, "membership", &[]);

    // A JSON envelope, as a non-Rust backend publishes it.
    let added = event("conversation.participant_added", json!({"user": "u2"}));
    setup
        .publisher
        .publish_as(&channel("conversation:c1"), &added, Encoding::Json)
        .await
        .unwrap();
    wait_for_key(
        &setup,
        "conversation.c1.u2",
        Some(json!({"role": "member"})),
    )
    .await;
    let (role, active, _, _) = row(&setup, "conversation:c1", "u2").await.unwrap();
    assert_eq!((role.as_str(), active), ("member", true));

    // Without an Rt-Type header the worker decodes the envelope to learn its type.
    let removed = event("conversation.participant_removed", json!({"user": "u2"}));
    let mut headers = HeaderMap::new();
    headers.insert(headers::MSG_ID, removed.id.as_str());
    headers.insert(headers::CONTENT_TYPE, headers::JSON);
    publish_raw(&setup, "rt.conversation.c1", headers, removed.to_json()).await;
    wait_for_key(&setup, "conversation.c1.u2", None).await;
    let (_, active, _, event_id) = row(&setup, "conversation:c1", "u2").await.unwrap();
    assert!(!active);
    assert_eq!(event_id, removed.id.as_str());
}

#[tokio::test(flavor = "multi_thread")]
async fn poison_messages_are_skipped_and_later_events_still_apply() {
    let setup = setup().await;
    let _worker = Worker::start(&setup, "membership", &[]);

    let mut garbage = HeaderMap::new();
    garbage.insert(headers::RT_TYPE, "member.added");
    publish_raw(
        &setup,
        "rt.project.p1",
        garbage,
        b"\x01not an envelope".to_vec(),
    )
    .await;
    let poison = [
        (
            "project:p1",
            event("member.added", json!({"user": "u 1", "role": "owner"})),
        ),
        (
            "project:p1",
            event("member.added", json!({"user": "a.b", "role": "owner"})),
        ),
        (
            "project:p1",
            event("member.added", json!({"user": "u1", "role": "admin"})),
        ),
        (
            "project:p1",
            event("member.added", json!({"role": "owner"})),
        ),
        (
            "project:p1",
            event("conversation.participant_added", json!({"user": "u1"})),
        ),
    ];
    for (channel, envelope) in &poison {
        publish(&setup, channel, envelope).await;
    }
    // Other events pass by untouched.
    publish(
        &setup,
        "project:p1",
        &event("bid.new", json!({"amount": 5000})),
    )
    .await;

    let good = event("member.added", json!({"user": "u9", "role": "contractor"}));
    publish(&setup, "project:p1", &good).await;
    wait_for_key(&setup, "project.p1.u9", Some(json!({"role": "contractor"}))).await;
    wait_until_caught_up(&setup, "membership").await;

    let all = rows(&setup).await;
    let expected = BTreeMap::from([(
        ("project:p1".to_string(), "u9".to_string()),
        ("contractor".to_string(), true),
    )]);
    assert_eq!(all, expected, "poison left no rows behind");
    assert_eq!(bucket(&setup).await.len(), 1);
}

/// The final state a sequence of membership events must leave, keyed like the bucket.
#[derive(Default)]
struct Model(BTreeMap<(String, String), (String, bool)>);

impl Model {
    fn apply(&mut self, channel: &str, user: &str, role: Option<&str>, active: bool) {
        let entry = self
            .0
            .entry((channel.to_string(), user.to_string()))
            .or_insert(("member".to_string(), false));
        if let Some(role) = role {
            entry.0 = role.to_string();
        }
        entry.1 = active;
    }

    fn bucket(&self) -> BTreeMap<String, Value> {
        self.0
            .iter()
            .filter(|(_, (_, active))| *active)
            .map(|((channel, user), (role, _))| {
                (
                    format!("{}.{user}", channel.replace(':', ".")),
                    json!({"role": role}),
                )
            })
            .collect()
    }
}

/// Publishes a deterministic mix of membership changes and other events, and returns
/// what they must add up to.
async fn publish_history(setup: &Setup, count: usize) -> Model {
    let channels = ["project:p1", "project:p2", "job:j1", "conversation:c1"];
    let roles = ["owner", "member", "contractor", "viewer"];
    let mut model = Model::default();
    let mut state: u64 = 0x2545_f491_4f6c_dd1d;
    for i in 0..count {
        let pick = next_pick(&mut state);
        let channel = channels[pick % channels.len()];
        let user = format!("u{}", (pick / 7) % 6);
        let adding = !(pick / 11).is_multiple_of(3);
        let envelope = match (channel.starts_with("conversation"), adding, i % 5) {
            (_, _, 0) => event("bid.new", json!({"amount": i})),
            (true, true, _) => {
                model.apply(channel, &user, Some("member"), true);
                event("conversation.participant_added", json!({"user": user}))
            }
            (true, false, _) => {
                model.apply(channel, &user, None, false);
                event("conversation.participant_removed", json!({"user": user}))
            }
            (false, true, _) => {
                let role = roles[(pick / 13) % roles.len()];
                model.apply(channel, &user, Some(role), true);
                event("member.added", json!({"user": user, "role": role}))
            }
            (false, false, _) => {
                model.apply(channel, &user, None, false);
                event("member.removed", json!({"user": user}))
            }
        };
        publish(setup, channel, &envelope).await;
    }
    model
}

async fn wait_for_model(setup: &Setup, model: &Model) {
    eventually("rows and keys to match the published history", || async {
        (rows(setup).await == model.0 && bucket(setup).await == model.bucket()).then_some(())
    })
    .await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_worker_killed_mid_stream_converges_after_restart() {
    let setup = setup().await;
    let model = publish_history(&setup, 400).await;

    let worker = Worker::start(&setup, "membership", &[]);
    eventually("the worker to be part-way through", || async {
        let applied: i64 = sqlx::query_scalar("SELECT count(*) FROM switchboard.channel_members")
            .fetch_one(&setup.db)
            .await
            .unwrap();
        (applied >= 5).then_some(())
    })
    .await;
    worker.kill().await;
    let at_kill = rows(&setup).await.len();

    let _worker = Worker::start(&setup, "membership", &[]);
    wait_for_model(&setup, &model).await;
    wait_until_caught_up(&setup, "membership").await;
    wait_for_model(&setup, &model).await;
    println!(
        "membership with a worker killed mid-stream: 400 events, killed at {at_kill} rows; \
         after a restart {} rows and {} keys, exactly as the events in order leave them",
        model.0.len(),
        model.bucket().len()
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn replaying_the_whole_stream_changes_nothing_and_repairs_the_bucket() {
    let setup = setup().await;
    let worker = Worker::start(&setup, "membership", &[]);
    for (ty, data) in [
        ("member.added", json!({"user": "u1", "role": "owner"})),
        ("member.removed", json!({"user": "u1"})),
        ("member.added", json!({"user": "u2", "role": "contractor"})),
    ] {
        publish(&setup, "project:p1", &event(ty, data)).await;
    }
    wait_for_key(&setup, "project.p1.u2", Some(json!({"role": "contractor"}))).await;
    wait_until_caught_up(&setup, "membership").await;
    let status = worker.terminate().await;
    assert!(
        status.success(),
        "SIGTERM stops the worker cleanly: {status}"
    );
    let before = (
        row(&setup, "project:p1", "u1").await,
        row(&setup, "project:p1", "u2").await,
    );

    // The bucket drifts from the rows (as after a crash between commit and KV write, or
    // a purge by hand), and the consumer starts over from the first event.
    setup.members.purge("project.p1.u2").await.unwrap();
    setup
        .members
        .put("project.p1.u1", r#"{"role":"owner"}"#.into())
        .await
        .unwrap();
    let stream = setup.js.get_stream(EVENTS_STREAM).await.unwrap();
    stream.delete_consumer("membership").await.unwrap();

    let _worker = Worker::start(&setup, "membership", &[]);
    wait_for_key(&setup, "project.p1.u2", Some(json!({"role": "contractor"}))).await;
    wait_for_key(&setup, "project.p1.u1", None).await;
    wait_until_caught_up(&setup, "membership").await;
    let after = (
        row(&setup, "project:p1", "u1").await,
        row(&setup, "project:p1", "u2").await,
    );
    assert_eq!(
        before, after,
        "replayed old events left the rows as they were"
    );
    assert_eq!(
        key(&setup, "project.p1.u1").await,
        None,
        "u1 was not resurrected"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn the_worker_survives_postgres_and_nats_restarts() {
    let mut setup = setup().await;
    let (mut worker, log) = Worker::start_logged(&setup, "membership", &[]);
    publish(
        &setup,
        "project:p1",
        &event("member.added", json!({"user": "u1", "role": "owner"})),
    )
    .await;
    wait_for_key(&setup, "project.p1.u1", Some(json!({"role": "owner"}))).await;

    setup.pg.stop();
    publish(
        &setup,
        "project:p1",
        &event("member.added", json!({"user": "u2", "role": "viewer"})),
    )
    .await;
    eventually(
        "the worker to hold the event while PostgreSQL is down",
        || async {
            let stream = setup.js.get_stream(EVENTS_STREAM).await.ok()?;
            let info = stream.consumer_info("membership").await.ok()?;
            (info.num_ack_pending >= 1).then_some(())
        },
    )
    .await;
    // The worker's own connection went with PostgreSQL: its first attempt fails, and it
    // retries with backoff for as long as PostgreSQL is away (longer than the ack wait, 2 s).
    let retries = log
        .wait_for_retries("membership", 1, Duration::from_secs(20))
        .await;
    let backoff = support::assert_backoff(&retries);
    assert!(worker.is_running(), "the worker waits PostgreSQL out");
    assert_eq!(key(&setup, "project.p1.u2").await, None);
    setup.pg.start_again().unwrap();
    wait_for_key(&setup, "project.p1.u2", Some(json!({"role": "viewer"}))).await;

    setup.nats.stop();
    setup.nats.start_again().unwrap();
    publish(
        &setup,
        "project:p1",
        &event("member.removed", json!({"user": "u1"})),
    )
    .await;
    wait_for_key(&setup, "project.p1.u1", None).await;
    let (_, active, _, _) = row(&setup, "project:p1", "u1").await.unwrap();
    assert!(!active);
    assert!(worker.is_running(), "the worker is still running");
    let expected = BTreeMap::from([
        (
            ("project:p1".to_string(), "u1".to_string()),
            ("owner".to_string(), false),
        ),
        (
            ("project:p1".to_string(), "u2".to_string()),
            ("viewer".to_string(), true),
        ),
    ]);
    assert_eq!(rows(&setup).await, expected);
    assert_eq!(bucket(&setup).await.len(), 1);
    println!(
        "membership across PostgreSQL and NATS restarts: the member.added published while \
         PostgreSQL was down was held unacked ({backoff}) and mirrored once it was back; \
         a member.removed after a NATS restart was mirrored; 2 rows and 1 key as expected; \
         the worker kept running"
    );
}

/// `user.presence` events (one per user coming and going) reach neither the membership nor
/// the notifications consumer: presence channels have no members and the default rules do
/// not apply there. A consumer made by an earlier version, reading all of `rt.>`, is
/// updated in place and keeps its place in the stream.
#[tokio::test(flavor = "multi_thread")]
async fn presence_events_reach_neither_membership_nor_notifications() {
    use async_nats::jetstream::consumer::{AckPolicy, pull};

    let setup = setup().await;
    let before = event("member.added", json!({"user": "u0", "role": "owner"}));
    let before_seq = publish(&setup, "project:p0", &before).await;
    setup
        .js
        .create_consumer_on_stream(
            pull::Config {
                durable_name: Some("membership".into()),
                filter_subject: "rt.>".into(),
                ack_policy: AckPolicy::Explicit,
                ..Default::default()
            },
            EVENTS_STREAM,
        )
        .await
        .unwrap();
    let _worker = Worker::start(&setup, "membership,notifications", &[]);
    wait_for_key(&setup, "project.p0.u0", Some(json!({"role": "owner"}))).await;

    let presence = event(
        "user.presence",
        json!({"user": "u1", "status": "online", "devices": 1}),
    );
    let presence_seq = publish(&setup, "presence:u1", &presence).await;
    let added = event("member.added", json!({"user": "u1", "role": "owner"}));
    let added_seq = publish(&setup, "project:p1", &added).await;
    assert!(before_seq < presence_seq && presence_seq < added_seq);
    wait_for_key(&setup, "project.p1.u1", Some(json!({"role": "owner"}))).await;
    wait_until_caught_up(&setup, "notifications").await;

    for name in ["membership", "notifications"] {
        let info = eventually(&format!("{name} to have handled {added_seq}"), || async {
            let stream = setup.js.get_stream(EVENTS_STREAM).await.ok()?;
            let info = stream.consumer_info(name).await.ok()?.clone();
            (info.ack_floor.stream_sequence >= added_seq && info.num_ack_pending == 0)
                .then_some(info)
        })
        .await;
        let subjects = &info.config.filter_subjects;
        assert!(
            subjects.contains(&"rt.project.>".to_string()),
            "{name}: {subjects:?}"
        );
        assert!(
            !subjects.iter().any(|s| s.starts_with("rt.presence")),
            "{name}: {subjects:?}"
        );
        assert!(info.config.filter_subject.is_empty(), "{name}");
        // Two member events delivered, each once; the presence event never.
        assert_eq!(info.delivered.consumer_sequence, 2, "{name}");
        assert_eq!(info.num_pending, 0, "{name}");
    }
    assert_eq!(rows(&setup).await.len(), 2);
}
