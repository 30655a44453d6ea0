"""The fusion chosen for a model (``fusion.json`` in its folder): what the retriever, ``ace search`` and
``ace eval`` read with ``fusion="auto"``; :mod:`~ace_llamaindex.evaluate.fusion_selection` makes the choice."""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from ..atomic import write_json
from ..errors import OptionError
from .store import MODES, HybridParams

FUSION_FILE = "fusion.json"
DEFAULT_METRIC = "ndcg@10"


@dataclass
class FusionChoice:
    """A retrieval mode and fusion, and the validation evidence behind it."""

    name: str
    mode: str
    params: HybridParams = field(default_factory=HybridParams)
    metric: str = DEFAULT_METRIC
    n_queries: int = 0
    reason: str = ""
    scores: dict[str, float] = field(default_factory=dict)          # candidate -> mean metric on validation
    vs_dense: dict[str, dict[str, Any]] = field(default_factory=dict)  # candidate -> {delta, ci95, verdict}
    prior: dict[str, dict[str, Any]] = field(default_factory=dict)     # the same, base model on training queries

    def __post_init__(self) -> None:
        if self.mode not in MODES:
            raise OptionError(f"fusion mode must be one of {MODES}, got {self.mode!r}")

    def to_dict(self) -> dict[str, Any]:
        return {"name": self.name, "mode": self.mode, "params": asdict(self.params), "metric": self.metric,
                "n_queries": self.n_queries, "reason": self.reason, "validation": {"scores": self.scores, "vs_dense": self.vs_dense},
                "training_queries_base_model": {"vs_dense": self.prior}}

    @classmethod
    def from_dict(cls, data: dict[str, Any], source: str = "fusion.json") -> FusionChoice:
        try:
            validation = data.get("validation", {})
            return cls(name=data["name"], mode=data["mode"], params=HybridParams(**data.get("params", {})),
                       metric=data.get("metric", DEFAULT_METRIC), n_queries=int(data.get("n_queries", 0)),
                       reason=data.get("reason", ""), scores=validation.get("scores", {}), vs_dense=validation.get("vs_dense", {}),
                       prior=(data.get("training_queries_base_model") or {}).get("vs_dense", {}))
        except (KeyError, TypeError, AttributeError) as exc:
            raise OptionError(f"{source}: not a fusion choice ({exc}); expected name, mode and params") from None

    def save(self, model_dir: str | Path) -> Path:
        """Write ``fusion.json`` into the model folder (atomically)."""
        return write_json(Path(model_dir) / FUSION_FILE, self.to_dict())

    def summary(self) -> str:
        return f"{self.name} ({self.reason})"


DENSE_DEFAULT = FusionChoice("dense", "dense", reason="no fusion.json with the model: dense never loses to itself")


def load_fusion(model_dir: str | Path | None) -> FusionChoice | None:
    """The fusion saved with a model (``<model_dir>/fusion.json``), or None."""
    if not model_dir:
        return None
    path = Path(model_dir) / FUSION_FILE
    if not path.is_file():
        return None
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise OptionError(f"{path}: unreadable fusion choice ({exc})") from None
    return FusionChoice.from_dict(data, str(path))
