//! Escalation end to end (docs/operations.md §4, "When push and email go out"): email
//! for what stays unread, one digest for several, nothing once read (by RPC or by a
//! conversation's read receipt), pending work across a SIGKILL, and push to online users
//! only after `push_after`, against real nats-server, PostgreSQL, the workers binary, an
//! SMTP server on loopback (tests/peers/smtp_server.py, aiosmtpd), a webhook receiver
//! and a Web Push service (tests/peers/push_service.py).

mod support;

use std::time::Duration;

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use serde_json::{Value, json};
use switchboard_schemas::Actor;
use tokio::time::Instant;

use support::http::Receiver;
use support::{
    Peer, Setup, Worker, add_member, bid, call, event, eventually, publish, set_contact, setup,
    stored,
};

const JOBS: &str = "membership,notifications,outbox";

async fn want_email(setup: &Setup, user: &str, category: &str) {
    let set = call(
        setup,
        "notifications.preferences.set",
        user,
        json!({"categories": {category: {"email": true}}}),
    )
    .await;
    assert_eq!(set["categories"][category]["email"], true, "{set}");
}

/// The ids of `user`'s notifications, oldest first, once there are `count`.
async fn notifications_of(setup: &Setup, user: &str, count: usize) -> Vec<String> {
    eventually(&format!("{count} notifications for {user}"), || async {
        let ids: Vec<String> = sqlx::query_scalar(
            "SELECT id FROM switchboard.notifications WHERE user_id = $1 ORDER BY id",
        )
        .bind(user)
        .fetch_all(&setup.db)
        .await
        .unwrap();
        (ids.len() >= count).then_some(ids)
    })
    .await
}

/// The `data` of every `notification.read` stored on `user:<user>`.
async fn read_events(setup: &Setup, user: &str) -> Vec<Value> {
    stored(setup, &format!("rt.user.{user}"))
        .await
        .into_iter()
        .filter(|(_, _, envelope)| envelope.ty.as_str() == "notification.read")
        .map(|(_, _, envelope)| envelope.data.decode().unwrap())
        .collect()
}

/// Every email the SMTP server accepts within `wait` (refusals left out).
async fn emails_within(smtp: &mut Peer, wait: Duration) -> Vec<Value> {
    let until = Instant::now() + wait;
    let mut emails = Vec::new();
    while let Some(record) = smtp
        .next_within(until.saturating_duration_since(Instant::now()))
        .await
    {
        if record.get("parts").is_some() {
            emails.push(record);
        }
    }
    emails
}

/// The next email the SMTP server accepts.
async fn next_email(smtp: &mut Peer) -> Value {
    loop {
        let record = smtp.next().await;
        if record.get("parts").is_some() {
            return record;
        }
    }
}

fn text_of(email: &Value) -> String {
    let part = email["parts"]
        .as_array()
        .unwrap()
        .iter()
        .find(|part| part["type"] == "text/plain")
        .unwrap_or_else(|| panic!("no text part in {email}"));
    part["body"].as_str().unwrap().replace("\r\n", "\n")
}

/// Seconds between the notification's creation and the first attempt planned for its
/// `medium` delivery to `user` by `sink` (a claimed row's lease only adds to it).
async fn planned_delay(setup: &Setup, user: &str, medium: &str, sink: &str) -> Vec<f64> {
    sqlx::query_scalar(
        "SELECT extract(epoch FROM d.next_attempt_at - n.created_at)::float8
           FROM switchboard.notification_deliveries d
           JOIN switchboard.notifications n ON n.id = d.notification_id
          WHERE d.user_id = $1 AND d.medium = $2 AND d.sink = $3",
    )
    .bind(user)
    .bind(medium)
    .bind(sink)
    .fetch_all(&setup.db)
    .await
    .unwrap()
}

/// (delivered, cancelled, attempts) of each of `user`'s email rows.
async fn email_rows(setup: &Setup, user: &str) -> Vec<(bool, bool, i32)> {
    sqlx::query_as(
        "SELECT delivered_at IS NOT NULL, cancelled_at IS NOT NULL, attempts
           FROM switchboard.notification_deliveries
          WHERE user_id = $1 AND medium = 'email' ORDER BY id",
    )
    .bind(user)
    .fetch_all(&setup.db)
    .await
    .unwrap()
}

