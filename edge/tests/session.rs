//! Session rules of docs/protocol.md: authentication, tokens, heartbeats, limits.

mod support;

use std::io::{Read, Write};
use std::time::Duration;

use serde_json::json;
use support::*;

#[tokio::test]
async fn bearer_on_the_upgrade_gets_an_unprompted_welcome_and_a_later_hello_is_refused() {
    let stack = Stack::start().await;
    let edge = stack.edge(&[]);
    let mut client = Client::open(&edge.ws_url(), Some(&token("u1", 60, &[])))
        .await
        .unwrap();
    let welcome = client.recv().await;
    assert_eq!(welcome["op"], "welcome");
    assert_eq!(welcome["user"], "u1");
    assert_eq!(welcome["heartbeat_ms"], 25000);
    assert!(welcome["session"].as_str().is_some_and(|s| !s.is_empty()));
    let reply = client
        .request(json!({"op":"hello","token": token("u1", 60, &[])}))
        .await;
    assert_eq!(reply["op"], "err");
    assert_eq!(reply["code"], "bad_request");
}

#[tokio::test]
async fn a_bad_bearer_token_is_refused_with_401_before_any_socket() {
    let stack = Stack::start().await;
    let edge = stack.edge(&[]);
    for bad in [
        "not-a-jwt".to_string(),
        token("u1", -60, &[]),
        token_with(json!({"exp": now() + 60})),
    ] {
        let (status, body) = Client::open(&edge.ws_url(), Some(&bad))
            .await
            .err()
            .unwrap();
        assert_eq!(status, 401);
        let body: serde_json::Value = serde_json::from_str(&body).unwrap();
        assert_eq!(body["code"], "unauthorized", "{body}");
        assert!(body["message"].as_str().is_some());
    }
    // The same on ?token=, for browsers.
    let url = format!("{}?token=garbage", edge.ws_url());
    assert_eq!(Client::open(&url, None).await.err().unwrap().0, 401);
    let url = format!("{}?token={}", edge.ws_url(), token("u7", 60, &[]));
    let mut client = Client::open(&url, None).await.unwrap();
    assert_eq!(client.recv().await["user"], "u7");
}

#[tokio::test]
async fn hello_authenticates_and_echoes_nothing_but_welcome() {
    let stack = Stack::start().await;
    let edge = stack.edge(&[]);
    let mut client = Client::open(&edge.ws_url(), None).await.unwrap();
    // Before hello only ping works.
    let early = client.request(json!({"op":"sub","ch":"domain:d1"})).await;
    assert_eq!(early["code"], "unauthorized");
    let pong = client.request(json!({"op":"ping"})).await;
    assert_eq!(pong["op"], "pong");
    client
        .send(json!({"op":"hello","token": token("u2", 60, &[]),"device":"d1"}))
        .await;
    let welcome = client.recv().await;
    assert_eq!(welcome["op"], "welcome");
    assert_eq!(welcome["user"], "u2");
}

#[tokio::test]
async fn no_hello_in_time_is_bye_unauthorized_and_close_4401() {
    let stack = Stack::start().await;
    let edge = stack.edge(&[("SWITCHBOARD_HELLO_TIMEOUT_MS", "500")]);
    let mut client = Client::open(&edge.ws_url(), None).await.unwrap();
    let (frames, code) = client.until_closed().await;
    assert_eq!(
        frames,
        [json!({"op":"bye","code":"unauthorized","reconnect":false})]
    );
    assert_eq!(code, Some(4401));
}

#[tokio::test]
async fn a_hello_with_a_bad_token_ends_the_session() {
    let stack = Stack::start().await;
    let edge = stack.edge(&[]);
    let forged = {
        // Signed with another key.
        jsonwebtoken::encode(
            &jsonwebtoken::Header::default(),
            &json!({"sub":"u1","exp": now() + 60}),
            &jsonwebtoken::EncodingKey::from_secret(b"another-secret-entirely"),
        )
        .unwrap()
    };
    let mut client = Client::open(&edge.ws_url(), None).await.unwrap();
    client
        .send(json!({"op":"hello","id":1,"token": forged}))
        .await;
    let (frames, code) = client.until_closed().await;
    assert_eq!(frames[0]["op"], "err");
    assert_eq!(frames[0]["id"], 1);
    assert_eq!(frames[0]["code"], "unauthorized");
    assert_eq!(frames[1]["op"], "bye");
    assert_eq!(code, Some(4401));
}

