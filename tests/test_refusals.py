"""Issue #38, item 3: a collection name too long for what is made of it, a training card with a field of the wrong
kind, and a refused rollout or experiment start each end in one clear line, and change nothing. One row per case.
Real parts: the bundled model, Qdrant Edge and qdrant-client's local mode, the CLI through click's runner."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
from click.testing import CliRunner
from qdrant_client import QdrantClient

from ace_llamaindex.cli import cli
from ace_llamaindex.deploy.rollout import rollout
from ace_llamaindex.embeddings.models import resolve_model
from ace_llamaindex.errors import OptionError
from ace_llamaindex.index import store
from ace_llamaindex.index.edge_store import EdgeCorpusIndex
from ace_llamaindex.index.engines import open_index
from ace_llamaindex.index.store import MAX_COLLECTION_NAME, MAX_FILE_NAME, CorpusIndex, derived_names
from ace_llamaindex.records.card import CARD_NAME, TrainingCard
from ace_llamaindex.records.plan import PLAN_KINDS, ServingPlan

BASE = resolve_model(None)
TINY = {"queries": {"q1": "the API returns 502 after a deploy", "q2": "disk full on the build agent"},
        "corpus": {"d1": "A 502 right after a deploy: the new pods were not ready; roll back the release.",
                   "d2": "The build agent's disk filled up with old images; prune them nightly.",
                   "d3": "Rotate the TLS certificate before it expires on Friday.",
                   "d4": "The search service runs out of memory: bound its cache."},
        "relevant_docs": {"q1": ["d1"], "q2": ["d2"]}}


def _ace(*args: str):
    return CliRunner().invoke(cli, [str(a) for a in args])


def _one_line(result, expected: str) -> None:
    """Exit code 2 and exactly one error line holding ``expected``; no trace."""
    assert result.exit_code == 2, result.output
    errors = [line for line in result.output.splitlines() if "error:" in line]
    assert len(errors) == 1 and expected in " ".join(result.output.split()), result.output
    assert "Traceback" not in result.output


@pytest.fixture(scope="module")
def tiny(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("tiny") / "tiny.json"
    path.write_text(json.dumps(TINY))
    return path


@pytest.fixture(scope="module")
def indexed(tmp_path_factory, tiny):
    """The tiny corpus indexed into 'mem' by `ace index` (the base model, no serving record), once per engine; each
    test works on its own copy."""
    made = {}

    def get(engine: str, into: Path) -> Path:
        if engine not in made:
            where = tmp_path_factory.mktemp(engine) / "q"
            result = _ace("index", tiny, "--qdrant-path", where, "--collection", "mem", "--engine", engine)
            assert result.exit_code == 0, result.output
            made[engine] = where
        shutil.copytree(made[engine], into)
        return into

    return get


def _state(where: Path, engine: str) -> dict:
    """Everything a command could change at the location: each collection's metadata, the aliases, the entries."""
    store._close_open_clients()  # what the command's process exit does: an embedded folder is one client's at a time
    index = open_index("mem", path=where, engine=engine)
    opened = [index.sibling(n) for n in sorted(index.collection_names())]
    try:
        return {"collections": {c.collection: c.metadata() for c in opened},
                "aliases": [index.alias_target("mem"), index.alias_target("mem__challenger")],
                "entries": sorted(str(p.relative_to(where)) for p in where.rglob("*") if p.suffix == ".json"
                                  or p.parent == where)}
    finally:
        for c in [*opened, index]:
            c.close()


def _closed(index):
    """An Edge index at an existing folder (its own collection not created: nothing written), for an API call."""
    index.close()
    return index


# ---- 1. collection names: one limit, from the longest name made of one ------------------------------------------
def test_the_limit_is_what_the_longest_made_name_leaves():
    longest = derived_names("n" * MAX_COLLECTION_NAME)
    assert len(longest[-1]) == MAX_FILE_NAME  # the longest made name fills a file name exactly
    assert longest[-1].endswith("__challenger.alias.json.xxxxxxxx.tmp")
    assert all(len(n) <= MAX_FILE_NAME for n in derived_names("n" * MAX_COLLECTION_NAME))


