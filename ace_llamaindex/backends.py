"""Faster CPU inference: the model's transformer exported to ONNX (onnxruntime) or OpenVINO, optionally int8.

An export lives in the model folder (``ace_exports/<name>/``, the PyTorch weights kept) with a record of what it
was checked against at export time (``ace_exports/exports.json``): the smallest cosine between its vectors and
torch's, nDCG@10 of both on validation queries, and both speeds measured in the same run. ``backend="auto"``
serves the fastest export whose nDCG@10 loss is at most :data:`MAX_NDCG_LOSS`; one that lost more, or was
never checked on queries, is kept but not picked (and says why).

Written here rather than with sentence-transformers' export helpers: those go through optimum / optimum-intel,
which pin ``transformers<4.58`` while sentence-transformers 6 needs transformers 5, so they cannot be installed
together. Export is ``torch.onnx`` (the transformer only), quantisation is onnxruntime's ``quantize_dynamic`` or
NNCF's post-training quantisation calibrated on the user's own texts (no hub download). The exported graph
replaces only the Transformer module's forward pass: tokenisation, prompts, pooling and normalisation stay
sentence-transformers' own.
"""

from __future__ import annotations

import functools

import json
import logging
import statistics
import time
import types
import warnings
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from functools import lru_cache
from pathlib import Path
from typing import Any

import numpy as np

from .atomic import atomic_directory, write_json
from .errors import OptionError

log = logging.getLogger(__name__)
BACKENDS = ("auto", "torch", "onnx", "openvino", "onnx-int8", "openvino-int8")  # a runtime, or one export by name
EXPORTS_DIR = "ace_exports"
MANIFEST = "exports.json"
MAX_NDCG_LOSS = 0.005      # an export losing more nDCG@10 than this on the check queries is not picked by "auto"
SAME_SPACE_COSINE = 0.99   # every check text's export vector within this cosine of torch's: same vector space
_INPUTS = ("input_ids", "attention_mask", "token_type_ids")
SHAPE_STEP = 32            # OpenVINO inputs are padded to a multiple of this many tokens (see _Runner)
_FILES = {"onnx": "model.onnx", "openvino": "model.xml"}
_PACKAGES = {"onnx": ("onnxruntime", "onnx"), "openvino": ("openvino", "openvino")}


@dataclass
class ExportRecord:
    """One export and the evidence recorded when it was made."""

    name: str                       # onnx, onnx-int8, openvino, openvino-int8
    backend: str                    # onnx | openvino
    quantize: str | None            # None | int8
    file: str                       # relative to the model folder
    min_cosine: float               # smallest cosine(export, torch) over the check texts
    ndcg_torch: float | None = None
    ndcg_export: float | None = None
    check_queries: int = 0
    query_ms_torch: float | None = None   # single-query p50, same run
    query_ms: float | None = None
    docs_per_s_torch: float | None = None  # batch encoding throughput, same run
    docs_per_s: float | None = None

    @property
    def same_space(self) -> bool:
        """Vectors close enough to torch's to share its Qdrant named vector (no re-indexing)."""
        return self.min_cosine >= SAME_SPACE_COSINE

    @property
    def ndcg_loss(self) -> float | None:
        return None if self.ndcg_torch is None or self.ndcg_export is None else self.ndcg_torch - self.ndcg_export

    def why_not_auto(self) -> str | None:
        """Why ``auto`` skips this export, or None when it may pick it."""
        if self.ndcg_loss is None:
            return "its quality was not checked on queries (export with a dataset)"
        if self.ndcg_loss > MAX_NDCG_LOSS:
            return f"it lost {self.ndcg_loss:.3f} nDCG@10 against torch at export time (limit {MAX_NDCG_LOSS})"
        return None

    @property
    def speedup(self) -> float:
        """Geometric mean of the query and batch speed-ups over torch (1.0 when not measured)."""
        if not (self.query_ms and self.query_ms_torch and self.docs_per_s and self.docs_per_s_torch):
            return 1.0
        return float(np.sqrt(self.query_ms_torch / self.query_ms * self.docs_per_s / self.docs_per_s_torch))


def export_name(backend: str, quantize: str | None) -> str:
    return backend + (f"-{quantize}" if quantize else "")


