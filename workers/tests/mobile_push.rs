//! Mobile push end to end (docs/operations.md §4, "Mobile push"): phones registered with
//! `push.subscribe` get pushes through FCM's HTTP v1 API and APNs over HTTP/2, and a
//! token the push service calls unregistered or invalid removes the device. Both
//! services are local fakes written in the test against the services' documented
//! behaviour: FCM an HTTP/1.1 server (axum) that checks the OAuth assertion signed with
//! the service account's RSA key; APNs an HTTP/2 server (h2, cleartext with prior
//! knowledge) that checks the ES256 provider token. Real nats-server, PostgreSQL and
//! workers binary.

mod support;

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::extract::State;
use axum::http::{HeaderMap, Response, StatusCode};
use axum::routing::post;
use bytes::Bytes;
use jsonwebtoken::{Algorithm, DecodingKey, Validation};
use p256::pkcs8::{EncodePrivateKey, EncodePublicKey, LineEnding};
use serde_json::{Value, json};
use tokio::net::TcpListener;

use support::http::Receiver;
use support::{Setup, Worker, add_member, bid, call, eventually, publish, rpc, setup};

const JOBS: &str = "membership,notifications,outbox";
const PROJECT: &str = "proj-1";
const CLIENT_EMAIL: &str = "switchboard@proj-1.iam.gserviceaccount.com";
const KEY_ID: &str = "ABCDE12345";
const TEAM_ID: &str = "TEAM123456";
const TOPIC: &str = "com.example.app";

/// An RSA key pair in PEM (private PKCS#8, public SPKI), made by the Python
/// `cryptography` package the sink test peers already need.
fn rsa_pair() -> (String, String) {
    let script = "
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa
key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
print(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
      serialization.NoEncryption()).decode(), end='')
print(key.public_key().public_bytes(serialization.Encoding.PEM,
      serialization.PublicFormat.SubjectPublicKeyInfo).decode(), end='')
";
    let output = std::process::Command::new(support::python())
        .args(["-c", script])
        .output()
        .expect("run the test Python (scripts/lib.sh ensure_sink_test_peers)");
    assert!(output.status.success(), "{output:?}");
    let text = String::from_utf8(output.stdout).unwrap();
    let split = text.find("-----BEGIN PUBLIC KEY-----").unwrap();
    (text[..split].to_string(), text[split..].to_string())
}

/// What the fake FCM saw: token exchanges (their assertions' claims) and messages.
#[derive(Clone, Default)]
struct FcmSeen {
    assertions: Arc<Mutex<Vec<Value>>>,
    messages: Arc<Mutex<Vec<(String, Value)>>>,
    public_key: Arc<String>,
    token_url: Arc<Mutex<String>>,
}

/// `POST /token`: the OAuth token exchange, answering an access token to a valid
/// assertion.
async fn fcm_token(State(seen): State<FcmSeen>, body: String) -> (StatusCode, String) {
    let form: Vec<(&str, &str)> = body
        .split('&')
        .filter_map(|pair| pair.split_once('='))
        .collect();
    let grant = form.iter().find(|(k, _)| *k == "grant_type").map(|p| p.1);
    let Some(assertion) = form.iter().find(|(k, _)| *k == "assertion").map(|p| p.1) else {
        return (StatusCode::BAD_REQUEST, "{}".into());
    };
    assert_eq!(
        grant,
        Some("urn%3Aietf%3Aparams%3Aoauth%3Agrant-type%3Ajwt-bearer")
    );
    let mut validation = Validation::new(Algorithm::RS256);
    validation.set_audience(&[seen.token_url.lock().unwrap().clone()]);
    validation.set_issuer(&[CLIENT_EMAIL]);
    let key = DecodingKey::from_rsa_pem(seen.public_key.as_bytes()).unwrap();
    match jsonwebtoken::decode::<Value>(assertion, &key, &validation) {
        Ok(token) => {
            seen.assertions.lock().unwrap().push(token.claims);
            (
                StatusCode::OK,
                json!({"access_token": "ya29.test-access", "expires_in": 3599, "token_type": "Bearer"})
                    .to_string(),
            )
        }
        Err(error) => (
            StatusCode::BAD_REQUEST,
            json!({"error": error.to_string()}).to_string(),
        ),
    }
}