#[tokio::test]
async fn ping_op_answers_pong_with_the_id() {
    let stack = Stack::start().await;
    let edge = stack.edge(&[]);
    let mut client = edge.connect("u1").await;
    client.send(json!({"op":"ping","id":8})).await;
    assert_eq!(client.recv().await, json!({"op":"pong","id":8}));
}

/// Frames a client sends together, more than the edge handles in a row before it writes,
/// are all answered, each once and in order: pings, and subscriptions to a channel that
/// is ready and to new ones.
#[tokio::test]
async fn frames_sent_in_one_write_are_all_answered_in_order() {
    use futures_util::SinkExt;
    use tokio_tungstenite::tungstenite::Message;

    let stack = Stack::start().await;
    let edge = stack.edge(&[]);
    let mut other = edge.connect("u1").await;
    other.sub(json!({"op":"sub","ch":"domain:lobby"})).await;
    let mut client = edge.connect("u2").await;
    let frames: Vec<_> = (1..=40u64)
        .map(|id| match id {
            7 => json!({"op":"sub","id": id,"ch":"domain:lobby"}),
            23 | 31 => json!({"op":"sub","id": id,"ch": format!("domain:new-{id}")}),
            _ => json!({"op":"ping","id": id}),
        })
        .collect();
    for frame in &frames {
        client
            .socket
            .feed(Message::Text(frame.to_string().into()))
            .await
            .unwrap();
    }
    client.socket.flush().await.unwrap();
    let mut pongs = Vec::new();
    let mut oks = std::collections::BTreeSet::new();
    while pongs.len() + oks.len() < frames.len() {
        let reply = client.recv().await;
        let id = reply["id"].as_u64().unwrap_or_else(|| panic!("{reply}"));
        match reply["op"].as_str() {
            Some("pong") => pongs.push(id),
            Some("ok") => assert!(oks.insert(id), "a second ok for {id}"),
            _ => panic!("unexpected {reply}"),
        }
    }
    let pings: Vec<u64> = (1..=40).filter(|id| ![7, 23, 31].contains(id)).collect();
    assert_eq!(pongs, pings);
    assert_eq!(oks, [7, 23, 31].into());
    assert_eq!(client.no_more_events().await, None);
}

#[tokio::test]
async fn frames_sent_with_the_upgrade_are_answered_after_welcome() {
    let stack = Stack::start().await;
    let edge = stack.edge(&[]);
    let mut other = edge.connect("u1").await;
    other.sub(json!({"op":"sub","ch":"domain:lobby"})).await;
    // The upgrade and three frames in one write: the frames are with the edge before its
    // session starts. One channel the edge knows, one it must look up, then a ping.
    let frames = [
        json!({"op":"sub","id": 1,"ch":"domain:lobby"}),
        json!({"op":"sub","id": 2,"ch":"user:u2"}),
        json!({"op":"ping","id": 3}),
    ];
    let mut wire = upgrade_request(&edge.addr, &token("u2", 60, &[])).into_bytes();
    for frame in &frames {
        wire.extend(masked_text(frame.to_string().as_bytes()));
    }
    let mut raw = std::net::TcpStream::connect(&edge.addr).unwrap();
    raw.write_all(&wire).unwrap();
    raw.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    let mut received = Vec::new();
    let mut buf = [0u8; 4096];
    let replies = loop {
        let n = raw.read(&mut buf).expect("the edge stopped answering");
        assert!(n > 0, "the edge closed the socket");
        received.extend_from_slice(&buf[..n]);
        let replies = text_frames(&received);
        if replies.len() >= 4 {
            break replies;
        }
    };
    assert_eq!(replies.len(), 4, "{replies:?}");
    assert_eq!(replies[0]["op"], "welcome", "{replies:?}");
    let mut answered: Vec<(String, u64)> = replies[1..]
        .iter()
        .map(|r| match (r["op"].as_str(), r["id"].as_u64()) {
            (Some(op), Some(id)) => (op.to_string(), id),
            _ => panic!("a reply without op or id: {r}"),
        })
        .collect();
    answered.sort_by_key(|(_, id)| *id);
    assert_eq!(
        answered,
        [("ok".into(), 1), ("ok".into(), 2), ("pong".into(), 3)]
    );
}

