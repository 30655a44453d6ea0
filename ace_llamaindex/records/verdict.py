"""A comparison's verdict and how every report writes a difference with its interval."""

from __future__ import annotations

from collections.abc import Sequence
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
