//! `bench scale`: many idle connections over several edges, as a deployment on one
//! machine holds them, and one `system:broadcast` event to all of them.
//!
//! One process may open 20,000 files on the machine this was made for, so neither an
//! edge nor a generator can hold 100,000 sockets: the scenario spreads the connections
//! over the edges it is given (connection i to the (i mod n)-th) and opens them from
//! several generator processes, copies of this command (`bench scale-generator`, hidden),
//! each with its share. A generator binds its sockets to a source address of its own
//! (127.0.0.2, 127.0.0.3, ...) when the edges listen on 127.0.0.1, so each has the whole
//! ephemeral port range to every edge.
//!
//! The parent and its generators speak JSON lines: a generator tells on stdout how many
//! connections it has open, then that all are open; the parent measures the edges' RSS
//! and the stack's idle CPU, publishes the broadcast, and writes `collect` on each
//! generator's stdin; each generator answers with who got the event, how many times and
//! how late, and exits. A generator whose stdin closes (the parent died) exits too.
//!
//! This file owns the scenario and the generators; it does not touch the edges it
//! measures beyond their sockets and `/proc/<pid>`.

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use futures_util::StreamExt;
use hdrhistogram::Histogram;
use serde::{Deserialize, Serialize};
use serde_json::json;
use switchboard_schemas::{ChannelName, Envelope, EventType, RawJson};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::process::{Child, ChildStdin};
use tokio::sync::mpsc;
use tokio_tungstenite::MaybeTlsStream;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::http::Uri;

use super::reader::scan_number;
use super::{
    Bench, Dialer, Latency, ProcessCpu, Report, Socket, process_usage, socket_config, unix_micros,
};

/// The scenario's flags.
#[derive(Debug, clap::Args)]
pub(super) struct Plan {
    /// Connections in all.
    #[arg(long, default_value_t = 10_000)]
    pub(super) connections: usize,
    /// Sockets one generator process opens at most (a process here may open 20,000
    /// files); the connections are split evenly over as many generators as needed.
    #[arg(long, default_value_t = 18_000)]
    pub(super) per_generator: usize,
    /// Connections each generator opens at once.
    #[arg(long, default_value_t = 64)]
    pub(super) concurrency: usize,
    /// Seconds every connection is held idle while the stack's CPU is read.
    #[arg(long, default_value_t = 30)]
    pub(super) idle: u64,
    /// The edges' WebSocket URLs, comma separated (default: --edge-url).
    #[arg(long, env = "SWITCHBOARD_EDGE_URLS", value_delimiter = ',')]
    pub(super) edge_urls: Vec<String>,
    /// The edges' process ids, in the order of their URLs, for their RSS and CPU
    /// (default: --edge-pid).
    #[arg(long, env = "SWITCHBOARD_EDGE_PIDS", value_delimiter = ',')]
    pub(super) edge_pids: Vec<u32>,
    /// The stack's other processes whose idle CPU counts: nats-server,
    /// switchboard-workers.
    #[arg(long, env = "SWITCHBOARD_STACK_PIDS", value_delimiter = ',')]
    pub(super) stack_pids: Vec<u32>,
}

/// One generator's share of the connections (its hidden flags).
#[derive(Debug, clap::Args)]
pub(super) struct Share {
    /// The run's id: it names the users and channels, and marks the broadcast.
    #[arg(long)]
    pub(super) run: String,
    /// This generator's number, from 0: it picks the source address 127.0.0.<2 + n>.
    #[arg(long)]
    pub(super) generator: usize,
    /// The index of its first connection among all of the run's.
    #[arg(long)]
    pub(super) first: usize,
    /// How many connections it opens.
    #[arg(long)]
    pub(super) count: usize,
    #[arg(long)]
    pub(super) concurrency: usize,
    #[arg(long, value_delimiter = ',', required = true)]
    pub(super) edge_urls: Vec<String>,
}

