"""What a serving collection records about the model that serves it, read by the retriever for each query and
written by a rollout (:mod:`ace_llamaindex.deploy.rollout`).

``ace_serving``: the serving plan (:class:`~ace_llamaindex.records.plan.ServingPlan`, as ``{"model", "adapter", "reindex"}``), ``ace_vector``: the
named vector its queries search, ``ace_previous``: the collection it replaced (for a rollback), ``ace_experiment``: on a challenger's collection,
the online experiment it takes part in (:mod:`ace_llamaindex.serve.experiment_arms`). While an experiment runs, the alias
``<collection>__challenger`` points at the challenger's collection.
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from ..index.store import CHALLENGER_SUFFIX
from ..records.plan import ServingPlan, fingerprint_identity

SERVING_KEY, VECTOR_KEY, PREVIOUS_KEY = "ace_serving", "ace_vector", "ace_previous"
EXPERIMENT_KEY = "ace_experiment"


def collection_plan(collection) -> dict[str, Any] | None:
    """The serving plan a collection records (its ``ace_serving``, as the rollout wrote it), or None when it records
    none (one ``ace index`` built). ``collection``: an open index, or its metadata already read. The one place a
    collection's plan is read; :meth:`ServingPlan.from_dict <ace_llamaindex.records.plan.ServingPlan.from_dict>` reads
    its fields."""
    metadata = collection if isinstance(collection, Mapping) else collection.metadata()
    return metadata.get(SERVING_KEY)


def challenger_alias(collection: str) -> str:
    """The alias that points at the challenger's collection while an online experiment runs on ``collection``."""
    return f"{collection}{CHALLENGER_SUFFIX}"


def serving_target(index, alias: str) -> str:
    """The collection ``alias`` serves from now: its alias target, else the collection of that name."""
    return index.alias_target(alias) or alias


def adapter_fingerprint(folder: str | Path | None) -> str | None:
    """A stable id for a query adapter's weights (the hash of its weights file), or None without an adapter."""
    from ..embeddings.query_adapter import ADAPTER_FILE

    if not folder:
        return None
    path = Path(folder) / ADAPTER_FILE
    if not path.is_file():
        return f"missing:{Path(folder).name}"
    return hashlib.sha256(path.read_bytes()).hexdigest()[:16]


def plan_identity(plan: dict[str, Any]) -> dict[str, str | None]:
    """What a serving plan *is*, wherever its folders live: the document model's weights fingerprint and the
    adapter's weights hash. Two plans with the same identity serve the same vectors."""
    from ..embeddings.models import content_fingerprint

    plan = ServingPlan.from_dict(plan)
    return fingerprint_identity(content_fingerprint(plan.model), adapter_fingerprint(plan.adapter))
