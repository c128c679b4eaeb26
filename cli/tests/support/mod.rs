//! What the CLI tests share: a nats-server with the project's streams, the `switchboard`
//! binary run as a user would, and events published the way backends publish them.
#![allow(dead_code)]

use std::io::{Read, Write};
use std::net::TcpStream;
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;
pub use switchboard_bus::Role;
use switchboard_bus::definitions::Definitions;
use switchboard_bus::{Encoding, Publisher};
use switchboard_schemas::{ChannelName, Envelope, EventType, RawJson};
use switchboard_testkit::{Nats, Process, binary, free_port};

/// nats-server with the streams and buckets `switchboard init` creates.
pub struct Bus {
    pub nats: Nats,
    pub client: async_nats::Client,
    pub js: async_nats::jetstream::Context,
}

impl Bus {
    pub async fn start() -> Bus {
        let nats = Nats::start().expect("start nats-server");
        let client = nats.connect(Role::Admin).await.expect("connect");
        let js = async_nats::jetstream::new(client.clone());
        Definitions::builtin()
            .apply(&js)
            .await
            .expect("apply definitions");
        Bus { nats, client, js }
    }

    /// The variables that let the `switchboard` command reach this NATS as an operator
    /// (the `admin` role).
    pub fn admin_env(&self) -> Vec<(String, String)> {
        self.nats.env(Role::Admin)
    }

    /// Publishes a new event (postcard, as Rust services do); returns its seq and envelope.
    pub async fn publish(&self, channel: &str, ty: &str, data: Value) -> (u64, Envelope) {
        self.publish_as(channel, ty, data, Encoding::Postcard).await
    }

    pub async fn publish_as(
        &self,
        channel: &str,
        ty: &str,
        data: Value,
        encoding: Encoding,
    ) -> (u64, Envelope) {
        let event = Envelope::new(
            EventType::parse(ty).unwrap(),
            RawJson::encode(&data).unwrap(),
        );
        let published = Publisher::new(self.client.clone())
            .publish_as(&ChannelName::parse(channel).unwrap(), &event, encoding)
            .await
            .expect("publish");
        assert!(!published.duplicate);
        (published.seq, event)
    }

    /// Makes `user` a member of `channel` as the membership worker does.
    pub async fn add_member(&self, channel: &str, user: &str) {
        switchboard_testkit::add_member(&self.js, channel, user).await;
    }

    pub async fn remove_member(&self, channel: &str, user: &str) {
        switchboard_testkit::remove_member(&self.js, channel, user).await;
    }

    /// Messages stored by `stream` now.
    pub async fn stored(&self, stream: &str) -> u64 {
        let mut stream = self.js.get_stream(stream).await.unwrap();
        stream.info().await.unwrap().state.messages
    }
}

/// `switchboard <args>` with the NATS settings `nats` (e.g. [`Bus::admin_env`]).
pub fn switchboard(nats: &[(String, String)], args: &[&str]) -> Output {
    switchboard_with_stdin(nats, args, "")
}

pub fn switchboard_with_stdin(nats: &[(String, String)], args: &[&str], stdin: &str) -> Output {
    let mut child = command(nats, args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("run switchboard");
    let mut input = child.stdin.take().unwrap();
    let stdin = stdin.to_string();
    let writer = std::thread::spawn(move || {
        let _ = input.write_all(stdin.as_bytes());
    });
    let output = child.wait_with_output().expect("wait for switchboard");
    writer.join().unwrap();
    output
}

pub fn command(nats: &[(String, String)], args: &[&str]) -> Command {
    let mut command = Command::new(env!("CARGO_BIN_EXE_switchboard"));
    command
        .args(args)
        .envs(nats.iter().cloned())
        .env_remove("SWITCHBOARD_JWT_SECRET");
    command
}

/// Asserts success and returns stdout.
pub fn ok(output: &Output) -> String {
    assert!(
        output.status.success(),
        "switchboard failed ({}): {}",
        output.status,
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8(output.stdout.clone()).expect("UTF-8 output")
}

/// A `switchboard --json bench` run's report (the run must have succeeded).
pub fn report(output: &Output) -> Value {
    serde_json::from_str(&ok(output)).expect("a JSON report")
}

/// A number in a bench report, by field name.
pub fn number(report: &Value, field: &str) -> f64 {
    report[field]
        .as_f64()
        .unwrap_or_else(|| panic!("{field} in {report}"))
}

/// Each line of `text` as JSON.
pub fn json_lines(text: &str) -> Vec<Value> {
    text.lines()
        .map(|line| serde_json::from_str(line).unwrap_or_else(|e| panic!("{e}: {line}")))
        .collect()
}

/// The (seq, channel, envelope) of each replay line, checking that the envelope parses.
pub fn replayed(text: &str) -> Vec<(u64, String, Envelope)> {
    json_lines(text)
        .into_iter()
        .map(|line| {
            let envelope = Envelope::from_json(line["event"].to_string().as_bytes())
                .unwrap_or_else(|e| panic!("{e}: {line}"));
            (
                line["seq"].as_u64().unwrap(),
                line["channel"].as_str().unwrap().to_string(),
                envelope,
            )
        })
        .collect()
}

/// A `switchboard-edge` process on a free port.
pub fn start_edge(nats: &Nats, secret: &str) -> (Process, String) {
    let addr = format!("127.0.0.1:{}", free_port());
    let mut cmd = Command::new(binary("switchboard-edge"));
    cmd.envs(nats.env(Role::Edge))
        .env("SWITCHBOARD_EDGE_ADDR", &addr)
        .env("SWITCHBOARD_JWT_SECRET", secret)
        .env("SWITCHBOARD_LOG", "warn")
        .stdin(Stdio::null());
    let process = Process::spawn(cmd).expect("spawn switchboard-edge");
    let deadline = Instant::now() + Duration::from_secs(10);
    while Instant::now() < deadline {
        if http_status(&mut request(&addr, "/readyz")) == Some(200) {
            return (process, addr);
        }
        std::thread::sleep(Duration::from_millis(25));
    }
    panic!("edge at {addr} not ready");
}

/// Sends a GET and returns the open connection.
pub fn request(addr: &str, path: &str) -> Option<TcpStream> {
    let mut stream = TcpStream::connect(addr).ok()?;
    stream.set_read_timeout(Some(Duration::from_secs(5))).ok()?;
    write!(
        stream,
        "GET {path} HTTP/1.1\r\nHost: {addr}\r\nAccept: text/event-stream\r\n\r\n"
    )
    .ok()?;
    Some(stream)
}

/// The status code of the response on `stream`, reading only its first line.
pub fn http_status(stream: &mut Option<TcpStream>) -> Option<u16> {
    let stream = stream.as_mut()?;
    let mut head = Vec::new();
    let mut byte = [0u8];
    while !head.ends_with(b"\r\n") && stream.read(&mut byte).ok()? == 1 {
        head.push(byte[0]);
    }
    String::from_utf8_lossy(&head)
        .split(' ')
        .nth(1)?
        .parse()
        .ok()
}
