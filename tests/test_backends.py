"""ONNX / OpenVINO exports: vectors close to torch's, the recorded quality check steers ``backend="auto"``."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest

from ace_llamaindex.atomic import write_json
from ace_llamaindex.embeddings.backends import EXPORTS_DIR, MANIFEST, SAME_SPACE_COSINE, choose_export, read_exports
from ace_llamaindex.embeddings.models import content_fingerprint, resolve_model
from ace_llamaindex.errors import OptionError
from ace_llamaindex.serve.embedding import FineTunedEmbedding
from ace_llamaindex.train.exports import export_model

# The tolerance the vector-space rule rests on: an fp32 export gives torch's vectors (cosine >= 0.9999 for every
# text); an int8 one comes close (>= 0.90) and is a space of its own unless it reaches SAME_SPACE_COSINE (0.99).
MIN_COSINE = {"onnx": 0.9999, "openvino-int8": 0.90}


@pytest.fixture(scope="module")
def exported(tmp_path_factory, demo):
    pytest.importorskip("onnxruntime")
    pytest.importorskip("openvino")
    model = tmp_path_factory.mktemp("export") / "model"
    shutil.copytree(resolve_model(None), model)
    fingerprint = content_fingerprint(str(model))
    check = demo.subset(sorted(demo.queries)[:24])
    for backend, quantize in (("onnx", None), ("openvino", "int8")):
        export_model(model, backend, quantize, check=check)
    return model, fingerprint


@pytest.mark.parametrize("name", sorted(MIN_COSINE))
def test_export_serves_vectors_close_to_torch(exported, demo, name):
    model, _ = exported
    record = {r.name: r for r in read_exports(model)}[name]
    texts = list(demo.corpus.values())[:40] + list(demo.queries.values())[:20]
    torch_vectors = np.array(FineTunedEmbedding(str(model), backend="torch").get_text_embedding_batch(texts))
    served = FineTunedEmbedding(str(model), backend=record.backend)
    vectors = np.array(served.get_text_embedding_batch(texts))
    assert served._model.ace_backend == name
    cosines = np.sum(torch_vectors * vectors, axis=1)
    assert cosines.min() >= MIN_COSINE[name]
    # The named vector is torch's exactly when the recorded check says the vectors match within the tolerance.
    same = served.named_vector(served.model_name) == FineTunedEmbedding(str(model), backend="torch").named_vector(served.model_name)
    assert same == record.same_space == (record.min_cosine >= SAME_SPACE_COSINE)


def test_exporting_keeps_the_model_identity(exported):
    model, before = exported
    assert content_fingerprint(str(model)) == before


def _rewrite(model, **changes):
    path = model / EXPORTS_DIR / MANIFEST
    rows = json.loads(path.read_text())["exports"]
    for row in rows:
        row.update(changes.get(row["name"], {}))
    write_json(path, {"exports": rows})  # atomically, as the library writes it


def test_auto_skips_an_export_that_lost_quality(exported, tmp_path):
    model = tmp_path / "model"
    shutil.copytree(exported[0], model)
    records = {r.name: r for r in read_exports(model)}
    # both far faster than torch, against the same torch timings (those measured at export time vary with the load)
    fast = {name: {"query_ms": 1.0, "docs_per_s": 1e6, "query_ms_torch": 20.0, "docs_per_s_torch": 500.0}
            for name in records}
    _rewrite(model, **fast)
    ok = {name: {"ndcg_export": records[name].ndcg_torch} for name in records}
    ok["openvino-int8"]["query_ms"] = 0.5  # the fastest, and (now) lossless
    _rewrite(model, **ok)
    assert choose_export(model, "auto").name == "openvino-int8"
    _rewrite(model, **{"openvino-int8": {"ndcg_export": records["openvino-int8"].ndcg_torch - 0.01}})
    assert choose_export(model, "auto").name == "onnx"
    _rewrite(model, onnx={"ndcg_torch": None, "ndcg_export": None})  # never checked on queries
    assert choose_export(model, "auto") is None
    assert FineTunedEmbedding(str(model))._load().ace_backend == "torch"


@pytest.mark.parametrize(("call", "message"), [
    (lambda d: export_model(d, "tensorrt"), "export backend must be one of"),
    (lambda d: export_model(d, "onnx", "int4"), "quantize must be int8"),
    (lambda d: export_model(d / "nowhere", "onnx"), "not a sentence-transformers model folder"),
    (lambda d: FineTunedEmbedding(str(d), backend="tensorrt"), "backend must be one of"),
    (lambda d: choose_export(d, "openvino"), "no openvino export"),
])
def test_bad_export_requests_are_clear_errors(tmp_path, call, message):
    pytest.importorskip("onnxruntime")
    pytest.importorskip("openvino")
    with pytest.raises(OptionError, match=message):
        call(tmp_path)


def test_an_export_in_another_space_asks_for_reindexing(exported, demo, tmp_path):
    """An index built before an int8 export (another vector space) that `auto` now serves: a clear error that says
    what to do, not an engine's stack trace or silently empty results."""
    from llama_index.core.schema import TextNode

    from ace_llamaindex.serve.retriever import HybridQdrantRetriever

    model = tmp_path / "model"
    shutil.copytree(exported[0], model)
    nodes = [TextNode(id_=d, text=t) for d, t in list(demo.corpus.items())[:20]]
    kwargs = {"collection": "before-export", "path": str(tmp_path / "qdrant")}
    built = HybridQdrantRetriever(FineTunedEmbedding(str(model), backend="torch"), **kwargs)
    built.add_nodes(nodes, show_progress=False)
    built.index.close()
    records = {r.name: r for r in read_exports(model)}
    _rewrite(model, **{"openvino-int8": {"ndcg_export": records["openvino-int8"].ndcg_torch, "min_cosine": 0.95,
                                         "query_ms": 0.1, "docs_per_s": 1e6}, "onnx": {"ndcg_export": None}})
    served = HybridQdrantRetriever(FineTunedEmbedding(str(model)), **kwargs)
    with pytest.raises(OptionError, match="index the documents again, or pass backend='torch'"):
        served.retrieve(demo.queries[sorted(demo.queries)[0]])


def test_a_corrupt_export_is_skipped_by_auto_and_named_when_asked_for(exported, tmp_path, caplog):
    model = tmp_path / "model"
    shutil.copytree(exported[0], model)
    records = {r.name: r for r in read_exports(model)}
    fast = {name: {"query_ms": 1.0, "docs_per_s": 1e6, "ndcg_export": records[name].ndcg_torch} for name in records}
    fast["onnx"]["query_ms"] = 0.5  # auto would take the ONNX export
    _rewrite(model, **fast)
    (model / records["onnx"].file).write_bytes(b"\x08garbage, not a protobuf")
    with caplog.at_level("WARNING"):
        assert choose_export(model, "auto").name == "openvino-int8"  # the next one that loads
    assert "onnx export" in caplog.text and "unreadable" in caplog.text
    with pytest.raises(OptionError, match="the onnx export is unreadable"):
        choose_export(model, "onnx")
