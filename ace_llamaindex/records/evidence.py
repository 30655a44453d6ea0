"""A rollout's evidence: what it compared the model with, the comparison, and whether that allows the switch
(decided by :func:`~ace_llamaindex.deploy.evidence.promotion_evidence`)."""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any


@dataclass
class Evidence:
    """What a rollout compared the model with (``against``), on what (``source``), the comparison (a gate's
    ``as_dict()``, or None), and whether it allows the switch (``allowed``) with a sentence saying why."""

    against: str
    source: str
    gate: dict[str, Any] | None
    allowed: bool
    reason: str

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)
