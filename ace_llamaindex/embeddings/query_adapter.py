"""A trained query adapter as it serves: ``q' = normalise(q W + b)`` in numpy over a base encoder's query
vectors, documents untouched; :mod:`~ace_llamaindex.train.adapter` trains it."""

from __future__ import annotations

import zipfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import OptionError
from ..records.card import ADAPTER_CARD, TrainingCard
from .encoding import Encoder
from .models import DEFAULT_MODEL, content_fingerprint

ADAPTER_FILE = "adapter.npz"


class QueryAdapter:
    """The transform itself, in numpy for serving (torch only trains it)."""

    def __init__(self, weights: dict[str, np.ndarray], kind: str = "linear") -> None:
        self.weights, self.kind = {k: np.asarray(v, dtype=np.float32) for k, v in weights.items()}, kind

    @property
    def dimension(self) -> int:
        return int(self.weights["W"].shape[0])

    def __call__(self, queries: np.ndarray) -> np.ndarray:
        q = np.atleast_2d(np.asarray(queries, dtype=np.float32))
        w = self.weights
        if q.shape[1] != w["W"].shape[0]:
            raise OptionError(f"this adapter maps {w['W'].shape[0]}-d query vectors, the base gives {q.shape[1]}-d: "
                              "it was trained for another model; train one for this base")
        out = q @ w["W"] + w["b"]
        if self.kind == "mlp":
            out = out + np.maximum(q @ w["W1"] + w["b1"], 0) @ w["W2"]
        return out / np.maximum(np.linalg.norm(out, axis=1, keepdims=True), 1e-12)

    @classmethod
    def load(cls, folder: str | Path) -> tuple[QueryAdapter, TrainingCard]:
        """The adapter in ``folder`` and its card."""
        folder = Path(folder)
        card_path = folder / ADAPTER_CARD
        if not card_path.is_file():
            raise OptionError(f"{folder}: not an adapter folder (no {ADAPTER_CARD}); train one with `ace train --method adapter`")
        try:
            card = TrainingCard.read(card_path)
            with np.load(folder / ADAPTER_FILE) as data:
                adapter = cls({k: data[k] for k in data.files}, card.adapter_kind)
        except OptionError as exc:  # the card: its file and what is wrong with it
            raise OptionError(f"{folder}: the adapter is unreadable: {exc}") from None
        except (OSError, ValueError, KeyError, zipfile.BadZipFile, EOFError) as exc:
            raise OptionError(f"{folder}: the adapter is unreadable ({type(exc).__name__}: {exc}); train it again "
                              "(ace train --method adapter)") from None
        w = adapter.weights.get("W")
        if w is None or w.ndim != 2 or w.shape[0] != w.shape[1] or adapter.weights.get("b", np.zeros(0)).shape != (w.shape[0],):
            raise OptionError(f"{folder}: the adapter's weights are not a square map with a bias; train it again")
        return adapter, card


def base_identity(base: Any) -> dict[str, Any]:
    """Who the adapter's base is: a local model's weights fingerprint (where the model is a folder or the bundled
    one), else its name; recorded in the adapter card and checked when the adapter is applied."""
    model = getattr(base, "model_path", None) or getattr(base, "model_name", None)
    if model is None and hasattr(base, "backend"):  # a CachedEncoder of the default model
        model = DEFAULT_MODEL
    identity = {"label": getattr(base, "label", None) or str(model), "model": model}
    if isinstance(model, str) and not model.startswith("finetuned:"):
        identity["fingerprint"] = content_fingerprint(model)
    return identity


def check_base(card: TrainingCard, base: Any, folder: str | Path) -> None:
    """Refuse to apply an adapter over a base other than the one it was trained on (same weights fingerprint)."""
    trained_on = card.base_fingerprint
    if not trained_on:
        return
    now = base_identity(base).get("fingerprint")
    if now and now != trained_on:
        raise OptionError(f"{folder}: this adapter was trained over the model {card.base.get('model')!r} (weights "
                          f"{trained_on}), not over {base_identity(base).get('model')!r} (weights {now}); serve it over "
                          "its own base, or train an adapter for this one")


class AdaptedEncoder:
    """An encoder whose queries pass through an adapter; documents are the base's, untouched (cached)."""

    def __init__(self, base: Encoder, adapter: QueryAdapter, label: str | None = None) -> None:
        self.base, self.adapter = base, adapter
        self.label = label or f"{base.label}+adapter"

    def encode_queries(self, texts: Sequence[str]) -> np.ndarray:
        return self.adapter(self.base.encode_queries(texts))

    def encode_documents(self, texts: Sequence[str]) -> np.ndarray:
        return self.base.encode_documents(texts)
