//! TLS: the edge serving HTTPS and WSS itself with a certificate from a CA made by the
//! test, a certificate replaced under open connections, replacements and start-up files
//! that do not load, the handshake under the header timeout and the connection cap, and
//! the nginx setup docs/operations.md shows (deploy/nginx/switchboard.conf) in front of a
//! plain edge. Clients trust the test CA alone.

mod support;

use std::fs::File;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures_util::{SinkExt, StreamExt};
use rcgen::{
    BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair,
    KeyUsagePurpose, SerialNumber,
};
use serde_json::{Value, json};
use support::{SECRET, Stack, token};
use switchboard_bus::Role;
use switchboard_testkit::{Process, free_port};
use tempfile::TempDir;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio_rustls::TlsConnector;
use tokio_rustls::client::TlsStream;
use tokio_rustls::rustls::pki_types::{CertificateDer, ServerName};
use tokio_rustls::rustls::{self, ClientConfig, RootCertStore};
use tokio_tungstenite::WebSocketStream;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;

const WAIT: Duration = Duration::from_secs(10);

/// What the edge logs when it refuses a replaced certificate or key.
const REFUSED: &str = "replaced TLS certificate or key refused";

/// A certificate authority made for one test.
struct Ca {
    issuer: Issuer<'static, KeyPair>,
    der: CertificateDer<'static>,
}

/// A server certificate and its key, as the PEM files hold them.
struct Leaf {
    cert_pem: String,
    key_pem: String,
    der: CertificateDer<'static>,
}

impl Ca {
    fn new() -> Ca {
        let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params
            .distinguished_name
            .push(DnType::CommonName, "Switchboard test CA");
        params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
        let key = KeyPair::generate().unwrap();
        let cert = params.self_signed(&key).unwrap();
        Ca {
            der: cert.der().clone(),
            issuer: Issuer::new(params, key),
        }
    }

    /// A certificate for localhost and 127.0.0.1; `name` and `serial` tell it apart.
    fn leaf(&self, name: &str, serial: u64) -> Leaf {
        let names = vec!["localhost".to_string(), "127.0.0.1".to_string()];
        let mut params = CertificateParams::new(names).unwrap();
        params.distinguished_name.push(DnType::CommonName, name);
        params.serial_number = Some(SerialNumber::from(serial));
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
        let key = KeyPair::generate().unwrap();
        let cert = params.signed_by(&key, &self.issuer).unwrap();
        Leaf {
            cert_pem: cert.pem(),
            key_pem: key.serialize_pem(),
            der: cert.der().clone(),
        }
    }

    /// A TLS client whose only root is this CA.
    fn connector(&self) -> TlsConnector {
        let mut roots = RootCertStore::empty();
        roots.add(self.der.clone()).unwrap();
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let config = ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_root_certificates(roots)
            .with_no_client_auth();
        TlsConnector::from(Arc::new(config))
    }
}

impl Leaf {
    /// Writes the pair where the edge reads it, in place (not renamed into place), so the
    /// edge may well read one file new and the other old.
    fn write(&self, cert: &Path, key: &Path) {
        std::fs::write(cert, &self.cert_pem).unwrap();
        std::fs::write(key, &self.key_pem).unwrap();
    }
}

async fn tls_connect(
    connector: &TlsConnector,
    addr: &str,
) -> std::io::Result<TlsStream<TcpStream>> {
    let tcp = TcpStream::connect(addr).await?;
    let name = ServerName::try_from("localhost").unwrap();
    tokio::time::timeout(WAIT, connector.connect(name, tcp))
        .await
        .map_err(|_| std::io::Error::other("TLS handshake timed out"))?
}

fn peer_certificate(stream: &TlsStream<TcpStream>) -> CertificateDer<'static> {
    stream
        .get_ref()
        .1
        .peer_certificates()
        .expect("a certificate")[0]
        .clone()
}

