#!/usr/bin/env bash
# Install Open MPI (apt) and mpi4py (pip, into the project's venv) for the mpi/horovod launchers.
# Idempotent: each step is skipped when its component is already there.
set -euo pipefail

VENV="${VENV:-.venv}"
MPI4PY_VERSION="${MPI4PY_VERSION:-4.1.2}"

if ! command -v mpirun >/dev/null 2>&1 || ! command -v mpicc >/dev/null 2>&1; then
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  apt-get install -y -qq --no-install-recommends openmpi-bin libopenmpi-dev >/dev/null
fi

if ! "$VENV/bin/python" -c "import mpi4py" >/dev/null 2>&1; then
  "$VENV/bin/pip" install -q "mpi4py==${MPI4PY_VERSION}"
fi

echo "mpi: $(mpirun --version 2>/dev/null | head -n1); mpi4py $("$VENV/bin/python" -c 'import mpi4py; print(mpi4py.__version__)')"
