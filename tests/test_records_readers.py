"""Typed readers of a card's gate, champion and comparisons (issue #39, "one floor for the records"): every shape a
card holds is read in ``ace_llamaindex.records`` into attributes, and no stage indexes those dicts by key.

Fast: literal dicts, no model."""

from __future__ import annotations

import ast
import json
from pathlib import Path

import pytest

from ace_llamaindex.errors import OptionError
from ace_llamaindex.records.card import TrainingCard
from ace_llamaindex.records.gate import GateResult, unmeasured_gate
from ace_llamaindex.records.verdict import Comparison, SystemComparison, Verdict

UNSEEN, SEEN = "unseen documents", "seen documents"
MIX = "documents seen 30% / unseen 70%"


def _cmp(n, base, finetuned, delta, lo, hi, verdict, **extra):
    return {"n": n, "base": base, "finetuned": finetuned, "delta": delta, "ci95": [lo, hi], "verdict": verdict, **extra}


def _gate(verdict="better", decided_by=UNSEEN, subsets=None, **over):
    return {"verdict": verdict, "metric": "ndcg@10", "base": 0.5, "finetuned": 0.6, "delta": 0.1, "ci95": [0.05, 0.15],
            "n_queries": 100, "seen_documents": 0.3, "decided_by": decided_by,
            "subsets": {UNSEEN: _cmp(70, 0.5, 0.61, 0.11, 0.04, 0.18, "better"),
                        SEEN: _cmp(30, 0.5, 0.58, 0.08, -0.01, 0.17, "no clear difference")} if subsets is None else subsets,
            **over}


def _champion(gate):
    return {"source": "collection 'docs'", "serving": {"model": "m"}, "identity": {"model": "m", "adapter": None},
            "method": "full", "history": "replayed 2 rounds", "gate": gate}


OVERALL = Comparison(Verdict.BETTER, 100, 0.5, 0.6, 0.1, (0.05, 0.15))

# (id, the card, which gate is read, then what the reader gives: verdict, words, measured, deciding, subsets)
ROWS = [
    ("full gate decided on unseen documents", {"method": "full", "gate": _gate()}, "gate",
     Verdict.BETTER, "better", True, Comparison(Verdict.BETTER, 70, 0.5, 0.61, 0.11, (0.04, 0.18)), [UNSEEN, SEEN]),
    ("gate decided on all queries", {"method": "full", "gate": _gate(decided_by="all validation queries", subsets={})},
     "gate", Verdict.BETTER, "better", True, OVERALL, []),
    ("can't tell: too few unseen, all queries carry the numbers",
     {"method": "full", "gate": _gate("can't tell", "too few unseen-document queries (5 < 20)",
                                      {UNSEEN: _cmp(5, 0.4, 0.5, 0.1, -0.1, 0.3, "no clear difference"),
                                       SEEN: {"n": 0, "delta": None, "verdict": "not measured"}})},
     "gate", Verdict.CANT_TELL, "can't tell", True, Comparison(Verdict.CANT_TELL, 100, 0.5, 0.6, 0.1, (0.05, 0.15)),
     [UNSEEN, SEEN]),
    ("a seen/unseen mix decides (no means recorded)",
     {"method": "full", "gate": _gate(decided_by=MIX, subsets={MIX: {"n": 100, "delta": 0.09, "ci95": [0.02, 0.16],
                                                                    "verdict": "better", "weights": {SEEN: 0.3}}})},
     "gate", Verdict.BETTER, "better", True, Comparison(Verdict.BETTER, 100, None, None, 0.09, (0.02, 0.16)), [MIX]),
    ("unmeasured gate", {"method": "full", "gate": unmeasured_gate()}, "gate",
     Verdict.NOT_MEASURED, "not measured (no validation queries)", False,
     Comparison(Verdict.NOT_MEASURED, 0), []),
    ("champion gate, against the champion", {"method": "full", "gate": _gate(),
                                             "champion": _champion(_gate("worse", subsets={UNSEEN: _cmp(
                                                 70, 0.7, 0.6, -0.1, -0.2, -0.05, "worse")}))},
     "champion", Verdict.WORSE, "worse", True, Comparison(Verdict.WORSE, 70, 0.7, 0.6, -0.1, (-0.2, -0.05)), [UNSEEN]),
    ("unmeasured champion gate", {"method": "full", "gate": unmeasured_gate(), "champion": _champion(unmeasured_gate())},
     "champion", Verdict.NOT_MEASURED, "not measured (no validation queries)", False,
     Comparison(Verdict.NOT_MEASURED, 0), []),
    ("an auto candidate's gate", {"method": "auto", "chosen": "adapter", "gate": _gate(),
                                  "candidates": {"adapter": {"gate": _gate("no clear difference"), "reindex": False}}},
     "candidate", Verdict.NO_CLEAR_DIFFERENCE, "no clear difference", True,
     Comparison(Verdict.BETTER, 70, 0.5, 0.61, 0.11, (0.04, 0.18)), [UNSEEN, SEEN]),
]


