"""A trained model's card (what it was trained on, how, and the gate's verdict), read by serving and evaluation."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from ..errors import OptionError
from .query_adapter import ADAPTER_CARD

CARD_NAME = "ace_training_card.json"


def read_card(model_dir: str | Path) -> dict[str, Any] | None:
    """The training card of a model (or adapter) we trained, or None."""
    for name in (CARD_NAME, ADAPTER_CARD):
        path = Path(model_dir) / name
        if path.is_file():
            try:
                return json.loads(path.read_text(encoding="utf-8"))
            except ValueError as exc:
                raise OptionError(f"{path}: unreadable card ({exc}); train again or delete the folder") from None
    return None


def text_hash(text: str) -> str:
    """A short, stable hash of a query's text, kept in training cards to detect train/eval overlap."""
    return hashlib.sha1(" ".join(text.split()).lower().encode("utf-8")).hexdigest()[:16]


def deciding_subset(gate: Mapping[str, Any]) -> Mapping[str, Any]:
    """The comparison (from a gate's ``as_dict()``) its verdict was decided on: a subset, or all queries."""
    return (gate.get("subsets") or {}).get(gate.get("decided_by")) or gate
