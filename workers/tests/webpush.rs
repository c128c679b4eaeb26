//! Web Push end to end: `push.*` RPCs as the edge relays them, the notifications job
//! sending to a push service on loopback (tests/peers/push_service.py) that checks each
//! request's VAPID token and decrypts its payload with the Python reference
//! implementation, against real nats-server and PostgreSQL.

mod support;

use std::time::Duration;

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use p256::elliptic_curve::sec1::ToEncodedPoint;
use serde_json::{Value, json};
use switchboard_schemas::Actor;

use support::{Peer, Setup, Worker, add_member, call, event, eventually, publish, rpc, setup};

const JOBS: &str = "membership,notifications,outbox";

/// A VAPID pair as `switchboard vapid` prints it: (private, public), base64url.
fn vapid_pair() -> (String, String) {
    let secret = p256::SecretKey::random(&mut rand_core::OsRng);
    (
        URL_SAFE_NO_PAD.encode(secret.to_bytes()),
        URL_SAFE_NO_PAD.encode(secret.public_key().to_encoded_point(false).as_bytes()),
    )
}

async fn subscriptions_of(setup: &Setup, user: &str) -> Vec<(String, String)> {
    sqlx::query_as(
        "SELECT device, endpoint FROM switchboard.push_subscriptions WHERE user_id = $1 ORDER BY device",
    )
    .bind(user)
    .fetch_all(&setup.db)
    .await
    .unwrap()
}

