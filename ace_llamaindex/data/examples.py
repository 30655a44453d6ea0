"""What mining produces and every trainer consumes: a training example (query, positive, hard negatives)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any


@dataclass
class TrainingExample:
    """One (query, positive, hard negatives) row, sentence-transformers ready."""

    query: str
    positive: str
    negatives: list[str]
    metadata: dict[str, Any] = field(default_factory=dict)
