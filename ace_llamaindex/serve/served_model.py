"""What an output folder of ``ace train`` serves: a model, a query adapter over a base, or a model with an adapter.

The trainer's result says it (``TrainResult.serving``: a :class:`~ace_llamaindex.records.plan.ServingPlan` as
``{"model", "adapter", "reindex"}``, also in the card), so evaluation and serving build the same thing without knowing
which trainer wrote the folder.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from ..embeddings.encoding import CachedEncoder
from ..embeddings.query_adapter import ADAPTER_CARD, AdaptedEncoder, QueryAdapter, check_base
from ..records.plan import HERE, ServingPlan, here


def resolve_serving(serving: dict[str, Any], folder: str | Path) -> dict[str, Any]:
    """``serving`` with :data:`HERE` replaced by ``folder``."""
    return {k: here(v, folder) for k, v in serving.items()}


def read_serving(folder: str | Path) -> dict[str, Any]:
    """The serving plan of an output folder; a plain sentence-transformers model folder serves itself."""
    from ..records.card import CARD_NAME, read_card

    folder = Path(folder)
    card = read_card(folder)
    if card and card.serving:
        return resolve_serving(card.serving, folder)
    if card and (folder / ADAPTER_CARD).is_file() and not (folder / CARD_NAME).is_file():
        # an adapter trained before cards said how to serve it: over its base
        base = (card.base or {}).get("model")
        return ServingPlan(here(base, folder), str(folder), base == HERE).to_dict()
    return ServingPlan(str(folder)).to_dict()


def serving_encoder(serving: dict[str, Any], base, max_seq_length: int | None = None, show_progress: bool = False):
    """The encoder a serving plan describes: the base's document vectors unless the documents must be embedded
    again (then the folder's model), queries through the adapter when there is one."""
    plan = ServingPlan.from_dict(serving)
    encoder = base if not plan.reindex else CachedEncoder(plan.model, max_seq_length=max_seq_length,
                                                          show_progress=show_progress, cache_dir=False)
    if plan.adapter:
        adapter, card = QueryAdapter.load(plan.adapter)
        if not plan.reindex:
            check_base(card, base, plan.adapter)
        # the adapter's folder in the label: two adapters over one base are two systems, never one cached entry
        encoder = AdaptedEncoder(encoder, adapter, label=f"{encoder.label}+adapter:{plan.adapter}")
    return encoder


def serving_embedding(serving: dict[str, Any], embedding_factory):
    """A LlamaIndex embedding for a serving plan: ``embedding_factory(model)`` (e.g. a ``FineTunedEmbedding``),
    wrapped in an :class:`~ace_llamaindex.serve.adapter_embedding.AdapterEmbedding` when the plan has an adapter."""
    plan = ServingPlan.from_dict(serving)
    embed = embedding_factory(plan.model)
    if plan.adapter:
        from .adapter_embedding import AdapterEmbedding

        embed = AdapterEmbedding(embed, plan.adapter)
    return embed


def model_embedding(serving: dict[str, Any], fallback=None):
    """The LlamaIndex embedding a serving plan describes (with ``fallback`` when given)."""
    from .embedding import FineTunedEmbedding

    return serving_embedding(serving, lambda name: FineTunedEmbedding(name, fallback=fallback))
