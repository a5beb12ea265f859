#!/usr/bin/env bash
# Create .venv and install mmtrain with the pinned stack (constraints.txt). Idempotent.
# torch 2.13.0 is the CPU wheel on this machine's disk; the constraint keeps pip from a CUDA build.
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python3}
if [ ! -x .venv/bin/python ]; then
  "$PYTHON" -m venv .venv
fi
# (This machine's pip config lists index folders that may be absent; drop those warnings only.)
.venv/bin/python -m pip install --quiet --disable-pip-version-check -c constraints.txt -e '.[dev]' \
  2> >(grep -v "is ignored: it is neither a file nor a directory" >&2)
.venv/bin/python -c "import mmtrain, torch; print(f'mmtrain {mmtrain.__version__} with torch {torch.__version__}')"
