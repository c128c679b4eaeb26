//! The bounds of a run, checked before anything connects: sizes (each refusal names its
//! flag) and targets (loopback only: the generator measures an edge on this machine, it
//! is not a tool for loading other hosts).

use std::net::IpAddr;
use std::ops::RangeInclusive;

use anyhow::{Context, bail};
use tokio_tungstenite::tungstenite::http::Uri;

use super::{Scenario, scale};

/// Sockets one run may open in all: each costs a descriptor here and one in the edge.
const MAX_SOCKETS: u64 = 50_000;
/// Events one run may publish in all (the generator remembers each one's seq).
const MAX_EVENTS: u64 = 10_000_000;
/// Longest run, in seconds.
const MAX_DURATION: u64 = 600;
/// Largest event: its frame must stay under the edge's 64 KiB frame limit.
const MAX_SIZE: u64 = 60 * 1024;

impl Scenario {
    /// Refuses sizes the generator cannot honour or that no edge measurement needs, before
    /// anything connects.
    pub(super) fn check(&self) -> anyhow::Result<()> {
        match *self {
            Scenario::Fanout {
                subscribers,
                rate,
                size,
                duration,
            } => {
                within("--subscribers", subscribers as u64, 1..=MAX_SOCKETS)?;
                paced(rate, duration, size)
            }
            Scenario::Channels {
                channels,
                per_channel,
                rate,
                size,
                duration,
            } => {
                within("--channels", channels as u64, 1..=MAX_SOCKETS)?;
                within("--per-channel", per_channel as u64, 1..=MAX_SOCKETS)?;
                within(
                    "--channels x --per-channel",
                    (channels as u64).saturating_mul(per_channel as u64),
                    1..=MAX_SOCKETS,
                )?;
                paced(rate, duration, size)
            }
            Scenario::Chat {
                pairs,
                rate,
                duration,
            } => {
                within("--pairs", pairs as u64, 1..=MAX_SOCKETS / 2)?;
                paced(rate, duration, 1)
            }
            Scenario::Connect {
                connections,
                subs,
                concurrency,
            } => {
                within("--connections", connections as u64, 1..=MAX_SOCKETS)?;
                // The edge's own cap on subscriptions per connection.
                within("--subs", subs as u64, 0..=100)?;
                within("--concurrency", concurrency as u64, 1..=1024)
            }
            Scenario::Resume { missed, size } => {
                within("--missed", missed, 1..=1_000_000)?;
                within("--size", size as u64, 1..=MAX_SIZE)
            }
            Scenario::Inbox {
                conversations,
                messages,
                requests,
                rate,
                duration,
            } => {
                within("--conversations", conversations as u64, 1..=10_000)?;
                within("--messages", messages, 1..=5_000_000)?;
                within("--requests", requests, 1..=10_000)?;
                paced(rate, duration, 1)
            }
            Scenario::Scale(ref plan) => {
                let connections = plan.connections as u64;
                within("--connections", connections, 1..=scale::MAX_CONNECTIONS)?;
                // As many generators as needed, at most MAX_GENERATORS of them.
                let fewest = connections.div_ceil(scale::MAX_GENERATORS).max(1);
                within(
                    "--per-generator",
                    plan.per_generator as u64,
                    fewest..=scale::MAX_PER_GENERATOR,
                )?;
                within("--concurrency", plan.concurrency as u64, 1..=1024)?;
                within("--idle", plan.idle, 1..=MAX_DURATION)?;
                within(
                    "--edge-urls",
                    plan.edge_urls.len() as u64,
                    0..=scale::MAX_EDGES,
                )?;
                plan.edge_urls
                    .iter()
                    .try_for_each(|url| plain_loopback(url))
            }
            Scenario::ScaleGenerator(ref share) => {
                within("--count", share.count as u64, 1..=scale::MAX_PER_GENERATOR)?;
                within(
                    "--generator",
                    share.generator as u64,
                    0..=scale::MAX_GENERATORS - 1,
                )?;
                within("--concurrency", share.concurrency as u64, 1..=1024)?;
                if share.run.is_empty()
                    || share.run.len() > 32
                    || !share.run.chars().all(|c| c.is_ascii_alphanumeric())
                {
                    bail!(
                        "--run must be 1 to 32 letters and digits, not {:?}",
                        share.run
                    );
                }
                share
                    .edge_urls
                    .iter()
                    .try_for_each(|url| plain_loopback(url))
            }
        }
    }
}

/// The bounds of a publisher paced at `rate` events of `size` bytes for `duration` s.
fn paced(rate: u64, duration: u64, size: usize) -> anyhow::Result<()> {
    within("--rate", rate, 1..=1_000_000)?;
    within("--duration", duration, 1..=MAX_DURATION)?;
    within(
        "--rate x --duration",
        rate.saturating_mul(duration),
        1..=MAX_EVENTS,
    )?;
    within("--size", size as u64, 1..=MAX_SIZE)
}

