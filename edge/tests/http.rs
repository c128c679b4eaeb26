//! The HTTP surface: SSE and long-poll fallbacks, publishing and RPC over HTTP, metrics,
//! and the limits on connections, origins and per-op rates.

mod support;

use std::time::Duration;

use serde_json::{Value, json};
use support::*;

fn service_token() -> String {
    token_with(json!({"sub":"bidding-service","exp": now() + 600,"role":"service"}))
}

fn bearer(token: &str) -> String {
    format!("Bearer {token}")
}

#[tokio::test]
async fn sse_delivers_events_and_resumes_from_last_event_id_without_loss() {
    let stack = Stack::start().await;
    let edge = stack.edge(&[]);
    let auth = bearer(&token("u1", 600, &[]));
    let mut sse = SseStream::open(
        &edge.addr,
        "ch=domain:s&ch=user:u1",
        &[("Authorization", &auth)],
    )
    .await;
    // One `ok` per channel, each with a cursor.
    for _ in 0..2 {
        let (name, id, _) = sse.next().await;
        assert_eq!(name, "ok");
        assert!(id.is_some());
    }
    let mut published = Vec::new();
    for i in 0..5 {
        published.push(
            stack
                .publish("domain:s", "project.update", json!({"i": i}))
                .await,
        );
    }
    let mut last_id = String::new();
    for seq in &published[..3] {
        let (name, id, data) = sse.next().await;
        assert_eq!(name, "evt");
        let frame: Value = serde_json::from_str(&data).unwrap();
        assert_eq!(frame["seq"], *seq);
        assert_eq!(frame["ch"], "domain:s");
        last_id = id.unwrap();
    }
    drop(sse);
    // Two more while away; the resumed stream has the rest, once each.
    published.push(
        stack
            .publish("domain:s", "project.update", json!({"i": 5}))
            .await,
    );
    let mut resumed = SseStream::open(
        &edge.addr,
        "ch=domain:s&ch=user:u1",
        &[("Authorization", &auth), ("Last-Event-ID", &last_id)],
    )
    .await;
    let mut got = Vec::new();
    while got.len() < 3 {
        let (name, _, data) = resumed.next().await;
        if name == "evt" {
            got.push(
                serde_json::from_str::<Value>(&data).unwrap()["seq"]
                    .as_u64()
                    .unwrap(),
            );
        }
    }
    assert_eq!(got, published[3..]);
}

#[tokio::test]
async fn sse_refuses_before_streaming() {
    let stack = Stack::start().await;
    let edge = stack.edge(&[]);
    let auth = bearer(&token("u1", 600, &[]));
    let (status, body) = http(&edge.addr, "GET", "/v1/sse?ch=domain:s", &[], "").await;
    assert_eq!(status, 401, "{body}");
    let (status, body) = http_as(&edge.addr, "GET", "/v1/sse?ch=project:p1", &auth, "").await;
    assert_eq!(status, 403, "{body}");
    assert_eq!(
        serde_json::from_str::<Value>(&body).unwrap()["code"],
        "forbidden"
    );
    let (status, _) = http_as(&edge.addr, "GET", "/v1/sse?ch=project:p1.>", &auth, "").await;
    assert_eq!(status, 400);
    let (status, _) = http_as(
        &edge.addr,
        "GET",
        "/v1/sse?ch=domain:s&cursor=garbage",
        &auth,
        "",
    )
    .await;
    assert_eq!(status, 400);
}

