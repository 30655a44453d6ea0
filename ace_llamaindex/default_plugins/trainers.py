"""Built-in trainer: sentence-transformers' SentenceTransformerTrainer with (Cached)MultipleNegativesRankingLoss."""

from __future__ import annotations

from ..hookspecs import hookimpl
from ..training import train


@hookimpl
def register_trainers(register):
    register("sentence-transformers", train, "SentenceTransformerTrainer + MNRL, no-duplicates sampler, best epoch kept")
