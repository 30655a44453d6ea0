"""What a training run did with its output folder, decided in one place from its result or its card.

Every trainer returns a ``TrainResult`` (and writes a card) with ``promoted`` (whether the new model was written) and
``serving`` (the plan of what the output folder serves, None when nothing does). Three outcomes follow:

- :attr:`Outcome.PROMOTED`: the new model was written to the output folder (better, ``--force``, or nothing was there);
- :attr:`Outcome.BASE_STAYS`: no candidate was better and nothing was written (``--method auto``: the base model, or
  the champion, keeps serving; the evidence is ``OUTPUT.not-promoted.json``);
- :attr:`Outcome.KEPT`: not better, and the model already at the output folder was kept (``--force`` replaces it).
"""

from __future__ import annotations

from collections.abc import Mapping
from enum import StrEnum
from typing import Any

from .card import TrainingCard


class Outcome(StrEnum):
    PROMOTED = "promoted"
    BASE_STAYS = "base stays"
    KEPT = "kept"


def outcome(result: Any) -> Outcome:
    """The outcome of a ``TrainResult`` or of a training card (a :class:`~ace_llamaindex.records.card.TrainingCard`
    or its dict; a card without ``promoted``, written before it was recorded, was promoted)."""
    if isinstance(result, Mapping):
        result = TrainingCard.from_dict(result)
    promoted, serving = result.promoted, result.serving
    if promoted:
        return Outcome.PROMOTED
    return Outcome.BASE_STAYS if serving is None else Outcome.KEPT
