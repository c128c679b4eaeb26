//! Erasure as a process, against a real nats-server and PostgreSQL: the archive,
//! membership and notifications jobs and the outbox relay run, conversation events go in on
//! `rt.conversation.<id>`, and `erase.user` / `erase.channel` are called as a backend's
//! request reaches the workers (`Rt-Role: service`). Afterwards the erased text is
//! nowhere a client, a search or an operator could read it.

mod support;

use serde_json::{Value, json};
use sqlx::PgPool;

use support::{
    Setup, Worker, call, delete, edit, eventually, join, publish_by, request, say, setup,
    stored_events,
};

const JOBS: &str = "archive,membership,notifications,outbox";

/// `erase.<what>` as a backend calls it; the whole reply.
async fn erase(setup: &Setup, what: &str, role: &str, params: Value) -> Value {
    request(
        setup,
        &format!("svc.erase.{what}"),
        &[("Rt-User", "ops"), ("Rt-Role", role)],
        params,
    )
    .await
}

/// Rows anywhere in PostgreSQL an operator could read that still hold `needle`.
async fn rows_holding(db: &PgPool, needle: &str) -> Vec<String> {
    let like = format!("%{needle}%");
    let mut found = Vec::new();
    for (place, sql) in [
        (
            "archive",
            "SELECT event_id FROM switchboard.archive
              WHERE envelope::text LIKE $1 OR coalesce(text, '') LIKE $1 OR search::text LIKE $1",
        ),
        (
            "notifications",
            "SELECT id FROM switchboard.notifications WHERE title LIKE $1 OR message LIKE $1",
        ),
        (
            "deliveries",
            "SELECT id::text FROM switchboard.notification_deliveries WHERE payload::text LIKE $1",
        ),
        (
            "outbox",
            "SELECT event_id FROM switchboard.outbox WHERE data::text LIKE $1",
        ),
    ] {
        let rows: Vec<String> = sqlx::query_scalar(sql)
            .bind(&like)
            .fetch_all(db)
            .await
            .unwrap();
        found.extend(rows.into_iter().map(|id| format!("{place}: {id}")));
    }
    found
}

/// Seqs of stored messages in `EVENTS` whose bytes hold `needle`.
async fn stream_holding(setup: &Setup, needle: &str) -> Vec<u64> {
    stored_events(setup, "rt.>")
        .await
        .into_iter()
        .filter(|e| {
            e.payload
                .windows(needle.len())
                .any(|w| w == needle.as_bytes())
        })
        .map(|e| e.seq)
        .collect()
}

async fn archived(db: &PgPool, ch: &str) -> i64 {
    sqlx::query_scalar("SELECT count(*) FROM switchboard.archive WHERE channel = $1")
        .bind(ch)
        .fetch_one(db)
        .await
        .unwrap()
}

async fn notifications_about(db: &PgPool, needle: &str) -> i64 {
    sqlx::query_scalar("SELECT count(*) FROM switchboard.notifications WHERE message LIKE $1")
        .bind(format!("%{needle}%"))
        .fetch_one(db)
        .await
        .unwrap()
}

