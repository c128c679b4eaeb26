//! `switchboard tail` against a real nats-server: a stored start, live events, signals,
//! `--count` and Ctrl-C.

mod support;

use std::io::{BufRead, BufReader};
use std::process::{Child, ChildStdout, Stdio};
use std::sync::mpsc;
use std::time::Duration;

use serde_json::{Value, json};
use support::{Bus, command};

/// A running `switchboard tail` whose stdout lines arrive on a channel.
struct Tail {
    child: Child,
    lines: mpsc::Receiver<String>,
}

impl Tail {
    fn start(bus: &Bus, args: &[&str]) -> Tail {
        let mut child = command(&bus.admin_env(), &[&["tail"], args].concat())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .unwrap();
        let stdout: ChildStdout = child.stdout.take().unwrap();
        let (tx, lines) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines() {
                let Ok(line) = line else { break };
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        Tail { child, lines }
    }

    fn next(&self) -> Value {
        let line = self
            .lines
            .recv_timeout(Duration::from_secs(10))
            .expect("a line from tail within 10 s");
        serde_json::from_str(&line).unwrap_or_else(|e| panic!("{e}: {line}"))
    }

    fn exit_code(&mut self) -> Option<i32> {
        for _ in 0..100 {
            if let Some(status) = self.child.try_wait().unwrap() {
                return status.code();
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        panic!("tail did not exit");
    }
}

impl Drop for Tail {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[tokio::test]
async fn tail_shows_the_last_stored_events_then_live_ones_then_stops_at_count() {
    let bus = Bus::start().await;
    for i in 0..5 {
        bus.publish("project:p1", "bid.new", json!({ "stored": i }))
            .await;
    }
    bus.publish("project:p2", "bid.new", json!({})).await;
    let mut tail = Tail::start(
        &bus,
        &["project:p1", "--json", "--last", "2", "--count", "5"],
    );
    assert_eq!(tail.next()["seq"], 4);
    assert_eq!(tail.next()["seq"], 5);
    // The backlog is shown, so the live subscription is in place.
    bus.publish("project:p2", "bid.new", json!({})).await;
    let (seq, event) = bus
        .publish("project:p1", "bid.update", json!({ "live": 1 }))
        .await;
    let line = tail.next();
    assert_eq!(line["seq"], seq);
    assert_eq!(line["channel"], "project:p1");
    assert_eq!(line["event"]["id"], event.id.as_str());
    bus.publish("project:p1", "bid.new", json!({ "live": 2 }))
        .await;
    bus.publish("project:p1", "bid.new", json!({ "live": 3 }))
        .await;
    assert_eq!(tail.next()["event"]["data"], json!({ "live": 2 }));
    assert_eq!(tail.next()["event"]["data"], json!({ "live": 3 }));
    assert_eq!(tail.exit_code(), Some(0));
}

#[tokio::test]
async fn tail_from_a_time_with_types_aliases_and_signals_until_ctrl_c() {
    let bus = Bus::start().await;
    bus.publish("user:u1", "message.new", json!({ "old": true }))
        .await;
    tokio::time::sleep(Duration::from_millis(50)).await;
    let since = switchboard_schemas::Timestamp::now().to_string();
    tokio::time::sleep(Duration::from_millis(50)).await;
    let (first, _) = bus
        .publish("user:u1", "message.new", json!({ "n": 1 }))
        .await;
    bus.publish("user:u1", "user.notification", json!({})).await;
    let mut tail = Tail::start(
        &bus,
        &[
            "user:u1:messages",
            "conversation:c1",
            "--since",
            &since,
            "--signals",
            "--json",
            "--type",
            "message.*",
        ],
    );
    let line = tail.next();
    assert_eq!(
        (line["seq"].as_u64(), line["channel"].as_str()),
        (Some(first), Some("user:u1:messages"))
    );
    bus.client
        .publish(
            "sig.conversation.c1",
            r#"{"from":"u2","type":"typing","data":{"typing":true}}"#.into(),
        )
        .await
        .unwrap();
    // The test's thread blocks while it waits for tail: send the signal before that.
    bus.client.flush().await.unwrap();
    let signal = tail.next();
    assert_eq!(signal["channel"], "conversation:c1");
    assert_eq!(
        signal["signal"],
        json!({"from":"u2","type":"typing","data":{"typing":true}})
    );
    bus.publish(
        "conversation:c1",
        "conversation.participant_added",
        json!({}),
    )
    .await;
    let (seq, _) = bus
        .publish("conversation:c1", "message.new", json!({ "n": 2 }))
        .await;
    assert_eq!(tail.next()["seq"], seq, "types filter the live events too");

    let status = std::process::Command::new("kill")
        .args(["-INT", &tail.child.id().to_string()])
        .status()
        .unwrap();
    assert!(status.success());
    assert_eq!(tail.exit_code(), Some(0), "Ctrl-C is how tail ends");
}

#[tokio::test]
async fn tail_prints_one_readable_line_per_event() {
    let bus = Bus::start().await;
    let (_, event) = bus
        .publish("project:p1", "bid.new", json!({ "amount": 5000 }))
        .await;
    let output = command(
        &bus.admin_env(),
        &["tail", "project:p1", "--from-seq", "1", "--count", "1"],
    )
    .stdout(Stdio::piped())
    .output()
    .unwrap();
    let out = String::from_utf8(output.stdout).unwrap();
    assert_eq!(
        out,
        format!(
            "#1 {} project:p1 bid.new {} {{\"amount\":5000}}\n",
            event.timestamp, event.id
        )
    );
}
