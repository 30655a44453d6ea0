"""Peak RSS and speed of encoding long documents on a CPU by batch size: what the gate, the adapters and the fusion
choice of ``ace train`` spend on SciFact's 256-token abstracts (issue #40).

    python benchmarks/bench_encode_memory.py scifact --docs 1000 --batch-sizes 64,32,16

Each batch size encodes the ``--docs`` longest documents of the corpus with the bundled model (fp32, no cache) in
its own process, in the order given and then back; peak RSS is the process's VmHWM, speed the documents per second
of the encode call (mean of the two runs). Writes benchmarks/results/encode-memory-<dataset>.json.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

ROOT = Path(__file__).resolve().parent.parent

_CHILD = """
import json, sys, time
from ace_llamaindex.data.beir import load_beir
from ace_llamaindex.embeddings.encoding import CachedEncoder
folder, docs, batch = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
corpus = load_beir(folder, split="test").corpus
texts = sorted(corpus.values(), key=len, reverse=True)[:docs]
encoder = CachedEncoder(batch_size=batch, cache_dir=False, show_progress=False)
encoder.encode_documents(texts[:8])  # the model loaded and warm before the clock starts
held = next(int(l.split()[1]) for l in open("/proc/self/status") if l.startswith("VmRSS"))
started = time.perf_counter()
encoder.encode_documents(texts[8:])
seconds = time.perf_counter() - started
hwm = next(int(l.split()[1]) for l in open("/proc/self/status") if l.startswith("VmHWM"))
print("RESULT " + json.dumps({"batch_size": batch, "peak_rss_gb": round(hwm / 1e6, 3), "held_before_gb": round(held / 1e6, 3),
                              "seconds": round(seconds, 1), "docs_per_s": round((docs - 8) / seconds, 2)}))
"""


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("dataset")
    p.add_argument("--docs", type=int, default=1000)
    p.add_argument("--batch-sizes", default="64,32,16")
    a = p.parse_args()
    from common import commit, dataset_dir, save

    sizes = [int(x) for x in a.batch_sizes.split(",")]
    env = dict(os.environ, HF_HUB_OFFLINE="1", TOKENIZERS_PARALLELISM="false", PYTHONPATH=str(ROOT))
    runs: dict[int, list[dict]] = {b: [] for b in sizes}
    for b in [*sizes, *reversed(sizes)]:
        out = subprocess.run([sys.executable, "-c", _CHILD, str(dataset_dir(a.dataset)), str(a.docs), str(b)],
                             env=env, capture_output=True, text=True)
        line = next((x for x in out.stdout.splitlines() if x.startswith("RESULT ")), None)
        if line is None:
            raise SystemExit(out.stderr[-3000:])
        runs[b].append(json.loads(line.removeprefix("RESULT ")))
        print(runs[b][-1], flush=True)
    summary = {b: {"peak_rss_gb": round(sum(r["peak_rss_gb"] for r in rs) / len(rs), 3),
                   "docs_per_s": round(sum(r["docs_per_s"] for r in rs) / len(rs), 2)} for b, rs in runs.items()}
    first = summary[sizes[0]]["docs_per_s"]
    for s in summary.values():
        s["speed_vs_first"] = round(s["docs_per_s"] / first, 3)
    save(f"encode-memory-{a.dataset}", {"command": " ".join([Path(sys.argv[0]).name, *sys.argv[1:]]), "commit": commit(),
                                        "docs": a.docs, "cpu_cores": os.cpu_count(), "summary": summary, "runs": runs})
    print(json.dumps(summary, indent=1))


if __name__ == "__main__":
    main()
