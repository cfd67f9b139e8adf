#!/usr/bin/env bash
# Builds the deployment's images locally with rootful Podman, without any image registry:
#   localhost/trainyard-base:bookworm  Debian bookworm (debootstrap minbase) + Python 3.11 venv
#   trainyard:latest                    docker/Dockerfile on that base
#   trainyard-worker:latest             docker/Dockerfile.worker on that base
#   redis:7-alpine, postgres:15-alpine, mcr.microsoft.com/azure-storage/azurite:latest
#                                       TEST STAND-INS built from Debian packages / npm
#                                       (docker/stand-ins/), so docker-compose.yml runs as it is
# Cached: each image carries a label with the hash of its inputs (recipe, lock file, Dockerfile,
# sources); an image whose label matches is not rebuilt, and the base is not debootstrapped again.
# Python packages come from requirements.lock through a wheelhouse built on the host (pip's cache
# makes it fast), mounted into the build; a normal deployment simply builds with PyPI.
# Environment: IMAGES_DIR (state, default .test-services/images), BASE_IMAGE, FORCE=1 (rebuild).
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
DIR="${IMAGES_DIR:-$ROOT/.test-services/images}"
BASE_IMAGE="${BASE_IMAGE:-localhost/trainyard-base:bookworm}"
SUITE=bookworm
MIRROR="${DEBIAN_MIRROR:-http://deb.debian.org/debian}"
LABEL=org.trainyard.inputs
PY="${PYTHON:-python3}"
mkdir -p "$DIR"

# One build at a time on this machine (image names are the machine's, whatever the checkout).
exec 9>"${BUILD_IMAGES_LOCK:-/tmp/trainyard-build-images.lock}"
flock 9

say() { printf '[build-images %s] %s\n' "$(date +%H:%M:%S)" "$*" >&2; }

if [ "$(id -u)" != 0 ]; then
  # The deploy test then skips (and fails under CI, as every test missing its services does).
  say "skipped: rootful podman is needed (run as root)"
  case "${CI:-}" in 1 | true | yes) exit 1 ;; *) exit 0 ;; esac
fi
if ! command -v podman >/dev/null 2>&1; then
  bash "$ROOT/scripts/install-podman.sh" >/dev/null
fi
# Networking on for builds and compose (install-podman.sh's conf turns container networks off);
# the deploy test and README use this file too.
export CONTAINERS_CONF="$DIR/containers.conf"
cat >"$CONTAINERS_CONF.tmp" <<CONF
[containers]
default_ulimits = ["nofile=1024:1024", "nproc=1024:1024"]

[engine]
runtime = "runc"
CONF
mv "$CONTAINERS_CONF.tmp" "$CONTAINERS_CONF"

hash_of() {  # hash_of FILE_OR_DIR...: a stable hash of the contents (and names) of the inputs
  find "$@" -type f ! -name '*.pyc' ! -path '*/__pycache__/*' -print0 | LC_ALL=C sort -z \
    | xargs -0 sha256sum | sha256sum | cut -c1-16
}
label_of() {
  podman image inspect --format "{{index .Labels \"$LABEL\"}}" "$1" 2>/dev/null || true
}
fresh() {  # fresh IMAGE HASH: the image exists with that inputs label
  [ "${FORCE:-0}" != 1 ] && [ "$(label_of "$1")" = "$2" ]
}

# --- 1. the base image: Debian's packages only ---------------------------------------------------
BASE_PACKAGES="python3,python3-venv,ca-certificates"
base_hash="$(printf '%s|%s|%s|v1' "$SUITE" "$MIRROR" "$BASE_PACKAGES" | sha256sum | cut -c1-16)"
if fresh "$BASE_IMAGE" "$base_hash"; then
  say "base $BASE_IMAGE is up to date"
else
  if ! command -v debootstrap >/dev/null 2>&1; then
    say "installing debootstrap (apt)"
    DEBIAN_FRONTEND=noninteractive apt-get -o DPkg::Lock::Timeout=600 install -y -qq debootstrap >&2
  fi
  ROOTFS="$DIR/rootfs"
  rm -rf "$ROOTFS"
  say "debootstrap $SUITE minbase (+ $BASE_PACKAGES) into $ROOTFS"
  t0=$SECONDS
  debootstrap --variant=minbase --include="$BASE_PACKAGES" "$SUITE" "$ROOTFS" "$MIRROR" \
    >"$DIR/debootstrap.log" 2>&1 || { tail -20 "$DIR/debootstrap.log" >&2; exit 1; }
  cat >"$ROOTFS/etc/apt/sources.list" <<SRC
