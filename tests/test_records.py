"""Typed records (issue #30): verdicts and intervals written in one place, one serving plan, one training outcome.

Fast: no model is loaded; the source checks parse the package with ``ast``."""

from __future__ import annotations

import ast
import json
import re
from pathlib import Path

import pytest

from ace_llamaindex.embeddings.query_adapter import ADAPTER_CARD, ADAPTER_FILE
from ace_llamaindex.errors import OptionError
from ace_llamaindex.records.card import CARD_NAME, TrainingCard
from ace_llamaindex.records.experiment import Decision
from ace_llamaindex.records.gate import GateResult, gate_verdict, unmeasured_gate
from ace_llamaindex.records.outcome import Outcome, outcome
from ace_llamaindex.records.plan import HERE, ServingPlan
from ace_llamaindex.records.verdict import Verdict, ci_text, interval
from ace_llamaindex.serve.served_model import read_serving, resolve_serving
from ace_llamaindex.train.training import TrainResult

PACKAGE = Path(__file__).resolve().parents[1] / "ace_llamaindex"
STATS = PACKAGE / "records" / "verdict.py"
MODULES = sorted(p for p in PACKAGE.rglob("*.py") if p != STATS)


def _parents(tree: ast.AST) -> dict[ast.AST, ast.AST]:
    return {child: node for node in ast.walk(tree) for child in ast.iter_child_nodes(node)}


def _docstrings(tree: ast.AST) -> set[int]:
    found = set()
    for node in ast.walk(tree):
        if isinstance(node, (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)) and node.body:
            first = node.body[0]
            if isinstance(first, ast.Expr) and isinstance(first.value, ast.Constant) and isinstance(first.value.value, str):
                found.add(id(first.value))
    return found


def _enclosing_function(node: ast.AST, parents: dict[ast.AST, ast.AST]) -> str | None:
    while node in parents:
        node = parents[node]
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
            return node.name
    return None


def verdict_literals(source: str) -> list[tuple[int, str]]:
    """String constants that spell a verdict: a docstring or the text of an f-string is prose, any other constant
    (an assignment, a comparison, a dict key) is code that should say ``Verdict.X``."""
    tree = ast.parse(source)
    parents, docs = _parents(tree), _docstrings(tree)
    words = {str(v) for v in Verdict} - {str(Verdict.NOT_MEASURED)}
    hits = []
    for node in ast.walk(tree):
        if not (isinstance(node, ast.Constant) and isinstance(node.value, str)) or id(node) in docs:
            continue
        if isinstance(parents.get(node), ast.JoinedStr):
            continue
        if node.value in words or node.value.startswith(str(Verdict.NOT_MEASURED)):
            hits.append((node.lineno, node.value))
    return hits


def _fstring_shape(node: ast.JoinedStr) -> str:
    """An f-string as text, each ``{x:+.3f}`` written ``\\0`` and any other field ``\\1``."""
    parts = []
    for value in node.values:
        if isinstance(value, ast.Constant):
            parts.append(str(value.value))
        elif isinstance(value, ast.FormattedValue):
            spec = value.format_spec
            plain = isinstance(spec, ast.JoinedStr) and [getattr(v, "value", None) for v in spec.values] == ["+.3f"]
            parts.append("\0" if plain else "\1")
    return "".join(parts)


HAND_WRITTEN_INTERVAL = re.compile(r"\[\0, \0\]")  # "[{lo:+.3f}, {hi:+.3f}]", with or without the delta before it
ALLOWED_INTERVALS: set[tuple[str, str]] = set()  # (module, function) left on purpose, each with its reason


def hand_written_intervals(source: str, relative: str = "") -> list[tuple[int, str | None]]:
    tree = ast.parse(source)
    parents = _parents(tree)
    hits = []
    for node in ast.walk(tree):
        if isinstance(node, ast.JoinedStr) and HAND_WRITTEN_INTERVAL.search(_fstring_shape(node)):
            where = _enclosing_function(node, parents)
            if (relative, where) not in ALLOWED_INTERVALS:
                hits.append((node.lineno, where))
    return hits


# (a) ------------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("path", MODULES, ids=lambda p: str(p.relative_to(PACKAGE)))
def test_no_verdict_literal_outside_stats(path):
    assert verdict_literals(path.read_text(encoding="utf-8")) == [], \
        f"{path.relative_to(PACKAGE)}: spell verdicts as records.verdict.Verdict members"


