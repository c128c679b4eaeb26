//! What the workers tests share: real servers, worker processes, and ways to look at the
//! stream, the buckets and the database. Each test binary uses a part of it.
#![allow(dead_code)]

pub mod edge;
pub mod http;

use std::collections::BTreeSet;
use std::future::Future;
use std::process::{ExitStatus, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use async_nats::HeaderMap;
use async_nats::jetstream::{self, kv};
use serde_json::{Value, json};
use sqlx::PgPool;
pub use switchboard_bus::Role;
use switchboard_bus::definitions::Definitions;
use switchboard_bus::store::{Store, StoredEvent};
use switchboard_bus::{EVENTS_STREAM, MEMBERS_BUCKET, PRESENCE_BUCKET, Publisher};
use switchboard_schemas::{Actor, ChannelName, Envelope, EventType, RawJson};
use switchboard_testkit::{Nats, Postgres};
use tokio::io::{AsyncBufReadExt, BufReader};
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
    // Admin: tests set up streams and buckets and look at everything.
    let client = nats.connect(Role::Admin).await.unwrap();
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
pub struct Worker {
    child: Child,
}

impl Worker {
    pub fn start(setup: &Setup, jobs: &str, env: &[(&str, String)]) -> Worker {
        Worker {
            child: Worker::command(setup, jobs, env)
                .spawn()
                .expect("start switchboard-workers"),
        }
    }

    /// Like [`Worker::start`], and the test reads the worker's log as it is written. The
    /// lines are echoed to the test's output too, as an inherited stdout would show them.
    pub fn start_logged(setup: &Setup, jobs: &str, env: &[(&str, String)]) -> (Worker, Log) {
        let mut command = Worker::command(setup, jobs, env);
        command.env("NO_COLOR", "1").stdout(Stdio::piped());
        let mut child = command.spawn().expect("start switchboard-workers");
        let stdout = child.stdout.take().expect("stdout is piped");
        let log = Log::default();
        let lines = log.clone();
        tokio::spawn(async move {
            let mut reader = BufReader::new(stdout).lines();
            while let Ok(Some(line)) = reader.next_line().await {
                println!("{line}");
                lines.0.lock().unwrap().push(line);
            }
        });
        (Worker { child }, log)
    }

    /// The process id, while the worker runs.
    pub fn pid(&self) -> Option<u32> {
        self.child.id()
    }

    fn command(setup: &Setup, jobs: &str, env: &[(&str, String)]) -> Command {
        let mut command = Command::new(env!("CARGO_BIN_EXE_switchboard-workers"));
        command
            .envs(setup.nats.env(Role::Workers))
            .env("DATABASE_URL", &setup.database_url)
            .env("SWITCHBOARD_WORKERS", jobs)
            // Short, so what a killed worker had fetched comes back quickly.
            .env("SWITCHBOARD_WORKERS_ACK_WAIT_MS", "2000")
            .env("SWITCHBOARD_OUTBOX_POLL_MS", "200")
            .env("SWITCHBOARD_NOTIFY_POLL_MS", "200")
            .env("SWITCHBOARD_LOG", "switchboard_workers=debug,info")
            // Any free port: tests run many workers at once (pass another to probe it).
            .env("SWITCHBOARD_WORKERS_ADDR", "127.0.0.1:0")
            .stdin(Stdio::null())
            .kill_on_drop(true);
        for (name, value) in env {
            command.env(name, value);
        }
        command
    }

    /// Runs a worker that is expected to stop by itself (a refused setting): its exit
    /// status and everything it wrote to stdout and stderr.
    pub async fn refused(
        setup: &Setup,
        jobs: &str,
        env: &[(&str, String)],
    ) -> (ExitStatus, String) {
        let mut command = Worker::command(setup, jobs, env);
        command
            .env("NO_COLOR", "1")
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        let output = tokio::time::timeout(DEADLINE, command.output())
            .await
            .expect("the worker stops by itself")
            .unwrap();
        let text = format!(
            "{}{}",
            String::from_utf8_lossy(&output.stdout),
            String::from_utf8_lossy(&output.stderr)
        );
        (output.status, text)
    }

    /// Runs a worker with `env`, which it must refuse: it stops with a failure, its
    /// output says `reason` and never shows `secret` (a credential in the setting). What
    /// it said.
    pub async fn refuses(
        setup: &Setup,
        jobs: &str,
        env: &[(&str, String)],
        reason: &str,
        secret: &str,
    ) -> String {
        let (status, said) = Worker::refused(setup, jobs, env).await;
        assert!(!status.success(), "{env:?} is refused: {reason}");
        assert!(said.contains(reason), "{reason:?} in {said}");
        assert!(!said.contains(secret), "{secret:?} is not shown: {said}");
        said
    }

    /// Whether the process is still running (it has not exited or crashed).
    pub fn is_running(&mut self) -> bool {
        matches!(self.child.try_wait(), Ok(None))
    }

    /// SIGKILL, as a crash would.
    pub async fn kill(mut self) {
        self.child.kill().await.unwrap();
    }

    /// SIGTERM, then the exit status.
    pub async fn terminate(mut self) -> ExitStatus {
        self.signal_term();
        tokio::time::timeout(DEADLINE, self.child.wait())
            .await
            .expect("worker stops within the deadline after SIGTERM")
            .unwrap()
    }

    /// Waits for the process to exit by itself.
    pub async fn exit_status(mut self) -> ExitStatus {
        tokio::time::timeout(DEADLINE, self.child.wait())
            .await
            .expect("worker exits within the deadline")
            .unwrap()
    }

    fn signal_term(&self) {
        let pid = self.child.id().expect("worker still running").to_string();
        let sent = std::process::Command::new("kill")
            .args(["-TERM", &pid])
            .status()
            .unwrap();
        assert!(sent.success());
    }
}

/// What a worker started with [`Worker::start_logged`] has written to its log so far.
#[derive(Debug, Clone, Default)]
pub struct Log(Arc<Mutex<Vec<String>>>);

/// One "handling failed; retrying" line of a job's log: the message retried in place,
/// which attempt failed, and how long the job waits before the next.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Retry {
    pub seq: u64,
    pub attempt: u32,
    pub retry_in_ms: u64,
}

