"""A comparison's verdict and how every report writes a difference with its interval."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace
from enum import StrEnum
from typing import Any

from ..errors import OptionError


class Verdict(StrEnum):
    """What a comparison says about a candidate against a baseline. A ``str``: cards and JSON hold the plain words,
    and a card written before this enum compares equal."""

    BETTER = "better"
    WORSE = "worse"
    NO_CLEAR_DIFFERENCE = "no clear difference"
    CANT_TELL = "can't tell"  # too few queries of the kind that decides
    NOT_MEASURED = "not measured"  # no validation queries

    @classmethod
    def read(cls, value: Any, field: str = "verdict") -> Verdict:
        """The member a recorded verdict spells (a card's plain words; ``not measured (no validation queries)`` is
        :attr:`NOT_MEASURED`): every verdict read from a card or a comparison is read here once, and compared as a
        member. Anything else is one :class:`~ace_llamaindex.errors.OptionError` line naming ``field`` and the
        allowed words."""
        if isinstance(value, str):
            for member in cls:
                if value == member.value:
                    return member
            if value.startswith(cls.NOT_MEASURED.value):
                return cls.NOT_MEASURED
        allowed = ", ".join(repr(m.value) for m in cls)
        raise OptionError(f"{field} must be a verdict ({allowed}), got {value!r}")

    @classmethod
    def allows(cls, verdict: str | None) -> bool:
        """Whether a recorded verdict lets a model replace its baseline: measured better, or trained without
        validation on purpose (``not measured ...``)."""
        return verdict == cls.BETTER or str(verdict).startswith(cls.NOT_MEASURED)


def interval(delta: float, ci: Sequence[float]) -> str:
    """``+0.123 [+0.045, +0.201]``: a difference and its interval, as every report writes it."""
    return f"{delta:+.3f} {ci_text(ci)}"


def ci_text(ci: Sequence[float]) -> str:
    """``[+0.045, +0.201]``: an interval alone (a table's own column), as :func:`interval` writes it."""
    return f"[{ci[0]:+.3f}, {ci[1]:+.3f}]"


@dataclass(frozen=True)
class Comparison:
    """One paired comparison as a record holds it: a gate's subset or the gate overall, a fusion's ``vs_dense``
    entry. ``n`` queries (None: not recorded), the baseline's and the candidate's means, their difference with its
    95% interval (None: no queries to measure), and the :class:`Verdict`."""

    verdict: Verdict
    n: int | None = None
    base: float | None = None
    finetuned: float | None = None
    delta: float | None = None
    ci95: tuple[float, float] | None = None

    @classmethod
    def read(cls, data: Mapping[str, Any], field: str = "comparison") -> Comparison:
        """The comparison in ``data`` (a dict as ``train.promotion.compare`` or ``evaluate`` writes it, or as JSON
        gave it back). Its verdict is read into a :class:`Verdict`: an unknown word is one
        :class:`~ace_llamaindex.errors.OptionError` line naming ``{field}.verdict``."""
        ci95 = data.get("ci95")
        return cls(Verdict.read(data.get("verdict"), f"{field}.verdict"), data.get("n"), data.get("base"),
                   data.get("finetuned"), data.get("delta"), (ci95[0], ci95[1]) if ci95 else None)

    @property
    def measured(self) -> bool:
        """Whether it has a difference (a comparison on no queries has none)."""
        return self.delta is not None

    def interval(self) -> str:
        """Its difference and interval as every report writes them (:func:`interval`)."""
        return interval(self.delta, self.ci95)


@dataclass(frozen=True)
class SystemComparison(Comparison):
    """One row of an evaluation report's ``comparisons``: ``candidate`` against ``baseline`` on ``metric``."""

    candidate: str = ""
    baseline: str = ""
    metric: str = ""

    @classmethod
    def read(cls, data: Mapping[str, Any], field: str = "comparisons") -> SystemComparison:
        """The row ``data`` (as ``evaluate`` writes it); an unknown verdict names ``{field}.verdict``."""
        return replace(super().read(data, field), candidate=data["candidate"], baseline=data["baseline"],
                       metric=data["metric"])
