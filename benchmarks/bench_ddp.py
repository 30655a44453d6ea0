"""Data-parallel training quality: 2 processes x batch B/2 (``ace train --nproc 2``) against 1 process x batch B.

    python benchmarks/bench_ddp.py --seeds 1 2 3 4

Both arms run ``ace train`` (the full fine-tune, one epoch, learning rate 1e-4) on the same training data: the
shipped small dataset (``ace_llamaindex/data/agent_memories.json``) mined with 2 hard negatives each (184 examples;
the trainer holds 46 of them out for validation, the same split in both arms). One process trains with the global
batch ``--batch-size``; two processes with half of it each, the global batch split among them and the in-batch
negatives gathered across them. Reported per seed and on average: the validation nDCG@10 of the base and after
training (the card's ``validation_before`` and ``best_metric``), the optimizer steps and the training time, as JSON
in benchmarks/results/ddp-quality.json (with the command that made it). The exact equivalence of one step is
tests/test_distributed.py's; this is what a whole epoch gives, where the two arms differ in the last, incomplete
batch (dropped by the processes) and in float rounding.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path

from common import CACHE, RESULTS, save


def run(data, out, batch_size: int, nproc: int, seed: int, learning_rate: str) -> dict:
    command = [sys.executable, "-m", "ace_llamaindex.cli", "train", str(data), "-o", str(out), "--method", "full",
               "--epochs", "1", "--learning-rate", learning_rate, "--batch-size", str(batch_size), "--seed", str(seed),
               "--force"]
    if nproc > 1:
        command += ["--nproc", str(nproc)]
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}
    started = time.perf_counter()
    done = subprocess.run(command, capture_output=True, text=True, env=env)
    wall = time.perf_counter() - started
    if done.returncode:
        raise SystemExit(f"{' '.join(command)} failed ({done.returncode}):\n{done.stderr[-3000:]}")
    card = json.loads((out / "ace_training_card.json").read_text())
    return {"processes": nproc, "per_process_batch": batch_size, "seed": seed,
            "validation_ndcg10_before": round(card["validation_before"]["cosine_ndcg@10"], 4),
            "validation_ndcg10_after": round(card["best_metric"], 4), "optimizer_steps": card["optimizer_steps"],
            "train_examples": card["train_examples"], "val_examples": card["val_examples"],
            "train_seconds": card["train_seconds"], "wall_seconds": round(wall, 1),
            "data_parallel": card.get("data_parallel")}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seeds", type=int, nargs="+", default=[1, 2, 3, 4])
    parser.add_argument("--batch-size", type=int, default=8, help="global batch (each of the 2 processes: half)")
    parser.add_argument("--learning-rate", default="1e-4")
    args = parser.parse_args()

    from ace_llamaindex.data.loading import SMALL_DATASET, load_dataset
    from ace_llamaindex.embeddings.encoding import CachedEncoder
    from ace_llamaindex.mine.mining import HardNegativeMiner, MiningOptions, save_training_data

    work = RESULTS / ".ddp-run"
    shutil.rmtree(work, ignore_errors=True)
    examples = HardNegativeMiner("dense", CachedEncoder(cache_dir=CACHE, show_progress=False), show_progress=False,
                                 options=MiningOptions(num_negatives=2)).mine(load_dataset(SMALL_DATASET))
    path = work / "training_data.json"
    save_training_data(examples, path, source="demo")
    load_before = os.getloadavg()[0]
    runs = []
    for seed in args.seeds:
        one = run(path, work / f"one-{seed}", args.batch_size, 1, seed, args.learning_rate)
        two = run(path, work / f"two-{seed}", args.batch_size // 2, 2, seed, args.learning_rate)
        runs += [one, two]
        print(json.dumps([one, two]), flush=True)
    shutil.rmtree(work, ignore_errors=True)

    def mean(nproc: int, key: str) -> float:
        return round(statistics.mean(r[key] for r in runs if r["processes"] == nproc), 4)

    diffs = [two["validation_ndcg10_after"] - one["validation_ndcg10_after"] for one, two in zip(runs[::2], runs[1::2])]
    import ace_llamaindex

    result = {"command": "python benchmarks/bench_ddp.py " + " ".join(sys.argv[1:]),
              "package": str(Path(ace_llamaindex.__file__).parent), "package_commit": os.environ.get("ACE_BENCH_COMMIT"),
              "data": "ace_llamaindex/data/agent_memories.json mined with 2 hard negatives (dense, all-MiniLM-L6-v2)",
              "examples": len(examples), "global_batch": args.batch_size, "learning_rate": args.learning_rate,
              "epochs": 1, "seeds": args.seeds, "runs": runs,
              "mean_validation_ndcg10": {"base": mean(1, "validation_ndcg10_before"),
                                         "one_process": mean(1, "validation_ndcg10_after"),
                                         "two_processes": mean(2, "validation_ndcg10_after")},
              "two_minus_one_per_seed": [round(d, 4) for d in diffs],
              "two_minus_one_mean": round(statistics.mean(diffs), 4),
              "two_minus_one_sd": round(statistics.stdev(diffs), 4) if len(diffs) > 1 else None,
              "cpu_cores": len(os.sched_getaffinity(0)),
              "load_average_1min": {"before": round(load_before, 2), "after": round(os.getloadavg()[0], 2)}}
    save("ddp-quality", result)
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
