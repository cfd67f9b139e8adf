#!/usr/bin/env bash
# Podman as the Docker Engine API for container jobs in tests: install, configure, start the
# API service and make the local test image. Idempotent: every step is skipped when done.
# Prints `DOCKER_HOST=unix://...` (the engine URL the tests and `trainyard worker --docker-url` use).
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
DIR="${PODMAN_DIR:-$ROOT/.test-services/podman}"
SOCK="$DIR/podman.sock"
CONF="$DIR/containers.conf"
TEST_IMAGE="${TEST_IMAGE:-localhost/trainyard-test:busybox}"

if ! command -v podman >/dev/null 2>&1 || ! command -v runc >/dev/null 2>&1 \
   || [ ! -x /bin/busybox ]; then
  if [ "$(id -u)" != 0 ] || ! command -v apt-get >/dev/null 2>&1; then
    echo "install-podman: podman, runc and busybox-static are needed (apt-get install podman runc busybox-static)" >&2
    exit 1
  fi
  export DEBIAN_FRONTEND=noninteractive
  apt-get -o DPkg::Lock::Timeout=600 update -qq >&2
  apt-get -o DPkg::Lock::Timeout=600 install -y -qq podman runc busybox-static >&2
fi

mkdir -p "$DIR"
export CONTAINERS_CONF="$CONF"
if [ ! -f "$CONF" ]; then
  # No network namespaces beyond loopback here; runc because crun's defaults want cgroup
  # features this machine lacks; ulimits small enough for the machine's hard limits.
  cat >"$CONF" <<CONF
[containers]
default_ulimits = ["nofile=1024:1024", "nproc=1024:1024"]
netns = "none"

[engine]
runtime = "runc"
CONF
fi

ping_engine() {
  curl -fsS --max-time 2 --unix-socket "$SOCK" http://d/_ping >/dev/null 2>&1
}

if ! ping_engine; then
  rm -f "$SOCK"
  setsid nohup podman system service --time=0 "unix://$SOCK" >"$DIR/service.log" 2>&1 < /dev/null &
  for _ in $(seq 1 100); do
    ping_engine && break
    sleep 0.1
  done
  ping_engine || { echo "install-podman: the API service did not start; see $DIR/service.log" >&2; exit 1; }
fi

if ! podman image exists "$TEST_IMAGE"; then
  # No registry is reachable: the test image is busybox-static as a rootfs, imported locally.
  ROOTFS="$(mktemp -d)"
  trap 'rm -rf "$ROOTFS"' EXIT
  mkdir -p "$ROOTFS/bin" "$ROOTFS/tmp" "$ROOTFS/etc" "$ROOTFS/proc" "$ROOTFS/sys" "$ROOTFS/dev"
  cp /bin/busybox "$ROOTFS/bin/busybox"
  for tool in $("$ROOTFS/bin/busybox" --list); do
    [ -e "$ROOTFS/bin/$tool" ] || ln -s busybox "$ROOTFS/bin/$tool"
  done
  echo "root:x:0:0:root:/root:/bin/sh" >"$ROOTFS/etc/passwd"
  echo "root:x:0:" >"$ROOTFS/etc/group"
  tar -C "$ROOTFS" -cf "$ROOTFS.tar" .
  podman import --change 'CMD ["/bin/sh"]' "$ROOTFS.tar" "$TEST_IMAGE" >/dev/null
  rm -f "$ROOTFS.tar"
fi

echo "DOCKER_HOST=unix://$SOCK"
