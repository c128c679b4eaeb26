//! What ships for deployment holds to the trust boundary (docs/operations.md, section
//! 11), checked on the files themselves since Docker does not run here: no compose file
//! carries a default secret, NATS is published on loopback only and always runs the
//! roles of `nats/auth.conf`, and every Switchboard process connects with its role's seed.

use std::path::Path;

fn read(path: &str) -> String {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    std::fs::read_to_string(root.join(path)).unwrap_or_else(|e| panic!("{path}: {e}"))
}

const COMPOSE_FILES: [&str; 2] = ["docker-compose.yml", "docker-compose.cluster.yml"];

/// The services of a compose file: name and the lines of its block.
fn services(text: &str) -> Vec<(String, String)> {
    let mut services = Vec::new();
    let mut inside = false;
    for line in text.lines() {
        if line == "services:" {
            inside = true;
            continue;
        }
        if inside && !line.starts_with(' ') && !line.trim().is_empty() {
            inside = false;
        }
        if !inside {
            continue;
        }
        if let Some(name) = line.strip_prefix("  ").and_then(|l| l.strip_suffix(':'))
            && !name.starts_with(' ')
            && !name.starts_with('#')
        {
            services.push((name.to_string(), String::new()));
        } else if let Some((_, block)) = services.last_mut() {
            block.push_str(line);
            block.push('\n');
        }
    }
    services
}

#[test]
fn compose_files_carry_no_default_secret() {
    for file in COMPOSE_FILES {
        let text = read(file);
        for (at, _) in text.match_indices("${") {
            let reference = &text[at..at + text[at..].find('}').unwrap()];
            let name = reference[2..]
                .split([':', '-', '?'])
                .next()
                .unwrap_or_default();
            let secret = ["SECRET", "PASSWORD", "KEY", "TOKEN"]
                .iter()
                .any(|word| name.contains(word));
            if secret {
                assert!(
                    reference.contains(":?"),
                    "{file}: {reference}}} must require the value, not default it"
                );
            }
        }
        assert!(
            !text.contains("change-me"),
            "{file} holds a placeholder secret"
        );
    }
}

#[test]
fn compose_nats_runs_the_roles_and_listens_on_loopback_only() {
    for file in COMPOSE_FILES {
        let text = read(file);
        let (mut nats_services, mut processes) = (0, 0);
        for (name, block) in services(&text) {
            if block.contains("nats-server -c") {
                nats_services += 1;
                assert!(
                    block.contains("./nats/auth.conf:/etc/nats/auth.conf:ro"),
                    "{file}: {name} does not mount nats/auth.conf"
                );
                assert!(
                    block.contains(". /keys/pubkeys.env"),
                    "{file}: {name} does not read the roles' public keys"
                );
                for line in block.lines().filter(|l| l.contains(":4222\"")) {
                    assert!(
                        line.contains("\"127.0.0.1:"),
                        "{file}: {name} publishes NATS beyond loopback: {line}"
                    );
                }
            }
            let switchboard = [
                "switchboard-edge",
                "switchboard-workers",
                "switchboard init",
            ]
            .iter()
            .any(|command| block.contains(command));
            if switchboard {
                processes += 1;
                assert!(
                    block.contains("SWITCHBOARD_NATS_NKEY: /keys/seeds/"),
                    "{file}: {name} connects to NATS without a role's seed"
                );
            }
        }
        assert!(nats_services >= 1, "{file}: no nats-server found");
        assert!(
            processes >= 3,
            "{file}: init, edge and workers not all found"
        );
    }
}

#[test]
fn every_shipped_server_config_includes_the_roles() {
    assert!(read("nats/nats-server.conf").contains("include \"auth.conf\""));
    for node in 1..=3 {
        let config = read(&format!("nats/cluster/n{node}.conf"));
        assert!(config.contains("include \"../auth.conf\""), "n{node}");
        // TLS for clients and for routes, which verify each other's certificates.
        assert_eq!(config.matches("tls {").count(), 2, "n{node}");
        assert!(config.contains("verify: true"), "n{node}");
    }
}
