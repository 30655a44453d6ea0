"""The `ace` CLI: a thin shell with clear errors, end to end on the shipped dataset."""

from __future__ import annotations

import json

from click.testing import CliRunner

from ace_llamaindex.cli import cli
from ace_llamaindex.data.loading import DEMO_DATASET, SMALL_DATASET, load_dataset
from ace_llamaindex.embeddings.query_adapter import ADAPTER_CARD
from ace_llamaindex.records.card import text_hash

SMALL = str(SMALL_DATASET)
DEMO = str(DEMO_DATASET)


def test_mine_eval_and_errors(tmp_path):
    runner = CliRunner()
    out = tmp_path / "training_data.json"
    result = runner.invoke(cli, ["mine", SMALL, "--miner", "bm25", "--num-negatives", "2", "--min-difficulty", "hard", "-o", str(out)])
    assert result.exit_code == 0, result.output
    data = json.loads(out.read_text())
    assert data["metadata"]["total_examples"] == len(data["examples"]) > 0
    assert {e["metadata"]["difficulty"] for e in data["examples"]} == {"hard"}

    result = runner.invoke(cli, ["eval", SMALL, "--max-queries", "20", "--out-dir", str(tmp_path / "r"), "--report", "json", "--report", "md"])
    assert result.exit_code == 0, result.output
    report = json.loads((tmp_path / "r" / "eval.json").read_text())
    assert report["n_queries"] == 20 and set(report["overall"]) == {"bm25", "base", "base+hybrid"}
    assert len(report["by_category"]) > 3  # a random sample, not the file's first (same-category) queries
    assert "recall@1" in result.output


def test_bad_input_is_one_clear_line(tmp_path):
    runner = CliRunner()
    bad = tmp_path / "bad.json"
    bad.write_text('{"queries": {"q1": "x"}, "corpus": {"d1": "y"}, "relevant_docs": {"q1": ["d2"]}}')
    result = runner.invoke(cli, ["mine", str(bad)])
    assert result.exit_code == 2
    assert "bad.json: relevant_docs['q1']: corpus id 'd2' is not in corpus" in result.output
    assert "Traceback" not in result.output
    result = runner.invoke(cli, ["mine", "--range-min", "9", "--range-max", "3"])
    assert result.exit_code == 2 and "range_min < range_max" in result.output
    result = runner.invoke(cli, ["train", str(tmp_path / "missing.json")])
    assert result.exit_code == 2 and "missing.json: file: does not exist" in result.output
    data = tmp_path / "training_data.json"
    data.write_text(json.dumps({"examples": [{"query": f"q{i}", "positive": f"p{i}", "negatives": [f"n{i}"]} for i in range(4)]}))
    result = runner.invoke(cli, ["train", str(data), "-o", str(tmp_path / "m"), "--base-model", str(tmp_path / "no-model")])
    assert result.exit_code == 2 and "cannot load sentence-transformers model" in result.output and "no-model" in result.output
    assert not (tmp_path / "m").exists()
    result = runner.invoke(cli, ["pipeline", "--epochs", "0", "--out", str(tmp_path / "run")])
    assert result.exit_code == 2 and "--epochs': 0 is not in the range x>=1" in result.output
    assert not (tmp_path / "run" / "training_data.json").exists()  # refused before mining


def test_pipeline_end_to_end(tmp_path):
    result = CliRunner().invoke(cli, ["pipeline", SMALL, "--out", str(tmp_path / "run"), "--method", "full", "--batch-size", "16", "--num-negatives", "2",
                                      "--max-seq-length", "64", "--val-fraction", "0"])
    assert result.exit_code == 0, result.output
    run = tmp_path / "run"
    report = json.loads((run / "eval.json").read_text())
    assert {"base", "finetuned", "finetuned+hybrid"} <= set(report["overall"])
    assert report["training_card"]["train_examples"] > 0
    assert (run / "model" / "model.safetensors").exists() and (run / "eval.png").exists()
    assert "finetuned vs base" in result.output


def test_index_then_search(tmp_path):
    runner = CliRunner()
    where = ["--qdrant-path", str(tmp_path / "q"), "--collection", "mem"]
    result = runner.invoke(cli, ["index", SMALL, *where])
    assert result.exit_code == 0, result.output
    result = runner.invoke(cli, ["search", "celery tasks never run", "--json", "--top-k", "3", *where])
    assert result.exit_code == 0, result.output
    rows = json.loads(result.output)
    assert rows[0]["id"] == "m010" and len(rows) == 3


