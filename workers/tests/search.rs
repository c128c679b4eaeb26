//! `messages.search` as a process, against a real nats-server and PostgreSQL: the archive
//! and membership jobs run, conversation events go in on `rt.conversation.<id>`, and the
//! tests search as a user's `rpc` reaches the workers.

mod support;

use serde_json::{Value, json};

use support::{Setup, Worker, delete, edit, eventually, join, publish_by, rpc, say, setup};

async fn search(setup: &Setup, user: &str, params: Value) -> Value {
    support::call(setup, "messages.search", user, params).await
}

/// (channel, seq) of each result.
fn hits(page: &Value) -> Vec<(String, u64)> {
    page["results"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| {
            (
                r["ch"].as_str().unwrap().to_string(),
                r["seq"].as_u64().unwrap(),
            )
        })
        .collect()
}

/// Waits until `user`'s search for `q` finds exactly `expected`.
async fn finds(setup: &Setup, user: &str, q: &str, expected: &[(&str, u64)]) -> Value {
    let expected: Vec<(String, u64)> = expected.iter().map(|(c, s)| (c.to_string(), *s)).collect();
    eventually(
        &format!("{user} searching {q:?} to find {expected:?}"),
        || async {
            let page = search(setup, user, json!({"q": q})).await;
            (hits(&page) == expected).then_some(page)
        },
    )
    .await
}

#[tokio::test]
async fn finds_words_in_the_users_conversations_only_newest_first() {
    let setup = setup().await;
    let _worker = Worker::start(&setup, "archive,membership", &[]);
    let (c1, c2, c3) = ("conversation:c1", "conversation:c2", "conversation:c3");
    join(&setup, c1, "u1").await;
    join(&setup, c2, "u1").await;
    join(&setup, c3, "u9").await;
    let a = say(&setup, c1, "u2", "Banana bread recipe attached").await;
    let b = say(&setup, c2, "u3", "the bread is in the oven").await;
    let hidden = say(&setup, c3, "u9", "secret bread for u9 only").await;
    say(&setup, c1, "u2", "nothing to see").await;

    let page = finds(&setup, "u1", "bread", &[(c2, b), (c1, a)]).await;
    let first = &page["results"][0];
    assert_eq!(first["event"]["data"]["text"], "the bread is in the oven");
    assert_eq!(first["event"]["type"], "message.new");
    assert_eq!(first["event"]["actor"]["id"], "u3");
    assert!(
        first["snippet"].as_str().unwrap().contains("**bread**"),
        "{first}"
    );
    assert_eq!(page["next"], Value::Null);
    // Words, any case, both terms (websearch syntax).
    finds(&setup, "u1", "BANANA bread", &[(c1, a)]).await;
    finds(&setup, "u1", "\"banana bread\"", &[(c1, a)]).await;
    finds(&setup, "u1", "bread -banana", &[(c2, b)]).await;
    finds(&setup, "u1", "banana or oven", &[(c2, b), (c1, a)]).await;

    // The filter by channel.
    let page = search(&setup, "u1", json!({"q": "bread", "ch": c1})).await;
    assert_eq!(hits(&page), [(c1.to_string(), a)]);
    // Someone else's conversation: refused, whether it exists or not, and never found.
    for ch in [c3, "conversation:nowhere"] {
        let reply = rpc(
            &setup,
            "messages.search",
            Some("u1"),
            json!({"q": "bread", "ch": ch}),
        )
        .await;
        assert_eq!(reply["error"]["code"], "forbidden", "{reply}");
    }
    finds(&setup, "u9", "bread", &[(c3, hidden)]).await;

    // Removed from c2: its messages are no longer found.
    publish_by(
        &setup,
        c2,
        "conversation.participant_removed",
        None,
        json!({"user": "u1"}),
    )
    .await;
    finds(&setup, "u1", "bread", &[(c1, a)]).await;
    let reply = rpc(
        &setup,
        "messages.search",
        Some("u1"),
        json!({"q": "bread", "ch": c2}),
    )
    .await;
    assert_eq!(reply["error"]["code"], "forbidden");
}

#[tokio::test]
async fn edits_are_found_by_their_latest_text_and_deleted_messages_never() {
    let setup = setup().await;
    let _worker = Worker::start(&setup, "archive,membership", &[]);
    let ch = "conversation:c1";
    join(&setup, ch, "u1").await;
    let edited = say(&setup, ch, "u1", "meet at the harbour").await;
    let deleted = say(&setup, ch, "u1", "my phone is 5550199 call me").await;
    finds(&setup, "u1", "harbour", &[(ch, edited)]).await;
    finds(&setup, "u1", "5550199", &[(ch, deleted)]).await;

    edit(&setup, ch, "u1", edited, "meet at the station").await;
    delete(&setup, ch, "u1", deleted).await;
    let page = finds(&setup, "u1", "station", &[(ch, edited)]).await;
    assert_eq!(
        page["results"][0]["event"]["data"]["text"],
        "meet at the station"
    );
    assert!(page["results"][0]["event"]["data"]["editedAt"].is_string());
    finds(&setup, "u1", "harbour", &[]).await;
    finds(&setup, "u1", "5550199", &[]).await;
    finds(&setup, "u1", "phone", &[]).await;
    // An edit of a deleted message is not found either.
    edit(&setup, ch, "u1", deleted, "phone again").await;
    let marker = say(&setup, ch, "u1", "marker").await;
    finds(&setup, "u1", "marker", &[(ch, marker)]).await;
    finds(&setup, "u1", "phone", &[]).await;
}

