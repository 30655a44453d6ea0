"""An online experiment killed (kill -9) at any step it passes leaves one model serving each query, and the next
command goes on (issue #37).

Each row runs one `ace experiment` command in a subprocess with ACE_ROLLOUT_KILL_AT naming a step (its own
deploy.experiment.EXPERIMENT_STEPS, and "checked", the last of the rollout's deploy.rollout.STEPS a start passes): the
process kills itself exactly there, no timers (as tests/test_rollout_kills.py does for rollouts). Then, opened afresh:
a query is answered, by one model; the experiment runs exactly when its alias was set; the next command completes.

A start builds the challenger with ``rollout(switch=False)``: up to "checked" it passes the rollout's own steps
(copied-v0, created-new, wrote-batch) by the same code as a rollout, whose kills tests/test_rollout_kills.py has a row
for each; ``switch=False`` changes only what follows "checked". Promotion's steps (dropped-plain, switched,
experiment-ended): tests/test_experiment.py, test_kill_9_during_a_promotion_leaves_exactly_one_model_serving.
tests/test_experiment.py's ramp test records every step a start, ramps and an end pass and checks each has a row.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
from test_experiment import _ace, _release_everything  # one way to run a command and let go of the folder

from ace_llamaindex.deploy.experiment import EXPERIMENT_STEPS, running_experiment
from ace_llamaindex.deploy.rollout import KILL_AT_ENV
from ace_llamaindex.embeddings.models import DEFAULT_MODEL
from ace_llamaindex.serve.embedding import FineTunedEmbedding
from ace_llamaindex.serve.feedback import judgements, read_log
from ace_llamaindex.serve.retriever import HybridQdrantRetriever

DOCS = 8
ENV = {**os.environ, "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}
# (command, step): the steps each experiment command passes on an embedded local folder, in order
ROLLOUT_ROWS = ["copied-v0", "created-new", "wrote-batch"]  # a rollout's steps: rows in tests/test_rollout_kills.py
START = ["checked", "experiment-recorded", "experiment-started"]
RAMP = ["experiment-ramped"]
END = ["experiment-ended", "removed-challenger"]
PROMOTE = ["dropped-plain", "switched", "experiment-ended"]  # rows in tests/test_experiment.py
ROWS = [pytest.param("start", s, id=f"start-{s}") for s in START] + \
       [pytest.param("ramp", s, id=f"ramp-{s}") for s in RAMP] + [pytest.param("end", s, id=f"end-{s}") for s in END]
STARTED = {"experiment-started"}  # killed at or after this step of a start, the experiment runs


def _tuned(tmp_path):
    """A challenger that is a real model folder of its own, fast to build: the bundled model under another name."""
    from ace_llamaindex.embeddings.models import resolve_model

    folder = tmp_path / "challenger"
    if not folder.exists():
        import shutil

        shutil.copytree(resolve_model(DEFAULT_MODEL), folder)
    return folder


def _where(tmp_path) -> list[str]:
    return ["--collection", "mem", "--qdrant-path", str(tmp_path / "q"), "--engine", "local"]


def _setup(tmp_path, command: str) -> None:
    """A plain collection served by the bundled model, and (for ramp and end) a running split experiment."""
    from llama_index.core.schema import TextNode

    retriever = HybridQdrantRetriever(FineTunedEmbedding(), path=str(tmp_path / "q"), collection="mem", engine="local")
    retriever.add_nodes([TextNode(id_=f"d{i}", text=f"memory {i}: the deploy failed on step {i}") for i in range(DOCS)],
                        show_progress=False)
    del retriever
    _release_everything()
    if command != "start":
        started = _ace("experiment", "start", str(_tuned(tmp_path)), *_where(tmp_path), "--mode", "split",
                       "--share", "0.05", "--json")
        assert started.exit_code == 0, started.output


def _one_model_answers(tmp_path) -> dict:
    retriever = HybridQdrantRetriever(FineTunedEmbedding(), path=str(tmp_path / "q"), collection="mem", engine="local",
                                      feedback_log=tmp_path / "after.jsonl")
    nodes = retriever.batch_retrieve(["the deploy failed"], user_id="someone")[0]
    assert nodes and len({n.node.metadata["ace_served_by"] for n in nodes}) == 1
    running = running_experiment(retriever.index, "mem")
    row = max(judgements(read_log(tmp_path / "after.jsonl"))[0].values(), key=lambda r: r["ts"])
    del retriever
    _release_everything()
    return {"running": running, "row": row}


def covered_steps() -> set[str]:
    """Every step with a kill row for an experiment (here, in tests/test_experiment.py, tests/test_rollout_kills.py)."""
    return set(ROLLOUT_ROWS) | set(START) | set(RAMP) | set(END) | set(PROMOTE)


def test_every_experiment_step_has_a_kill_row():
    from ace_llamaindex.deploy.rollout import STEPS

    assert set(EXPERIMENT_STEPS) <= covered_steps() and set(ROLLOUT_ROWS) <= set(STEPS)


@pytest.mark.parametrize("command,kill_at", ROWS)
def test_kill_9_at_each_experiment_step_leaves_one_model_serving(tmp_path, command, kill_at):
    _setup(tmp_path, command)
    where = _where(tmp_path)
    args = {"start": ["experiment", "start", str(_tuned(tmp_path)), *where, "--mode", "split", "--share", "0.05"],
            "ramp": ["experiment", "ramp", "0.5", *where],
            "end": ["experiment", "stop", "--end", *where]}[command]
    killed = subprocess.run([sys.executable, "-m", "ace_llamaindex.cli", *args], env={**ENV, KILL_AT_ENV: kill_at},
                            capture_output=True, text=True, timeout=300)
    assert killed.returncode == -9, killed.stderr[-2000:]
    after = _one_model_answers(tmp_path)
    runs = command == "ramp" or (command == "start" and kill_at in STARTED)
    assert (after["running"] is not None) is runs
    if runs:
        assert "experiment" in after["row"] and after["row"]["experiment"]["session"]
        if command == "ramp":  # the share was written before the kill: the ramp took, as a phase
            assert after["running"].share == 0.5 and [s for _, s in after["running"].phases] == [0.05, 0.5]
        done = _ace("experiment", "stop", "--end", *where)  # the next command goes on
    else:
        assert "experiment" not in after["row"] and after["row"]["collection"] in ("mem", "mem__v0")
        done = _ace("experiment", "start", str(_tuned(tmp_path)), *where, "--json")  # a new start completes
        assert json.loads(done.stdout)["champion"] in ("mem", "mem__v0")
    assert done.exit_code == 0, done.output
