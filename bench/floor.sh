#!/usr/bin/env bash
# bench/floor.sh -> the floor under any gateway on aigw's stack, on this machine: wrk c1 and c32 (the harness's
# chat request, unique bodies as in ab.sh) against, in turn: `direct` (the static nginx upstream itself, so one run
# gives the added latency), `answer` (stock uvicorn --workers 2 --loop uvloop --http httptools serving
# bench/floor_app.py, which answers the fixed chat completion itself: the HTTP server alone), `proxy` (the same app
# POSTing each body to the upstream with aiohttp: the two HTTP exchanges of every gateway request, nothing between)
# and `aigw` (`aigw serve` plain). ROUNDS (default 2) rounds, the sides alternating.
set -euo pipefail
HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
ROOT="$(cd "$HERE/.." && pwd)"
H="$HERE/harness"
# shellcheck source=serving.sh
. "$HERE/serving.sh"
serve_setup floor
for round in $(seq 1 "${ROUNDS:-2}"); do
  for side in direct answer proxy aigw; do
    port=18080
    if [ "$side" = direct ]; then
      port=18000
    elif [ "$side" = aigw ]; then
      gateway_yaml plain > "$WORK/gateway.yaml"
      start_gateway 2
    else
      (cd "$HERE" && FLOOR="$side" exec "$ROOT/.venv/bin/uvicorn" --factory floor_app:create_app --host 127.0.0.1 \
        --port 18080 --workers 2 --loop uvloop --http httptools --no-access-log --log-level warning) > "$WORK/gw.log" 2>&1 &
      GW_PID=$!
      for _ in $(seq 1 100); do curl -sf -X POST -d '{}' http://127.0.0.1:18080/ >/dev/null && break; sleep 0.1; done
      sleep 2  # the second worker
      kill -0 "$GW_PID" 2>/dev/null || { echo "uvicorn did not start (port 18080 taken?)" >&2; cat "$WORK/gw.log" >&2; exit 1; }
    fi
    for c in 1 32; do
      wrk -t1 -c"$c" -d"$([ "$c" = 1 ] && echo 5 || echo 10)s" --timeout 10s --latency -s "$H/chat.lua" \
        "http://127.0.0.1:$port" > "$WORK/wrk.out" 2>&1 || true
      r="$(grep '^BENCH_RESULT' "$WORK/wrk.out" || echo 'failed')"
      echo "$side round=$round c$c: $(grep -o 'rps=[^ ]* p50_ms=[^ ]* p90_ms=[^ ]* p99_ms=[^ ]* max_ms=[^ ]*\|non2xx3xx=[^ ]*' <<< "$r" | paste -sd' ') load=$(cut -d' ' -f1 /proc/loadavg)"
    done
    if [ -n "$GW_PID" ]; then kill "$GW_PID"; wait "$GW_PID" 2>/dev/null || true; GW_PID=""; fi
  done
done