/// Connections one run may hold in all.
pub(super) const MAX_CONNECTIONS: u64 = 100_000;
/// Sockets one generator may open: a process here may open 20,000 files.
pub(super) const MAX_PER_GENERATOR: u64 = 18_000;
/// Generator processes one run may start (each has a source address of its own).
pub(super) const MAX_GENERATORS: u64 = 32;
/// Edges one run may spread its connections over.
pub(super) const MAX_EDGES: u64 = 32;
/// Descriptors an edge keeps for itself (listener, NATS, epoll, logs) besides sockets.
const EDGE_OWN_FILES: u64 = 100;
/// What a generator waits for the broadcast to reach all of its sockets, and then for
/// a duplicate to show.
const DELIVERY_WAIT: Duration = Duration::from_secs(60);
const DUPLICATE_WAIT: Duration = Duration::from_secs(2);
/// What one connection may take to open and subscribe.
const OPEN_TIMEOUT: Duration = Duration::from_secs(30);
/// How a broadcast frame starts (`ch` comes right after `op`, docs/protocol.md).
const BROADCAST_FRAME: &str = "{\"op\":\"evt\",\"ch\":\"system:broadcast\"";

/// What a generator says on stdout, one JSON object a line.
#[derive(Debug, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
enum Line {
    /// Connections open so far (every 1,000).
    Progress { opened: usize },
    /// All of its connections are open and subscribed.
    Opened { opened: usize },
    /// After `collect`: the broadcast as its connections got it.
    Received {
        /// Connections that got it at least once.
        received: u64,
        /// Copies beyond the first.
        duplicated: u64,
        /// Connections that never got it.
        missing: u64,
        /// Connections the edge had closed by then.
        closed: u64,
        /// Publish -> first receipt, per connection that got it, in µs.
        latency_us: Vec<u64>,
    },
    /// It gave up; the parent stops the run.
    Failed { error: String },
}

impl Bench {
    /// Runs the scenario; `edge_url` and `edge_pid` (the bench's own flags) stand in for
    /// the plan's lists when those are empty.
    pub(super) async fn scale(
        &self,
        plan: Plan,
        edge_url: &str,
        edge_pid: Option<u32>,
    ) -> anyhow::Result<Report> {
        let run_started = Instant::now();
        let edge_urls = if plan.edge_urls.is_empty() {
            vec![edge_url.to_string()]
        } else {
            plan.edge_urls.clone()
        };
        let edge_pids: Vec<u32> = if plan.edge_pids.is_empty() {
            edge_pid.into_iter().collect()
        } else {
            plan.edge_pids.clone()
        };
        if edge_pids.len() != edge_urls.len() {
            bail!(
                "scale reads every edge's memory: give one pid per edge URL (--edge-pids or \
                 SWITCHBOARD_EDGE_PIDS), not {} pids for {} URLs",
                edge_pids.len(),
                edge_urls.len()
            );
        }
        room_on_edges(&edge_pids, plan.connections)?;
        let shares = split(plan.connections, plan.per_generator);
        let rss_before = total_rss(&edge_pids)?;

        eprintln!(
            "opening {} connections over {} edges from {} generator processes",
            plan.connections,
            edge_urls.len(),
            shares.len()
        );
        let started = Instant::now();
        let mut generators = Generators::start(
            &shares,
            &self.run_id,
            plan.concurrency,
            &edge_urls,
            &self.dialer.secret,
        )?;
        generators.opened(plan.connections).await?;
        let setup = started.elapsed().as_secs_f64();
        eprintln!(
            "{} connections open in {setup:.1} s ({:.0}/s); idle for {} s",
            plan.connections,
            plan.connections as f64 / setup,
            plan.idle
        );

        // Idle for a moment so the edges' allocations settle, as `connect` does.
        tokio::time::sleep(Duration::from_secs(2)).await;
        let rss_after = total_rss(&edge_pids)?;
        let stack: Vec<u32> = edge_pids.iter().chain(&plan.stack_pids).copied().collect();
        let stack_before = cpu_seconds(&stack)?;
        let generators_before = cpu_seconds(&generators.pids)?;
        let idle_started = Instant::now();
        tokio::time::sleep(Duration::from_secs(plan.idle)).await;
        let window = idle_started.elapsed().as_secs_f64();
        let stack_after = cpu_seconds(&stack)?;
        let generators_after = cpu_seconds(&generators.pids)?;
        let by_process: Vec<ProcessCpu> = stack
            .iter()
            .zip(stack_before.iter().zip(&stack_after))
            .map(|(pid, (before, after))| ProcessCpu {
                pid: *pid,
                name: process_name(*pid),
                cores: (after - before) / window,
            })
            .collect();
        let cores = |before: &[f64], after: &[f64]| {
            (after.iter().sum::<f64>() - before.iter().sum::<f64>()) / window
        };

        eprintln!("publishing one system:broadcast event to every connection");
        let broadcast = ChannelName::parse("system:broadcast")?;
        let data = RawJson::encode(&json!({"run": self.run_id, "t": unix_micros()}))?;
        let event = Envelope::new(EventType::parse("system.broadcast")?, data);
        self.publisher
            .publish(&broadcast, &event)
            .await
            .context("cannot publish the broadcast")?;
        let got = generators.collect().await?;

        let mut latency = Histogram::<u64>::new(3)?;
        for us in &got.latency_us {
            latency.record(*us)?;
        }
        if got.closed > 0 {
            eprintln!(
                "{} connections were closed by their edge before the broadcast",
                got.closed
            );
        }
        let spread_s = latency.max() as f64 / 1e6;
        Ok(Report {
            scenario: "scale".into(),
            parameters: json!({"connections": plan.connections, "per_generator": plan.per_generator,
                               "concurrency": plan.concurrency, "idle": plan.idle,
                               "edges": edge_urls.len(), "generators": shares.len()}),
            published: 1,
            deliveries: got.received + got.duplicated,
            // The broadcast's fan-out rate: every copy, over the time the last one took.
            deliveries_per_s: if spread_s > 0.0 {
                (got.received + got.duplicated) as f64 / spread_s
            } else {
                0.0
            },
            missing: got.missing,
            duplicated: got.duplicated,
            latency_ms: Latency::of(&latency),
            edge_rss_kib: Some(rss_after),
            rss_kib_per_connection: Some(
                rss_after.saturating_sub(rss_before) as f64 / plan.connections as f64,
            ),
            connections_per_s: Some(plan.connections as f64 / setup),
            setup_s: Some(setup),
            idle_cpu_cores: Some(cores(&stack_before, &stack_after)),
            idle_cpu_by_process: Some(by_process),
            generator_idle_cpu_cores: Some(cores(&generators_before, &generators_after)),
            seconds: run_started.elapsed().as_secs_f64(),
            ..Report::default()
        })
    }
}