#[tokio::test]
async fn the_101_and_welcome_arrive_together() {
    let stack = Stack::start().await;
    let edge = stack.edge(&[]);
    for user in ["u1", "u2", "u3"] {
        let mut raw = std::net::TcpStream::connect(&edge.addr).unwrap();
        raw.set_nodelay(true).unwrap();
        raw.write_all(upgrade_request(&edge.addr, &token(user, 60, &[])).as_bytes())
            .unwrap();
        raw.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
        // One read: whatever the first segment brought. The edge holds the 101 back until
        // `welcome` is written, so both are in it.
        let mut buf = [0u8; 4096];
        let n = raw.read(&mut buf).expect("no answer to the upgrade");
        assert!(
            buf.starts_with(b"HTTP/1.1 101"),
            "{:?}",
            String::from_utf8_lossy(&buf[..n])
        );
        let frames = text_frames(&buf[..n]);
        assert_eq!(frames.len(), 1, "{:?}", String::from_utf8_lossy(&buf[..n]));
        assert_eq!(frames[0]["op"], "welcome");
        assert_eq!(frames[0]["user"], user);
    }
}

/// docs/protocol.md, section 2: the channels an upgrade names (`?ch=`) are subscribed as
/// the session starts; on channels that know their heads, their `ok`s (without `id`, in
/// the order named, a repeated one once) come in the same segment as the `101` and
/// `welcome`, so a client has them confirmed in the round trip of its upgrade.
#[tokio::test]
async fn channels_named_on_the_upgrade_are_confirmed_with_welcome() {
    let stack = Stack::start().await;
    let edge = stack.edge(&[]);
    let mut other = edge.connect("u1").await;
    other.sub(json!({"op":"sub","ch":"domain:lobby"})).await;
    let mut raw = std::net::TcpStream::connect(&edge.addr).unwrap();
    raw.set_nodelay(true).unwrap();
    raw.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    let query = format!(
        "token={}&ch=user:u9&ch=domain%3Alobby&ch=user:u9",
        token("u9", 60, &[])
    );
    raw.write_all(upgrade_with_query(&edge.addr, &query).as_bytes())
        .unwrap();
    let mut buf = [0u8; 4096];
    let n = raw.read(&mut buf).expect("no answer to the upgrade");
    assert!(buf.starts_with(b"HTTP/1.1 101"));
    let replies = text_frames(&buf[..n]);
    assert_eq!(replies.len(), 3, "{replies:?}");
    assert_eq!(replies[0]["op"], "welcome");
    for (reply, ch) in replies[1..].iter().zip(["user:u9", "domain:lobby"]) {
        assert_eq!(reply["op"], "ok", "{reply}");
        assert_eq!(reply["ch"], ch, "{reply}");
        assert!(reply.get("id").is_none(), "{reply}");
        assert!(reply["seq"].is_u64(), "{reply}");
    }
    // Both are live: an event on each reaches this socket, as on the other. Two channels
    // are two streams of events: nothing orders one's against the other's.
    let lobby = stack.publish("domain:lobby", "note.new", json!({})).await;
    let own = stack.publish("user:u9", "note.new", json!({})).await;
    let mut events = Vec::new();
    while events.len() < 2 {
        let n = raw.read(&mut buf).expect("no live event");
        events.extend(frames(&buf[..n]));
    }
    let mut seen: Vec<(String, u64)> = events
        .iter()
        .map(|e| {
            (
                e["ch"].as_str().unwrap().to_string(),
                e["seq"].as_u64().unwrap(),
            )
        })
        .collect();
    seen.sort();
    assert_eq!(
        seen,
        [("domain:lobby".into(), lobby), ("user:u9".into(), own)]
    );
    assert_eq!(other.recv().await["seq"], lobby);
}

