//! `switchboard bench` as a user runs it: bad input is refused before anything connects,
//! and each scenario, at a small size, runs against a real nats-server and a real
//! `switchboard-edge` and accounts for every event it published.

mod support;

use std::process::Output;

use support::{Bus, Role, command, number, report, start_edge};
use switchboard_testkit::Workers;

/// Made afresh per test process: the edge refuses secrets the repository holds.
static SECRET: std::sync::LazyLock<String> =
    std::sync::LazyLock::new(switchboard_testkit::fresh_secret);

fn bench(nats: &[(String, String)], edge: Option<(&str, u32)>, args: &[&str]) -> Output {
    let mut cmd = command(nats, &[&["--json", "bench"], args].concat());
    cmd.env("SWITCHBOARD_JWT_SECRET", &*SECRET);
    if let Some((addr, pid)) = edge {
        cmd.env("SWITCHBOARD_EDGE_URL", format!("ws://{addr}/v1/ws"))
            .env("SWITCHBOARD_EDGE_PID", pid.to_string());
    }
    cmd.output().expect("run switchboard bench")
}

fn url_only(url: &str) -> Vec<(String, String)> {
    vec![("SWITCHBOARD_NATS_URL".into(), url.into())]
}

fn refused(output: &Output) -> String {
    assert!(
        !output.status.success(),
        "bench ran but should have refused"
    );
    String::from_utf8_lossy(&output.stderr).into_owned()
}

#[test]
fn bad_targets_and_sizes_are_refused_before_anything_connects() {
    // Nothing listens on port 1: a refusal must come from the checks, not a connection.
    let nats = &url_only("nats://127.0.0.1:1");
    let cases: [(&[&str], &str); 8] = [
        (
            &["--edge-url", "ws://203.0.113.7:8080/v1/ws", "resume"],
            "the edge URL ws://203.0.113.7:8080/v1/ws is not a loopback address",
        ),
        (
            &["--edge-url", "wss://edge.example.com/v1/ws", "resume"],
            "is not a loopback address",
        ),
        (
            &["fanout", "--subscribers", "0"],
            "--subscribers must be between 1 and 50000, not 0",
        ),
        (
            &["fanout", "--duration", "3600"],
            "--duration must be between 1 and 600, not 3600",
        ),
        (
            &["connect", "--subs", "500"],
            "--subs must be between 0 and 100, not 500",
        ),
        (&["resume", "--size", "100000"], "--size must be between"),
        (
            &["inbox", "--conversations", "0"],
            "--conversations must be between 1 and 10000, not 0",
        ),
        (
            &["inbox", "--messages", "6000000"],
            "--messages must be between 1 and 5000000, not 6000000",
        ),
    ];
    for (args, expected) in cases {
        let error = refused(&bench(nats, None, args));
        assert!(error.contains(expected), "{args:?}: {error}");
    }
    let error = refused(&bench(&url_only("nats://10.1.2.3:4222"), None, &["resume"]));
    assert!(error.contains("the NATS URL nats://10.1.2.3:4222 is not a loopback address"));
}

