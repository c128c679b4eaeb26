//! Traces end to end (docs/operations.md, "Traces"): a backend publishes through a real
//! `switchboard-edge` with a `traceparent`; a real `switchboard-workers` turns the event
//! into notifications and posts them to a webhook. With `OTEL_EXPORTER_OTLP_ENDPOINT`
//! pointing at the test's own OTLP/HTTP receiver, both processes export spans of that
//! trace, and the webhook request continues it. Without the variable, nothing is
//! exported and the webhook gets the publisher's `traceparent` unchanged.

mod support;

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::Router;
use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::routing::post;
use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
use opentelemetry_proto::tonic::common::v1::any_value::Value as AnyValue;
use prost::Message as _;
use serde_json::{Value, json};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;

use support::http::{Receiver, Request};
use support::{Setup, Worker, add_member, edge, eventually, setup, wait_until_caught_up};

/// The publisher's own span: what the edge continues.
const TRACE_ID: &str = "5e2d6f0a9b1c4d3e8f7a6b5c4d3e2f1a";
const CLIENT_SPAN: &str = "1122334455667788";
/// Another trace, for an RPC.
const RPC_TRACE_ID: &str = "0a1b2c3d4e5f60718293a4b5c6d7e8f9";

fn client_traceparent() -> String {
    format!("00-{TRACE_ID}-{CLIENT_SPAN}-01")
}

/// One exported span, as the receiver decoded it.
#[derive(Debug, Clone)]
struct Exported {
    service: String,
    name: String,
    trace_id: String,
    span_id: String,
    parent_span_id: String,
    attributes: HashMap<String, String>,
}

type Spans = Arc<Mutex<Vec<Exported>>>;

/// An OTLP/HTTP receiver: `POST /v1/traces` with a protobuf `ExportTraceServiceRequest`.
/// Its base URL (what `OTEL_EXPORTER_OTLP_ENDPOINT` takes) and what it received.
async fn otlp_receiver() -> (String, Spans, Arc<Mutex<usize>>) {
    async fn traces(
        State((spans, requests)): State<(Spans, Arc<Mutex<usize>>)>,
        headers: HeaderMap,
        body: Bytes,
    ) -> StatusCode {
        *requests.lock().unwrap() += 1;
        let protobuf = headers
            .get("content-type")
            .is_some_and(|v| v.as_bytes() == b"application/x-protobuf");
        assert!(protobuf, "OTLP over http/protobuf: {headers:?}");
        let request = ExportTraceServiceRequest::decode(body).expect("a protobuf export request");
        let mut found = spans.lock().unwrap();
        for resource_spans in request.resource_spans {
            let service = resource_spans
                .resource
                .iter()
                .flat_map(|r| &r.attributes)
                .find(|kv| kv.key == "service.name")
                .map(|kv| text(kv.value.as_ref()))
                .unwrap_or_default();
            for scope in resource_spans.scope_spans {
                for span in scope.spans {
                    found.push(Exported {
                        service: service.clone(),
                        name: span.name,
                        trace_id: hex(&span.trace_id),
                        span_id: hex(&span.span_id),
                        parent_span_id: hex(&span.parent_span_id),
                        attributes: span
                            .attributes
                            .iter()
                            .map(|kv| (kv.key.clone(), text(kv.value.as_ref())))
                            .collect(),
                    });
                }
            }
        }
        StatusCode::OK
    }
    let spans = Spans::default();
    let requests = Arc::new(Mutex::new(0));
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    let app = Router::new()
        .route("/v1/traces", post(traces))
        .with_state((spans.clone(), requests.clone()));
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    (url, spans, requests)
}