#[tokio::test]
async fn long_polling_hands_out_a_cursor_then_events_after_it() {
    let stack = Stack::start().await;
    let edge = stack.edge(&[]);
    let auth = bearer(&token("u1", 600, &[]));
    let before = stack.publish("domain:p", "project.update", json!({})).await;
    let (status, body) = http_as(&edge.addr, "GET", "/v1/poll?ch=domain:p", &auth, "").await;
    assert_eq!(status, 200, "{body}");
    let first: Value = serde_json::from_str(&body).unwrap();
    assert_eq!(
        first["events"],
        json!([]),
        "no cursor: the current position, no events"
    );
    let cursor = first["cursor"].as_str().unwrap().to_string();

    let mut published = Vec::new();
    for i in 0..3 {
        published.push(
            stack
                .publish("domain:p", "project.update", json!({"i": i}))
                .await,
        );
    }
    let path = format!("/v1/poll?ch=domain:p&cursor={cursor}&wait=5");
    let (_, body) = http_as(&edge.addr, "GET", &path, &auth, "").await;
    let second: Value = serde_json::from_str(&body).unwrap();
    assert_eq!(seqs(second["events"].as_array().unwrap()), published);
    assert!(!published.contains(&before));

    // Nothing new: the poll waits, then answers empty with the same position.
    let cursor = second["cursor"].as_str().unwrap();
    let path = format!("/v1/poll?ch=domain:p&cursor={cursor}&wait=1");
    let started = std::time::Instant::now();
    let (_, body) = http_as(&edge.addr, "GET", &path, &auth, "").await;
    let third: Value = serde_json::from_str(&body).unwrap();
    assert_eq!(third["events"], json!([]));
    assert!(started.elapsed() >= Duration::from_millis(900));

    // An event arriving while a poll waits ends the wait.
    let path = format!(
        "/v1/poll?ch=domain:p&cursor={}&wait=20",
        third["cursor"].as_str().unwrap()
    );
    let addr = edge.addr.clone();
    let waiting = tokio::spawn(async move { http_as(&addr, "GET", &path, &auth, "").await });
    tokio::time::sleep(Duration::from_millis(300)).await;
    let late = stack.publish("domain:p", "project.update", json!({})).await;
    let (_, body) = waiting.await.unwrap();
    let fourth: Value = serde_json::from_str(&body).unwrap();
    assert_eq!(seqs(fourth["events"].as_array().unwrap()), [late]);
}

#[tokio::test]
async fn http_publish_needs_a_service_token_and_honours_event_ids() {
    let stack = Stack::start().await;
    let edge = stack.edge(&[]);
    let mut client = edge.connect_with(&token("u1", 600, &["project:p1"])).await;
    client.sub(json!({"ch":"project:p1"})).await;
    let service = bearer(&service_token());
    let body = json!({"channel":"project:p1","type":"bid.new","data":{"amount":5000},
                      "id":"evt_bid_42","actor":{"id":"user_456","type":"contractor"},"source":"bidding-service"})
    .to_string();
    let (status, answer) = http_as(&edge.addr, "POST", "/v1/publish", &service, &body).await;
    assert_eq!(status, 200, "{answer}");
    let first: Value = serde_json::from_str(&answer).unwrap();
    assert_eq!(first["event_id"], "evt_bid_42");
    assert_eq!(first["duplicate"], false);
    let (_, again) = http_as(&edge.addr, "POST", "/v1/publish", &service, &body).await;
    let again: Value = serde_json::from_str(&again).unwrap();
    assert_eq!(again["seq"], first["seq"]);
    assert_eq!(again["duplicate"], true);
    let event = client.recv_where(|f| f["op"] == "evt").await;
    assert_eq!(event["event"]["actor"]["type"], "contractor");
    assert!(client.no_more_events().await.is_none(), "stored once");

    let user = bearer(&token("u1", 600, &[]));
    let (status, _) = http_as(&edge.addr, "POST", "/v1/publish", &user, &body).await;
    assert_eq!(status, 403);
    for bad in [
        json!({"channel":"project:p1.x","type":"bid.new"}),
        json!({"channel":"project:p1","type":"Bid"}),
        json!({"channel":"project:p1","type":"bid.new","id":"nope"}),
        json!({"channel":"user:u1:messages","type":"bid.new"}),
        json!({"channel":"project:p1","type":"bid.new","unknown":1}),
    ] {
        let (status, answer) = http_as(
            &edge.addr,
            "POST",
            "/v1/publish",
            &service,
            &bad.to_string(),
        )
        .await;
        assert_eq!(status, 400, "{bad}: {answer}");
    }
    let (status, _) = http_as(&edge.addr, "POST", "/v1/publish", &service, "{not json").await;
    assert_eq!(status, 400);
}