/// `connections` split evenly over as few generators as hold `per_generator` each:
/// (first index, count) of each.
fn split(connections: usize, per_generator: usize) -> Vec<(usize, usize)> {
    let generators = connections.div_ceil(per_generator.max(1)).max(1);
    let (base, extra) = (connections / generators, connections % generators);
    let mut first = 0;
    (0..generators)
        .map(|g| {
            let count = base + usize::from(g < extra);
            let share = (first, count);
            first += count;
            share
        })
        .collect()
}

/// Refuses a plan that would give an edge more sockets than it may open files.
fn room_on_edges(edge_pids: &[u32], connections: usize) -> anyhow::Result<()> {
    let per_edge = connections.div_ceil(edge_pids.len().max(1)) as u64;
    for pid in edge_pids {
        if let Some(limit) = open_files_limit(*pid)
            && per_edge + EDGE_OWN_FILES > limit
        {
            bail!(
                "each of the {} edges would hold {per_edge} connections, but edge pid {pid} may \
                 open only {limit} files ({EDGE_OWN_FILES} kept for its own use): start more edges \
                 (--edge-urls, --edge-pids) or raise their `ulimit -n`",
                edge_pids.len()
            );
        }
    }
    Ok(())
}

/// A process's soft limit on open files, from `/proc/<pid>/limits` (`None`: unlimited or
/// unreadable).
fn open_files_limit(pid: u32) -> Option<u64> {
    let limits = std::fs::read_to_string(format!("/proc/{pid}/limits")).ok()?;
    let line = limits.lines().find(|l| l.starts_with("Max open files"))?;
    line["Max open files".len()..]
        .split_whitespace()
        .next()?
        .parse()
        .ok()
}

fn usage_of(pid: u32) -> anyhow::Result<(f64, u64)> {
    process_usage(pid)
        .with_context(|| format!("process {pid} is not running (or /proc/{pid} is unreadable)"))
}

/// The edges' RSS together, in KiB.
fn total_rss(pids: &[u32]) -> anyhow::Result<u64> {
    pids.iter().map(|pid| Ok(usage_of(*pid)?.1)).sum()
}

/// Each process's CPU seconds so far.
fn cpu_seconds(pids: &[u32]) -> anyhow::Result<Vec<f64>> {
    pids.iter().map(|pid| Ok(usage_of(*pid)?.0)).collect()
}

