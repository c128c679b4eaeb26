//! Client publishing, signals and RPC.

mod support;

use std::time::Duration;

use serde_json::json;
use support::*;

/// Adds members before any edge starts: an edge loads the whole bucket before it is
/// ready, so no test races the KV watch.
async fn participants(stack: &Stack, channel: &str, users: &[&str]) {
    for user in users {
        stack.add_member(channel, user).await;
    }
}

#[tokio::test]
async fn a_message_is_stored_once_per_key_and_echoed_to_the_sender() {
    let stack = Stack::start().await;
    participants(&stack, "conversation:c1", &["u1", "u2"]).await;
    let edge = stack.edge(&[]);
    let mut alice = edge.connect("u1").await;
    let mut bob = edge.connect("u2").await;
    alice.sub(json!({"ch":"conversation:c1"})).await;
    bob.sub(json!({"ch":"conversation:c1"})).await;

    let frame = json!({"op":"pub","ch":"conversation:c1","type":"message.new",
                       "data":{"text":"hello","replyTo":null},"key":"k-123"});
    let first = alice.request(frame.clone()).await;
    assert_eq!(first["op"], "ok", "{first}");
    let seq = first["seq"].as_u64().unwrap();
    let event_id = first["event_id"].as_str().unwrap().to_string();
    assert!(event_id.starts_with("evt_"));
    // A retry with the same key: the same answer, stored once.
    let retry = alice.request(frame).await;
    assert_eq!(retry["seq"], seq);
    assert_eq!(retry["event_id"], event_id.as_str());

    for client in [&mut alice, &mut bob] {
        let event = client.recv_where(|f| f["op"] == "evt").await;
        assert_eq!(event["seq"], seq);
        assert_eq!(event["event"]["id"], event_id.as_str());
        assert_eq!(
            event["event"]["actor"]["id"], "u1",
            "actor comes from the token"
        );
        assert_eq!(event["event"]["data"]["text"], "hello");
        assert!(client.no_more_events().await.is_none(), "delivered once");
    }
    let stream = stack.js.get_stream("EVENTS").await.unwrap();
    assert_eq!(stream.cached_info().state.messages, 1);
}

#[tokio::test]
async fn clients_may_publish_only_messages_where_allowed() {
    let stack = Stack::start().await;
    participants(&stack, "conversation:c1", &["u1"]).await;
    participants(&stack, "project:p1", &["u1"]).await;
    let edge = stack.edge(&[]);
    let mut client = edge.connect("u1").await;
    let cases = [
        ("conversation:c1", "bid.new", "forbidden"),
        ("conversation:c1", "message.receipt", "forbidden"),
        ("project:p1", "message.new", "forbidden"),
        ("conversation:c2", "message.new", "forbidden"),
        ("user:u1", "message.new", "forbidden"),
        ("domain:d1", "message.new", "forbidden"),
    ];
    for (ch, ty, code) in cases {
        let reply = client
            .request(json!({"op":"pub","ch": ch,"type": ty,"data":{"text":"x"}}))
            .await;
        assert_eq!(reply["code"], code, "{ty} on {ch}: {reply}");
    }
    let not_object = client
        .request(json!({"op":"pub","ch":"conversation:c1","type":"message.new","data":"text"}))
        .await;
    assert_eq!(not_object["code"], "bad_request");
}

