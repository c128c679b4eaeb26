//! The notifications job as a process, with the membership job and the outbox relay,
//! against a real nats-server and PostgreSQL: domain events go in through the publishing
//! API; the tests watch `switchboard.notifications`, the `user.notification` and
//! `notification.read` events on `rt.user.<id>`, a webhook served by the test, the
//! `notify.*` subjects, and the answers of `svc.notifications.*`.

mod support;

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Mutex;
use std::time::Duration;

use async_nats::HeaderMap;
use async_nats::jetstream::message::PublishMessage;
use futures_util::StreamExt;
use serde_json::{Value, json};
use switchboard_bus::headers;
use switchboard_schemas::{Actor, Envelope, Timestamp};

use support::http::Receiver;
use support::{
    DEADLINE, Setup, Worker, add_member, call, event, eventually, publish, rpc, setup, stored,
    wait_until_caught_up, wait_until_sent,
};

const JOBS: &str = "membership,notifications,outbox";

fn bid(amount: u32) -> Envelope {
    let mut envelope = event(
        "bid.new",
        json!({"bidId": format!("bid_{amount}"), "amount": amount}),
    );
    envelope.actor = Some(Actor {
        id: "c9".into(),
        kind: "contractor".into(),
    });
    envelope
}

/// Users notified of `event_id`, with how many notifications each has for it.
async fn notified(setup: &Setup, event_id: &str) -> BTreeMap<String, i64> {
    let rows: Vec<(String, i64)> = sqlx::query_as(
        "SELECT user_id, count(*) FROM switchboard.notifications WHERE event_id = $1 GROUP BY user_id",
    )
    .bind(event_id)
    .fetch_all(&setup.db)
    .await
    .unwrap();
    rows.into_iter().collect()
}

/// The `data` of every event of type `ty` stored on `user:<user>`, in stream order.
async fn user_events(setup: &Setup, user: &str, ty: &str) -> Vec<Value> {
    stored(setup, &format!("rt.user.{user}"))
        .await
        .into_iter()
        .filter(|(_, _, envelope)| envelope.ty.as_str() == ty)
        .map(|(_, _, envelope)| envelope.data.decode().unwrap())
        .collect()
}

async fn wait_for_user_events(setup: &Setup, user: &str, ty: &str, count: usize) -> Vec<Value> {
    eventually(&format!("{count} {ty} on user:{user}"), || async {
        let events = user_events(setup, user, ty).await;
        (events.len() >= count).then_some(events)
    })
    .await
}

/// Marks `user` as connected, as an edge does with a key in the `presence` bucket.
async fn connect(setup: &Setup, user: &str, connection: &str) {
    setup
        .presence
        .put(
            format!("{user}.{connection}"),
            r#"{"status":"online"}"#.into(),
        )
        .await
        .unwrap();
}

async fn disconnect(setup: &Setup, user: &str, connection: &str) {
    setup
        .presence
        .delete(format!("{user}.{connection}"))
        .await
        .unwrap();
}

