"""Choose how to fuse dense and BM25 results, on validation queries, without overfitting; save it with the model.

Hybrid is not free: plain RRF loses to dense alone on many collections. So every candidate (dense, BM25, RRF,
DBSF, convex combinations) is measured on queries the model did not train on, by the same code that serves it
(:func:`~ace_llamaindex.evaluate.evaluate.evaluate`), and a candidate replaces dense only when a paired bootstrap says it is
better with 95% confidence. Too few validation queries: dense, and the choice says why. The result is written to
``fusion.json`` in the model folder, where the retriever, ``ace search`` and ``ace eval`` find it (``fusion="auto"``).
"""

from __future__ import annotations

from typing import Any

from ..data.dataset import QADataset
from ..embeddings.encoding import Encoder
from ..errors import OptionError
from ..index.fusion_choice import DEFAULT_METRIC, FusionChoice
from ..index.store import HybridParams
from ..records.verdict import Comparison, SystemComparison, Verdict
from .evaluate import System, evaluate

MIN_QUERIES = 30  # below this a bootstrap interval is too wide to trust; keep dense


def default_candidates() -> dict[str, tuple[str, HybridParams]]:
    """The candidates, simplest first: dense, BM25, plain RRF (k=60), DBSF, and convex combinations."""
    candidates = {"dense": ("dense", HybridParams()), "bm25": ("bm25", HybridParams()),
                  "rrf(k=60)": ("hybrid", HybridParams()), "dbsf": ("hybrid", HybridParams(method="dbsf"))}
    for alpha in (0.3, 0.5, 0.7, 0.8, 0.9):
        params = HybridParams(method="convex", alpha=alpha)
        candidates[params.describe()] = ("hybrid", params)
    return candidates


def _measure(dataset: QADataset, encoder: Encoder, candidates: dict[str, tuple[str, HybridParams]], metric: str,
             engine: str, show_progress: bool, seed: int) -> tuple[dict[str, float], dict[str, dict[str, Any]]]:
    """Mean ``metric`` of every candidate, and each one's paired bootstrap against dense."""
    systems = [System(name, mode, None if mode == "bm25" else encoder, params) for name, (mode, params) in candidates.items()]
    report = evaluate(dataset, systems, comparisons=[("dense", name) for name in candidates if name != "dense"],
                      show_progress=show_progress, engine=engine, seed=seed)
    scores = {name: round(report.overall(name, metric), 4) for name in candidates}
    rows = (SystemComparison.read(row) for row in report.data["comparisons"])
    vs_dense = {c.candidate: {"delta": round(c.delta, 4), "ci95": [round(x, 4) for x in c.ci95], "verdict": c.verdict}
                for c in rows if c.metric == metric}
    return scores, vs_dense


def _read(vs_dense: dict[str, dict[str, Any]], field: str) -> dict[str, Comparison]:
    return {name: Comparison.read(v, f"{field}.{name}") for name, v in vs_dense.items()}


def select_fusion(dataset: QADataset, encoder: Encoder, *, metric: str = DEFAULT_METRIC,
                  candidates: dict[str, tuple[str, HybridParams]] | None = None, min_queries: int = MIN_QUERIES,
                  engine: str = "auto", show_progress: bool = False, seed: int = 42,
                  prior: tuple[QADataset, Encoder] | None = None) -> FusionChoice:
    """Measure every candidate on ``dataset`` (validation queries: neither trained on nor tested on) and keep dense
    unless another candidate is shown to beat it; among those, the best validation mean wins.

    Shown to beat dense: a 95% paired-bootstrap interval above zero on the validation queries, or, with ``prior``
    (the training queries and the *base* encoder, which never saw them: hundreds of unbiased queries instead of
    one hundred), an interval above zero there *and* a validation mean for the fine-tuned model no lower than
    dense's (the fine-tuned model may have absorbed what BM25 added)."""
    candidates = candidates or default_candidates()
    if "dense" not in candidates:
        raise OptionError("fusion candidates must include 'dense', the fallback choice")
    n = len(dataset.queries)
    if n < min_queries:
        return FusionChoice("dense", "dense", metric=metric, n_queries=n,
                            reason=f"only {n} validation queries (< {min_queries}): too few to trust a fusion, kept dense")
    scores, vs_dense = _measure(dataset, encoder, candidates, metric, engine, show_progress, seed)
    versus = _read(vs_dense, "vs_dense")
    winners = {name: "beats dense on {n} validation queries" for name, v in versus.items() if v.verdict == Verdict.BETTER}
    prior_vs_dense: dict[str, dict[str, Any]] = {}
    if prior is not None and len(prior[0].queries) >= min_queries:
        _, prior_vs_dense = _measure(prior[0], prior[1], candidates, metric, engine, show_progress, seed)
        for name, v in _read(prior_vs_dense, "training_queries_base_model.vs_dense").items():
            if v.verdict == Verdict.BETTER and versus[name].delta >= 0 and name not in winners:
                winners[name] = (f"beats dense with the base model on {len(prior[0].queries)} training queries "
                                 f"({metric} {v.interval()}) and is not below "
                                 "dense for the fine-tuned model on {n} validation queries")
    if winners:
        name = max(winners, key=lambda c: scores[c])
        reason = (winners[name].format(n=n) + f": validation {metric} {versus[name].interval()}")
    else:
        name = "dense"
        best = max(scores, key=lambda c: scores[c])
        reason = (f"no candidate beats dense with confidence on {n} validation queries"
                  + (f" (best: {best}, {metric} {versus[best].interval()})" if best != "dense" else ""))
    mode, params = candidates[name]
    return FusionChoice(name, mode, params, metric, n, reason, scores, vs_dense, prior_vs_dense)
