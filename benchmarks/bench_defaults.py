"""What a user gets from the defaults: ``ace pipeline`` with no options, trained on a BEIR train split and
evaluated on its test split (never trained on), one run per dataset.

    python benchmarks/bench_defaults.py scifact      # one dataset per run: the peak RSS is the process's

For each dataset: mining (dense, 5 negatives), training (lr 5e-5, automatic epochs, validation + promotion gate),
the fusion chosen on the validation queries (``fusion.json``), then base vs fine-tuned, plain RRF and the chosen
fusion on the test split, with paired-bootstrap intervals. Writes benchmarks/results/defaults-<dataset>.{json,md}.
"""

from __future__ import annotations

import argparse
import json
import resource
import shutil
import time

from common import RESULTS, commit, dataset_dir, save

from ace_llamaindex.data.beir import load_beir
from ace_llamaindex.evaluate.reporting import markdown_report
from ace_llamaindex.pipeline import run_pipeline
from ace_llamaindex.train.training import cpu_has_native_bf16


def summary(bench: dict) -> str:
    """The run in a few lines of markdown: time, memory, the method, the gate's verdict and the fusion."""
    gate = bench["gate"]
    decided = gate.get("subsets", {}).get(gate.get("decided_by"), gate)  # the queries the verdict was read on
    low, high = decided.get("ci95") or (0.0, 0.0)
    lines = [f"Commit {bench.get('commit')}, CPU with native bf16: {bench.get('cpu_native_bf16')}.",
             f"Wall clock, whole pipeline: {bench['wall_seconds']} s (training {bench['train_seconds']} s, "
             f"{bench['epochs']} epoch(s) planned), peak RSS {bench['peak_rss_gb']} GB.",
             f"Method: {bench['method']}.",
             f"Gate ({gate.get('metric')}, decided by {gate.get('decided_by', 'all validation queries')}): "
             f"{gate.get('verdict')}, delta {decided.get('delta', 0):+.4f} [{low:+.4f}, {high:+.4f}] over "
             f"{decided.get('n', decided.get('n_queries'))} queries.",
             f"Fusion: {bench['fusion']}."]
    return "\n\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("dataset", help="one per run: the peak RSS read is the process's")
    args = parser.parse_args()
    name = args.dataset
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
    data["benchmark"] = {"dataset": name, "commit": commit(), "cpu_native_bf16": cpu_has_native_bf16(),
                         "wall_seconds": seconds, "train_seconds": card["train_seconds"],
                         "train_examples": card["train_examples"], "epochs": card["config"].get("epochs"),
                         "method": card.get("chosen", card.get("method")), "candidates": card.get("candidates"),
                         "peak_rss_gb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1e6, 2),
                         "memory_plan": card.get("memory_plan"), "device": card.get("device"),
                         "gate": card["gate"], "fusion": data["fusion"]}
    saved = json.loads(save(f"defaults-{name}", data).read_text())  # enums as the JSON spells them
    (RESULTS / f"defaults-{name}.md").write_text(markdown_report(saved) + "\n\n" + summary(saved["benchmark"]))
    print(name, seconds, "s", {k: round(v["ndcg@10"], 4) for k, v in data["overall"].items()}, flush=True)


if __name__ == "__main__":
    main()
