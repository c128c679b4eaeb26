//! Push and email on their way out: the outbound sinks and the dispatcher that feeds
//! them from `switchboard.notification_deliveries`.
//!
//! Six sinks, each optional:
//!
//! - **webhook**: `POST <SWITCHBOARD_NOTIFY_WEBHOOK_URL>` with the [`Outbound`] JSON:
//!   `"event":"created"` for each notification as it is created, `"push_due"` when a
//!   push is due for a user with no registered push device, and `"email_due"` when an
//!   email is due and no SMTP server sends it. Each is
//!   signed ([`super::webhook`]), with the headers `Idempotency-Key` and `webhook-id`
//!   (both the key) and the event's `traceparent`. A 2xx answer delivers; 408, 429, 5xx and network
//!   errors are retried with capped exponential backoff and jitter; any other answer (a
//!   4xx, a redirect) fails the delivery for good. The receiver should dedupe on the key:
//!   a crash between its 2xx and the worker recording it sends the same key again.
//! - **subject**: core NATS publish of the same JSON, for every push and email due, on
//!   `notify.push.<user>` or
//!   `notify.email.<user>` (header `Nats-Msg-Id` = the key), flushed to the server, for
//!   senders written against NATS. Nothing is stored unless an operator adds a stream
//!   over `notify.>`, which then dedupes on the key.
//!
//! - **webpush**: the push, encrypted, to each of the user's Web Push subscriptions
//!   ([`super::webpush`]), one row per subscription. The payload is the notification
//!   JSON of `user.notification`. 2xx delivers; 404 and 410 delete the subscription
//!   (the browser dropped it) and end the row; 408, 429, 5xx and network errors retry;
//!   other answers fail the row for good.
//!
//! - **fcm**, **apns**: the push to each of the user's phones registered with FCM or
//!   APNs ([`super::fcm`], [`super::apns`]), one row per device. An unregistered or
//!   invalid token deletes the device and ends the row; the rest as for Web Push.
//!
//! - **smtp**: the email, to the address `contacts.set` stored for the user
//!   ([`super::email`]), plain text and HTML. With SMTP configured, email goes only here
//!   (not to the webhook or the subjects), so nobody gets it twice. No address fails
//!   the row at once; a 5xx refusal fails it for good (recorded in `last_error`); 4xx,
//!   network errors and timeouts retry. When one of a user's emails is due, the user's
//!   other emails still waiting are claimed with it and all leave as one digest email
//!   ([`Letter::digest`]); their rows share the outcome.
//!
//! A delivery row exists once per (event, user, medium, sink, device), inserted with the
//! notification it belongs to, so a redelivered event never sends twice. A push or email
//! that waits for the user to read the notification first ([`super::escalation`]) is a
//! row whose `next_attempt_at` lies ahead; reading the notification sets its
//! `cancelled_at`, and cancelled rows are never claimed. The dispatcher
//! claims due rows with `FOR UPDATE SKIP LOCKED`, pushing `next_attempt_at` a lease
//! ahead, so copies of the worker share the work without taking the same row, and a row
//! claimed by a copy that died is retried when the lease runs out.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use async_nats::HeaderMap;
use futures_util::future::join_all;
use serde::Serialize;
use sqlx::PgPool;
use switchboard_bus::headers;
use switchboard_schemas::Timestamp;
use switchboard_schemas::shapes::{NotificationCategory, NotificationRef, Priority};
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;

use super::apns::Apns;
use super::email::{Letter, Mailer, SendError};
use super::fcm::Fcm;
use super::mobile::{self, Notification, Sent};
use super::webhook::Webhook;
use super::webpush::{EndpointHosts, Subscription, WebPush};
use crate::backoff::Backoff;

pub const WEBHOOK: &str = "webhook";
pub const SUBJECT: &str = "subject";
pub const WEBPUSH: &str = "webpush";
pub const SMTP: &str = "smtp";
pub const FCM: &str = mobile::FCM;
pub const APNS: &str = mobile::APNS;
pub const PUSH: &str = "push";
pub const EMAIL: &str = "email";
/// The medium of the webhook's copy of a notification as it is created.
pub const CREATED: &str = "created";