@pytest.mark.parametrize(("source", "found"), [
    ('x = "better"', [(1, "better")]),
    ('if v == "worse": pass', [(1, "worse")]),
    ('v in ("no clear difference", "can\'t tell")', [(1, "no clear difference"), (1, "can't tell")]),
    ('{"better": "green"}.get(v)', [(1, "better")]),
    ('g = {"verdict": "not measured (no validation queries)"}', [(1, "not measured (no validation queries)")]),
    ('"""Why a verdict is not "better"."""', []),                      # a docstring
    ('def f():\n    """better"""\n    return 1', []),                 # a function's docstring
    ('s = f"{name}: better, but a loss"', []),                         # f-string text
    ("s = f\"is {'better' if up else 'worse'}\"", [(1, "better"), (1, "worse")]),  # code inside an f-string
    ('s = f"{v}: {Verdict.BETTER}"', []),
    ('x = "better than before"', []),                                  # not a verdict word on its own
])
def test_verdict_literal_check_itself(source, found):
    assert verdict_literals(source) == found


# (b) ------------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("path", MODULES, ids=lambda p: str(p.relative_to(PACKAGE)))
def test_no_hand_written_interval_outside_stats(path):
    relative = str(path.relative_to(PACKAGE))
    assert hand_written_intervals(path.read_text(encoding="utf-8"), relative) == [], \
        f"{relative}: write intervals with records.verdict.interval / ci_text"


@pytest.mark.parametrize(("source", "found"), [
    ("s = f\"{d:+.3f} [{lo:+.3f}, {hi:+.3f}]\"", True),
    ("s = f\"{name}: {s['delta']:+.3f} [{s['ci95'][0]:+.3f}, {s['ci95'][1]:+.3f}] {v}\"", True),
    ("s = (f\"{d:+.3f} \"\n     f\"[{lo:+.3f}, {hi:+.3f}] on {n}\")", True),   # implicit concatenation
    ("s = f\"[{c['ci95'][0]:+.3f}, {c['ci95'][1]:+.3f}]\"", True),             # the interval alone
    ("s = f\"{d:+.3f} ({where})\"", False),
    ("s = f\"{interval(d, ci)} on {n}\"", False),
    ("s = f\"[{lo:.3f}, {hi:.3f}]\"", False),                                  # not a signed difference
])
def test_interval_check_itself(source, found):
    assert bool(hand_written_intervals(source)) is found


def test_interval_formats():
    assert interval(0.1234, [0.045, 0.2014]) == "+0.123 [+0.045, +0.201]"
    assert interval(-0.05, (-0.1, 0.0)) == "-0.050 [-0.100, +0.000]"
    assert ci_text([0.045, -0.2]) == "[+0.045, -0.200]"


def test_verdicts_are_their_words_in_json_and_text():
    gate = GateResult(Verdict.CANT_TELL, "ndcg@10", 0.5, 0.6, 0.1, (0.01, 0.2), 30,
                      subsets={"unseen documents": {"n": 10, "delta": 0.1, "ci95": [0.01, 0.2], "verdict": Verdict.BETTER}})
    plain = GateResult("can't tell", "ndcg@10", 0.5, 0.6, 0.1, (0.01, 0.2), 30,
                       subsets={"unseen documents": {"n": 10, "delta": 0.1, "ci95": [0.01, 0.2], "verdict": "better"}})
    assert json.dumps(gate.as_dict()) == json.dumps(plain.as_dict())      # cards stay byte-identical
    assert gate.sentence() == plain.sentence()
    assert "+0.100 [+0.010, +0.200]" in gate.sentence() and "can't tell" in gate.sentence()
    # a card written before reads back into the members (issue #39: read once, compared as members)
    again = GateResult.from_dict(json.loads(json.dumps(gate.as_dict())))
    assert again.verdict is Verdict.CANT_TELL and again.subset_verdict("unseen documents") is Verdict.BETTER
    assert plain.verdict is Verdict.CANT_TELL
    assert json.dumps(unmeasured_gate()) == '{"verdict": "not measured (no validation queries)"}'
    assert Verdict.allows(unmeasured_gate()["verdict"]) and Verdict.allows("better") and not Verdict.allows("worse")