def read_exports(model_dir: str | Path) -> list[ExportRecord]:
    """The exports recorded in a model folder (none for an HF id or a folder never exported). The manifest is parsed
    once per version of the file: serving asks for it on every query (the named vector depends on it)."""
    path = Path(model_dir) / EXPORTS_DIR / MANIFEST
    try:
        stat = path.stat()
    except OSError:
        return []
    # the manifest is replaced atomically when written (a new inode), so this key changes with every version
    return list(_parse_manifest(str(path), stat.st_ino, stat.st_mtime_ns, stat.st_size))


@lru_cache(maxsize=32)
def _parse_manifest(path: str, inode: int, mtime_ns: int, size: int) -> tuple[ExportRecord, ...]:
    try:
        return tuple(ExportRecord(**row) for row in json.loads(Path(path).read_text())["exports"])
    except (ValueError, KeyError, TypeError) as exc:
        raise OptionError(f"{path}: not an exports manifest ({exc})") from None


def installed(backend: str) -> bool:
    try:
        __import__(_PACKAGES[backend][0])
    except ImportError:
        return False
    return True


def choose_export(model_dir: str | Path, backend: str = "auto") -> ExportRecord | None:
    """The export to serve (None: PyTorch). ``auto``: the fastest checked export that lost at most
    :data:`MAX_NDCG_LOSS` and whose runtime is installed; an export's name (``onnx``, ``onnx-int8``, ``openvino``,
    ``openvino-int8``): that export; a runtime with only other exports: the fastest of them."""
    if backend not in BACKENDS:
        raise OptionError(f"backend must be one of {BACKENDS}, got {backend!r}")
    if backend == "torch" or not Path(model_dir).is_dir():
        if backend not in ("auto", "torch"):
            raise OptionError(f"backend {backend!r} needs a model folder with an export: ace export MODEL --backend {backend}")
        return None
    records = read_exports(model_dir)
    if backend == "auto":
        for r in records:
            if r.why_not_auto():
                log.info("backend auto: not using export %s of %s: %s", r.name, model_dir, r.why_not_auto())
        ok = [r for r in records if not r.why_not_auto() and installed(r.backend) and r.speedup > 1.0]
        for r in sorted(ok, key=lambda r: -r.speedup):
            problem = export_problem(Path(model_dir) / r.file, r.backend)
            if problem is None:
                return r
            log.warning("backend auto: the %s export of %s is unreadable (%s): serving torch; run `ace export %s "
                        "--backend %s` again", r.name, model_dir, problem, model_dir, r.name)
        return None
    exact = [r for r in records if r.name == backend]  # "onnx" is the fp32 ONNX export when there is one
    mine = exact or [r for r in records if r.backend == backend]
    if not mine:
        raise OptionError(f"{model_dir}: no {backend} export; run: ace export {model_dir} --backend {backend}")
    if not installed(mine[0].backend):
        raise OptionError(f"backend {backend!r} needs its runtime: pip install 'ace-llamaindex[{mine[0].backend}]'")
    chosen = max(mine, key=lambda r: r.speedup)
    problem = export_problem(Path(model_dir) / chosen.file, chosen.backend)
    if problem:
        raise OptionError(f"{model_dir}: the {chosen.name} export is unreadable ({problem}); run `ace export {model_dir} "
                          f"--backend {chosen.name}` again, or pass backend='torch'")
    return chosen


def export_problem(path: Path, backend: str) -> str | None:
    """Why the export file at ``path`` cannot be served (None: it loads), checked once per file version."""
    try:
        stat = path.stat()
    except OSError as exc:
        return f"{path.name}: {exc.strerror}"
    return _load_problem(str(path), backend, stat.st_size, stat.st_mtime_ns)


@functools.lru_cache(maxsize=32)
def _load_problem(path: str, backend: str, _size: int, _mtime: int) -> str | None:
    try:
        if backend == "onnx":
            import onnx

            onnx.load(path, load_external_data=False)
        else:
            import openvino as ov

            ov.Core().read_model(path)
    except Exception as exc:  # noqa: BLE001 - any parse failure means: do not serve it
        return f"{type(exc).__name__}: {str(exc)[:120]}"
    return None


