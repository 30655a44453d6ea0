"""Query adapter vs base (and the full fine-tune, when its defaults run exists) on a BEIR test split, one run.

    python benchmarks/bench_adapter.py scifact stackfaq-threads

Mines the train split (dense, 5 negatives; the corpus vectors come from the disk cache), trains the adapter on the
frozen base vectors (timed), then evaluates base, adapter, adapter+hybrid and, if benchmarks/results/.defaults-
<dataset>-run/model exists (from bench_defaults.py), the fully fine-tuned model on the test split. Counts the
documents the base model encodes after training: the adapter needs none. Writes results/adapter-<dataset>.{json,md}.
"""

from __future__ import annotations

import argparse
import shutil
import time

from common import CACHE, RESULTS, dataset_dir, save

from ace_llamaindex.data.beir import load_beir
from ace_llamaindex.embeddings.encoding import CachedEncoder
from ace_llamaindex.embeddings.query_adapter import AdaptedEncoder, QueryAdapter
from ace_llamaindex.evaluate.evaluate import System, evaluate
from ace_llamaindex.evaluate.reporting import markdown_report
from ace_llamaindex.mine.mining import HardNegativeMiner, MiningOptions
from ace_llamaindex.train.adapter import adapter_trainer
from ace_llamaindex.train.training import TrainConfig


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("datasets", nargs="+")
    args = parser.parse_args()
    for name in args.datasets:
        folder = dataset_dir(name)
        train_set, test_set = load_beir(folder, "train"), load_beir(folder, "test")
        base = CachedEncoder(cache_dir=CACHE, show_progress=False)
        base.encode_documents(list(test_set.corpus.values()))  # warm: the index already holds these vectors
        examples = HardNegativeMiner("dense", base, options=MiningOptions(num_negatives=5), show_progress=False).mine(train_set)
        work = RESULTS / f".adapter-{name}-run"
        shutil.rmtree(work, ignore_errors=True)
        before = dict(base.encoded)
        started = time.perf_counter()
        result = adapter_trainer(examples, work / "adapter", TrainConfig(), base_encoder=base)
        seconds = round(time.perf_counter() - started, 1)
        adapted = AdaptedEncoder(base, QueryAdapter.load(work / "adapter")[0], label="adapter")
        systems = [System("bm25", "bm25"), System("base", "dense", base), System("adapter", "dense", adapted),
                   System("adapter+hybrid", "hybrid", adapted)]
        full = RESULTS / f".defaults-{name}-run" / "model"
        if full.is_dir():
            systems.append(System("full fine-tune", "dense", CachedEncoder(str(full), cache_dir=False, show_progress=False)))
        comparisons = [("base", "adapter"), ("base", "full fine-tune"), ("adapter", "full fine-tune")]
        names = {s.name for s in systems}
        report = evaluate(test_set, systems, comparisons=[c for c in comparisons if set(c) <= names], show_progress=False)
        reencoded = base.encoded["document"] - before["document"]
        data = report.data
        data.pop("per_query")
        data["benchmark"] = {"dataset": name, "adapter_train_seconds_incl_gate": seconds,
                             "adapter_train_seconds": result.card.train_seconds, "train_examples": result.card.train_examples,
                             "documents_encoded_by_base_after_training": reencoded, "gate": result.card.gate,
                             "epochs": result.card.details["validation_per_epoch"][-1]["epoch"] if result.card.details["validation_per_epoch"] else None}
        save(f"adapter-{name}", data)
        (RESULTS / f"adapter-{name}.md").write_text(markdown_report(data) + f"\n\n{data['benchmark']}\n")
        print(name, data["benchmark"], {k: round(v["ndcg@10"], 4) for k, v in data["overall"].items()}, flush=True)


if __name__ == "__main__":
    main()
