//! `switchboard-edge`: the stateless WebSocket gateway between clients and NATS.
//!
//! An edge holds nothing but per-connection state in memory. Any number of edges serve
//! the same users behind any load balancer; killing one loses nothing, since clients
//! reconnect anywhere and resume from their last `seq`.
//!
//! # Architecture
//!
//! - [`session`]: one socket's state machine: authentication, frames in, replies and
//!   events out, limits. One task per connection owns the socket.
//! - [`hub`]: which local connections want which channel; fan-out of each event,
//!   encoded once, into each subscriber's bounded [`mailbox`].
//! - [`bridge`]: one task per channel in use, holding its NATS subscriptions (live
//!   events and signals), repairing gaps from the stream; `user:` channels share one
//!   edge-wide subscription pair and keep no task.
//! - [`auth`], [`jwks`], [`policy`], [`members`]: tokens and their keys, the namespace
//!   rules, and the membership copy kept fresh from the `members` KV bucket.
//! - [`lifecycle`]: one subscription lifecycle (start, re-check, revoke, teardown) for
//!   the socket, SSE and long polling; [`subscribe`] replays and hands over to live
//!   delivery without a gap or a duplicate, continued into the [`archive`] (asked of
//!   the workers) where the stream no longer holds a channel's events.
//! - [`refusal`]: the one refusal type, rendered as an `err` frame or an HTTP error.
//! - [`admission`]: who gets in over HTTP: origin, token, the user's connection slots.
//! - [`http`]: the axum router: `/v1/ws`, publishing and RPC over HTTP, CORS, health,
//!   readiness, metrics; [`fallback`]: SSE and long polling; [`rpc`]: calls to worker
//!   services.
//! - [`server`]: accepts connections and serves the router over HTTP/1, with the
//!   limits that hold before a request is read (header timeout, connection cap).
//! - [`tls`]: the certificate and key when the edge serves HTTPS and WSS itself, and
//!   their replacement without a restart.
//! - [`presence`], [`privacy`]: this edge's entries in the `presence` and `occupancy`
//!   buckets, and the questions it asks the presence service (who may see whom).
//! - [`hook`]: the publish hook, a backend's verdict on a client's message before it is
//!   stored.
//! - [`limits`], [`metrics`], [`config`]: rates and caps per connection, user and
//!   address; the Prometheus metrics; the settings.
//! - [`watched`]: a value tasks wait on (is a channel's head known, is a subscription on
//!   its channel), small enough to keep one per subscription.
//!
//! The edge never talks to PostgreSQL: what it needs from workers it asks over NATS.

pub mod admission;
pub mod archive;
pub mod auth;
pub mod bridge;
pub mod config;
pub mod fallback;
pub mod hook;
pub mod http;
pub mod hub;
pub mod jwks;
pub mod lifecycle;
pub mod limits;
pub mod mailbox;
pub mod members;
pub mod metrics;
pub mod policy;
pub mod presence;
pub mod privacy;
pub mod refusal;
pub mod rpc;
pub mod server;
pub mod session;
pub mod subscribe;
pub mod tls;
pub mod watched;

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, RwLock};
use std::time::Duration;

use anyhow::Context as _;
use futures_util::StreamExt as _;
use switchboard_bus::store::{Store, StreamPosition};
use switchboard_bus::{EVENTS_STREAM, Publisher, Role};
use switchboard_schemas::ChannelName;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::auth::Verifier;
use crate::bridge::Bridge;
use crate::config::EdgeConfig;
use crate::hub::Hub;
use crate::limits::Users;
use crate::mailbox::{ConnControl, Mailbox, Outgoing};
use crate::members::Members;
use crate::metrics::Metrics;
use crate::policy::Policy;
use crate::presence::Presence;

/// Everything a session needs, shared by all of them.
#[derive(Debug)]
pub struct Edge {
    pub config: EdgeConfig,
    pub id: Arc<str>,
    pub verifier: Verifier,
    pub policy: Policy,
    pub members: Arc<Members>,
    pub hub: Arc<Hub>,
    pub bridge: Bridge,
    pub store: Store,
    pub publisher: Publisher,
    /// Which channels the workers archive (`SWITCHBOARD_ARCHIVE_NAMESPACES`).
    pub archive: archive::Archive,
    /// The publish hook, when one is configured (docs/protocol.md, section 10.13).
    pub hook: Option<hook::PublishHook>,
    pub nats: async_nats::Client,
    pub metrics: Arc<Metrics>,
    /// Connections per user and unauthenticated sockets on this edge.
    pub users: Arc<Users>,
    /// This edge's entries in the `presence` and `occupancy` buckets.
    pub presence: Arc<Presence>,
    /// The `EVENTS` stream's epoch and range, refreshed in the background.
    position: RwLock<StreamPosition>,
    next_conn: AtomicU64,
    /// Cancelled on SIGTERM: sessions say `bye` `draining`.
    pub draining: CancellationToken,
    /// Every session task, so shutdown can wait for them.
    pub sessions: TaskTracker,
}

