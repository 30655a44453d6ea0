"""The loop in rounds: does each round serve a model at least as good as the last, and does the last round match a
model trained once on everything?

    python benchmarks/bench_loop_rounds.py scifact [--rounds 3] [--method adapter] [--top-k 10]

The train split's queries arrive in ``--rounds`` equal batches (seeded shuffle). Each batch is served by the model
serving at the time (top ``--top-k`` over the whole corpus) and judged by the qrels standing in for users: a shown
relevant document is accepted (the positive), queries with none accepted are dropped (a log only knows what was
shown). Hard negatives are mined with the base model, as ``ace mine`` does. Three policies:

(a) today's loop: train from the base on the new round's log; roll out when its gate beats the *base*;
(b) champion-gated, from the base on all logs so far (``--no-continual``); roll out when better than the champion;
(c) as (b), plus the continual candidates (the champion's adapter continued on all logs so far and the data the
    champion was trained on, replayed): the default of ``ace train --collection`` over an append-only log.

Every round trains as ``ace mine --from-feedback`` + ``ace train --collection`` do: the gate's seen share measured in
the log, validation over the collection's documents.

The rollout decision is ``ace rollout``'s own (:func:`~ace_llamaindex.deploy.evidence.promotion_evidence`). Per round:
the served model's test nDCG@10 with a 95% bootstrap CI (the test split is never served or trained on), what
was decided, wall time and peak RSS. Reference: one model trained once on all the logs. Writes
benchmarks/results/loop-rounds-<dataset>.{json,md}.
"""

from __future__ import annotations

import argparse
import json
import random
import resource
import shutil
import time
from pathlib import Path

import numpy as np
from common import CACHE, RESULTS, dataset_dir, save


def ci95(scores: np.ndarray, seed: int = 0) -> list[float]:
    rng = np.random.default_rng(seed)
    means = scores[rng.integers(0, len(scores), size=(5000, len(scores)))].mean(axis=1)
    return [round(float(np.quantile(means, 0.025)), 4), round(float(np.quantile(means, 0.975)), 4)]