#[tokio::test(flavor = "multi_thread")]
async fn bid_new_notifies_exactly_the_owners_once_across_a_kill_and_a_second_copy() {
    let setup = setup().await;
    let worker = Worker::start(&setup, JOBS, &[]);
    add_member(&setup, "project:p1", "u1", "owner").await;
    add_member(&setup, "project:p1", "u2", "owner").await;
    add_member(&setup, "project:p1", "u3", "contractor").await;
    add_member(&setup, "project:p1", "u4", "member").await;
    add_member(&setup, "project:p2", "u5", "owner").await;

    let bid = bid(5000);
    let seq = publish(&setup, "project:p1", &bid).await;
    let first = wait_for_user_events(&setup, "u1", "user.notification", 1).await;
    assert_eq!(
        first[0],
        json!({
            "id": first[0]["id"],
            "category": "bid",
            "title": "New bid",
            "message": "c9 placed a bid of 5000 on p1",
            "priority": "high",
            "ref": {"channel": "project:p1", "seq": seq},
            "unread": 1,
            "createdAt": first[0]["createdAt"],
        })
    );
    assert!(first[0]["id"].as_str().unwrap().starts_with("ntf_"));
    wait_for_user_events(&setup, "u2", "user.notification", 1).await;
    worker.kill().await;

    // The same event stored a second time: a publisher without Nats-Msg-Id, or a retry
    // after the duplicate window. And a replay of the whole stream, as after the
    // consumer was deleted.
    let mut headers = HeaderMap::new();
    headers.insert(headers::RT_TYPE, "bid.new");
    let message = PublishMessage::build()
        .payload(bid.to_postcard().into())
        .headers(headers);
    setup
        .js
        .send_publish("rt.project.p1", message)
        .await
        .unwrap()
        .await
        .unwrap();
    let again = setup
        .publisher
        .publish(&support::channel("project:p1"), &bid)
        .await
        .unwrap();
    assert!(again.duplicate, "the same Nats-Msg-Id is stored once");
    let events = setup.js.get_stream("EVENTS").await.unwrap();
    events.delete_consumer("notifications").await.unwrap();

    let _worker = Worker::start(&setup, JOBS, &[]);
    wait_until_caught_up(&setup, "notifications").await;
    wait_until_sent(&setup, DEADLINE).await;

    let expected = BTreeMap::from([("u1".to_string(), 1), ("u2".to_string(), 1)]);
    assert_eq!(notified(&setup, bid.id.as_str()).await, expected);
    for owner in ["u1", "u2"] {
        let announced = user_events(&setup, owner, "user.notification").await;
        assert_eq!(announced.len(), 1, "{owner}: {announced:?}");
        assert_eq!(announced[0]["unread"], 1);
        let list = call(&setup, "notifications.list", owner, json!({})).await;
        assert_eq!(list["unread"], 1);
        assert_eq!(list["items"].as_array().unwrap().len(), 1);
    }
    for other in ["u3", "u4", "u5", "c9"] {
        assert!(
            user_events(&setup, other, "user.notification")
                .await
                .is_empty(),
            "{other}"
        );
    }
    println!(
        "notifications across a kill, a second store of the event and a replay: 1 bid.new \
         stored twice and replayed from the start by a second worker; owners u1 and u2 \
         have 1 notification, 1 user.notification (unread 1) and list 1 unread each; \
         u3, u4, u5 and the actor c9 have none"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn default_rules_choose_recipients_by_role_and_leave_out_the_actor() {
    let setup = setup().await;
    let _worker = Worker::start(&setup, JOBS, &[]);
    for user in ["u1", "u2", "u3"] {
        let added = event("conversation.participant_added", json!({"user": user}));
        publish(&setup, "conversation:c1", &added).await;
    }
    let mut message = event("message.new", json!({"text": "Can you start Monday?"}));
    message.actor = Some(Actor {
        id: "u1".into(),
        kind: "user".into(),
    });
    publish(&setup, "conversation:c1", &message).await;

    // A member added just before an event is among its recipients.
    add_member(&setup, "job:j1", "u7", "owner").await;
    add_member(&setup, "job:j1", "u8", "contractor").await;
    let mut status = event("job.status", json!({"status": "started"}));
    status.actor = Some(Actor {
        id: "u8".into(),
        kind: "contractor".into(),
    });
    publish(&setup, "job:j1", &status).await;
    // No rule: nobody.
    publish(
        &setup,
        "job:j1",
        &event("project.update", json!({"title": "x"})),
    )
    .await;

    wait_until_caught_up(&setup, "notifications").await;
    let expected = BTreeMap::from([("u2".to_string(), 1), ("u3".to_string(), 1)]);
    assert_eq!(notified(&setup, message.id.as_str()).await, expected);
    let expected = BTreeMap::from([("u7".to_string(), 1)]);
    assert_eq!(notified(&setup, status.id.as_str()).await, expected);
    let total: i64 = sqlx::query_scalar("SELECT count(*) FROM switchboard.notifications")
        .fetch_one(&setup.db)
        .await
        .unwrap();
    assert_eq!(total, 3);

    let announced = wait_for_user_events(&setup, "u2", "user.notification", 1).await;
    assert_eq!(announced[0]["category"], "message");
    assert_eq!(announced[0]["title"], "New message from u1");
    assert_eq!(announced[0]["message"], "Can you start Monday?");
    let announced = wait_for_user_events(&setup, "u7", "user.notification", 1).await;
    assert_eq!(announced[0]["category"], "job");
    assert_eq!(announced[0]["message"], "Job j1 is started");
}

#[tokio::test(flavor = "multi_thread")]
async fn list_pages_and_read_syncs_the_unread_count_to_every_device() {
    let setup = setup().await;
    let _worker = Worker::start(&setup, JOBS, &[]);
    add_member(&setup, "project:p1", "u1", "owner").await;
    for amount in [100, 200, 300] {
        publish(&setup, "project:p1", &bid(amount)).await;
    }
    wait_for_user_events(&setup, "u1", "user.notification", 3).await;

    let page = call(&setup, "notifications.list", "u1", json!({"limit": 2})).await;
    assert_eq!(page["unread"], 3);
    let items = page["items"].as_array().unwrap();
    assert_eq!(items.len(), 2);
    assert!(
        items[0]["message"].as_str().unwrap().contains("300"),
        "newest first: {page}"
    );
    assert!(items[1]["message"].as_str().unwrap().contains("200"));
    assert_eq!(items[0]["readAt"], Value::Null);
    assert_eq!(page["next"], items[1]["id"]);
    let rest = call(
        &setup,
        "notifications.list",
        "u1",
        json!({"limit": 2, "before": page["next"]}),
    )
    .await;
    assert_eq!(rest["items"].as_array().unwrap().len(), 1);
    assert!(
        rest["items"][0]["message"]
            .as_str()
            .unwrap()
            .contains("100")
    );
    assert_eq!(rest["next"], Value::Null);
    let newest = items[0]["id"].as_str().unwrap().to_string();

    // Reading one: the answer and the event every device of u1 receives say 2 unread.
    let read = call(&setup, "notifications.read", "u1", json!({"ids": [newest]})).await;
    assert_eq!(read, json!({"unread": 2}));
    let synced = wait_for_user_events(&setup, "u1", "notification.read", 1).await;
    assert_eq!(synced[0], json!({"ids": [newest], "unread": 2}));
    let unread = call(
        &setup,
        "notifications.list",
        "u1",
        json!({"unread_only": true}),
    )
    .await;
    assert_eq!(unread["items"].as_array().unwrap().len(), 2);
    let all = call(&setup, "notifications.list", "u1", json!({})).await;
    assert_ne!(all["items"][0]["readAt"], Value::Null);

    // Reading everything; reading again changes nothing and announces nothing.
    let read = call(&setup, "notifications.read", "u1", json!({"all": true})).await;
    assert_eq!(read, json!({"unread": 0}));
    let synced = wait_for_user_events(&setup, "u1", "notification.read", 2).await;
    assert_eq!(synced[1]["unread"], 0);
    assert_eq!(synced[1]["all"], true);
    assert_eq!(synced[1]["ids"].as_array().unwrap().len(), 2);
    let read = call(&setup, "notifications.read", "u1", json!({"all": true})).await;
    assert_eq!(read, json!({"unread": 0}));
    // Another user cannot read u1's notifications.
    let other = call(&setup, "notifications.read", "u2", json!({"ids": [newest]})).await;
    assert_eq!(other, json!({"unread": 0}));
    wait_until_sent(&setup, DEADLINE).await;
    assert_eq!(
        user_events(&setup, "u1", "notification.read").await.len(),
        2
    );
    assert!(
        user_events(&setup, "u2", "notification.read")
            .await
            .is_empty()
    );

    // Refusals.
    let anonymous = rpc(&setup, "notifications.list", None, json!({})).await;
    assert_eq!(anonymous["error"]["code"], "unauthorized");
    for (method, params) in [
        ("notifications.read", json!({})),
        ("notifications.read", json!({"ids": ["evt_1"]})),
        ("notifications.list", json!({"before": "x"})),
        ("notifications.list", json!({"limit": "ten"})),
        (
            "notifications.preferences.set",
            json!({"categories": {"news": {}}}),
        ),
        (
            "notifications.preferences.set",
            json!({"categories": {"bid": {"sms": true}}}),
        ),
    ] {
        let refused = rpc(&setup, method, Some("u1"), params.clone()).await;
        assert_eq!(
            refused["error"]["code"], "bad_request",
            "{method} {params}: {refused}"
        );
    }
}

/// The signing secret the tests' webhooks check.
const WEBHOOK_SECRET: &str = "whsec_c3dpdGNoYm9hcmQtdGVzdC13ZWJob29rLWtleQ==";

/// A webhook receiver: answers the given statuses in turn to push and email, then 200,
/// and 200 to each notification's `created` copy; keeps every request's
/// `Idempotency-Key` and JSON body. Every request's Standard Webhooks signature is
/// checked as it is read.
struct Webhook {
    url: String,
    receiver: Receiver,
}

impl Webhook {
    async fn start(statuses: Vec<u16>) -> Webhook {
        let statuses = Mutex::new(statuses.into_iter());
        let receiver = Receiver::start(move |request| {
            if request.json()["event"] == "created" {
                return 200;
            }
            statuses.lock().unwrap().next().unwrap_or(200)
        })
        .await;
        Webhook {
            url: format!("{}/push", receiver.base),
            receiver,
        }
    }

    /// The worker's settings for this webhook.
    fn env(&self) -> Vec<(&'static str, String)> {
        vec![
            ("SWITCHBOARD_NOTIFY_WEBHOOK_URL", self.url.clone()),
            ("SWITCHBOARD_NOTIFY_WEBHOOK_SECRET", WEBHOOK_SECRET.into()),
        ]
    }

    /// The push and email requests (`push_due`, `email_due`).
    fn requests(&self) -> Vec<(String, Value)> {
        self.all()
            .into_iter()
            .filter(|(_, body)| body["event"] != "created")
            .collect()
    }

    /// The notifications as they were created (`created`).
    fn created(&self) -> Vec<(String, Value)> {
        self.all()
            .into_iter()
            .filter(|(_, body)| body["event"] == "created")
            .collect()
    }

    fn all(&self) -> Vec<(String, Value)> {
        self.receiver
            .requests()
            .iter()
            .map(|request| {
                assert_eq!(
                    (request.method.as_str(), request.path.as_str()),
                    ("POST", "/push")
                );
                assert_signed(request, WEBHOOK_SECRET);
                (
                    request.header("Idempotency-Key").unwrap().to_string(),
                    request.json(),
                )
            })
            .collect()
    }
}

/// Checks a request's Standard Webhooks headers the way a receiver would: the signature
/// over `<webhook-id>.<webhook-timestamp>.<body>` with the secret's key, and a timestamp
/// within five minutes of now.
fn assert_signed(request: &support::http::Request, secret: &str) {
    use base64::Engine as _;
    use hmac::Mac as _;
    let engine = base64::engine::general_purpose::STANDARD;
    let key = engine
        .decode(secret.strip_prefix("whsec_").unwrap())
        .unwrap();
    let id = request.header("webhook-id").expect("webhook-id");
    let timestamp = request
        .header("webhook-timestamp")
        .expect("webhook-timestamp");
    let age = Timestamp::now().unix_nanos() / 1_000_000_000 - timestamp.parse::<i128>().unwrap();
    assert!(age.abs() < 300, "timestamp {timestamp} is {age} s off");
    let mut mac = hmac::Hmac::<sha2::Sha256>::new_from_slice(&key).unwrap();
    mac.update(format!("{id}.{timestamp}.").as_bytes());
    mac.update(&request.body);
    let expected = format!("v1,{}", engine.encode(mac.finalize().into_bytes()));
    let signatures = request
        .header("webhook-signature")
        .expect("webhook-signature");
    assert!(
        signatures.split(' ').any(|s| s == expected),
        "signature {signatures} is not {expected}"
    );
}

const TRACEPARENT: &str = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";

/// (user, medium) of each request, sorted.
fn deliveries(requests: &[(String, Value)]) -> Vec<(String, String)> {
    let mut all: Vec<(String, String)> = requests
        .iter()
        .map(|(_, body)| {
            (
                body["user"].as_str().unwrap().to_string(),
                body["medium"].as_str().unwrap().to_string(),
            )
        })
        .collect();
    all.sort();
    all
}

#[tokio::test(flavor = "multi_thread")]
async fn an_offline_users_push_reaches_the_webhook_once_even_after_a_500() {
    let setup = setup().await;
    let webhook = Webhook::start(vec![500]).await;
    let _worker = Worker::start(
        &setup,
        JOBS,
        &[
            webhook.env(),
            vec![("SWITCHBOARD_NOTIFY_RETRY_BASE_MS", "300".into())],
        ]
        .concat(),
    );
    let mut subjects = setup.client.subscribe("notify.>").await.unwrap();
    add_member(&setup, "project:p1", "u1", "owner").await;
    add_member(&setup, "project:p1", "u2", "owner").await;
    connect(&setup, "u2", "conn-a").await;
    // Connected and gone again: offline.
    connect(&setup, "u1", "conn-b").await;
    disconnect(&setup, "u1", "conn-b").await;

    // Stored with a trace context, as the edge stores a traced publish.
    let bid = bid(5000);
    let mut headers = HeaderMap::new();
    headers.insert(headers::RT_TYPE, "bid.new");
    headers.insert(headers::MSG_ID, bid.id.as_str());
    headers.insert("traceparent", TRACEPARENT);
    let message = PublishMessage::build()
        .payload(bid.to_postcard().into())
        .headers(headers);
    let seq = setup
        .js
        .send_publish("rt.project.p1", message)
        .await
        .unwrap()
        .await
        .unwrap()
        .sequence;
    let requests = eventually("the webhook to be answered 200", || async {
        let requests = webhook.requests();
        (requests.len() >= 2).then_some(requests)
    })
    .await;
    // A while longer, for any extra attempt to show up.
    tokio::time::sleep(Duration::from_secs(2)).await;
    let requests = {
        let later = webhook.requests();
        assert_eq!(
            later.len(),
            requests.len(),
            "no attempt after the 200: {later:?}"
        );
        later
    };
    let key = format!("{}/u1/push", bid.id);
    assert_eq!(requests.len(), 2, "one 500, one 200: {requests:?}");
    for request in webhook.receiver.requests() {
        assert_eq!(request.header("traceparent"), Some(TRACEPARENT));
        assert_eq!(request.header("content-type"), Some("application/json"));
    }
    // Two created copies and two push attempts, the first three at once.
    assert!(
        webhook.receiver.connections() < webhook.receiver.requests().len(),
        "the retry reuses a connection"
    );
    let mut created: Vec<String> = webhook
        .created()
        .iter()
        .map(|(_, body)| body["user"].as_str().unwrap().to_string())
        .collect();
    created.sort();
    assert_eq!(created, ["u1", "u2"], "each notification as it is created");
    for (header, body) in &requests {
        assert_eq!(header, &key);
        assert_eq!(body["key"], key.as_str());
    }
    let body = &requests[1].1;
    assert_eq!(body["user"], "u1");
    assert_eq!(body["event"], "push_due");
    assert_eq!(body["medium"], "push");
    assert_eq!(body["category"], "bid");
    assert_eq!(body["priority"], "high");
    assert_eq!(body["title"], "New bid");
    assert_eq!(body["eventId"], bid.id.as_str());
    assert_eq!(body["ref"], json!({"channel": "project:p1", "seq": seq}));
    assert!(body["notificationId"].as_str().unwrap().starts_with("ntf_"));

    let (attempts, delivered): (i32, bool) = sqlx::query_as(
        "SELECT attempts, delivered_at IS NOT NULL FROM switchboard.notification_deliveries
          WHERE user_id = 'u1' AND sink = 'webhook' AND medium = 'push'",
    )
    .fetch_one(&setup.db)
    .await
    .unwrap();
    assert_eq!((attempts, delivered), (2, true));

    // The same push on the subject for NATS-speaking senders, once; nothing for u2.
    let message = tokio::time::timeout(Duration::from_secs(5), subjects.next())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(message.subject.as_str(), "notify.push.u1");
    let payload: Value = serde_json::from_slice(&message.payload).unwrap();
    assert_eq!(payload["key"], key.as_str());
    assert!(
        tokio::time::timeout(Duration::from_millis(500), subjects.next())
            .await
            .is_err(),
        "one subject message only"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn an_https_webhook_with_its_own_ca_is_signed_and_bad_webhook_settings_stop_the_worker() {
    let setup = setup().await;
    let ca = support::http::TestCa::new();
    let dir = tempfile::tempdir().unwrap();
    let ca_file = dir.path().join("ca.pem");
    std::fs::write(&ca_file, &ca.pem).unwrap();
    let receiver = Receiver::start_tls(&ca, |_| 204).await;
    let url = format!("{}/push?token=receiver-token", receiver.base);
    let _worker = Worker::start(
        &setup,
        JOBS,
        &[
            ("SWITCHBOARD_NOTIFY_WEBHOOK_URL", url.clone()),
            ("SWITCHBOARD_NOTIFY_WEBHOOK_SECRET", WEBHOOK_SECRET.into()),
            (
                "SWITCHBOARD_NOTIFY_WEBHOOK_CA",
                ca_file.display().to_string(),
            ),
        ],
    );
    add_member(&setup, "project:p1", "u1", "owner").await;
    let bid = bid(42);
    publish(&setup, "project:p1", &bid).await;
    let request = eventually("the https webhook to hear the push", || async {
        receiver
            .requests()
            .into_iter()
            .find(|request| request.json()["event"] == "push_due")
    })
    .await;
    assert_eq!(request.path, "/push?token=receiver-token");
    assert_signed(&request, WEBHOOK_SECRET);
    assert_eq!(
        request.header("webhook-id"),
        Some(format!("{}/u1/push", bid.id).as_str())
    );
    assert_eq!(request.json()["user"], "u1");
    assert_eq!(
        request.header("traceparent"),
        None,
        "the event carried none"
    );

    // Settings that cannot work stop the worker with a reason, without the value.
    let secret_value = "whsec_dG9vc2hvcnQ=";
    for (env, reason, hidden) in [
        (
            vec![(
                "SWITCHBOARD_NOTIFY_WEBHOOK_SECRET",
                secret_value.to_string(),
            )],
            "SWITCHBOARD_NOTIFY_WEBHOOK_SECRET",
            secret_value,
        ),
        (
            vec![(
                "SWITCHBOARD_NOTIFY_WEBHOOK_SECRET",
                "hunter2-not-a-secret".to_string(),
            )],
            "must start with whsec_",
            "hunter2",
        ),
        (
            vec![(
                "SWITCHBOARD_NOTIFY_WEBHOOK_URL",
                "https://hook:pw-123@127.0.0.1/push".to_string(),
            )],
            "credentials in the URL are not supported",
            "pw-123",
        ),
        (
            vec![
                ("SWITCHBOARD_NOTIFY_WEBHOOK_URL", url.clone()),
                (
                    "SWITCHBOARD_NOTIFY_WEBHOOK_CA",
                    "/nonexistent/ca.pem".to_string(),
                ),
            ],
            "cannot read SWITCHBOARD_NOTIFY_WEBHOOK_CA /nonexistent/ca.pem",
            "receiver-token",
        ),
        (
            vec![
                ("SWITCHBOARD_NOTIFY_WEBHOOK_URL", url.clone()),
                (
                    "SWITCHBOARD_NOTIFY_WEBHOOK_CA",
                    dir.path().join("missing").display().to_string(),
                ),
            ],
            "SWITCHBOARD_NOTIFY_WEBHOOK_CA",
            "receiver-token",
        ),
    ] {
        Worker::refuses(&setup, JOBS, &env, reason, hidden).await;
    }
    let not_pem = dir.path().join("not.pem");
    std::fs::write(&not_pem, "not a certificate").unwrap();
    let env = [
        ("SWITCHBOARD_NOTIFY_WEBHOOK_URL", url),
        (
            "SWITCHBOARD_NOTIFY_WEBHOOK_CA",
            not_pem.display().to_string(),
        ),
    ];
    let reason = "holds no PEM certificate";
    Worker::refuses(&setup, JOBS, &env, reason, "receiver-token").await;
}

#[tokio::test(flavor = "multi_thread")]
async fn preferences_and_mute_are_honoured() {
    let setup = setup().await;
    let webhook = Webhook::start(Vec::new()).await;
    let _worker = Worker::start(
        &setup,
        JOBS,
        &[
            webhook.env(),
            vec![("SWITCHBOARD_NOTIFY_EMAIL_AFTER_S", "0".into())],
        ]
        .concat(),
    );
    let mut subjects = setup.client.subscribe("notify.>").await.unwrap();

    let defaults = call(&setup, "notifications.preferences.get", "u1", json!({})).await;
    let categories = defaults["categories"].as_object().unwrap();
    assert_eq!(categories.len(), 6);
    for (category, preferences) in categories {
        assert_eq!(
            preferences,
            &json!({"in_app": true, "push": true, "email": false, "muted": false}),
            "{category}"
        );
    }
    let set = |user: &'static str, bid: Value| {
        let setup = &setup;
        async move {
            call(
                setup,
                "notifications.preferences.set",
                user,
                json!({"categories": {"bid": bid}}),
            )
            .await
        }
    };
    let muted = set("u1", json!({"muted": true})).await;
    assert_eq!(
        muted["categories"]["bid"],
        json!({"in_app": true, "push": true, "email": false, "muted": true})
    );
    assert_eq!(muted["categories"]["job"]["muted"], false);
    set("u2", json!({"in_app": false})).await;
    set("u3", json!({"email": true})).await;
    set("u3", json!({"push": true})).await;
    let u3 = call(&setup, "notifications.preferences.get", "u3", json!({})).await;
    assert_eq!(
        u3["categories"]["bid"],
        json!({"in_app": true, "push": true, "email": true, "muted": false}),
        "a partial set keeps the other fields"
    );
    for user in ["u1", "u2", "u3", "u4"] {
        add_member(&setup, "project:p1", user, "owner").await;
    }
    connect(&setup, "u4", "conn-1").await;

    let bid = bid(700);
    publish(&setup, "project:p1", &bid).await;
    wait_until_caught_up(&setup, "notifications").await;
    let expected = BTreeMap::from([("u3".to_string(), 1), ("u4".to_string(), 1)]);
    assert_eq!(
        notified(&setup, bid.id.as_str()).await,
        expected,
        "muted u1 and in-app-off u2 have no notification"
    );
    let expected = vec![
        ("u2".to_string(), "push".to_string()),
        ("u3".to_string(), "email".to_string()),
        ("u3".to_string(), "push".to_string()),
    ];
    let requests = eventually("three webhook deliveries", || async {
        let requests = webhook.requests();
        (requests.len() >= 3).then_some(requests)
    })
    .await;
    assert_eq!(deliveries(&requests), expected);
    let u2 = requests
        .iter()
        .find(|(_, body)| body["user"] == "u2")
        .unwrap();
    assert_eq!(
        u2.1["notificationId"],
        Value::Null,
        "no in-app notification for u2"
    );

    let mut published = Vec::new();
    while published.len() < 3 {
        let message = tokio::time::timeout(Duration::from_secs(5), subjects.next())
            .await
            .unwrap()
            .unwrap();
        published.push(message.subject.to_string());
    }
    published.sort();
    assert_eq!(
        published,
        ["notify.email.u3", "notify.push.u2", "notify.push.u3"]
    );
    wait_until_sent(&setup, DEADLINE).await;
    for (user, count) in [("u1", 0), ("u2", 0), ("u3", 1), ("u4", 1)] {
        assert_eq!(
            user_events(&setup, user, "user.notification").await.len(),
            count,
            "{user}"
        );
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(deliveries(&webhook.requests()), expected, "each once");
}

#[tokio::test(flavor = "multi_thread")]
async fn old_notifications_expire_and_old_events_notify_nobody() {
    let setup = setup().await;
    for (id, age_days) in [("ntf_old", 40), ("ntf_recent", 10)] {
        sqlx::query(
            "INSERT INTO switchboard.notifications
                    (id, user_id, event_id, category, title, message, ref_channel, ref_seq, created_at)
             VALUES ($1, 'u1', $1, 'bid', 't', 'm', 'project:p1', 1, now() - make_interval(days => $2))",
        )
        .bind(id)
        .bind(age_days)
        .execute(&setup.db)
        .await
        .unwrap();
    }
    let _worker = Worker::start(
        &setup,
        JOBS,
        &[
            ("SWITCHBOARD_NOTIFICATIONS_RETENTION_DAYS", "30".into()),
            (
                "SWITCHBOARD_NOTIFICATIONS_RETENTION_INTERVAL_MS",
                "200".into(),
            ),
        ],
    );
    add_member(&setup, "project:p1", "u1", "owner").await;
    let mut old = bid(1);
    old.timestamp =
        Timestamp::from_unix_nanos(Timestamp::now().unix_nanos() - 31 * 86_400 * 1_000_000_000)
            .unwrap();
    publish(&setup, "project:p1", &old).await;
    let fresh = bid(2);
    publish(&setup, "project:p1", &fresh).await;

    wait_until_caught_up(&setup, "notifications").await;
    let remaining = eventually("the old notification to expire", || async {
        let ids: Vec<String> = sqlx::query_scalar(
            "SELECT event_id FROM switchboard.notifications ORDER BY created_at",
        )
        .fetch_all(&setup.db)
        .await
        .unwrap();
        (!ids.iter().any(|id| id == "ntf_old")).then_some(ids)
    })
    .await;
    assert_eq!(remaining, ["ntf_recent", fresh.id.as_str()]);
}

#[tokio::test(flavor = "multi_thread")]
async fn rules_come_from_the_configured_file_and_a_bad_one_stops_the_worker() {
    let setup = setup().await;
    let dir = tempfile::tempdir().unwrap();
    let bad = dir.path().join("bad.json");
    std::fs::write(
        &bad,
        r#"{"rules":[{"on":"bid.new","to":{},"category":"bid","title":"t","message":"m"}]}"#,
    )
    .unwrap();
    let worker = Worker::start(
        &setup,
        JOBS,
        &[("SWITCHBOARD_NOTIFICATIONS_RULES", bad.display().to_string())],
    );
    let status = worker.exit_status().await;
    assert!(
        !status.success(),
        "a bad rules file stops the worker: {status}"
    );

    let rules = dir.path().join("rules.json");
    std::fs::write(
        &rules,
        r#"{"rules":[{"on":"project.*","to":{"data_users":["/watchers"]},"category":"project","priority":"low",
            "title":"{data.title}","message":"{actor.id|Someone} changed {channel}"}]}"#,
    )
    .unwrap();
    let webhook = Webhook::start(Vec::new()).await;
    let _worker = Worker::start(
        &setup,
        JOBS,
        &[
            (
                "SWITCHBOARD_NOTIFICATIONS_RULES",
                rules.display().to_string(),
            ),
            ("SWITCHBOARD_NOTIFY_WEBHOOK_URL", webhook.url.clone()),
            ("SWITCHBOARD_NOTIFY_WEBHOOK_SECRET", WEBHOOK_SECRET.into()),
        ],
    );
    let update = event(
        "project.update",
        json!({"title": "Kitchen", "watchers": ["u1", "u2"]}),
    );
    publish(&setup, "project:p1", &update).await;
    publish(&setup, "project:p1", &bid(5)).await;
    let announced = wait_for_user_events(&setup, "u2", "user.notification", 1).await;
    assert_eq!(announced[0]["title"], "Kitchen");
    assert_eq!(announced[0]["message"], "Someone changed project:p1");
    assert_eq!(announced[0]["priority"], "low");
    wait_until_caught_up(&setup, "notifications").await;
    let expected = BTreeMap::from([("u1".to_string(), 1), ("u2".to_string(), 1)]);
    assert_eq!(notified(&setup, update.id.as_str()).await, expected);
    let total: i64 = sqlx::query_scalar("SELECT count(*) FROM switchboard.notifications")
        .fetch_one(&setup.db)
        .await
        .unwrap();
    assert_eq!(total, 2, "bid.new has no rule in this file");
    let deliveries: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM switchboard.notification_deliveries WHERE medium <> 'created'",
    )
    .fetch_one(&setup.db)
    .await
    .unwrap();
    assert_eq!(deliveries, 0, "low priority stays in-app");
    eventually("the webhook to hear both notifications created", || async {
        (webhook.created().len() == 2).then_some(())
    })
    .await;
    assert!(webhook.requests().is_empty());
}