/// `POST /v1/projects/proj-1/messages:send`: 404 UNREGISTERED for `fcm-gone`, 400
/// INVALID_ARGUMENT for `fcm-invalid`, else accepted.
async fn fcm_send(
    State(seen): State<FcmSeen>,
    headers: HeaderMap,
    body: String,
) -> (StatusCode, String) {
    let authorization = headers
        .get("authorization")
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default()
        .to_string();
    if authorization != "Bearer ya29.test-access" {
        return (StatusCode::UNAUTHORIZED, "{}".into());
    }
    let message: Value = serde_json::from_str(&body).unwrap();
    let token = message["message"]["token"].as_str().unwrap().to_string();
    seen.messages.lock().unwrap().push((token.clone(), message));
    match token.as_str() {
        "fcm-gone" => (
            StatusCode::NOT_FOUND,
            json!({"error": {"code": 404, "status": "NOT_FOUND", "details": [
                {"@type": "type.googleapis.com/google.firebase.fcm.v1.FcmError", "errorCode": "UNREGISTERED"}
            ]}})
            .to_string(),
        ),
        "fcm-invalid" => (
            StatusCode::BAD_REQUEST,
            json!({"error": {"code": 400, "status": "INVALID_ARGUMENT"}}).to_string(),
        ),
        _ => (
            StatusCode::OK,
            json!({"name": format!("projects/{PROJECT}/messages/1")}).to_string(),
        ),
    }
}

async fn start_fcm(public_key: String) -> (String, FcmSeen) {
    let seen = FcmSeen {
        public_key: Arc::new(public_key),
        ..FcmSeen::default()
    };
    let app = axum::Router::new()
        .route("/token", post(fcm_token))
        .route(
            &format!("/v1/projects/{PROJECT}/messages:send"),
            post(fcm_send),
        )
        .with_state(seen.clone());
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let base = format!("http://{}", listener.local_addr().unwrap());
    *seen.token_url.lock().unwrap() = format!("{base}/token");
    tokio::spawn(async move { axum::serve(listener, app).await });
    (base, seen)
}

/// One request the fake APNs took.
#[derive(Debug, Clone)]
struct ApnsRequest {
    version: axum::http::Version,
    token: String,
    headers: HeaderMap,
    /// The provider token's header `kid` and claims, verified with the public key.
    kid: Option<String>,
    claims: Value,
    body: Value,
}

