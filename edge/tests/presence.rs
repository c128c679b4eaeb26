//! Presence as the edge keeps it: connection entries in KV `presence`, channel occupancy,
//! `who` across edges, join/leave signals, typing throttle and typing-stopped on close,
//! and the privacy check on `presence:<user>` subscriptions.

mod support;

use std::time::{Duration, Instant};

use futures_util::StreamExt;
use serde_json::{Value, json};
use support::*;
use switchboard_bus::store::Store;

/// The live entries of KV `presence` for `user`.
async fn presence_entries(stack: &Stack, user: &str) -> Vec<Value> {
    Store::new(stack.client.clone())
        .scan_bucket("presence", &format!("{user}.>"))
        .await
        .unwrap()
        .into_iter()
        .map(|(_, value)| serde_json::from_slice(&value).unwrap())
        .collect()
}

async fn eventually<F: std::future::Future<Output = bool>>(
    what: &str,
    mut check: impl FnMut() -> F,
) {
    let deadline = Instant::now() + Duration::from_secs(10);
    while !check().await {
        assert!(Instant::now() < deadline, "{what}: not within 10 s");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test]
async fn each_connection_has_a_presence_entry_until_it_closes() {
    let stack = Stack::start().await;
    let edge = stack.edge(&[]);
    let phone = edge.connect("u1").await;
    let mut laptop = Client::open(
        &format!("{}?device=laptop", edge.ws_url()),
        Some(&token("u1", 600, &[])),
    )
    .await
    .unwrap();
    laptop.recv().await;
    eventually("two entries", || async {
        presence_entries(&stack, "u1").await.len() == 2
    })
    .await;
    let reply = laptop
        .request(json!({"op":"presence","status":"busy","text":"On site"}))
        .await;
    assert_eq!(reply["op"], "ok");
    eventually("the new status", || async {
        presence_entries(&stack, "u1")
            .await
            .iter()
            .any(|e| e["status"] == "busy")
    })
    .await;
    let entries = presence_entries(&stack, "u1").await;
    let laptop_entry = entries.iter().find(|e| e["device"] == "laptop").unwrap();
    assert_eq!(laptop_entry["status"], "busy");
    assert_eq!(laptop_entry["text"], "On site");
    assert_eq!(laptop_entry["user"], "u1");
    let bad = laptop
        .request(json!({"op":"presence","status":"sleeping"}))
        .await;
    assert_eq!(bad["code"], "bad_request");
    drop(phone);
    eventually("one entry after a close", || async {
        presence_entries(&stack, "u1").await.len() == 1
    })
    .await;
}

/// Entries are written when they change and never while idle; the edge's liveness is
/// one heartbeat entry in `edges` with a TTL, which expires when the edge is killed (the
/// workers then end its entries: presence_e2e.rs).
#[tokio::test]
async fn idle_connections_cost_no_writes_and_a_killed_edge_stops_its_heartbeat() {
    let stack = Stack::start().await;
    const ID: &str = "edge-idle";
    let mut edge = stack.edge(&[
        ("SWITCHBOARD_HEARTBEAT_MS", "500"),
        ("SWITCHBOARD_EDGE_ID", ID),
    ]);
    let edges = stack.js.get_key_value("edges").await.unwrap();
    let heartbeat = edges.entry(ID).await.unwrap().expect("a heartbeat");
    let beat: Value = serde_json::from_slice(&heartbeat.value).unwrap();
    assert_eq!(beat["edge"], ID);
    assert_eq!(beat["heartbeatMs"], 500);
    assert!(beat["started"].as_i64().unwrap() > 0, "{beat}");

    let mut client = edge.connect("u1").await;
    client.sub(json!({"ch":"project:p1"})).await;
    eventually("an entry", || async {
        presence_entries(&stack, "u1").await.len() == 1
    })
    .await;
    let writes = |name: &'static str| {
        let js = stack.js.clone();
        async move {
            let mut stream = js.get_stream(name).await.unwrap();
            let info = stream.info().await.unwrap();
            info.state.last_sequence
        }
    };
    let before = (writes("KV_presence").await, writes("KV_occupancy").await);
    let beats_before = writes("KV_edges").await;
    // Four heartbeats of an idle connection.
    tokio::time::sleep(Duration::from_millis(2_000)).await;
    assert_eq!(
        (writes("KV_presence").await, writes("KV_occupancy").await),
        before,
        "an idle connection's entries are not rewritten"
    );
    assert!(
        writes("KV_edges").await >= beats_before + 2,
        "the edge beats"
    );

    let mut watch = edges.watch(ID).await.unwrap();
    edge.process.kill();
    let killed = Instant::now();
    let marker = tokio::time::timeout(Duration::from_secs(10), watch.next())
        .await
        .expect("an expiry marker")
        .unwrap()
        .unwrap();
    assert_ne!(marker.operation, async_nats::jetstream::kv::Operation::Put);
    // The TTL is two heartbeats (1 s); bounded loosely, as CI runs beside other tests.
    assert!(
        killed.elapsed() < Duration::from_secs(10),
        "{:?}",
        killed.elapsed()
    );
}

