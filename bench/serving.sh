# bench/serving.sh (sourced, not run) by profile.sh, soak.sh and ab.sh (after HERE, ROOT and H are set): the
# static nginx upstream of run.sh and one `aigw serve` in front of it, on 127.0.0.1, removed on exit; wrk's
# chat.lua settings. run.sh sources it for gateway_yaml only (it starts its own upstream and servers).

# serve_setup NAME: a work directory /tmp/aigw-NAME.*, the upstream started, cleanup on exit.
serve_setup() {
  if ! command -v nginx >/dev/null || ! command -v wrk >/dev/null; then  # as run.sh: Debian's, on first use (root)
    apt-get update -qq && apt-get install -y -qq nginx wrk >/dev/null
  fi
  [ -x "$ROOT/.venv/bin/aigw" ] || "$ROOT/scripts/bootstrap"
  WORK="$(mktemp -d "/tmp/aigw-$1.XXXXXX")"
  export NGINX_PREFIX="$WORK/nginx" BENCH_BACKEND_KEY=bench-backend-key BENCH_CLIENT_KEY=bench-client-key
  mkdir -p "$NGINX_PREFIX/logs" "$NGINX_PREFIX/tmp" "$HERE/results"
  GW_PID=""
  trap serve_cleanup EXIT
  nginx -p "$NGINX_PREFIX/" -c "$H/nginx-upstream.conf"
  export BENCH_PATH="/openai/deployments/gpt-4o/chat/completions?api-version=2024-10-21" BENCH_UNIQUE=1
  export BENCH_HEADERS="api-key: $BENCH_CLIENT_KEY"$'\n'
}

serve_cleanup() {
  [ -n "$GW_PID" ] && { kill "$GW_PID" 2>/dev/null || true; wait "$GW_PID" 2>/dev/null || true; }
  [ -s "$NGINX_PREFIX/logs/upstream.pid" ] && kill "$(cat "$NGINX_PREFIX/logs/upstream.pid")" 2>/dev/null
  rm -rf "$WORK"
}

# gateway_yaml VARIANT [CACHE_LINE]: the one gateway config of every script here (run.sh's variants too): an
# Azure-type backend on the upstream (JSON under /, SSE under /stream as deployment gpt-4o-stream) and the bench
# key. VARIANT: `plain` (nothing more); `all` (a TPM rule and a daily quota, too high to refuse anything, and the
# cache, counters and cache on SQLite in $WORK); `cache` (the cache alone on SQLite); `counters=URL` (the TPM
# rule alone on the counters store at URL). CACHE_LINE (default `cache: {enabled: true}`) turns the cache on.
# USAGE=off turns usage recording off (it is on by default).
gateway_yaml() {
  local cache_line="${2:-"cache: {enabled: true}"}"
  cat <<YAML
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
  case "$1" in
    all) cat <<YAML
limits:
  rules:
    - {name: bench-tpm, key: user, tokens_per_minute: 1000000000000}
    - {name: bench-daily, key: tenant, token_quota: 1000000000000, quota_period: daily}
$cache_line
stores:
  counters: "sqlite:///$WORK/counters.db"
  cache: "sqlite:///$WORK/cache.db"
YAML
      ;;
    cache) cat <<YAML
$cache_line
stores:
  cache: "sqlite:///$WORK/cache.db"
YAML
      ;;
    counters=*) cat <<YAML
limits:
  rules:
    - {name: bench-tpm, key: user, tokens_per_minute: 1000000000000}
stores:
  counters: "${1#counters=}"
YAML
      ;;
    plain) ;;
    *) echo "gateway_yaml: unknown variant $1" >&2; return 2 ;;
  esac
  if [ "${USAGE:-on}" = off ]; then echo "usage: {enabled: false}"; fi
}

# start_gateway WORKERS: `aigw serve` of $WORK/gateway.yaml on 18080 (GW_PID), once every worker has started.
start_gateway() {
  (cd "$WORK" && exec "$ROOT/.venv/bin/aigw" serve --config "$WORK/gateway.yaml" --port 18080 --workers "$1") > "$WORK/gw.log" 2>&1 &
  GW_PID=$!
  for _ in $(seq 1 100); do curl -sf http://127.0.0.1:18080/healthz >/dev/null && break; sleep 0.1; done
  sleep 3  # healthz answers once the first worker has started
  # Not another process's answers on 18080: the gateway started here must still be running.
  kill -0 "$GW_PID" 2>/dev/null || { echo "aigw serve did not start (port 18080 taken?): $WORK/gw.log" >&2; cat "$WORK/gw.log" >&2; exit 1; }
}
