//! Collects the values written in the project's shipped text files (README, docs/,
//! compose files, scripts/, nats/, deploy/, web/, clients/) and embeds their SHA-256
//! digests, so the edge can refuse a `SWITCHBOARD_JWT_SECRET` that anybody can read
//! there (a compose default, a documentation example) without the repository at run
//! time and without carrying the values themselves (docs/operations.md, "Token keys").
//!
//! Only candidates of at least 32 bytes are kept: shorter secrets are refused by length.

use std::collections::BTreeSet;
use std::fmt::Write as _;
use std::path::{Path, PathBuf};

use sha2::{Digest as _, Sha256};

/// The secret length rule of `src/auth.rs`; shorter values need no digest.
const MIN_SECRET_BYTES: usize = 32;
/// Larger files are data, not documentation.
const MAX_FILE_BYTES: u64 = 1024 * 1024;
/// Directories walked under the workspace root.
const DIRS: [&str; 6] = ["docs", "scripts", "nats", "deploy", "web", "clients"];
/// Directories never walked (built or fetched, not written by the project).
const SKIP_DIRS: [&str; 4] = ["node_modules", "target", ".git", "dist"];

fn main() {
    println!("cargo::rerun-if-changed=build.rs");
    let root =
        PathBuf::from(std::env::var_os("CARGO_MANIFEST_DIR").expect("set by cargo")).join("..");
    let mut files = Vec::new();
    if let Ok(entries) = std::fs::read_dir(&root) {
        for entry in entries.flatten() {
            let name = entry.file_name().to_string_lossy().into_owned();
            let shipped = name.ends_with(".md")
                || name == "Dockerfile"
                || (name.starts_with("docker-compose") && name.ends_with(".yml"))
                || name.ends_with(".env.example");
            if shipped && entry.path().is_file() {
                files.push(entry.path());
            }
        }
    }
    for dir in DIRS {
        let path = root.join(dir);
        if path.is_dir() {
            walk(&path, &mut files);
        }
    }
    files.sort();
    let mut values = BTreeSet::new();
    for file in &files {
        println!("cargo::rerun-if-changed={}", file.display());
        let Ok(text) = std::fs::read_to_string(file) else {
            continue; // not text
        };
        candidates(&text, &mut values);
    }
    for dir in DIRS {
        let path = root.join(dir);
        if path.is_dir() {
            println!("cargo::rerun-if-changed={}", path.display());
        }
    }
    let mut digests: Vec<[u8; 32]> = values
        .iter()
        .map(|v| Sha256::digest(v.as_bytes()).into())
        .collect();
    digests.sort();
    digests.dedup();
    let mut out = String::new();
    writeln!(
        out,
        "/// SHA-256 of each value of at least {MIN_SECRET_BYTES} bytes in {} shipped files, sorted.",
        files.len()
    )
    .unwrap();
    writeln!(
        out,
        "pub(super) static DIGESTS: [[u8; 32]; {}] = [",
        digests.len()
    )
    .unwrap();
    for digest in &digests {
        writeln!(out, "    {digest:?},").unwrap();
    }
    writeln!(out, "];").unwrap();
    let dest =
        PathBuf::from(std::env::var_os("OUT_DIR").expect("set by cargo")).join("known_values.rs");
    std::fs::write(dest, out).expect("write known_values.rs");
}

fn walk(dir: &Path, files: &mut Vec<PathBuf>) {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return;
    };
    for entry in entries.flatten() {
        let path = entry.path();
        let name = entry.file_name();
        let Ok(kind) = entry.file_type() else {
            continue;
        };
        if kind.is_dir() {
            if !SKIP_DIRS.iter().any(|skip| name == *skip) {
                walk(&path, files);
            }
        } else if kind.is_file() && entry.metadata().is_ok_and(|m| m.len() <= MAX_FILE_BYTES) {
            files.push(path);
        }
    }
}

/// Every way a value may be written: whole words, quoted strings (which may hold
/// spaces), and what follows `=` or `:` in `KEY=value`, `key: value` and
/// `${VAR:-default}`.
fn candidates(text: &str, out: &mut BTreeSet<String>) {
    for line in text.lines() {
        for quote in ['"', '\'', '`'] {
            for (i, inside) in line.split(quote).enumerate() {
                if i % 2 == 1 {
                    keep(inside, out);
                    keep(inside.trim(), out);
                }
            }
        }
        for word in line.split_whitespace() {
            let word = trim(word);
            keep(word, out);
            for (at, c) in word.char_indices() {
                if c == '=' || c == ':' {
                    let rest = trim(&word[at + 1..]);
                    keep(rest, out);
                    // Shell and compose default/required markers: `:-x`, `:?x`, `:=x`.
                    keep(trim(rest.trim_start_matches(['-', '?', '=', '+'])), out);
                }
            }
        }
    }
}

fn trim(word: &str) -> &str {
    word.trim_matches(|c: char| "\"'`,;()[]{}<>$".contains(c))
}

fn keep(value: &str, out: &mut BTreeSet<String>) {
    if value.len() >= MIN_SECRET_BYTES {
        out.insert(value.to_owned());
    }
}
