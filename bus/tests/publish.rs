//! The publishing API against a real nats-server with the project's definitions applied.

use std::time::Duration;

use async_nats::jetstream;
use futures_util::StreamExt;
use switchboard_bus::definitions::Definitions;
use switchboard_bus::{Encoding, Publisher, headers};
use switchboard_schemas::{ChannelName, Envelope, EventType, RawJson};
use switchboard_testkit::Nats;

async fn stack() -> (Nats, async_nats::Client, jetstream::Context) {
    let nats = Nats::start().unwrap();
    let client = nats.connect(switchboard_bus::Role::Admin).await.unwrap();
    let js = jetstream::new(client.clone());
    Definitions::builtin().apply(&js).await.unwrap();
    (nats, client, js)
}

fn bid() -> Envelope {
    let mut event = Envelope::new(
        EventType::parse("bid.new").unwrap(),
        RawJson::from_slice(br#"{"bidId":"bid_101112","amount":5000}"#).unwrap(),
    );
    event.source = Some("bidding-service".into());
    event
}

#[tokio::test]
async fn published_event_is_stored_once_and_republished_live() {
    let (_nats, client, js) = stack().await;
    let publisher = Publisher::new(client.clone());
    let channel = ChannelName::parse("project:p1").unwrap();
    let mut live = client.subscribe("live.project.p1").await.unwrap();
    client.flush().await.unwrap();

    let event = bid();
    let first = publisher.publish(&channel, &event).await.unwrap();
    assert!(!first.duplicate);

    // Republished on the live subject, with the stream sequence and the event headers.
    let message = tokio::time::timeout(Duration::from_secs(5), live.next())
        .await
        .expect("republished within 5 s")
        .unwrap();
    let h = message.headers.as_ref().unwrap();
    assert_eq!(
        h.get(headers::NATS_SEQUENCE).unwrap().as_str(),
        first.seq.to_string()
    );
    assert_eq!(h.get(headers::RT_TYPE).unwrap().as_str(), "bid.new");
    assert_eq!(h.get(headers::MSG_ID).unwrap().as_str(), event.id.as_str());
    assert_eq!(Envelope::from_postcard(&message.payload).unwrap(), event);

    // The same event id again: the original sequence, stored once.
    let second = publisher.publish(&channel, &event).await.unwrap();
    assert_eq!(second.seq, first.seq);
    assert!(second.duplicate);
    let mut stream = js.get_stream("EVENTS").await.unwrap();
    let info = stream.info().await.unwrap();
    assert_eq!(info.state.messages, 1);
    let stored = stream.get_raw_message(first.seq).await.unwrap();
    assert_eq!(stored.subject.as_str(), "rt.project.p1");
}

#[tokio::test]
async fn json_form_carries_its_content_type_and_reads_back() {
    let (_nats, client, js) = stack().await;
    let publisher = Publisher::new(client);
    let channel = ChannelName::parse("project:p2").unwrap();
    let event = bid();
    let published = publisher
        .publish_as(&channel, &event, Encoding::Json)
        .await
        .unwrap();
    let stream = js.get_stream("EVENTS").await.unwrap();
    let stored = stream.get_raw_message(published.seq).await.unwrap();
    assert_eq!(
        stored.headers.get(headers::CONTENT_TYPE).unwrap().as_str(),
        headers::JSON
    );
    assert_eq!(Envelope::from_json(&stored.payload).unwrap(), event);
}

#[tokio::test]
async fn an_alias_channel_publishes_to_its_base_subject() {
    let (_nats, client, js) = stack().await;
    let publisher = Publisher::new(client);
    let alias = ChannelName::parse("user:u1:notifications").unwrap();
    let published = publisher.publish(&alias, &bid()).await.unwrap();
    let stream = js.get_stream("EVENTS").await.unwrap();
    let stored = stream.get_raw_message(published.seq).await.unwrap();
    assert_eq!(stored.subject.as_str(), "rt.user.u1");
}

/// `Store::heads` answers the newest seq of many channels in one request, 0 for a
/// channel with nothing stored, in the order asked.
#[tokio::test]
async fn heads_of_many_channels_come_in_one_request() {
    let (_nats, client, _js) = stack().await;
    let publisher = Publisher::new(client.clone());
    let p1 = ChannelName::parse("project:p1").unwrap();
    let p2 = ChannelName::parse("project:p2").unwrap();
    let mut newest = Vec::new();
    for channel in [&p1, &p2, &p1] {
        newest.push(publisher.publish(channel, &bid()).await.unwrap().seq);
    }
    let store = switchboard_bus::store::Store::new(client.clone());
    let heads = store
        .heads(&[
            "rt.project.p2".to_string(),
            "rt.project.empty".to_string(),
            "rt.project.p1".to_string(),
        ])
        .await
        .unwrap();
    assert_eq!(heads, [newest[1], 0, newest[2]]);
    assert!(store.heads(&[]).await.unwrap().is_empty());
}
