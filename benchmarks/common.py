"""Shared helpers for the benchmarks: dataset paths, timing, result files."""

from __future__ import annotations

import os
import subprocess
import time
from contextlib import contextmanager
from pathlib import Path

ROOT = Path(__file__).resolve().parent
DATA = Path(os.environ.get("ACE_BENCH_DATA", ROOT.parent.parent / "shared" / "data"))
RESULTS = ROOT / "results"
CACHE = ROOT / ".cache"


@contextmanager
def timed(store: dict, key: str):
    started = time.perf_counter()
    yield
    store[key] = round(time.perf_counter() - started, 1)


def commit(tree: Path = ROOT) -> str:
    """The commit a checkout (this one, or a worktree being measured) is at, with ``+changes`` when its tracked code
    or docs differ from it."""
    git = ["git", "-C", str(tree)]
    head = subprocess.run([*git, "rev-parse", "--short", "HEAD"], capture_output=True, text=True).stdout.strip()
    dirty = subprocess.run([*git, "status", "--porcelain", "--untracked-files=no", "--", ".", ":!benchmarks/results"],
                           capture_output=True, text=True).stdout  # results written by earlier runs do not count
    return head + ("+changes" if dirty.strip() else "")


def save(name: str, data: dict) -> Path:
    from ace_llamaindex.atomic import write_json

    return write_json(RESULTS / f"{name}.json", data)


def dataset_dir(name: str) -> Path:
    path = DATA / name
    if not (path / "corpus.jsonl").exists():
        raise SystemExit(f"{path} is not a BEIR folder; set ACE_BENCH_DATA to the folder holding {name}/")
    return path


def first_examples(dataset: str, n: int) -> list:
    """The dataset's first ``n`` training queries (sorted ids), each with 5 hard negatives mined by the base model
    (corpus vectors cached in ``CACHE``): the rows the training-speed and step-memory benchmarks train on."""
    from ace_llamaindex.data.beir import load_beir
    from ace_llamaindex.embeddings.encoding import CachedEncoder
    from ace_llamaindex.mine.mining import HardNegativeMiner, MiningOptions

    data = load_beir(dataset_dir(dataset), "train")
    data = data.subset(sorted(data.queries)[:n])
    return HardNegativeMiner("dense", CachedEncoder(cache_dir=CACHE, show_progress=False), show_progress=False,
                             options=MiningOptions(num_negatives=5, relative_margin=0.05)).mine(data)[:n]
