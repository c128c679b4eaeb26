//! The archive job as a process, against a real nats-server and PostgreSQL: events go in
//! on `rt.<ns>.<id>` as edges and backends publish them, and the tests read
//! `switchboard.archive` and the answers of `int.archive.read`, as the edges ask it.

mod support;

use std::time::{Duration, Instant};

use serde_json::{Value, json};
use switchboard_schemas::{Actor, Timestamp};

use support::{
    Setup, Worker, channel, delete, edit, event, eventually, publish_by, request, say, setup,
};

async fn epoch(setup: &Setup) -> String {
    setup.store.position().await.unwrap().epoch
}

/// `int.archive.read` as an edge asks it; the whole reply.
async fn read_reply(setup: &Setup, params: Value) -> Value {
    request(
        setup,
        "int.archive.read",
        &[("Rt-User", "u1"), ("Rt-Role", "user")],
        params,
    )
    .await
}

async fn read(setup: &Setup, params: Value) -> Value {
    let reply = read_reply(setup, params).await;
    match reply.get("result") {
        Some(result) => result.clone(),
        None => panic!("int.archive.read failed: {reply}"),
    }
}

/// Waits until the archive says it has processed the stream up to `seq`.
async fn wait_through(setup: &Setup, ch: &str, seq: u64) {
    let epoch = epoch(setup).await;
    eventually(&format!("the archive to be through seq {seq}"), || async {
        let page = read(
            setup,
            json!({"ch": ch, "epoch": epoch, "after": 0, "limit": 1}),
        )
        .await;
        (page["through"].as_u64().unwrap() >= seq).then_some(())
    })
    .await;
}

/// Every archived event of `ch`, ascending: (seq, event).
async fn all(setup: &Setup, ch: &str) -> Vec<(u64, Value)> {
    let epoch = epoch(setup).await;
    let page = read(
        setup,
        json!({"ch": ch, "epoch": epoch, "after": 0, "limit": 1000}),
    )
    .await;
    page["events"]
        .as_array()
        .unwrap()
        .iter()
        .map(|item| (item["seq"].as_u64().unwrap(), item["event"].clone()))
        .collect()
}

#[tokio::test]
async fn events_are_archived_with_their_seqs_and_read_back_in_pages() {
    let setup = setup().await;
    let _worker = Worker::start(&setup, "archive", &[]);
    let mut seqs = Vec::new();
    for n in 0..5 {
        seqs.push(say(&setup, "conversation:c1", "u1", &format!("m{n}")).await);
        // Another channel and a namespace that is not archived, in between.
        say(&setup, "conversation:c2", "u2", "other").await;
        publish_by(&setup, "project:p1", "bid.new", Some("u3"), json!({})).await;
    }
    let last = *seqs.last().unwrap();
    wait_through(&setup, "conversation:c1", last).await;

    let events = all(&setup, "conversation:c1").await;
    assert_eq!(events.iter().map(|(seq, _)| *seq).collect::<Vec<_>>(), seqs);
    let (_, first) = &events[0];
    assert_eq!(first["type"], "message.new");
    assert_eq!(first["data"], json!({"text": "m0"}));
    assert_eq!(first["actor"]["id"], "u1");
    assert!(first["id"].as_str().unwrap().starts_with("evt_"));
    assert!(first.get("deleted").is_none());

    let epoch = epoch(&setup).await;
    // Ascending after a seq, with a bound.
    let page = read(
        &setup,
        json!({"ch": "conversation:c1", "epoch": epoch, "after": seqs[0], "before": seqs[4], "limit": 2}),
    )
    .await;
    let got: Vec<u64> = page["events"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["seq"].as_u64().unwrap())
        .collect();
    assert_eq!(got, [seqs[1], seqs[2]]);
    // Descending below a seq: the newest first.
    let page = read(
        &setup,
        json!({"ch": "conversation:c1", "epoch": epoch, "after": 0, "before": seqs[3], "limit": 2, "order": "desc"}),
    )
    .await;
    let got: Vec<u64> = page["events"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["seq"].as_u64().unwrap())
        .collect();
    assert_eq!(got, [seqs[2], seqs[1]]);

    // Caught up: `through` is the stream's last seq, whatever channel it is on.
    let stream_last = setup.store.position().await.unwrap().last_seq;
    assert!(page["through"].as_u64().unwrap() >= last);
    // The job ran from the stream's start: complete from its first seq.
    assert!(page["from"].as_u64().unwrap() <= seqs[0], "{page}");
    eventually("through to reach the stream's end", || async {
        let page = read(
            &setup,
            json!({"ch": "conversation:c1", "epoch": epoch, "limit": 1}),
        )
        .await;
        (page["through"].as_u64() == Some(stream_last)).then_some(())
    })
    .await;

    // Another epoch holds nothing of this stream.
    let other = read(
        &setup,
        json!({"ch": "conversation:c1", "epoch": "1", "limit": 10}),
    )
    .await;
    assert_eq!(other, json!({"events": [], "through": 0, "from": 1}));

    // Namespaces outside SWITCHBOARD_ARCHIVE_NAMESPACES are not archived.
    let projects: i64 =
        sqlx::query_scalar("SELECT count(*) FROM switchboard.archive WHERE channel = 'project:p1'")
            .fetch_one(&setup.db)
            .await
            .unwrap();
    assert_eq!(projects, 0);
}

