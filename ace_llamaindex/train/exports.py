"""Making an export: the transformer exported to ONNX or OpenVINO (optionally int8) inside the model folder,
and checked against torch (vectors, nDCG@10 on the user's queries, speed measured in the same run); the record
goes into ``ace_exports/exports.json`` where :mod:`~ace_llamaindex.embeddings.backends` chooses among them.
"""

from __future__ import annotations

import statistics
import time
import warnings
from collections.abc import Sequence
from dataclasses import asdict
from pathlib import Path
from typing import Any

import numpy as np

from ..atomic import atomic_directory, ensure_free_space, folder_bytes, write_json
from ..data.dataset import QADataset
from ..embeddings.backends import EXPORTS_DIR, MANIFEST, ExportRecord, attach, export_name, installed, read_exports
from ..embeddings.models import content_fingerprint, open_model
from ..errors import OptionError
from ..evaluate.metrics import ndcg_at

_INPUTS = ("input_ids", "attention_mask", "token_type_ids")
_FILES = {"onnx": "model.onnx", "openvino": "model.xml"}


def _export_onnx(model: Any, target: Path, sample: Sequence[str]) -> None:
    import torch

    auto_model = model[0].auto_model.eval()
    features = _tokenize(model, list(sample[:2]))
    names = [n for n in _INPUTS if n in features]

    class Transformer(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.inner = auto_model

        def forward(self, *args: torch.Tensor) -> torch.Tensor:
            return self.inner(**dict(zip(names, args, strict=True))).last_hidden_state

    axes = {n: {0: "batch", 1: "sequence"} for n in [*names, "token_embeddings"]}
    with torch.no_grad():
        # The TorchScript exporter: the dynamo one needs onnxscript and fails on some HF attention code paths.
        torch.onnx.export(Transformer(), tuple(features[n] for n in names), str(target), input_names=names,
                          output_names=["token_embeddings"], dynamic_axes=axes, opset_version=17, dynamo=False)


def _tokenize(model: Any, texts: list[str]) -> dict[str, Any]:
    return (getattr(model, "preprocess", None) or model.tokenize)(texts)  # preprocess: sentence-transformers >= 6


def _calibration(model: Any, texts: Sequence[str], n: int = 64) -> list[dict[str, np.ndarray]]:
    feeds = []
    for text in list(texts)[:n]:
        features = _tokenize(model, [text])
        feeds.append({k: features[k].numpy() for k in _INPUTS if k in features})
    return feeds


def _build(model: Any, backend: str, quantize: str | None, folder: Path, calibration: Sequence[str]) -> str:
    """Write the export's files into ``folder``; returns the graph file's name."""
    onnx_file = folder / "model.onnx"
    _export_onnx(model, onnx_file, calibration)
    if backend == "onnx":
        if quantize:
            from onnxruntime.quantization import QuantType, quantize_dynamic

            quantize_dynamic(str(onnx_file), str(folder / "model_int8.onnx"), weight_type=QuantType.QInt8)
            onnx_file.unlink()
            (folder / "model_int8.onnx").rename(onnx_file)
        return _FILES["onnx"]
    import openvino as ov

    ov_model = ov.convert_model(str(onnx_file))
    if quantize:
        import nncf

        feeds = _calibration(model, calibration)
        ov_model = nncf.quantize(ov_model, nncf.Dataset(feeds), subset_size=len(feeds), model_type=nncf.ModelType.TRANSFORMER)
    ov.save_model(ov_model, str(folder / _FILES["openvino"]))
    onnx_file.unlink()
    return _FILES["openvino"]


def _speed(model: Any, queries: Sequence[str], documents: Sequence[str]) -> tuple[float, float]:
    """(single-query p50 in ms, documents per second in batches of 32), after a warm-up."""
    model.encode(list(queries[:2]) + list(documents[:2]))
    times = []
    for q in queries:
        started = time.perf_counter()
        model.encode([q])
        times.append(time.perf_counter() - started)
    started = time.perf_counter()
    model.encode(list(documents), batch_size=32)
    return 1000 * statistics.median(times), len(documents) / (time.perf_counter() - started)


def dense_ndcg(model: Any, dataset: Any) -> float:
    """nDCG@10 of exact dense search over the whole corpus (numpy: the check must not depend on an engine)."""
    ndcg = ndcg_at(10)
    doc_ids = list(dataset.corpus)
    docs = model.encode_document([dataset.corpus[d] for d in doc_ids], normalize_embeddings=True, batch_size=32)
    qids = list(dataset.queries)
    queries = model.encode_query([dataset.queries[q] for q in qids], normalize_embeddings=True, batch_size=32)
    top = np.argsort(-(queries @ docs.T), axis=1)[:, :10]
    return float(np.mean([ndcg([doc_ids[j] for j in row], set(dataset.relevant_docs[q])) for q, row in zip(qids, top, strict=True)]))


def export_model(model_dir: str | Path, backend: str, quantize: str | None = None, check: Any = None,
                 max_check_queries: int = 1000) -> ExportRecord:
    """Export the model in ``model_dir`` (a writable sentence-transformers folder) to ``backend`` (``onnx`` or
    ``openvino``), int8 with ``quantize="int8"``, and record how it compares with torch. ``check`` (a
    :class:`~ace_llamaindex.data.dataset.QADataset`, e.g. the validation queries) gives the nDCG@10 comparison and
    the calibration texts; without it only the vectors are compared and ``auto`` will not pick the export.
    The more check queries the better: 0.005 nDCG@10 is within the noise of 100 queries."""
    if backend not in _FILES:
        raise OptionError(f"export backend must be one of {sorted(_FILES)}, got {backend!r}")
    if quantize not in (None, "int8"):
        raise OptionError(f"quantize must be int8 or None, got {quantize!r}")
    if not installed(backend):
        raise OptionError(f"exporting to {backend} needs its runtime: pip install 'ace-llamaindex[{backend}]'")
    model_dir = Path(model_dir)
    if not (model_dir / "modules.json").is_file():
        raise OptionError(f"{model_dir}: not a sentence-transformers model folder (no modules.json); exports are "
                          "written into the model folder")
    if check is not None and not isinstance(check, QADataset):
        raise OptionError("check must be a QADataset")
    weights = sum(f.stat().st_size for f in model_dir.glob("*.safetensors")) or folder_bytes(model_dir)
    ensure_free_space(model_dir, 2 * weights + 16 * 2**20, f"the {backend} export")
    if check is not None and len(check.queries) > max_check_queries:
        check = check.subset(sorted(check.queries)[:max_check_queries])
    # queries and documents alternate: int8 calibration and the cosine check see both kinds of text
    texts = _alternate(list(check.queries.values()), list(check.corpus.values())) if check else _builtin_texts()
    torch_model = open_model(str(model_dir), device="cpu")
    name = export_name(backend, quantize)
    with atomic_directory(model_dir / EXPORTS_DIR / name) as scratch, warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the exporters' tracer warnings concern code paths MiniLM-style models don't take
        graph = _build(torch_model, backend, quantize, scratch, texts)
    record = ExportRecord(name=name, backend=backend, quantize=quantize, file=f"{EXPORTS_DIR}/{name}/{graph}", min_cosine=0.0)
    exported = attach(open_model(str(model_dir), device="cpu"), model_dir, record)

    sample = texts[:256]
    ref = torch_model.encode(sample, normalize_embeddings=True, batch_size=32)
    got = exported.encode(sample, normalize_embeddings=True, batch_size=32)
    record.min_cosine = round(float(np.min(np.sum(ref * got, axis=1))), 5)
    queries = list(check.queries.values())[:30] if check else sample[:30]
    documents = (list(check.corpus.values()) if check else sample)[:128]
    record.query_ms_torch, record.docs_per_s_torch = _speed(torch_model, queries, documents)
    record.query_ms, record.docs_per_s = _speed(exported, queries, documents)
    if check is not None:
        record.ndcg_torch = _torch_ndcg(model_dir, torch_model, check)
        record.ndcg_export = dense_ndcg(exported, check)
        record.check_queries = len(check.queries)
    others = [r for r in read_exports(model_dir) if r.name != name]
    write_json(model_dir / EXPORTS_DIR / MANIFEST, {"exports": [asdict(r) for r in [*others, record]]})
    return record


_TORCH_NDCG: dict[tuple, float] = {}


def _torch_ndcg(model_dir: Path, torch_model: Any, check: Any) -> float:
    """Torch's nDCG@10 on the check set, computed once per model version and check set: every export of one
    model is compared with the same number (and the model is not encoded again for each)."""
    key = (content_fingerprint(str(model_dir)), check.fingerprint())
    if key not in _TORCH_NDCG:
        _TORCH_NDCG[key] = dense_ndcg(torch_model, check)
    return _TORCH_NDCG[key]


def _alternate(first: list[str], second: list[str]) -> list[str]:
    """first[0], second[0], first[1], second[1], ... then the rest of the longer list."""
    mixed = [t for pair in zip(first, second) for t in pair]
    longer = first if len(first) > len(second) else second
    return mixed + longer[min(len(first), len(second)):]


def _builtin_texts() -> list[str]:
    """Texts to compare vectors on (and calibrate int8) when no dataset is given: the bundled demo's."""
    from ..data.loading import load_dataset

    demo = load_dataset(None)  # the shipped demo dataset
    return list(demo.queries.values()) + list(demo.corpus.values())
