//! Notifications end to end, as users see them: a `switchboard-edge` process with two
//! WebSocket connections (two devices) of the same user, and a `switchboard-workers`
//! process running membership, notifications and the outbox relay. The edge keeps the
//! `presence` bucket, so "online" here is a real connection, not a key the test wrote.

mod support;

use std::time::{Duration, Instant};

use futures_util::{SinkExt, StreamExt};
use serde_json::{Value, json};
use switchboard_bus::PRESENCE_BUCKET;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;

use support::http::{Receiver, Request};
use support::{Setup, Worker, add_member, edge, event, eventually, publish, setup};

const WAIT: Duration = Duration::from_secs(20);

type Socket =
    tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>;

/// One device: a `switchboard.v1` connection.
struct Device(Socket);

impl Device {
    /// Connects as `user` once the edge accepts connections.
    async fn connect(addr: &str, user: &str) -> Device {
        let socket = eventually("the edge to accept a connection", || async {
            let mut request = format!("ws://{addr}/v1/ws").into_client_request().unwrap();
            let headers = request.headers_mut();
            headers.insert("Sec-WebSocket-Protocol", "switchboard.v1".parse().unwrap());
            headers.insert(
                "Authorization",
                format!("Bearer {}", edge::token(user, "user"))
                    .parse()
                    .unwrap(),
            );
            tokio_tungstenite::connect_async(request).await.ok()
        })
        .await
        .0;
        let mut device = Device(socket);
        assert_eq!(device.next().await["op"], "welcome");
        device
    }

    async fn close(mut self) {
        let _ = self.0.close(None).await;
    }

    async fn send(&mut self, frame: Value) {
        self.0
            .send(Message::Text(frame.to_string().into()))
            .await
            .unwrap();
    }

    async fn next(&mut self) -> Value {
        loop {
            let message = tokio::time::timeout(WAIT, self.0.next())
                .await
                .unwrap_or_else(|_| panic!("no frame within {WAIT:?}"))
                .expect("the socket is open")
                .unwrap();
            if let Message::Text(text) = message {
                return serde_json::from_str(&text).unwrap();
            }
        }
    }

    /// The next frame that satisfies `wanted`, skipping the others.
    async fn next_where(&mut self, what: &str, wanted: impl Fn(&Value) -> bool) -> Value {
        let waiting = tokio::time::timeout(WAIT, async {
            loop {
                let frame = self.next().await;
                if wanted(&frame) {
                    return frame;
                }
            }
        });
        waiting
            .await
            .unwrap_or_else(|_| panic!("no {what} within {WAIT:?}"))
    }

    async fn subscribe(&mut self, channel: &str) {
        self.send(json!({"op": "sub", "id": 1, "ch": channel}))
            .await;
        let reply = self
            .next_where(&format!("reply to sub {channel}"), |frame| frame["id"] == 1)
            .await;
        assert_eq!(reply["op"], "ok", "{reply}");
    }

    /// The `data` of the next `evt` of type `ty`.
    async fn event(&mut self, ty: &str) -> Value {
        let frame = self
            .next_where(ty, |frame| {
                frame["op"] == "evt" && frame["event"]["type"] == ty
            })
            .await;
        frame["event"]["data"].clone()
    }
}

/// The (user, medium) of each push or email the webhook received (a notification's
/// `created` copy is neither).
fn pushes(webhook: &Receiver) -> Vec<(String, String)> {
    webhook
        .requests()
        .iter()
        .map(Request::json)
        .filter(|body| body["event"] != "created")
        .map(|body| {
            let field = |name: &str| body[name].as_str().unwrap().to_string();
            (field("user"), field("medium"))
        })
        .collect()
}

