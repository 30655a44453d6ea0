"""The promotion gate's result: a fine-tuned model against its base (or the champion) on validation queries, as a
training card holds it (``GateResult.as_dict()``) and as every reader formats it."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from .verdict import Verdict, interval


def gate_verdict(gate: Mapping[str, Any] | None, field: str = "gate.verdict") -> Verdict | None:
    """The verdict of a gate as a card holds it (``GateResult.as_dict()``, or ``unmeasured_gate()``), read into a
    :class:`Verdict` (None: the gate is empty). An unknown word is one line naming ``field`` (:meth:`Verdict.read`)."""
    if not gate or gate.get("verdict") is None:
        return None
    return Verdict.read(gate["verdict"], field)


def unmeasured_gate() -> dict[str, Any]:
    """A card's gate when there were no validation queries (trained without validation: ``Verdict.allows`` it)."""
    return {"verdict": f"{Verdict.NOT_MEASURED} (no validation queries)"}


@dataclass
class GateResult:
    """Fine-tuned vs base on the validation queries: overall, and on the queries about documents no training query
    had (``unseen documents``: what the gate decides on) and about documents training queries also had."""

    verdict: Verdict  # a card's plain words are read into the member (Verdict.read)
    metric: str
    base: float | None = None
    finetuned: float | None = None
    delta: float | None = None
    ci95: tuple[float, float] | None = None
    n_queries: int = 0
    seen_documents: float | None = None  # share of validation queries whose document a training query also had
    subsets: dict[str, dict[str, Any]] = field(default_factory=dict)  # UNSEEN / SEEN -> comparison
    decided_by: str = "all validation queries"

    def __post_init__(self) -> None:
        self.verdict = Verdict.read(self.verdict, "gate.verdict")

    def as_dict(self) -> dict[str, Any]:
        return {"verdict": self.verdict, "metric": self.metric, "base": self.base, "finetuned": self.finetuned,
                "delta": self.delta, "ci95": list(self.ci95) if self.ci95 else None, "n_queries": self.n_queries,
                "seen_documents": self.seen_documents, "subsets": self.subsets, "decided_by": self.decided_by}

    @classmethod
    def from_comparison(cls, comparison: Mapping[str, Any], metric: str, n_queries: int) -> GateResult:
        """The gate of one comparison over all ``n_queries`` validation queries (a dict of ``n``, ``base``,
        ``finetuned``, ``delta``, ``ci95``, ``verdict``, as ``train.promotion.compare`` writes it)."""
        ci95 = comparison.get("ci95")
        return cls(comparison["verdict"], metric, comparison.get("base"), comparison.get("finetuned"),
                   comparison.get("delta"), tuple(ci95) if ci95 else None, n_queries)

    def subset_verdict(self, name: str) -> Verdict:
        """The verdict on the subset ``name`` of the validation queries (``unseen documents``, ``seen documents``)."""
        return Verdict.read(self.subsets[name]["verdict"], f"gate.subsets.{name}.verdict")

    def subset_delta(self, name: str) -> float | None:
        """The mean difference on the subset ``name`` (None: it had no queries)."""
        return self.subsets[name].get("delta")

    @classmethod
    def from_dict(cls, g: dict[str, Any]) -> GateResult | None:
        if g.get("delta") is None:
            return None
        return cls(g["verdict"], g["metric"], g["base"], g["finetuned"], g["delta"], tuple(g["ci95"]), g["n_queries"],
                   g.get("seen_documents"), g.get("subsets") or {}, g.get("decided_by", "all validation queries"))

    def sentence(self) -> str:
        if self.delta is None:
            return f"promotion gate: {self.verdict} (no validation queries)"
        parts = [f"{name} ({s['n']}): {interval(s['delta'], s['ci95'])} {s['verdict']}"
                 for name, s in self.subsets.items() if s.get("delta") is not None]
        return (f"promotion gate on {self.n_queries} validation queries: {self.metric} {self.base:.3f} -> {self.finetuned:.3f}, "
                + interval(self.delta, self.ci95) + (f"; {'; '.join(parts)}" if parts else "")
                + f": {self.verdict} (decided by {self.decided_by})")


# A gate's comparison as the card holds it (GateResult.as_dict()): the entries readers format
GATE_KINDS = {"verdict": str, "metric": str, "base": float, "finetuned": float, "delta": float, "ci95": list,
              "n_queries": int, "subsets": dict, "decided_by": str}


def deciding_subset(gate: Mapping[str, Any]) -> Mapping[str, Any]:
    """The comparison (from a gate's ``as_dict()``) its verdict was decided on: a subset, or all queries."""
    return (gate.get("subsets") or {}).get(gate.get("decided_by")) or gate