/// The channels an upgrade names are checked like SSE's, before any socket exists: the
/// first one refused refuses the upgrade, named in the answer, and nothing is left open.
#[tokio::test]
async fn channels_named_on_the_upgrade_are_checked_before_any_socket() {
    let stack = Stack::start().await;
    let edge = stack.edge(&[]);
    let bearer = token("u1", 60, &[]);
    let many: String = (0..101).map(|i| format!("&ch=domain:d{i}")).collect();
    // (query, status, how the message starts, what it names)
    for (query, status, message, names) in [
        (
            "ch=domain:ok&ch=project:p1",
            403,
            "project:p1: ",
            "project:p1",
        ),
        ("ch=user:u2", 403, "user:u2: ", "user:u2"),
        ("ch=project:p1.%3E", 400, "", "p1.>"),
        ("ch=project:p1%20OR%201%3D1", 400, "", "p1 OR 1=1"),
        ("ch=nope:x", 400, "", "nope"),
        (
            "ch=system:broadcast",
            400,
            "system:broadcast: ",
            "system:broadcast",
        ),
        (&many[1..], 429, "too many channels", ""),
    ] {
        let url = format!("{}?{query}", edge.ws_url());
        let Err((got, body)) = Client::open(&url, Some(&bearer)).await else {
            panic!("?{query} was let in");
        };
        assert_eq!(got, status, "?{query}: {body}");
        let body: serde_json::Value = serde_json::from_str(&body).unwrap();
        let text = body["message"].as_str().unwrap();
        assert!(
            text.starts_with(message) && text.contains(names),
            "?{query}: {body}"
        );
    }
    // Without a token on the upgrade there is nobody to check them for.
    let url = format!("{}?ch=domain:lobby", edge.ws_url());
    let Err((got, body)) = Client::open(&url, None).await else {
        panic!("?ch= without a token was let in");
    };
    assert_eq!(got, 400, "{body}");
    assert!(body.contains("token"), "{body}");
    assert_eq!(edge.metric("switchboard_edge_connections"), Some(0.0));
    // A member's channel is let in (once the membership reached the edge's copy).
    stack.add_member("project:p1", "u1").await;
    let url = format!("{}?ch=project:p1", edge.ws_url());
    let since = std::time::Instant::now();
    let mut client = loop {
        match Client::open(&url, Some(&bearer)).await {
            Ok(client) => break client,
            Err((403, _)) if since.elapsed() < Duration::from_secs(10) => {
                tokio::time::sleep(Duration::from_millis(25)).await
            }
            Err(refused) => panic!("a member was refused: {refused:?}"),
        }
    };
    assert_eq!(client.recv().await["op"], "welcome");
    let ok = client.recv().await;
    assert_eq!((&ok["op"], &ok["ch"]), (&json!("ok"), &json!("project:p1")));
}

/// A refused subscription without `id` (named on the upgrade, or a `sub` frame without
/// one) is told in an `err` whose message starts with its channel.
#[tokio::test]
async fn a_refused_subscription_without_id_is_named() {
    let stack = Stack::start().await;
    let edge = stack.edge(&[("SWITCHBOARD_MAX_SUBS", "2")]);
    let url = format!("{}?ch=domain:a", edge.ws_url());
    let mut client = Client::open(&url, Some(&token("u1", 60, &[])))
        .await
        .unwrap();
    assert_eq!(client.recv().await["op"], "welcome");
    assert_eq!(client.recv().await["op"], "ok");
    let again = client.request(json!({"op":"sub","ch":"domain:a"})).await;
    assert_eq!(again["code"], "bad_request", "{again}");
    assert_eq!(again["id"], 1, "{again}");
    client.send(json!({"op":"sub","ch":"domain:a"})).await;
    let err = client.recv().await;
    assert_eq!(err["code"], "bad_request", "{err}");
    assert!(err.get("id").is_none(), "{err}");
    assert_eq!(
        err["message"],
        "domain:a: already subscribed to this channel"
    );
    client.send(json!({"op":"sub","ch":"domain:b"})).await;
    assert_eq!(client.recv().await["op"], "ok");
    client.send(json!({"op":"sub","ch":"domain:c"})).await;
    let err = client.recv().await;
    assert_eq!(err["code"], "rate_limited", "{err}");
    assert_eq!(
        err["message"],
        "domain:c: too many subscriptions on this connection"
    );
}