# verdict words read into their members once (issue #39) -----------------------------------------------------------

ALLOWED_WORDS = "('better', 'worse', 'no clear difference', \"can't tell\", 'not measured')"


@pytest.mark.parametrize(("written", "member"), [
    ("better", Verdict.BETTER),
    ("worse", Verdict.WORSE),
    ("no clear difference", Verdict.NO_CLEAR_DIFFERENCE),
    ("can't tell", Verdict.CANT_TELL),
    ("not measured", Verdict.NOT_MEASURED),                              # a subset without queries
    ("not measured (no validation queries)", Verdict.NOT_MEASURED),      # unmeasured_gate()
    (Verdict.WORSE, Verdict.WORSE),
])
def test_every_written_verdict_reads_to_its_member(written, member):
    assert Verdict.read(written) is member
    assert gate_verdict({"verdict": written}) is member
    if member is not Verdict.NOT_MEASURED:
        gate = GateResult.from_dict({**_gate(written), "subsets": {"unseen documents": {"n": 3, "verdict": written}}})
        assert gate.verdict is member and gate.subset_verdict("unseen documents") is member
    card = TrainingCard.from_dict({"method": "full", "gate": {"verdict": written}})
    assert card.gate["verdict"] == str(written) and json.dumps(card.to_dict()["gate"]) == json.dumps({"verdict": str(written)})


@pytest.mark.parametrize(("value", "field", "message"), [
    ("Better", "gate.verdict", f"gate.verdict must be a verdict {ALLOWED_WORDS}, got 'Better'"),
    ("promoted", "comparisons.verdict", f"comparisons.verdict must be a verdict {ALLOWED_WORDS}, got 'promoted'"),
    ("", "gate.verdict", f"gate.verdict must be a verdict {ALLOWED_WORDS}, got ''"),
    (None, "gate.verdict", f"gate.verdict must be a verdict {ALLOWED_WORDS}, got None"),
    (1, "gate.verdict", f"gate.verdict must be a verdict {ALLOWED_WORDS}, got 1"),
])
def test_an_unknown_verdict_is_one_line_naming_the_field_and_the_words(value, field, message):
    with pytest.raises(OptionError) as caught:
        Verdict.read(value, field)
    assert str(caught.value) == message and "\n" not in str(caught.value)


@pytest.mark.parametrize(("card", "field"), [
    ({"gate": {"verdict": "good"}}, "gate.verdict"),
    ({"gate": {"verdict": "better", "subsets": {"seen documents": {"verdict": "good"}}}},
     "gate.subsets.seen documents.verdict"),
    ({"champion": {"source": "c", "gate": {"verdict": "good"}}}, "champion.gate.verdict"),
    ({"candidates": {"adapter": {"gate": {"verdict": "good"}, "reindex": False}}}, "candidates.adapter.gate.verdict"),
    ({"candidates": {"full": {"gate": {"verdict": "better"}, "reindex": True, "against_base": {"verdict": "good"}}}},
     "candidates.full.against_base.verdict"),
])
def test_a_card_with_an_unknown_verdict_is_one_line_naming_the_file_and_field(card, field):
    with pytest.raises(OptionError) as caught:
        TrainingCard.from_dict({"method": "auto", **card}, where="out/ace_training_card.json")
    assert str(caught.value) == (f"out/ace_training_card.json: field {field!r} must be a verdict {ALLOWED_WORDS}, "
                                 "got 'good'")


@pytest.mark.parametrize("written", ["continue", "promote", "end"])
def test_every_experiment_decision_reads_to_its_member(written):
    assert Decision.read(written) is Decision(written) and str(Decision.read(written)) == written
    with pytest.raises(OptionError, match=r"^decision must be a decision \('continue', 'promote', 'end'\), got 'stop'$"):
        Decision.read("stop")


# (c) ------------------------------------------------------------------------------------------------------------

