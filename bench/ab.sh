#!/usr/bin/env bash
# bench/ab.sh -> an A/B in one run, alternating, so that a shared or noisy machine moves both sides alike:
#   bench/ab.sh usage            usage recording on, then off (`usage: {enabled: false}`), same code
#   BASE=<rev> bench/ab.sh code  the code of git revision <rev> (exported to a temp dir, run through PYTHONPATH
#                                with this checkout's venv), then this checkout's code, on the same config
# VARIANTS (default "plain"; "plain all" for both) as in run.sh; ROUNDS (default 2); per side: wrk c1 for 5 s, then
# c32 for 10 s, against a fresh `aigw serve --workers 2` and fresh SQLite files. Prints one line per side and load.
# USAGE=off (as in serving.sh) turns usage recording off on both sides of `code`; `usage` ignores it (its sides
# decide: an inherited USAGE=off wrote a second `usage:` key into the off side's config).
set -euo pipefail
HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
ROOT="$(cd "$HERE/.." && pwd)"
H="$HERE/harness"
MODE="${1:-}"
case "$MODE" in
  usage) SIDES="on off" ;;
  code) [ -n "${BASE:-}" ] || { echo "BASE=<git revision> is needed for 'code'" >&2; exit 2; }; SIDES="base head" ;;
  *) echo "usage: bench/ab.sh usage | BASE=<rev> bench/ab.sh code" >&2; exit 2 ;;
esac
if [ "$MODE" = usage ]; then unset USAGE; fi
# shellcheck source=serving.sh
. "$HERE/serving.sh"
serve_setup ab
if [ "$MODE" = code ]; then
  mkdir -p "$WORK/base" && git -C "$ROOT" archive "$BASE" | tar -x -C "$WORK/base"
fi
for round in $(seq 1 "${ROUNDS:-2}"); do
  for variant in ${VARIANTS:-plain}; do
    for side in $SIDES; do
      rm -rf "$WORK"/*.db* "$WORK/.aigw"
      gateway_yaml "$variant" > "$WORK/gateway.yaml"
      [ "$side" = off ] && echo "usage: {enabled: false}" >> "$WORK/gateway.yaml"
      if [ "$side" = base ]; then export PYTHONPATH="$WORK/base"; else unset PYTHONPATH; fi
      start_gateway 2
      for c in 1 32; do
        wrk -t1 -c"$c" -d"$([ "$c" = 1 ] && echo 5 || echo 10)s" --timeout 10s --latency -s "$H/chat.lua" \
          http://127.0.0.1:18080 > "$WORK/wrk.out" 2>&1 || true
        r="$(grep '^BENCH_RESULT' "$WORK/wrk.out" || echo 'failed')"
        echo "$variant $MODE=$side round=$round c$c: $(grep -o 'rps=[^ ]* p50_ms=[^ ]* p90_ms=[^ ]* p99_ms=[^ ]* max_ms=[^ ]*\|non2xx3xx=[^ ]*' <<< "$r" | paste -sd' ') load=$(cut -d' ' -f1 /proc/loadavg)"
      done
      kill "$GW_PID"; wait "$GW_PID" 2>/dev/null || true; GW_PID=""
    done
  done
done