#[tokio::test]
async fn only_the_sender_edits_and_a_missing_original_is_not_found() {
    let stack = Stack::start().await;
    participants(&stack, "conversation:c1", &["u1", "u2"]).await;
    participants(&stack, "conversation:c2", &["u1"]).await;
    let edge = stack.edge(&[]);
    let mut alice = edge.connect("u1").await;
    let mut bob = edge.connect("u2").await;
    let sent = alice
        .request(
            json!({"op":"pub","ch":"conversation:c1","type":"message.new","data":{"text":"hi"}}),
        )
        .await;
    let seq = sent["seq"].as_u64().unwrap();
    let by_bob = bob
        .request(json!({"op":"pub","ch":"conversation:c1","type":"message.edited","data":{"seq": seq,"text":"hacked"}}))
        .await;
    assert_eq!(by_bob["code"], "forbidden");
    let missing = alice
        .request(json!({"op":"pub","ch":"conversation:c1","type":"message.deleted","data":{"seq": seq + 100}}))
        .await;
    assert_eq!(missing["code"], "not_found");
    let elsewhere = alice
        .request(
            json!({"op":"pub","ch":"conversation:c2","type":"message.deleted","data":{"seq": seq}}),
        )
        .await;
    assert_eq!(
        elsewhere["code"], "not_found",
        "the seq exists, but on another channel"
    );
    let no_seq = alice
        .request(
            json!({"op":"pub","ch":"conversation:c1","type":"message.edited","data":{"text":"x"}}),
        )
        .await;
    assert_eq!(no_seq["code"], "bad_request");
    let edited = alice
        .request(json!({"op":"pub","ch":"conversation:c1","type":"message.edited","data":{"seq": seq,"text":"hello"}}))
        .await;
    assert_eq!(edited["op"], "ok", "{edited}");
}

#[tokio::test]
async fn signals_reach_others_but_not_the_sender_and_are_never_stored() {
    let stack = Stack::start().await;
    participants(&stack, "conversation:c1", &["u1", "u2", "u3"]).await;
    let edge_a = stack.edge(&[]);
    let edge_b = stack.edge(&[]);
    let mut sender = edge_a.connect("u1").await;
    let mut same_edge = edge_a.connect("u2").await;
    let mut other_edge = edge_b.connect("u3").await;
    sender.sub(json!({"ch":"conversation:c1"})).await;
    same_edge.sub(json!({"ch":"conversation:c1"})).await;
    other_edge.sub(json!({"ch":"conversation:c1"})).await;
    sender
        .send(json!({"op":"sig","ch":"conversation:c1","type":"typing","data":{"typing":true}}))
        .await;
    for client in [&mut same_edge, &mut other_edge] {
        let sig = client.recv_where(|f| f["type"] == "typing").await;
        assert_eq!(
            sig,
            json!({"op":"sig","ch":"conversation:c1","from":"u1","type":"typing","data":{"typing":true}})
        );
    }
    assert!(sender.no_more_events().await.is_none(), "not echoed");
    let stream = stack.js.get_stream("EVENTS").await.unwrap();
    assert_eq!(
        stream.cached_info().state.messages,
        0,
        "signals are not stored"
    );

    // Not subscribed is fine; not allowed is not.
    let mut lurker = edge_b.connect("u2").await;
    lurker
        .send(json!({"op":"sig","ch":"conversation:c1","type":"typing","data":{"typing":false}}))
        .await;
    let typing = sender.recv_where(|f| f["type"] == "typing").await;
    assert_eq!(typing["from"], "u2");
    let mut outsider = edge_b.connect("u9").await;
    let refused = outsider
        .request(json!({"op":"sig","ch":"conversation:c1","type":"typing","data":{}}))
        .await;
    assert_eq!(refused["code"], "forbidden");
    let on_domain = outsider
        .request(json!({"op":"sig","ch":"domain:d1","type":"typing","data":{}}))
        .await;
    assert_eq!(on_domain["code"], "forbidden");

    // Backends may signal too, in the same JSON shape.
    stack
        .client
        .publish(
            "sig.conversation.c1",
            r#"{"from":"bot","type":"cursor","data":{"x":1}}"#.into(),
        )
        .await
        .unwrap();
    let from_bot = other_edge.recv_where(|f| f["from"] == "bot").await;
    assert_eq!(from_bot["type"], "cursor");
}