/// `POST /v1/rpc/<method>` with `token`: (status, body).
async fn http_rpc(addr: &str, token: &str, method: &str, params: Value) -> (u16, Value) {
    let body = params.to_string();
    let mut socket = tokio::net::TcpStream::connect(addr).await.unwrap();
    let request = format!(
        "POST /v1/rpc/{method} HTTP/1.1\r\nHost: {addr}\r\nAuthorization: Bearer {token}\r\n\
         Content-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    );
    socket.write_all(request.as_bytes()).await.unwrap();
    let mut response = Vec::new();
    socket.read_to_end(&mut response).await.unwrap();
    let text = String::from_utf8(response).unwrap();
    let status = text.split(' ').nth(1).unwrap().parse().unwrap();
    let (_, body) = text.split_once("\r\n\r\n").unwrap();
    (status, serde_json::from_str(body).unwrap_or(Value::Null))
}

async fn online(setup: &Setup, user: &str) -> bool {
    !setup
        .store
        .scan_bucket(PRESENCE_BUCKET, &format!("{user}.>"))
        .await
        .unwrap()
        .is_empty()
}

#[tokio::test(flavor = "multi_thread")]
async fn two_devices_see_the_notification_and_the_read_and_only_the_offline_owner_is_pushed() {
    let setup = setup().await;
    let webhook = Receiver::start(|_| 204).await;
    let _worker = Worker::start(
        &setup,
        "membership,notifications,outbox",
        &[(
            "SWITCHBOARD_NOTIFY_WEBHOOK_URL",
            format!("{}/hook", webhook.base),
        )],
    );
    let (_edge, addr) = edge::start(&setup, &[]);
    for owner in ["u1", "u2"] {
        add_member(&setup, "project:p1", owner, "owner").await;
    }

    let mut phone = Device::connect(&addr, "u1").await;
    let mut laptop = Device::connect(&addr, "u1").await;
    phone.subscribe("user:u1:notifications").await;
    laptop.subscribe("user:u1").await;
    eventually("u1 to be online", || async {
        online(&setup, "u1").await.then_some(())
    })
    .await;

    let bid = event("bid.new", json!({"bidId": "bid_1", "amount": 5000}));
    let sent = Instant::now();
    publish(&setup, "project:p1", &bid).await;
    for device in [&mut phone, &mut laptop] {
        let notification = device.event("user.notification").await;
        assert_eq!(notification["category"], "bid");
        assert_eq!(notification["unread"], 1);
    }
    println!(
        "bid.new -> user.notification on two devices in {:?}",
        sent.elapsed()
    );

    // Read on the phone: both devices learn the new count.
    phone
        .send(
            json!({"op": "rpc", "id": 7, "method": "notifications.read", "params": {"all": true}}),
        )
        .await;
    // The reply and the `notification.read` event race each other to the phone.
    let (mut reply, mut phone_read) = (None, None);
    while reply.is_none() || phone_read.is_none() {
        let frame = phone
            .next_where(
                "the reply to notifications.read and notification.read",
                |f| f["id"] == 7 || f["event"]["type"] == "notification.read",
            )
            .await;
        if frame["id"] == 7 {
            reply = Some(frame);
        } else {
            phone_read = Some(frame["event"]["data"].clone());
        }
    }
    let reply = reply.unwrap();
    assert_eq!(reply["result"], json!({"unread": 0}), "{reply}");
    let laptop_read = laptop.event("notification.read").await;
    for read in [phone_read.unwrap(), laptop_read] {
        assert_eq!(read["unread"], 0);
        assert_eq!(read["ids"].as_array().unwrap().len(), 1);
    }
    let listed = {
        laptop
            .send(json!({"op": "rpc", "id": 8, "method": "notifications.list", "params": {}}))
            .await;
        laptop
            .next_where("reply to notifications.list", |frame| frame["id"] == 8)
            .await
    };
    assert_eq!(listed["result"]["unread"], 0);
    assert_eq!(listed["result"]["items"].as_array().unwrap().len(), 1);

    // u2 was offline: pushed. u1 was online on two devices: not pushed.
    eventually("the push for u2", || async {
        (!pushes(&webhook).is_empty()).then_some(())
    })
    .await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(pushes(&webhook), [("u2".to_string(), "push".to_string())]);

    // Both devices gone (a clean close deletes their presence entries): now u1 is pushed.
    phone.close().await;
    laptop.close().await;
    eventually("u1 to be offline", || async {
        (!online(&setup, "u1").await).then_some(())
    })
    .await;
    let later = event("bid.new", json!({"bidId": "bid_2", "amount": 6000}));
    publish(&setup, "project:p1", &later).await;
    eventually("pushes for u1 and u2", || async {
        (pushes(&webhook).len() == 3).then_some(())
    })
    .await;
    let mut all = pushes(&webhook);
    all.sort();
    assert_eq!(
        all,
        [
            ("u1".to_string(), "push".to_string()),
            ("u2".to_string(), "push".to_string()),
            ("u2".to_string(), "push".to_string()),
        ]
    );
}

/// Who may call what: a service-only method refuses user tokens on both transports and
/// serves backends; what the edge asks the workers internally (`int.>`) is out of every
/// `rpc`'s reach, whatever name the client sends.
#[tokio::test(flavor = "multi_thread")]
async fn service_only_methods_refuse_users_and_no_rpc_reaches_internal_methods() {
    let setup = setup().await;
    let _worker = Worker::start(&setup, "notifications,presence", &[]);
    let (_edge, addr) = edge::start(&setup, &[]);
    let mut device = Device::connect(&addr, "u1").await;
    let set = json!({"user": "u1", "email": "ann@example.com"});

    // A user, over the socket and over HTTP.
    // Retried while the worker has not subscribed yet (`not_found`).
    let deadline = Instant::now() + WAIT;
    let answer = loop {
        device
            .send(json!({"op": "rpc", "id": 7, "method": "contacts.set", "params": set}))
            .await;
        let reply = device.next_where("rpc reply", |f| f["id"] == 7).await;
        if reply["code"] != "not_found" || Instant::now() > deadline {
            break reply;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    assert_eq!(answer["code"], "forbidden", "{answer}");
    let (status, body) = http_rpc(
        &addr,
        &edge::token("u1", "user"),
        "contacts.set",
        set.clone(),
    )
    .await;
    assert_eq!(
        (status, body["code"].as_str()),
        (403, Some("forbidden")),
        "{body}"
    );
    let stored: Option<String> =
        sqlx::query_scalar("SELECT email FROM switchboard.contacts WHERE user_id = 'u1'")
            .fetch_optional(&setup.db)
            .await
            .unwrap();
    assert_eq!(stored, None, "a refused call changed nothing");

    // A backend service.
    let service = edge::token("billing", "service");
    let (status, body) = http_rpc(&addr, &service, "contacts.set", set).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(
        body["result"],
        json!({"user": "u1", "email": "ann@example.com"})
    );
    let (status, body) = http_rpc(&addr, &service, "contacts.get", json!({"user": "u1"})).await;
    assert_eq!(
        (status, &body["result"]["email"]),
        (200, &json!("ann@example.com"))
    );
    let (status, body) = http_rpc(
        &addr,
        &service,
        "contacts.set",
        json!({"user": "u1", "email": "not an address"}),
    )
    .await;
    assert_eq!(
        (status, body["code"].as_str()),
        (400, Some("bad_request")),
        "{body}"
    );

    // The presence check the edge makes is internal: no rpc name reaches it.
    for (id, method) in [(8, "presence.authorize"), (9, "int.presence.authorize")] {
        device
            .send(json!({"op": "rpc", "id": id, "method": method, "params": {"target": "u2"}}))
            .await;
        let reply = device.next_where("rpc reply", |f| f["id"] == id).await;
        assert_eq!(reply["code"], "not_found", "{method}: {reply}");
    }
    // ... while the edge itself still gets its answers there: u2 is private to u1 until
    // u2 opens up to everyone.
    device
        .send(json!({"op": "sub", "id": 10, "ch": "presence:u2"}))
        .await;
    let reply = device.next_where("sub reply", |f| f["id"] == 10).await;
    assert_eq!(reply["code"], "forbidden", "{reply}");
    let (status, body) = http_rpc(
        &addr,
        &edge::token("u2", "user"),
        "presence.privacy.set",
        json!({"visibility": "everyone"}),
    )
    .await;
    assert_eq!(status, 200, "{body}");
    device
        .send(json!({"op": "sub", "id": 11, "ch": "presence:u2"}))
        .await;
    let reply = device.next_where("sub reply", |f| f["id"] == 11).await;
    assert_eq!(reply["op"], "ok", "{reply}");
}
