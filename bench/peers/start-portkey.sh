#!/usr/bin/env bash
# bench/peers/start-portkey.sh PORT LOG -> starts the Portkey AI gateway (npm @portkey-ai/gateway, pinned; a
# gateway that enforces no limits and caches nothing here) on 127.0.0.1:PORT in production mode and prints its
# PID. Installs it into bench/results/peers/portkey on first use. Requests need "Authorization: Bearer <any>",
# "x-portkey-provider: openai" and "x-portkey-custom-host: http://127.0.0.1:18000/v1".
set -euo pipefail
PORT=${1:?port}; LOG=${2:?log file}
HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
DIR="$HERE/../results/peers/portkey"
VERSION=1.15.2
if [ ! -f "$DIR/node_modules/@portkey-ai/gateway/build/start-server.js" ]; then
  mkdir -p "$DIR"
  # its own package.json: without one, npm would install into the nearest one up the tree (the project's)
  [ -f "$DIR/package.json" ] || echo '{"name": "aigw-bench-portkey", "private": true}' > "$DIR/package.json"
  (cd "$DIR" && npm install --no-audit --no-fund --loglevel=error "@portkey-ai/gateway@$VERSION" >&2)
fi
cd "$DIR"
NODE_ENV=production node --require "$HERE/bind-localhost.cjs" \
  node_modules/@portkey-ai/gateway/build/start-server.js --port="$PORT" --headless > "$LOG" 2>&1 &
PID=$!
for _ in $(seq 1 60); do
  curl -s -o /dev/null "http://127.0.0.1:$PORT/" && break
  kill -0 "$PID" 2>/dev/null || { echo "portkey did not start, see $LOG" >&2; exit 1; }
  sleep 0.5
done
echo "$PID"
