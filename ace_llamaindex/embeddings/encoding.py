"""Encode texts with a sentence-transformers model, each distinct text once, cached on disk by content hash."""

from __future__ import annotations

import hashlib
import logging
import os
import tempfile
import zipfile
from collections.abc import Sequence
from pathlib import Path
from typing import Literal, Protocol

import numpy as np

from ..atomic import honour_umask
from ..errors import OptionError
from .backends import choose_export
from .models import load_model, model_fingerprint, resolve_model
from .workers import pooled

Kind = Literal["query", "document"]
log = logging.getLogger(__name__)


class Encoder(Protocol):
    label: str

    def encode_queries(self, texts: Sequence[str]) -> np.ndarray: ...
    def encode_documents(self, texts: Sequence[str]) -> np.ndarray: ...



def default_cache_dir() -> Path:
    return Path(os.environ.get("ACE_CACHE_DIR", Path.home() / ".cache" / "ace-llamaindex")) / "embeddings"


def release_memory() -> None:
    """Collect garbage and hand freed heap pages back to the system (:func:`trim_heap`), so a model or a trainer
    let go lowers the process's resident memory instead of staying in the allocator's free lists."""
    import gc

    gc.collect()
    trim_heap()


def trim_heap() -> bool:
    """Hand the heap's free pages back to the system (glibc's ``malloc_trim``); False where there is no glibc
    (macOS, musl: the allocator keeps its own counsel)."""
    import ctypes

    try:
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):
        return False
    return True


# Tokens one encoding batch holds at most (64 texts of 128 tokens, 32 of 256): a batch's attention maps grow with the
# square of its length, and freed ones stay in the heap. SciFact's longest abstracts (256 tokens) in batches of 64
# added 0.55 GB to the process while encoding, in batches of 32 0.30 GB, at 0.96x the speed (ABBA, shared cores:
# benchmarks/results/encode-memory-scifact.json).
ENCODE_TOKENS = 8192
ENCODE_BATCH = 64  # the most texts in a batch, however short


