//! The edge under pressure: slow consumers and draining lose nothing.

mod support;

use std::time::Duration;

use serde_json::{Value, json};
use support::*;

/// Publishes `count` events of about `size` bytes on `channel` from a background task.
fn publish_in_background(
    stack: &Stack,
    channel: &'static str,
    count: usize,
    size: usize,
    pause: Duration,
) -> tokio::task::JoinHandle<Vec<u64>> {
    let client = stack.client.clone();
    tokio::spawn(async move {
        let publisher = switchboard_bus::Publisher::new(client);
        let channel = switchboard_schemas::ChannelName::parse(channel).unwrap();
        let pad = "x".repeat(size);
        let mut seqs = Vec::with_capacity(count);
        for i in 0..count {
            let event = switchboard_schemas::Envelope::new(
                switchboard_schemas::EventType::parse("job.status").unwrap(),
                switchboard_schemas::RawJson::encode(&json!({"i": i, "pad": pad})).unwrap(),
            );
            seqs.push(publisher.publish(&channel, &event).await.unwrap().seq);
            if !pause.is_zero() {
                tokio::time::sleep(pause).await;
            }
        }
        seqs
    })
}

fn evt_seqs(frames: &[Value]) -> Vec<u64> {
    frames
        .iter()
        .filter(|f| f["op"] == "evt")
        .map(|f| f["seq"].as_u64().unwrap())
        .collect()
}

