//! `switchboard vapid`: a key pair the workers accept, printed as env lines or JSON.

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use p256::elliptic_curve::sec1::ToEncodedPoint;

fn vapid(args: &[&str]) -> String {
    let output = std::process::Command::new(env!("CARGO_BIN_EXE_switchboard"))
        .args(args)
        .arg("vapid")
        .output()
        .unwrap();
    assert!(output.status.success(), "{output:?}");
    String::from_utf8(output.stdout).unwrap()
}

/// The public key belongs to the private key, in the forms Web Push uses.
fn assert_pair(private: &str, public: &str) {
    let secret = p256::SecretKey::from_slice(&URL_SAFE_NO_PAD.decode(private).unwrap()).unwrap();
    let point = secret.public_key().to_encoded_point(false);
    assert_eq!(URL_SAFE_NO_PAD.decode(public).unwrap(), point.as_bytes());
    assert_eq!(point.as_bytes().len(), 65);
}

#[test]
fn vapid_prints_a_fresh_pair() {
    let text = vapid(&[]);
    let value = |name: &str| {
        text.lines()
            .find_map(|line| line.strip_prefix(&format!("{name}=")))
            .unwrap()
            .to_string()
    };
    let private = value("SWITCHBOARD_VAPID_PRIVATE_KEY");
    assert_pair(&private, &value("SWITCHBOARD_VAPID_PUBLIC_KEY"));

    let json: serde_json::Value = serde_json::from_str(&vapid(&["--json"])).unwrap();
    let other = json["private_key"].as_str().unwrap();
    assert_pair(other, json["public_key"].as_str().unwrap());
    assert_ne!(other, private, "each run makes a new key");
}
