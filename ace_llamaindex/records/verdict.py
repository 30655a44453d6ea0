"""A comparison's verdict and how every report writes a difference with its interval."""

from __future__ import annotations

from collections.abc import Sequence
from enum import StrEnum


class Verdict(StrEnum):
    """What a comparison says about a candidate against a baseline. A ``str``: cards and JSON hold the plain words,
    and a card written before this enum compares equal."""

    BETTER = "better"
    WORSE = "worse"
    NO_CLEAR_DIFFERENCE = "no clear difference"
    CANT_TELL = "can't tell"  # too few queries of the kind that decides
    NOT_MEASURED = "not measured"  # no validation queries

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