BASE = "sentence-transformers/all-MiniLM-L6-v2"
# Every plan dict written before, as written: cards (HERE: the card's folder), TrainResult.serving (resolved paths),
# a rollout's collection record (absolute paths), an adapter over a plain LlamaIndex embedding (no model).
WRITTEN_PLANS = {
    "full fine-tune card": {"model": ".", "adapter": None, "reindex": True},
    "auto card, adapter over the base": {"model": BASE, "adapter": ".", "reindex": False},
    "auto card, full+adapter": {"model": ".", "adapter": ".", "reindex": True},
    "auto card, interpolation": {"model": ".", "adapter": None, "reindex": True},
    "adapter trainer": {"model": BASE, "adapter": "out/model", "reindex": False},
    "resolved full": {"model": "/srv/models/v2", "adapter": None, "reindex": True},
    "collection record, adapter": {"model": "/srv/base", "adapter": "/srv/models/v3", "reindex": False},
    "finetuning engine adapter": {"model": None, "adapter": "model_output", "reindex": False},
}


SERVING_RECORD = PACKAGE / "records" / "plan.py"
PLAN_KEYS = {"model", "adapter", "reindex"}


def _plan_receiver(node: ast.AST) -> bool:
    name = node.id if isinstance(node, ast.Name) else node.attr if isinstance(node, ast.Attribute) else ""
    return "serving" in name.lower() or "plan" in name.lower() or name == "candidate"


def plan_literals(source: str) -> list[tuple[int, str]]:
    """A serving plan written by hand (a dict literal with two of its keys) or read by key (``serving["adapter"]``,
    ``plan.get("reindex")``) instead of through ``ServingPlan``."""
    hits = []
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Dict):
            keys = {k.value for k in node.keys if isinstance(k, ast.Constant) and isinstance(k.value, str)}
            if len(keys & PLAN_KEYS) >= 2:
                hits.append((node.lineno, "a plan as a dict literal"))
        elif (isinstance(node, ast.Subscript) and _plan_receiver(node.value) and isinstance(node.slice, ast.Constant)
              and node.slice.value in PLAN_KEYS):
            hits.append((node.lineno, f"[{node.slice.value!r}]"))
        elif (isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute) and node.func.attr == "get"
              and _plan_receiver(node.func.value) and node.args and isinstance(node.args[0], ast.Constant)
              and node.args[0].value in PLAN_KEYS):
            hits.append((node.lineno, f".get({node.args[0].value!r})"))
    return hits


@pytest.mark.parametrize("path", [p for p in MODULES + [STATS] if p != SERVING_RECORD],
                         ids=lambda p: str(p.relative_to(PACKAGE)))
def test_no_serving_plan_literal_outside_its_module(path):
    assert plan_literals(path.read_text(encoding="utf-8")) == [], \
        f"{path.relative_to(PACKAGE)}: write and read serving plans through records.plan.ServingPlan"


@pytest.mark.parametrize(("source", "found"), [
    ('p = {"model": m, "adapter": None}', [(1, "a plan as a dict literal")]),
    ('serving["reindex"]', [(1, "['reindex']")]),
    ('champion.serving.get("adapter")', [(1, ".get('adapter')")]),
    ('plan.get("model")', [(1, ".get('model')")]),
    ('ServingPlan.from_dict(serving).adapter', []),
    ('kw["model"]', []),                                              # an option, not a plan
    ('identity = fingerprint_identity(fp)', []),
])
def test_plan_literal_check_itself(source, found):
    assert plan_literals(source) == found


@pytest.mark.parametrize("name", WRITTEN_PLANS)
def test_serving_plan_round_trips_every_written_form(name):
    written = WRITTEN_PLANS[name]
    plan = ServingPlan.from_dict(written)
    assert plan.to_dict() == written
    assert json.dumps(plan.to_dict()) == json.dumps(written)           # same keys, same order: same bytes on disk
    assert ServingPlan.from_dict(plan.to_dict()) == plan
    folder = Path("/work/out/model")
    assert plan.resolved(folder).to_dict() == resolve_serving(written, folder)
    assert HERE not in plan.resolved(folder).to_dict().values()


def test_serving_plan_without_reindex():
    # what loop.py and finetuning.py hand to serving_embedding for a plain model: it serves itself
    plan = ServingPlan.from_dict({"model": "some/model", "adapter": None})
    assert plan == ServingPlan("some/model") and plan.reindex is True
    assert plan.to_dict() == {"model": "some/model", "adapter": None, "reindex": True}
    assert ServingPlan.from_dict({"model": "m"}) == ServingPlan("m", None, True)


def test_serving_plan_is_frozen_and_hashable():
    plan = ServingPlan(".", ".", True)
    with pytest.raises(AttributeError):
        plan.model = "x"  # type: ignore[misc]
    assert {plan, ServingPlan(".", ".", True)} == {plan}