/// A process's program name: the file name of its `argv[0]` (`comm` is cut to 15
/// characters: `switchboard-edg`).
fn process_name(pid: u32) -> String {
    let argv0 = std::fs::read(format!("/proc/{pid}/cmdline"))
        .ok()
        .and_then(|line| {
            let first = line.split(|b| *b == 0).next()?;
            let name = String::from_utf8_lossy(first);
            Some(name.rsplit('/').next().unwrap_or_default().to_string())
        })
        .filter(|name| !name.is_empty());
    argv0.unwrap_or_else(|| {
        std::fs::read_to_string(format!("/proc/{pid}/comm"))
            .map(|name| name.trim().to_string())
            .unwrap_or_default()
    })
}

/// The generator processes of one run, seen from the parent.
struct Generators {
    children: Vec<Child>,
    stdins: Vec<ChildStdin>,
    pids: Vec<u32>,
    /// Each generator's lines, by its number; `None` when its stdout closed.
    lines: mpsc::UnboundedReceiver<(usize, Option<Line>)>,
}

/// The broadcast as every generator's connections got it.
#[derive(Default)]
struct Got {
    received: u64,
    duplicated: u64,
    missing: u64,
    closed: u64,
    latency_us: Vec<u64>,
}

impl Generators {
    /// Starts one copy of this command per share; they are killed if the parent drops
    /// them before they are done.
    fn start(
        shares: &[(usize, usize)],
        run: &str,
        concurrency: usize,
        edge_urls: &[String],
        secret: &str,
    ) -> anyhow::Result<Generators> {
        let program =
            std::env::current_exe().context("cannot find this program to start generators")?;
        let (sender, lines) = mpsc::unbounded_channel();
        let mut generators = Generators {
            children: Vec::new(),
            stdins: Vec::new(),
            pids: Vec::new(),
            lines,
        };
        for (n, (first, count)) in shares.iter().enumerate() {
            let mut child = tokio::process::Command::new(&program)
                .args(["bench", "scale-generator", "--run", run])
                .args(["--generator", &n.to_string()])
                .args(["--first", &first.to_string(), "--count", &count.to_string()])
                .args(["--concurrency", &concurrency.to_string()])
                .args(["--edge-urls", &edge_urls.join(",")])
                // In the environment, not on the command line, where `ps` would show it.
                .env("SWITCHBOARD_JWT_SECRET", secret)
                .stdin(std::process::Stdio::piped())
                .stdout(std::process::Stdio::piped())
                .kill_on_drop(true)
                .spawn()
                .with_context(|| format!("cannot start generator {n}"))?;
            let (Some(stdin), Some(stdout), Some(pid)) =
                (child.stdin.take(), child.stdout.take(), child.id())
            else {
                bail!("generator {n} started without its pipes");
            };
            let sender = sender.clone();
            tokio::spawn(async move {
                let mut stdout = BufReader::new(stdout).lines();
                while let Ok(Some(text)) = stdout.next_line().await {
                    let line = serde_json::from_str(&text).unwrap_or_else(|_| Line::Failed {
                        error: format!("unreadable line: {text}"),
                    });
                    let _ = sender.send((n, Some(line)));
                }
                let _ = sender.send((n, None));
            });
            generators.children.push(child);
            generators.stdins.push(stdin);
            generators.pids.push(pid);
        }
        Ok(generators)
    }

    /// The next line of any generator (`None`: its stdout closed); a failure ends the
    /// run.
    async fn next(&mut self) -> anyhow::Result<(usize, Option<Line>)> {
        match self.lines.recv().await {
            Some((n, Some(Line::Failed { error }))) => bail!("generator {n}: {error}"),
            Some(next) => Ok(next),
            None => bail!("every generator is gone"),
        }
    }

    /// Waits until every generator has all of its connections open, telling the
    /// progress every 5 s.
    async fn opened(&mut self, connections: usize) -> anyhow::Result<()> {
        let mut opened = vec![0; self.children.len()];
        let mut done = vec![false; self.children.len()];
        let started = Instant::now();
        let mut told = Instant::now();
        while !done.iter().all(|d| *d) {
            match self.next().await? {
                (n, Some(Line::Progress { opened: count })) => opened[n] = count,
                (n, Some(Line::Opened { opened: count })) => (opened[n], done[n]) = (count, true),
                (n, Some(other)) => bail!("generator {n} said {other:?} while opening"),
                (n, None) => bail!("generator {n} exited while opening (its stderr is above)"),
            }
            if told.elapsed() >= Duration::from_secs(5) {
                let sum: usize = opened.iter().sum();
                eprintln!(
                    "{sum} of {connections} connections open ({:.0}/s)",
                    sum as f64 / started.elapsed().as_secs_f64()
                );
                told = Instant::now();
            }
        }
        Ok(())
    }