fn text(value: Option<&opentelemetry_proto::tonic::common::v1::AnyValue>) -> String {
    match value.and_then(|v| v.value.as_ref()) {
        Some(AnyValue::StringValue(s)) => s.clone(),
        Some(AnyValue::IntValue(i)) => i.to_string(),
        Some(AnyValue::BoolValue(b)) => b.to_string(),
        Some(AnyValue::DoubleValue(d)) => d.to_string(),
        other => format!("{other:?}"),
    }
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// The `traceparent` of each request the webhook received (None if absent).
fn traceparents(webhook: &Receiver) -> Vec<Option<String>> {
    let requests = webhook.requests();
    let header = |request: &Request| request.header("traceparent").map(str::to_string);
    requests.iter().map(header).collect()
}

/// `POST /v1/publish` with a service token and `traceparent`; the status, retried while
/// the edge is not listening yet.
async fn publish_over_http(addr: &str, body: Value, traceparent: &str) -> u16 {
    http_post(
        addr,
        "/v1/publish",
        &edge::token("billing", "service"),
        body,
        traceparent,
    )
    .await
}

/// `POST path` with `token` and `traceparent`; the status.
async fn http_post(addr: &str, path: &str, token: &str, body: Value, traceparent: &str) -> u16 {
    let body = body.to_string();
    let request = format!(
        "POST {path} HTTP/1.1\r\nHost: {addr}\r\nAuthorization: Bearer {token}\r\n\
         traceparent: {traceparent}\r\nContent-Type: application/json\r\n\
         Content-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    );
    let mut socket = eventually("the edge to listen", || async {
        tokio::net::TcpStream::connect(addr).await.ok()
    })
    .await;
    socket.write_all(request.as_bytes()).await.unwrap();
    let mut response = Vec::new();
    socket.read_to_end(&mut response).await.unwrap();
    let text = String::from_utf8_lossy(&response);
    text.split(' ')
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("an HTTP answer: {text}"))
}

/// Whether process `pid` runs OpenTelemetry's batch exporter thread.
fn exporter_thread(pid: u32) -> bool {
    let tasks = std::fs::read_dir(format!("/proc/{pid}/task")).unwrap();
    tasks.flatten().any(|task| {
        std::fs::read_to_string(task.path().join("comm"))
            .is_ok_and(|name| name.starts_with("OpenTelemetry"))
    })
}

/// Both owners of project:p1, applied by the membership job before the bid arrives.
async fn owners(setup: &Setup) {
    for owner in ["u1", "u2"] {
        add_member(setup, "project:p1", owner, "owner").await;
    }
    wait_until_caught_up(setup, "membership").await;
}

fn bid() -> Value {
    json!({"channel": "project:p1", "type": "bid.new", "data": {"bidId": "bid_1", "amount": 5000}})
}

/// The trace id and parent id of a `traceparent`.
fn ids(traceparent: &str) -> (&str, &str) {
    let mut parts = traceparent.split('-').skip(1);
    (parts.next().unwrap(), parts.next().unwrap())
}

#[tokio::test(flavor = "multi_thread")]
async fn a_publish_is_traced_from_the_edge_through_the_notifications_job_to_the_webhook() {
    let setup = setup().await;
    let (otlp, spans, _) = otlp_receiver().await;
    let webhook = Receiver::start(|_| 204).await;
    let exporting = [
        ("OTEL_EXPORTER_OTLP_ENDPOINT", otlp),
        // Short, so the spans arrive soon; the last ones leave at shutdown anyway.
        ("OTEL_BSP_SCHEDULE_DELAY", "100".to_string()),
    ];
    let mut worker_env = exporting.to_vec();
    worker_env.push((
        "SWITCHBOARD_NOTIFY_WEBHOOK_URL",
        format!("{}/hook", webhook.base),
    ));
    worker_env.push(("SWITCHBOARD_LOG_FORMAT", "json".to_string()));
    let (worker, log) = Worker::start_logged(&setup, "membership,notifications", &worker_env);
    let (edge, addr) = edge::start(&setup, &exporting);
    owners(&setup).await;

    assert_eq!(
        publish_over_http(&addr, bid(), &client_traceparent()).await,
        200
    );

    // Both offline owners are notified through the webhook, each request in the trace.
    let sent = eventually("webhook requests for both owners", || async {
        let seen = traceparents(&webhook);
        (seen.len() >= 2).then_some(seen)
    })
    .await;
    let sent: Vec<String> = sent
        .into_iter()
        .map(|t| t.expect("the webhook request carries a traceparent"))
        .collect();
    for traceparent in &sent {
        let (trace, parent) = ids(traceparent);
        assert_eq!(trace, TRACE_ID, "{traceparent}");
        assert_ne!(
            parent, CLIENT_SPAN,
            "the workers' own span is the parent: {traceparent}"
        );
    }

    let of_trace = |service: &str, name: &str| {
        spans
            .lock()
            .unwrap()
            .iter()
            .filter(|s| s.trace_id == TRACE_ID && s.service == service && s.name == name)
            .cloned()
            .collect::<Vec<_>>()
    };
    // The edge: the publish continues the publisher's span.
    let publish = eventually("the edge's publish span", || async {
        of_trace("switchboard-edge", "publish").pop()
    })
    .await;
    assert_eq!(publish.parent_span_id, CLIENT_SPAN, "{publish:?}");
    assert_eq!(publish.attributes["channel"], "project:p1", "{publish:?}");
    assert_eq!(publish.attributes["event_type"], "bid.new", "{publish:?}");
    // The workers: the notifications job handled the stored event as a child of it.
    let handled = eventually("the notifications job's span", || async {
        of_trace("switchboard-workers", "message")
            .into_iter()
            .find(|s| {
                s.attributes
                    .get("job")
                    .is_some_and(|j| j == "notifications")
            })
    })
    .await;
    assert_eq!(handled.parent_span_id, publish.span_id, "{handled:?}");
    // ... and each webhook request was sent from a span of the trace, named in its header.
    let webhooks = eventually("the webhook spans", || async {
        let found = of_trace("switchboard-workers", "webhook");
        (found.len() >= sent.len()).then_some(found)
    })
    .await;
    for traceparent in &sent {
        let (_, parent) = ids(traceparent);
        assert!(
            webhooks.iter().any(|s| s.span_id == parent),
            "{traceparent} names an exported webhook span: {webhooks:?}"
        );
    }
    // The requests an event causes are children of the job's span that handled it.
    assert!(
        webhooks.iter().all(|s| s.parent_span_id == handled.span_id),
        "webhook spans are children of the notifications job's span: {webhooks:?} {handled:?}"
    );
    // An RPC over HTTP is span `rpc` of the caller's trace.
    let caller = format!("00-{RPC_TRACE_ID}-{CLIENT_SPAN}-01");
    let listed = http_post(
        &addr,
        "/v1/rpc/notifications.list",
        &edge::token("u1", "user"),
        json!({}),
        &caller,
    )
    .await;
    assert_eq!(listed, 200);
    let rpc = eventually("the edge's rpc span", || async {
        spans
            .lock()
            .unwrap()
            .iter()
            .find(|s| s.trace_id == RPC_TRACE_ID && s.name == "rpc")
            .cloned()
    })
    .await;
    assert_eq!(rpc.service, "switchboard-edge");
    assert_eq!(rpc.parent_span_id, CLIENT_SPAN, "{rpc:?}");
    assert_eq!(rpc.attributes["method"], "notifications.list", "{rpc:?}");

    // The JSON log lines written inside the job's span name the same trace.
    let named = format!("\"trace_id\":\"{TRACE_ID}\"");
    eventually("a log line naming the trace", || async {
        (log.count(&named) > 0).then_some(())
    })
    .await;
    assert!(exporter_thread(worker.pid().unwrap()));
    assert!(exporter_thread(edge.pid().unwrap()));
}

#[tokio::test(flavor = "multi_thread")]
async fn without_an_otlp_endpoint_nothing_is_exported_and_the_traceparent_goes_on_unchanged() {
    let setup = setup().await;
    let (otlp, _, requests) = otlp_receiver().await;
    let webhook = Receiver::start(|_| 204).await;
    // Every other OTEL_* setting, but no endpoint: export stays off.
    let settings = [
        ("OTEL_SERVICE_NAME", "not-exported".to_string()),
        ("OTEL_EXPORTER_OTLP_PROTOCOL", "http/protobuf".to_string()),
        ("OTEL_BSP_SCHEDULE_DELAY", "100".to_string()),
    ];
    let mut worker_env = settings.to_vec();
    worker_env.push((
        "SWITCHBOARD_NOTIFY_WEBHOOK_URL",
        format!("{}/hook", webhook.base),
    ));
    let worker = Worker::start(&setup, "membership,notifications", &worker_env);
    let (edge, addr) = edge::start(&setup, &settings);
    owners(&setup).await;

    assert_eq!(
        publish_over_http(&addr, bid(), &client_traceparent()).await,
        200
    );
    let sent = eventually("webhook requests for both owners", || async {
        let seen = traceparents(&webhook);
        (seen.len() >= 2).then_some(seen)
    })
    .await;
    // No span of our own anywhere: the publisher's traceparent arrives as it was sent.
    assert_eq!(sent, vec![Some(client_traceparent()); sent.len()]);
    assert!(
        !exporter_thread(worker.pid().unwrap()),
        "no exporter thread"
    );
    assert!(!exporter_thread(edge.pid().unwrap()), "no exporter thread");
    // The receiver was never told about (it has no address to be found at); checked
    // anyway after the batch delay has passed many times.
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(*requests.lock().unwrap(), 0);
    drop(otlp);
}
