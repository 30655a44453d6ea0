"""Online experiments on a real dataset (issue #29): how many queries does an interleaved or a split experiment need
to promote a better model or roll back a worse one, and how often is it wrong?

    python benchmarks/bench_online.py [--dataset scifact] [--experiments 100] [--aa-experiments 200] [--aa-horizon 5000]

(run with HF_HUB_OFFLINE=1 TOKENIZERS_PARALLELISM=false; torch uses ``--threads`` 1 by default: on 2 shared cores a
query took 350 ms with torch's 2 threads and 29 ms with 1.) About 14 min and 1.1 GB on 2 shared CPU cores for SciFact.

**Models.** Champion: the bundled base model (``DEFAULT_MODEL``). Better challenger: the query adapter trained on the
dataset's train split (hard negatives mined with the base model, as ``ace mine`` does; ``adapter_trainer`` as ``ace
train --method adapter``). Queries: the test split's, sampled with replacement (never trained on).

**Users** are simulated from the test qrels with a position-based click model (PBM; Chuklin, Markov & de Rijke,
*Click Models for Web Search*, 2015): a user examines the result at rank r with probability ``(1/r)^eta``, ``eta = 1``
— the propensity curve of the unbiased learning-to-rank simulations of Joachims, Swaminathan & Schnabel (WSDM 2017),
in line with the eye-tracking position bias of Joachims et al. (SIGIR 2005) and the propensities Wang et al. (WSDM
2018) estimated from real search logs, which fall off roughly as 1/rank; an examined result is clicked (accepted)
with probability 1.0 when the qrels call it relevant and 0.05 when they do not (the non-relevant click noise of the
"navigational" click model Hofmann, Whiteson & de Rijke used to evaluate interleaving, TOIS 2013). Ranks are examined
independently (PBM), so a query may get several clicks or none. ``--eta``, ``--p-relevant``, ``--p-noise`` change
them.

**1. Two real experiments, end to end**: the corpus in an embedded Qdrant (``engine="local"``), served by
:class:`~ace_llamaindex.serve.retriever.HybridQdrantRetriever` with a feedback log; simulated users query it and
their clicks go through ``record_feedback``; ``experiment_status`` (auto) is read every ``--read-every`` served
queries. (a) champion = base, challenger = the adapter, interleaved: it must be promoted. (b) champion = the adapter
(``rollout``), challenger = the base (worse), ``--rollback-mode`` (interleave by default): it must be removed, the
champion still serving.

**2. Many simulated experiments, replayed.** Each test query's top 10 of both arms is computed once with the
experiment's own arms (the retriever's ``_ranked`` on the champion and the challenger of experiment (a), exactly what
it serves) — and checked: every query experiment (a) served is rebuilt from them by ``team_draft`` with its query id
and compared with the log. A simulated experiment then serves each query through the product's ``serve_query`` (team
draft or the sticky split of ``takes_part`` per simulated session, share 0.5) from those rankings, writes the
product's ``served_record`` / ``record_feedback`` records to a JSON-lines log, and is read every 10 units (judged
queries when interleaved, served queries in a split). Each read credits the new records with the product's
``_observations`` and tests all units with the product's ``_test`` (+ ``_guardrail``); a read that ends the experiment,
and the horizon, is confirmed by ``judge_experiment(record, log)`` on the whole log (disagreements are counted and
reported; the first ``--check-reads`` reads of each scenario's first experiment are judged by ``judge_experiment``
too). The latency guardrail is applied at every read up to 1,000 units, then every 10th read; A/A experiments
(identical rankings, identical latencies) skip it between confirmations, for speed. Replayed latencies: the fastest
of two runs per query, the two arms timed in turn, so the load of the shared cores falls on both alike (timed in
separate passes, one arm measured 66 ms and the other 24 ms at p50, and the 2x p99 guardrail ended most
worse-challenger experiments). A/A experiments stop at ``--aa-horizon`` (5,000 units), not the product's 20,000,
because each of them runs to the horizon.

Reported per scenario: the share of experiments with the correct verdict, a wrong one, and none before the horizon;
the median and IQR of units (and served queries) to a correct verdict; binomial 95% intervals (Clopper-Pearson).
Writes benchmarks/results/online-<dataset>.{json,md}.

**3. Scenarios (issue #37), ``--scenarios``**: experiments that stay right on real traffic, each read after every
unit (``--runs`` 2,000 experiments per mode, horizon ``--scenario-horizon`` 20,000 units), with the product's own
statistics (``evaluate/sequential.py``: ``two_sample``, ``clustered_two_sample``, ``combine_strata``, ``one_sample``,
``error_rate_exceeds``, ``sample_ratio_mismatch_phases``) recomputed from cumulative sums (``*_twin``) and compared
with the product's functions on prefixes of simulated runs at the start of every run (``check_twins``; the run fails
if a decision differs). The rankings are real: the test queries ranked by the base model and the adapter through the
experiment's arms (as above), and by "blended" challengers (the challenger's collection searched with the query
vector ``(1 - l) base + l adapter``), whose offline nDCG@10 gain over the base is small; they are cached
(``--reuse-rankings`` runs only the simulations). Interleaved lists are the product's ``team_draft`` (all 32 coin-flip
patterns of a top 10, enumerated) and their credit its ``team_draft_credit``; a served query's credit distribution is
exact (every click vector's probability), so the judged queries of an experiment are drawn from it. Scenarios:
returning users (lognormal activity, three queries of their own, a beta(2, 2) click propensity each, an arm per user)
analysed per user (the product) and per query (before #37); a canary ramp (share 0.05 for 4,000 queries, then 0.5)
while the click propensity drifts by ``--drifts``, phases stratified (the product) and pooled (before); a cascade
click model (a relevant result clicked with p 0.6, a non-relevant one with 0.1, the user stops after a relevant
click); the small-effect challenger at matched min-effect (each mode's min-effect is the effect it measures) and at
the defaults; a challenger failing 0.2% / 0.5% of its queries against the 1% error guardrail (sequential vs the old
point estimate). Writes benchmarks/results/online-scenarios-<dataset>.{json,md}. ``--tiny``: synthetic rankings, no
dataset (the test's mode).

Document vectors: the bundled model's document vectors are read from the benchmarks' embedding cache
(benchmarks/.cache/encodings: the same model's ``encode_document``; checked against a live encode at start) instead
of recomputed for every collection a rollout builds; queries are always encoded live. ``--encode-documents`` turns
this off (about 4 min per pass over SciFact's 5,183 abstracts on 2 CPU cores).
"""

from __future__ import annotations

import argparse
import atexit
import json
import math
import random
import resource
import shutil
import statistics
import sys
import tempfile
import time
import types
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from common import CACHE, RESULTS, dataset_dir, save

K = 10


@dataclass(frozen=True)
class ClickModel:
    """The position-based model: rank r examined with probability (1/r)^eta; an examined result clicked with
    ``p_relevant`` when relevant, ``p_noise`` when not."""

    eta: float = 1.0
    p_relevant: float = 1.0
    p_noise: float = 0.05

    def clicks(self, shown: list[str], relevant: set[str], rng: random.Random) -> list[str]:
        out = []
        for rank, doc in enumerate(shown, 1):
            examined = rng.random() < rank ** -self.eta
            if examined and rng.random() < (self.p_relevant if doc in relevant else self.p_noise):
                out.append(doc)
        return out


def clopper_pearson(k: int, n: int, level: float = 0.95) -> list[float]:
    from scipy.stats import beta

    if n == 0:
        return [0.0, 1.0]
    a = (1 - level) / 2
    low = 0.0 if k == 0 else float(beta.ppf(a, k, n - k + 1))
    high = 1.0 if k == n else float(beta.ppf(1 - a, k + 1, n - k))
    return [round(low, 4), round(high, 4)]


def peak_rss_gb() -> float:
    return round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1e6, 2)


# ---- the product's pieces ------------------------------------------------------------------------------------------
def serve_document_vectors_from_cache(base) -> None:
    """The bundled model's document vectors come from ``base`` (a CachedEncoder of the same model: the same
    ``encode_document``, cached on disk by text) instead of a forward pass; queries still run the model."""
    from ace_llamaindex.embeddings.models import DEFAULT_MODEL, resolve_model
    from ace_llamaindex.serve import embedding as emb

    original = emb.FineTunedEmbedding.encode_primary
    default = Path(resolve_model(DEFAULT_MODEL)).resolve()

    def encode_primary(self, texts, kind):
        if (kind == "document" and self.document_prompt is None and self.max_seq_length is None and self.normalize
                and Path(resolve_model(self.model_path)).resolve() == default):
            return base.encode_documents(list(texts)).tolist()
        return original(self, texts, kind)

    emb.FineTunedEmbedding.encode_primary = encode_primary
    encode_primary.original = original


def check_cached_vectors(base, texts: list[str]) -> float:
    """The largest difference between a live encode of ``texts`` and the cached vectors."""
    from ace_llamaindex.serve import embedding as emb

    embed = emb.FineTunedEmbedding()
    live = np.asarray(emb.FineTunedEmbedding.encode_primary.original(embed, texts, "document"))
    return float(np.abs(live - base.encode_documents(texts)).max())


def train_adapter(train, base, out: Path, seed: int) -> dict:
    from ace_llamaindex.mine.mining import HardNegativeMiner, MiningOptions, save_training_data
    from ace_llamaindex.train.adapter import adapter_trainer
    from ace_llamaindex.train.training import TrainConfig

    started = time.perf_counter()
    examples = HardNegativeMiner("dense", base, options=MiningOptions(), show_progress=False).mine(train)
    data = save_training_data(examples, out.parent / "training_data.json", source="train split")
    result = adapter_trainer(examples, out, TrainConfig(seed=seed), base_encoder=base, training_data=data,
                             corpus=train.corpus)
    gate = result.card.gate or {}
    return {"examples": len(examples), "gate": {k: gate.get(k) for k in ("verdict", "delta", "ci95", "decided_by")},
            "seconds": round(time.perf_counter() - started, 1)}


def serving_retriever(path: Path, collection: str, corpus: dict[str, str], feedback_log: Path):
    """The corpus indexed by the real retriever (``add_nodes``: dense + BM25) in an embedded local Qdrant."""
    from llama_index.core.schema import TextNode

    from ace_llamaindex.serve.embedding import FineTunedEmbedding
    from ace_llamaindex.serve.retriever import HybridQdrantRetriever

    retriever = HybridQdrantRetriever(FineTunedEmbedding(), path=str(path), collection=collection, engine="local",
                                      feedback_log=feedback_log, similarity_top_k=K)
    retriever.add_nodes([TextNode(id_=k, text=v) for k, v in corpus.items()], show_progress=False)
    return retriever


def live_users(retriever, collection: str, test, click: ClickModel, rng: random.Random, read_every: int,
               max_served: int, sessions: int) -> dict:
    """Simulated users query the running retriever and accept what the click model clicks; the status is read
    (and acted on, ``auto``) every ``read_every`` served queries until it acts."""
    from ace_llamaindex.deploy.experiment import experiment_status
    from ace_llamaindex.serve.experiment_arms import experiment_session
    from ace_llamaindex.serve.feedback import QUERY_ID

    qids = sorted(test.queries)
    served = clicks = 0
    reads = []
    status = None
    started = time.perf_counter()
    while served < max_served:
        for _ in range(read_every):
            qid = qids[rng.randrange(len(qids))]
            with experiment_session(f"user-{rng.randrange(sessions)}"):
                nodes = retriever.retrieve(test.queries[qid])
            shown = [n.node.node_id for n in nodes]
            for doc in click.clicks(shown, set(test.relevant_docs[qid]), rng):
                retriever.record_feedback(nodes[0].node.metadata[QUERY_ID], doc, True)
                clicks += 1
            served += 1
        status = experiment_status(collection, index=retriever.index)
        reads.append([served, status.units, status.decision])
        if status.acted:
            break
    return {"served_queries": served, "clicks": clicks, "units": status.units, "unit_name": status.unit_name,
            "decision": status.decision, "reason": status.reason, "acted": status.acted,
            "wins": status.wins, "losses": status.losses, "ties": status.ties,
            "delta": {k: round(v, 4) for k, v in status.delta.items() if isinstance(v, float)},
            "arms": {a: vars(s) for a, s in status.arms.items()}, "reads": len(reads),
            "seconds": round(time.perf_counter() - started, 1)}


@dataclass
class Arm:
    """One model's top 10 for each test query, as the experiment serves it, and how long it took (ms)."""

    name: str
    ranked: dict[str, list[tuple[str, float]]]
    latency: dict[str, float]
    fusion: str


