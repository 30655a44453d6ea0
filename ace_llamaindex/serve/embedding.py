"""``FineTunedEmbedding``: a sentence-transformers model dir as a LlamaIndex embedding, with a safe fallback.

When the fine-tuned model cannot load or encode, a baseline embedding (any LlamaIndex ``BaseEmbedding``, e.g.
:class:`~ace_llamaindex.serve.http_embedding.OpenAICompatibleEmbedding`) takes over. Vectors from the two models live
in different spaces, so every vector is labelled with the model that made it (:meth:`embed_query_with_space`),
and :class:`~ace_llamaindex.serve.retriever.HybridQdrantRetriever` searches the matching named vector.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from llama_index.core.base.embeddings.base import BaseEmbedding
from pydantic import Field, PrivateAttr

from ..embeddings.backends import BACKENDS
from ..embeddings.models import DEFAULT_MODEL, content_fingerprint, load_model, resolve_model, served_space_suffix
from ..embeddings.models import vector_name as _label_vector_name
from ..embeddings.workers import pooled
from ..errors import EmbeddingError, OptionError

log = logging.getLogger(__name__)
HF_ALIASES = {"max_length": "max_seq_length", "query_instruction": "query_prompt", "text_instruction": "document_prompt"}
RETRY_FIRST, RETRY_MAX = 5.0, 300.0


def _check_device(device: str | None) -> None:
    """A device that is not there is an error now, not at the first query."""
    if not device or device == "cpu":
        return
    import torch

    if device.startswith("cuda") and not torch.cuda.is_available():
        raise OptionError(f"FineTunedEmbedding: device {device!r} requested but CUDA is not available here")
    if device == "mps" and not (getattr(torch.backends, "mps", None) and torch.backends.mps.is_available()):
        raise OptionError("FineTunedEmbedding: device 'mps' requested but MPS is not available here")


def space_label(embed_model: BaseEmbedding) -> str:
    """The label of the vector space an embedding model writes into (its ``model_name``)."""
    return str(getattr(embed_model, "model_name", None) or type(embed_model).__name__)


class LengthSortedBatches:
    """Mixin for a ``BaseEmbedding``: ``get_text_embedding_batch`` sends texts of similar length together.

    LlamaIndex cuts the caller's list into batches of ``embed_batch_size`` in the caller's order, and a batch is
    padded to its longest text; sentence-transformers sorts by length only inside one call. Sorting the whole list
    first (results returned in the caller's order) removes most of that padding when indexing.
    """

    def get_text_embedding_batch(self, texts: list[str], show_progress: bool = False, **kwargs: Any) -> list[list[float]]:
        order = sorted(range(len(texts)), key=lambda i: -len(texts[i]))
        vectors = super().get_text_embedding_batch([texts[i] for i in order], show_progress, **kwargs)
        return _unsort(vectors, order)

    async def aget_text_embedding_batch(self, texts: list[str], show_progress: bool = False, **kwargs: Any) -> list[list[float]]:
        order = sorted(range(len(texts)), key=lambda i: -len(texts[i]))
        vectors = await super().aget_text_embedding_batch([texts[i] for i in order], show_progress, **kwargs)
        return _unsort(vectors, order)


def _unsort(values: list[Any], order: list[int]) -> list[Any]:
    out: list[Any] = [None] * len(order)
    for position, original in enumerate(order):
        out[original] = values[position]
    return out


class FineTunedEmbedding(LengthSortedBatches, BaseEmbedding):
    """A sentence-transformers model (folder or HF id) as a LlamaIndex embedding; drop-in ``Settings.embed_model``.

    Query and document prompts come from the model's own ``prompts`` (``encode_query``/``encode_document``)
    unless ``query_prompt``/``document_prompt`` are given.
    """

    embed_batch_size: int = Field(default=32, gt=0, le=2048,
                                  description="Texts per encode call (sentence-transformers' default batch; LlamaIndex's is 10)")
    model_path: str = Field(default="bundled:all-MiniLM-L6-v2", description="Model folder, HF id, or 'bundled:all-MiniLM-L6-v2'")
    device: str | None = Field(default=None, description="cpu, cuda, mps; None picks automatically")
    normalize: bool = Field(default=True, description="L2-normalise vectors (cosine == dot product)")
    max_seq_length: int | None = Field(default=None, description="Truncate inputs to this many tokens (HF: max_length)")
    query_prompt: str | None = Field(default=None, description="Text prepended to queries, overrides the model's (HF: query_instruction)")
    document_prompt: str | None = Field(default=None, description="Text prepended to documents (HF: text_instruction)")
    trust_remote_code: bool = Field(default=False, description="Run code shipped with the model (off: never by surprise)")
    cache_folder: str | None = Field(default=None, description="Where HF ids are cached")
    vector_name: str | None = Field(default=None, description="Qdrant named vector for this model (default: from its weights)")
    backend: str = Field(default="auto", description="torch, onnx, openvino, or auto: the fastest export in the model "
                         "folder whose quality was checked at export time (ace export), else torch")
    allow_space_switch: bool = Field(
        default=False,
        description="Let plain get_query_embedding/get_text_embedding answer from the fallback when the fine-tuned "
                    "model fails. Off by default: a store that is not space-aware would compare the fallback's "
                    "vectors with fine-tuned document vectors. Our retriever and vector store are space-aware.")
    _model: Any = PrivateAttr(default=None)
    _load_error: str | None = PrivateAttr(default=None)
    _failed_at: float = PrivateAttr(default=0.0)
    _retry_after: float | None = PrivateAttr(default=None)  # None: RETRY_FIRST
    _fallback: BaseEmbedding | None = PrivateAttr(default=None)
    _on_fallback: bool = PrivateAttr(default=False)

    def __init__(self, model_path: str | Path | None = None, fallback: BaseEmbedding | None = None, *,
                 model_name: str | None = None, **kwargs: Any) -> None:
        """``model_path`` or, as in ``HuggingFaceEmbedding``, ``model_name``: a folder, HF id or the bundled model.
        ``HuggingFaceEmbedding``'s ``max_length``, ``query_instruction`` and ``text_instruction`` are accepted;
        any other unknown argument is an error, never silently ignored."""
        if model_path and model_name and model_name != model_path and not model_name.startswith("finetuned:"):
            raise OptionError(f"FineTunedEmbedding: model_path={model_path!r} and model_name={model_name!r} disagree; give one")
        if model_name and model_name.startswith("finetuned:"):  # our own label, e.g. from to_dict()
            model_name = None
        model_path = str(model_path or model_name or DEFAULT_MODEL)
        for hf_name, ours in HF_ALIASES.items():
            if hf_name in kwargs:
                if kwargs.get(ours) is not None:
                    raise OptionError(f"FineTunedEmbedding: give {hf_name} or {ours}, not both")
                kwargs[ours] = kwargs.pop(hf_name)
        unknown = sorted(set(kwargs) - set(type(self).model_fields))
        if unknown:
            raise OptionError(f"FineTunedEmbedding got unknown argument(s) {unknown}; valid: model_path/model_name, "
                              f"fallback, {', '.join(sorted(set(type(self).model_fields) - {'model_name', 'model_path'}))}")
        _check_device(kwargs.get("device"))
        if kwargs.get("backend", "auto") not in BACKENDS:
            raise OptionError(f"FineTunedEmbedding: backend must be one of {BACKENDS}, got {kwargs['backend']!r}")
        super().__init__(model_path=model_path, model_name=f"finetuned:{model_path}", **kwargs)
        self._fallback = fallback

    def to_dict(self, **kwargs: Any) -> dict[str, Any]:
        """LlamaIndex's serialisation, with the fallback's configuration (its secrets excluded)."""
        data = super().to_dict(**kwargs)
        if self._fallback is not None:
            data["fallback"] = self._fallback.to_dict()
        return data

    @classmethod
    def from_dict(cls, data: dict[str, Any], **kwargs: Any) -> FineTunedEmbedding:
        data = {**data, **kwargs}
        data.pop("class_name", None)
        fallback = data.pop("fallback", None)
        if fallback is not None:
            from .http_embedding import OpenAICompatibleEmbedding

            known = {OpenAICompatibleEmbedding.class_name(): OpenAICompatibleEmbedding, cls.class_name(): cls}
            kind = known.get(fallback.get("class_name"))
            if kind is None:
                raise OptionError(f"FineTunedEmbedding.from_dict: unknown fallback class {fallback.get('class_name')!r}; "
                                  "pass fallback= yourself")
            fallback = kind.from_dict(fallback)
        return cls(fallback=fallback, **data)

    def named_vector(self, label: str) -> str:
        """The Qdrant named vector of a space: this model's from its weights (or ``vector_name``), so a path spelled
        differently finds the same vectors; the fallback's from its label."""
        if label != self.model_name:
            return _label_vector_name(label)
        return self.vector_name or f"dense-ft-{content_fingerprint(self.model_path)}{served_space_suffix(self.model_path, self.backend)}"

    @classmethod
    def class_name(cls) -> str:
        return "FineTunedEmbedding"

    @property
    def fallback(self) -> BaseEmbedding | None:
        return self._fallback

    def spaces(self) -> list[tuple[str, BaseEmbedding]]:
        """Every vector space this embedding may answer in: (label, model), the fine-tuned one first.

        An index must hold document vectors for each, so a query served by the fallback has documents to match.
        """
        spaces: list[tuple[str, BaseEmbedding]] = [(self.model_name, _PrimaryOnly(self))]
        if self._fallback is not None:
            spaces.append((space_label(self._fallback), self._fallback))
        return spaces

    # ---- the fine-tuned model ------------------------------------------------------------------------------
    def _load(self) -> Any:
        """The model; a failed load is tried again after a back-off (5 s, doubling to 5 min), the fallback serving
        meanwhile, so a model that was briefly unavailable is not given up on for the life of the process."""
        wait = RETRY_FIRST if self._retry_after is None else self._retry_after
        due = self._load_error is None or time.monotonic() - self._failed_at >= wait
        if self._model is None and due:
            try:
                self._model = load_model(resolve_model(self.model_path), self.device, self.max_seq_length,
                                         self.trust_remote_code, self.cache_folder, self.backend)
                self._load_error, self._retry_after = None, None
            except EmbeddingError as exc:
                if self._load_error is not None:
                    self._retry_after = min(RETRY_MAX, max(wait, 1.0) * 2)
                self._load_error, self._failed_at = str(exc), time.monotonic()
        if self._model is None:
            raise EmbeddingError(self._load_error or f"model {self.model_path!r} is not loaded")
        return self._model

    def encode_primary(self, texts: list[str], kind: str) -> list[list[float]]:
        """Encode with the fine-tuned model only (no fallback); raises :class:`EmbeddingError`."""
        model = self._load()
        prompt = self.query_prompt if kind == "query" else self.document_prompt
        encode = pooled(model, model.encode_query if kind == "query" else model.encode_document)  # --workers
        try:
            kwargs = {"prompt": prompt} if prompt is not None else {}
            vectors = encode(texts, batch_size=self.embed_batch_size, normalize_embeddings=self.normalize,
                             convert_to_numpy=True, show_progress_bar=False, **kwargs)
        except Exception as exc:  # noqa: BLE001 - any encoder failure becomes one error the fallback can catch
            raise EmbeddingError(f"fine-tuned model {self.model_path!r} failed to encode: {exc}") from exc
        return vectors.tolist()

    # ---- fallback ------------------------------------------------------------------------------------------
    def _switch(self, to_fallback: bool, reason: str = "") -> None:
        if to_fallback and not self._on_fallback:
            log.warning("FineTunedEmbedding: %s; falling back to %s", reason, space_label(self._fallback))
        elif not to_fallback and self._on_fallback:
            log.warning("FineTunedEmbedding: fine-tuned model %s is serving again", self.model_path)
        self._on_fallback = to_fallback

    def _with_fallback(self, texts: list[str], kind: str) -> tuple[list[list[float]], str]:
        try:
            vectors = self.encode_primary(texts, kind)
        except EmbeddingError as exc:
            if self._fallback is None:
                raise
            self._switch(True, str(exc))
            fb = self._fallback
            vectors = [fb.get_query_embedding(t) for t in texts] if kind == "query" else fb.get_text_embedding_batch(texts)
            return vectors, space_label(fb)
        self._switch(False)
        return vectors, self.model_name

    async def _awith_fallback(self, texts: list[str], kind: str) -> tuple[list[list[float]], str]:
        try:
            vectors = await asyncio.to_thread(self.encode_primary, texts, kind)
        except EmbeddingError as exc:
            if self._fallback is None:
                raise
            self._switch(True, str(exc))
            fb = self._fallback
            if kind == "query":
                vectors = [await fb.aget_query_embedding(t) for t in texts]
            else:
                vectors = await fb.aget_text_embedding_batch(texts)
            return vectors, space_label(fb)
        self._switch(False)
        return vectors, self.model_name

    def embed_query_with_space(self, query: str) -> tuple[list[float], str]:
        """The query vector and the label of the model that produced it."""
        vectors, label = self._with_fallback([query], "query")
        return vectors[0], label

    async def aembed_query_with_space(self, query: str) -> tuple[list[float], str]:
        vectors, label = await self._awith_fallback([query], "query")
        return vectors[0], label

    @property
    def serving(self) -> str:
        """Label of the model that served the latest call."""
        return space_label(self._fallback) if self._on_fallback else self.model_name

    # ---- BaseEmbedding contract: callers that do not know about vector spaces ----------------------------------
    def _same_space(self, result: tuple[list[list[float]], str]) -> list[list[float]]:
        """A space-unaware caller (a stock vector store) would compare these vectors with fine-tuned ones:
        refuse a fallback answer unless ``allow_space_switch``."""
        vectors, label = result
        if label != self.model_name and not self.allow_space_switch:
            raise EmbeddingError(
                f"fine-tuned model {self.model_path!r} failed ({self._load_error or 'encoding error'}); its fallback "
                f"{label!r} is another vector space, so its vectors are not returned where fine-tuned vectors are "
                "expected. Use HybridQdrantRetriever (space-aware), or allow_space_switch=True "
                "if your index holds the fallback's vectors.")
        return vectors

    def _get_query_embedding(self, query: str) -> list[float]:
        return self._same_space(self._with_fallback([query], "query"))[0]

    async def _aget_query_embedding(self, query: str) -> list[float]:
        return self._same_space(await self._awith_fallback([query], "query"))[0]

    def _get_text_embedding(self, text: str) -> list[float]:
        return self._same_space(self._with_fallback([text], "document"))[0]

    def _get_text_embeddings(self, texts: list[str]) -> list[list[float]]:
        return self._same_space(self._with_fallback(texts, "document"))

    async def _aget_text_embedding(self, text: str) -> list[float]:
        return self._same_space(await self._awith_fallback([text], "document"))[0]

    async def _aget_text_embeddings(self, texts: list[str]) -> list[list[float]]:
        return self._same_space(await self._awith_fallback(texts, "document"))


class _PrimaryOnly(LengthSortedBatches, BaseEmbedding):
    """The fine-tuned model with no fallback: used to index its own named vector (never mixed with the baseline)."""

    _owner: Any = PrivateAttr()

    def __init__(self, owner: FineTunedEmbedding) -> None:
        super().__init__(model_name=owner.model_name, embed_batch_size=owner.embed_batch_size)
        self._owner = owner

    def _encode(self, kind: str) -> Callable[[list[str]], list[list[float]]]:
        return lambda texts: self._owner.encode_primary(texts, kind)

    def _get_query_embedding(self, query: str) -> list[float]:
        return self._encode("query")([query])[0]

    async def _aget_query_embedding(self, query: str) -> list[float]:
        return self._get_query_embedding(query)

    def _get_text_embedding(self, text: str) -> list[float]:
        return self._encode("document")([text])[0]

    def _get_text_embeddings(self, texts: list[str]) -> list[list[float]]:
        return self._encode("document")(texts)
