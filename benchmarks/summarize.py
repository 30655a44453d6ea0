"""Print the README tables from the result files, so no number is copied by hand.

    python benchmarks/summarize.py
"""

from __future__ import annotations

import json
import sys

from common import RESULTS


def results(pattern: str) -> list[dict]:
    """Every result file matching ``pattern`` in benchmarks/results, parsed, in name order."""
    return [json.loads(path.read_text()) for path in sorted(RESULTS.glob(pattern))]


def verdict(data: dict, a: str, b: str, metric: str = "ndcg@10") -> str:
    c = next((c for c in data["comparisons"] if (c["baseline"], c["candidate"], c["metric"]) == (a, b, metric)), None)
    return f"{c['delta']:+.3f} [{c['ci95'][0]:+.3f}, {c['ci95'][1]:+.3f}] {c['verdict']}" if c else "–"


def measured_at(bench: dict) -> str:
    """The commit and the CPU's precision a result was measured with ("not recorded" for results from before both)."""
    cpu = {True: "bf16 CPU", False: "fp32 CPU (no native bf16)"}.get(bench.get("cpu_native_bf16"), "CPU not recorded")
    return f"{bench.get('commit', 'commit not recorded')}, {cpu}"


def defaults_table() -> list[str]:
    rows = ["| dataset (test split) | test queries | about seen documents | method chosen | gate (decided by) | base | "
            "served, dense | served vs base, nDCG@10 (95% CI) | fusion chosen | served with fusion | wall time | peak RSS | "
            "measured at |",
            "|---|---:|---:|---|---|---:|---:|---|---|---:|---:|---:|---|"]
    for d in results("defaults-*.json"):
        o, b, card = d["overall"], d["benchmark"], d["training_card"]
        if "method" not in card:  # a result of the earlier defaults (full fine-tune only), kept in results/earlier
            continue
        g = card["gate"]
        tuned = "finetuned" in o
        served = o["finetuned"]["ndcg@10"] if tuned else o["base"]["ndcg@10"]
        fused = o["finetuned+fusion"]["ndcg@10"] if "finetuned+fusion" in o else served
        share = card["config"].get("seen_share") or 0
        rows.append(f"| {b['dataset']} | {d['n_queries']} | {share:.0%} | {card.get('chosen', card['method'])} | "
                    f"{g['verdict']} ({g.get('decided_by', 'all')}) | {o['base']['ndcg@10']:.3f} | {served:.3f} | "
                    f"{verdict(d, 'base', 'finetuned') if tuned else '+0 (the base stays)'} | "
                    f"{(b.get('fusion') or {}).get('name', 'dense (base)')} | {fused:.3f} | {b['wall_seconds'] / 60:.0f} min "
                    f"(training {b['train_seconds'] / 60:.0f}) | {b.get('peak_rss_gb', '–')} GB | {measured_at(b)} |")
    return rows


def candidates_table() -> list[str]:
    rows = ["| dataset | candidate | re-index | validation: unseen documents | seen documents | deciding | verdict |",
            "|---|---|:---:|---|---|---|---|"]

    def cell(sub: dict) -> str:
        return f"{sub['delta']:+.3f} [{sub['ci95'][0]:+.3f}, {sub['ci95'][1]:+.3f}] (n={sub['n']})" if sub.get("delta") is not None else "–"

    for d in results("defaults-*.json"):
        card = d["training_card"]
        for name, c in (card.get("candidates") or {}).items():
            g = c["gate"]
            subs = g.get("subsets", {})
            chosen = " **(chosen)**" if name == card.get("chosen") else ""
            rows.append(f"| {d['benchmark']['dataset']} | {name}{chosen} | {'yes' if c['reindex'] else 'no'} | "
                        f"{cell(subs.get('unseen documents', {}))} | {cell(subs.get('seen documents', {}))} | "
                        f"{g.get('decided_by')}: {cell(subs.get(g.get('decided_by'), {}))} | {g['verdict']} |")
    return rows


def adapter_table() -> list[str]:
    rows = ["| dataset (test split) | base | adapter | adapter vs base, nDCG@10 (95% CI) | full fine-tune | adapter training | "
            "documents re-encoded |", "|---|---:|---:|---|---:|---:|---:|"]
    for d in results("adapter-*.json"):
        o, b = d["overall"], d["benchmark"]
        full = f"{o['full fine-tune']['ndcg@10']:.3f}" if "full fine-tune" in o else "–"
        defaults = RESULTS / f"defaults-{b['dataset']}.json"
        if "full fine-tune" not in o and defaults.exists():  # the same model, evaluated by bench_defaults.py
            full = f"{json.loads(defaults.read_text())['overall']['finetuned']['ndcg@10']:.3f}"
        rows.append(f"| {b['dataset']} | {o['base']['ndcg@10']:.3f} | {o['adapter']['ndcg@10']:.3f} | {verdict(d, 'base', 'adapter')} | "
                    f"{full} | {b['adapter_train_seconds']:.0f} s | {b['documents_encoded_by_base_after_training']} |")
    return rows


def inference_table() -> list[str]:
    rows = ["| backend (SciFact) | query p50 ms | p95 ms | queries/s | encode docs/s | `ace index` docs/s | index / encode | "
            "nDCG@10 (test) | min cosine vs torch | `auto` may pick |", "|---|---:|---:|---:|---:|---:|---:|---:|---:|---|"]
    for d in results("inference-*.json"):
        for r in d["rows"]:
            e = d["exports"].get(r["served"], {})
            cos = f"{e['min_cosine']:.4f}" if e else "1"
            pick = "–" if not e else ("yes" if not e["auto_skips_because"] else f"no: {e['auto_skips_because']}")
            name = f"**{r['served']}** (auto)" if r["served"] == d["auto_choice"] else r["served"]
            rows.append(f"| {name} | {r['query_p50_ms']:.1f} | {r['query_p95_ms']:.1f} | {r['queries_per_s']:.0f} | "
                        f"{r['encode_docs_per_s']:.0f} | {r['index_docs_per_s']:.0f} | {r['index_over_encode']:.2f} | "
                        f"{r['ndcg@10']:.4f} | {cos} | {pick} |")
        a = d["auto_vs_torch"]
        rows.append(f"\n`auto` = {d['auto_choice']}: query throughput x{a['query_throughput_ratio']}, indexing "
                    f"x{a['index_throughput_ratio']}, nDCG@10 {a['ndcg@10_delta']:+.4f} against torch.")
    return rows


def scale_table() -> list[str]:
    path = RESULTS / "scale.json"
    if not path.exists():
        return []
    rows = ["| documents | engine | indexing (write + optimise) | hybrid p50 ms | p95 ms |", "|---:|---|---:|---:|---:|"]
    for r in json.loads(path.read_text())["rows"]:
        rows.append(f"| {r['documents']:,} | {r['engine']} | {r['index_s']:.0f} s ({r['write_s']:.0f} + {r['optimize_s']:.0f}) | "
                    f"{r['hybrid_p50_ms']:.1f} | {r['hybrid_p95_ms']:.1f} |")
    return rows


TABLES = {"defaults": defaults_table, "candidates": candidates_table, "adapter": adapter_table, "inference": inference_table, "scale": scale_table}

if __name__ == "__main__":
    for name in sys.argv[1:] or list(TABLES):
        print("\n".join(TABLES[name]()), end="\n\n")
