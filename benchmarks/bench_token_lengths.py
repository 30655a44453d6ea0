"""Token lengths of each dataset's documents and queries under the bundled model (truncated at its max_seq_length):
the 95th and 99th percentiles, the longest, and the share that reaches the limit. A batch is padded to its longest
text, so what the training plan and the encoding batch must be sized by is the longest, not the typical (issue #40).
Also what ``longest_tokens`` (an even sample of 2,048 texts) and the old 95th-percentile rule (a sample of 256) say.

    python benchmarks/bench_token_lengths.py scifact cosqa stackfaq perspectrum

Writes benchmarks/results/token-lengths.json.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import dataset_dir, save  # noqa: E402


def _lengths(model, texts: list[str]) -> dict:
    from ace_llamaindex.embeddings.encoding import longest_tokens

    ids = model.tokenizer(texts, truncation=True, max_length=model.max_seq_length)["input_ids"]
    n = np.array([len(i) for i in ids])
    old_sample = texts[:: max(1, len(texts) // 256)][:256]
    old = model.tokenizer(old_sample, truncation=True, max_length=model.max_seq_length)["input_ids"]
    return {"texts": len(texts), "p50": int(np.percentile(n, 50)), "p95": int(np.percentile(n, 95)),
            "p99": int(np.percentile(n, 99)), "longest": int(n.max()),
            "share_at_max_seq_length": round(float((n >= model.max_seq_length).mean()), 4),
            "longest_tokens_rule": longest_tokens(model, texts),
            "old_p95_rule": int(min(model.max_seq_length, np.percentile([len(i) for i in old], 95)))}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("datasets", nargs="+", help="folder names under ../shared/data")
    a = p.parse_args()
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    from ace_llamaindex.data.beir import load_beir
    from ace_llamaindex.embeddings.models import open_model

    model = open_model(None)
    out = {"model_max_seq_length": model.max_seq_length, "datasets": {}}
    for name in a.datasets:
        ds = load_beir(str(dataset_dir(name)), split="test")
        out["datasets"][name] = {"documents": _lengths(model, list(ds.corpus.values())),
                                 "queries": _lengths(model, list(ds.queries.values()))}
        print(name, out["datasets"][name], flush=True)
    print(save("token-lengths", out))


if __name__ == "__main__":
    main()
