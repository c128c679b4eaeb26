//! Chaos: real processes killed with SIGKILL while events flow, and what clients must
//! still see afterwards.
//!
//! - An edge killed during fan-out: its clients reconnect to another edge, resume from
//!   the last seq they saw, and see every event once, in order.
//! - nats-server killed and restarted under a running publisher: the publisher retries
//!   each event with the same `Nats-Msg-Id` until JetStream acknowledges it, the edge
//!   reconnects by itself, and subscribed clients see every acknowledged event once.
//! - One node of a three-node cluster with R3 streams (the `EVENTS` leader, and the node
//!   the edge is connected to) killed and brought back under load: publishing and
//!   delivery go on, and the edge and the workers recover by themselves.
//!
//! Every test waits on conditions with deadlines, never on fixed sleeps, and prints what
//! it checked (`cargo nextest run --no-capture` shows it; nextest always does on failure).

mod support;

use std::collections::{HashMap, HashSet};
use std::time::{Duration, Instant};

use async_nats::jetstream;
use serde_json::{Value, json};
use support::*;
use switchboard_bus::definitions::Definitions;
use switchboard_bus::{EVENTS_STREAM, NatsOptions, Published, Publisher};
use switchboard_schemas::{ChannelName, Envelope, EventType, RawJson};
use switchboard_testkit::{NatsCluster, Postgres, Workers};
use tokio::sync::watch;
use tokio::task::JoinHandle;
use tokio::time::MissedTickBehavior;

