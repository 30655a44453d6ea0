# Two commands for a newcomer: `make demo` runs the whole job, `make test` runs the tests.
# Both create .venv on first use (CPU torch first, so pip never pulls a multi-GB CUDA build).
VENV ?= .venv
PY := $(VENV)/bin/python
export HF_HUB_OFFLINE ?= 1
export TOKENIZERS_PARALLELISM ?= false

.PHONY: setup demo test docs infinity-venv test-floors

setup: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml plugins/ace-extra-metrics/pyproject.toml scripts/setup.sh
	bash scripts/setup.sh $(VENV)
	touch $@

demo: setup
	$(VENV)/bin/ace pipeline --out runs/demo

# The fallback tests talk to a real OpenAI-compatible server (infinity-emb), which pins an older
# transformers and so lives in its own venv.
infinity-venv: .venv-infinity/.installed
.venv-infinity/.installed:
	bash scripts/setup_infinity.sh .venv-infinity
	touch $@

# The documentation site (mkdocs.yml, docs/) into site/ (ignored). --strict: a warning (a broken link or anchor, a page
# left out of the nav, a docstring mkdocstrings cannot render) fails the build. The [docs] extra is installed on first use.
docs: $(VENV)/.docs-installed
	$(VENV)/bin/mkdocs build --strict -d site

$(VENV)/.docs-installed: $(VENV)/.installed pyproject.toml
	$(PY) -m pip install -q -e ".[docs]"
	touch $@

test: setup infinity-venv docs
	$(VENV)/bin/ruff check .
	$(VENV)/bin/lint-imports
	ACE_INFINITY_BIN=$(CURDIR)/.venv-infinity/bin/infinity_emb ACE_REQUIRE_INFINITY=1 ACE_REQUIRE_EXTRAS=1 $(PY) -m pytest -q -rs

# The lowest versions pyproject.toml allows, in their own venv (.venv-floors): serving, mining and training smoke tests.
test-floors:
	bash scripts/test_floors.sh .venv-floors