// Chaos: PostgreSQL restarts and a worker killed mid-burst, with a few hundred events
// that each notify two users.

const PROJECTS: usize = 4;
const CONVERSATIONS: usize = 4;

/// The two owners of `project:p<project>`.
fn owners(project: usize) -> [String; 2] {
    [format!("p{project}o1"), format!("p{project}o2")]
}

/// The three participants of `conversation:c<conversation>`.
fn participants(conversation: usize) -> [String; 3] {
    [1, 2, 3].map(|n| format!("c{conversation}u{n}"))
}

/// Four projects with two owners and a contractor each, four conversations of three.
async fn cast(setup: &Setup) {
    for project in 1..=PROJECTS {
        let channel = format!("project:p{project}");
        for owner in owners(project) {
            add_member(setup, &channel, &owner, "owner").await;
        }
        add_member(setup, &channel, &format!("p{project}c"), "contractor").await;
    }
    for conversation in 1..=CONVERSATIONS {
        let channel = format!("conversation:c{conversation}");
        for user in participants(conversation) {
            let added = event("conversation.participant_added", json!({"user": user}));
            publish(setup, &channel, &added).await;
        }
    }
}

/// One event of a burst, where it is published, and whom it must notify.
struct Planned {
    channel: String,
    event: Envelope,
    recipients: Vec<String>,
}