    /// Asks every generator for the broadcast as its connections got it, and waits for
    /// them to exit.
    async fn collect(&mut self) -> anyhow::Result<Got> {
        for (n, stdin) in self.stdins.iter_mut().enumerate() {
            stdin
                .write_all(b"collect\n")
                .await
                .with_context(|| format!("generator {n} no longer listens"))?;
            stdin.flush().await?;
        }
        let mut got = Got::default();
        let mut answered = vec![false; self.children.len()];
        while !answered.iter().all(|a| *a) {
            match self.next().await? {
                (
                    n,
                    Some(Line::Received {
                        received,
                        duplicated,
                        missing,
                        closed,
                        latency_us,
                    }),
                ) => {
                    answered[n] = true;
                    got.received += received;
                    got.duplicated += duplicated;
                    got.missing += missing;
                    got.closed += closed;
                    got.latency_us.extend(latency_us);
                }
                (n, None) if !answered[n] => {
                    bail!("generator {n} exited before it answered (its stderr is above)")
                }
                (_, None | Some(Line::Progress { .. } | Line::Opened { .. })) => {}
                (n, Some(other)) => bail!("generator {n} said {other:?} after the broadcast"),
            }
        }
        for (n, child) in self.children.iter_mut().enumerate() {
            match tokio::time::timeout(Duration::from_secs(30), child.wait()).await {
                Ok(Ok(status)) if status.success() => {}
                Ok(Ok(status)) => bail!("generator {n} exited with {status}"),
                Ok(Err(error)) => bail!("cannot wait for generator {n}: {error}"),
                Err(_) => {
                    let _ = child.start_kill();
                    bail!("generator {n} did not exit 30 s after it answered");
                }
            }
        }
        Ok(got)
    }
}

/// One connection's view of the broadcast, written by the task reading its socket.
#[derive(Default)]
struct Slot {
    copies: AtomicU32,
    latency_us: AtomicU64,
    closed: AtomicBool,
}

/// The hidden `bench scale-generator`: opens the share's connections, reports on stdout,
/// and answers `collect` on stdin. A failure is reported as a `failed` line as well.
pub(super) async fn generate(share: &Share, secret: &str) -> anyhow::Result<()> {
    let result = open_and_hold(share, secret).await;
    if let Err(error) = &result {
        say(&Line::Failed {
            error: format!("{error:#}"),
        });
    }
    result
}

fn say(line: &Line) {
    if let Ok(text) = serde_json::to_string(line) {
        println!("{text}");
    }
}

/// An edge as a generator reaches it.
struct Edge {
    dialer: Dialer,
    address: SocketAddr,
    /// Where this generator's sockets to it come from (`None`: the kernel's choice).
    source: Option<IpAddr>,
}

impl Edge {
    async fn resolve(url: &str, secret: &str, generator: usize) -> anyhow::Result<Edge> {
        let uri: Uri = url
            .parse()
            .with_context(|| format!("{url:?} is not a URL"))?;
        let host = uri.host().unwrap_or_default();
        let host = host.trim_start_matches('[').trim_end_matches(']');
        let port = uri.port_u16().unwrap_or(80);
        let address = tokio::net::lookup_host((host, port))
            .await
            .with_context(|| format!("cannot resolve the edge URL {url}"))?
            .next()
            .with_context(|| format!("the edge URL {url} resolves to no address"))?;
        // 127.0.0.0/8 is all loopback: a source address per generator gives each its
        // own ephemeral ports (at most 32 generators: 127.0.0.2 to 127.0.0.33).
        let source = (address.ip() == IpAddr::V4(Ipv4Addr::LOCALHOST))
            .then(|| IpAddr::V4(Ipv4Addr::new(127, 0, 0, 2 + generator as u8)));
        Ok(Edge {
            dialer: Dialer {
                url: url.to_string(),
                secret: secret.to_string(),
            },
            address,
            source,
        })
    }