/// Most emails folded into one digest.
const DIGEST_MAX: i64 = 100;

/// Deliveries claimed at once by one copy.
const BATCH: i64 = 32;
/// Shortest time between two rounds started by a wake-up ([`crate::pace`]). Events are
/// notified one at a time, so in a busy moment each delivery would cost a round of its
/// own (a cancellation pass, a claim and their commits).
const ROUND_SPACING: Duration = Duration::from_millis(20);
/// How long a claimed delivery is reserved beyond the webhook timeout.
const LEASE_MARGIN: Duration = Duration::from_secs(30);
/// How long a subject publish may take to reach the server.
const FLUSH_TIMEOUT: Duration = Duration::from_secs(5);

const CLAIM: &str = "
UPDATE switchboard.notification_deliveries AS d
   SET attempts = d.attempts + 1, next_attempt_at = now() + make_interval(secs => $2)
 WHERE d.id IN (
    SELECT id FROM switchboard.notification_deliveries
     WHERE delivered_at IS NULL AND failed_at IS NULL AND cancelled_at IS NULL
       AND next_attempt_at <= now()
     ORDER BY next_attempt_at, id
     LIMIT $1
       FOR UPDATE SKIP LOCKED)
RETURNING d.id, d.user_id, d.medium, d.sink, d.payload::text, d.payload ->> 'key', d.attempts,
          d.traceparent, d.target";

/// Due push and email rows about a notification that is read or gone (deleted with its
/// message, erased) are cancelled rather than sent: reading cancels in its own
/// transaction, this catches whatever else removed the notification.
const CANCEL_STALE: &str = "
UPDATE switchboard.notification_deliveries AS d SET cancelled_at = now()
 WHERE d.delivered_at IS NULL AND d.failed_at IS NULL AND d.cancelled_at IS NULL
   AND d.next_attempt_at <= now() AND d.medium IN ('push', 'email')
   AND d.notification_id IS NOT NULL
   AND NOT EXISTS (SELECT 1 FROM switchboard.notifications n
                    WHERE n.id = d.notification_id AND n.read_at IS NULL)";

/// The user's other emails that nobody holds: waiting for their first attempt (even if
/// not yet due), or due. Rows another copy leased or that wait for a retry stay.
const CLAIM_DIGEST: &str = "
UPDATE switchboard.notification_deliveries AS d
   SET attempts = d.attempts + 1, next_attempt_at = now() + make_interval(secs => $2)
 WHERE d.id IN (
    SELECT id FROM switchboard.notification_deliveries
     WHERE user_id = $1 AND sink = 'smtp'
       AND delivered_at IS NULL AND failed_at IS NULL AND cancelled_at IS NULL
       AND (attempts = 0 OR next_attempt_at <= now())
       AND (notification_id IS NULL OR EXISTS (
            SELECT 1 FROM switchboard.notifications n
             WHERE n.id = notification_id AND n.read_at IS NULL))
     ORDER BY id
     LIMIT $3
       FOR UPDATE SKIP LOCKED)
RETURNING d.id, d.user_id, d.medium, d.sink, d.payload::text, d.payload ->> 'key', d.attempts,
          d.traceparent, d.target";

const DELIVERED: &str = "
UPDATE switchboard.notification_deliveries SET delivered_at = now(), last_error = NULL
 WHERE id = $1";

const RETRY: &str = "
UPDATE switchboard.notification_deliveries
   SET next_attempt_at = now() + make_interval(secs => $2), last_error = $3
 WHERE id = $1";

const FAILED: &str = "
UPDATE switchboard.notification_deliveries SET failed_at = now(), last_error = $2
 WHERE id = $1";

/// Where push and email go, and how hard to try.
#[derive(Debug, Clone)]
pub struct SinkConfig {
    pub webhook: Option<Webhook>,
    pub webpush: Option<Arc<WebPush>>,
    pub mailer: Option<Arc<Mailer>>,
    pub fcm: Option<Arc<Fcm>>,
    pub apns: Option<Arc<Apns>>,
    pub push_hosts: EndpointHosts,
    pub webhook_timeout: Duration,
    pub subjects: bool,
    pub max_attempts: u32,
    pub retry_base: Duration,
    pub retry_max: Duration,
    pub poll: Duration,
}

