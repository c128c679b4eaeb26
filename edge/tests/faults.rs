//! Faults on the NATS side: the edge reconnects by itself and no subscribed client misses
//! an event stored while NATS was away or while the edge was reconnecting.

mod support;

use std::time::Duration;

use serde_json::json;
use support::*;

#[tokio::test]
async fn a_nats_restart_loses_no_event_for_subscribed_clients() {
    let mut stack = Stack::start().await;
    let edge = stack.edge(&[]);
    let mut client = edge.connect("u1").await;
    client.sub(json!({"ch":"domain:r"})).await;
    let before = stack
        .publish("domain:r", "project.update", json!({"n": 0}))
        .await;
    assert_eq!(seqs(&client.events(1).await), [before]);

    stack.nats.stop();
    tokio::time::sleep(Duration::from_millis(500)).await;
    stack.nats.start_again().unwrap();
    // A fresh backend connection publishes at once, racing the edge's own reconnect:
    // whichever wins, every event must reach the client exactly once.
    let backend = stack.nats.connect(Role::Service).await.unwrap();
    stack.client = backend;
    let mut published = Vec::new();
    for n in 1..=20 {
        published.push(
            stack
                .publish("domain:r", "project.update", json!({"n": n}))
                .await,
        );
    }
    let received = seqs(&client.events(published.len()).await);
    assert_eq!(received, published);
    assert!(client.no_more_events().await.is_none());
    println!(
        "NATS restart: {} events after the restart, 0 missing, 0 duplicated",
        received.len()
    );

    // The edge still serves new subscriptions and publishes.
    let mut late = edge.connect("u2").await;
    assert_eq!(late.sub(json!({"ch":"domain:r2"})).await["op"], "ok");
}

#[tokio::test]
async fn events_stored_but_never_forwarded_arrive_when_the_stream_gets_a_new_leader() {
    let stack = Stack::start().await;
    let edge = stack.edge(&[]);
    let mut client = edge.connect("u1").await;
    client.sub(json!({"ch":"domain:l"})).await;

    // A leader that stores events and dies before republishing them looks, from the
    // edge, like a stream that republishes nothing for a while, then a new leader.
    let config = stack.stop_republishing().await;
    let mut stored = Vec::new();
    for n in 0..3 {
        stored.push(
            stack
                .publish("domain:l", "project.update", json!({"n": n}))
                .await,
        );
    }
    assert!(client.no_more_events().await.is_none());
    stack.republish_again(&config).await;

    // No further event on the channel: only the election tells the edge to look.
    stack
        .client
        .publish(
            "$JS.EVENT.ADVISORY.STREAM.LEADER_ELECTED.EVENTS",
            r#"{"type":"io.nats.jetstream.advisory.v1.stream_leader_elected","stream":"EVENTS"}"#
                .into(),
        )
        .await
        .unwrap();
    let received = seqs(&client.events(stored.len()).await);
    assert_eq!(received, stored);
    assert!(client.no_more_events().await.is_none());
    println!(
        "new stream leader: {} events stored but never forwarded live, {} received after the \
         election, 0 missing, 0 duplicated",
        stored.len(),
        received.len()
    );
}

#[tokio::test]
async fn an_edge_stopped_while_nats_is_down_still_exits() {
    let mut stack = Stack::start().await;
    let mut edge = stack.edge(&[]);
    let mut clients = Vec::new();
    for n in 0..3 {
        let mut client = edge.connect(&format!("u{n}")).await;
        client.sub(json!({"ch":"domain:d"})).await;
        clients.push(client);
    }
    stack.nats.stop();
    tokio::time::sleep(Duration::from_millis(300)).await;
    let asked = std::time::Instant::now();
    edge.process.signal(libc::SIGTERM);
    // Drain grace is 2 s in tests: sessions, then presence deletes, each bounded by it.
    let status = edge.process.wait_timeout(Duration::from_secs(15));
    assert!(
        status.is_some(),
        "the edge did not exit within 15 s of SIGTERM while NATS was down"
    );
    println!(
        "SIGTERM during a NATS outage: 3 clients, the edge exited in {:.1} s",
        asked.elapsed().as_secs_f64()
    );
}

/// User channels are fed by one edge-wide subscription pair (docs/operations.md, "Sizing"):
/// each user still gets exactly their own events, in order, across a NATS restart.
#[tokio::test]
async fn user_channels_routed_edge_wide_lose_nothing_and_mix_nothing() {
    let mut stack = Stack::start().await;
    let edge = stack.edge(&[]);
    let mut u1 = edge.connect("u1").await;
    u1.sub(json!({"ch":"user:u1"})).await;
    let mut u2 = edge.connect("u2").await;
    u2.sub(json!({"ch":"user:u2"})).await;
    let mut published = Vec::new();
    for n in 0..3 {
        published.push(
            stack
                .publish("user:u1", "user.notification", json!({"n": n}))
                .await,
        );
    }
    let to_u2 = stack
        .publish("user:u2", "user.notification", json!({"n": "u2"}))
        .await;
    assert_eq!(seqs(&u1.events(3).await), published);
    assert_eq!(seqs(&u2.events(1).await), [to_u2]);

    stack.nats.stop();
    tokio::time::sleep(Duration::from_millis(500)).await;
    stack.nats.start_again().unwrap();
    stack.client = stack.nats.connect(Role::Service).await.unwrap();
    let mut after = Vec::new();
    for n in 3..13 {
        after.push(
            stack
                .publish("user:u1", "user.notification", json!({"n": n}))
                .await,
        );
    }
    assert_eq!(seqs(&u1.events(after.len()).await), after);
    assert!(u1.no_more_events().await.is_none());
    assert!(u2.no_more_events().await.is_none(), "u2 got u1's events");
}
