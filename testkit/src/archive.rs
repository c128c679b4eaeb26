//! Waiting on the workers' archive, for tests that purge `EVENTS` and then read past it
//! (docs/protocol.md, sections 6 and 10.10).

use std::time::{Duration, Instant};

/// The epoch of the `EVENTS` stream as the edge and the archive name it: its creation
/// time in nanoseconds since the Unix epoch.
pub async fn events_epoch(client: &async_nats::Client) -> String {
    let js = async_nats::jetstream::new(client.clone());
    let mut stream = js.get_stream("EVENTS").await.expect("the EVENTS stream");
    let info = stream.info().await.expect("the EVENTS stream's info");
    info.created.unix_timestamp_nanos().to_string()
}

/// Waits (up to 30 s) until the archive has processed `ch` up to `seq`, asking it on
/// `int.archive.read` as a backend would (`through` of its answer).
pub async fn archived_through(client: &async_nats::Client, ch: &str, seq: u64) {
    let epoch = events_epoch(client).await;
    let params = serde_json::json!({"ch": ch, "epoch": epoch, "after": 0, "limit": 1});
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let mut headers = async_nats::HeaderMap::new();
        headers.insert("Rt-User", "operator");
        headers.insert("Rt-Role", "service");
        let through = client
            .request_with_headers("int.archive.read", headers, params.to_string().into())
            .await
            .ok()
            .and_then(|reply| serde_json::from_slice::<serde_json::Value>(&reply.payload).ok())
            .and_then(|reply| reply["result"]["through"].as_u64());
        if through.is_some_and(|through| through >= seq) {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "the archive is not through seq {seq} of {ch} (at {through:?})"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Removes the events of `subject` (e.g. `rt.conversation.c1`) from `EVENTS` but the
/// newest `keep` (all of them when `keep` is 0), as the stream's limits would.
pub async fn purge_events(client: &async_nats::Client, subject: &str, keep: u64) {
    let js = async_nats::jetstream::new(client.clone());
    let stream = js.get_stream("EVENTS").await.expect("the EVENTS stream");
    let purge = stream.purge().filter(subject);
    if keep == 0 {
        purge.await.expect("purge EVENTS");
    } else {
        purge.keep(keep).await.expect("purge EVENTS");
    }
}