#[tokio::test]
async fn a_slow_reader_is_closed_as_a_slow_consumer_and_resumes_without_loss() {
    let stack = Stack::start().await;
    let edge = stack.edge(&[("SWITCHBOARD_SEND_QUEUE", "512")]);
    let mut slow = edge.connect("u1").await;
    let ok = slow.sub(json!({"ch":"domain:flood"})).await;
    let epoch = ok["epoch"].clone();
    // Meanwhile another client on the same edge keeps being served.
    let mut healthy = edge.connect("u2").await;
    healthy.sub(json!({"ch":"domain:calm"})).await;

    // The slow client reads nothing while far more than the socket buffers and the queue
    // hold together is sent to it.
    let publishing = publish_in_background(&stack, "domain:flood", 6000, 4096, Duration::ZERO);
    let calm = publish_in_background(&stack, "domain:calm", 20, 64, Duration::from_millis(20));
    let calm = calm.await.unwrap();
    assert_eq!(evt_seqs(&healthy.events(20).await), calm);
    // The edge gives a socket that reads nothing a few seconds to take its `bye`: start
    // reading as soon as the edge says it closed a slow consumer.
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    loop {
        let (_, metrics) = http(&edge.addr, "GET", "/metrics", &[], "").await;
        if metrics.contains("switchboard_edge_slow_consumer_closes_total 1") {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "no slow consumer close"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }

    let (frames, code) = slow.until_closed().await;
    let bye = frames.iter().find(|f| f["op"] == "bye");
    assert_eq!(
        bye,
        Some(&json!({"op":"bye","code":"slow_consumer","reconnect":true})),
        "expected a slow_consumer bye"
    );
    assert_eq!(code, Some(4409));
    let published = publishing.await.unwrap();
    let mut received = evt_seqs(&frames);
    assert!(
        received.len() < published.len(),
        "the reader was not slow enough to test"
    );
    let last = *received.last().unwrap_or(&0);

    let mut again = edge.connect("u1").await;
    let resumed = again
        .sub(json!({"ch":"domain:flood","since":{"seq": last, "epoch": epoch}}))
        .await;
    assert_eq!(resumed["recovered"], true);
    let missing = published.len() - received.len();
    received.extend(evt_seqs(&again.events(missing).await));
    assert_eq!(received, published, "every event exactly once, in order");
    println!(
        "slow consumer: {} events before the close, {missing} after resume; 0 missing, 0 duplicated",
        published.len() - missing
    );
}

#[tokio::test]
async fn sigterm_drains_clients_to_another_edge_without_loss() {
    let stack = Stack::start().await;
    let edge_a = stack.edge(&[]);
    let edge_b = stack.edge(&[]);
    let mut client = edge_a.connect("u1").await;
    let ok = client.sub(json!({"ch":"domain:drain"})).await;
    let epoch = ok["epoch"].clone();
    let publishing =
        publish_in_background(&stack, "domain:drain", 400, 64, Duration::from_millis(2));
    let mut received = evt_seqs(&client.events(50).await);

    edge_a.process.signal(libc::SIGTERM);
    let (frames, code) = client.until_closed().await;
    received.extend(evt_seqs(&frames));
    assert_eq!(
        frames.last(),
        Some(&json!({"op":"bye","code":"draining","reconnect":true}))
    );
    assert_eq!(code, Some(4410));

    let mut moved = edge_b.connect("u1").await;
    let last = *received.last().unwrap();
    moved
        .sub(json!({"ch":"domain:drain","since":{"seq": last, "epoch": epoch}}))
        .await;
    let published = publishing.await.unwrap();
    let missing = published.len() - received.len();
    received.extend(evt_seqs(&moved.events(missing).await));
    assert_eq!(received, published, "every event exactly once, in order");
    let mut edge_a = edge_a;
    let status = edge_a.process.wait_timeout(Duration::from_secs(10));
    assert!(
        status.is_some_and(|s| s.success()),
        "the drained edge exits cleanly: {status:?}"
    );
    println!(
        "drain: {} events across two edges; 0 missing, 0 duplicated",
        published.len()
    );
}

#[tokio::test]
async fn a_draining_edge_refuses_new_sockets() {
    let stack = Stack::start().await;
    let edge = stack.edge(&[("SWITCHBOARD_DRAIN_GRACE_MS", "3000")]);
    // A connection that ignores the bye keeps the edge draining for the grace period.
    let _lingering = edge.connect("u1").await;
    edge.process.signal(libc::SIGTERM);
    tokio::time::sleep(Duration::from_millis(300)).await;
    match Client::open(&edge.ws_url(), Some(&token("u2", 60, &[]))).await {
        // Either the listener is already closed, or the upgrade is refused.
        Err((status, body)) => assert!(status == 0 || status == 503, "{status} {body}"),
        Ok(_) => panic!("a draining edge accepted a new socket"),
    }
}

/// The send queue is bounded in bytes as well as frames (`SWITCHBOARD_SEND_QUEUE_BYTES`,
/// docs/protocol.md, section 6): with room for far more frames than are sent, a socket
/// that reads nothing is still closed as a slow consumer once its queued events pass the
/// byte bound, and resumes without loss.
#[tokio::test]
async fn the_send_queue_is_bounded_in_bytes_too() {
    let stack = Stack::start().await;
    let edge = stack.edge(&[
        ("SWITCHBOARD_SEND_QUEUE", "100000"),
        ("SWITCHBOARD_SEND_QUEUE_BYTES", "262144"),
    ]);
    let mut slow = edge.connect("u1").await;
    let epoch = slow.sub(json!({"ch":"domain:heavy"})).await["epoch"].clone();
    // 3,000 frames of 8 KiB: a fraction of the frame bound, about 90 times the byte bound.
    let published = publish_in_background(&stack, "domain:heavy", 3000, 8192, Duration::ZERO)
        .await
        .unwrap();
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    while edge.metric("switchboard_edge_slow_consumer_closes_total") != Some(1.0) {
        assert!(
            std::time::Instant::now() < deadline,
            "no slow consumer close"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let (frames, code) = slow.until_closed().await;
    assert_eq!(
        frames.iter().find(|f| f["op"] == "bye"),
        Some(&json!({"op":"bye","code":"slow_consumer","reconnect":true}))
    );
    assert_eq!(code, Some(4409));
    let mut received = evt_seqs(&frames);
    let last = *received.last().unwrap_or(&0);
    let mut again = edge.connect("u1").await;
    let resumed = again
        .sub(json!({"ch":"domain:heavy","since":{"seq": last, "epoch": epoch}}))
        .await;
    assert_eq!(resumed["recovered"], true);
    let missing = published.len() - received.len();
    received.extend(evt_seqs(&again.events(missing).await));
    assert_eq!(received, published, "every event exactly once, in order");
}