def arm_rankings(retriever, served: dict[str, object], names: dict[str, str], queries: dict[str, str],
                 repeats: int = 2) -> dict[str, Arm]:
    """Each query ranked by each arm of the running experiment with the retriever's own ``_ranked`` (what
    ``_experiment`` calls for each arm). Latency: the fastest of ``repeats`` runs, the arms timed in turn for each
    query (in alternating order) so that the load of the shared cores falls on both alike."""
    ranked: dict[str, dict] = {arm: {} for arm in served}
    latency: dict[str, dict] = {arm: {} for arm in served}
    order = list(served)
    for qid, text in queries.items():
        best = dict.fromkeys(served, math.inf)
        for rep in range(repeats):
            for arm in (order if rep % 2 == 0 else order[::-1]):
                nodes, ms = retriever._ranked(served[arm], text)
                best[arm] = min(best[arm], ms)
                ranked[arm][qid] = [(n.node.node_id, float(n.score)) for n in nodes]
        for arm in served:
            latency[arm][qid] = round(best[arm], 3)
    return {arm: Arm(names[arm], ranked[arm], latency[arm], served[arm].fusion.name) for arm in served}


def replay_matches_log(log: Path, record, arms: dict[str, Arm], test) -> dict:
    """Rebuild every query the real experiment served from the precomputed rankings (team_draft, its query id)."""
    from ace_llamaindex.serve.experiment_arms import CHALLENGER, CHAMPION, team_draft
    from ace_llamaindex.serve.feedback import judgements, read_log

    by_text: dict[str, str] = {}
    for qid, text in test.queries.items():
        by_text.setdefault(text, qid)
    served, _ = judgements(read_log(log))
    same = total = 0
    for row in served.values():
        if (row.get("experiment") or {}).get("id") != record.id:
            continue
        qid = by_text[row["query"]]
        rebuilt = team_draft([d for d, _ in arms[CHAMPION].ranked[qid]], [d for d, _ in arms[CHALLENGER].ranked[qid]],
                             K, row["query_id"])
        total += 1
        same += rebuilt == [(r["doc_id"], r["team"]) for r in row["results"]]
    return {"served_queries": total, "rebuilt_exactly": same}


BLENDS = (0.0, 0.1, 0.15, 0.2, 0.25, 0.3, 0.4, 1.0)  # challenger query vector: (1 - l) base + l adapter
RANKINGS_CACHE = "scenario-rankings.json"


def command_line() -> str:
    import shlex
    import sys

    return "python " + " ".join(shlex.quote(a) for a in sys.argv)


def blended_rankings(retriever, champion, challenger, queries: dict[str, str],
                     blends: tuple[float, ...]) -> dict[float, dict[str, list[str]]]:
    """Each query ranked by the challenger's collection (the retriever's own ``_search``) with the query vector
    ``(1 - l) * base + l * adapter`` (normalised): l = 0 is the base's ranking, 1 the adapter's, and values between
    make challengers whose rankings all differ a little from the base's (the small-effect scenario)."""
    out: dict[float, dict[str, list[str]]] = {lam: {} for lam in blends}
    for qid, text in queries.items():
        base, _ = retriever._embed(champion, [text])
        adapted, labels = retriever._embed(challenger, [text])
        a, b = np.asarray(base[0], dtype=float), np.asarray(adapted[0], dtype=float)
        for lam in blends:
            v = (1 - lam) * a + lam * b
            v /= np.linalg.norm(v)
            nodes = retriever._search(challenger, [text], [v.tolist()], labels, log_served=False)[0]
            out[lam][qid] = [n.node.node_id for n in nodes]
    return out


# ---- simulated experiments: the product's serving, log records and verdict on precomputed rankings -----------------
def simulate(mode: str, champion: Arm, challenger: Arm, queries: dict[str, str], relevant: dict[str, set[str]],
             click: ClickModel, *, horizon: int, read_every: int, seed: int, sessions: int, folder: Path,
             check_reads: int = 0, guardrail_each_read: bool = True) -> dict:
    """One simulated experiment until the status is not ``continue``: its verdict, units and served queries.
    ``check_reads``: the first reads also judged by ``judge_experiment`` on the whole log (they must agree)."""
    from ace_llamaindex.deploy import experiment as dx
    from ace_llamaindex.evaluate.interleaving import team_draft_credit
    from ace_llamaindex.records.experiment import ExperimentRecord
    from ace_llamaindex.serve.experiment_arms import CHALLENGER, CHAMPION, experiment_session, serve_query
    from ace_llamaindex.serve.feedback import record_feedback, served_record

    rng = random.Random(seed)
    record = ExperimentRecord("sim", champion.name, challenger.name, mode=mode,
                              share=1.0 if mode == "interleave" else 0.5, max_queries=horizon, auto=True,
                              id=f"{rng.getrandbits(48):012x}")
    log, chunk = folder / f"{record.id}.jsonl", folder / "chunk.jsonl"
    log.unlink(missing_ok=True)
    units: list = []
    by_arm: dict[str, list] = {CHAMPION: [], CHALLENGER: []}
    stats = {CHAMPION: dx.ArmStats(), CHALLENGER: dx.ArmStats()}
    qids = sorted(queries)
    served = pending = reads = disagreements = 0
    lines: list[str] = []
    while True:
        qid = qids[rng.randrange(len(qids))]
        query_id = f"{rng.getrandbits(128):032x}"
        with experiment_session(f"user-{rng.randrange(sessions)}"):
            shown, teams, info = serve_query(record, query_id, lambda: (champion.ranked[qid], champion.latency[qid]),
                                             lambda: (challenger.ranked[qid], challenger.latency[qid]),
                                             lambda r: r[0], K)
        arm = info["arm"]
        records = [served_record(query_id, queries[qid], shown, vector=None, model="interleaved" if teams else arm,
                                 fusion=(challenger if arm == CHALLENGER else champion).fusion, collection="sim",
                                 teams=teams, experiment=info)]
        clicked = click.clicks([d for d, _ in shown], relevant[qid], rng)
        for doc in clicked:
            record_feedback(records.append, query_id, doc, True)
        lines.extend(json.dumps(r, ensure_ascii=False, separators=(",", ":")) for r in records)
        served += 1
        if mode == "split":
            pending += 1
        else:  # a unit when the product's credit counts a click (below the rankings' shared prefix)
            pending += team_draft_credit(teams, [d in clicked for d, _ in shown], info.get("shared_prefix", 0)) is not None
        if pending < read_every and served < 20 * horizon:
            continue
        if pending < read_every:  # identical rankings: the product's credit never counts a click (no units ever)
            return {"decision": "end", "reason": f"no judged query in {served} served queries", "units": len(units),
                    "served": served, "delta": 0.0, "disagreements": disagreements,
                    "checked_reads": min(reads, check_reads)}
        text = "\n".join(lines) + "\n"
        chunk.write_text(text)
        with log.open("a") as f:
            f.write(text)
        new_units, new_by_arm, new_stats = dx._observations(record, chunk)  # the product credits the new records
        assert len(new_units) == pending, (len(new_units), pending)
        units.extend(new_units)
        for a, infos in new_by_arm.items():
            by_arm.setdefault(a, []).extend(infos)
        for a, st in new_stats.items():
            stats[a].served += st.served
            stats[a].accepted += st.accepted
            stats[a].errors += st.errors
        lines, pending = [], 0
        reads += 1
        # the latency guardrail at every read up to 1,000 units, then every 10th read (replayed latencies: it is
        # stable by then); judge_experiment, which confirms every verdict, always applies it
        guard = guardrail_each_read and (reads <= 100 or reads % 10 == 0)
        decision = screen(record, units, by_arm, stats, guard)
        if reads <= check_reads or decision != "continue":
            status = dx.judge_experiment(record, log)  # the product's verdict on the whole log
            if status.decision != decision or status.units != len(units):
                disagreements += 1
                print(f"judge_experiment disagrees at read {reads}: {status.decision} ({status.reason}) vs {decision}",
                      flush=True)
            if status.decision != "continue":
                log.unlink()
                return {"decision": status.decision, "reason": status.reason, "units": status.units,
                        "served": served, "delta": round(status.delta["delta"], 4), "disagreements": disagreements,
                        "checked_reads": min(reads, check_reads)}


def screen(record, units: list, by_arm: dict, stats: dict, guardrail: bool = True) -> str:
    """``judge_experiment``'s decision from units already credited (its own ``_test`` and ``_guardrail``), without
    reading the whole log again; every decision other than ``continue`` is confirmed by ``judge_experiment``."""
    from ace_llamaindex.deploy import experiment as dx
    from ace_llamaindex.serve.experiment_arms import CHALLENGER, CHAMPION

    if guardrail and dx._guardrail(record, by_arm, stats):
        return "end"
    delta, _ = dx._test(record, units)
    n = len(units)
    if record.mode == "interleave":
        enough = n >= dx.MIN_UNITS
    else:
        enough = min(sum(1 for u in units if u.arm == arm) for arm in (CHAMPION, CHALLENGER)) >= dx.MIN_UNITS
    if enough and delta.decided:
        return "promote" if delta.delta > 0 else "end"
    if n >= record.max_queries:
        return "end"
    return "continue"


def outcome(result: dict, expected: str) -> str:
    """correct / wrong / none (no verdict before the horizon) for a scenario whose right answer is ``expected``:
    ``promote`` (better), ``worse`` (end as worse) or ``none`` (A/A: no difference at the horizon)."""
    if result["decision"] == "promote":
        verdict = "promote"
    elif "worse" in result["reason"]:
        verdict = "worse"
    elif "guardrail" in result["reason"]:
        verdict = "guardrail"
    else:
        verdict = "none"
    if verdict == expected:
        return "correct"
    return "none" if verdict == "none" else "wrong"


def summarize(name: str, mode: str, challenger: str, expected: str, results: list[dict], horizon: int,
              seconds: float) -> dict:
    kinds = [outcome(r, expected) for r in results]
    n = len(results)
    done = [r for r, k in zip(results, kinds, strict=True) if k == "correct" and expected != "none"]
    unit = "judged queries" if mode == "interleave" else "served queries"

    def quartiles(values: list[int]) -> dict:
        if not values:
            return {"median": None, "iqr": None}
        q1, q2, q3 = np.percentile(values, [25, 50, 75])
        return {"median": float(q2), "iqr": [float(q1), float(q3)]}

    return {"scenario": name, "mode": mode, "challenger": challenger, "expected": expected, "experiments": n,
            "horizon": horizon, "unit": unit, "correct": kinds.count("correct"), "wrong": kinds.count("wrong"),
            "no_verdict": kinds.count("none"),
            "correct_share": round(kinds.count("correct") / n, 4), "wrong_share": round(kinds.count("wrong") / n, 4),
            "wrong_ci95": clopper_pearson(kinds.count("wrong"), n),
            "correct_ci95": clopper_pearson(kinds.count("correct"), n),
            "units_to_verdict": quartiles([r["units"] for r in done]),
            "served_to_verdict": quartiles([r["served"] for r in done]),
            "verdicts": _verdict_counts(results),
            "wrong_at_units": sorted(r["units"] for r, k in zip(results, kinds, strict=True) if k == "wrong"),
            "judge_disagreements": sum(r["disagreements"] for r in results),
            "checked_reads": sum(r["checked_reads"] for r in results),
            "seconds": round(seconds, 1)}


def _verdict_counts(results: list[dict]) -> dict[str, int]:
    counts: dict[str, int] = {}
    for r in results:
        key = ("promote" if r["decision"] == "promote" else "end: worse" if "worse" in r["reason"]
               else "end: guardrail" if "guardrail" in r["reason"] else "end: no clear difference")
        counts[key] = counts.get(key, 0) + 1
    return counts


# ---- issue #37: scenarios, each read after every unit, vectorised ------------------------------------------------
# Every simulated experiment is read after every unit (2,000 experiments x 20,000 units per mode): the product's
# statistics are recomputed here from cumulative sums (``*_twin``), and ``check_twins`` compares them with the
# product's own functions on prefixes of simulated experiments (the numbers it finds go into the results).
CLICKS = ((np.arange(2**K)[:, None] >> np.arange(K)) & 1).astype(bool)  # every click vector: bit r = rank r+1


@dataclass(frozen=True)
class Cascade:
    """The cascade model (Craswell et al., WSDM 2008) with noise: the user reads top down, clicks a result with
    ``p_relevant`` when relevant and ``p_noise`` when not, and stops after the first click on a relevant result (a
    satisfying click); a non-relevant click does not stop her."""

    p_relevant: float = 0.6
    p_noise: float = 0.1


