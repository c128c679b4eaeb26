//! Membership end to end: `member.added` / `member.removed` events published by a backend
//! go through the membership worker (a real `switchboard-workers` process) into the
//! `members` bucket, and take effect within a second on two edges.

mod support;

use std::time::{Duration, Instant};

use serde_json::json;
use support::*;
use switchboard_testkit::Workers;

#[tokio::test]
async fn membership_events_take_effect_within_a_second_on_two_edges() {
    let stack = Stack::start().await;
    let _worker = Workers::new(stack.nats.env(Role::Workers), "membership")
        .start_with_postgres()
        .await;
    let edge_a = stack.edge(&[]);
    let edge_b = stack.edge(&[]);
    let mut a = edge_a.connect("u1").await;
    let mut b = edge_b.connect("u1").await;
    assert_eq!(a.sub(json!({"ch":"project:p1"})).await["code"], "forbidden");

    stack
        .publish(
            "project:p1",
            "member.added",
            json!({"user":"u1","role":"contractor"}),
        )
        .await;
    let added = Instant::now();
    for client in [&mut a, &mut b] {
        let reply = client
            .sub_within(json!({"ch":"project:p1"}), added, Duration::from_secs(1))
            .await;
        assert_eq!(reply["op"], "ok", "not a member within 1 s: {reply}");
    }
    println!(
        "member.added effective on two edges after {:?}",
        added.elapsed()
    );

    let removal = stack
        .publish("project:p1", "member.removed", json!({"user":"u1"}))
        .await;
    let removed = Instant::now();
    for client in [&mut a, &mut b] {
        // The removal event itself is delivered first: members see their own removal.
        let frame = tokio::time::timeout(
            Duration::from_secs(1),
            client.recv_where(|f| f["op"] == "unsubbed"),
        )
        .await
        .expect("revoked within 1 s");
        assert_eq!(
            frame,
            json!({"op":"unsubbed","ch":"project:p1","code":"revoked"})
        );
    }
    println!(
        "member.removed (seq {removal}) revoked on two edges after {:?}",
        removed.elapsed()
    );
    assert_eq!(a.sub(json!({"ch":"project:p1"})).await["code"], "forbidden");
}
