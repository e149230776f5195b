#!/usr/bin/env bash
# bench/run.sh [--quick] -> the gateway's added latency and throughput, JSON and streaming, against the same
# static nginx upstream called directly, with no limits, with a token limit on SQLite and on the Cosmos DB
# API server, and with every policy on (`all`); prints a markdown table (results in bench/results/) and each
# gateway process's RSS and PSS after its scenarios (MEMORY lines).
# One command: installs nginx and wrk from Debian if missing (root), builds .venv and node_modules if missing.
# Everything listens on 127.0.0.1; every load run is bounded by wrk -d.
set -euo pipefail
HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
ROOT="$(cd "$HERE/.." && pwd)"
H="$HERE/harness"
WORKERS=${WORKERS:-2}
VARIANTS=${VARIANTS:-"direct plain sqlite cosmos cache all"}  # which runs; e.g. VARIANTS=sqlite bench/run.sh --quick
# VARIANTS="direct plain all portkey" adds the Portkey gateway (npm, installed on first use) as a peer in the same run.
# USAGE=off turns usage recording off in every aigw variant (on by default, as in the product).
want() { [[ " $VARIANTS " == *" $1 "* ]]; }
# The server comparison: VARIANTS="plain granian uvicorn" REPEAT_C32=5 bench/run.sh --quick runs the plain
# pipeline on `aigw serve` (uvicorn, a socket per worker), granian and stock uvicorn (one shared socket) back to
# back, each followed by REPEAT_C32 more 5 s c32 runs with the connections per worker (balance).
REPEAT_C32=${REPEAT_C32:-0}
REPEAT_S=${REPEAT_S:-5}  # seconds per repeated c32 run
JSON_SC=${JSON_SC:-"1:10 32:15 128:15"}
STREAM_SC=${STREAM_SC:-"1:10 32:15 128:15"}
if [ "${1:-}" = "--quick" ]; then JSON_SC="1:5 32:5 128:5"; STREAM_SC="1:5 32:5"; export WARMUP=2; fi

if want granian && [ ! -x "$ROOT/.venv/bin/granian" ]; then "$ROOT/.venv/bin/pip" install -q granian==2.8.7; fi
if ! command -v nginx >/dev/null || ! command -v wrk >/dev/null; then
  apt-get update -qq && apt-get install -y -qq nginx wrk >/dev/null
fi
[ -x "$ROOT/.venv/bin/aigw" ] || "$ROOT/scripts/bootstrap"
if [ ! -x "$ROOT/node_modules/.bin/cosmosdb-server" ]; then
  (cd "$ROOT" && npm ci --no-audit --no-fund --loglevel=error && node scripts/patch-cosmosdb-server.cjs)
fi

WORK="$(mktemp -d /tmp/aigw-bench.XXXXXX)"
export NGINX_PREFIX="$WORK/nginx"
mkdir -p "$NGINX_PREFIX/logs" "$NGINX_PREFIX/tmp" "$HERE/results"
GW_PID=""; COSMOS_PID=""
# memory LABEL: RSS and PSS of each process of the running gateway (supervisor, workers), after its load.
memory() { python3 "$HERE/memory.py" "$1" "$GW_PID"; }
# memory_idle LABEL: the same, once every worker has started (healthz answers as soon as the first one has).
memory_idle() { sleep 3; memory "$1"; }
stop_gateway() { if [ -n "$GW_PID" ]; then kill "$GW_PID" 2>/dev/null || true; wait "$GW_PID" 2>/dev/null || true; GW_PID=""; fi; }
cleanup() {
  stop_gateway
  [ -n "$COSMOS_PID" ] && kill "$COSMOS_PID" 2>/dev/null
  [ -s "$NGINX_PREFIX/logs/upstream.pid" ] && kill "$(cat "$NGINX_PREFIX/logs/upstream.pid")" 2>/dev/null
  rm -rf "$WORK"
}
trap cleanup EXIT

nginx -p "$NGINX_PREFIX/" -c "$H/nginx-upstream.conf"
for _ in $(seq 1 50); do [ -s "$NGINX_PREFIX/logs/upstream.pid" ] && break; sleep 0.1; done
"$ROOT/node_modules/.bin/cosmosdb-server" -p 18081 --host 127.0.0.1 > "$WORK/cosmos.log" 2>&1 &
COSMOS_PID=$!