/// The longest any one wait of these tests may take before it fails.
const DEADLINE: Duration = Duration::from_secs(20);
/// How long one publish attempt waits for its acknowledgement before it is retried.
const ATTEMPT: Duration = Duration::from_secs(1);
/// Pause between publish attempts.
const RETRY_PAUSE: Duration = Duration::from_millis(50);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_edge_killed_during_fan_out_loses_nothing_for_clients_resuming_elsewhere() {
    const CHANNEL: &str = "domain:fanout";
    const EVENTS: usize = 600;
    let stack = Stack::start().await;
    let mut edge_a = stack.edge(&[]);
    let edge_b = stack.edge(&[]);
    let (last_tx, last) = watch::channel(None);
    let mut followers = Vec::new();
    for user in ["u1", "u2", "u3"] {
        let follower = Follower::join(&edge_a, user, CHANNEL, Some(edge_b.ws_url())).await;
        followers.push(follower.spawn(last.clone()));
    }

    let (publisher, progress) = feed_a_third(stack.client.clone(), CHANNEL, EVENTS).await;
    edge_a.process.kill();
    let killed_after = progress.borrow().acked;
    let feed = publisher.await.expect("the publisher finishes");
    last_tx.send_replace(Some(feed.last_seq()));
    let seen = gather(followers).await;

    for client in &seen {
        assert_eq!(
            client.resumes, 1,
            "{} resumed {} times",
            client.user, client.resumes
        );
    }
    let total = check_delivery(&seen, &feed);
    println!(
        "edge kill during fan-out: {} clients, {} events sent (edge A SIGKILLed after {killed_after} \
         were acknowledged), {} received, {} missing, {} duplicated; each client resumed once on \
         edge B with since {{seq, epoch}}",
        seen.len(),
        feed.acked.len(),
        total.received,
        total.missing,
        total.duplicated,
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_nats_restart_under_a_running_publisher_loses_no_acknowledged_event() {
    const CHANNEL: &str = "domain:restart";
    const EVENTS: usize = 300;
    let mut stack = Stack::start().await;
    let edge = stack.edge(&[]);
    let (last_tx, last) = watch::channel(None);
    let mut followers = Vec::new();
    for user in ["u1", "u2", "u3"] {
        // No edge to resume on: the socket must outlive the NATS restart.
        let follower = Follower::join(&edge, user, CHANNEL, None).await;
        followers.push(follower.spawn(last.clone()));
    }

    let backend = backend(stack.nats.options(Role::Service)).await;
    let (publisher, mut progress) = feed_a_third(backend, CHANNEL, EVENTS).await;
    let failed_before = progress.borrow().failed;
    tokio::task::block_in_place(|| stack.nats.stop());
    let acked_before_kill = progress.borrow().acked;
    // Down until the publisher has felt it: at least one attempt went unacknowledged.
    wait_for(
        &mut progress,
        "a publish attempt failing while NATS is down",
        |p| p.failed > failed_before,
    )
    .await;
    tokio::task::block_in_place(|| stack.nats.start_again()).expect("restart nats-server");
    let feed = publisher.await.expect("the publisher finishes");
    last_tx.send_replace(Some(feed.last_seq()));
    let seen = gather(followers).await;

    let total = check_delivery(&seen, &feed);
    let reconnects = edge
        .metric("switchboard_edge_nats_reconnects_total")
        .unwrap_or(0.0);
    assert!(reconnects >= 1.0, "the edge never reconnected to NATS");
    let repaired = edge
        .metric("switchboard_edge_repaired_events_total")
        .unwrap_or(0.0);
    println!(
        "nats-server SIGKILL+restart under load (file store, killed after {acked_before_kill} \
         acks): {} events sent in {} attempts ({} unacknowledged and retried with the same \
         Nats-Msg-Id, {} retries answered duplicate), {} acked, {} clients, {} received, {} \
         missing, {} duplicated; the edge reconnected to NATS by itself ({reconnects} time(s)), \
         repaired {repaired} event(s) from the stream, and no client socket dropped",
        EVENTS,
        feed.attempts,
        feed.failed,
        feed.duplicates(),
        feed.acked.len(),
        seen.len(),
        total.received,
        total.missing,
        total.duplicated,
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cluster_node_killed_under_load_loses_no_acknowledged_event() {
    const CHANNEL: &str = "domain:cluster";
    const EVENTS: usize = 400;
    const EDGE_ID: &str = "chaos-edge";
    let mut cluster = tokio::task::block_in_place(NatsCluster::start).expect("start the cluster");
    let client = cluster
        .connect(Role::Admin)
        .await
        .expect("connect to the cluster");
    let js = jetstream::new(client.clone());
    eventually("the R3 streams and buckets to be created", || async {
        Definitions::builtin()
            .with_replicas(3)
            .apply(&js)
            .await
            .ok()
    })
    .await;
    let mut events_stream = js.get_stream(EVENTS_STREAM).await.unwrap();
    assert_eq!(events_stream.info().await.unwrap().config.num_replicas, 3);

    let pg = tokio::task::block_in_place(Postgres::start).expect("start PostgreSQL");
    let database_url = pg.database().await.unwrap();
    let _workers = Workers::new(cluster.env(Role::Workers), "membership")
        .env("SWITCHBOARD_WORKERS_ACK_WAIT_MS", "2000")
        .start(&database_url);
    let edge = Edge::start(
        &cluster.env(Role::Edge),
        &[("SWITCHBOARD_EDGE_ID", EDGE_ID)],
    );
    let publisher = Publisher::from_context(
        jetstream::ContextBuilder::new()
            .timeout(ATTEMPT)
            .build(client.clone()),
    );
    let before = membership_takes_effect(&publisher, &edge, "project:before", "m1").await;

    // The harshest single fault: the node that leads EVENTS is also the edge's own node.
    let edge_connection = format!("switchboard-edge {EDGE_ID}");
    let victim = node_serving(&cluster, &edge_connection).expect("the edge's NATS node");
    let workers_node = node_serving(&cluster, "switchboard-workers");
    move_leader(&client, &js, cluster.server_name(victim)).await;

    let (last_tx, last) = watch::channel(None);
    let mut followers = Vec::new();
    for user in ["u1", "u2", "u3"] {
        let follower = Follower::join(&edge, user, CHANNEL, None).await;
        followers.push(follower.spawn(last.clone()));
    }
    let backend = backend(cluster.options(Role::Service)).await;
    let (feeder, mut progress) = feed_a_third(backend, CHANNEL, EVENTS).await;
    tokio::task::block_in_place(|| cluster.stop_node(victim));
    let killed_after = progress.borrow().acked;
    let killed_at = Instant::now();
    // Publishing goes on with two nodes of three.
    wait_for(&mut progress, "publishing to go on without the node", |p| {
        p.acked >= killed_after + EVENTS / 3
    })
    .await;
    let new_leader = events_leader(&js).await.unwrap_or_default();
    let down_for = killed_at.elapsed();
    tokio::task::block_in_place(|| cluster.start_node(victim)).expect("restart the node");
    let feed = feeder.await.expect("the publisher finishes");
    last_tx.send_replace(Some(feed.last_seq()));
    let seen = gather(followers).await;
    let total = check_delivery(&seen, &feed);
    tokio::task::block_in_place(|| cluster.wait_healthy(victim, DEADLINE))
        .expect("the restarted node catches up");

    // The workers and the edge's membership watch came through: a membership published
    // now still takes effect.
    let after = membership_takes_effect(&publisher, &edge, "project:after", "m2").await;
    let reconnects = edge
        .metric("switchboard_edge_nats_reconnects_total")
        .unwrap_or(0.0);
    assert!(reconnects >= 1.0, "the edge never reconnected to NATS");
    let repaired = edge
        .metric("switchboard_edge_repaired_events_total")
        .unwrap_or(0.0);
    println!(
        "3-node cluster, R3 streams, node {} (EVENTS leader and the edge's node{}) SIGKILLed after \
         {killed_after} acks, restarted after {down_for:?}, new leader {new_leader}: {} events sent in {} \
         attempts ({} retried, {} answered duplicate), {} acked, {} clients, {} received, {} \
         missing, {} duplicated; edge reconnected {reconnects} time(s), repaired {repaired} \
         event(s) from the stream; member.added took effect through the membership worker in \
         {before:?} before the fault and {after:?} after it",
        cluster.server_name(victim),
        if workers_node == Some(victim) {
            " and the workers'"
        } else {
            ""
        },
        EVENTS,
        feed.attempts,
        feed.failed,
        feed.duplicates(),
        feed.acked.len(),
        seen.len(),
        total.received,
        total.missing,
        total.duplicated,
    );
}

// --- publishing -----------------------------------------------------------------------

/// How far a publisher has got.
#[derive(Debug, Clone, Copy, Default)]
struct Progress {
    acked: usize,
    /// Attempts that got no acknowledgement (timed out, refused, no responders).
    failed: usize,
}

/// One acknowledged event.
#[derive(Debug, Clone)]
struct Acked {
    id: String,
    seq: u64,
    /// JetStream had stored this event id already: an earlier attempt reached it.
    duplicate: bool,
}

/// What a publisher did.
#[derive(Debug, Default)]
struct Feed {
    acked: Vec<Acked>,
    attempts: usize,
    failed: usize,
}

impl Feed {
    fn duplicates(&self) -> usize {
        self.acked.iter().filter(|a| a.duplicate).count()
    }

    fn last_seq(&self) -> u64 {
        self.acked.last().map_or(0, |a| a.seq)
    }
}

/// A backend's connection as the `service` role, retrying while NATS is down (even
/// at first), as a production publisher would.
async fn backend(service: NatsOptions) -> async_nats::Client {
    service
        .connect_options(Role::Service, "backend")
        .await
        .unwrap()
        .retry_on_initial_connect()
        .connect(service.servers())
        .await
        .expect("connect the publisher")
}

/// [`publish_steadily`] `count` events on `channel`, one every 5 ms; returns once a third
/// of them are acknowledged.
async fn feed_a_third(
    client: async_nats::Client,
    channel: &str,
    count: usize,
) -> (JoinHandle<Feed>, watch::Receiver<Progress>) {
    let (publisher, mut progress) =
        publish_steadily(client, channel, count, Duration::from_millis(5));
    wait_for(&mut progress, "a third of the events acknowledged", |p| {
        p.acked >= count / 3
    })
    .await;
    (publisher, progress)
}

/// Publishes `count` events on `channel`, one per `every`, as a backend that must not lose
/// one would: each event is retried, with the same event id and so the same
/// `Nats-Msg-Id`, until JetStream acknowledges it; the next waits for that.
fn publish_steadily(
    client: async_nats::Client,
    channel: &str,
    count: usize,
    every: Duration,
) -> (JoinHandle<Feed>, watch::Receiver<Progress>) {
    let publisher = Publisher::from_context(
        jetstream::ContextBuilder::new()
            .timeout(ATTEMPT)
            .build(client),
    );
    let channel = ChannelName::parse(channel).unwrap();
    let (progress_tx, progress) = watch::channel(Progress::default());
    let task = tokio::spawn(async move {
        let mut feed = Feed::default();
        let mut ticks = tokio::time::interval(every);
        ticks.set_missed_tick_behavior(MissedTickBehavior::Delay);
        for n in 0..count {
            ticks.tick().await;
            let event = event("project.update", json!({ "n": n }));
            let published = publish_until_acked(&publisher, &channel, &event, &mut feed, || {
                progress_tx.send_modify(|p| p.failed += 1)
            })
            .await;
            feed.acked.push(Acked {
                id: event.id.as_str().to_string(),
                seq: published.seq,
                duplicate: published.duplicate,
            });
            progress_tx.send_modify(|p| p.acked += 1);
        }
        feed
    });
    (task, progress)
}

async fn publish_until_acked(
    publisher: &Publisher,
    channel: &ChannelName,
    event: &Envelope,
    feed: &mut Feed,
    mut on_failure: impl FnMut(),
) -> Published {
    let started = Instant::now();
    loop {
        feed.attempts += 1;
        match publisher.publish(channel, event).await {
            Ok(published) => return published,
            Err(e) => {
                feed.failed += 1;
                on_failure();
                assert!(
                    started.elapsed() < DEADLINE,
                    "{} on {channel} not acknowledged within {DEADLINE:?}: {e}",
                    event.id.as_str()
                );
                tokio::time::sleep(RETRY_PAUSE).await;
            }
        }
    }
}

fn event(ty: &str, data: Value) -> Envelope {
    Envelope::new(
        EventType::parse(ty).unwrap(),
        RawJson::encode(&data).unwrap(),
    )
}

async fn wait_for(
    progress: &mut watch::Receiver<Progress>,
    what: &str,
    done: impl FnMut(&Progress) -> bool,
) {
    tokio::time::timeout(DEADLINE, progress.wait_for(done))
        .await
        .unwrap_or_else(|_| panic!("timed out waiting for {what}"))
        .expect("the publisher stopped early (see its panic above)");
}

/// Polls `check` until it gives `Some`, failing the test after [`DEADLINE`].
async fn eventually<T, F, Fut>(what: &str, mut check: F) -> T
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    let started = Instant::now();
    loop {
        if let Some(value) = check().await {
            return value;
        }
        assert!(started.elapsed() < DEADLINE, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

// --- following ------------------------------------------------------------------------

/// A client following one channel the way docs/protocol.md (section 6) tells clients to:
/// its cursor is the seq of the last `evt` it saw, and when its socket is lost it
/// reconnects to `fallback` and subscribes again with `since: {seq: cursor, epoch}`.
struct Follower {
    client: Client,
    user: String,
    channel: String,
    epoch: String,
    cursor: u64,
    fallback: Option<String>,
}

/// What one follower saw.
#[derive(Debug)]
struct Seen {
    user: String,
    /// (seq, event id) of every `evt` on the channel, in arrival order.
    events: Vec<(u64, String)>,
    /// Times the socket was lost and the follower resumed on its fallback edge.
    resumes: usize,
}

impl Follower {
    /// Connects `user` to `edge` and subscribes to `channel` without `since`; the cursor
    /// starts at the `ok`'s seq.
    async fn join(edge: &Edge, user: &str, channel: &str, fallback: Option<String>) -> Follower {
        let mut client = edge.connect(user).await;
        let ok = client.sub(json!({ "ch": channel })).await;
        assert_eq!(ok["op"], "ok", "{ok}");
        Follower {
            client,
            user: user.to_string(),
            channel: channel.to_string(),
            epoch: ok["epoch"].as_str().expect("ok.epoch").to_string(),
            cursor: ok["seq"].as_u64().expect("ok.seq"),
            fallback,
        }
    }

    /// Follows until the cursor reaches the seq `last` is set to, then reads a moment
    /// longer so that a late duplicate would be seen too.
    fn spawn(self, last: watch::Receiver<Option<u64>>) -> JoinHandle<Seen> {
        tokio::spawn(self.run(last))
    }

    async fn run(mut self, last: watch::Receiver<Option<u64>>) -> Seen {
        let mut seen = Seen {
            user: self.user.clone(),
            events: Vec::new(),
            resumes: 0,
        };
        // A fault may hold events up for a while (a cluster elects a new leader in up to
        // 9 s), so what fails the test is no progress for that long, not a total time.
        let mut progressed = Instant::now();
        while (*last.borrow()).is_none_or(|last| self.cursor < last) {
            assert!(
                progressed.elapsed() < DEADLINE,
                "{}: stuck at seq {} for {DEADLINE:?}, waiting for {:?}",
                self.user,
                self.cursor,
                *last.borrow()
            );
            match self.client.next_or_closed(Duration::from_millis(100)).await {
                Next::Frame(frame) => {
                    if self.take(frame, &mut seen) {
                        progressed = Instant::now();
                    }
                }
                Next::Quiet => {}
                Next::Closed => {
                    self.resume().await;
                    seen.resumes += 1;
                }
            }
        }
        while let Next::Frame(frame) = self.client.next_or_closed(Duration::from_millis(300)).await
        {
            self.take(frame, &mut seen);
        }
        seen
    }

    /// Records an `evt` on the channel and moves the cursor; false for any other frame.
    fn take(&mut self, frame: Value, seen: &mut Seen) -> bool {
        if frame["op"] != "evt" || frame["ch"] != self.channel.as_str() {
            return false;
        }
        let seq = frame["seq"].as_u64().expect("evt.seq");
        let id = frame["event"]["id"].as_str().expect("evt.event.id");
        seen.events.push((seq, id.to_string()));
        self.cursor = seq;
        true
    }

    async fn resume(&mut self) {
        let url = self.fallback.clone().unwrap_or_else(|| {
            panic!(
                "{}: socket lost at seq {} with no edge to resume on",
                self.user, self.cursor
            )
        });
        let started = Instant::now();
        let mut client = loop {
            match Client::open(&url, Some(&token(&self.user, 3600, &[]))).await {
                Ok(client) => break client,
                Err(refused) => {
                    assert!(
                        started.elapsed() < DEADLINE,
                        "{}: cannot reconnect to {url}: {refused:?}",
                        self.user
                    );
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
            }
        };
        let welcome = client.recv().await;
        assert_eq!(welcome["op"], "welcome", "{welcome}");
        let ok = client
            .sub(json!({
                "ch": self.channel,
                "since": { "seq": self.cursor, "epoch": self.epoch },
            }))
            .await;
        assert_eq!(ok["op"], "ok", "{}: resume refused: {ok}", self.user);
        assert_eq!(ok["recovered"], true, "{}: {ok}", self.user);
        assert_eq!(ok["epoch"], self.epoch.as_str(), "{}: {ok}", self.user);
        self.client = client;
    }
}

async fn gather(followers: Vec<JoinHandle<Seen>>) -> Vec<Seen> {
    let mut seen = Vec::new();
    for follower in followers {
        seen.push(
            follower
                .await
                .expect("a follower failed (see its panic above)"),
        );
    }
    seen
}

/// Totals over all followers.
#[derive(Debug, Default)]
struct Tally {
    received: usize,
    missing: usize,
    duplicated: usize,
}

/// Asserts that every follower saw every acknowledged event exactly once, in seq order,
/// each with the seq its acknowledgement gave, and nothing else.
fn check_delivery(seen: &[Seen], feed: &Feed) -> Tally {
    let acked: HashMap<&str, u64> = feed.acked.iter().map(|a| (a.id.as_str(), a.seq)).collect();
    assert_eq!(
        acked.len(),
        feed.acked.len(),
        "two acknowledgements for one event id"
    );
    let mut total = Tally::default();
    for client in seen {
        let mut ids = HashSet::new();
        let mut duplicated = Vec::new();
        let mut out_of_order = Vec::new();
        let mut unexpected = Vec::new();
        let mut previous = 0;
        for (seq, id) in &client.events {
            if !ids.insert(id.as_str()) {
                duplicated.push(*seq);
            } else if *seq <= previous {
                out_of_order.push(*seq);
            }
            previous = previous.max(*seq);
            if acked.get(id.as_str()) != Some(seq) {
                unexpected.push((*seq, id.clone()));
            }
        }
        let mut missing: Vec<u64> = feed
            .acked
            .iter()
            .filter(|a| !ids.contains(a.id.as_str()))
            .map(|a| a.seq)
            .collect();
        missing.sort_unstable();
        assert!(
            missing.is_empty() && duplicated.is_empty() && out_of_order.is_empty(),
            "{}: {} received of {} acked; missing seqs {missing:?}, duplicated {duplicated:?}, \
             out of order {out_of_order:?}",
            client.user,
            client.events.len(),
            feed.acked.len(),
        );
        assert!(
            unexpected.is_empty(),
            "{}: events that were not acknowledged with that seq: {unexpected:?}",
            client.user
        );
        total.received += client.events.len();
        total.missing += missing.len();
        total.duplicated += duplicated.len();
    }
    total
}

// --- the cluster ----------------------------------------------------------------------

/// Publishes `member.added` for `user` on `channel` and returns how long it took until
/// `user` may subscribe there on `edge`: the membership worker mirrors the event into the
/// `members` bucket, and the edge's watch of that bucket picks it up.
async fn membership_takes_effect(
    publisher: &Publisher,
    edge: &Edge,
    channel: &str,
    user: &str,
) -> Duration {
    let event = event("member.added", json!({ "user": user, "role": "member" }));
    let channel_name = ChannelName::parse(channel).unwrap();
    publish_until_acked(
        publisher,
        &channel_name,
        &event,
        &mut Feed::default(),
        || {},
    )
    .await;
    let published = Instant::now();
    let mut client = edge.connect(user).await;
    let reply = client
        .sub_within(json!({ "ch": channel }), published, DEADLINE)
        .await;
    assert_eq!(
        reply["op"], "ok",
        "{user} is not a member of {channel} after {DEADLINE:?}: {reply}"
    );
    published.elapsed()
}

/// The node a client connection named `name` is on, from each node's `/connz`.
fn node_serving(cluster: &NatsCluster, name: &str) -> Option<usize> {
    (0..cluster.len()).find(|&index| {
        http_get(&cluster.monitor_addr(index), "/connz")
            .and_then(|(_, body)| serde_json::from_str::<Value>(&body).ok())
            .and_then(|connz| {
                connz["connections"]
                    .as_array()
                    .map(|all| all.iter().any(|c| c["name"] == name))
            })
            .unwrap_or(false)
    })
}

async fn events_leader(js: &jetstream::Context) -> Option<String> {
    let mut stream = js.get_stream(EVENTS_STREAM).await.ok()?;
    stream.info().await.ok()?.cluster.as_ref()?.leader.clone()
}

/// Makes `server` the `EVENTS` leader: a stepdown naming it the preferred successor,
/// repeated should another node win the election.
async fn move_leader(client: &async_nats::Client, js: &jetstream::Context, server: &str) {
    let subject = format!("$JS.API.STREAM.LEADER.STEPDOWN.{EVENTS_STREAM}");
    let request = json!({ "placement": { "preferred": server } }).to_string();
    let started = Instant::now();
    loop {
        let leader = eventually("an EVENTS leader", || events_leader(js)).await;
        if leader == server {
            return;
        }
        assert!(
            started.elapsed() < DEADLINE,
            "{server} did not become the EVENTS leader (still {leader})"
        );
        let answer = client
            .request(subject.clone(), request.clone().into())
            .await
            .expect("a stepdown answer");
        let answer: Value = serde_json::from_slice(&answer.payload).unwrap_or_default();
        assert!(answer["error"].is_null(), "stepdown refused: {answer}");
        eventually("the EVENTS leader to step down", || async {
            let now = events_leader(js).await?;
            (now != leader).then_some(())
        })
        .await;
    }
}
