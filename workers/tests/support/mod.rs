//! What the workers tests share: real servers, worker processes, and ways to look at the
//! stream, the buckets and the database. Each test binary uses a part of it.
#![allow(dead_code)]

use std::future::Future;
use std::process::{ExitStatus, Stdio};
use std::time::{Duration, Instant};

use async_nats::HeaderMap;
use async_nats::jetstream::{self, kv};
use serde_json::Value;
use sqlx::PgPool;
use switchboard_bus::definitions::Definitions;
use switchboard_bus::store::{Store, StoredEvent};
use switchboard_bus::{EVENTS_STREAM, MEMBERS_BUCKET, PRESENCE_BUCKET, Publisher};
use switchboard_schemas::{ChannelName, Envelope, EventType, RawJson};
use switchboard_testkit::{Nats, Postgres};
use tokio::process::{Child, Command};

pub const DEADLINE: Duration = Duration::from_secs(20);

/// One test's servers and clients.
pub struct Setup {
    pub nats: Nats,
    pub pg: Postgres,
    pub database_url: String,
    pub client: async_nats::Client,
    pub js: jetstream::Context,
    pub db: PgPool,
    pub publisher: Publisher,
    pub store: Store,
    /// The KV bucket `members`.
    pub members: kv::Store,
    /// The KV bucket `presence`.
    pub presence: kv::Store,
}

pub async fn setup() -> Setup {
    let nats = Nats::start().unwrap();
    let pg = Postgres::start().unwrap();
    let database_url = pg.database().await.unwrap();
    let client = async_nats::ConnectOptions::new()
        .retry_on_initial_connect()
        .connect(nats.url())
        .await
        .unwrap();
    let js = jetstream::new(client.clone());
    Definitions::builtin().apply(&js).await.unwrap();
    let members = js.get_key_value(MEMBERS_BUCKET).await.unwrap();
    let presence = js.get_key_value(PRESENCE_BUCKET).await.unwrap();
    let db = PgPool::connect(&database_url).await.unwrap();
    Setup {
        nats,
        pg,
        database_url,
        publisher: Publisher::new(client.clone()),
        store: Store::new(client.clone()),
        client,
        js,
        db,
        members,
        presence,
    }
}

/// A `switchboard-workers` process running `jobs`, killed when dropped.
pub struct Worker(Child);

impl Worker {
    pub fn start(setup: &Setup, jobs: &str, env: &[(&str, String)]) -> Worker {
        let mut command = Command::new(env!("CARGO_BIN_EXE_switchboard-workers"));
        command
            .env("SWITCHBOARD_NATS_URL", setup.nats.url())
            .env("DATABASE_URL", &setup.database_url)
            .env("SWITCHBOARD_WORKERS", jobs)
            // Short, so what a killed worker had fetched comes back quickly.
            .env("SWITCHBOARD_WORKERS_ACK_WAIT_MS", "2000")
            .env("SWITCHBOARD_OUTBOX_POLL_MS", "200")
            .env("SWITCHBOARD_NOTIFY_POLL_MS", "200")
            .env("SWITCHBOARD_LOG", "switchboard_workers=debug,info")
            .stdin(Stdio::null())
            .kill_on_drop(true);
        for (name, value) in env {
            command.env(name, value);
        }
        Worker(command.spawn().expect("start switchboard-workers"))
    }

    /// SIGKILL, as a crash would.
    pub async fn kill(mut self) {
        self.0.kill().await.unwrap();
    }

    /// SIGTERM, then the exit status.
    pub async fn terminate(mut self) -> ExitStatus {
        self.signal_term();
        tokio::time::timeout(DEADLINE, self.0.wait())
            .await
            .expect("worker stops within the deadline after SIGTERM")
            .unwrap()
    }

    /// Waits for the process to exit by itself.
    pub async fn exit_status(mut self) -> ExitStatus {
        tokio::time::timeout(DEADLINE, self.0.wait())
            .await
            .expect("worker exits within the deadline")
            .unwrap()
    }

    fn signal_term(&self) {
        let pid = self.0.id().expect("worker still running").to_string();
        let sent = std::process::Command::new("kill")
            .args(["-TERM", &pid])
            .status()
            .unwrap();
        assert!(sent.success());
    }
}

