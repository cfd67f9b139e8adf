#!/usr/bin/env bash
# A private image registry for the registry-credentials tests: Debian's docker-registry (the
# Distribution registry) and htpasswd (apache2-utils) for its basic auth; idempotent.
# Installs only: each test run starts its own registry on 127.0.0.1 with its own htpasswd file.
# The package's own service is not started (policy-rc.d): nothing listens on its default :5000.
# Prints the path of the registry binary.
set -euo pipefail
if ! command -v docker-registry >/dev/null 2>&1 || ! command -v htpasswd >/dev/null 2>&1; then
  if [ "$(id -u)" != 0 ] || ! command -v apt-get >/dev/null 2>&1; then
    echo "install-registry: docker-registry and apache2-utils are needed (apt-get install docker-registry apache2-utils)" >&2
    exit 1
  fi
  echo "installing docker-registry and apache2-utils" >&2
  policy=/usr/sbin/policy-rc.d
  made_policy=0
  if [ ! -e "$policy" ]; then
    printf '#!/bin/sh\nexit 101\n' >"$policy" && chmod +x "$policy" && made_policy=1
  fi
  trap 'if [ "$made_policy" = 1 ]; then rm -f "$policy"; fi' EXIT
  # Other install-*.sh scripts may run apt at the same time: wait for dpkg's lock instead of failing.
  apt-get -o DPkg::Lock::Timeout=600 update -qq >&2
  DEBIAN_FRONTEND=noninteractive apt-get -o DPkg::Lock::Timeout=600 install -y -qq --no-install-recommends \
    docker-registry apache2-utils >/dev/null
fi
command -v docker-registry
