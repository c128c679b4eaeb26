//! `switchboard publish` against a real nats-server: flags, JSON lines, idempotence.

mod support;

use serde_json::{Value, json};
use support::{Bus, json_lines, ok, replayed, switchboard, switchboard_with_stdin};

#[tokio::test]
async fn publishing_a_file_twice_stores_each_event_once() {
    let bus = Bus::start().await;
    let mut file = String::new();
    for i in 0..50 {
        let line = json!({
            "channel": format!("project:p{}", i % 3),
            "type": "bid.new",
            "id": format!("evt_file_{i}"),
            "data": {"amount": i},
            "actor": {"id": "u2", "type": "contractor"},
        });
        file.push_str(&format!("{line}\n"));
        if i % 10 == 0 {
            file.push('\n');
        }
    }
    let first = json_lines(&ok(&switchboard_with_stdin(
        &bus.admin_env(),
        &["publish", "--stdin", "--json"],
        &file,
    )));
    let second = json_lines(&ok(&switchboard_with_stdin(
        &bus.admin_env(),
        &["publish", "--stdin", "--json"],
        &file,
    )));
    assert_eq!(first.len(), 50);
    assert_eq!(second.len(), 50);
    for (i, (a, b)) in first.iter().zip(&second).enumerate() {
        assert_eq!(a["event_id"], format!("evt_file_{i}"));
        assert_eq!(a["duplicate"], false, "{a}");
        assert_eq!(b["duplicate"], true, "{b}");
        assert_eq!(a["seq"], b["seq"], "a duplicate answers the original seq");
    }
    assert_eq!(bus.stored("EVENTS").await, 50);

    // What replay writes publishes back as it was, ids kept: nothing new is stored.
    let replay = ok(&switchboard(
        &bus.admin_env(),
        &[
            "replay",
            "-c",
            "project:p0",
            "-c",
            "project:p1",
            "-c",
            "project:p2",
        ],
    ));
    assert_eq!(replayed(&replay).len(), 50);
    let again = json_lines(&ok(&switchboard_with_stdin(
        &bus.admin_env(),
        &["publish", "--stdin", "--json"],
        &replay,
    )));
    assert!(again.iter().all(|o| o["duplicate"] == true), "{again:?}");
    assert_eq!(bus.stored("EVENTS").await, 50);
}

#[tokio::test]
async fn lines_without_an_id_get_one_and_it_is_printed() {
    let bus = Bus::start().await;
    let out = ok(&switchboard_with_stdin(
        &bus.admin_env(),
        &["publish", "--stdin"],
        "{\"channel\":\"project:p1\",\"type\":\"bid.new\",\"data\":{\"a\":1}}\n",
    ));
    // line 1: seq 1 evt_... project:p1 stored
    let words: Vec<&str> = out.split_whitespace().collect();
    assert_eq!(&words[..4], ["line", "1:", "seq", "1"], "{out}");
    assert!(words[4].starts_with("evt_"), "{out}");
    let stored = replayed(&ok(&switchboard(
        &bus.admin_env(),
        &["replay", "-c", "project:p1"],
    )));
    assert_eq!(stored[0].2.id.as_str(), words[4]);
    assert_eq!(stored[0].2.data.as_str(), r#"{"a":1}"#);
}

#[tokio::test]
async fn a_bad_line_stops_the_file_and_names_its_number() {
    let bus = Bus::start().await;
    let file = [
        r#"{"channel":"project:p1","type":"bid.new","id":"evt_l1"}"#,
        r#"{"channel":"project:p1","type":"bid.new","id":"evt_l2"}"#,
        r#"{"channel":"project:p1","type":"Bid New","id":"evt_l3"}"#,
        r#"{"channel":"project:p1","type":"bid.new","id":"evt_l4"}"#,
    ]
    .join("\n");
    let output = switchboard_with_stdin(&bus.admin_env(), &["publish", "--stdin"], &file);
    assert!(!output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        stderr.contains("line 3:") && stderr.contains("invalid event type"),
        "{stderr}"
    );
    assert_eq!(
        stderr
            .lines()
            .filter(|l| l.starts_with("switchboard:"))
            .count(),
        1,
        "{stderr}"
    );
    assert_eq!(
        bus.stored("EVENTS").await,
        2,
        "lines before the bad one are stored, none after"
    );
}

#[tokio::test]
async fn one_event_from_flags() {
    let bus = Bus::start().await;
    let args = [
        "publish",
        "--channel",
        "project:p1",
        "--type",
        "bid.new",
        "--data",
        r#"{"amount":5000}"#,
        "--id",
        "evt_flag1",
        "--actor-id",
        "u2",
        "--actor-type",
        "contractor",
        "--source",
        "bidding-service",
        "--subject",
        "project_789",
        "--json",
    ];
    let first: Value = serde_json::from_str(&ok(&switchboard(&bus.admin_env(), &args))).unwrap();
    assert_eq!(first["seq"], 1);
    assert_eq!(first["duplicate"], false);
    let second: Value = serde_json::from_str(&ok(&switchboard(&bus.admin_env(), &args))).unwrap();
    assert_eq!(second["seq"], 1);
    assert_eq!(second["duplicate"], true);

    let json_encoded = ok(&switchboard(
        &bus.admin_env(),
        &[
            "publish",
            "-c",
            "project:p1",
            "-t",
            "bid.update",
            "--encoding",
            "json",
        ],
    ));
    assert!(json_encoded.starts_with("seq 2 evt_"), "{json_encoded}");

    let stored = replayed(&ok(&switchboard(
        &bus.admin_env(),
        &["replay", "-c", "project:p1"],
    )));
    let event = &stored[0].2;
    assert_eq!(event.id.as_str(), "evt_flag1");
    assert_eq!(event.data.as_str(), r#"{"amount":5000}"#);
    assert_eq!(event.actor.as_ref().unwrap().kind, "contractor");
    assert_eq!(event.source.as_deref(), Some("bidding-service"));
    assert_eq!(event.subject.as_deref(), Some("project_789"));
    assert_eq!(stored[1].2.ty.as_str(), "bid.update");

    for (args, expected) in [
        (
            &[
                "publish",
                "-c",
                "project:p1",
                "-t",
                "bid.new",
                "--data",
                "{nope",
            ][..],
            "--data is not valid JSON",
        ),
        (
            &["publish", "-c", "user:u1:messages", "-t", "message.new"][..],
            "publish to user:u1",
        ),
        (
            &["publish", "-c", "project:p1", "-t", "bid.new", "--id", "42"][..],
            "invalid event id",
        ),
        (&["publish", "-t", "bid.new"][..], "--channel"),
    ] {
        let output = switchboard(&bus.admin_env(), args);
        assert!(!output.status.success(), "{args:?}");
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert!(stderr.contains(expected), "{args:?}: {stderr}");
    }
}
