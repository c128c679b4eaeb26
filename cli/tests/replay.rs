//! `switchboard replay` against a real nats-server: selections by channel, user, seq and
//! time, re-delivery to a subject, and resuming after Ctrl-C.

mod support;

use std::io::{BufRead, BufReader, Read};
use std::process::Stdio;
use std::time::Duration;

use async_nats::jetstream::{consumer, stream};
use futures_util::StreamExt;
use serde_json::json;
use support::{Bus, command, ok, replayed, switchboard};
use switchboard_bus::Encoding;
use switchboard_schemas::{Envelope, Timestamp};

type Expected = Vec<(u64, String, Envelope)>;

fn expected(events: &[(u64, &str, &Envelope)]) -> Expected {
    events
        .iter()
        .map(|(seq, channel, e)| (*seq, channel.to_string(), (*e).clone()))
        .collect()
}

#[tokio::test]
async fn replay_by_channel_returns_exactly_their_events_in_seq_order() {
    let bus = Bus::start().await;
    let mut mine = Vec::new();
    for i in 0..30 {
        let (channel, ty) = match i % 3 {
            0 => ("project:p1", "bid.new"),
            1 => ("project:p2", "project.update"),
            _ => ("project:p3", "bid.new"),
        };
        // Half the events are JSON envelopes, as non-Rust backends publish them.
        let encoding = if i % 2 == 0 {
            Encoding::Postcard
        } else {
            Encoding::Json
        };
        let (seq, event) = bus
            .publish_as(
                channel,
                ty,
                json!({ "i": i, "text": "a \"quoted\"\nline" }),
                encoding,
            )
            .await;
        if channel != "project:p3" {
            mine.push((seq, channel, event));
        }
    }
    let all: Vec<_> = mine.iter().map(|(s, c, e)| (*s, *c, e)).collect();

    let out = ok(&switchboard(
        &bus.admin_env(),
        &[
            "replay",
            "--channel",
            "project:p1",
            "--channel",
            "project:p2",
        ],
    ));
    assert_eq!(replayed(&out), expected(&all));

    // Types, and a seq window.
    let bids: Vec<_> = all
        .iter()
        .filter(|(_, c, _)| *c == "project:p1")
        .cloned()
        .collect();
    let out = ok(&switchboard(
        &bus.admin_env(),
        &[
            "replay",
            "-c",
            "project:p1",
            "-c",
            "project:p2",
            "--type",
            "bid.*",
        ],
    ));
    assert_eq!(replayed(&out), expected(&bids));
    let (from, to) = (all[3].0, all[10].0);
    let window: Vec<_> = all
        .iter()
        .filter(|(s, _, _)| (from..=to).contains(s))
        .cloned()
        .collect();
    let out = ok(&switchboard(
        &bus.admin_env(),
        &[
            "replay",
            "-c",
            "project:p1",
            "-c",
            "project:p2",
            "--from-seq",
            &from.to_string(),
            "--to-seq",
            &to.to_string(),
        ],
    ));
    assert_eq!(replayed(&out), expected(&window));

    // To a file, then appended to.
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("p1.jsonl");
    let file = file.to_str().unwrap();
    ok(&switchboard(
        &bus.admin_env(),
        &[
            "replay",
            "-c",
            "project:p1",
            "--to-seq",
            &from.to_string(),
            "-o",
            file,
        ],
    ));
    ok(&switchboard(
        &bus.admin_env(),
        &[
            "replay",
            "-c",
            "project:p1",
            "--from-seq",
            &(from + 1).to_string(),
            "-o",
            file,
            "--append",
        ],
    ));
    assert_eq!(
        replayed(&std::fs::read_to_string(file).unwrap()),
        expected(&bids)
    );
}

#[tokio::test]
async fn replay_by_user_reads_their_channel_and_their_memberships() {
    let bus = Bus::start().await;
    bus.add_member("project:p1", "u1").await;
    bus.add_member("conversation:c1", "u1").await;
    bus.add_member("project:p2", "u1").await;
    bus.remove_member("project:p2", "u1").await;
    bus.add_member("project:p3", "u2").await;
    bus.add_member("project:p4", "u10").await;

    let mut expected_events = Vec::new();
    for round in 0..3 {
        for channel in [
            "user:u1",
            "project:p1",
            "conversation:c1",
            "project:p2",
            "project:p3",
            "project:p4",
            "user:u2",
        ] {
            let (seq, event) = bus
                .publish(channel, "message.new", json!({ "round": round }))
                .await;
            if ["user:u1", "project:p1", "conversation:c1"].contains(&channel) {
                expected_events.push((seq, channel.to_string(), event));
            }
        }
    }
    let out = ok(&switchboard(&bus.admin_env(), &["replay", "--user", "u1"]));
    assert_eq!(replayed(&out), expected_events);

    // A user and an alias of their channel: the alias spelling shows only its types.
    let (seq, note) = bus.publish("user:u2", "user.notification", json!({})).await;
    let out = ok(&switchboard(
        &bus.admin_env(),
        &["replay", "--channel", "user:u2:notifications"],
    ));
    assert_eq!(
        replayed(&out),
        vec![(seq, "user:u2:notifications".to_string(), note)]
    );
}

