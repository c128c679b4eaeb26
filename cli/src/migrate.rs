//! `switchboard migrate`: apply the PostgreSQL migrations of `migrations/`.

use anyhow::Context;
use sqlx::Connection;

use crate::output;

#[derive(Debug, clap::Args)]
pub struct Args {
    /// PostgreSQL URL.
    #[arg(long, env = "DATABASE_URL", hide_env_values = true)]
    database_url: String,
}

pub async fn run(json: bool, args: Args) -> anyhow::Result<()> {
    let mut conn = sqlx::PgConnection::connect(&args.database_url)
        .await
        .context("cannot connect to PostgreSQL (set --database-url or DATABASE_URL)")?;
    let migrator = sqlx::migrate!("../migrations");
    migrator
        .run(&mut conn)
        .await
        .context("applying migrations")?;
    let versions: Vec<i64> = migrator.iter().map(|m| m.version).collect();
    if json {
        output::json(&serde_json::json!({ "applied_through": versions.last() }))
    } else {
        println!(
            "migrations applied through version {}",
            versions.last().map_or_else(|| "-".into(), i64::to_string)
        );
        Ok(())
    }
}