def test_trainers_plans_as_before():
    # training.py's card and result; method_selection.py's card and result; adapter.py's result
    assert ServingPlan(HERE).to_dict() == {"model": ".", "adapter": None, "reindex": True}
    out = Path("/tmp/out")
    card = {"model": ".", "adapter": None, "reindex": True}
    assert ServingPlan.from_dict(card).resolved(out).to_dict() == {**card, "model": str(out)}
    for reindex, adapter in ((True, False), (False, True), (True, True)):
        built = ServingPlan(HERE if reindex else BASE, HERE if adapter else None, reindex)
        by_hand = {"model": "." if reindex else BASE, "adapter": "." if adapter else None, "reindex": reindex}
        assert built.to_dict() == by_hand
        assert built.resolved(out).to_dict() == resolve_serving(by_hand, out)
    assert ServingPlan(BASE, str(out), reindex=False).to_dict() == {"model": BASE, "adapter": str(out), "reindex": False}


def _write(folder: Path, name: str, data: dict) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / name).write_text(json.dumps(data), encoding="utf-8")
    return folder


def test_old_folders_serve_as_before(tmp_path):
    full = _write(tmp_path / "full", CARD_NAME, {"method": "full", "serving": {"model": ".", "adapter": None, "reindex": True}})
    assert read_serving(full) == {"model": str(full), "adapter": None, "reindex": True}
    auto = _write(tmp_path / "auto", CARD_NAME, {"method": "auto", "serving": {"model": BASE, "adapter": ".", "reindex": False}})
    assert read_serving(auto) == {"model": BASE, "adapter": str(auto), "reindex": False}
    # an adapter trained before cards said how to serve it: over its base (a named one, or the folder's own model)
    legacy = _write(tmp_path / "legacy", ADAPTER_CARD, {"method": "adapter", "base": {"model": BASE}})
    (legacy / ADAPTER_FILE).write_bytes(b"")
    assert read_serving(legacy) == {"model": BASE, "adapter": str(legacy), "reindex": False}
    beside = _write(tmp_path / "beside", ADAPTER_CARD, {"method": "adapter", "base": {"model": "."}})
    assert read_serving(beside) == {"model": str(beside), "adapter": str(beside), "reindex": True}
    # a plain sentence-transformers folder serves itself
    plain = tmp_path / "plain"
    plain.mkdir()
    assert read_serving(plain) == {"model": str(plain), "adapter": None, "reindex": True}


# (d) ------------------------------------------------------------------------------------------------------------


def _old_cli(result) -> str:
    """How `ace train` told the outcomes apart before."""
    if result.promoted:
        return "promoted"
    return "base stays" if result.serving is None else "kept"


def _gate(verdict: str) -> dict:
    return {"verdict": verdict, "metric": "ndcg@10", "base": 0.61, "finetuned": 0.63, "delta": 0.02, "ci95": [-0.01, 0.05],
            "n_queries": 120, "seen_documents": 0.25, "subsets": {}, "decided_by": "unseen documents"}


def _full_card(promoted: bool, verdict: str = "better") -> dict:
    # training.py's card, as judge_and_write builds it
    return {"method": "full", "base_model": BASE, "gate": _gate(verdict), "promoted": promoted,
            "serving": {"model": ".", "adapter": None, "reindex": True}, "fusion": None}


def _auto_card(chosen: bool) -> dict:
    # method_selection.py's card: nothing chosen -> no serving plan, written to OUTPUT.not-promoted.json
    return {"method": "auto", "chosen": "adapter" if chosen else "base", "gate": _gate("better" if chosen else "worse"),
            "gate_of": "adapter", "promoted": chosen, "choice": {"steps": [], "forced": False, "reason": "none"},
            "serving": {"model": BASE, "adapter": ".", "reindex": False} if chosen else None}


def _adapter_card(promoted: bool) -> dict:
    # adapter.py's card (adapter_trainer adds the serving plan)
    return {"method": "adapter", "chosen": "adapter", "gate": _gate("better" if promoted else "no clear difference"),
            "promoted": promoted, "serving": {"model": BASE, "adapter": "out", "reindex": False}}


