//! Token keys from a JSON Web Key Set (docs/operations.md, "Token keys"): rotation
//! without a restart, unknown kids and their rate-limited refetch, algorithm confusion,
//! sets that fail to load, and the start-up refusals of insecure key settings.
//!
//! The set is served by a small HTTP server in the test process whose answer the test
//! changes while a real edge runs, or written to a file the edge re-reads.

mod support;

use std::io::Read as _;
use std::net::{SocketAddr, TcpListener as StdListener};
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use base64::Engine as _;
use jsonwebtoken::jwk::Jwk;
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use serde_json::{Value, json};
use support::*;
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};

const FIXTURES: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fixtures");

/// A value docs/operations.md prints as the example secret never to use.
const DOCUMENTED_SECRET: &str = "switchboard-docs-example-secret-do-not-use-0001";

fn fixture(name: &str) -> Vec<u8> {
    std::fs::read(format!("{FIXTURES}/{name}")).unwrap()
}

/// A signing key of the issuer and its public JWK.
struct Signer {
    kid: &'static str,
    alg: Algorithm,
    key: EncodingKey,
    jwk: Value,
}

impl Signer {
    fn new(kid: &'static str, alg: Algorithm, key: EncodingKey) -> Signer {
        let mut jwk = serde_json::to_value(Jwk::from_encoding_key(&key, alg).unwrap()).unwrap();
        jwk["kid"] = json!(kid);
        Signer { kid, alg, key, jwk }
    }

    fn rsa(kid: &'static str, file: &str) -> Signer {
        Signer::new(
            kid,
            Algorithm::RS256,
            EncodingKey::from_rsa_pem(&fixture(file)).unwrap(),
        )
    }

    fn k1() -> Signer {
        Signer::rsa("k1", "rs256-private.pem")
    }

    fn k2() -> Signer {
        Signer::rsa("k2", "rs256-k2-private.pem")
    }

    /// The JWK without `alg`, so the edge must infer it from the key's type and curve.
    fn jwk_without_alg(&self) -> Value {
        let mut jwk = self.jwk.clone();
        jwk.as_object_mut().unwrap().remove("alg");
        jwk
    }

    /// A token for `u1` with this key's `kid` and algorithm.
    fn token(&self) -> String {
        self.token_as(self.alg, Some(self.kid))
    }

    fn token_as(&self, alg: Algorithm, kid: Option<&str>) -> String {
        self.token_with(alg, kid, claims())
    }

    fn token_with(&self, alg: Algorithm, kid: Option<&str>, claims: Value) -> String {
        let mut header = Header::new(alg);
        header.kid = kid.map(str::to_owned);
        jsonwebtoken::encode(&header, &claims, &self.key).unwrap()
    }

    /// A token of this key that expired a minute ago (past the edge's 5 s leeway).
    fn expired_token(&self) -> String {
        let expired = json!({"sub": "u1", "exp": now() - 60});
        self.token_with(self.alg, Some(self.kid), expired)
    }
}

fn claims() -> Value {
    json!({"sub": "u1", "exp": now() + 600})
}

fn set(keys: &[&Value]) -> String {
    json!({ "keys": keys }).to_string()
}

fn b64(bytes: &[u8]) -> String {
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes)
}

/// What the test server answers to every request.
#[derive(Clone)]
enum Answer {
    Json(String),
    Status(u16),
}

/// An HTTP/1 server on 127.0.0.1 serving a key set the test changes at run time. Every
/// response closes its connection, so stopping the server really makes it unreachable.
struct JwksServer {
    addr: SocketAddr,
    answer: Arc<Mutex<Answer>>,
    fetches: Arc<AtomicUsize>,
    task: Option<tokio::task::JoinHandle<()>>,
}

impl JwksServer {
    async fn start(body: String) -> JwksServer {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let mut server = JwksServer {
            addr: listener.local_addr().unwrap(),
            answer: Arc::new(Mutex::new(Answer::Json(body))),
            fetches: Arc::default(),
            task: None,
        };
        server.serve(listener);
        server
    }