def _read(card: TrainingCard, which: str) -> GateResult | None:
    if which == "gate":
        return card.gate_result()
    if which == "champion":
        return card.champion_record().gate
    return card.judged_candidates()[0].gate_result()


@pytest.mark.parametrize(("card", "which", "verdict", "words", "measured", "deciding", "subsets"),
                         [row[1:] for row in ROWS], ids=[row[0] for row in ROWS])
def test_every_card_shape_reads_into_attributes(card, which, verdict, words, measured, deciding, subsets):
    gate = _read(TrainingCard.from_dict(json.loads(json.dumps(card))), which)
    assert gate.verdict is verdict and type(gate.verdict) is Verdict
    assert (gate.words, gate.measured) == (words, measured)
    assert gate.deciding() == deciding
    assert type(gate.deciding().verdict) is Verdict
    assert list(gate.subset_comparisons()) == subsets
    assert all(type(c.verdict) is Verdict for c in gate.subset_comparisons().values())
    if measured:
        assert gate.overall().interval() == "+0.100 [+0.050, +0.150]"


def test_no_gate_reads_as_none_and_no_champion_as_none():
    card = TrainingCard.from_dict({"method": "full"})
    assert card.gate_result() is None and card.champion_record() is None
    assert GateResult.read({}) is None and GateResult.read(None) is None


def test_the_champion_record_reads_its_fields():
    champion = TrainingCard.from_dict({"method": "full", "gate": _gate(), "champion": _champion(_gate("worse"))}) \
        .champion_record()
    assert (champion.source, champion.history, champion.method) == ("collection 'docs'", "replayed 2 rounds", "full")
    assert champion.serving == {"model": "m"} and champion.gate.verdict is Verdict.WORSE


@pytest.mark.parametrize(("read", "field"), [
    (lambda: GateResult.read(_gate("great")), "gate.verdict"),
    (lambda: GateResult.read(_gate(subsets={UNSEEN: _cmp(70, 0.5, 0.6, 0.1, 0.0, 0.2, "great")})),
     "gate.subsets.unseen documents.verdict"),
    (lambda: TrainingCard(method="full", champion=_champion({"verdict": "great"})).champion_record(),
     "champion.gate.verdict"),
    (lambda: TrainingCard(method="auto", candidates={"full": {"gate": _gate("great"), "reindex": True}})
     .judged_candidates()[0].gate_result(), "candidates.full.gate.verdict"),
    (lambda: Comparison.read({"delta": 0.1, "ci95": [0.0, 0.2], "verdict": "great"}, "vs_dense.bm25"),
     "vs_dense.bm25.verdict"),
    (lambda: SystemComparison.read({"candidate": "a", "baseline": "b", "metric": "ndcg@10", "delta": 0.1,
                                    "ci95": [0.0, 0.2], "verdict": "great"}), "comparisons.verdict"),
])
def test_an_unknown_verdict_word_is_one_line_naming_the_field(read, field):
    with pytest.raises(OptionError) as raised:
        read()
    message = str(raised.value)
    assert message.startswith(f"{field} must be a verdict (") and message.endswith("got 'great'"), message
    assert "\n" not in message


