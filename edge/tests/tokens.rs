//! Token forgery and validation: every way a token can be wrong is refused, and the
//! identity a relayed `rpc` carries comes from the verified token alone.

mod support;

use std::time::Duration;

use base64::Engine as _;
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use serde_json::{Value, json};
use support::*;

const FIXTURES: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fixtures");

fn fixture(name: &str) -> Vec<u8> {
    std::fs::read(format!("{FIXTURES}/{name}")).unwrap()
}

fn b64(bytes: &[u8]) -> String {
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes)
}

fn sign(alg: Algorithm, key: &EncodingKey, claims: Value) -> String {
    jsonwebtoken::encode(&Header::new(alg), &claims, key).unwrap()
}

fn valid_claims() -> Value {
    json!({"sub": "u1", "exp": now() + 600})
}

/// Asserts the upgrade is refused with 401 and the JSON error body.
async fn refused(edge: &Edge, token: &str, why: &str) {
    match Client::open(&edge.ws_url(), Some(token)).await {
        Err((status, body)) => {
            assert_eq!(status, 401, "{why}");
            let body: Value = serde_json::from_str(&body).unwrap();
            assert_eq!(body["code"], "unauthorized", "{why}");
        }
        Ok(_) => panic!("accepted a token that is {why}"),
    }
}