#[tokio::test]
async fn edits_replace_the_text_and_deletes_blank_the_message_and_its_edits() {
    let setup = setup().await;
    let _worker = Worker::start(&setup, "archive", &[]);
    let ch = "conversation:c1";
    let kept = say(&setup, ch, "u1", "lunch at noon").await;
    let edit1 = edit(&setup, ch, "u1", kept, "lunch at one").await;
    let edit2 = edit(&setup, ch, "u1", kept, "lunch at two").await;
    let gone = say(&setup, ch, "u2", "my secret number").await;
    let gone_edit = edit(&setup, ch, "u2", gone, "my secret number 555").await;
    let tombstone = publish_by(
        &setup,
        ch,
        "message.deleted",
        Some("u2"),
        json!({"seq": gone, "text": "my secret number"}),
    )
    .await;
    // An edit after the deletion is blanked too.
    let late_edit = edit(&setup, ch, "u2", gone, "secret again").await;
    wait_through(&setup, ch, late_edit).await;

    let events = all(&setup, ch).await;
    let by_seq = |seq: u64| events.iter().find(|(s, _)| *s == seq).unwrap().1.clone();
    assert_eq!(events.len(), 7, "every event keeps its own seq: {events:?}");

    let edited = by_seq(kept);
    assert_eq!(edited["data"]["text"], "lunch at two");
    let edit_time = by_seq(edit2)["timestamp"].clone();
    assert_eq!(edited["data"]["editedAt"], edit_time);
    assert_eq!(
        by_seq(edit1)["data"]["text"],
        "lunch at one",
        "an edit of a live message keeps its text"
    );

    let deleted = by_seq(gone);
    assert_eq!(deleted["data"], json!({}));
    assert_eq!(deleted["deleted"], true);
    assert_eq!(deleted["type"], "message.new");
    for seq in [gone_edit, late_edit] {
        let edit = by_seq(seq);
        assert_eq!(edit["data"], json!({"seq": gone}), "{edit}");
        assert_eq!(edit["deleted"], true);
    }
    let tomb = by_seq(tombstone);
    assert_eq!(tomb["type"], "message.deleted");
    assert_eq!(tomb["data"], json!({"seq": gone}));

    // No copy of the deleted text anywhere in the table.
    let leaks: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM switchboard.archive
          WHERE envelope::text LIKE '%secret%' OR text LIKE '%secret%' OR search::text LIKE '%secret%'",
    )
    .fetch_one(&setup.db)
    .await
    .unwrap();
    assert_eq!(leaks, 0);
    let (text, edited_at): (Option<String>, Option<String>) = sqlx::query_as(
        "SELECT text, edited_at::text FROM switchboard.archive WHERE channel = $1 AND seq = $2",
    )
    .bind(ch)
    .bind(kept as i64)
    .fetch_one(&setup.db)
    .await
    .unwrap();
    assert_eq!(text.as_deref(), Some("lunch at two"));
    assert!(edited_at.is_some());
}

