//! `switchboard erase`: remove a user's messages, or a conversation, everywhere
//! Switchboard keeps them (docs/operations.md §12, "Erasure").
//!
//! The work is the workers' (`erase.user` / `erase.channel`, docs/protocol.md §10.14):
//! this command asks them as a backend would (`Rt-Role: service`), waits as long as the
//! erasure takes (a user's messages are found by reading the whole `EVENTS` stream),
//! showing a spinner meanwhile, and prints what was removed where.

use std::time::Duration;

use anyhow::Context as _;
use indicatif::{ProgressBar, ProgressStyle};
use serde_json::{Value, json};
use switchboard_bus::headers;
use switchboard_schemas::{ChannelName, UserId};

use crate::output;

/// Who the workers' logs name as the caller of an erasure from this command.
const CALLER: &str = "switchboard-cli";
/// The places an erasure reports on, in the order printed.
const PLACES: [(&str, &str); 7] = [
    ("events", "copies in the EVENTS stream"),
    ("archive", "archive rows"),
    ("search", "messages search could find"),
    ("inbox", "inbox entries"),
    ("notifications", "notifications"),
    ("deliveries", "push and email deliveries"),
    ("outbox", "outbox rows of notification events"),
];

#[derive(Debug, clap::Args)]
#[command(group(clap::ArgGroup::new("target").required(true).args(["user", "channel"])))]
pub struct Args {
    /// Erase every message this user sent, on every channel.
    #[arg(long, value_parser = parse_user)]
    user: Option<String>,
    /// Erase this conversation (any channel): its events, archive, inbox entries and
    /// notifications.
    #[arg(long, value_parser = parse_channel)]
    channel: Option<String>,
    /// Longest wait for the workers to finish, in seconds.
    #[arg(long, default_value_t = 3600, value_parser = clap::value_parser!(u64).range(1..))]
    timeout_s: u64,
}

fn parse_user(value: &str) -> Result<String, String> {
    UserId::parse(value)
        .map(|_| value.to_string())
        .map_err(|_| format!("{value:?} is not a user id: 1 to 128 characters of [A-Za-z0-9_-]"))
}

fn parse_channel(value: &str) -> Result<String, String> {
    let channel = ChannelName::parse(value).map_err(|e| e.to_string())?;
    if channel.alias().is_some() {
        return Err(format!(
            "{value} is an alias: erase its base channel, {}",
            channel.base().as_str()
        ));
    }
    Ok(channel.as_str().to_string())
}

pub async fn run(nats: &crate::Nats, json_out: bool, args: Args) -> anyhow::Result<()> {
    let (method, params, what) = match (&args.user, &args.channel) {
        (Some(user), _) => (
            "erase.user",
            json!({ "user": user }),
            format!("user {user}"),
        ),
        (None, Some(ch)) => (
            "erase.channel",
            json!({ "ch": ch }),
            format!("channel {ch}"),
        ),
        (None, None) => anyhow::bail!("name --user or --channel"),
    };
    let client = nats.connect().await?;
    let mut h = async_nats::HeaderMap::new();
    h.insert(headers::RT_USER, CALLER);
    h.insert(headers::RT_ROLE, "service");
    let request = async_nats::Request::new()
        .headers(h)
        .payload(params.to_string().into())
        .timeout(Some(Duration::from_secs(args.timeout_s)));
    let spinner = spinner(&what);
    let reply = client.send_request(format!("svc.{method}"), request).await;
    spinner.finish_and_clear();
    let reply = reply.map_err(|e| match e.kind() {
        async_nats::RequestErrorKind::NoResponders => anyhow::anyhow!(
            "no workers answer {method}: start switchboard-workers (any job) and try again"
        ),
        async_nats::RequestErrorKind::TimedOut => anyhow::anyhow!(
            "the workers did not finish within {} s (--timeout-s); they may still be working: \
             run the command again when they are done (what is gone stays gone)",
            args.timeout_s
        ),
        _ => anyhow::anyhow!("asking the workers to erase {what}: {e}"),
    })?;
    let answer: Value =
        serde_json::from_slice(&reply.payload).context("the workers' answer is not JSON")?;
    if let Some(error) = answer.get("error") {
        anyhow::bail!(
            "the workers refused to erase {what}: {} ({})",
            error["message"].as_str().unwrap_or("no message"),
            error["code"].as_str().unwrap_or("no code")
        );
    }
    let result = answer
        .get("result")
        .context("the workers' answer has neither result nor error")?;
    if json_out {
        return output::json(result);
    }
    println!("erased {what}:");
    let rows: Vec<Vec<String>> = PLACES
        .iter()
        .map(|(key, label)| {
            let count = result["removed"][key].as_u64().unwrap_or(0);
            vec![count.to_string(), label.to_string()]
        })
        .collect();
    output::table(&["removed", "from"], &rows);
    Ok(())
}

fn spinner(what: &str) -> ProgressBar {
    let spinner = ProgressBar::new_spinner();
    // No colors in the template: nothing to turn off for NO_COLOR.
    if let Ok(style) = ProgressStyle::with_template("{spinner} {elapsed_precise} {msg}") {
        spinner.set_style(style);
    }
    spinner.set_message(format!("erasing {what} (reading the EVENTS stream)"));
    spinner.enable_steady_tick(Duration::from_millis(200));
    spinner
}