export BENCH_BACKEND_KEY=bench-backend-key BENCH_CLIENT_KEY=bench-client-key
export BENCH_COSMOS_KEY="C2y6yDjf5/R+ob0N8A7Cgv30VRDJIWEHLM+4QDU5DE2nQ9nDuVTqobD4b8mGGyPMbIZnqyMsEcaGQy67XIw/Jw=="
# shellcheck source=serving.sh
. "$HERE/serving.sh"  # gateway_yaml: the config every bench script uses (plain, all, cache, counters=URL)
# run_gateway VARIANT: `aigw serve` of gateway_yaml VARIANT, $WORKERS workers, once the first answers.
run_gateway() {
  gateway_yaml "$1" > "$WORK/gateway.yaml"
  (cd "$WORK" && exec "$ROOT/.venv/bin/aigw" serve --config "$WORK/gateway.yaml" --port 18080 --workers "$WORKERS") > "$WORK/gw.log" 2>&1 &
  GW_PID=$!
  for _ in $(seq 1 100); do curl -sf http://127.0.0.1:18080/healthz >/dev/null && break; sleep 0.1; done
}

# start_server granian|uvicorn: another server's own CLI serving the same ASGI app and config (the factory reads
# the config as `aigw serve` hands it over). `uvicorn` is stock uvicorn: its workers share one socket, as
# `aigw serve` did before each worker got its own; granian is a Rust HTTP server with its own workers.
start_server() {
  gateway_yaml plain > "$WORK/gateway.yaml"
  AIGW_SERVE_CONFIG_JSON="$(cd "$WORK" && "$ROOT/.venv/bin/python" -c 'import sys, orjson
from gateway_core.config import load_config
print(orjson.dumps(load_config(sys.argv[1]).model_dump(mode="json")).decode())' "$WORK/gateway.yaml")"
  export AIGW_SERVE_CONFIG_JSON
  if [ "$1" = granian ]; then
    (cd "$WORK" && exec "$ROOT/.venv/bin/granian" --interface asgi --factory aigw.asgi:create_app --host 127.0.0.1 \
      --port 18080 --workers "$WORKERS" --loop uvloop --http 1 --no-ws --log-level warning) > "$WORK/gw.log" 2>&1 &
  else
    (cd "$WORK" && exec "$ROOT/.venv/bin/uvicorn" --factory aigw.asgi:create_app --host 127.0.0.1 --port 18080 \
      --workers "$WORKERS" --loop uvloop --http httptools --no-access-log --log-level warning) > "$WORK/gw.log" 2>&1 &
  fi
  GW_PID=$!
  unset AIGW_SERVE_CONFIG_JSON
  for _ in $(seq 1 100); do curl -sf http://127.0.0.1:18080/healthz >/dev/null && break; sleep 0.1; done
}
# Established connections per worker process, sampled 2 s into a c32 run: "21 11" means 21 on one worker.
balance() {
  sleep 2
  echo "BALANCE label=$1 conns_per_worker=$(ss -Htnp state established '( sport = :18080 )' \
    | grep -o 'pid=[0-9]*' | sort | uniq -c | awk '{print $1}' | sort -rn | paste -sd/)"
}
# repeat_c32 LABEL: REPEAT_C32 more c32 runs of REPEAT_S seconds against the running gateway, with the balance of each.
repeat_c32() {
  for i in $(seq 1 "$REPEAT_C32"); do
    balance "$1-rep$i" &
    local sampler=$!
    bench -l "$1-rep$i" -g "$GW_PID" -w 0 -k -p "$AZ" -c "32:$REPEAT_S" -o "$CSV" http://127.0.0.1:18080 "$KEY"
    wait "$sampler"
  done
}

