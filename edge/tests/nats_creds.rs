//! Every Switchboard process reaches a nats-server in operator (JWT) mode with a `.creds`
//! file (`SWITCHBOARD_NATS_CREDS`, docs/operations.md §11): the CLI applies the
//! definitions and publishes, the workers mirror a membership, the edge delivers the
//! CLI's event to a WebSocket client. A user of an account the server does not know is
//! refused with the server's authorization error, and a file that is no `.creds` file is
//! refused before any connection, naming the setting.
//!
//! The operator, accounts and users are minted here, with the `nkeys` crate and
//! hand-written NATS JWTs: `nsc`, the tool operators use, is not installed where the tests
//! run, and a test that makes its own trust chain needs no files from outside it. The
//! JWTs carry what nats-server needs of the NATS JWT v2 format (type and version 2 under
//! `nats`, issuer, subject, JetStream limits for the account) and nothing more.

mod support;

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use nkeys::KeyPair;
use serde_json::{Value, json};
use support::*;
use switchboard_testkit::{Process, free_port, workspace_root};

/// A NATS JWT: `{"typ":"JWT","alg":"ed25519-nkey"}`, the claims, and `issuer`'s Ed25519
/// signature over the first two parts, each base64url without padding.
fn nats_jwt(issuer: &KeyPair, subject: &str, name: &str, nats: Value) -> String {
    let header = json!({"typ": "JWT", "alg": "ed25519-nkey"});
    let claims = json!({
        "jti": uuid::Uuid::now_v7().simple().to_string().to_uppercase(),
        "iat": now(),
        "iss": issuer.public_key(),
        "sub": subject,
        "name": name,
        "nats": nats,
    });
    let signed = format!(
        "{}.{}",
        URL_SAFE_NO_PAD.encode(header.to_string()),
        URL_SAFE_NO_PAD.encode(claims.to_string())
    );
    let signature = issuer.sign(signed.as_bytes()).expect("sign a JWT");
    format!("{signed}.{}", URL_SAFE_NO_PAD.encode(signature))
}

/// An account's JWT signed by `operator`; `jetstream` gives it unlimited JetStream (the
/// system account must have none).
fn account_jwt(operator: &KeyPair, account: &KeyPair, name: &str, jetstream: bool) -> String {
    let mut limits = json!({
        "subs": -1, "data": -1, "payload": -1, "imports": -1, "exports": -1,
        "wildcards": true, "conn": -1, "leaf": -1,
    });
    if jetstream {
        for key in ["mem_storage", "disk_storage", "streams", "consumer"] {
            limits[key] = json!(-1);
        }
    }
    nats_jwt(
        operator,
        &account.public_key(),
        name,
        json!({"type": "account", "version": 2, "limits": limits}),
    )
}

/// A `.creds` file (mode 0600) for a new user of `account`, with no limits of its own.
fn creds_file(dir: &Path, account: &KeyPair, name: &str) -> PathBuf {
    use std::os::unix::fs::PermissionsExt;
    let user = KeyPair::new_user();
    let jwt = nats_jwt(
        account,
        &user.public_key(),
        name,
        json!({
            "type": "user", "version": 2,
            "pub": {}, "sub": {}, "subs": -1, "data": -1, "payload": -1,
        }),
    );
    let seed = user.seed().expect("the user's seed");
    let path = dir.join(format!("{name}.creds"));
    std::fs::write(
        &path,
        format!(
            "-----BEGIN NATS USER JWT-----\n{jwt}\n------END NATS USER JWT------\n\n\
             ************************* IMPORTANT *************************\n\
             NKEY Seed printed below can be used to sign and prove identity.\n\n\
             -----BEGIN USER NKEY SEED-----\n{seed}\n------END USER NKEY SEED------\n"
        ),
    )
    .unwrap();
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600)).unwrap();
    path
}

/// nats-server in operator mode: an operator, a system account and the app account
/// (JetStream on), all preloaded into the memory resolver.
struct OperatorNats {
    url: String,
    log: PathBuf,
    app: KeyPair,
    _process: Process,
    dir: tempfile::TempDir,
}

impl OperatorNats {
    fn start() -> OperatorNats {
        let operator = KeyPair::new_operator();
        let system = KeyPair::new_account();
        let app = KeyPair::new_account();
        let operator_jwt = nats_jwt(
            &operator,
            &operator.public_key(),
            "switchboard-test",
            json!({"type": "operator", "version": 2, "system_account": system.public_key()}),
        );
        let system_jwt = account_jwt(&operator, &system, "SYS", false);
        let app_jwt = account_jwt(&operator, &app, "APP", true);
        let mut last_log = String::new();
        // The free port may be taken between choosing and binding it: choose again.
        for _ in 0..3 {
            let dir = tempfile::Builder::new()
                .prefix("sb-nats-creds-")
                .tempdir()
                .unwrap();
            let port = free_port();
            let config = dir.path().join("nats.conf");
            std::fs::write(
                &config,
                format!(
                    "listen: 127.0.0.1:{port}\n\
                     operator: {operator_jwt}\n\
                     system_account: {system}\n\
                     resolver: MEMORY\n\
                     resolver_preload: {{\n  {system}: {system_jwt}\n  {app}: {app_jwt}\n}}\n\
                     jetstream {{\n  store_dir: \"{store}\"\n  max_memory_store: 256MB\n  max_file_store: 1GB\n}}\n",
                    system = system.public_key(),
                    app = app.public_key(),
                    store = dir.path().join("jetstream").display(),
                ),
            )
            .unwrap();
            let log = dir.path().join("nats.log");
            let file = std::fs::File::create(&log).unwrap();
            let mut cmd = Command::new(nats_server_binary());
            cmd.arg("-c")
                .arg(&config)
                .stdin(Stdio::null())
                .stdout(file.try_clone().unwrap())
                .stderr(file);
            let mut process = Process::spawn(cmd).expect("spawn nats-server");
            let deadline = Instant::now() + Duration::from_secs(20);
            loop {
                last_log = std::fs::read_to_string(&log).unwrap_or_default();
                if last_log.contains("Server is ready") {
                    return OperatorNats {
                        url: format!("nats://127.0.0.1:{port}"),
                        log,
                        app,
                        _process: process,
                        dir,
                    };
                }
                if process.wait_timeout(Duration::ZERO).is_some() || Instant::now() > deadline {
                    break;
                }
                std::thread::sleep(Duration::from_millis(20));
            }
        }
        panic!("nats-server in operator mode did not start; its log:\n{last_log}");
    }

