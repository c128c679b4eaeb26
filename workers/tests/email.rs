//! Email over SMTP end to end: addresses set with the service-only `contacts.set` as a
//! backend calls it through the edge, the notifications job sending to an SMTP server
//! on loopback (tests/peers/smtp_server.py, Python's aiosmtpd) that decodes each
//! message with Python's email package, against real nats-server and PostgreSQL.

mod support;

use std::time::Duration;

use serde_json::{Value, json};

use support::http::Receiver;
use support::{
    Peer, Setup, Worker, add_member, bid, call, event, eventually, publish, set_contact, setup,
};

const JOBS: &str = "membership,notifications,outbox";

/// (delivered, failed, attempts, last_error) of `user`'s email delivery by SMTP.
async fn smtp_delivery(setup: &Setup, user: &str) -> Option<(bool, bool, i32, Option<String>)> {
    sqlx::query_as(
        "SELECT delivered_at IS NOT NULL, failed_at IS NOT NULL, attempts, last_error
           FROM switchboard.notification_deliveries
          WHERE user_id = $1 AND medium = 'email' AND sink = 'smtp'",
    )
    .bind(user)
    .fetch_optional(&setup.db)
    .await
    .unwrap()
}

fn body_of(record: &Value, content_type: &str) -> String {
    let parts = record["parts"].as_array().unwrap();
    let part = parts
        .iter()
        .find(|part| part["type"] == content_type)
        .unwrap_or_else(|| panic!("no {content_type} part in {record}"));
    part["body"].as_str().unwrap().replace("\r\n", "\n")
}

