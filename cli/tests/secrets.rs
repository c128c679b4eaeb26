//! Secrets stay secret: with a token secret, passwords in URLs and NATS seeds set, none of
//! them appears in any binary's `--help`, error messages or log lines (logs at `debug`).

mod support;

use std::process::{Command, Output, Stdio};
use std::time::Duration;

use switchboard_bus::RoleKeys;
use switchboard_testkit::{Process, binary, fresh_secret};

struct Secrets {
    jwt: String,
    password: String,
    seed_dir: tempfile::TempDir,
}

impl Secrets {
    fn new() -> Secrets {
        let seed_dir = tempfile::tempdir().unwrap();
        RoleKeys::new(seed_dir.path()).ensure_all().unwrap();
        Secrets {
            jwt: fresh_secret(),
            password: fresh_secret()[..24].to_string(),
            seed_dir,
        }
    }

    fn seed(&self, role: &str) -> std::path::PathBuf {
        self.seed_dir.path().join(format!("{role}.nk"))
    }

    /// Every secret value, seeds included, with what it is.
    fn values(&self) -> Vec<(String, String)> {
        let mut values = vec![
            ("the JWT secret".to_string(), self.jwt.clone()),
            ("a password".to_string(), self.password.clone()),
        ];
        for role in ["edge", "workers", "service", "admin"] {
            let seed = std::fs::read_to_string(self.seed(role)).unwrap();
            values.push((format!("the {role} seed"), seed.trim().to_string()));
        }
        values
    }

    /// Settings naming every secret: nothing listens where they point, so every process
    /// fails or retries, and says so.
    fn env(&self, role: &str) -> Vec<(String, String)> {
        let pw = &self.password;
        vec![
            ("SWITCHBOARD_JWT_SECRET".into(), self.jwt.clone()),
            (
                "DATABASE_URL".into(),
                format!("postgres://sb:{pw}@127.0.0.1:1/switchboard?password={pw}"),
            ),
            (
                "SWITCHBOARD_NATS_URL".into(),
                format!("nats://{role}:{pw}@127.0.0.1:1"),
            ),
            (
                "SWITCHBOARD_NATS_NKEY".into(),
                self.seed(role).display().to_string(),
            ),
            ("SWITCHBOARD_LOG".into(), "debug".into()),
            // Tests run side by side: a worker's HTTP port of its own.
            ("SWITCHBOARD_WORKERS_ADDR".into(), "127.0.0.1:0".into()),
            ("RUST_LOG".into(), "debug".into()),
        ]
    }

    fn assert_absent(&self, what: &str, output: &str) {
        for (name, value) in self.values() {
            assert!(
                !output.contains(&value),
                "{name} appears in {what}:\n{output}"
            );
        }
    }
}

fn run(program: &str, args: &[&str], env: &[(String, String)]) -> Output {
    Command::new(binary(program))
        .args(args)
        .envs(env.iter().cloned())
        .stdin(Stdio::null())
        .output()
        .unwrap()
}

fn text(output: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    )
}

/// Runs a long-lived binary for `time`, then kills it: what it printed meanwhile.
fn run_for(program: &str, env: &[(String, String)], time: Duration) -> String {
    let log = tempfile::NamedTempFile::new().unwrap();
    let mut cmd = Command::new(binary(program));
    cmd.envs(env.iter().cloned())
        .stdin(Stdio::null())
        .stdout(log.reopen().unwrap())
        .stderr(log.reopen().unwrap());
    let process = Process::spawn(cmd).unwrap();
    std::thread::sleep(time);
    drop(process);
    std::fs::read_to_string(log.path()).unwrap()
}

#[test]
fn help_shows_no_secret_values() {
    let secrets = Secrets::new();
    let env = secrets.env("admin");
    for (program, args) in [
        ("switchboard-edge", &["--help"][..]),
        ("switchboard-workers", &["--help"][..]),
        ("switchboard", &["--help"][..]),
        ("switchboard", &["migrate", "--help"][..]),
        ("switchboard", &["members", "rebuild", "--help"][..]),
        ("switchboard", &["token", "--help"][..]),
        ("switchboard", &["bench", "fanout", "--help"][..]),
        ("switchboard", &["keys", "--help"][..]),
        ("switchboard", &["status", "--help"][..]),
    ] {
        let output = run(program, args, &env);
        assert!(output.status.success(), "{program} {args:?}");
        secrets.assert_absent(&format!("{program} {args:?}"), &text(&output));
    }
}

