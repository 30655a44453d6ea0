"""An option declared once, on its dataclass field: its help, its command-line flag and its range (as
``Field(description=...)`` does in LlamaIndex). From that one declaration the dataclass checks its values
(:func:`check`, one line naming the option and what it accepts), the ``ace`` command builds its click options
(``ace_llamaindex.cli``; nothing here imports click) and the Python API's docs list the options (:func:`documented`)::

    @documented
    @dataclass
    class Options:
        epochs: int | None = field(default=None, metadata=option("Passes over the data.", minimum=1))
"""

from __future__ import annotations

import dataclasses
import math
import types
import typing
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from .errors import OptionError

KEY = "ace_option"  # the key of a field's metadata that holds its Option


@dataclass(frozen=True)
class Option:
    """What a dataclass field means as an option. ``flag``: its command-line flag (default ``--`` and the field's name
    with dashes); ``no_flag``: why it has none instead. ``minimum``/``maximum`` (``min_open``/``max_open``: the bound
    itself excluded) or ``choices``: what it accepts (a float must also be finite); ``reason``: why, said after a
    refused value. ``negatable``: a boolean given as ``--x/--no-x``. ``show_default``: the command shows the field's
    default (False: ``None`` until given, the help saying what the default is). ``roles``: how each consumer treats
    the option (for instance ``{"adapter": "refused"}``), for whoever consumes the dataclass to read and check."""

    help: str = ""
    flag: str | None = None
    no_flag: str | None = None
    minimum: float | None = None
    maximum: float | None = None
    min_open: bool = False
    max_open: bool = False
    choices: tuple[str, ...] | None = None
    reason: str | None = None
    negatable: bool = False
    show_default: bool = True
    roles: Mapping[str, str] = field(default_factory=dict)

    @property
    def bounded(self) -> bool:
        return self.minimum is not None or self.maximum is not None


def option(help: str = "", **declared: Any) -> dict[str, Option]:
    """A field's metadata declaring it an option: ``field(default=..., metadata=option("help", minimum=1))``."""
    return {KEY: Option(help, **declared)}


def declared(cls: Any) -> dict[str, Option]:
    """Every field of the dataclass ``cls`` (class or instance) with its :class:`Option`, in field order (a field
    declared without one has an empty ``Option``: no help, no range, a flag named after it)."""
    return {f.name: f.metadata.get(KEY, Option()) for f in dataclasses.fields(cls)}


def undeclared(cls: Any) -> list[str]:
    """The fields of ``cls`` declared without :func:`option` metadata."""
    return [f.name for f in dataclasses.fields(cls) if KEY not in f.metadata]


def value_type(hint: Any) -> Any:
    """The type of a field's values from its annotation: ``int | None`` is ``int``, ``list[str]`` is ``list``."""
    if isinstance(hint, types.UnionType) or typing.get_origin(hint) is typing.Union:
        (hint,) = [arg for arg in typing.get_args(hint) if arg is not type(None)]
    return typing.get_origin(hint) or hint


def flag(name: str, spec: Option) -> str | None:
    """The command-line flag of field ``name`` (``None``: it has none, ``spec.no_flag`` says why)."""
    if spec.no_flag is not None:
        return None
    return spec.flag or "--" + name.replace("_", "-")


def label(name: str, spec: Option) -> str:
    """How a message names the option: its flag, else the field's name."""
    return flag(name, spec) or name


def default(cls: Any, name: str) -> Any:
    """The default of field ``name`` of the dataclass ``cls``."""
    f = next(f for f in dataclasses.fields(cls) if f.name == name)
    if f.default_factory is not dataclasses.MISSING:
        return f.default_factory()
    return None if f.default is dataclasses.MISSING else f.default


def _number(value: float) -> str:
    return str(int(value)) if float(value).is_integer() and abs(value) < 1e15 else str(value)


def range_text(spec: Option) -> str:
    """``at least 1``, ``between 0 and 1`` (both ends excluded), ``in [0, 1)``...; ``""`` without a range."""
    low, high = spec.minimum, spec.maximum
    if low is not None and high is not None:
        if spec.min_open and spec.max_open:
            return f"between {_number(low)} and {_number(high)}"
        return f"in {'(' if spec.min_open else '['}{_number(low)}, {_number(high)}{')' if spec.max_open else ']'}"
    if low is not None:
        return f"above {_number(low)}" if spec.min_open else f"at least {_number(low)}"
    if high is not None:
        return f"below {_number(high)}" if spec.max_open else f"at most {_number(high)}"
    return ""


def _within(value: float, spec: Option) -> bool:
    low, high = spec.minimum, spec.maximum  # written so that NaN is outside every range
    above = low is None or (value > low if spec.min_open else value >= low)
    below = high is None or (value < high if spec.max_open else value <= high)
    return above and below


def check_value(name: str, value: Any, spec: Option) -> None:
    """Refuse ``value`` for field ``name`` outside what ``spec`` accepts, in one line naming the field (``None``,
    the method's own default, is always accepted)."""
    if value is None or isinstance(value, bool):
        return
    if spec.choices is not None:
        if isinstance(value, (list, tuple, set)):
            bad = sorted(set(value) - set(spec.choices))
            if bad:
                raise OptionError(f"{name} must be among {', '.join(spec.choices)}; got {bad}")
        elif value not in spec.choices:
            raise OptionError(f"{name} must be one of {tuple(spec.choices)}, got {value!r}")
        return
    if not isinstance(value, (int, float)):
        return
    if spec.bounded and not _within(value, spec):
        raise OptionError(f"{name} must be {range_text(spec)}, got {value}" + (f": {spec.reason}" if spec.reason else ""))
    if isinstance(value, float) and not math.isfinite(value):
        raise OptionError(f"{name} must be a finite number, got {value}")


def check(obj: Any) -> None:
    """Check every field of the dataclass instance ``obj`` against its declared range or choices."""
    for name, spec in declared(obj).items():
        check_value(name, getattr(obj, name), spec)


def documented(cls: type) -> type:
    """Append to the dataclass's docstring its options: each field, its flag, range and help (the API's docs)."""
    lines = []
    for name, spec in declared(cls).items():
        accepts = range_text(spec) or (f"one of {', '.join(spec.choices)}" if spec.choices else "")
        where = ", ".join(part for part in (f"``{flag(name, spec)}``" if flag(name, spec) else "", accepts) if part)
        text = " ".join(part for part in (spec.help, f"(No flag: {spec.no_flag}.)" if spec.no_flag else "") if part)
        lines.append(f"    - ``{name}``{f' ({where})' if where else ''}: {text or '-'}")  # a list in the docs
    cls.__doc__ = (cls.__doc__ or "").rstrip() + "\n\n    Options:\n\n" + "\n".join(lines) + "\n"
    return cls