impl Log {
    /// How many lines so far contain `needle`.
    pub fn count(&self, needle: &str) -> usize {
        let lines = self.0.lock().unwrap();
        lines.iter().filter(|line| line.contains(needle)).count()
    }

    /// The stream sequences of the messages job `job` logged something about while
    /// handling a second (or later) delivery of them.
    pub fn redelivered(&self, job: &str) -> BTreeSet<u64> {
        let lines = self.0.lock().unwrap();
        lines
            .iter()
            .filter(|line| field(line, "job") == Some(job))
            .filter(|line| field(line, "delivered").and_then(|d| d.parse::<u64>().ok()) > Some(1))
            .filter_map(|line| field(line, "seq")?.parse().ok())
            .collect()
    }

    /// The retries job `job` has logged so far, in order.
    pub fn retries(&self, job: &str) -> Vec<Retry> {
        let lines = self.0.lock().unwrap();
        lines
            .iter()
            .filter_map(|line| {
                let (context, fields) = line.split_once("handling failed; retrying")?;
                let named = field(context, "job")? == job;
                named.then_some(())?;
                Some(Retry {
                    seq: field(fields, "seq")?.parse().ok()?,
                    attempt: field(fields, "attempt")?.parse().ok()?,
                    retry_in_ms: field(fields, "retry_in_ms")?.parse().ok()?,
                })
            })
            .collect()
    }

    /// Waits until job `job` has logged at least `count` retries of one message; those.
    pub async fn wait_for_retries(
        &self,
        job: &str,
        count: usize,
        deadline: Duration,
    ) -> Vec<Retry> {
        eventually_within(
            deadline,
            &format!("{job} to log {count} retries of one message"),
            || async {
                let retries = self.retries(job);
                let last = retries.last()?.seq;
                let same: Vec<Retry> = retries.into_iter().filter(|r| r.seq == last).collect();
                (same.len() >= count).then_some(same)
            },
        )
        .await
    }
}

/// The value of `key=value` in a log line's fields (quotes removed).
fn field<'a>(text: &'a str, key: &str) -> Option<&'a str> {
    let prefix = format!("{key}=");
    text.split(|c: char| c.is_whitespace() || c == '{' || c == '}')
        .find_map(|token| token.strip_prefix(&prefix))
        .map(|value| value.trim_matches('"'))
}