fn smtp_env(port: u64, email_after: &str) -> Vec<(&'static str, String)> {
    vec![
        ("SWITCHBOARD_SMTP_URL", format!("smtp://127.0.0.1:{port}")),
        ("SWITCHBOARD_EMAIL_FROM", "alerts@example.com".into()),
        ("SWITCHBOARD_NOTIFY_SUBJECTS", "false".into()),
        ("SWITCHBOARD_NOTIFY_EMAIL_AFTER_S", email_after.into()),
    ]
}

#[tokio::test(flavor = "multi_thread")]
async fn what_stays_unread_is_emailed_after_the_delay_and_several_make_one_digest() {
    let setup = setup().await;
    let mut smtp = Peer::start("smtp_server.py", &[]);
    let port = smtp.next().await["port"].as_u64().unwrap();
    // Long enough for the three bids below to be created within one delay, under load.
    let _worker = Worker::start(&setup, JOBS, &smtp_env(port, "4"));
    for (user, project) in [("u1", "project:p1"), ("u2", "project:p2")] {
        set_contact(&setup, user, &format!("{user}@example.com")).await;
        want_email(&setup, user, "bid").await;
        add_member(&setup, project, user, "owner").await;
    }
    // One bid for u1; three for u2 within the delay.
    publish(&setup, "project:p1", &bid(100)).await;
    for amount in [201, 202, 203] {
        publish(&setup, "project:p2", &bid(amount)).await;
    }
    notifications_of(&setup, "u2", 3).await;
    for delay in planned_delay(&setup, "u2", "email", "smtp").await {
        assert!(
            delay >= 4.0,
            "planned {delay} s after creation, not at once"
        );
    }

    let mut emails = vec![next_email(&mut smtp).await, next_email(&mut smtp).await];
    emails.extend(emails_within(&mut smtp, Duration::from_secs(3)).await);
    assert_eq!(emails.len(), 2, "one email each: {emails:?}");
    emails.sort_by_key(|email| email["to"].as_str().unwrap().to_string());

    let single = &emails[0];
    assert_eq!(single["to"], "u1@example.com");
    assert_eq!(single["subject"], "New bid");
    assert_eq!(text_of(single), "New bid\n\nc9 placed a bid of 100 on p1\n");

    let digest = &emails[1];
    assert_eq!(digest["to"], "u2@example.com");
    assert_eq!(digest["subject"], "3 new notifications");
    assert_eq!(
        text_of(digest),
        "New bid\nc9 placed a bid of 201 on p2\n\n\
         New bid\nc9 placed a bid of 202 on p2\n\n\
         New bid\nc9 placed a bid of 203 on p2\n\n"
    );
    assert_eq!(
        email_rows(&setup, "u2").await,
        vec![(true, false, 1); 3],
        "the three rows share the one email"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn reading_in_time_by_rpc_or_by_a_read_receipt_or_deleting_cancels_the_email() {
    let setup = setup().await;
    let mut smtp = Peer::start("smtp_server.py", &[]);
    let port = smtp.next().await["port"].as_u64().unwrap();
    let _worker = Worker::start(&setup, &format!("{JOBS},receipts"), &smtp_env(port, "6"));
    for user in ["u1", "u2", "u4", "u5"] {
        set_contact(&setup, user, &format!("{user}@example.com")).await;
    }
    want_email(&setup, "u1", "bid").await;
    want_email(&setup, "u4", "bid").await;
    want_email(&setup, "u5", "bid").await;
    want_email(&setup, "u2", "message").await;
    add_member(&setup, "project:p1", "u1", "owner").await;
    add_member(&setup, "project:p4", "u4", "owner").await;
    add_member(&setup, "project:p5", "u5", "owner").await;
    for user in ["u2", "u3"] {
        let added = event("conversation.participant_added", json!({"user": user}));
        publish(&setup, "conversation:c1", &added).await;
    }

    // u1 reads the bid with notifications.read.
    publish(&setup, "project:p1", &bid(1)).await;
    let ids = notifications_of(&setup, "u1", 1).await;
    let read = call(&setup, "notifications.read", "u1", json!({"ids": ids})).await;
    assert_eq!(read, json!({"unread": 0}));

    // u2 reads the conversation up to u3's message: the read receipt reads its
    // notification.
    let mut message = event("message.new", json!({"text": "lunch?"}));
    message.actor = Some(Actor {
        id: "u3".into(),
        kind: "user".into(),
    });
    let seq = publish(&setup, "conversation:c1", &message).await;
    let ids = notifications_of(&setup, "u2", 1).await;
    let command = json!({"conversation": "conversation:c1", "user": "u2", "read": seq});
    setup
        .js
        .send_publish(
            "cmd.receipts.c1",
            async_nats::jetstream::message::PublishMessage::build()
                .payload(command.to_string().into()),
        )
        .await
        .unwrap()
        .await
        .unwrap();
    let announced = eventually("u2's notification.read", || async {
        read_events(&setup, "u2").await.into_iter().next()
    })
    .await;
    assert_eq!(announced, json!({"ids": ids, "unread": 0}));
    let listed = call(&setup, "notifications.list", "u2", json!({})).await;
    assert!(
        listed["items"][0]["readAt"].is_string(),
        "read by the receipt: {listed}"
    );

    // u5's notification is deleted (as erasure does): nothing is left to email about.
    publish(&setup, "project:p5", &bid(5)).await;
    notifications_of(&setup, "u5", 1).await;
    sqlx::query("DELETE FROM switchboard.notifications WHERE user_id = 'u5'")
        .execute(&setup.db)
        .await
        .unwrap();

    // u4 reads nothing: the one email, planned last, arrives after the others were due.
    publish(&setup, "project:p4", &bid(4)).await;
    let email = next_email(&mut smtp).await;
    assert_eq!(email["to"], "u4@example.com");
    let more = emails_within(&mut smtp, Duration::from_secs(1)).await;
    assert!(more.is_empty(), "nothing for what was read: {more:?}");
    for user in ["u1", "u2", "u5"] {
        assert_eq!(
            email_rows(&setup, user).await,
            [(false, true, 0)],
            "{user}'s email cancelled before any attempt"
        );
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn an_email_pending_when_the_worker_is_killed_is_sent_once_after_restart() {
    let setup = setup().await;
    let mut smtp = Peer::start("smtp_server.py", &[]);
    let port = smtp.next().await["port"].as_u64().unwrap();
    let env = smtp_env(port, "5");
    let worker = Worker::start(&setup, JOBS, &env);
    set_contact(&setup, "u1", "u1@example.com").await;
    want_email(&setup, "u1", "bid").await;
    add_member(&setup, "project:p1", "u1", "owner").await;
    publish(&setup, "project:p1", &bid(7)).await;
    notifications_of(&setup, "u1", 1).await;
    assert_eq!(email_rows(&setup, "u1").await, [(false, false, 0)]);
    worker.kill().await;

    // Two copies now: the waiting email is claimed by one of them, once.
    let _first = Worker::start(&setup, JOBS, &env);
    let _second = Worker::start(&setup, JOBS, &env);
    let email = next_email(&mut smtp).await;
    assert_eq!(email["to"], "u1@example.com");
    assert_eq!(email["subject"], "New bid");
    let more = emails_within(&mut smtp, Duration::from_secs(3)).await;
    assert!(more.is_empty(), "sent exactly once: {more:?}");
    assert_eq!(email_rows(&setup, "u1").await, [(true, false, 1)]);
}

/// The signing secret of the webhook in these tests.
const WEBHOOK_SECRET: &str = "whsec_c3dpdGNoYm9hcmQtdGVzdC13ZWJob29rLWtleQ==";

/// (event, user) of every webhook request so far, sorted.
fn heard(webhook: &Receiver) -> Vec<(String, String)> {
    let mut all: Vec<(String, String)> = webhook
        .requests()
        .iter()
        .map(|request| {
            let body = request.json();
            (
                body["event"].as_str().unwrap().to_string(),
                body["user"].as_str().unwrap().to_string(),
            )
        })
        .collect();
    all.sort();
    all
}

fn pair(event: &str, user: &str) -> (String, String) {
    (event.to_string(), user.to_string())
}

#[tokio::test(flavor = "multi_thread")]
async fn the_webhook_hears_created_and_push_due_and_online_users_are_pushed_only_if_still_unread() {
    let setup = setup().await;
    let webhook = Receiver::start(|_| 204).await;
    // One Web Push device, u4's.
    let mut service = Peer::start("push_service.py", &["1"]);
    let listing = service.next().await;
    let device = &listing["subscriptions"][0];
    let secret = p256::SecretKey::random(&mut rand_core::OsRng);
    let _worker = Worker::start(
        &setup,
        JOBS,
        &[
            (
                "SWITCHBOARD_NOTIFY_WEBHOOK_URL",
                format!("{}/hook", webhook.base),
            ),
            ("SWITCHBOARD_NOTIFY_WEBHOOK_SECRET", WEBHOOK_SECRET.into()),
            ("SWITCHBOARD_NOTIFY_SUBJECTS", "false".into()),
            ("SWITCHBOARD_NOTIFY_PUSH_AFTER_S", "5".into()),
            (
                "SWITCHBOARD_VAPID_PRIVATE_KEY",
                URL_SAFE_NO_PAD.encode(secret.to_bytes()),
            ),
            ("SWITCHBOARD_VAPID_SUBJECT", "mailto:ops@example.com".into()),
            ("SWITCHBOARD_PUSH_ENDPOINT_HOSTS", "127.0.0.1".into()),
        ],
    );
    let subscription = json!({
        "endpoint": format!("http://127.0.0.1:{}{}", listing["port"], device["path"].as_str().unwrap()),
        "keys": {"p256dh": device["p256dh"], "auth": device["auth"]},
    });
    let subscribed = call(
        &setup,
        "push.subscribe",
        "u4",
        json!({"subscription": subscription, "device": "d1"}),
    )
    .await;
    assert_eq!(subscribed, json!({"device": "d1"}));

    // u1 and u4 are offline; u2 and u3 online; u3 reads in time.
    for user in ["u1", "u2", "u3", "u4"] {
        add_member(&setup, "project:p1", user, "owner").await;
    }
    for user in ["u2", "u3"] {
        setup
            .presence
            .put(format!("{user}.conn-1"), r#"{"status":"online"}"#.into())
            .await
            .unwrap();
    }
    publish(&setup, "project:p1", &bid(9)).await;
    let ids = notifications_of(&setup, "u3", 1).await;
    call(&setup, "notifications.read", "u3", json!({"ids": ids})).await;

    // At once: every notification as created, and u1's push (no device of its own).
    let at_once = vec![
        pair("created", "u1"),
        pair("created", "u2"),
        pair("created", "u3"),
        pair("created", "u4"),
        pair("push_due", "u1"),
    ];
    eventually("created for all, push_due for offline u1", || async {
        (heard(&webhook).len() >= at_once.len()).then_some(())
    })
    .await;
    // u4's device is pushed instead of the webhook.
    let pushed = service.next().await;
    assert_eq!(pushed["path"], device["path"], "{pushed}");

    // Still unread after push_after: online u2 is pushed; u3 read it.
    eventually("push_due for online u2", || async {
        heard(&webhook)
            .contains(&pair("push_due", "u2"))
            .then_some(())
    })
    .await;
    for delay in planned_delay(&setup, "u2", "push", "webhook").await {
        assert!(delay >= 5.0, "planned {delay} s after creation");
    }
    tokio::time::sleep(Duration::from_secs(1)).await;
    let mut expected = at_once;
    expected.push(pair("push_due", "u2"));
    expected.sort();
    assert_eq!(heard(&webhook), expected);
    let body = webhook
        .requests()
        .iter()
        .map(|request| request.json())
        .find(|body| body["event"] == "created" && body["user"] == "u3")
        .unwrap();
    assert_eq!(body["notificationId"], ids[0].as_str());
    assert_eq!(body["title"], "New bid");
    assert!(body.get("medium").is_none(), "{body}");
    assert!(
        service
            .next_within(Duration::from_millis(200))
            .await
            .is_none(),
        "u4's device pushed once"
    );
}