#[tokio::test]
async fn rpc_is_forwarded_with_the_authenticated_user() {
    let stack = Stack::start().await;
    let edge = stack.edge(&[("SWITCHBOARD_RPC_TIMEOUT_MS", "500")]);
    stack
        .serve(
            "svc.test.>",
            "svc.test.echo",
            |subject, user, params| match subject {
                "svc.test.echo" => Some(json!({"result": {"user": user, "params": params}})),
                "svc.test.fail" => {
                    Some(json!({"error": {"code": "not_found", "message": "no such thing"}}))
                }
                _ => None,
            },
        )
        .await;
    let mut client = edge.connect("u1").await;
    let ok = client
        .request(json!({"op":"rpc","method":"test.echo","params":{"limit":20}}))
        .await;
    assert_eq!(ok["op"], "ok");
    assert_eq!(ok["result"], json!({"user":"u1","params":{"limit":20}}));
    let failed = client
        .request(json!({"op":"rpc","method":"test.fail"}))
        .await;
    assert_eq!(failed["code"], "not_found");
    assert_eq!(failed["message"], "no such thing");
    let unknown = client
        .request(json!({"op":"rpc","method":"nobody.home"}))
        .await;
    assert_eq!(unknown["code"], "not_found");
    let silent = client
        .request(json!({"op":"rpc","method":"test.silent"}))
        .await;
    assert_eq!(silent["code"], "unavailable");
}