impl SinkConfig {
    /// The sinks a new delivery goes to.
    pub fn sinks(&self) -> Vec<&'static str> {
        let mut sinks = Vec::new();
        if self.webhook.is_some() {
            sinks.push(WEBHOOK);
        }
        if self.subjects {
            sinks.push(SUBJECT);
        }
        if self.webpush.is_some() {
            sinks.push(WEBPUSH);
        }
        if self.mailer.is_some() {
            sinks.push(SMTP);
        }
        if self.fcm.is_some() {
            sinks.push(FCM);
        }
        if self.apns.is_some() {
            sinks.push(APNS);
        }
        sinks
    }

    /// The mobile push services configured, as `push.subscribe` offers them.
    pub fn mobile(&self) -> Vec<&'static str> {
        self.sinks()
            .into_iter()
            .filter(|sink| [FCM, APNS].contains(sink))
            .collect()
    }
}

/// Whether `sink` takes deliveries of `medium`: Web Push only push, SMTP only email,
/// only the webhook `created`, and with SMTP configured (`smtp`) the others no email.
pub fn carries(sink: &str, medium: &str, smtp: bool) -> bool {
    match (sink, medium) {
        (WEBPUSH | FCM | APNS, _) => medium == PUSH,
        (SMTP, _) => medium == EMAIL,
        (_, CREATED) => sink == WEBHOOK,
        (_, EMAIL) => !smtp,
        _ => true,
    }
}

/// The `event` of a delivery of `medium`, as the webhook and the subjects show it.
pub fn event_of(medium: &'static str) -> &'static str {
    match medium {
        PUSH => "push_due",
        EMAIL => "email_due",
        _ => "created",
    }
}

/// What a sink receives for one push or email.
#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Outbound {
    /// `<event id>/<user>/<medium>`: the same on every attempt, for deduplication.
    pub key: String,
    /// `created`, `push_due` or `email_due`.
    pub event: &'static str,
    /// `push` or `email`; absent for `created`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub medium: Option<&'static str>,
    pub user: String,
    /// The in-app notification, if one was stored (`in_app` preference on).
    pub notification_id: Option<String>,
    pub category: NotificationCategory,
    pub priority: Priority,
    pub title: String,
    pub message: String,
    #[serde(rename = "ref")]
    pub reference: NotificationRef,
    pub event_id: String,
    pub event_type: String,
    pub created_at: Timestamp,
    /// The user's unread count with the in-app notification (`null` without one).
    pub unread: Option<u64>,
}

/// `id, user_id, medium, sink, payload, payload.key, attempts, traceparent`.
type ClaimedRow = (
    i64,
    String,
    String,
    String,
    String,
    Option<String>,
    i32,
    Option<String>,
    String,
);

/// One claimed delivery.
#[derive(Debug)]
struct Claimed {
    id: i64,
    user: String,
    medium: String,
    sink: String,
    payload: String,
    key: String,
    attempts: i32,
    traceparent: Option<String>,
    target: String,
}

impl From<ClaimedRow> for Claimed {
    fn from(
        (id, user, medium, sink, payload, key, attempts, traceparent, target): ClaimedRow,
    ) -> Claimed {
        Claimed {
            id,
            user,
            medium,
            sink,
            payload,
            key: key.unwrap_or_default(),
            attempts,
            traceparent,
            target,
        }
    }
}

/// What one attempt came to.
#[derive(Debug, Clone)]
enum Attempt {
    Delivered,
    Retry(String),
    Failed(String),
}

/// Feeds due deliveries to the sinks until shutdown.
pub struct Dispatcher {
    db: PgPool,
    client: async_nats::Client,
    config: SinkConfig,
    wake: Arc<Notify>,
}