/// One HTTP/1.0 GET over TLS: (status, body, the server's certificate).
async fn https_get(
    connector: &TlsConnector,
    addr: &str,
    path: &str,
) -> std::io::Result<(u16, String, CertificateDer<'static>)> {
    let mut stream = tls_connect(connector, addr).await?;
    let certificate = peer_certificate(&stream);
    stream
        .write_all(format!("GET {path} HTTP/1.0\r\nHost: localhost\r\n\r\n").as_bytes())
        .await?;
    stream.flush().await?;
    let mut bytes = Vec::new();
    let mut chunk = [0u8; 4096];
    // The server closes the connection after the answer, not always with a TLS
    // close_notify: what arrived before the end is the answer either way.
    loop {
        match tokio::time::timeout(WAIT, stream.read(&mut chunk)).await {
            Ok(Ok(0)) | Ok(Err(_)) => break,
            Ok(Ok(n)) => bytes.extend_from_slice(&chunk[..n]),
            Err(_) => return Err(std::io::Error::other("no answer")),
        }
    }
    let text = String::from_utf8_lossy(&bytes).into_owned();
    let status = text
        .split(' ')
        .nth(1)
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| std::io::Error::other(format!("not HTTP: {text:?}")))?;
    let body = text
        .split_once("\r\n\r\n")
        .map(|(_, b)| b.to_string())
        .unwrap_or_default();
    Ok((status, body, certificate))
}

/// A `switchboard.v1` client over wss, through a rustls client stream.
struct Wss {
    socket: WebSocketStream<TlsStream<TcpStream>>,
    next_id: u64,
}

impl Wss {
    /// Connects as `user` with a bearer token on the upgrade; returns after `welcome`.
    async fn connect(connector: &TlsConnector, addr: &str, user: &str) -> Wss {
        let stream = tls_connect(connector, addr).await.expect("TLS handshake");
        let mut request = "wss://localhost/v1/ws".into_client_request().unwrap();
        let headers = request.headers_mut();
        headers.insert("Sec-WebSocket-Protocol", "switchboard.v1".parse().unwrap());
        let bearer = format!("Bearer {}", token(user, 3600, &[]));
        headers.insert("Authorization", bearer.parse().unwrap());
        let (socket, _) = tokio_tungstenite::client_async(request, stream)
            .await
            .expect("upgrade accepted");
        let mut client = Wss { socket, next_id: 1 };
        let welcome = client.recv().await;
        assert_eq!(welcome["op"], "welcome", "{welcome}");
        client
    }

    /// The certificate this connection's session was made with.
    fn certificate(&self) -> CertificateDer<'static> {
        peer_certificate(self.socket.get_ref())
    }

    async fn recv(&mut self) -> Value {
        loop {
            let message = tokio::time::timeout(WAIT, self.socket.next())
                .await
                .unwrap_or_else(|_| panic!("no frame within {WAIT:?}"));
            match message {
                Some(Ok(Message::Text(text))) => return serde_json::from_str(&text).unwrap(),
                Some(Ok(Message::Ping(_) | Message::Pong(_))) => continue,
                other => panic!("socket ended: {other:?}"),
            }
        }
    }

    /// Sends `frame` with a fresh id; the reply with that id.
    async fn request(&mut self, mut frame: Value) -> Value {
        let id = self.next_id;
        self.next_id += 1;
        frame["id"] = json!(id);
        self.socket
            .send(Message::Text(frame.to_string().into()))
            .await
            .expect("send frame");
        loop {
            let reply = self.recv().await;
            if reply["id"] == json!(id) && reply["op"] != "evt" {
                return reply;
            }
        }
    }

    async fn subscribe(&mut self, channel: &str) {
        let ok = self.request(json!({"op": "sub", "ch": channel})).await;
        assert_eq!(ok["op"], "ok", "{ok}");
    }

    /// The data of the next event, skipping other frames.
    async fn event(&mut self) -> Value {
        loop {
            let frame = self.recv().await;
            if frame["op"] == "evt" {
                return frame["event"]["data"].clone();
            }
        }
    }
}

/// A `switchboard-edge` process serving TLS with the files in its own directory; its
/// output goes to a file the test reads.
struct TlsEdge {
    addr: String,
    connector: TlsConnector,
    dir: TempDir,
    _process: Process,
}

