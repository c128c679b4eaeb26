//! Every Switchboard process reaches NATS over TLS, trusting only a CA made for the test
//! (by `scripts/nats-certs`, the command operators use), and a client that does not
//! speak TLS is refused. A server that verifies clients admits only processes that show
//! the client certificate (`SWITCHBOARD_NATS_TLS_CERT`, `SWITCHBOARD_NATS_TLS_KEY`).

mod support;

use std::time::Duration;

use support::*;
use switchboard_testkit::Nats;

/// [`a_cli_publish_reaches_a_socket`] with each process connected as its own role with
/// `nats`'s settings plus `extra`; the server saw no authorization violation.
async fn every_process_works_over(nats: &Nats, extra: &[(String, String)]) {
    let env = |role| {
        let mut env = nats.env(role);
        env.extend(extra.iter().cloned());
        env
    };
    a_cli_publish_reaches_a_socket(
        &env(Role::Admin),
        env(Role::Workers),
        &env(Role::Edge),
        String::new,
    )
    .await;
    assert!(nats.violations().is_empty(), "{:?}", nats.violations());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn edge_workers_and_cli_work_through_tls_to_nats() {
    let nats = tokio::task::block_in_place(Nats::start_tls).expect("start nats-server with TLS");
    assert!(nats.url().starts_with("tls://"));

    // Without TLS (and the CA) nothing gets in, even with a valid seed.
    let mut plain = nats.options(Role::Admin);
    plain.url = plain.url.replace("tls://", "nats://");
    plain.tls_ca = None;
    let refused = plain
        .connect_options(Role::Admin, "plain")
        .await
        .unwrap()
        .connection_timeout(Duration::from_secs(2))
        .connect(plain.servers())
        .await;
    assert!(
        refused.is_err(),
        "a plain client got into a TLS-only server"
    );

    every_process_works_over(&nats, &[]).await;
    println!("over TLS: the workers mirrored a membership, the edge delivered a CLI publish");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_server_that_verifies_clients_admits_only_holders_of_the_client_certificate() {
    let mut nats =
        tokio::task::block_in_place(Nats::start_tls).expect("start nats-server with TLS");
    // The same server, now verifying clients against the test CA.
    let config = nats.dir().join("nats.conf");
    let text = std::fs::read_to_string(&config).unwrap();
    assert_eq!(text.matches("  timeout: 2\n}").count(), 1, "{text}");
    std::fs::write(
        &config,
        text.replace("  timeout: 2\n}", "  timeout: 2\n  verify: true\n}"),
    )
    .unwrap();
    tokio::task::block_in_place(|| nats.start_again()).expect("restart with verify");
    let certs = nats.certs_dir().unwrap().to_path_buf();

    // The CA and a valid seed are not enough any more (the same command succeeds below
    // with the certificate).
    let refused = cli(&nats.env(Role::Admin), &["init"]);
    assert!(
        !refused.status.success(),
        "a client without a certificate got in: {}",
        String::from_utf8_lossy(&refused.stdout)
    );
    // Nor is half a client certificate: a refusal naming both settings.
    let mut half = nats.env(Role::Admin);
    half.push((
        "SWITCHBOARD_NATS_TLS_CERT".into(),
        certs.join("client.pem").display().to_string(),
    ));
    let said = cli(&half, &["status"]);
    assert!(!said.status.success());
    let stderr = String::from_utf8_lossy(&said.stderr);
    assert!(stderr.contains("SWITCHBOARD_NATS_TLS_KEY"), "{stderr}");

    let client_certificate = [
        (
            "SWITCHBOARD_NATS_TLS_CERT".to_string(),
            certs.join("client.pem").display().to_string(),
        ),
        (
            "SWITCHBOARD_NATS_TLS_KEY".to_string(),
            certs.join("client-key.pem").display().to_string(),
        ),
    ];
    every_process_works_over(&nats, &client_certificate).await;
    println!(
        "mutual TLS: refused without a client certificate; with it the CLI, the workers and \
         the edge worked"
    );
}