#[tokio::test]
async fn a_users_messages_leave_the_stream_the_archive_search_the_inbox_and_notifications() {
    let setup = setup().await;
    let _worker = Worker::start(&setup, JOBS, &[]);
    let c1 = "conversation:c1";
    join(&setup, c1, "u1").await;
    join(&setup, c1, "u2").await;
    let kept = say(&setup, c1, "u2", "hello from u2, keep me").await;
    let secret = say(&setup, c1, "u1", "my number is pineapple 555").await;
    edit(&setup, c1, "u1", secret, "my number is mango 555").await;
    let last = say(&setup, c1, "u1", "see you at the pineapple stand").await;
    // A receipt about u1 is no message of u1's: it stays.
    let receipt = publish_by(
        &setup,
        c1,
        "message.receipt",
        Some("u1"),
        json!({"user": "u1", "delivered": kept, "read": kept}),
    )
    .await;

    // Everything is archived, searchable, in u2's inbox and notified to u2.
    eventually("u1's messages archived and notified", || async {
        let searchable = call(&setup, "messages.search", "u2", json!({"q": "pineapple"})).await;
        let found = searchable["results"].as_array().map_or(0, Vec::len);
        let inbox = call(&setup, "inbox.list", "u2", json!({})).await;
        let notified = notifications_about(&setup.db, "pineapple").await;
        let announced = stream_holding(&setup, "pineapple").await.len();
        // Two messages (the edit says mango), and the user.notification events made from them.
        (found == 1
            && inbox["conversations"][0]["last"]["seq"] == last
            && notified == 2
            && announced == 4)
            .then_some(())
    })
    .await;

    let reply = erase(&setup, "user", "service", json!({"user": "u1"})).await;
    let result = &reply["result"];
    assert_eq!(result["user"], "u1", "{reply}");
    let removed = &result["removed"];
    assert_eq!(
        removed["events"], 5,
        "two messages, an edit, two user.notification events: {reply}"
    );
    assert_eq!(removed["archive"], 3, "{reply}");
    assert_eq!(removed["search"], 2, "{reply}");
    assert_eq!(
        removed["inbox"], 2,
        "both entries' last message changed: {reply}"
    );
    assert_eq!(removed["notifications"], 2, "{reply}");
    assert_eq!(removed["outbox"], 2, "{reply}");

    for needle in ["pineapple", "mango"] {
        assert_eq!(rows_holding(&setup.db, needle).await, Vec::<String>::new());
        assert_eq!(stream_holding(&setup, needle).await, Vec::<u64>::new());
        let search = call(&setup, "messages.search", "u2", json!({"q": needle})).await;
        assert_eq!(search["results"], json!([]), "{needle}: {search}");
        let inbox = call(&setup, "inbox.list", "u2", json!({})).await;
        assert!(!inbox.to_string().contains(needle), "{inbox}");
    }
    for seq in [secret, last] {
        let gone = setup.store.get(seq).await.unwrap();
        assert!(gone.is_none(), "seq {seq} still in EVENTS");
    }
    // u2's message and the receipt stay everywhere; u2's message is now the last.
    assert!(setup.store.get(kept).await.unwrap().is_some());
    assert!(setup.store.get(receipt).await.unwrap().is_some());
    let receipt_data: String = sqlx::query_scalar(
        "SELECT envelope ->> 'data' FROM switchboard.archive WHERE channel = $1 AND seq = $2",
    )
    .bind(c1)
    .bind(receipt as i64)
    .fetch_one(&setup.db)
    .await
    .unwrap();
    let receipt_data: Value = serde_json::from_str(&receipt_data).unwrap();
    assert_eq!(receipt_data["read"], kept, "{receipt_data}");
    let inbox = call(&setup, "inbox.list", "u1", json!({})).await;
    assert_eq!(inbox["conversations"][0]["last"]["seq"], kept, "{inbox}");
    let search = call(&setup, "messages.search", "u2", json!({"q": "keep"})).await;
    assert_eq!(search["results"].as_array().unwrap().len(), 1, "{search}");
    // The blanked rows keep their seqs, as deleted messages do.
    assert_eq!(archived(&setup.db, c1).await, 7);

    // Erasing again finds nothing left.
    let again = erase(&setup, "user", "service", json!({"user": "u1"})).await;
    assert_eq!(
        again["result"]["removed"],
        json!({"events":0,"archive":0,"search":0,"inbox":0,"notifications":0,"deliveries":0,"outbox":0}),
        "{again}"
    );
}

#[tokio::test]
async fn a_conversation_is_erased_everywhere() {
    let setup = setup().await;
    let _worker = Worker::start(&setup, JOBS, &[]);
    let (c1, c2) = ("conversation:c1", "conversation:c2");
    for ch in [c1, c2] {
        join(&setup, ch, "u1").await;
        join(&setup, ch, "u2").await;
    }
    say(&setup, c1, "u1", "the durian plan").await;
    say(&setup, c1, "u2", "durian agreed").await;
    say(&setup, c2, "u1", "other conversation stays").await;
    eventually("both conversations archived and notified", || async {
        let notified = notifications_about(&setup.db, "durian").await;
        let other = notifications_about(&setup.db, "stays").await;
        let announced = stream_holding(&setup, "durian").await.len();
        (archived(&setup.db, c1).await == 4 && notified == 2 && other == 1 && announced == 4)
            .then_some(())
    })
    .await;

    let reply = erase(&setup, "channel", "service", json!({"ch": c1})).await;
    let result = &reply["result"];
    assert_eq!(result["ch"], c1, "{reply}");
    let removed = &result["removed"];
    assert_eq!(
        removed["events"], 6,
        "two joins, two messages, two user.notification events: {reply}"
    );
    assert_eq!(removed["archive"], 4, "{reply}");
    assert_eq!(removed["search"], 2, "{reply}");
    assert_eq!(removed["inbox"], 2, "{reply}");
    assert_eq!(removed["notifications"], 2, "{reply}");
    assert_eq!(removed["outbox"], 2, "{reply}");

    assert_eq!(
        rows_holding(&setup.db, "durian").await,
        Vec::<String>::new()
    );
    assert_eq!(stream_holding(&setup, "durian").await, Vec::<u64>::new());
    assert!(stored_events(&setup, "rt.conversation.c1").await.is_empty());
    assert_eq!(archived(&setup.db, c1).await, 0);
    let search = call(&setup, "messages.search", "u2", json!({"q": "durian"})).await;
    assert_eq!(search["results"], json!([]), "{search}");
    let inbox = call(&setup, "inbox.list", "u2", json!({})).await;
    let listed: Vec<&str> = inbox["conversations"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c["ch"].as_str().unwrap())
        .collect();
    assert_eq!(listed, vec![c2], "{inbox}");
    // The other conversation is untouched.
    assert_eq!(archived(&setup.db, c2).await, 3);
    assert_eq!(notifications_about(&setup.db, "stays").await, 1);
}

