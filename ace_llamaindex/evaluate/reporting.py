"""Evaluation reports: JSON for machines, a markdown table for people, a PNG chart per category."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from ..atomic import write_json, write_text
from ..plugins.manager import components, get
from ..records.card import TrainingCard
from ..records.plan import ServingPlan
from ..records.verdict import Comparison, SystemComparison, ci_text

HEADLINE = ("recall@1", "recall@5", "recall@10", "mrr@10", "ndcg@10", "cosine")


def write_json_report(report: dict[str, Any], path: str | Path) -> Path:
    """The full report (per-query rows included) as JSON, written atomically."""
    return write_json(path, report)


def _table(rows: dict[str, dict[str, float]], metrics: list[str], label: str = "system") -> list[str]:
    lines = [f"| {label} | " + " | ".join(metrics) + " |", "|---|" + "---:|" * len(metrics)]
    for name, values in rows.items():
        cells = [f"{values[m]:.3f}" if isinstance(values.get(m), float) else "–" for m in metrics]
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    return lines


def markdown_report(report: dict[str, Any], breakdown_metric: str = "ndcg@10") -> str:
    """Overall table, verdicts with 95% intervals, and per-difficulty / per-category tables for one metric."""
    metrics = [m for m in HEADLINE if m in report["metrics"]] + [m for m in report["metrics"] if m not in HEADLINE]
    out = [f"## Retrieval evaluation — {report['dataset']}", "",
           f"{report['n_queries']} queries over {report['n_documents']} documents.", ""]
    out += _table(report["overall"], metrics)
    if report["comparisons"]:
        out += ["", "### Is the difference real? (paired bootstrap over queries, 95% interval)", "",
                "| candidate vs baseline | metric | delta | 95% CI | verdict |", "|---|---|---:|---|---|"]
        for c in (SystemComparison.read(row) for row in report["comparisons"]):
            out.append(f"| {c.candidate} vs {c.baseline} | {c.metric} | {c.delta:+.3f} | {ci_text(c.ci95)} | {c.verdict} |")
    out += _training_section(report)
    systems = list(report["overall"])
    for key, title in (("by_difficulty", "difficulty"), ("by_category", "category")):
        groups = report.get(key) or {}
        if len(groups) < 2 and "unlabelled" in groups:
            continue
        rows = {f"{g} (n={v['n']})": {s: v[s][breakdown_metric] for s in systems} for g, v in groups.items()}
        out += ["", f"### {breakdown_metric} by {title}", ""] + _table(rows, systems, title)
    return "\n".join(out) + "\n"


def _training_section(report: dict[str, Any]) -> list[str]:
    """The promotion gate's verdict and the fusion chosen on validation, with its evidence."""
    out: list[str] = []
    card = TrainingCard.from_dict(report["training_card"], "the report's training_card") \
        if report.get("training_card") else None
    gate = card.gate_result() if card else None
    if gate is not None and gate.measured:
        out += ["", "### Promotion gate (validation queries, before this evaluation)", "",
                f"{gate.metric} base {gate.base:.3f} -> fine-tuned {gate.finetuned:.3f}: {gate.overall().interval()} "
                f"on {gate.n_queries} queries: **{gate.verdict}** (decided by {gate.decided_by})."]
        subsets = {k: v for k, v in gate.subset_comparisons().items() if v.measured}
        if subsets:
            out += ["", "| validation queries | n | delta | 95% CI | verdict |", "|---|---:|---:|---|---|"]
            out += [f"| {k} | {v.n} | {v.delta:+.3f} | {ci_text(v.ci95)} | {v.verdict} |" for k, v in subsets.items()]
    if card and card.candidates:
        serving = ServingPlan.from_dict(card.serving) if card.serving else None
        out += ["", f"### Method chosen: {card.chosen}", "", (card.choice or {}).get("reason", "") + ".",
                "Serving: " + ("the base model (nothing was written)" if not serving else
                              ("re-index the documents" if serving.reindex else "the base's index as it is")
                              + (", queries through the adapter" if serving.adapter else "")) + ".", "",
                "| candidate | re-index | decided by | delta | 95% CI | verdict |", "|---|:---:|---|---:|---|---|"]
        for candidate in card.judged_candidates():
            g = candidate.gate_result()
            d = g.deciding()
            ci = ci_text(d.ci95) if d.ci95 else "–"
            delta = f"{d.delta:+.3f}" if d.measured else "–"
            out.append(f"| {candidate.name} | {'yes' if candidate.reindex else 'no'} | {g.decided_by} | {delta} | {ci} "
                       f"| {g.verdict} |")
    fusion = report.get("fusion")
    if fusion:
        out += ["", f"### Fusion chosen on validation: {fusion['name']}", "", fusion["reason"] + ".", ""]
        scores, vs = fusion["validation"]["scores"], fusion["validation"]["vs_dense"]
        if scores:
            out += [f"| candidate | {fusion['metric']} | vs dense | 95% CI | verdict |", "|---|---:|---:|---|---|"]
            for name, score in scores.items():
                v = Comparison.read(vs[name], f"fusion.validation.vs_dense.{name}") if vs.get(name) else None
                out.append(f"| {name} | {score:.3f} | " + (f"{v.delta:+.3f} | {ci_text(v.ci95)} | {v.verdict} |"
                                                          if v else "– | – | – |"))
    for warning in report.get("warnings", []):
        out += ["", f"**Warning:** {warning}"]
    return out


def write_markdown_report(report: dict[str, Any], path: str | Path) -> Path:
    return write_text(path, markdown_report(report))


def write_png_report(report: dict[str, Any], path: str | Path, metric: str = "recall@1") -> Path:
    """Grouped bars: ``metric`` per category (and overall) for each system."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    groups = {"overall": report["overall"], **{g: v for g, v in report["by_category"].items()}}
    systems = list(report["overall"])
    x = np.arange(len(groups))
    width = 0.8 / len(systems)
    fig, ax = plt.subplots(figsize=(max(6, 1.1 * len(groups)), 4))
    for i, system in enumerate(systems):
        ax.bar(x + i * width, [groups[g][system][metric] for g in groups], width, label=system)
    ax.set_xticks(x + width * (len(systems) - 1) / 2, list(groups), rotation=30, ha="right")
    ax.set_ylabel(metric)
    ax.set_ylim(0, 1)
    ax.set_title(f"{metric} by category — {Path(str(report['dataset'])).name}")
    ax.legend(fontsize=8)
    fig.tight_layout()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp.png")
    fig.savefig(tmp, dpi=120)
    plt.close(fig)
    tmp.replace(path)
    return path


def write_reports(report: Any, out_dir: str | Path, names: list[str] | None = None, stem: str = "eval") -> dict[str, Path]:
    """Write an :class:`~ace_llamaindex.evaluate.evaluate.EvalReport` with each named reporter (default: all
    registered) as ``out_dir/<stem>.<name>``."""
    written = {}
    for name in list(components("reporters")) if names is None else names:
        written[name] = get("reporters", name)(report.data, Path(out_dir) / f"{stem}.{name}")
    return written