/// `count` events taking turns: `bid.new` on a project (its two owners are notified,
/// not the contractor) and `message.new` in a conversation (the two participants who did
/// not send it).
fn burst(count: usize) -> Vec<Planned> {
    (0..count)
        .map(|i| {
            let turn = i / 2;
            if i % 2 == 0 {
                let project = turn % PROJECTS + 1;
                Planned {
                    channel: format!("project:p{project}"),
                    event: bid(i as u32),
                    recipients: owners(project).to_vec(),
                }
            } else {
                let conversation = turn % CONVERSATIONS + 1;
                let users = participants(conversation);
                let sender = users[turn % users.len()].clone();
                let mut message = event("message.new", json!({"text": format!("message {i}")}));
                message.actor = Some(Actor {
                    id: sender.clone(),
                    kind: "user".into(),
                });
                Planned {
                    channel: format!("conversation:c{conversation}"),
                    event: message,
                    recipients: users.into_iter().filter(|u| *u != sender).collect(),
                }
            }
        })
        .collect()
}

async fn publish_all(setup: &Setup, planned: &[Planned]) {
    for planned in planned {
        publish(setup, &planned.channel, &planned.event).await;
    }
}

async fn notification_rows(setup: &Setup) -> Option<i64> {
    sqlx::query_scalar("SELECT count(*) FROM switchboard.notifications")
        .fetch_one(&setup.db)
        .await
        .ok()
}

