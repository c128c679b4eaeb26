//! The workers over HTTP (docs/operations.md §7) on real nats-server and PostgreSQL:
//! `/readyz` goes 503 naming PostgreSQL while it is stopped and 200 again when it is
//! back; each job's `switchboard_worker_messages_total` moves when that job handles a
//! message; `/metrics` carries build info, process metrics, backlogs; and with
//! `SWITCHBOARD_LOG_FORMAT=json` every line the process writes is one JSON object.

mod support;

use std::process::Stdio;

use async_nats::HeaderMap;
use async_nats::jetstream::message::PublishMessage;
use serde_json::{Value, json};
use support::{Role, add_member, eventually, setup};
use switchboard_bus::{PRESENCE_BUCKET, headers};
use switchboard_testkit::free_port;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// `GET path` on `addr`: the status and the body.
async fn get(addr: &str, path: &str) -> Option<(u16, String)> {
    let mut stream = tokio::net::TcpStream::connect(addr).await.ok()?;
    let request = format!("GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n");
    stream.write_all(request.as_bytes()).await.ok()?;
    let mut response = String::new();
    stream.read_to_string(&mut response).await.ok()?;
    let (head, body) = response.split_once("\r\n\r\n")?;
    let status = head.split(' ').nth(1)?.parse().ok()?;
    Some((status, body.to_string()))
}

/// The value of one series (`name{labels}` exactly as rendered).
fn series(text: &str, name: &str) -> Option<f64> {
    text.lines()
        .find_map(|line| line.strip_prefix(name)?.strip_prefix(' ')?.parse().ok())
}

/// Messages `job` handled, whatever their outcome.
fn handled(text: &str, job: &str) -> f64 {
    ["ok", "retry", "error"]
        .iter()
        .filter_map(|outcome| {
            series(
                text,
                &format!(
                    "switchboard_worker_messages_total{{job=\"{job}\",outcome=\"{outcome}\"}}"
                ),
            )
        })
        .sum()
}

const JOBS: [&str; 5] = [
    "membership",
    "receipts",
    "presence",
    "notifications",
    "outbox",
];

