//! `switchboard erase`: asks the workers (a real `switchboard-workers` process with the
//! archive job, on a real nats-server and PostgreSQL) and prints what was removed.

mod support;

use std::time::{Duration, Instant};

use serde_json::{Value, json};
use support::*;
use switchboard_bus::Publisher;
use switchboard_bus::store::Store;
use switchboard_schemas::{Actor, ChannelName, Envelope, EventType, RawJson};
use switchboard_testkit::{Workers, WorkersWithPostgres};

const DEADLINE: Duration = Duration::from_secs(20);

async fn say(bus: &Bus, ch: &str, user: &str, text: &str) -> u64 {
    let mut event = Envelope::new(
        EventType::parse("message.new").unwrap(),
        RawJson::encode(&json!({ "text": text })).unwrap(),
    );
    event.actor = Some(Actor {
        id: user.into(),
        kind: "user".into(),
    });
    Publisher::new(bus.client.clone())
        .publish(&ChannelName::parse(ch).unwrap(), &event)
        .await
        .unwrap()
        .seq
}

async fn workers(bus: &Bus) -> WorkersWithPostgres {
    Workers::new(bus.nats.env(Role::Workers), "archive")
        .start_with_postgres()
        .await
}

/// Waits until the archive holds `count` events of `ch` (read as the edges read it).
async fn archived(bus: &Bus, ch: &str, count: usize) {
    let epoch = Store::new(bus.client.clone())
        .position()
        .await
        .unwrap()
        .epoch;
    let deadline = Instant::now() + DEADLINE;
    loop {
        let mut h = async_nats::HeaderMap::new();
        h.insert("Rt-User", "test");
        let params = json!({"ch": ch, "epoch": epoch, "after": 0});
        if let Ok(reply) = bus
            .client
            .request_with_headers("int.archive.read", h, params.to_string().into())
            .await
        {
            let answer: Value = serde_json::from_slice(&reply.payload).unwrap();
            if answer["result"]["events"].as_array().map(Vec::len) == Some(count) {
                return;
            }
        }
        assert!(Instant::now() < deadline, "{ch} not archived");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Stored payloads of `EVENTS` holding `needle`.
async fn in_stream(bus: &Bus, needle: &str) -> usize {
    let store = Store::new(bus.client.clone());
    let (mut next, mut found) = (1, 0);
    loop {
        let page = store.forward("rt.>", next, 1000).await.unwrap();
        let Some(last) = page.last() else {
            return found;
        };
        next = last.seq + 1;
        found += page
            .iter()
            .filter(|e| {
                e.payload
                    .windows(needle.len())
                    .any(|w| w == needle.as_bytes())
            })
            .count();
    }
}

#[tokio::test]
async fn erase_prints_what_it_removed_and_the_text_is_gone() {
    let bus = Bus::start().await;
    let _workers = workers(&bus).await;
    let (c1, c2) = ("conversation:c1", "conversation:c2");
    say(&bus, c1, "u1", "the papaya secret").await;
    say(&bus, c1, "u2", "tell me").await;
    say(&bus, c2, "u1", "papaya again").await;
    say(&bus, c2, "u2", "bye").await;
    archived(&bus, c1, 2).await;
    archived(&bus, c2, 2).await;

    let out = ok(&switchboard(&bus.admin_env(), &["erase", "--user", "u1"]));
    assert!(out.contains("erased user u1"), "{out}");
    let counts: Vec<(String, String)> = out
        .lines()
        .skip(2)
        .map(|line| {
            let (count, place) = line.split_once("  ").unwrap();
            (count.to_string(), place.trim().to_string())
        })
        .collect();
    assert_eq!(
        counts,
        [
            ("2", "copies in the EVENTS stream"),
            ("2", "archive rows"),
            ("2", "messages search could find"),
            ("0", "inbox entries"),
            ("0", "notifications"),
            ("0", "push and email deliveries"),
            ("0", "outbox rows of notification events"),
        ]
        .map(|(c, p)| (c.to_string(), p.to_string())),
        "{out}"
    );
    assert_eq!(in_stream(&bus, "papaya").await, 0);
    assert_eq!(bus.stored("EVENTS").await, 2, "u2's messages stay");

    let out = ok(&switchboard(
        &bus.admin_env(),
        &["--json", "erase", "--channel", c2],
    ));
    let report: Value = serde_json::from_str(&out).unwrap();
    assert_eq!(report["ch"], c2, "{out}");
    assert_eq!(report["removed"]["events"], 1, "{out}");
    assert_eq!(report["removed"]["archive"], 2, "{out}");
    assert_eq!(bus.stored("EVENTS").await, 1);
}

#[tokio::test]
async fn erase_without_workers_says_what_to_do() {
    let bus = Bus::start().await;
    let out = switchboard(&bus.admin_env(), &["erase", "--user", "u1"]);
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("no workers answer erase.user"), "{stderr}");
}

#[test]
fn erase_refuses_bad_targets() {
    for (args, says) in [
        (&["erase"][..], "--user"),
        (&["erase", "--user", "u 1"], "not a user id"),
        (&["erase", "--channel", "user:u1:messages"], "alias"),
        (&["erase", "--channel", "conversation:*"], "channel id"),
        (
            &["erase", "--user", "u1", "--channel", "conversation:c1"],
            "cannot be used with",
        ),
    ] {
        let out = switchboard(&[], args);
        assert!(!out.status.success(), "{args:?} accepted");
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(stderr.contains(says), "{args:?}: {stderr}");
    }
}

static SECRET: std::sync::LazyLock<String> =
    std::sync::LazyLock::new(switchboard_testkit::fresh_secret);

fn token(args: &[&str]) -> String {
    let output = command(&[], &[&["token"], args].concat())
        .env("SWITCHBOARD_JWT_SECRET", &*SECRET)
        .output()
        .unwrap();
    ok(&output).trim_end().to_string()
}

/// `POST /v1/rpc/<method>` over HTTP/1.0: (status, body).
fn post_rpc(addr: &str, method: &str, bearer: &str, params: &Value) -> (u16, String) {
    use std::io::{Read, Write};
    let body = params.to_string();
    let mut stream = std::net::TcpStream::connect(addr).unwrap();
    stream.set_read_timeout(Some(DEADLINE)).unwrap();
    write!(
        stream,
        "POST /v1/rpc/{method} HTTP/1.0\r\nHost: {addr}\r\nAuthorization: Bearer {bearer}\r\n\
         Content-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    )
    .unwrap();
    let mut response = String::new();
    stream.read_to_string(&mut response).unwrap();
    let status = response
        .split(' ')
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(0);
    let body = response
        .split_once("\r\n\r\n")
        .map(|(_, b)| b.to_string())
        .unwrap_or_default();
    (status, body)
}

#[tokio::test]
async fn through_the_edge_a_user_may_not_erase_and_a_backend_may() {
    let bus = Bus::start().await;
    let _workers = workers(&bus).await;
    let (_edge, addr) = start_edge(&bus.nats, &SECRET);
    say(&bus, "conversation:c1", "u1", "the guava note").await;
    archived(&bus, "conversation:c1", 1).await;

    let user = token(&["--sub", "u1"]);
    let (status, body) = post_rpc(&addr, "erase.user", &user, &json!({"user": "u1"}));
    assert_eq!(status, 403, "{body}");
    assert_eq!(
        serde_json::from_str::<Value>(&body).unwrap()["code"],
        "forbidden"
    );
    assert_eq!(in_stream(&bus, "guava").await, 1, "nothing erased");

    let backend = token(&["--sub", "privacy-service", "--role", "service"]);
    let (status, body) = post_rpc(&addr, "erase.user", &backend, &json!({"user": "u1"}));
    assert_eq!(status, 200, "{body}");
    let answer: Value = serde_json::from_str(&body).unwrap();
    assert_eq!(answer["result"]["removed"]["events"], 1, "{body}");
    assert_eq!(in_stream(&bus, "guava").await, 0);
}
