//! `switchboard keys`: the NATS role seeds (docs/operations.md, "NATS roles").
//!
//! Makes each role's NKey seed once, in a directory of its own (files mode 0600, kept
//! across runs), and prints the public keys as `SWITCHBOARD_NATS_<ROLE>_PUBKEY=U...`
//! lines: the environment `nats/auth.conf` reads them from. Seeds are never printed.

use std::path::PathBuf;

use anyhow::Context as _;
use switchboard_bus::{Role, RoleKeys};

const EXAMPLES: &str = r#"Examples:
  switchboard keys --dir /etc/switchboard/nats-keys > /etc/switchboard/nats-pubkeys.env
  switchboard keys --dir .data/nats-keys --role service
  SWITCHBOARD_NATS_NKEY=.data/nats-keys/service.nk my-backend"#;

#[derive(Debug, clap::Args)]
#[command(after_help = EXAMPLES)]
pub struct Args {
    /// Directory of the seed files (`<role>.nk`); made with mode 0700 when missing.
    #[arg(long, value_name = "DIR")]
    dir: PathBuf,
    /// Only these roles (comma separated): edge, workers, service, admin (default: all).
    #[arg(long, value_delimiter = ',', value_parser = crate::parse_role)]
    role: Vec<Role>,
}

pub fn run(json: bool, args: Args) -> anyhow::Result<()> {
    let keys = RoleKeys::new(&args.dir);
    let roles = if args.role.is_empty() {
        Role::ALL.to_vec()
    } else {
        args.role
    };
    let mut public = Vec::new();
    for role in roles {
        let key = keys
            .ensure(role)
            .with_context(|| format!("the {role} seed in {}", args.dir.display()))?;
        public.push((role, key));
    }
    if json {
        let object: serde_json::Map<String, serde_json::Value> = public
            .iter()
            .map(|(role, key)| {
                let entry = serde_json::json!({
                    "public_key": key,
                    "seed_file": keys.seed_path(*role),
                });
                (role.name().to_string(), entry)
            })
            .collect();
        println!("{}", serde_json::Value::Object(object));
    } else {
        for (role, key) in &public {
            println!("{}={key}", role.public_key_variable());
        }
        eprintln!(
            "switchboard: seeds in {} (mode 0600); give each process its role's file in SWITCHBOARD_NATS_NKEY",
            args.dir.display()
        );
    }
    Ok(())
}
