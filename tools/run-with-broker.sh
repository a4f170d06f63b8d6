#!/usr/bin/env bash
# `make run`: the pipeline on the default config, with a local MQTT broker when none is reachable.
set -euo pipefail
config=${1:-configs/default.yaml}
cd "$(dirname "$0")/.."
broker_pid=""
if ! (exec 3<>/dev/tcp/127.0.0.1/1883) 2>/dev/null; then
  if command -v mosquitto >/dev/null 2>&1 || [ -x /usr/sbin/mosquitto ]; then
    # its own session, so Ctrl-C reaches vigil alone and vigil can still say `offline` on the way out
    setsid "$(command -v mosquitto || echo /usr/sbin/mosquitto)" -c tools/mosquitto-local.conf &
    broker_pid=$!
    trap 'kill "$broker_pid" 2>/dev/null || true' EXIT
    sleep 0.5
    echo "vigil: started a local mosquitto on 127.0.0.1:1883 (it stops with vigil)" >&2
  else
    echo "vigil: no MQTT broker on 127.0.0.1:1883 and mosquitto is not installed; MQTT will keep retrying" >&2
  fi
fi
echo "vigil: watch MQTT with: .venv/bin/vigil mqtt tail" >&2
.venv/bin/vigil run --config "$config"
