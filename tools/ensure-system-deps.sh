#!/usr/bin/env bash
# Installs the Debian/Ubuntu packages a target needs, only those missing (idempotent).
# Usage: tools/ensure-system-deps.sh run|test
set -euo pipefail
target=${1:-run}

pkgs=()
# python3 -m venv needs ensurepip, which Debian ships separately.
if ! python3 -c 'import ensurepip, venv' >/dev/null 2>&1; then
  pkgs+=(python3-venv python3-pip)
fi
need() { dpkg -s "$1" >/dev/null 2>&1 || pkgs+=("$1"); }
if command -v dpkg >/dev/null 2>&1; then
  case "$target" in
    # mosquitto: `make run` starts a local broker when none is reachable; the tests start their own.
    run) need mosquitto ;;
    # chromium + chromium-driver: the preview page test drives the system browser (no downloads).
    test) need mosquitto; need openssl; need chromium; need chromium-driver ;;
    *) echo "usage: $0 run|test" >&2; exit 2 ;;
  esac
fi

if [ ${#pkgs[@]} -eq 0 ]; then
  exit 0
fi
echo "installing system packages: ${pkgs[*]}" >&2
SUDO=""
if [ "$(id -u)" -ne 0 ]; then
  if command -v sudo >/dev/null 2>&1; then SUDO="sudo"; else
    echo "error: need root (or sudo) to install: ${pkgs[*]}" >&2; exit 1
  fi
fi
export DEBIAN_FRONTEND=noninteractive
$SUDO apt-get update -qq
$SUDO apt-get install -y -qq --no-install-recommends "${pkgs[@]}"