/// Polls `check` until it returns `Some`, failing the test after `deadline`.
pub async fn eventually_within<T, F, Fut>(deadline: Duration, what: &str, mut check: F) -> T
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Option<T>>,
{
    let start = Instant::now();
    loop {
        if let Some(value) = check().await {
            return value;
        }
        assert!(start.elapsed() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

pub async fn eventually<T, F, Fut>(what: &str, check: F) -> T
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Option<T>>,
{
    eventually_within(DEADLINE, what, check).await
}

/// The next number of a deterministic pseudo-random run (a 64-bit LCG) kept in `state`.
pub fn next_pick(state: &mut u64) -> usize {
    *state = state
        .wrapping_mul(6_364_136_223_846_793_005)
        .wrapping_add(1_442_695_040_888_963_407);
    (*state >> 33) as usize
}

pub fn event(ty: &str, data: Value) -> Envelope {
    Envelope::new(
        EventType::parse(ty).unwrap(),
        RawJson::from_string(data.to_string()).unwrap(),
    )
}

pub fn channel(text: &str) -> ChannelName {
    ChannelName::parse(text).unwrap()
}

/// Publishes an event (postcard) and returns its stream sequence; retried while NATS
/// reconnects (the event id makes a retry store it once).
pub async fn publish(setup: &Setup, channel_name: &str, envelope: &Envelope) -> u64 {
    let channel = channel(channel_name);
    eventually("publish to succeed", || async {
        setup.publisher.publish(&channel, envelope).await.ok()
    })
    .await
    .seq
}

/// Every message stored on subjects matching `filter`, in stream order.
pub async fn stored_events(setup: &Setup, filter: &str) -> Vec<StoredEvent> {
    let mut all = Vec::new();
    let mut next = 1;
    loop {
        let batch = setup.store.forward(filter, next, 1000).await.unwrap();
        let Some(last) = batch.last() else {
            return all;
        };
        next = last.seq + 1;
        all.extend(batch);
    }
}

/// Every event stored on subjects matching `filter`, in stream order.
pub async fn stored(setup: &Setup, filter: &str) -> Vec<(u64, String, Envelope)> {
    stored_events(setup, filter)
        .await
        .into_iter()
        .map(|event| {
            let envelope = event.envelope().unwrap();
            (event.seq, event.subject, envelope)
        })
        .collect()
}

/// How many messages the EVENTS stream holds.
pub async fn stream_messages(setup: &Setup) -> u64 {
    let mut stream = setup.js.get_stream(EVENTS_STREAM).await.unwrap();
    stream.info().await.unwrap().state.messages
}

/// Waits until every outbox row is sent (or has failed), failing the test after
/// `deadline`.
pub async fn wait_until_sent(setup: &Setup, deadline: Duration) {
    eventually_within(deadline, "every outbox row to be sent", || async {
        let pending: i64 = sqlx::query_scalar(
            "SELECT count(*) FROM switchboard.outbox WHERE sent_at IS NULL AND failed_at IS NULL",
        )
        .fetch_one(&setup.db)
        .await
        .unwrap();
        (pending == 0).then_some(())
    })
    .await;
}

/// Waits until consumer `name` has acked everything stored so far.
pub async fn wait_until_caught_up(setup: &Setup, name: &str) {
    eventually(&format!("consumer {name} to catch up"), || async {
        let mut stream = setup.js.get_stream(EVENTS_STREAM).await.ok()?;
        let last = stream.info().await.ok()?.state.last_sequence;
        let info = stream.consumer_info(name).await.ok()?;
        (info.ack_floor.stream_sequence >= last && info.num_ack_pending == 0).then_some(())
    })
    .await;
}

/// Calls `svc.<method>` as the edge does, with `Rt-User: user`; the reply as JSON.
/// Retried while nobody serves the method yet.
pub async fn rpc(setup: &Setup, method: &str, user: Option<&str>, params: Value) -> Value {
    eventually(&format!("an answer to {method}"), || async {
        let mut headers = HeaderMap::new();
        if let Some(user) = user {
            headers.insert("Rt-User", user);
        }
        let reply = setup
            .client
            .request_with_headers(format!("svc.{method}"), headers, params.to_string().into())
            .await
            .ok()?;
        Some(serde_json::from_slice(&reply.payload).unwrap())
    })
    .await
}

/// The `result` of a successful call.
pub async fn call(setup: &Setup, method: &str, user: &str, params: Value) -> Value {
    let reply = rpc(setup, method, Some(user), params).await;
    match reply.get("result") {
        Some(result) => result.clone(),
        None => panic!("{method} failed: {reply}"),
    }
}
