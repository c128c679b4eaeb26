//! CORS on the HTTP API: the origins of `SWITCHBOARD_ALLOWED_ORIGINS` get preflight
//! answers and `Access-Control-Allow-Origin` on `/v1/sse`, `/v1/poll`, `/v1/rpc/*` and
//! `/v1/publish`; other origins get neither; a malformed origin stops the edge at start.

mod support;

use std::process::Command;
use std::time::Duration;

use support::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

const ALLOWED: &str = "https://app.example.test";
const OTHER: &str = "https://evil.example.test";

/// One HTTP/1.0 exchange: the status and the response's headers (lower-cased names).
async fn exchange(
    addr: &str,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
) -> (u16, Vec<(String, String)>) {
    let mut stream = tokio::net::TcpStream::connect(addr)
        .await
        .expect("connect to the edge");
    let mut request = format!("{method} {path} HTTP/1.0\r\nHost: {addr}\r\n");
    for (name, value) in headers {
        request.push_str(&format!("{name}: {value}\r\n"));
    }
    request.push_str("Content-Length: 2\r\n\r\n{}");
    stream.write_all(request.as_bytes()).await.unwrap();
    // An SSE stream never ends: the head is enough.
    let mut response = Vec::new();
    let mut buf = [0u8; 4096];
    while !response.windows(4).any(|w| w == b"\r\n\r\n") {
        let n = tokio::time::timeout(Duration::from_secs(20), stream.read(&mut buf))
            .await
            .expect("an answer in time")
            .unwrap();
        if n == 0 {
            break;
        }
        response.extend_from_slice(&buf[..n]);
    }
    let text = String::from_utf8_lossy(&response).into_owned();
    let head = text.split("\r\n\r\n").next().unwrap_or_default();
    let mut lines = head.lines();
    let status = lines
        .next()
        .and_then(|l| l.split(' ').nth(1))
        .and_then(|s| s.parse().ok())
        .unwrap_or(0);
    let headers = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(n, v)| (n.trim().to_ascii_lowercase(), v.trim().to_string()))
        .collect();
    (status, headers)
}

fn header<'a>(headers: &'a [(String, String)], name: &str) -> Option<&'a str> {
    headers
        .iter()
        .find(|(n, _)| n == name)
        .map(|(_, v)| v.as_str())
}

fn preflight<'a>(origin: &'a str, method: &'a str) -> [(&'a str, &'a str); 3] {
    [
        ("Origin", origin),
        ("Access-Control-Request-Method", method),
        (
            "Access-Control-Request-Headers",
            "authorization, content-type, last-event-id, traceparent",
        ),
    ]
}

#[tokio::test]
async fn allowed_origins_get_preflights_and_the_allow_origin_header_others_get_neither() {
    let stack = Stack::start().await;
    let edge = stack.edge(&[(
        "SWITCHBOARD_ALLOWED_ORIGINS",
        &format!("{ALLOWED},https://other-app.example.test"),
    )]);
    let auth = format!("Bearer {}", token("u1", 600, &[]));
    let paths = [
        ("GET", "/v1/sse?ch=user:u1"),
        ("GET", "/v1/poll?ch=user:u1"),
        ("POST", "/v1/rpc/test.nobody"),
        ("POST", "/v1/publish"),
    ];
    for (method, path) in paths {
        let (status, headers) =
            exchange(&edge.addr, "OPTIONS", path, &preflight(ALLOWED, method)).await;
        assert!(
            (200..300).contains(&status),
            "preflight of {path}: {status}"
        );
        assert_eq!(
            header(&headers, "access-control-allow-origin"),
            Some(ALLOWED),
            "{path}"
        );
        let allowed_headers = header(&headers, "access-control-allow-headers")
            .unwrap_or_default()
            .to_ascii_lowercase();
        for wanted in [
            "authorization",
            "content-type",
            "last-event-id",
            "traceparent",
        ] {
            assert!(
                allowed_headers.contains(wanted),
                "{path} allows {allowed_headers}, not {wanted}"
            );
        }
        assert!(
            header(&headers, "access-control-allow-methods")
                .unwrap_or_default()
                .contains(method),
            "{path}"
        );

        let (_, headers) = exchange(&edge.addr, "OPTIONS", path, &preflight(OTHER, method)).await;
        // Without `Access-Control-Allow-Origin` the browser refuses the preflight (the
        // layer still lists the methods and headers it would allow; they grant nothing).
        assert_eq!(
            header(&headers, "access-control-allow-origin"),
            None,
            "preflight of {path} from another origin"
        );

        // The actual request: answered (or refused by the handler) with the header for the
        // allowed origin only.
        let (_, headers) = exchange(
            &edge.addr,
            method,
            path,
            &[("Origin", ALLOWED), ("Authorization", &auth)],
        )
        .await;
        assert_eq!(
            header(&headers, "access-control-allow-origin"),
            Some(ALLOWED),
            "{method} {path}"
        );
        let (status, headers) = exchange(
            &edge.addr,
            method,
            path,
            &[("Origin", OTHER), ("Authorization", &auth)],
        )
        .await;
        assert_eq!(
            header(&headers, "access-control-allow-origin"),
            None,
            "{method} {path} from another origin"
        );
        assert_eq!(status, 403, "{method} {path} from another origin");
    }
    // The rest of the surface has no CORS.
    for path in ["/healthz", "/readyz", "/metrics"] {
        let (_, headers) = exchange(&edge.addr, "GET", path, &[("Origin", ALLOWED)]).await;
        assert_eq!(
            header(&headers, "access-control-allow-origin"),
            None,
            "{path}"
        );
    }
}

#[tokio::test]
async fn no_allowed_origins_means_no_cors_answers() {
    let stack = Stack::start().await;
    let edge = stack.edge(&[]);
    let (_, headers) = exchange(
        &edge.addr,
        "OPTIONS",
        "/v1/rpc/test.x",
        &preflight(ALLOWED, "POST"),
    )
    .await;
    assert_eq!(header(&headers, "access-control-allow-origin"), None);
}

#[test]
fn a_malformed_origin_stops_the_edge_with_the_variable_named() {
    for bad in [
        "app.example.test",
        "https://app.example.test/",
        "https://app.example.test/path",
        "ftp://x",
    ] {
        let output = Command::new(env!("CARGO_BIN_EXE_switchboard-edge"))
            .env("SWITCHBOARD_ALLOWED_ORIGINS", bad)
            .env(
                "SWITCHBOARD_JWT_SECRET",
                switchboard_testkit::fresh_secret(),
            )
            .output()
            .expect("run switchboard-edge");
        assert!(!output.status.success(), "{bad} was accepted");
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert!(
            stderr.contains("allowed-origins") || stderr.contains("SWITCHBOARD_ALLOWED_ORIGINS"),
            "{bad}: {stderr}"
        );
        assert!(stderr.contains("is not an origin"), "{bad}: {stderr}");
    }
}
