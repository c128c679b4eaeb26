//! The notifications job (docs/operations.md, section 3): domain events become per-user
//! notifications, announced in the app and, for users who are offline, pushed or
//! emailed.
//!
//! # What one event does
//!
//! The durable consumer `notifications` reads every stored event (`rt.<ns>.>` of every
//! namespace but `presence`, which it reads only when a rule applies there:
//! [`Rule::applies_in`]) and sets aside, by their `Rt-Type` header, those no
//! [rule](rules) is about. For the others:
//!
//! 1. The matching rule names the recipients: channel members by role (from the
//!    membership mirror, `switchboard.channel_members`), users named in `data`, the
//!    owner of a user channel, minus the actor if the rule says so. When the rule names
//!    members, the job first waits until the membership job has handled every event up
//!    to this one (its consumer's ack floor), so a `member.added` published just before
//!    a `bid.new` counts.
//! 2. Each recipient's preferences for the rule's category decide: `muted` creates
//!    nothing; `in_app` stores a notification (and, with a webhook, its `created` copy);
//!    `push` and `email` (never for `low` priority) create deliveries, due at once or
//!    after the [`escalation`] delay: push at once for users with no live connection in
//!    the `presence` bucket at this moment, after `push_after` for the others; email
//!    after `email_after`.
//! 3. One PostgreSQL transaction records the event in `switchboard.processed_events`,
//!    stores the notifications, emits `user.notification` (with the user's new unread
//!    count) to each `user:<id>` through the outbox, and inserts the deliveries. A
//!    redelivered event finds itself in `processed_events` and changes nothing; the
//!    `UNIQUE (event_id, user_id)` of notifications backs that up.
//!
//! A `message.receipt` event whose `read` cursor moved marks the reader's `message`
//! notifications about that conversation up to the cursor read, as `notifications.read`
//! would, which cancels their waiting push and email.
//!
//! # Beside the consumer
//!
//! - [`rpc`] serves `svc.notifications.list|read|preferences.get|preferences.set`.
//! - [`contacts`] serves the service-only `svc.contacts.set|get`: users' email addresses.
//! - [`push`] serves `svc.push.vapid|subscribe|unsubscribe`: users' Web Push
//!   subscriptions and FCM/APNs registrations.
//! - [`sink`] hands deliveries to the webhook and the `notify.push.<user>` /
//!   `notify.email.<user>` subjects, Web Push, FCM, APNs and SMTP, with retries, when
//!   they are due ([`escalation`]).
//! - retention: a periodic pass deleting notifications, deliveries and processed-event
//!   marks older than the configured retention. Events older than the retention create
//!   nothing, so a replay of the stream does not resurrect expired notifications.
//!
//! This job owns `switchboard.notifications`, `notification_preferences`,
//! `notification_deliveries`, `contacts`, `push_subscriptions`, `mobile_devices` and its
//! rows of `processed_events`. It reads
//! `channel_members` and the `presence` bucket. It publishes no event itself: its events
//! are outbox rows, so the outbox relay must run somewhere for them to reach clients.

pub mod apns;
pub mod contacts;
pub mod email;
pub mod escalation;
pub mod fcm;
pub mod mobile;
pub mod preferences;
pub mod presence;
pub mod push;
pub mod rpc;
pub mod rules;
pub mod settings;
pub mod sink;
pub mod store;
pub mod template;
pub mod webhook;
pub mod webpush;

use std::collections::{BTreeSet, HashMap, HashSet};
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use async_nats::jetstream;
use serde_json::Value;
use sqlx::{Connection, PgConnection, PgPool};
use switchboard_bus::{EVENTS_STREAM, headers};
use switchboard_schemas::event::types;
use switchboard_schemas::shapes::{NotificationData, NotificationRef, Priority};
use switchboard_schemas::{
    ChannelName, Envelope, EventId, Namespace, RawJson, SubjectKind, Timestamp, UserId,
};
use tokio::sync::{Notify, OnceCell};
use tokio_util::sync::CancellationToken;

use crate::dedicated::Dedicated;
use crate::job::{self, ConsumerSpec, Delivery, Job, JobError, Outcome};
use crate::membership::mirror::role_name;
use crate::membership::{self, Membership};
use crate::responder;
use contacts::Contacts;
use email::{EmailError, Mailer, SmtpUrl};
use escalation::{Escalation, ReadUpTo};
use preferences::Preferences;
use presence::Presence;
use rpc::{Rpc, user_channel};
use rules::{MAX_RECIPIENTS, MemberFilter, Rule, Rules, RulesError};
use settings::Hidden;
use sink::{Dispatcher, Outbound, SinkConfig};
use store::{NewDelivery, NewNotification, ReadTarget, StoreError};
use webhook::{Webhook, WebhookError, WebhookSecret, WebhookUrl};
use webpush::{EndpointHosts, PushError, Vapid, VapidError, WebPush};

/// The notifications job's settings (flags and environment variables).
#[derive(Debug, Clone, clap::Args)]
pub struct NotificationsConfig {
    /// Notification rules (JSON). Without it, the rules shipped in
    /// workers/rules/notifications.json (compiled in) apply.
    #[arg(long, env = "SWITCHBOARD_NOTIFICATIONS_RULES")]
    pub notifications_rules: Option<PathBuf>,