#[tokio::test]
async fn receipts_are_coalesced_onto_the_commands_stream() {
    let stack = Stack::start().await;
    participants(&stack, "conversation:c1", &["u2"]).await;
    let edge = stack.edge(&[]);
    let mut bob = edge.connect("u2").await;
    for seq in [3, 5, 4] {
        bob.send(json!({"op":"ack","ch":"conversation:c1","seq": seq}))
            .await;
    }
    bob.send(json!({"op":"read","ch":"conversation:c1","seq": 4}))
        .await;
    let refused = bob
        .request(json!({"op":"read","ch":"conversation:c9","seq": 1}))
        .await;
    assert_eq!(refused["code"], "forbidden");
    let stream = stack.js.get_stream("CMDS").await.unwrap();
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    loop {
        let info = stack
            .js
            .get_stream("CMDS")
            .await
            .unwrap()
            .cached_info()
            .clone();
        if info.state.messages > 0 {
            break;
        }
        assert!(std::time::Instant::now() < deadline, "no receipt command");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let stored = stream.get_raw_message(1).await.unwrap();
    assert_eq!(stored.subject.as_str(), "cmd.receipts.c1");
    let command: serde_json::Value = serde_json::from_slice(&stored.payload).unwrap();
    assert_eq!(
        command,
        json!({"conversation":"conversation:c1","user":"u2","delivered":5,"read":4})
    );
    tokio::time::sleep(Duration::from_millis(400)).await;
    let info = stack
        .js
        .get_stream("CMDS")
        .await
        .unwrap()
        .cached_info()
        .clone();
    assert_eq!(
        info.state.messages, 1,
        "four frames coalesced into one command"
    );
}

/// W3C Trace Context from clients and backends reaches NATS (docs/operations.md, section
/// 7): a `pub` frame's `trace` and `POST /v1/publish`'s `traceparent` header are stored
/// with the event; an `rpc` frame's `trace` and `POST /v1/rpc`'s header travel with the
/// request. An invalid one is ignored, not refused.
#[tokio::test]
async fn trace_context_travels_with_publishes_and_rpc() {
    use futures_util::StreamExt;
    const TRACE: &str = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";
    let stack = Stack::start().await;
    participants(&stack, "conversation:t1", &["u1"]).await;
    let edge = stack.edge(&[]);
    let stored_trace = |seq: u64| {
        let js = stack.js.clone();
        async move {
            let stream = js.get_stream("EVENTS").await.unwrap();
            let message = stream.get_raw_message(seq).await.unwrap();
            message
                .headers
                .get("traceparent")
                .map(|v| v.as_str().to_string())
        }
    };

    let mut client = edge.connect("u1").await;
    let traced = client
        .request(
            json!({"op":"pub","ch":"conversation:t1","type":"message.new",
                        "data":{"text":"hi"},"trace": TRACE}),
        )
        .await;
    assert_eq!(
        stored_trace(traced["seq"].as_u64().unwrap())
            .await
            .as_deref(),
        Some(TRACE)
    );
    let untraced = client
        .request(
            json!({"op":"pub","ch":"conversation:t1","type":"message.new",
                        "data":{"text":"hi"},"trace":"garbage"}),
        )
        .await;
    assert_eq!(
        untraced["op"], "ok",
        "an invalid trace is ignored: {untraced}"
    );
    assert_eq!(stored_trace(untraced["seq"].as_u64().unwrap()).await, None);

    let service = format!(
        "Bearer {}",
        token_with(json!({"sub":"billing","role":"service","exp": now() + 600}))
    );
    let body = json!({"channel":"domain:t","type":"project.update","data":{}}).to_string();
    let (status, answer) = http(
        &edge.addr,
        "POST",
        "/v1/publish",
        &[
            ("Authorization", &service),
            ("traceparent", TRACE),
            ("Content-Type", "application/json"),
        ],
        &body,
    )
    .await;
    assert_eq!(status, 200, "{answer}");
    let seq = serde_json::from_str::<serde_json::Value>(&answer).unwrap()["seq"]
        .as_u64()
        .unwrap();
    assert_eq!(stored_trace(seq).await.as_deref(), Some(TRACE));

    // RPC: the service sees the trace context on the request.
    let mut requests = stack.client.subscribe("svc.test.trace").await.unwrap();
    switchboard_testkit::synced(&stack.client).await.unwrap();
    let answering = stack.client.clone();
    let seen = tokio::spawn(async move {
        let mut seen = Vec::new();
        while let Some(request) = requests.next().await {
            seen.push(
                request
                    .headers
                    .as_ref()
                    .and_then(|h| h.get("traceparent"))
                    .map(|v| v.as_str().to_string()),
            );
            if let Some(reply) = request.reply {
                answering
                    .publish(reply, r#"{"result":{}}"#.into())
                    .await
                    .unwrap();
            }
            if seen.len() == 2 {
                return seen;
            }
        }
        seen
    });
    let reply = client
        .request(json!({"op":"rpc","method":"test.trace","trace": TRACE}))
        .await;
    assert_eq!(reply["op"], "ok", "{reply}");
    let user = format!("Bearer {}", token("u1", 600, &[]));
    let (status, _) = http(
        &edge.addr,
        "POST",
        "/v1/rpc/test.trace",
        &[("Authorization", &user), ("traceparent", TRACE)],
        "{}",
    )
    .await;
    assert_eq!(status, 200);
    let seen = tokio::time::timeout(Duration::from_secs(5), seen)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(seen, [Some(TRACE.to_string()), Some(TRACE.to_string())]);
}

/// A client that sends `sub` and then `pub` on one socket, without waiting for the `ok`,
/// receives its own message: the publish waits until the subscription is on the channel
/// (a fresh channel's bridge starts meanwhile, the race this closes).
#[tokio::test]
async fn a_publish_right_after_a_subscribe_reaches_the_same_socket() {
    let stack = Stack::start().await;
    let edge = stack.edge(&[]);
    let mut client = edge.connect("u1").await;
    for round in 0..10 {
        let ch = format!("conversation:race{round}");
        participants(&stack, &ch, &["u1"]).await;
        // Once the edge knows u1 may (a subscription that ends at once: the channel is
        // released, so the next one starts its bridge afresh).
        let allowed = client
            .sub_within(
                json!({"ch": ch}),
                std::time::Instant::now(),
                Duration::from_secs(5),
            )
            .await;
        assert_eq!(allowed["op"], "ok", "{allowed}");
        client.request(json!({"op":"unsub","ch": ch})).await;
        client
            .send(json!({"op":"sub","id": 1000 + round,"ch": ch}))
            .await;
        client
            .send(json!({"op":"pub","id": 2000 + round,"ch": ch,"type":"message.new","data":{"text": round}}))
            .await;
        // The echo may come before or after the `ok`: read until both are in.
        let (mut published, mut own) = (None, None);
        while published.is_none() || own.is_none() {
            let frame = client.recv().await;
            if frame["id"] == 2000 + round {
                published = Some(frame);
            } else if frame["op"] == "evt" && frame["ch"] == ch.as_str() {
                own = Some(frame);
            }
        }
        let (published, own) = (published.unwrap(), own.unwrap());
        assert_eq!(published["op"], "ok", "{published}");
        assert_eq!(own["seq"], published["seq"], "round {round}");
    }
}
