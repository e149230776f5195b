#!/usr/bin/env bash
# bench/profile.sh -> py-spy profile of one worker of `aigw serve --workers 2` with every policy on (the `all`
# variant of run.sh: TPM rule + daily quota + exact cache on SQLite, unique bodies) under wrk at c32; prints
# the event-loop thread's time by what it is for (profile_split.py). Raw profile: bench/results/profile-*.raw.
# VARIANT=plain profiles the foundation pipeline instead (no limits, no cache). USAGE=off: usage recording off.
# DURATION (s, default 35) of load; py-spy samples PROFILE_S (default 20) of it, from the 5th second.
set -euo pipefail
HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
ROOT="$(cd "$HERE/.." && pwd)"
H="$HERE/harness"
[ -x "$ROOT/.venv/bin/py-spy" ] || "$ROOT/.venv/bin/pip" install -q py-spy
# shellcheck source=serving.sh
. "$HERE/serving.sh"
serve_setup profile
gateway_yaml "${VARIANT:-all}" > "$WORK/gateway.yaml"
start_gateway 2
PROCESSES="$(python3 "$HERE/memory.py" profile "$GW_PID")"
WORKER=$(sed -n 's/.* pid=\([0-9]*\) role=worker .*/\1/p' <<< "$PROCESSES" | sed -n 1p)
RAW="$HERE/results/profile-$(date +%Y%m%d-%H%M%S).raw"
echo "=== profile of worker $WORKER, ${VARIANT:-all}, usage ${USAGE:-on}, c32, $(uptime)"
wrk -t1 -c32 -d"${DURATION:-35}s" --timeout 10s --latency -s "$H/chat.lua" http://127.0.0.1:18080 > "$WORK/wrk.out" 2>&1 &
WRK=$!
sleep 5
"$ROOT/.venv/bin/py-spy" record --pid "$WORKER" --duration "${PROFILE_S:-20}" --format raw --threads -o "$RAW" > "$WORK/py-spy.log" 2>&1
wait "$WRK"
echo "=== after: $(uptime)"
grep '^BENCH_RESULT' "$WORK/wrk.out" || tail -5 "$WORK/wrk.out"
python3 "$HERE/profile_split.py" "$RAW"
