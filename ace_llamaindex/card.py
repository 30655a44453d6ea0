"""A trained model's card (what it was trained on, how, and the gate's verdict), read by serving and evaluation."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from .errors import OptionError
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