#[tokio::test]
async fn http_rpc_forwards_like_the_socket() {
    let stack = Stack::start().await;
    let edge = stack.edge(&[("SWITCHBOARD_RPC_TIMEOUT_MS", "500")]);
    stack
        .serve("svc.test.echo", "svc.test.echo", |_, user, _| {
            Some(json!({"result": {"user": user}}))
        })
        .await;
    let auth = bearer(&token("u7", 600, &[]));
    let (status, body) = http_as(&edge.addr, "POST", "/v1/rpc/test.echo", &auth, "{}").await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(
        serde_json::from_str::<Value>(&body).unwrap(),
        json!({"result":{"user":"u7"}})
    );
    let (status, body) = http_as(&edge.addr, "POST", "/v1/rpc/nobody.home", &auth, "").await;
    assert_eq!(status, 404, "{body}");
    let (status, _) = http_as(&edge.addr, "POST", "/v1/rpc/Bad..Method", &auth, "").await;
    assert_eq!(status, 400);
    let (status, _) = http(&edge.addr, "POST", "/v1/rpc/test.echo", &[], "").await;
    assert_eq!(status, 401);
}

fn metric(text: &str, name: &str) -> f64 {
    text.lines()
        .find(|l| l.starts_with(name) && l[name.len()..].starts_with(' '))
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| panic!("no metric {name}"))
}

#[tokio::test]
async fn metrics_move_with_traffic() {
    let stack = Stack::start().await;
    let edge = stack.edge(&[]);
    let (_, before) = http(&edge.addr, "GET", "/metrics", &[], "").await;
    assert_eq!(metric(&before, "switchboard_edge_connections"), 0.0);
    let mut client = edge.connect("u1").await;
    client.sub(json!({"ch":"domain:m"})).await;
    stack.publish("domain:m", "project.update", json!({})).await;
    client.events(1).await;
    client.send_text("garbage".into()).await;
    client.recv().await;
    assert!(
        Client::open(&edge.ws_url(), Some("bad-token"))
            .await
            .is_err()
    );
    let (_, after) = http(&edge.addr, "GET", "/metrics", &[], "").await;
    assert_eq!(metric(&after, "switchboard_edge_connections"), 1.0);
    assert!(
        metric(&after, "switchboard_edge_subscriptions") >= 2.0,
        "domain:m and system:broadcast"
    );
    assert!(metric(&after, "switchboard_edge_channels") >= 2.0);
    assert_eq!(
        metric(&after, "switchboard_edge_frames_in_total{op=\"sub\"}"),
        1.0
    );
    assert_eq!(
        metric(&after, "switchboard_edge_frames_in_total{op=\"invalid\"}"),
        1.0
    );
    assert_eq!(metric(&after, "switchboard_edge_deliveries_total"), 1.0);
    assert_eq!(
        metric(
            &after,
            "switchboard_edge_auth_failures_total{reason=\"malformed\"}"
        ),
        1.0
    );
    assert_eq!(
        metric(&after, "switchboard_edge_fanout_latency_seconds_count"),
        1.0
    );
    assert!(metric(&after, "switchboard_edge_frames_out_total") >= 3.0);
}

#[tokio::test]
async fn per_user_connections_and_unauthenticated_sockets_are_limited() {
    let stack = Stack::start().await;
    let edge = stack.edge(&[
        ("SWITCHBOARD_MAX_CONNS_PER_USER", "2"),
        ("SWITCHBOARD_MAX_UNAUTHENTICATED", "1"),
    ]);
    let _a = edge.connect("u1").await;
    let _b = edge.connect("u1").await;
    let refused = Client::open(&edge.ws_url(), Some(&token("u1", 60, &[])))
        .await
        .err()
        .unwrap();
    assert_eq!(refused.0, 429);
    // Another user is not affected.
    let _c = edge.connect("u2").await;
    // Through hello, the refusal is a bye.
    let mut pending = Client::open(&edge.ws_url(), None).await.unwrap();
    let second_pending = Client::open(&edge.ws_url(), None).await.err().unwrap();
    assert_eq!(second_pending.0, 429, "only one socket may wait for hello");
    pending
        .send(json!({"op":"hello","token": token("u1", 60, &[])}))
        .await;
    let (frames, code) = pending.until_closed().await;
    assert_eq!(frames[0]["code"], "rate_limited");
    assert_eq!(code, Some(4408));
    println!(
        "connection caps: a user's 3rd socket (cap 2) refused 429, another user served; a 2nd \
         socket waiting for hello (cap 1) refused 429; hello over the user cap: rate_limited, \
         close 4408"
    );
}

