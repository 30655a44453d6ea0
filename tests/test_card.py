"""The training card is one typed record (issue #30): written and read through ``records.card.TrainingCard``,
with a schema version; cards written by 0.1 still load; a bad card is one line; no module builds or indexes a card
by hand. Fast: no model is loaded."""

from __future__ import annotations

import ast
import json
import warnings
from dataclasses import fields
from pathlib import Path

import pytest

from ace_llamaindex.errors import AceDeprecationWarning, OptionError
from ace_llamaindex.records.card import ADAPTER_CARD, CARD_NAME, CARD_SCHEMA, TrainingCard, read_card
from ace_llamaindex.records.outcome import Outcome, outcome

PACKAGE = Path(__file__).resolve().parents[1] / "ace_llamaindex"
CARD_MODULE = PACKAGE / "records" / "card.py"
MODULES = sorted(p for p in PACKAGE.rglob("*.py") if p != CARD_MODULE)
FIELDS = {f.name for f in fields(TrainingCard)} - {"details"}
# keys no other record has: a dict literal holding two of them is a card written by hand
CARD_ONLY = {"training_queries", "validation_queries", "gate_of", "data_checks", "train_examples", "val_examples",
             "schema_version", "exports_skipped", "resumed_from_checkpoint", "data_fingerprint", "base_model", "chosen",
             "training_data", "peak_memory"}

GATE = {"verdict": "better", "metric": "ndcg@10", "base": 0.61, "finetuned": 0.66, "delta": 0.05, "ci95": [0.02, 0.08],
        "n_queries": 120, "subsets": {}, "decided_by": "unseen documents"}


def _names_card(node: ast.AST) -> bool:
    name = node.id if isinstance(node, ast.Name) else node.attr if isinstance(node, ast.Attribute) else ""
    return "card" in name.lower()


# (module, function) whose dict literal is not a card, each with its reason
ALLOWED = {("train/adapter.py", "fit_adapter"): "the adapter run's measurements, which records.card.run_fields turns "
                                                "into card fields (as the full fine-tune's trainer info)"}


def _functions(tree: ast.AST) -> dict[ast.AST, str]:
    """Each node's enclosing function name."""
    owner = {}
    for fn in ast.walk(tree):
        if isinstance(fn, (ast.FunctionDef, ast.AsyncFunctionDef)):
            for node in ast.walk(fn):
                owner[node] = fn.name
    return owner


def card_literals(source: str, relative: str = "") -> list[tuple[int, str]]:
    """Where a module reads a card by key (``card["gate"]``, ``result.card.get("x")``) or writes one as a dict literal."""
    hits = []
    tree = ast.parse(source)
    owner = _functions(tree)
    for node in ast.walk(tree):
        if (relative, owner.get(node)) in ALLOWED:
            continue
        if isinstance(node, ast.Subscript) and _names_card(node.value) and isinstance(node.slice, ast.Constant):
            hits.append((node.lineno, f"[{node.slice.value!r}]"))
        elif (isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute) and node.func.attr == "get"
              and _names_card(node.func.value) and node.args and isinstance(node.args[0], ast.Constant)):
            hits.append((node.lineno, f".get({node.args[0].value!r})"))
        elif isinstance(node, ast.Dict):
            keys = {k.value for k in node.keys if isinstance(k, ast.Constant) and isinstance(k.value, str)}
            if len(keys & CARD_ONLY) >= 2:
                hits.append((node.lineno, "a card as a dict literal: " + ", ".join(sorted(keys & CARD_ONLY))))
    return hits


@pytest.mark.parametrize("path", MODULES, ids=lambda p: str(p.relative_to(PACKAGE)))
def test_no_card_literal_outside_its_module(path):
    assert card_literals(path.read_text(encoding="utf-8"), str(path.relative_to(PACKAGE))) == [], \
        f"{path.relative_to(PACKAGE)}: build and read cards through records.card.TrainingCard's fields"