impl Edge {
    /// Connects to NATS, loads membership, and returns the shared state.
    pub async fn start(config: EdgeConfig) -> anyhow::Result<Arc<Edge>> {
        let verifier = Verifier::start(&config).await?;
        let policy = match std::env::var_os("SWITCHBOARD_POLICY_FILE") {
            Some(path) => Policy::from_file(path.as_ref())?,
            None => Policy::default(),
        };
        let id: Arc<str> = config
            .edge_id
            .clone()
            .unwrap_or_else(|| format!("edge-{}", uuid::Uuid::now_v7().simple()))
            .into();
        // The id is part of KV keys (`<user>.<edge id>-<n>`): the channel id grammar.
        anyhow::ensure!(
            switchboard_schemas::UserId::parse(&id).is_ok(),
            "SWITCHBOARD_EDGE_ID must be 1 to 128 characters of [A-Za-z0-9_-], got {id:?}"
        );
        let metrics = Arc::new(Metrics::default());
        let hub = Arc::new(Hub::new(metrics.clone()));
        let (events_tx, mut events_rx) = tokio::sync::mpsc::unbounded_channel();
        let nats = config
            .nats
            .connect_options(Role::Edge, format!("switchboard-edge {id}"))
            .await?
            .retry_on_initial_connect()
            .event_callback(move |event| {
                let events_tx = events_tx.clone();
                async move {
                    let _ = events_tx.send(event);
                }
            })
            .connect(config.nats.servers())
            .await
            .with_context(|| format!("connecting to NATS at {}", config.nats.redacted_url()))?;
        let store = Store::new(nats.clone());
        let position = tokio::time::timeout(Duration::from_secs(30), async {
            loop {
                match store.position().await {
                    Ok(position) => return position,
                    Err(e) => {
                        tracing::warn!(error = %e, "EVENTS stream not available yet (run `switchboard init`)");
                        tokio::time::sleep(Duration::from_millis(500)).await;
                    }
                }
            }
        })
        .await
        .context("the EVENTS stream did not become available (run `switchboard init`)")?;
        let members = Arc::new(Members::default());
        let js = async_nats::jetstream::new(nats.clone());
        tokio::spawn(members.clone().follow(js, hub.clone()));
        let edge = Arc::new(Edge {
            bridge: Bridge::new(nats.clone(), hub.clone(), id.clone(), metrics.clone()),
            metrics,
            users: Arc::new(Users::new(&config)),
            presence: Arc::new(Presence::new(nats.clone(), id.clone(), config.heartbeat())),
            publisher: Publisher::new(nats.clone()),
            archive: archive::Archive::new(&config.archive_namespaces),
            hook: hook::PublishHook::from_config(&config),
            store,
            nats,
            id,
            verifier,
            policy,
            members,
            hub,
            position: RwLock::new(position),
            next_conn: AtomicU64::new(1),
            draining: CancellationToken::new(),
            sessions: TaskTracker::new(),
            config,
        });
        // NATS loses core messages while disconnected and drops them for a slow
        // subscriber: both mean channels must re-read the stream.
        let weak = Arc::downgrade(&edge);
        tokio::spawn(async move {
            // The first `Connected` is the initial connection, not a reconnect.
            let mut connected_before = false;
            while let Some(event) = events_rx.recv().await {
                let Some(edge) = weak.upgrade() else { break };
                match event {
                    async_nats::Event::Connected | async_nats::Event::SlowConsumer(_) => {
                        if matches!(event, async_nats::Event::Connected) {
                            if connected_before {
                                edge.metrics.count(&edge.metrics.nats_reconnects, 1);
                            }
                            connected_before = true;
                        }
                        tracing::info!(?event, "NATS event: re-syncing channels from the stream");
                        edge.bridge.resync_all();
                    }
                    other => tracing::info!(event = ?other, "NATS event"),
                }
            }
        });
        // A stream leader that dies between storing an event and republishing it leaves
        // a stored event no one forwarded live; the new leader does not forward it
        // either. Channels re-read the stream when a new leader is elected, so such an
        // event is late by an election, not until the channel's next event.
        let leader_elected = edge
            .nats
            .subscribe(format!(
                "$JS.EVENT.ADVISORY.STREAM.LEADER_ELECTED.{EVENTS_STREAM}"
            ))
            .await
            .context("subscribing to the EVENTS stream's leader advisories")?;
        // A watched user's privacy change: every watcher on this edge re-checks
        // (docs/protocol.md, section 9.4).
        let privacy = edge
            .nats
            .subscribe("int.privacy.>")
            .await
            .context("subscribing to privacy changes")?;
        let weak = Arc::downgrade(&edge);
        tokio::spawn(async move {
            let mut privacy = privacy;
            while let Some(change) = privacy.next().await {
                let Some(edge) = weak.upgrade() else { break };
                let target = change
                    .subject
                    .strip_prefix("int.privacy.")
                    .unwrap_or_default();
                let Ok(watched) = ChannelName::parse(&format!("presence:{target}")) else {
                    continue;
                };
                // Counted too, for watches being set up (see `lifecycle::ask_privacy`).
                for session in edge.hub.channel_changed(&watched) {
                    session.recheck(watched.clone());
                }
                // The user's own sessions announce `join`/`leave` by the new setting.
                for session in edge.hub.sessions_of_user(target) {
                    session.recheck(watched.clone());
                }
            }
        });
        let weak = Arc::downgrade(&edge);
        tokio::spawn(async move {
            let mut leader_elected = leader_elected;
            while leader_elected.next().await.is_some() {
                let Some(edge) = weak.upgrade() else { break };
                tracing::info!("EVENTS has a new leader: re-syncing channels from the stream");
                edge.bridge.resync_all();
            }
        });
        let weak = Arc::downgrade(&edge);
        tokio::spawn(async move {
            loop {
                tokio::time::sleep(Duration::from_secs(2)).await;
                let Some(edge) = weak.upgrade() else { break };
                if let Ok(position) = edge.store.position().await {
                    *edge.position.write().unwrap_or_else(|e| e.into_inner()) = position;
                }
            }
        });
        tokio::spawn(announce(Arc::downgrade(&edge)));
        tokio::time::timeout(
            Duration::from_secs(30),
            presence::start(&edge.presence, edge.config.heartbeat()),
        )
        .await
        .context(
            "the edges bucket did not take this edge's heartbeat in time (run `switchboard init`)",
        )?
        .context("writing this edge's heartbeat (run `switchboard init`)")?;
        tokio::time::timeout(Duration::from_secs(30), edge.members.loaded())
            .await
            .context("the members bucket did not load (run `switchboard init`)")?;
        Ok(edge)
    }