#[tokio::test]
async fn hs256_tokens_that_are_wrong_in_any_way_are_refused() {
    let stack = Stack::start().await;
    let edge = stack.edge(&[
        ("SWITCHBOARD_JWT_ISSUER", "instabids"),
        ("SWITCHBOARD_JWT_AUDIENCE", "switchboard"),
    ]);
    let key = EncodingKey::from_secret(SECRET.as_bytes());
    let good = json!({"sub":"u1","exp": now() + 600,"iss":"instabids","aud":"switchboard"});
    let with = |patch: Value| {
        let mut claims = good.clone();
        for (k, v) in patch.as_object().unwrap() {
            if v.is_null() {
                claims.as_object_mut().unwrap().remove(k);
            } else {
                claims[k] = v.clone();
            }
        }
        sign(Algorithm::HS256, &key, claims)
    };
    // The baseline is accepted.
    edge.connect_with(&with(json!({}))).await;

    let unsigned = format!(
        "{}.{}.",
        b64(br#"{"alg":"none","typ":"JWT"}"#),
        b64(good.to_string().as_bytes())
    );
    refused(&edge, &unsigned, "alg none").await;
    let genuine = with(json!({}));
    let mut parts: Vec<&str> = genuine.split('.').collect();
    let tampered_payload = b64(
        json!({"sub":"admin","exp": now() + 600,"iss":"instabids","aud":"switchboard"})
            .to_string()
            .as_bytes(),
    );
    parts[1] = &tampered_payload;
    refused(&edge, &parts.join("."), "a tampered payload").await;
    refused(&edge, &with(json!({"exp": now() - 60})), "expired").await;
    refused(&edge, &with(json!({"nbf": now() + 60})), "not yet valid").await;
    refused(
        &edge,
        &with(json!({"iss":"someone-else"})),
        "from the wrong issuer",
    )
    .await;
    refused(&edge, &with(json!({"iss": null})), "without an issuer").await;
    refused(
        &edge,
        &with(json!({"aud":"another-app"})),
        "for another audience",
    )
    .await;
    refused(&edge, &with(json!({"sub": null})), "without sub").await;
    refused(&edge, &with(json!({"exp": null})), "without exp").await;
    refused(
        &edge,
        &with(json!({"sub":"u1.>"})),
        "with a sub that is no valid id",
    )
    .await;
    let other_key = EncodingKey::from_secret(b"a-completely-different-secret");
    refused(
        &edge,
        &sign(Algorithm::HS256, &other_key, good.clone()),
        "signed with another key",
    )
    .await;
    refused(
        &edge,
        &sign(Algorithm::HS512, &key, good.clone()),
        "of another HMAC algorithm",
    )
    .await;
    refused(&edge, "", "empty").await;
    refused(&edge, "a.b", "malformed").await;
    println!(
        "token forgery: 14 tokens refused 401 before any socket (alg none, tampered payload, \
         expired, nbf ahead, wrong or missing issuer, wrong audience, no sub, no exp, invalid \
         sub, another key, HS512, empty, malformed); the genuine one accepted"
    );
}

#[tokio::test]
async fn a_leeway_of_five_seconds_applies_to_exp_and_nbf() {
    let stack = Stack::start().await;
    let edge = stack.edge(&[]);
    let key = EncodingKey::from_secret(SECRET.as_bytes());
    edge.connect_with(&sign(
        Algorithm::HS256,
        &key,
        json!({"sub":"u1","exp": now() - 2}),
    ))
    .await;
    edge.connect_with(&sign(
        Algorithm::HS256,
        &key,
        json!({"sub":"u1","exp": now() + 60,"nbf": now() + 2}),
    ))
    .await;
    refused(
        &edge,
        &sign(
            Algorithm::HS256,
            &key,
            json!({"sub":"u1","exp": now() - 30}),
        ),
        "expired past the leeway",
    )
    .await;
}

#[tokio::test]
async fn rs256_edge_accepts_its_key_and_refuses_hs256_signed_with_the_public_key() {
    let stack = Stack::start().await;
    let public = format!("{FIXTURES}/rs256-public.pem");
    let edge = stack.edge(&[
        ("SWITCHBOARD_JWT_ALG", "RS256"),
        ("SWITCHBOARD_JWT_PUBLIC_KEY", &public),
    ]);
    let private = EncodingKey::from_rsa_pem(&fixture("rs256-private.pem")).unwrap();
    let mut client = edge
        .connect_with(&sign(Algorithm::RS256, &private, valid_claims()))
        .await;
    assert_eq!(client.request(json!({"op":"ping"})).await["op"], "pong");
    // The classic confusion attack: HS256 keyed with the RSA public key's bytes.
    let confused = EncodingKey::from_secret(&fixture("rs256-public.pem"));
    refused(
        &edge,
        &sign(Algorithm::HS256, &confused, valid_claims()),
        "HS256 with the public key",
    )
    .await;
    let hs = EncodingKey::from_secret(SECRET.as_bytes());
    refused(
        &edge,
        &sign(Algorithm::HS256, &hs, valid_claims()),
        "HS256 on an RS256 edge",
    )
    .await;
    println!(
        "algorithm confusion: an RS256 edge accepts its key and refuses (401) HS256 signed \
         with its public key and HS256 with a shared secret"
    );
}

#[tokio::test]
async fn eddsa_edge_verifies_ed25519_tokens() {
    let stack = Stack::start().await;
    let public = format!("{FIXTURES}/ed25519-public.pem");
    let edge = stack.edge(&[
        ("SWITCHBOARD_JWT_ALG", "EdDSA"),
        ("SWITCHBOARD_JWT_PUBLIC_KEY", &public),
    ]);
    let private = EncodingKey::from_ed_pem(&fixture("ed25519-private.pem")).unwrap();
    edge.connect_with(&sign(Algorithm::EdDSA, &private, valid_claims()))
        .await;
    let rsa = EncodingKey::from_rsa_pem(&fixture("rs256-private.pem")).unwrap();
    refused(
        &edge,
        &sign(Algorithm::RS256, &rsa, valid_claims()),
        "RS256 on an EdDSA edge",
    )
    .await;
}

#[test]
fn an_edge_without_its_key_refuses_to_start_with_a_clear_message() {
    let output = std::process::Command::new(env!("CARGO_BIN_EXE_switchboard-edge"))
        .env_remove("SWITCHBOARD_JWT_SECRET")
        .env("SWITCHBOARD_JWT_ALG", "HS256")
        .env("SWITCHBOARD_EDGE_ADDR", "127.0.0.1:0")
        .output()
        .unwrap();
    assert!(!output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("SWITCHBOARD_JWT_SECRET"), "{stderr}");
}

/// `Rt-User` and `Rt-Role` on a relayed `rpc` come from the verified token only
/// (docs/protocol.md §10.4): a user token is `user` whatever the client sends, a service
/// token is `service`, and headers a client adds to `POST /v1/rpc` are not passed on.
#[tokio::test]
async fn rpc_identity_comes_from_the_token_and_never_from_the_client() {
    use futures_util::StreamExt as _;
    let stack = Stack::start().await;
    let edge = stack.edge(&[]);
    // A service answering with the identity headers it received.
    let mut requests = stack.client.subscribe("svc.test.whoami").await.unwrap();
    switchboard_testkit::synced(&stack.client).await.unwrap();
    let answerer = stack.client.clone();
    tokio::spawn(async move {
        while let Some(request) = requests.next().await {
            // Every value of the header: a second one passed on would show here.
            let header = |name: &str| -> Vec<String> {
                request
                    .headers
                    .as_ref()
                    .map(|h| h.get_all(name).map(|v| v.as_str().to_string()).collect())
                    .unwrap_or_default()
            };
            let seen = json!({"result": {"user": header("Rt-User"), "role": header("Rt-Role")}});
            if let Some(reply) = request.reply {
                answerer
                    .publish(reply, seen.to_string().into())
                    .await
                    .unwrap();
            }
        }
    });
    let identity = |user: &str, role: &str| json!({"user": [user], "role": [role]});

    let user = format!("Bearer {}", token("u1", 600, &[]));
    let (status, body) = http(
        &edge.addr,
        "POST",
        "/v1/rpc/test.whoami",
        &[
            ("Authorization", &user),
            ("Rt-Role", "service"),
            ("Rt-User", "someone-else"),
        ],
        "{}",
    )
    .await;
    assert_eq!(status, 200, "{body}");
    let answer: Value = serde_json::from_str(&body).unwrap();
    assert_eq!(answer["result"], identity("u1", "user"), "{body}");

    let service = token_with(json!({"sub": "billing", "role": "service", "exp": now() + 600}));
    let (status, body) = http(
        &edge.addr,
        "POST",
        "/v1/rpc/test.whoami",
        &[("Authorization", &format!("Bearer {service}"))],
        "{}",
    )
    .await;
    assert_eq!(status, 200, "{body}");
    let answer: Value = serde_json::from_str(&body).unwrap();
    assert_eq!(answer["result"], identity("billing", "service"), "{body}");

    // Over the socket, whatever the params say.
    let mut client = edge.connect("u2").await;
    let reply = client
        .request(json!({"op": "rpc", "method": "test.whoami",
                        "params": {"Rt-Role": "service", "Rt-User": "u1"}}))
        .await;
    assert_eq!(reply["op"], "ok", "{reply}");
    assert_eq!(reply["result"], identity("u2", "user"), "{reply}");
}

/// No `rpc`, from a user or a service token, over the socket or HTTP, reaches `int.>`,
/// where the workers answer the edge's own questions (docs/protocol.md §10.1).
#[tokio::test]
async fn no_rpc_reaches_internal_subjects() {
    use futures_util::StreamExt as _;
    let stack = Stack::start().await;
    let edge = stack.edge(&[("SWITCHBOARD_RPC_TIMEOUT_MS", "300")]);
    let mut internal = stack.client.subscribe("int.>").await.unwrap();
    let mut relayed = stack.client.subscribe("svc.>").await.unwrap();
    switchboard_testkit::synced(&stack.client).await.unwrap();
    let methods = [
        "int.archive.read",
        "int.presence.authorize",
        "archive.read",
        "presence.authorize",
        "presence.visible",
        ".int.archive.read",
        "int.>",
        "int.*",
        "int archive",
        "svc..int.x",
    ];
    let service = token_with(json!({"sub": "billing", "role": "service", "exp": now() + 600}));
    let mut client = edge.connect("u1").await;
    for method in methods {
        let reply = client
            .request(json!({"op": "rpc", "method": method, "params": {}}))
            .await;
        assert_ne!(reply["op"], "ok", "{method}: {reply}");
        for token in [token("u1", 600, &[]), service.clone()] {
            let path = format!("/v1/rpc/{}", method.replace(' ', "%20"));
            let (status, body) =
                http_as(&edge.addr, "POST", &path, &format!("Bearer {token}"), "{}").await;
            assert_ne!(status, 200, "{method}: {body}");
        }
    }
    // Whatever was relayed went under svc., and nothing reached int.
    let went = tokio::time::timeout(Duration::from_millis(500), internal.next()).await;
    assert!(!matches!(went, Ok(Some(_))), "an rpc reached {went:?}");
    let mut subjects = Vec::new();
    while let Ok(Some(request)) =
        tokio::time::timeout(Duration::from_millis(100), relayed.next()).await
    {
        subjects.push(request.subject.to_string());
    }
    assert!(
        subjects
            .iter()
            .all(|s| s.starts_with("svc.") && !s.contains('*') && !s.contains('>')),
        "{subjects:?}"
    );
    assert!(
        subjects.contains(&"svc.int.archive.read".to_string()),
        "the valid names were relayed under svc.: {subjects:?}"
    );
}