@pytest.mark.parametrize(("source", "found"), [
    ('card["gate"]', [(1, "['gate']")]),
    ('result.card["chosen"]', [(1, "['chosen']")]),
    ('champion_card.get("training_queries")', [(1, ".get('training_queries')")]),
    ('x = {"method": "full", "train_examples": 3, "val_examples": 1}', [(1, "a card as a dict literal: train_examples, "
                                                                          "val_examples")]),
    ('card.gate["verdict"]', []),                                     # a field, then the gate's own key
    ('report.data["training_card"] = card.to_dict()', []),            # a report's key, not a card's
    ('plan = {"model": m, "adapter": None, "reindex": True}', []),    # a serving plan
])
def test_card_literal_check_itself(source, found):
    assert card_literals(source) == found


# the cards 0.1 wrote (no schema_version), as its trainers built them ------------------------------------------------

CARDS_01 = {
    "full fine-tune": {"base_model": "bundled:all-MiniLM-L6-v2", "config": {"epochs": 1}, "train_examples": 40,
                       "val_examples": 10, "device": "cpu", "train_seconds": 12, "gate": GATE, "best_metric": 0.7,
                       "validation_per_epoch": [{"epoch": 1.0}]},
    "first query adapter": {"kind": "mlp", "base": {"label": "minilm", "model": "m", "fingerprint": "abc"},
                            "dimension": 384, "gate": GATE, "promoted": True},
    "auto, nothing chosen": {"method": "auto", "chosen": "base", "gate": {**GATE, "verdict": "worse"}, "gate_of": "adapter",
                             "promoted": False, "serving": None, "candidates": {"adapter": {"gate": GATE, "reindex": False}},
                             "training_data": {"path": "/d/training.json", "sha256": "0"}},
}
EXPECTED_01 = {
    "full fine-tune": dict(method="full", promoted=True, base_model="bundled:all-MiniLM-L6-v2", train_seconds=12,
                           outcome=Outcome.PROMOTED, details={"best_metric": 0.7, "validation_per_epoch": [{"epoch": 1.0}]}),
    "first query adapter": dict(method="adapter", adapter_kind="mlp", base_fingerprint="abc", outcome=Outcome.PROMOTED,
                                details={"kind": "mlp", "dimension": 384}),
    "auto, nothing chosen": dict(method="auto", method_name="base", promoted=False, outcome=Outcome.BASE_STAYS,
                                 training_data=[{"path": "/d/training.json", "sha256": "0"}]),
}


@pytest.mark.parametrize("name", CARDS_01)
def test_a_card_written_by_0_1_still_loads(tmp_path, name):
    folder = tmp_path / "model"
    folder.mkdir()
    (folder / (ADAPTER_CARD if "adapter" in name else CARD_NAME)).write_text(json.dumps(CARDS_01[name]))
    card = read_card(folder)
    for attribute, value in EXPECTED_01[name].items():
        got = outcome(card) if attribute == "outcome" else getattr(card, attribute)
        assert got == value, attribute
    assert card.schema_version == CARD_SCHEMA
    assert card.deciding_gate == card.gate
    # written back: the same keys as it was read (plus the version and a method), every value kept
    again = card.to_dict()
    assert again["schema_version"] == CARD_SCHEMA
    for key, value in CARDS_01[name].items():
        assert again[key] == (value if key != "training_data" else [value]), key


def test_a_card_round_trips_through_its_file(tmp_path):
    card = TrainingCard(method="auto", chosen="full", gate=GATE, gate_of="full", base_model="m", train_seconds=3.5,
                        serving={"model": ".", "adapter": None, "reindex": True}, training_queries=["a1"],
                        validation_queries=["b2"], champion={"source": "folder x", "gate": {**GATE, "verdict": "worse"}},
                        details={"full_fine_tune": {"best_metric": 0.5}})
    card.save(tmp_path / CARD_NAME)
    data = json.loads((tmp_path / CARD_NAME).read_text())
    assert list(data)[0] == "schema_version" and data["full_fine_tune"] == {"best_metric": 0.5}  # flat, as before
    back = read_card(tmp_path)
    assert back == card
    assert back.deciding_gate["verdict"] == "worse"          # the champion's comparison decides when there was one
    assert back.seen_queries == {"a1", "b2"} and back.method_name == "full"
    assert outcome(back) is Outcome.PROMOTED and outcome(data) is Outcome.PROMOTED


