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

    python benchmarks/bench_loop_rounds.py scifact --scenario rotated

The rotated log: the train split's queries are cut in two topics by their relevant documents (2-means over the base
model's document vectors; the test queries by the same centroids): A, then B. Round 1 trains from the base on A's
log and rolls out over the base. Then A's log rotates away: round 2 has only B's (served by the champion). Arms:
(a) today's loop (from the base on B, rolled out when better than the *base*); (b) champion-gated, from the base on
B (``--no-continual``); (c) champion-gated + continual and replay (the champion's card still names A's training
data); (d) as (c) with A's training data gone too (continual, no replay). Per arm: the served model's test nDCG@10
on A's and B's test queries, paired against the champion. Writes benchmarks/results/loop-rotated-<dataset>.{json,md}.
"""

from __future__ import annotations

import argparse
import json
import random
import resource
import shutil
import sys
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
    parser.add_argument("--scenario", choices=("rounds", "rotated"), default="rounds",
                        help="rounds: three policies over --rounds rounds; rotated: the champion trained on topic A, "
                        "then only topic B's log remains")
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
    if args.scenario == "rotated":
        from ace_llamaindex.train.champion import champion_from_folder as from_folder

        def train(examples, out, data_file, *, logs, continual=True, champion=None):
            return get("trainers", args.method)(examples, out, training_config(logs, continual), base_encoder=base,
                                                training_data=data_file, corpus=train_set.corpus,
                                                **({"champion": champion} if champion else {}))

        return rotated_log(args, train_set, test_set, doc_ids, doc_vectors, base, miner, serve_and_judge, train,
                           test_score, per_query_scores, from_folder, promotion_evidence, save_training_data, read_serving,
                           base_plan)
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
                              "candidates": {n: c["gate"] for n, c in (result.card.candidates or {}).items()},
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
    result = {"dataset": args.dataset, "command": " ".join(["python", *sys.argv]), "rounds": args.rounds,
              "method": args.method, "top_k": args.top_k,
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


def topics(relevant: dict[str, list[str]], doc_ids: list[str], doc_vectors: np.ndarray, seed: int,
           centroids: np.ndarray | None = None) -> tuple[dict[str, int], np.ndarray]:
    """Each query's topic (0: A, 1: B), the 2-means cluster of its first relevant document's base vector."""
    row = {d: i for i, d in enumerate(doc_ids)}
    qids = [q for q in relevant if relevant[q] and relevant[q][0] in row]
    vectors = doc_vectors[[row[relevant[q][0]] for q in qids]]
    if centroids is None:
        centroids = vectors[np.random.default_rng(seed).choice(len(vectors), 2, replace=False)]
        for _ in range(50):
            label = np.argmax(vectors @ centroids.T, axis=1)
            centroids = np.stack([vectors[label == k].mean(axis=0) for k in range(2)])
            centroids /= np.linalg.norm(centroids, axis=1, keepdims=True)
    label = np.argmax(vectors @ centroids.T, axis=1)
    return dict(zip(qids, (int(x) for x in label), strict=True)), centroids


def rotated_log(args, train_set, test_set, doc_ids, doc_vectors, base, miner, serve_and_judge, train, test_score,
                per_query_scores, champion_from_folder, promotion_evidence, save_training_data, read_serving, base_plan):
    """The champion trained on topic A; A's log rotated away; round 2 trains on B's alone, four ways."""
    from ace_llamaindex.evaluate.stats import paired_bootstrap

    started_all = time.perf_counter()
    train_topic, centroids = topics(train_set.relevant_docs, doc_ids, doc_vectors, args.seed)
    test_topic, _ = topics(test_set.relevant_docs, doc_ids, doc_vectors, args.seed, centroids)
    test_qids = list(test_set.queries)
    mask = {t: np.array([test_topic.get(q) == k for q in test_qids]) for t, k in (("A", 0), ("B", 1))}
    work = RESULTS.parent / ".cache" / f"loop-rotated-{args.dataset}"
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir(parents=True)

    def on_topics(serving: Path | None, label: str, against: Path | None = None) -> dict:
        """Test nDCG@10 on all, A's and B's test queries; on A and B paired against ``against`` (None: the base)."""
        out = {"all": test_score(serving, label)}
        scores = per_query_scores[str(serving)]
        for t, m in mask.items():
            d = paired_bootstrap(per_query_scores[str(against)][m], scores[m])
            out[t] = {"ndcg@10": round(float(scores[m].mean()), 4), "ci95": ci95(scores[m]), "queries": int(m.sum()),
                      "vs": "the champion" if against is not None else "the base",
                      "paired": {"delta": round(d.delta, 4), "ci95": [round(d.ci_low, 4), round(d.ci_high, 4)],
                                 "verdict": d.verdict}}
        return out

    record: dict = {"dataset": args.dataset, "scenario": "rotated", "method": args.method, "top_k": args.top_k,
                    "command": " ".join(["python", *sys.argv]),
                    "topics": {"train queries": {t: sum(1 for v in train_topic.values() if v == k) for t, k in (("A", 0), ("B", 1))},
                               "test queries": {t: int(m.sum()) for t, m in mask.items()}}}
    test_score(None, "base")
    record["base"] = on_topics(None, "base")
    print(f"topics: {json.dumps(record['topics'])}; base {json.dumps(record['base'])}", flush=True)
    # round 1: topic A's log, served by the base; trained from the base; rolled out over the base by its gate
    a_qids = [q for q, k in train_topic.items() if k == 0]
    b_qids = [q for q, k in train_topic.items() if k == 1]
    started = time.perf_counter()
    log_a, _ = serve_and_judge(None, a_qids)
    examples_a = miner.mine(log_a)
    file_a = save_training_data(examples_a, work / "topic-a.json", source="topic A log")
    result = train(examples_a, work / "champion", file_a, logs=[log_a])
    champion_dir = work / "champion"
    rolled = result.card.gate["verdict"] == "better"
    record["round1"] = {"examples": len(examples_a), "gate_vs_base": result.card.gate, "rolled_out": rolled,
                        "test": on_topics(champion_dir, "champion") if rolled else None,
                        "seconds": round(time.perf_counter() - started, 1)}
    print(f"round 1 (A): {json.dumps(record['round1'])}", flush=True)
    if not rolled:  # recorded, not dropped: a collection where the scenario cannot arise is a result too
        record["outcome"] = "round 1's model is not better than the base: no champion, so no round 2"
        save(f"loop-rotated-{args.dataset}", record)
        raise SystemExit(record["outcome"])
    champion_serving = read_serving(champion_dir)
    # round 2: only topic B's log remains, served by the champion
    log_b, _ = serve_and_judge(champion_dir, b_qids)
    examples_b = miner.mine(log_b)
    file_b = save_training_data(examples_b, work / "topic-b.json", source="topic B log (A's rotated away)")
    arms = {"a": "(a) today: from the base on B, rolled out when better than the base",
            "b": "(b) champion-gated, from the base on B (--no-continual)",
            "c": "(c) champion-gated + continual and replay (the card names A's data)",
            "d": "(d) as (c), A's training data gone too (continual, no replay)"}
    record["round2"] = {"examples": len(examples_b), "arms": {}}
    for key, name in arms.items():
        started = time.perf_counter()
        out = work / f"round2-{key}"
        if key == "d":
            file_a.unlink()  # the champion's card names it; now it is gone
        champion = None if key == "a" else champion_from_folder(champion_dir)
        result = train(examples_b, out, file_b, logs=[log_b], continual=key in ("c", "d"), champion=champion)
        written = (out / "ace_adapter.json").exists() or (out / "modules.json").exists()
        if not written:
            decision = {"allowed": False, "reason": "nothing written"}
        elif key == "a":
            verdict = result.card.gate["verdict"]
            decision = {"allowed": verdict == "better", "reason": f"gate vs the base: {verdict}"}
        else:
            decision = promotion_evidence(out, read_serving(out), champion_serving, "docs").to_dict()
        served = out if decision["allowed"] else champion_dir
        row = {"chosen": result.card.chosen, "candidates": {n: c["gate"] for n, c in (result.card.candidates or {}).items()},
               "history": (result.card.champion or {}).get("history"), "rolled_out": decision["allowed"],
               "reason": decision["reason"], "serving": served.name,
               "candidate_test": on_topics(out, f"candidate-{key}", champion_dir) if written else None,
               "served_test": on_topics(served, f"served-{key}", champion_dir),
               "seconds": round(time.perf_counter() - started, 1),
               "peak_rss_gb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1e6, 2)}
        record["round2"]["arms"][name] = row
        print(f"{name}: {json.dumps(row)}", flush=True)
    record["seconds"] = round(time.perf_counter() - started_all, 1)
    save(f"loop-rotated-{args.dataset}", record)
    c = record["round1"]["test"]
    lines = [f"# The rotated log: {args.dataset} (--method {args.method}, top {args.top_k})", "",
             f"Command: `{record['command']}`. Topics (2-means over the base's document vectors): train queries "
             f"A {record['topics']['train queries']['A']}, B {record['topics']['train queries']['B']}; test queries "
             f"A {record['topics']['test queries']['A']}, B {record['topics']['test queries']['B']}.", "",
             f"Base: test nDCG@10 A {record['base']['A']['ndcg@10']:.3f}, B {record['base']['B']['ndcg@10']:.3f}. "
             f"Round 1 (trained on A's log, rolled out): A {c['A']['ndcg@10']:.3f}, B {c['B']['ndcg@10']:.3f}.", "",
             "| round 2, only B's log | chosen | rolled out | serving | served: A's test queries vs the champion | "
             "B's test queries vs the champion | candidate on A vs the champion | s |", "|---|---|---|---|---|---|---|---|"]

    def cell(x: dict) -> str:
        v = x["paired"]
        return f"{x['ndcg@10']:.3f} ({v['delta']:+.3f} [{v['ci95'][0]:+.3f}, {v['ci95'][1]:+.3f}])"

    for name, row in record["round2"]["arms"].items():
        t = row["served_test"]
        cand = cell(row["candidate_test"]["A"]) if row["candidate_test"] else "nothing written"
        lines.append(f"| {name} | {row['chosen']} | {'yes' if row['rolled_out'] else 'no'} | {row['serving']} | "
                     f"{cell(t['A'])} | {cell(t['B'])} | {cand} | {row['seconds']} |")
    (RESULTS / f"loop-rotated-{args.dataset}.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
