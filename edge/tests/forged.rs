//! A JetStream push consumer may deliver to any subject, even one its creator may not
//! publish on (nats-server checks no deliver subject; docs/operations.md, "NATS roles").
//! The edge drops such copies on channel subjects: a client sees only what was stored on
//! its channel, or signalled there, by someone allowed to.

mod support;

use async_nats::jetstream::consumer::push;
use async_nats::jetstream::message::PublishMessage;
use serde_json::json;
use support::*;
use switchboard_schemas::{Envelope, EventType, RawJson};

#[tokio::test]
async fn a_consumer_delivering_onto_a_channel_subject_reaches_no_client() {
    let stack = Stack::start().await;
    let edge = stack.edge(&[]);
    let mut client = edge.connect("u1").await;
    client.sub(json!({"ch":"domain:d1"})).await;
    client.sub(json!({"ch":"user:u1"})).await;

    // A backend (service role) stores a message shaped like a republished event or a
    // signal on a channel it may write, then has a consumer copy it onto the live and
    // signal subjects of channels the client holds.
    let service = stack.nats.connect(Role::Service).await.unwrap();
    let js = async_nats::jetstream::new(service.clone());
    let envelope = Envelope::new(
        EventType::parse("forged.event").unwrap(),
        RawJson::encode(&json!({"forged": true})).unwrap(),
    );
    let signal = json!({"from": "u2", "type": "typing", "data": {"forged": true}});
    for (n, target) in [
        "live.domain.d1",
        "sig.domain.d1",
        "live.user.u1",
        "sig.user.u1",
    ]
    .into_iter()
    .enumerate()
    {
        let source = format!("rt.domain.forged{n}");
        let (payload, mut headers) = if target.starts_with("live.") {
            (envelope.to_json(), async_nats::HeaderMap::new())
        } else {
            (
                signal.to_string().into_bytes(),
                async_nats::HeaderMap::new(),
            )
        };
        headers.insert("Nats-Sequence", "1000000");
        headers.insert("Nats-Last-Sequence", "0");
        headers.insert("Rt-Type", "forged.event");
        headers.insert("Content-Type", "application/json");
        js.create_consumer_on_stream(
            push::Config {
                deliver_subject: target.to_string(),
                filter_subject: source.clone(),
                ..Default::default()
            },
            "EVENTS",
        )
        .await
        .unwrap();
        js.send_publish(
            source,
            PublishMessage::build()
                .payload(payload.into())
                .headers(headers),
        )
        .await
        .unwrap()
        .await
        .unwrap();
    }
    // What is really published on the channels still arrives, and nothing else did.
    let real = stack.publish("domain:d1", "real.event", json!({})).await;
    let event = client.recv_where(|f| f["op"] == "evt").await;
    assert_eq!(event["seq"], real, "{event}");
    assert_eq!(event["event"]["type"], "real.event");
    assert!(client.no_more_events().await.is_none());
    let forged = client.try_recv(std::time::Duration::from_millis(500)).await;
    assert!(forged.is_none(), "{forged:?}");
}