    fn serve(&mut self, listener: tokio::net::TcpListener) {
        let (answer, fetches) = (self.answer.clone(), self.fetches.clone());
        self.task = Some(tokio::spawn(async move {
            while let Ok((mut socket, _)) = listener.accept().await {
                let mut request = Vec::new();
                let mut buf = [0u8; 1024];
                while !request.windows(4).any(|w| w == b"\r\n\r\n") && request.len() < 16384 {
                    match tokio::time::timeout(Duration::from_secs(2), socket.read(&mut buf)).await
                    {
                        Ok(Ok(n)) if n > 0 => request.extend_from_slice(&buf[..n]),
                        _ => break,
                    }
                }
                fetches.fetch_add(1, Ordering::SeqCst);
                let answer = answer.lock().unwrap().clone();
                let (status, body) = match answer {
                    Answer::Json(body) => (200, body),
                    Answer::Status(status) => (status, String::new()),
                };
                let response = format!(
                    "HTTP/1.1 {status} X\r\nContent-Type: application/json\r\n\
                     Content-Length: {}\r\nConnection: close\r\n\r\n{body}",
                    body.len()
                );
                let _ = socket.write_all(response.as_bytes()).await;
                let _ = socket.shutdown().await;
            }
        }));
    }

    fn url(&self) -> String {
        format!("http://{}/.well-known/jwks.json", self.addr)
    }

    fn answer(&self, answer: Answer) {
        *self.answer.lock().unwrap() = answer;
    }

    fn fetches(&self) -> usize {
        self.fetches.load(Ordering::SeqCst)
    }

    /// Closes the listening socket: connections are refused from now on.
    async fn stop(&mut self) {
        if let Some(task) = self.task.take() {
            task.abort();
            let _ = task.await;
        }
    }

    /// Listens again on the same address.
    async fn restart(&mut self) {
        let listener = tokio::net::TcpListener::bind(self.addr).await.unwrap();
        self.serve(listener);
    }

