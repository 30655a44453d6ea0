"""What a CPU training step leaves behind: peak RSS and speed of the full fine-tune with oneDNN's primitive cache
bounded or not and the heap trimmed after each step or not (``train/allocator.py``; issue #40).

    python benchmarks/bench_step_memory.py --steps 25
    python benchmarks/bench_step_memory.py --steps 25 --variants cache1024,cache1024+trim,cache8,cache8+trim,cache0+trim

Each variant trains the demo's full fine-tune (``ace train --method full`` defaults: the 2 GB budget's plan, bf16
where the CPU has it; one epoch of the shipped team memories' mined training rows, ``--steps`` optimizer steps) in
its own process: ``cacheN`` sets ``ONEDNN_PRIMITIVE_CACHE_CAPACITY=N`` (the user's value wins over the product's
bound; ``cache8`` is the product's default), ``+trim`` keeps the product's per-step heap trim, without it the trim is
patched out in that process. Peak RSS is the process's VmHWM and the peak sampled (every 20 ms) during
``trainer.train``; speed is the card's training seconds. Runs go in the order given, then back (ABC..CBA), and each
variant reports the mean of its two runs. Writes benchmarks/results/step-memory-demo.json and .md.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from ace_llamaindex.train.training import cpu_has_native_bf16  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent

_CHILD = """
import json, sys, threading, time
import psutil
from transformers import TrainerCallback
from ace_llamaindex.mine.mining import load_training_data
from ace_llamaindex.train import allocator, training
variant, data, out, steps = sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4])
if "+trim" not in variant:
    allocator.trim_heap = lambda: False
proc, phase, peak = psutil.Process(), ["setup"], {}
def sample():
    while True:
        peak[phase[0]] = max(peak.get(phase[0], 0), proc.memory_info().rss); time.sleep(0.02)
threading.Thread(target=sample, daemon=True).start()
class Phase(TrainerCallback):
    def on_train_begin(self, *a, **k): phase[0] = "train"
    def on_train_end(self, *a, **k): phase[0] = "after"
import transformers
original = transformers.Trainer.__init__
def init(self, *a, callbacks=None, **k):
    original(self, *a, callbacks=[*(callbacks or []), Phase()], **k)
transformers.Trainer.__init__ = init
config = training.TrainConfig(epochs=1, val_fraction=0.0, extra={"max_steps": steps})
result = training.train(load_training_data(data), out, config)
hwm = next(int(l.split()[1]) for l in open("/proc/self/status") if l.startswith("VmHWM"))
card = result.card.to_dict() if hasattr(result.card, "to_dict") else dict(result.card)
print("RESULT " + json.dumps({"variant": variant, "peak_rss_gb": round(hwm / 1e6, 3),
      "train_peak_rss_gb": round(peak.get("train", 0) / 1e9, 3), "train_seconds": card.get("train_seconds"),
      "optimizer_steps": card.get("optimizer_steps"), "memory_plan": card.get("memory_plan")}))
"""


def _run(variant: str, data: Path, steps: int, work: Path) -> dict:
    env = {k: v for k, v in os.environ.items() if k != "ONEDNN_PRIMITIVE_CACHE_CAPACITY"}
    env.update(HF_HUB_OFFLINE="1", TOKENIZERS_PARALLELISM="false", PYTHONPATH=str(ROOT),
               ONEDNN_PRIMITIVE_CACHE_CAPACITY=variant.split("+")[0].removeprefix("cache"))
    out = tempfile.mkdtemp(dir=work, prefix=f"{variant}-")
    run = subprocess.run([sys.executable, "-c", _CHILD, variant, str(data), out, str(steps)], env=env,
                         capture_output=True, text=True)
    line = next((x for x in run.stdout.splitlines() if x.startswith("RESULT ")), None)
    if line is None:
        raise SystemExit(f"{variant} failed:\n{run.stderr[-3000:]}")
    return json.loads(line.removeprefix("RESULT "))


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--steps", type=int, default=25, help="optimizer steps per run (the demo's epoch is 25)")
    p.add_argument("--variants", default="cache1024,cache1024+trim,cache8,cache8+trim,cache0+trim")
    p.add_argument("--work", type=Path, default=None)
    a = p.parse_args()
    from bench_memory import _mine
    from common import RESULTS, commit, save

    work = a.work or Path(tempfile.mkdtemp(prefix="bench-step-memory-"))
    work.mkdir(parents=True, exist_ok=True)
    data = work / "training_data.json"
    if not data.exists():
        _mine("demo", str(data))
    variants = a.variants.split(",")
    runs: dict[str, list[dict]] = {v: [] for v in variants}
    for v in [*variants, *reversed(variants)]:
        started = time.perf_counter()
        runs[v].append(_run(v, data, a.steps, work))
        print(f"{v}: {runs[v][-1]['peak_rss_gb']} GB peak, {runs[v][-1]['train_seconds']} s training "
              f"({time.perf_counter() - started:.0f} s)", flush=True)
    mean = lambda xs: round(sum(xs) / len(xs), 3)  # noqa: E731
    summary = {v: {"peak_rss_gb": mean([r["peak_rss_gb"] for r in rs]), "train_peak_rss_gb": mean(
        [r["train_peak_rss_gb"] for r in rs]), "train_seconds": mean([r["train_seconds"] for r in rs])} for v, rs in runs.items()}
    reference = summary[variants[0]]["train_seconds"]
    for s in summary.values():
        s["speed_vs_first"] = round(reference / s["train_seconds"], 3)
    at = commit()
    result = {"command": " ".join([Path(sys.argv[0]).name, *sys.argv[1:]]), "commit": at, "steps": a.steps,
              "cpu_cores": os.cpu_count(), "cpu_native_bf16": cpu_has_native_bf16(), "summary": summary,
              "runs": runs}
    save("step-memory-demo", result)
    lines = [f"# What a CPU training step leaves behind (demo, {a.steps} steps, commit {at})", "",
             f"`{result['command']}`: each variant twice, in order then back, each in its own process.", "",
             f"| variant | peak RSS (GB, VmHWM) | peak during training (GB) | training s | speed vs {variants[0]} |",
             "|---|---:|---:|---:|---:|"]
    lines += [f"| {v} | {s['peak_rss_gb']} | {s['train_peak_rss_gb']} | {s['train_seconds']} | {s['speed_vs_first']}x |"
              for v, s in summary.items()]
    (RESULTS / "step-memory-demo.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
