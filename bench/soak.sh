#!/usr/bin/env bash
# bench/soak.sh -> every policy on (the `all` variant of run.sh: TPM rule + daily quota + exact cache on SQLite,
# unique bodies) under wrk at c32 for SOAK_S seconds (default 480), with a small cache budget (CACHE_MIB,
# default 32) so the cache fills and evicts; one row per SLICE_S (default 60) of load: req/s, p50/p99/max,
# errors, RSS per worker, open descriptors per worker, cache rows and bytes, cache DB and WAL size, load average.
# SOAK_S=60 SLICE_S=20 bench/soak.sh for a quick check. Same harness and upstream as run.sh; 127.0.0.1 only.
set -euo pipefail
HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
ROOT="$(cd "$HERE/.." && pwd)"
H="$HERE/harness"
SOAK_S=${SOAK_S:-480}
SLICE_S=${SLICE_S:-60}
CACHE_MIB=${CACHE_MIB:-32}
CONNS=${CONNS:-32}
WORKERS=${WORKERS:-2}
# shellcheck source=serving.sh
. "$HERE/serving.sh"
serve_setup soak
gateway_yaml all "cache: {enabled: true, max_store_bytes: $((CACHE_MIB * 1024 * 1024))}" > "$WORK/gateway.yaml"
start_gateway "$WORKERS"
OUT="$HERE/results/soak-$(date +%Y%m%d-%H%M%S).md"
workers() { python3 "$HERE/memory.py" soak "$GW_PID" | sed -n 's/.* pid=\([0-9]*\) role=worker .*/\1/p'; }
rss() { python3 "$HERE/memory.py" soak "$GW_PID" | sed -n 's/.* role=worker rss_mb=\([0-9.]*\) .*/\1/p' | paste -sd/; }
fds() { for p in $(workers); do ls "/proc/$p/fd" 2>/dev/null | wc -l; done | paste -sd/; }
mib() { [ -e "$1" ] && python3 -c "import os,sys; print(f'{os.path.getsize(sys.argv[1]) / 2**20:.1f}')" "$1" || echo 0; }
cache_rows() {
  python3 - "$WORK/cache.db" <<'PY'
import sqlite3, sys
conn = sqlite3.connect(f"file:{sys.argv[1]}?mode=ro", uri=True, timeout=5)
rows = conn.execute("SELECT count(*) FROM cache").fetchone()[0]
total = conn.execute("SELECT total FROM cache_size").fetchone()[0]
print(f"{rows} / {total / 2**20:.1f}")
PY
}
{
  echo "soak: c$CONNS, $WORKERS workers, every policy on, unique bodies, cache budget $CACHE_MIB MiB, $SOAK_S s in ${SLICE_S} s slices, $(git -C "$ROOT" rev-parse --short HEAD), start $(date -u +%H:%M:%S) UTC"
  echo
  echo "| at min | req/s | p50 ms | p99 ms | max ms | errors | RSS per worker MB | open fds per worker | cache rows / MiB | cache DB MiB | WAL MiB | dropped-put logs | load avg |"
  echo "|---:|---:|---:|---:|---:|---:|---|---|---|---:|---:|---:|---|"
  for i in $(seq 1 $((SOAK_S / SLICE_S))); do
    wrk -t1 -c"$CONNS" -d"${SLICE_S}s" --timeout 10s --latency -s "$H/chat.lua" http://127.0.0.1:18080 > "$WORK/wrk.out" 2>&1 || true
    r="$(grep '^BENCH_RESULT' "$WORK/wrk.out" || echo 'rps=0 p50_ms=0 p99_ms=0 max_ms=0 non2xx3xx=?')"
    field() { sed -n "s/.* $1=\([^ ]*\).*/\1/p" <<< " $r"; }
    errors=$(( $(field non2xx3xx) + $(field err_connect) + $(field err_read) + $(field err_write) + $(field err_timeout) ))
    dropped=$(grep -c "puts dropped" "$WORK/gw.log" || true)
    printf "| %.1f | %.0f | %s | %s | %s | %s | %s | %s | %s | %s | %s | %s | %s |\n" \
      "$(echo "$i * $SLICE_S / 60" | bc -l)" "$(field rps)" "$(field p50_ms)" "$(field p99_ms)" "$(field max_ms)" \
      "$errors" "$(rss)" "$(fds)" "$(cache_rows)" "$(mib "$WORK/cache.db")" "$(mib "$WORK/cache.db-wal")" \
      "$dropped" "$(cut -d' ' -f1-3 /proc/loadavg)"
  done
  echo
  echo "end $(date -u +%H:%M:%S) UTC; gateway log warnings: $(grep -ci warning "$WORK/gw.log" || true)"
  grep -i "warning\|error" "$WORK/gw.log" | head -5 || true
} | tee "$OUT"