#[tokio::test(flavor = "multi_thread")]
async fn every_scenario_accounts_for_every_event_against_a_real_edge() {
    let bus = Bus::start().await;
    let url = bus.admin_env();
    let (edge, addr) = start_edge(&bus.nats, &SECRET);
    let pid = edge.pid().expect("the edge's pid");
    let run = |args: &'static [&'static str]| {
        let url = url.clone();
        let addr = addr.clone();
        tokio::task::spawn_blocking(move || report(&bench(&url, Some((&addr, pid)), args)))
    };

    let fanout = run(&[
        "fanout",
        "--subscribers",
        "20",
        "--rate",
        "50",
        "--size",
        "128",
        "--duration",
        "1",
    ])
    .await
    .unwrap();
    assert_eq!(number(&fanout, "published"), 50.0);
    assert_eq!(number(&fanout, "deliveries"), 1000.0, "{fanout}");
    assert_eq!(
        (number(&fanout, "missing"), number(&fanout, "duplicated")),
        (0.0, 0.0)
    );
    assert!(number(&fanout, "edge_cpu_s") > 0.0, "{fanout}");
    assert!(number(&fanout["latency_ms"], "p99") > 0.0, "{fanout}");

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
    ])
    .await
    .unwrap();
    assert_eq!(number(&channels, "deliveries"), 150.0, "{channels}");
    assert_eq!(number(&channels, "missing"), 0.0);

    let chat = run(&["chat", "--pairs", "4", "--rate", "40", "--duration", "1"])
        .await
        .unwrap();
    assert_eq!(number(&chat, "published"), 40.0, "{chat}");
    assert_eq!(number(&chat, "deliveries"), 40.0, "{chat}");
    assert_eq!(number(&chat, "missing"), 0.0);
    assert!(number(&chat["ack_latency_ms"], "p50") > 0.0, "{chat}");

    let connect = run(&["connect", "--connections", "40", "--subs", "2"])
        .await
        .unwrap();
    assert!(number(&connect, "connections_per_s") > 0.0, "{connect}");
    assert!(number(&connect, "edge_rss_kib") > 0.0, "{connect}");
    // Each connection's set-up time, dial to both subscriptions confirmed.
    let setup = &connect["latency_ms"];
    assert!(number(setup, "p50") > 0.0, "{connect}");
    assert!(number(setup, "p50") <= number(setup, "max"), "{connect}");

    let resume = run(&["resume", "--missed", "300"]).await.unwrap();
    assert_eq!(number(&resume, "deliveries"), 300.0, "{resume}");
    assert_eq!(
        (number(&resume, "missing"), number(&resume, "duplicated")),
        (0.0, 0.0)
    );
    println!(
        "bench scenarios: fanout {} deliveries, channels {}, chat {}, connect {:.0}/s, resume {} (all 0 missing, 0 duplicated)",
        number(&fanout, "deliveries"),
        number(&channels, "deliveries"),
        number(&chat, "deliveries"),
        number(&connect, "connections_per_s"),
        number(&resume, "deliveries"),
    );
}

/// `bench inbox` at a small size against the stack it needs: the edge, and the workers'
/// `archive` and `membership` jobs on PostgreSQL. Every live message must reach the
/// user's device as an `inbox` signal covering it; no timing is asserted.
#[tokio::test(flavor = "multi_thread")]
async fn the_inbox_scenario_accounts_for_every_message() {
    let bus = Bus::start().await;
    let _workers = Workers::new(bus.nats.env(Role::Workers), "archive,membership")
        .start_with_postgres()
        .await;
    let url = bus.admin_env();
    let (edge, addr) = start_edge(&bus.nats, &SECRET);
    let pid = edge.pid().expect("the edge's pid");
    let args = [
        "inbox",
        "--conversations",
        "20",
        "--messages",
        "2000",
        "--requests",
        "20",
        "--rate",
        "50",
        "--duration",
        "2",
    ];
    let inbox =
        tokio::task::spawn_blocking(move || report(&bench(&url, Some((&addr, pid)), &args)))
            .await
            .unwrap();
    assert_eq!(number(&inbox, "archived"), 2020.0, "{inbox}");
    assert_eq!(number(&inbox, "published"), 100.0, "{inbox}");
    assert_eq!(number(&inbox, "deliveries"), 100.0, "{inbox}");
    assert_eq!(number(&inbox, "missing"), 0.0, "{inbox}");
    assert!(number(&inbox, "archive_events_per_s") > 0.0, "{inbox}");
    assert!(number(&inbox["list_latency_ms"], "max") > 0.0, "{inbox}");
    assert!(number(&inbox["search_latency_ms"], "max") > 0.0, "{inbox}");
    // Each query kind (words, a phrase, a word no message has) was asked.
    let queries = inbox["search_by_query_ms"].as_object().expect("per query");
    assert_eq!(queries.len(), 4, "{inbox}");
    println!(
        "bench inbox: {} archived, {} live messages all covered by inbox signals: {inbox}",
        number(&inbox, "archived"),
        number(&inbox, "deliveries"),
    );
}