impl Dispatcher {
    /// `wake` is notified when new deliveries were committed, so they leave at once
    /// instead of at the next poll.
    pub fn new(
        db: PgPool,
        client: async_nats::Client,
        config: SinkConfig,
        wake: Arc<Notify>,
    ) -> Dispatcher {
        Dispatcher {
            db,
            client,
            config,
            wake,
        }
    }

    pub async fn run(self, shutdown: CancellationToken) {
        let mut backoff = Backoff::standard();
        loop {
            let round = tokio::time::Instant::now();
            let delay = match self.dispatch_due().await {
                Ok(claimed) if claimed as i64 == BATCH => {
                    backoff.reset();
                    continue;
                }
                Ok(_) => {
                    backoff.reset();
                    self.config.poll
                }
                Err(error) => {
                    tracing::warn!(%error, "notification deliveries unavailable; retrying");
                    backoff.next_delay()
                }
            };
            if !crate::pace::next_round(&self.wake, &shutdown, round, ROUND_SPACING, delay).await {
                break;
            }
        }
    }

    /// Claims a batch of due deliveries and attempts each; how many were claimed.
    async fn dispatch_due(&self) -> Result<usize, sqlx::Error> {
        let lease = self.config.webhook_timeout + LEASE_MARGIN;
        let stale = sqlx::query(CANCEL_STALE)
            .execute(&self.db)
            .await?
            .rows_affected();
        if stale > 0 {
            tracing::info!(
                stale,
                "push and email about notifications read or deleted cancelled"
            );
        }
        let rows: Vec<ClaimedRow> = sqlx::query_as(CLAIM)
            .bind(BATCH)
            .bind(lease.as_secs_f64())
            .fetch_all(&self.db)
            .await?;
        let claimed: Vec<Claimed> = rows.into_iter().map(Claimed::from).collect();
        let count = claimed.len();
        let (emails, others): (Vec<Claimed>, Vec<Claimed>) =
            claimed.into_iter().partition(|d| d.sink == SMTP);
        let attempts = join_all(others.iter().map(|delivery| self.attempt(delivery))).await;
        for (delivery, attempt) in others.iter().zip(attempts) {
            self.record(delivery, attempt).await?;
        }
        let digests = self.digests(emails, lease).await?;
        let attempts = join_all(digests.iter().map(|digest| self.mail(digest))).await;
        for (digest, attempt) in digests.iter().zip(attempts) {
            for delivery in digest {
                self.record(delivery, attempt.clone()).await?;
            }
        }
        Ok(count)
    }

    /// The claimed emails, one group per user, each with the user's other emails still
    /// waiting, claimed now, in the order they were created.
    async fn digests(
        &self,
        emails: Vec<Claimed>,
        lease: Duration,
    ) -> Result<Vec<Vec<Claimed>>, sqlx::Error> {
        let mut by_user: BTreeMap<String, Vec<Claimed>> = BTreeMap::new();
        for email in emails {
            by_user.entry(email.user.clone()).or_default().push(email);
        }
        for (user, group) in &mut by_user {
            let rows: Vec<ClaimedRow> = sqlx::query_as(CLAIM_DIGEST)
                .bind(user)
                .bind(lease.as_secs_f64())
                .bind(DIGEST_MAX)
                .fetch_all(&self.db)
                .await?;
            group.extend(rows.into_iter().map(Claimed::from));
            group.sort_by_key(|email| email.id);
        }
        Ok(by_user.into_values().collect())
    }

    async fn attempt(&self, delivery: &Claimed) -> Attempt {
        match delivery.sink.as_str() {
            WEBHOOK => match &self.config.webhook {
                Some(webhook) => self.post(webhook, delivery).await,
                None => Attempt::Failed("no webhook is configured any more".into()),
            },
            SUBJECT => self.publish(delivery).await,
            WEBPUSH => match &self.config.webpush {
                Some(webpush) => self.push(webpush, delivery).await,
                None => Attempt::Failed("Web Push is not configured any more".into()),
            },
            SMTP => self.mail(std::slice::from_ref(delivery)).await,
            FCM | APNS => self.push_mobile(delivery).await,
            other => Attempt::Failed(format!("unknown sink {other:?}")),
        }
    }

