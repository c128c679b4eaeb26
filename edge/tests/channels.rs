//! Channels: authorization, fan-out, type filters, aliases, resume, history.

mod support;

use std::collections::BTreeMap;
use std::time::Duration;

use serde_json::json;
use support::*;

/// Every stored seq on a channel's subject, from the stream itself.
async fn stored_seqs(stack: &Stack, channel: &str) -> Vec<u64> {
    let store = switchboard_bus::store::Store::new(stack.client.clone());
    let subject = switchboard_schemas::ChannelName::parse(channel)
        .unwrap()
        .subject(switchboard_schemas::SubjectKind::Durable);
    let mut seqs = Vec::new();
    let mut from = 1;
    loop {
        let batch = store.forward(&subject, from, 1000).await.unwrap();
        if batch.is_empty() {
            return seqs;
        }
        from = batch.last().unwrap().seq + 1;
        seqs.extend(batch.iter().map(|e| e.seq));
    }
}

#[tokio::test]
async fn many_clients_on_many_channels_get_exactly_their_events_in_order() {
    let stack = Stack::start().await;
    let edge = stack.edge(&[]);
    let mut clients = Vec::new();
    for u in 0..20 {
        let user = format!("u{u}");
        let channel = format!("project:p{}", u % 5);
        stack.add_member(&channel, &user).await;
        let mut client = edge.connect(&user).await;
        // Every other client only wants bids.
        let filtered = u % 2 == 1;
        let frame = if filtered {
            json!({"ch": channel, "types": ["bid.*"]})
        } else {
            json!({"ch": channel})
        };
        let ok = client.sub_member(frame).await;
        assert_eq!(ok["op"], "ok", "{ok}");
        clients.push((client, channel, filtered));
    }
    let types = ["bid.new", "bid.update", "project.update", "bid"];
    let mut published: BTreeMap<String, Vec<(u64, &str)>> = BTreeMap::new();
    for i in 0..100 {
        let channel = format!("project:p{}", i % 5);
        let ty = types[i % types.len()];
        let seq = stack.publish(&channel, ty, json!({"i": i})).await;
        published.entry(channel).or_default().push((seq, ty));
    }
    for (client, channel, filtered) in &mut clients {
        let expected: Vec<u64> = published[channel.as_str()]
            .iter()
            .filter(|(_, ty)| !*filtered || ty.starts_with("bid."))
            .map(|(seq, _)| *seq)
            .collect();
        let events = client.events(expected.len()).await;
        assert_eq!(seqs(&events), expected, "{channel} filtered={filtered}");
        assert!(events.iter().all(|e| e["ch"] == json!(channel)));
        // Nothing more arrives.
        let extra = client.no_more_events().await;
        assert!(extra.is_none(), "unexpected frame {extra:?}");
    }
}

