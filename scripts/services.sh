#!/usr/bin/env bash
# `make services`: install what is missing and start the real servers the
# tests and benchmarks use. Idempotent: a service already answering on its
# port is left alone; installs are cached under $TOOLS.
#
#   Kafka-protocol broker  tansu (crates.io), sqlite engine   PILLOWTOP_KAFKA_BROKERS  127.0.0.1:19092
#   PostgreSQL             Debian's package if absent         PILLOWTOP_PG_URL         postgres://postgres@127.0.0.1:5432/pillowtop_test
#   Elasticsearch API      osmem-server (PyPI), in memory     PILLOWTOP_ES_URL         http://127.0.0.1:19200
#   Headless browser       Debian's chromium package          PILLOWTOP_CHROMIUM       /usr/bin/chromium
#
# Logs and pid files go to $STATE (default ~/.cache/pillowtop/services).
# tansu runs its sqlite engine: its memory engine reports a partition's end
# offset (ListOffsets latest) a batch behind, which breaks lag and
# `--until-caught-up`; the sqlite engine reports it exactly and publishes
# about 17k changes/s here. Each start begins with an empty broker. Tests
# that restart the broker start their own tansu from $TOOLS/bin/tansu.
set -euo pipefail

TOOLS="${TOOLS:-$HOME/.cache/pillowtop/tools}"
STATE="${STATE:-$HOME/.cache/pillowtop/services}"
TANSU_VERSION="${TANSU_VERSION:-0.6.0}"
OSMEM_VERSION="${OSMEM_VERSION:-0.1.6}"
KAFKA="${PILLOWTOP_KAFKA_BROKERS:-127.0.0.1:19092}"
PG_URL="${PILLOWTOP_PG_URL:-postgres://postgres@127.0.0.1:5432/pillowtop_test}"
ES_URL="${PILLOWTOP_ES_URL:-http://127.0.0.1:19200}"
CHROMIUM="${PILLOWTOP_CHROMIUM:-/usr/bin/chromium}"
mkdir -p "$TOOLS" "$STATE"

say() { echo "services: $*" >&2; }

# True when something accepts TCP connections on host:port.
listening() {
  local host="${1%:*}" port="${1##*:}"
  (exec 3<>"/dev/tcp/$host/$port") 2>/dev/null
}

# Wait up to $2 seconds for $1 (host:port) to accept connections.
wait_for() {
  local addr="$1" seconds="$2" name="$3" log="$4"
  for _ in $(seq $((seconds * 10))); do
    listening "$addr" && return 0
    sleep 0.1
  done
  say "$name did not start on $addr within ${seconds}s; last lines of $log:"
  tail -n 20 "$log" >&2 || true
  exit 1
}

# --- Kafka-protocol broker: tansu ----------------------------------------
tansu_bin="$TOOLS/bin/tansu"
if ! "$tansu_bin" --version 2>/dev/null | grep -q "$TANSU_VERSION"; then
  say "installing tansu $TANSU_VERSION (cargo install, about 7 minutes on 2 cores; cached in $TOOLS)"
  CARGO_TARGET_DIR="$STATE/tansu-build" cargo install tansu --version "$TANSU_VERSION" \
    --locked --features dynostore,libsql --root "$TOOLS"
  rm -rf "$STATE/tansu-build"
fi
if listening "$KAFKA"; then
  say "Kafka broker already answering on $KAFKA"
else
  say "starting tansu (sqlite engine, $STATE/tansu) on $KAFKA"
  rm -rf "$STATE/tansu" && mkdir -p "$STATE/tansu"
  # The sqlite engine's path is relative to the working directory.
  (cd "$STATE/tansu" && exec nohup "$tansu_bin" broker \
    --listener-url "tcp://$KAFKA" --advertised-listener-url "tcp://$KAFKA" \
    --storage-engine sqlite://tansu.db >"$STATE/tansu.log" 2>&1) &
  echo $! >"$STATE/tansu.pid"
  wait_for "$KAFKA" 30 tansu "$STATE/tansu.log"
fi

# --- PostgreSQL -------------------------------------------------------------
pg_hostport="$(echo "$PG_URL" | sed -E 's#^postgres(ql)?://([^@/]*@)?([^/?]+).*#\3#')"
pg_db="$(echo "$PG_URL" | sed -E 's#^[^/]*//[^/]+/([^?]+).*#\1#')"
if ! listening "$pg_hostport"; then
  if ! ls /etc/postgresql/*/main >/dev/null 2>&1; then
    say "installing PostgreSQL from Debian's packages"
    SUDO=""; [ "$(id -u)" -eq 0 ] || SUDO=sudo
    $SUDO apt-get update -qq
    DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq postgresql >/dev/null
    # Tests connect over TCP without a password, as on the CI machines.
    for hba in /etc/postgresql/*/main/pg_hba.conf; do
      $SUDO sed -i -E 's/^(host\s+all\s+all\s+(127\.0\.0\.1\/32|::1\/128)\s+)\S+/\1trust/' "$hba"
    done
  fi
  say "starting PostgreSQL"
  pg_ctlcluster --skip-systemctl-redirect "$(ls /etc/postgresql | sort -V | tail -n 1)" main start
  wait_for "$pg_hostport" 30 PostgreSQL /dev/null
fi
if ! psql "${PG_URL%/*}/postgres" -tAc "SELECT 1 FROM pg_database WHERE datname = '$pg_db'" | grep -q 1; then
  say "creating database $pg_db"
  psql "${PG_URL%/*}/postgres" -qc "CREATE DATABASE \"$pg_db\""
fi
say "PostgreSQL ready: $PG_URL"

# --- Elasticsearch-API server: osmem-server -----------------------------------
es_addr="${ES_URL#http://}"
es_addr="${es_addr%%/*}"
osmem="$TOOLS/py/lib/python3.11/site-packages/osmem_server/bin/osmem-server"
if [ ! -x "$osmem" ]; then
  say "installing osmem-server $OSMEM_VERSION (PyPI)"
  [ -x "$TOOLS/py/bin/pip" ] || python3 -m venv "$TOOLS/py"
  "$TOOLS/py/bin/pip" install --quiet --disable-pip-version-check "osmem-server==$OSMEM_VERSION"
  osmem="$("$TOOLS/py/bin/python" -c 'import osmem_server, os; print(os.path.join(os.path.dirname(osmem_server.__file__), "bin", "osmem-server"))')"
fi
if listening "$es_addr"; then
  say "Elasticsearch-API server already answering on $es_addr"
else
  say "starting osmem-server on $es_addr"
  nohup "$osmem" -addr "$es_addr" -no-stdin-watch >"$STATE/osmem.log" 2>&1 &
  echo $! >"$STATE/osmem.pid"
  wait_for "$es_addr" 30 osmem-server "$STATE/osmem.log"
fi

# --- Headless browser for the status page tests: Debian's chromium ------------
if [ ! -x "$CHROMIUM" ]; then
  say "installing chromium from Debian's packages (for the status page tests)"
  SUDO=""; [ "$(id -u)" -eq 0 ] || SUDO=sudo
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq chromium >/dev/null
  CHROMIUM=/usr/bin/chromium
fi
say "Chromium ready: $("$CHROMIUM" --version 2>/dev/null || echo "$CHROMIUM")"

cat <<EOF
services ready:
  PILLOWTOP_KAFKA_BROKERS=$KAFKA
  PILLOWTOP_PG_URL=$PG_URL
  PILLOWTOP_ES_URL=$ES_URL
  PILLOWTOP_TANSU=$tansu_bin
  PILLOWTOP_CHROMIUM=$CHROMIUM
EOF