    /// One email to the user of `digest`: the notification itself when there is one, a
    /// digest of them all when there are several.
    async fn mail(&self, digest: &[Claimed]) -> Attempt {
        let Some(mailer) = &self.config.mailer else {
            return Attempt::Failed("SMTP is not configured any more".into());
        };
        let Some(first) = digest.first() else {
            return Attempt::Delivered;
        };
        let address: Option<String> =
            match sqlx::query_scalar("SELECT email FROM switchboard.contacts WHERE user_id = $1")
                .bind(&first.user)
                .fetch_optional(&self.db)
                .await
            {
                Ok(address) => address,
                Err(error) => return Attempt::Retry(format!("reading the contact: {error}")),
            };
        let Some(address) = address else {
            return Attempt::Failed(format!(
                "no email address for user {} (contacts.set)",
                first.user
            ));
        };
        let mut items = Vec::with_capacity(digest.len());
        for delivery in digest {
            match serde_json::from_str::<Notification>(&delivery.payload) {
                Ok(payload) => items.push((payload.title, payload.message)),
                Err(error) => return Attempt::Failed(format!("unreadable delivery: {error}")),
            }
        }
        let letter = match items.as_slice() {
            [(title, message)] => Letter::new(title, message),
            several => Letter::digest(several),
        };
        let timeout = self.config.webhook_timeout;
        match tokio::time::timeout(timeout, mailer.send(&first.key, &address, &letter)).await {
            Ok(Ok(())) => Attempt::Delivered,
            Ok(Err(SendError::Permanent(reason))) => Attempt::Failed(reason),
            Ok(Err(SendError::Transient(reason))) => Attempt::Retry(reason),
            Err(_) => Attempt::Retry(format!("SMTP took over {timeout:?}")),
        }
    }

    /// The push to one phone, by FCM or APNs.
    async fn push_mobile(&self, delivery: &Claimed) -> Attempt {
        let Ok(device_id) = delivery.target.parse::<i64>() else {
            return Attempt::Failed("no device id".into());
        };
        let row: Option<(String, Option<String>)> = match sqlx::query_as(
            "SELECT token, topic FROM switchboard.mobile_devices WHERE id = $1 AND platform = $2",
        )
        .bind(device_id)
        .bind(&delivery.sink)
        .fetch_optional(&self.db)
        .await
        {
            Ok(row) => row,
            Err(error) => return Attempt::Retry(format!("reading the device: {error}")),
        };
        let Some((token, topic)) = row else {
            return Attempt::Failed("the device unsubscribed".into());
        };
        let notification: Notification = match serde_json::from_str(&delivery.payload) {
            Ok(notification) => notification,
            Err(error) => return Attempt::Failed(format!("unreadable delivery: {error}")),
        };
        let sent = match (delivery.sink.as_str(), &self.config.fcm, &self.config.apns) {
            (FCM, Some(fcm), _) => fcm.send(&token, &notification).await,
            (APNS, _, Some(apns)) => {
                apns.send(&token, topic.as_deref().unwrap_or_default(), &notification)
                    .await
            }
            _ => return Attempt::Failed(format!("{} is not configured any more", delivery.sink)),
        };
        match sent {
            Sent::Delivered => Attempt::Delivered,
            Sent::Gone(reason) => {
                let removed = sqlx::query("DELETE FROM switchboard.mobile_devices WHERE id = $1")
                    .bind(device_id)
                    .execute(&self.db)
                    .await;
                if let Err(error) = removed {
                    return Attempt::Retry(format!("removing the unregistered device: {error}"));
                }
                tracing::info!(user = %delivery.user, sink = %delivery.sink, %reason, "push service refused the device token; device removed");
                Attempt::Failed(format!("{reason}: device removed"))
            }
            Sent::Retry(reason) => Attempt::Retry(reason),
            Sent::Failed(reason) => Attempt::Failed(reason),
        }
    }

