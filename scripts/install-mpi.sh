#!/usr/bin/env bash
# Open MPI (apt: openmpi-bin, libopenmpi-dev) and mpi4py (pip, into the project's venv) for the
# mpi and horovod launchers and their tests. Idempotent: each step is skipped when already done.
# Open MPI comes first: building mpi4py needs its compiler wrapper (mpicc).
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
VENV="${VENV:-$ROOT/.venv}"
MPI4PY_VERSION="${MPI4PY_VERSION:-4.1.2}"  # as pinned in pyproject.toml's `mpi` extra

if ! command -v mpirun >/dev/null 2>&1 || ! command -v mpicc >/dev/null 2>&1; then
  if [ "$(id -u)" != 0 ] || ! command -v apt-get >/dev/null 2>&1; then
    echo "install-mpi: Open MPI is needed (apt-get install openmpi-bin libopenmpi-dev)" >&2
    exit 1
  fi
  export DEBIAN_FRONTEND=noninteractive
  apt-get -o DPkg::Lock::Timeout=600 update -qq >&2
  apt-get -o DPkg::Lock::Timeout=600 install -y -qq --no-install-recommends openmpi-bin libopenmpi-dev >&2
fi

if ! "$VENV/bin/python" -c "import mpi4py" >/dev/null 2>&1; then
  "$VENV/bin/python" -m pip install --quiet "mpi4py==${MPI4PY_VERSION}" >&2
fi

echo "mpi: $(mpirun --version 2>/dev/null | head -n1); mpi4py $("$VENV/bin/python" -c 'import mpi4py; print(mpi4py.__version__)')"
