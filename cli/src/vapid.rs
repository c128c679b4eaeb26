//! `switchboard vapid`: a new VAPID key pair for Web Push (docs/operations.md §4).
//!
//! Prints `SWITCHBOARD_VAPID_PRIVATE_KEY=<base64url raw 32 bytes>` and
//! `SWITCHBOARD_VAPID_PUBLIC_KEY=<base64url uncompressed point>`, the form web-push tools
//! print, for an env file the workers read. The private key is printed because making it
//! is the command's purpose; it is never an argument, so it stays out of process lists.

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use p256::SecretKey;
use p256::elliptic_curve::sec1::ToEncodedPoint;
use rand_core::OsRng;

const EXAMPLES: &str = r#"Examples:
  switchboard vapid >> /etc/switchboard/workers.env   (then chmod 600 it)
  switchboard vapid --json"#;

#[derive(Debug, clap::Args)]
#[command(after_help = EXAMPLES)]
pub struct Args {}

pub fn run(json: bool, _args: Args) -> anyhow::Result<()> {
    let secret = SecretKey::random(&mut OsRng);
    let private = URL_SAFE_NO_PAD.encode(secret.to_bytes());
    let public = URL_SAFE_NO_PAD.encode(secret.public_key().to_encoded_point(false).as_bytes());
    if json {
        println!(
            "{}",
            serde_json::json!({"private_key": private, "public_key": public})
        );
    } else {
        println!("SWITCHBOARD_VAPID_PRIVATE_KEY={private}");
        println!("SWITCHBOARD_VAPID_PUBLIC_KEY={public}");
        eprintln!(
            "switchboard: keep the private key secret (mode 0600); set SWITCHBOARD_VAPID_SUBJECT=mailto:<you> too"
        );
    }
    Ok(())
}
