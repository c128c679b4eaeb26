//! Traces: W3C Trace Context continued in spans of our own, exported over OTLP when asked
//! (docs/operations.md, "Traces").
//!
//! With `OTEL_EXPORTER_OTLP_ENDPOINT` (or `OTEL_EXPORTER_OTLP_TRACES_ENDPOINT`) set,
//! [`crate::logging::init_traced`] builds a batch exporter sending OTLP over
//! HTTP/protobuf and adds the layer that turns our spans into OpenTelemetry spans. The standard `OTEL_*` variables apply (endpoint, headers, timeout, compression,
//! `OTEL_SERVICE_NAME`, `OTEL_RESOURCE_ATTRIBUTES`, `OTEL_TRACES_SAMPLER`, the batch
//! processor's `OTEL_BSP_*`). Without the variable there is no exporter and no layer, and
//! the helpers here cost a flag read: the spans they would have made are never created.
//!
//! The places that continue a trace use three helpers: [`span`] makes a span only while
//! exporting, [`continue_trace`] gives a span the incoming `traceparent` as its parent,
//! and [`traceparent`] is what to send on: the span's own context when exporting, else the
//! incoming value unchanged.

use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use opentelemetry::trace::{
    SpanContext, SpanId, TraceContextExt as _, TraceFlags, TraceId, TraceState,
};
use opentelemetry_otlp::WithExportConfig as _;
use opentelemetry_sdk::Resource;
use opentelemetry_sdk::trace::SdkTracerProvider;
use switchboard_schemas::TraceParent;
use tracing::Span;
use tracing_opentelemetry::OpenTelemetrySpanExt as _;

/// Whether spans are exported: set once, by [`exporter`], before any span exists.
static EXPORTING: AtomicBool = AtomicBool::new(false);

/// How long shutdown waits for the last batch to leave.
const FLUSH_LIMIT: Duration = Duration::from_secs(5);

/// The variables that turn export on (either is enough).
const ENDPOINT_VARIABLES: [&str; 2] = [
    "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT",
    "OTEL_EXPORTER_OTLP_ENDPOINT",
];

/// Whether this process exports spans.
pub fn exporting() -> bool {
    EXPORTING.load(Ordering::Relaxed)
}

/// The span `make` builds when exporting; a disabled span, at no cost, otherwise.
pub fn span(make: impl FnOnce() -> Span) -> Span {
    if exporting() { make() } else { Span::none() }
}

/// Makes `span` continue the trace of `incoming` (a W3C `traceparent`; anything invalid
/// is no trace) and records its trace id in the span's `trace_id` field, when it has one,
/// so log lines inside it name the trace. Without an incoming trace, an exported span
/// starts a new one.
pub fn continue_trace(span: &Span, incoming: Option<&str>) {
    if span.is_disabled() {
        return;
    }
    let parent = incoming.and_then(remote_context);
    if exporting() {
        if let Some(parent) = &parent {
            let context = opentelemetry::Context::new().with_remote_span_context(parent.clone());
            let _ = span.set_parent(context);
        }
        let own = span.context().span().span_context().clone();
        if own.is_valid() {
            span.record("trace_id", own.trace_id().to_string());
            return;
        }
    }
    if let Some(parent) = parent {
        span.record("trace_id", parent.trace_id().to_string());
    }
}

/// The `traceparent` to send on from inside `span`: the span's own context while
/// exporting, so the receiver's spans are its children; else `incoming` (if valid),
/// passed on as it came.
pub fn traceparent(span: &Span, incoming: Option<&str>) -> Option<TraceParent> {
    if exporting() && !span.is_disabled() {
        let own = span.context().span().span_context().clone();
        if own.is_valid() {
            return TraceParent::parse(&format!(
                "00-{}-{}-{:02x}",
                own.trace_id(),
                own.span_id(),
                own.trace_flags().to_u8()
            ));
        }
    }
    incoming.and_then(TraceParent::parse)
}

/// A checked `traceparent` as the span context of a remote parent.
fn remote_context(incoming: &str) -> Option<SpanContext> {
    let incoming = TraceParent::parse(incoming.trim())?;
    let mut parts = incoming.as_str().split('-').skip(1);
    let trace_id = TraceId::from_hex(parts.next()?).ok()?;
    let span_id = SpanId::from_hex(parts.next()?).ok()?;
    let flags = u8::from_str_radix(parts.next()?, 16).ok()?;
    Some(SpanContext::new(
        trace_id,
        span_id,
        TraceFlags::new(flags),
        true,
        TraceState::default(),
    ))
}