def _result(card: dict, out: Path = Path("out")) -> TrainResult:
    serving = card.get("serving")
    return TrainResult(model_dir=out, card=card, gate=GateResult.from_dict(card["gate"]), promoted=card["promoted"],
                       serving=ServingPlan.from_dict(serving).resolved(out).to_dict() if serving else None)


CASES = {
    "full, promoted": (_full_card(True), Outcome.PROMOTED),
    "full, forced over a worse verdict": (_full_card(True, "worse"), Outcome.PROMOTED),
    "full, older model kept": (_full_card(False, "no clear difference"), Outcome.KEPT),
    "auto, chosen": (_auto_card(True), Outcome.PROMOTED),
    "auto, the base stays": (_auto_card(False), Outcome.BASE_STAYS),
    "adapter, promoted": (_adapter_card(True), Outcome.PROMOTED),
    "adapter, older adapter kept": (_adapter_card(False), Outcome.KEPT),
}


@pytest.mark.parametrize("name", CASES)
def test_outcome_decoded_as_before(name):
    card, expected = CASES[name]
    result = _result(card)
    assert outcome(result) is expected and result.outcome is expected
    assert outcome(result) == _old_cli(result)
    assert outcome(card) is expected                                    # from the card alone
    assert outcome(json.loads(json.dumps(card))) is expected            # a card read back from disk
    # `ace pipeline` said "the base model stays" when the card had no plan and was not promoted
    assert (outcome(card) is Outcome.BASE_STAYS) == (card.get("serving") is None and not card.get("promoted", True))
    # run_pipeline refused when an older model was kept
    assert (outcome(result) is Outcome.KEPT) == (not result.promoted and result.serving is not None)


def test_outcome_of_an_old_card_without_promoted():
    assert outcome({"method": "full", "serving": {"model": ".", "adapter": None, "reindex": True}}) is Outcome.PROMOTED


# (e) one reader of a collection's serving plan (issue #39) ---------------------------------------------------------

SERVING_RECORD_MODULE = PACKAGE / "serve" / "serving_record.py"


def plan_reads(source: str) -> list[int]:
    """Where a module reads a collection's serving plan by its metadata key (``meta.get(SERVING_KEY)``,
    ``meta[SERVING_KEY]``, ``SERVING_KEY in meta``) instead of through ``serving_record.collection_plan``."""
    hits = []
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Subscript) and isinstance(node.ctx, ast.Load):
            key = node.slice
        elif isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute) and node.func.attr == "get" and node.args:
            key = node.args[0]
        elif isinstance(node, ast.Compare) and isinstance(node.ops[0], (ast.In, ast.NotIn)):
            key = node.left
        else:
            continue
        if isinstance(key, ast.Name) and key.id == "SERVING_KEY":
            hits.append(node.lineno)
    return hits


@pytest.mark.parametrize("path", [p for p in MODULES + [STATS] if p != SERVING_RECORD_MODULE],
                         ids=lambda p: str(p.relative_to(PACKAGE)))
def test_one_reader_of_a_collections_plan(path):
    assert plan_reads(path.read_text(encoding="utf-8")) == [], \
        f"{path.relative_to(PACKAGE)}: read a collection's serving plan with serve.serving_record.collection_plan"


@pytest.mark.parametrize(("source", "found"), [
    ("plan = index.metadata().get(SERVING_KEY)", [1]),
    ("plan = meta[SERVING_KEY]", [1]),
    ("if SERVING_KEY not in current.metadata(): pass", [1]),
    ("current.set_metadata({SERVING_KEY: plan})", []),                  # writing it
    ("plan = collection_plan(index)", []),
])
def test_plan_read_check_itself(source, found):
    assert plan_reads(source) == found


def test_collection_plan_reads_an_index_or_its_metadata():
    from ace_llamaindex.serve.serving_record import SERVING_KEY, collection_plan

    plan = WRITTEN_PLANS["collection record, adapter"]

    class Index:
        def metadata(self):
            return {SERVING_KEY: plan, "ace_vector": "v"}

    assert collection_plan(Index()) == plan and collection_plan({SERVING_KEY: plan}) == plan
    assert collection_plan({}) is None


# (f) long signatures (issue #39): the functions with 15 or more parameters, each named; a new one fails here -------

LONG_SIGNATURES = {  # (module, function): parameters; issue #39: at most 2, each mirroring LlamaIndex's own
    ("serve/retriever.py", "__init__"): 23,
    ("finetuning.py", "__init__"): 19,
}


