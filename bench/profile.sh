#!/usr/bin/env bash
# bench/profile.sh -> py-spy profile of one worker of `aigw serve --workers 2` with every policy on (the `all`
# variant of run.sh: TPM rule + daily quota + exact cache on SQLite, unique bodies) under wrk at c32; prints
# the event-loop thread's time by what it is for (profile_split.py). Raw profile: bench/results/profile-*.raw.
# VARIANT=plain profiles the foundation pipeline instead (no limits, no cache).
# DURATION (s, default 35) of load; py-spy samples PROFILE_S (default 20) of it, from the 5th second.
set -euo pipefail
HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
ROOT="$(cd "$HERE/.." && pwd)"
H="$HERE/harness"
[ -x "$ROOT/.venv/bin/py-spy" ] || "$ROOT/.venv/bin/pip" install -q py-spy
WORK="$(mktemp -d /tmp/aigw-profile.XXXXXX)"
export NGINX_PREFIX="$WORK/nginx" BENCH_BACKEND_KEY=bench-backend-key BENCH_CLIENT_KEY=bench-client-key
mkdir -p "$NGINX_PREFIX/logs" "$NGINX_PREFIX/tmp" "$HERE/results"
GW_PID=""
cleanup() {
  [ -n "$GW_PID" ] && { kill "$GW_PID" 2>/dev/null || true; wait "$GW_PID" 2>/dev/null || true; }
  [ -s "$NGINX_PREFIX/logs/upstream.pid" ] && kill "$(cat "$NGINX_PREFIX/logs/upstream.pid")" 2>/dev/null
  rm -rf "$WORK"
}
trap cleanup EXIT
nginx -p "$NGINX_PREFIX/" -c "$H/nginx-upstream.conf"
cat > "$WORK/gateway.yaml" <<YAML
backends:
  - name: nginx
    url: http://127.0.0.1:18000
    auth: {type: api_key, key_env: BENCH_BACKEND_KEY}
    deployments: [gpt-4o]
keys:
  - {name: bench, key_env: BENCH_CLIENT_KEY, user: bench, tenant: bench}
YAML
if [ "${VARIANT:-all}" = all ]; then cat >> "$WORK/gateway.yaml" <<YAML
limits:
  rules:
    - {name: bench-tpm, key: user, tokens_per_minute: 1000000000000}
    - {name: bench-daily, key: tenant, token_quota: 1000000000000, quota_period: daily}
cache: {enabled: true}
YAML
fi
cat >> "$WORK/gateway.yaml" <<YAML
stores:
  counters: "sqlite:///$WORK/counters.db"
  cache: "sqlite:///$WORK/cache.db"
YAML
(cd "$WORK" && exec "$ROOT/.venv/bin/aigw" serve --config "$WORK/gateway.yaml" --port 18080 --workers 2) > "$WORK/gw.log" 2>&1 &
GW_PID=$!
for _ in $(seq 1 100); do curl -sf http://127.0.0.1:18080/healthz >/dev/null && break; sleep 0.1; done
sleep 3  # healthz answers once the first worker has started
PROCESSES="$(python3 "$HERE/memory.py" profile "$GW_PID")"
WORKER=$(sed -n 's/.* pid=\([0-9]*\) role=worker .*/\1/p' <<< "$PROCESSES" | sed -n 1p)
export BENCH_PATH="/openai/deployments/gpt-4o/chat/completions?api-version=2024-10-21" BENCH_UNIQUE=1
export BENCH_HEADERS="api-key: $BENCH_CLIENT_KEY"$'\n'
RAW="$HERE/results/profile-$(date +%Y%m%d-%H%M%S).raw"
echo "=== profile of worker $WORKER, ${VARIANT:-all}, c32, $(uptime)"
wrk -t1 -c32 -d"${DURATION:-35}s" --timeout 10s --latency -s "$H/chat.lua" http://127.0.0.1:18080 > "$WORK/wrk.out" 2>&1 &
WRK=$!
sleep 5
"$ROOT/.venv/bin/py-spy" record --pid "$WORKER" --duration "${PROFILE_S:-20}" --format raw --threads -o "$RAW" > "$WORK/py-spy.log" 2>&1
wait "$WRK"
echo "=== after: $(uptime)"
grep '^BENCH_RESULT' "$WORK/wrk.out" || tail -5 "$WORK/wrk.out"
python3 "$HERE/profile_split.py" "$RAW"