def test_report_and_fusion_comparisons_read_into_attributes():
    row = SystemComparison.read({"baseline": "base", "candidate": "finetuned", "metric": "ndcg@10", "delta": 0.1,
                                 "ci95": [0.01, 0.2], "p_value": 0.01, "verdict": "better"})
    assert (row.candidate, row.baseline, row.metric, row.verdict) == ("finetuned", "base", "ndcg@10", Verdict.BETTER)
    assert type(row.verdict) is Verdict and row.interval() == "+0.100 [+0.010, +0.200]" and row.n is None
    versus = Comparison.read({"delta": -0.2, "ci95": [-0.3, -0.1], "verdict": "worse"})
    assert versus == Comparison(Verdict.WORSE, None, None, None, -0.2, (-0.3, -0.1))


def test_reading_leaves_the_card_file_byte_for_byte(tmp_path):
    data = {"method": "auto", "chosen": "adapter", "gate": _gate(), "champion": _champion(unmeasured_gate()),
            "candidates": {"adapter": {"gate": _gate(), "reindex": False, "against_base": _gate()}}}
    first = TrainingCard.from_dict(data).save(tmp_path / "a.json")
    card = TrainingCard.read(first)
    card.gate_result(), card.champion_record(), [c.gate_result() for c in card.judged_candidates()]
    assert card.save(tmp_path / "b.json").read_bytes() == first.read_bytes()
    assert json.loads(first.read_text())["champion"]["gate"] == {"verdict": "not measured (no validation queries)"}


# -- no stage indexes a gate, champion or comparison by key: the records package reads them ----------------------------

PACKAGE = Path(__file__).resolve().parents[1] / "ace_llamaindex"
RECORD_KEYS = {"verdict", "delta", "ci95", "decided_by", "subsets", "finetuned", "history", "seen_documents"}
OUTSIDE_RECORDS = sorted(p for p in PACKAGE.rglob("*.py") if "records" not in p.relative_to(PACKAGE).parts)


def record_key_reads(source: str) -> list[tuple[int, str]]:
    """``x["delta"]`` / ``x.get("verdict")`` reads of a gate's, champion's or comparison's keys (writes are fine)."""
    hits = []
    for node in ast.walk(ast.parse(source)):
        key = None
        if isinstance(node, ast.Subscript) and isinstance(node.ctx, ast.Load) and isinstance(node.slice, ast.Constant):
            key = node.slice.value
        elif isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute) and node.func.attr == "get" \
                and node.args and isinstance(node.args[0], ast.Constant):
            key = node.args[0].value
        if key in RECORD_KEYS:
            hits.append((node.lineno, key))
    return hits


@pytest.mark.parametrize("path", OUTSIDE_RECORDS, ids=lambda p: str(p.relative_to(PACKAGE)))
def test_no_stage_reads_record_keys(path):
    assert record_key_reads(path.read_text(encoding="utf-8")) == [], \
        f"{path.relative_to(PACKAGE)}: read gates and comparisons with ace_llamaindex.records (GateResult.read, ...)"


@pytest.mark.parametrize(("source", "found"), [
    ('d = g["delta"]', [(1, "delta")]),
    ('v = gate.get("verdict", None)', [(1, "verdict")]),
    ("print(f\"{sub['ci95']}\")", [(1, "ci95")]),
    ('c = {"delta": 0.1, "verdict": v}', []),          # writing a record is fine
    ('result.subsets["x"] = {}', []),                   # so is storing into one
    ('n = report["n_queries"]', []),                    # an evaluation report's own field
])
def test_record_key_check_itself(source, found):
    assert record_key_reads(source) == found