/// Waits until the notifications consumer has acked every stored event and the outbox
/// has sent every row: then every notification there will be exists and is announced.
async fn wait_until_settled(setup: &Setup) {
    support::eventually_within(
        Duration::from_secs(40),
        "every event notified and every notification announced",
        || async {
            let mut stream = setup.js.get_stream("EVENTS").await.ok()?;
            let last = stream.info().await.ok()?.state.last_sequence;
            let info = stream.consumer_info("notifications").await.ok()?;
            if info.ack_floor.stream_sequence < last || info.num_ack_pending > 0 {
                return None;
            }
            let pending: i64 = sqlx::query_scalar(
                "SELECT count(*) FROM switchboard.outbox WHERE sent_at IS NULL AND failed_at IS NULL",
            )
            .fetch_one(&setup.db)
            .await
            .ok()?;
            (pending == 0).then_some(())
        },
    )
    .await;
}

/// What PostgreSQL and the stream hold after a burst, against what the burst must
/// produce: one notification per (event, recipient), each announced once by a
/// `user.notification` on `user:<recipient>`, unread counts 1, 2, ... per user.
#[derive(Debug, Default)]
struct Audit {
    events: usize,
    expected: usize,
    rows: usize,
    missing: usize,
    duplicated: usize,
    unexpected: usize,
    announced: usize,
    announced_twice: usize,
    unannounced: usize,
    announced_unknown: usize,
    users: usize,
    wrong_unread: Vec<String>,
    deliveries: usize,
    distinct_deliveries: usize,
}

