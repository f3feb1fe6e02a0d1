#!/usr/bin/env bash
# Sets up LiveTalking on a fresh machine: system packages (when run as root), a virtual
# environment in .venv and the Python packages. Safe to run again: it only adds what is missing.
# Usage: ./setup.sh          server requirements
#        ./setup.sh --dev    server + test requirements (pytest, ruff, Chromium, nginx-rtmp and coturn for the tests)
set -euo pipefail
cd "$(dirname "$0")"
dev=0
[ "${1:-}" = "--dev" ] && dev=1

apt_pkgs=(espeak-ng libgl1 libglib2.0-0 libportaudio2)  # libportaudio2: --audio_device
# The tests run real servers: nginx with its RTMP module (pushes), coturn (TURN relays).
[ "$dev" = 1 ] && apt_pkgs+=(chromium nginx libnginx-mod-rtmp coturn)
missing=()
for p in "${apt_pkgs[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if [ "${#missing[@]}" -gt 0 ]; then
  if [ "$(id -u)" = 0 ]; then
    echo "setup: installing system packages: ${missing[*]}"
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
  else
    echo "setup: please install these system packages first: ${missing[*]}" >&2
  fi
fi

if [ ! -x .venv/bin/python ]; then
  echo "setup: creating .venv"
  python3 -m venv .venv
fi
req=requirements.txt
[ "$dev" = 1 ] && req=requirements-dev.txt
echo "setup: installing Python packages from $req"
# pip warns about every local index folder this machine's pip.conf names but lacks; keep real errors.
.venv/bin/python -m pip install -q --disable-pip-version-check -r "$req" 2> >(grep -v "is ignored: it is neither" >&2)
echo "setup: done"