#[tokio::test]
async fn a_connection_finds_its_own_channel_ready() {
    let stack = Stack::start().await;
    let edge = stack.edge(&[]);
    stack.publish("user:u5", "note.new", json!({})).await;
    let head = stack.publish("user:u5", "note.new", json!({})).await;
    let mut raw = std::net::TcpStream::connect(&edge.addr).unwrap();
    raw.set_nodelay(true).unwrap();
    raw.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    raw.write_all(upgrade_request(&edge.addr, &token("u5", 60, &[])).as_bytes())
        .unwrap();
    let mut buf = [0u8; 4096];
    let n = raw.read(&mut buf).expect("no answer to the upgrade");
    assert_eq!(text_frames(&buf[..n])[0]["op"], "welcome");
    // The edge made `user:u5` ready during the upgrade: its `sub`, sent as a browser
    // would after `welcome`, is answered at once, in the same write as the `pong` that
    // follows it, with the channel's head. One read gets both.
    let mut wire = masked_text(
        json!({"op":"sub","id": 1,"ch":"user:u5"})
            .to_string()
            .as_bytes(),
    );
    wire.extend(masked_text(
        json!({"op":"ping","id": 2}).to_string().as_bytes(),
    ));
    raw.write_all(&wire).unwrap();
    let n = raw.read(&mut buf).expect("no answer to sub and ping");
    let replies = frames(&buf[..n]);
    assert_eq!(replies.len(), 2, "{replies:?}");
    assert_eq!(replies[0]["op"], "ok", "{replies:?}");
    assert_eq!(replies[0]["id"], 1);
    assert_eq!(replies[0]["seq"], head);
    assert_eq!(replies[1]["op"], "pong", "{replies:?}");
    // Nothing of the stream's past is sent: the subscription starts at the head.
    let published = stack.publish("user:u5", "note.new", json!({})).await;
    let n = raw.read(&mut buf).expect("no live event");
    let events = frames(&buf[..n]);
    assert_eq!(events.len(), 1, "{events:?}");
    assert_eq!(events[0]["op"], "evt");
    assert_eq!(events[0]["seq"], published);
}

#[tokio::test]
async fn an_own_channel_not_subscribed_at_once_is_let_go() {
    let stack = Stack::start().await;
    let edge = stack.edge(&[("SWITCHBOARD_HEARTBEAT_MS", "1000")]);
    let channels = || edge.metric("switchboard_edge_channels");
    // Subscribed with the first frames: the channel stays with the subscription.
    let mut subscriber = edge.connect("u7").await;
    let ok = subscriber.sub(json!({"ch":"user:u7"})).await;
    assert_eq!(ok["op"], "ok", "{ok}");
    // Not among the first frames: the channel goes once they are read. Left are
    // `system:broadcast` and `user:u7`.
    let mut other = edge.connect("u8").await;
    assert_eq!(
        other.request(json!({"op":"ping","id": 1})).await["op"],
        "pong"
    );
    assert_eq!(channels(), Some(2.0));
    // No frame at all: the channel goes at the first heartbeat, the connection stays.
    let mut silent = edge.connect("u6").await;
    assert_eq!(channels(), Some(3.0));
    gauge_becomes(
        &edge,
        "switchboard_edge_channels",
        2.0,
        Duration::from_secs(10),
    )
    .await;
    assert_eq!(
        silent.request(json!({"op":"ping","id": 1})).await["op"],
        "pong"
    );
    let published = stack.publish("user:u7", "note.new", json!({})).await;
    assert_eq!(subscriber.recv().await["seq"], published);
}

/// The upgrade request a raw client writes, its token in the query.
fn upgrade_request(addr: &impl std::fmt::Display, token: &str) -> String {
    upgrade_with_query(addr, &format!("token={token}"))
}

fn upgrade_with_query(addr: &impl std::fmt::Display, query: &str) -> String {
    format!(
        "GET /v1/ws?{query} HTTP/1.1\r\nHost: {addr}\r\nUpgrade: websocket\r\n\
         Connection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\
         Sec-WebSocket-Version: 13\r\n\r\n"
    )
}

/// A client's text frame: masked, as every frame from a client must be.
fn masked_text(payload: &[u8]) -> Vec<u8> {
    assert!(payload.len() < 126);
    let mask = [0x37, 0xfa, 0x21, 0x3d];
    let mut frame = vec![0x81, 0x80 | payload.len() as u8];
    frame.extend(mask);
    frame.extend(payload.iter().enumerate().map(|(i, b)| b ^ mask[i % 4]));
    frame
}

