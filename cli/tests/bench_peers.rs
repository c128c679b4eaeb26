//! `switchboard bench --peer` against the peers of issue 20's comparison, at a small size,
//! started as scripts/bench-peers starts them: nats-server's own WebSocket listener
//! (bench/peers/nats-ws.conf; nats-server is wherever the other tests find it) always, and
//! Socket.IO with the Redis adapter (bench/peers/socketio-server.js) when its packages
//! are installed (`npm ci` in bench/peers, which scripts/bench-peers runs) and node and
//! redis-server are on PATH, skipping with the reason printed otherwise. Every run must
//! account for every event: none missing, none duplicated. No timing is asserted.

mod support;

use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use support::{command, number, report};
use switchboard_testkit::{Process, free_port, fresh_secret, workspace_root};

fn peers_dir() -> PathBuf {
    workspace_root().join("bench/peers")
}

/// nats-server as the other tests find it: `SWITCHBOARD_NATS_SERVER`, then `PATH`, then
/// the project's venv.
fn nats_server() -> PathBuf {
    if let Some(path) = std::env::var_os("SWITCHBOARD_NATS_SERVER") {
        return PathBuf::from(path);
    }
    if Command::new("nats-server")
        .arg("--version")
        .output()
        .is_ok()
    {
        return PathBuf::from("nats-server");
    }
    workspace_root().join(".venv/bin/nats-server")
}

/// Starts `cmd` with its output in `dir/<name>.log`.
fn start(dir: &Path, name: &str, mut cmd: Command) -> Process {
    let log = std::fs::File::create(dir.join(format!("{name}.log"))).expect("a log file");
    cmd.stdin(Stdio::null())
        .stdout(log.try_clone().expect("the log again"))
        .stderr(log);
    Process::spawn(cmd).unwrap_or_else(|e| panic!("start {name}: {e:#}"))
}

