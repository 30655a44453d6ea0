"""Dataset formats: LlamaIndex finetuning JSON, BEIR folders, test-suite JSON; and their error messages."""

from __future__ import annotations

import json

import pytest
from click.testing import CliRunner

from ace_llamaindex.cli import cli
from ace_llamaindex.data.beir import load_beir
from ace_llamaindex.data.dataset import QADataset, load_llamaindex_json
from ace_llamaindex.data.loading import load_dataset
from ace_llamaindex.data.test_suite import load_test_suite
from ace_llamaindex.errors import DatasetError

LI = {"queries": {"q1": "how to roll back"}, "corpus": {"d1": "Re-run the release with the old tag.", "d2": "Deploy on Mondays."},
      "relevant_docs": {"q1": ["d1"]}, "mode": "text"}


def write(path, data):
    path.write_text(data if isinstance(data, str) else json.dumps(data))
    return path


def test_llamaindex_roundtrip_keeps_metadata_and_format(tmp_path):
    ds = QADataset(LI["queries"], LI["corpus"], LI["relevant_docs"], query_meta={"q1": {"difficulty": "hard", "category": "ops"}})
    path = ds.save(tmp_path / "ds.json")
    raw = json.loads(path.read_text())
    assert set(raw) >= {"queries", "corpus", "relevant_docs", "mode"}
    again = load_llamaindex_json(path)
    assert again.relevant_docs == {"q1": ["d1"]} and again.difficulty("q1") == "hard" and again.category("q1") == "ops"


def test_duck_typed_llamaindex_object():
    class Obj:  # what an EmbeddingQAFinetuneDataset exposes
        queries, corpus, relevant_docs, mode = LI["queries"], LI["corpus"], LI["relevant_docs"], "text"

    assert QADataset.from_llamaindex(Obj()).queries == LI["queries"]


@pytest.mark.parametrize(
    "content, expected",
    [
        ('{"queries": {"q1": "x"},\n "corpus": {', "line 2"),
        ({"queries": {"q1": "x"}, "corpus": {"d1": "y"}}, "'relevant_docs'"),
        ({**LI, "relevant_docs": {"q1": ["nope"]}}, "corpus id 'nope' is not in corpus"),
        ('{"queries": {"q1": "a", "q1": "b"}, "corpus": {}, "relevant_docs": {}}', "'q1'"),
        ({**LI, "relevant_docs": {"q1": ["d1"], "q9": ["d1"]}}, "q9"),
        ({**LI, "query_meta": {"q1": {"difficulty": "extreme"}}}, "expected one of"),
    ],
)
def test_bad_llamaindex_files_name_file_and_record(tmp_path, content, expected):
    path = write(tmp_path / "bad.json", content)
    with pytest.raises(DatasetError) as err:
        load_llamaindex_json(path)
    assert str(path) in str(err.value) and expected in str(err.value)


def make_beir(root, qrels="query-id\tcorpus-id\tscore\nq1\td1\t1\nq2\td2\t1\nq2\td1\t0\n"):
    (root / "qrels").mkdir(parents=True)
    write(root / "corpus.jsonl", '{"_id": "d1", "title": "Rollback", "text": "Re-run the release."}\n{"_id": "d2", "title": "", "text": "Freeze on Fridays."}\n')
    write(root / "queries.jsonl", '{"_id": "q1", "text": "undo a deploy"}\n{"_id": "q2", "text": "deploy friday"}\n{"_id": "q3", "text": "unused"}\n')
    write(root / "qrels" / "test.tsv", qrels)
    return root


def test_beir_folder(tmp_path):
    ds = load_beir(make_beir(tmp_path / "b"), "test")
    assert ds.queries == {"q1": "undo a deploy", "q2": "deploy friday"}  # only queries with judgements
    assert ds.relevant_docs == {"q1": ["d1"], "q2": ["d2"]}  # score 0 is not relevant
    assert ds.corpus["d1"] == "Rollback Re-run the release."
    assert load_dataset(tmp_path / "b", split="test").corpus == ds.corpus  # auto-detected


def test_beir_errors_name_the_line(tmp_path):
    root = make_beir(tmp_path / "b", qrels="query-id\tcorpus-id\tscore\nq1\td1\n")
    with pytest.raises(DatasetError, match=r"test.tsv: line 2: expected 3 tab-separated"):
        load_beir(root, "test")
    with pytest.raises(DatasetError, match="train.tsv: file: does not exist"):
        load_beir(root, "train")