#[tokio::test]
async fn who_lists_subscribers_across_edges_and_join_leave_signals_flow() {
    let stack = Stack::start().await;
    // Privacy is another test's subject: here everybody may see everybody.
    stack
        .serve("int.presence.visible", "int.presence.visible", |_, _, params| {
            Some(json!({"result": {"visible": params["users"].as_array().cloned().unwrap_or_default()}}))
        })
        .await;
    for user in ["u1", "u2", "u3"] {
        stack.add_member("project:p1", user).await;
    }
    let edge_a = stack.edge(&[]);
    let edge_b = stack.edge(&[]);
    let mut alice = edge_a.connect("u1").await;
    alice.sub(json!({"ch":"project:p1"})).await;
    let mut bob = edge_b.connect("u2").await;
    bob.request(json!({"op":"presence","status":"busy"})).await;
    bob.sub(json!({"ch":"project:p1"})).await;
    let join = alice.recv_where(|f| f["op"] == "sig").await;
    assert_eq!(
        join,
        json!({"op":"sig","ch":"project:p1","from":"u2","type":"join","data":{}})
    );
    // An invisible user is subscribed but neither announced nor listed.
    let mut carol = edge_b.connect("u3").await;
    carol
        .request(json!({"op":"presence","status":"invisible"}))
        .await;
    carol.sub(json!({"ch":"project:p1"})).await;
    let who = alice.request(json!({"op":"who","ch":"project:p1"})).await;
    assert_eq!(
        who["members"],
        json!([{"user":"u1","status":"online"},{"user":"u2","status":"busy"}])
    );
    bob.request(json!({"op":"unsub","ch":"project:p1"})).await;
    let leave = alice.recv_where(|f| f["op"] == "sig").await;
    assert_eq!(leave["type"], "leave");
    assert_eq!(leave["from"], "u2");
    let who = alice.request(json!({"op":"who","ch":"project:p1"})).await;
    assert_eq!(who["members"], json!([{"user":"u1","status":"online"}]));
    assert!(
        alice.try_recv(Duration::from_millis(300)).await.is_none(),
        "no signal for the invisible user"
    );
    // `who` needs the right to subscribe, and a namespace with presence.
    let mut outsider = edge_a.connect("u9").await;
    assert_eq!(
        outsider
            .request(json!({"op":"who","ch":"project:p1"}))
            .await["code"],
        "forbidden"
    );
    assert_eq!(
        outsider.request(json!({"op":"who","ch":"domain:d"})).await["code"],
        "bad_request"
    );
}

#[tokio::test]
async fn typing_is_throttled_and_stops_when_the_typist_drops() {
    let stack = Stack::start().await;
    for user in ["u1", "u2"] {
        stack.add_member("conversation:c1", user).await;
    }
    let edge = stack.edge(&[]);
    let mut typist = edge.connect("u1").await;
    let mut reader = edge.connect("u2").await;
    reader.sub(json!({"ch":"conversation:c1"})).await;
    typist.sub(json!({"ch":"conversation:c1"})).await;
    reader.recv_where(|f| f["type"] == "join").await;
    for _ in 0..40 {
        typist
            .send(json!({"op":"sig","ch":"conversation:c1","type":"typing","data":{"typing":true}}))
            .await;
    }
    let mut typing = 0;
    while let Some(frame) = reader.try_recv(Duration::from_millis(400)).await {
        typing += usize::from(frame["type"] == "typing");
    }
    assert!(
        (1..=3).contains(&typing),
        "40 typing frames became {typing} signals"
    );
    drop(typist);
    let stopped = reader.recv_where(|f| f["type"] == "typing").await;
    assert_eq!(stopped["data"], json!({"typing": false}));
    assert_eq!(stopped["from"], "u1");
}