def click_probability(model, rel: np.ndarray, propensity: np.ndarray | float = 1.0) -> np.ndarray:
    """Per rank, the probability that an examined (PBM) / reached (cascade) result is clicked, times ``propensity``
    (a user's or the time's click propensity, <= 1). ``rel``: (..., K) booleans."""
    p = np.where(rel, model.p_relevant, model.p_noise) * np.asarray(propensity, dtype=float)[..., None]
    if isinstance(model, ClickModel):
        p = p * np.arange(1, K + 1, dtype=float) ** -model.eta
    return p


def simulate_clicks(model, rel: np.ndarray, propensity, rng: np.random.Generator) -> np.ndarray:
    """Clicked ranks (..., K) for results whose relevance is ``rel``."""
    p = click_probability(model, rel, propensity)
    clicked = rng.random(p.shape) < p
    if isinstance(model, Cascade):
        satisfied = clicked & rel
        first = np.where(satisfied.any(-1), satisfied.argmax(-1), K)
        clicked &= np.arange(K) <= first[..., None]
    return clicked


def click_vector_probabilities(model, rel: np.ndarray) -> np.ndarray:
    """P(click vector) for each of the 2^K click vectors (exact), rows of ``rel`` (N, K) -> (N, 2^K)."""
    p = click_probability(model, rel)[:, None, :]  # (N, 1, K)
    c = CLICKS[None]
    if isinstance(model, ClickModel):
        return np.prod(np.where(c, p, 1 - p), axis=-1)
    satisfied = c & rel[:, None, :]
    first = np.where(satisfied.any(-1), satisfied.argmax(-1), K)  # (N, 2^K)
    reached = np.arange(K)[None, None, :] <= first[..., None]
    valid = ~(c & ~reached).any(-1)  # no click after a satisfying one
    return np.where(valid, np.prod(np.where(reached, np.where(c, p, 1 - p), 1.0), axis=-1), 0.0)


def ndcg_of_clicks() -> np.ndarray:
    """The split's per-query value for each click vector: the product's nDCG@10 of what was shown against what
    was accepted (it depends on the clicked ranks only)."""
    from ace_llamaindex.deploy.experiment import _NDCG10

    shown = [f"d{r}" for r in range(K)]
    return np.array([_NDCG10(shown, {shown[r] for r in range(K) if c[r]}) for c in CLICKS])


def relevance(ranked: dict[str, list[str]], relevant: dict[str, set[str]], qids: list[str]) -> np.ndarray:
    out = np.zeros((len(qids), K), dtype=bool)
    for i, q in enumerate(qids):
        for r, d in enumerate(ranked[q][:K]):
            out[i, r] = d in relevant[q]
    return out


class _Flips:
    """Stands in for ``random.Random(seed)`` in the product's team draft: its coin flips, in turn, from a bit pattern."""

    def __init__(self, bits: int):
        self.bits, self.i = bits, 0

    def random(self) -> float:
        bit = (self.bits >> self.i) & 1
        self.i += 1
        return 0.25 if bit else 0.75


def team_drafts(champion: list[str], challenger: list[str]) -> list[list[tuple[str, str]]]:
    """All 32 equally likely team drafts of two rankings (k = 10: at most 5 coin flips), each made by the product's
    own ``team_draft`` with its coin flips given."""
    from ace_llamaindex.serve import experiment_arms

    module = sys.modules[experiment_arms.team_draft.__module__]
    saved = module.random
    out = []
    try:
        for bits in range(32):
            module.random = types.SimpleNamespace(Random=lambda seed, b=bits: _Flips(b))
            out.append(experiment_arms.team_draft(champion, challenger, K, "x"))
    finally:
        module.random = saved
    return out


def old_credit(teams: list[str | None], clicks: np.ndarray) -> np.ndarray:
    """The credit of main before issue #37 (27e94da, ``_observations``): judged when anything shown was accepted,
    sign(challenger's accepted - champion's accepted) over all ranks; NaN = not judged. ``clicks``: (2^K, K)."""
    from ace_llamaindex.serve.experiment_arms import CHALLENGER, CHAMPION

    ch = np.array([t == CHALLENGER for t in teams] + [False] * (K - len(teams)))
    cp = np.array([t == CHAMPION for t in teams] + [False] * (K - len(teams)))
    credit = np.sign((clicks & ch).sum(-1) - (clicks & cp).sum(-1)).astype(float)
    return np.where((clicks & (ch | cp)).any(-1), credit, np.nan)


def new_credit(teams: list[str | None], prefix: int) -> np.ndarray:
    """The product's ``team_draft_credit`` for every click vector (NaN = None: no counted click)."""
    from ace_llamaindex.evaluate.interleaving import team_draft_credit

    teams = list(teams) + [None] * (K - len(teams))
    out = np.empty(len(CLICKS))
    for i, c in enumerate(CLICKS):
        v = team_draft_credit(teams, [bool(x) for x in c], prefix)
        out[i] = np.nan if v is None else v
    return out


def interleave_distribution(champion: dict[str, list[str]], challenger: dict[str, list[str]],
                            relevant: dict[str, set[str]], qids: list[str], model, credit: str,
                            swap: bool = False) -> dict:
    """The exact distribution of one served query's credit (+1, 0, -1, or not judged), over the queries (uniform),
    the 32 team drafts (uniform) and the click vectors (the click model): the product's team draft and credit.
    ``swap``: a label-shuffled A/A — each served query's arms are the two rankings in a random order."""
    from ace_llamaindex.serve.experiment_arms import shared_prefix

    cache: dict = {}
    probs = np.zeros(4)  # not judged, -1, 0, +1
    pairs = [(champion, challenger)] + ([(challenger, champion)] if swap else [])
    for a, b in pairs:
        for q in qids:
            prefix = shared_prefix(a[q], b[q], K) if credit == "shared prefix" else 0
            drafts = team_drafts(a[q], b[q])
            rel = np.array([[d in relevant[q] for d, _ in draft] + [False] * (K - len(draft)) for draft in drafts])
            pc = click_vector_probabilities(model, rel)  # (32, 2^K)
            for draft, p in zip(drafts, pc, strict=True):
                teams = tuple(t for _, t in draft)
                key = (teams, prefix, credit)
                if key not in cache:
                    cache[key] = old_credit(list(teams), CLICKS) if credit == "all clicks" else new_credit(teams, prefix)
                v = cache[key]
                probs += [p[np.isnan(v)].sum(), p[v == -1].sum(), p[v == 0].sum(), p[v == 1].sum()]
    probs /= probs.sum()
    return {"not_judged": probs[0], "minus": probs[1], "tie": probs[2], "plus": probs[3],
            "judged": 1 - probs[0], "mean_credit": (probs[3] - probs[1]) / (1 - probs[0]) if probs[0] < 1 else None}


# ---- the product's statistics, vectorised over prefixes (each checked against the product in check_twins) --------
def msprt_twin(delta, variance, tau: float, alpha: float):
    """``sequential.msprt``'s decision and interval half width on arrays."""
    from ace_llamaindex.evaluate.sequential import VARIANCE_FLOOR

    v, t2 = np.maximum(variance, VARIANCE_FLOOR), tau * tau
    with np.errstate(over="ignore", invalid="ignore", divide="ignore"):
        log_ratio = 0.5 * np.log(v / (v + t2)) + delta * delta * t2 / (2 * v * (v + t2))
        ratio = np.exp(np.minimum(log_ratio, 700.0))
    return ratio >= 1 / alpha, ratio


def one_sample_twin(s1, s2, n, tau, alpha):
    """``sequential.one_sample`` on every prefix: cumulative sums of values and squares, counts."""
    with np.errstate(invalid="ignore", divide="ignore"):
        mean = s1 / n
        var = np.where(n > 1, (s2 - s1 * mean) / np.maximum(n - 1, 1), 1.0) / n
    decided, ratio = msprt_twin(mean, var, tau, alpha)
    return mean, var, decided & (n > 0), np.where(n > 0, ratio, 1.0)


def two_sample_twin(a, b, tau, alpha):
    """``sequential.two_sample``: ``a``/``b`` = (sum, sum of squares, count) per arm on every prefix."""
    with np.errstate(invalid="ignore", divide="ignore"):
        ma, mb = a[0] / a[2], b[0] / b[2]
        va = np.where(a[2] > 1, (a[1] - a[0] * ma) / np.maximum(a[2] - 1, 1), 1.0) / a[2]
        vb = np.where(b[2] > 1, (b[1] - b[0] * mb) / np.maximum(b[2] - 1, 1), 1.0) / b[2]
    delta, var = mb - ma, va + vb
    decided, ratio = msprt_twin(delta, var, tau, alpha)
    ok = (a[2] > 0) & (b[2] > 0)
    return delta, var, decided & ok, np.where(ok, ratio, 1.0)


def clustered_twin(arm_sums, tau, alpha):
    """``sequential.clustered_two_sample`` on every prefix. ``arm_sums``: per arm (champion, challenger) the running
    (sum y, sum n, sum Y_i^2, sum Y_i n_i, sum n_i^2, users) over users i (Y_i, n_i: user i's sum and count)."""
    parts = []
    for sy, sn, syy, syn, snn, k in arm_sums:
        with np.errstate(invalid="ignore", divide="ignore"):
            mean = sy / sn
            spread = np.maximum(syy - 2 * mean * syn + mean * mean * snn, 0.0)
            var = np.where(k > 1, spread / (sn * sn) * k / np.maximum(k - 1, 1), 1.0)
        parts.append((mean, var, k > 0))
    (ma, va, oka), (mb, vb, okb) = parts
    decided, ratio = msprt_twin(mb - ma, va + vb, tau, alpha)
    ok = oka & okb
    return mb - ma, va + vb, decided & ok, np.where(ok, ratio, 1.0)


def combine_twin(parts, tau, alpha):
    """``sequential.combine_strata`` of parts given as (delta, variance, weight) arrays: the weights the product's
    ``stratum_weight`` gives (0 for a phase where an arm has no query: left out), the variances floored as it does."""
    from ace_llamaindex.evaluate.sequential import VARIANCE_FLOOR

    num = den = spread = 0.0
    for delta, var, w in parts:
        num = num + w * np.where(w > 0, delta, 0.0)
        spread = spread + w * w * np.where(w > 0, np.maximum(var, VARIANCE_FLOOR), 0.0)
        den = den + w
    with np.errstate(invalid="ignore", divide="ignore"):
        delta, var = num / den, spread / (den * den)
    decided, ratio = msprt_twin(delta, var, tau, alpha)
    ok = den > 0
    return delta, var, decided & ok, np.where(ok, ratio, 1.0)


def error_rate_twin(errors, asked, limit, alpha, min_count):
    """``sequential.error_rate_exceeds`` -> ``exceeds`` on every prefix (tripped: decided and the rate above the limit)."""
    from ace_llamaindex.evaluate.sequential import ERROR_RATE_GRID

    logs = []
    for g in ERROR_RATE_GRID:
        p = min(limit * g, 1 - (1 - limit) / g)
        logs.append(errors * math.log(p / limit) + (asked - errors) * (math.log1p(-p) - math.log1p(-limit)))
    logs = np.stack(logs)
    top = logs.max(0)
    log_ratio = top + np.log(np.exp(logs - top).sum(0) / len(ERROR_RATE_GRID))
    log_ratio = np.where(asked < min_count, 0.0, log_ratio)
    decided = np.exp(np.minimum(log_ratio, 700.0)) >= 1 / alpha
    return decided & (errors / np.maximum(asked, 1) > limit), log_ratio


def srm_twin(parts, alpha):
    """``sequential.sample_ratio_mismatch_phases`` -> ``decided`` on every prefix: ``parts`` = per phase (challenger
    units, units, share) arrays of counts so far; each phase's beta-binomial log factor, added."""
    from scipy.special import betaln

    from ace_llamaindex.evaluate.sequential import SRM_CONCENTRATION

    total = 0.0
    for x, n, share in parts:
        a, b = SRM_CONCENTRATION * share, SRM_CONCENTRATION * (1 - share)
        log_factor = betaln(x + a, n - x + b) - betaln(a, b) - x * math.log(share) - (n - x) * math.log1p(-share)
        total = total + np.where(n > 0, np.maximum(np.minimum(log_factor, 700.0), math.log(1e-300)), 0.0)
    return np.exp(np.minimum(total, 700.0)) >= 1 / alpha, np.minimum(total, 700.0)


