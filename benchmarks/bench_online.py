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
import tempfile
import time
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


# ---- simulated experiments: the product's serving, log records and verdict on precomputed rankings -----------------
def simulate(mode: str, champion: Arm, challenger: Arm, queries: dict[str, str], relevant: dict[str, set[str]],
             click: ClickModel, *, horizon: int, read_every: int, seed: int, sessions: int, folder: Path,
             check_reads: int = 0, guardrail_each_read: bool = True) -> dict:
    """One simulated experiment until the status is not ``continue``: its verdict, units and served queries.
    ``check_reads``: the first reads also judged by ``judge_experiment`` on the whole log (they must agree)."""
    from ace_llamaindex.deploy import experiment as dx
    from ace_llamaindex.serve.experiment_arms import CHALLENGER, CHAMPION, ExperimentRecord, experiment_session, serve_query
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
        pending += 1 if (mode == "split" or clicked) else 0
        if pending < read_every:
            continue
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
        enough = min(sum(1 for a, _ in units if a == arm) for arm in (CHAMPION, CHALLENGER)) >= dx.MIN_UNITS
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
    args = parser.parse_args()

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
