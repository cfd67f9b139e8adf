#!/usr/bin/env bash
# rclone and fuse3 for `blob` volumes (rclone mount of s3:// and az:// containers); idempotent.
# Prints the path of the rclone binary.
set -euo pipefail
if ! command -v rclone >/dev/null 2>&1 || ! command -v fusermount3 >/dev/null 2>&1; then
  if [ "$(id -u)" != 0 ] || ! command -v apt-get >/dev/null 2>&1; then
    echo "install-rclone: rclone and fuse3 are needed (apt-get install rclone fuse3)" >&2
    exit 1
  fi
  echo "installing rclone and fuse3" >&2
  # Other install-*.sh scripts may run apt at the same time: wait for dpkg's lock instead of failing.
  apt-get -o DPkg::Lock::Timeout=600 update -qq >&2
  DEBIAN_FRONTEND=noninteractive apt-get -o DPkg::Lock::Timeout=600 install -y -qq --no-install-recommends \
    rclone fuse3 >/dev/null
fi
command -v rclone
