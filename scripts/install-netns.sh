#!/usr/bin/env bash
# iproute2 (ip netns, veth, bridge) and util-linux (unshare, nsenter, mount) for tests/netns, which
# runs each worker node as a host of its own. Idempotent; without root the suite skips (fails in CI).
set -euo pipefail

missing=()
command -v ip >/dev/null 2>&1 || missing+=(iproute2)
for tool in unshare nsenter; do
  command -v "$tool" >/dev/null 2>&1 || { missing+=(util-linux); break; }
done
[ "${#missing[@]}" = 0 ] && exit 0
if [ "$(id -u)" != 0 ] || ! command -v apt-get >/dev/null 2>&1; then
  echo "install-netns: tests/netns needs ${missing[*]} (apt-get install ${missing[*]})" >&2
  exit 0  # not fatal here: the suite says what is missing (and fails under CI=true)
fi
export DEBIAN_FRONTEND=noninteractive
apt-get -o DPkg::Lock::Timeout=600 update -qq >&2
apt-get -o DPkg::Lock::Timeout=600 install -y -qq --no-install-recommends "${missing[@]}" >&2