fn within(name: &str, value: u64, range: RangeInclusive<u64>) -> anyhow::Result<()> {
    if !range.contains(&value) {
        bail!(
            "{name} must be between {} and {}, not {value}",
            range.start(),
            range.end()
        );
    }
    Ok(())
}

/// Refuses targets off this machine: the generator measures an edge on loopback; it is
/// not a tool for loading other hosts. The NATS setting may list several servers.
pub(super) fn loopback_targets(edge_url: &str, nats_url: &str) -> anyhow::Result<()> {
    loopback_only("the edge URL", edge_url)?;
    switchboard_bus::nats_servers(nats_url)
        .into_iter()
        .try_for_each(|url| loopback_only("the NATS URL", url))
}

/// An edge URL of `bench scale`: loopback, and plain `ws://` (its generators open the
/// TCP connection themselves).
fn plain_loopback(url: &str) -> anyhow::Result<()> {
    loopback_only("the edge URL", url)?;
    if !url.starts_with("ws://") {
        bail!("bench scale speaks plain ws:// to the edges, and {url} is not");
    }
    Ok(())
}

fn loopback_only(what: &str, url: &str) -> anyhow::Result<()> {
    let uri: Uri = url
        .parse()
        .with_context(|| format!("{what} {url:?} is not a URL"))?;
    let host = uri.host().unwrap_or_default();
    let host = host.trim_start_matches('[').trim_end_matches(']');
    let local = host.eq_ignore_ascii_case("localhost")
        || host.parse::<IpAddr>().is_ok_and(|ip| ip.is_loopback());
    if !local {
        bail!(
            "{what} {url} is not a loopback address: switchboard bench only loads an edge on \
             this machine"
        );
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_loopback_targets_are_accepted() {
        let edge = "ws://127.0.0.1:8080/v1/ws";
        let nats = "nats://127.0.0.1:4222";
        for (edge_url, nats_url) in [
            (edge, nats),
            ("ws://localhost:8080/v1/ws", nats),
            ("ws://[::1]:8080/v1/ws", nats),
            (edge, "nats://127.0.0.2:4222"),
            (edge, "nats://127.0.0.1:4222, nats://127.0.0.1:4223"),
            (edge, "127.0.0.1:4222"),
        ] {
            assert!(
                loopback_targets(edge_url, nats_url).is_ok(),
                "{edge_url} {nats_url}"
            );
        }
        for (edge_url, nats_url) in [
            ("ws://10.0.0.5:8080/v1/ws", nats),
            ("wss://edge.example.com/v1/ws", nats),
            ("ws://127.0.0.1.example.com/v1/ws", nats),
            (edge, "nats://127.0.0.1:4222,nats://192.168.1.9:4222"),
            ("ws://:8080/", nats),
        ] {
            let error = loopback_targets(edge_url, nats_url)
                .unwrap_err()
                .to_string();
            assert!(
                error.contains("not a loopback address") || error.contains("not a URL"),
                "{edge_url} {nats_url}: {error}"
            );
        }
    }

    #[test]
    fn sizes_outside_the_bounds_are_refused_with_the_flag_named() {
        let fanout = |subscribers, rate, size, duration| Scenario::Fanout {
            subscribers,
            rate,
            size,
            duration,
        };
        let inbox = |conversations, messages, rate| Scenario::Inbox {
            conversations,
            messages,
            requests: 300,
            rate,
            duration: 10,
        };
        assert!(fanout(5000, 30, 256, 10).check().is_ok());
        assert!(inbox(1000, 1_000_000, 1000).check().is_ok());
        for (scenario, flag) in [
            (fanout(0, 10, 256, 10), "--subscribers"),
            (fanout(50_001, 10, 256, 10), "--subscribers"),
            (fanout(10, 0, 256, 10), "--rate"),
            (fanout(10, 10, 256, 601), "--duration"),
            (fanout(10, 1_000_000, 256, 11), "--rate x --duration"),
            (fanout(10, 10, 70_000, 10), "--size"),
            (
                Scenario::Channels {
                    channels: 1000,
                    per_channel: 100,
                    rate: 10,
                    size: 256,
                    duration: 10,
                },
                "--channels x --per-channel",
            ),
            (
                Scenario::Connect {
                    connections: 10,
                    subs: 101,
                    concurrency: 8,
                },
                "--subs",
            ),
            (
                Scenario::Resume {
                    missed: 0,
                    size: 256,
                },
                "--missed",
            ),
            (inbox(0, 1000, 1000), "--conversations"),
            (inbox(10_001, 1000, 1000), "--conversations"),
            (inbox(1000, 0, 1000), "--messages"),
            (inbox(1000, 5_000_001, 1000), "--messages"),
            (inbox(1000, 1000, 0), "--rate"),
        ] {
            let error = scenario.check().unwrap_err().to_string();
            assert!(
                error.starts_with(&format!("{flag} must be between")),
                "{error}"
            );
        }
    }
}