#[tokio::test]
async fn resume_after_missing_1000_events_on_the_same_and_another_edge() {
    let stack = Stack::start().await;
    let edge_a = stack.edge(&[]);
    let edge_b = stack.edge(&[]);
    stack.add_member("project:p1", "u1").await;
    let mut first = edge_a.connect("u1").await;
    let ok = first.sub_member(json!({"ch":"project:p1"})).await;
    let epoch = ok["epoch"].as_str().unwrap().to_string();

    // A publisher that keeps going throughout.
    let publisher = {
        let client = stack.client.clone();
        tokio::spawn(async move {
            let publisher = switchboard_bus::Publisher::new(client);
            let channel = switchboard_schemas::ChannelName::parse("project:p1").unwrap();
            for i in 0..2500 {
                let event = switchboard_schemas::Envelope::new(
                    switchboard_schemas::EventType::parse("bid.new").unwrap(),
                    switchboard_schemas::RawJson::encode(&json!({"i": i})).unwrap(),
                );
                publisher.publish(&channel, &event).await.unwrap();
            }
        })
    };
    let seen = first.events(20).await;
    let last_seen = *seqs(&seen).last().unwrap();
    drop(first);
    // Wait until at least 1,000 events were missed.
    loop {
        let stored = stored_seqs(&stack, "project:p1").await;
        if stored.iter().filter(|s| **s > last_seen).count() >= 1000 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let mut on_a = edge_a.connect("u1").await;
    let mut on_b = edge_b.connect("u1").await;
    for client in [&mut on_a, &mut on_b] {
        let ok = client
            .sub(json!({"ch":"project:p1","since":{"seq": last_seen, "epoch": epoch}}))
            .await;
        assert_eq!(ok["recovered"], true, "{ok}");
    }
    publisher.await.unwrap();
    let stored = stored_seqs(&stack, "project:p1").await;
    let expected: Vec<u64> = stored.into_iter().filter(|s| *s > last_seen).collect();
    assert!(expected.len() >= 1000);
    for (name, client) in [("same edge", &mut on_a), ("other edge", &mut on_b)] {
        let events = client.events(expected.len()).await;
        let got = seqs(&events);
        assert_eq!(got.len(), expected.len(), "{name}");
        assert!(got == expected, "{name}: gap or duplicate");
        println!(
            "{name}: {} missed events replayed, then live; 0 missing, 0 duplicated",
            got.len()
        );
        assert!(client.no_more_events().await.is_none());
    }
}

#[tokio::test]
async fn since_last_time_and_other_epochs() {
    let stack = Stack::start().await;
    let edge = stack.edge(&[]);
    let mut client = edge.connect("u1").await;
    let empty = client.sub(json!({"ch":"domain:d1"})).await;
    assert_eq!(empty["seq"], 0, "ok.seq is 0 on an empty channel");
    assert!(empty["epoch"].is_string());
    client.request(json!({"op":"unsub","ch":"domain:d1"})).await;

    let mut seqs_stored = Vec::new();
    for i in 0..10 {
        seqs_stored.push(
            stack
                .publish("domain:d1", "project.update", json!({"i": i}))
                .await,
        );
    }
    let last3 = client
        .sub(json!({"ch":"domain:d1","since":{"last":3}}))
        .await;
    assert_eq!(last3["seq"], seqs_stored[9]);
    assert_eq!(seqs(&client.events(3).await), seqs_stored[7..]);
    client.request(json!({"op":"unsub","ch":"domain:d1"})).await;

    // Time is inclusive: from the store time of the 6th event.
    let store = switchboard_bus::store::Store::new(stack.client.clone());
    let sixth = store.get(seqs_stored[5]).await.unwrap().unwrap();
    client
        .sub(json!({"ch":"domain:d1","since":{"time": sixth.time}}))
        .await;
    assert_eq!(seqs(&client.events(5).await), seqs_stored[5..]);
    client.request(json!({"op":"unsub","ch":"domain:d1"})).await;

    // Another epoch cannot be resumed: it says so and goes live.
    let other = client
        .sub(json!({"ch":"domain:d1","since":{"seq": 2, "epoch": "12345"}}))
        .await;
    assert_eq!(other["recovered"], false);
    assert!(client.no_more_events().await.is_none());
    let live = stack
        .publish("domain:d1", "project.update", json!({}))
        .await;
    assert_eq!(seqs(&client.events(1).await), [live]);
}

#[tokio::test]
async fn forbidden_and_allowed_subscriptions() {
    let stack = Stack::start().await;
    let edge = stack.edge(&[]);
    let mut client = edge.connect_with(&token("u1", 600, &["job:j9"])).await;
    for ch in [
        "project:p1",
        "user:u2",
        "user:u2:notifications",
        "conversation:c1",
    ] {
        let reply = client.sub(json!({"ch": ch})).await;
        assert_eq!(reply["code"], "forbidden", "{ch}: {reply}");
    }
    for ch in [
        "user:u1",
        "user:u1:notifications",
        "user:u1:messages",
        "domain:anything",
        "job:j9",
        "presence:u1",
    ] {
        let reply = client.sub(json!({"ch": ch})).await;
        assert_eq!(reply["op"], "ok", "{ch}: {reply}");
        assert_eq!(reply["ch"], ch);
    }
    stack.add_member("project:p1", "u1").await;
    assert_eq!(
        client.sub_member(json!({"ch":"project:p1"})).await["op"],
        "ok"
    );
}

#[tokio::test]
async fn invalid_channels_are_bad_requests_and_never_reach_a_subject() {
    let stack = Stack::start().await;
    let mut spy = stack.client.subscribe(">").await.unwrap();
    switchboard_testkit::synced(&stack.client).await.unwrap();
    // Every attempt is a bad frame; this test is not about the abuse limit.
    let edge = stack.edge(&[
        ("SWITCHBOARD_MAX_BAD_FRAMES", "1000"),
        ("SWITCHBOARD_FRAME_BURST", "1000"),
    ]);
    let mut client = edge.connect("u1").await;
    let attempts = [
        "project:p1.>",
        "project:*",
        "project:>",
        "project:p1 x",
        "project:",
        "project",
        ":p1",
        "nope:p1",
        "user:u1:foo",
        "project:p1:notifications",
        "user:u1.x:messages",
        "domain:\u{e9}t\u{e9}",
        "domain:a\nb",
        "rt.project.p1",
    ];
    for ch in attempts {
        for op in ["sub", "history", "sig", "pub"] {
            let frame = json!({"op": op, "ch": ch, "type": "message.new", "data": {}});
            let reply = client.request(frame).await;
            assert_eq!(reply["code"], "bad_request", "{op} {ch:?}: {reply}");
        }
    }
    let too_long = format!("domain:{}", "a".repeat(129));
    assert_eq!(
        client.sub(json!({"ch": too_long})).await["code"],
        "bad_request"
    );
    // Whatever the edge put on NATS meanwhile uses only well-formed subjects.
    while let Ok(Some(message)) = tokio::time::timeout(
        Duration::from_millis(200),
        futures_util::StreamExt::next(&mut spy),
    )
    .await
    {
        let subject = message.subject.to_string();
        // Replies go to random inbox names, which may hold anything, "p1." included.
        if subject.starts_with("_INBOX") {
            continue;
        }
        for token in subject.split('.') {
            assert!(
                !token.is_empty() && !token.contains(['*', '>', ' ']),
                "{subject}"
            );
        }
        assert!(
            !subject.contains("p1.") && !subject.contains('\u{e9}'),
            "{subject}"
        );
    }
    println!(
        "channel injection: {} invalid names x 4 ops (sub, history, sig, pub) and a 129-character \
         id refused bad_request; NATS saw well-formed subjects only",
        attempts.len()
    );
}

#[tokio::test]
async fn aliases_filter_by_type_and_keep_their_spelling() {
    let stack = Stack::start().await;
    let edge = stack.edge(&[]);
    let mut client = edge.connect("u1").await;
    client.sub(json!({"ch":"user:u1:notifications"})).await;
    client.sub(json!({"ch":"user:u1:messages"})).await;
    client
        .sub(json!({"ch":"user:u1","types":["payment.*"]}))
        .await;
    let n = stack
        .publish("user:u1", "user.notification", json!({"id":"ntf_1"}))
        .await;
    let r = stack
        .publish("user:u1", "notification.read", json!({"ids":[]}))
        .await;
    let m = stack
        .publish("user:u1", "message.new", json!({"text":"hi"}))
        .await;
    let p = stack.publish("user:u1", "payment.status", json!({})).await;
    let events = client.events(4).await;
    let got: Vec<(u64, String)> = events
        .iter()
        .map(|e| {
            (
                e["seq"].as_u64().unwrap(),
                e["ch"].as_str().unwrap().to_string(),
            )
        })
        .collect();
    assert_eq!(
        got,
        [
            (n, "user:u1:notifications".to_string()),
            (r, "user:u1:notifications".to_string()),
            (m, "user:u1:messages".to_string()),
            (p, "user:u1".to_string()),
        ]
    );
    assert!(client.no_more_events().await.is_none());
}

#[tokio::test]
async fn exact_prefix_and_star_filters() {
    let stack = Stack::start().await;
    let edge = stack.edge(&[]);
    let mut exact = edge.connect("u1").await;
    let mut prefix = edge.connect("u2").await;
    let mut star = edge.connect("u3").await;
    exact
        .sub(json!({"ch":"domain:f","types":["bid.new"]}))
        .await;
    prefix.sub(json!({"ch":"domain:f","types":["bid.*"]})).await;
    star.sub(json!({"ch":"domain:f","types":["*"]})).await;
    let mut seq = BTreeMap::new();
    for ty in ["bid", "bid.new", "bid.x.y", "bidding.new", "job.status"] {
        seq.insert(ty, stack.publish("domain:f", ty, json!({})).await);
    }
    assert_eq!(seqs(&exact.events(1).await), [seq["bid.new"]]);
    assert_eq!(
        seqs(&prefix.events(2).await),
        [seq["bid.new"], seq["bid.x.y"]]
    );
    assert_eq!(star.events(5).await.len(), 5);
    for client in [&mut exact, &mut prefix, &mut star] {
        assert!(client.no_more_events().await.is_none());
    }
}

#[tokio::test]
async fn every_connection_gets_system_broadcast() {
    let stack = Stack::start().await;
    let edge = stack.edge(&[]);
    let mut a = edge.connect("u1").await;
    let mut b = edge.connect("u2").await;
    tokio::time::sleep(Duration::from_millis(200)).await;
    let seq = stack
        .publish(
            "system:broadcast",
            "system.broadcast",
            json!({"text":"maintenance at 22:00"}),
        )
        .await;
    for client in [&mut a, &mut b] {
        let event = client.events(1).await.remove(0);
        assert_eq!(event["ch"], "system:broadcast");
        assert_eq!(event["seq"], seq);
        assert_eq!(event["event"]["data"]["text"], "maintenance at 22:00");
    }
}

#[tokio::test]
async fn membership_changes_take_effect_within_a_second_on_two_edges() {
    let stack = Stack::start().await;
    let edge_a = stack.edge(&[]);
    let edge_b = stack.edge(&[]);
    let mut a = edge_a.connect("u1").await;
    let mut b = edge_b.connect("u1").await;
    assert_eq!(a.sub(json!({"ch":"project:p1"})).await["code"], "forbidden");
    stack.add_member("project:p1", "u1").await;
    let started = std::time::Instant::now();
    for client in [&mut a, &mut b] {
        let reply = client
            .sub_within(json!({"ch":"project:p1"}), started, Duration::from_secs(1))
            .await;
        assert_eq!(reply["op"], "ok", "not added within 1 s: {reply}");
    }
    stack.remove_member("project:p1", "u1").await;
    for client in [&mut a, &mut b] {
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
    // And nothing more is delivered there.
    stack.publish("project:p1", "bid.new", json!({})).await;
    assert!(a.no_more_events().await.is_none());
}

#[tokio::test]
async fn a_token_grant_survives_a_membership_removal() {
    let stack = Stack::start().await;
    let edge = stack.edge(&[]);
    stack.add_member("project:p1", "u1").await;
    let mut client = edge.connect_with(&token("u1", 600, &["project:*"])).await;
    assert_eq!(
        client.sub_member(json!({"ch":"project:p1"})).await["op"],
        "ok"
    );
    stack.remove_member("project:p1", "u1").await;
    let seq = stack.publish("project:p1", "bid.new", json!({})).await;
    assert_eq!(seqs(&client.events(1).await), [seq]);
}

#[tokio::test]
async fn history_pages_back_in_ascending_order_and_clamps_the_limit() {
    let stack = Stack::start().await;
    let edge = stack.edge(&[]);
    let mut stored = Vec::new();
    for i in 0..120 {
        stored.push(
            stack
                .publish("domain:h", "project.update", json!({"i": i}))
                .await,
        );
    }
    let mut client = edge.connect("u1").await;
    let page = client
        .request(json!({"op":"history","ch":"domain:h"}))
        .await;
    assert_eq!(seqs(page["events"].as_array().unwrap()), stored[70..]);
    let before = client
        .request(json!({"op":"history","ch":"domain:h","before": stored[70],"limit": 10}))
        .await;
    assert_eq!(seqs(before["events"].as_array().unwrap()), stored[60..70]);
    let clamped = client
        .request(json!({"op":"history","ch":"domain:h","limit": 500}))
        .await;
    assert_eq!(clamped["events"].as_array().unwrap().len(), 100);
    // `before` above the channel's last seq answers as if it were absent.
    for past_the_end in [stored[119] + 1, stored[119] + 1_000_000, u64::MAX / 2] {
        let latest = client
            .request(json!({"op":"history","ch":"domain:h","before": past_the_end,"limit": 5}))
            .await;
        assert_eq!(
            seqs(latest["events"].as_array().unwrap()),
            stored[115..],
            "before {past_the_end}: {latest}"
        );
    }
    let first = &before["events"][0];
    assert_eq!(first["op"], "evt");
    assert_eq!(first["ch"], "domain:h");
    assert_eq!(first["event"]["type"], "project.update");
    let forbidden = client
        .request(json!({"op":"history","ch":"project:secret"}))
        .await;
    assert_eq!(forbidden["code"], "forbidden");
}

#[tokio::test]
async fn a_gap_on_the_live_path_is_repaired_from_the_stream() {
    let stack = Stack::start().await;
    let edge = stack.edge(&[]);
    let mut client = edge.connect("u1").await;
    client.sub(json!({"ch":"domain:g"})).await;
    let before = stack
        .publish("domain:g", "project.update", json!({"n": 0}))
        .await;
    assert_eq!(seqs(&client.events(1).await), [before]);

    // Events stored while the stream republishes nothing never reach the edge live.
    let config = stack.stop_republishing().await;
    let mut missed = Vec::new();
    for n in 1..=3 {
        missed.push(
            stack
                .publish("domain:g", "project.update", json!({"n": n}))
                .await,
        );
    }
    assert!(client.no_more_events().await.is_none());
    stack.republish_again(&config).await;
    // The next live event names its predecessor, which the edge has not seen.
    let after = stack
        .publish("domain:g", "project.update", json!({"n": 4}))
        .await;
    let mut expected = missed.clone();
    expected.push(after);
    assert_eq!(seqs(&client.events(4).await), expected);
    assert!(client.no_more_events().await.is_none());
}

#[tokio::test]
async fn resuming_past_expired_history_says_not_recovered() {
    let stack = Stack::start().await;
    let edge = stack.edge(&[]);
    let mut stored = Vec::new();
    for n in 0..6 {
        stored.push(
            stack
                .publish("domain:x", "project.update", json!({"n": n}))
                .await,
        );
    }
    let stream = stack.js.get_stream("EVENTS").await.unwrap();
    stream.purge().sequence(stored[3]).await.unwrap();
    let mut client = edge.connect("u1").await;
    let ok = client.sub(json!({"ch":"domain:x"})).await;
    let epoch = ok["epoch"].clone();
    client.request(json!({"op":"unsub","ch":"domain:x"})).await;
    let resumed = client
        .sub(json!({"ch":"domain:x","since":{"seq": stored[0], "epoch": epoch}}))
        .await;
    assert_eq!(resumed["recovered"], false, "{resumed}");
    // What is still stored follows.
    assert_eq!(seqs(&client.events(3).await), stored[3..]);
}