#[tokio::test]
async fn signal_floods_are_rate_limited_while_others_are_served() {
    let stack = Stack::start().await;
    stack.add_member("conversation:c1", "u1").await;
    stack.add_member("conversation:c1", "u2").await;
    let edge = stack.edge(&[("SWITCHBOARD_SIG_PER_S", "2")]);
    let mut flooder = edge.connect("u1").await;
    let mut other = edge.connect("u2").await;
    other.sub(json!({"ch":"conversation:c1"})).await;
    for _ in 0..20 {
        flooder
            .send(json!({"op":"sig","ch":"conversation:c1","type":"typing","data":{}}))
            .await;
    }
    let mut limited = 0;
    while let Some(frame) = flooder.try_recv(Duration::from_millis(300)).await {
        if frame["code"] == "rate_limited" {
            limited += 1;
        }
    }
    assert!(
        limited >= 10,
        "a burst of 6 signals, then refusals: {limited}"
    );
    let mut signals = 0;
    while let Some(frame) = other.try_recv(Duration::from_millis(300)).await {
        signals += usize::from(frame["op"] == "sig");
    }
    assert!((1..=8).contains(&signals), "{signals} signals got through");
    // The other client is served as usual.
    let seq = stack
        .publish("conversation:c1", "message.new", json!({"text":"hi"}))
        .await;
    assert_eq!(seqs(&other.events(1).await), [seq]);
}

#[tokio::test]
async fn origins_outside_the_allowed_list_are_refused() {
    let stack = Stack::start().await;
    let edge = stack.edge(&[("SWITCHBOARD_ALLOWED_ORIGINS", "https://app.instabids.test")]);
    let auth = bearer(&token("u1", 600, &[]));
    let (status, _) = http(
        &edge.addr,
        "GET",
        "/v1/poll?ch=domain:o",
        &[("Authorization", &auth), ("Origin", "https://evil.test")],
        "",
    )
    .await;
    assert_eq!(status, 403);
    let (status, _) = http(
        &edge.addr,
        "GET",
        "/v1/poll?ch=domain:o",
        &[
            ("Authorization", &auth),
            ("Origin", "https://app.instabids.test"),
        ],
        "",
    )
    .await;
    assert_eq!(status, 200);
    let (status, _) = http_as(&edge.addr, "GET", "/v1/poll?ch=domain:o", &auth, "").await;
    assert_eq!(status, 200, "no Origin: not a browser");
}

#[tokio::test]
async fn subscribe_and_publish_rates_hold_per_connection_and_per_user() {
    let stack = Stack::start().await;
    stack.add_member("conversation:c1", "u1").await;
    let edge = stack.edge(&[
        ("SWITCHBOARD_SUB_PER_S", "2"),
        ("SWITCHBOARD_PUB_PER_S", "1"),
    ]);
    // Per connection: a burst of three seconds' worth, then refusals.
    let mut writer = edge.connect("u1").await;
    let mut answers = Vec::new();
    for i in 0..6 {
        let frame =
            json!({"op":"pub","ch":"conversation:c1","type":"message.new","data":{"text": i}});
        answers.push(
            writer.request(frame).await["op"]
                .as_str()
                .unwrap()
                .to_string(),
        );
    }
    assert_eq!(
        answers.iter().filter(|a| *a == "ok").count(),
        3,
        "{answers:?}"
    );

    // Per user: five connections, each within its own burst of 6, share 4 x 6 = 24.
    let mut clients = Vec::new();
    for _ in 0..5 {
        clients.push(edge.connect("u2").await);
    }
    let (mut ok, mut limited) = (0, 0);
    for (c, client) in clients.iter_mut().enumerate() {
        for s in 0..6 {
            let reply = client.sub(json!({"ch": format!("domain:c{c}s{s}")})).await;
            if reply["op"] == "ok" {
                ok += 1;
            } else if reply["code"] == "rate_limited" {
                limited += 1;
            }
        }
    }
    assert!((24..=27).contains(&ok), "{ok} subscriptions allowed");
    assert!(limited >= 3, "{limited} refused");
    // Another user is unaffected.
    let mut other = edge.connect("u3").await;
    assert_eq!(other.sub(json!({"ch":"domain:free"})).await["op"], "ok");
}

