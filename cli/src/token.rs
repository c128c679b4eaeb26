//! `switchboard token`: mint a development token (HS256) with the configured secret.
//!
//! The claims are `schemas::shapes::Claims`, the same type the edge reads, so a token
//! minted here is one the edge accepts (given the same secret, issuer and audience).
//! Only the token is printed, so `$(switchboard token --sub u1)` works in a shell.

use std::time::Duration;

use anyhow::Context as _;
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use switchboard_schemas::shapes::{Audience, Claims, Role};
use switchboard_schemas::{ChannelPattern, UserId};

use crate::{output, when};

/// The edge refuses shorter HS256 secrets.
const MIN_SECRET_LEN: usize = 32;

const EXAMPLES: &str = r#"Examples:
  switchboard token --sub u1
  switchboard token --sub u1 --ttl 15m --channels project:p1,domain:*
  switchboard token --sub billing --role service --ttl 1d
  curl -H "Authorization: Bearer $(switchboard token --sub u1)" http://127.0.0.1:8080/v1/poll?ch=user:u1"#;

#[derive(Debug, Clone, Copy, clap::ValueEnum)]
enum RoleArg {
    /// An end user.
    User,
    /// A backend: may subscribe anywhere and use POST /v1/publish.
    Service,
}

#[derive(Debug, clap::Args)]
#[command(after_help = EXAMPLES)]
pub struct Args {
    /// The user id (claim `sub`): 1 to 128 characters of [A-Za-z0-9_-].
    #[arg(long, value_name = "USER", value_parser = |s: &str| UserId::parse(s).map_err(|e| e.to_string()))]
    sub: UserId,
    /// How long the token is valid: 90s, 15m, 1h, 7d, ...
    #[arg(long, value_name = "DURATION", default_value = "1h", value_parser = when::parse_duration)]
    ttl: Duration,
    /// Channel patterns the token grants, comma separated: project:p1, domain:*, *.
    #[arg(long, value_name = "PATTERNS", value_delimiter = ',', value_parser = ChannelPattern::parse)]
    channels: Vec<ChannelPattern>,
    #[arg(long, value_enum, default_value = "user")]
    role: RoleArg,
    /// Display name (claim `name`).
    #[arg(long)]
    name: Option<String>,
    /// Issuer (claim `iss`); the edge checks it when SWITCHBOARD_JWT_ISSUER is set.
    #[arg(long, value_name = "ISSUER")]
    iss: Option<String>,
    /// Audience (claim `aud`, repeatable); the edge checks it when
    /// SWITCHBOARD_JWT_AUDIENCE is set.
    #[arg(long, value_name = "AUDIENCE")]
    aud: Vec<String>,
    /// The HS256 secret shared with the edge, at least 32 bytes.
    #[arg(long, env = "SWITCHBOARD_JWT_SECRET", hide_env_values = true)]
    secret: Option<String>,
}

pub fn run(json: bool, args: Args) -> anyhow::Result<()> {
    let secret = args.secret.as_deref().context(
        "no secret: set SWITCHBOARD_JWT_SECRET to the edge's (scripts/up prints it in .data/stack.env)",
    )?;
    anyhow::ensure!(
        secret.len() >= MIN_SECRET_LEN,
        "SWITCHBOARD_JWT_SECRET is {} bytes; the edge needs at least {MIN_SECRET_LEN}",
        secret.len()
    );
    let now = time::OffsetDateTime::now_utc().unix_timestamp();
    let ttl = i64::try_from(args.ttl.as_secs()).context("--ttl is too long")?;
    let claims = Claims {
        sub: args.sub.to_string(),
        exp: now.checked_add(ttl).context("--ttl is too long")?,
        nbf: None,
        iss: args.iss,
        aud: match args.aud.len() {
            0 => None,
            1 => args.aud.into_iter().next().map(Audience::One),
            _ => Some(Audience::Many(args.aud)),
        },
        name: args.name,
        role: match args.role {
            RoleArg::User => Role::User,
            RoleArg::Service => Role::Service,
        },
        channels: args.channels,
    };
    let token = jsonwebtoken::encode(
        &Header::new(Algorithm::HS256),
        &claims,
        &EncodingKey::from_secret(secret.as_bytes()),
    )
    .context("cannot sign the token")?;
    if json {
        output::json(&serde_json::json!({ "token": token, "claims": claims }))
    } else {
        println!("{token}");
        Ok(())
    }
}
