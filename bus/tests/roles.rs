//! The NATS roles of `nats/auth.conf` against a real nats-server: for each role, every
//! subject family is tried, and what the role may do takes effect while what it may not
//! has no effect at all (nothing stored, delivered, answered or written to a bucket).
//! The effect is always observed by an admin client, never by the role itself.

use std::time::Duration;

use async_nats::jetstream::consumer::{PullConsumer, pull, push};
use async_nats::jetstream::{self, stream};
use async_nats::{Client, HeaderMap};
use futures_util::StreamExt;
use switchboard_bus::definitions::Definitions;
use switchboard_bus::{Role, SWITCHBOARD_METHOD_FAMILIES};
use switchboard_testkit::Nats;

/// How long an effect may take to show. Refusals are silent on the wire (the server
/// answers the offender with an -ERR it does not wait for), so each refused case costs
/// this much.
const WAIT: Duration = Duration::from_millis(600);
/// One attempt of a case that is tried again until [`WAIT`] is up.
const TRY: Duration = Duration::from_millis(100);

/// Sends with `send` until `subscription` receives something or [`WAIT`] has passed.
async fn receives_while<F, Fut, E>(subscription: &mut async_nats::Subscriber, send: F) -> bool
where
    F: Fn() -> Fut,
    Fut: Future<Output = Result<(), E>>,
{
    let deadline = tokio::time::Instant::now() + WAIT;
    while tokio::time::Instant::now() < deadline {
        let _ = send().await;
        if let Ok(Some(_)) = tokio::time::timeout(TRY, subscription.next()).await {
            return true;
        }
    }
    false
}

