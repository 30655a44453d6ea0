"""Built-in trainers: full fine-tuning (SentenceTransformerTrainer + (Cached)MNRL) and a query-side adapter."""

from __future__ import annotations

from ..adapter import adapter_trainer
from ..hookspecs import hookimpl
from ..training import train


@hookimpl
def register_trainers(register):
    register("sentence-transformers", train, "SentenceTransformerTrainer + MNRL, no-duplicates sampler, best epoch kept")
    register("adapter", adapter_trainer, "query-side linear adapter on frozen vectors: no re-indexing, seconds on a CPU")
