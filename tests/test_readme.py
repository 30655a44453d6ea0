"""The README is the landing page: short, and everything it shows works.

What is run for real and what is only parsed (each table below says it per command or snippet):

- Shell commands (SHELL_CHECKS, keyed by their first two words; a README command without a row fails):
  * "run": run for real, exactly as written, one after the other in README order, in one scratch folder. The one
    stand-in is the folder `make demo` would have written, ``runs/demo/model``: a real query adapter over the
    bundled base model (what the demo chooses), trained here in seconds on the tiny shipped set instead of minutes
    on the demo set. ``ace index`` then indexes the real demo memories (the default dataset) with it.
  * "make": `make demo` and `make test` are NOT run (minutes each, and they install virtualenvs). ``make -n -W
    pyproject.toml TARGET`` (a dry run: make parses the Makefile and prints every recipe it would run, here as if
    the set-up were stale) must show the set-up the README promises and the commands the target invokes; the
    ``ace`` command that `make demo` runs is parsed by click (options, types, ranges) and its options must appear
    in ``ace pipeline --help``.
- Python snippets (PYTHON_CHECKS): executed for real, each in its own process in the scratch folder, where the
  model folder the snippet names (``models/ace-finetuned``, a folder ``ace train`` writes) is the bundled base
  model, a plain sentence-transformers folder like a full fine-tune's; the output is checked. The inline
  ``AdapterEmbedding(...)`` expression is evaluated over the adapter stand-in.
- Links: every relative link resolves (links into ``docs/`` to a page of the site, with its anchor if it names
  one), and the docs build with ``mkdocs build --strict`` (broken links, anchors, pages left out of the nav).
- Imports shown anywhere in the README or the docs (``from ace_llamaindex... import ...``) are executed, and every
  hook of ``ace_llamaindex.plugins.hookspecs`` is documented.
"""

from __future__ import annotations

import ast
import os
import re
import shlex
import shutil
import subprocess
import sys
import unicodedata
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
README = ROOT / "README.md"
DOCS = ROOT / "docs"
MAX_CHARS = 15_000
BIN = Path(sys.executable).parent

# first two words of a README shell command -> (how it is checked, what it must show: for "make", strings its dry run
# contains, the set-up first; for "run", regexes its output matches)
SHELL_CHECKS: dict[str, tuple[str, list[str]]] = {
    "make demo": ("make", ["bash scripts/setup.sh", "ace pipeline --out runs/demo"]),
    "make test": ("make", ["bash scripts/setup.sh", "pip install -q -e .[docs]", "ruff check .", "lint-imports",
                           "mkdocs build --strict -d site", "pytest"]),
    "ace index": ("run", [r"300 documents -> collection"]),
    "ace search": ("run", [r"(?m)^\[0\.\d+\] t\d{4}: "]),  # "[score] id: text", a demo memory (ids t0000...)
    "ace --help": ("run", [r"Commands:", *(rf"(?m)^  {c} " for c in ("pipeline", "mine", "train", "eval", "index", "search"))]),
}

# a string that identifies a README ```python block -> a regex its stdout must match
PYTHON_CHECKS: dict[str, str] = {
    "VectorStoreIndex.from_documents": r"(?m)^runbook-7 0\.\d+$",
}


def code_blocks(lang: str) -> list[str]:
    return re.findall(rf"^```{lang}\n(.*?)^```", README.read_text(), re.M | re.S)


def shell_commands() -> list[list[str]]:
    commands = []
    for block in code_blocks("bash"):
        for line in block.replace("\\\n", " ").splitlines():
            argv = shlex.split(line, comments=True)
            if argv:
                commands.append(argv)
    return commands


def key(argv: list[str]) -> str:
    return " ".join(argv[:2])


def test_readme_is_a_landing_page_not_the_manual():
    size = len(README.read_text())
    assert size <= MAX_CHARS, f"README.md is {size:,} characters (at most {MAX_CHARS:,}): move the detail to docs/"


def test_every_readme_command_and_snippet_has_a_check():
    commands = shell_commands()
    assert {"make demo", "make test"} <= {key(c) for c in commands}, "the README shows the two commands"
    missing = [" ".join(c) for c in commands if key(c) not in SHELL_CHECKS]
    assert not missing, f"README shell commands without a row in SHELL_CHECKS (run them, or say why not): {missing}"
    for block in code_blocks("python"):
        assert sum(needle in block for needle in PYTHON_CHECKS) == 1, f"no single PYTHON_CHECKS row for:\n{block}"
    assert len(code_blocks("python")) == len(PYTHON_CHECKS)
    assert not set(re.findall(r"^```(\w*)$", README.read_text(), re.M)) - {"bash", "python", ""}


# ---- the two heavy commands: dry run and parse ----