/// Runs `attempt` until it succeeds or [`WAIT`] has passed.
async fn repeatedly<F, Fut>(mut attempt: F) -> bool
where
    F: FnMut() -> Fut,
    Fut: Future<Output = bool>,
{
    let deadline = tokio::time::Instant::now() + WAIT;
    while tokio::time::Instant::now() < deadline {
        if tokio::time::timeout(TRY, attempt()).await.unwrap_or(false) {
            return true;
        }
    }
    false
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Family {
    RtPublish,
    LivePublish,
    LiveSubscribe,
    SigPublish,
    CmdPublish,
    ServeAppMethod,
    ServeSwitchboardMethod,
    ServeSwitchboardMethodByWildcard,
    ServeInternal,
    PrivacyChangePublish,
    AskInternal,
    PrivacyChangeSubscribe,
    RequestAppMethod,
    NotifySubscribe,
    MembersWrite,
    PresenceWrite,
    OccupancyWrite,
    EdgesWrite,
    EventsRead,
    PresenceRead,
    MembersRead,
    EventsErase,
    EventsPurge,
    PullFromWorkersConsumer,
    AckForWorkersConsumer,
    DeleteWorkersConsumer,
    StreamCreate,
    StreamUpdate,
    StreamPurge,
    StreamDelete,
}

/// The workers' durable consumers on EVENTS (workers/src: archive, membership,
/// notifications); no other role may pull from, ack for, or delete them.
const WORKERS_CONSUMERS: [&str; 3] = ["archive", "membership", "notifications"];

use Family::*;

/// Each family, and whether edge, workers, service, admin may use it (docs/operations.md,
/// "NATS roles").
const TABLE: [(Family, [bool; 4]); 30] = [
    (RtPublish, [true, true, true, true]),
    (LivePublish, [false, false, false, true]),
    (LiveSubscribe, [true, false, false, true]),
    (SigPublish, [true, true, true, true]),
    (CmdPublish, [true, false, false, true]),
    (ServeAppMethod, [false, false, true, true]),
    (ServeSwitchboardMethod, [false, true, false, true]),
    // A subscription to svc.> is the service role's right, but what it receives leaves
    // out the methods it may not serve.
    (
        ServeSwitchboardMethodByWildcard,
        [false, false, false, true],
    ),
    (ServeInternal, [false, true, false, true]),
    // Only the workers announce privacy changes; the edge asks int.archive.> and
    // int.presence.> only.
    (PrivacyChangePublish, [false, true, false, true]),
    (AskInternal, [true, false, false, true]),
    (PrivacyChangeSubscribe, [true, true, false, true]),
    (RequestAppMethod, [true, false, false, true]),
    (NotifySubscribe, [false, false, true, true]),
    (MembersWrite, [false, true, false, true]),
    // Workers delete the entries of edges whose heartbeat lapsed (NATS cannot tell a
    // delete marker from a value: the permission is to write).
    (PresenceWrite, [true, true, false, true]),
    (OccupancyWrite, [true, true, false, true]),
    (EdgesWrite, [true, false, false, true]),
    (EventsRead, [true, true, true, true]),
    (PresenceRead, [true, true, true, true]),
    (MembersRead, [true, true, true, true]),
    // erase.user deletes single messages, erase.channel purges one channel's subject.
    (EventsErase, [false, true, false, true]),
    (EventsPurge, [false, true, false, true]),
    (PullFromWorkersConsumer, [false, true, false, true]),
    (AckForWorkersConsumer, [false, true, false, true]),
    (DeleteWorkersConsumer, [false, true, false, true]),
    (StreamCreate, [false, false, false, true]),
    (StreamUpdate, [false, false, false, true]),
    (StreamPurge, [false, false, false, true]),
    (StreamDelete, [false, false, false, true]),
];

struct Bench {
    nats: Nats,
    admin: Client,
    admin_js: jetstream::Context,
}

impl Bench {
    async fn start() -> Bench {
        let nats = Nats::start().unwrap();
        let admin = nats.connect(Role::Admin).await.unwrap();
        let admin_js = jetstream::new(admin.clone());
        Definitions::builtin().apply(&admin_js).await.unwrap();
        admin_js
            .create_stream(stream::Config {
                name: "SCRATCH".into(),
                subjects: vec!["scratch.>".into()],
                ..Default::default()
            })
            .await
            .unwrap();
        admin.publish("scratch.a", "x".into()).await.unwrap();
        admin.flush().await.unwrap();
        Bench {
            nats,
            admin,
            admin_js,
        }
    }

    /// Whether `actor` achieved what `family` stands for, as the admin sees it.
    async fn try_family(&self, actor: &Client, family: Family) -> bool {
        let js = jetstream::ContextBuilder::new()
            .timeout(WAIT)
            .build(actor.clone());
        let unique = format!("x{}", self.admin.new_inbox().replace('.', "_"));
        match family {
            RtPublish => {
                let subject = format!("rt.project.{unique}");
                let mut headers = HeaderMap::new();
                headers.insert("Nats-Msg-Id", unique.as_str());
                headers.insert("Rt-Type", "bid.new");
                headers.insert("Content-Type", "application/json");
                let _ = async {
                    js.publish_with_headers(subject.clone(), headers, "{}".into())
                        .await?
                        .await
                }
                .await;
                self.stored_on("EVENTS", &subject).await
            }
            LivePublish => {
                let subject = format!("live.project.{unique}");
                self.admin_receives(&subject, || actor.publish(subject.clone(), "forged".into()))
                    .await
            }
            SigPublish => {
                let subject = format!("sig.project.{unique}");
                self.admin_receives(&subject, || actor.publish(subject.clone(), "{}".into()))
                    .await
            }
            CmdPublish => {
                let subject = format!("cmd.receipts.{unique}");
                let _ = actor.publish(subject.clone(), "{}".into()).await;
                let _ = actor.flush().await;
                tokio::time::sleep(WAIT).await;
                self.stored_on("CMDS", &subject).await
            }
            LiveSubscribe => {
                self.actor_receives(actor, &format!("live.project.{unique}"))
                    .await
            }
            NotifySubscribe => {
                self.actor_receives(actor, &format!("notify.{unique}.push"))
                    .await
            }
            ServeAppMethod => {
                let subject = format!("svc.quotes.{unique}");
                self.actor_answers(actor, &subject, std::slice::from_ref(&subject))
                    .await
                    .all_or_none(&["svc.quotes"])
            }
            ServeSwitchboardMethod => {
                let subjects = SWITCHBOARD_METHOD_FAMILIES.map(|m| format!("svc.{m}.{unique}"));
                let mut answered = Vec::new();
                for subject in &subjects {
                    answered.extend(
                        self.actor_answers(actor, subject, std::slice::from_ref(subject))
                            .await,
                    );
                }
                answered.all_or_none(&SWITCHBOARD_METHOD_FAMILIES)
            }
            ServeSwitchboardMethodByWildcard => {
                let subjects = SWITCHBOARD_METHOD_FAMILIES.map(|m| format!("svc.{m}.{unique}"));
                self.actor_answers(actor, "svc.>", &subjects)
                    .await
                    .all_or_none(&SWITCHBOARD_METHOD_FAMILIES)
            }
            ServeInternal => self
                .actor_answers(actor, "int.archive.read", &["int.archive.read".to_string()])
                .await
                .all_or_none(&["int.archive.read"]),
            PrivacyChangePublish => {
                let subject = format!("int.privacy.{unique}");
                self.admin_receives(&subject, || actor.publish(subject.clone(), "{}".into()))
                    .await
            }
            AskInternal => {
                let mut asked = Vec::new();
                for subject in ["int.archive.read", "int.presence.authorize"] {
                    let mut requests = self.admin.subscribe(subject).await.unwrap();
                    switchboard_testkit::synced(&self.admin).await.unwrap();
                    asked.push(
                        receives_while(&mut requests, || {
                            actor.publish_with_reply(subject, actor.new_inbox(), "{}".into())
                        })
                        .await,
                    );
                }
                asked.all_or_none(&["int.archive.read", "int.presence.authorize"])
            }
            PrivacyChangeSubscribe => {
                self.actor_receives(actor, &format!("int.privacy.{unique}"))
                    .await
            }
            RequestAppMethod => {
                let subject = format!("svc.quotes.{unique}");
                let mut requests = self.admin.subscribe(subject.clone()).await.unwrap();
                self.admin.flush().await.unwrap();
                receives_while(&mut requests, || {
                    actor.publish_with_reply(subject.clone(), actor.new_inbox(), "{}".into())
                })
                .await
            }
            MembersWrite => self.bucket_write(&js, "members", &unique).await,
            PresenceWrite => self.bucket_write(&js, "presence", &unique).await,
            OccupancyWrite => self.bucket_write(&js, "occupancy", &unique).await,
            EdgesWrite => self.bucket_write(&js, "edges", &unique).await,
            EventsRead => {
                let subject = format!("rt.project.{unique}");
                let mut headers = HeaderMap::new();
                headers.insert("Nats-Msg-Id", unique.as_str());
                headers.insert("Rt-Type", "bid.new");
                headers.insert("Content-Type", "application/json");
                self.admin_js
                    .publish_with_headers(subject.clone(), headers, "{}".into())
                    .await
                    .unwrap()
                    .await
                    .unwrap();
                let read = async {
                    js.get_stream_no_info("EVENTS")
                        .await
                        .map_err(anyhow_free)?
                        .direct_get_last_for_subject(subject)
                        .await
                        .map_err(anyhow_free)
                };
                read.await.is_ok()
            }
            PresenceRead => self.bucket_read(&js, "presence", &unique).await,
            MembersRead => self.bucket_read(&js, "members", &unique).await,
            EventsErase => {
                let seq = self
                    .admin_js
                    .publish(format!("rt.project.{unique}"), "x".into())
                    .await
                    .unwrap()
                    .await
                    .unwrap()
                    .sequence;
                let _ = async {
                    js.get_stream_no_info("EVENTS")
                        .await
                        .map_err(anyhow_free)?
                        .delete_message(seq)
                        .await
                        .map_err(anyhow_free)
                }
                .await;
                let events = self.admin_js.get_stream("EVENTS").await.unwrap();
                events.get_raw_message(seq).await.is_err()
            }
            EventsPurge => {
                let subject = format!("rt.project.{unique}");
                self.admin_js
                    .publish(subject.clone(), "x".into())
                    .await
                    .unwrap()
                    .await
                    .unwrap();
                let _ = async {
                    js.get_stream_no_info("EVENTS")
                        .await
                        .map_err(anyhow_free)?
                        .purge()
                        .filter(subject.clone())
                        .await
                        .map_err(anyhow_free)
                }
                .await;
                !self.stored_on("EVENTS", &subject).await
            }
            PullFromWorkersConsumer => {
                let mut pulled = Vec::new();
                for name in WORKERS_CONSUMERS {
                    self.workers_consumer(name, &unique).await;
                    // The raw request, so that nothing (such as consumer info) stops the
                    // attempt before the pull itself.
                    let inbox = actor.new_inbox();
                    if let Ok(mut replies) = actor.subscribe(inbox.clone()).await {
                        let _ = actor
                            .publish_with_reply(
                                format!("$JS.API.CONSUMER.MSG.NEXT.EVENTS.{name}"),
                                inbox,
                                r#"{"batch":1,"expires":500000000}"#.into(),
                            )
                            .await;
                        if let Ok(Some(message)) = tokio::time::timeout(WAIT, replies.next()).await
                            && let Some(reply) = message.reply
                        {
                            let _ = actor.publish(reply, "".into()).await;
                            let _ = actor.flush().await;
                        }
                    }
                    let info = self.workers_consumer_info(name).await;
                    pulled.push(info.delivered.consumer_sequence > 0);
                }
                pulled.all_or_none(&WORKERS_CONSUMERS)
            }
            AckForWorkersConsumer => {
                let mut acked = Vec::new();
                for name in WORKERS_CONSUMERS {
                    let consumer = self.workers_consumer(name, &unique).await;
                    // The admin stands in for the worker: it holds the message, unacked.
                    // A batch waits for it (a fetch answers at once, and under load the
                    // consumer may not have the message just stored yet).
                    let mut batch = consumer
                        .batch()
                        .max_messages(1)
                        .expires(Duration::from_secs(5))
                        .messages()
                        .await
                        .unwrap();
                    let held = batch.next().await.unwrap().unwrap();
                    let reply = held.reply.clone().unwrap();
                    let _ = actor.publish(reply, "".into()).await;
                    let _ = actor.flush().await;
                    acked.push(
                        repeatedly(|| async {
                            self.workers_consumer_info(name).await.num_ack_pending == 0
                        })
                        .await,
                    );
                }
                acked.all_or_none(&WORKERS_CONSUMERS)
            }
            DeleteWorkersConsumer => {
                let mut deleted = Vec::new();
                for name in WORKERS_CONSUMERS {
                    self.workers_consumer(name, &unique).await;
                    let _ = js.delete_consumer_from_stream(name, "EVENTS").await;
                    deleted.push(
                        self.admin_js
                            .get_consumer_from_stream::<pull::Config, _, _>(name, "EVENTS")
                            .await
                            .is_err(),
                    );
                }
                deleted.all_or_none(&WORKERS_CONSUMERS)
            }
            StreamUpdate => {
                let _ = js
                    .update_stream(stream::Config {
                        name: "SCRATCH".into(),
                        subjects: vec!["scratch.>".into()],
                        description: Some(unique.clone()),
                        ..Default::default()
                    })
                    .await;
                let stream = self.admin_js.get_stream("SCRATCH").await.unwrap();
                stream.cached_info().config.description.as_deref() == Some(unique.as_str())
            }
            StreamCreate => {
                let name = format!("NEW_{unique}");
                let _ = js
                    .create_stream(stream::Config {
                        name: name.clone(),
                        subjects: vec![format!("new.{unique}")],
                        ..Default::default()
                    })
                    .await;
                self.admin_js.get_stream(&name).await.is_ok()
            }
            StreamPurge => {
                self.admin_js
                    .publish("scratch.a", "x".into())
                    .await
                    .unwrap()
                    .await
                    .unwrap();
                let _ = async {
                    js.get_stream_no_info("SCRATCH")
                        .await
                        .map_err(anyhow_free)?
                        .purge()
                        .await
                        .map_err(anyhow_free)
                }
                .await;
                self.messages("SCRATCH").await == Some(0)
            }
            StreamDelete => {
                let _ = js.delete_stream("SCRATCH").await;
                let gone = self.messages("SCRATCH").await.is_none();
                if gone {
                    self.admin_js
                        .create_stream(stream::Config {
                            name: "SCRATCH".into(),
                            subjects: vec!["scratch.>".into()],
                            ..Default::default()
                        })
                        .await
                        .unwrap();
                }
                gone
            }
        }
    }

    /// Whether the stream holds a message on `subject`.
    async fn stored_on(&self, stream: &str, subject: &str) -> bool {
        let stream = self.admin_js.get_stream(stream).await.unwrap();
        stream
            .get_last_raw_message_by_subject(subject)
            .await
            .is_ok()
    }

    async fn messages(&self, stream: &str) -> Option<u64> {
        let mut stream = self.admin_js.get_stream(stream).await.ok()?;
        Some(stream.info().await.ok()?.state.messages)
    }

    /// Whether an admin subscribed to `subject` receives what `send` publishes (sent
    /// again until it arrives or time is up: the subscription and the publish travel on
    /// different connections).
    async fn admin_receives<F, Fut, E>(&self, subject: &str, send: F) -> bool
    where
        F: Fn() -> Fut,
        Fut: Future<Output = Result<(), E>>,
    {
        let mut seen = self.admin.subscribe(subject.to_string()).await.unwrap();
        self.admin.flush().await.unwrap();
        receives_while(&mut seen, send).await
    }

    /// Whether `actor`, subscribed to `subject`, receives what an admin publishes there.
    async fn actor_receives(&self, actor: &Client, subject: &str) -> bool {
        let Ok(mut subscription) = actor.subscribe(subject.to_string()).await else {
            return false;
        };
        let _ = actor.flush().await;
        receives_while(&mut subscription, || {
            self.admin.publish(subject.to_string(), "x".into())
        })
        .await
    }

    /// For each subject of `ask`, whether an admin's request there is answered by `actor`
    /// serving `serve` in a queue group.
    async fn actor_answers(&self, actor: &Client, serve: &str, ask: &[String]) -> Vec<bool> {
        let Ok(mut requests) = actor
            .queue_subscribe(serve.to_string(), "roles-test".into())
            .await
        else {
            return vec![false; ask.len()];
        };
        let _ = actor.flush().await;
        let answerer = actor.clone();
        let serving = tokio::spawn(async move {
            while let Some(request) = requests.next().await {
                if let Some(reply) = request.reply {
                    let _ = answerer.publish(reply, "answered".into()).await;
                    let _ = answerer.flush().await;
                }
            }
        });
        // The actor's subscription reaches the server on its own connection: until it
        // does, a request finds no responder. Ask again until one answers or time is up.
        let answered = futures_util::future::join_all(ask.iter().map(|subject| {
            repeatedly(move || async move {
                matches!(
                    self.admin.request(subject.clone(), "{}".into()).await,
                    Ok(message) if message.payload.as_ref() == b"answered"
                )
            })
        }))
        .await;
        serving.abort();
        answered
    }

    /// A durable pull consumer on EVENTS named as one of the workers', holding one event.
    async fn workers_consumer(&self, name: &str, unique: &str) -> PullConsumer {
        let subject = format!("rt.project.{unique}_{name}");
        let consumer = self
            .admin_js
            .create_consumer_on_stream(
                pull::Config {
                    durable_name: Some(name.to_string()),
                    filter_subject: subject.clone(),
                    ack_policy: jetstream::consumer::AckPolicy::Explicit,
                    ..Default::default()
                },
                "EVENTS",
            )
            .await
            .unwrap();
        self.admin_js
            .publish(subject, "x".into())
            .await
            .unwrap()
            .await
            .unwrap();
        consumer
    }

    async fn workers_consumer_info(&self, name: &str) -> jetstream::consumer::Info {
        let mut consumer: PullConsumer = self
            .admin_js
            .get_consumer_from_stream(name, "EVENTS")
            .await
            .unwrap();
        consumer.info().await.unwrap().clone()
    }

    /// Whether `actor` reads from `bucket` an entry the admin wrote.
    async fn bucket_read(&self, js: &jetstream::Context, bucket: &str, unique: &str) -> bool {
        let key = format!("u1.{unique}");
        let admin_kv = self.admin_js.get_key_value(bucket).await.unwrap();
        admin_kv.put(&key, "x".into()).await.unwrap();
        let read = async {
            let kv = js.get_key_value(bucket).await.map_err(anyhow_free)?;
            kv.get(&key).await.map_err(anyhow_free)
        };
        matches!(read.await, Ok(Some(_)))
    }

    /// Whether `actor`'s write to `bucket` lands.
    async fn bucket_write(&self, js: &jetstream::Context, bucket: &str, unique: &str) -> bool {
        let key = format!("u1.{unique}");
        let _ = async {
            js.get_key_value(bucket)
                .await
                .map_err(anyhow_free)?
                .put(&key, "forged".into())
                .await
                .map_err(anyhow_free)
        }
        .await;
        let admin_kv = self.admin_js.get_key_value(bucket).await.unwrap();
        admin_kv.get(&key).await.unwrap().is_some()
    }
}

/// A family tried on several subjects must work on all of them or none: anything in
/// between is a hole in the permissions, named here.
trait AllOrNone {
    fn all_or_none(&self, names: &[&str]) -> bool;
}

impl AllOrNone for Vec<bool> {
    fn all_or_none(&self, names: &[&str]) -> bool {
        let worked: Vec<&str> = (names.iter().zip(self))
            .filter(|(_, worked)| **worked)
            .map(|(name, _)| *name)
            .collect();
        assert!(
            worked.is_empty() || worked.len() == names.len(),
            "worked for {worked:?} only, of {names:?}"
        );
        !worked.is_empty()
    }
}

/// Any error as a string: the cases only care whether an attempt worked.
fn anyhow_free(error: impl std::fmt::Display) -> String {
    error.to_string()
}

async fn check_role(role: Role) {
    let bench = Bench::start().await;
    let actor = bench.nats.connect(role).await.unwrap();
    let column = Role::ALL.iter().position(|r| *r == role).unwrap();
    let mut wrong = Vec::new();
    for (family, allowed) in TABLE {
        let worked = bench.try_family(&actor, family).await;
        if worked != allowed[column] {
            wrong.push(format!(
                "{family:?}: {}",
                if worked {
                    "worked but must be refused"
                } else {
                    "refused but must work"
                }
            ));
        }
    }
    println!(
        "role {role}: {} subject families tried, {} as expected",
        TABLE.len(),
        TABLE.len() - wrong.len()
    );
    assert!(wrong.is_empty(), "role {role}:\n{}", wrong.join("\n"));
    let refused = TABLE.iter().filter(|(_, allowed)| !allowed[column]).count();
    if refused > 0 {
        assert!(
            !bench.nats.violations().is_empty(),
            "the server logged no refusal for role {role}"
        );
    }
}

#[tokio::test]
async fn the_edge_role_may_do_only_what_the_edge_does() {
    check_role(Role::Edge).await;
}

#[tokio::test]
async fn the_workers_role_may_do_only_what_the_workers_do() {
    check_role(Role::Workers).await;
}

#[tokio::test]
async fn the_service_role_publishes_and_serves_its_own_methods_only() {
    check_role(Role::Service).await;
}

#[tokio::test]
async fn the_admin_role_may_do_everything() {
    check_role(Role::Admin).await;
}

#[tokio::test]
async fn anonymous_and_unknown_clients_are_refused() {
    let nats = Nats::start().unwrap();
    let anonymous = async_nats::ConnectOptions::new()
        .connection_timeout(Duration::from_secs(2))
        .connect(nats.url())
        .await;
    assert!(anonymous.is_err(), "an anonymous client got in");

    // A well-formed seed the server does not know.
    let dir = tempfile::tempdir().unwrap();
    let stranger = switchboard_bus::RoleKeys::new(dir.path());
    stranger.ensure(Role::Admin).unwrap();
    let mut options = nats.options(Role::Admin);
    options.nkey = Some(stranger.seed_path(Role::Admin));
    let unknown = options
        .connect_options(Role::Admin, "stranger")
        .await
        .unwrap()
        .connection_timeout(Duration::from_secs(2))
        .connect(options.servers())
        .await;
    assert!(unknown.is_err(), "a client with an unknown key got in");
}

/// Roles receive replies only under their own prefix: a role cannot subscribe to
/// another's inbox to read its replies.
#[tokio::test]
async fn no_role_reads_another_roles_replies() {
    let nats = Nats::start().unwrap();
    let admin = nats.connect(Role::Admin).await.unwrap();
    for role in [Role::Edge, Role::Workers, Role::Service] {
        let actor = nats.connect(role).await.unwrap();
        for other in [Role::Edge, Role::Workers, Role::Service] {
            if other == role {
                continue;
            }
            let inbox = format!("{}.spy", other.inbox_prefix());
            let mut spy = actor.subscribe(inbox.clone()).await.unwrap();
            actor.flush().await.unwrap();
            admin.publish(inbox, "reply".into()).await.unwrap();
            admin.flush().await.unwrap();
            let got = tokio::time::timeout(WAIT, spy.next()).await;
            assert!(
                !matches!(got, Ok(Some(_))),
                "{role} read a reply meant for {other}"
            );
        }
    }
}

/// A push consumer's deliver subject is published by the server, which nats-server (up to
/// at least 2.15) does not check against its creator's publish permissions
/// (nats-io/nats-server#8274). What must hold regardless: such a delivery is never stored,
/// so no role reaches a command stream or a bucket this way. What does reach core
/// subscribers is a copy of an event the creator was allowed to store, with the stored
/// headers and a `$JS.ACK` reply subject (docs/operations.md, "NATS roles").
#[tokio::test]
async fn a_push_consumer_cannot_store_where_its_creator_may_not_publish() {
    let bench = Bench::start().await;
    for role in [Role::Edge, Role::Workers, Role::Service] {
        let actor = bench.nats.connect(role).await.unwrap();
        let js = jetstream::new(actor.clone());
        let unique = format!("x{}", bench.admin.new_inbox().replace('.', "_"));
        let targets = [
            ("CMDS", format!("cmd.receipts.{unique}")),
            ("KV_members", format!("$KV.members.u1.{unique}")),
            ("", format!("live.project.{unique}")),
        ];
        for (n, (stream, target)) in targets.iter().enumerate() {
            let source = format!("rt.project.{unique}_{n}");
            let mut seen = bench.admin.subscribe(target.clone()).await.unwrap();
            switchboard_testkit::synced(&bench.admin).await.unwrap();
            js.create_consumer_on_stream(
                push::Config {
                    deliver_subject: target.clone(),
                    filter_subject: source.clone(),
                    ..Default::default()
                },
                "EVENTS",
            )
            .await
            .unwrap();
            bench
                .admin_js
                .publish(source, "forged".into())
                .await
                .unwrap()
                .await
                .unwrap();
            // The delivery reached the subject (so a stream there had its chance)...
            // This is the upstream hole, kept in sight: once nats-server checks deliver
            // subjects, this fails, and the case belongs in TABLE as refused.
            let delivered = tokio::time::timeout(WAIT * 5, seen.next())
                .await
                .ok()
                .flatten()
                .expect("nats-server now checks deliver subjects");
            if stream.is_empty() {
                assert!(
                    delivered
                        .reply
                        .as_deref()
                        .is_some_and(|r| r.starts_with("$JS.ACK.EVENTS.")),
                    "{delivered:?}"
                );
            } else {
                // ...and no stream there stored it.
                tokio::time::sleep(WAIT).await;
                assert!(
                    !bench.stored_on(stream, target).await,
                    "{role}: a push consumer stored on {target}"
                );
            }
        }
    }
}

/// The deny list of `nats/auth.conf` names every durable consumer the real workers make
/// on EVENTS (all jobs, as shipped), so a new job's consumer cannot be left open to the
/// edge and the service role.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_deny_list_names_every_durable_consumer_of_the_workers() {
    use std::collections::BTreeSet;
    let bench = Bench::start().await;
    let postgres =
        tokio::task::block_in_place(switchboard_testkit::Postgres::start).expect("PostgreSQL");
    let database_url = postgres.database().await.unwrap();
    // Every job, as the binary runs by default (no SWITCHBOARD_WORKERS).
    let mut workers =
        std::process::Command::new(switchboard_testkit::binary("switchboard-workers"));
    workers
        .envs(bench.nats.env(Role::Workers))
        .env("DATABASE_URL", &database_url)
        .env("SWITCHBOARD_WORKERS_ADDR", "127.0.0.1:0")
        .env("SWITCHBOARD_LOG", "warn")
        .stdin(std::process::Stdio::null());
    let _workers = switchboard_testkit::Process::spawn(workers).unwrap();

    let durable = || async {
        let events = bench.admin_js.get_stream("EVENTS").await.unwrap();
        let mut names = BTreeSet::new();
        let mut consumers = events.consumers();
        while let Some(info) = consumers.next().await {
            let info = info.unwrap();
            if info.config.durable_name.is_some() {
                names.insert(info.name);
            }
        }
        names
    };
    let expected: BTreeSet<String> = WORKERS_CONSUMERS.iter().map(|n| n.to_string()).collect();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    while !durable().await.is_superset(&expected) {
        assert!(
            tokio::time::Instant::now() < deadline,
            "the workers made only {:?}",
            durable().await
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    // Time for any further job to bind its consumer too.
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert_eq!(
        durable().await,
        expected,
        "the workers' durable consumers on EVENTS differ from WORKERS_CONSUMERS: add the new \
         one to nats/auth.conf and to this test"
    );
    let auth = include_str!("../../nats/auth.conf");
    for name in WORKERS_CONSUMERS {
        for pattern in [
            format!("\"$JS.API.CONSUMER.*.EVENTS.{name}\""),
            format!("\"$JS.API.CONSUMER.*.EVENTS.{name}.>\""),
            format!("\"$JS.API.CONSUMER.*.*.EVENTS.{name}\""),
            format!("\"$JS.ACK.EVENTS.{name}.>\""),
        ] {
            assert!(auth.contains(&pattern), "nats/auth.conf lacks {pattern}");
        }
    }
}