class Loop:
    """One policy's run: what serves, the logs so far, and the per-round record."""

    def __init__(self, name: str, work: Path):
        self.name, self.work = name, work
        self.serving: Path | None = None  # None: the base model serves
        self.logs: list = []
        self.rows: list[dict] = []


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("dataset")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--method", default="adapter", help="trainer for every round (auto trains a full fine-tune "
                        "each round: hours per policy on 2 CPU cores)")
    parser.add_argument("--top-k", type=int, default=10)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()

    from ace_llamaindex.data.beir import load_beir
    from ace_llamaindex.data.dataset import QADataset
    from ace_llamaindex.deploy.evidence import promotion_evidence
    from ace_llamaindex.embeddings.encoding import CachedEncoder
    from ace_llamaindex.embeddings.models import DEFAULT_MODEL, resolve_model
    from ace_llamaindex.evaluate.evaluate import System, evaluate
    from ace_llamaindex.evaluate.stats import paired_bootstrap
    from ace_llamaindex.mine.feedback_dataset import FeedbackData
    from ace_llamaindex.mine.mining import HardNegativeMiner, MiningOptions, save_training_data
    from ace_llamaindex.plugins.manager import get
    from ace_llamaindex.serve.served_model import read_serving, serving_encoder
    from ace_llamaindex.train.champion import Champion, champion_from_folder
    from ace_llamaindex.train.training import TrainConfig

    folder = dataset_dir(args.dataset)
    train_set, test_set = load_beir(folder, "train"), load_beir(folder, "test")
    base = CachedEncoder(cache_dir=CACHE / "encodings", show_progress=True)
    base_plan = {"model": resolve_model(DEFAULT_MODEL), "adapter": None, "reindex": True}
    doc_ids = list(train_set.corpus)
    doc_vectors = base.encode_documents([train_set.corpus[d] for d in doc_ids])  # adapters keep the base's documents

    def encoder(serving: Path | None):
        return base if serving is None else serving_encoder(read_serving(serving), base)

    per_query_scores: dict[str, np.ndarray] = {}

    def test_score(serving: Path | None, label: str) -> dict:
        key = str(serving)
        if key not in per_query_scores:
            per_query = evaluate(test_set, [System(label, "dense", encoder(serving))], comparisons=[],
                                 show_progress=False).data["per_query"]
            per_query_scores[key] = np.array([per_query[q][label]["ndcg@10"] for q in test_set.queries])
        scores = per_query_scores[key]
        return {"ndcg@10": round(float(scores.mean()), 4), "ci95": ci95(scores)}

    def paired(before: Path | None, after: Path | None) -> dict:
        d = paired_bootstrap(per_query_scores[str(before)], per_query_scores[str(after)])
        return {"delta": round(d.delta, 4), "ci95": [round(d.ci_low, 4), round(d.ci_high, 4)], "verdict": d.verdict}

    def serve_and_judge(serving: Path | None, qids: list[str]):
        """The round's log: each query served (top-k) by the serving model, judged by the qrels."""
        queries = encoder(serving).encode_queries([train_set.queries[q] for q in qids])
        top = np.argsort(-(queries @ doc_vectors.T), axis=1)[:, : args.top_k]
        accepted = {}
        for qid, row in zip(qids, top, strict=True):
            shown = [doc_ids[i] for i in row]
            hits = [d for d in shown if d in set(train_set.relevant_docs[qid])]
            if hits:
                accepted[qid] = hits
        log = QADataset({q: train_set.queries[q] for q in accepted}, train_set.corpus, accepted, source="served and judged")
        return log, len(qids) - len(accepted)

    def training_config(logs, continual: bool) -> TrainConfig:
        """As `ace mine --from-feedback` + `ace train --collection` do it: the seen share measured in the log (the
        most recent 20% of its queries), the gate over the collection's documents (``corpus=``)."""
        merged = QADataset({q: t for lg in logs for q, t in lg.queries.items()}, train_set.corpus,
                           {q: d for lg in logs for q, d in lg.relevant_docs.items()}, source="log")
        share, where = FeedbackData(merged, {}).seen_share(0.2)
        return TrainConfig(continual=continual, seed=args.seed, seen_share=share, seen_share_source=where)

    miner = HardNegativeMiner("dense", base, options=MiningOptions(), show_progress=False)
    qids = list(train_set.queries)
    random.Random(args.seed).shuffle(qids)
    batches = [qids[i::args.rounds] for i in range(args.rounds)]
    work = RESULTS.parent / ".cache" / f"loop-rounds-{args.dataset}"
    shutil.rmtree(work, ignore_errors=True)
    policies = {"a": Loop("(a) today: from base on the new log, gated vs the base", work / "a"),
                "b": Loop("(b) champion-gated, from base on all logs so far", work / "b"),
                "c": Loop("(c) as (b) + continual and replay candidates", work / "c")}
    started_all = time.perf_counter()
    base_test = test_score(None, "base")
    print(f"base: test nDCG@10 {base_test['ndcg@10']:.3f} {base_test['ci95']}", flush=True)
    for key, loop in policies.items():
        for r, batch in enumerate(batches, start=1):
            started = time.perf_counter()
            log, unanswered = serve_and_judge(loop.serving, batch)
            examples = miner.mine(log)
            data_file = save_training_data(examples, loop.work / f"round{r}.json", source=f"round {r} log")
            loop.logs.append((examples, data_file, log))
            champion = None
            if key != "a":
                champion = champion_from_folder(loop.serving) if loop.serving else Champion(base_plan, "the base")
            if key != "a":  # all logs so far, one file (`ace mine --from-feedback` over the append-only log)
                examples = [e for ex, _, _ in loop.logs for e in ex]
                data_file = save_training_data(examples, loop.work / f"all{r}.json", source=f"rounds 1-{r}")
            logs = [lg for _, _, lg in (loop.logs if key != "a" else loop.logs[-1:])]
            config = training_config(logs, continual=key == "c")
            out = loop.work / f"model{r}"
            extra = {"champion": champion} if champion else {}
            result = get("trainers", args.method)(examples, out, config, base_encoder=base, training_data=data_file,
                                                  corpus=train_set.corpus, **extra)
            candidate = read_serving(out) if (out / "ace_adapter.json").exists() or (out / "modules.json").exists() else None
            served = read_serving(loop.serving) if loop.serving else base_plan
            if candidate is None:
                decision = {"allowed": False, "reason": "nothing written"}
            elif key == "a":  # today's rollout: the card's gate against the base decides
                verdict = result.card.gate["verdict"]
                decision = {"allowed": verdict == "better", "reason": f"gate vs the base: {verdict}"}
            else:
                evidence = promotion_evidence(out, candidate, served, "docs")
                decision = evidence.to_dict()
            previous = loop.serving
            if decision["allowed"]:
                loop.serving = out
            score = test_score(loop.serving, f"{key}{r}")
            score["vs_previous_round"] = paired(previous, loop.serving)
            loop.rows.append({"round": r, "seen_share": config.seen_share, "queries": len(batch), "unanswered": unanswered, "examples": len(examples),
                              "chosen": result.card.method_name,
                              "rolled_out": decision["allowed"], "reason": decision["reason"],
                              "serving": str(loop.serving.name) if loop.serving else "base", "test": score,
                              "seconds": round(time.perf_counter() - started, 1),
                              "peak_rss_gb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1e6, 2)})
            print(f"{loop.name} round {r}: {json.dumps(loop.rows[-1])}", flush=True)
    # reference: one model trained once, from the base, on all of policy (c)'s logs
    everything = [e for ex, _, _ in policies["c"].logs for e in ex]
    reference_dir = work / "once-on-all"
    once = training_config([lg for _, _, lg in policies["c"].logs], continual=False)
    once.force = True
    get("trainers", args.method)(everything, reference_dir, once, base_encoder=base, corpus=train_set.corpus)
    reference = test_score(reference_dir, "once")
    reference["last_round_of_c_vs_this"] = paired(reference_dir, policies["c"].serving)
    result = {"dataset": args.dataset, "rounds": args.rounds, "method": args.method, "top_k": args.top_k,
              "train_queries": len(qids), "test_queries": len(test_set.queries), "base": base_test,
              "policies": {p.name: p.rows for p in policies.values()}, "trained_once_on_all_logs": reference,
              "seconds": round(time.perf_counter() - started_all, 1)}
    save(f"loop-rounds-{args.dataset}", result)
    lines = [f"# The loop in rounds: {args.dataset} ({args.rounds} rounds, --method {args.method}, top {args.top_k})", "",
             f"Base model test nDCG@10 {base_test['ndcg@10']:.3f} [{base_test['ci95'][0]:.3f}, {base_test['ci95'][1]:.3f}]; "
             f"one model trained once on all of (c)'s logs: {reference['ndcg@10']:.3f} "
             f"[{reference['ci95'][0]:.3f}, {reference['ci95'][1]:.3f}]; (c)'s last round minus it: "
             f"{reference['last_round_of_c_vs_this']['delta']:+.3f} [{reference['last_round_of_c_vs_this']['ci95'][0]:+.3f}, "
             f"{reference['last_round_of_c_vs_this']['ci95'][1]:+.3f}] ({reference['last_round_of_c_vs_this']['verdict']}).", "",
             "| policy | round | judged queries | rolled out | serving | test nDCG@10 [95% CI] | vs the round before | s | peak RSS GB |",
             "|---|---|---|---|---|---|---|---|---|"]
    for p in policies.values():
        for row in p.rows:
            t = row["test"]
            lines.append(f"| {p.name} | {row['round']} | {row['queries'] - row['unanswered']}/{row['queries']} | "
                         f"{'yes' if row['rolled_out'] else 'no'} | {row['serving']} | {t['ndcg@10']:.3f} "
                         f"[{t['ci95'][0]:.3f}, {t['ci95'][1]:.3f}] | {t['vs_previous_round']['delta']:+.3f} "
                         f"[{t['vs_previous_round']['ci95'][0]:+.3f}, {t['vs_previous_round']['ci95'][1]:+.3f}] | "
                         f"{row['seconds']} | {row['peak_rss_gb']} |")
    (RESULTS / f"loop-rounds-{args.dataset}.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