#[tokio::test(flavor = "multi_thread")]
async fn offline_devices_get_encrypted_vapid_signed_pushes_and_a_410_removes_the_subscription() {
    let setup = setup().await;
    // Four subscriptions; the push service answers 410 for the third.
    let mut service = Peer::start("push_service.py", &["4", "/s/2"]);
    let listing = service.next().await;
    let base = format!("http://127.0.0.1:{}", listing["port"]);
    let subscription = |index: usize| {
        let s = &listing["subscriptions"][index];
        json!({
            "endpoint": format!("{base}{}", s["path"].as_str().unwrap()),
            "expirationTime": null,
            "keys": {"p256dh": s["p256dh"], "auth": s["auth"]},
        })
    };
    let (private, public) = vapid_pair();
    let _worker = Worker::start(
        &setup,
        JOBS,
        &[
            ("SWITCHBOARD_VAPID_PRIVATE_KEY", private.clone()),
            ("SWITCHBOARD_VAPID_SUBJECT", "mailto:ops@example.com".into()),
            (
                "SWITCHBOARD_PUSH_ENDPOINT_HOSTS",
                "push.example.com,127.0.0.1".into(),
            ),
            ("SWITCHBOARD_PUSH_TTL_S", "600".into()),
        ],
    );

    let vapid = call(&setup, "push.vapid", "u1", json!({})).await;
    assert_eq!(vapid, json!({"publicKey": public}));
    for (user, device, index) in [
        ("u1", "d1", 0),
        ("u1", "d2", 1),
        ("u2", "d1", 2),
        ("u3", "d1", 3),
    ] {
        let params = json!({"subscription": subscription(index), "device": device});
        let answer = call(&setup, "push.subscribe", user, params).await;
        assert_eq!(answer, json!({"device": device}));
    }
    assert_eq!(subscriptions_of(&setup, "u1").await.len(), 2);

    // Refused with bad_request: what is not a subscription to a known push service.
    let good = subscription(0);
    let with = |pointer: &str, value: Value| {
        let mut params = json!({"subscription": good.clone(), "device": "d9"});
        *params.pointer_mut(pointer).unwrap() = value;
        params
    };
    for (params, what) in [
        (
            with(
                "/subscription/endpoint",
                json!("https://evil.example/push/1"),
            ),
            "host",
        ),
        (
            with("/subscription/endpoint", json!("http://push.example.com/s")),
            "endpoint",
        ),
        (
            with("/subscription/endpoint", json!("not a url")),
            "endpoint",
        ),
        (with("/subscription/keys/p256dh", json!("AAAA")), "p256dh"),
        (
            with(
                "/subscription/keys/p256dh",
                json!(URL_SAFE_NO_PAD.encode([4u8; 65])),
            ),
            "p256dh",
        ),
        (with("/subscription/keys/auth", json!("c2hvcnQ")), "auth"),
        (with("/device", json!("a b")), "device"),
        (json!({"device": "d1"}), "subscription"),
        (
            json!({"subscription": {"endpoint": "https://push.example.com/x"}, "device": "d1"}),
            "keys",
        ),
    ] {
        let refused = rpc(&setup, "push.subscribe", Some("u1"), params.clone()).await;
        assert_eq!(
            refused["error"]["code"], "bad_request",
            "{params}: {refused}"
        );
        let message = refused["error"]["message"].as_str().unwrap();
        assert!(message.contains(what), "{what} in {message}");
    }
    assert_eq!(
        subscriptions_of(&setup, "u1").await.len(),
        2,
        "nothing stored"
    );

    for user in ["u1", "u2", "u3"] {
        add_member(&setup, "project:p1", user, "owner").await;
    }
    // u3 is online: no push.
    setup
        .presence
        .put("u3.conn-1", r#"{"status":"online"}"#.into())
        .await
        .unwrap();
    let mut bid = event("bid.new", json!({"amount": 5000}));
    bid.actor = Some(Actor {
        id: "c9".into(),
        kind: "contractor".into(),
    });
    let seq = publish(&setup, "project:p1", &bid).await;

    let mut records = Vec::new();
    for _ in 0..3 {
        records.push(service.next().await);
    }
    records.sort_by(|a, b| a["path"].as_str().cmp(&b["path"].as_str()));
    let paths: Vec<&str> = records
        .iter()
        .map(|r| r["path"].as_str().unwrap())
        .collect();
    assert_eq!(
        paths,
        ["/s/0", "/s/1", "/s/2"],
        "u1's two devices and u2's, not online u3's"
    );
    for record in &records {
        assert_eq!(record.get("error"), None, "{record}");
        assert_eq!(record["encoding"], "aes128gcm");
        assert_eq!(record["ttl"], "600");
        assert_eq!(record["urgency"], "high", "bid.new is high priority");
        assert_eq!(record["vapid_key"], public.as_str());
        let payload = &record["payload"];
        assert_eq!(
            payload,
            &json!({
                "id": payload["id"],
                "category": "bid",
                "title": "New bid",
                "message": "c9 placed a bid of 5000 on p1",
                "priority": "high",
                "ref": {"channel": "project:p1", "seq": seq},
                "unread": 1,
                "createdAt": payload["createdAt"],
            })
        );
        assert!(payload["id"].as_str().unwrap().starts_with("ntf_"));
    }

    // The 410 removed u2's subscription and ended its delivery.
    eventually("u2's subscription to be removed", || async {
        subscriptions_of(&setup, "u2")
            .await
            .is_empty()
            .then_some(())
    })
    .await;
    let error = eventually("u2's delivery to end", || async {
        let row: (bool, Option<String>) = sqlx::query_as(
            "SELECT failed_at IS NOT NULL, last_error FROM switchboard.notification_deliveries
              WHERE user_id = 'u2' AND sink = 'webpush'",
        )
        .fetch_one(&setup.db)
        .await
        .unwrap();
        row.0.then_some(row.1)
    })
    .await;
    assert!(error.unwrap().contains("410"));

    // Unsubscribing one device leaves the other; a normal-priority push is `normal`.
    let endpoint = subscription(1)["endpoint"].clone();
    let removed = call(
        &setup,
        "push.unsubscribe",
        "u1",
        json!({"endpoint": endpoint}),
    )
    .await;
    assert_eq!(removed, json!({"removed": true}));
    let again = call(
        &setup,
        "push.unsubscribe",
        "u1",
        json!({"endpoint": endpoint}),
    )
    .await;
    assert_eq!(again, json!({"removed": false}));
    publish(
        &setup,
        "project:p1",
        &event("bid.update", json!({"status": "withdrawn"})),
    )
    .await;
    let record = service.next().await;
    assert_eq!(record["path"], "/s/0");
    assert_eq!(record["urgency"], "normal");
    assert_eq!(record["payload"]["title"], "Bid updated");
    assert_eq!(record["payload"]["unread"], 2);
    assert_eq!(
        service.next_within(Duration::from_secs(2)).await,
        None,
        "nothing else: not the removed devices, not online u3"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn without_vapid_push_is_not_offered_and_bad_vapid_settings_stop_the_worker() {
    let setup = setup().await;
    let _worker = Worker::start(&setup, JOBS, &[]);
    let answer = rpc(&setup, "push.vapid", Some("u1"), json!({})).await;
    assert_eq!(answer["error"]["code"], "not_found", "{answer}");
    let answer = rpc(&setup, "push.subscribe", Some("u1"), json!({})).await;
    assert_eq!(answer["error"]["code"], "bad_request", "{answer}");

    let (private, _) = vapid_pair();
    for (env, reason, hidden) in [
        (
            vec![
                (
                    "SWITCHBOARD_VAPID_PRIVATE_KEY",
                    "not-a-key-but-secret".to_string(),
                ),
                ("SWITCHBOARD_VAPID_SUBJECT", "mailto:ops@example.com".into()),
            ],
            "SWITCHBOARD_VAPID_PRIVATE_KEY is neither",
            "not-a-key-but-secret",
        ),
        (
            vec![("SWITCHBOARD_VAPID_PRIVATE_KEY", private.clone())],
            "SWITCHBOARD_VAPID_SUBJECT is required",
            private.as_str(),
        ),
        (
            vec![
                ("SWITCHBOARD_VAPID_PRIVATE_KEY", private.clone()),
                ("SWITCHBOARD_VAPID_SUBJECT", "ops@example.com".to_string()),
            ],
            "must be a mailto: or https: URL",
            private.as_str(),
        ),
    ] {
        Worker::refuses(&setup, JOBS, &env, reason, hidden).await;
    }
}
