//! docs/openapi.yaml against the edge it describes: every documented path and method is
//! routed on a real edge and answers one of the statuses documented for it (JSON errors
//! with the `{"code","message"}` body and the status of their code); every other method on
//! a documented path is 405 and undocumented paths are 404; the error codes and their
//! statuses are the protocol's. scripts/test-js validates the file against the OpenAPI 3.1
//! schema; this test reads only the parts it checks.

mod support;

use std::collections::BTreeMap;
use std::path::Path;
use std::time::Duration;

use serde_json::{Value, json};
use support::*;
use switchboard_schemas::ErrorCode;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

const ORIGIN: &str = "https://app.example.test";
/// The methods a path is tried with; HEAD is left out: axum answers it wherever it answers
/// GET, with the body dropped.
const METHODS: [&str; 6] = ["GET", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"];

/// One `key: value` line of a YAML document, block scalars' contents skipped.
#[derive(Debug)]
struct Line {
    indent: usize,
    key: String,
    value: String,
}

/// The keys of a YAML document as indented lines: enough to walk the maps this test reads
/// (block-style maps, flow-style lists on one line), no more.
struct Outline(Vec<Line>);

impl Outline {
    fn parse(text: &str) -> Outline {
        let mut lines = Vec::new();
        let mut block_scalar_above: Option<usize> = None;
        for raw in text.lines() {
            let trimmed = raw.trim_start();
            let indent = raw.len() - trimmed.len();
            if trimmed.is_empty() {
                continue;
            }
            if let Some(above) = block_scalar_above {
                if indent > above {
                    continue;
                }
                block_scalar_above = None;
            }
            if trimmed.starts_with('#') || trimmed.starts_with("- ") {
                continue;
            }
            let (key, value) = match trimmed.split_once(": ") {
                Some((key, value)) => (key, value.trim()),
                None => (trimmed.strip_suffix(':').unwrap_or(trimmed), ""),
            };
            if matches!(value, "|" | "|-" | "|+" | ">" | ">-" | ">+") {
                block_scalar_above = Some(indent);
            }
            lines.push(Line {
                indent,
                key: key.trim_matches(['\'', '"']).to_string(),
                value: value.to_string(),
            });
        }
        Outline(lines)
    }

    /// The indices of the direct children of line `at` (`None`: the top level).
    fn children(&self, at: Option<usize>) -> Vec<usize> {
        let (start, parent_indent) = match at {
            Some(i) => (i + 1, Some(self.0[i].indent)),
            None => (0, None),
        };
        let mut children = Vec::new();
        let mut child_indent = None;
        for (i, line) in self.0.iter().enumerate().skip(start) {
            if parent_indent.is_some_and(|p| line.indent <= p) {
                break;
            }
            let indent = *child_indent.get_or_insert(line.indent);
            if line.indent == indent {
                children.push(i);
            }
        }
        children
    }

    /// The line at the end of `keys`, each a child of the one before.
    fn find(&self, keys: &[&str]) -> Option<usize> {
        let mut at = None;
        for key in keys {
            at = Some(
                self.children(at)
                    .into_iter()
                    .find(|&i| self.0[i].key == *key)?,
            );
        }
        at
    }

    fn keys(&self, at: usize) -> Vec<&str> {
        self.children(Some(at))
            .into_iter()
            .map(|i| self.0[i].key.as_str())
            .collect()
    }
}

/// What the document says about one operation.
#[derive(Debug)]
struct Operation {
    statuses: Vec<u16>,
    /// Per status, the media types of an inline `content` (empty for a `$ref`).
    media: BTreeMap<u16, Vec<String>>,
}

/// path -> method (upper case) -> operation.
fn documented() -> BTreeMap<String, BTreeMap<String, Operation>> {
    let file = Path::new(env!("CARGO_MANIFEST_DIR")).join("../docs/openapi.yaml");
    let doc = Outline::parse(&std::fs::read_to_string(&file).expect("read docs/openapi.yaml"));
    let paths = doc.find(&["paths"]).expect("a paths section");
    let mut out = BTreeMap::new();
    for path in doc.children(Some(paths)) {
        let mut methods = BTreeMap::new();
        for op in doc.children(Some(path)) {
            let method = doc.0[op].key.to_ascii_uppercase();
            if !METHODS.contains(&method.as_str()) {
                assert_eq!(doc.0[op].key, "parameters", "unexpected key under a path");
                continue;
            }
            let responses = doc
                .children(Some(op))
                .into_iter()
                .find(|&i| doc.0[i].key == "responses")
                .unwrap_or_else(|| panic!("{method} {} has responses", doc.0[path].key));
            let mut statuses = Vec::new();
            let mut media = BTreeMap::new();
            for response in doc.children(Some(responses)) {
                let status: u16 = doc.0[response].key.parse().expect("a numeric status");
                statuses.push(status);
                let types = doc
                    .children(Some(response))
                    .into_iter()
                    .find(|&i| doc.0[i].key == "content")
                    .map(|content| doc.keys(content).into_iter().map(String::from).collect())
                    .unwrap_or_default();
                media.insert(status, types);
            }
            methods.insert(method, Operation { statuses, media });
        }
        out.insert(doc.0[path].key.clone(), methods);
    }
    out
}

/// One HTTP/1.1 exchange: (status, content type, body). The body is read by its
/// `Content-Length`, or to the end of the connection.
async fn exchange(
    addr: &str,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: &str,
) -> (u16, String, String) {
    let mut stream = tokio::net::TcpStream::connect(addr)
        .await
        .expect("connect to the edge");
    let mut request = format!("{method} {path} HTTP/1.1\r\nHost: {addr}\r\n");
    let upgrade = headers
        .iter()
        .any(|(n, _)| n.eq_ignore_ascii_case("upgrade"));
    if !upgrade {
        request.push_str("Connection: close\r\n");
    }
    for (name, value) in headers {
        request.push_str(&format!("{name}: {value}\r\n"));
    }
    request.push_str(&format!("Content-Length: {}\r\n\r\n{body}", body.len()));
    stream.write_all(request.as_bytes()).await.unwrap();
    let mut response = Vec::new();
    let mut buf = [0u8; 8192];
    let read = async {
        loop {
            let text = String::from_utf8_lossy(&response).into_owned();
            if let Some((head, rest)) = text.split_once("\r\n\r\n") {
                let length = head.lines().find_map(|l| {
                    let (name, value) = l.split_once(':')?;
                    name.eq_ignore_ascii_case("content-length")
                        .then(|| value.trim().parse::<usize>().ok())?
                });
                if length.is_some_and(|n| rest.len() >= n) {
                    break;
                }
            }
            let n = stream.read(&mut buf).await.unwrap();
            if n == 0 {
                break;
            }
            response.extend_from_slice(&buf[..n]);
        }
    };
    tokio::time::timeout(Duration::from_secs(20), read)
        .await
        .unwrap_or_else(|_| panic!("an answer to {method} {path} in time"));
    let text = String::from_utf8_lossy(&response).into_owned();
    let (head, body) = text.split_once("\r\n\r\n").unwrap_or((&text, ""));
    let status = head
        .split(' ')
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(0);
    let content_type = head
        .lines()
        .filter_map(|l| l.split_once(':'))
        .find(|(n, _)| n.eq_ignore_ascii_case("content-type"))
        .map(|(_, v)| v.trim().to_string())
        .unwrap_or_default();
    (status, content_type, body.to_string())
}

/// The headers that make a request to `path` with `method` what the document describes:
/// a preflight for OPTIONS, a WebSocket upgrade for `/v1/ws`.
fn request_headers(
    path: &str,
    method: &str,
    preflight_for: &'static str,
) -> Vec<(&'static str, &'static str)> {
    if method == "OPTIONS" {
        return vec![
            ("Origin", ORIGIN),
            ("Access-Control-Request-Method", preflight_for),
            ("Access-Control-Request-Headers", "authorization"),
        ];
    }
    if path.starts_with("/v1/ws") {
        return vec![
            ("Connection", "Upgrade"),
            ("Upgrade", "websocket"),
            ("Sec-WebSocket-Version", "13"),
            ("Sec-WebSocket-Key", "dGhlIHNhbXBsZSBub25jZQ=="),
            ("Sec-WebSocket-Protocol", "switchboard.v1"),
        ];
    }
    Vec::new()
}

/// A documented path with its parameters filled in.
fn concrete(path: &str) -> String {
    path.replace("{method}", "test.nobody")
        .replace("{path}", "app.js")
}

/// Checks an answer against the document: a documented status, a documented media type,
/// and for a JSON error exactly `{"code","message"}` with the status of its code.
fn check_answer(what: &str, op: &Operation, (status, content_type, body): &(u16, String, String)) {
    assert!(
        op.statuses.contains(status),
        "{what}: {status} is not among the documented {:?} ({body})",
        op.statuses
    );
    let media = &op.media[status];
    let essence = |t: &str| t.split(';').next().unwrap_or_default().trim().to_string();
    assert!(
        media.is_empty()
            || media
                .iter()
                .any(|m| m == "*/*" || essence(m) == essence(content_type)),
        "{what}: content type {content_type:?} is not among the documented {media:?}"
    );
    if *status >= 400 && content_type.starts_with("application/json") {
        let error: Value = serde_json::from_str(body).expect("a JSON error body");
        let keys: Vec<&String> = error.as_object().expect("an object").keys().collect();
        assert_eq!(keys, ["code", "message"], "{what}: {error}");
        let code: ErrorCode =
            serde_json::from_value(error["code"].clone()).expect("a protocol code");
        assert_eq!(code.http_status(), *status, "{what}: {error}");
    }
}

#[test]
fn the_documented_error_codes_are_the_protocols_with_their_statuses() {
    let file = Path::new(env!("CARGO_MANIFEST_DIR")).join("../docs/openapi.yaml");
    let doc = Outline::parse(&std::fs::read_to_string(file).unwrap());
    let code = doc
        .find(&["components", "schemas", "ErrorCode"])
        .expect("components.schemas.ErrorCode");
    let listed = doc
        .children(Some(code))
        .into_iter()
        .find(|&i| doc.0[i].key == "enum")
        .map(|i| doc.0[i].value.clone())
        .expect("ErrorCode.enum");
    let listed: Vec<String> = listed
        .trim_matches(['[', ']'])
        .split(',')
        .map(|c| c.trim().to_string())
        .collect();
    let statuses = doc
        .find(&["components", "schemas", "ErrorCode", "x-http-status"])
        .expect("ErrorCode.x-http-status");
    let statuses: BTreeMap<String, u16> = doc
        .children(Some(statuses))
        .into_iter()
        .map(|i| (doc.0[i].key.clone(), doc.0[i].value.parse().unwrap()))
        .collect();

    let all = [
        ErrorCode::BadRequest,
        ErrorCode::Unauthorized,
        ErrorCode::Forbidden,
        ErrorCode::NotFound,
        ErrorCode::RateLimited,
        ErrorCode::TooLarge,
        ErrorCode::Unavailable,
        ErrorCode::Internal,
    ];
    // A new code fails to compile here: add it to `all` and to the document.
    for code in all {
        match code {
            ErrorCode::BadRequest
            | ErrorCode::Unauthorized
            | ErrorCode::Forbidden
            | ErrorCode::NotFound
            | ErrorCode::RateLimited
            | ErrorCode::TooLarge
            | ErrorCode::Unavailable
            | ErrorCode::Internal => {}
        }
    }
    let mut expected: Vec<&str> = all.iter().map(|c| c.as_str()).collect();
    let mut documented: Vec<&str> = listed.iter().map(String::as_str).collect();
    expected.sort_unstable();
    documented.sort_unstable();
    assert_eq!(documented, expected, "ErrorCode.enum");
    for code in all {
        assert_eq!(
            statuses.get(code.as_str()),
            Some(&code.http_status()),
            "x-http-status of {code}"
        );
    }
}

#[tokio::test]
async fn every_documented_path_and_method_is_routed_and_no_other_method_is() {
    let documented = documented();
    for path in [
        "/v1/ws",
        "/v1/sse",
        "/v1/poll",
        "/v1/publish",
        "/v1/rpc/{method}",
        "/healthz",
        "/readyz",
        "/metrics",
    ] {
        assert!(documented.contains_key(path), "{path} is documented");
    }

    let stack = Stack::start().await;
    let web = tempfile::tempdir().unwrap();
    std::fs::write(
        web.path().join("index.html"),
        "<!doctype html><title>demo</title>",
    )
    .unwrap();
    std::fs::write(web.path().join("app.js"), "export {};").unwrap();
    let web_dir = web.path().to_str().unwrap();
    let edge = stack.edge(&[
        ("SWITCHBOARD_ALLOWED_ORIGINS", ORIGIN),
        ("SWITCHBOARD_WEB_DIR", web_dir),
    ]);

    for (path, methods) in &documented {
        let target = concrete(path);
        // A preflight asks for the method the path serves.
        let preflight_for = if methods.contains_key("POST") {
            "POST"
        } else {
            "GET"
        };
        for method in METHODS {
            let headers = request_headers(path, method, preflight_for);
            // No token: each authenticated endpoint answers before looking further.
            let target = if path == "/v1/ws" {
                format!("{target}?token=not-a-jwt")
            } else {
                target.clone()
            };
            let answer = exchange(&edge.addr, method, &target, &headers, "").await;
            let what = format!("{method} {target}");
            match methods.get(method) {
                Some(op) => check_answer(&what, op, &answer),
                None => assert_eq!(answer.0, 405, "{what} is not documented: {answer:?}"),
            }
        }
    }

    // The documented successes, with tokens.
    let user = format!("Bearer {}", token("u1", 600, &[]));
    let service = format!(
        "Bearer {}",
        token_with(json!({"sub": "openapi-backend", "exp": now() + 600, "role": "service"}))
    );
    let publish =
        json!({"channel": "project:openapi", "type": "openapi.checked", "data": {"n": 1}});
    let answer = exchange(
        &edge.addr,
        "POST",
        "/v1/publish",
        &[
            ("Authorization", &service),
            ("Content-Type", "application/json"),
        ],
        &publish.to_string(),
    )
    .await;
    check_answer(
        "POST /v1/publish",
        &documented["/v1/publish"]["POST"],
        &answer,
    );
    let published: Value = serde_json::from_str(&answer.2).unwrap();
    assert_eq!(answer.0, 200, "{published}");
    assert!(published["seq"].as_u64().is_some() && published["event_id"].is_string());
    assert_eq!(published["duplicate"], false);

    let answer = exchange(
        &edge.addr,
        "GET",
        "/v1/poll?ch=user:u1&wait=0",
        &[("Authorization", &user)],
        "",
    )
    .await;
    check_answer("GET /v1/poll", &documented["/v1/poll"]["GET"], &answer);
    let polled: Value = serde_json::from_str(&answer.2).unwrap();
    assert_eq!(answer.0, 200, "{polled}");
    assert!(
        polled["events"].is_array() && polled["cursor"].is_string(),
        "{polled}"
    );
    assert_eq!(polled["recovered"], true);

    // A service that does not exist: the handler's 404, with the error body.
    let answer = exchange(
        &edge.addr,
        "POST",
        "/v1/rpc/test.nobody",
        &[("Authorization", &user)],
        "{}",
    )
    .await;
    check_answer(
        "POST /v1/rpc/test.nobody",
        &documented["/v1/rpc/{method}"]["POST"],
        &answer,
    );
    assert_eq!(answer.0, 404, "{answer:?}");

    // The upgrade's two kinds of 400: a JSON refusal, and the framework's plain text for a
    // request that is no upgrade at all.
    let ws = &documented["/v1/ws"]["GET"];
    let upgrade = request_headers("/v1/ws", "GET", "GET");
    let answer = exchange(&edge.addr, "GET", "/v1/ws?presence=bogus", &upgrade, "").await;
    check_answer("GET /v1/ws?presence=bogus", ws, &answer);
    assert_eq!((answer.0, answer.1.as_str()), (400, "application/json"));
    let answer = exchange(&edge.addr, "GET", "/v1/ws", &[], "").await;
    check_answer("GET /v1/ws (no upgrade)", ws, &answer);
    assert_eq!(answer.0, 400);
    assert!(answer.1.starts_with("text/plain"), "{answer:?}");

    let mut sse = SseStream::open(&edge.addr, "ch=user:u1", &[("Authorization", &user)]).await;
    assert_eq!(sse.next().await.0, "ok");

    let answer = exchange(&edge.addr, "GET", "/readyz", &[], "").await;
    let ready: Value = serde_json::from_str(&answer.2).unwrap();
    assert_eq!(
        ready,
        json!({"nats": true, "streams": true, "members": true})
    );

    // Paths the document does not have are the router's 404, with an empty body (a
    // handler's 404 carries the error body).
    for path in [
        "/v1",
        "/v1/rpc",
        "/v1/rpc/a/b",
        "/v1/nothing",
        "/web",
        "/v2/ws",
    ] {
        let (status, _, body) = exchange(&edge.addr, "GET", path, &[], "").await;
        assert_eq!((status, body.as_str()), (404, ""), "GET {path}");
    }
    // The demo's paths exist only with SWITCHBOARD_WEB_DIR.
    let plain = stack.edge(&[]);
    for path in ["/", "/web/app.js"] {
        let (status, _, body) = exchange(&plain.addr, "GET", path, &[], "").await;
        assert_eq!(
            (status, body.as_str()),
            (404, ""),
            "GET {path} without a demo"
        );
    }
}