/// Continuity is judged per channel (docs/protocol.md, section 6): a channel whose
/// oldest events were purged says `recovered: false` on the socket and in a poll, while
/// the stream's own first seq has not moved, and delivery starts at its oldest stored
/// event; a channel that kept its history resumes as `recovered: true`.
#[tokio::test]
async fn a_channel_purged_past_a_resume_point_says_not_recovered_on_every_transport() {
    let stack = Stack::start().await;
    let edge = stack.edge(&[]);
    let auth = bearer(&token("u1", 600, &[]));
    // The stream's first event stays: its first seq never moves.
    let kept = stack
        .publish("domain:kept", "project.update", json!({}))
        .await;
    let mut stored = Vec::new();
    for i in 0..2 {
        stored.push(
            stack
                .publish("domain:cut", "project.update", json!({"i": i}))
                .await,
        );
    }
    let (_, body) = http_as(&edge.addr, "GET", "/v1/poll?ch=domain:cut", &auth, "").await;
    let cursor = serde_json::from_str::<Value>(&body).unwrap()["cursor"]
        .as_str()
        .unwrap()
        .to_string();
    for i in 2..6 {
        stored.push(
            stack
                .publish("domain:cut", "project.update", json!({"i": i}))
                .await,
        );
    }
    let mut events = stack.js.get_stream("EVENTS").await.unwrap();
    events
        .purge()
        .filter("rt.domain.cut")
        .keep(2)
        .await
        .unwrap();
    assert_eq!(events.info().await.unwrap().state.first_sequence, kept);

    let mut client = edge.connect("u1").await;
    let epoch = client.sub(json!({"ch":"domain:kept"})).await["epoch"].clone();
    client
        .request(json!({"op":"unsub","ch":"domain:kept"}))
        .await;
    let resumed = client
        .sub(json!({"ch":"domain:cut","since":{"seq": stored[1], "epoch": epoch}}))
        .await;
    assert_eq!(resumed["recovered"], false, "{resumed}");
    assert_eq!(seqs(&client.events(2).await), stored[4..]);
    let intact = client
        .sub(json!({"ch":"domain:kept","since":{"seq": kept, "epoch": epoch}}))
        .await;
    assert_eq!(intact["recovered"], true, "{intact}");

    let (ok, events) = sse_resumed(&edge, &auth, "domain:cut", &cursor, 2).await;
    assert_eq!(ok["recovered"], false, "{ok}");
    assert_eq!(events, stored[4..]);

    let path = format!("/v1/poll?ch=domain:cut&cursor={cursor}&wait=2");
    let (status, body) = http_as(&edge.addr, "GET", &path, &auth, "").await;
    assert_eq!(status, 200, "{body}");
    let poll: Value = serde_json::from_str(&body).unwrap();
    assert_eq!(poll["recovered"], false, "{poll}");
    assert_eq!(seqs(poll["events"].as_array().unwrap()), stored[4..]);
}

/// An SSE stream of `channel` resumed from `cursor`: its `ok` and the seqs of the first
/// `count` events.
async fn sse_resumed(
    edge: &Edge,
    auth: &str,
    channel: &str,
    cursor: &str,
    count: usize,
) -> (Value, Vec<u64>) {
    let mut sse = SseStream::open(
        &edge.addr,
        &format!("ch={channel}"),
        &[("Authorization", auth), ("Last-Event-ID", cursor)],
    )
    .await;
    let (name, _, data) = sse.next().await;
    assert_eq!(name, "ok", "{data}");
    let ok: Value = serde_json::from_str(&data).unwrap();
    let mut events = Vec::new();
    while events.len() < count {
        let (name, _, data) = sse.next().await;
        assert_eq!(name, "evt", "{data}");
        events.push(
            serde_json::from_str::<Value>(&data).unwrap()["seq"]
                .as_u64()
                .unwrap(),
        );
    }
    (ok, events)
}

