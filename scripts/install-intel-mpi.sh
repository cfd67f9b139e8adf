#!/usr/bin/env bash
# Intel MPI (PyPI's impi-rt: Hydra's mpirun/mpiexec.hydra, libmpi.so.12) for the mpi launcher's Intel MPI
# tests, into a prefix of its own: .test-services/intel-mpi (INTEL_MPI_PREFIX). Idempotent: skipped when
# that version is there. Never put on the default PATH, so Open MPI's mpirun stays the one every other
# test finds; the Intel MPI tests put $PREFIX/bin first on PATH (and $PREFIX/lib on LD_LIBRARY_PATH) for
# their own jobs only.
#
# impi-rt 2021.19 declares `libfabric>=2.6`, which no package index here has: it is installed without
# its dependencies and uses Debian's libfabric1 (1.17, already there as an Open MPI dependency), which
# this version accepts (its tcp;ofi_rxm provider is what the tests use on loopback).
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
VENV="${VENV:-$ROOT/.venv}"
PREFIX="${INTEL_MPI_PREFIX:-$ROOT/.test-services/intel-mpi}"
IMPI_VERSION="${IMPI_VERSION:-2021.19.0}"
STAMP="$PREFIX/.impi-rt-version"

if [ -x "$PREFIX/bin/mpirun" ] && [ "$(cat "$STAMP" 2>/dev/null)" = "$IMPI_VERSION" ]; then
  echo "intel-mpi: impi-rt $IMPI_VERSION already in $PREFIX"
  exit 0
fi

if ! ldconfig -p 2>/dev/null | grep -q 'libfabric\.so\.1 '; then
  if [ "$(id -u)" != 0 ] || ! command -v apt-get >/dev/null 2>&1; then
    echo "install-intel-mpi: libfabric is needed (apt-get install libfabric1)" >&2
    exit 1
  fi
  export DEBIAN_FRONTEND=noninteractive
  apt-get -o DPkg::Lock::Timeout=600 update -qq >&2
  apt-get -o DPkg::Lock::Timeout=600 install -y -qq --no-install-recommends libfabric1 >&2
fi

# Into a fresh folder next to the prefix, moved into place once complete: an interrupted install
# leaves no half prefix that the check above would take for a whole one.
staging="$PREFIX.partial"
rm -rf "$staging"
mkdir -p "$(dirname "$PREFIX")"
"$VENV/bin/python" -m pip install --quiet --no-deps --no-warn-script-location --ignore-installed \
  --prefix "$staging" "impi-rt==${IMPI_VERSION}" >&2
# A wheel has no symbolic links: libmpi.so, .so.12, .so.12.0 and .so.12.0.0 are four copies (16 MB
# each, the same for the other libraries). Keep the fullest name, link the others to it.
(
  cd "$staging/lib"
  for lib in *.so; do
    [ -f "$lib" ] || continue
    full=$(ls -1 "$lib"* | sort | tail -n1)
    for name in "$lib"*; do
      if [ "$name" != "$full" ] && [ ! -L "$name" ] && cmp -s "$name" "$full"; then
        ln -sf "$full" "$name"
      fi
    done
  done
)
chmod +x "$staging"/bin/*
banner=$("$staging/bin/mpiexec.hydra" --version 2>&1 || true)
case "$banner" in
  *"Intel(R) MPI"*) ;;
  *) echo "install-intel-mpi: mpiexec.hydra --version does not say Intel(R) MPI: $banner" >&2; exit 1 ;;
esac
echo "$IMPI_VERSION" >"$staging/.impi-rt-version"
rm -rf "$PREFIX"
mv "$staging" "$PREFIX"
echo "intel-mpi: ${banner%%$'\n'*} in $PREFIX"