    /// Days notifications are kept; older ones are deleted, and events older than this
    /// notify nobody. 0 keeps them forever.
    #[arg(
        long,
        env = "SWITCHBOARD_NOTIFICATIONS_RETENTION_DAYS",
        default_value_t = 90
    )]
    pub notifications_retention_days: u32,

    /// How often expired notifications are deleted.
    #[arg(
        long,
        env = "SWITCHBOARD_NOTIFICATIONS_RETENTION_INTERVAL_MS",
        default_value_t = 3_600_000
    )]
    pub notifications_retention_interval_ms: u64,

    /// Wait for the membership job to have handled an event before choosing its
    /// recipients, so a member added just before an event is notified of it.
    #[arg(
        long,
        env = "SWITCHBOARD_NOTIFICATIONS_WAIT_FOR_MEMBERSHIP",
        default_value_t = true,
        action = clap::ArgAction::Set
    )]
    pub notifications_wait_for_membership: bool,

    /// Webhook receiving signed JSON POSTs (http:// or https://): each notification as it
    /// is created, pushes due to users with no registered push device, and email unless
    /// SWITCHBOARD_SMTP_URL sends it.
    /// None: no webhook.
    #[arg(
        long,
        env = "SWITCHBOARD_NOTIFY_WEBHOOK_URL",
        hide_env_values = true,
        value_parser = webhook::url_parser()
    )]
    pub notify_webhook_url: Option<WebhookUrl>,

    /// Standard Webhooks signing secret, `whsec_<base64 key>`. Without it requests are
    /// not signed (a warning at start).
    #[arg(
        long,
        env = "SWITCHBOARD_NOTIFY_WEBHOOK_SECRET",
        hide_env_values = true,
        value_parser = webhook::secret_parser()
    )]
    pub notify_webhook_secret: Option<WebhookSecret>,

    /// PEM file of CA certificates trusted for an https webhook besides the system's.
    #[arg(long, env = "SWITCHBOARD_NOTIFY_WEBHOOK_CA")]
    pub notify_webhook_ca: Option<PathBuf>,

    /// VAPID private key for Web Push: P-256 in PEM (PKCS#8 or SEC1) or base64url raw
    /// 32 bytes (`switchboard vapid` makes a pair). None: no Web Push.
    #[arg(
        long,
        env = "SWITCHBOARD_VAPID_PRIVATE_KEY",
        hide_env_values = true,
        value_parser = Hidden::parser("SWITCHBOARD_VAPID_PRIVATE_KEY")
    )]
    pub vapid_private_key: Option<Hidden>,

    /// Contact push services can reach the operator at: `mailto:` or `https:` URL.
    #[arg(long, env = "SWITCHBOARD_VAPID_SUBJECT")]
    pub vapid_subject: Option<String>,

    /// Hosts push subscriptions' endpoints may be on: comma-separated names or
    /// `.suffix`es. The default is the browser vendors' push services.
    #[arg(
        long,
        env = "SWITCHBOARD_PUSH_ENDPOINT_HOSTS",
        default_value = webpush::DEFAULT_ENDPOINT_HOSTS
    )]
    pub push_endpoint_hosts: String,

    /// FCM service-account JSON (inline, or the path of the file Firebase gives) for
    /// push to Android and other FCM apps through the HTTP v1 API. None: no FCM.
    #[arg(
        long,
        env = "SWITCHBOARD_FCM_CREDENTIALS",
        hide_env_values = true,
        value_parser = Hidden::parser("SWITCHBOARD_FCM_CREDENTIALS")
    )]
    pub fcm_credentials: Option<Hidden>,

    /// OAuth token URL for FCM. Default: the credentials' token_uri.
    #[arg(long, env = "SWITCHBOARD_FCM_TOKEN_URL")]
    pub fcm_token_url: Option<String>,

    /// FCM API base URL; messages go to {it}/v1/projects/{project}/messages:send.
    #[arg(long, env = "SWITCHBOARD_FCM_ENDPOINT", default_value = fcm::DEFAULT_ENDPOINT)]
    pub fcm_endpoint: String,

    /// APNs token key: the .p8 P-256 key Apple gives (PEM inline, or its path). None: no
    /// APNs.
    #[arg(
        long,
        env = "SWITCHBOARD_APNS_KEY",
        hide_env_values = true,
        value_parser = Hidden::parser("SWITCHBOARD_APNS_KEY")
    )]
    pub apns_key: Option<Hidden>,

    /// The APNs key's id (10 characters).
    #[arg(long, env = "SWITCHBOARD_APNS_KEY_ID")]
    pub apns_key_id: Option<String>,

    /// The Apple developer team id (10 characters).
    #[arg(long, env = "SWITCHBOARD_APNS_TEAM_ID")]
    pub apns_team_id: Option<String>,

    /// APNs base URL (HTTP/2; http:// means cleartext HTTP/2 with prior knowledge, for a
    /// local test server). Development builds use https://api.sandbox.push.apple.com.
    #[arg(long, env = "SWITCHBOARD_APNS_ENDPOINT", default_value = apns::DEFAULT_ENDPOINT)]
    pub apns_endpoint: String,

    /// How long a push service keeps an undelivered push (the TTL header), in seconds.
    #[arg(long, env = "SWITCHBOARD_PUSH_TTL_S", default_value_t = 86_400)]
    pub push_ttl_s: u64,

    /// SMTP server for email: `smtp://host:port` (plain), `smtp://...?tls=starttls`,
    /// `smtps://` (TLS), credentials as `user:password@` (percent-encoded). None: email
    /// goes to the webhook and the subjects instead.
    #[arg(
        long,
        env = "SWITCHBOARD_SMTP_URL",
        hide_env_values = true,
        value_parser = email::url_parser()
    )]
    pub smtp_url: Option<SmtpUrl>,

    /// PEM file of CA certificates trusted for the SMTP server's TLS (smtps:// or
    /// STARTTLS) besides the system's.
    #[arg(long, env = "SWITCHBOARD_SMTP_CA")]
    pub smtp_ca: Option<PathBuf>,

    /// The sender of email: `alerts@example.com` or `Example <alerts@example.com>`.
    #[arg(long, env = "SWITCHBOARD_EMAIL_FROM")]
    pub email_from: Option<String>,

    /// How long one webhook request, push or email may take.
    #[arg(
        long,
        env = "SWITCHBOARD_NOTIFY_WEBHOOK_TIMEOUT_MS",
        default_value_t = 5_000
    )]
    pub notify_webhook_timeout_ms: u64,

    /// Publish push and email on the NATS subjects notify.push.<user> and
    /// notify.email.<user>.
    #[arg(
        long,
        env = "SWITCHBOARD_NOTIFY_SUBJECTS",
        default_value_t = true,
        action = clap::ArgAction::Set
    )]
    pub notify_subjects: bool,

    /// Attempts per delivery before it is given up.
    #[arg(long, env = "SWITCHBOARD_NOTIFY_MAX_ATTEMPTS", default_value_t = 10)]
    pub notify_max_attempts: u32,

    /// Delay before the first retry of a delivery; it doubles per attempt.
    #[arg(
        long,
        env = "SWITCHBOARD_NOTIFY_RETRY_BASE_MS",
        default_value_t = 1_000
    )]
    pub notify_retry_base_ms: u64,

    /// Longest delay between two attempts of a delivery.
    #[arg(
        long,
        env = "SWITCHBOARD_NOTIFY_RETRY_MAX_MS",
        default_value_t = 300_000
    )]
    pub notify_retry_max_ms: u64,

    /// How often due deliveries (retries, other copies' work) are looked for.
    #[arg(long, env = "SWITCHBOARD_NOTIFY_POLL_MS", default_value_t = 1_000)]
    pub notify_poll_ms: u64,

    /// Seconds a notification may stay unread before a user who is online is pushed too,
    /// for rules without their own `push_after`. Unset: only users offline when it is
    /// created are pushed.
    #[arg(long, env = "SWITCHBOARD_NOTIFY_PUSH_AFTER_S")]
    pub notify_push_after_s: Option<u64>,

    /// Seconds a notification may stay unread before it is emailed, for rules without
    /// their own `email_after`. Unset: 900 for high and urgent priority, never for others.
    #[arg(long, env = "SWITCHBOARD_NOTIFY_EMAIL_AFTER_S")]
    pub notify_email_after_s: Option<u64>,
}