/// A channel past its own cap (`max_msgs_per_subject`) has lost its oldest events while
/// the stream's first seq stays where it was: a resume from before them says
/// `recovered: false` on the socket, over SSE and in a poll, and delivers from the oldest
/// event the channel still holds (docs/protocol.md, section 6).
#[tokio::test]
async fn a_channel_past_its_own_cap_says_not_recovered_on_every_transport() {
    let stack = Stack::start().await;
    let mut config = stack
        .js
        .get_stream("EVENTS")
        .await
        .unwrap()
        .cached_info()
        .config
        .clone();
    config.max_messages_per_subject = 3;
    stack.js.update_stream(&config).await.unwrap();
    let edge = stack.edge(&[]);
    let auth = bearer(&token("u1", 600, &[]));
    let kept = stack
        .publish("domain:kept", "project.update", json!({}))
        .await;
    let first = stack
        .publish("domain:capped", "project.update", json!({"i": 0}))
        .await;
    let (_, body) = http_as(&edge.addr, "GET", "/v1/poll?ch=domain:capped", &auth, "").await;
    let cursor = serde_json::from_str::<Value>(&body).unwrap()["cursor"]
        .as_str()
        .unwrap()
        .to_string();
    let mut stored = Vec::new();
    for i in 1..=5 {
        stored.push(
            stack
                .publish("domain:capped", "project.update", json!({"i": i}))
                .await,
        );
    }
    let events = stack.js.get_stream("EVENTS").await.unwrap();
    let state = events.cached_info().state.clone();
    assert_eq!(state.first_sequence, kept, "the stream's first seq stays");
    let oldest_kept = &stored[2..];

    let mut client = edge.connect("u1").await;
    let epoch = client.sub(json!({"ch":"domain:kept"})).await["epoch"].clone();
    let resumed = client
        .sub(json!({"ch":"domain:capped","since":{"seq": first, "epoch": epoch}}))
        .await;
    assert_eq!(resumed["recovered"], false, "{resumed}");
    assert_eq!(seqs(&client.events(3).await), oldest_kept);

    let (ok, events) = sse_resumed(&edge, &auth, "domain:capped", &cursor, 3).await;
    assert_eq!(ok["recovered"], false, "{ok}");
    assert_eq!(events, oldest_kept);

    let path = format!("/v1/poll?ch=domain:capped&cursor={cursor}&wait=2");
    let (status, body) = http_as(&edge.addr, "GET", &path, &auth, "").await;
    assert_eq!(status, 200, "{body}");
    let poll: Value = serde_json::from_str(&body).unwrap();
    assert_eq!(poll["recovered"], false, "{poll}");
    assert_eq!(seqs(poll["events"].as_array().unwrap()), oldest_kept);

    // A resume within what the channel holds is recovered.
    client
        .request(json!({"op":"unsub","ch":"domain:capped"}))
        .await;
    let intact = client
        .sub(json!({"ch":"domain:capped","since":{"seq": stored[2], "epoch": epoch}}))
        .await;
    assert_eq!(intact["recovered"], true, "{intact}");
    assert_eq!(seqs(&client.events(2).await), stored[3..]);
}

/// Every revocation reaches an SSE client, also when several come at once: each channel
/// gets its `unsubbed` event, and the stream goes on with the channel it keeps.
#[tokio::test]
async fn an_sse_stream_is_told_of_every_revocation() {
    let stack = Stack::start().await;
    for channel in ["project:p1", "project:p2", "project:p3"] {
        stack.add_member(channel, "u1").await;
    }
    let edge = stack.edge(&[]);
    let auth = bearer(&token("u1", 600, &[]));
    let mut sse = SseStream::open(
        &edge.addr,
        "ch=project:p1&ch=project:p2&ch=project:p3",
        &[("Authorization", &auth)],
    )
    .await;
    for _ in 0..3 {
        assert_eq!(sse.next().await.0, "ok");
    }
    stack.remove_member("project:p1", "u1").await;
    stack.remove_member("project:p2", "u1").await;
    let mut revoked = Vec::new();
    while revoked.len() < 2 {
        let (name, _, data) = sse.next().await;
        assert_eq!(name, "unsubbed", "{data}");
        let frame: Value = serde_json::from_str(&data).unwrap();
        assert_eq!(frame["code"], "revoked");
        revoked.push(frame["ch"].as_str().unwrap().to_string());
    }
    revoked.sort();
    assert_eq!(revoked, ["project:p1", "project:p2"]);
    let kept = stack.publish("project:p3", "bid.new", json!({})).await;
    let (name, _, data) = sse.next().await;
    assert_eq!(name, "evt", "{data}");
    assert_eq!(serde_json::from_str::<Value>(&data).unwrap()["seq"], kept);
}

