"""The production loop on a real dataset: serve, log, judge, mine from the log, train, roll out.

    python benchmarks/bench_feedback_loop.py scifact [--method auto|adapter|full]

Traffic is simulated: the train split's queries are served by the base model (top 10, the collection's default
search) through a ``HybridQdrantRetriever`` with ``feedback_log``; users are stood in for by the qrels (a shown
result is accepted when the qrels say it is relevant, rejected otherwise). Then ``ace mine --from-feedback``'s
path (accepted = positives, rejected above them = hard negatives, the miner tops up) and, beside it, the same
training mined from the qrels directly; both train with ``--method`` and are scored on the test split (never
served) with paired-bootstrap intervals. Finally the log-trained model is rolled out into the serving collection
while a thread keeps searching: rollout time per 1,000 documents, and search latency p50/p99 during the rollout
vs before. Writes benchmarks/results/feedback-loop-<dataset>.{json,md}.
"""

from __future__ import annotations

import argparse
import resource
import shutil
import threading
import time
from pathlib import Path

import numpy as np
from common import RESULTS, dataset_dir, save


def serve_and_judge(retriever, train_set) -> int:
    """Serve every training query once; judge each shown result by the qrels."""
    from ace_llamaindex.serve.feedback import QUERY_ID

    qids = list(train_set.queries)
    shown = 0
    for start in range(0, len(qids), 64):
        batch = qids[start:start + 64]
        for qid, results in zip(batch, retriever.batch_retrieve([train_set.queries[q] for q in batch]), strict=True):
            for node in results:
                retriever.record_feedback(node.node.metadata[QUERY_ID], node.node.node_id,
                                          node.node.node_id in train_set.relevant_docs[qid])
                shown += 1
    return shown


def rollout_under_load(retriever, queries, model, **options):
    """Roll ``model`` out into the serving collection while a thread keeps searching; the report and the search
    latencies for 20 s before and all through the rollout."""
    from ace_llamaindex.deploy.rollout import rollout

    before = latencies(retriever, queries, None, seconds=20)
    stop, during = threading.Event(), []
    thread = threading.Thread(target=lambda: during.extend(latencies(retriever, queries, stop)))
    thread.start()
    try:
        report = rollout(model, "docs", index=retriever.index, show_progress=False, **options)
    finally:
        stop.set()
        thread.join()
    return report, before, during


def train_arm(examples, out: Path, method: str, corpus, base):
    from ace_llamaindex.plugins.manager import get
    from ace_llamaindex.train.training import TrainConfig

    started = time.perf_counter()
    result = get("trainers", method)(examples, out, TrainConfig(), corpus=corpus, base_encoder=base)
    return result, round(time.perf_counter() - started, 1)


def latencies(retriever, queries, stop: threading.Event | None, seconds: float | None = None) -> list[float]:
    """Search one query at a time until ``stop`` is set (or for ``seconds``); milliseconds per search."""
    out, started, i = [], time.perf_counter(), 0
    while (stop is None or not stop.is_set()) and (seconds is None or time.perf_counter() - started < seconds):
        t = time.perf_counter()
        retriever.retrieve(queries[i % len(queries)])
        out.append((time.perf_counter() - t) * 1000)
        i += 1
    return out


def pct(values: list[float]) -> dict[str, float]:
    return {"n": len(values), "p50_ms": round(float(np.percentile(values, 50)), 1),
            "p99_ms": round(float(np.percentile(values, 99)), 1)}