async fn audit(setup: &Setup, planned: &[Planned]) -> Audit {
    let expected: BTreeSet<(String, String)> = planned
        .iter()
        .flat_map(|p| {
            p.recipients
                .iter()
                .map(|user| (p.event.id.to_string(), user.clone()))
        })
        .collect();
    let rows: Vec<(String, String, String)> =
        sqlx::query_as("SELECT id, event_id, user_id FROM switchboard.notifications")
            .fetch_all(&setup.db)
            .await
            .unwrap();
    let mut per_pair: BTreeMap<(String, String), usize> = BTreeMap::new();
    let mut per_user: BTreeMap<String, usize> = BTreeMap::new();
    for (_, event_id, user) in &rows {
        *per_pair
            .entry((event_id.clone(), user.clone()))
            .or_default() += 1;
        *per_user.entry(user.clone()).or_default() += 1;
    }

    // ntf id -> (user channel it was published on, unread it announced), per stored event.
    let mut announcements: BTreeMap<String, Vec<(String, u64)>> = BTreeMap::new();
    for (_, subject, envelope) in stored(setup, "rt.user.>").await {
        if envelope.ty.as_str() != "user.notification" {
            continue;
        }
        let data: Value = envelope.data.decode().unwrap();
        let user = subject.strip_prefix("rt.user.").unwrap().to_string();
        announcements
            .entry(data["id"].as_str().unwrap().to_string())
            .or_default()
            .push((user, data["unread"].as_u64().unwrap()));
    }
    let row_ids: BTreeMap<&str, &str> = rows
        .iter()
        .map(|(id, _, user)| (id.as_str(), user.as_str()))
        .collect();
    let mut unread: BTreeMap<String, Vec<u64>> = BTreeMap::new();
    for (id, seen) in &announcements {
        for (user, count) in seen {
            assert_eq!(
                row_ids.get(id.as_str()).copied(),
                Some(user.as_str()),
                "{id} announced to its owner"
            );
            unread.entry(user.clone()).or_default().push(*count);
        }
    }
    // Nobody reads during the test, so a user's announcements count 1, 2, ... n; and
    // notifications.list says n.
    let mut wrong_unread = Vec::new();
    for (user, count) in &per_user {
        let mut announced = unread.remove(user).unwrap_or_default();
        announced.sort_unstable();
        let listed = call(setup, "notifications.list", user, json!({"limit": 1})).await;
        if announced != (1..=*count as u64).collect::<Vec<_>>() || listed["unread"] != *count {
            wrong_unread.push(format!(
                "{user}: {count} rows, listed unread {}, announced {announced:?}",
                listed["unread"]
            ));
        }
    }
    let (deliveries, distinct_deliveries): (i64, i64) = sqlx::query_as(
        "SELECT count(*), count(DISTINCT (event_id, user_id, medium, sink))
           FROM switchboard.notification_deliveries",
    )
    .fetch_one(&setup.db)
    .await
    .unwrap();

    Audit {
        events: planned.len(),
        expected: expected.len(),
        rows: rows.len(),
        missing: expected
            .iter()
            .filter(|pair| !per_pair.contains_key(*pair))
            .count(),
        duplicated: per_pair.values().map(|n| n - 1).sum(),
        unexpected: per_pair.keys().filter(|p| !expected.contains(*p)).count(),
        announced: announcements.values().map(Vec::len).sum(),
        announced_twice: announcements.values().map(|a| a.len() - 1).sum(),
        unannounced: row_ids
            .keys()
            .filter(|id| !announcements.contains_key(**id))
            .count(),
        announced_unknown: announcements
            .keys()
            .filter(|id| !row_ids.contains_key(id.as_str()))
            .count(),
        users: per_user.len(),
        wrong_unread,
        deliveries: deliveries as usize,
        distinct_deliveries: distinct_deliveries as usize,
    }
}