    /// Waits until the edge has fetched `n` more times (each fetch after a change
    /// surely saw it once the second one arrived).
    async fn wait_fetches(&self, n: usize) {
        let target = self.fetches() + n;
        let deadline = Instant::now() + Duration::from_secs(15);
        while self.fetches() < target {
            assert!(
                Instant::now() < deadline,
                "the edge stopped fetching the set"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}

/// An edge with no fixed secret, checking tokens against a key set only.
fn jwks_edge(stack: &Stack, source: (&str, &str), refresh_s: &str) -> Edge {
    stack.edge(&[
        // Empty counts as unset: the key set is the only key.
        ("SWITCHBOARD_JWT_SECRET", ""),
        source,
        ("SWITCHBOARD_JWT_JWKS_REFRESH_S", refresh_s),
    ])
}

/// True when the upgrade is accepted, false when refused 401.
async fn accepted(edge: &Edge, token: &str) -> bool {
    match Client::open(&edge.ws_url(), Some(token)).await {
        Ok(_) => true,
        Err((401, body)) => {
            let body: Value = serde_json::from_str(&body).unwrap();
            assert_eq!(body["code"], "unauthorized");
            false
        }
        Err(other) => panic!("neither accepted nor refused: {other:?}"),
    }
}

/// Polls until the token's acceptance is `want` (within 15 s).
async fn until(edge: &Edge, token: &str, want: bool, what: &str) {
    let deadline = Instant::now() + Duration::from_secs(15);
    while accepted(edge, token).await != want {
        assert!(Instant::now() < deadline, "{what}: not within 15 s");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

fn still_running(edge: &mut Edge) -> bool {
    edge.process
        .wait_timeout(Duration::from_millis(10))
        .is_none()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn keys_rotate_k1_then_k1_and_k2_then_k2_without_a_restart() {
    let stack = Stack::start().await;
    let (k1, k2) = (Signer::k1(), Signer::k2());
    let server = JwksServer::start(set(&[&k1.jwk])).await;
    let edge = jwks_edge(&stack, ("SWITCHBOARD_JWT_JWKS_URL", &server.url()), "1");

    assert!(accepted(&edge, &k1.token()).await, "k1 from the first set");
    assert!(
        !accepted(&edge, &k1.expired_token()).await,
        "an expired token of a published key"
    );
    // A set of exactly one key also serves tokens without kid.
    assert!(accepted(&edge, &k1.token_as(Algorithm::RS256, None)).await);
    assert!(
        !accepted(&edge, &k2.token()).await,
        "k2 is not published yet"
    );

    server.answer(Answer::Json(set(&[&k1.jwk, &k2.jwk])));
    until(&edge, &k2.token(), true, "k2 accepted once published").await;
    assert!(
        accepted(&edge, &k1.token()).await,
        "k1 still accepted beside k2"
    );
    // Two keys: a token without kid names none of them.
    assert!(!accepted(&edge, &k1.token_as(Algorithm::RS256, None)).await);

    server.answer(Answer::Json(set(&[&k2.jwk])));
    until(&edge, &k1.token(), false, "k1 refused once withdrawn").await;
    assert!(accepted(&edge, &k2.token()).await, "k2 accepted alone");
    assert!(
        !accepted(&edge, &k2.expired_token()).await,
        "an expired k2 token"
    );
    assert!(accepted(&edge, &k2.token_as(Algorithm::RS256, None)).await);
    println!(
        "rotation over a URL with a 1 s refresh: k1 accepted, then k1 and k2, then k2 \
         only and k1 refused, without restarting the edge; expired tokens of either refused"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unknown_kid_refetches_the_set_at_most_once_per_30_seconds() {
    let stack = Stack::start().await;
    let (k1, k2) = (Signer::k1(), Signer::k2());
    let k3 = Signer::rsa("k3", "rs256-private.pem");
    let server = JwksServer::start(set(&[&k1.jwk])).await;
    // A refresh period far beyond the test: every fetch after the first is a refetch.
    let edge = jwks_edge(&stack, ("SWITCHBOARD_JWT_JWKS_URL", &server.url()), "300");
    assert_eq!(server.fetches(), 1, "one fetch at start");
    assert!(accepted(&edge, &k1.token()).await);
    assert_eq!(server.fetches(), 1, "a known kid fetches nothing");

    server.answer(Answer::Json(set(&[&k1.jwk, &k2.jwk])));
    assert!(
        accepted(&edge, &k2.token()).await,
        "the first k2 token waits for the refetch and is accepted"
    );
    assert_eq!(server.fetches(), 2);

    // A flood of made-up kids (and a real new key) inside the 30 s window: no fetch.
    server.answer(Answer::Json(set(&[&k1.jwk, &k2.jwk, &k3.jwk])));
    for n in 0..40 {
        let kid = format!("ghost-{n}");
        assert!(!accepted(&edge, &k2.token_as(Algorithm::RS256, Some(&kid))).await);
    }
    assert!(
        !accepted(&edge, &k3.token()).await,
        "k3 waits for the next window"
    );
    assert_eq!(server.fetches(), 2, "40 unknown kids caused no fetch");
    assert!(accepted(&edge, &k1.token()).await);
    assert!(accepted(&edge, &k2.token()).await);
    println!(
        "unknown kid: the first k2 token refetched the set and was accepted; 40 made-up \
         kids in the next 30 s fetched nothing and were refused"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_key_decides_the_algorithm_and_confused_tokens_are_refused() {
    let stack = Stack::start().await;
    let k1 = Signer::k1();
    let es = Signer::new(
        "es",
        Algorithm::ES256,
        EncodingKey::from_ec_pem(&fixture("es256-private.pem")).unwrap(),
    );
    let ed = Signer::new(
        "ed",
        Algorithm::EdDSA,
        EncodingKey::from_ed_pem(&fixture("ed25519-private.pem")).unwrap(),
    );
    // EC and OKP keys without `alg`: the edge infers ES256 and EdDSA from them.
    let server = JwksServer::start(set(&[
        &k1.jwk,
        &es.jwk_without_alg(),
        &ed.jwk_without_alg(),
    ]))
    .await;
    let edge = jwks_edge(&stack, ("SWITCHBOARD_JWT_JWKS_URL", &server.url()), "300");
    for signer in [&k1, &es, &ed] {
        assert!(accepted(&edge, &signer.token()).await, "{}", signer.kid);
    }

    // HS256 keyed with the RSA key's public bytes, as PEM and as the JWK's modulus.
    let public_pem = EncodingKey::from_secret(&fixture("rs256-public.pem"));
    let modulus = EncodingKey::from_secret(k1.jwk["n"].as_str().unwrap().as_bytes());
    let header = |alg, kid: &str| {
        let mut h = Header::new(alg);
        h.kid = Some(kid.to_owned());
        h
    };
    let hs = |key: &EncodingKey, kid: &str| {
        jsonwebtoken::encode(&header(Algorithm::HS256, kid), &claims(), key).unwrap()
    };
    let unsigned = format!(
        "{}.{}.",
        b64(br#"{"alg":"none","typ":"JWT","kid":"k1"}"#),
        b64(claims().to_string().as_bytes())
    );
    let confused = [
        (hs(&public_pem, "k1"), "HS256 keyed with k1's public PEM"),
        (hs(&modulus, "k1"), "HS256 keyed with k1's modulus"),
        (
            k1.token_as(Algorithm::RS384, Some("k1")),
            "RS384 by k1's own key",
        ),
        (
            k1.token_as(Algorithm::PS256, Some("k1")),
            "PS256 by k1's own key",
        ),
        (
            k1.token_as(Algorithm::RS256, Some("es")),
            "RS256 naming the EC key",
        ),
        (
            ed.token_as(Algorithm::EdDSA, Some("es")),
            "EdDSA naming the EC key",
        ),
        (
            es.token_as(Algorithm::ES256, Some("k1")),
            "ES256 naming the RSA key",
        ),
        (unsigned, "alg none"),
    ];
    for (token, what) in &confused {
        assert!(!accepted(&edge, token).await, "accepted {what}");
    }
    assert!(
        edge.metric("switchboard_edge_auth_failures_total")
            .unwrap_or(0.0)
            >= 8.0
    );
    println!(
        "algorithm from the key: RS256, ES256 (inferred) and EdDSA (inferred) accepted; \
         8 confused tokens refused (HS256 with the public key, other RSA algorithms, \
         keys of another type, alg none)"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unreachable_set_keeps_the_last_good_one_and_the_edge_running() {
    let stack = Stack::start().await;
    let (k1, k2) = (Signer::k1(), Signer::k2());
    let forged = EncodingKey::from_secret(&fixture("rs256-public.pem"));
    let forged = jsonwebtoken::encode(
        &{
            let mut h = Header::new(Algorithm::HS256);
            h.kid = Some("k1".into());
            h
        },
        &claims(),
        &forged,
    )
    .unwrap();
    let mut server = JwksServer::start(set(&[&k1.jwk])).await;
    server.stop().await;

    // Unreachable at start: the edge serves, refuses what it cannot check, retries.
    let mut edge = jwks_edge(&stack, ("SWITCHBOARD_JWT_JWKS_URL", &server.url()), "2");
    assert!(!accepted(&edge, &k1.token()).await, "no set yet");
    assert!(!accepted(&edge, &forged).await);
    server.restart().await;
    until(
        &edge,
        &k1.token(),
        true,
        "k1 accepted once the issuer is up",
    )
    .await;

    // Unreachable later: the last good set stays.
    server.stop().await;
    tokio::time::sleep(Duration::from_secs(5)).await;
    assert!(accepted(&edge, &k1.token()).await, "k1 kept");
    assert!(
        !accepted(&edge, &k2.token()).await,
        "k2 was never published"
    );
    assert!(!accepted(&edge, &forged).await, "forged token refused");
    assert!(!accepted(&edge, &k2.token_as(Algorithm::RS256, Some("k1"))).await);
    assert!(still_running(&mut edge), "the edge survived the outage");

    // An HTTP error is a failed fetch too.
    server.restart().await;
    server.answer(Answer::Status(503));
    server.wait_fetches(2).await;
    assert!(accepted(&edge, &k1.token()).await, "k1 kept through a 503");
    assert!(still_running(&mut edge));
    println!(
        "unreachable key set: at start every token refused until the issuer came up; later \
         (connection refused, then HTTP 503) k1 kept, k2 and forged tokens refused, edge \
         running"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn malformed_sets_and_keys_of_the_wrong_type_keep_the_last_good_set() {
    let stack = Stack::start().await;
    let (k1, k2) = (Signer::k1(), Signer::k2());
    let server = JwksServer::start(set(&[&k1.jwk])).await;
    let edge = jwks_edge(&stack, ("SWITCHBOARD_JWT_JWKS_URL", &server.url()), "1");
    assert!(accepted(&edge, &k1.token()).await);

    let secret = b"a-secret-that-someone-put-in-a-key-set";
    let oct = json!({"kty": "oct", "kid": "k2", "alg": "HS256", "k": b64(secret)});
    let hs_k2 = {
        let mut h = Header::new(Algorithm::HS256);
        h.kid = Some("k2".into());
        jsonwebtoken::encode(&h, &claims(), &EncodingKey::from_secret(secret)).unwrap()
    };
    let mut rsa_as_ec = k2.jwk.clone();
    rsa_as_ec["alg"] = json!("ES256");
    let mut for_encryption = k2.jwk.clone();
    for_encryption["use"] = json!("enc");
    let p521 =
        json!({"kty": "EC", "kid": "k2", "crv": "P-521", "x": b64(&[1; 66]), "y": b64(&[2; 66])});
    let bad = [
        ("not JSON", "{\"keys\": [".to_owned()),
        ("no keys member", r#"{"k1": {}}"#.to_owned()),
        ("keys not a list", r#"{"keys": "k1"}"#.to_owned()),
        ("an empty set", set(&[])),
        ("a symmetric key", set(&[&oct])),
        ("an RSA key labelled ES256", set(&[&rsa_as_ec])),
        ("a key for encryption", set(&[&for_encryption])),
        ("an unsupported curve", set(&[&p521])),
    ];
    for (what, body) in bad {
        server.answer(Answer::Json(body));
        server.wait_fetches(2).await;
        assert!(accepted(&edge, &k1.token()).await, "k1 lost after {what}");
        assert!(
            !accepted(&edge, &k2.token()).await,
            "k2 accepted after {what}"
        );
        assert!(
            !accepted(&edge, &hs_k2).await,
            "HS256 accepted after {what}"
        );
    }
    // The refresher still works after all that.
    server.answer(Answer::Json(set(&[&k2.jwk])));
    until(&edge, &k2.token(), true, "k2 accepted from a good set").await;
    until(&edge, &k1.token(), false, "k1 refused").await;
    println!(
        "8 bad sets (not JSON, no keys, keys not a list, empty, oct key, RSA labelled ES256, \
         encryption key, P-521) each kept the last good set; a good set then replaced it"
    );
}

/// A key set file replaced atomically, as a config management tool would.
struct SetFile(PathBuf);

impl SetFile {
    fn new(body: &str) -> SetFile {
        static NEXT: AtomicUsize = AtomicUsize::new(0);
        let path = std::env::temp_dir().join(format!(
            "switchboard-jwks-{}-{}.json",
            std::process::id(),
            NEXT.fetch_add(1, Ordering::Relaxed)
        ));
        let file = SetFile(path);
        file.write(body);
        file
    }

    fn write(&self, body: &str) {
        let staging = self.0.with_extension("tmp");
        std::fs::write(&staging, body).unwrap();
        std::fs::rename(&staging, &self.0).unwrap();
    }

    fn path(&self) -> &str {
        self.0.to_str().unwrap()
    }
}

impl Drop for SetFile {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_key_set_file_rotates_and_survives_a_bad_rewrite() {
    let stack = Stack::start().await;
    let (k1, k2) = (Signer::k1(), Signer::k2());
    let file = SetFile::new(&set(&[&k1.jwk]));
    let edge = jwks_edge(&stack, ("SWITCHBOARD_JWT_JWKS_FILE", file.path()), "1");
    assert!(accepted(&edge, &k1.token()).await);

    file.write(&set(&[&k1.jwk, &k2.jwk]));
    // An unknown kid re-reads the file, so k2's first token is already accepted.
    assert!(
        accepted(&edge, &k2.token()).await,
        "k2 read on its first token"
    );
    assert!(accepted(&edge, &k1.token()).await);

    file.write("garbage");
    tokio::time::sleep(Duration::from_millis(2500)).await;
    assert!(
        accepted(&edge, &k1.token()).await,
        "k1 kept through a bad file"
    );
    assert!(
        accepted(&edge, &k2.token()).await,
        "k2 kept through a bad file"
    );

    file.write(&set(&[&k2.jwk]));
    until(&edge, &k1.token(), false, "k1 refused once withdrawn").await;
    assert!(accepted(&edge, &k2.token()).await);
}

/// Runs the edge binary with `env` (no NATS needed: these runs must stop before it);
/// returns its exit code and stderr. Killed after 15 s.
fn run_edge(env: &[(&str, &str)]) -> (Option<i32>, String) {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_switchboard-edge"));
    cmd.env("SWITCHBOARD_JWT_ALG", "HS256")
        .env("SWITCHBOARD_JWT_SECRET", "")
        .env_remove("SWITCHBOARD_JWT_JWKS_URL")
        .env_remove("SWITCHBOARD_JWT_JWKS_FILE")
        .env_remove("SWITCHBOARD_JWT_PUBLIC_KEY")
        .env("SWITCHBOARD_LOG", "info")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped());
    for (k, v) in env {
        cmd.env(k, v);
    }
    let mut child = cmd.spawn().unwrap();
    let deadline = Instant::now() + Duration::from_secs(15);
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break status.code();
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            break None;
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    let mut stderr = String::new();
    child
        .stderr
        .take()
        .unwrap()
        .read_to_string(&mut stderr)
        .unwrap();
    (status, stderr)
}

#[test]
fn weak_and_published_secrets_stop_the_edge_before_it_listens_or_connects() {
    let docs = include_str!("../../docs/operations.md");
    assert!(
        docs.contains(DOCUMENTED_SECRET),
        "the docs no longer print the example"
    );
    // The edge's address is taken and a stand-in NATS listens: the edge must refuse
    // before trying either.
    let taken = StdListener::bind("127.0.0.1:0").unwrap();
    let nats = StdListener::bind("127.0.0.1:0").unwrap();
    nats.set_nonblocking(true).unwrap();
    let addr = taken.local_addr().unwrap().to_string();
    let nats_url = format!("nats://{}", nats.local_addr().unwrap());
    let run = |secret: &str| {
        run_edge(&[
            ("SWITCHBOARD_JWT_SECRET", secret),
            ("SWITCHBOARD_EDGE_ADDR", &addr),
            ("SWITCHBOARD_NATS_URL", &nats_url),
        ])
    };
    for (secret, why) in [
        ("short-but-not-empty", "at least 32"),
        ("0123456789abcdef0123456789abcde", "at least 32"),
        (DOCUMENTED_SECRET, "Switchboard's own files"),
    ] {
        let (code, stderr) = run(secret);
        assert_eq!(code, Some(2), "{stderr}");
        assert!(stderr.contains("SWITCHBOARD_JWT_SECRET"), "{stderr}");
        assert!(stderr.contains(why), "{stderr}");
        assert!(
            !stderr.contains(secret),
            "the message shows the secret: {stderr}"
        );
        assert!(!stderr.contains("cannot listen"), "{stderr}");
    }
    assert!(
        nats.accept().is_err(),
        "an edge with a refused secret connected to NATS"
    );
    // A sound secret passes the check: this edge gets as far as the taken address.
    let (code, stderr) = run("a-fresh-random-secret-for-this-test-only-9f8e7d");
    assert_ne!(code, Some(2), "{stderr}");
    assert!(stderr.contains("cannot listen"), "{stderr}");
    println!(
        "secrets: two under 32 bytes and the one printed in docs/operations.md refused with \
         exit 2 naming SWITCHBOARD_JWT_SECRET, before listening or connecting to NATS"
    );
}

#[test]
fn insecure_or_unusable_key_set_settings_stop_the_edge_at_start() {
    let addr = StdListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .to_string();
    for url in [
        "http://issuer.example/.well-known/jwks.json",
        "http://10.0.0.7/jwks.json",
        "http://user:hunter2-credential@issuer.example/jwks.json?key=also-secret",
        "ftp://issuer.example/jwks.json",
    ] {
        let (code, stderr) = run_edge(&[
            ("SWITCHBOARD_JWT_JWKS_URL", url),
            ("SWITCHBOARD_EDGE_ADDR", &addr),
        ]);
        assert_eq!(code, Some(2), "{url}: {stderr}");
        assert!(stderr.contains("SWITCHBOARD_JWT_JWKS_URL"), "{stderr}");
        assert!(stderr.contains("https"), "{stderr}");
        assert!(!stderr.contains("hunter2"), "credential shown: {stderr}");
        assert!(!stderr.contains("also-secret"), "query shown: {stderr}");
    }
    let file = SetFile::new("{\"keys\": [");
    let (code, stderr) = run_edge(&[
        ("SWITCHBOARD_JWT_JWKS_FILE", file.path()),
        ("SWITCHBOARD_EDGE_ADDR", &addr),
    ]);
    assert_eq!(code, Some(2), "{stderr}");
    assert!(stderr.contains("SWITCHBOARD_JWT_JWKS_FILE"), "{stderr}");
    let oct = SetFile::new(&set(&[
        &json!({"kty": "oct", "kid": "h", "k": b64(b"a-secret-that-someone-put-in-a-key-set")}),
    ]));
    let (code, stderr) = run_edge(&[
        ("SWITCHBOARD_JWT_JWKS_FILE", oct.path()),
        ("SWITCHBOARD_EDGE_ADDR", &addr),
    ]);
    assert_eq!(code, Some(2), "{stderr}");
    assert!(stderr.contains("symmetric"), "{stderr}");
    assert!(
        !stderr.contains(&b64(b"a-secret-that-someone-put-in-a-key-set")),
        "{stderr}"
    );
    // Without any key at all, the message names every way to give one.
    let (code, stderr) = run_edge(&[("SWITCHBOARD_EDGE_ADDR", &addr)]);
    assert_eq!(code, Some(2), "{stderr}");
    assert!(stderr.contains("SWITCHBOARD_JWT_SECRET"), "{stderr}");
    assert!(stderr.contains("SWITCHBOARD_JWT_JWKS_URL"), "{stderr}");
}

#[test]
fn help_documents_the_key_set_settings_without_showing_secret_values() {
    let output = Command::new(env!("CARGO_BIN_EXE_switchboard-edge"))
        .arg("--help")
        .env(
            "SWITCHBOARD_JWT_SECRET",
            "a-secret-value-that-help-must-not-print-0001",
        )
        .env(
            "SWITCHBOARD_JWT_JWKS_URL",
            "https://user:pw-not-printed@issuer.example/jwks.json",
        )
        .output()
        .unwrap();
    let help = String::from_utf8_lossy(&output.stdout);
    for name in [
        "SWITCHBOARD_JWT_JWKS_URL",
        "SWITCHBOARD_JWT_JWKS_FILE",
        "SWITCHBOARD_JWT_JWKS_REFRESH_S",
        "--jwt-jwks-url",
        "--jwt-jwks-file",
        "--jwt-jwks-refresh-s",
        "300",
    ] {
        assert!(help.contains(name), "--help lacks {name}");
    }
    assert!(!help.contains("a-secret-value"), "{help}");
    assert!(!help.contains("pw-not-printed"), "{help}");
}