/// The server's text frames in `received` (an HTTP response, then frames), as JSON.
fn text_frames(received: &[u8]) -> Vec<serde_json::Value> {
    match received.windows(4).position(|w| w == b"\r\n\r\n") {
        Some(end) => frames(&received[end + 4..]),
        None => Vec::new(),
    }
}

/// The server's text frames in `received` (frames only, whole ones), as JSON.
fn frames(received: &[u8]) -> Vec<serde_json::Value> {
    let (mut rest, mut frames) = (received, Vec::new());
    while rest.len() >= 2 {
        let (len, start) = match rest[1] {
            126 if rest.len() >= 4 => (u16::from_be_bytes([rest[2], rest[3]]) as usize, 4),
            126 => break,
            len => (len as usize, 2),
        };
        if rest.len() < start + len {
            break;
        }
        if rest[0] == 0x81 {
            frames.push(serde_json::from_slice(&rest[start..start + len]).unwrap());
        }
        rest = &rest[start + len..];
    }
    frames
}

#[tokio::test]
async fn the_server_pings_and_closes_a_silent_peer() {
    let stack = Stack::start().await;
    let edge = stack.edge(&[("SWITCHBOARD_HEARTBEAT_MS", "300")]);
    // A raw socket that upgrades and then never answers anything.
    let mut raw = std::net::TcpStream::connect(&edge.addr).unwrap();
    raw.write_all(upgrade_request(&edge.addr, &token("u1", 60, &[])).as_bytes())
        .unwrap();
    raw.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    let started = std::time::Instant::now();
    let mut received = Vec::new();
    let mut buf = [0u8; 4096];
    loop {
        match raw.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => received.extend_from_slice(&buf[..n]),
            Err(e) => panic!("the edge did not close a silent peer: {e}"),
        }
    }
    let elapsed = started.elapsed();
    // Pings (opcode 0x9) were sent before the close.
    assert!(
        received.windows(2).any(|w| w == [0x89, 0x00]),
        "no ping seen"
    );
    assert!(
        elapsed >= Duration::from_millis(600),
        "closed too early: {elapsed:?}"
    );
}

#[tokio::test]
async fn an_expired_session_gets_bye_token_expired_and_close_4401() {
    let stack = Stack::start().await;
    let edge = stack.edge(&[("SWITCHBOARD_JWT_LEEWAY_S", "0")]);
    let mut client = edge.connect_with(&token("u1", 2, &[])).await;
    let (frames, code) = client.until_closed().await;
    let bye = frames.last().unwrap();
    assert_eq!(bye["op"], "bye");
    assert_eq!(bye["code"], "token_expired");
    assert_eq!(code, Some(4401));
}

#[tokio::test]
async fn refresh_keeps_the_session_alive_and_must_keep_the_same_sub() {
    let stack = Stack::start().await;
    let edge = stack.edge(&[("SWITCHBOARD_JWT_LEEWAY_S", "0")]);
    let mut client = edge.connect_with(&token("u1", 2, &[])).await;
    let other = client
        .request(json!({"op":"refresh","token": token("u2", 60, &[])}))
        .await;
    assert_eq!(other["code"], "unauthorized");
    let bad = client.request(json!({"op":"refresh","token":"junk"})).await;
    assert_eq!(bad["code"], "unauthorized");
    let ok = client
        .request(json!({"op":"refresh","token": token("u1", 60, &[])}))
        .await;
    assert_eq!(ok["op"], "ok");
    // Past the first token's expiry the session still answers.
    tokio::time::sleep(Duration::from_secs(3)).await;
    let pong = client.request(json!({"op":"ping"})).await;
    assert_eq!(pong["op"], "pong");
}

#[tokio::test]
async fn frames_over_the_limit_are_too_large_and_over_the_hard_cap_close_1009() {
    let stack = Stack::start().await;
    let edge = stack.edge(&[]);
    let mut client = edge.connect("u1").await;
    let big = format!(
        r#"{{"op":"ping","id":1,"pad":"{}"}}"#,
        "x".repeat(70 * 1024)
    );
    client.send_text(big).await;
    let reply = client.recv().await;
    assert_eq!(reply["code"], "too_large");
    assert!(
        reply.get("id").is_none(),
        "too_large carries no id: {reply}"
    );
    // The connection is kept.
    assert_eq!(client.request(json!({"op":"ping"})).await["op"], "pong");
    let huge = format!(
        r#"{{"op":"ping","pad":"{}"}}"#,
        "x".repeat(1024 * 1024 + 10)
    );
    client.send_text(huge).await;
    let (_, code) = client.until_closed().await;
    assert_eq!(code, Some(1009));
    println!("oversized frame: 70 KiB -> too_large, socket kept; 1 MiB + 10 bytes -> close 1009");
}

