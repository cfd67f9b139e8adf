#!/usr/bin/env bash
# Headless Chromium for the browser tests (Flower: tests/integration/security/test_flower.py; the dashboard:
# tests/integration/dashboard/, through Playwright with executable_path); idempotent.
set -euo pipefail
if [ -x /usr/bin/chromium ]; then
  exit 0
fi
echo "installing chromium"
# Other install-*.sh scripts may run apt at the same time: wait for dpkg's lock instead of failing.
apt-get -o DPkg::Lock::Timeout=600 update -qq
DEBIAN_FRONTEND=noninteractive apt-get -o DPkg::Lock::Timeout=600 install -y -qq chromium >/dev/null