def run(name: str, method: str) -> dict:
    from llama_index.core.schema import TextNode

    from ace_llamaindex.data.beir import load_beir
    from ace_llamaindex.embeddings.encoding import CachedEncoder
    from ace_llamaindex.embeddings.models import resolve_model
    from ace_llamaindex.evaluate.evaluate import System, evaluate
    from ace_llamaindex.mine.feedback_dataset import load_feedback, with_rejected_negatives
    from ace_llamaindex.mine.mining import HardNegativeMiner, MiningOptions
    from ace_llamaindex.serve.embedding import FineTunedEmbedding
    from ace_llamaindex.serve.retriever import HybridQdrantRetriever
    from ace_llamaindex.serve.served_model import serving_encoder
    from ace_llamaindex.serve.spaces import named_vector

    folder = dataset_dir(name)
    train_set, test_set = load_beir(folder, "train"), load_beir(folder, "test")
    work = RESULTS / f".feedback-loop-{name}-run"
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir(parents=True)
    timings: dict[str, float] = {}
    log = work / "feedback.jsonl"

    started = time.perf_counter()
    retriever = HybridQdrantRetriever(FineTunedEmbedding(), path=str(work / "qdrant"), collection="docs", engine="edge",
                                      feedback_log=log)
    retriever.add_nodes([TextNode(id_=k, text=v) for k, v in train_set.corpus.items()], show_progress=False)
    retriever.index.optimize()
    timings["index"] = round(time.perf_counter() - started, 1)
    started = time.perf_counter()
    shown = serve_and_judge(retriever, train_set)
    timings["serve and judge"] = round(time.perf_counter() - started, 1)

    base = CachedEncoder(resolve_model(None), show_progress=False)
    options = MiningOptions()
    corpus = dict(train_set.corpus)
    data = load_feedback(log, corpus)
    # both arms mine over the serving collection, with the model that serves it
    miner = HardNegativeMiner("dense", base, index=retriever.index, options=options, show_progress=False,
                              using=named_vector(retriever.embed_model, retriever.embed_model.model_name))
    from_log = with_rejected_negatives(miner.mine(data.dataset), data, corpus, options.num_negatives)
    from_qrels = miner.mine(train_set)
    arms = {}
    for arm, examples in (("from-log", from_log), ("from-qrels", from_qrels)):
        result, seconds = train_arm(examples, work / arm, method, corpus, base)
        arms[arm] = {"examples": len(examples), "train_seconds": seconds, "promoted": result.promoted,
                     "verdict": result.card.gate.get("verdict"),
                     "serving": result.serving, "method": result.card.method_name,
                     "feedback_negatives": sum(s == "feedback" for e in examples
                                               for s in e.metadata.get("negative_sources", []))}

    systems = [System("base", "dense", base)] + [
        System(arm, "dense", serving_encoder(info["serving"], base)) for arm, info in arms.items() if info["promoted"]]
    names = [s.name for s in systems]
    comparisons = [("base", n) for n in names[1:]] + ([("from-qrels", "from-log")] if len(names) == 3 else [])
    report = evaluate(test_set, systems, comparisons=comparisons, show_progress=False).data
    report.pop("per_query")

    rolled = {}
    if arms["from-log"]["promoted"] and arms["from-log"]["verdict"] == "better":
        queries = list(test_set.queries.values())
        rep, before, during = rollout_under_load(retriever, queries, work / "from-log")
        after = retriever.retrieve(queries[0])
        rolled = {"report": rep.to_dict(), "latency_before": pct(before), "latency_during": pct(during),
                  "serves_new_model": after[0].node.metadata.get("ace_served_by")}
    # A rollout that embeds every document again (what a full fine-tune of the same architecture costs): the base
    # model rolled out over the serving collection, searched all the while
    queries = list(test_set.queries.values())
    rep, before, during = rollout_under_load(retriever, queries, resolve_model(None), force=True)
    rolled["re-embedding"] = {"report": rep.to_dict(), "latency_before": pct(before), "latency_during": pct(during)}
    return {**report, "benchmark": {
        "dataset": name, "method": method, "train_queries": len(train_set.queries), "shown_results": shown,
        "feedback_counts": data.counts, "log_queries": len(data.dataset.queries), "arms": arms, "timings": timings,
        "rollout": rolled, "peak_rss_gb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1e6, 2)}}


def table(data: dict) -> str:
    b, overall = data["benchmark"], data["overall"]
    delta = {c["candidate"]: c for c in data["comparisons"] if c["metric"] == "ndcg@10" and c["baseline"] == "base"}
    rows = [f"| base (serving) | {overall['base']['ndcg@10']:.3f} | | | |"]
    for arm, info in b["arms"].items():
        if arm in overall:
            d = delta[arm]
            rows.append(f"| mined {arm} ({info['method']}) | {overall[arm]['ndcg@10']:.3f} | {d['delta']:+.3f} "
                        f"[{d['ci95'][0]:+.3f}, {d['ci95'][1]:+.3f}] | {info['examples']} | {info['feedback_negatives']} |")
        else:
            rows.append(f"| mined {arm} | not promoted | | {info['examples']} | |")
    text = ("| system | test nDCG@10 | vs base (95% CI) | training examples | negatives from users |\n|---|---|---|---|---|\n"
            + "\n".join(rows) + "\n")
    text += "\n| rollout | documents | time | per 1,000 documents | search p50 / p99 before | during (searches) |\n"
    text += "|---|---|---|---|---|---|\n"
    for what, r in (("log-trained model", b["rollout"]), ("re-embedding every document", b["rollout"].get("re-embedding"))):
        if r and "report" in r:
            rep, lb, ld = r["report"], r["latency_before"], r["latency_during"]
            text += (f"| {what} ({', '.join(rep['encoded_vectors']) or 'vectors copied'}) | {rep['documents']} | "
                     f"{rep['encode_seconds']} s | {rep['seconds_per_1000']} s | {lb['p50_ms']} / {lb['p99_ms']} ms | "
                     f"{ld['p50_ms']} / {ld['p99_ms']} ms ({ld['n']}, none failed) |\n")
    return text + f"\nFeedback: {b['feedback_counts']}; peak RSS {b['peak_rss_gb']} GB.\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("datasets", nargs="+")
    parser.add_argument("--method", default="auto", help="trainer for both arms (default: auto, as `ace train`)")
    args = parser.parse_args()
    for name in args.datasets:
        data = run(name, args.method)
        save(f"feedback-loop-{name}", data)
        (RESULTS / f"feedback-loop-{name}.md").write_text(table(data))
        print(table(data), flush=True)


if __name__ == "__main__":
    main()