/// An `Authorization` header that is not `Bearer <token>` is refused as such (401 naming
/// the form), not taken for a request without a token, on every HTTP door.
#[tokio::test]
async fn an_authorization_header_that_is_not_bearer_is_refused_naming_the_form() {
    let stack = Stack::start().await;
    let edge = stack.edge(&[]);
    for (method, path) in [
        ("GET", "/v1/sse?ch=domain:s"),
        ("GET", "/v1/poll?ch=domain:s"),
        ("POST", "/v1/publish"),
        ("POST", "/v1/rpc/presence.get"),
    ] {
        let (status, body) = http_as(&edge.addr, method, path, "Basic dTE6cHc=", "{}").await;
        assert_eq!(status, 401, "{method} {path}: {body}");
        let refusal: Value = serde_json::from_str(&body).unwrap();
        assert_eq!(refusal["code"], "unauthorized", "{method} {path}");
        assert!(
            refusal["message"]
                .as_str()
                .unwrap()
                .contains("Bearer <token>"),
            "{method} {path}: {refusal}"
        );
    }
}

/// `?presence=` is checked on `/v1/sse` and `/v1/poll` as on the upgrade (docs/protocol.md,
/// section 2): a status is accepted (they write no presence, so are never shown online),
/// anything else is 400 naming the statuses.
#[tokio::test]
async fn sse_and_polls_check_a_declared_presence() {
    let stack = Stack::start().await;
    let edge = stack.edge(&[]);
    let auth = bearer(&token("u1", 600, &[]));
    for path in ["/v1/sse", "/v1/poll"] {
        let (status, body) = http_as(
            &edge.addr,
            "GET",
            &format!("{path}?ch=domain:s&presence=sleeping"),
            &auth,
            "",
        )
        .await;
        assert_eq!(status, 400, "{path}: {body}");
        assert!(body.contains("online, away, busy, invisible"), "{body}");
    }
    let (status, body) = http_as(
        &edge.addr,
        "GET",
        "/v1/poll?ch=domain:s&presence=invisible",
        &auth,
        "",
    )
    .await;
    assert_eq!(status, 200, "{body}");
    let mut sse = SseStream::open(
        &edge.addr,
        "ch=domain:s&presence=invisible",
        &[("Authorization", &auth)],
    )
    .await;
    assert_eq!(sse.next().await.0, "ok");
}

/// docs/protocol.md, sections 11.1 and 11.2: a channel that cannot be set up once the
/// answer has started is named, in each transport's own form. Here the stream is gone
/// (deleted under the edge), so a channel's bridge cannot read its head.
#[tokio::test]
async fn a_channel_that_fails_after_the_answer_started_is_named() {
    let stack = Stack::start().await;
    let edge = stack.edge(&[]);
    let auth = bearer(&token("u1", 600, &[]));
    // A cursor while the stream is there: this channel at seq 0.
    let (status, body) = http_as(&edge.addr, "GET", "/v1/poll?ch=domain:gone", &auth, "").await;
    assert_eq!(status, 200, "{body}");
    let first: Value = serde_json::from_str(&body).unwrap();
    let cursor = first["cursor"].as_str().unwrap().to_string();
    stack.js.delete_stream("EVENTS").await.unwrap();

    let mut sse = SseStream::open(&edge.addr, "ch=domain:down", &[("Authorization", &auth)]).await;
    let (name, _, data) = sse.next().await;
    assert_eq!(name, "err", "{data}");
    let err: Value = serde_json::from_str(&data).unwrap();
    assert_eq!(err["op"], "err");
    assert_eq!(err["code"], "unavailable");
    assert!(err.get("id").is_none(), "{err}");
    let message = err["message"].as_str().unwrap();
    assert!(message.starts_with("domain:down: "), "{message}");
    let (name, _, data) = sse.next().await;
    assert_eq!(name, "bye");
    assert_eq!(
        serde_json::from_str::<Value>(&data).unwrap()["code"],
        "draining"
    );
    assert!(sse.try_next().await.is_none(), "the stream ends");

    // The poll answers the refusal instead of an empty 200.
    let path = format!("/v1/poll?ch=domain:gone&cursor={cursor}&wait=20");
    let (status, body) = http_as(&edge.addr, "GET", &path, &auth, "").await;
    assert_eq!(status, 503, "{body}");
    let refusal: Value = serde_json::from_str(&body).unwrap();
    assert_eq!(refusal["code"], "unavailable");
    let message = refusal["message"].as_str().unwrap();
    assert!(message.starts_with("domain:gone: "), "{message}");
}
