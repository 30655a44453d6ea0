"""Rollout at scale, measured in one run: documents per second with 1 vs N encoding processes (``--workers``), the
time a kill at 50% costs when the next rollout resumes vs when it starts again, and ``--dry-run``'s estimates.

    python benchmarks/bench_scale_out.py [--dataset scifact] [--docs 1500] [--workers 2] [--engine edge]

The first ``--docs`` documents of a real BEIR corpus (``../shared/data`` or ``ACE_BENCH_DATA``) are indexed with the
bundled all-MiniLM-L6-v2 (``ace index``), and the same model is rolled out over them again (``--force``: the point is
the cost of re-embedding every document, not which model wins). Every rollout is the CLI in a fresh process, on its
own copy of the indexed folder, so each pays its own start-up and model load, as in production:

- ``ace rollout --workers 1`` and ``--workers N``: wall time and documents per second of the rollout itself (its
  ``encode_seconds``: reading, encoding, writing, the checks; starting the worker processes included for N);
- a rollout killed (``kill -9``) once half the documents are written, then on two copies of what it left:
  ``ace rollout`` (it resumes) and ``ace rollout --no-resume`` (it starts again). Time lost to the kill: killed run +
  next run - an uninterrupted run;
- ``ace rollout --dry-run --workers 1`` and ``--workers N``: the estimate against the measured time.

Then the training throughput section (:func:`training_throughput`: ``bench_scale_out_training.py``, 1 vs N
processes; ``--training results`` folds in its last results file instead of running it, ``--training skip`` leaves it
out). Writes benchmarks/results/scale-out-<dataset>.json and .md.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

from common import RESULTS, dataset_dir, save

ENV = {**os.environ, "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}
HERE = Path(__file__).resolve().parent
MODEL = "bundled:all-MiniLM-L6-v2"

# A rollout that kills itself (SIGKILL, nothing cleaned up) once half the documents are in the new collection
KILLED_HALFWAY = """
import os, signal, sys
from ace_llamaindex.deploy.rollout import rollout

def halfway(documents_written):
    if documents_written >= int(sys.argv[4]) // 2:
        print(documents_written, flush=True)
        os.kill(os.getpid(), signal.SIGKILL)

rollout(sys.argv[1], "bench", path=sys.argv[2], engine=sys.argv[3], batch_size=int(sys.argv[5]), show_progress=False,
        on_batch=halfway, force=True)
