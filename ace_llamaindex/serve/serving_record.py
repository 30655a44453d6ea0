"""What a serving collection records about the model that serves it, read by the retriever for each query and
written by a rollout (:mod:`ace_llamaindex.deploy.rollout`).

``ace_serving``: the serving plan (:class:`ServingPlan`, as ``{"model", "adapter", "reindex"}``), ``ace_vector``: the
named vector its queries search, ``ace_previous``: the collection it replaced (for a rollback), ``ace_experiment``: on a challenger's collection,
the online experiment it takes part in (:mod:`ace_llamaindex.serve.experiment_arms`). While an experiment runs, the alias
``<collection>__challenger`` points at the challenger's collection.
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..embeddings.card import PlanFields, check_plan
from ..index.store import CHALLENGER_SUFFIX

SERVING_KEY, VECTOR_KEY, PREVIOUS_KEY = "ace_serving", "ace_vector", "ace_previous"
EXPERIMENT_KEY = "ace_experiment"
HERE = "."  # in a card's plan: the folder the card is in (so a moved folder still serves itself)


def here(value: Any, folder: str | Path) -> Any:
    """``value`` with :data:`HERE` (this folder) replaced by ``folder``."""
    return str(folder) if value == HERE else value


@dataclass(frozen=True)
class ServingPlan(PlanFields):
    """What serves a collection: ``model`` (a folder or id: the document vectors searched), ``adapter`` (a query
    adapter's folder, or None) and ``reindex`` (whether the documents must be embedded again with ``model``; False:
    the base's vectors are used as they are). As a dict, ``{"model", "adapter", "reindex"}``: in a training card
    (where :data:`HERE` is the card's folder), in ``TrainResult.serving`` and in a collection's ``ace_serving``."""

    # model: str | None; adapter: str | None = None; reindex: bool = True (declared in embeddings.card.PlanFields, so
    # a training card's plans are checked when it is read)

    def to_dict(self) -> dict[str, Any]:
        return {"model": self.model, "adapter": self.adapter, "reindex": self.reindex}

    @classmethod
    def from_dict(cls, plan: Mapping[str, Any], where: str = "a serving plan") -> ServingPlan:
        """Any plan dict written before: ``reindex`` missing (a plain model's plan) means True; paths stay as written.
        A field of the wrong kind (``{"model": 42}``) is one :class:`~ace_llamaindex.errors.OptionError` line naming
        ``where`` and the field (the training card checks its own plans the same way when it is read)."""
        check_plan(plan, where)
        return cls(plan.get("model"), plan.get("adapter"), plan.get("reindex", True))

    def resolved(self, folder: str | Path) -> ServingPlan:
        """This plan with :data:`HERE` replaced by ``folder`` (the folder the card holding it is in)."""
        return ServingPlan(here(self.model, folder), here(self.adapter, folder), self.reindex)


def describe_plan(plan: Mapping[str, Any]) -> str:
    """A serving plan in words: the model folder's name, or ``adapter <folder> over <model>``."""
    plan = ServingPlan.from_dict(plan)
    what = Path(str(plan.model)).name
    return f"adapter {plan.adapter} over {what}" if plan.adapter else what


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

    return fingerprint_identity(content_fingerprint(plan.get("model")), adapter_fingerprint(plan.get("adapter")))


def fingerprint_identity(model: str | None, adapter: str | None = None) -> dict[str, str | None]:
    """The identity (as :func:`plan_identity` gives it) of a model known only by its weights fingerprint, and of the
    adapter over it known by its hash (an adapter card records its base so)."""
    return {"model": model, "adapter": adapter}