#[tokio::test]
async fn replay_by_time_window_takes_events_stored_inside_it() {
    let bus = Bus::start().await;
    for i in 0..5 {
        bus.publish("project:p1", "bid.new", json!({ "before": i }))
            .await;
    }
    tokio::time::sleep(Duration::from_millis(100)).await;
    let since = Timestamp::now();
    tokio::time::sleep(Duration::from_millis(100)).await;
    let mut inside = Vec::new();
    for i in 0..5 {
        let (seq, event) = bus
            .publish("project:p1", "bid.new", json!({ "inside": i }))
            .await;
        inside.push((seq, "project:p1".to_string(), event));
        bus.publish("project:p2", "bid.new", json!({ "other channel": i }))
            .await;
    }
    tokio::time::sleep(Duration::from_millis(100)).await;
    let until = Timestamp::now();
    tokio::time::sleep(Duration::from_millis(100)).await;
    for i in 0..5 {
        bus.publish("project:p1", "bid.new", json!({ "after": i }))
            .await;
    }

    let out = ok(&switchboard(
        &bus.admin_env(),
        &[
            "replay",
            "-c",
            "project:p1",
            "--since",
            &since.to_string(),
            "--until",
            &until.to_string(),
        ],
    ));
    assert_eq!(replayed(&out), inside);

    // Durations count back from now: the last hour is everything, a future start nothing.
    let out = ok(&switchboard(
        &bus.admin_env(),
        &["replay", "-c", "project:p1", "--since", "1h"],
    ));
    assert_eq!(replayed(&out).len(), 15);
    let out = ok(&switchboard(
        &bus.admin_env(),
        &["replay", "-c", "project:p1", "--until", "1h"],
    ));
    assert_eq!(out, "");
}

#[tokio::test]
async fn backfill_to_a_subject_twice_delivers_each_event_once() {
    let bus = Bus::start().await;
    // A consumer's own stream with a duplicate window, as a backfill target would have.
    bus.js
        .create_stream(stream::Config {
            name: "BACKFILL".into(),
            subjects: vec!["backfill.>".into()],
            duplicate_window: Duration::from_secs(120),
            ..Default::default()
        })
        .await
        .unwrap();
    let mut selected = Vec::new();
    for i in 0..40 {
        let channel = if i % 2 == 0 {
            "project:p1"
        } else {
            "project:p2"
        };
        let (seq, event) = bus.publish(channel, "bid.new", json!({ "i": i })).await;
        if channel == "project:p1" {
            selected.push((seq, event));
        }
    }
    let args = [
        "replay",
        "-c",
        "project:p1",
        "--to-subject",
        "backfill.notifications",
    ];

    let dry = switchboard(&bus.admin_env(), &[&args[..], &["--dry-run"]].concat());
    let listed = ok(&dry);
    assert_eq!(listed.lines().count(), selected.len());
    assert!(
        listed.lines().all(|l| l.starts_with("would send seq ")),
        "{listed}"
    );
    assert_eq!(bus.stored("BACKFILL").await, 0, "a dry run sends nothing");

    ok(&switchboard(&bus.admin_env(), &args));
    let second = switchboard(&bus.admin_env(), &args);
    ok(&second);
    assert!(
        String::from_utf8_lossy(&second.stderr).contains("20 were already stored"),
        "{}",
        String::from_utf8_lossy(&second.stderr)
    );
    assert_eq!(bus.stored("BACKFILL").await, selected.len() as u64);

    // A fresh consumer of the backfill sees each event once, id and headers kept.
    let consumer = bus
        .js
        .get_stream("BACKFILL")
        .await
        .unwrap()
        .create_consumer(consumer::pull::Config {
            durable_name: Some("backfill-reader".into()),
            ..Default::default()
        })
        .await
        .unwrap();
    let mut messages = consumer.messages().await.unwrap();
    for (seq, event) in &selected {
        let message = tokio::time::timeout(Duration::from_secs(5), messages.next())
            .await
            .expect("a backfilled message")
            .unwrap()
            .unwrap();
        let headers = message.headers.as_ref().unwrap();
        assert_eq!(
            headers.get("Nats-Msg-Id").unwrap().as_str(),
            event.id.as_str()
        );
        assert_eq!(headers.get("Rt-Type").unwrap().as_str(), "bid.new");
        assert_eq!(headers.get("Rt-Channel").unwrap().as_str(), "project:p1");
        assert_eq!(headers.get("Rt-Seq").unwrap().as_str(), seq.to_string());
        assert_eq!(&Envelope::decode(&message.payload, false).unwrap(), event);
        message.ack().await.unwrap();
    }
    let info = consumer.clone().info().await.unwrap().clone();
    assert_eq!(info.num_pending, 0);
}