    async fn post(&self, webhook: &Webhook, delivery: &Claimed) -> Attempt {
        let result = webhook
            .post(
                &delivery.key,
                delivery.payload.as_bytes(),
                delivery.traceparent.as_deref(),
            )
            .await;
        match result {
            Ok(status) if (200..300).contains(&status) => Attempt::Delivered,
            Ok(status) if status == 408 || status == 429 || status >= 500 => {
                Attempt::Retry(format!("webhook answered {status}"))
            }
            Ok(status) => Attempt::Failed(format!("webhook answered {status}")),
            Err(error) => Attempt::Retry(error.to_string()),
        }
    }

    async fn push(&self, webpush: &WebPush, delivery: &Claimed) -> Attempt {
        let Ok(subscription_id) = delivery.target.parse::<i64>() else {
            return Attempt::Failed("no subscription id".into());
        };
        let row: Option<(String, String, String)> = match sqlx::query_as(
            "SELECT endpoint, p256dh, auth FROM switchboard.push_subscriptions WHERE id = $1",
        )
        .bind(subscription_id)
        .fetch_optional(&self.db)
        .await
        {
            Ok(row) => row,
            Err(error) => return Attempt::Retry(format!("reading the subscription: {error}")),
        };
        let Some((endpoint, p256dh, auth)) = row else {
            return Attempt::Failed("the device unsubscribed".into());
        };
        // Checked again: the allowed hosts may have changed since it was subscribed.
        let subscription =
            match Subscription::parse(&endpoint, &p256dh, &auth, &self.config.push_hosts) {
                Ok(subscription) => subscription,
                Err(error) => return Attempt::Failed(format!("subscription unusable: {error}")),
            };
        // The stored Outbound JSON, read as the fields the notification JSON has.
        let payload: Notification = match serde_json::from_str(&delivery.payload) {
            Ok(payload) => payload,
            Err(error) => return Attempt::Failed(format!("unreadable delivery: {error}")),
        };
        let Ok(body) = serde_json::to_vec(&payload) else {
            return Attempt::Failed("unserializable payload".into());
        };
        let sent = webpush
            .send(
                &subscription,
                &body,
                payload.priority,
                delivery.traceparent.as_deref(),
            )
            .await;
        match sent {
            Ok(status) if (200..300).contains(&status) => Attempt::Delivered,
            Ok(status @ (404 | 410)) => {
                let removed =
                    sqlx::query("DELETE FROM switchboard.push_subscriptions WHERE id = $1")
                        .bind(subscription_id)
                        .execute(&self.db)
                        .await;
                if let Err(error) = removed {
                    return Attempt::Retry(format!("removing the expired subscription: {error}"));
                }
                tracing::info!(user = %delivery.user, status, "push service dropped the subscription; removed");
                Attempt::Failed(format!(
                    "push service answered {status}: subscription removed"
                ))
            }
            Ok(status) if status == 408 || status == 429 || status >= 500 => {
                Attempt::Retry(format!("push service answered {status}"))
            }
            Ok(status) => Attempt::Failed(format!("push service answered {status}")),
            Err(error) => Attempt::Retry(error.to_string()),
        }
    }

    async fn publish(&self, delivery: &Claimed) -> Attempt {
        let subject = format!("notify.{}.{}", delivery.medium, delivery.user);
        let mut headers = HeaderMap::new();
        headers.insert(headers::MSG_ID, delivery.key.as_str());
        headers.insert(headers::CONTENT_TYPE, headers::JSON);
        let published = self
            .client
            .publish_with_headers(subject, headers, delivery.payload.clone().into())
            .await;
        if let Err(error) = published {
            return Attempt::Retry(format!("NATS publish: {error}"));
        }
        match tokio::time::timeout(FLUSH_TIMEOUT, self.client.flush()).await {
            Ok(Ok(())) => Attempt::Delivered,
            Ok(Err(error)) => Attempt::Retry(format!("NATS flush: {error}")),
            Err(_) => Attempt::Retry(format!("NATS flush took over {FLUSH_TIMEOUT:?}")),
        }
    }

