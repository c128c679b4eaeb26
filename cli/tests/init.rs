//! `switchboard init` and `switchboard status` against a real nats-server.

use std::process::{Command, Output};

use serde_json::Value;
use switchboard_bus::Role;
use switchboard_testkit::{Nats, workspace_root};

fn switchboard(nats: &Nats, args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_switchboard"))
        .args(args)
        .envs(nats.env(Role::Admin))
        .env_remove("SWITCHBOARD_DEFINITIONS")
        .output()
        .expect("run switchboard")
}

fn json(output: &Output) -> Value {
    assert!(
        output.status.success(),
        "switchboard failed: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    serde_json::from_slice(&output.stdout).expect("--json prints JSON")
}

fn outcomes(report: &Value) -> Vec<(String, String)> {
    report
        .as_array()
        .unwrap()
        .iter()
        .map(|a| {
            (
                a["stream"].as_str().unwrap().to_string(),
                a["outcome"].as_str().unwrap().to_string(),
            )
        })
        .collect()
}

#[test]
fn init_creates_then_changes_nothing_then_updates_drift() {
    let nats = Nats::start().unwrap();

    let first = json(&switchboard(&nats, &["init", "--json"]));
    let mut created = outcomes(&first);
    created.sort();
    assert_eq!(
        created,
        [
            "CMDS",
            "EVENTS",
            "KV_edges",
            "KV_members",
            "KV_occupancy",
            "KV_presence"
        ]
        .map(|s| (s.to_string(), "created".to_string()))
    );

    let second = json(&switchboard(&nats, &["init", "--json"]));
    assert!(
        outcomes(&second).iter().all(|(_, o)| o == "unchanged"),
        "second run changed something: {second}"
    );

    // A changed definition (longer history per channel) is applied as an update.
    let dir = tempfile::tempdir().unwrap();
    for entry in std::fs::read_dir(workspace_root().join("nats/jetstream")).unwrap() {
        let path = entry.unwrap().path();
        let mut text = std::fs::read_to_string(&path).unwrap();
        if path.file_name().unwrap() == "EVENTS.json" {
            text = text.replace(
                "\"max_msgs_per_subject\": 100000",
                "\"max_msgs_per_subject\": 200000",
            );
        }
        std::fs::write(dir.path().join(path.file_name().unwrap()), text).unwrap();
    }
    let third = json(&switchboard(
        &nats,
        &[
            "init",
            "--json",
            "--definitions",
            dir.path().to_str().unwrap(),
        ],
    ));
    let events = third
        .as_array()
        .unwrap()
        .iter()
        .find(|a| a["stream"] == "EVENTS")
        .unwrap();
    assert_eq!(events["outcome"], "updated");
    assert_eq!(
        events["changed"],
        serde_json::json!(["max_msgs_per_subject"])
    );

    let status = json(&switchboard(&nats, &["status", "--json"]));
    let events = status["streams"]
        .as_array()
        .unwrap()
        .iter()
        .find(|s| s["name"] == "EVENTS")
        .unwrap();
    assert_eq!(events["messages"], 0);
    let buckets: Vec<&str> = status["streams"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|s| s["bucket"].as_str())
        .collect();
    assert_eq!(buckets, ["edges", "members", "occupancy", "presence"]);
}

#[test]
fn init_reports_a_clear_error_without_nats() {
    let nats = Nats::start().unwrap();
    // The seed outlives the server: the refusal is about the address, not the key.
    let seed = tempfile::NamedTempFile::new().unwrap();
    std::fs::copy(nats.options(Role::Admin).nkey.unwrap(), seed.path()).unwrap();
    let mut env = nats.env(Role::Admin);
    env.retain(|(name, _)| name != "SWITCHBOARD_NATS_NKEY");
    env.push((
        "SWITCHBOARD_NATS_NKEY".into(),
        seed.path().display().to_string(),
    ));
    drop(nats);
    let output = Command::new(env!("CARGO_BIN_EXE_switchboard"))
        .args(["init"])
        .envs(env)
        .output()
        .unwrap();
    assert!(!output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        stderr.contains("cannot connect to NATS"),
        "stderr: {stderr}"
    );
}

#[test]
fn init_rejects_an_invalid_definition_file() {
    let nats = Nats::start().unwrap();
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("BROKEN.json"), "{\"subjects\": [\"x.>\"]").unwrap();
    let output = switchboard(
        &nats,
        &["init", "--definitions", dir.path().to_str().unwrap()],
    );
    assert!(!output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("BROKEN.json"), "stderr: {stderr}");
}