def long_signatures(root: Path = PACKAGE, at_least: int = 15) -> dict[tuple[str, str], int]:
    found = {}
    for path in sorted(root.rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                a = node.args
                n = (len(a.posonlyargs) + len(a.args) + len(a.kwonlyargs) + (a.vararg is not None)
                     + (a.kwarg is not None) - (bool(a.args) and a.args[0].arg in ("self", "cls")))
                if n >= at_least:
                    found[(str(path.relative_to(root)), node.name)] = n
    return found


def test_no_new_long_signature():
    assert len(LONG_SIGNATURES) <= 2
    grown = {f: n for f, n in long_signatures().items() if n > LONG_SIGNATURES.get(f, 14)}
    assert grown == {}, f"functions with 15 or more parameters (take an options record instead): {grown}"


# (g) the training card filled through its methods (issue #39) -------------------------------------------------------

TRAIN_PACKAGE = PACKAGE / "train"
RECORDED = {"gate", "champion", "candidates", "training_queries", "validation_queries"}


def card_keywords(source: str) -> list[tuple[int, str]]:
    """What a module writes into a card by hand: a ``TrainingCard(...)`` keyword that a ``record_*`` method fills,
    or an assignment to one of those fields."""
    hits = []
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Call) and getattr(node.func, "id", getattr(node.func, "attr", None)) == "TrainingCard":
            hits += [(node.lineno, k.arg) for k in node.keywords if k.arg in RECORDED]
        elif isinstance(node, ast.Assign):
            hits += [(node.lineno, t.attr) for t in node.targets if isinstance(t, ast.Attribute) and t.attr in RECORDED
                     and getattr(t.value, "id", "") == "card"]
    return hits


@pytest.mark.parametrize("path", sorted(TRAIN_PACKAGE.glob("*.py")), ids=lambda p: p.name)
def test_trainers_fill_their_card_through_its_methods(path):
    assert card_keywords(path.read_text(encoding="utf-8")) == [], \
        f"train/{path.name}: record the gate, champion, candidates and queries with TrainingCard.record_*"


@pytest.mark.parametrize(("source", "found"), [
    ("c = TrainingCard(method='full', gate=g.as_dict())", [(1, "gate")]),
    ("c = TrainingCard(method='auto', candidates={}, promoted=True)", [(1, "candidates")]),
    ("card.champion = {'gate': g}", [(1, "champion")]),
    ("c = TrainingCard(method='full', promoted=True)", []),
    ("card.record_gate(g)", []),
])
def test_card_keyword_check_itself(source, found):
    assert card_keywords(source) == found


def test_the_card_records_what_the_trainers_wrote_by_hand():
    from ace_llamaindex.records.card import text_hash

    better, worse = GateResult.from_dict(_gate("better")), GateResult.from_dict(_gate("worse"))
    champion = {"source": "collection 'c'", "serving": WRITTEN_PLANS["resolved full"], "identity": {"model": "m"},
                "method": "full"}
    card = (TrainingCard(method="auto").record_gate(better).record_champion(champion, "replayed 3 queries", worse)
            .record_candidate("adapter", better, False).record_candidate("full", worse, True, against_base=better)
            .record_queries(["q1", "q2", "q1"], iter(["v"])))
    # as training.py, adapter.py and method_selection.py wrote them by hand before
    assert card.gate == better.as_dict()
    assert card.champion == {**champion, "history": "replayed 3 queries", "gate": worse.as_dict()}
    assert list(card.champion) == [*champion, "history", "gate"]
    assert card.candidates == {"adapter": {"gate": better.as_dict(), "reindex": False},
                               "full": {"gate": worse.as_dict(), "reindex": True, "against_base": better.as_dict()}}
    assert list(card.candidates["full"]) == ["gate", "reindex", "against_base"]
    assert card.training_queries == sorted({text_hash("q1"), text_hash("q2")})
    assert card.validation_queries == [text_hash("v")]
    unmeasured = TrainingCard(method="full").record_gate(None).record_champion(champion, None, None)
    assert unmeasured.gate == unmeasured_gate() and unmeasured.champion["gate"] == unmeasured_gate()
    assert TrainingCard(method="full").record_champion(None, None, better).champion is None
    assert TrainingCard.from_dict(json.loads(json.dumps(card.to_dict()))) == card