#[tokio::test]
async fn an_edit_archived_before_its_original_is_applied_when_the_original_comes() {
    let setup = setup().await;
    let _worker = Worker::start(&setup, "archive", &[]);
    let ch = "conversation:c1";
    // The stream is this test's own: the next seq after the edit and the deletion is
    // known in advance, so the changes can point at originals stored after them.
    let now = setup.store.position().await.unwrap().last_seq;
    let edited_seq = now + 3;
    let deleted_seq = now + 4;
    edit(&setup, ch, "u1", edited_seq, "after").await;
    delete(&setup, ch, "u1", deleted_seq).await;
    assert_eq!(say(&setup, ch, "u1", "before").await, edited_seq);
    assert_eq!(say(&setup, ch, "u1", "doomed").await, deleted_seq);
    wait_through(&setup, ch, deleted_seq).await;
    let events = all(&setup, ch).await;
    let by_seq = |seq: u64| events.iter().find(|(s, _)| *s == seq).unwrap().1.clone();
    assert_eq!(by_seq(edited_seq)["data"]["text"], "after");
    assert_eq!(by_seq(deleted_seq)["data"], json!({}));
    assert_eq!(by_seq(deleted_seq)["deleted"], true);
}

#[tokio::test]
async fn poison_is_skipped_and_what_postgresql_refuses_never_blocks_the_consumer() {
    let setup = setup().await;
    let _worker = Worker::start(&setup, "archive", &[]);
    let ch = "conversation:c1";
    let before = say(&setup, ch, "u1", "fine").await;
    // Not an envelope at all.
    setup
        .client
        .publish("rt.conversation.c1", "garbage".into())
        .await
        .unwrap();
    setup.client.flush().await.unwrap();
    // NUL characters, which PostgreSQL's text and jsonb refuse.
    let nul = publish_by(
        &setup,
        ch,
        "message.new",
        Some("u\u{0}1"),
        json!({"text": "a\u{0}b", "k": ["\u{0}"]}),
    )
    .await;
    let after = say(&setup, ch, "u1", "still fine").await;
    wait_through(&setup, ch, after).await;
    let events = all(&setup, ch).await;
    let seqs: Vec<u64> = events.iter().map(|(seq, _)| *seq).collect();
    assert_eq!(seqs, [before, nul, after]);
    assert_eq!(events[1].1["data"]["text"], "a\u{FFFD}b");
}

#[tokio::test]
async fn a_killed_worker_loses_and_duplicates_nothing() {
    let setup = setup().await;
    let worker = Worker::start(&setup, "archive", &[]);
    let ch = "conversation:c1";
    let mut last = 0;
    for n in 0..300 {
        last = say(&setup, ch, "u1", &format!("m{n}")).await;
        if n == 150 {
            worker.kill().await;
            break;
        }
    }
    for n in 151..300 {
        last = say(&setup, ch, "u1", &format!("m{n}")).await;
    }
    let _again = Worker::start(&setup, "archive", &[]);
    wait_through(&setup, ch, last).await;
    let events = all(&setup, ch).await;
    assert_eq!(events.len(), 300);
    let rows: i64 = sqlx::query_scalar("SELECT count(DISTINCT event_id) FROM switchboard.archive")
        .fetch_one(&setup.db)
        .await
        .unwrap();
    assert_eq!(rows, 300);
}

#[tokio::test]
async fn rows_past_the_retention_are_deleted() {
    let setup = setup().await;
    let _worker = Worker::start(
        &setup,
        "archive",
        &[
            ("SWITCHBOARD_ARCHIVE_RETENTION_DAYS", "2".into()),
            ("SWITCHBOARD_ARCHIVE_RETENTION_INTERVAL_MS", "200".into()),
        ],
    );
    let ch = "conversation:c1";
    let mut old = event("message.new", json!({"text": "long ago"}));
    old.timestamp = Timestamp::parse("2020-01-01T00:00:00Z").unwrap();
    let old_seq = support::publish(&setup, ch, &old).await;
    let recent = say(&setup, ch, "u1", "today").await;
    wait_through(&setup, ch, recent).await;
    eventually("the old row to be deleted", || async {
        let seqs: Vec<u64> = all(&setup, ch)
            .await
            .into_iter()
            .map(|(seq, _)| seq)
            .collect();
        (seqs == [recent]).then_some(())
    })
    .await;
    assert!(old_seq < recent);
}