    /// Opens `user`'s socket subscribed to `channels` by its upgrade: small buffers (a
    /// generator holds thousands idle), no Nagle. Its `welcome` is not read yet.
    async fn upgrade(&self, user: &str, channels: &[String]) -> anyhow::Result<Socket> {
        let socket = match self.address {
            SocketAddr::V4(_) => tokio::net::TcpSocket::new_v4()?,
            SocketAddr::V6(_) => tokio::net::TcpSocket::new_v6()?,
        };
        if let Some(source) = self.source {
            bind_address_only(&socket);
            socket
                .bind(SocketAddr::new(source, 0))
                .with_context(|| format!("cannot bind a socket to {source}"))?;
        }
        let stream = socket
            .connect(self.address)
            .await
            .with_context(|| format!("cannot connect to the edge at {}", self.dialer.url))?;
        stream.set_nodelay(true)?;
        let request = self.dialer.request(user, &[], channels)?;
        let (socket, _) = tokio_tungstenite::client_async_with_config(
            request,
            MaybeTlsStream::Plain(stream),
            Some(socket_config()),
        )
        .await
        .with_context(|| format!("the upgrade at {} failed", self.dialer.url))?;
        Ok(socket)
    }
}

/// Binding picks only the source address; the port is picked at `connect`, unique per
/// destination (`IP_BIND_ADDRESS_NO_PORT`). A port picked at bind would have to be free
/// for every destination, and the ports a previous run left in TIME_WAIT are not: a run
/// right after a large one would find too few.
fn bind_address_only(socket: &tokio::net::TcpSocket) {
    use std::os::fd::AsRawFd as _;
    let on: libc::c_int = 1;
    // SAFETY: setsockopt on a socket this function borrows, with a c_int it outlives. A
    // kernel without the option refuses it, and bind picks a port as before.
    unsafe {
        libc::setsockopt(
            socket.as_raw_fd(),
            libc::IPPROTO_IP,
            libc::IP_BIND_ADDRESS_NO_PORT,
            (&raw const on).cast(),
            std::mem::size_of::<libc::c_int>() as libc::socklen_t,
        );
    }
}

