#!/usr/bin/env bash
# Create a virtualenv with ace-llamaindex (editable), its dev extras and the example plugin.
# torch is installed first from TORCH_SPEC (default: the 2.13.0 CPU build); an already-installed torch is kept.
set -euo pipefail
VENV=${1:-.venv}
[ -x "$VENV/bin/python" ] || python3 -m venv "$VENV"
"$VENV/bin/python" -m pip install -q --upgrade pip
if ! "$VENV/bin/python" -c "import torch" 2>/dev/null; then
  "$VENV/bin/python" -m pip install -q "${TORCH_SPEC:-torch==2.13.0}"
fi
"$VENV/bin/python" -m pip install -q -e ".[dev]" ./plugins/ace-extra-metrics
