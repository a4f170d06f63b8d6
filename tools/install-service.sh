#!/usr/bin/env bash
# Installs Vigil as a systemd service from this checkout (run `make venv assets` first):
#   sudo tools/install-service.sh            # user `vigil`, units, /etc/vigil/vigil.yaml, daemon-reload
#   DESTDIR=/tmp/root tools/install-service.sh   # stage into a directory instead (no user, no systemctl)
# The units expect the checkout at /opt/vigil; set PREFIX to install elsewhere.
set -euo pipefail
cd "$(dirname "$0")/.."
prefix=${PREFIX:-/opt/vigil}
dest=${DESTDIR:-}

install -d "$dest/etc/systemd/system" "$dest/etc/vigil"
for unit in vigil.service vigil-engine.service; do
  sed "s#/opt/vigil#$prefix#g" "systemd/$unit" > "$dest/etc/systemd/system/$unit"
  chmod 0644 "$dest/etc/systemd/system/$unit"
done
if [ ! -e "$dest/etc/vigil/vigil.yaml" ]; then
  # the shipped default, with paths made absolute for a service that does not run from the checkout
  sed -e "s#calibration/samples/#$prefix/calibration/samples/#" -e "s#engines/#$prefix/engines/#" \
    configs/default.yaml > "$dest/etc/vigil/vigil.yaml"
  chmod 0640 "$dest/etc/vigil/vigil.yaml"
fi
if [ -z "$dest" ]; then
  id vigil >/dev/null 2>&1 || useradd --system --no-create-home --home-dir /var/lib/vigil --shell /usr/sbin/nologin vigil
  usermod -aG video vigil || true
  getent group render >/dev/null && usermod -aG render vigil || true
  chgrp vigil /etc/vigil/vigil.yaml
  systemctl daemon-reload
  echo "installed; start with: systemctl enable --now vigil" >&2
else
  echo "staged into $dest" >&2
fi
