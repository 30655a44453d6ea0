"""Click options made from dataclass fields (:mod:`ace_llamaindex.options`): the ``ace`` command's generated options,
built when a command is first parsed or shown (the dataclasses live in stages that ``import ace_llamaindex.cli`` must
not load), and the finite-float type every float option uses."""

from __future__ import annotations

import math

import click


class FiniteFloat(click.FloatRange):
    """A float in a range, and finite: click's FloatRange lets NaN through (every comparison with NaN is False)."""

    name = "finite float"

    def convert(self, value, param, ctx):
        number = super().convert(value, param, ctx)
        if not math.isfinite(number):
            self.fail(f"{value!r} is not a finite number", param, ctx)
        return number

    def _describe_range(self) -> str:
        return super()._describe_range() if self.min is not None or self.max is not None else ""  # not "x<=None"


class _Generated:
    """Stands in a command's params for the options made from a dataclass's fields (:func:`field_options`) until the
    command is first parsed or shown: the dataclasses live in stages (train, mine) that ``import ace_llamaindex.cli``
    must not load (tests/test_imports.py)."""

    def __init__(self, build) -> None:
        self.build = build


def generated_options(build):
    """A decorator that gives a command the options ``build()`` makes, at ``build``'s place among its options."""

    def apply(f):
        f.__dict__.setdefault("__click_params__", []).append(_Generated(build))
        return f

    return apply


class AceCommand(click.Command):
    """A command whose generated options (:func:`generated_options`) are made when it is first parsed or shown."""

    @property
    def params(self) -> list[click.Parameter]:
        if any(isinstance(p, _Generated) for p in self._params):
            self._params = [q for p in self._params for q in (p.build() if isinstance(p, _Generated) else [p])]
        return self._params

    @params.setter
    def params(self, value: list[click.Parameter]) -> None:
        self._params = list(value)


class AceGroup(click.Group):
    command_class = AceCommand
    group_class = type  # a subgroup is an AceGroup too


def _dest(flag: str) -> str:
    """The Python name of a generated option: its flag's (``--train-negatives``: ``train_negatives``)."""
    return flag.lstrip("-").replace("-", "_")


def field_options(cls, help_text=None) -> list[click.Option]:
    """The click options of the dataclass ``cls``, in field order, each made from its field's declaration
    (:mod:`ace_llamaindex.options`): flag, help (``help_text(name, spec)`` when given), range or choices, default. A
    field whose declaration gives no flag has no option (its ``no_flag`` says why)."""
    import typing

    from .options import declared, default, flag, value_type

    hints = typing.get_type_hints(cls)
    made = []
    for name, spec in declared(cls).items():
        opt = flag(name, spec)
        if opt is None:
            continue
        kind, value = value_type(hints[name]), default(cls, name)
        attrs = {"help": (help_text(name, spec) if help_text else spec.help) or None}
        choice = click.Choice(list(spec.choices)) if spec.choices else None
        if kind is bool:
            if not spec.negatable and value is not False:
                raise TypeError(f"{cls.__name__}.{name}: a flag that is on by default needs negatable=True")
            if spec.negatable:
                decls, attrs["default"], attrs["show_default"] = [f"{opt}/--no-{opt[2:]}"], value, value is not None
            else:
                decls, attrs["is_flag"] = [opt], True
        elif kind is list:
            decls, attrs["multiple"], attrs["type"] = [opt], True, choice
        else:
            decls = [opt]
            if kind is int:
                attrs["type"] = click.IntRange(spec.minimum, spec.maximum, spec.min_open, spec.max_open) \
                    if spec.bounded else click.INT
            elif kind is float:
                attrs["type"] = FiniteFloat(spec.minimum, spec.maximum, spec.min_open, spec.max_open)
            else:
                attrs["type"] = choice
            shown = value is not None and spec.show_default
            attrs.update(default=value if shown else None, show_default=shown)
        made.append(click.Option([*decls, _dest(opt)], **attrs))
    return made


def from_options(cls, kw: dict, **given):
    """``cls`` made from a command's generated options (:func:`field_options`): every field with a flag from its
    option (not given: the field's default), ``given`` for the others; the fields with no flag keep their defaults."""
    from .options import declared, flag

    values = {}
    for name, spec in declared(cls).items():
        opt = flag(name, spec)
        if opt is not None and (value := kw[_dest(opt)]) is not None:
            values[name] = list(value) if isinstance(value, tuple) else value
    return cls(**values, **given)


def short_number(value) -> str:
    """A default as people write it: ``5e-5``, ``1e-4``, ``0.1``, ``32``."""
    if isinstance(value, float) and 0 < abs(value) < 1e-3:
        mantissa, exponent = f"{value:e}".split("e")
        return f"{mantissa.rstrip('0').rstrip('.')}e{int(exponent)}"
    return f"{value:g}" if isinstance(value, float) else str(value)