#[test]
fn errors_name_the_place_but_not_the_password() {
    let secrets = Secrets::new();
    let env = secrets.env("admin");

    let status = run("switchboard", &["status"], &env);
    assert!(!status.status.success());
    let said = text(&status);
    assert!(
        said.contains("cannot connect to NATS at nats://admin:***@127.0.0.1:1"),
        "{said}"
    );
    secrets.assert_absent("switchboard status's error", &said);

    let migrate = run("switchboard", &["migrate"], &env);
    assert!(!migrate.status.success());
    let said = text(&migrate);
    assert!(said.contains("cannot connect to PostgreSQL"), "{said}");
    secrets.assert_absent("switchboard migrate's error", &said);

    // A webhook URL with credentials is refused, and the refusal does not repeat them.
    let mut workers_env = secrets.env("workers");
    workers_env.push((
        "SWITCHBOARD_NOTIFY_WEBHOOK_URL".into(),
        format!("http://hook:{}@127.0.0.1:1/push", secrets.password),
    ));
    let workers = run("switchboard-workers", &[], &workers_env);
    assert!(!workers.status.success());
    secrets.assert_absent("the workers' refusal of a webhook URL", &text(&workers));

    // A seed file that holds no seed is refused without being shown.
    let not_a_seed = tempfile::NamedTempFile::new().unwrap();
    std::fs::write(not_a_seed.path(), &secrets.password).unwrap();
    let mut bad_seed = env.clone();
    bad_seed.retain(|(name, _)| name != "SWITCHBOARD_NATS_NKEY");
    bad_seed.push((
        "SWITCHBOARD_NATS_NKEY".into(),
        not_a_seed.path().display().to_string(),
    ));
    let refused = run("switchboard", &["status"], &bad_seed);
    assert!(!refused.status.success());
    let said = text(&refused);
    assert!(
        said.contains("does not hold a valid NKey user seed"),
        "{said}"
    );
    secrets.assert_absent("the refusal of a bad seed file", &said);
}

#[test]
fn logs_at_debug_show_no_secret() {
    let secrets = Secrets::new();
    let mut edge_env = secrets.env("edge");
    edge_env.push(("SWITCHBOARD_EDGE_ADDR".into(), "127.0.0.1:0".into()));
    let mut webhook_env = secrets.env("workers");
    webhook_env.push((
        "SWITCHBOARD_NOTIFY_WEBHOOK_URL".into(),
        format!("http://127.0.0.1:1/push?token={}", secrets.password),
    ));
    for (program, env) in [
        ("switchboard-edge", edge_env),
        ("switchboard-workers", webhook_env),
    ] {
        let log = run_for(program, &env, Duration::from_secs(2));
        assert!(!log.trim().is_empty(), "{program} logged nothing");
        secrets.assert_absent(&format!("{program}'s log"), &log);
    }
}

#[test]
fn keys_prints_public_keys_only() {
    let secrets = Secrets::new();
    let output = run(
        "switchboard",
        &[
            "keys",
            "--dir",
            &secrets.seed_dir.path().display().to_string(),
        ],
        &[],
    );
    assert!(output.status.success());
    let said = text(&output);
    assert_eq!(said.matches("_PUBKEY=U").count(), 4, "{said}");
    secrets.assert_absent("switchboard keys' output", &said);
}

#[test]
fn keys_makes_owner_only_seeds_once_and_keeps_them() {
    use std::os::unix::fs::PermissionsExt as _;
    let parent = tempfile::tempdir().unwrap();
    let dir = parent.path().join("nats-keys");
    let dir_arg = dir.display().to_string();
    let mode =
        |path: &std::path::Path| std::fs::metadata(path).unwrap().permissions().mode() & 0o777;
    let first = run("switchboard", &["keys", "--dir", &dir_arg], &[]);
    assert!(first.status.success(), "{}", text(&first));
    assert_eq!(mode(&dir), 0o700, "the seeds' directory");
    let mut seeds = Vec::new();
    for role in ["edge", "workers", "service", "admin"] {
        let seed = dir.join(format!("{role}.nk"));
        assert_eq!(mode(&seed), 0o600, "{role}.nk");
        seeds.push(std::fs::read(&seed).unwrap());
    }
    // Again: the same seeds, the same public keys.
    let second = run("switchboard", &["keys", "--dir", &dir_arg], &[]);
    assert!(second.status.success(), "{}", text(&second));
    assert_eq!(first.stdout, second.stdout, "the public keys changed");
    for (role, seed) in ["edge", "workers", "service", "admin"].iter().zip(&seeds) {
        assert_eq!(
            &std::fs::read(dir.join(format!("{role}.nk"))).unwrap(),
            seed,
            "{role}.nk was rewritten"
        );
    }
}
