"""Re-choose the fusion for a model that bench_defaults.py trained, with the current selection rule, and measure
it on the test split beside dense and plain RRF (one run). Uses the run's own training data and the same
train/validation split as its training.

    python benchmarks/bench_fusion.py scifact

Writes benchmarks/results/fusion-<dataset>.{json,md} and the new fusion.json into the run's model folder.
"""

from __future__ import annotations

import argparse
import time

from common import CACHE, RESULTS, dataset_dir, save

from ace_llamaindex.data.beir import load_beir
from ace_llamaindex.embeddings.encoding import CachedEncoder
from ace_llamaindex.evaluate.evaluate import System, evaluate
from ace_llamaindex.evaluate.fusion_selection import select_fusion
from ace_llamaindex.evaluate.reporting import markdown_report
from ace_llamaindex.index.store import HybridParams
from ace_llamaindex.mine.mining import load_training_data
from ace_llamaindex.train.promotion import validation_dataset
from ace_llamaindex.train.training import split_by_query


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("dataset")
    parser.add_argument("--seed", type=int, default=42)
    args = parser.parse_args()
    folder = dataset_dir(args.dataset)
    run = RESULTS / f".defaults-{args.dataset}-run"
    train_set, test_set = load_beir(folder, "train"), load_beir(folder, "test")
    examples = load_training_data(run / "training_data.json")
    train_rows, val_rows = split_by_query(examples, None, args.seed)  # the split training used (defaults)
    base = CachedEncoder(cache_dir=CACHE, show_progress=False)
    tuned = CachedEncoder(str(run / "model"), cache_dir=False, show_progress=False)
    started = time.perf_counter()
    choice = select_fusion(validation_dataset(val_rows, examples, train_set.corpus), tuned,
                           prior=(validation_dataset(train_rows, examples, train_set.corpus), base))
    seconds = round(time.perf_counter() - started, 1)
    choice.save(run / "model")
    systems = [System("finetuned", "dense", tuned), System("finetuned+hybrid", "hybrid", tuned, HybridParams()),
               System("finetuned+fusion", choice.mode, None if choice.mode == "bm25" else tuned, choice.params)]
    report = evaluate(test_set, systems, comparisons=[("finetuned", "finetuned+fusion"), ("finetuned+hybrid", "finetuned+fusion")],
                      show_progress=False)
    data = report.data
    data.pop("per_query")
    data["fusion"] = choice.to_dict()
    data["benchmark"] = {"dataset": args.dataset, "selection_seconds": seconds}
    save(f"fusion-{args.dataset}", data)
    (RESULTS / f"fusion-{args.dataset}.md").write_text(markdown_report(data))
    print(choice.name, choice.reason, {k: round(v["ndcg@10"], 4) for k, v in data["overall"].items()})


if __name__ == "__main__":
    main()