/// Waits (up to 30 s) until something accepts connections on `port`.
fn listening(dir: &Path, name: &str, port: u16) {
    let deadline = Instant::now() + Duration::from_secs(30);
    while TcpStream::connect(("127.0.0.1", port)).is_err() {
        let log = std::fs::read_to_string(dir.join(format!("{name}.log"))).unwrap_or_default();
        assert!(
            Instant::now() < deadline,
            "{name} does not listen on {port} after 30 s: {log}"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

fn bench(env: &[(&str, String)], args: &[&str]) -> Output {
    let mut cmd = command(&[], &[&["--json", "bench"], args].concat());
    cmd.envs(env.iter().map(|(k, v)| (*k, v)));
    cmd.output().expect("run switchboard bench")
}

fn refused(output: &Output) -> String {
    assert!(!output.status.success(), "bench ran but should have failed");
    String::from_utf8_lossy(&output.stderr).into_owned()
}

/// The scenarios every peer runs, each accounting for every event; `peer` is the
/// `--peer ...` arguments that say where the peer is.
fn every_scenario_accounts_for_every_event(env: &[(&str, String)], peer: &[&str]) {
    let run = |args: &[&str]| report(&bench(env, &[peer, args].concat()));

    let fanout = run(&[
        "fanout",
        "--subscribers",
        "20",
        "--rate",
        "50",
        "--size",
        "256",
        "--duration",
        "1",
    ]);
    assert_eq!(number(&fanout, "published"), 50.0, "{fanout}");
    assert_eq!(number(&fanout, "deliveries"), 1000.0, "{fanout}");
    assert_eq!(
        (number(&fanout, "missing"), number(&fanout, "duplicated")),
        (0.0, 0.0),
        "{fanout}"
    );
    assert!(number(&fanout["latency_ms"], "max") > 0.0, "{fanout}");
    assert!(number(&fanout, "edge_rss_kib") > 0.0, "{fanout}");
    assert_eq!(fanout["parameters"]["peer"], peer[1], "{fanout}");

    let channels = run(&[
        "channels",
        "--channels",
        "5",
        "--per-channel",
        "3",
        "--rate",
        "50",
        "--duration",
        "1",
    ]);
    assert_eq!(number(&channels, "deliveries"), 150.0, "{channels}");
    assert_eq!(
        (
            number(&channels, "missing"),
            number(&channels, "duplicated")
        ),
        (0.0, 0.0),
        "{channels}"
    );

    let connect = run(&["connect", "--connections", "40", "--subs", "2"]);
    assert!(number(&connect, "connections_per_s") > 0.0, "{connect}");
    // Each connection's set-up time, dial to both subscriptions confirmed.
    let setup = &connect["latency_ms"];
    assert!(number(setup, "p50") > 0.0, "{connect}");
    assert!(number(setup, "p50") <= number(setup, "max"), "{connect}");
    assert!(
        number(&connect, "rss_kib_per_connection") >= 0.0,
        "{connect}"
    );
    println!(
        "{}: fanout {} deliveries, channels {}, connect {:.0}/s (0 missing, 0 duplicated)",
        peer[1],
        number(&fanout, "deliveries"),
        number(&channels, "deliveries"),
        number(&connect, "connections_per_s"),
    );
}

#[test]
fn nats_ws_peer_accounts_for_every_event() {
    let dir = tempfile::tempdir().expect("a temp dir");
    let (port, monitor, ws) = (free_port(), free_port(), free_port());
    let token = fresh_secret()[..32].to_string();
    let mut cmd = Command::new(nats_server());
    cmd.arg("-c")
        .arg(peers_dir().join("nats-ws.conf"))
        .env("NATS_PEER_PORT", port.to_string())
        .env("NATS_PEER_MONITOR_PORT", monitor.to_string())
        .env("NATS_PEER_WS_PORT", ws.to_string())
        .env("NATS_PEER_TOKEN", &token);
    let server = start(dir.path(), "nats-server", cmd);
    listening(dir.path(), "nats-server", ws);
    listening(dir.path(), "nats-server", port);
    let pid = server.pid().expect("nats-server's pid").to_string();
    let url = format!("ws://127.0.0.1:{ws}");
    let env = [
        ("SWITCHBOARD_NATS_URL", format!("nats://127.0.0.1:{port}")),
        ("SWITCHBOARD_BENCH_PEER_TOKEN", token),
        ("SWITCHBOARD_JWT_SECRET", fresh_secret()),
    ];
    let peer = ["--peer", "nats-ws", "--edge-url", &url, "--edge-pid", &pid];
    every_scenario_accounts_for_every_event(&env, &peer);

    let wrong = [env[0].clone(), env[2].clone()];
    let error = refused(&bench(
        &wrong,
        &[&peer[..], &["--peer-token", "not-the-token", "fanout"]].concat(),
    ));
    assert!(
        error.contains("cannot connect to the peer's nats-server"),
        "{error}"
    );
    let error = refused(&bench(&env, &[&peer[..], &["chat"]].concat()));
    assert!(
        error.contains("--peer runs fanout, channels and connect"),
        "{error}"
    );
}

#[test]
fn socketio_peer_accounts_for_every_event() {
    let peers = peers_dir();
    if !peers.join("node_modules").is_dir() {
        println!(
            "skipped: bench/peers/node_modules is missing (scripts/bench-peers installs it with npm ci)"
        );
        return;
    }
    for tool in ["node", "redis-server"] {
        if Command::new(tool).arg("--version").output().is_err() {
            println!("skipped: {tool} is not on PATH (scripts/bench-peers installs it)");
            return;
        }
    }
    let dir = tempfile::tempdir().expect("a temp dir");
    let redis_port = free_port();
    let mut redis = Command::new("redis-server");
    redis
        .args(["--port", &redis_port.to_string(), "--bind", "127.0.0.1"])
        .args(["--save", "", "--appendonly", "no"])
        .arg("--dir")
        .arg(dir.path());
    let _redis = start(dir.path(), "redis", redis);
    listening(dir.path(), "redis", redis_port);
    let secret = fresh_secret();
    // Subscribers on one node, the publisher on another: events cross Redis.
    let node = |name: &str, port: u16| {
        let mut cmd = Command::new("node");
        cmd.arg(peers.join("socketio-server.js"))
            .env("PORT", port.to_string())
            .env("REDIS_URL", format!("redis://127.0.0.1:{redis_port}"))
            .env("JWT_SECRET", &secret);
        let process = start(dir.path(), name, cmd);
        listening(dir.path(), name, port);
        process
    };
    let (sub_port, pub_port) = (free_port(), free_port());
    let subscribers = node("subscribers", sub_port);
    let _publisher = node("publisher", pub_port);
    let pid = subscribers.pid().expect("the node's pid").to_string();
    let url = format!("ws://127.0.0.1:{sub_port}");
    let publish_url = format!("ws://127.0.0.1:{pub_port}");
    let env = [("SWITCHBOARD_JWT_SECRET", secret.clone())];
    let peer = [
        "--peer",
        "socketio",
        "--edge-url",
        &url,
        "--edge-pid",
        &pid,
        "--peer-publish-url",
        &publish_url,
    ];
    every_scenario_accounts_for_every_event(&env, &peer);

    let wrong = [("SWITCHBOARD_JWT_SECRET", fresh_secret())];
    let error = refused(&bench(&wrong, &[&peer[..], &["connect"]].concat()));
    assert!(
        error.contains("the Socket.IO server refused the connection"),
        "{error}"
    );
}