LONG = "n" * (MAX_COLLECTION_NAME + 1)
TOO_LONG = f"has {MAX_COLLECTION_NAME + 1} characters; at most {MAX_COLLECTION_NAME}"
# (what opens or creates the collection, expected text): through the CLI (one line) and the API (OptionError)
NAME_CASES = [
    pytest.param(["index", "{tiny}", "--qdrant-path", "{tmp}/q", "--engine", "edge", "--collection", LONG], id="index-edge"),
    pytest.param(["index", "{tiny}", "--qdrant-path", "{tmp}/q", "--engine", "local", "--collection", LONG], id="index-local"),
    pytest.param(["search", "x", "--qdrant-path", "{tmp}", "--collection", LONG], id="search"),
    pytest.param(["rollout", BASE, "--qdrant-path", "{tmp}", "--collection", LONG], id="rollout"),
    pytest.param(["experiment", "start", BASE, "--qdrant-path", "{tmp}", "--collection", LONG], id="experiment-start"),
    pytest.param(lambda tmp: open_index(LONG, path=tmp / "q", engine="edge"), id="open_index-edge"),
    pytest.param(lambda tmp: open_index(LONG, path=tmp / "q", engine="local"), id="open_index-local"),
    pytest.param(lambda tmp: CorpusIndex(QdrantClient(":memory:"), LONG), id="CorpusIndex"),
    pytest.param(lambda tmp: EdgeCorpusIndex(tmp / "q", LONG), id="EdgeCorpusIndex"),
    pytest.param(lambda tmp: EdgeCorpusIndex(tmp / "q", LONG + "__v1"), id="EdgeCorpusIndex-version-of-a-long-name"),
    pytest.param(lambda tmp: rollout(BASE, LONG, index=_closed(EdgeCorpusIndex(tmp, "mem"))),
                 id="rollout-with-an-open-index"),
]


@pytest.mark.parametrize("call", NAME_CASES)
def test_a_name_too_long_for_what_is_made_of_it_is_refused_at_once(tmp_path, tiny, call):
    before = sorted(tmp_path.rglob("*"))
    if callable(call):
        with pytest.raises(OptionError, match="--collection.*" + TOO_LONG):
            call(tmp_path)
    else:
        _one_line(_ace(*[a.format(tmp=tmp_path, tiny=tiny) for a in call]), "(--collection) " + TOO_LONG)
    assert sorted(tmp_path.rglob("*")) == before  # no folder, no file


def test_the_longest_name_allowed_serves_rolls_out_and_experiments_on_edge(tmp_path, tiny):
    """The name at the limit works for every command that makes a name of it (Edge writes the most of them)."""
    name = "n" * MAX_COLLECTION_NAME
    where = ["--qdrant-path", tmp_path / "q", "--collection", name, "--engine", "edge"]
    for args in (["index", tiny], ["experiment", "start", BASE],
                 ["experiment", "stop", "--end"], ["rollout", BASE, "--force"], ["search", "502 after deploy"]):
        result = _ace(*args, *where)
        assert result.exit_code == 0, (args, result.output)
    assert (tmp_path / "q" / f"{name}.alias.json").is_file()


# ---- 2. training card fields: checked when the card is read, for every reader ------------------------------------
def _card(**fields) -> dict:
    return {"schema_version": 2, "method": "full", "base_model": BASE, "serving": {"model": ".", "adapter": None,
                                                                                    "reindex": True}, **fields}


# (the card, the field named, what was expected)
CARD_CASES = [
    pytest.param(_card(serving={"model": 42}), "'serving.model' must be a string, got int 42", id="serving.model"),
    pytest.param(_card(serving={"model": ".", "adapter": ["a"]}), "'serving.adapter' must be a string, got list",
                 id="serving.adapter"),
    pytest.param(_card(serving={"model": ".", "reindex": "yes"}), "'serving.reindex' must be true or false, got str",
                 id="serving.reindex"),
    pytest.param(_card(serving="here"), "'serving' must be an object, got str", id="serving"),
    pytest.param(_card(champion={"serving": {"model": 7}}), "'champion.serving.model' must be a string, got int 7",
                 id="champion.serving.model"),
    pytest.param(_card(gate={"verdict": 1}), "'gate.verdict' must be a string, got int 1", id="gate.verdict"),
    pytest.param(_card(gate={"verdict": "better", "delta": "big"}), "'gate.delta' must be a number, got str",
                 id="gate.delta"),
    pytest.param(_card(gate={"verdict": "better", "n_queries": True}), "'gate.n_queries' must be an integer, got bool",
                 id="gate.n_queries"),
    pytest.param(_card(base={"model": 5}), "'base.model' must be a string, got int 5", id="base.model"),
]
# every command that reads a model folder's card: (arguments, needs an index)
READERS = {
    "rollout": (["rollout", "{model}", "--qdrant-path", "{q}", "--collection", "mem", "--previous-model", BASE], True),
    "experiment-start": (["experiment", "start", "{model}", "--qdrant-path", "{q}", "--collection", "mem"], True),
    "eval": (["eval", "--finetuned", "{model}", "--out-dir", "{tmp}/r"], False),
    "search": (["search", "x", "--model", "{model}", "--qdrant-path", "{q}", "--collection", "mem"], True),
    "index": (["index", "{tiny}", "--model", "{model}", "--qdrant-path", "{tmp}/fresh", "--collection", "mem"], False),
}


