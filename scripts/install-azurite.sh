#!/usr/bin/env bash
# Installs the Azurite blob emulator for the tests into .test-services/azurite (idempotent).
# Prints the path of azurite-blob on success. Installs node and npm through apt-get when they
# are missing and we are root (a fresh Debian machine); otherwise says what is missing and fails.
set -euo pipefail

AZURITE_VERSION="${AZURITE_VERSION:-3.37.0}"
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
DEST="${AZURITE_DIR:-$ROOT/.test-services/azurite}"
BIN="$DEST/node_modules/.bin/azurite-blob"

if [ -x "$BIN" ]; then
  echo "$BIN"
  exit 0
fi

mkdir -p "$DEST"
# Two test sessions starting at once must not run npm into the same folder together.
exec 9>"$DEST/.install.lock"
if command -v flock >/dev/null 2>&1; then
  flock 9
fi
if [ -x "$BIN" ]; then
  echo "$BIN"
  exit 0
fi

if ! command -v node >/dev/null 2>&1 || ! command -v npm >/dev/null 2>&1; then
  if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
    echo "install-azurite: installing nodejs and npm with apt-get" >&2
    DEBIAN_FRONTEND=noninteractive apt-get update -qq >&2
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq nodejs npm >&2
  else
    echo "install-azurite: node and npm are needed (apt-get install nodejs npm)" >&2
    exit 1
  fi
fi

echo "install-azurite: npm install azurite@$AZURITE_VERSION into $DEST" >&2
# A package.json of our own keeps npm from walking up into another project's.
[ -f "$DEST/package.json" ] || echo '{"name": "trainyard-test-azurite", "private": true}' >"$DEST/package.json"
npm install --prefix "$DEST" --no-audit --no-fund --loglevel=error "azurite@$AZURITE_VERSION" >&2
echo "$BIN"