impl std::fmt::Display for Audit {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{} events, {} notifications expected, {} rows, {} missing, {} duplicated, \
             {} unexpected, {} user.notification events ({} twice, {} rows never announced), \
             unread counts right for {} of {} users, {} push deliveries ({} distinct)",
            self.events,
            self.expected,
            self.rows,
            self.missing,
            self.duplicated,
            self.unexpected,
            self.announced,
            self.announced_twice,
            self.unannounced,
            self.users - self.wrong_unread.len(),
            self.users,
            self.deliveries,
            self.distinct_deliveries,
        )
    }
}

impl Audit {
    /// Every notification once, announced once, counted right; one push each (every
    /// recipient is offline and pushes are on by default).
    fn assert_exact(&self) {
        assert_eq!(
            (self.rows, self.missing, self.duplicated, self.unexpected),
            (self.expected, 0, 0, 0),
            "notification rows: {self}"
        );
        assert_eq!(
            (
                self.announced,
                self.announced_twice,
                self.unannounced,
                self.announced_unknown
            ),
            (self.expected, 0, 0, 0),
            "user.notification events: {self}"
        );
        assert!(self.wrong_unread.is_empty(), "{:#?}", self.wrong_unread);
        assert_eq!(
            (self.deliveries, self.distinct_deliveries),
            (self.expected, self.expected),
            "push deliveries: {self}"
        );
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn notifications_across_a_postgres_restart_are_each_stored_and_announced_once() {
    let mut setup = setup().await;
    let (mut worker, log) = Worker::start_logged(&setup, JOBS, &[]);
    cast(&setup).await;
    let planned = burst(400);
    let (before, rest) = planned.split_at(100);
    let (during, after) = rest.split_at(200);

    publish_all(&setup, before).await;
    eventually("the first notifications", || async {
        (notification_rows(&setup).await? >= 20).then_some(())
    })
    .await;
    // Events keep coming while PostgreSQL is away: JetStream keeps them.
    let backoff = support::without_postgres(
        &mut setup,
        &mut worker,
        &log,
        "notifications",
        async |setup| publish_all(setup, during).await,
    )
    .await;
    publish_all(&setup, after).await;

    wait_until_settled(&setup).await;
    assert!(worker.is_running(), "the worker is still running");
    let redelivered = log.redelivered("notifications").len();
    let audit = audit(&setup, &planned).await;
    println!(
        "notifications across a PostgreSQL restart: {audit}; the worker logged {backoff} \
         while PostgreSQL was down, kept running, and was handed {redelivered} messages again"
    );
    audit.assert_exact();
}

#[tokio::test(flavor = "multi_thread")]
async fn a_worker_killed_mid_burst_notifies_and_announces_each_once() {
    let setup = setup().await;
    cast(&setup).await;
    let planned = burst(400);
    publish_all(&setup, &planned).await;

    let first = Worker::start(&setup, JOBS, &[]);
    eventually("the worker to be part-way through the burst", || async {
        (notification_rows(&setup).await? >= 100).then_some(())
    })
    .await;
    first.kill().await;
    let at_kill = notification_rows(&setup).await.unwrap();
    let expected = planned.len() * 2;
    assert!(
        (at_kill as usize) < expected,
        "the worker was killed before it had notified everyone ({at_kill} rows)"
    );

    let (_second, log) = Worker::start_logged(&setup, JOBS, &[]);
    wait_until_settled(&setup).await;
    let redelivered = log.redelivered("notifications").len();
    let already = log.count("already notified");
    let audit = audit(&setup, &planned).await;
    println!(
        "notifications with a worker killed mid-burst: killed at {at_kill} rows; {audit}; \
         the second worker was handed {redelivered} messages again, {already} of them \
         found already notified"
    );
    audit.assert_exact();
}
