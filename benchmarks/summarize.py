"""Print the README tables from the result files, so no number is copied by hand.

    python benchmarks/summarize.py
"""

from __future__ import annotations

import json
import sys

from common import RESULTS


def verdict(data: dict, a: str, b: str, metric: str = "ndcg@10") -> str:
    c = next((c for c in data["comparisons"] if (c["baseline"], c["candidate"], c["metric"]) == (a, b, metric)), None)
    return f"{c['delta']:+.3f} [{c['ci95'][0]:+.3f}, {c['ci95'][1]:+.3f}] {c['verdict']}" if c else "–"


def defaults_table() -> list[str]:
    rows = ["| dataset (test split) | queries | base | fine-tuned | fine-tuned vs base, nDCG@10 (95% CI) | plain RRF | "
            "fusion chosen on validation | `fusion=\"auto\"` | ≥ max(dense, RRF) − 0.005 | wall time |",
            "|---|---:|---:|---:|---|---:|---|---:|:---:|---:|"]
    for path in sorted(RESULTS.glob("defaults-*.json")):
        d = json.loads(path.read_text())
        o, b = d["overall"], d["benchmark"]
        auto = o["finetuned+fusion"]["ndcg@10"]
        rechosen = RESULTS / f"fusion-{b['dataset']}.json"  # the fusion re-chosen by bench_fusion.py (current rule)
        if rechosen.exists():
            r = json.loads(rechosen.read_text())
            auto, b = r["overall"]["finetuned+fusion"]["ndcg@10"], {**b, "fusion": r["fusion"]}
        ok = auto >= max(o["finetuned"]["ndcg@10"], o["finetuned+hybrid"]["ndcg@10"]) - 0.005
        rows.append(f"| {b['dataset']} | {d['n_queries']} | {o['base']['ndcg@10']:.3f} | {o['finetuned']['ndcg@10']:.3f} | "
                    f"{verdict(d, 'base', 'finetuned')} | {o['finetuned+hybrid']['ndcg@10']:.3f} | {b['fusion']['name']} | "
                    f"{auto:.3f} | {'yes' if ok else '**no**'} | {b['wall_seconds'] / 60:.0f} min (training {b['train_seconds'] / 60:.0f}) |")
    return rows


def adapter_table() -> list[str]:
    rows = ["| dataset (test split) | base | adapter | adapter vs base, nDCG@10 (95% CI) | full fine-tune | adapter training | "
            "documents re-encoded |", "|---|---:|---:|---|---:|---:|---:|"]
    for path in sorted(RESULTS.glob("adapter-*.json")):
        d = json.loads(path.read_text())
        o, b = d["overall"], d["benchmark"]
        full = f"{o['full fine-tune']['ndcg@10']:.3f}" if "full fine-tune" in o else "–"
        defaults = RESULTS / f"defaults-{b['dataset']}.json"
        if "full fine-tune" not in o and defaults.exists():  # the same model, evaluated by bench_defaults.py
            full = f"{json.loads(defaults.read_text())['overall']['finetuned']['ndcg@10']:.3f}"
        rows.append(f"| {b['dataset']} | {o['base']['ndcg@10']:.3f} | {o['adapter']['ndcg@10']:.3f} | {verdict(d, 'base', 'adapter')} | "
                    f"{full} | {b['adapter_train_seconds']:.0f} s | {b['documents_encoded_by_base_after_training']} |")
    return rows


if __name__ == "__main__":
    which = sys.argv[1:] or ["defaults", "adapter"]
    for name in which:
        print("\n".join({"defaults": defaults_table, "adapter": adapter_table}[name]()), end="\n\n")