"""


def ace(*args: str) -> tuple[dict, float]:
    """An ``ace`` command in a fresh process: its JSON answer and its wall time."""
    started = time.perf_counter()
    done = subprocess.run([sys.executable, "-m", "ace_llamaindex.cli", *args, "--json"], capture_output=True, text=True,
                          env=ENV)
    wall = time.perf_counter() - started
    if done.returncode:
        raise SystemExit(f"ace {' '.join(args)} failed ({done.returncode}):\n{done.stderr[-3000:]}")
    return json.loads(done.stdout), round(wall, 1)


def rollout_row(what: str, report: dict, wall: float) -> dict:
    return {"run": what, "workers": report["workers"], "resumed": report["resumed"], "embedded": report["embedded"],
            "wall_s": wall, "rollout_s": report["encode_seconds"],
            "docs_per_s": round(report["embedded"] / report["encode_seconds"], 1) if report["encode_seconds"] else None,
            "load_average_1min": round(os.getloadavg()[0], 2)}  # other work on the machine slows a run down: said


def index_corpus(folder: Path, dataset: str, docs: int, engine: str, workers: int) -> dict:
    """The first ``docs`` documents of ``dataset`` as a BEIR folder, indexed with the base model by ``ace index``."""
    source = dataset_dir(dataset)
    subset = folder.parent / f"{dataset}-{docs}"
    subset.mkdir(parents=True, exist_ok=True)
    with (source / "corpus.jsonl").open(encoding="utf-8") as rows, (subset / "corpus.jsonl").open("w") as out:
        kept = []
        for line in rows:
            if len(kept) == docs:
                break
            kept.append(json.loads(line)["_id"])
            out.write(line)
    # one query about a kept document, so the folder loads as a dataset (indexing reads only the corpus)
    (subset / "queries.jsonl").write_text(json.dumps({"_id": "q0", "text": "a query"}) + "\n")
    (subset / "qrels").mkdir(exist_ok=True)
    (subset / "qrels" / "test.tsv").write_text(f"query-id\tcorpus-id\tscore\nq0\t{kept[0]}\t1\n")
    started = time.perf_counter()
    done = subprocess.run([sys.executable, "-m", "ace_llamaindex.cli", "index", str(subset), "--qdrant-path", str(folder),
                           "--collection", "bench", "--engine", engine, "--workers", str(workers)],
                          capture_output=True, text=True, env=ENV)
    if done.returncode:
        raise SystemExit(f"ace index failed:\n{done.stderr[-3000:]}")
    return {"documents": len(kept), "workers": workers, "wall_s": round(time.perf_counter() - started, 1)}


def training_throughput(mode: str) -> dict | None:
    """THE TRAINING SECTION: training throughput, 1 vs N processes, is ``benchmarks/bench_scale_out_training.py``'s
    (its own options and defaults). ``run``: run it as it is, when it exists (it rewrites its own
    results/scale-out-training.json); ``results``: fold in that file as it last wrote it; ``skip``: leave it out."""
    script, path = HERE / "bench_scale_out_training.py", RESULTS / "scale-out-training.json"
    if mode == "skip" or not script.is_file():
        return None
    if mode == "results":
        return {**json.loads(path.read_text()), "source": f"{path.name}, as written by {script.name}"} \
            if path.is_file() else None
    done = subprocess.run([sys.executable, str(script)], capture_output=True, text=True, env=ENV, cwd=HERE)
    if done.returncode:
        return {"error": f"{script.name} failed ({done.returncode}): {done.stderr[-1000:]}"}
    return json.loads(path.read_text()) if path.is_file() else {"stdout": done.stdout[-2000:]}


def markdown(result: dict) -> str:
    r = result
    lines = [f"## Rollout at scale — {r['dataset']} ({r['documents']} documents, {r['engine']}, {r['cpu_cores']} CPU "
             f"cores, {'a GPU' if r['gpu'] else 'no GPU'})", "",
             f"Indexed by `ace index --workers {r['index']['workers']}` in {r['index']['wall_s']} s. Every rollout re-embeds "
             f"every document with {MODEL}, in a fresh process (start-up and model load in its wall time).", "",
             "| run | workers | already in it | embedded | rollout s | docs/s | wall s | load average after |",
             "|---|---:|---:|---:|---:|---:|---:|---:|"]
    for row in r["rollouts"]:
        lines.append(f"| {row['run']} | {row['workers']} | {row['resumed']} | {row['embedded']} | {row['rollout_s']} | "
                     f"{row['docs_per_s']} | {row['wall_s']} | {row['load_average_1min']} |")
    k = r["kill_at_half"]
    lines += ["", f"Killed (`kill -9`) at {k['killed_at']} of {r['documents']} documents after {k['killed_wall_s']} s. "
              "Time lost to the kill (killed run + next run - uninterrupted run, wall):", "",
              "| next rollout | its wall s | lost s |", "|---|---:|---:|",
              f"| resumes | {k['resume_wall_s']} | {k['lost_resume_s']} |",
              f"| starts again (--no-resume) | {k['restart_wall_s']} | {k['lost_restart_s']} |", "",
              "| --dry-run estimate | estimated s | measured rollout s |", "|---|---:|---:|"]
    for e in r["dry_run"]:
        lines.append(f"| --workers {e['workers']} | {e['estimate_s']} | {e['measured_s']} |")
    lines += ["", f"Speed-up of {r['workers']} workers over 1 (rollout docs/s): **{r['speedup_workers']}**; "
              f"1-minute load average at the end: {r['load_average_1min']}."]
    if r.get("training"):
        t = r["training"]
        if "runs" in t:
            lines += ["", "### Training throughput, 1 vs N processes (bench_scale_out_training.py)", "",
                      f"{t.get('source', 'run by this benchmark')}: {t.get('examples')} examples, global batch "
                      f"{t.get('global_batch')}.", "",
                      "| processes | threads each | examples/s | train s | wall s |", "|---:|---|---:|---:|---:|"]
            lines += [f"| {x['processes']} | {x.get('threads_per_process', '')} | {x.get('examples_per_second')} | "
                      f"{x['train_seconds']} | {x['wall_seconds']} |" for x in t["runs"]]
        else:
            lines += ["", f"Training section: {t}"]
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--dataset", default="scifact")
    parser.add_argument("--docs", type=int, default=1500, help="the first DOCS documents of the corpus")
    parser.add_argument("--workers", type=int, default=2, help="the N of the N-worker runs")
    parser.add_argument("--engine", default="edge", choices=["edge", "local"])
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--training", choices=["run", "results", "skip"], default="run",
                        help="the training throughput section: run bench_scale_out_training.py, fold in its last "
                             "results file, or skip it")
    args = parser.parse_args()

    work = RESULTS / ".scale-out-rollout-run"
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir(parents=True)
    base = work / "indexed"
    indexed = index_corpus(base, args.dataset, args.docs, args.engine, args.workers)
    copies = {name: work / name for name in ("one", "many", "killed", "restart", "dry")}
    for folder in copies.values():
        shutil.copytree(base, folder)
    where = ["--collection", "bench", "--engine", args.engine, "--batch-size", str(args.batch_size), "--force"]

    estimates = []
    for n in (1, args.workers):
        report, _ = ace("rollout", MODEL, "--qdrant-path", str(copies["dry"]), *where, "--workers", str(n), "--dry-run")
        estimates.append({"workers": n, "estimate_s": report["encode_seconds"]})
    rows = []
    report, wall = ace("rollout", MODEL, "--qdrant-path", str(copies["one"]), *where, "--workers", "1")
    rows.append(rollout_row("uninterrupted", report, wall))
    report, wall = ace("rollout", MODEL, "--qdrant-path", str(copies["many"]), *where, "--workers", str(args.workers))
    rows.append(rollout_row("uninterrupted", report, wall))
    for estimate, row in zip(estimates, rows, strict=True):
        estimate["measured_s"] = row["rollout_s"]

    started = time.perf_counter()
    killed = subprocess.run([sys.executable, "-c", KILLED_HALFWAY, MODEL, str(copies["killed"]), args.engine,
                             str(indexed["documents"]), str(args.batch_size)], capture_output=True, text=True, env=ENV)
    killed_wall = round(time.perf_counter() - started, 1)
    if killed.returncode != -signal.SIGKILL:
        raise SystemExit(f"the rollout to kill ended with {killed.returncode}:\n{killed.stderr[-3000:]}")
    shutil.rmtree(copies["restart"])
    shutil.copytree(copies["killed"], copies["restart"])  # what the kill left, twice
    report, resume_wall = ace("rollout", MODEL, "--qdrant-path", str(copies["killed"]), *where)
    rows.append(rollout_row("after the kill: resumes", report, resume_wall))
    report, restart_wall = ace("rollout", MODEL, "--qdrant-path", str(copies["restart"]), *where, "--no-resume")
    rows.append(rollout_row("after the kill: starts again", report, restart_wall))
    whole = rows[0]["wall_s"]

    result = {
        "dataset": args.dataset, "documents": indexed["documents"], "engine": args.engine, "model": MODEL,
        "batch_size": args.batch_size, "workers": args.workers, "cpu_cores": len(os.sched_getaffinity(0)),
        "gpu": shutil.which("nvidia-smi") is not None, "index": indexed, "rollouts": rows, "dry_run": estimates,
        "kill_at_half": {"killed_at": int(killed.stdout.split()[-1]), "killed_wall_s": killed_wall,
                         "resume_wall_s": resume_wall, "restart_wall_s": restart_wall,
                         "lost_resume_s": round(killed_wall + resume_wall - whole, 1),
                         "lost_restart_s": round(killed_wall + restart_wall - whole, 1)},
        "speedup_workers": round(rows[1]["docs_per_s"] / rows[0]["docs_per_s"], 2),
        "load_average_1min": round(os.getloadavg()[0], 2),
    }
    shutil.rmtree(work, ignore_errors=True)
    save(f"scale-out-{args.dataset}", result)  # before the training section: a failure there keeps these
    result["training"] = training_throughput(args.training)
    save(f"scale-out-{args.dataset}", result)
    (RESULTS / f"scale-out-{args.dataset}.md").write_text(markdown(result))
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