/// Why the notifications job could not start: a setting to fix.
#[derive(Debug, thiserror::Error)]
pub enum SetupError {
    #[error(transparent)]
    Rules(#[from] RulesError),
    #[error(transparent)]
    Webhook(#[from] WebhookError),
    #[error(transparent)]
    Vapid(#[from] VapidError),
    #[error("cannot set up Web Push: {0}")]
    WebPush(#[from] PushError),
    #[error(transparent)]
    Email(#[from] EmailError),
    #[error(transparent)]
    Fcm(#[from] fcm::FcmError),
    #[error(transparent)]
    Apns(#[from] apns::ApnsError),
}

impl NotificationsConfig {
    fn sinks(&self) -> Result<SinkConfig, SetupError> {
        let timeout = Duration::from_millis(self.notify_webhook_timeout_ms.max(1));
        let webhook = match &self.notify_webhook_url {
            Some(url) => {
                let webhook = Webhook::new(
                    url.clone(),
                    self.notify_webhook_secret.clone(),
                    self.notify_webhook_ca.as_deref(),
                    timeout,
                )?;
                if !webhook.signed() {
                    tracing::warn!(
                        "SWITCHBOARD_NOTIFY_WEBHOOK_SECRET is not set: webhook requests are not signed, so the receiver cannot tell them from anyone else's"
                    );
                }
                Some(webhook)
            }
            None => None,
        };
        let webpush = match &self.vapid_private_key {
            Some(key) => {
                let subject = self.vapid_subject.as_deref().ok_or(VapidError::NoSubject)?;
                let vapid = Vapid::new(&key.0, subject)?;
                Some(Arc::new(WebPush::new(
                    vapid,
                    Duration::from_secs(self.push_ttl_s),
                    timeout,
                )?))
            }
            None => None,
        };
        let mailer = match &self.smtp_url {
            Some(url) => Some(Arc::new(Mailer::new(
                url.clone(),
                self.email_from.as_deref(),
                self.smtp_ca.as_deref(),
                timeout,
            )?)),
            None => None,
        };
        let fcm = match &self.fcm_credentials {
            Some(credentials) => Some(Arc::new(fcm::Fcm::new(
                &credentials.0,
                self.fcm_token_url.as_deref(),
                Some(&self.fcm_endpoint),
                timeout,
            )?)),
            None => None,
        };
        let apns = match &self.apns_key {
            Some(key) => Some(Arc::new(apns::Apns::new(
                &key.0,
                self.apns_key_id.as_deref(),
                self.apns_team_id.as_deref(),
                Some(&self.apns_endpoint),
                Duration::from_secs(self.push_ttl_s),
                timeout,
            )?)),
            None => None,
        };
        Ok(SinkConfig {
            webhook,
            webpush,
            mailer,
            fcm,
            apns,
            push_hosts: EndpointHosts::parse(&self.push_endpoint_hosts),
            webhook_timeout: timeout,
            subjects: self.notify_subjects,
            max_attempts: self.notify_max_attempts.max(1),
            retry_base: Duration::from_millis(self.notify_retry_base_ms.max(1)),
            retry_max: Duration::from_millis(self.notify_retry_max_ms.max(1)),
            poll: Duration::from_millis(self.notify_poll_ms.max(10)),
        })
    }
}

/// Everything the notifications job runs: the consumer, the RPCs, the dispatcher and
/// the retention pass.
pub struct Service {
    job: Notifications,
    rpc: Rpc,
    push: push::Push,
    dispatcher: Dispatcher,
    client: async_nats::Client,
    retention_days: u32,
    retention_interval: Duration,
}

impl Service {
    /// Loads the rules and sets up the sinks; a bad rules file or sink setting stops the
    /// worker here, at start-up.
    pub fn new(
        config: &NotificationsConfig,
        db: PgPool,
        client: async_nats::Client,
    ) -> Result<Service, SetupError> {
        let rules = Rules::load(config.notifications_rules.as_deref())?;
        tracing::info!(
            rules = rules.len(),
            file = ?config.notifications_rules,
            webhook = ?config.notify_webhook_url.as_ref().map(ToString::to_string),
            subjects = config.notify_subjects,
            web_push = config.vapid_private_key.is_some(),
            fcm = config.fcm_credentials.is_some(),
            apns = config.apns_key.is_some(),
            smtp = ?config.smtp_url.as_ref().map(ToString::to_string),
            "notification rules loaded"
        );
        let js = jetstream::new(client.clone());
        let wake = Arc::new(Notify::new());
        let sinks = config.sinks()?;
        Ok(Service {
            job: Notifications {
                rules,
                conn: Dedicated::new(&db),
                db: db.clone(),
                js: js.clone(),
                presence: Presence::new(client.clone()),
                sinks: sinks.sinks(),
                email_by_smtp: sinks.mailer.is_some(),
                escalation: Escalation {
                    push_after: config.notify_push_after_s.map(Duration::from_secs),
                    email_after: config.notify_email_after_s.map(Duration::from_secs),
                },
                wake: wake.clone(),
                retention_days: config.notifications_retention_days,
                wait_for_membership: config.notifications_wait_for_membership,
                membership_floor: AtomicU64::new(0),
                membership_missing: AtomicBool::new(false),
                events: OnceCell::new(),
            },
            rpc: Rpc::new(db.clone()),
            push: push::Push::new(
                db.clone(),
                sinks.webpush.clone(),
                sinks.push_hosts.clone(),
                sinks.mobile(),
            ),
            dispatcher: Dispatcher::new(db, client.clone(), sinks, wake),
            client,
            retention_days: config.notifications_retention_days,
            retention_interval: Duration::from_millis(
                config.notifications_retention_interval_ms.max(10),
            ),
        })
    }

    pub async fn run(self, settings: job::Settings, shutdown: CancellationToken) {
        let js = self.job.js.clone();
        let db = self.job.db.clone();
        tokio::join!(
            job::run(self.job, js, settings, shutdown.clone()),
            responder::serve(Arc::new(self.rpc), self.client.clone(), shutdown.clone()),
            responder::serve(
                Arc::new(Contacts::new(db.clone())),
                self.client.clone(),
                shutdown.clone()
            ),
            responder::serve(Arc::new(self.push), self.client.clone(), shutdown.clone()),
            self.dispatcher.run(shutdown.clone()),
            expire(db, self.retention_days, self.retention_interval, shutdown),
        );
    }
}

/// Deletes what is older than `days`, now and every `interval`, until shutdown.
async fn expire(db: PgPool, days: u32, interval: Duration, shutdown: CancellationToken) {
    if days == 0 {
        return;
    }
    loop {
        match store::expire(&db, days, 5_000).await {
            Ok(0) => {}
            Ok(deleted) => tracing::info!(deleted, days, "expired old notifications"),
            Err(error) => {
                tracing::warn!(%error, "expiring old notifications failed; retrying later")
            }
        }
        tokio::select! {
            () = shutdown.cancelled() => return,
            () = tokio::time::sleep(interval) => {}
        }
    }
}

/// The consumer side: one event at a time, see the module docs.
pub struct Notifications {
    rules: Rules,
    db: PgPool,
    /// The connection events are handled on, one at a time.
    conn: Dedicated,
    js: jetstream::Context,
    presence: Presence,
    sinks: Vec<&'static str>,
    /// SMTP is configured: email goes there only.
    email_by_smtp: bool,
    /// When push and email go out.
    escalation: Escalation,
    wake: Arc<Notify>,
    retention_days: u32,
    wait_for_membership: bool,
    /// The membership consumer's ack floor as last seen.
    membership_floor: AtomicU64,
    membership_missing: AtomicBool,
    /// The EVENTS stream, looked up once: asking for the membership consumer's floor then
    /// takes one request instead of two.
    events: OnceCell<jetstream::stream::Stream>,
}

/// An event a rule applies to, read and checked.
struct Event<'a> {
    envelope: Envelope,
    channel: ChannelName,
    seq: u64,
    rule: &'a Rule,
    data: Value,
    /// The event's W3C trace context, passed on to the requests it causes.
    traceparent: Option<String>,
}

/// What storing one event produced.
#[derive(Debug, Default)]
struct Stored {
    notifications: usize,
    /// Deliveries to attempt at once (others wait for their escalation delay).
    due_now: usize,
}

/// How long the job waits in place for the membership mirror before it hands the event
/// back to the retry loop.
const MEMBERSHIP_WAIT: Duration = Duration::from_secs(2);

impl Job for Notifications {
    const NAME: &'static str = "notifications";

    fn consumer(&self) -> ConsumerSpec {
        ConsumerSpec {
            stream: EVENTS_STREAM,
            filter_subjects: job::durable_subjects(|ns| {
                ns != Namespace::Presence || self.rules.apply_in(ns)
            }),
            description: "notifications worker: domain events -> notifications, push and email",
        }
    }

    async fn handle(&self, delivery: &Delivery<'_>) -> Result<Outcome, JobError> {
        let ty = delivery.header(headers::RT_TYPE);
        let receipt = ty == Some(types::MESSAGE_RECEIPT);
        if receipt {
            self.read_receipt(delivery).await?;
        }
        if ty == Some(types::MESSAGE_DELETED) {
            crate::erase::forget_deleted(&self.db, delivery)
                .await
                .map_err(JobError::transient)?;
        }
        if ty.is_some_and(|ty| !self.rules.wants_type(ty)) {
            return Ok(if receipt {
                Outcome::Applied
            } else {
                Outcome::Ignored
            });
        }
        let Some(event) = self.read(delivery)? else {
            return Ok(Outcome::Ignored);
        };
        // No check for an event handled before here: the transaction that stores its
        // notifications claims it first (`processed_events`) and changes nothing when it
        // was (step 3), so a redelivery costs its reads and a rollback, and every first
        // delivery one round trip less.
        // Members of a namespace the membership job does not read are none, whenever.
        if event.rule.to.members.is_some() && membership::reads(event.channel.namespace()) {
            self.wait_for_membership(delivery.seq).await?;
        }
        let stored = self.notify(&event).await?;
        tracing::debug!(
            event_id = event.envelope.id.as_str(),
            ty = event.envelope.ty.as_str(),
            channel = %event.channel,
            notifications = stored.notifications,
            due_now = stored.due_now,
            "event notified"
        );
        if stored.due_now > 0 {
            self.wake.notify_one();
        }
        Ok(Outcome::Applied)
    }
}

impl Notifications {
    /// The event in `delivery`, if a rule applies to it; poison if it is unreadable.
    fn read<'a>(&'a self, delivery: &Delivery<'_>) -> Result<Option<Event<'a>>, JobError> {
        let envelope = Envelope::decode(&delivery.message.payload, delivery.is_json())
            .map_err(JobError::poison)?;
        let ty = envelope.ty.as_str();
        if let Some(header) = delivery.header(headers::RT_TYPE).filter(|h| *h != ty) {
            return Err(JobError::poison(format!(
                "Rt-Type header {header:?} disagrees with the envelope's type {ty:?}"
            )));
        }
        let channel = match ChannelName::from_subject(&delivery.message.subject) {
            Ok((SubjectKind::Durable, channel)) => channel,
            Ok(_) => return Err(JobError::poison("not a durable event subject")),
            Err(error) => return Err(JobError::poison(error)),
        };
        let Some(rule) = self.rules.find(ty, channel.namespace()) else {
            return Ok(None);
        };
        if self.expired(&envelope.timestamp) {
            tracing::debug!(
                event_id = envelope.id.as_str(),
                "event older than the notification retention: nobody notified"
            );
            return Ok(None);
        }
        // `data` is JSON by construction; only a tree deeper than serde_json's recursion
        // limit fails to parse, and then templates see no fields.
        let data = envelope.data.decode::<Value>().unwrap_or(Value::Null);
        // While exporting, the requests this event causes are children of the job's span
        // for it (docs/operations.md, "Traces"); else they carry the event's own context.
        let incoming = delivery
            .header(webhook::TRACEPARENT)
            .filter(|t| webhook::valid_traceparent(t));
        let traceparent = switchboard_bus::traces::traceparent(&tracing::Span::current(), incoming)
            .map(|t| t.as_str().to_string());
        Ok(Some(Event {
            envelope,
            channel,
            seq: delivery.seq,
            rule,
            data,
            traceparent,
        }))
    }

    fn expired(&self, timestamp: &Timestamp) -> bool {
        if self.retention_days == 0 {
            return false;
        }
        let age = Timestamp::now().unix_nanos() - timestamp.unix_nanos();
        age > i128::from(self.retention_days) * 86_400 * 1_000_000_000
    }

    /// Returns once the membership job has handled every event up to `seq`.
    async fn wait_for_membership(&self, seq: u64) -> Result<(), JobError> {
        if !self.wait_for_membership || self.membership_floor.load(Ordering::Relaxed) >= seq {
            return Ok(());
        }
        let deadline = Instant::now() + MEMBERSHIP_WAIT;
        loop {
            let stream = self
                .events
                .get_or_try_init(|| self.js.get_stream(EVENTS_STREAM))
                .await
                .map_err(JobError::transient)?;
            match stream.consumer_info(Membership::NAME).await {
                Ok(info) => {
                    let floor = info.ack_floor.stream_sequence;
                    self.membership_floor.fetch_max(floor, Ordering::Relaxed);
                    if floor >= seq {
                        return Ok(());
                    }
                }
                Err(error) if is_consumer_not_found(&error) => {
                    if !self.membership_missing.swap(true, Ordering::Relaxed) {
                        tracing::warn!(
                            "the membership consumer does not exist: recipients come from the membership mirror as it is (run the membership job)"
                        );
                    }
                    return Ok(());
                }
                Err(error) => return Err(JobError::transient(error)),
            }
            if Instant::now() > deadline {
                return Err(JobError::transient(format!(
                    "the membership job has not yet handled stream sequence {seq}"
                )));
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// Decides and stores what `event` produces, on the job's own connection: this runs
    /// once per event, and a pooled connection would cost a round trip more each time
    /// ([`Dedicated`]).
    async fn notify(&self, event: &Event<'_>) -> Result<Stored, JobError> {
        self.conn
            .run(async |conn| self.notify_on(conn, event).await)
            .await
    }

    async fn notify_on(
        &self,
        conn: &mut PgConnection,
        event: &Event<'_>,
    ) -> Result<Stored, JobError> {
        let recipients = self
            .recipients(conn, event)
            .await
            .map_err(JobError::transient)?;
        if recipients.is_empty() {
            return Ok(Stored::default());
        }
        let rule = event.rule;
        let preferences = store::preferences_for(conn, rule.category, &recipients)
            .await
            .map_err(JobError::transient)?;
        let outbound = rule.priority != Priority::Low && !self.sinks.is_empty();
        // Only whether to push at once depends on who is online now.
        let may_push: Vec<UserId> = recipients
            .iter()
            .filter(|user| {
                let p = preferences.get(*user).copied().unwrap_or_default();
                outbound && !p.muted && p.push
            })
            .cloned()
            .collect();
        let online = if may_push.is_empty() {
            HashSet::new()
        } else {
            self.presence
                .online(&may_push)
                .await
                .map_err(JobError::transient)?
        };
        let (title, message) = rule.render(&event.envelope, &event.channel, &event.data);
        let decided = Decided {
            event,
            title: &title,
            message: &message,
            preferences: &preferences,
            online: &online,
            outbound,
            push_after: self.escalation.push_after(rule),
            email_after: self.escalation.email_after(rule),
        };
        self.store(conn, &recipients, &decided)
            .await
            .map_err(JobError::transient)
    }

    async fn recipients(
        &self,
        conn: &mut PgConnection,
        event: &Event<'_>,
    ) -> Result<Vec<UserId>, StoreError> {
        let to = &event.rule.to;
        let mut users = BTreeSet::new();
        if let Some(filter) = &to.members {
            let roles = match filter {
                MemberFilter::All => None,
                MemberFilter::Roles(roles) => Some(roles.iter().copied().map(role_name).collect()),
            };
            users.extend(store::members(conn, &event.channel, roles, MAX_RECIPIENTS + 1).await?);
        }
        users.extend(event.rule.direct_recipients(&event.channel, &event.data));
        if to.except_actor
            && let Some(actor) = &event.envelope.actor
        {
            users.retain(|user: &UserId| user.as_str() != actor.id);
        }
        if users.len() > MAX_RECIPIENTS {
            tracing::warn!(
                event_id = event.envelope.id.as_str(),
                recipients = users.len(),
                "more recipients than {MAX_RECIPIENTS}; the rest are not notified"
            );
        }
        Ok(users.into_iter().take(MAX_RECIPIENTS).collect())
    }

    /// The transaction of step 3 in the module docs.
    async fn store(
        &self,
        conn: &mut PgConnection,
        recipients: &[UserId],
        decided: &Decided<'_, '_>,
    ) -> Result<Stored, StoreError> {
        let event = decided.event;
        let rule = event.rule;
        let mut stored = Stored::default();
        // Whose notifications this transaction changes: their locks come with the claim.
        let in_app: Vec<&UserId> = recipients
            .iter()
            .filter(|user| {
                let p = decided.preferences.get(*user).copied().unwrap_or_default();
                p.stores_in_app()
            })
            .collect();
        let mut tx = conn.begin().await?;
        if !store::claim_event(&mut tx, &event.envelope.id, &in_app).await? {
            tracing::debug!(
                event_id = event.envelope.id.as_str(),
                "already notified; this delivery changes nothing"
            );
            tx.rollback().await?;
            return Ok(stored);
        }
        for user in recipients {
            let preferences = decided.preferences.get(user).copied().unwrap_or_default();
            if preferences.muted {
                continue;
            }
            let mut in_app = None;
            // The users whose locks the claim took: the same test.
            if preferences.stores_in_app() {
                let id = new_notification_id();
                let new = NewNotification {
                    id: &id,
                    user,
                    event_id: &event.envelope.id,
                    category: rule.category,
                    title: decided.title,
                    message: decided.message,
                    priority: rule.priority,
                    ref_channel: &event.channel,
                    ref_seq: event.seq,
                };
                if let Some((created_at, unread)) =
                    store::insert_notification(&mut tx, &new).await?
                {
                    let data = NotificationData {
                        id: id.clone(),
                        category: rule.category,
                        title: decided.title.to_string(),
                        message: decided.message.to_string(),
                        priority: rule.priority,
                        reference: event.reference(),
                        unread,
                        created_at,
                    };
                    let event_id = EventId::derive(&[types::USER_NOTIFICATION, &id]);
                    let data =
                        RawJson::encode(&data).map_err(|e| StoreError::Row(e.to_string()))?;
                    store::emit(
                        &mut tx,
                        &user_channel(user),
                        types::USER_NOTIFICATION,
                        data.as_str(),
                        Some(&event_id),
                    )
                    .await?;
                    stored.notifications += 1;
                    let created = InApp {
                        id,
                        created_at,
                        unread,
                    };
                    if self.sinks.contains(&sink::WEBHOOK) {
                        self.store_created(&mut tx, user, &created, decided).await?;
                        stored.due_now += 1;
                    }
                    in_app = Some(created);
                }
            }
            if decided.outbound {
                stored.due_now += self
                    .store_deliveries(&mut tx, user, preferences, in_app.as_ref(), decided)
                    .await?;
            }
        }
        tx.commit().await?;
        Ok(stored)
    }

    /// The webhook's copy of the notification as it is created.
    async fn store_created(
        &self,
        tx: &mut sqlx::PgConnection,
        user: &UserId,
        created: &InApp,
        decided: &Decided<'_, '_>,
    ) -> Result<(), StoreError> {
        let event = decided.event;
        let outbound = decided.outbound(user, sink::CREATED, Some(created));
        let payload =
            serde_json::to_string(&outbound).map_err(|e| StoreError::Row(e.to_string()))?;
        let new = NewDelivery {
            event_id: &event.envelope.id,
            user,
            medium: sink::CREATED,
            sink: sink::WEBHOOK,
            target: "",
            payload: &payload,
            traceparent: event.traceparent.as_deref(),
            notification_id: Some(&created.id),
            after: Duration::ZERO,
        };
        store::insert_delivery(tx, &new).await
    }

    /// The push and email rows for `user`, due at once or after the escalation delay
    /// ([`escalation`]); how many are due at once.
    async fn store_deliveries(
        &self,
        tx: &mut sqlx::PgConnection,
        user: &UserId,
        preferences: Preferences,
        in_app: Option<&InApp>,
        decided: &Decided<'_, '_>,
    ) -> Result<usize, StoreError> {
        let event = decided.event;
        let push_after = if decided.online.contains(user) {
            decided.push_after
        } else {
            Some(Duration::ZERO)
        };
        let mut due_now = 0;
        for (medium, after) in [
            (sink::PUSH, push_after.filter(|_| preferences.push)),
            (
                sink::EMAIL,
                decided.email_after.filter(|_| preferences.email),
            ),
        ] {
            let Some(after) = after else {
                continue;
            };
            let outbound = decided.outbound(user, medium, in_app);
            let payload =
                serde_json::to_string(&outbound).map_err(|e| StoreError::Row(e.to_string()))?;
            // A push goes to each of the user's devices (Web Push, FCM, APNs), one row
            // each; to the webhook (`push_due`) only when the user has none.
            let mut devices: HashMap<&'static str, Vec<String>> = HashMap::new();
            if medium == sink::PUSH {
                for sink in &self.sinks {
                    let targets = match *sink {
                        sink::WEBPUSH => store::push_targets(tx, user).await?,
                        sink::FCM | sink::APNS => store::mobile_targets(tx, user, sink).await?,
                        _ => continue,
                    };
                    devices.insert(sink, targets);
                }
            }
            let has_device = devices.values().any(|targets| !targets.is_empty());
            for sink in &self.sinks {
                if !sink::carries(sink, medium, self.email_by_smtp) {
                    continue;
                }
                let targets = match devices.get(sink) {
                    Some(targets) => targets.clone(),
                    None if *sink == sink::WEBHOOK && medium == sink::PUSH && has_device => {
                        Vec::new()
                    }
                    None => vec![String::new()],
                };
                for target in &targets {
                    let new = NewDelivery {
                        event_id: &event.envelope.id,
                        user,
                        medium,
                        sink,
                        target,
                        payload: &payload,
                        traceparent: event.traceparent.as_deref(),
                        notification_id: in_app.map(|n| n.id.as_str()),
                        after,
                    };
                    store::insert_delivery(tx, &new).await?;
                    if after.is_zero() {
                        due_now += 1;
                    }
                }
            }
        }
        Ok(due_now)
    }

    /// Marks the `message` notifications a conversation's `read` receipt covers read.
    async fn read_receipt(&self, delivery: &Delivery<'_>) -> Result<(), JobError> {
        let envelope = Envelope::decode(&delivery.message.payload, delivery.is_json())
            .map_err(JobError::poison)?;
        let channel = match ChannelName::from_subject(&delivery.message.subject) {
            Ok((SubjectKind::Durable, channel)) => channel,
            Ok(_) => return Err(JobError::poison("not a durable event subject")),
            Err(error) => return Err(JobError::poison(error)),
        };
        let Some(read) = ReadUpTo::from_receipt(&envelope, &channel).map_err(JobError::poison)?
        else {
            return Ok(());
        };
        let target = ReadTarget::MessagesUpTo {
            channel: &read.conversation,
            seq: read.seq,
        };
        let unread = self
            .conn
            .run(async |conn| store::read(conn, &read.user, target).await)
            .await
            .map_err(JobError::transient)?;
        tracing::debug!(
            user = %read.user,
            conversation = %read.conversation,
            seq = read.seq,
            unread,
            "read receipt applied to the user's message notifications"
        );
        Ok(())
    }
}

impl Event<'_> {
    /// Where the event is stored: what a notification about it points at.
    fn reference(&self) -> NotificationRef {
        NotificationRef {
            channel: self.channel.clone(),
            seq: self.seq,
        }
    }
}

/// The in-app notification a push or email is about.
struct InApp {
    id: String,
    created_at: Timestamp,
    /// The user's unread count with it.
    unread: u64,
}

/// What was decided for an event before its transaction.
struct Decided<'e, 'r> {
    event: &'e Event<'r>,
    title: &'e str,
    message: &'e str,
    preferences: &'e HashMap<UserId, Preferences>,
    online: &'e HashSet<UserId>,
    /// Whether the rule's notifications may leave at all (priority, configured sinks).
    outbound: bool,
    /// How long an online user's notification may stay unread before it is pushed.
    push_after: Option<Duration>,
    /// How long a notification may stay unread before it is emailed.
    email_after: Option<Duration>,
}

impl Decided<'_, '_> {
    /// What the sinks receive about `user`'s notification, for `medium`.
    fn outbound(&self, user: &UserId, medium: &'static str, in_app: Option<&InApp>) -> Outbound {
        let event = self.event;
        Outbound {
            key: format!("{}/{user}/{medium}", event.envelope.id),
            event: sink::event_of(medium),
            medium: (medium != sink::CREATED).then_some(medium),
            user: user.to_string(),
            notification_id: in_app.map(|n| n.id.clone()),
            category: event.rule.category,
            priority: event.rule.priority,
            title: self.title.to_string(),
            message: self.message.to_string(),
            reference: event.reference(),
            event_id: event.envelope.id.to_string(),
            event_type: event.envelope.ty.to_string(),
            created_at: in_app.map_or_else(Timestamp::now, |n| n.created_at),
            unread: in_app.map(|n| n.unread),
        }
    }
}

/// A fresh notification id: `ntf_` and 26 characters, time-ordered like event ids, so
/// that ordering by id orders by creation.
fn new_notification_id() -> String {
    let event_id = EventId::generate();
    format!("ntf_{}", &event_id.as_str()["evt_".len()..])
}

fn is_consumer_not_found(error: &jetstream::context::ConsumerInfoError) -> bool {
    error.kind() == jetstream::context::ConsumerInfoErrorKind::NotFound
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn notification_ids_are_time_ordered() {
        let ids: Vec<String> = (0..100).map(|_| new_notification_id()).collect();
        for pair in ids.windows(2) {
            assert!(pair[0] < pair[1]);
        }
        assert!(
            ids[0].starts_with("ntf_0") && ids[0].len() == 30,
            "{}",
            ids[0]
        );
    }
}
