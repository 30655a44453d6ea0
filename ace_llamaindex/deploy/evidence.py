"""Is a model shown better than what a collection serves now? The evidence a rollout needs before it switches.

In order:

1. the model *is* what serves (same weights and adapter): nothing to decide;
2. held-out queries were given: both are judged on them (the same paired bootstrap as the gate);
3. its training card compared it with the champion that serves now (``ace train --collection``): that comparison;
4. what serves is the base the card's gate compared it with (a first rollout): the card's gate, as before;
5. otherwise nothing compared it with what serves: refused, naming the champion (give held-out queries, or force).

A model without a training card (any model name or folder not trained here) brings no evidence and is allowed, as
a rollout always did, unless held-out queries say it is not better.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from ..data.dataset import QADataset
from ..records.card import TrainingCard, read_card
from ..records.evidence import Evidence
from ..records.gate import GateResult
from ..records.plan import ServingPlan, describe_plan, fingerprint_identity
from ..records.verdict import Verdict
from ..serve.serving_record import plan_identity


def _verdict_allows(gate: dict[str, Any]) -> bool:
    # trained without validation ("not measured") is the trainer's explicit choice; a measured "not better" is refused
    result = GateResult.read(gate)
    return Verdict.allows(result.verdict if result else None)


def _evidence_line(gate: dict[str, Any]) -> str:
    result = GateResult.read(gate)
    sub = result.deciding() if result else None
    if sub is None or not sub.measured:
        return str(result.words if result else None)
    return f"{sub.interval()} nDCG@10 on {sub.n} queries ({result.decided_by}): {result.words}"


def _card_base_identity(card: TrainingCard) -> dict[str, str | None] | None:
    if card.base_model:
        return plan_identity(ServingPlan(card.base_model).to_dict())
    fingerprint = card.base_fingerprint  # an adapter's card
    return fingerprint_identity(fingerprint) if fingerprint else None


def judge_on_heldout(candidate: dict[str, Any], serving: dict[str, Any], heldout: QADataset, engine: str = "auto") -> GateResult:
    """``candidate`` vs ``serving`` (serving plans) on ``heldout``'s queries and corpus: the gate's paired bootstrap
    on nDCG@10 over dense retrieval, every query deciding."""
    from ..embeddings.encoding import CachedEncoder
    from ..evaluate.evaluate import System, evaluate
    from ..serve.served_model import serving_encoder
    from ..train.promotion import judge

    def encoder(plan: dict[str, Any]):
        return serving_encoder(plan, CachedEncoder(ServingPlan.from_dict(plan).model, show_progress=False))

    systems = [System("serving", "dense", encoder(serving)), System("candidate", "dense", encoder(candidate))]
    per_query = evaluate(heldout, systems, comparisons=[], show_progress=False, engine=engine).data["per_query"]
    result = judge(per_query, list(heldout.queries), "serving", "candidate")
    result.decided_by = "all held-out queries"
    return result


def promotion_evidence(model: str | Path, candidate: dict[str, Any], serving: dict[str, Any], collection: str,
                       heldout: QADataset | None = None, engine: str = "auto") -> Evidence:
    """The evidence that ``model`` (serving plan ``candidate``) is better than what ``collection`` serves (``serving``)."""
    now = f"what {collection!r} serves now ({describe_plan(serving)})"
    current = plan_identity(serving)
    if plan_identity(candidate) == current:
        return Evidence(now, "identity", None, True, f"{model} is what {collection!r} serves already")
    if heldout is not None:
        result = judge_on_heldout(candidate, serving, heldout, engine)
        gate, allowed = result.as_dict(), result.verdict == Verdict.BETTER
        return Evidence(now, f"{len(heldout.queries)} held-out queries ({heldout.source})", gate, allowed,
                        f"{model} vs {now} on held-out queries: {_evidence_line(gate)}")
    card = read_card(model) if Path(model).is_dir() else None
    if card is None:
        return Evidence(now, "none", None, True, f"{model} has no training card: nothing to check it by")
    champion = card.champion
    if champion and card.champion_identity == current:
        gate = card.champion_gate
        return Evidence(f"the champion {describe_plan(serving)}", "the training card's champion comparison", gate,
                        _verdict_allows(gate), f"{model} vs the champion {describe_plan(serving)} that {collection!r} "
                        f"serves, on its validation queries: {_evidence_line(gate)}")
    if _card_base_identity(card) == current:
        gate = card.gate
        return Evidence(f"its base {describe_plan(serving)}", "the training card's gate against its base", gate,
                        _verdict_allows(gate), f"{model} vs its base {describe_plan(serving)} that {collection!r} serves, "
                        f"on its validation queries: {_evidence_line(gate)}")
    judged = f"the champion {describe_plan(card.champion_plan)}" if champion else "its base"
    return Evidence(now, "none", None, False,
                    f"{model} was judged against {judged}, but {collection!r} serves the champion {describe_plan(serving)}, "
                    "with which nothing compared it; train it with the champion (`ace train --collection ...`) or give "
                    "held-out queries (--heldout) to judge both")