STAMP=$(date +%Y%m%d-%H%M%S)
CSV="$HERE/results/$STAMP.csv"
AZ="/openai/deployments/gpt-4o/chat/completions?api-version=2024-10-21"
AZS="/openai/deployments/gpt-4o-stream/chat/completions?api-version=2024-10-21"
KEY="api-key: $BENCH_CLIENT_KEY"
# The harness (bench/harness/, the one the peers were measured with, unchanged) exits non-zero after its last scenario, whatever happened.
bench() { "$H/bench.sh" "$@" || true; }
{
  echo "=== aigw bench $STAMP, $(nproc) cores, aigw workers=$WORKERS, $(git -C "$ROOT" rev-parse --short HEAD 2>/dev/null)"
  if want direct; then
    bench -l direct -p "/openai/deployments/gpt-4o/chat/completions" -c "$JSON_SC" -o "$CSV" http://127.0.0.1:18000
    bench -l direct-stream -s -p "/stream/openai/deployments/gpt-4o/chat/completions" -c "$STREAM_SC" -o "$CSV" http://127.0.0.1:18000
  fi
  if want plain; then
    run_gateway plain
    memory_idle "aigw-w$WORKERS-idle"
    bench -l "aigw-w$WORKERS" -g "$GW_PID" -p "$AZ" -c "$JSON_SC" -o "$CSV" http://127.0.0.1:18080 "$KEY"
    bench -l "aigw-w$WORKERS-stream" -s -g "$GW_PID" -p "$AZS" -c "$STREAM_SC" -o "$CSV" http://127.0.0.1:18080 "$KEY"
    repeat_c32 "aigw-w$WORKERS"
    memory "aigw-w$WORKERS"
    stop_gateway
  fi
  if want portkey; then
    # A peer that enforces nothing (no limits, no cache, no usage records), started the same way on the same
    # upstream, so "faster than a gateway that enforces nothing" is measured in the same run.
    GW_PID=$("$HERE/peers/start-portkey.sh" 18787 "$WORK/portkey.log")
    bench -l portkey -g "$GW_PID" -c "$JSON_SC" -o "$CSV" http://127.0.0.1:18787 "Authorization: Bearer bench" \
      "x-portkey-provider: openai" "x-portkey-custom-host: http://127.0.0.1:18000/v1"
    memory portkey
    stop_gateway
  fi
  for server in granian uvicorn; do
    want "$server" || continue
    start_server "$server"
    bench -l "$server-w$WORKERS" -g "$GW_PID" -p "$AZ" -c "$JSON_SC" -o "$CSV" http://127.0.0.1:18080 "$KEY"
    bench -l "$server-w$WORKERS-stream" -s -g "$GW_PID" -p "$AZS" -c "$STREAM_SC" -o "$CSV" http://127.0.0.1:18080 "$KEY"
    repeat_c32 "$server-w$WORKERS"
    memory "$server-w$WORKERS"
    stop_gateway
  done
  if want sqlite; then
    run_gateway "counters=sqlite:///$WORK/counters.db"
    bench -l "aigw-w$WORKERS-tpm-sqlite" -g "$GW_PID" -p "$AZ" -c "$JSON_SC" -o "$CSV" http://127.0.0.1:18080 "$KEY"
    bench -l "aigw-w$WORKERS-tpm-sqlite-stream" -s -g "$GW_PID" -p "$AZS" -c "$STREAM_SC" -o "$CSV" http://127.0.0.1:18080 "$KEY"
    memory "aigw-w$WORKERS-tpm-sqlite"
    stop_gateway
  fi
  if want cosmos; then
    # The emulator (Node) runs on the same 2 cores; its CPU is counted with the gateway's (-g).
    run_gateway "counters=cosmos://127.0.0.1:18081/bench?key_env=BENCH_COSMOS_KEY&create_if_missing=true"
    bench -l "aigw-w$WORKERS-tpm-cosmos" -g "$GW_PID,$COSMOS_PID" -p "$AZ" -c "$JSON_SC" -o "$CSV" http://127.0.0.1:18080 "$KEY"
    memory "aigw-w$WORKERS-tpm-cosmos"
    stop_gateway
  fi
  if want cache; then
    run_gateway cache
    bench -l "aigw-w$WORKERS-cache-hit" -g "$GW_PID" -p "$AZ" -c "$JSON_SC" -o "$CSV" http://127.0.0.1:18080 "$KEY"
    bench -l "aigw-w$WORKERS-cache-hit-stream" -s -g "$GW_PID" -p "$AZS" -c "$STREAM_SC" -o "$CSV" http://127.0.0.1:18080 "$KEY"
    memory "aigw-w$WORKERS-cache-hit"
    stop_gateway
  fi
  if want all; then
    # Every body different (harness/chat.lua, BENCH_UNIQUE=1): misses that are admitted, settled and stored.
    run_gateway all
    memory_idle "aigw-w$WORKERS-all-idle"
    BENCH_UNIQUE=1 bench -l "aigw-w$WORKERS-all" -g "$GW_PID" -p "$AZ" -c "$JSON_SC" -o "$CSV" http://127.0.0.1:18080 "$KEY"
    memory "aigw-w$WORKERS-all"
    stop_gateway
  fi
} 2>&1 | tee "$HERE/results/$STAMP.log"
python3 "$H/summarize.py" "$CSV" | tee "$HERE/results/$STAMP.md"
