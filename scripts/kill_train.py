"""Reliability check, not a test: kill -9 `ace train` at a random moment, N times, and check that the output path
always holds a loadable model (the previous one, or the new one when the kill came after the swap).

    python scripts/kill_train.py --runs 5

Prints one line per run and a summary; exit code 1 if any run left an unloadable model.
"""

from __future__ import annotations

import argparse
import os
import random
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ENV = {**os.environ, "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}
ACE = [sys.executable, "-m", "ace_llamaindex.cli"]


def loadable(path: Path) -> bool:
    probe = "import sys; from sentence_transformers import SentenceTransformer; SentenceTransformer(sys.argv[1]).encode(['x'])"
    return subprocess.run([sys.executable, "-c", probe, str(path)], env=ENV, capture_output=True).returncode == 0


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    rng = random.Random(args.seed)
    work = Path(tempfile.mkdtemp(prefix="ace-kill-"))
    data, model = work / "training_data.json", work / "model"
    subprocess.run([*ACE, "mine", "-o", str(data), "--num-negatives", "2"], env=ENV, check=True, capture_output=True)
    train = [*ACE, "train", str(data), "-o", str(model), "--epochs", "2", "--batch-size", "16", "--force"]
    started = time.monotonic()
    subprocess.run(train, env=ENV, check=True, capture_output=True)
    full = time.monotonic() - started
    bad = 0
    for run in range(1, args.runs + 1):
        delay = rng.uniform(0.5, full)
        proc = subprocess.Popen(train, env=ENV, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        time.sleep(delay)
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        ok = loadable(model)
        bad += not ok
        print(f"run {run}: kill -9 after {delay:.1f} s of ~{full:.0f} s -> model at output {'loads' if ok else 'DOES NOT LOAD'}",
              flush=True)
    print(f"{args.runs - bad}/{args.runs} kills left a loadable model at {model}")
    sys.exit(1 if bad else 0)


if __name__ == "__main__":
    main()
