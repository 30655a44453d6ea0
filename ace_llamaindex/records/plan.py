"""A serving plan: what serves a collection (a model, a query adapter over it, whether the documents are embedded
again), as a training card, a ``TrainResult`` and a collection's ``ace_serving`` hold it."""

from __future__ import annotations

import typing
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..errors import OptionError
from ..options import value_type
from .fields import check_fields

HERE = "."  # in a card's plan: the folder the card is in (so a moved folder still serves itself)


def here(value: Any, folder: str | Path) -> Any:
    """``value`` with :data:`HERE` (this folder) replaced by ``folder``."""
    return str(folder) if value == HERE else value


@dataclass(frozen=True)
class ServingPlan:
    """What serves a collection: ``model`` (a folder or id: the document vectors searched), ``adapter`` (a query
    adapter's folder, or None) and ``reindex`` (whether the documents must be embedded again with ``model``; False:
    the base's vectors are used as they are). As a dict, ``{"model", "adapter", "reindex"}``: in a training card
    (where :data:`HERE` is the card's folder), in ``TrainResult.serving`` and in a collection's ``ace_serving``."""

    model: str | None
    adapter: str | None = None
    reindex: bool = True

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


# each plan field's type of value, from its annotation (what a card's plans and a collection's ``ace_serving`` hold)
PLAN_KINDS = {name: value_type(hint) for name, hint in typing.get_type_hints(ServingPlan).items()}


def check_plan(plan: Any, where: str = "a serving plan") -> Mapping[str, Any]:
    """``plan`` if it is a serving plan object whose fields have their kinds (:data:`PLAN_KINDS`); else one
    :class:`~ace_llamaindex.errors.OptionError` line naming ``where`` and the field."""
    if not isinstance(plan, Mapping):
        raise OptionError(f"{where}: a serving plan is an object ({', '.join(PLAN_KINDS)}), got {type(plan).__name__}")
    check_fields(plan, PLAN_KINDS, where)
    return plan


def describe_plan(plan: Mapping[str, Any]) -> str:
    """A serving plan in words: the model folder's name, or ``adapter <folder> over <model>``."""
    plan = ServingPlan.from_dict(plan)
    what = Path(str(plan.model)).name
    return f"adapter {plan.adapter} over {what}" if plan.adapter else what


def fingerprint_identity(model: str | None, adapter: str | None = None) -> dict[str, str | None]:
    """The identity (as :func:`~ace_llamaindex.serve.serving_record.plan_identity` gives it) of a model known only by its weights fingerprint, and of the
    adapter over it known by its hash (an adapter card records its base so)."""
    return {"model": model, "adapter": adapter}
