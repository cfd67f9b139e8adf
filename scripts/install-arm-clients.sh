#!/usr/bin/env bash
# The Batch AI clients the /arm tests drive, each in its own pinned venv under
# .test-services/arm-clients/: sdk7 (azure-mgmt-batchai 7.0.0 + msrest, which it imports without
# declaring), sdk2 (azure-mgmt-batchai 2.0.0, msrestazure), azcli (azure-cli 2.91.0, `az batchai`).
# scripts/arm-clients/<venv>.txt pins every package; a venv whose stamp matches is skipped.
# Prints the clients' folder.
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python3}
DEST=${TRAINYARD_ARM_CLIENTS:-$PWD/.test-services/arm-clients}

declare -A REQUIREMENTS=(
  [sdk7]="azure-mgmt-batchai==7.0.0 msrest==0.7.1"
  [sdk2]="azure-mgmt-batchai==2.0.0"
  [azcli]="azure-cli==2.91.0"
)

mkdir -p "$DEST"
# Several test sessions may start at once: one installs, the others wait and then find it done.
exec 9>"$DEST/.lock"
flock 9
for name in sdk7 sdk2 azcli; do
  venv="$DEST/$name"
  constraints="scripts/arm-clients/$name.txt"
  stamp=$({ "$PYTHON" --version; echo "${REQUIREMENTS[$name]}"; cat "$constraints"; } | sha256sum | cut -d' ' -f1)
  if [ -x "$venv/bin/python" ] && [ "$(cat "$venv/.stamp" 2>/dev/null)" = "$stamp" ]; then
    continue
  fi
  echo "install-arm-clients: installing $name (${REQUIREMENTS[$name]})" >&2
  started=$(date +%s)
  rm -rf "$venv"
  "$PYTHON" -m venv "$venv"
  # shellcheck disable=SC2086  # the requirements are several words on purpose
  "$venv/bin/python" -m pip install --quiet --disable-pip-version-check \
    -c "$constraints" ${REQUIREMENTS[$name]} >&2
  echo "$stamp" >"$venv/.stamp"
  echo "install-arm-clients: $name ready in $(( $(date +%s) - started )) s, $(du -sh "$venv" | cut -f1)" >&2
done
echo "$DEST"