#[tokio::test(flavor = "multi_thread")]
async fn email_reaches_the_smtp_server_and_what_cannot_be_sent_is_recorded() {
    let setup = setup().await;
    let mut smtp = Peer::start("smtp_server.py", &[]);
    let port = smtp.next().await["port"].as_u64().unwrap();
    // Push still goes to the webhook; email, with SMTP configured, only by SMTP.
    let webhook = Receiver::start(|_| 204).await;
    let _worker = Worker::start(
        &setup,
        JOBS,
        &[
            ("SWITCHBOARD_SMTP_URL", format!("smtp://127.0.0.1:{port}")),
            (
                "SWITCHBOARD_EMAIL_FROM",
                "Switchboard <alerts@example.com>".into(),
            ),
            (
                "SWITCHBOARD_NOTIFY_WEBHOOK_URL",
                format!("{}/notify", webhook.base),
            ),
            ("SWITCHBOARD_NOTIFY_SUBJECTS", "false".into()),
            // Emailed as soon as it is created (escalation is tests/escalation.rs's).
            ("SWITCHBOARD_NOTIFY_EMAIL_AFTER_S", "0".into()),
            ("SWITCHBOARD_NOTIFY_RETRY_BASE_MS", "100".into()),
            ("SWITCHBOARD_NOTIFY_RETRY_MAX_MS", "200".into()),
            ("SWITCHBOARD_NOTIFY_MAX_ATTEMPTS", "1000".into()),
        ],
    );

    // u1 has an address; u2 none; the server refuses u3's for good and u4's for now.
    set_contact(&setup, "u1", "ann@example.com").await;
    set_contact(&setup, "u3", "refused@example.com").await;
    set_contact(&setup, "u4", "busy@example.com").await;
    for user in ["u1", "u2", "u3", "u4"] {
        let set = call(
            &setup,
            "notifications.preferences.set",
            user,
            json!({"categories": {"bid": {"email": true}}}),
        )
        .await;
        assert_eq!(set["categories"]["bid"]["email"], true, "{set}");
        add_member(&setup, "project:p1", user, "owner").await;
    }
    publish(&setup, "project:p1", &bid(5000)).await;

    // One message, to u1 only, both parts from the notification.
    let mut received = Vec::new();
    let seen = |received: &[Value], key: &str, value: &str| {
        received.iter().any(|record| record[key] == value)
    };
    while !(seen(&received, "to", "ann@example.com")
        && seen(&received, "refused", "refused@example.com")
        && seen(&received, "refused", "busy@example.com"))
    {
        received.push(smtp.next().await);
    }
    // Whatever else arrives within a second (u4's retries, refused again).
    let until = tokio::time::Instant::now() + Duration::from_secs(1);
    while let Some(record) = smtp
        .next_within(until.saturating_duration_since(tokio::time::Instant::now()))
        .await
    {
        received.push(record);
    }
    let messages: Vec<&Value> = received
        .iter()
        .filter(|r| r.get("parts").is_some())
        .collect();
    assert_eq!(messages.len(), 1, "{received:?}");
    let message = messages[0];
    assert_eq!(message["mail_from"], "alerts@example.com");
    assert_eq!(message["rcpt_tos"], json!(["ann@example.com"]));
    assert_eq!(message["from"], "Switchboard <alerts@example.com>");
    assert_eq!(message["to"], "ann@example.com");
    assert_eq!(message["subject"], "New bid");
    assert_eq!(message["content_type"], "multipart/alternative");
    assert!(
        message["message_id"]
            .as_str()
            .unwrap()
            .ends_with(".switchboard@example.com>"),
        "{message}"
    );
    assert_eq!(
        body_of(message, "text/plain"),
        "New bid\n\nc9 placed a bid of 5000 on p1\n"
    );
    let html = body_of(message, "text/html");
    assert!(
        html.contains("<h1 style=\"font-size:1.2em\">New bid</h1>")
            && html.contains("<p>c9 placed a bid of 5000 on p1</p>"),
        "{html}"
    );
    let refusals: Vec<(&str, u64)> = received
        .iter()
        .filter_map(|r| Some((r["refused"].as_str()?, r["code"].as_u64()?)))
        .collect();
    assert!(
        refusals.contains(&("refused@example.com", 550)),
        "{refusals:?}"
    );
    assert!(
        refusals.contains(&("busy@example.com", 451)),
        "{refusals:?}"
    );

    let ended = |user: &'static str| {
        let setup = &setup;
        async move {
            eventually(&format!("{user}'s email to end"), || async {
                smtp_delivery(setup, user)
                    .await
                    .filter(|row| row.0 || row.1)
            })
            .await
        }
    };
    assert_eq!(ended("u1").await, (true, false, 1, None));
    let (_, failed, attempts, error) = ended("u2").await;
    assert!(failed && attempts == 1, "no address: failed at once");
    assert_eq!(
        error.as_deref(),
        Some("no email address for user u2 (contacts.set)")
    );
    let (_, failed, attempts, error) = ended("u3").await;
    assert!(failed && attempts == 1, "a 550 is not retried");
    assert!(error.as_deref().unwrap().contains("550"), "{error:?}");

    // The 451 is retried with backoff, and stays pending.
    let (delivered, failed, attempts, error) = eventually("u4's email to be retried", || async {
        smtp_delivery(&setup, "u4").await.filter(|row| row.2 >= 3)
    })
    .await;
    assert!(!delivered && !failed, "a 4xx is retried, not given up");
    assert!(attempts >= 3);
    assert!(error.as_deref().unwrap().contains("451"), "{error:?}");

    // The webhook heard each user's push and no email.
    let pushes = || {
        webhook
            .requests()
            .iter()
            .map(|request| request.json())
            .filter(|body| body["event"] != "created")
            .map(|body| body["medium"].clone())
            .collect::<Vec<Value>>()
    };
    eventually("the webhook to hear four pushes", || async {
        (pushes().len() >= 4).then_some(())
    })
    .await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(pushes(), vec![json!("push"); 4]);
}

#[tokio::test(flavor = "multi_thread")]
async fn bad_smtp_settings_stop_the_worker_without_showing_the_secret() {
    let setup = setup().await;
    let secret = "hunter2-smtp-secret";
    let from = ("SWITCHBOARD_EMAIL_FROM", "alerts@example.com".to_string());
    for (env, reason) in [
        (
            vec![
                (
                    "SWITCHBOARD_SMTP_URL",
                    format!("smtp://ann:{secret}@mail.example.com"),
                ),
                from.clone(),
            ],
            "credentials would cross the network in the clear",
        ),
        (
            vec![
                (
                    "SWITCHBOARD_SMTP_URL",
                    format!("http://ann:{secret}@mail.example.com"),
                ),
                from.clone(),
            ],
            "only smtp:// and smtps:// are supported",
        ),
        (
            vec![
                (
                    "SWITCHBOARD_SMTP_URL",
                    format!("smtps://mail.example.com?tls=opportunistic&key={secret}"),
                ),
                from.clone(),
            ],
            "the only query it takes is ?tls=starttls",
        ),
        (
            vec![(
                "SWITCHBOARD_SMTP_URL",
                format!("smtps://ann:{secret}@mail.example.com"),
            )],
            "SWITCHBOARD_EMAIL_FROM is required with SWITCHBOARD_SMTP_URL",
        ),
    ] {
        let said = Worker::refuses(&setup, JOBS, &env, reason, secret).await;
        assert!(
            said.contains("SWITCHBOARD_SMTP_URL"),
            "names the setting: {said}"
        );
    }
}

