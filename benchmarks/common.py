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
