"""Hook implementations: found by ace-llamaindex through the ``ace_llamaindex`` entry point."""

from __future__ import annotations

import csv
import io
from pathlib import Path

from ace_llamaindex.atomic import write_text
from ace_llamaindex.plugins import hookimpl


def average_precision_at_10(ranked, relevant):
    """Mean of precision at each relevant hit in the top 10, over min(10, |relevant|)."""
    hits, total = 0, 0.0
    for rank, doc in enumerate(ranked[:10], 1):
        if doc in relevant:
            hits += 1
            total += hits / rank
    return total / min(10, len(relevant)) if relevant else 0.0


def precision_at_5(ranked, relevant):
    """Fraction of the top 5 that is relevant."""
    return sum(1 for d in ranked[:5] if d in relevant) / 5


def write_csv_report(report, path):
    """One row per (query, system) with every metric."""
    buffer = io.StringIO()
    metrics = report["metrics"]
    writer = csv.writer(buffer)
    writer.writerow(["query_id", "system", *metrics])
    for qid, systems in report["per_query"].items():
        for system, row in systems.items():
            writer.writerow([qid, system, *[row.get(m, "") for m in metrics]])
    return write_text(Path(path), buffer.getvalue())


@hookimpl
def register_metrics(register):
    register("map@10", average_precision_at_10)
    register("precision@5", precision_at_5)


@hookimpl
def register_reporters(register):
    register("csv", write_csv_report)