def dry_run(target: str) -> str:
    env = {k: v for k, v in os.environ.items() if k not in ("MAKEFLAGS", "MFLAGS", "MAKELEVEL")}
    done = subprocess.run(["make", "-n", "-W", "pyproject.toml", target], cwd=ROOT, env=env, capture_output=True,
                          text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    return done.stdout.replace('"', "")


@pytest.mark.parametrize("command", [k for k, (how, _) in SHELL_CHECKS.items() if how == "make"])
def test_make_targets_do_their_set_up_and_invoke_what_the_readme_says(command):
    recipe = dry_run(command.split()[1])
    positions = []
    for expected in SHELL_CHECKS[command][1]:
        assert expected in recipe, f"`{command}` does not run {expected!r}; its dry run:\n{recipe}"
        positions.append(recipe.index(expected))
    assert positions[0] == min(positions), f"`{command}` runs its set-up first"
    if command == "make test":
        assert recipe.index("ruff check .") < recipe.index("lint-imports") < recipe.index("pytest")
        assert "make test" in (ROOT / ".ci" / "run").read_text(), "CI runs `make test`"


def test_what_make_demo_runs_parses():
    from click.testing import CliRunner

    from ace_llamaindex.cli import cli

    line = next(ln for ln in dry_run("demo").splitlines() if "bin/ace " in ln)
    argv = shlex.split(line)
    argv = argv[next(i for i, a in enumerate(argv) if a.endswith("/ace")) + 1:]
    command = cli.commands[argv[0]]
    command.make_context(argv[0], list(argv[1:]))  # click parses and converts every option; raises if one is wrong
    shown = CliRunner().invoke(cli, [argv[0], "--help"])
    assert shown.exit_code == 0, shown.output
    for option in (a for a in argv[1:] if a.startswith("--")):
        assert option in shown.output, f"`ace {argv[0]} --help` does not list {option}"


# ---- the cheap commands and the snippets: run for real ----

@pytest.fixture(scope="module")
def sandbox(tmp_path_factory):
    """A scratch folder with the stand-ins named in the module docstring."""
    from ace_llamaindex import AdapterConfig, CachedEncoder, HardNegativeMiner, MiningOptions, load_dataset, train_adapter
    from ace_llamaindex.data.loading import SMALL_DATASET
    from ace_llamaindex.embeddings.models import resolve_model

    folder = tmp_path_factory.mktemp("readme")
    (folder / "models").mkdir()
    (folder / "models" / "ace-finetuned").symlink_to(resolve_model(None), target_is_directory=True)
    small = load_dataset(SMALL_DATASET)
    small = small.subset(sorted(small.queries)[::4])
    base = CachedEncoder(cache_dir=folder / ".cache", show_progress=False)
    examples = HardNegativeMiner("dense", base, options=MiningOptions(num_negatives=2), show_progress=False).mine(small)
    card = train_adapter(examples, base, folder / "runs" / "demo" / "model", AdapterConfig(epochs=3, force=True))
    assert card.promoted
    return folder


@pytest.fixture(scope="module")
def ran(sandbox):
    """Every "run" command of the README, in order (``ace search`` needs the index ``ace index`` built)."""
    results = {}
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false", "ACE_CACHE_DIR": str(sandbox / ".cache")}
    for argv in shell_commands():
        if SHELL_CHECKS[key(argv)][0] == "run":
            program = BIN / argv[0] if (BIN / argv[0]).exists() else shutil.which(argv[0])
            results[key(argv)] = subprocess.run([str(program), *argv[1:]], cwd=sandbox, env=env, capture_output=True,
                                                text=True, timeout=600)
    return results


@pytest.mark.parametrize("command", [k for k, (how, _) in SHELL_CHECKS.items() if how == "run"])
def test_readme_command_runs(ran, command):
    assert command in ran, f"{command!r} is in SHELL_CHECKS but not in the README"
    done = ran[command]
    output = done.stdout + done.stderr
    assert done.returncode == 0 and "Traceback" not in output, output
    for expected in SHELL_CHECKS[command][1]:
        assert re.search(expected, output), f"{command}: no match for {expected!r} in its output:\n{output}"


@pytest.mark.parametrize("needle", list(PYTHON_CHECKS))
def test_readme_python_snippet_runs(sandbox, needle):
    code = next(block for block in code_blocks("python") if needle in block)
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}
    done = subprocess.run([sys.executable, "-c", code], cwd=sandbox, env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr
    assert re.search(PYTHON_CHECKS[needle], done.stdout), done.stdout


def test_the_readme_adapter_line_serves_what_make_demo_writes(sandbox, monkeypatch):
    expression = re.search(r"`(AdapterEmbedding\(FineTunedEmbedding\(\),\s*\"runs/demo/model\"\))`", README.read_text())
    assert expression, "the README says how to serve the demo's query adapter"
    from ace_llamaindex import AdapterEmbedding, FineTunedEmbedding

    monkeypatch.chdir(sandbox)
    names = {"AdapterEmbedding": AdapterEmbedding, "FineTunedEmbedding": FineTunedEmbedding}
    embed = eval(" ".join(expression.group(1).split()), names)  # noqa: S307 - the README's own line
    assert len(embed.get_query_embedding("kraken is 503ing")) == 384


# ---- links and the docs site ----

def slug(heading: str) -> str:
    """The anchor of a heading, where MkDocs (Python-Markdown's toc) and GitHub agree (plain words, single spaces)."""
    text = re.sub(r"[`*_]|\[([^]]*)\]\([^)]*\)", r"\1", heading).strip()
    text = unicodedata.normalize("NFKD", text).encode("ascii", "ignore").decode()
    return re.sub(r"[-\s]+", "-", re.sub(r"[^\w\s-]", "", text).strip().lower())


def readme_links() -> list[str]:
    text = README.read_text()
    links = re.findall(r"\]\(([^)\s]+)\)", text) + re.findall(r"\b(docs/[\w/.-]+\.md)\b", text)
    return sorted({link for link in links if not re.match(r"[a-z]+://|mailto:", link)})


@pytest.mark.parametrize("link", readme_links())
def test_readme_link_resolves(link):
    path, _, anchor = link.partition("#")
    target = (ROOT / path).resolve() if path else README
    assert target.exists(), f"README links to {link}, which does not exist"
    if path.startswith("docs/"):
        assert target.is_file() and target.suffix == ".md" and DOCS in target.parents, f"{link} is not a docs page"
    if anchor:
        headings = re.findall(r"^#+ (.+)$", target.read_text(), re.M)
        assert anchor in {slug(h) for h in headings}, f"{link}: no heading with anchor #{anchor}"


def test_readme_links_every_docs_section():
    linked = {link.partition("#")[0] for link in readme_links()}
    for page in ("quickstart", "concepts", "cli", "api/index", "benchmarks", "reliability", "plugins",
                 "supported-versions", "experiments", "scale-out"):
        assert f"docs/{page}.md" in linked, f"the README does not link docs/{page}.md"


def test_docs_build_strict(tmp_path):
    """The same build `make docs` runs (so `make test` and CI), here so this file alone checks the links too."""
    mkdocs = BIN / "mkdocs"
    if not mkdocs.exists():
        if os.environ.get("ACE_REQUIRE_EXTRAS") == "1":
            pytest.fail("mkdocs is not installed: `make docs` installs the [docs] extra")
        pytest.skip("the [docs] extra is not installed (make docs installs it)")
    site = tmp_path / "site"
    done = subprocess.run([str(mkdocs), "build", "--strict", "-q", "-d", str(site)], cwd=ROOT,
                          capture_output=True, text=True, timeout=300, env={**os.environ, "HF_HUB_OFFLINE": "1"})
    assert done.returncode == 0, done.stdout + done.stderr
    # the docstrings' reST roles became code or links (docs/griffe_sphinx_roles.py; tests/test_docs_roles.py)
    pages = {page.relative_to(site).as_posix(): page.read_text() for page in (site / "api").rglob("*.html")}
    assert pages
    leftovers = {name: ROLE_TEXT.findall(html) for name, html in pages.items() if ROLE_TEXT.search(html)}
    assert not leftovers, f"role text left on the API pages: {leftovers}"
    assert not [name for name, html in pages.items() if "<autoref" in html]  # every autoref was fixed up
    # the option lists made from the fields' declarations (docs/griffe_options.py), as `ace train --help` shows them
    assert "<li><code>num_negatives</code> (<code>--train-negatives</code>" in pages["api/training/index.html"]
    # A role that resolved to a rendered object is a link to its heading (the tooltip names the object's path).
    links = re.findall(r'<a class="autorefs autorefs-internal" title="[^"]*\(ace_llamaindex\.[\w.]+\)"[^>]*><code>',
                       "".join(pages.values()))
    assert len(links) >= 5, f"only {len(links)} links to API objects"


ROLE_TEXT = re.compile(r":(?:py:)?(?:class|func|function|meth|method|attr|attribute|mod|module|data|obj|exc|const):")


# ---- what the docs say about the code ----

def documented_imports() -> list[str]:
    """Every ``from ace_llamaindex... import ...`` in the README and the docs: in code blocks and in inline code."""
    found = set()
    for page in [README, *sorted(DOCS.rglob("*.md"))]:
        text = page.read_text()
        for block in re.findall(r"^```python\n(.*?)^```", text, re.M | re.S):
            for node in ast.walk(ast.parse(block)):  # every Python block parses
                if isinstance(node, ast.ImportFrom) and (node.module or "").startswith("ace_llamaindex"):
                    found.add(f"from {node.module} import {', '.join(a.name for a in node.names)}")
        found.update(m.group(0) for m in re.finditer(r"from ace_llamaindex[\w.]* import \w+(?:, \w+)*", text))
    return sorted(found)


@pytest.mark.parametrize("statement", documented_imports())
def test_documented_import_works(statement):
    exec(statement, {})  # noqa: S102 - the docs' own import line


def test_every_hook_is_documented():
    from ace_llamaindex.plugins import hookspecs

    hooks = [name for name, fn in vars(hookspecs).items() if callable(fn) and hasattr(fn, "ace_llamaindex_spec")]
    assert "register_engines" in hooks
    page = (DOCS / "plugins.md").read_text()
    for hook in hooks:
        assert f"`{hook}(" in page, f"docs/plugins.md does not document the hook {hook}"
        assert hook.replace("register", "") in README.read_text(), f"the README's docs table does not name {hook}"