    async fn record(&self, delivery: &Claimed, attempt: Attempt) -> Result<(), sqlx::Error> {
        let attempts = u32::try_from(delivery.attempts).unwrap_or(u32::MAX);
        let attempt = match attempt {
            Attempt::Retry(reason) if attempts >= self.config.max_attempts => {
                Attempt::Failed(format!("{reason} (gave up after {attempts} attempts)"))
            }
            other => other,
        };
        match attempt {
            Attempt::Delivered => {
                crate::telemetry::delivered(&delivery.sink, "delivered");
                tracing::debug!(
                    id = delivery.id,
                    sink = %delivery.sink,
                    medium = %delivery.medium,
                    user = %delivery.user,
                    attempts,
                    "notification delivered"
                );
                sqlx::query(DELIVERED)
                    .bind(delivery.id)
                    .execute(&self.db)
                    .await?;
            }
            Attempt::Retry(reason) => {
                crate::telemetry::delivered(&delivery.sink, "retry");
                let delay = Backoff::new(self.config.retry_base, self.config.retry_max)
                    .delay_at(attempts.saturating_sub(1));
                tracing::info!(id = delivery.id, sink = %delivery.sink, attempts, ?delay, %reason, "notification delivery will be retried");
                sqlx::query(RETRY)
                    .bind(delivery.id)
                    .bind(delay.as_secs_f64())
                    .bind(&reason)
                    .execute(&self.db)
                    .await?;
            }
            Attempt::Failed(reason) => {
                crate::telemetry::delivered(&delivery.sink, "failed");
                tracing::warn!(id = delivery.id, sink = %delivery.sink, user = %delivery.user, attempts, %reason, "notification delivery failed for good");
                sqlx::query(FAILED)
                    .bind(delivery.id)
                    .bind(&reason)
                    .execute(&self.db)
                    .await?;
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use switchboard_schemas::ChannelName;

    use super::*;

    #[test]
    fn with_smtp_email_goes_there_only() {
        for (sink, medium, smtp, expected) in [
            (WEBHOOK, EMAIL, false, true),
            (SUBJECT, EMAIL, false, true),
            (WEBHOOK, EMAIL, true, false),
            (SUBJECT, EMAIL, true, false),
            (SMTP, EMAIL, true, true),
            (SMTP, PUSH, true, false),
            (WEBHOOK, PUSH, true, true),
            (WEBPUSH, PUSH, true, true),
            (WEBPUSH, EMAIL, false, false),
            (WEBHOOK, CREATED, true, true),
            (SUBJECT, CREATED, false, false),
            (WEBPUSH, CREATED, false, false),
            (SMTP, CREATED, true, false),
            (FCM, PUSH, true, true),
            (APNS, PUSH, false, true),
            (APNS, EMAIL, false, false),
            (FCM, CREATED, false, false),
        ] {
            assert_eq!(
                carries(sink, medium, smtp),
                expected,
                "{sink} {medium} {smtp}"
            );
        }
    }

    #[test]
    fn outbound_json_is_the_documented_shape() {
        let outbound = Outbound {
            key: "evt_1/u1/push".into(),
            event: event_of(PUSH),
            medium: Some(PUSH),
            user: "u1".into(),
            notification_id: None,
            category: NotificationCategory::Bid,
            priority: Priority::High,
            title: "New bid".into(),
            message: "5000".into(),
            reference: NotificationRef {
                channel: ChannelName::parse("project:p1").unwrap(),
                seq: 7,
            },
            event_id: "evt_1".into(),
            event_type: "bid.new".into(),
            created_at: Timestamp::parse("2026-11-22T14:30:00Z").unwrap(),
            unread: Some(3),
        };
        let json = serde_json::to_string(&outbound).unwrap();
        assert_eq!(
            json,
            r#"{"key":"evt_1/u1/push","event":"push_due","medium":"push","user":"u1","notificationId":null,"category":"bid","priority":"high","title":"New bid","message":"5000","ref":{"channel":"project:p1","seq":7},"eventId":"evt_1","eventType":"bid.new","createdAt":"2026-11-22T14:30:00Z","unread":3}"#
        );
    }
}
