"""Every benchmark script still imports and parses its options (so none rots unnoticed)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

BENCHMARKS = sorted((Path(__file__).resolve().parents[1] / "benchmarks").glob("bench_*.py"))


@pytest.mark.parametrize("script", BENCHMARKS, ids=[p.stem for p in BENCHMARKS])
def test_benchmark_help_runs(script):
    done = subprocess.run([sys.executable, str(script), "--help"], capture_output=True, text=True, timeout=300,
                          cwd=script.parent)
    assert done.returncode == 0, done.stderr[-2000:]
    assert "usage" in done.stdout.lower()


def test_online_scenarios_tiny(tmp_path):
    """bench_online.py --scenarios in its tiny mode (synthetic rankings, no dataset): its vectorised statistics decide
    as the product's functions do on every prefix compared, and the team drafts it enumerates with the product's
    ``team_draft`` give an A/A of identical rankings a credit as likely +1 as -1 (none at all below the shared prefix)."""
    script = Path(__file__).resolve().parents[1] / "benchmarks" / "bench_online.py"
    done = subprocess.run([sys.executable, str(script), "--scenarios", "--tiny", "--runs", "20", "--scenario-horizon",
                           "4600", "--drifts", "0.2", "--results-dir", str(tmp_path)], capture_output=True, text=True,
                          timeout=600, cwd=script.parent)
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]
    result = json.loads((tmp_path / "online-scenarios-scifact-tiny.json").read_text())
    check = result["notes"]["twin_check"]
    assert check["statistics_compared"] >= 50
    assert check["same_decision"] == check["statistics_compared"]
    assert max(check["largest_difference"].values()) < 1e-9
    assert check["error_guardrail_same"] == check["error_guardrail_compared"] > 0
    assert check["srm_same"] == check["srm_compared"] > 0
    assert check["srm_largest_log_factor_difference"] < 1e-6
    rows = {(r["scenario"], r["analysis"]): r for r in result["scenarios"]}
    same = [r for (name, _), r in rows.items() if name == "A/A, cascade clicks, same rankings"]
    old = next(r for r in same if "all clicks" in r["analysis"])["credit_distribution"]
    new = next(r for r in same if "shared prefix" in r["analysis"])["credit_distribution"]
    assert old["judged"] > 0.3
    assert old["plus"] == pytest.approx(old["minus"], abs=1e-9)
    assert new["judged"] == 0
    assert {r["mode"] for r in result["scenarios"]} == {"split", "interleave", "guardrail"}
    assert (tmp_path / "online-scenarios-scifact-tiny.md").read_text().startswith("# Online experiments")