#[tokio::test]
async fn bad_requests_are_refused() {
    let setup = setup().await;
    let _worker = Worker::start(&setup, "archive", &[]);
    let epoch = epoch(&setup).await;
    for params in [
        json!({"ch": "conversation:c1"}),
        json!({"ch": "conversation:c.1", "epoch": epoch}),
        json!({"ch": "user:u1:messages", "epoch": epoch}),
        json!({"ch": "conversation:c1", "epoch": epoch, "limit": 0}),
        json!({"ch": "conversation:c1", "epoch": epoch, "limit": 1001}),
        json!({"ch": "conversation:c1", "epoch": epoch, "order": "sideways"}),
        json!({"ch": "conversation:c1", "epoch": "12a"}),
        json!({"ch": "conversation:c1", "epoch": epoch, "after": -1}),
        json!({"ch": "conversation:c1", "epoch": epoch, "surprise": true}),
        json!([]),
    ] {
        let reply = read_reply(&setup, params.clone()).await;
        assert_eq!(reply["error"]["code"], "bad_request", "{params} -> {reply}");
    }
}

#[tokio::test]
async fn a_page_of_large_events_stops_early_and_says_so() {
    let setup = setup().await;
    let _worker = Worker::start(&setup, "archive", &[]);
    let ch = "conversation:big";
    let text = "x".repeat(300 * 1024);
    let mut seqs = Vec::new();
    for _ in 0..5 {
        seqs.push(say(&setup, ch, "u1", &text).await);
    }
    wait_through(&setup, ch, *seqs.last().unwrap()).await;
    let epoch = epoch(&setup).await;
    let mut got = Vec::new();
    let mut after = 0;
    loop {
        let page = read(
            &setup,
            json!({"ch": ch, "epoch": epoch, "after": after, "limit": 10}),
        )
        .await;
        let events = page["events"].as_array().unwrap().clone();
        assert!(!events.is_empty() || got.len() == seqs.len(), "{page}");
        let Some(last) = events.last() else { break };
        after = last["seq"].as_u64().unwrap();
        got.extend(events.iter().map(|e| e["seq"].as_u64().unwrap()));
        if page.get("truncated").is_none() {
            break;
        }
        assert!(events.len() < 5, "a truncated page is short");
    }
    assert_eq!(got, seqs);
}

/// The archive's write rate (docs/operations.md §12: >= 10,000 events/s). A measurement,
/// not a check: `cargo nextest run -p switchboard-workers --test archive --run-ignored
/// only --no-capture` (a release build measures what production gets).
#[tokio::test]
#[ignore = "measurement"]
async fn write_throughput() {
    let setup = setup().await;
    const EVENTS: u64 = 50_000;
    // Stored first, archived afterwards: the rate is the archive's alone.
    let publisher = setup.publisher.clone();
    for n in 0..EVENTS {
        let mut event = event(
            "message.new",
            json!({"text": format!("message number {n} about lunch")}),
        );
        event.actor = Some(Actor {
            id: format!("u{}", n % 7),
            kind: "user".into(),
        });
        let ch = channel(&format!("conversation:c{}", n % 500));
        publisher.publish(&ch, &event).await.unwrap();
    }
    let last = setup.store.position().await.unwrap().last_seq;
    let started = Instant::now();
    let _worker = Worker::start(&setup, "archive", &[]);
    support::eventually_within(Duration::from_secs(600), "everything archived", || async {
        let rows: i64 = sqlx::query_scalar("SELECT count(*) FROM switchboard.archive")
            .fetch_one(&setup.db)
            .await
            .unwrap();
        (rows as u64 >= EVENTS).then_some(())
    })
    .await;
    let took = started.elapsed();
    println!(
        "archived {EVENTS} events (last seq {last}) in {took:?}: {:.0} events/s",
        EVENTS as f64 / took.as_secs_f64()
    );
}