    /// The stream's epoch and range as last read (at most a couple of seconds old).
    pub fn position(&self) -> StreamPosition {
        self.position
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    pub fn next_conn(&self) -> u64 {
        self.next_conn.fetch_add(1, Ordering::Relaxed)
    }

    /// A new connection of `user`: its control (ended with the edge's draining) and its
    /// bounded queue of outgoing frames, for a WebSocket session or a fallback feed.
    pub fn open_mailbox(&self, user: Arc<str>) -> (Mailbox, Outgoing) {
        let control = Arc::new(ConnControl::new(self.next_conn(), user, &self.draining));
        Mailbox::new(
            self.config.send_queue,
            self.config.send_queue_bytes,
            control,
            self.metrics.clone(),
        )
    }

    /// Stops accepting work: every session says `bye` `draining` and closes, then the
    /// call returns once they are gone or the grace period is over.
    pub async fn drain(&self) {
        self.draining.cancel();
        self.sessions.close();
        let _ = tokio::time::timeout(self.config.drain_grace(), self.sessions.wait()).await;
        // With NATS away the deletes would wait for it forever; the heartbeat expires by
        // its TTL anyway and the workers end the entries, so an edge stopping during a
        // NATS outage still stops.
        if tokio::time::timeout(self.config.drain_grace(), self.presence.clear())
            .await
            .is_err()
        {
            tracing::warn!(
                "presence entries not deleted (NATS unreachable); they end with the heartbeat"
            );
        }
    }
}

/// Answers status requests for as long as the edge lives.
async fn announce(edge: std::sync::Weak<Edge>) {
    let Some(nats) = edge.upgrade().map(|e| e.nats.clone()) else {
        return;
    };
    let Ok(mut requests) = nats.subscribe(switchboard_bus::EDGES_STATUS_SUBJECT).await else {
        tracing::warn!("cannot answer status requests");
        return;
    };
    let started = time::OffsetDateTime::now_utc();
    while let Some(request) = requests.next().await {
        let (Some(edge), Some(reply)) = (edge.upgrade(), request.reply) else {
            break;
        };
        let load = |g: &std::sync::atomic::AtomicI64| g.load(Ordering::Relaxed);
        let status = serde_json::json!({
            "id": &*edge.id,
            "addr": edge.config.addr.to_string(),
            "connections": load(&edge.metrics.connections),
            "subscriptions": load(&edge.metrics.subscriptions),
            "channels": edge.hub.len(),
            "draining": edge.draining.is_cancelled(),
            "started": started.unix_timestamp(),
        });
        let _ = nats.publish(reply, status.to_string().into()).await;
    }
}

/// Serves the edge on `listener` (over TLS when `tls` is given) until `shutdown`
/// resolves, then drains.
pub async fn serve(
    edge: Arc<Edge>,
    listener: tokio::net::TcpListener,
    tls: Option<tls::Tls>,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> anyhow::Result<()> {
    let stop_accepting = CancellationToken::new();
    let router = http::router(edge.clone());
    let server = tokio::spawn(server::run(
        edge.clone(),
        listener,
        router,
        tls,
        stop_accepting.clone(),
    ));
    shutdown.await;
    tracing::info!("draining");
    stop_accepting.cancel();
    edge.drain().await;
    server.await?;
    Ok(())
}
