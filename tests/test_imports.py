"""The import rule at run time: serving loads no training, mining, evaluation or deployment code, the ``ace`` command
loads no stage until a command runs, every public name still resolves (lazily), and the deprecated names still
work and say so. Each import check runs in a fresh interpreter: this test process has imported everything."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap

import pytest

HEAVY = ("ace_llamaindex.train", "ace_llamaindex.mine", "ace_llamaindex.evaluate", "ace_llamaindex.deploy")
# What `from ace_llamaindex import X` gave before the exports were lazy: every one must keep working.
EXPORTED_BEFORE = [
    "AceQdrantVectorStore", "AdapterConfig", "AdapterEmbedding", "BM25Encoder", "train_adapter", "CachedEncoder",
    "FineTunedEmbedding", "FusionChoice", "convex_scores", "load_fusion", "select_fusion", "HardNegativeMiner",
    "HybridQdrantRetriever", "LlamaIndexEncoder", "MiningOptions", "OpenAICompatibleEmbedding", "QADataset", "System",
    "TrainConfig", "evaluate", "load_dataset", "load_training_data", "markdown_report", "rrf_fusion",
    "save_training_data", "standard_systems", "train", "FeedbackHandler", "FeedbackLog", "record_feedback",
    "load_feedback", "rollout", "rollback",
]


def _fresh(code: str) -> dict:
    """Run ``code`` in a new interpreter; it ends by printing its result as JSON (``report(...)``), returned here."""
    prelude = textwrap.dedent("""
        import json, sys
        HEAVY = %r
        def loaded_stages():
            return sorted(m for m in sys.modules if m in HEAVY or m.startswith(tuple(h + "." for h in HEAVY)))
        def report(**result):
            print("RESULT " + json.dumps(result))
    """) % (HEAVY,)
    done = subprocess.run([sys.executable, "-c", prelude + textwrap.dedent(code)], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    line = next(x for x in done.stdout.splitlines() if x.startswith("RESULT "))
    return json.loads(line[len("RESULT "):])


@pytest.mark.parametrize("statement", [
    "import ace_llamaindex.serve.retriever",
    "from ace_llamaindex import HybridQdrantRetriever",
    "from ace_llamaindex import AceQdrantVectorStore",
    "from ace_llamaindex import FineTunedEmbedding",
    "import ace_llamaindex",
    "import ace_llamaindex.cli",
    "from ace_llamaindex import hookimpl",
])
def test_serving_imports_no_training_mining_evaluation_or_deployment(statement):
    result = _fresh(f"{statement}\nreport(loaded=loaded_stages())")
    assert result["loaded"] == [], f"{statement} imported {result['loaded']}"


def test_ace_help_loads_no_stage_and_no_built_in():
    """`ace --help` (what `main()` runs: plugins' commands added, then the group): no stage, no built-in plugin."""
    result = _fresh("""
        sys.argv = ["ace", "--help"]
        from ace_llamaindex.cli import main
        try:
            main()
        except SystemExit as exc:
            code = exc.code
        report(code=code, loaded=loaded_stages(), builtins=sorted(m for m in sys.modules if ".plugins.builtin." in m))
    """)
    assert result == {"code": 0, "loaded": [], "builtins": []}, result


def test_a_retriever_serving_queries_loads_only_the_engines_built_in(tmp_path):
    """The plugin manager imports a built-in when a component of its kind is first asked for: a retriever asks for
    engines only, so the trainers (training code), miners and metrics are never imported."""
    result = _fresh(f"""
        from llama_index.core.schema import TextNode
        from ace_llamaindex import FineTunedEmbedding, HybridQdrantRetriever
        retriever = HybridQdrantRetriever(FineTunedEmbedding(), path={str(tmp_path / "qdrant")!r}, collection="c",
                                          similarity_top_k=1, feedback_log={str(tmp_path / "log.jsonl")!r})
        retriever.add_nodes([TextNode(id_="cat", text="the cat sat on the mat"), TextNode(id_="dog", text="dogs bark")],
                            show_progress=False)
        top = retriever.retrieve("where did the cat sit?")[0].node.node_id
        report(top=top, loaded=loaded_stages(), builtins=sorted(m for m in sys.modules if ".plugins.builtin." in m))
    """)
    assert result["top"] == "cat"
    assert result["loaded"] == [] and result["builtins"] == ["ace_llamaindex.plugins.builtin.engines"], result


def test_every_public_name_resolves_lazily():
    """Every name in ``__all__`` (and every name exported before) imports with ``from ace_llamaindex import X`` and
    is listed by ``dir()``; ``train`` and ``evaluate`` stay the functions once their subpackages are imported."""
    result = _fresh(f"""
        import ace_llamaindex
        import ace_llamaindex.train.training, ace_llamaindex.evaluate.evaluate  # the subpackages first, on purpose
        names = sorted(set(ace_llamaindex.__all__) | set({EXPORTED_BEFORE!r}))
        missing = [n for n in names if n not in ace_llamaindex.__all__]
        kinds = {{}}
        for name in names:
            exec(f"from ace_llamaindex import {{name}} as value")
            kinds[name] = type(value).__name__
        from ace_llamaindex import evaluate, train
        from ace_llamaindex.evaluate.evaluate import evaluate as evaluate_fn
        from ace_llamaindex.train.training import train as train_fn
        star = {{}}
        exec("from ace_llamaindex import *", star)
        report(missing=missing, kinds=kinds, train=train is train_fn and ace_llamaindex.train is train_fn,
               evaluate=evaluate is evaluate_fn and ace_llamaindex.evaluate is evaluate_fn,
               undir=sorted(set(names) - set(dir(ace_llamaindex))), unstarred=sorted(set(names) - set(star)))
    """)
    assert result["missing"] == [], f"exported before, not in __all__: {result['missing']}"
    assert not [n for n, kind in result["kinds"].items() if kind == "module"], result["kinds"]
    assert result["train"] and result["evaluate"], result
    assert result["undir"] == [] and result["unstarred"] == [], result


def test_unknown_name_is_an_attribute_error():
    import ace_llamaindex

    with pytest.raises(AttributeError, match="no attribute 'no_such_name'"):
        ace_llamaindex.no_such_name
    with pytest.raises(ImportError):
        exec("from ace_llamaindex import no_such_name")


def test_hookimpl_from_the_root_is_the_plugins_one():
    from ace_llamaindex import hookimpl
    from ace_llamaindex.plugins import hookimpl as plugins_hookimpl

    assert hookimpl is plugins_hookimpl


def _old_hookspecs_module():
    import importlib

    sys.modules.pop("ace_llamaindex.hookspecs", None)
    return importlib.import_module("ace_llamaindex.hookspecs")


def _old_trainer_name(monkeypatch, tmp_path):
    from ace_llamaindex.plugins import get
    from ace_llamaindex.plugins.builtin import trainers
    from ace_llamaindex.plugins.manager import plugin_state

    calls = []
    monkeypatch.setattr(trainers, "train", lambda *args, **kwargs: calls.append((args, kwargs)) or "trained")
    plugin_state.cache_clear()  # the registry made now holds the stand-in: made again once the test is over
    try:
        assert get("trainers", "sentence-transformers")(["example"], tmp_path, None, corpus={"d": "t"}) == "trained"
    finally:
        plugin_state.cache_clear()
    return calls


def _old_trainer_option(tmp_path):
    from click.testing import CliRunner

    from ace_llamaindex.cli import cli

    return CliRunner().invoke(cli, ["train", str(tmp_path / "data.json"), "-o", str(tmp_path / "out"), "--trainer", "nope"])


@pytest.mark.parametrize("name", ["ace_llamaindex.hookspecs", "trainer 'sentence-transformers'", "--trainer"])
def test_deprecated_aliases_warn_and_still_work(name, monkeypatch, tmp_path):
    """Each deprecated name does what its replacement does, with a DeprecationWarning naming the replacement."""
    from ace_llamaindex.errors import AceDeprecationWarning

    with pytest.warns(DeprecationWarning) as caught:
        if name == "ace_llamaindex.hookspecs":
            from ace_llamaindex.plugins import hookimpl, hookspec

            old = _old_hookspecs_module()
            assert old.hookimpl is hookimpl and old.hookspec is hookspec
            replacement = "ace_llamaindex.plugins"
        elif name == "trainer 'sentence-transformers'":
            calls = _old_trainer_name(monkeypatch, tmp_path)
            assert calls == [((["example"], tmp_path, None), {"corpus": {"d": "t"}})]  # the full trainer, as called
            replacement = "'full'"
        else:
            result = _old_trainer_option(tmp_path)
            # the alias's value is the trainer looked up: the same one-line error --method nope gives
            assert result.exit_code == 2 and "no trainer named 'nope'" in result.output, result.output
            assert "--trainer is deprecated: use --method" in result.output
            replacement = "--method"
    warned = [w for w in caught if issubclass(w.category, AceDeprecationWarning)]
    assert warned and replacement in str(warned[0].message), [str(w.message) for w in caught]


def test_trainer_and_method_together_are_refused(tmp_path):
    from click.testing import CliRunner

    from ace_llamaindex.cli import cli

    result = CliRunner().invoke(cli, ["train", str(tmp_path / "d.json"), "--method", "adapter", "--trainer", "full"])
    assert result.exit_code == 2 and "not both" in result.output, result.output