def test_the_default_pipeline_promotes_and_eval_index_search_serve_the_chosen_model(tmp_path):
    """On the default dataset (the team memories) the gate promotes; then `ace eval`, `ace index` and `ace search`
    serve what was chosen, and it answers held-out queries the base does not."""
    runner = CliRunner()
    run = tmp_path / "run"
    result = runner.invoke(cli, ["pipeline", "--out", str(run), "--method", "adapter"])  # no DATASET: the default
    assert result.exit_code == 0, result.output
    pipeline_report = json.loads((run / "eval.json").read_text())
    assert pipeline_report["dataset"] == DEMO
    card = pipeline_report["training_card"]
    assert card["method"] == "adapter" and card["promoted"] is True, card["gate"]
    assert card["gate"]["verdict"] == "better" and card["gate"]["decided_by"] == "unseen documents", card["gate"]
    assert card["serving"] == {"model": card["serving"]["model"], "adapter": str(run / "model"), "reindex": False}
    assert (run / "model" / ADAPTER_CARD).exists() and "the base model stays" not in result.output

    model = str(run / "model")
    result = runner.invoke(cli, ["eval", DEMO, "--finetuned", model, "--out-dir", str(tmp_path / "r"), "--report", "json",
                                 "--exclude-training-queries"])
    assert result.exit_code == 0, result.output
    report = json.loads((tmp_path / "r" / "eval.json").read_text())
    trained = set(card["training_queries"]) | set(card["validation_queries"])
    dataset = load_dataset(DEMO_DATASET)
    assert 0 < report["n_queries"] < len(dataset.queries)
    assert not {text_hash(dataset.queries[q]) for q in report["per_query"]} & trained  # held-out queries only
    [gain] = [c for c in report["comparisons"] if (c["baseline"], c["candidate"], c["metric"]) == ("base", "finetuned", "ndcg@10")]
    assert gain["verdict"] == "better" and gain["ci95"][0] > 0, gain

    # a held-out query the chosen model answers first and the base ranks third or lower
    rows = report["per_query"]
    qid = next(q for q in sorted(rows) if rows[q]["finetuned"]["mrr@10"] == 1 and rows[q]["base"]["mrr@10"] <= 1 / 3)
    where = ["--qdrant-path", str(tmp_path / "q"), "--collection", "mem", "--mode", "dense", "--json"]
    result = runner.invoke(cli, ["index", DEMO, "--model", model, *where[:4]])
    assert result.exit_code == 0, result.output
    chosen = runner.invoke(cli, ["search", dataset.queries[qid], "--model", model, *where])
    assert chosen.exit_code == 0, chosen.output
    assert json.loads(chosen.output)[0]["id"] in dataset.relevant_docs[qid]
    base = runner.invoke(cli, ["search", dataset.queries[qid], *where])  # the same collection, the base model
    assert base.exit_code == 0, base.output
    assert json.loads(base.output)[0]["id"] not in dataset.relevant_docs[qid]


def test_an_adapter_folder_is_evaluated_and_served_over_its_base(tmp_path):
    runner = CliRunner()
    data = tmp_path / "training_data.json"
    assert runner.invoke(cli, ["mine", SMALL, "--num-negatives", "2", "-o", str(data)]).exit_code == 0
    adapter = tmp_path / "adapter"
    result = runner.invoke(cli, ["train", str(data), "-o", str(adapter), "--method", "adapter", "--epochs", "5", "--force"])
    assert result.exit_code == 0, result.output
    assert "used as is" in result.output and not (adapter / "model.safetensors").exists()
    result = runner.invoke(cli, ["eval", SMALL, "--finetuned", str(adapter), "--out-dir", str(tmp_path / "r"), "--report", "json"])
    assert result.exit_code == 0, result.output
    assert "finetuned" in json.loads((tmp_path / "r" / "eval.json").read_text())["overall"]
    where = ["--qdrant-path", str(tmp_path / "q"), "--collection", "mem"]
    assert runner.invoke(cli, ["index", SMALL, *where]).exit_code == 0  # indexed with the base model alone
    result = runner.invoke(cli, ["search", "celery tasks never run", "--json", "--model", str(adapter), *where])
    assert result.exit_code == 0, result.output
    assert json.loads(result.output)[0]["id"] == "m010"