/// Asserts that `retries` of one message show a growing wait: attempts counted up, and
/// each delay at least the one before (equal jitter keeps them non-decreasing below
/// the cap); a one-line description of them for the test's summary.
pub fn assert_backoff(retries: &[Retry]) -> String {
    assert!(!retries.is_empty(), "no retry was logged");
    for retry in retries {
        assert!(retry.attempt >= 1, "attempts are counted: {retries:?}");
        assert!(retry.retry_in_ms >= 50, "no hot retry loop: {retries:?}");
    }
    for pair in retries.windows(2) {
        assert!(pair[1].attempt > pair[0].attempt, "{retries:?}");
        // From the 7th attempt the nominal wait is capped (5 s) and jitter may shorten it.
        if pair[1].attempt <= 6 {
            assert!(
                pair[1].retry_in_ms >= pair[0].retry_in_ms,
                "the wait between retries grows: {retries:?}"
            );
        }
    }
    let delays: Vec<String> = retries
        .iter()
        .map(|r| format!("{}ms", r.retry_in_ms))
        .collect();
    format!(
        "{} retries of seq {} with waits {}",
        retries.len(),
        retries[0].seq,
        delays.join(", ")
    )
}

/// Stops PostgreSQL under `worker` (started with [`Worker::start_logged`], `log` its log)
/// while `during` runs, and checks that `job` waits it out: two failed attempts on one
/// message with a growing wait, and the process still running. The first attempt fails
/// at once or when the pool gives up waiting for a connection (5 s), the second after
/// that again; longer than the ack wait (2 s), so JetStream redelivers what the worker
/// holds meanwhile. Then PostgreSQL starts again; the retries, in one line.
pub async fn without_postgres(
    setup: &mut Setup,
    worker: &mut Worker,
    log: &Log,
    job: &str,
    during: impl AsyncFnOnce(&Setup),
) -> String {
    setup.pg.stop();
    during(setup).await;
    let retries = log.wait_for_retries(job, 2, Duration::from_secs(25)).await;
    let backoff = assert_backoff(&retries);
    assert!(
        worker.is_running(),
        "the worker waits PostgreSQL out instead of exiting"
    );
    setup.pg.start_again().unwrap();
    backoff
}

/// The Python with the sinks' test peers (http-ece): scripts/lib.sh's
/// `ensure_sink_test_peers` installs them into the project's .venv and exports
/// `SWITCHBOARD_TEST_PYTHON`.
pub fn python() -> std::path::PathBuf {
    match std::env::var_os("SWITCHBOARD_TEST_PYTHON") {
        Some(path) => path.into(),
        None => std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../.venv/bin/python"),
    }
}

/// A Python test peer from workers/tests/peers, killed when dropped; the test reads the
/// JSON lines it prints.
pub struct Peer {
    child: Child,
    lines: tokio::sync::mpsc::UnboundedReceiver<Value>,
}

impl Peer {
    pub fn start(script: &str, args: &[&str]) -> Peer {
        let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("tests/peers")
            .join(script);
        let mut child = Command::new(python())
            .arg(path)
            .args(args)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .expect("start a Python test peer (scripts/lib.sh ensure_sink_test_peers)");
        let stdout = child.stdout.take().expect("stdout is piped");
        let (sender, lines) = tokio::sync::mpsc::unbounded_channel();
        tokio::spawn(async move {
            let mut reader = BufReader::new(stdout).lines();
            while let Ok(Some(line)) = reader.next_line().await {
                println!("peer: {line}");
                if let Ok(value) = serde_json::from_str(&line) {
                    let _ = sender.send(value);
                }
            }
        });
        Peer { child, lines }
    }

    /// The next line, failing the test after `DEADLINE`.
    pub async fn next(&mut self) -> Value {
        tokio::time::timeout(DEADLINE, self.lines.recv())
            .await
            .expect("the peer reports within the deadline")
            .expect("the peer is running")
    }

    /// The next line if one comes within `wait`.
    pub async fn next_within(&mut self, wait: Duration) -> Option<Value> {
        tokio::time::timeout(wait, self.lines.recv())
            .await
            .ok()
            .flatten()
    }

