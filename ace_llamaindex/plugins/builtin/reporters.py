"""Built-in reporters: JSON, markdown, PNG (with the [report] extra: matplotlib)."""

from __future__ import annotations

from ...evaluate.reporting import write_json_report, write_markdown_report, write_png_report
from ..hookspecs import hookimpl


@hookimpl
def register_reporters(register):
    register("json", write_json_report, "full report with per-query rows")
    register("md", write_markdown_report, "tables: overall, verdicts with 95% CIs, per difficulty and category")
    try:
        import matplotlib  # noqa: F401 - the png reporter needs the [report] extra
    except ImportError:
        return
    register("png", write_png_report, "bar chart of Recall@1 per category and system")
