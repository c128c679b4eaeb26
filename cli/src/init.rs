//! `switchboard init`: apply the stream and bucket definitions.

use std::path::PathBuf;

use switchboard_bus::definitions::{Definitions, Outcome};

use crate::output;

#[derive(Debug, clap::Args)]
pub struct Args {
    /// Read definitions from this directory instead of the built-in ones (nats/jetstream).
    #[arg(long, env = "SWITCHBOARD_DEFINITIONS")]
    definitions: Option<PathBuf>,
    /// Replicas per stream: 1 for a single node, 3 on a three-node cluster.
    #[arg(long)]
    replicas: Option<usize>,
}

pub async fn run(nats: &crate::Nats, json: bool, args: Args) -> anyhow::Result<()> {
    let mut definitions = match &args.definitions {
        Some(dir) => Definitions::from_dir(dir)?,
        None => Definitions::builtin(),
    };
    if let Some(replicas) = args.replicas {
        anyhow::ensure!(
            (1..=5).contains(&replicas),
            "--replicas must be between 1 and 5, got {replicas}"
        );
        definitions = definitions.with_replicas(replicas);
    }
    let client = nats.connect().await?;
    let js = async_nats::jetstream::new(client);
    let report = definitions.apply(&js).await?;
    if json {
        return output::json(&report);
    }
    for applied in &report {
        match &applied.outcome {
            Outcome::Created => println!("created   {}", applied.stream),
            Outcome::Updated { changed } => {
                println!("updated   {} ({})", applied.stream, changed.join(", "))
            }
            Outcome::Unchanged => println!("unchanged {}", applied.stream),
        }
    }
    Ok(())
}
