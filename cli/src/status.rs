//! `switchboard status`: streams, worker lag, connected edges and buckets at a glance.
//!
//! Workers are JetStream durable consumers (one per job, shared by every copy), so a
//! job's lag is its consumer's backlog: messages not yet delivered plus messages
//! delivered and not yet acknowledged. Edges keep no registry: each answers a request on
//! [`EDGES_STATUS_SUBJECT`], and every answer that arrives within [`EDGES_WAIT`] is a
//! connected edge.

use std::time::{Duration, Instant};

use anyhow::Context as _;
use futures_util::StreamExt;
use serde::{Deserialize, Serialize};
use switchboard_bus::EDGES_STATUS_SUBJECT;
use switchboard_bus::definitions::{self, Status};

use crate::output;

/// How long to gather edge answers.
const EDGES_WAIT: Duration = Duration::from_millis(500);

const EXAMPLES: &str = "Examples:
  switchboard status
  switchboard status --json | jq '.workers[] | {job, lag}'";

#[derive(Debug, clap::Args)]
#[command(after_help = EXAMPLES)]
pub struct Args {}

/// One worker job: a durable consumer on a non-KV stream.
#[derive(Debug, Serialize)]
struct Worker {
    job: String,
    stream: String,
    /// Not yet delivered plus not yet acknowledged.
    lag: u64,
    pending: u64,
    ack_pending: usize,
    redelivered: usize,
    /// Pull requests waiting: roughly how many copies of the job are idle and asking.
    waiting: usize,
    idle_secs: Option<u64>,
}

/// One edge's answer, as it sends it.
#[derive(Debug, Serialize, Deserialize)]
struct Edge {
    id: String,
    #[serde(default)]
    addr: String,
    #[serde(default)]
    connections: i64,
    #[serde(default)]
    subscriptions: i64,
    #[serde(default)]
    channels: u64,
    #[serde(default)]
    draining: bool,
    /// Unix seconds.
    #[serde(default)]
    started: i64,
}

#[derive(Debug, Serialize)]
struct Report {
    #[serde(flatten)]
    status: Status,
    workers: Vec<Worker>,
    edges: Vec<Edge>,
    connections: i64,
}

pub async fn run(nats: &crate::Nats, json: bool, _args: Args) -> anyhow::Result<()> {
    let client = nats.connect().await?;
    let js = async_nats::jetstream::new(client.clone());
    let status = definitions::status(&js).await?;
    let workers = status
        .streams
        .iter()
        .filter(|s| s.bucket.is_none())
        .flat_map(|s| {
            s.consumers.iter().map(|c| Worker {
                job: c.name.clone(),
                stream: s.name.clone(),
                lag: c.pending + c.ack_pending as u64,
                pending: c.pending,
                ack_pending: c.ack_pending,
                redelivered: c.redelivered,
                waiting: c.waiting,
                idle_secs: c.idle.map(|d| d.as_secs()),
            })
        })
        .collect();
    let mut edges = edges(&client).await?;
    edges.sort_by(|a, b| a.id.cmp(&b.id));
    let report = Report {
        connections: edges.iter().map(|e| e.connections).sum(),
        status,
        workers,
        edges,
    };
    if json {
        return output::json(&report);
    }
    print(&report);
    Ok(())
}

/// Asks every edge once and gathers the answers that arrive within [`EDGES_WAIT`].
async fn edges(client: &async_nats::Client) -> anyhow::Result<Vec<Edge>> {
    let asking = || format!("cannot ask edges on {EDGES_STATUS_SUBJECT}");
    let inbox = client.new_inbox();
    let mut answers = client.subscribe(inbox.clone()).await.with_context(asking)?;
    client
        .publish_with_reply(EDGES_STATUS_SUBJECT, inbox, "".into())
        .await
        .with_context(asking)?;
    client.flush().await.with_context(asking)?;
    let deadline = Instant::now() + EDGES_WAIT;
    let mut edges = Vec::new();
    while let Ok(Some(answer)) = tokio::time::timeout_at(deadline.into(), answers.next()).await {
        // With no edge listening, the server itself answers "no responders" (503).
        if answer.status.is_some() {
            continue;
        }
        match serde_json::from_slice::<Edge>(&answer.payload) {
            Ok(edge) => edges.push(edge),
            Err(error) => eprintln!("switchboard: an edge answered something unreadable: {error}"),
        }
    }
    Ok(edges)
}

fn print(report: &Report) {
    let rows: Vec<Vec<String>> = report
        .status
        .streams
        .iter()
        .map(|s| {
            vec![
                s.bucket
                    .as_ref()
                    .map_or_else(|| s.name.clone(), |b| format!("{b} (kv)")),
                s.messages.to_string(),
                s.bytes.to_string(),
                format!("{}..{}", s.first_seq, s.last_seq),
                s.subjects.to_string(),
                s.replicas.to_string(),
            ]
        })
        .collect();
    output::table(
        &["STREAM", "MESSAGES", "BYTES", "SEQ", "SUBJECTS", "REPLICAS"],
        &rows,
    );

    println!();
    if report.workers.is_empty() {
        println!("no workers (no consumers on EVENTS or CMDS: is switchboard-workers running?)");
    } else {
        let rows: Vec<Vec<String>> = report
            .workers
            .iter()
            .map(|w| {
                vec![
                    w.job.clone(),
                    w.stream.clone(),
                    w.lag.to_string(),
                    w.pending.to_string(),
                    w.ack_pending.to_string(),
                    w.redelivered.to_string(),
                    w.waiting.to_string(),
                    w.idle_secs.map_or_else(|| "-".into(), |s| format!("{s}s")),
                ]
            })
            .collect();
        output::table(
            &[
                "WORKER",
                "STREAM",
                "LAG",
                "PENDING",
                "ACK PENDING",
                "REDELIVERED",
                "WAITING",
                "IDLE",
            ],
            &rows,
        );
    }

    println!();
    if report.edges.is_empty() {
        println!(
            "no edges answered within {} ms (is switchboard-edge running on this NATS?)",
            EDGES_WAIT.as_millis()
        );
        return;
    }
    let now = time::OffsetDateTime::now_utc().unix_timestamp();
    let rows: Vec<Vec<String>> = report
        .edges
        .iter()
        .map(|e| {
            vec![
                e.id.clone(),
                e.addr.clone(),
                e.connections.to_string(),
                e.subscriptions.to_string(),
                e.channels.to_string(),
                if e.draining { "draining" } else { "serving" }.to_string(),
                format!("{}s", (now - e.started).max(0)),
            ]
        })
        .collect();
    output::table(
        &[
            "EDGE",
            "ADDR",
            "CONNECTIONS",
            "SUBSCRIPTIONS",
            "CHANNELS",
            "STATE",
            "UP",
        ],
        &rows,
    );
    println!(
        "{} edge(s), {} connection(s)",
        report.edges.len(),
        report.connections
    );
}
