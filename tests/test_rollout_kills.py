"""A rollout or rollback killed (kill -9) at any step leaves a collection serving, and the next commands continue.

Each row runs `ace rollout` (or `ace rollback`) in a subprocess with ACE_ROLLOUT_KILL_AT naming one step
(deploy.rollout.STEPS): the process kills itself exactly there, no timers. Then, opening the folder afresh: `ace search`
answers, served by the old model (the new one only when the kill came once the switch had begun: after the plain
collection was dropped, or after the alias moved); a second `ace rollout` completes, cleaning up what the killed one
left (a version it was building is resumed: only what it lacks is embedded); `ace rollback` serves again what served
before it.
"""

from __future__ import annotations

import gc
import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
from click.testing import CliRunner
from llama_index.core.schema import TextNode

from ace_llamaindex.cli import cli
from ace_llamaindex.deploy.rollout import KILL_AT_ENV, STEPS, rollout
from ace_llamaindex.embeddings.models import DEFAULT_MODEL
from ace_llamaindex.index import edge_store, store
from ace_llamaindex.serve.embedding import FineTunedEmbedding
from ace_llamaindex.serve.retriever import HybridQdrantRetriever

DOCS = 8  # a small corpus: each row stays fast
BATCH = "2"

# (which rollout, engine): the steps it passes, in order. A first rollout goes from the base model to the tuned one; a
# second (after a first, with a killed rollout's partial collection left behind) from the tuned model to the base one.
PASSES = {
    ("first", "local"): ["copied-v0", "created-new", "wrote-batch", "checked", "dropped-plain", "switched"],
    ("first", "edge"): ["recorded-serving", "created-shard", "created-new", "wrote-batch", "checked", "switched"],
    ("second", "local"): ["removed-stale", "created-new", "wrote-batch", "checked", "switched"],
    ("second", "edge"): ["removed-stale", "created-shard", "created-new", "wrote-batch", "checked", "switched"],
    ("rollback", "local"): ["switched"],
    ("rollback", "edge"): ["switched"],
}
# the new model serves once the switch has begun: the plain collection dropped (its alias is then recreated, pointing
# at the checked new collection, by whoever opens the name next), or the alias moved
SWITCHED = {"dropped-plain", "switched"}
ROWS = [pytest.param(kind, engine, step, id=f"{engine}-{kind}-{step}") for (kind, engine), steps in PASSES.items()
        for step in steps]
ENV = {**os.environ, "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}


def test_every_step_is_named_and_every_row_kills_at_one():
    assert {s for steps in PASSES.values() for s in steps} == set(STEPS)


def _release_everything() -> None:
    """Close what this process holds open (an embedded folder, an Edge shard: one process at a time)."""
    for index in list(edge_store._OPEN.values()):
        index.close()
    store._close_open_clients()
    gc.collect()


def _ace(*args: str) -> dict | list:
    """An `ace` command, run here on a folder nothing here holds open: its JSON answer."""
    result = CliRunner().invoke(cli, [*args, "--json"])
    _release_everything()
    assert result.exit_code == 0, result.output
    return json.loads(result.stdout)


def _serves_tuned(where: Path, tuned: Path) -> bool:
    """Whether `ace search` answers with the tuned model (else the base one); it must answer."""
    rows = _ace("search", "the deploy failed", "--collection", "mem", "--qdrant-path", str(where))
    assert rows
    labels = {r["served_by"] for r in rows}
    assert len(labels) == 1, labels
    label = labels.pop()
    return label.startswith("finetuned:") and Path(label.split(":", 1)[1]).resolve() == tuned.resolve()


def _prepare(where: Path, engine: str, kind: str, demo, tuned: Path) -> None:
    retriever = HybridQdrantRetriever(FineTunedEmbedding(), path=str(where), collection="mem", engine=engine)
    retriever.add_nodes([TextNode(id_=k, text=v) for k, v in sorted(demo.corpus.items())[:DOCS]], show_progress=False)
    if kind in ("second", "rollback"):
        rollout(tuned, "mem", index=retriever.index, batch_size=4, show_progress=False)
    if kind == "second":  # what a rollout killed midway leaves: a partial collection the next one removes
        partial = retriever.index.sibling("mem__v2")
        partial.create(retriever.index.sibling("mem__v1").dense_vectors(), {})
    del retriever
    _release_everything()


@pytest.mark.parametrize("kind,engine,step", ROWS)
def test_a_rollout_killed_at_any_step_leaves_a_collection_serving(tmp_path, demo, tuned_model_dir, kind, engine, step):
    if engine == "edge":
        pytest.importorskip("qdrant_edge")
    where = tmp_path / "q"
    _prepare(where, engine, kind, demo, tuned_model_dir)
    new_model = {"first": str(tuned_model_dir), "second": DEFAULT_MODEL, "rollback": None}[kind]
    command = (["rollback"] if kind == "rollback" else ["rollout", new_model, "--batch-size", BATCH]) + [
        "--collection", "mem", "--qdrant-path", str(where)]
    killed = subprocess.run([sys.executable, "-m", "ace_llamaindex.cli", *command], env={**ENV, KILL_AT_ENV: step},
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, timeout=600)
    assert killed.returncode == -signal.SIGKILL, killed.stderr.decode()[-3000:]

    # a fresh opener: something serves, the old model unless the switch had begun
    switched = step in SWITCHED
    expected_tuned = {"first": switched, "second": not switched, "rollback": not switched}[kind]
    assert _serves_tuned(where, tuned_model_dir) == expected_tuned

    # the next rollout completes: it resumes the version the killed one was building, and removes what else it left
    model = new_model or str(tuned_model_dir)
    report = _ace("rollout", model, "--batch-size", "4", "--collection", "mem", "--qdrant-path", str(where))
    assert report["documents"] == DOCS and report["checks"]["documents"] == [DOCS, DOCS]
    killed_version = {"first": "mem__v1", "second": "mem__v3"}.get(kind)
    if step == "created-shard":  # a half-made Edge shard (no metadata) is removed, not refused as "in use by another process"
        assert killed_version in report["removed"]
    elif step in ("created-new", "wrote-batch", "checked"):  # the killed version is resumed, not removed (issue #31)
        written = {"created-new": 0, "wrote-batch": int(BATCH), "checked": DOCS}[step]
        assert report["collection"] == killed_version and killed_version not in report["removed"], report
        assert report["resumed"] == written and report["embedded"] == DOCS - written, report
    if engine == "edge":
        assert all((d / edge_store.META_FILE).is_file() for d in where.iterdir() if d.is_dir())
    assert _serves_tuned(where, tuned_model_dir) == (model == str(tuned_model_dir))

    # and a rollback serves again what served before it
    back = _ace("rollback", "--collection", "mem", "--qdrant-path", str(where))
    assert back["from"] == report["collection"] and back["to"] == report["previous"]
    assert _serves_tuned(where, tuned_model_dir) == expected_tuned