/// A fake APNs: HTTP/2 only (h2 takes nothing but the HTTP/2 preface), answering 410
/// `Unregistered` to tokens starting `dead`, 400 `BadDeviceToken` to `bad0`, else 200.
async fn start_apns(public_key: String) -> (SocketAddr, Arc<Mutex<Vec<ApnsRequest>>>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let address = listener.local_addr().unwrap();
    let seen: Arc<Mutex<Vec<ApnsRequest>>> = Arc::default();
    let requests = seen.clone();
    let key = Arc::new(DecodingKey::from_ec_pem(public_key.as_bytes()).unwrap());
    tokio::spawn(async move {
        while let Ok((socket, _)) = listener.accept().await {
            let (requests, key) = (requests.clone(), key.clone());
            tokio::spawn(async move {
                let Ok(mut connection) = h2::server::handshake(socket).await else {
                    return;
                };
                while let Some(Ok((request, mut respond))) = connection.accept().await {
                    let (requests, key) = (requests.clone(), key.clone());
                    tokio::spawn(async move {
                        let (parts, mut body) = request.into_parts();
                        let mut bytes = Vec::new();
                        while let Some(Ok(chunk)) = body.data().await {
                            let _ = body.flow_control().release_capacity(chunk.len());
                            bytes.extend_from_slice(&chunk);
                        }
                        let token = parts
                            .uri
                            .path()
                            .strip_prefix("/3/device/")
                            .unwrap_or_default()
                            .to_string();
                        let bearer = parts
                            .headers
                            .get("authorization")
                            .and_then(|v| v.to_str().ok())
                            .and_then(|v| v.strip_prefix("bearer "))
                            .unwrap_or_default()
                            .to_string();
                        let mut validation = Validation::new(Algorithm::ES256);
                        validation.set_issuer(&[TEAM_ID]);
                        validation.required_spec_claims.clear();
                        validation.validate_exp = false;
                        let verified = jsonwebtoken::decode::<Value>(&bearer, &key, &validation);
                        let (kid, claims) = match &verified {
                            Ok(data) => (data.header.kid.clone(), data.claims.clone()),
                            Err(_) => (None, Value::Null),
                        };
                        requests.lock().unwrap().push(ApnsRequest {
                            version: parts.version,
                            token: token.clone(),
                            headers: parts.headers.clone(),
                            kid,
                            claims,
                            body: serde_json::from_slice(&bytes).unwrap_or(Value::Null),
                        });
                        let (status, reason) = if verified.is_err() {
                            (403, "InvalidProviderToken")
                        } else if token.starts_with("dead") {
                            (410, "Unregistered")
                        } else if token.starts_with("bad0") {
                            (400, "BadDeviceToken")
                        } else {
                            (200, "")
                        };
                        let response = Response::builder().status(status).body(()).unwrap();
                        if let Ok(mut stream) = respond.send_response(response, false) {
                            let body = if reason.is_empty() {
                                Bytes::new()
                            } else {
                                Bytes::from(json!({"reason": reason}).to_string())
                            };
                            let _ = stream.send_data(body, true);
                        }
                    });
                }
            });
        }
    });
    (address, seen)
}

async fn devices(setup: &Setup) -> Vec<(String, String, String)> {
    sqlx::query_as(
        "SELECT user_id, device, platform FROM switchboard.mobile_devices ORDER BY user_id, device",
    )
    .fetch_all(&setup.db)
    .await
    .unwrap()
}