#[tokio::test]
async fn watching_someone_elses_presence_asks_the_presence_service() {
    let stack = Stack::start().await;
    let edge = stack.edge(&[("SWITCHBOARD_RPC_TIMEOUT_MS", "500")]);
    stack
        .serve(
            "int.presence.authorize",
            "int.presence.authorize",
            |_, _, params| Some(json!({"result": {"allowed": params["target"] == "public-user"}})),
        )
        .await;
    let mut client = edge.connect("u1").await;
    assert_eq!(
        client.sub(json!({"ch":"presence:public-user"})).await["op"],
        "ok"
    );
    assert_eq!(
        client.sub(json!({"ch":"presence:private-user"})).await["code"],
        "forbidden"
    );
    assert_eq!(
        client.sub(json!({"ch":"presence:u1"})).await["op"],
        "ok",
        "oneself, without asking"
    );
    let mut granted = edge
        .connect_with(&token("u2", 600, &["presence:private-user"]))
        .await;
    assert_eq!(
        granted.sub(json!({"ch":"presence:private-user"})).await["op"],
        "ok",
        "a token grant"
    );
}

/// A connection may declare its first status (docs/protocol.md, section 9): in `hello`
/// or with `?presence=` on the upgrade. Declared `invisible`, every write of its entry in
/// the `presence` bucket says so, from the very first: nobody ever sees it online.
#[tokio::test]
async fn a_connection_declared_invisible_is_never_written_online() {
    let stack = Stack::start().await;
    let edge = stack.edge(&[]);
    let kv = stack.js.get_key_value("presence").await.unwrap();
    let mut writes = kv.watch("shy.>").await.unwrap();

    // On the upgrade's query...
    let url = format!("{}?presence=invisible", edge.ws_url());
    let mut upgraded = Client::open(&url, Some(&token("shy", 600, &[])))
        .await
        .unwrap();
    assert_eq!(upgraded.recv().await["op"], "welcome");
    upgraded.sub(json!({"ch":"project:p1"})).await;
    // ... and in `hello`, with a text.
    let mut greeted = Client::open(&edge.ws_url(), None).await.unwrap();
    greeted
        .send(json!({"op":"hello","token": token("shy", 600, &[]),
                     "presence":{"status":"invisible","text":"lurking"}}))
        .await;
    assert_eq!(greeted.recv().await["op"], "welcome");
    // A later change is written as asked.
    let ok = greeted
        .request(json!({"op":"presence","status":"away"}))
        .await;
    assert_eq!(ok["op"], "ok");

    // The bucket keeps one value per key, so a value overwritten at once may never reach
    // a watcher; what does reach it must never say online. Read until both connections
    // were seen and the second's change arrived.
    let mut statuses = Vec::new();
    let mut conns = std::collections::HashSet::new();
    while !(conns.len() == 2 && statuses.last().is_some_and(|s| s == "away")) {
        let entry = tokio::time::timeout(Duration::from_secs(15), writes.next())
            .await
            .unwrap_or_else(|_| panic!("a presence write after {statuses:?}"))
            .unwrap()
            .unwrap();
        let value: Value = serde_json::from_slice(&entry.value).unwrap();
        conns.insert(entry.key.clone());
        statuses.push(value["status"].as_str().unwrap().to_string());
    }
    let (changed, first) = statuses.split_last().unwrap();
    assert_eq!(changed, "away");
    assert!(first.iter().all(|s| s == "invisible"), "{statuses:?}");

    // What is not a status is refused, on the upgrade and in `hello`.
    let url = format!("{}?presence=sleeping", edge.ws_url());
    let refused = Client::open(&url, Some(&token("shy", 600, &[]))).await;
    assert!(matches!(refused, Err((400, _))), "{:?}", refused.err());
    let mut bad = Client::open(&edge.ws_url(), None).await.unwrap();
    bad.send(json!({"op":"hello","token": token("shy", 600, &[]),
                    "presence":{"status":"invisible","text":"x".repeat(300)}}))
        .await;
    assert_eq!(bad.recv().await["code"], "bad_request");
}
