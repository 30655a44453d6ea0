"""Built-in trainers: the automatic choice (default), full fine-tuning and a query-side adapter."""

from __future__ import annotations

import warnings

from ...errors import AceDeprecationWarning
from ...train.adapter import adapter_trainer
from ...train.method_selection import select_method
from ...train.training import train
from ..hookspecs import hookimpl


def sentence_transformers_trainer(*args, **kwargs):
    """Deprecated: the trainer's earlier name. The same as ``full`` (use ``--method full``), with a DeprecationWarning."""
    warnings.warn("the trainer 'sentence-transformers' is deprecated: it is the same as 'full' (ace train --method full)",
                  AceDeprecationWarning, stacklevel=2)
    return train(*args, **kwargs)


@hookimpl
def register_trainers(register):
    register("auto", select_method, "trains adapter, full fine-tune, interpolations and adapter-on-full; keeps what the "
             "gate calls better on unseen documents, the cheaper on a tie; none better: the base stays")
    register("full", train, "SentenceTransformerTrainer + MNRL, no-duplicates sampler, best epoch kept")
    register("sentence-transformers", sentence_transformers_trainer, "deprecated: the same as full (its earlier name)")
    register("adapter", adapter_trainer, "query-side linear adapter on frozen vectors: no re-indexing, seconds on a CPU")