/// Why traces cannot be exported as configured.
#[derive(Debug, thiserror::Error)]
#[error("cannot export traces: {0}")]
pub struct ExportError(String);

/// The span export of one process, flushed by [`Traces::shutdown`].
#[derive(Debug, Default)]
pub struct Traces {
    provider: Option<SdkTracerProvider>,
}

impl Traces {
    /// Sends what is still batched and stops the exporter (at most 5 s); nothing when
    /// not exporting.
    pub fn shutdown(self) {
        if let Some(provider) = self.provider
            && let Err(error) = provider.shutdown_with_timeout(FLUSH_LIMIT)
        {
            tracing::warn!(%error, "flushing the last spans failed");
        }
    }
}

/// The tracer provider for `service` (`switchboard-edge`, `switchboard-workers`;
/// `OTEL_SERVICE_NAME` overrides it) when an OTLP endpoint variable is set; `None`
/// otherwise, or when `OTEL_SDK_DISABLED=true` or `OTEL_TRACES_EXPORTER=none`. Only HTTP/protobuf is built in: another `OTEL_EXPORTER_OTLP_PROTOCOL` is
/// noted and HTTP/protobuf used.
pub(crate) fn exporter(service: &str) -> Result<Option<(SdkTracerProvider, Traces)>, ExportError> {
    let configured = ENDPOINT_VARIABLES
        .iter()
        .any(|name| std::env::var(name).is_ok_and(|value| !value.trim().is_empty()));
    // The standard switches that turn tracing off whatever the endpoint says.
    let setting = |name| {
        std::env::var(name)
            .unwrap_or_default()
            .trim()
            .to_ascii_lowercase()
    };
    let disabled =
        setting("OTEL_SDK_DISABLED") == "true" || setting("OTEL_TRACES_EXPORTER") == "none";
    if !configured || disabled {
        return Ok(None);
    }
    // An https endpoint needs rustls' provider; ring is the one in the build.
    let _ = rustls::crypto::ring::default_provider().install_default();
    let exporter = opentelemetry_otlp::SpanExporter::builder()
        .with_http()
        .with_protocol(opentelemetry_otlp::Protocol::HttpBinary)
        .build()
        .map_err(|e| ExportError(e.to_string()))?;
    let resource = if std::env::var("OTEL_SERVICE_NAME").is_ok_and(|v| !v.trim().is_empty()) {
        Resource::builder().build()
    } else {
        Resource::builder()
            .with_service_name(service.to_string())
            .build()
    };
    let provider = SdkTracerProvider::builder()
        .with_batch_exporter(exporter)
        .with_resource(resource)
        .build();
    EXPORTING.store(true, Ordering::Relaxed);
    Ok(Some((
        provider.clone(),
        Traces {
            provider: Some(provider),
        },
    )))
}

/// A protocol asked for in the environment other than the one built in, if any.
pub(crate) fn unsupported_protocol() -> Option<String> {
    [
        "OTEL_EXPORTER_OTLP_TRACES_PROTOCOL",
        "OTEL_EXPORTER_OTLP_PROTOCOL",
    ]
    .iter()
    .find_map(|name| std::env::var(name).ok())
    .filter(|value| !value.trim().eq_ignore_ascii_case("http/protobuf"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_traceparent_reads_as_a_remote_parent() {
        let parent =
            remote_context("00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01").unwrap();
        assert_eq!(
            parent.trace_id().to_string(),
            "4bf92f3577b34da6a3ce929d0e0e4736"
        );
        assert_eq!(parent.span_id().to_string(), "00f067aa0ba902b7");
        assert!(parent.is_sampled() && parent.is_remote());
        assert!(
            remote_context("00-00000000000000000000000000000000-00f067aa0ba902b7-01").is_none()
        );
        assert!(remote_context("not a traceparent").is_none());
    }

    #[test]
    fn without_export_the_incoming_traceparent_is_passed_on_unchanged() {
        let incoming = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-00";
        let span = span(|| tracing::info_span!("never made"));
        assert!(span.is_disabled());
        continue_trace(&span, Some(incoming));
        assert_eq!(
            traceparent(&span, Some(incoming)).map(|t| t.to_string()),
            Some(incoming.to_string())
        );
        assert_eq!(traceparent(&span, Some("garbage")), None);
    }
}
