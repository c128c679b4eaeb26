//! Every Switchboard process reaches NATS over TLS, trusting only a CA made for the test
//! (by `scripts/nats-certs`, the command operators use), and a client that does not
//! speak TLS is refused.

mod support;

use std::process::Command;
use std::time::{Duration, Instant};

use serde_json::json;
use support::*;
use switchboard_testkit::{Nats, Postgres, Workers, binary};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn edge_workers_and_cli_work_through_tls_to_nats() {
    let nats = tokio::task::block_in_place(Nats::start_tls).expect("start nats-server with TLS");
    assert!(nats.url().starts_with("tls://"));
    let stack = Stack::on(nats).await;

    // Without TLS (and the CA) nothing gets in, even with a valid seed.
    let mut plain = stack.nats.options(Role::Admin);
    plain.url = plain.url.replace("tls://", "nats://");
    plain.tls_ca = None;
    let refused = plain
        .connect_options(Role::Admin, "plain")
        .await
        .unwrap()
        .connection_timeout(Duration::from_secs(2))
        .connect(plain.servers())
        .await;
    assert!(
        refused.is_err(),
        "a plain client got into a TLS-only server"
    );

    // The workers (membership) and the edge, each over TLS as its own role.
    let pg = tokio::task::block_in_place(Postgres::start).expect("start PostgreSQL");
    let database_url = pg.database().await.unwrap();
    let _workers = Workers::new(stack.nats.env(Role::Workers), "membership").start(&database_url);
    let edge = stack.edge(&[]);
    let mut client = edge.connect("u1").await;

    // The CLI, as an operator over TLS, makes u1 a member; the worker mirrors it, the edge
    // lets u1 in, and a second CLI publish arrives on u1's socket.
    let cli = |args: &[&str]| {
        let output = Command::new(binary("switchboard"))
            .args(args)
            .envs(stack.nats.env(Role::Admin))
            .output()
            .expect("run switchboard");
        assert!(
            output.status.success(),
            "switchboard {args:?}: {}",
            String::from_utf8_lossy(&output.stderr)
        );
    };
    cli(&[
        "publish",
        "--channel",
        "project:p1",
        "--type",
        "member.added",
        "--data",
        r#"{"user":"u1","role":"member"}"#,
    ]);
    let reply = client
        .sub_within(
            json!({"ch":"project:p1"}),
            Instant::now(),
            Duration::from_secs(10),
        )
        .await;
    assert_eq!(reply["op"], "ok", "{reply}");
    cli(&[
        "publish",
        "--channel",
        "project:p1",
        "--type",
        "bid.new",
        "--data",
        r#"{"amount":5000}"#,
    ]);
    let events = client.events(1).await;
    assert_eq!(events[0]["event"]["type"], "bid.new", "{events:?}");
    assert!(
        stack.nats.violations().is_empty(),
        "{:?}",
        stack.nats.violations()
    );
    println!("over TLS: the workers mirrored a membership, the edge delivered a CLI publish");
}
