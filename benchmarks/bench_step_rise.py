"""How far a CachedMNRL training step rises above what the process held when it planned, against the plan's estimate,
per mini-batch size and precision (issue #40: the memory plan's calibration).

    python benchmarks/bench_step_rise.py scifact --mini-batch-sizes 1,2,4,8,16 --precisions fp32
    python benchmarks/bench_step_rise.py cosqa --mini-batch-sizes 2,8 --precisions fp32,bf16
    python benchmarks/bench_step_rise.py scifact --mini-batch-sizes 8 --mmap-thresholds default,1048576,4194304

Each run trains the full fine-tune in its own process on the dataset's first ``--examples`` training queries with
5 mined hard negatives (the documents at ``--max-seq-length`` tokens), ``--steps`` optimizer steps of batch 32,
CachedMNRL at the given mini-batch, no validation. Reported per run: the process's peak (VmHWM), what it held when
it planned (the card's ``memory_plan``), the optimizer state, and the **step's rise**: peak - held - optimizer
state, the part the plan budgets as its estimated step plus ``HEADROOM_GB``. ``--mmap-thresholds`` runs each also with
glibc's mmap threshold fixed (``MALLOC_MMAP_THRESHOLD_``, bytes; ``default``: glibc's own, which climbs to 32 MB):
blocks from that size up go back to the system when freed. Runs go in the order given, then back.
Writes benchmarks/results/step-rise-<dataset>.json and .md (``--name``).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from pathlib import Path

from common import RESULTS, commit, first_examples, save

from ace_llamaindex.train.training import HEADROOM_GB, cpu_has_native_bf16

_CHILD = """
import json, sys
from ace_llamaindex.mine.mining import load_training_data
from ace_llamaindex.train import training
rows, out, mini, precision, steps, length = sys.argv[1], sys.argv[2], int(sys.argv[3]), sys.argv[4], int(sys.argv[5]), int(sys.argv[6])
config = training.TrainConfig(epochs=1, batch_size=32, max_seq_length=length, val_fraction=0.0, device="cpu",
                              cached_loss=True, mini_batch_size=mini, precision=precision, extra={"max_steps": steps})
card = training.train(load_training_data(rows), out, config).card
hwm = next(int(l.split()[1]) for l in open("/proc/self/status") if l.startswith("VmHWM"))
print("RESULT " + json.dumps({"peak_rss_gb": round(hwm * 1024 / 1e9, 3), "plan": card.memory_plan,
                              "train_seconds": card.train_seconds}))
"""


def _examples(dataset: str, n: int, work: Path) -> Path:
    from ace_llamaindex.mine.mining import save_training_data

    path = work / f"{dataset}-{n}.json"
    if not path.exists():
        examples = first_examples(dataset, n)
        save_training_data(examples, path, source=f"{dataset} train, {len(examples)} queries")
    return path


def _run(rows: Path, work: Path, mini: int, precision: str, threshold: str, steps: int, length: int) -> dict:
    env = {k: v for k, v in os.environ.items() if k != "MALLOC_MMAP_THRESHOLD_"}
    env.update(HF_HUB_OFFLINE="1", TOKENIZERS_PARALLELISM="false")
    if threshold != "default":
        env["MALLOC_MMAP_THRESHOLD_"] = threshold
    run = subprocess.run([sys.executable, "-c", _CHILD, str(rows), str(work / f"out-{precision}-{mini}"), str(mini),
                          precision, str(steps), str(length)], env=env, capture_output=True, text=True)
    line = next((x for x in run.stdout.splitlines() if x.startswith("RESULT ")), None)
    if line is None:
        raise SystemExit(f"mini-batch {mini} ({precision}) failed:\n{run.stderr[-3000:]}")
    result = json.loads(line.removeprefix("RESULT "))
    plan = result["plan"]
    result.update(mini_batch_size=mini, precision=precision, mmap_threshold=threshold, held_gb=plan["resident_gb"],
                  optimizer_gb=plan["optimizer_gb"], estimated_step_gb=plan["estimated_step_gb"],
                  rise_gb=round(result["peak_rss_gb"] - plan["resident_gb"] - plan["optimizer_gb"], 3),
                  budgeted_gb=round(plan["estimated_step_gb"] + HEADROOM_GB, 3))
    return result


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("dataset")
    p.add_argument("--mini-batch-sizes", default="1,2,4,8,16")
    p.add_argument("--precisions", default="fp32", help="comma-separated, of fp32, bf16")
    p.add_argument("--mmap-thresholds", default="default", help="comma-separated: default, or bytes")
    p.add_argument("--examples", type=int, default=64)
    p.add_argument("--steps", type=int, default=2)
    p.add_argument("--max-seq-length", type=int, default=256)
    p.add_argument("--name", default=None, help="result name (default step-rise-<dataset>)")
    p.add_argument("--work", type=Path, default=RESULTS / ".step-rise-run")
    a = p.parse_args()
    a.work.mkdir(parents=True, exist_ok=True)
    rows = _examples(a.dataset, a.examples, a.work)
    order = [(m, prec, t) for prec in a.precisions.split(",") for t in a.mmap_thresholds.split(",")
             for m in map(int, a.mini_batch_sizes.split(","))]
    runs: list[dict] = []
    for m, prec, t in [*order, *reversed(order)]:
        runs.append(_run(rows, a.work, m, prec, t, a.steps, a.max_seq_length))
        r = runs[-1]
        print(f"{prec} mmap threshold {t} mini-batch {m}: peak {r['peak_rss_gb']} GB, held {r['held_gb']}, rise {r['rise_gb']} GB "
              f"(budgeted {r['budgeted_gb']}), {r['train_seconds']} s", flush=True)
    result = {"command": " ".join([Path(sys.argv[0]).name, *sys.argv[1:]]), "commit": commit(),
              "cpu_native_bf16": cpu_has_native_bf16(), "torch_threads": _threads(), "dataset": a.dataset,
              "examples": a.examples, "steps": a.steps, "max_seq_length": a.max_seq_length,
              "headroom_gb": HEADROOM_GB, "runs": runs}
    name = a.name or f"step-rise-{a.dataset}"
    save(name, result)
    lines = [f"# A CachedMNRL step's rise above what was held ({a.dataset}, {a.max_seq_length} tokens, commit "
             f"{result['commit']})", "", f"`{result['command']}`: each run in its own process, in order then back.", "",
             "| precision | mmap threshold | mini-batch | peak (VmHWM) GB | held at plan | optimizer | rise | "
             "plan's step + headroom | s |", "|---|---|---:|---:|---:|---:|---:|---:|---:|"]
    lines += [f"| {r['precision']} | {r['mmap_threshold']} | {r['mini_batch_size']} | {r['peak_rss_gb']} | {r['held_gb']} | {r['optimizer_gb']} | "
              f"{r['rise_gb']} | {r['budgeted_gb']} | {r['train_seconds']} |" for r in runs]
    (RESULTS / f"{name}.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


def _threads() -> int:
    import torch

    return torch.get_num_threads()


if __name__ == "__main__":
    main()
