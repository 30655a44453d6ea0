"""What a user gets from the defaults: ``ace pipeline`` with no options, trained on a BEIR train split and
evaluated on its test split (never trained on), one run per dataset.

    python benchmarks/bench_defaults.py stackfaq-threads cosqa scifact

For each dataset: mining (dense, 5 negatives), training (lr 5e-5, automatic epochs, validation + promotion gate),
the fusion chosen on the validation queries (``fusion.json``), then base vs fine-tuned, plain RRF and the chosen
fusion on the test split, with paired-bootstrap intervals. Writes benchmarks/results/defaults-<dataset>.{json,md}.
"""

from __future__ import annotations

import argparse
import resource
import shutil
import time

from common import RESULTS, dataset_dir, save

from ace_llamaindex.data.beir import load_beir
from ace_llamaindex.evaluate.reporting import markdown_report
from ace_llamaindex.pipeline import run_pipeline


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("datasets", nargs="+")
    args = parser.parse_args()
    for name in args.datasets:
        folder = dataset_dir(name)
        train_set, test_set = load_beir(folder, "train"), load_beir(folder, "test")
        work = RESULTS / f".defaults-{name}-run"
        shutil.rmtree(work, ignore_errors=True)
        started = time.perf_counter()
        result = run_pipeline(train_set, work, test_set=test_set, show_progress=False, reporters=[])
        seconds = round(time.perf_counter() - started, 1)
        data = result.report.data
        data.pop("per_query")
        card = data["training_card"]
        data["benchmark"] = {"dataset": name, "wall_seconds": seconds, "train_seconds": card["train_seconds"],
                             "train_examples": card["train_examples"], "epochs": card["config"].get("epochs"),
                             "method": card.get("chosen", card.get("method")), "candidates": card.get("candidates"),
                             "peak_rss_gb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1e6, 2),
                             "memory_plan": card.get("memory_plan"), "device": card.get("device"),
                             "gate": card["gate"], "fusion": data["fusion"]}
        save(f"defaults-{name}", data)
        (RESULTS / f"defaults-{name}.md").write_text(
            markdown_report(data) + f"\n\nWall clock, whole pipeline: {seconds} s (training {card['train_seconds']} s, "
            f"{card['config'].get('epochs')} epoch(s) planned), peak RSS {data['benchmark']['peak_rss_gb']} GB.\n\n"
            f"Method: {data['benchmark']['method']}\n\nGate: {card['gate']}\n\nFusion: {data['fusion']}\n")
        print(name, seconds, "s", {k: round(v["ndcg@10"], 4) for k, v in data["overall"].items()}, flush=True)


if __name__ == "__main__":
    main()