#[tokio::test]
async fn malformed_and_binary_frames_are_bad_requests_and_the_tenth_ends_the_session() {
    let stack = Stack::start().await;
    let edge = stack.edge(&[]);
    let mut client = edge.connect("u1").await;
    let cases = [
        "not json",
        "[1,2,3]",
        r#"{"id":5}"#,
        r#"{"op":"teleport","id":6}"#,
        r#"{"op":"sub","id":7}"#,
        r#"{"op":"sub","id":8,"ch":"project:a.b"}"#,
        r#"{"op":"sub","id":9,"ch":"project:>"}"#,
        r#"{"op":"pub","id":10,"ch":"conversation:c1","type":"Message.New"}"#,
    ];
    for case in cases {
        client.send_text(case.to_string()).await;
        let reply = client.recv().await;
        assert_eq!(reply["op"], "err", "{case}");
        assert_eq!(reply["code"], "bad_request", "{case}: {reply}");
    }
    // The id is echoed when it could be read.
    client
        .send_text(r#"{"op":"teleport","id":42}"#.into())
        .await;
    assert_eq!(client.recv().await["id"], 42);
    client.send_binary(vec![1, 2, 3]).await;
    let (frames, code) = client.until_closed().await;
    assert_eq!(frames[0]["code"], "bad_request");
    assert_eq!(
        frames.last().unwrap(),
        &json!({"op":"bye","code":"protocol_error","reconnect":true})
    );
    assert_eq!(code, Some(4400));
    println!(
        "malformed frames: {} malformed text frames answered bad_request (id echoed when \
         readable), a binary frame the 10th bad one: bye protocol_error, close 4400",
        cases.len() + 1
    );
}

#[tokio::test]
async fn a_frame_flood_is_rate_limited_then_ended_with_4408() {
    let stack = Stack::start().await;
    let edge = stack.edge(&[]);
    let mut client = edge.connect("u1").await;
    // Far more than the burst, so that even a slow machine outruns the refill.
    for i in 0..300 {
        client
            .send_text(json!({"op":"ping","id": i}).to_string())
            .await;
    }
    let (frames, code) = client.until_closed().await;
    let pongs = frames.iter().filter(|f| f["op"] == "pong").count();
    let limited = frames
        .iter()
        .filter(|f| f["op"] == "err" && f["code"] == "rate_limited")
        .count();
    assert!(
        pongs >= 100,
        "a burst of 100 is allowed, got {pongs} pongs: {:?}",
        &frames[..frames.len().min(5)]
    );
    assert_eq!(limited, 10);
    assert_eq!(
        frames.last().unwrap(),
        &json!({"op":"bye","code":"rate_limited","reconnect":true})
    );
    assert_eq!(code, Some(4408));
    println!(
        "frame flood on one socket: 300 pings -> {pongs} pongs, {limited} rate_limited, bye \
         rate_limited, close 4408"
    );
}

#[tokio::test]
async fn the_101st_subscription_is_rate_limited_and_broadcast_does_not_count() {
    let stack = Stack::start().await;
    let edge = stack.edge(&[
        ("SWITCHBOARD_FRAME_BURST", "500"),
        ("SWITCHBOARD_FRAMES_PER_S", "500"),
    ]);
    let mut client = edge.connect("u1").await;
    for i in 0..100 {
        let ok = client.sub(json!({"ch": format!("domain:d{i}")})).await;
        assert_eq!(ok["op"], "ok", "{ok}");
    }
    let refused = client.sub(json!({"ch":"domain:one-more"})).await;
    assert_eq!(refused["code"], "rate_limited");
    // After an unsub there is room again.
    client.request(json!({"op":"unsub","ch":"domain:d0"})).await;
    assert_eq!(
        client.sub(json!({"ch":"domain:one-more"})).await["op"],
        "ok"
    );
    println!(
        "subscription cap: 100 subscriptions ok, the 101st rate_limited, room again after an unsub"
    );
}