/// `bench scale` at a small size: 100 connections over two edges from two generator
/// processes. Every connection must get the one broadcast exactly once, and the report
/// must carry every figure of the scenario; no timing is asserted.
#[tokio::test(flavor = "multi_thread")]
async fn the_scale_scenario_reaches_every_connection_over_several_edges_once() {
    let bus = Bus::start().await;
    let url = bus.admin_env();
    let (first, first_addr) = start_edge(&bus.nats, &SECRET);
    let (second, second_addr) = start_edge(&bus.nats, &SECRET);
    let edge_urls = format!("ws://{first_addr}/v1/ws,ws://{second_addr}/v1/ws");
    let edge_pids = format!(
        "{},{}",
        first.pid().expect("the first edge's pid"),
        second.pid().expect("the second edge's pid")
    );
    let nats_pid = bus.nats.pid().expect("nats-server's pid").to_string();
    let scale = tokio::task::spawn_blocking(move || {
        let args = [
            "scale",
            "--connections",
            "100",
            "--per-generator",
            "50",
            "--concurrency",
            "16",
            "--idle",
            "1",
            "--edge-urls",
            &edge_urls,
            "--edge-pids",
            &edge_pids,
            "--stack-pids",
            &nats_pid,
        ];
        report(&bench(&url, None, &args))
    })
    .await
    .unwrap();
    assert_eq!(scale["parameters"]["generators"], 2, "{scale}");
    assert_eq!(scale["parameters"]["edges"], 2, "{scale}");
    assert_eq!(number(&scale, "published"), 1.0, "{scale}");
    assert_eq!(number(&scale, "deliveries"), 100.0, "{scale}");
    assert_eq!(
        (number(&scale, "missing"), number(&scale, "duplicated")),
        (0.0, 0.0),
        "{scale}"
    );
    for field in [
        "setup_s",
        "connections_per_s",
        "rss_kib_per_connection",
        "edge_rss_kib",
        "idle_cpu_cores",
        "generator_idle_cpu_cores",
    ] {
        number(&scale, field);
    }
    for quantile in ["p50", "p99", "p999", "max"] {
        number(&scale["latency_ms"], quantile);
    }
    // The two edges and nats-server, each by name.
    let processes = scale["idle_cpu_by_process"]
        .as_array()
        .expect("per process");
    let mut names: Vec<&str> = processes
        .iter()
        .filter_map(|p| p["name"].as_str())
        .collect();
    names.sort();
    assert_eq!(
        names,
        ["nats-server", "switchboard-edge", "switchboard-edge"],
        "{scale}"
    );
    println!("bench scale: 100 connections over 2 edges, each got the broadcast once: {scale}");
}

#[test]
fn scale_plans_out_of_bounds_are_refused_before_anything_connects() {
    let nats = &url_only("nats://127.0.0.1:1");
    let cases: [(&[&str], &str); 5] = [
        (
            &["scale", "--connections", "100001"],
            "--connections must be between 1 and 100000, not 100001",
        ),
        (
            &[
                "scale",
                "--connections",
                "100000",
                "--per-generator",
                "1000",
            ],
            "--per-generator must be between 3125 and 18000, not 1000",
        ),
        (
            &["scale", "--per-generator", "20000"],
            "--per-generator must be between 313 and 18000, not 20000",
        ),
        (
            &[
                "scale",
                "--edge-urls",
                "ws://127.0.0.1:8080/v1/ws,ws://10.0.0.2:8080/v1/ws",
            ],
            "the edge URL ws://10.0.0.2:8080/v1/ws is not a loopback address",
        ),
        (
            &["scale", "--edge-urls", "wss://127.0.0.1:8443/v1/ws"],
            "bench scale speaks plain ws:// to the edges",
        ),
    ];
    for (args, expected) in cases {
        let error = refused(&bench(nats, None, args));
        assert!(error.contains(expected), "{args:?}: {error}");
    }
}
