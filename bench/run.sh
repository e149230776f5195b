#!/usr/bin/env bash
# bench/run.sh [--quick] -> the gateway's added latency and throughput, JSON and streaming, against the same
# static nginx upstream called directly; prints a markdown table (results in bench/results/).
# One command: installs nginx and wrk from Debian if missing (root), builds .venv if missing.
# Everything listens on 127.0.0.1; every load run is bounded by wrk -d.
set -euo pipefail
HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
ROOT="$(cd "$HERE/.." && pwd)"
H="$HERE/harness"
WORKERS=${WORKERS:-2}
JSON_SC=${JSON_SC:-"1:10 32:15 128:15"}
STREAM_SC=${STREAM_SC:-"1:10 32:15 128:15"}
if [ "${1:-}" = "--quick" ]; then JSON_SC="1:5 32:5 128:5"; STREAM_SC="1:5 32:5 128:5"; export WARMUP=2; fi

if ! command -v nginx >/dev/null || ! command -v wrk >/dev/null; then
  apt-get update -qq && apt-get install -y -qq nginx wrk >/dev/null
fi
[ -x "$ROOT/.venv/bin/aigw" ] || "$ROOT/scripts/bootstrap"

WORK="$(mktemp -d /tmp/aigw-bench.XXXXXX)"
export NGINX_PREFIX="$WORK/nginx"
mkdir -p "$NGINX_PREFIX/logs" "$NGINX_PREFIX/tmp" "$HERE/results"
GW_PID=""
cleanup() {
  [ -n "$GW_PID" ] && kill "$GW_PID" 2>/dev/null && wait "$GW_PID" 2>/dev/null
  [ -s "$NGINX_PREFIX/logs/upstream.pid" ] && kill "$(cat "$NGINX_PREFIX/logs/upstream.pid")" 2>/dev/null
  rm -rf "$WORK"
}
trap cleanup EXIT

nginx -p "$NGINX_PREFIX/" -c "$H/nginx-upstream.conf"
for _ in $(seq 1 50); do [ -s "$NGINX_PREFIX/logs/upstream.pid" ] && break; sleep 0.1; done

# The gateway: one Azure-type backend on the static upstream (JSON under /, SSE under /stream).
export BENCH_BACKEND_KEY=bench-backend-key BENCH_CLIENT_KEY=bench-client-key
cat > "$WORK/gateway.yaml" <<YAML
backends:
  - name: nginx
    url: http://127.0.0.1:18000
    auth: {type: api_key, key_env: BENCH_BACKEND_KEY}
    deployments: [gpt-4o]
  - name: nginx-stream
    url: http://127.0.0.1:18000/stream
    auth: {type: api_key, key_env: BENCH_BACKEND_KEY}
    deployments: [gpt-4o-stream]
keys:
  - {name: bench, key_env: BENCH_CLIENT_KEY, user: bench, tenant: bench}
YAML
"$ROOT/.venv/bin/aigw" serve --config "$WORK/gateway.yaml" --port 18080 --workers "$WORKERS" > "$WORK/gw.log" 2>&1 &
GW_PID=$!
for _ in $(seq 1 100); do curl -sf http://127.0.0.1:18080/healthz >/dev/null && break; sleep 0.1; done

STAMP=$(date +%Y%m%d-%H%M%S)
CSV="$HERE/results/$STAMP.csv"
AZ="/openai/deployments/gpt-4o/chat/completions?api-version=2024-10-21"
AZS="/openai/deployments/gpt-4o-stream/chat/completions?api-version=2024-10-21"
KEY="api-key: $BENCH_CLIENT_KEY"
# The harness is the shared one, unchanged; it exits non-zero after its last scenario, whatever happened.
bench() { "$H/bench.sh" "$@" || true; }
{
  echo "=== aigw bench $STAMP, $(nproc) cores, aigw workers=$WORKERS, $(git -C "$ROOT" rev-parse --short HEAD 2>/dev/null)"
  bench -l direct -p "/openai/deployments/gpt-4o/chat/completions" -c "$JSON_SC" -o "$CSV" http://127.0.0.1:18000
  bench -l direct-stream -s -p "/stream/openai/deployments/gpt-4o/chat/completions" -c "$STREAM_SC" -o "$CSV" http://127.0.0.1:18000
  bench -l "aigw-w$WORKERS" -g "$GW_PID" -p "$AZ" -c "$JSON_SC" -o "$CSV" http://127.0.0.1:18080 "$KEY"
  bench -l "aigw-w$WORKERS-stream" -s -g "$GW_PID" -p "$AZS" -c "$STREAM_SC" -o "$CSV" http://127.0.0.1:18080 "$KEY"
} 2>&1 | tee "$HERE/results/$STAMP.log"
python3 "$H/summarize.py" "$CSV" | tee "$HERE/results/$STAMP.md"