#[tokio::test]
async fn readyz_follows_postgres_metrics_move_per_job_and_json_logs_parse() {
    let mut setup = setup().await;
    let addr = format!("127.0.0.1:{}", free_port());
    let dir = tempfile::tempdir().unwrap();
    let log_path = dir.path().join("workers.log");
    let log = std::fs::File::create(&log_path).unwrap();
    let mut worker = tokio::process::Command::new(env!("CARGO_BIN_EXE_switchboard-workers"))
        .envs(setup.nats.env(Role::Workers))
        .env("DATABASE_URL", &setup.database_url)
        .env("SWITCHBOARD_WORKERS", JOBS.join(","))
        .env("SWITCHBOARD_WORKERS_ADDR", &addr)
        .env("SWITCHBOARD_OUTBOX_POLL_MS", "200")
        .env("SWITCHBOARD_LOG", "switchboard_workers=debug,info")
        .env("SWITCHBOARD_LOG_FORMAT", "json")
        .stdin(Stdio::null())
        .stdout(log.try_clone().unwrap())
        .stderr(log)
        .kill_on_drop(true)
        .spawn()
        .unwrap();

    let ready = eventually("/readyz to answer 200", || async {
        let (status, body) = get(&addr, "/readyz").await?;
        (status == 200).then(|| serde_json::from_str::<Value>(&body).unwrap())
    })
    .await;
    assert_eq!(ready["ready"], true, "{ready}");
    for job in JOBS {
        assert_eq!(ready["jobs"][job], "bound", "{ready}");
    }
    assert_eq!(get(&addr, "/healthz").await.unwrap().0, 200);

    // One message for each job.
    add_member(&setup, "project:p1", "u1", "owner").await;
    setup
        .js
        .send_publish(
            "cmd.receipts.c1",
            PublishMessage::build().payload("{}".into()),
        )
        .await
        .unwrap()
        .await
        .unwrap();
    let mut ttl = HeaderMap::new();
    ttl.insert(headers::NATS_TTL, "60");
    let entry = json!({"user": "u1", "conn": "c1", "device": "d1", "status": "online",
        "text": null, "edge": "edge-test", "at": 1_795_000_000_000u64});
    setup
        .js
        .send_publish(
            format!("$KV.{PRESENCE_BUCKET}.u1.c1"),
            PublishMessage::build()
                .payload(entry.to_string().into())
                .headers(ttl),
        )
        .await
        .unwrap()
        .await
        .unwrap();
    sqlx::query("SELECT switchboard.emit('project:p1', 'project.update', '{}'::jsonb)")
        .execute(&setup.db)
        .await
        .unwrap();

    let text = eventually("every job to count a message", || async {
        let (_, text) = get(&addr, "/metrics").await?;
        JOBS.iter()
            .all(|job| handled(&text, job) >= 1.0)
            .then_some(text)
    })
    .await;
    let version = env!("CARGO_PKG_VERSION");
    assert_eq!(
        series(
            &text,
            &format!("switchboard_build_info{{binary=\"workers\",version=\"{version}\"}}")
        ),
        Some(1.0)
    );
    for name in [
        "process_cpu_seconds_total",
        "process_resident_memory_bytes",
        "switchboard_worker_handle_seconds_bucket{job=\"membership\",le=\"+Inf\"}",
    ] {
        assert!(
            text.lines().any(|l| l.starts_with(name)),
            "{name} in\n{text}"
        );
    }
    eventually("the backlogs to be read", || async {
        let (_, text) = get(&addr, "/metrics").await?;
        (series(&text, "switchboard_outbox_pending") == Some(0.0)
            && series(&text, "switchboard_worker_pending{job=\"membership\"}") == Some(0.0))
        .then_some(())
    })
    .await;

    // PostgreSQL away: not ready, and the body says why; back: ready again.
    setup.pg.stop();
    let down = eventually("/readyz to answer 503", || async {
        let (status, body) = get(&addr, "/readyz").await?;
        (status == 503).then(|| serde_json::from_str::<Value>(&body).unwrap())
    })
    .await;
    assert_eq!(down["ready"], false, "{down}");
    assert_eq!(down["postgres"], "unreachable", "{down}");
    assert!(
        down["not_ready"]
            .as_array()
            .unwrap()
            .contains(&json!("postgres")),
        "{down}"
    );
    assert_eq!(get(&addr, "/healthz").await.unwrap().0, 200);
    setup.pg.start_again().unwrap();
    eventually("/readyz to answer 200 again", || async {
        let (status, _) = get(&addr, "/readyz").await?;
        (status == 200).then_some(())
    })
    .await;

    worker.start_kill().unwrap();
    worker.wait().await.unwrap();
    let written = std::fs::read_to_string(&log_path).unwrap();
    let lines: Vec<&str> = written.lines().collect();
    assert!(lines.len() > 5, "{written}");
    for line in lines {
        let object: Value = serde_json::from_str(line)
            .unwrap_or_else(|e| panic!("not one JSON object ({e}): {line}"));
        for key in ["timestamp", "level", "target", "message"] {
            assert!(object.get(key).is_some(), "{key} missing: {line}");
        }
    }
    assert!(
        written.contains(r#""message":"serving /healthz, /readyz and /metrics""#),
        "{written}"
    );
    for (name, value) in setup.nats.env(Role::Workers) {
        if name.contains("NKEY") {
            let seed = std::fs::read_to_string(&value).unwrap_or(value);
            assert!(!written.contains(seed.trim()), "the NKey seed was logged");
        }
    }
}

#[tokio::test]
async fn a_taken_address_stops_the_workers_naming_it() {
    let setup = setup().await;
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = taken.local_addr().unwrap().to_string();
    let (status, text) = support::Worker::refused(
        &setup,
        "membership",
        &[("SWITCHBOARD_WORKERS_ADDR", addr.clone())],
    )
    .await;
    assert!(!status.success());
    assert!(
        text.contains(&format!(
            "cannot listen on {addr} (SWITCHBOARD_WORKERS_ADDR)"
        )),
        "{text}"
    );
}