#[tokio::test]
async fn interrupted_replay_says_where_it_stopped_and_resuming_finishes_the_job() {
    let bus = Bus::start().await;
    let mut publishes = Vec::new();
    for i in 0..20_000u32 {
        let payload = switchboard_schemas::Envelope::new(
            "bid.new".parse().unwrap(),
            switchboard_schemas::RawJson::encode(&json!({ "i": i, "pad": "x".repeat(100) }))
                .unwrap(),
        )
        .to_postcard();
        let mut headers = async_nats::HeaderMap::new();
        headers.insert("Rt-Type", "bid.new");
        publishes.push(
            bus.js
                .publish_with_headers("rt.project.p1", headers, payload.into())
                .await
                .unwrap(),
        );
        if publishes.len() == 1000 {
            for ack in publishes.drain(..) {
                ack.await.unwrap();
            }
        }
    }
    for ack in publishes.drain(..) {
        ack.await.unwrap();
    }

    let mut child = command(&bus.admin_env(), &["replay", "--channel", "project:p1"])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut stdout = BufReader::new(child.stdout.take().unwrap());
    let mut lines = Vec::new();
    let mut line = String::new();
    // The pipe fills long before 20,000 events are written: the replay is mid-way.
    while lines.len() < 10 {
        line.clear();
        stdout.read_line(&mut line).unwrap();
        lines.push(line.clone());
    }
    let status = std::process::Command::new("kill")
        .args(["-INT", &child.id().to_string()])
        .status()
        .unwrap();
    assert!(status.success());
    // The replay is blocked on the full pipe; let its runtime take the signal in before
    // the pipe drains, or a fast machine may finish the whole replay first.
    std::thread::sleep(std::time::Duration::from_millis(500));
    let mut rest = String::new();
    stdout.read_to_string(&mut rest).unwrap();
    lines.extend(rest.lines().map(|l| format!("{l}\n")));
    let mut stderr = String::new();
    child
        .stderr
        .take()
        .unwrap()
        .read_to_string(&mut stderr)
        .unwrap();
    let exit = child.wait().unwrap();
    assert_eq!(exit.code(), Some(130), "{stderr}");

    let first_part = replayed(&lines.concat());
    let done: u64 = stderr
        .split("done through seq ")
        .nth(1)
        .and_then(|rest| rest.split(' ').next())
        .and_then(|seq| seq.parse().ok())
        .unwrap_or_else(|| panic!("no last seq in: {stderr}"));
    assert!(done < 20_000, "{stderr}");
    assert_eq!(
        first_part.last().unwrap().0,
        done,
        "everything up to the reported seq is written"
    );
    let hint = stderr
        .split("resume with: ")
        .nth(1)
        .unwrap_or_else(|| panic!("no resume hint in: {stderr}"))
        .trim();
    assert!(hint.contains(&format!("--from-seq {}", done + 1)), "{hint}");

    let words: Vec<&str> = hint.split_whitespace().collect();
    assert_eq!(&words[..2], ["switchboard", "replay"]);
    let second_part = replayed(&ok(&switchboard(&bus.admin_env(), &words[1..])));
    let seqs: Vec<u64> = first_part
        .iter()
        .chain(&second_part)
        .map(|(s, _, _)| *s)
        .collect();
    assert_eq!(seqs, (1..=20_000).collect::<Vec<u64>>());
}

#[tokio::test]
async fn replay_failures_say_what_to_do() {
    let bus = Bus::start().await;
    bus.publish("project:p1", "bid.new", json!({})).await;
    let cases: [(&[&str], &str); 4] = [
        (&["replay"], "--channel"),
        (
            &[
                "replay",
                "-c",
                "project:p1",
                "--from-seq",
                "5",
                "--to-seq",
                "2",
            ],
            "after --to-seq",
        ),
        (
            &["replay", "-c", "project:p1", "--since", "yesterday"],
            "RFC 3339",
        ),
        (
            &[
                "replay",
                "-c",
                "project:p1",
                "--to-subject",
                "nowhere.at.all",
            ],
            "does a stream capture",
        ),
    ];
    for (args, expected) in cases {
        let output = switchboard(&bus.admin_env(), args);
        assert!(!output.status.success(), "{args:?}");
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert!(stderr.contains(expected), "{args:?}: {stderr}");
    }
}