# ---- running an export --------------------------------------------------------------------------------------
class _Runner:
    """Runs an exported transformer on numpy inputs and returns token embeddings. It takes the place of the
    PyTorch transformer inside the SentenceTransformer, as optimum's models do in sentence-transformers' own
    ONNX/OpenVINO backends: the torch weights are freed, so nothing on the query path walks them. ``config`` and
    ``device`` are what sentence-transformers reads from the model it wraps."""

    def __init__(self, backend: str, path: Path, config: Any) -> None:
        import torch

        self.config, self.device = config, torch.device("cpu")
        if backend == "onnx":
            import onnxruntime as ort

            session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
            self.inputs = [i.name for i in session.get_inputs()]
            self._run = lambda feed: session.run(None, feed)[0]
        else:
            import openvino as ov

            request = ov.Core().compile_model(str(path), "CPU").create_infer_request()
            self.inputs = [i.any_name for i in request.model_inputs]
            self._run = lambda feed: request.infer(feed, share_inputs=True)[0]
        # OpenVINO prepares its kernels for each new input shape (10-15 ms the first time a length is seen, on
        # the query path); padding the length to a multiple of SHAPE_STEP keeps the shapes few. The padding is
        # masked out, and its outputs are cut off again before pooling.
        self.step = SHAPE_STEP if backend == "openvino" else 1
        self.pad_id = getattr(config, "pad_token_id", None) or 0

    def __call__(self, features: dict[str, Any]) -> np.ndarray:
        feed = {name: features[name].numpy() for name in self.inputs}
        length = feed[self.inputs[0]].shape[1]
        extra = -length % self.step
        if extra:
            feed = {name: np.pad(a, ((0, 0), (0, extra)), constant_values=self.pad_id if name == "input_ids" else 0)
                    for name, a in feed.items()}
        return np.asarray(self._run(feed))[:, :length]


def attach(model: Any, model_dir: str | Path, record: ExportRecord) -> Any:
    """Make ``model`` (a SentenceTransformer loaded from ``model_dir`` on the CPU) run its transformer through the
    export; the transformer's PyTorch weights are dropped from memory."""
    import torch

    transformer = model[0]
    runner = _Runner(record.backend, Path(model_dir) / record.file, transformer.model.config)
    del transformer.model  # a registered torch submodule: removed before a non-module takes its name
    transformer.model = runner
    output = getattr(transformer, "module_output_name", "token_embeddings")

    def forward(self, features: dict[str, Any], **kwargs: Any) -> dict[str, Any]:
        features[output] = torch.from_numpy(runner(features))
        return features

    transformer.forward = types.MethodType(forward, transformer)
    model.ace_backend = record.name
    return model


# ---- making an export ---------------------------------------------------------------------------------------
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


def _dense_ndcg(model: Any, dataset: Any) -> float:
    """nDCG@10 of exact dense search over the whole corpus (numpy: the check must not depend on an engine)."""
    from .metrics import ndcg_at

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
    :class:`~ace_llamaindex.dataset.QADataset`, e.g. the validation queries) gives the nDCG@10 comparison and
    the calibration texts; without it only the vectors are compared and ``auto`` will not pick the export.
    The more check queries the better: 0.005 nDCG@10 is within the noise of 100 queries."""
    from .dataset import QADataset
    from .models import open_model

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
    from .atomic import ensure_free_space, folder_bytes

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
        record.ndcg_export = _dense_ndcg(exported, check)
        record.check_queries = len(check.queries)
    others = [r for r in read_exports(model_dir) if r.name != name]
    write_json(model_dir / EXPORTS_DIR / MANIFEST, {"exports": [asdict(r) for r in [*others, record]]})
    return record


_TORCH_NDCG: dict[tuple, float] = {}


def _torch_ndcg(model_dir: Path, torch_model: Any, check: Any) -> float:
    """Torch's nDCG@10 on the check set, computed once per model version and check set: every export of one
    model is compared with the same number (and the model is not encoded again for each)."""
    from .models import content_fingerprint

    key = (content_fingerprint(str(model_dir)), check.fingerprint())
    if key not in _TORCH_NDCG:
        _TORCH_NDCG[key] = _dense_ndcg(torch_model, check)
    return _TORCH_NDCG[key]


def _alternate(first: list[str], second: list[str]) -> list[str]:
    """first[0], second[0], first[1], second[1], ... then the rest of the longer list."""
    mixed = [t for pair in zip(first, second) for t in pair]
    longer = first if len(first) > len(second) else second
    return mixed + longer[min(len(first), len(second)):]


def _builtin_texts() -> list[str]:
    """Texts to compare vectors on (and calibrate int8) when no dataset is given: the bundled demo's."""
    from .loading import load_dataset

    demo = load_dataset(None)  # the shipped demo dataset
    return list(demo.queries.values()) + list(demo.corpus.values())