deb $MIRROR $SUITE main
deb $MIRROR $SUITE-updates main
deb http://deb.debian.org/debian-security $SUITE-security main
SRC
  # Like the official python image: `python` and `pip` on PATH, outside Debian's managed site.
  chroot "$ROOTFS" python3 -m venv /opt/python
  chroot "$ROOTFS" apt-get clean
  rm -rf "$ROOTFS"/var/lib/apt/lists/* "$ROOTFS"/var/cache/apt/*.bin "$ROOTFS"/tmp/*
  say "importing the rootfs as $BASE_IMAGE"
  tar -C "$ROOTFS" -c . | podman import -q \
    --change "ENV PATH=/opt/python/bin:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin" \
    --change "ENV LANG=C.UTF-8" \
    --change "LABEL $LABEL=$base_hash" \
    --change 'CMD ["/bin/bash"]' - "$BASE_IMAGE" >/dev/null
  rm -rf "$ROOTFS"
  say "base done in $((SECONDS - t0)) s"
fi

# build IMAGE[,OTHER_NAME] HASH DOCKERFILE [podman build args...]
build() {
  local names="$1" hash="$2" dockerfile="$3" image other=""
  shift 3
  image="${names%%,*}"
  [ "$names" = "$image" ] || other="${names#*,}"
  if fresh "$image" "$hash" && { [ -z "$other" ] || fresh "$other" "$hash"; }; then
    say "$image is up to date"
    return
  fi
  say "building $image from $dockerfile"
  local t0=$SECONDS
  local previous
  previous="$(podman image inspect --format '{{.Id}}' "$image" 2>/dev/null || true)"
  nice -n 10 podman build -q --network host --layers -f "$dockerfile" \
    --build-arg BASE_IMAGE="$BASE_IMAGE" --label "$LABEL=$hash" -t "$image" ${other:+-t "$other"} "$@" . >/dev/null
  # The image it replaces (now untagged) goes, with the cache layers only it used.
  if [ -n "$previous" ] && [ "$previous" != "$(podman image inspect --format '{{.Id}}' "$image")" ] \
     && [ -z "$(podman image inspect --format '{{join .RepoTags ""}}' "$previous" 2>/dev/null)" ]; then
    podman rmi "$previous" >/dev/null 2>&1 || true
  fi
  say "$image done in $((SECONDS - t0)) s"
}

# --- 2. the test stand-ins for the third-party images --------------------------------------------
sb="$(label_of "$BASE_IMAGE")"
# `redis:7-alpine` is docker.io/library/redis:7-alpine to a Docker client: both names resolve here.
build localhost/redis:7-alpine,docker.io/library/redis:7-alpine "$(hash_of docker/stand-ins/Dockerfile.redis docker/stand-ins/redis-entrypoint.sh)$sb" \
  docker/stand-ins/Dockerfile.redis
build localhost/postgres:15-alpine,docker.io/library/postgres:15-alpine "$(hash_of docker/stand-ins/Dockerfile.postgres docker/stand-ins/postgres-entrypoint.sh)$sb" \
  docker/stand-ins/Dockerfile.postgres
# Azurite from npm on the host (the build's TLS trust may not be the host's), mounted into the build.
AZURITE_VERSION="${AZURITE_VERSION:-3.37.0}"
azurite_hash="$(hash_of docker/stand-ins/Dockerfile.azurite)$AZURITE_VERSION$sb"
if ! fresh mcr.microsoft.com/azure-storage/azurite:latest "$azurite_hash"; then
  AZURITE_DIR="$DIR/azurite-$AZURITE_VERSION" AZURITE_VERSION="$AZURITE_VERSION" \
    bash "$ROOT/scripts/install-azurite.sh" >/dev/null
fi
build mcr.microsoft.com/azure-storage/azurite:latest "$azurite_hash" docker/stand-ins/Dockerfile.azurite \
  --volume "$DIR/azurite-$AZURITE_VERSION:/azurite-src:ro" --build-arg AZURITE_SOURCE=/azurite-src \
  --build-arg AZURITE_VERSION="$AZURITE_VERSION"

# --- 3. trainyard's own images, Python packages from the lock file -------------------------------
WHEELS="$DIR/wheels"
lock_hash="$(hash_of requirements.lock)-w2"  # -wN: the wheelhouse recipe below
if [ "$(cat "$WHEELS/.lock-hash" 2>/dev/null)" != "$lock_hash" ]; then
  say "wheelhouse for requirements.lock (pip wheel, from the host's cache)"
  rm -rf "$WHEELS"
  mkdir -p "$WHEELS"
  # The lock was resolved on a newer 3.11 than Debian's 3.11.2, where redis also needs
  # async-timeout (python_full_version < "3.11.3"): pinned here for the Debian base.
  set +o pipefail
  nice -n 10 "$PY" -m pip wheel -q --no-deps -r requirements.lock 'async-timeout==5.0.1' \
    'setuptools>=68' wheel -w "$WHEELS" 2>&1 | { grep -v '^WARNING: Location' >&2 || true; }
  status="${PIPESTATUS[0]}"
  set -o pipefail
  [ "$status" = 0 ] || { say "pip wheel failed"; exit 1; }
  echo "$lock_hash" >"$WHEELS/.lock-hash"
fi
src_hash="$(hash_of requirements.lock pyproject.toml README.md trainyard)"
WHEEL_ARGS=(--volume "$WHEELS:/wheels:ro" --build-arg "PIP_INSTALL_OPTS=--no-index --find-links /wheels")
build localhost/trainyard:latest "$(hash_of docker/Dockerfile)$src_hash$sb" docker/Dockerfile "${WHEEL_ARGS[@]}"
build localhost/trainyard-worker:latest "$(hash_of docker/Dockerfile.worker)$src_hash$sb" \
  docker/Dockerfile.worker "${WHEEL_ARGS[@]}"
say "images ready"