def arm_cumsums(values, mask):
    """Running (sum, sum of squares, count) of ``values`` where ``mask``, along the last axis."""
    v = np.where(mask, values, 0.0)
    return np.cumsum(v, -1), np.cumsum(v * v, -1), np.cumsum(mask, -1).astype(float)


def user_cumsums(values, users, mask, n_users):
    """Running per-arm cluster sums for ``clustered_twin``: each event adds to its user's Y_i and n_i, so
    sum Y_i^2 grows by 2 Y_i y + y^2, sum Y_i n_i by Y_i + y n_i + y, sum n_i^2 by 2 n_i + 1 (Y_i, n_i before it)."""
    runs, t = values.shape
    y = np.where(mask, values, 0.0).ravel()
    key = (np.arange(runs)[:, None] * n_users + users).ravel()
    key = np.where(mask.ravel(), key, -1 - np.repeat(np.arange(runs), t))  # other arm's events: their own groups
    order = np.argsort(key, kind="stable")
    ks, ys = key[order], y[order]
    ms = mask.ravel()[order].astype(float)
    start = np.r_[True, ks[1:] != ks[:-1]]
    group = np.cumsum(start) - 1
    cy, cn = np.cumsum(ys), np.cumsum(ms)
    first = np.flatnonzero(start)
    prior_y = np.empty_like(ys)
    prior_n = np.empty_like(ys)
    prior_y[order] = cy - ys - (cy - ys)[first][group]
    prior_n[order] = cn - ms - (cn - ms)[first][group]
    prior_y, prior_n = prior_y.reshape(runs, t), prior_n.reshape(runs, t)
    m = mask.astype(float)
    vy = np.where(mask, values, 0.0)
    return (np.cumsum(vy, -1), np.cumsum(m, -1), np.cumsum(m * (2 * prior_y * vy + vy * vy), -1),
            np.cumsum(m * (prior_y + vy * prior_n + vy), -1), np.cumsum(m * (2 * prior_n + 1), -1),
            np.cumsum(m * (prior_n == 0), -1))


def first_verdict(decided, delta, enough, horizon):
    """Per run: the index of the first read that decides (or -1) and its sign."""
    hit = decided & enough
    hit[:, horizon:] = False
    any_hit = hit.any(-1)
    at = np.where(any_hit, hit.argmax(-1), -1)
    sign = np.where(any_hit, np.sign(np.take_along_axis(delta, np.maximum(at, 0)[:, None], -1)[:, 0]), 0)
    return at, sign


# ---- the scenarios -------------------------------------------------------------------------------------------------
@dataclass
class Inputs:
    """What the scenarios run on: each query's relevance of every arm's top 10, the rankings, the qrels."""

    qids: list[str]
    rankings: dict[str, dict[str, list[str]]]  # base, adapter, blend <l>
    relevant: dict[str, set[str]]
    source: dict

    def rel(self, name: str) -> np.ndarray:
        return relevance(self.rankings[name], self.relevant, self.qids)


def load_inputs(args, cache_path: Path) -> tuple[Inputs]:
    if args.tiny:  # synthetic: 40 queries over 200 documents; the "adapter" puts a relevant document higher
        rng = random.Random(args.seed)
        docs = [f"doc{i}" for i in range(200)]
        qids = [f"q{i}" for i in range(40)]
        relevant = {q: set(rng.sample(docs, 2)) for q in qids}
        base = {q: rng.sample(docs, K) for q in qids}
        adapter = {}
        for q in qids:
            ranked = [d for d in base[q] if d not in relevant[q]][: K - 1]
            ranked.insert(rng.randrange(3), sorted(relevant[q])[0])
            adapter[q] = ranked
        rankings = {"base": base, "adapter": adapter, "blend 0.2": {q: adapter[q] if i % 5 == 0 else base[q]
                                                                    for i, q in enumerate(qids)}}
        return (Inputs(qids, rankings, relevant, {"synthetic": "--tiny", "queries": len(qids)}),)
    if not cache_path.exists():
        raise SystemExit(f"{cache_path} does not exist: run `python bench_online.py --scenarios` once without "
                         "--reuse-rankings (it ranks the test queries with both models and caches them)")
    cache = json.loads(cache_path.read_text())
    from ace_llamaindex.data.beir import load_beir

    test = load_beir(dataset_dir(args.dataset), "test")
    relevant = {q: set(docs) for q, docs in test.relevant_docs.items()}
    qids = sorted(cache["base"])
    rankings = {"base": cache["base"], "adapter": cache["adapter"],
                **{f"blend {lam}": ranked for lam, ranked in cache["blends"].items()}}
    source = {k: cache[k] for k in ("command", "dataset", "test_queries", "documents", "offline_test", "blend_check")}
    return (Inputs(qids, rankings, relevant, source),)


def ndcg_offline(inputs: Inputs, name: str) -> float:
    from ace_llamaindex.evaluate.metrics import ndcg_at

    ndcg10 = ndcg_at(10)
    return float(np.mean([ndcg10(inputs.rankings[name][q], inputs.relevant[q]) for q in inputs.qids]))


def outcome_counts(at, sign, expected: str) -> dict:
    """correct / wrong / none per run. expected: none (A/A: any verdict is wrong), promote (better), stop (a
    guardrail that must not trip: any stop is wrong)."""
    decided = at >= 0
    if expected == "none":
        wrong, correct = decided, ~decided
    elif expected == "promote":
        wrong, correct = decided & (sign < 0), decided & (sign > 0)
    else:
        wrong, correct = decided, ~decided
    return {"wrong": wrong, "correct": correct, "none": ~(wrong | correct)}


def summarise(name: str, mode: str, analysis: str, expected: str, at, sign, served, horizon: int, unit: str,
              tau: float, seconds: float, **extra) -> dict:
    kinds = outcome_counts(at, sign, expected)
    n = len(at)
    wrong, correct = int(kinds["wrong"].sum()), int(kinds["correct"].sum())
    verdict = at >= 0
    done = served[kinds["correct"] & verdict] if expected == "promote" else served[verdict]

    def quartiles(x):
        if x.size == 0:
            return {"median": None, "iqr": None}
        q1, q2, q3 = np.percentile(x, [25, 50, 75])
        return {"median": float(q2), "iqr": [float(q1), float(q3)]}

    return {"scenario": name, "mode": mode, "analysis": analysis, "expected": expected, "runs": n,
            "horizon": horizon, "unit": unit, "tau": round(float(tau), 5), "wrong": wrong,
            "wrong_share": round(wrong / n, 5), "wrong_ci95": clopper_pearson(wrong, n),
            "wrong_upper_below_5pct": clopper_pearson(wrong, n)[1] < 0.05,
            "correct": correct, "correct_share": round(correct / n, 5), "correct_ci95": clopper_pearson(correct, n),
            "no_verdict": int(kinds["none"].sum()),
            # promote: served queries to a correct verdict; otherwise to any (wrong) verdict
            "served_to_verdict": quartiles(done),
            # promote: the median over all runs, a run without the correct verdict counted as never reaching it
            "median_served_all_runs": all_runs_median(served, kinds["correct"]) if expected == "promote" else None,
            "seconds": round(seconds, 1), **extra}


def all_runs_median(served, correct) -> float | None:
    """The median served queries to a correct verdict over all runs (None when half of them never reached it)."""
    values = np.sort(np.where(correct, served, np.inf))
    median = float(np.median(values))
    return median if math.isfinite(median) else None


def split_runs(generate, analyses: dict, runs: int, horizon: int, chunk: int, rng, min_units: int, srm=None):
    """Runs of a split generated ``chunk`` at a time (``generate(rng, n)`` -> dict of (n, horizon) arrays: arm
    (True = challenger), value, and users / phase1 when an analysis needs them), each analysis read after every
    served query: per run, the first deciding read and its sign."""
    out = {name: ([], []) for name in analyses}
    alarms = []
    done = 0
    while done < runs:
        n = min(chunk, runs - done)
        g = generate(rng, n)
        arm = g["arm"]
        enough = np.minimum(np.cumsum(arm, -1), np.cumsum(~arm, -1)) >= min_units
        for name, analyse in analyses.items():
            delta, _, decided, _ = analyse(g)
            at, sign = first_verdict(decided, delta, enough, horizon)
            out[name][0].append(at)
            out[name][1].append(sign)
        if srm is not None:
            alarm = srm(g)
            alarms.append(np.where(alarm.any(-1), alarm.argmax(-1), -1))
        done += n
    found = {name: (np.concatenate(a), np.concatenate(s)) for name, (a, s) in out.items()}
    return found, (np.concatenate(alarms) if alarms else None)


def per_query(tau, alpha):
    return lambda g: two_sample_twin(arm_cumsums(g["value"], ~g["arm"]), arm_cumsums(g["value"], g["arm"]), tau, alpha)


def per_user(tau, alpha, n_users):
    return lambda g: clustered_twin([user_cumsums(g["value"], g["users"], m, n_users) for m in (~g["arm"], g["arm"])],
                                    tau, alpha)


def stratified(tau, alpha):
    def analyse(g):
        parts = []
        for phase in (g["phase1"], ~g["phase1"]):
            d, v, _, _ = two_sample_twin(arm_cumsums(g["value"], ~g["arm"] & phase),
                                         arm_cumsums(g["value"], g["arm"] & phase), tau, alpha)
            ca, cb = np.cumsum(~g["arm"] & phase, -1), np.cumsum(g["arm"] & phase, -1)
            with np.errstate(invalid="ignore", divide="ignore"):
                w = np.where((ca > 0) & (cb > 0), ca * cb / np.maximum(ca + cb, 1), 0.0)
            parts.append((d, v, w))
        return combine_twin(parts, tau, alpha)
    return analyse


def srm_of_units(share: float, alpha: float, n_users: int = 0):
    """The product's sample-ratio check of a one-phase split: challenger units among units first seen (users, or
    queries when ``n_users`` is 0)."""
    def check(g):
        if n_users:
            first = [user_cumsums(g["value"], g["users"], m, n_users)[5] for m in (g["arm"], ~g["arm"])]
            x, n = first[0], first[0] + first[1]
        else:
            x, n = np.cumsum(g["arm"], -1).astype(float), np.cumsum(np.ones_like(g["arm"]), -1).astype(float)
        return srm_twin([(x, n, share)], alpha)[0]
    return check


def srm_of_phases(shares: tuple[float, float], alpha: float):
    def check(g):
        parts = []
        for phase, share in zip((g["phase1"], ~g["phase1"]), shares, strict=True):
            parts.append((np.cumsum(g["arm"] & phase, -1).astype(float), np.cumsum(phase, -1).astype(float), share))
        return srm_twin(parts, alpha)[0]
    return check


def clicks_to_values(clicks: np.ndarray, table: np.ndarray) -> np.ndarray:
    return table[(clicks * (1 << np.arange(K))).sum(-1)]


def interleave_runs(dist: dict, tau: float, alpha: float, runs: int, horizon: int, rng, min_units: int):
    """Runs of an interleaved experiment whose judged queries' credits are drawn from ``dist`` (iid: queries are
    sampled with replacement), read after every judged query; served queries between judged ones are geometric."""
    ats, signs, served = [], [], []
    judged = dist["judged"]
    if judged <= 0:
        return np.full(runs, -1), np.zeros(runs), np.zeros(runs)
    p = np.array([dist["minus"], dist["tie"], dist["plus"]]) / judged
    done = 0
    while done < runs:
        n = min(100, runs - done)
        credit = rng.choice(np.array([-1.0, 0.0, 1.0]), size=(n, horizon), p=p)
        s1, s2 = np.cumsum(credit, -1), np.cumsum(credit * credit, -1)
        count = np.broadcast_to(np.arange(1, horizon + 1, dtype=float), credit.shape)
        delta, _, decided, _ = one_sample_twin(s1, s2, count, tau, alpha)
        at, sign = first_verdict(decided, delta, count >= min_units, horizon)
        gaps = rng.geometric(judged, size=(n, horizon))
        served.append(np.where(at >= 0, np.take_along_axis(np.cumsum(gaps, -1), np.maximum(at, 0)[:, None], -1)[:, 0], 0))
        ats.append(at)
        signs.append(sign)
        done += n
    return np.concatenate(ats), np.concatenate(signs), np.concatenate(served)


OLD_MIN_ERRORS = 50  # main before issue #37: the error guardrail's point estimate, from 50 queries asked
RAMP_SWITCH, RAMP_SHARES = 4000, (0.05, 0.5)


