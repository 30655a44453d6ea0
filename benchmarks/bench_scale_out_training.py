"""CPU training throughput on 1 vs N processes (data-parallel, ``ace train --nproc N``), same data, one run.

    python benchmarks/bench_scale_out_training.py --examples 256 --batch-size 16 --nproc 2

Both runs fine-tune all-MiniLM-L6-v2 (the full fine-tune, MNRL, one epoch, no validation split) on the same mined
examples of the shipped demo dataset with the same global batch: ``--batch-size`` on one process, ``--batch-size / N``
on each of N processes (in-batch negatives gathered across them). One process uses every core; N processes share
them out (``ace train --nproc`` sets ``OMP_NUM_THREADS`` to cores / N). Reported: training examples per second of
each (the trainer's own time, from the card) and the wall time of each command (start-up, model loading, the launcher
included), as JSON on stdout and in benchmarks/results/scale-out-training.json. A third run, one process with the
thread count each of the N processes has, tells the processes' gain from the threads'. The machine's load average
is recorded: on a shared machine the numbers move with it.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import time

from common import CACHE, RESULTS, save


def run(data, out, batch_size: int, nproc: int, max_seq_length: int, seed: int, threads: int | None = None) -> dict:
    command = [sys.executable, "-m", "ace_llamaindex.cli", "train", str(data), "-o", str(out), "--method", "full",
               "--epochs", "1", "--val-fraction", "0", "--batch-size", str(batch_size), "--max-seq-length",
               str(max_seq_length), "--seed", str(seed), "--force"]
    if nproc > 1:
        command += ["--nproc", str(nproc)]
    started = time.perf_counter()
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}
    if threads:
        env["OMP_NUM_THREADS"] = str(threads)
    done = subprocess.run(command, capture_output=True, text=True, env=env)
    wall = time.perf_counter() - started
    if done.returncode:
        raise SystemExit(f"{' '.join(command)} failed ({done.returncode}):\n{done.stderr[-3000:]}")
    card = json.loads((out / "ace_training_card.json").read_text())
    cores = len(os.sched_getaffinity(0))
    shown = threads or (max(1, cores // nproc) if nproc > 1 else f"default ({cores} cores)")  # --nproc: cores / N
    return {"processes": nproc, "threads_per_process": shown, "per_process_batch": batch_size,
            "train_seconds": card["train_seconds"],
            "optimizer_steps": card["optimizer_steps"], "wall_seconds": round(wall, 1),
            "data_parallel": card.get("data_parallel")}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--examples", type=int, default=256, help="training examples (mined from the shipped demo)")
    parser.add_argument("--batch-size", type=int, default=16, help="global batch (per process: this / --nproc)")
    parser.add_argument("--nproc", type=int, default=2)
    parser.add_argument("--max-seq-length", type=int, default=128)
    parser.add_argument("--negatives", type=int, default=2)
    parser.add_argument("--seed", type=int, default=42)
    args = parser.parse_args()
    if args.batch_size % args.nproc:
        raise SystemExit("--batch-size must be a multiple of --nproc (the same global batch on both sides)")

    from ace_llamaindex.data.loading import load_dataset
    from ace_llamaindex.embeddings.encoding import CachedEncoder
    from ace_llamaindex.mine.mining import HardNegativeMiner, MiningOptions, save_training_data

    work = RESULTS / ".scale-out-run"
    shutil.rmtree(work, ignore_errors=True)
    data = load_dataset(None)
    examples = HardNegativeMiner("dense", CachedEncoder(cache_dir=CACHE, show_progress=False), show_progress=False,
                                 options=MiningOptions(num_negatives=args.negatives)).mine(data)[: args.examples]
    path = work / "training_data.json"
    save_training_data(examples, path, source="demo")
    cores = len(os.sched_getaffinity(0))
    load_before = os.getloadavg()[0]
    one = run(path, work / "one", args.batch_size, 1, args.max_seq_length, args.seed)
    many = run(path, work / f"n{args.nproc}", args.batch_size // args.nproc, args.nproc, args.max_seq_length, args.seed)
    # one process with each of the N processes' thread count: how much of the gain is the threads, not the processes
    narrow = run(path, work / "one-narrow", args.batch_size, 1, args.max_seq_length, args.seed,
                 threads=max(1, cores // args.nproc))
    shutil.rmtree(work, ignore_errors=True)
    runs = [one, many, narrow]
    for r in runs:
        r["examples_per_second"] = round(len(examples) / r["train_seconds"], 2)
    result = {"examples": len(examples), "negatives": args.negatives, "max_seq_length": args.max_seq_length,
              "global_batch": args.batch_size, "cpu_cores": cores, "runs": runs,
              "speedup_train": round(many["examples_per_second"] / one["examples_per_second"], 2),
              "speedup_wall": round(one["wall_seconds"] / many["wall_seconds"], 2),
              "speedup_train_vs_one_process_same_threads": round(many["examples_per_second"] / narrow["examples_per_second"], 2),
              "load_average_1min": {"before": round(load_before, 2), "after": round(os.getloadavg()[0], 2)}}
    save("scale-out-training", result)
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