def longest_tokens(model, texts: Sequence[str], sample: int = 2048) -> int:
    """The token length of the longest of ``texts`` (an even sample of ``sample``), capped by the model's
    ``max_seq_length``; the whole ``max_seq_length`` for a model without a plain text tokenizer. A batch is padded to
    its longest text, so the longest, not the typical, sizes what a batch holds: CoSQA's documents have a 95th
    percentile of 174 tokens and 1.5% reach the model's 256 (benchmarks/results/token-lengths.json)."""
    picked = list(texts[:: max(1, len(texts) // sample)][:sample])
    if not picked:
        return 1
    try:
        ids = model.tokenizer(picked, truncation=True, max_length=model.max_seq_length)["input_ids"]
    except Exception:  # noqa: BLE001 - a model without a plain text tokenizer: assume the longest
        return int(model.max_seq_length or 512)
    return int(min(model.max_seq_length, max(len(i) for i in ids)))


def encode_batch_size(model, texts: Sequence[str]) -> int:
    """How many of ``texts`` to encode at once: :data:`ENCODE_BATCH`, fewer when they are long, so that a batch of
    the longest (sentence-transformers encodes the longest first) holds about :data:`ENCODE_TOKENS` tokens."""
    return max(1, min(ENCODE_BATCH, ENCODE_TOKENS // longest_tokens(model, texts)))


def _key(text: str) -> str:
    return hashlib.sha1(text.encode("utf-8")).hexdigest()


class CachedEncoder:
    """Normalised embeddings for queries and documents; re-encoding a text costs a dictionary lookup.

    The cache is keyed by (model weights fingerprint, max_seq_length, query/document, sha1 of the text), kept in
    memory and, when ``cache_dir`` is not ``False``, in one ``.npz`` per key space under ``cache_dir``.
    """

    def __init__(
        self,
        model: str | None = None,
        *,
        batch_size: int | None = None,
        max_seq_length: int | None = None,
        cache_dir: str | Path | bool | None = None,
        device: str | None = None,
        show_progress: bool = True,
        backend: str = "auto",
        trust_remote_code: bool = False,
    ) -> None:
        """``batch_size``: texts encoded at once (default: :func:`encode_batch_size`, 64 for short texts, fewer for
        long ones). ``backend``: as :class:`~ace_llamaindex.serve.embedding.FineTunedEmbedding`'s (``auto`` serves a
        checked ONNX/OpenVINO export of the model folder when it has one)."""
        self.model_name = model
        self.backend = backend
        self.trust_remote_code = trust_remote_code
        self.label = str(model) if model else "all-MiniLM-L6-v2"
        self.batch_size = batch_size
        self.max_seq_length = max_seq_length
        self.device = device
        self.show_progress = show_progress
        self.cache_dir = None if cache_dir is False else Path(cache_dir) if cache_dir not in (None, True) else default_cache_dir()
        self._memory: dict[str, dict[str, np.ndarray]] = {}
        self._model = None
        self._fingerprint: str | None = None
        self.encoded = {"query": 0, "document": 0}  # texts that went through the model (cache misses)

    @classmethod
    def from_model(cls, model, label: str, **kwargs) -> CachedEncoder:
        """An encoder over an already loaded SentenceTransformer (e.g. one just trained), cached in memory only."""
        encoder = cls(None, cache_dir=False, show_progress=False, **kwargs)
        encoder.label, encoder._model, encoder._fingerprint = label, model, f"in-memory-{id(model)}"
        return encoder

    @classmethod
    def from_factory(cls, factory, label: str, **kwargs) -> CachedEncoder:
        """An encoder over a model built by ``factory()`` when texts must be encoded and let go right after, so it
        holds only its vectors between calls (in memory only): many candidates can be judged with one model resident."""
        encoder = cls(None, cache_dir=False, show_progress=False, **kwargs)
        encoder.label, encoder._factory, encoder._fingerprint = label, factory, f"in-memory-factory-{id(encoder)}"
        return encoder

    _factory = None

    @property
    def model(self):
        """The loaded SentenceTransformer (loaded on first use)."""
        if self._model is None and self._factory is not None:
            self._model = self._factory()
        if self._model is None:
            self._model = load_model(resolve_model(self.model_name), self.device, self.max_seq_length,
                                     trust_remote_code=self.trust_remote_code, backend=self.backend)
        return self._model

    @property
    def dimension(self) -> int:
        return int(self.model.get_sentence_embedding_dimension())

    def _space(self, kind: Kind) -> str:
        if self._fingerprint is None:  # stat-ing the model folder once per encoder, not once per call
            export = choose_export(resolve_model(self.model_name), self.backend)
            self._fingerprint = model_fingerprint(self.model_name) + (f"-{export.name}" if export else "")
        return f"{self._fingerprint}-{self.max_seq_length or 'default'}-{kind}"

    def _table(self, space: str) -> dict[str, np.ndarray]:
        if space not in self._memory:
            table: dict[str, np.ndarray] = {}
            file = self.cache_dir / f"{space}.npz" if self.cache_dir else None
            if file and file.exists():
                try:
                    with np.load(file) as data:
                        table = dict(zip(data["keys"].tolist(), data["vectors"], strict=True))
                except (OSError, ValueError, KeyError, zipfile.BadZipFile, EOFError):  # a cache entry is disposable
                    log.warning("embedding cache entry %s is unreadable: dropped, the vectors are computed again", file)
                    file.unlink(missing_ok=True)
                    table = {}
            self._memory[space] = table
        return self._memory[space]

    def _persist(self, space: str) -> None:
        if not self.cache_dir:
            return
        table = self._memory[space]
        try:
            self.cache_dir.mkdir(parents=True, exist_ok=True)
        except (FileExistsError, NotADirectoryError, PermissionError) as exc:
            raise OptionError(f"{self.cache_dir}: cannot use it as the embedding cache folder ({exc.strerror}); remove "
                              "what is in the way or set ACE_CACHE_DIR to a writable folder") from None
        fd, tmp = tempfile.mkstemp(suffix=".npz", dir=self.cache_dir)
        os.close(fd)
        np.savez(tmp, keys=np.array(list(table)), vectors=np.stack(list(table.values())))
        honour_umask(tmp)
        os.replace(tmp, self.cache_dir / f"{space}.npz")

    def encode(self, texts: Sequence[str], kind: Kind = "document") -> np.ndarray:
        """Return an ``(n, dim)`` float32 array of L2-normalised embeddings."""
        space = self._space(kind)
        table = self._table(space)
        keys = [_key(t) for t in texts]
        missing = {k: t for k, t in zip(keys, texts, strict=True) if k not in table}
        if missing:
            model = self.model
            encode = pooled(model, model.encode_query if kind == "query" else model.encode_document)
            todo = list(missing.values())
            batch = self.batch_size or encode_batch_size(model, todo)
            vectors = encode(todo, batch_size=batch, normalize_embeddings=True, convert_to_numpy=True,
                             show_progress_bar=self.show_progress and len(missing) > batch)
            table.update(zip(missing, vectors.astype(np.float32), strict=True))
            self.encoded[kind] += len(missing)
            self._persist(space)
            if self._factory is not None:  # built for this call: let it go (from_factory)
                del model, encode
                self._model = None
                release_memory()
        if not keys:
            return np.zeros((0, self.dimension), dtype=np.float32)
        return np.stack([table[k] for k in keys])

    def encode_queries(self, texts: Sequence[str]) -> np.ndarray:
        return self.encode(texts, "query")

    def encode_documents(self, texts: Sequence[str]) -> np.ndarray:
        return self.encode(texts, "document")


class LlamaIndexEncoder:
    """Use any LlamaIndex ``BaseEmbedding`` (an HTTP endpoint, OpenAI, HuggingFace...) where an encoder is expected.

    Vectors are L2-normalised so cosine and dot product agree, and kept in memory by content hash.
    """

    def __init__(self, embed_model, label: str | None = None) -> None:
        self.embed_model = embed_model
        self.label = label or getattr(embed_model, "model_name", None) or type(embed_model).__name__
        self._memory: dict[tuple[str, str], np.ndarray] = {}

    def encode(self, texts: Sequence[str], kind: Kind = "document") -> np.ndarray:
        missing = list(dict.fromkeys(t for t in texts if (kind, t) not in self._memory))
        if missing:
            if kind == "query":
                vectors = [self.embed_model.get_query_embedding(t) for t in missing]
            else:
                vectors = self.embed_model.get_text_embedding_batch(missing, show_progress=len(missing) > 100)
            for text, vec in zip(missing, vectors, strict=True):
                arr = np.asarray(vec, dtype=np.float32)
                self._memory[(kind, text)] = arr / (np.linalg.norm(arr) or 1.0)
        return np.stack([self._memory[(kind, t)] for t in texts])

    def encode_queries(self, texts: Sequence[str]) -> np.ndarray:
        return self.encode(texts, "query")

    def encode_documents(self, texts: Sequence[str]) -> np.ndarray:
        return self.encode(texts, "document")