#[tokio::test(flavor = "multi_thread")]
async fn phones_get_pushes_by_fcm_and_apns_and_dead_tokens_remove_the_device() {
    let setup = setup().await;
    let (rsa_private, rsa_public) = rsa_pair();
    let ec = p256::SecretKey::random(&mut rand_core::OsRng);
    let ec_private = ec.to_pkcs8_pem(LineEnding::LF).unwrap().to_string();
    let ec_public = ec.public_key().to_public_key_pem(LineEnding::LF).unwrap();
    let (fcm_base, fcm) = start_fcm(rsa_public).await;
    let (apns_address, apns) = start_apns(ec_public).await;
    let webhook = Receiver::start(|_| 204).await;
    let credentials = json!({
        "type": "service_account",
        "project_id": PROJECT,
        "private_key_id": "k1",
        "private_key": rsa_private,
        "client_email": CLIENT_EMAIL,
        "token_uri": "https://oauth2.googleapis.com/token",
    });
    let _worker = Worker::start(
        &setup,
        JOBS,
        &[
            ("SWITCHBOARD_FCM_CREDENTIALS", credentials.to_string()),
            ("SWITCHBOARD_FCM_TOKEN_URL", format!("{fcm_base}/token")),
            ("SWITCHBOARD_FCM_ENDPOINT", fcm_base.clone()),
            ("SWITCHBOARD_APNS_KEY", ec_private),
            ("SWITCHBOARD_APNS_KEY_ID", KEY_ID.into()),
            ("SWITCHBOARD_APNS_TEAM_ID", TEAM_ID.into()),
            (
                "SWITCHBOARD_APNS_ENDPOINT",
                format!("http://{apns_address}"),
            ),
            (
                "SWITCHBOARD_NOTIFY_WEBHOOK_URL",
                format!("{}/hook", webhook.base),
            ),
            ("SWITCHBOARD_NOTIFY_SUBJECTS", "false".into()),
        ],
    );

    let good_apns = "ab".repeat(32);
    let bad_apns = format!("bad0{}", "1".repeat(60));
    let dead_apns = format!("dead{}", "2".repeat(60));
    for (user, params) in [
        ("u1", json!({"fcm": "fcm-good", "device": "pixel"})),
        (
            "u1",
            json!({"apns": good_apns.to_uppercase(), "topic": TOPIC, "device": "iphone"}),
        ),
        ("u2", json!({"fcm": "fcm-gone", "device": "d1"})),
        ("u3", json!({"fcm": "fcm-invalid", "device": "d1"})),
        (
            "u4",
            json!({"apns": bad_apns, "topic": TOPIC, "device": "d1"}),
        ),
        (
            "u5",
            json!({"apns": dead_apns, "topic": TOPIC, "device": "d1"}),
        ),
    ] {
        let device = params["device"].clone();
        let answer = call(&setup, "push.subscribe", user, params).await;
        assert_eq!(answer, json!({"device": device}));
    }
    // Refused: what is not one registration of a known kind.
    for (params, what) in [
        (json!({"fcm": "a b", "device": "d9"}), "fcm"),
        (
            json!({"apns": "zz", "topic": TOPIC, "device": "d9"}),
            "apns",
        ),
        (json!({"apns": good_apns, "device": "d9"}), "topic"),
        (
            json!({"apns": good_apns, "topic": "com example", "device": "d9"}),
            "topic",
        ),
        (json!({"fcm": "x", "topic": TOPIC, "device": "d9"}), "topic"),
        (
            json!({"fcm": "x", "apns": good_apns, "topic": TOPIC, "device": "d9"}),
            "exactly one",
        ),
        (json!({"device": "d9"}), "exactly one"),
    ] {
        let refused = rpc(&setup, "push.subscribe", Some("u9"), params.clone()).await;
        assert_eq!(
            refused["error"]["code"], "bad_request",
            "{params}: {refused}"
        );
        let message = refused["error"]["message"].as_str().unwrap();
        assert!(message.contains(what), "{what} in {message}");
    }
    assert_eq!(devices(&setup).await.len(), 6);

    for user in ["u1", "u2", "u3", "u4", "u5", "u6"] {
        add_member(&setup, "project:p1", user, "owner").await;
    }
    publish(&setup, "project:p1", &bid(5000)).await;

    // The dead tokens' devices go; u1's two phones stay.
    let left = eventually("the refused devices removed", || async {
        let left = devices(&setup).await;
        (left.len() == 2).then_some(left)
    })
    .await;
    assert_eq!(
        left,
        [
            ("u1".to_string(), "iphone".to_string(), "apns".to_string()),
            ("u1".to_string(), "pixel".to_string(), "fcm".to_string()),
        ]
    );
    let delivered = eventually("u1's pushes delivered", || async {
        let delivered: Vec<String> = sqlx::query_scalar(
            "SELECT sink FROM switchboard.notification_deliveries
              WHERE user_id = 'u1' AND medium = 'push' AND delivered_at IS NOT NULL ORDER BY sink",
        )
        .fetch_all(&setup.db)
        .await
        .unwrap();
        (delivered.len() == 2).then_some(delivered)
    })
    .await;
    assert_eq!(delivered, ["apns", "fcm"]);

    // FCM: one token exchange with a valid assertion, then each message with its token.
    let assertions = fcm.assertions.lock().unwrap().clone();
    assert_eq!(
        assertions.len(),
        1,
        "the access token is reused: {assertions:?}"
    );
    assert_eq!(
        assertions[0]["scope"],
        "https://www.googleapis.com/auth/firebase.messaging"
    );
    let messages = fcm.messages.lock().unwrap().clone();
    let mut tokens: Vec<&str> = messages.iter().map(|(token, _)| token.as_str()).collect();
    tokens.sort();
    assert_eq!(tokens, ["fcm-gone", "fcm-good", "fcm-invalid"]);
    let (_, good) = messages.iter().find(|(t, _)| t == "fcm-good").unwrap();
    let message = &good["message"];
    assert_eq!(
        message["notification"],
        json!({"title": "New bid", "body": "c9 placed a bid of 5000 on p1"})
    );
    assert_eq!(message["android"]["priority"], "HIGH");
    let data: Value =
        serde_json::from_str(message["data"]["notification"].as_str().unwrap()).unwrap();
    assert_eq!(data["title"], "New bid");
    assert_eq!(data["category"], "bid");
    assert!(data["id"].as_str().unwrap().starts_with("ntf_"));

    // APNs: HTTP/2, a verified provider token, the documented headers and body.
    let requests = apns.lock().unwrap().clone();
    let mut tokens: Vec<&str> = requests.iter().map(|r| r.token.as_str()).collect();
    tokens.sort();
    let mut expected = vec![good_apns.as_str(), bad_apns.as_str(), dead_apns.as_str()];
    expected.sort();
    assert_eq!(tokens, expected, "the token is sent lowercase");
    let good = requests.iter().find(|r| r.token == good_apns).unwrap();
    assert_eq!(good.version, axum::http::Version::HTTP_2);
    assert_eq!(good.kid.as_deref(), Some(KEY_ID));
    assert_eq!(good.claims["iss"], TEAM_ID);
    let header = |name: &str| good.headers.get(name).and_then(|v| v.to_str().ok());
    assert_eq!(header("apns-topic"), Some(TOPIC));
    assert_eq!(header("apns-push-type"), Some("alert"));
    assert_eq!(header("apns-priority"), Some("10"));
    assert!(header("apns-expiration").is_some());
    assert_eq!(
        good.body["aps"]["alert"],
        json!({"title": "New bid", "body": "c9 placed a bid of 5000 on p1"})
    );
    assert_eq!(good.body["notification"]["category"], "bid");

    // Only u6, with no device, is a push_due for the app's own provider.
    let push_due = || {
        webhook
            .requests()
            .iter()
            .map(|request| request.json())
            .filter(|body| body["event"] == "push_due")
            .map(|body| body["user"].as_str().unwrap().to_string())
            .collect::<Vec<String>>()
    };
    eventually("push_due for u6", || async {
        (!push_due().is_empty()).then_some(())
    })
    .await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(push_due(), ["u6"]);

    // Unsubscribing by token.
    let removed = call(&setup, "push.unsubscribe", "u1", json!({"fcm": "fcm-good"})).await;
    assert_eq!(removed, json!({"removed": true}));
    let removed = call(&setup, "push.unsubscribe", "u1", json!({"apns": good_apns})).await;
    assert_eq!(removed, json!({"removed": true}));
    assert!(devices(&setup).await.is_empty());
}

