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
import types
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import OptionError

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
