//! One subscription lifecycle for every transport (docs/protocol.md, sections 6 and
//! 9.4): the socket, SSE and long polling each start a presence watch the presence
//! service allows, lose it when the watched user's privacy changes (`int.privacy.<user>`),
//! and the socket loses one its refreshed token no longer grants. The presence service is
//! played by the test, answering `int.presence.authorize` from a switch it flips.

mod support;

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use serde_json::{Value, json};
use support::*;

/// Serves `int.presence.authorize`: `allowed` decides every watch of `presence:u2`.
async fn privacy_service(stack: &Stack) -> Arc<AtomicBool> {
    let allowed = Arc::new(AtomicBool::new(true));
    let switch = allowed.clone();
    stack
        .serve(
            "int.presence.authorize",
            "int.presence.authorize",
            move |_, _, _| Some(json!({"result": {"allowed": switch.load(Ordering::SeqCst)}})),
        )
        .await;
    allowed
}

/// Tells the edges that u2's privacy changed, as the presence worker does.
async fn privacy_changed(stack: &Stack) {
    stack
        .client
        .publish(
            "int.privacy.u2",
            r#"{"user":"u2","visibility":"nobody"}"#.into(),
        )
        .await
        .unwrap();
    stack.client.flush().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_privacy_change_revokes_watches_on_the_socket_sse_and_polls() {
    let stack = Stack::start().await;
    let allowed = privacy_service(&stack).await;
    let edge = stack.edge(&[]);
    let bearer = format!("Bearer {}", token("u1", 600, &[]));

    let mut socket = edge.connect("u1").await;
    assert_eq!(socket.sub(json!({"ch":"presence:u2"})).await["op"], "ok");
    let mut sse =
        SseStream::open(&edge.addr, "ch=presence:u2", &[("Authorization", &bearer)]).await;
    assert_eq!(sse.next().await.0, "ok");
    let (status, body) = http_as(&edge.addr, "GET", "/v1/poll?ch=presence:u2", &bearer, "").await;
    assert_eq!(status, 200, "{body}");
    let cursor = serde_json::from_str::<Value>(&body).unwrap()["cursor"]
        .as_str()
        .unwrap()
        .to_string();
    let addr = edge.addr.clone();
    let poll_bearer = bearer.clone();
    let waiting = tokio::spawn(async move {
        let path = format!("/v1/poll?ch=presence:u2&cursor={cursor}&wait=20");
        let started = Instant::now();
        let (status, _) = http_as(&addr, "GET", &path, &poll_bearer, "").await;
        (status, started.elapsed())
    });
    tokio::time::sleep(Duration::from_millis(300)).await;

    allowed.store(false, Ordering::SeqCst);
    let changed = Instant::now();
    privacy_changed(&stack).await;
    let revoked = socket.recv_where(|f| f["op"] == "unsubbed").await;
    assert_eq!(
        revoked,
        json!({"op":"unsubbed","ch":"presence:u2","code":"revoked"})
    );
    let (name, _, data) = sse.next().await;
    assert_eq!(name, "unsubbed");
    assert_eq!(
        serde_json::from_str::<Value>(&data).unwrap()["code"],
        "revoked"
    );
    let (status, waited) = waiting.await.unwrap();
    assert_eq!(status, 200);
    assert!(
        waited < Duration::from_secs(5),
        "the poll waited {waited:?}"
    );
    assert!(
        changed.elapsed() < Duration::from_secs(2),
        "{:?}",
        changed.elapsed()
    );
    // From now on each transport refuses the watch.
    assert_eq!(
        socket.sub(json!({"ch":"presence:u2"})).await["code"],
        "forbidden"
    );
    let (status, _) = http_as(&edge.addr, "GET", "/v1/poll?ch=presence:u2", &bearer, "").await;
    assert_eq!(status, 403);
}

#[tokio::test]
async fn a_refresh_that_drops_a_grant_asks_the_presence_service_again() {
    let stack = Stack::start().await;
    let allowed = privacy_service(&stack).await;
    allowed.store(false, Ordering::SeqCst);
    let edge = stack.edge(&[]);
    // The token's grant lets u1 watch u2 whatever u2's privacy says...
    let mut client = edge
        .connect_with(&token("u1", 600, &["presence:u2", "project:p1"]))
        .await;
    assert_eq!(client.sub(json!({"ch":"presence:u2"})).await["op"], "ok");
    assert_eq!(client.sub(json!({"ch":"project:p1"})).await["op"], "ok");
    // ... until a refreshed token without it: the privacy service says no, and the rules
    // refuse project:p1 to a non-member.
    let refreshed = client
        .request(json!({"op":"refresh","token": token("u1", 600, &[])}))
        .await;
    assert_eq!(refreshed["op"], "ok");
    let mut revoked = Vec::new();
    for _ in 0..2 {
        let frame = client.recv_where(|f| f["op"] == "unsubbed").await;
        revoked.push(frame["ch"].as_str().unwrap().to_string());
    }
    revoked.sort();
    assert_eq!(revoked, ["presence:u2", "project:p1"]);

    // A refresh the service allows keeps the watch.
    allowed.store(true, Ordering::SeqCst);
    assert_eq!(client.sub(json!({"ch":"presence:u2"})).await["op"], "ok");
    let refreshed = client
        .request(json!({"op":"refresh","token": token("u1", 600, &[])}))
        .await;
    assert_eq!(refreshed["op"], "ok");
    assert!(
        client.try_recv(Duration::from_millis(500)).await.is_none(),
        "nothing revoked"
    );
}