#[tokio::test(flavor = "multi_thread")]
async fn without_fcm_or_apns_they_are_not_offered_and_bad_keys_stop_the_worker() {
    let setup = setup().await;
    let _worker = Worker::start(&setup, JOBS, &[]);
    for params in [
        json!({"fcm": "tok", "device": "d1"}),
        json!({"apns": "ab".repeat(32), "topic": TOPIC, "device": "d1"}),
    ] {
        let refused = rpc(&setup, "push.subscribe", Some("u1"), params).await;
        assert_eq!(refused["error"]["code"], "not_found", "{refused}");
    }
    let secret = "super-secret-key-material";
    for (env, reason) in [
        (
            vec![(
                "SWITCHBOARD_FCM_CREDENTIALS",
                format!(
                    "{{\"project_id\":\"p\",\"client_email\":\"a@b\",\"private_key\":\"{secret}\"}}"
                ),
            )],
            "not an RSA private key",
        ),
        (
            vec![(
                "SWITCHBOARD_APNS_KEY",
                format!("-----BEGIN PRIVATE KEY-----\n{secret}\n-----END PRIVATE KEY-----\n"),
            )],
            "SWITCHBOARD_APNS_KEY",
        ),
    ] {
        Worker::refuses(&setup, JOBS, &env, reason, secret).await;
    }
}
