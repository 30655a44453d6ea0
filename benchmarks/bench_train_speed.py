"""CPU training throughput: our trainer vs the plain sentence-transformers trainer, same examples, one run.

    python benchmarks/bench_train_speed.py scifact --examples 128 --max-seq-length 128
    python benchmarks/bench_train_speed.py scifact --examples 64 --max-seq-length 256 --sides plain,ours,ours_unbounded,ours_mapped

``--sides`` picks what runs (default ``plain,ours``): ``ours_unbounded`` is ours with ``max_memory=64`` (no memory
budget to fit: plain MNRL, as before issue #40), so the cost of the default 2 GB budget (CachedMNRL when plain MNRL's
step would not fit) is a ratio in the same run; ``ours_mapped`` is ours with glibc's mmap threshold fixed at 64 KiB
(``return_freed_memory``, which a fine-tune applies only when no step fits its budget): the cost of returning freed
memory to the system. Order ABC..CBA, each run in its own
process (ours sets process-wide allocator state the next run would inherit).

Both train all-MiniLM-L6-v2 with MNRL, batch 32, the same (query, positive, 5 hard negatives) rows, one epoch,
no validation (ours: val_fraction 0), each with its own defaults otherwise (ours: ``precision="auto"``, bf16 mixed
precision on a CPU with AVX512-BF16/AMX; plain: fp32), after one untimed warm-up run, in ABBA order so neither side always runs on
a warmer machine. Reported:
training examples per second of each and the ratio ours / plain. Writes benchmarks/results/train-speed-<dataset>.json.
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import time
from pathlib import Path

from common import RESULTS, commit, first_examples, save

from ace_llamaindex.embeddings.models import open_model
from ace_llamaindex.mine.mining import load_training_data, save_training_data
from ace_llamaindex.train.training import TrainConfig, choose_precision, cpu_has_native_bf16, to_hf_dataset, train


def plain(examples, out, batch_size, max_seq_length, seed) -> float:
    """The sentence-transformers recipe with nothing of ours around it; returns training seconds."""
    from sentence_transformers import SentenceTransformerTrainer, SentenceTransformerTrainingArguments
    from sentence_transformers.sentence_transformer.losses import MultipleNegativesRankingLoss
    from sentence_transformers.sentence_transformer.training_args import BatchSamplers

    model = open_model(None, device="cpu")
    model.max_seq_length = max_seq_length
    args = SentenceTransformerTrainingArguments(output_dir=str(out), num_train_epochs=1, per_device_train_batch_size=batch_size,
                                                learning_rate=5e-5, batch_sampler=BatchSamplers.NO_DUPLICATES, save_strategy="no",
                                                report_to="none", seed=seed, use_cpu=True, disable_tqdm=True)
    trainer = SentenceTransformerTrainer(model=model, args=args, train_dataset=to_hf_dataset(examples),
                                         loss=MultipleNegativesRankingLoss(model))
    started = time.perf_counter()
    trainer.train()
    return time.perf_counter() - started


PLANS: dict[str, dict] = {}  # the memory plan each side of ours trained with (the card's)


def ours(examples, out, batch_size, max_seq_length, seed, max_memory=None, name="ours") -> float:
    config = TrainConfig(epochs=1, batch_size=batch_size, max_seq_length=max_seq_length, val_fraction=0.0, seed=seed,
                         device="cpu", max_memory=max_memory)
    card = train(examples, out, config).card
    PLANS[name] = card.memory_plan
    return card.train_seconds


def ours_unbounded(examples, out, batch_size, max_seq_length, seed) -> float:
    return ours(examples, out, batch_size, max_seq_length, seed, max_memory=64.0, name="ours_unbounded")


def ours_mapped(examples, out, batch_size, max_seq_length, seed) -> float:
    from ace_llamaindex.train import training

    training.return_freed_memory("cpu")  # this process only: every block from 64 KiB up its own map
    return ours(examples, out, batch_size, max_seq_length, seed, name="ours_mapped")


SIDES = {"plain": plain, "ours": ours, "ours_unbounded": ours_unbounded, "ours_mapped": ours_mapped}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("dataset")
    parser.add_argument("--examples", type=int, default=128)
    parser.add_argument("--max-seq-length", type=int, default=128)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--seed", type=int, default=42)
    parser.add_argument("--sides", default="plain,ours", help=f"comma-separated, of {', '.join(SIDES)}")
    parser.add_argument("--name", default=None, help="result name (default train-speed-<dataset>)")
    args = parser.parse_args()
    sides = args.sides.split(",")
    if not set(sides) <= set(SIDES) or "plain" not in sides:
        parser.error(f"--sides: expected plain and any of {', '.join(SIDES)}, got {args.sides!r}")
    examples = first_examples(args.dataset, args.examples)
    work = RESULTS / ".train-speed-run"
    seconds: dict[str, list[float]] = {name: [] for name in sides}
    peaks: dict[str, list[float]] = {}  # each run's peak RSS (its own process, GB)
    work.mkdir(parents=True, exist_ok=True)
    rows = save_training_data(examples, work / "examples.json", source=f"{args.dataset} train, {len(examples)} queries")
    plain(examples[: args.batch_size], work / "warm-up", args.batch_size, args.max_seq_length, args.seed)  # untimed: loads, caches
    for name in [*sides, *reversed(sides)]:  # ABBA (ABCCBA): each side runs once early and once late
        # each run in its own process: ours sets process-wide state (glibc's mmap threshold) the next run would inherit
        out = work / f"{name}.json"
        subprocess.run([sys.executable, __file__, "_side", name, str(rows), str(work / name), str(args.batch_size),
                        str(args.max_seq_length), str(args.seed), str(out)], check=True)
        side = json.loads(out.read_text())
        seconds[name].append(side["seconds"])
        peaks.setdefault(name, []).append(side["peak_rss_gb"])
        if side.get("plan"):
            PLANS[name] = side["plan"]
        print(name, round(seconds[name][-1], 1), "s", flush=True)
    shutil.rmtree(work, ignore_errors=True)
    rate = {k: len(examples) * len(v) / sum(v) for k, v in seconds.items()}
    result = {"commit": commit(), "cpu_native_bf16": cpu_has_native_bf16(), "dataset": args.dataset, "examples": len(examples), "negatives": 5, "max_seq_length": args.max_seq_length,
              "batch_size": args.batch_size, "ours_precision": choose_precision("auto", "cpu"), "seconds": seconds, "examples_per_second": rate,
              "memory_plans": PLANS, "peak_rss_gb": peaks, "command": " ".join(["bench_train_speed.py", *sys.argv[1:]]),
              "ratios_over_plain": {k: rate[k] / rate["plain"] for k in sides if k != "plain"}}
    if "ours" in rate:
        result["ratio_ours_over_plain"] = rate["ours"] / rate["plain"]
        result["ratios_over_ours"] = {k: rate[k] / rate["ours"] for k in sides if k not in ("plain", "ours")}
    save(args.name or f"train-speed-{args.dataset}", result)
    print(result)


def _side(name: str, rows: str, out: str, batch_size: str, max_seq_length: str, seed: str, result: str) -> None:
    """One timed run of one side, in this (fresh) process; writes its seconds and memory plan to ``result``."""
    seconds = SIDES[name](load_training_data(rows), Path(out), int(batch_size), int(max_seq_length), int(seed))
    # VmHWM: this process's own peak (ru_maxrss would carry the parent's peak across the fork and exec)
    status = Path("/proc/self/status").read_text()
    peak = int(next(line.split()[1] for line in status.splitlines() if line.startswith("VmHWM:"))) * 1024 / 1e9
    Path(result).write_text(json.dumps({"seconds": seconds, "plan": PLANS.get(name), "peak_rss_gb": round(peak, 3)}))


if __name__ == "__main__":
    if len(sys.argv) > 1 and sys.argv[1] == "_side":
        _side(*sys.argv[2:])
    else:
        main()
