//! The receipts worker as a process, against a real nats-server and PostgreSQL: receipt
//! commands go in on `cmd.receipts.<conversation id>` as an edge sends them, and the
//! tests read the `message.receipt` events stored on the conversation, the cursors in
//! `switchboard.receipt_cursors`, and the answers of `svc.receipts.get`.

mod support;

use std::collections::{BTreeMap, BTreeSet, HashSet};

use async_nats::jetstream::message::PublishMessage;
use serde_json::{Value, json};
use switchboard_bus::CMDS_STREAM;

use support::{Setup, Worker, channel, eventually, next_pick, rpc, setup, stored_events};

/// Publishes an event on `channel` as `actor`; its stream sequence.
async fn publish(setup: &Setup, channel_name: &str, ty: &str, actor: &str, data: Value) -> u64 {
    support::publish_by(setup, channel_name, ty, Some(actor), data).await
}

/// Makes the last stored seq of each of `conversations` at least `seq`: filler events
/// elsewhere, then one message on each. Cursors are clamped to the conversation's last
/// seq, so tests that send cursors out of thin air need a conversation that long.
async fn fill(setup: &Setup, conversations: &[&str], seq: u64) {
    let mut last = 0;
    while last < seq {
        last = publish(setup, "project:filler", "bid.new", "svc", json!({})).await;
    }
    for conversation in conversations {
        publish(
            setup,
            conversation,
            "message.new",
            "a",
            json!({"text": "hi"}),
        )
        .await;
    }
}

/// Sends a receipts command as an edge does: JSON on `cmd.receipts.<id>`, stored in CMDS.
async fn command(setup: &Setup, conversation: &str, body: Value) {
    let id = conversation.strip_prefix("conversation:").unwrap();
    let message = PublishMessage::build().payload(body.to_string().into());
    setup
        .js
        .send_publish(format!("cmd.receipts.{id}"), message)
        .await
        .unwrap()
        .await
        .unwrap();
}

/// One stored `message.receipt`: (user, delivered, read), and its event id.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
struct StoredReceipt {
    user: String,
    delivered: u64,
    read: u64,
    id: String,
}

async fn receipts(setup: &Setup, conversation: &str) -> Vec<StoredReceipt> {
    let subject = channel(conversation).subject(switchboard_schemas::SubjectKind::Durable);
    let mut all = Vec::new();
    for stored in stored_events(setup, &subject).await {
        let event = stored.envelope().unwrap();
        if event.ty.as_str() != "message.receipt" {
            continue;
        }
        assert_eq!(stored.ty.as_deref(), Some("message.receipt"));
        let data: Value = serde_json::from_str(event.data.as_str()).unwrap();
        let user = data["user"].as_str().unwrap().to_string();
        let actor = event.actor.expect("receipts name their actor");
        assert_eq!(
            (actor.id.as_str(), actor.kind.as_str()),
            (user.as_str(), "user")
        );
        all.push(StoredReceipt {
            user,
            delivered: data["delivered"].as_u64().unwrap(),
            read: data["read"].as_u64().unwrap(),
            id: event.id.to_string(),
        });
    }
    all
}

async fn wait_for_receipts(setup: &Setup, conversation: &str, count: usize) -> Vec<StoredReceipt> {
    eventually(&format!("{count} receipts on {conversation}"), || async {
        let all = receipts(setup, conversation).await;
        (all.len() >= count).then_some(all)
    })
    .await
}

fn pairs(receipts: &[StoredReceipt]) -> Vec<(&str, u64, u64)> {
    receipts
        .iter()
        .map(|r| (r.user.as_str(), r.delivered, r.read))
        .collect()
}

async fn cursors(setup: &Setup, conversation: &str, user: &str) -> Option<(i64, i64)> {
    sqlx::query_as(
        "SELECT delivered, read FROM switchboard.receipt_cursors
          WHERE conversation = $1 AND user_id = $2",
    )
    .bind(conversation)
    .bind(user)
    .fetch_optional(&setup.db)
    .await
    .unwrap()
}

