//! Publishing envelopes to channels through JetStream.

use async_nats::HeaderMap;
use async_nats::jetstream::{self, message::PublishMessage};
use switchboard_schemas::{ChannelName, Envelope, SubjectKind, TraceParent};
use tracing::Instrument as _;

use crate::{headers, traces};

/// How the envelope travels on the bus.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Encoding {
    /// Versioned postcard with `data` as raw JSON bytes: compact, and what Rust services use.
    #[default]
    Postcard,
    /// The JSON envelope, marked `Content-Type: application/json`: what other languages use.
    Json,
}

/// Where JetStream stored an event.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Published {
    /// Stream sequence of the event: the client-facing `seq`.
    pub seq: u64,
    /// True when the event id had been stored before; `seq` is then the original one.
    pub duplicate: bool,
}

#[derive(Debug, thiserror::Error)]
pub enum PublishError {
    #[error("publishing to {subject} failed: {source}")]
    Publish {
        subject: String,
        #[source]
        source: async_nats::jetstream::context::PublishError,
    },
}

/// Publishes events to channels; cheap to clone and share.
#[derive(Debug, Clone)]
pub struct Publisher {
    js: jetstream::Context,
}

impl Publisher {
    pub fn new(client: async_nats::Client) -> Publisher {
        Publisher {
            js: jetstream::new(client),
        }
    }

    pub fn from_context(js: jetstream::Context) -> Publisher {
        Publisher { js }
    }

    /// Stores `event` on `channel` (postcard form) and returns its stream sequence.
    pub async fn publish(
        &self,
        channel: &ChannelName,
        event: &Envelope,
    ) -> Result<Published, PublishError> {
        self.publish_as(channel, event, Encoding::Postcard).await
    }

    /// Stores `event` on `channel` in the given form. An alias channel
    /// (`user:<id>:notifications`) is a subscription filter, so the event goes to its base.
    pub async fn publish_as(
        &self,
        channel: &ChannelName,
        event: &Envelope,
        encoding: Encoding,
    ) -> Result<Published, PublishError> {
        self.publish_traced(channel, event, encoding, None).await
    }

    /// [`Publisher::publish_as`], carrying a W3C `traceparent` on the stored message, so
    /// whoever handles the event continues that trace. While spans are exported
    /// ([`crate::traces`]), the publish is span `publish`, a child of `trace` (or of the
    /// current span), and the stored `traceparent` names that span.
    pub async fn publish_traced(
        &self,
        channel: &ChannelName,
        event: &Envelope,
        encoding: Encoding,
        trace: Option<&TraceParent>,
    ) -> Result<Published, PublishError> {
        let span = traces::span(|| {
            tracing::info_span!(
                "publish",
                channel = %channel,
                event_type = %event.ty,
                event_id = %event.id,
                trace_id = tracing::field::Empty,
            )
        });
        let incoming = trace.map(TraceParent::as_str);
        traces::continue_trace(&span, incoming);
        let trace = traces::traceparent(&span, incoming);
        self.store(channel, event, encoding, trace.as_ref())
            .instrument(span)
            .await
    }

    async fn store(
        &self,
        channel: &ChannelName,
        event: &Envelope,
        encoding: Encoding,
        trace: Option<&TraceParent>,
    ) -> Result<Published, PublishError> {
        let subject = channel.subject(SubjectKind::Durable);
        let mut headers = HeaderMap::new();
        headers.insert(headers::MSG_ID, event.id.as_str());
        headers.insert(headers::RT_TYPE, event.ty.as_str());
        if let Some(trace) = trace {
            headers.insert(headers::TRACEPARENT, trace.as_str());
        }
        let payload = match encoding {
            Encoding::Postcard => event.to_postcard(),
            Encoding::Json => {
                headers.insert(headers::CONTENT_TYPE, headers::JSON);
                event.to_json()
            }
        };
        let message = PublishMessage::build()
            .payload(payload.into())
            .headers(headers);
        let error = |source| PublishError::Publish {
            subject: subject.clone(),
            source,
        };
        let ack = self
            .js
            .send_publish(subject.clone(), message)
            .await
            .map_err(error)?
            .await
            .map_err(error)?;
        Ok(Published {
            seq: ack.sequence,
            duplicate: ack.duplicate,
        })
    }
}
