"""Interleaving credit: which model a query's accepted results favour.

:func:`~ace_llamaindex.serve.experiment_arms.team_draft` (re-exported here) interleaves the champion's and the
challenger's rankings; the served record logs each shown result's team and ``shared_prefix``, how many of the first
results both rankings share in the same order. Those are shown first whatever the coin flips, and their team is a coin
flip: a click on them is noise that only dilutes the credit. :func:`team_draft_credit` counts only accepted results at
positions at or below the shared prefix (0-based ``>= shared_prefix``), which keeps the credit unbiased under "no
difference" (the team of every counted position is still decided by fair coin flips) and makes the test faster.
"""

from __future__ import annotations

from collections.abc import Sequence

from ..serve.experiment_arms import CHALLENGER, CHAMPION, shared_prefix, team_draft

__all__ = ["shared_prefix", "team_draft", "team_draft_credit"]


def team_draft_credit(teams: Sequence[str | None], accepted: Sequence[bool], shared_prefix: int) -> int | None:
    """+1 when users accepted more of the challenger's results than of the champion's, -1 when fewer, 0 on a tie,
    counting only positions ``>= shared_prefix`` (``teams[i]``/``accepted[i]``: the team and judgement of the result
    shown at position ``i``); None when no counted position was accepted."""
    if len(teams) != len(accepted):
        raise ValueError(f"teams and accepted must be as long as each other, got {len(teams)} and {len(accepted)}")
    counted = [team for i, (team, ok) in enumerate(zip(teams, accepted, strict=True))
               if ok and i >= shared_prefix and team in (CHAMPION, CHALLENGER)]
    if not counted:
        return None
    difference = counted.count(CHALLENGER) - counted.count(CHAMPION)
    return (difference > 0) - (difference < 0)