def guardrail_runs(rate: float, runs: int, horizon: int, rng, limit: float, alpha: float, min_count: int):
    """Per run, whether the error guardrail stopped a challenger whose true error rate is ``rate``: the point
    estimate of main before issue #37 (rate > limit from 50 queries on) and the product's sequential test, each read
    after every query the challenger was asked; and the query at which it stopped."""
    old, new = [], []
    done = 0
    while done < runs:
        n = min(100, runs - done)
        errors = np.cumsum(rng.random((n, horizon)) < rate, -1).astype(float)
        asked = np.broadcast_to(np.arange(1, horizon + 1, dtype=float), errors.shape)
        for store, hit in ((old, (asked >= OLD_MIN_ERRORS) & (errors / asked > limit)),
                           (new, error_rate_twin(errors, asked, limit, alpha, min_count)[0])):
            store.append(np.where(hit.any(-1), hit.argmax(-1), -1))
        done += n
    return np.concatenate(old), np.concatenate(new)


def check_twins(gens: dict, inputs_tau: float, alpha: float, horizon: int, limit: float, g_alpha: float,
                g_min: int, srm_alpha: float, rng) -> dict:
    """The vectorised statistics against the product's own functions on prefixes of simulated runs: the same
    estimate, variance and statistic (relative difference) and the same decision."""
    from ace_llamaindex.evaluate import sequential as sq

    prefixes = sorted({p for p in (31, 100, 777, 4001, 4500, horizon // 2, horizon) if p <= horizon})
    worst = {"delta": 0.0, "variance": 0.0, "log_ratio": 0.0}
    checks = same = srm_checks = srm_same = 0
    srm_worst = 0.0

    def compare(twin, product: sq.SequentialDelta, i: int, t: int):
        nonlocal checks, same
        d, v, decided, ratio = (float(np.asarray(x)[i, t]) for x in twin)
        checks += 1
        same += bool(decided) == product.decided
        if not math.isfinite(product.variance):  # no data in an arm: no decision, a ratio of 1
            worst["log_ratio"] = max(worst["log_ratio"], abs(math.log(ratio)))
            return
        worst["delta"] = max(worst["delta"], abs(d - product.delta) / max(abs(product.delta), 1e-12))
        worst["variance"] = max(worst["variance"],
                                abs(max(v, sq.VARIANCE_FLOOR) - product.variance) / product.variance)
        worst["log_ratio"] = max(worst["log_ratio"], abs(math.log(ratio) - math.log(product.ratio)))

    for name, (generate, n_users) in gens.items():
        g = generate(rng, 2)
        arm, value = g["arm"], g["value"]
        twins = {"per query": per_query(inputs_tau, alpha)(g)}
        if "users" in g:
            twins["per user"] = per_user(inputs_tau, alpha, n_users)(g)
        if "phase1" in g:
            twins["stratified"] = stratified(inputs_tau, alpha)(g)
        for i in range(2):
            for p in prefixes:
                a, b = value[i, :p][~arm[i, :p]], value[i, :p][arm[i, :p]]
                compare(twins["per query"], sq.two_sample(a, b, inputs_tau, alpha), i, p - 1)
                if "per user" in twins:
                    users = g["users"][i, :p]
                    groups = [[value[i, :p][(users == u) & (arm[i, :p] == side)] for u in np.unique(users)]
                              for side in (False, True)]
                    groups = [[x for x in side if x.size] for side in groups]
                    compare(twins["per user"], sq.clustered_two_sample(groups[0], groups[1], inputs_tau, alpha), i, p - 1)
                if "stratified" in twins:
                    ph = g["phase1"][i, :p]
                    parts = [sq.two_sample(value[i, :p][~arm[i, :p] & m], value[i, :p][arm[i, :p] & m], inputs_tau,
                                           alpha) for m in (ph, ~ph)]
                    weights = [sq.stratum_weight(int((~arm[i, :p] & m).sum()), int((arm[i, :p] & m).sum()))
                               for m in (ph, ~ph)]
                    compare(twins["stratified"], sq.combine_strata(parts, weights, inputs_tau, alpha), i, p - 1)
        if "phase1" in g:
            alarm, srm_log = srm_twin([(np.cumsum(arm & m, -1).astype(float), np.cumsum(m, -1).astype(float), share)
                                       for m, share in zip((g["phase1"], ~g["phase1"]), RAMP_SHARES, strict=True)],
                                      srm_alpha)
        elif "users" in g:
            first = [user_cumsums(value, g["users"], m, n_users)[5] for m in (arm, ~arm)]
            alarm, srm_log = srm_twin([(first[0], first[0] + first[1], 0.5)], srm_alpha)
        else:
            alarm, srm_log = srm_twin([(np.cumsum(arm, -1).astype(float),
                                        np.cumsum(np.ones_like(arm), -1).astype(float), 0.5)], srm_alpha)
        for i in range(2):
            for p in prefixes:
                arm_i = arm[i, :p]
                if "phase1" in g:
                    ph = g["phase1"][i, :p]
                    parts = [(int((arm_i & m).sum()), int(m.sum()), share)
                             for m, share in zip((ph, ~ph), RAMP_SHARES, strict=True)]
                elif "users" in g:
                    users = g["users"][i, :p]
                    first = {}
                    for u, a in zip(users.tolist(), arm_i.tolist(), strict=True):
                        first.setdefault(u, a)
                    parts = [(sum(first.values()), len(first), 0.5)]
                else:
                    parts = [(int(arm_i.sum()), p, 0.5)]
                srm_checks += 1
                product = sq.sample_ratio_mismatch_phases(parts, srm_alpha)
                srm_same += product.decided == bool(alarm[i, p - 1])
                srm_worst = max(srm_worst, abs(math.log(max(product.ratio, 1e-300)) - srm_log[i, p - 1]))
    credit = rng.choice(np.array([-1.0, 0.0, 1.0]), size=(2, horizon))
    count = np.broadcast_to(np.arange(1, horizon + 1, dtype=float), credit.shape)
    twin = one_sample_twin(np.cumsum(credit, -1), np.cumsum(credit**2, -1), count, 0.1, alpha)
    for i in range(2):
        for p in prefixes:
            compare(twin, sq.one_sample(credit[i, :p], 0.1, alpha), i, p - 1)
    errors = np.cumsum(rng.random((2, horizon)) < 0.03, -1).astype(float)
    asked = np.broadcast_to(np.arange(1, horizon + 1, dtype=float), errors.shape)
    tripped, log_ratio = error_rate_twin(errors, asked, limit, g_alpha, g_min)
    guard_checks = guard_same = 0
    for i in range(2):
        for p in sorted({10, 49, 50, 51, 200, 1000, horizon}):
            if p > horizon:
                continue
            product = sq.error_rate_exceeds(int(errors[i, p - 1]), p, limit, g_alpha, g_min)
            guard_checks += 1
            guard_same += (sq.exceeds(product) == bool(tripped[i, p - 1])
                           and abs(math.log(product.ratio) - min(log_ratio[i, p - 1], 700.0)) < 1e-9)
    return {"statistics_compared": checks, "same_decision": int(same),
            "largest_difference": {"delta (relative)": float(f"{worst['delta']:.3g}"),
                                   "variance (relative)": float(f"{worst['variance']:.3g}"),
                                   "log statistic (absolute)": float(f"{worst['log_ratio']:.3g}")},
            "error_guardrail_compared": guard_checks, "error_guardrail_same": int(guard_same),
            "srm_compared": srm_checks, "srm_same": int(srm_same),
            "srm_largest_log_factor_difference": float(f"{srm_worst:.3g}"),
            "prefixes": prefixes}


_GROUP_RUNNER: list = [None]  # the scenario groups of run_scenarios, for forked workers


def _run_group(i: int) -> list[dict]:
    return _GROUP_RUNNER[0](i)


def run_scenarios(args, inputs: Inputs) -> None:
    """The issue #37 scenarios; writes results/online-scenarios-<dataset>[-tiny].{json,md}."""
    from ace_llamaindex.deploy import experiment as dx

    started = time.perf_counter()
    rng = np.random.default_rng(args.seed)
    runs, horizon, alpha = args.runs, args.scenario_horizon, 0.05
    min_units = dx.MIN_UNITS
    chunk = max(1, min(50, 10_000_000 // (horizon * K)))
    pbm, cascade = ClickModel(args.eta, args.p_relevant, args.p_noise), Cascade()
    table = ndcg_of_clicks()
    q = len(inputs.qids)
    rel = {name: inputs.rel(name) for name in inputs.rankings}
    from ace_llamaindex.records.experiment import ExperimentRecord

    record = ExperimentRecord("sim", "a", "b", mode="split", share=0.5)  # the product's defaults
    g_alpha, g_min, limit = record.guardrail_alpha, dx.MIN_ERRORS, record.max_error_rate
    srm_alpha = record.srm_alpha
    rows: list[dict] = []
    notes: dict = {}

    def log(row):
        rows.append(row)
        print(f"{row['scenario']} | {row['mode']} | {row['analysis']}: wrong {row['wrong']}/{row['runs']} "
              f"{row['wrong_ci95']}, correct {row['correct']}, median served {row['served_to_verdict']['median']} "
              f"({row['seconds']} s)", flush=True)

    def iid_split(rel_a, rel_b, model):
        """Each query its own unit, share 0.5: a served query's click vector drawn from its arm's exact distribution
        (a query drawn uniformly, then the click model), as ``simulate_clicks`` would (checked in notes)."""
        cdfs = [np.cumsum(click_vector_probabilities(model, r).mean(0)) for r in (rel_a, rel_b)]

        def generate(rng, n):
            arm = rng.random((n, horizon)) < 0.5
            u = rng.random((n, horizon))
            index = np.where(arm, np.searchsorted(cdfs[1], u * cdfs[1][-1], side="right"),
                             np.searchsorted(cdfs[0], u * cdfs[0][-1], side="right"))
            return {"arm": arm, "value": table[np.minimum(index, len(table) - 1)]}
        return generate

    def click_check(model, r, draws=200_000):
        """Total variation distance between the exact click-vector distribution and simulated clicks."""
        exact = click_vector_probabilities(model, r).mean(0)
        clicks = simulate_clicks(model, r[rng.integers(q, size=draws)], 1.0, rng)
        freq = np.bincount((clicks * (1 << np.arange(K))).sum(-1), minlength=2**K) / draws
        return round(float(0.5 * np.abs(freq - exact).sum()), 4)

    notes["click_model_check"] = {"draws": 200_000, "total_variation": {
        "pbm, base": click_check(pbm, rel["base"]), "cascade, base": click_check(cascade, rel["base"])}}

    # 1. returning users: lognormal activity, own queries, per-user click propensity, a sticky arm per user
    n_users, sigma, own_queries = args.users, args.activity_sigma, 3

    def returning(rng, n, challenger="base"):
        activity = rng.lognormal(0.0, sigma, (n, n_users))
        cdf = np.cumsum(activity, -1)
        cdf /= cdf[:, -1:]
        users = np.stack([np.minimum(np.searchsorted(cdf[i], rng.random(horizon)), n_users - 1) for i in range(n)])
        rows_ = np.arange(n)[:, None]
        own = rng.integers(q, size=(n, n_users, own_queries))
        qi = own[rows_, users, rng.integers(own_queries, size=(n, horizon))]
        propensity = rng.beta(2.0, 2.0, (n, n_users))[rows_, users]
        arm = (rng.random((n, n_users)) < 0.5)[rows_, users]
        shown = np.where(arm[..., None], rel[challenger][qi], rel["base"][qi])
        return {"arm": arm, "value": clicks_to_values(simulate_clicks(pbm, shown, propensity, rng), table),
                "users": users}

    def ramp(drift):
        share = np.where(np.arange(horizon) < RAMP_SWITCH, *RAMP_SHARES)
        level = (1 - drift) + drift * np.arange(horizon) / horizon

        def generate(rng, n):
            arm = rng.random((n, horizon)) < share
            qi = rng.integers(q, size=(n, horizon))
            clicks = simulate_clicks(pbm, rel["base"][qi], np.broadcast_to(level, (n, horizon)), rng)
            return {"arm": arm, "value": clicks_to_values(clicks, table),
                    "phase1": np.broadcast_to(np.arange(horizon) < RAMP_SWITCH, (n, horizon))}
        return generate

    tau_split = 0.02  # the split's default min_effect
    t0 = time.perf_counter()
    notes["twin_check"] = check_twins({"returning users": (returning, n_users), "ramp": (ramp(0.2), 0)}, tau_split,
                                      alpha, horizon, limit, g_alpha, g_min, srm_alpha, rng)
    print(f"twin check: {json.dumps(notes['twin_check'])} ({time.perf_counter() - t0:.1f} s)", flush=True)

    def split_rows(name, generate, analyses, expected, tau, srm=None, **extra):
        t0 = time.perf_counter()
        found, alarms = split_runs(generate, analyses, runs, horizon, chunk, rng, min_units, srm)
        seconds = (time.perf_counter() - t0) / len(analyses)
        if alarms is not None:  # the product's sample-ratio check on the same runs (no mismatch here: false alarms)
            extra["srm_false_alarms"] = {"alarms": int((alarms >= 0).sum()), "runs": len(alarms),
                                         "ci95": clopper_pearson(int((alarms >= 0).sum()), len(alarms)),
                                         "alpha": srm_alpha}
        for analysis, (at, sign) in found.items():
            more = dict(extra)
            if "ramp" in extra:  # where the wrong verdicts fell: the 5% phase or the 50% one
                more["verdicts_before_the_switch"] = int(((at >= 0) & (at < RAMP_SWITCH)).sum())
            log(summarise(name, "split", analysis, expected, at, sign, at + 1.0, horizon, "served queries", tau,
                          seconds, **more))

    # 4. a small effect: the blended challenger whose offline nDCG@10 gain is closest to 0.03 (within 0.02-0.04)
    base_ndcg = ndcg_offline(inputs, "base")
    blends = {name: ndcg_offline(inputs, name) - base_ndcg for name in inputs.rankings if name.startswith("blend")
              and name not in ("blend 0.0", "blend 1.0")}
    small = min(blends, key=lambda b: abs(blends[b] - 0.03))
    notes["small_effect"] = {"offline_ndcg10_gain_by_blend": {k: round(v, 4) for k, v in blends.items()},
                             "chosen": small, "offline_gain": round(blends[small], 4),
                             "within_0.02_0.04": 0.02 <= blends[small] <= 0.04}
    # the effect each mode measures, exactly (click vector probabilities over the queries)
    pc_a = click_vector_probabilities(pbm, rel["base"])
    pc_b = click_vector_probabilities(pbm, rel[small])
    split_effect = float((pc_b @ table).mean() - (pc_a @ table).mean())
    dists = {c: interleave_distribution(inputs.rankings["base"], inputs.rankings[small], inputs.relevant,
                                        inputs.qids, pbm, c) for c in ("shared prefix", "all clicks")}
    notes["small_effect"].update({"split_effect_ndcg_of_clicks": round(split_effect, 5),
                                  "interleave": {c: {k: None if v is None else round(float(v), 5) for k, v in d.items()}
                                                 for c, d in dists.items()}})
    matched = {c: abs(d["mean_credit"]) for c, d in dists.items()}
    small_name = f"small effect ({small}: +{blends[small]:.3f} nDCG@10 offline)"

    def returning_users():
        split_rows("A/A, returning users", returning,
                   {"per user (the product)": per_user(tau_split, alpha, n_users),
                    "per query (main before #37)": per_query(tau_split, alpha)}, "none", tau_split,
                   srm=srm_of_units(0.5, srm_alpha, n_users),
                   population={"users": n_users, "activity": f"lognormal(0, {sigma})", "own_queries": own_queries,
                               "click_propensity": "beta(2, 2) per user", "arm": "per user, share 0.5"})

    def returning_better():
        split_rows("better (adapter), returning users", lambda rng, n: returning(rng, n, "adapter"),
                   {"per user (the product)": per_user(tau_split, alpha, n_users),
                    "per query (main before #37)": per_query(tau_split, alpha)}, "promote", tau_split)

    def ramp_rows(drift):
        split_rows(f"A/A, canary ramp, propensity drift {drift:.0%}", ramp(drift),
                   {"phases stratified (the product)": stratified(tau_split, alpha),
                    "phases pooled (main before #37)": per_query(tau_split, alpha)}, "none", tau_split,
                   srm=srm_of_phases(RAMP_SHARES, srm_alpha),
                   ramp={"shares": RAMP_SHARES, "switch_at": RAMP_SWITCH,
                         "propensity": f"{1 - drift:g} -> 1 linearly over the horizon"})

    def interleave_rows(name, champion, challenger, model, expected, swap=False, taus=None):
        for credit in ("shared prefix", "all clicks"):
            t0 = time.perf_counter()
            dist = interleave_distribution(inputs.rankings[champion], inputs.rankings[challenger], inputs.relevant,
                                           inputs.qids, model, credit, swap)
            tau = (taus or {}).get(credit, 0.1)
            at, sign, served = interleave_runs(dist, tau, alpha, runs, horizon, rng, min_units)
            analysis = ("credit below the shared prefix (the product)" if credit == "shared prefix"
                        else "credit on all clicks (main before #37)")
            log(summarise(name, "interleave", analysis, expected, at, sign, served, horizon, "judged queries", tau,
                          time.perf_counter() - t0,
                          credit_distribution={k: None if v is None else round(float(v), 5) for k, v in dist.items()}))

    def cascade_interleave():
        interleave_rows("A/A, cascade clicks, same rankings", "base", "base", cascade, "none")
        interleave_rows("A/A, cascade clicks, base and adapter in random order", "base", "adapter", cascade, "none",
                        swap=True)
        interleave_rows("better (adapter), cascade clicks", "base", "adapter", cascade, "promote")

    def cascade_split():
        split_rows("A/A, cascade clicks", iid_split(rel["base"], rel["base"], cascade),
                   {"per query": per_query(tau_split, alpha)}, "none", tau_split, srm=srm_of_units(0.5, srm_alpha))
        split_rows("better (adapter), cascade clicks", iid_split(rel["base"], rel["adapter"], cascade),
                   {"per query": per_query(tau_split, alpha)}, "promote", tau_split)

    def small_interleave():
        interleave_rows(small_name + ", min-effect = the effect", "base", small, pbm, "promote", taus=matched)
        interleave_rows(small_name + ", default min-effect", "base", small, pbm, "promote")

    def small_split():
        split_rows(small_name + ", min-effect = the effect", iid_split(rel["base"], rel[small], pbm),
                   {"per query": per_query(abs(split_effect), alpha)}, "promote", abs(split_effect))
        split_rows(small_name + ", default min-effect", iid_split(rel["base"], rel[small], pbm),
                   {"per query": per_query(tau_split, alpha)}, "promote", tau_split)

    def guardrails():
        for rate in (0.002, 0.005):
            t0 = time.perf_counter()
            old, new = guardrail_runs(rate, runs, horizon, rng, limit, g_alpha, g_min)
            seconds = (time.perf_counter() - t0) / 2
            for analysis, at in (("sequential test (the product)", new), ("point estimate (main before #37)", old)):
                log(summarise(f"challenger error rate {rate:.1%} (limit {limit:.0%})", "guardrail", analysis, "stop",
                              at, np.ones_like(at), at + 1.0, horizon, "queries asked", 0.0, seconds,
                              guardrail={"limit": limit, "alpha": g_alpha if "sequential" in analysis else None,
                                         "min_count": g_min if "sequential" in analysis else OLD_MIN_ERRORS}))

    groups = [("returning", returning_users), ("returning", returning_better),
              *[("ramp", lambda d=d: ramp_rows(d)) for d in args.drifts],
              ("cascade", cascade_split), ("small", small_split), ("cascade", cascade_interleave),
              ("small", small_interleave), ("guardrail", guardrails)]
    groups = [fn for key, fn in groups if key not in args.skip_scenarios]

    def run_group(i: int) -> list[dict]:  # in a worker: its own random stream (seed, group)
        nonlocal rng
        rng = np.random.default_rng([args.seed, i])
        rows.clear()
        groups[i]()
        return list(rows)

    _GROUP_RUNNER[0] = run_group
    if args.jobs > 1:
        import multiprocessing

        with multiprocessing.get_context("fork").Pool(args.jobs) as pool:
            for found in pool.map(_run_group, range(len(groups)), chunksize=1):
                rows.extend(found)
    else:
        found = [row for i in range(len(groups)) for row in run_group(i)]
        rows.clear()
        rows.extend(found)

    notes["interleave_vs_split"] = matched_comparison(rows)
    result = {"issue": 37, "command": command_line(), "product": product_version(), "rankings": inputs.source,
              "seed": args.seed,
              "runs_per_mode": runs, "horizon_units": horizon, "read_every_units": 1, "alpha": alpha,
              "min_units": min_units,
              "click_models": {"pbm": {"examination": f"(1/rank)^{args.eta}", "p_click_relevant": args.p_relevant,
                                       "p_click_nonrelevant": args.p_noise},
                               "cascade": {"p_click_relevant": cascade.p_relevant, "p_click_nonrelevant":
                                           cascade.p_noise, "stops": "after the first click on a relevant result"}},
              "notes": notes, "scenarios": rows,
              "seconds": round(time.perf_counter() - started, 1), "peak_rss_gb": peak_rss_gb(),
              "peak_rss_gb_largest_worker": round(resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1e6, 2),
              "jobs": args.jobs}
    name = f"online-scenarios-{args.dataset}" + ("-tiny" if args.tiny else "")
    out = Path(args.results_dir) if args.results_dir else RESULTS
    from ace_llamaindex.atomic import write_json, write_text

    write_json(out / f"{name}.json", result)
    write_text(out / f"{name}.md", "\n".join(scenarios_markdown(result)) + "\n")
    print("\n".join(scenarios_markdown(result)))
    t = notes["twin_check"]
    if t["same_decision"] != t["statistics_compared"] or t["error_guardrail_same"] != t["error_guardrail_compared"] \
            or t["srm_same"] != t["srm_compared"]:
        raise SystemExit("the vectorised statistics disagree with the product's (see notes.twin_check)")


def product_version() -> dict:
    """The commit the product's statistics were measured at, and whether its experiment files differed from it."""
    import subprocess

    root = Path(__file__).resolve().parents[1]
    files = ["ace_llamaindex/evaluate/sequential.py", "ace_llamaindex/evaluate/interleaving.py",
             "ace_llamaindex/serve/experiment_arms.py", "ace_llamaindex/deploy/experiment.py"]
    try:
        head = subprocess.run(["git", "rev-parse", "HEAD"], cwd=root, capture_output=True, text=True).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--", *files], cwd=root, capture_output=True,
                               text=True).stdout.split("\n")
    except OSError:
        return {"commit": None}
    return {"commit": head or None, "uncommitted_changes": [line[3:] for line in dirty if line.strip()]}


def matched_comparison(rows: list[dict]) -> dict | None:
    """Interleaving (the product's credit) vs a split, each with its min-effect set to the effect it measures: the
    issue asks for >= 3x fewer served queries; pass or fail as measured."""
    pick = lambda mode, analysis: next((r for r in rows if "min-effect = the effect" in r["scenario"]  # noqa: E731
                                        and r["mode"] == mode and analysis in r["analysis"]), None)
    inter, split = pick("interleave", "shared prefix"), pick("split", "per query")
    old = pick("interleave", "all clicks")
    if not inter or not split or inter["served_to_verdict"]["median"] is None or \
            split["served_to_verdict"]["median"] is None:
        return None
    ratio = split["served_to_verdict"]["median"] / inter["served_to_verdict"]["median"]
    old_ratio = (split["served_to_verdict"]["median"] / old["served_to_verdict"]["median"]
                 if old and old["served_to_verdict"]["median"] else None)
    everyone = [r["median_served_all_runs"] for r in (split, inter)]
    return {"split_median_served": split["served_to_verdict"]["median"],
            "interleave_median_served": inter["served_to_verdict"]["median"], "ratio": round(ratio, 2),
            "over_all_runs": {"split": everyone[0], "interleave": everyone[1],
                              "ratio": round(everyone[0] / everyone[1], 2) if None not in everyone else None},
            "target": 3.0, "passed": ratio >= 3.0,
            "ratio_with_credit_on_all_clicks": round(old_ratio, 2) if old_ratio else None,
            "correct_share": {"interleave": inter["correct_share"], "split": split["correct_share"]}}


def srm_cell(alarms: dict | None) -> str:
    if not alarms:
        return "–"
    low, high = alarms["ci95"]
    return f"{alarms['alarms']} of {alarms['runs']:,} [{low:.2%}, {high:.2%}]"


def scenarios_markdown(r: dict) -> list[str]:
    src, notes = r["rankings"], r["notes"]
    pct = lambda x: f"{x:.2%}"  # noqa: E731
    lines = [f"# Online experiments that stay right on real traffic (issue #37): {src.get('dataset', 'synthetic')}", "",
             f"Written by `benchmarks/bench_online.py --scenarios` (command: `{r['command']}`). Rankings: the "
             f"{src.get('test_queries', src.get('queries'))} test queries ranked by the base model and the query "
             "adapter through the experiment's own arms (`HybridQdrantRetriever`, embedded Qdrant), cached by "
             f"`{src.get('command', '--tiny')}`. Every experiment is read after every unit with the product's "
             f"statistics (`evaluate/sequential.py`, vectorised here and checked against it); {r['runs_per_mode']:,} "
             f"experiments per mode, horizon {r['horizon_units']:,} units, alpha {r['alpha']}, no verdict before "
             f"{r['min_units']} units (per arm in a split).", "",
             "| scenario | mode | analysis | runs | wrong (95% CI, Clopper-Pearson) | upper < 5% | correct | "
             "no verdict | median served queries to a verdict [IQR] | sample-ratio false alarms (95% CI) |",
             "|---|---|---|---:|---|---|---:|---:|---|---|"]
    for s in r["scenarios"]:
        med = s["served_to_verdict"]
        cell = "–" if med["median"] is None else f"{med['median']:,.0f} [{med['iqr'][0]:,.0f}, {med['iqr'][1]:,.0f}]"
        lines.append(f"| {s['scenario']} | {s['mode']} | {s['analysis']} | {s['runs']:,} | {pct(s['wrong_share'])} "
                     f"[{pct(s['wrong_ci95'][0])}, {pct(s['wrong_ci95'][1])}] | "
                     f"{'yes' if s['wrong_upper_below_5pct'] else '**no**'} | {pct(s['correct_share'])} | "
                     f"{s['no_verdict']:,} | {cell} | {srm_cell(s.get('srm_false_alarms'))} |")
    lines += ["", "Wrong: A/A — any verdict (promote or end as worse) before the horizon; better / small effect — "
              "ended as worse; guardrail — the challenger (true error rate below the limit) stopped. Correct: A/A and "
              "guardrail — no verdict / no stop; better / small effect — promoted. Median served queries: to a "
              "correct verdict (better, small effect), to the wrong one (A/A, guardrail)."]
    cmp_ = notes.get("interleave_vs_split")
    se = notes.get("small_effect") or {}
    if cmp_:
        lines += ["", f"**Interleave vs split at matched min-effect** (the small effect, {se.get('chosen')}: offline "
                  f"nDCG@10 +{se.get('offline_gain')}; each mode's min-effect set to the effect it measures: "
                  f"interleaving credit {se['interleave']['shared prefix']['mean_credit']:+.4f} per judged query "
                  f"below the shared prefix, split nDCG-of-clicks {se['split_effect_ndcg_of_clicks']:+.4f}): split "
                  f"{cmp_['split_median_served']:,.0f} vs interleave {cmp_['interleave_median_served']:,.0f} median "
                  f"served queries to a correct verdict, **{cmp_['ratio']}x** (target >= 3x): "
                  f"**{'PASS' if cmp_['passed'] else 'FAIL'}**. Over all runs (a run without the verdict counted as "
                  f"never reaching it): {cmp_['over_all_runs']['split']} vs {cmp_['over_all_runs']['interleave']}. "
                  f"With the credit on all clicks (main before #37): {cmp_['ratio_with_credit_on_all_clicks']}x."]
    t = notes["twin_check"]
    lines += ["", f"Check: the vectorised statistics were compared with the product's own `two_sample`, "
              f"`clustered_two_sample`, `combine_strata` and `one_sample` on {t['statistics_compared']} prefixes of "
              f"simulated runs: the same decision {t['same_decision']} times; largest difference "
              f"{t['largest_difference']}; `error_rate_exceeds`: {t['error_guardrail_same']} of "
              f"{t['error_guardrail_compared']} the same; the sample-ratio check (`sample_ratio_mismatch_phases`): "
              f"{t['srm_same']} of {t['srm_compared']} the same. Team drafts are the product's `team_draft` (its coin flips "
              "enumerated) and the credit its `team_draft_credit`.", "",
              f"Wall time {r['seconds'] / 60:.1f} min, peak RSS {r['peak_rss_gb']} GB (2 CPU cores shared with other "
              "work)."]
    return lines


# ---- the run -------------------------------------------------------------------------------------------------------
def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--dataset", default="scifact")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--experiments", type=int, default=100, help="simulated experiments per mode, better and worse")
    parser.add_argument("--aa-experiments", type=int, default=200, help="simulated A/A experiments per mode")
    parser.add_argument("--horizon", type=int, default=20_000, help="max_queries of the better/worse experiments")
    parser.add_argument("--aa-horizon", type=int, default=5_000, help="max_queries of the A/A experiments (the "
                        "product's 20,000 would take about an hour here: every A/A experiment runs to the horizon)")
    parser.add_argument("--read-every", type=int, default=10, help="units between status reads (simulated); served "
                        "queries between reads (end to end)")
    parser.add_argument("--sessions", type=int, default=10_000, help="simulated users (split units)")
    parser.add_argument("--eta", type=float, default=1.0)
    parser.add_argument("--p-relevant", type=float, default=1.0)
    parser.add_argument("--p-noise", type=float, default=0.05)
    parser.add_argument("--rollback-mode", default="interleave", choices=("interleave", "split"))
    parser.add_argument("--e2e-max-queries", type=int, default=6000, help="served queries before giving up (end to end)")
    parser.add_argument("--adapter", type=Path, default=None, help="use this trained adapter instead of training one")
    parser.add_argument("--encode-documents", action="store_true", help="run the model over every document")
    parser.add_argument("--check-reads", type=int, default=50, help="reads of each scenario's first experiment "
                        "also judged by judge_experiment on the whole log")
    parser.add_argument("--threads", type=int, default=1, help="torch threads (on 2 shared cores two threads spin "
                        "against the other processes: a query took 350 ms with 2, 29 ms with 1)")
    parser.add_argument("--skip", nargs="*", default=[], choices=("e2e-b", "better", "worse", "aa"))
    parser.add_argument("--scenarios", action="store_true", help="issue #37: the scenarios "
                        "(returning users, a canary ramp, a cascade click model, a small effect, a guardrail) instead "
                        "of the end-to-end runs and log replays; writes results/online-scenarios-<dataset>.{json,md}")
    parser.add_argument("--reuse-rankings", action="store_true", help="with --scenarios: the rankings a previous "
                        f"--scenarios run cached (.cache/online-<dataset>/{RANKINGS_CACHE}) instead of the models")
    parser.add_argument("--rankings-only", action="store_true", help="with --scenarios: cache the rankings and stop")
    parser.add_argument("--runs", type=int, default=2000, help="with --scenarios: simulated experiments per mode")
    parser.add_argument("--scenario-horizon", type=int, default=20_000, help="with --scenarios: units per experiment")
    parser.add_argument("--tiny", action="store_true", help="with --scenarios: synthetic rankings, few runs, a short "
                        "horizon (a self-check of the vectorised statistics against the product's; no dataset)")
    parser.add_argument("--users", type=int, default=2000, help="with --scenarios: returning users per experiment")
    parser.add_argument("--activity-sigma", type=float, default=1.5, help="with --scenarios: sigma of the users' "
                        "lognormal activity")
    parser.add_argument("--drifts", type=float, nargs="+", default=[0.05, 0.2], help="with --scenarios: click "
                        "propensity drifts of the canary ramp")
    parser.add_argument("--skip-scenarios", nargs="*", default=[],
                        choices=("returning", "ramp", "cascade", "small", "guardrail"))
    parser.add_argument("--jobs", type=int, default=1, help="with --scenarios: worker processes (scenario groups run "
                        "in parallel, each with its own random stream)")
    parser.add_argument("--results-dir", default=None, help="with --scenarios: where the results go "
                        "(default benchmarks/results)")
    args = parser.parse_args()
    if args.scenarios and (args.reuse_rankings or args.tiny):
        run_scenarios(args, *load_inputs(args, CACHE / f"online-{args.dataset}" / RANKINGS_CACHE))
        return

    import torch

    from ace_llamaindex.data.beir import load_beir
    from ace_llamaindex.deploy.experiment import running_experiment, start_experiment
    from ace_llamaindex.deploy.rollout import rollout
    from ace_llamaindex.embeddings.encoding import CachedEncoder
    from ace_llamaindex.embeddings.models import DEFAULT_MODEL
    from ace_llamaindex.errors import OptionError
    from ace_llamaindex.evaluate.metrics import ndcg_at
    from ace_llamaindex.serve.experiment_arms import CHALLENGER, CHAMPION
    from ace_llamaindex.serve.serving_record import challenger_alias

    torch.set_num_threads(args.threads)
    started_all = time.perf_counter()
    timings: dict[str, float] = {}
    click = ClickModel(args.eta, args.p_relevant, args.p_noise)
    folder = dataset_dir(args.dataset)
    train, test = load_beir(folder, "train"), load_beir(folder, "test")
    relevant = {q: set(docs) for q, docs in test.relevant_docs.items()}
    work = CACHE / f"online-{args.dataset}"
    # the embedded Qdrant folders and the simulated logs on a RAM disk where there is one (the shared disk is slow)
    scratch = Path(tempfile.mkdtemp(prefix="ace-online-", dir="/dev/shm" if Path("/dev/shm").is_dir() else None))
    atexit.register(shutil.rmtree, scratch, True)
    sim = scratch / "sim"
    sim.mkdir()
    work.mkdir(parents=True, exist_ok=True)
    for name in ("feedback-a.jsonl", "feedback-b.jsonl"):
        (work / name).unlink(missing_ok=True)

    base = CachedEncoder(cache_dir=CACHE / "encodings", show_progress=True)
    t0 = time.perf_counter()
    base.encode_documents(list(train.corpus.values()))  # cached on disk after the first run
    timings["document_vectors"] = round(time.perf_counter() - t0, 1)
    cache_check = None
    if not args.encode_documents:
        serve_document_vectors_from_cache(base)
        cache_check = check_cached_vectors(base, list(train.corpus.values())[:16])
        print(f"cached document vectors vs a live encode: max |diff| {cache_check:.2e}", flush=True)

    if args.adapter:
        adapter, training = args.adapter, {"reused": str(args.adapter)}
    else:
        adapter = work / "adapter"
        shutil.rmtree(adapter, ignore_errors=True)
        training = train_adapter(train, base, adapter, args.seed)
    timings["training"] = training.get("seconds", 0.0)
    print(f"adapter: {json.dumps(training)}", flush=True)

    # ---- (a) base serving, the adapter challenges it, interleaved, auto: promoted ----
    t0 = time.perf_counter()
    collection = args.dataset.replace("-", "_")
    log_a = work / "feedback-a.jsonl"
    retriever = serving_retriever(scratch / "qdrant-a", collection, train.corpus, log_a)
    timings["index"] = round(time.perf_counter() - t0, 1)
    print(f"indexed {len(train.corpus)} documents in {timings['index']} s", flush=True)
    t0 = time.perf_counter()
    record_a = start_experiment(adapter, collection, index=retriever.index, mode="interleave", feedback_log=log_a,
                                auto=True, show_progress=False)
    timings["start_experiment_a"] = round(time.perf_counter() - t0, 1)
    print(f"experiment (a) started in {timings['start_experiment_a']} s", flush=True)
    # both arms' top 10 for every test query, from the experiment's own arms
    t0 = time.perf_counter()
    champion_served = retriever._current()
    challenger_served, _ = retriever._trial(champion_served)
    arms = arm_rankings(retriever, {CHAMPION: champion_served, CHALLENGER: challenger_served},
                        {CHAMPION: "base", CHALLENGER: "adapter"}, test.queries)
    timings["rankings"] = round(time.perf_counter() - t0, 1)
    ndcg10 = ndcg_at(10)
    offline = {}
    for arm in arms.values():
        scores = [ndcg10([d for d, _ in arm.ranked[q]], relevant[q]) for q in sorted(test.queries)]
        offline[arm.name] = {"ndcg@10": round(float(np.mean(scores)), 4),
                             "latency_ms_p50": round(statistics.median(arm.latency.values()), 2),
                             "latency_ms_p99": round(float(np.percentile(list(arm.latency.values()), 99)), 2),
                             "fusion": arm.fusion}
    # SciFact's paired claims cite the same abstracts: test queries whose relevant documents a train query has too
    seen_docs = {d for docs in train.relevant_docs.values() for d in docs}
    seen = {q for q in test.queries if relevant[q] & seen_docs}
    for arm in arms.values():
        for label, subset in (("seen documents", seen), ("unseen documents", set(test.queries) - seen)):
            scores = [ndcg10([d for d, _ in arm.ranked[q]], relevant[q]) for q in sorted(subset)]
            offline[arm.name][label] = {"queries": len(subset),
                                        "ndcg@10": round(float(np.mean(scores)), 4) if scores else None}
    print(f"rankings in {timings['rankings']} s; offline (test qrels): {json.dumps(offline)}", flush=True)
    if args.scenarios:  # issue #37: the scenarios need the rankings only (no end-to-end runs, no log replays)
        t0 = time.perf_counter()
        blends = blended_rankings(retriever, champion_served, challenger_served, test.queries, BLENDS)
        timings["blended_rankings"] = round(time.perf_counter() - t0, 1)
        same_as_adapter = sum(blends[1.0][q] == [d for d, _ in arms[CHALLENGER].ranked[q]] for q in test.queries)
        same_as_base = sum(blends[0.0][q] == [d for d, _ in arms[CHAMPION].ranked[q]] for q in test.queries)
        cache = {"command": command_line(), "dataset": args.dataset, "test_queries": len(test.queries),
                 "documents": len(train.corpus), "offline_test": offline, "timings_s": timings,
                 "blend_check": {"lambda 1 == adapter": same_as_adapter, "lambda 0 == base": same_as_base},
                 "base": {q: [d for d, _ in arms[CHAMPION].ranked[q]] for q in test.queries},
                 "adapter": {q: [d for d, _ in arms[CHALLENGER].ranked[q]] for q in test.queries},
                 "blends": {str(lam): ranked for lam, ranked in blends.items()}}
        from ace_llamaindex.atomic import write_json

        write_json(work / RANKINGS_CACHE, cache)
        print(f"blended rankings in {timings['blended_rankings']} s; {json.dumps(cache['blend_check'])}", flush=True)
        retriever.index.client.close()
        shutil.rmtree(scratch, ignore_errors=True)
        if not args.rankings_only:
            run_scenarios(args, *load_inputs(args, work / RANKINGS_CACHE))
        return
    e2e: dict = {}
    rng = random.Random(args.seed)
    e2e["a"] = {"champion": "base", "challenger": "adapter", "mode": "interleave", "experiment": record_a.id,
                **live_users(retriever, collection, test, click, rng, args.read_every, args.e2e_max_queries,
                             args.sessions)}
    e2e["a"]["serving_after"] = retriever.index.alias_target(collection)
    e2e["a"]["promoted"] = (e2e["a"]["serving_after"] == record_a.challenger
                            and retriever.index.alias_target(challenger_alias(collection)) is None)
    e2e["a"]["replay_check"] = replay_matches_log(log_a, record_a, arms, test)
    print(f"(a): {json.dumps(e2e['a'])}", flush=True)
    retriever.index.client.close()
    del retriever

    # ---- (b) the adapter rolled out, the base challenges it, auto: removed ----
    if "e2e-b" not in args.skip:
        t0 = time.perf_counter()
        log_b = work / "feedback-b.jsonl"
        retriever = serving_retriever(scratch / "qdrant-b", collection, train.corpus, log_b)
        try:
            report = rollout(adapter, collection, index=retriever.index, show_progress=False)
            forced = None
        except OptionError as exc:  # the adapter's own gate did not show it better: rolled out anyway, said so
            report, forced = rollout(adapter, collection, index=retriever.index, show_progress=False, force=True), str(exc)
        champion_b = retriever.index.alias_target(collection)
        record_b = start_experiment(DEFAULT_MODEL, collection, index=retriever.index, mode=args.rollback_mode,
                                    feedback_log=log_b, auto=True, show_progress=False)
        setup = round(time.perf_counter() - t0, 1)
        e2e["b"] = {"champion": "adapter", "challenger": "base", "mode": args.rollback_mode, "experiment": record_b.id,
                    "rollout": {"collection": report.collection, "copied": report.copied_vectors,
                                "encoded": report.encoded_vectors, "forced": forced}, "setup_seconds": setup,
                    **live_users(retriever, collection, test, click, rng, args.read_every, args.e2e_max_queries,
                                 args.sessions)}
        e2e["b"]["serving_after"] = retriever.index.alias_target(collection)
        e2e["b"]["rolled_back"] = (e2e["b"]["serving_after"] == champion_b
                                   and record_b.challenger not in retriever.index.collection_names()
                                   and running_experiment(retriever.index, collection) is None)
        print(f"(b): {json.dumps(e2e['b'])}", flush=True)
        retriever.index.client.close()
        del retriever

    # ---- simulated experiments ----
    same = Arm("base (A/A)", arms[CHAMPION].ranked, arms[CHAMPION].latency, arms[CHAMPION].fusion)
    scenarios = []
    if "better" not in args.skip:
        scenarios += [(f"better, {m}", m, arms[CHAMPION], arms[CHALLENGER], "promote", args.experiments, args.horizon)
                      for m in ("interleave", "split")]
    if "worse" not in args.skip:
        scenarios += [(f"worse, {m}", m, arms[CHALLENGER], arms[CHAMPION], "worse", args.experiments, args.horizon)
                      for m in ("interleave", "split")]
    if "aa" not in args.skip:
        scenarios += [(f"A/A, {m}", m, arms[CHAMPION], same, "none", args.aa_experiments, args.aa_horizon)
                      for m in ("interleave", "split")]
    simulated = []
    for s, (name, mode, champion, challenger, expected, count, horizon) in enumerate(scenarios):
        t0 = time.perf_counter()
        results = [simulate(mode, champion, challenger, test.queries, relevant, click, horizon=horizon,
                            read_every=args.read_every, seed=args.seed * 1_000_003 + s * 10_007 + i,
                            sessions=args.sessions, folder=sim, check_reads=args.check_reads if i == 0 else 0,
                            guardrail_each_read=expected != "none")
                   for i in range(count)]
        row = summarize(name, mode, challenger.name, expected, results, horizon, time.perf_counter() - t0)
        row["runs"] = results
        simulated.append(row)
        print(f"{name}: {json.dumps({k: v for k, v in row.items() if k != 'runs'})}", flush=True)

    shutil.rmtree(scratch, ignore_errors=True)
    result = {"dataset": args.dataset, "seed": args.seed, "train_queries": len(train.queries),
              "test_queries": len(test.queries), "documents": len(train.corpus),
              "click_model": {"model": "position-based (PBM)", "examination": f"(1/rank)^{args.eta}",
                              "p_click_relevant": args.p_relevant, "p_click_nonrelevant": args.p_noise},
              "read_every_units": args.read_every, "sessions": args.sessions, "alpha": 0.05,
              "adapter_training": training, "offline_test": offline, "cached_document_vectors_max_diff": cache_check,
              "end_to_end": e2e, "simulated": simulated, "timings_s": timings,
              "seconds": round(time.perf_counter() - started_all, 1), "peak_rss_gb": peak_rss_gb()}
    save(f"online-{args.dataset}", result)
    (RESULTS / f"online-{args.dataset}.md").write_text("\n".join(markdown(result)) + "\n")
    print("\n".join(markdown(result)))


def markdown(r: dict) -> list[str]:
    c, o = r["click_model"], r["offline_test"]
    sub = lambda arm, label: o[arm][label]["ndcg@10"]  # noqa: E731
    gate = r["adapter_training"].get("gate") or {}
    lines = [f"# Online experiments: {r['dataset']} (simulated users, the product's serving and verdicts)", "",
             "Written by `benchmarks/bench_online.py`. Champion: the bundled base model; better challenger: the query "
             f"adapter trained on the train split ({r['train_queries']} queries, hard negatives mined with the base; its "
             f"own gate: {gate.get('verdict', '–')}, decided by {gate.get('decided_by', '–')}). Queries: the "
             f"{r['test_queries']} test queries, sampled with replacement; {r['documents']:,} documents.", "",
             f"Offline test nDCG@10 (qrels): base {o['base']['ndcg@10']:.3f}, adapter {o['adapter']['ndcg@10']:.3f}; on the "
             f"{o['base']['seen documents']['queries']} test queries whose relevant abstract a train claim also cites: "
             f"{sub('base', 'seen documents'):.3f} vs {sub('adapter', 'seen documents'):.3f}; on the other "
             f"{o['base']['unseen documents']['queries']}: {sub('base', 'unseen documents'):.3f} vs "
             f"{sub('adapter', 'unseen documents'):.3f}.", "",
             f"Users: {c['model']} click model: each rank examined with probability {c['examination']}, an examined "
             f"result clicked with probability {c['p_click_relevant']} when relevant (qrels) and {c['p_click_nonrelevant']} "
             "when not; ranks independent. Sources: the 1/rank propensities of Joachims, Swaminathan & Schnabel "
             "(WSDM 2017), in line with Joachims et al. (SIGIR 2005) and Wang et al. (WSDM 2018); the 0.05 noise of "
             "Hofmann, Whiteson & de Rijke's navigational click model (TOIS 2013). Status read every "
             f"{r['read_every_units']} units; alpha 0.05; split share 0.5 over {r['sessions']:,} simulated users.", ""]
    lines += ["## End to end (HybridQdrantRetriever, embedded Qdrant, auto)", "",
              "| experiment | mode | served queries | units to the verdict | verdict | acted |", "|---|---|---:|---:|---|---|"]
    for key, e in r["end_to_end"].items():
        lines.append(f"| ({key}) champion {e['champion']}, challenger {e['challenger']} | {e['mode']} | "
                     f"{e['served_queries']} | {e['units']} {e['unit_name']} | {e['decision']}: {e['reason']} | "
                     f"{e['acted']} |")
    rc = r["end_to_end"]["a"]["replay_check"]
    lines += ["", f"Replay check: {rc['rebuilt_exactly']} of {rc['served_queries']} queries experiment (a) served are "
              "rebuilt exactly (documents and teams) from the precomputed rankings."]
    forced = (r["end_to_end"].get("b") or {}).get("rollout", {}).get("forced")
    if forced:
        lines += ["", f"(b): `rollout` refused the adapter on its own evidence and was forced: {forced}"]
    lines += ["", "## Simulated experiments", "",
              "| mode | challenger | experiments | median units to a correct verdict [IQR] | median served queries [IQR] | "
              "correct | wrong (95% CI) | no verdict | horizon |", "|---|---|---:|---|---|---:|---|---:|---:|"]
    for s in r["simulated"]:
        u, q = s["units_to_verdict"], s["served_to_verdict"]
        cell = lambda d, unit="": "–" if d["median"] is None else f"{d['median']:.0f} [{d['iqr'][0]:.0f}, {d['iqr'][1]:.0f}]{unit}"  # noqa: E731
        what = {"promote": "better (adapter)", "worse": "worse (base vs adapter)", "none": "A/A (same model)"}[s["expected"]]
        lines.append(f"| {s['mode']} | {what} | {s['experiments']} | {cell(u, ' ' + s['unit'])} | {cell(q)} | "
                     f"{s['correct_share']:.0%} | {s['wrong_share']:.1%} [{s['wrong_ci95'][0]:.1%}, {s['wrong_ci95'][1]:.1%}] | "
                     f"{s['no_verdict'] / s['experiments']:.0%} | {s['horizon']:,} |")
    aa = [s for s in r["simulated"] if s["expected"] == "none"]
    lines += ["", "Correct: promoted (better), ended as worse (worse), no verdict at the horizon (A/A). Wrong: any other "
              "verdict (A/A: a promotion or an end as worse). Intervals: Clopper-Pearson."]
    for s in aa:
        lines.append(f"A/A {s['mode']}: wrong verdicts at {s['wrong_at_units'] or 'none'} {s['unit']}.")
    lines += ["", f"Every verdict was confirmed by `judge_experiment` on the experiment's whole log; it also judged "
              f"{sum(s['checked_reads'] for s in r['simulated'])} reads of the first experiment of each scenario, and "
              f"disagreed with the per-read screening {sum(s['judge_disagreements'] for s in r['simulated'])} times.", "",
              f"Wall time {r['seconds'] / 60:.1f} min (training {r['timings_s'].get('training', 0):.0f} s, rankings "
              f"{r['timings_s'].get('rankings', 0):.0f} s), peak RSS {r['peak_rss_gb']} GB, on 2 CPU cores shared with "
              "other work."]
    return lines


if __name__ == "__main__":
    main()
