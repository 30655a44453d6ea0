"""Built-in metrics: Recall@1/5/10, MRR@10, nDCG@10."""

from __future__ import annotations

from ...evaluate.metrics import BUILTIN_METRICS
from ..hookspecs import hookimpl


@hookimpl
def register_metrics(register):
    for name, fn in BUILTIN_METRICS.items():
        register(name, fn)