    /// The `SWITCHBOARD_NATS_*` variables of a process connecting with `creds`.
    fn env(&self, creds: &Path) -> Vec<(String, String)> {
        vec![
            ("SWITCHBOARD_NATS_URL".into(), self.url.clone()),
            ("SWITCHBOARD_NATS_CREDS".into(), creds.display().to_string()),
        ]
    }

    /// A `.creds` file for a new user of the app account.
    fn user(&self, name: &str) -> PathBuf {
        creds_file(self.dir.path(), &self.app, name)
    }

    fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }
}

/// Where the tests' nats-server is: as testkit finds it (`SWITCHBOARD_NATS_SERVER`,
/// `PATH`, the project's `.venv`).
fn nats_server_binary() -> PathBuf {
    if let Some(path) = std::env::var_os("SWITCHBOARD_NATS_SERVER") {
        return PathBuf::from(path);
    }
    std::env::var_os("PATH")
        .and_then(|paths| {
            std::env::split_paths(&paths)
                .map(|dir| dir.join("nats-server"))
                .find(|candidate| candidate.is_file())
        })
        .unwrap_or_else(|| workspace_root().join(".venv/bin/nats-server"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn edge_workers_and_cli_work_with_creds_in_operator_mode() {
    let nats = tokio::task::block_in_place(OperatorNats::start);
    a_cli_publish_reaches_a_socket(
        &nats.env(&nats.user("admin")),
        nats.env(&nats.user("workers")),
        &nats.env(&nats.user("edge")),
        || format!("\nnats-server log:\n{}", nats.log()),
    )
    .await;
    println!("operator mode: the workers mirrored a membership, the edge delivered a CLI publish");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn creds_of_an_unknown_account_or_not_creds_at_all_are_refused() {
    let nats = tokio::task::block_in_place(OperatorNats::start);

    // The server admits no one without credentials.
    let anonymous = cli(
        &[("SWITCHBOARD_NATS_URL".into(), nats.url.clone())],
        &["status"],
    );
    assert!(!anonymous.status.success(), "an anonymous client got in");
    let stderr = String::from_utf8_lossy(&anonymous.stderr);
    assert!(stderr.contains("authorization violation"), "{stderr}");

    // A well-formed user whose account the server never heard of: the server's
    // authorization failure, from the CLI as from any process.
    let stranger = creds_file(nats.dir.path(), &KeyPair::new_account(), "stranger");
    let refused = cli(&nats.env(&stranger), &["status"]);
    assert!(!refused.status.success(), "a stranger got in");
    let stderr = String::from_utf8_lossy(&refused.stderr);
    assert!(stderr.contains("authorization violation"), "{stderr}");
    println!(
        "a stranger: {}",
        stderr.trim().lines().last().unwrap_or_default()
    );

    // A file that is no `.creds` file: refused before connecting, naming the setting and
    // not echoing what the file holds.
    let garbage = nats.dir.path().join("garbage.creds");
    std::fs::write(&garbage, "SUAMNOTAREALSEEDBUTSECRETLOOKING\n").unwrap();
    let said = cli(&nats.env(&garbage), &["status"]);
    assert!(!said.status.success());
    let stderr = String::from_utf8_lossy(&said.stderr);
    assert!(stderr.contains("SWITCHBOARD_NATS_CREDS"), "{stderr}");
    assert!(!stderr.contains("SECRETLOOKING"), "{stderr}");
    println!("not creds: {}", stderr.trim());

    // The edge stops at start with the same message.
    let stderr_path = nats.dir.path().join("edge.stderr");
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_switchboard-edge"));
    cmd.envs(nats.env(&garbage))
        .env(
            "SWITCHBOARD_EDGE_ADDR",
            format!("127.0.0.1:{}", free_port()),
        )
        .env("SWITCHBOARD_JWT_SECRET", &*SECRET)
        .env("SWITCHBOARD_LOG", "warn")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(&stderr_path).unwrap());
    let mut edge = Process::spawn(cmd).expect("spawn switchboard-edge");
    let status = edge
        .wait_timeout(Duration::from_secs(10))
        .expect("the edge stops on a bad creds file");
    assert!(!status.success());
    let stderr = std::fs::read_to_string(&stderr_path).unwrap();
    assert!(stderr.contains("SWITCHBOARD_NATS_CREDS"), "{stderr}");
    assert!(!stderr.contains("SECRETLOOKING"), "{stderr}");
    println!("the edge: {}", stderr.lines().next().unwrap_or_default());
}