impl TlsEdge {
    async fn start(stack: &Stack, ca: &Ca, leaf: &Leaf, env: &[(&str, &str)]) -> TlsEdge {
        let dir = tempfile::tempdir().unwrap();
        let (cert, key) = (dir.path().join("cert.pem"), dir.path().join("key.pem"));
        leaf.write(&cert, &key);
        let addr = format!("127.0.0.1:{}", free_port());
        let log = File::create(dir.path().join("edge.log")).unwrap();
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_switchboard-edge"));
        cmd.envs(stack.nats.env(Role::Edge))
            .env("SWITCHBOARD_EDGE_ADDR", &addr)
            .env("SWITCHBOARD_JWT_SECRET", &*SECRET)
            .env("SWITCHBOARD_LOG", "info")
            .env("SWITCHBOARD_DRAIN_GRACE_MS", "2000")
            .env("SWITCHBOARD_TLS_CERT", &cert)
            .env("SWITCHBOARD_TLS_KEY", &key)
            .envs(env.iter().copied())
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log);
        let edge = TlsEdge {
            addr,
            connector: ca.connector(),
            _process: Process::spawn(cmd).expect("spawn switchboard-edge"),
            dir,
        };
        edge.wait_ready().await;
        edge
    }

    async fn wait_ready(&self) {
        let deadline = Instant::now() + WAIT;
        while Instant::now() < deadline {
            let answer = https_get(&self.connector, &self.addr, "/readyz").await;
            if matches!(answer, Ok((200, _, _))) {
                return;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        panic!(
            "edge at {} not ready over TLS within {WAIT:?}; its log:\n{}",
            self.addr,
            self.log()
        );
    }

    fn cert_path(&self) -> PathBuf {
        self.dir.path().join("cert.pem")
    }

    fn key_path(&self) -> PathBuf {
        self.dir.path().join("key.pem")
    }

    fn replace(&self, leaf: &Leaf) {
        leaf.write(&self.cert_path(), &self.key_path());
    }

    fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("edge.log")).unwrap_or_default()
    }

    async fn connect(&self, user: &str) -> Wss {
        Wss::connect(&self.connector, &self.addr, user).await
    }

    /// The certificate a new connection gets now.
    async fn certificate(&self) -> CertificateDer<'static> {
        let stream = tls_connect(&self.connector, &self.addr)
            .await
            .expect("TLS handshake");
        peer_certificate(&stream)
    }

    /// Waits until new connections get `wanted`; how long that took.
    async fn until_serving(&self, wanted: &Leaf, since: Instant) -> Duration {
        loop {
            if self.certificate().await == wanted.der {
                return since.elapsed();
            }
            assert!(
                since.elapsed() < WAIT,
                "new connections still get the old certificate after {WAIT:?}; log:\n{}",
                self.log()
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// The value of a counter on `/metrics`, read over TLS.
    async fn metric(&self, name: &str) -> f64 {
        let (status, body, _) = https_get(&self.connector, &self.addr, "/metrics")
            .await
            .expect("metrics over TLS");
        assert_eq!(status, 200);
        body.lines()
            .find_map(|line| line.strip_prefix(name)?.strip_prefix(' ')?.parse().ok())
            .unwrap_or_else(|| panic!("{name} not exported"))
    }
}

#[tokio::test]
async fn wss_and_https_with_only_the_test_ca_as_root() {
    let stack = Stack::start().await;
    let ca = Ca::new();
    let leaf = ca.leaf("edge one", 1);
    let edge = TlsEdge::start(&stack, &ca, &leaf, &[]).await;

    let (status, body, certificate) = https_get(&edge.connector, &edge.addr, "/healthz")
        .await
        .expect("HTTPS answers");
    assert_eq!(status, 200, "{body}");
    assert_eq!(certificate, leaf.der);

    let mut client = edge.connect("alice").await;
    assert_eq!(client.certificate(), leaf.der);
    client.subscribe("domain:tls").await;
    for i in 0..3 {
        stack
            .publish("domain:tls", "thing.happened", json!({"i": i}))
            .await;
    }
    for i in 0..3 {
        assert_eq!(client.event().await, json!({"i": i}));
    }
    let pong = client.request(json!({"op": "ping"})).await;
    assert_eq!(pong["op"], "pong", "{pong}");

    // The TLS port speaks nothing else: a plain request gets no HTTP answer.
    let plain = support::http_get(&edge.addr, "/healthz");
    assert!(
        plain.is_none(),
        "plain HTTP answered on the TLS port: {plain:?}"
    );
}

#[tokio::test]
async fn replaced_files_reach_new_connections_while_old_ones_stay_open() {
    let stack = Stack::start().await;
    let ca = Ca::new();
    let (first, second) = (ca.leaf("edge first", 1), ca.leaf("edge second", 2));
    let edge = TlsEdge::start(&stack, &ca, &first, &[]).await;
    let mut old = edge.connect("alice").await;
    old.subscribe("domain:renewal").await;

    let replaced = Instant::now();
    edge.replace(&second);
    let took = edge.until_serving(&second, replaced).await;
    println!("new certificate served {took:?} after the files were replaced");

    // The connection made before keeps its session, its certificate and its events.
    assert_eq!(old.certificate(), first.der);
    stack
        .publish(
            "domain:renewal",
            "thing.happened",
            json!({"after": "renewal"}),
        )
        .await;
    assert_eq!(old.event().await, json!({"after": "renewal"}));
    let mut new = edge.connect("bob").await;
    assert_eq!(new.certificate(), second.der);
    new.subscribe("domain:renewal").await;
    stack
        .publish("domain:renewal", "thing.happened", json!({"both": true}))
        .await;
    assert_eq!(old.event().await, json!({"both": true}));
    assert_eq!(new.event().await, json!({"both": true}));
    assert!(!edge.log().contains(REFUSED), "{}", edge.log());
}

#[tokio::test]
async fn a_replacement_that_does_not_load_keeps_the_old_certificate_and_is_logged_once() {
    let stack = Stack::start().await;
    let ca = Ca::new();
    let (first, second, third) = (
        ca.leaf("edge first", 1),
        ca.leaf("edge second", 2),
        ca.leaf("edge third", 3),
    );
    let edge = TlsEdge::start(&stack, &ca, &first, &[]).await;
    let mut client = edge.connect("alice").await;
    client.subscribe("domain:garbage").await;
    let refusals = |edge: &TlsEdge| edge.log().matches(REFUSED).count();

    // Garbage in the certificate file: refused, said once however many polls see it.
    std::fs::write(edge.cert_path(), "this is not a certificate\n").unwrap();
    let deadline = Instant::now() + WAIT;
    while refusals(&edge) == 0 {
        assert!(
            Instant::now() < deadline,
            "no refusal logged:\n{}",
            edge.log()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    tokio::time::sleep(Duration::from_secs(5)).await;
    let log = edge.log();
    assert_eq!(refusals(&edge), 1, "{log}");
    assert!(log.contains("SWITCHBOARD_TLS_CERT"), "{log}");
    assert_eq!(edge.certificate().await, first.der);

    // A certificate with another certificate's key: refused too, naming the mismatch.
    std::fs::write(edge.cert_path(), &third.cert_pem).unwrap();
    std::fs::write(edge.key_path(), &second.key_pem).unwrap();
    let deadline = Instant::now() + WAIT;
    while refusals(&edge) < 2 {
        assert!(
            Instant::now() < deadline,
            "mismatch not logged:\n{}",
            edge.log()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(edge.log().contains("the key is not the certificate's"));
    assert_eq!(edge.certificate().await, first.der);

    // Meanwhile everything works with the old certificate; a good pair then goes live.
    stack
        .publish("domain:garbage", "thing.happened", json!({"still": "here"}))
        .await;
    assert_eq!(client.event().await, json!({"still": "here"}));
    let fixed = Instant::now();
    edge.replace(&third);
    edge.until_serving(&third, fixed).await;
    assert_eq!(refusals(&edge), 2, "{}", edge.log());
}

/// The variables an edge starts with, and what it must say before exiting.
type StartCase<'a> = (&'a [(&'a str, String)], &'a [&'a str]);

#[tokio::test]
async fn files_that_do_not_load_at_start_stop_the_edge_naming_the_variable() {
    let ca = Ca::new();
    let (leaf, other) = (ca.leaf("edge", 1), ca.leaf("other", 2));
    let dir = tempfile::tempdir().unwrap();
    let path = |name: &str| dir.path().join(name).display().to_string();
    std::fs::write(path("cert.pem"), &leaf.cert_pem).unwrap();
    std::fs::write(path("key.pem"), &leaf.key_pem).unwrap();
    std::fs::write(path("other-key.pem"), &other.key_pem).unwrap();
    std::fs::write(path("garbage.pem"), "garbage").unwrap();
    let cases: [StartCase; 5] = [
        (
            &[
                ("SWITCHBOARD_TLS_CERT", path("garbage.pem")),
                ("SWITCHBOARD_TLS_KEY", path("key.pem")),
            ],
            &["SWITCHBOARD_TLS_CERT", "garbage.pem"],
        ),
        (
            &[
                ("SWITCHBOARD_TLS_CERT", path("cert.pem")),
                ("SWITCHBOARD_TLS_KEY", path("garbage.pem")),
            ],
            &["SWITCHBOARD_TLS_KEY", "no PRIVATE KEY"],
        ),
        (
            &[
                ("SWITCHBOARD_TLS_CERT", path("cert.pem")),
                ("SWITCHBOARD_TLS_KEY", path("missing.pem")),
            ],
            &["SWITCHBOARD_TLS_KEY", "missing.pem"],
        ),
        (
            &[
                ("SWITCHBOARD_TLS_CERT", path("cert.pem")),
                ("SWITCHBOARD_TLS_KEY", path("other-key.pem")),
            ],
            &[
                "SWITCHBOARD_TLS_CERT",
                "SWITCHBOARD_TLS_KEY",
                "not the certificate's",
            ],
        ),
        (
            &[("SWITCHBOARD_TLS_CERT", path("cert.pem"))],
            &["SWITCHBOARD_TLS_KEY is not"],
        ),
    ];
    for (env, expected) in cases {
        let output = dir.path().join("output");
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_switchboard-edge"));
        cmd.env(
            "SWITCHBOARD_EDGE_ADDR",
            format!("127.0.0.1:{}", free_port()),
        )
        .env(
            "SWITCHBOARD_NATS_URL",
            format!("nats://127.0.0.1:{}", free_port()),
        )
        .env("SWITCHBOARD_JWT_SECRET", &*SECRET)
        .env_remove("SWITCHBOARD_TLS_CERT")
        .env_remove("SWITCHBOARD_TLS_KEY")
        .envs(env.iter().map(|(k, v)| (*k, v)))
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(File::create(&output).unwrap());
        let mut process = Process::spawn(cmd).unwrap();
        let status = process
            .wait_timeout(WAIT)
            .unwrap_or_else(|| panic!("the edge kept running with {env:?}"));
        let said = std::fs::read_to_string(&output).unwrap();
        assert!(!status.success(), "{env:?}: {status}");
        for text in expected {
            assert!(said.contains(text), "{env:?}: {text:?} not in {said:?}");
        }
    }
}

#[tokio::test]
async fn a_handshake_is_bounded_by_the_header_timeout_and_counted_under_the_cap() {
    let stack = Stack::start().await;
    let ca = Ca::new();
    let leaf = ca.leaf("edge", 1);
    let edge = TlsEdge::start(
        &stack,
        &ca,
        &leaf,
        &[
            ("SWITCHBOARD_HEADER_TIMEOUT_MS", "1000"),
            ("SWITCHBOARD_MAX_HTTP_CONNECTIONS", "2"),
        ],
    )
    .await;
    // Two peers that open a connection and never finish (or start) a handshake.
    let mut idle = Vec::new();
    for _ in 0..2 {
        let mut stream = TcpStream::connect(&edge.addr).await.unwrap();
        stream.write_all(&[0x16, 0x03, 0x01]).await.unwrap();
        idle.push(stream);
    }
    tokio::time::sleep(Duration::from_millis(200)).await;

    // They hold both places: a third connection is closed without a handshake.
    let refused = tls_connect(&edge.connector, &edge.addr).await;
    assert!(refused.is_err(), "a connection beyond the cap was served");

    // The header timeout ends the unfinished handshakes, and the places come back.
    let opened = Instant::now();
    for stream in &mut idle {
        let mut byte = [0u8; 1];
        let read = tokio::time::timeout(Duration::from_secs(5), stream.read(&mut byte))
            .await
            .expect("an unfinished handshake outlived the header timeout");
        assert!(matches!(read, Ok(0) | Err(_)), "{read:?}");
    }
    println!("unfinished handshakes closed {:?} after", opened.elapsed());
    let mut client = edge.connect("alice").await;
    client.subscribe("domain:cap").await;
    assert!(edge.metric("switchboard_edge_header_timeouts_total").await >= 2.0);
    assert!(edge.metric("switchboard_edge_http_refused_total").await >= 1.0);
}

/// nginx from Debian's package (`scripts/test` installs it), or `SWITCHBOARD_NGINX`.
fn nginx_binary() -> PathBuf {
    let path = std::env::var_os("SWITCHBOARD_NGINX")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("/usr/sbin/nginx"));
    assert!(
        path.exists(),
        "nginx not found at {} (scripts/test installs Debian's nginx; or set SWITCHBOARD_NGINX)",
        path.display()
    );
    path
}

/// The committed config with the test's ports and paths: each line the test changes
/// must be in the file exactly once, so the file and this test cannot drift apart.
fn adapt_nginx_config(upstream: &str, https_port: u16, http_port: u16, dir: &Path) -> String {
    let committed = include_str!("../../deploy/nginx/switchboard.conf");
    let substitutions = [
        (
            "server 127.0.0.1:8080;".to_string(),
            format!("server {upstream};"),
        ),
        (
            "listen 443 ssl;".into(),
            format!("listen 127.0.0.1:{https_port} ssl;"),
        ),
        ("listen [::]:443 ssl;".into(), String::new()),
        (
            "listen 80;".into(),
            format!("listen 127.0.0.1:{http_port};"),
        ),
        ("listen [::]:80;".into(), String::new()),
        (
            "/etc/ssl/switchboard/fullchain.pem".into(),
            dir.join("cert.pem").display().to_string(),
        ),
        (
            "/etc/ssl/switchboard/privkey.pem".into(),
            dir.join("key.pem").display().to_string(),
        ),
    ];
    let mut config = committed.to_string();
    for (from, to) in substitutions {
        assert_eq!(
            config.matches(&from).count(),
            1,
            "deploy/nginx/switchboard.conf should hold {from:?} once"
        );
        config = config.replace(&from, &to);
    }
    config
}

#[tokio::test]
async fn nginx_terminates_tls_in_front_of_a_plain_edge() {
    let nginx = nginx_binary();
    let stack = Stack::start().await;
    let edge = stack.edge(&[]);
    let ca = Ca::new();
    let leaf = ca.leaf("proxy", 1);
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    leaf.write(&d.join("cert.pem"), &d.join("key.pem"));
    let (https_port, http_port) = (free_port(), free_port());
    std::fs::write(
        d.join("switchboard.conf"),
        adapt_nginx_config(&edge.addr, https_port, http_port, d),
    )
    .unwrap();
    // What Debian's /etc/nginx/nginx.conf provides around conf.d, in the temp directory;
    // one process (no master) so that killing it leaves no worker behind.
    let main_config = format!(
        "daemon off;\nmaster_process off;\npid {0}/nginx.pid;\nerror_log {0}/error.log info;\n\
         events {{ worker_connections 64; }}\n\
         http {{\n  access_log {0}/access.log;\n  client_body_temp_path {0}/client_body;\n\
         proxy_temp_path {0}/proxy;\n  fastcgi_temp_path {0}/fastcgi;\n  uwsgi_temp_path {0}/uwsgi;\n\
         scgi_temp_path {0}/scgi;\n  include {0}/switchboard.conf;\n}}\n",
        d.display()
    );
    std::fs::write(d.join("nginx.conf"), main_config).unwrap();
    let mut cmd = Command::new(&nginx);
    cmd.arg("-p")
        .arg(d)
        .arg("-e")
        .arg(d.join("error.log"))
        .arg("-c")
        .arg(d.join("nginx.conf"))
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(File::create(d.join("stderr.log")).unwrap());
    let _nginx = Process::spawn(cmd).expect("spawn nginx");
    let proxy = format!("127.0.0.1:{https_port}");
    let connector = ca.connector();
    let nginx_log = || {
        ["stderr.log", "error.log"]
            .map(|f| std::fs::read_to_string(d.join(f)).unwrap_or_default())
            .join("\n")
    };
    let deadline = Instant::now() + WAIT;
    loop {
        match https_get(&connector, &proxy, "/healthz").await {
            Ok((200, _, certificate)) => {
                assert_eq!(certificate, leaf.der);
                break;
            }
            answer => assert!(
                Instant::now() < deadline,
                "nginx not serving /healthz: {answer:?}\n{}",
                nginx_log()
            ),
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }

    let mut client = Wss::connect(&connector, &proxy, "alice").await;
    assert_eq!(client.certificate(), leaf.der);
    client.subscribe("domain:proxied").await;
    for i in 0..3 {
        stack
            .publish("domain:proxied", "thing.happened", json!({"i": i}))
            .await;
    }
    for i in 0..3 {
        assert_eq!(client.event().await, json!({"i": i}));
    }
    let pong = client.request(json!({"op": "ping"})).await;
    assert_eq!(pong["op"], "pong", "{pong}");
    // It went through nginx: once closed, the upgrade is in nginx's access log, a 101.
    client.socket.close(None).await.expect("close");
    let deadline = Instant::now() + WAIT;
    loop {
        let access = std::fs::read_to_string(d.join("access.log")).unwrap_or_default();
        if access.contains("GET /v1/ws HTTP/1.1\" 101 ") {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "no upgrade logged by nginx: {access}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}