    pub fn is_running(&mut self) -> bool {
        matches!(self.child.try_wait(), Ok(None))
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

/// Publishes a `ty` event with `data` on `channel_name`, by user `user` when given (as
/// a client's message is); its stream sequence.
pub async fn publish_by(
    setup: &Setup,
    channel_name: &str,
    ty: &str,
    user: Option<&str>,
    data: Value,
) -> u64 {
    let mut event = event(ty, data);
    event.actor = user.map(|id| Actor {
        id: id.into(),
        kind: "user".into(),
    });
    publish(setup, channel_name, &event).await
}

/// `conversation.participant_added` for `user` on conversation `ch`.
pub async fn join(setup: &Setup, ch: &str, user: &str) -> u64 {
    let data = json!({"user": user});
    publish_by(setup, ch, "conversation.participant_added", None, data).await
}

/// `conversation.participant_removed` for `user` on conversation `ch`.
pub async fn leave(setup: &Setup, ch: &str, user: &str) -> u64 {
    let data = json!({"user": user});
    publish_by(setup, ch, "conversation.participant_removed", None, data).await
}

/// `message.new` by `user` on `ch` saying `text`.
pub async fn say(setup: &Setup, ch: &str, user: &str, text: &str) -> u64 {
    publish_by(setup, ch, "message.new", Some(user), json!({"text": text})).await
}

/// `message.edited` by `user` on `ch`: message `seq` now says `text`.
pub async fn edit(setup: &Setup, ch: &str, user: &str, seq: u64, text: &str) -> u64 {
    let data = json!({"seq": seq, "text": text});
    publish_by(setup, ch, "message.edited", Some(user), data).await
}

/// `message.deleted` by `user` on `ch`: message `seq` is gone.
pub async fn delete(setup: &Setup, ch: &str, user: &str, seq: u64) -> u64 {
    publish_by(
        setup,
        ch,
        "message.deleted",
        Some(user),
        json!({"seq": seq}),
    )
    .await
}

/// `bid.new` of `amount` by contractor `c9`: an event the shipped rules notify a
/// project's owners of.
pub fn bid(amount: u64) -> Envelope {
    let mut bid = event("bid.new", json!({"amount": amount}));
    bid.actor = Some(Actor {
        id: "c9".into(),
        kind: "contractor".into(),
    });
    bid
}

/// `member.added` for `user` as `role` on `channel`, as a backend publishes it.
pub async fn add_member(setup: &Setup, channel: &str, user: &str, role: &str) -> u64 {
    let added = event("member.added", json!({"user": user, "role": role}));
    publish(setup, channel, &added).await
}

/// `contacts.set` of `user`'s email `address`, as a backend's service token makes the
/// edge send it; the answer must echo it.
pub async fn set_contact(setup: &Setup, user: &str, address: &str) {
    let answer = request(
        setup,
        "svc.contacts.set",
        &[("Rt-User", "backend"), ("Rt-Role", "service")],
        json!({"user": user, "email": address}),
    )
    .await;
    assert_eq!(
        answer["result"],
        json!({"user": user, "email": address}),
        "{answer}"
    );
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

/// Calls `svc.<method>` as the edge does for a user's `rpc`, with `Rt-User: user`; the
/// reply as JSON. Retried while nobody serves the method yet.
pub async fn rpc(setup: &Setup, method: &str, user: Option<&str>, params: Value) -> Value {
    let headers: Vec<_> = user.map(|user| ("Rt-User", user)).into_iter().collect();
    request(setup, &format!("svc.{method}"), &headers, params).await
}

/// A request on `subject` with `headers` (e.g. `Rt-User`, `Rt-Role`, as the edge sets
/// them); the reply as JSON. Retried while nobody serves the subject yet.
pub async fn request(
    setup: &Setup,
    subject: &str,
    headers: &[(&str, &str)],
    params: Value,
) -> Value {
    eventually(&format!("an answer on {subject}"), || async {
        let mut map = HeaderMap::new();
        for (name, value) in headers {
            map.insert(*name, *value);
        }
        let reply = setup
            .client
            .request_with_headers(subject.to_string(), map, params.to_string().into())
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
