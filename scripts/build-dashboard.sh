#!/usr/bin/env bash
# Builds the dashboard's vendored front-end files from web/package-lock.json (npm ci) into
# trainyard/api/dashboard/static/vendor; run by `make install`. Skipped when the files there were
# built from the same lock. Installs node and npm through apt-get when missing and we are root.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
WEB="$ROOT/web"
VENDOR="$ROOT/trainyard/api/dashboard/static/vendor"
STAMP="$WEB/node_modules/.trainyard-built"
lock_digest() { sha256sum "$WEB/package-lock.json" | cut -d' ' -f1; }

if [ -f "$STAMP" ] && [ "$(cat "$STAMP")" = "$(lock_digest)" ] && [ -f "$VENDOR/htmx.min.js" ]; then
  exit 0
fi
if ! command -v npm >/dev/null 2>&1; then
  if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
    echo "build-dashboard: installing nodejs and npm with apt-get" >&2
    apt-get -o DPkg::Lock::Timeout=600 update -qq >&2
    DEBIAN_FRONTEND=noninteractive apt-get -o DPkg::Lock::Timeout=600 install -y -qq nodejs npm >&2
  else
    echo "build-dashboard: npm is needed (apt-get install nodejs npm)" >&2
    exit 1
  fi
fi
echo "build-dashboard: npm ci in web/ (htmx), then copying it into $VENDOR" >&2
npm ci --prefix "$WEB" --no-audit --no-fund --loglevel=error >&2
mkdir -p "$VENDOR"
cp "$WEB/node_modules/htmx.org/dist/htmx.min.js" "$VENDOR/htmx.min.js"
cp "$WEB/node_modules/htmx.org/LICENSE" "$VENDOR/htmx.LICENSE"
lock_digest >"$STAMP"