/// Waits until every command sent so far has been taken off the work queue and acked.
async fn wait_until_drained(setup: &Setup) {
    eventually("the receipts commands to be consumed", || async {
        let mut stream = setup.js.get_stream(CMDS_STREAM).await.ok()?;
        let left = stream.info().await.ok()?.state.messages;
        let info = stream.consumer_info("receipts").await.ok()?;
        (left == 0 && info.num_ack_pending == 0).then_some(())
    })
    .await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_sends_three_messages_and_b_acks_two_and_reads_one() {
    let setup = setup().await;
    let worker = Worker::start(&setup, "receipts", &[]);
    let conversation = "conversation:c1";
    let mut seqs = Vec::new();
    for text in ["one", "two", "three"] {
        seqs.push(
            publish(
                &setup,
                conversation,
                "message.new",
                "a",
                json!({"text": text}),
            )
            .await,
        );
    }
    let (s1, s2, s3) = (seqs[0], seqs[1], seqs[2]);

    // B's devices ack the first two messages and read the first, one window at a time.
    command(
        &setup,
        conversation,
        json!({"conversation": conversation, "user": "b", "delivered": s1}),
    )
    .await;
    command(
        &setup,
        conversation,
        json!({"conversation": conversation, "user": "b", "delivered": s2}),
    )
    .await;
    command(
        &setup,
        conversation,
        json!({"conversation": conversation, "user": "b", "read": s1}),
    )
    .await;
    let stored = wait_for_receipts(&setup, conversation, 3).await;
    assert_eq!(
        pairs(&stored),
        [("b", s1, 0), ("b", s2, 0), ("b", s2, s1)],
        "A's devices see sent -> delivered -> read"
    );

    // Commands that move nothing (older, repeated, from another device lagging behind)
    // publish nothing; the next real move does.
    for body in [
        json!({"conversation": conversation, "user": "b", "delivered": s1}),
        json!({"conversation": conversation, "user": "b", "read": s1}),
        json!({"conversation": conversation, "user": "b", "delivered": s2, "read": s1}),
        json!({"conversation": conversation, "user": "b", "delivered": 0}),
    ] {
        command(&setup, conversation, body).await;
    }
    // Read implies delivered.
    command(
        &setup,
        conversation,
        json!({"conversation": conversation, "user": "b", "read": s3}),
    )
    .await;
    let stored = wait_for_receipts(&setup, conversation, 4).await;
    assert_eq!(pairs(&stored)[3..], [("b", s3, s3)]);
    wait_until_drained(&setup).await;
    assert_eq!(
        receipts(&setup, conversation).await.len(),
        4,
        "no receipt for a regression"
    );
    assert_eq!(
        cursors(&setup, conversation, "b").await,
        Some((s3 as i64, s3 as i64))
    );

    // Poison (not a conversation, wrong subject, bad user) is skipped, not retried.
    command(
        &setup,
        conversation,
        json!({"conversation": "conversation:c2", "user": "b", "read": 9}),
    )
    .await;
    command(
        &setup,
        conversation,
        json!({"conversation": conversation, "user": "a.b", "read": 9}),
    )
    .await;
    command(&setup, conversation, json!({"nonsense": true})).await;
    command(
        &setup,
        conversation,
        json!({"conversation": conversation, "user": "a", "read": s3}),
    )
    .await;
    let stored = wait_for_receipts(&setup, conversation, 5).await;
    assert_eq!(pairs(&stored)[4..], [("a", s3, s3)]);

    let status = worker.terminate().await;
    assert!(
        status.success(),
        "SIGTERM stops the worker cleanly: {status}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn cursors_past_the_conversations_last_seq_are_clamped_to_it() {
    let setup = setup().await;
    let _worker = Worker::start(&setup, "receipts", &[]);
    let conversation = "conversation:c1";
    let mut last = 0;
    for text in ["one", "two", "three"] {
        last = publish(
            &setup,
            conversation,
            "message.new",
            "a",
            json!({"text": text}),
        )
        .await;
    }
    // Other channels' events raise the stream's sequence, not this conversation's.
    let elsewhere = publish(&setup, "conversation:c2", "message.new", "a", json!({})).await;
    assert!(elsewhere > last);

    command(
        &setup,
        conversation,
        json!({"conversation": conversation, "user": "b", "read": 1000}),
    )
    .await;
    let stored = wait_for_receipts(&setup, conversation, 1).await;
    assert_eq!(
        pairs(&stored),
        [("b", last, last)],
        "read clamped, and delivered"
    );
    eventually("b's cursors clamped to the end", || async {
        (cursors(&setup, conversation, "b").await == Some((last as i64, last as i64))).then_some(())
    })
    .await;

    // The conversation grows (the receipt itself is stored on it too); a cursor as far
    // as a bigint goes stops at the new end.
    let newest = publish(
        &setup,
        conversation,
        "message.new",
        "a",
        json!({"text": "four"}),
    )
    .await;
    command(
        &setup,
        conversation,
        json!({"conversation": conversation, "user": "b", "delivered": i64::MAX}),
    )
    .await;
    let stored = wait_for_receipts(&setup, conversation, 2).await;
    assert_eq!(pairs(&stored)[1..], [("b", newest, last)]);
    // The receipt is stored before the command is acked: the row may lag it a moment.
    eventually("b's cursors clamped to the new end", || async {
        (cursors(&setup, conversation, "b").await == Some((newest as i64, last as i64)))
            .then_some(())
    })
    .await;

    // Nothing stored on a conversation: nothing to acknowledge, no row, no event.
    command(
        &setup,
        "conversation:c9",
        json!({"conversation": "conversation:c9", "user": "b", "read": 5}),
    )
    .await;
    wait_until_drained(&setup).await;
    assert_eq!(cursors(&setup, "conversation:c9", "b").await, None);
    assert!(receipts(&setup, "conversation:c9").await.is_empty());
    assert_eq!(receipts(&setup, conversation).await.len(), 2);
}

#[tokio::test(flavor = "multi_thread")]
async fn receipts_get_answers_participants_only() {
    let setup = setup().await;
    let _worker = Worker::start(&setup, "membership,receipts", &[]);
    let conversation = "conversation:c1";
    for user in ["a", "b"] {
        publish(
            &setup,
            conversation,
            "conversation.participant_added",
            "svc",
            json!({"user": user}),
        )
        .await;
    }
    fill(&setup, &[conversation], 7).await;
    command(
        &setup,
        conversation,
        json!({"conversation": conversation, "user": "b", "delivered": 7, "read": 5}),
    )
    .await;
    command(
        &setup,
        conversation,
        json!({"conversation": conversation, "user": "a", "read": 7}),
    )
    .await;
    wait_for_receipts(&setup, conversation, 2).await;

    let expected = json!({"result": {"cursors": [
        {"user": "a", "delivered": 7, "read": 7},
        {"user": "b", "delivered": 7, "read": 5},
    ]}});
    let params = json!({"channel": conversation});
    eventually("a to be a participant", || async {
        (rpc(&setup, "receipts.get", Some("a"), params.clone()).await == expected).then_some(())
    })
    .await;

    let refused = rpc(&setup, "receipts.get", Some("stranger"), params.clone()).await;
    assert_eq!(refused["error"]["code"], "forbidden", "{refused}");
    let empty = rpc(
        &setup,
        "receipts.get",
        Some("a"),
        json!({"channel": "conversation:c9"}),
    )
    .await;
    assert_eq!(empty["error"]["code"], "forbidden", "{empty}");

    for bad in [
        json!({"channel": "project:p1"}),
        json!({"channel": "conversation:a.b"}),
        json!({"channel": 5}),
        json!({}),
    ] {
        let answer = rpc(&setup, "receipts.get", Some("a"), bad.clone()).await;
        assert_eq!(answer["error"]["code"], "bad_request", "{bad}: {answer}");
    }
    let anonymous = rpc(&setup, "receipts.get", None, params.clone()).await;
    assert_eq!(anonymous["error"]["code"], "unauthorized", "{anonymous}");

    // A participant removed loses access.
    publish(
        &setup,
        conversation,
        "conversation.participant_removed",
        "svc",
        json!({"user": "b"}),
    )
    .await;
    eventually("b's access to end", || async {
        let answer = rpc(&setup, "receipts.get", Some("b"), params.clone()).await;
        (answer["error"]["code"] == "forbidden").then_some(())
    })
    .await;
}

/// A deterministic stream of commands over several conversations and users, cursors
/// mostly rising with regressions mixed in, and the cursors they must end at.
/// (conversation, command body) in the order sent.
type Commands = Vec<(String, Value)>;
/// (conversation, user) -> (delivered, read).
type Finals = BTreeMap<(String, String), (u64, u64)>;

const CONVERSATIONS: [&str; 3] = ["conversation:c1", "conversation:c2", "conversation:c3"];

/// Its cursors reach at most `count + 3`.
fn history(count: usize) -> (Commands, Finals) {
    let conversations = CONVERSATIONS;
    let users = ["u1", "u2", "u3", "u4"];
    let mut commands = Vec::new();
    let mut finals = Finals::new();
    let mut state: u64 = 0x9e37_79b9_7f4a_7c15;
    for i in 0..count {
        let pick = next_pick(&mut state);
        let conversation = conversations[pick % conversations.len()];
        let user = users[(pick / 3) % users.len()];
        // Rising with i, but sometimes far behind (a lagging device).
        let base = if (pick / 17).is_multiple_of(5) {
            i / 4
        } else {
            i
        } as u64
            + 1;
        let (delivered, read) = match (pick / 7) % 3 {
            0 => (Some(base), None),
            1 => (None, Some(base)),
            _ => (Some(base + 2), Some(base)),
        };
        let mut body = json!({"conversation": conversation, "user": user});
        if let Some(delivered) = delivered {
            body["delivered"] = json!(delivered);
        }
        if let Some(read) = read {
            body["read"] = json!(read);
        }
        let last = finals
            .entry((conversation.to_string(), user.to_string()))
            .or_default();
        let read = read.unwrap_or(0);
        *last = (
            last.0.max(delivered.unwrap_or(0)).max(read),
            last.1.max(read),
        );
        commands.push((conversation.to_string(), body));
    }
    (commands, finals)
}

#[tokio::test(flavor = "multi_thread")]
async fn a_worker_killed_mid_stream_loses_and_duplicates_nothing() {
    let setup = setup().await;
    let total = 1500;
    let (commands, finals) = history(total);
    fill(&setup, &CONVERSATIONS, total as u64 + 3).await;
    for (conversation, body) in &commands {
        command(&setup, conversation, body.clone()).await;
    }

    let first = Worker::start(&setup, "receipts", &[]);
    eventually("the worker to be part-way through", || async {
        let mut stream = setup.js.get_stream(CMDS_STREAM).await.ok()?;
        let left = stream.info().await.ok()?.state.messages;
        (left as usize <= total - 100).then_some(())
    })
    .await;
    first.kill().await;
    let mut stream = setup.js.get_stream(CMDS_STREAM).await.unwrap();
    let left = stream.info().await.unwrap().state.messages;
    assert!(
        left > 0,
        "the worker was killed before it had handled everything"
    );

    let _second = Worker::start(&setup, "receipts", &[]);
    wait_until_drained(&setup).await;

    for ((conversation, user), (delivered, read)) in &finals {
        assert_eq!(
            cursors(&setup, conversation, user).await,
            Some((*delivered as i64, *read as i64)),
            "{conversation} {user}"
        );
    }
    let mut published = 0;
    for conversation in CONVERSATIONS {
        let stored = receipts(&setup, conversation).await;
        published += stored.len();
        let ids: HashSet<&str> = stored.iter().map(|r| r.id.as_str()).collect();
        assert_eq!(
            ids.len(),
            stored.len(),
            "{conversation}: an event stored twice"
        );
        let moves: HashSet<(&str, u64, u64)> = pairs(&stored).into_iter().collect();
        assert_eq!(
            moves.len(),
            stored.len(),
            "{conversation}: a move published twice"
        );
        for ((c, user), (delivered, read)) in &finals {
            if c != conversation {
                continue;
            }
            assert!(
                moves.contains(&(user.as_str(), *delivered, *read)),
                "{conversation} {user}: the final cursors were published"
            );
            for r in stored.iter().filter(|r| &r.user == user) {
                assert!(r.delivered <= *delivered && r.read <= *read && r.read <= r.delivered);
            }
        }
    }
    println!(
        "receipts with a worker killed mid-stream: {total} commands, killed with {left} \
         unhandled; cursors right for {} of {} (conversation, user) pairs; {published} \
         message.receipt events, 0 stored twice, 0 moves published twice, every final \
         move published, none beyond it",
        finals.len(),
        finals.len()
    );
}

/// The `message.receipt` moves that `commands`, applied one at a time in order, publish:
/// per (conversation, user), the (delivered, read) pairs in order.
fn moves(commands: &Commands) -> BTreeMap<(String, String), Vec<(u64, u64)>> {
    let mut cursors: Finals = Finals::new();
    let mut moves: BTreeMap<(String, String), Vec<(u64, u64)>> = BTreeMap::new();
    for (conversation, body) in commands {
        let user = body["user"].as_str().unwrap().to_string();
        let read = body["read"].as_u64().unwrap_or(0);
        let delivered = body["delivered"].as_u64().unwrap_or(0).max(read);
        if delivered == 0 {
            continue;
        }
        let key = (conversation.clone(), user);
        let now = cursors.entry(key.clone()).or_default();
        let next = (now.0.max(delivered), now.1.max(read));
        if next != *now {
            *now = next;
            moves.entry(key).or_default().push(next);
        }
    }
    moves
}

async fn send(setup: &Setup, commands: &[(String, Value)]) {
    for (conversation, body) in commands {
        command(setup, conversation, body.clone()).await;
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn receipts_across_a_postgres_restart_are_each_published_once_in_order() {
    let mut setup = setup().await;
    let (mut worker, log) = Worker::start_logged(&setup, "receipts", &[]);
    let total = 600;
    let (commands, finals) = history(total);
    let expected = moves(&commands);
    fill(&setup, &CONVERSATIONS, total as u64 + 3).await;
    let (before, rest) = commands.split_at(200);
    let (during, after) = rest.split_at(200);

    send(&setup, before).await;
    eventually("the worker to be part-way through", || async {
        let mut stream = setup.js.get_stream(CMDS_STREAM).await.ok()?;
        let left = stream.info().await.ok()?.state.messages;
        (left as usize <= before.len() - 50).then_some(())
    })
    .await;
    // Commands keep coming while PostgreSQL is away: the work queue keeps them.
    let backoff =
        support::without_postgres(&mut setup, &mut worker, &log, "receipts", async |setup| {
            send(setup, during).await
        })
        .await;
    send(&setup, after).await;
    wait_until_drained(&setup).await;
    assert!(worker.is_running(), "the worker is still running");

    // Per (conversation, user), the events in stream order against the moves in order.
    let mut published: BTreeMap<(String, String), Vec<(u64, u64)>> = BTreeMap::new();
    let mut events = 0;
    let mut ids = HashSet::new();
    for conversation in CONVERSATIONS {
        for receipt in receipts(&setup, conversation).await {
            events += 1;
            ids.insert(receipt.id);
            published
                .entry((conversation.to_string(), receipt.user))
                .or_default()
                .push((receipt.delivered, receipt.read));
        }
    }
    let expected_count: usize = expected.values().map(Vec::len).sum();
    let (mut missing, mut unexpected, mut duplicated, mut regressions) = (0, 0, 0, 0);
    for key in expected
        .keys()
        .chain(published.keys())
        .collect::<BTreeSet<_>>()
    {
        let want: BTreeSet<&(u64, u64)> = expected.get(key).into_iter().flatten().collect();
        let got = published.get(key).cloned().unwrap_or_default();
        let distinct: BTreeSet<&(u64, u64)> = got.iter().collect();
        missing += want.difference(&distinct).count();
        unexpected += distinct.difference(&want).count();
        duplicated += got.len() - distinct.len();
        regressions += got
            .windows(2)
            .filter(|pair| pair[1].0 < pair[0].0 || pair[1].1 < pair[0].1)
            .count();
    }
    let mut right_cursors = 0;
    for ((conversation, user), (delivered, read)) in &finals {
        if cursors(&setup, conversation, user).await == Some((*delivered as i64, *read as i64)) {
            right_cursors += 1;
        }
    }
    let redelivered = log.redelivered("receipts").len();
    println!(
        "receipts across a PostgreSQL restart: {total} commands, {expected_count} moves \
         expected, {events} message.receipt events ({} distinct ids), {missing} missing, \
         {duplicated} duplicated, {unexpected} unexpected, {regressions} going backwards; \
         cursors right for {right_cursors} of {} (conversation, user) pairs; the worker \
         logged {backoff} while PostgreSQL was down, kept running, and was handed \
         {redelivered} commands again",
        ids.len(),
        finals.len()
    );
    assert_eq!(
        published, expected,
        "each move published once, in order, per user"
    );
    assert_eq!(ids.len(), events, "an event id stored twice");
    assert_eq!(right_cursors, finals.len(), "cursors");
}