BAD_CARDS = [
    ("unreadable JSON", "{not json", "unreadable card"),
    ("not an object", "[1, 2]", "a training card is a JSON object, got list"),
    ("a newer schema", json.dumps({"schema_version": CARD_SCHEMA + 1, "method": "full"}),
     f"card schema {CARD_SCHEMA + 1} is newer than this ace-llamaindex reads"),
    ("a bad schema", json.dumps({"schema_version": "two", "method": "full"}), "schema_version must be a positive integer"),
    ("gate not an object", json.dumps({"method": "full", "gate": "better"}), "field 'gate' must be an object, got str"),
    ("queries not a list", json.dumps({"method": "full", "training_queries": "abc"}),
     "field 'training_queries' must be a list, got str"),
    ("promoted not a flag", json.dumps({"method": "full", "promoted": "yes"}), "field 'promoted' must be true or false"),
]


@pytest.mark.parametrize(("name", "text", "expected"), BAD_CARDS, ids=[c[0] for c in BAD_CARDS])
def test_a_bad_card_is_one_line_naming_the_file(tmp_path, name, text, expected):
    (tmp_path / CARD_NAME).write_text(text)
    with pytest.raises(OptionError) as caught:
        read_card(tmp_path)
    message = str(caught.value)
    assert expected in message and str(tmp_path / CARD_NAME) in message and "\n" not in message


def test_indexing_a_card_still_works_and_says_it_is_deprecated():
    card = TrainingCard(method="adapter", chosen="adapter", gate=GATE, details={"kind": "linear"})
    with warnings.catch_warnings(record=True) as seen:
        warnings.simplefilter("always")
        assert card["chosen"] == "adapter" and card["kind"] == "linear" and card.get("missing") is None
    assert [w.category for w in seen] == [AceDeprecationWarning] * 3
    assert "kind" in card and "champion" not in card


def test_details_cannot_shadow_a_field():
    with pytest.raises(ValueError, match="shadow"):
        TrainingCard(method="full", details={"gate": {}}).to_dict()


def test_stages_read_the_gate_and_candidates_through_types():
    """Issue #39: a card's candidates, its champion comparison and a gate's subsets are read through the records'
    attributes (the card on disk is unchanged)."""
    from ace_llamaindex.records.gate import GateResult
    from ace_llamaindex.records.verdict import Verdict

    worse = {**GATE, "verdict": "worse"}
    card = TrainingCard.from_dict({"method": "auto", "chosen": "adapter", "gate": GATE,
                                   "candidates": {"adapter": {"gate": GATE, "reindex": False},
                                                  "full": {"gate": worse, "reindex": True, "against_base": GATE}},
                                   "champion": {"source": "collection 'm'", "identity": {"model": "x", "adapter": None},
                                                "serving": {"model": "/m", "adapter": None, "reindex": True},
                                                "gate": worse}})
    assert [(c.name, c.verdict, c.reindex, c.against_base) for c in card.judged_candidates()] == \
        [("adapter", Verdict.BETTER, False, None), ("full", Verdict.WORSE, True, GATE)]
    assert card.champion_gate == worse and card.champion_identity == {"model": "x", "adapter": None}
    assert card.champion_plan == {"model": "/m", "adapter": None, "reindex": True}
    plain = TrainingCard(method="full", gate=GATE)
    assert plain.judged_candidates() == [] and plain.champion_gate == {} and plain.champion_plan is None

    overall = {"n": 40, "base": 0.5, "finetuned": 0.6, "delta": 0.1, "ci95": [0.01, 0.2], "verdict": Verdict.BETTER}
    gate = GateResult.from_comparison(overall, "ndcg@10", 40)
    assert gate == GateResult(Verdict.BETTER, "ndcg@10", 0.5, 0.6, 0.1, (0.01, 0.2), 40)
    assert GateResult.from_comparison({"n": 0, "delta": None, "verdict": Verdict.NOT_MEASURED}, "ndcg@10", 0).ci95 is None
    gate.subsets = {"unseen documents": {"n": 20, "delta": -0.01, "verdict": Verdict.NO_CLEAR_DIFFERENCE}}
    assert gate.subset_verdict("unseen documents") == Verdict.NO_CLEAR_DIFFERENCE
    assert gate.subset_delta("unseen documents") == -0.01
