#!/usr/bin/env bash
# podman-compose, pinned, in a tool venv of its own (not in requirements.lock: it is a test tool,
# not a dependency of trainyard). Idempotent. Prints the path of the podman-compose executable.
set -euo pipefail

PODMAN_COMPOSE_VERSION="${PODMAN_COMPOSE_VERSION:-1.6.0}"
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
DEST="${PODMAN_COMPOSE_DIR:-$ROOT/.test-services/podman-compose}"
BIN="$DEST/bin/podman-compose"

mkdir -p "$DEST"
exec 9>"$DEST/../.podman-compose.lock"
flock 9
if [ ! -x "$BIN" ] || ! "$BIN" --version 2>/dev/null | grep -q "$PODMAN_COMPOSE_VERSION"; then
  echo "install-podman-compose: podman-compose==$PODMAN_COMPOSE_VERSION into $DEST" >&2
  python3 -m venv "$DEST"
  "$DEST/bin/pip" install -q "podman-compose==$PODMAN_COMPOSE_VERSION" >&2
fi
echo "$BIN"
