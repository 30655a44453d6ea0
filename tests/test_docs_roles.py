"""The API pages render the docstrings' reST roles as Markdown (docs/griffe_sphinx_roles.py, loaded by mkdocs.yml).

- ``rewrite`` itself, one row per form (no griffe or mkdocs needed): what carries the weight.
- The Griffe extension on a small package: names resolve from the docstring's scope, unknown ones stay code.
- The built site (no role text left, links to API objects): tests/test_readme.py::test_docs_build_strict, which runs
  the same ``mkdocs build --strict`` as ``make docs`` once for both.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def _load_extension_module():
    spec = importlib.util.spec_from_file_location("griffe_sphinx_roles", ROOT / "docs" / "griffe_sphinx_roles.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


roles = _load_extension_module()

KNOWN = {"a.b.C", "a.b", "a.b.C.fit", "pkg.mod.Outcome.PROMOTED", "pkg.plan", "pkg.HERE"}
SCOPE = {"plan_memory": "pkg.plan", "HERE": "pkg.HERE", "Outcome": "pkg.mod.Outcome"}


def fake_resolve(name: str) -> str | None:
    """Short names from a scope table (then the rest of a dotted name), else the name as a full path."""
    head, dot, rest = name.partition(".")
    for path in ([SCOPE[head] + dot + rest] if head in SCOPE else []) + [name]:
        if path in KNOWN:
            return path
    return None


def link(path: str, text: str) -> str:
    return f'<autoref identifier="{path}" optional>`{text}`</autoref>'


CASES = [
    # (docstring text, Markdown it becomes)
    (":class:`~a.b.C`", link("a.b.C", "C")),  # ~: the last component shows
    (":class:`a.b.C`", link("a.b.C", "a.b.C")),  # no ~: the path as written shows
    (":py:class:`~a.b.C`", link("a.b.C", "C")),  # the py: domain
    (":mod:`~a.b`", link("a.b", "b")),
    (":meth:`~a.b.C.fit()`", link("a.b.C.fit", "fit()")),
    (":meth:`a.b.C.fit`", link("a.b.C.fit", "a.b.C.fit")),
    (":func:`plan_memory`", link("pkg.plan", "plan_memory")),  # a short name, resolved from the scope
    (":data:`HERE`", link("pkg.HERE", "HERE")),
    (":attr:`Outcome.PROMOTED`", link("pkg.mod.Outcome.PROMOTED", "Outcome.PROMOTED")),  # scope + the rest
    (":func:`.plan_memory`", link("pkg.plan", "plan_memory")),  # a leading dot: a name relative to here
    (":class:`the class <a.b.C>`", link("a.b.C", "the class")),  # an explicit title
    (":class:`the\nclass <a.b.C>`", link("a.b.C", "the class")),  # ...wrapped over two lines
    (":class:`!a.b.C`", "`a.b.C`"),  # !: never a link
    (":func:`unknown_helper`", "`unknown_helper`"),  # not resolvable: inline code, no autoref (no warning)
    (":exc:`~x.y.MissingError`", "`MissingError`"),  # a full path outside the loaded API: code, ~ still applies
    (":attr:`lost`", "`lost`"),
    (":envvar:`ACE_CACHE_DIR`", "`ACE_CACHE_DIR`"),  # not a Python role: code
    ("``x``", "`x`"),  # reST literal
    ("``ace mine --from-feedback LOG``", "`ace mine --from-feedback LOG`"),
    ("``:class:``", "`:class:`"),  # a role's text inside a literal is literal
    ("see :func:`plan_memory` ``(LOG, ...)``.", f"see {link('pkg.plan', 'plan_memory')} `(LOG, ...)`."),
    ("a:class:`C` and `single`", "a:class:`C` and `single`"),  # not a role (no boundary); Markdown code kept
    ("Schema::\n\n    {\"q\": 1} ``raw`` :class:`X`\n\nAfter :class:`~a.b.C`.",
     "Schema:\n\n    {\"q\": 1} ``raw`` :class:`X`\n\nAfter " + link("a.b.C", "C") + "."),  # literal block untouched
    ("Example ::\n\n    code\n", "Example\n\n    code\n"),  # " ::" disappears
    ("::\n\n    code", "\n\n    code"),  # "::" alone disappears
    ("ends::\nnext line", "ends::\nnext line"),  # no literal block follows: left as written
    ("```python\n:class:`X` ``y``\n```\n``z``", "```python\n:class:`X` ``y``\n```\n`z`"),  # fenced code untouched
]


@pytest.mark.parametrize(("text", "expected"), CASES, ids=[c[0].split("\n")[0][:40] for c in CASES])
def test_rewrite(text, expected):
    assert roles.rewrite(text, fake_resolve) == expected


def test_rewrite_links_nothing_without_a_resolver():
    assert roles.rewrite(":class:`~a.b.C` and :func:`f`") == "`C` and `f`"


def test_extension_resolves_from_the_docstrings_scope():
    griffe = pytest.importorskip("griffe")
    modules = {
        "__init__.py": '"""See :mod:`~pkg.mod`, :func:`helper` (imported), :class:`pkg.mod.Outcome`."""\n'
                       "from pkg.mod import helper\n",
        "mod.py": (
            "import enum\n"
            "from pkg import other\n"
            "class Outcome(enum.Enum):\n"
            '    """:attr:`PROMOTED` or :attr:`Outcome.KEPT`; :func:`helper`; :func:`missing`; :mod:`pkg`."""\n'
            "    PROMOTED = 1\n"
            "    KEPT = 2\n"
            "    def fit(self):\n"
            '        """:meth:`fit` of :class:`Outcome`; :func:`other.run`."""\n'
            "def helper():\n"
            '    """:class:`~pkg.mod.Outcome`.\n\n    Example::\n\n        :class:`kept`\n    """\n'
        ),
        "other.py": "def run():\n    pass\n",
    }
    extension = roles.SphinxRoles()
    with griffe.temporary_visited_package("pkg", modules, extensions=griffe.load_extensions(extension)) as pkg:
        assert pkg.docstring.value == (
            f"See {link('pkg.mod', 'mod')}, {link('pkg.mod.helper', 'helper')} (imported), "
            f"{link('pkg.mod.Outcome', 'pkg.mod.Outcome')}."
        )
        assert pkg["mod.Outcome"].docstring.value == (
            f"{link('pkg.mod.Outcome.PROMOTED', 'PROMOTED')} or {link('pkg.mod.Outcome.KEPT', 'Outcome.KEPT')}; "
            f"{link('pkg.mod.helper', 'helper')}; `missing`; {link('pkg', 'pkg')}."
        )
        assert pkg["mod.Outcome.fit"].docstring.value == (
            f"{link('pkg.mod.Outcome.fit', 'fit')} of {link('pkg.mod.Outcome', 'Outcome')}; "
            f"{link('pkg.other.run', 'other.run')}."
        )
        assert pkg["mod.helper"].docstring.value == f"{link('pkg.mod.Outcome', 'Outcome')}.\n\nExample:\n\n    :class:`kept`"
        # Griffe 1.x names the event on_package_loaded: a package is still rewritten once (the literal block above
        # no longer follows a "::", so a second pass would rewrite it).
        extension.on_package_loaded(pkg=pkg, loader=None)
        assert pkg["mod.helper"].docstring.value.endswith("\n    :class:`kept`")
