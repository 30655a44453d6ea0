"""The promotion gate's result: a fine-tuned model against its base (or the champion) on validation queries, as a
training card holds it (``GateResult.as_dict()``) and as every reader formats it."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from typing import Any

from .verdict import Comparison, Verdict, interval

GATE_METRIC = "ndcg@10"  # what the gate measures unless told otherwise
ALL_QUERIES = "all validation queries"  # a gate's decided_by when no subset decided


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
    decided_by: str = ALL_QUERIES
    said: str = field(default="", compare=False, repr=False)  # the record's words when they say more than the
    #                                                            verdict: "not measured (no validation queries)"

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

    @classmethod
    def read(cls, gate: Mapping[str, Any] | None, field: str = "gate") -> GateResult | None:
        """The gate a card holds, whatever its shape: a measured gate (``as_dict()``), an unmeasured one
        (:func:`unmeasured_gate`, or a bare ``{"verdict": ...}``: no difference, ``measured`` False), or none (None,
        for ``{}`` or a gate without a verdict). Every verdict in it, its subsets' too, is read into a
        :class:`Verdict`: an unknown word is one :class:`~ace_llamaindex.errors.OptionError` line naming the field
        (``{field}.verdict``, ``{field}.subsets.<name>.verdict``)."""
        if not gate or gate.get("verdict") is None:
            return None
        verdict = Verdict.read(gate["verdict"], f"{field}.verdict")
        subsets = dict(gate.get("subsets") or {})
        for name, comparison in subsets.items():
            Comparison.read(comparison, f"{field}.subsets.{name}")
        ci95 = gate.get("ci95")
        return cls(verdict, gate.get("metric") or GATE_METRIC, gate.get("base"), gate.get("finetuned"),
                   gate.get("delta"), (ci95[0], ci95[1]) if ci95 else None, gate.get("n_queries") or 0,
                   gate.get("seen_documents"), subsets, gate.get("decided_by") or ALL_QUERIES,
                   "" if str(gate["verdict"]) == verdict.value else str(gate["verdict"]))

    @property
    def measured(self) -> bool:
        """Whether the gate has a difference (an unmeasured gate has none)."""
        return self.delta is not None

    @property
    def words(self) -> str:
        """The verdict as the card spells it (``not measured (no validation queries)`` says more than the member)."""
        return self.said or self.verdict.value

    def overall(self) -> Comparison:
        """The comparison on all its ``n_queries`` validation queries."""
        return Comparison(self.verdict, self.n_queries, self.base, self.finetuned, self.delta, self.ci95)

    def subset(self, name: str) -> Comparison | None:
        """The comparison on the subset ``name`` of the validation queries (``unseen documents``, ``seen
        documents``, a seen/unseen mix), or None: the gate has no such subset."""
        data = self.subsets.get(name)
        return Comparison.read(data, f"gate.subsets.{name}") if data else None

    def subset_comparisons(self) -> dict[str, Comparison]:
        """Every subset's comparison, in the order the gate holds them."""
        return {name: Comparison.read(data, f"gate.subsets.{name}") for name, data in self.subsets.items()}

    def deciding(self) -> Comparison:
        """The comparison its verdict was decided on: the subset ``decided_by`` names, else all queries. Its ``n``
        is the subset's, else the gate's ``n_queries``."""
        chosen = self.subset(self.decided_by)
        if chosen is None:
            return self.overall()
        return chosen if chosen.n is not None else replace(chosen, n=self.n_queries)

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
                   g.get("seen_documents"), g.get("subsets") or {}, g.get("decided_by", ALL_QUERIES))

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