def test_test_suite_by_id_and_by_text(tmp_path):
    path = write(tmp_path / "suite.json", {
        "memories": [{"id": "m1", "text": "Check logs first."}, {"id": "m2", "text": "Money is integer cents."}],
        "tests": [
            {"query": "debug errors", "expected_memory_id": "m1", "difficulty": "easy", "category": "debugging"},
            {"query": "store prices", "expected_memory": "Money is integer cents.", "difficulty": "hard", "category": "conventions"},
            {"query": "new fact", "expected_memory": "A memory only named here.", "category": "misc"},
        ],
    })
    ds = load_test_suite(path)
    assert ds.relevant_docs["q0001"] == ["m1"] and ds.relevant_docs["q0002"] == ["m2"]
    assert ds.corpus[ds.relevant_docs["q0003"][0]] == "A memory only named here."
    assert ds.difficulty("q0002") == "hard" and ds.category("q0003") == "misc" and ds.difficulty("q0003") is None


@pytest.mark.parametrize(
    "tests, expected",
    [
        ([{"query": "x"}], "tests[0]: needs 'expected_memory'"),
        ([{"query": "x", "expected_memory_id": "m9"}], "tests[0].expected_memory_id: 'm9' is not the id"),
        ([{"query": "x", "expected_memory": "t", "difficulty": "brutal"}], "tests[0].difficulty"),
        ([{"expected_memory": "t"}], "tests[0]: expected an object with a 'query' string"),
    ],
)
def test_test_suite_errors(tmp_path, tests, expected):
    path = write(tmp_path / "suite.json", {"memories": [{"id": "m1", "text": "a"}], "tests": tests})
    with pytest.raises(DatasetError, match=expected.replace("[", r"\[").replace("]", r"\]").replace(".", r"\.")):
        load_test_suite(path)


def test_shipped_demo_dataset_is_labelled(demo):
    assert 100 <= len(demo.queries) <= 250 and len(demo.corpus) >= 80
    assert {demo.difficulty(q) for q in demo.queries} == {"easy", "medium", "hard"}
    assert len({demo.category(q) for q in demo.queries}) >= 8


def test_split_is_disjoint_and_reproducible(demo):
    train, test = demo.split(0.25, seed=1)
    assert not set(train.queries) & set(test.queries)
    assert len(train.queries) + len(test.queries) == len(demo.queries)
    assert demo.split(0.25, seed=1)[1].queries == test.queries


BLEMISHED = {"queries": {"q1": "undo a deploy", "q2": "friday freeze", "q3": "   "},
             "corpus": {"d1": "Re-run the release.", "d2": "", "d3": "Freeze on Fridays."},
             "relevant_docs": {"q1": ["d1", "d2"], "q2": ["d2"], "q3": ["d3"]}}


@pytest.mark.parametrize(("kind", "items"), [
    ("empty documents", ["d2"]),
    ("qrels to empty documents", ["q1 -> d2", "q2 -> d2"]),
    ("empty queries", ["q3"]),
    ("queries left without a relevant document", ["q2"]),
])
def test_blemishes_are_dropped_and_counted(tmp_path, kind, items):
    from ace_llamaindex.data.loading import load_dataset

    ds = load_dataset(write(tmp_path / "b.json", BLEMISHED))
    assert ds.dropped[kind] == items
    assert list(ds.queries) == ["q1"] and ds.relevant_docs == {"q1": ["d1"]} and "d2" not in ds.corpus
    assert f"{len(items)} {kind}" in ds.hygiene_summary()


def test_strict_refuses_blemishes_naming_the_record(tmp_path):
    from ace_llamaindex.data.loading import load_dataset

    path = write(tmp_path / "b.json", BLEMISHED)
    with pytest.raises(DatasetError, match="d2: empty documents"):
        load_dataset(path, strict=True)


def test_beir_empty_document_and_its_qrels_are_dropped(tmp_path):
    from ace_llamaindex.data.loading import load_dataset

    root = make_beir(tmp_path / "beir")
    write(root / "corpus.jsonl", '{"_id": "d1", "title": "Rollback", "text": "Re-run the release."}\n{"_id": "d2", "title": "", "text": " "}\n')
    ds = load_dataset(root, split="test")
    assert ds.dropped["empty documents"] == ["d2"] and list(ds.queries) == ["q1"]
    result = CliRunner().invoke(cli, ["eval", str(root), "--strict", "--out-dir", str(tmp_path / "r")])
    assert result.exit_code == 2 and "empty documents" in result.output and "Traceback" not in result.output