async fn open_and_hold(share: &Share, secret: &str) -> anyhow::Result<()> {
    let allowed = super::open_files_allowed();
    if (share.count as u64) + 100 > allowed {
        bail!(
            "a generator may open {allowed} files, too few for {} sockets: lower --per-generator",
            share.count
        );
    }
    let mut edges = Vec::new();
    for url in &share.edge_urls {
        edges.push(Arc::new(Edge::resolve(url, secret, share.generator).await?));
    }
    let run = share.run.clone();
    let slots: Arc<Vec<Slot>> = Arc::new((0..share.count).map(|_| Slot::default()).collect());
    let marker: Arc<str> = format!("\"run\":\"{run}\"").into();

    // Each socket is opened by a task of its own (as in `connect`), at most
    // `concurrency` at once; once open, a task per socket reads it until the end, so
    // the edge's pings are answered while it idles.
    let mut opening = tokio::task::JoinSet::new();
    let mut holding = tokio::task::JoinSet::new();
    let (mut next, mut opened) = (0, 0);
    while opened < share.count {
        while next < share.count && opening.len() < share.concurrency {
            let i = share.first + next;
            let edge = edges[i % edges.len()].clone();
            let user = format!("s{run}-{i}");
            let channels = [
                format!("user:{user}"),
                format!("domain:shared-{run}-{}", i % 100),
            ];
            let local = next;
            opening.spawn(async move {
                let open = async {
                    let socket = edge.upgrade(&user, &channels).await?;
                    Bench::subscribed_on_upgrade(socket, &channels).await
                };
                let socket = tokio::time::timeout(OPEN_TIMEOUT, open)
                    .await
                    .with_context(|| {
                        format!(
                            "connection {i} to {} did not open within {} s",
                            edge.dialer.url,
                            OPEN_TIMEOUT.as_secs()
                        )
                    })??;
                Ok::<_, anyhow::Error>((local, socket))
            });
            next += 1;
        }
        let Some(done) = opening.join_next().await else {
            break;
        };
        let (local, socket) = done??;
        holding.spawn(hold(socket, slots.clone(), local, marker.clone()));
        opened += 1;
        if opened % 1000 == 0 && opened < share.count {
            say(&Line::Progress { opened });
        }
    }
    say(&Line::Opened { opened });

    // The one command is `collect`, sent once the broadcast is published.
    match BufReader::new(tokio::io::stdin())
        .lines()
        .next_line()
        .await?
    {
        Some(command) if command.trim() == "collect" => {}
        Some(command) => bail!("unknown command {command:?} (expected collect)"),
        // The parent is gone: nobody wants the figures.
        None => return Ok(()),
    }
    let deadline = Instant::now() + DELIVERY_WAIT;
    while Instant::now() < deadline
        && slots
            .iter()
            .any(|s| s.copies.load(Ordering::Relaxed) == 0 && !s.closed.load(Ordering::Relaxed))
    {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    tokio::time::sleep(DUPLICATE_WAIT).await;
    let mut got = Got {
        latency_us: Vec::with_capacity(slots.len()),
        ..Got::default()
    };
    for slot in slots.iter() {
        let copies = u64::from(slot.copies.load(Ordering::Relaxed));
        got.closed += u64::from(slot.closed.load(Ordering::Relaxed));
        if copies == 0 {
            got.missing += 1;
            continue;
        }
        got.received += 1;
        got.duplicated += copies - 1;
        got.latency_us.push(slot.latency_us.load(Ordering::Relaxed));
    }
    let received = Line::Received {
        received: got.received,
        duplicated: got.duplicated,
        missing: got.missing,
        closed: got.closed,
        latency_us: got.latency_us,
    };
    say(&received);
    holding.abort_all();
    Ok(())
}

/// Reads one idle socket until it closes, counting this run's broadcast and the
/// latency of its first copy from the publisher's timestamp.
async fn hold(mut socket: Socket, slots: Arc<Vec<Slot>>, index: usize, marker: Arc<str>) {
    let slot = &slots[index];
    while let Some(Ok(message)) = socket.next().await {
        let Message::Text(text) = message else {
            continue;
        };
        if !text.starts_with(BROADCAST_FRAME) || !text.contains(&*marker) {
            continue;
        }
        let at = unix_micros();
        if slot.copies.fetch_add(1, Ordering::Relaxed) == 0 {
            let sent = scan_number(&text, "\"t\":").unwrap_or(at);
            slot.latency_us
                .store(at.saturating_sub(sent), Ordering::Relaxed);
        }
    }
    slot.closed.store(true, Ordering::Relaxed);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn connections_are_split_evenly_over_as_few_generators_as_hold_them() {
        assert_eq!(split(100, 50), vec![(0, 50), (50, 50)]);
        assert_eq!(split(100, 60), vec![(0, 50), (50, 50)]);
        assert_eq!(split(7, 18_000), vec![(0, 7)]);
        let shares = split(100_000, 18_000);
        assert_eq!(shares.len(), 6);
        assert!(shares.iter().all(|(_, n)| *n <= 18_000 && *n >= 16_666));
        assert_eq!(shares.iter().map(|(_, n)| n).sum::<usize>(), 100_000);
        // Contiguous: every connection index belongs to exactly one generator.
        for pair in shares.windows(2) {
            assert_eq!(pair[0].0 + pair[0].1, pair[1].0);
        }
    }

    #[test]
    fn an_edge_that_could_not_hold_its_share_is_refused() {
        // This test process stands in for an edge: its limit is read from /proc.
        let me = std::process::id();
        let limit = open_files_limit(me).expect("a limit on open files");
        assert_eq!(limit, crate::bench::open_files_allowed());
        let fits = (limit - EDGE_OWN_FILES) as usize;
        assert!(room_on_edges(&[me], fits).is_ok());
        assert!(room_on_edges(&[me, me], 2 * fits).is_ok());
        let error = room_on_edges(&[me, me], 2 * fits + 2)
            .unwrap_err()
            .to_string();
        assert!(error.contains("start more edges"), "{error}");
    }

    #[test]
    fn generator_lines_read_back() {
        let line = Line::Received {
            received: 2,
            duplicated: 0,
            missing: 1,
            closed: 0,
            latency_us: vec![120, 340],
        };
        let text = serde_json::to_string(&line).unwrap();
        assert!(text.starts_with("{\"kind\":\"received\""), "{text}");
        let Line::Received {
            missing,
            latency_us,
            ..
        } = serde_json::from_str(&text).unwrap()
        else {
            panic!("{text}");
        };
        assert_eq!((missing, latency_us), (1, vec![120, 340]));
    }
}