/// `smtps://` (TLS from the first byte) and `?tls=starttls` against aiosmtpd with a
/// certificate from a test CA the worker trusts through SWITCHBOARD_SMTP_CA; without
/// that CA the certificate is refused and the email waits to be retried.
#[tokio::test(flavor = "multi_thread")]
async fn smtps_and_starttls_reach_a_server_with_a_private_ca() {
    let setup = setup().await;
    let ca = support::http::TestCa::new();
    let dir = tempfile::tempdir().unwrap();
    let (cert, key) = ca.server_pem();
    let [ca_file, cert_file, key_file] =
        [("ca.pem", &ca.pem), ("cert.pem", &cert), ("key.pem", &key)].map(|(name, pem)| {
            let path = dir.path().join(name);
            std::fs::write(&path, pem).unwrap();
            path.display().to_string()
        });
    let mut untrusted = None;
    for (user, mode, url, trusted) in [
        ("u1", "smtps", "smtps://127.0.0.1:{port}", true),
        (
            "u2",
            "starttls",
            "smtp://localhost:{port}?tls=starttls",
            true,
        ),
        ("u3", "smtps", "smtps://127.0.0.1:{port}", false),
    ] {
        let mut smtp = Peer::start("smtp_server.py", &[mode, &cert_file, &key_file]);
        let port = smtp.next().await["port"].as_u64().unwrap();
        let mut env = vec![
            (
                "SWITCHBOARD_SMTP_URL",
                url.replace("{port}", &port.to_string()),
            ),
            ("SWITCHBOARD_EMAIL_FROM", "alerts@example.com".into()),
            ("SWITCHBOARD_NOTIFY_SUBJECTS", "false".into()),
            ("SWITCHBOARD_NOTIFY_EMAIL_AFTER_S", "0".into()),
        ];
        if trusted {
            env.push(("SWITCHBOARD_SMTP_CA", ca_file.clone()));
        }
        let worker = Worker::start(&setup, JOBS, &env);
        set_contact(&setup, user, &format!("{user}@example.com")).await;
        call(
            &setup,
            "notifications.preferences.set",
            user,
            json!({"categories": {"bid": {"email": true}}}),
        )
        .await;
        let project = format!("project:{user}");
        add_member(&setup, &project, user, "owner").await;
        publish(&setup, &project, &event("bid.new", json!({"amount": 1}))).await;
        if trusted {
            let message = smtp.next().await;
            assert_eq!(message["to"], format!("{user}@example.com"), "{mode}");
            assert_eq!(message["tls"], true, "{mode}: {message}");
            let row = eventually(&format!("{user}'s email delivered"), || async {
                smtp_delivery(&setup, user).await.filter(|row| row.0)
            })
            .await;
            assert_eq!(row, (true, false, 1, None));
        } else {
            let (delivered, failed, _, error) =
                eventually("the untrusted server's refusal recorded", || async {
                    smtp_delivery(&setup, user)
                        .await
                        .filter(|row| row.3.is_some())
                })
                .await;
            assert!(!delivered && !failed, "a TLS failure is retried");
            untrusted = error;
            assert!(
                smtp.next_within(Duration::from_millis(500)).await.is_none(),
                "nothing reached the server"
            );
        }
        worker.kill().await;
    }
    let error = untrusted.unwrap();
    assert!(error.to_lowercase().contains("certificate"), "{error}");

    // A CA file that is not one stops the worker at start.
    let env = [
        ("SWITCHBOARD_SMTP_URL", "smtps://127.0.0.1:1".into()),
        ("SWITCHBOARD_EMAIL_FROM", "alerts@example.com".into()),
        ("SWITCHBOARD_SMTP_CA", key_file.clone()),
    ];
    let reason = "holds no PEM certificate";
    let said = Worker::refuses(&setup, JOBS, &env, reason, "PRIVATE KEY").await;
    assert!(said.contains("SWITCHBOARD_SMTP_CA"), "{said}");
}
