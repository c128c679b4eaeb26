//! `switchboard token` and `switchboard status` against a real nats-server and a real
//! `switchboard-edge`: the edge accepts the minted tokens, and status finds the edge,
//! its connections and the workers' lag.

mod support;

use async_nats::jetstream::consumer;
use futures_util::StreamExt;
use jsonwebtoken::{Algorithm, DecodingKey, Validation};
use serde_json::{Value, json};
use support::{Bus, command, http_status, ok, request, start_edge, switchboard};
use switchboard_schemas::shapes::{Claims, Role};

/// Made afresh per test process: the edge refuses secrets the repository holds.
static SECRET: std::sync::LazyLock<String> =
    std::sync::LazyLock::new(switchboard_testkit::fresh_secret);

fn token(args: &[&str], secret: &str) -> String {
    let output = command(&[], &[&["token"], args].concat())
        .env("SWITCHBOARD_JWT_SECRET", secret)
        .output()
        .unwrap();
    ok(&output).trim_end().to_string()
}

#[test]
fn token_carries_the_claims_asked_for_and_prints_only_the_token() {
    let minted = token(
        &[
            "--sub",
            "u1",
            "--ttl",
            "15m",
            "--channels",
            "project:p1,domain:*",
            "--role",
            "service",
            "--name",
            "Ann",
            "--iss",
            "instabids",
            "--aud",
            "switchboard",
        ],
        &SECRET,
    );
    assert_eq!(minted.lines().count(), 1);
    let mut validation = Validation::new(Algorithm::HS256);
    validation.set_audience(&["switchboard"]);
    validation.set_issuer(&["instabids"]);
    let claims = jsonwebtoken::decode::<Claims>(
        &minted,
        &DecodingKey::from_secret(SECRET.as_bytes()),
        &validation,
    )
    .unwrap()
    .claims;
    assert_eq!(claims.sub, "u1");
    assert_eq!(claims.role, Role::Service);
    assert_eq!(claims.name.as_deref(), Some("Ann"));
    let channels: Vec<String> = claims.channels.iter().map(ToString::to_string).collect();
    assert_eq!(channels, ["project:p1", "domain:*"]);
    let now = time::OffsetDateTime::now_utc().unix_timestamp();
    assert!(
        (claims.exp - (now + 900)).abs() <= 5,
        "exp {} now {now}",
        claims.exp
    );

    for (args, secret, expected) in [
        (&["--sub", "u1"][..], None, "set SWITCHBOARD_JWT_SECRET"),
        (&["--sub", "u1"][..], Some("short"), "at least 32"),
        (
            &["--sub", "a.b"][..],
            Some(SECRET.as_str()),
            "invalid user id",
        ),
        (
            &["--sub", "u1", "--ttl", "soon"][..],
            Some(SECRET.as_str()),
            "invalid duration",
        ),
        (
            &["--sub", "u1", "--channels", "project:a.b"][..],
            Some(SECRET.as_str()),
            "invalid channel pattern",
        ),
    ] {
        let mut cmd = command(&[], &[&["token"], args].concat());
        if let Some(secret) = secret {
            cmd.env("SWITCHBOARD_JWT_SECRET", secret);
        }
        let output = cmd.output().unwrap();
        assert!(!output.status.success(), "{args:?}");
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert!(stderr.contains(expected), "{args:?}: {stderr}");
    }
}

async fn status(bus: &Bus) -> Value {
    let url = bus.admin_env();
    let output = tokio::task::spawn_blocking(move || switchboard(&url, &["status", "--json"]))
        .await
        .unwrap();
    serde_json::from_str(&ok(&output)).unwrap()
}

#[tokio::test]
async fn status_shows_worker_lag_and_connected_edges_with_their_connections() {
    let bus = Bus::start().await;
    let before = status(&bus).await;
    assert_eq!(before["edges"], json!([]));
    assert_eq!(before["workers"], json!([]));

    // A worker job is a durable consumer; three events wait for it, one is delivered
    // and not yet acknowledged: its lag is three either way.
    let events = bus.js.get_stream("EVENTS").await.unwrap();
    let job = events
        .create_consumer(consumer::pull::Config {
            durable_name: Some("notifications".into()),
            ..Default::default()
        })
        .await
        .unwrap();
    for i in 0..3 {
        bus.publish("project:p1", "bid.new", json!({ "i": i }))
            .await;
    }
    let mut batch = job.fetch().max_messages(1).messages().await.unwrap();
    let _unacked = batch.next().await.unwrap().unwrap();

    let (_edge, addr) = start_edge(&bus.nats, &SECRET);
    // The edge accepts a minted token (it refuses one signed with another secret), and
    // the open SSE stream is a connection.
    let good = token(&["--sub", "u1"], &SECRET);
    let bad = token(&["--sub", "u1"], &switchboard_testkit::fresh_secret());
    assert_eq!(
        http_status(&mut request(
            &addr,
            &format!("/v1/sse?ch=user:u1&token={bad}")
        )),
        Some(401)
    );
    let mut sse = request(&addr, &format!("/v1/sse?ch=user:u1&token={good}"));
    assert_eq!(http_status(&mut sse), Some(200));

    let now = status(&bus).await;
    let workers = now["workers"].as_array().unwrap();
    assert_eq!(workers.len(), 1, "{now}");
    assert_eq!(workers[0]["job"], "notifications");
    assert_eq!(workers[0]["stream"], "EVENTS");
    assert_eq!(workers[0]["lag"], 3);
    assert_eq!(workers[0]["ack_pending"], 1);
    let edges = now["edges"].as_array().unwrap();
    assert_eq!(edges.len(), 1, "{now}");
    assert_eq!(edges[0]["addr"], addr);
    assert_eq!(edges[0]["connections"], 1);
    assert_eq!(now["connections"], 1);
    assert!(
        now["streams"]
            .as_array()
            .unwrap()
            .iter()
            .any(|s| s["name"] == "EVENTS")
    );

    let url = bus.admin_env();
    let table = tokio::task::spawn_blocking(move || ok(&switchboard(&url, &["status"])))
        .await
        .unwrap();
    assert!(
        table.contains("WORKER") && table.contains("notifications"),
        "{table}"
    );
    assert!(table.contains("1 edge(s), 1 connection(s)"), "{table}");
    drop(sse);
}