#[tokio::test]
async fn any_text_is_a_query_and_pages_follow_the_cursor() {
    let setup = setup().await;
    let _worker = Worker::start(&setup, "archive,membership", &[]);
    let ch = "conversation:c1";
    join(&setup, ch, "u1").await;
    let mut seqs = Vec::new();
    for n in 0..7 {
        seqs.push(say(&setup, ch, "u2", &format!("lunch plan number {n}")).await);
    }
    let mut newest_first: Vec<(&str, u64)> = seqs.iter().rev().map(|s| (ch, *s)).collect();
    finds(&setup, "u1", "lunch", &newest_first).await;

    let mut seen = Vec::new();
    let mut before: Option<String> = None;
    loop {
        let mut params = json!({"q": "lunch", "limit": 3});
        if let Some(cursor) = &before {
            params["before"] = json!(cursor);
        }
        let page = search(&setup, "u1", params).await;
        seen.extend(hits(&page));
        match page["next"].as_str() {
            Some(next) => before = Some(next.to_string()),
            None => break,
        }
    }
    let expected: Vec<(String, u64)> = newest_first
        .drain(..)
        .map(|(c, s)| (c.to_string(), s))
        .collect();
    assert_eq!(seen, expected);

    let punctuation = "!\"#$%&'()*+,-./:;<=>?@[\\]^_`{|}~".repeat(330);
    assert!(punctuation.len() >= 10 * 1024);
    for q in [
        "",
        "   ",
        "!!!",
        "\"",
        "\"unbalanced quote",
        "a & b | !c <-> d:*",
        "lunch' OR 1=1; DROP TABLE switchboard.archive; --",
        "(((lunch",
        "-",
        "or",
        "\u{0}lunch",
        "😀 emoji",
        punctuation.as_str(),
    ] {
        let reply = rpc(&setup, "messages.search", Some("u1"), json!({"q": q})).await;
        assert!(reply.get("result").is_some(), "{q:?} -> {reply}");
    }
    // Still there after all that.
    finds(&setup, "u1", "lunch plan 6", &[(ch, seqs[6])]).await;

    for params in [
        json!({}),
        json!({"q": 5}),
        json!({"q": "lunch", "before": "nope"}),
        json!({"q": "lunch", "before": "MTox"}),
        json!({"q": "lunch", "limit": 0}),
        json!({"q": "lunch", "limit": 101}),
        json!({"q": "lunch", "ch": "conversation:a b"}),
        json!({"q": "lunch", "extra": true}),
        json!({"q": "x".repeat(17 * 1024)}),
    ] {
        let reply = rpc(&setup, "messages.search", Some("u1"), params.clone()).await;
        let shown: String = params.to_string().chars().take(80).collect();
        assert_eq!(reply["error"]["code"], "bad_request", "{shown} -> {reply}");
    }
}

/// `messages.search` for a user in 1,000 conversations over 1,000,000 archived messages
/// (budget: p99 <= 100 ms, issue 17). A measurement, not a check:
/// `cargo nextest run -p switchboard-workers --test search --run-ignored only --no-capture`.
#[tokio::test]
#[ignore = "measurement"]
async fn search_latency_over_a_large_archive() {
    let setup = setup().await;
    let epoch = setup.store.position().await.unwrap().epoch;
    // 2,000 conversations, the user in half of them; words from a small vocabulary, so
    // common words match a large part of the archive.
    sqlx::query(
        "INSERT INTO switchboard.archive (channel, epoch, seq, event_id, type, actor_id, ts, envelope, text)
         SELECT 'conversation:c' || (n % 2000), $1, n, 'evt_' || n, 'message.new', 'u' || (n % 5),
                now() - (1000000 - n) * interval '1 second',
                jsonb_build_object('id', 'evt_' || n, 'type', 'message.new', 'data', '{}'::jsonb),
                (ARRAY['lunch','monday','invoice','kitchen','tiles','quote','paint','roof'])[1 + n % 8]
                || ' ' || (ARRAY['today','tomorrow','later','soon','maybe'])[1 + n % 5]
                || ' ref' || (n % 10007)
           FROM generate_series(1, 1000000) AS n",
    )
    .bind(&epoch)
    .execute(&setup.db)
    .await
    .unwrap();
    sqlx::query(
        "INSERT INTO switchboard.channel_members (channel, user_id, role, active, seq, event_id)
         SELECT 'conversation:c' || (c * 2), 'u1', 'member', true, 1, 'evt_m' || c
           FROM generate_series(0, 999) AS c",
    )
    .execute(&setup.db)
    .await
    .unwrap();
    sqlx::query("VACUUM ANALYZE switchboard.archive")
        .execute(&setup.db)
        .await
        .unwrap();
    sqlx::query("ANALYZE switchboard.channel_members")
        .execute(&setup.db)
        .await
        .unwrap();
    let _worker = Worker::start(&setup, "archive", &[]);
    for q in [
        "lunch",
        "lunch today",
        "ref5",
        "\"kitchen tiles\"",
        "nothingmatches",
    ] {
        search(&setup, "u1", json!({"q": q})).await;
        let mut took = Vec::new();
        for _ in 0..50 {
            let started = std::time::Instant::now();
            search(&setup, "u1", json!({"q": q, "limit": 20})).await;
            took.push(started.elapsed());
        }
        took.sort();
        println!(
            "messages.search {q:?}: p50 {:?}, p99 {:?}",
            took[took.len() / 2],
            took[took.len() * 99 / 100]
        );
    }
}
