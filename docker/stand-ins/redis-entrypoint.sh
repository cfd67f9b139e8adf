#!/bin/sh
# Like the official image's entrypoint: a root `redis-server` drops to the redis user, owning /data.
set -e
if [ "$1" = "redis-server" ] && [ "$(id -u)" = 0 ]; then
  chown -R redis:redis /data
  exec setpriv --reuid=redis --regid=redis --init-groups "$@"
fi
exec "$@"
