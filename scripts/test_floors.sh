#!/usr/bin/env bash
# Install the lowest versions pyproject.toml allows into their own venv and run the serving, mining and training
# smoke tests there (`make test-floors`; README "Supported versions").
# The floors are declared once, in pyproject.toml: each `name>=X` of [project.dependencies] and of the extras
# installed here ([train], [edge]) becomes `name==X` in a generated constraints file; constraints/floors.txt adds
# what pyproject cannot say (torch: see there). The test tools take the [dev] extra's specifiers as written.
set -euo pipefail
cd "$(dirname "$0")/.."
VENV=${1:-.venv-floors}
export HF_HUB_OFFLINE=${HF_HUB_OFFLINE:-1} TOKENIZERS_PARALLELISM=${TOKENIZERS_PARALLELISM:-false}
start=$(date +%s)

python3 -m venv --clear "$VENV"  # afresh each run: a package left from an earlier run could satisfy a floor
PY=$VENV/bin/python
"$PY" -m pip install -q --upgrade pip

"$PY" - "$VENV/floors.txt" "$VENV/test-tools.txt" <<'EOF'
import re, sys
try:
    import tomllib
except ImportError:  # Python 3.10
    import tomli as tomllib
project = tomllib.load(open("pyproject.toml", "rb"))["project"]
extras = project["optional-dependencies"]
floors = {}
for req in project["dependencies"] + extras["train"] + extras["edge"]:
    m = re.match(r"\s*([A-Za-z0-9_.-]+)\s*(?:\[[^\]]*\])?\s*([^;]*)", req)
    name, spec = m.group(1).lower().replace("_", "-"), m.group(2)
    low = re.search(r">=\s*([^,\s]+)", spec)
    if not low:
        sys.exit(f"{req!r}: no >= floor to test")
    floors[name] = max(floors.get(name, low.group(1)), low.group(1), key=lambda v: [int(p) for p in v.split(".")])
pinned = open("constraints/floors.txt").read()
lines = [f"{n}=={v}" for n, v in sorted(floors.items()) if not re.search(rf"^{re.escape(n)}\s*==", pinned, re.M)]
open(sys.argv[1], "w").write("\n".join(lines) + "\n" + pinned)
tools = ("pytest", "pytest-asyncio")
open(sys.argv[2], "w").write("\n".join(r for r in extras["dev"] if re.split(r"[\[<>=!~ ]", r)[0] in tools) + "\n")
EOF

# torch first, alone: a torch resolved together with the rest could be a multi-GB CUDA build.
"$PY" -m pip install -q -c "$VENV/floors.txt" torch
install=(-c "$VENV/floors.txt" -e ".[train,edge]" -r "$VENV/test-tools.txt")
if ! "$PY" -m pip install -q "${install[@]}"; then  # -q hides which requirements conflict: show them
  "$PY" -m pip install --dry-run "${install[@]}" 2>&1 | grep -A12 "conflict is caused by" || true
  exit 1
fi
"$PY" -m pip check
echo "floors installed:"
"$PY" -m pip list --format=freeze 2>/dev/null \
  | grep -iE '^(torch|sentence-transformers|transformers|llama-index-core|qdrant-client|qdrant-edge-py|numpy|tqdm|tenacity)==' \
  | paste -sd' ' -
set_up=$(( $(date +%s) - start ))

# Serving, mining and training; test_resume_from_checkpoint (minutes on 2 cores) is left to `make test`.
# The embedding-server tests skip here (no ACE_INFINITY_BIN): they exercise infinity-emb, not our floors.
"$PY" -m pytest -x -q -p no:cacheprovider tests/test_embedding.py tests/test_retriever.py tests/test_vector_store.py \
  tests/test_mining.py tests/test_training.py -k "not test_resume_from_checkpoint"
echo "test-floors: set-up ${set_up}s, all $(( $(date +%s) - start ))s"
