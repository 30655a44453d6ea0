"""A Griffe extension (mkdocs.yml loads it into mkdocstrings) that renders the docstrings' reST markup as Markdown.

The docstrings are written for Sphinx; mkdocstrings renders them as Markdown, where a role would show as raw text.
On load, each docstring of the package is rewritten (the source is not touched):

- ``:class:`~a.b.C` `` shows ``C``, ``:class:`a.b.C` `` shows ``a.b.C``, ``:func:`Title <a.b.f>` `` shows ``Title``, all
  as inline code linked to the object when the site renders it. A short name (``:func:`plan_memory` ``,
  ``:attr:`Outcome.PROMOTED` ``) is looked up from the docstring's own scope (its class, its module, their imports,
  as Griffe resolves names), else taken as a full path. A target that is not in the loaded API, or written
  ``!name``, or a role that names no Python object (``:envvar:``...), is plain inline code.
- The link is an *optional* autoref: if the site renders no heading for the object (private, or on no page), it
  shows as inline code without a warning, so ``mkdocs build --strict`` never fails on a reference.
- ````x```` becomes `` `x` `` (the same code span in Markdown). A paragraph ending in ``::`` before an indented
  literal block ends in ``:`` (``::`` alone on its line disappears), as Sphinx shows it; literal blocks and fenced
  code are left as they are.

``rewrite`` is the pure function (tests/test_docs_roles.py); ``SphinxRoles`` applies it to a loaded package.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from html import escape
from typing import Any

try:
    import griffe
    from griffe import Extension
except ImportError:  # rewrite() stays importable (and testable) without the [docs] extra
    griffe = None
    Extension = object

Resolver = Callable[[str], "str | None"]

# The Python-domain roles (with or without the ``py:`` domain); any other role renders its text as inline code.
PYTHON_ROLES = frozenset({
    "class", "func", "function", "meth", "method", "attr", "attribute", "mod", "module", "data", "obj", "exc",
    "exception", "const", "type", "any",
})

_INLINE = re.compile(
    r"(?P<literal>``(?P<code>[^`]+)``(?!`))"
    r"|(?<![\w`]):(?:py:)?(?P<role>[a-z]+):`(?P<content>[^`]+)`(?!`)"
)
_EXPLICIT = re.compile(r"(?s)(?P<title>.*?\S)\s*<(?P<target>[^<>]+)>")
_DOTTED = re.compile(r"[A-Za-z_]\w*(?:\.[A-Za-z_]\w*)*")
_FENCE = re.compile(r"\s*(?P<fence>`{3,}|~{3,})")


def _no_resolver(_name: str) -> str | None:
    return None


def _code(text: str) -> str:
    return f"`{text}`"


def _role(role: str, content: str, resolve: Resolver) -> str:
    content = " ".join(content.split())  # a role may wrap across lines
    explicit = _EXPLICIT.fullmatch(content)
    title, target = (explicit["title"], explicit["target"].strip()) if explicit else (None, content)
    if role not in PYTHON_ROLES:
        return _code(title or target)
    link = not target.startswith("!")
    target = target.lstrip("!")
    short = target.startswith("~")
    target = target.lstrip("~").lstrip(".")
    name = target.removesuffix("()")
    if title is None:
        title = name.rpartition(".")[2] + target[len(name):] if short else target
    path = resolve(name) if link and _DOTTED.fullmatch(name) else None
    if path is None:
        return _code(title)
    # An optional autoref: a link where the site renders the object, plain inline code (no warning) where it does not.
    return f'<autoref identifier="{escape(path)}" optional>{_code(title)}</autoref>'


def _inline(text: str, resolve: Resolver) -> str:
    def repl(match: re.Match) -> str:
        if match["literal"]:
            return _code(match["code"])
        return _role(match["role"], match["content"], resolve)

    return _INLINE.sub(repl, text)


def _drop_literal_marker(line: str) -> str:
    body = line.rstrip()
    if body.strip() == "::":
        return ""
    if body.endswith(" ::"):
        return body[:-3].rstrip()
    return body[:-1]  # "text::" -> "text:"


def _indent(line: str) -> int:
    return len(line) - len(line.lstrip())


def rewrite(text: str, resolve: Resolver = _no_resolver) -> str:
    """The docstring ``text`` with its reST roles, double-backtick literals and ``::`` markers as Markdown.

    ``resolve(name)`` returns the full path of the object a role names (``None``: no link); by default nothing
    is linked.
    """
    lines = text.split("\n")
    is_code = [False] * len(lines)
    fence: str | None = None
    literal: int | None = None  # the indentation of the paragraph whose indented literal block we are in
    intro: int | None = None  # the line ending in "::", until we know whether a literal block follows
    blank_after_intro = False
    for i, line in enumerate(lines):
        stripped = line.strip()
        if fence is not None:
            is_code[i] = True
            if stripped.startswith(fence) and not stripped.strip(fence[0]):
                fence = None
            continue
        if literal is not None:
            if not stripped or _indent(line) > literal:
                is_code[i] = True
                continue
            literal = None
        if intro is not None:
            if not stripped:
                blank_after_intro = True
                continue
            if blank_after_intro and _indent(line) > _indent(lines[intro]):
                literal = _indent(lines[intro])
                lines[intro] = _drop_literal_marker(lines[intro])
                is_code[i] = True
                intro = None
                continue
            intro = None
        if match := _FENCE.match(line):
            fence = match["fence"]
            is_code[i] = True
        elif stripped.endswith("::"):
            intro, blank_after_intro = i, False

    out: list[str] = []
    prose: list[str] = []
    for line, code in zip(lines, is_code):
        if code:
            if prose:
                out.append(_inline("\n".join(prose), resolve))
                prose = []
            out.append(line)
        else:
            prose.append(line)
    if prose:
        out.append(_inline("\n".join(prose), resolve))
    return "\n".join(out)


def _exists(collection: Any, path: str) -> bool:
    try:
        collection[path]
    except (KeyError, ValueError, IndexError):
        return False
    except Exception as exc:  # an alias whose target is not loaded (AliasResolutionError, CyclicAliasError)
        if griffe is not None and isinstance(exc, griffe.GriffeError):
            return False
        raise
    return True


def resolver(obj: Any, collection: Any) -> Resolver:
    """Resolve a role's target from the scope of ``obj`` (a Griffe object), checked against the loaded ``collection``.

    A short name is resolved where the docstring is (its members, then its parents' members and imports, as
    ``Object.resolve`` does), the rest of a dotted name appended; failing that, the name is taken as a full path.
    """

    def resolve(name: str) -> str | None:
        head, dot, rest = name.partition(".")
        candidates = []
        try:
            candidates.append(obj.resolve(head) + dot + rest)
        except Exception as exc:
            if griffe is None or not isinstance(exc, griffe.GriffeError):
                raise
        candidates.append(name)
        return next((path for path in candidates if _exists(collection, path)), None)

    return resolve


def _rewrite_tree(obj: Any, collection: Any) -> None:
    if obj.docstring is not None:
        obj.docstring.value = rewrite(obj.docstring.value, resolver(obj, collection))
    for member in obj.members.values():
        if not member.is_alias:  # an alias's docstring is its target's, rewritten where the target is defined
            _rewrite_tree(member, collection)


class SphinxRoles(Extension):
    """Rewrite every docstring of each loaded package once the package is loaded (so names resolve)."""

    def on_package(self, *, pkg: Any, loader: Any, **kwargs: Any) -> None:
        state = pkg.extra["griffe_sphinx_roles"]  # once per package: a second pass would not be a no-op
        if not state.get("rewritten"):
            state["rewritten"] = True
            _rewrite_tree(pkg, loader.modules_collection)

    # The same event under its Griffe 1.x name (Griffe 2 calls on_package only).
    def on_package_loaded(self, *, pkg: Any, loader: Any, **kwargs: Any) -> None:
        self.on_package(pkg=pkg, loader=loader)
