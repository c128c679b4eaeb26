//! The edge's log with `SWITCHBOARD_LOG_FORMAT=json` (docs/operations.md §7): every line
//! it writes is one JSON object with `timestamp`, `level`, `target` and `message` at the
//! top level, and neither the JWT secret nor a token it was shown appears in it.

mod support;

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;
use support::{Role, SECRET, Stack, http_get, token};
use switchboard_testkit::{Process, free_port};

#[tokio::test]
async fn json_log_lines_parse_and_carry_no_secret() {
    let stack = Stack::start().await;
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("edge.log");
    let log = std::fs::File::create(&path).unwrap();
    let addr = format!("127.0.0.1:{}", free_port());
    let mut command = Command::new(env!("CARGO_BIN_EXE_switchboard-edge"));
    command
        .envs(stack.nats.env(Role::Edge))
        .env("SWITCHBOARD_EDGE_ADDR", &addr)
        .env("SWITCHBOARD_JWT_SECRET", &*SECRET)
        .env("SWITCHBOARD_LOG", "debug")
        .env("SWITCHBOARD_LOG_FORMAT", "json")
        .stdin(Stdio::null())
        .stdout(log.try_clone().unwrap())
        .stderr(log);
    let mut edge = Process::spawn(command).unwrap();
    let deadline = Instant::now() + Duration::from_secs(20);
    while http_get(&addr, "/readyz").is_none_or(|(status, _)| status != 200) {
        assert!(Instant::now() < deadline, "the edge did not get ready");
        std::thread::sleep(Duration::from_millis(25));
    }
    // A refused token and an accepted one: both paths log.
    let bad = format!("{}x", token("u1", 60, &["room:r1"]));
    let good = token("u1", 60, &["room:r1"]);
    for bearer in [&bad, &good] {
        let _ = support::http(
            &addr,
            "POST",
            "/v1/publish",
            &[("authorization", &format!("Bearer {bearer}"))],
            r#"{"channel":"room:r1","type":"chat.message","data":{}}"#,
        )
        .await;
    }
    edge.signal(libc::SIGTERM);
    edge.wait_timeout(Duration::from_secs(10))
        .expect("the edge stops on SIGTERM");

    let written = std::fs::read_to_string(&path).unwrap();
    let lines: Vec<&str> = written.lines().collect();
    assert!(lines.len() >= 2, "{written}");
    for line in lines {
        let object: Value = serde_json::from_str(line)
            .unwrap_or_else(|e| panic!("not one JSON object ({e}): {line}"));
        for key in ["timestamp", "level", "target", "message"] {
            assert!(object.get(key).is_some(), "{key} missing: {line}");
        }
    }
    for secret in [SECRET.as_str(), good.as_str(), bad.as_str()] {
        assert!(!written.contains(secret), "a secret reached the log");
    }
}