#[tokio::test]
async fn a_deleted_message_leaves_the_notifications_made_from_it() {
    let setup = setup().await;
    let _worker = Worker::start(&setup, JOBS, &[]);
    let c1 = "conversation:c1";
    join(&setup, c1, "u1").await;
    join(&setup, c1, "u2").await;
    let seq = say(&setup, c1, "u1", "oops, the kiwi password").await;
    eventually("u2 notified", || async {
        (notifications_about(&setup.db, "kiwi").await == 1).then_some(())
    })
    .await;
    delete(&setup, c1, "u1", seq).await;
    eventually("the text gone from the notification", || async {
        rows_holding(&setup.db, "kiwi")
            .await
            .is_empty()
            .then_some(())
    })
    .await;
    let list = call(&setup, "notifications.list", "u2", json!({})).await;
    assert!(!list.to_string().contains("kiwi"), "{list}");
    assert_eq!(
        list["items"].as_array().unwrap().len(),
        1,
        "kept, blank: {list}"
    );
}

#[tokio::test]
async fn users_may_not_erase_and_bad_params_are_refused() {
    let setup = setup().await;
    let _worker = Worker::start(&setup, JOBS, &[]);
    let c1 = "conversation:c1";
    join(&setup, c1, "u1").await;
    say(&setup, c1, "u1", "still here").await;

    for (what, params) in [
        ("user", json!({"user": "u1"})),
        ("channel", json!({"ch": c1})),
    ] {
        let refused = erase(&setup, what, "user", params).await;
        assert_eq!(refused["error"]["code"], "forbidden", "{refused}");
    }
    assert_eq!(stored_events(&setup, "rt.conversation.c1").await.len(), 2);

    for (what, params) in [
        ("user", json!({"user": "u 1"})),
        ("user", json!({"user": "u1", "also": true})),
        ("user", json!({})),
        ("channel", json!({"ch": "conversation:*"})),
        ("channel", json!({"ch": "user:u1:messages"})),
        ("channel", json!({"channel": c1})),
    ] {
        let refused = erase(&setup, what, "service", params.clone()).await;
        assert_eq!(
            refused["error"]["code"], "bad_request",
            "{what} {params}: {refused}"
        );
    }
    assert_eq!(stored_events(&setup, "rt.conversation.c1").await.len(), 2);
}

#[tokio::test]
async fn an_erasure_racing_the_jobs_leaves_nothing_behind() {
    let setup = setup().await;
    let _worker = Worker::start(&setup, JOBS, &[]);
    let c1 = "conversation:c1";
    join(&setup, c1, "u1").await;
    join(&setup, c1, "u2").await;
    for n in 0..30 {
        say(&setup, c1, "u1", &format!("lychee {n}")).await;
    }
    // No wait: the jobs may be copying these messages while they are erased.
    let reply = erase(&setup, "user", "service", json!({"user": "u1"})).await;
    assert!(
        reply["result"]["removed"]["events"].as_u64().unwrap() > 0,
        "{reply}"
    );
    // Once a later message is archived and notified, the jobs are past the erased ones.
    say(&setup, c1, "u2", "marker").await;
    eventually("the marker archived and notified", || async {
        let archived: i64 =
            sqlx::query_scalar("SELECT count(*) FROM switchboard.archive WHERE text = 'marker'")
                .fetch_one(&setup.db)
                .await
                .unwrap();
        (archived == 1 && notifications_about(&setup.db, "marker").await == 1).then_some(())
    })
    .await;
    assert_eq!(
        rows_holding(&setup.db, "lychee").await,
        Vec::<String>::new()
    );
    assert_eq!(stream_holding(&setup, "lychee").await, Vec::<u64>::new());
}
