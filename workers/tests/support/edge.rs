//! A `switchboard-edge` in front of the workers, for tests that go through it end to end,
//! and the tokens it takes.

use std::process::{Command, Stdio};
use std::sync::LazyLock;

use serde_json::json;
use switchboard_testkit::{Process, binary, free_port};

use super::{Role, Setup};

/// Made afresh per test process: the edge refuses secrets the repository holds.
pub static SECRET: LazyLock<String> = LazyLock::new(switchboard_testkit::fresh_secret);

/// A `switchboard-edge` process on a free port, with `env` besides the settings every
/// test needs; its address.
pub fn start(setup: &Setup, env: &[(&str, String)]) -> (Process, String) {
    let addr = format!("127.0.0.1:{}", free_port());
    let mut command = Command::new(binary("switchboard-edge"));
    command
        .envs(setup.nats.env(Role::Edge))
        .env("SWITCHBOARD_EDGE_ADDR", &addr)
        .env("SWITCHBOARD_JWT_SECRET", &*SECRET)
        .env("SWITCHBOARD_LOG", "warn")
        .stdin(Stdio::null());
    for (name, value) in env {
        command.env(name, value);
    }
    (
        Process::spawn(command).expect("start switchboard-edge"),
        addr,
    )
}

/// A token for `user` with claim `role` (`user` or `service`), valid for an hour.
pub fn token(user: &str, role: &str) -> String {
    let exp = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs()
        + 3600;
    jsonwebtoken::encode(
        &jsonwebtoken::Header::default(),
        &json!({"sub": user, "exp": exp, "role": role}),
        &jsonwebtoken::EncodingKey::from_secret(SECRET.as_bytes()),
    )
    .unwrap()
}