@pytest.mark.parametrize("card,expected", CARD_CASES)
def test_a_card_field_of_the_wrong_kind_is_one_line_naming_the_card(tmp_path, card, expected):
    path = tmp_path / CARD_NAME
    path.write_text(json.dumps(card))
    with pytest.raises(OptionError) as caught:
        TrainingCard.read(path)
    assert str(caught.value).startswith(f"{path}: field {expected}")


@pytest.mark.parametrize("reader", sorted(READERS))
@pytest.mark.parametrize("card,expected", CARD_CASES[:1] + CARD_CASES[4:5])
def test_every_reader_of_a_card_names_it(tmp_path, indexed, tiny, reader, card, expected):
    model = tmp_path / "model"
    model.mkdir()
    (model / CARD_NAME).write_text(json.dumps(card))
    args, needs_index = READERS[reader]
    q = indexed("edge", tmp_path / "q") if needs_index else tmp_path / "q"
    before = _state(q, "edge") if needs_index else None
    result = _ace(*[a.format(model=model, q=q, tmp=tmp_path, tiny=tiny) for a in args])
    _one_line(result, f"{model / CARD_NAME}: field {expected}")
    if needs_index:
        assert _state(q, "edge") == before
    assert not (tmp_path / "r").exists() and not (tmp_path / "fresh").exists()


def test_a_plan_holds_what_the_card_checks():
    """ServingPlan's fields are the ones a card's plans are checked by, and from_dict checks a collection's record."""
    assert set(PLAN_KINDS) == set(ServingPlan(None).to_dict())
    with pytest.raises(OptionError, match="collection 'mem': field 'reindex' must be true or false, got str"):
        ServingPlan.from_dict({"model": "m", "reindex": "no"}, "collection 'mem'")


# ---- 3. a refused rollout or experiment start writes nothing -----------------------------------------------------
def _refused_card(folder: Path) -> None:
    """A fine-tune of the base whose gate measured it no better: a first rollout over the base is refused."""
    folder.mkdir()
    (folder / CARD_NAME).write_text(json.dumps(_card(gate={"verdict": "no clear difference", "delta": 0.001,
                                                            "ci95": [-0.01, 0.012], "n_queries": 40})))


def _bad_card(folder: Path) -> None:
    folder.mkdir()
    (folder / CARD_NAME).write_text(json.dumps(_card(serving={"model": 42})))


def _not_a_model(folder: Path) -> None:
    folder.mkdir()
    (folder / "config.json").write_text("{}")


# (engine, command, MODEL's folder made by, --previous-model, expected)
REFUSED_CASES = [
    pytest.param("edge", "rollout", None, BASE, "cannot load sentence-transformers model", id="rollout:no-model:edge"),
    pytest.param("local", "rollout", None, BASE, "cannot load sentence-transformers model", id="rollout:no-model:local"),
    pytest.param("edge", "rollout", _not_a_model, BASE, "cannot load sentence-transformers model",
                 id="rollout:not-a-model:edge"),
    pytest.param("edge", "experiment", _not_a_model, BASE, "cannot load sentence-transformers model",
                 id="experiment:not-a-model:edge"),
    pytest.param("local", "experiment", _not_a_model, BASE, "cannot load sentence-transformers model",
                 id="experiment:not-a-model:local"),
    pytest.param("edge", "rollout", _bad_card, BASE, "field 'serving.model' must be a string", id="rollout:bad-card"),
    pytest.param("edge", "experiment", _bad_card, BASE, "field 'serving.model' must be a string",
                 id="experiment:bad-card"),
    pytest.param("edge", "rollout", _refused_card, BASE, "rollout refused: ", id="rollout:not-better"),
    pytest.param("edge", "rollout", "BASE", "{tmp}/not-what-indexed-it",
                 "--previous-model (previous_model=) {tmp}/not-what-indexed-it: collection 'mem' holds no vectors of it",
                 id="rollout:previous-model-not-in-collection"),
    pytest.param("edge", "experiment", "BASE", "{tmp}/not-what-indexed-it",
                 "--previous-model (previous_model=) {tmp}/not-what-indexed-it: collection 'mem' holds no vectors of it",
                 id="experiment:previous-model-not-in-collection"),
]


@pytest.mark.parametrize("engine,command,make,previous,expected", REFUSED_CASES)
def test_a_refused_command_changes_no_metadata(tmp_path, indexed, engine, command, make, previous, expected):
    q = indexed(engine, tmp_path / "q")
    model = BASE if make == "BASE" else tmp_path / "model"
    if callable(make):
        make(model)
    before = _state(q, engine)
    verb = ["rollout"] if command == "rollout" else ["experiment", "start"]
    result = _ace(*verb, model, "--qdrant-path", q, "--collection", "mem", "--engine", engine,
                  "--previous-model", previous.format(tmp=tmp_path))
    _one_line(result, expected.format(tmp=tmp_path))
    assert _state(q, engine) == before
