"""An OpenAI-compatible ``/embeddings`` client as a LlamaIndex ``BaseEmbedding`` (LM Studio, Ollama, vLLM,
infinity, TEI...). Short timeouts and a bounded number of retries with exponential backoff, so that as a
fallback it fails fast and clearly instead of hanging a request for a minute."""

from __future__ import annotations

import asyncio
import logging
import time
import httpx
from llama_index.core.base.embeddings.base import BaseEmbedding
from pydantic import Field, PrivateAttr

from .errors import EmbeddingError

log = logging.getLogger(__name__)
RETRYABLE_STATUS = {408, 425, 429, 500, 502, 503, 504}


class OpenAICompatibleEmbedding(BaseEmbedding):
    """POST ``{base_url}/embeddings`` with ``{"model", "input"}``; read ``data[*].embedding`` in ``index`` order."""

    base_url: str = Field(description="Server URL up to the API prefix, e.g. http://localhost:1234/v1")
    model_name: str = Field(default="text-embedding", description="Model name the server knows")
    api_key: str | None = Field(default=None, description="Sent as a Bearer token when set")
    timeout: float = Field(default=10.0, description="Seconds per request (connect and read)")
    max_retries: int = Field(default=2, description="Retries after the first attempt, for timeouts, 429 and 5xx")
    backoff: float = Field(default=0.5, description="First retry delay in seconds; doubles each retry")
    query_prefix: str = Field(default="", description="Prepended to queries (nomic: 'search_query: ')")
    document_prefix: str = Field(default="", description="Prepended to documents (nomic: 'search_document: ')")
    _client: httpx.Client | None = PrivateAttr(default=None)
    _aclient: httpx.AsyncClient | None = PrivateAttr(default=None)

    @classmethod
    def class_name(cls) -> str:
        return "OpenAICompatibleEmbedding"

    @property
    def url(self) -> str:
        return self.base_url.rstrip("/") + "/embeddings"

    def _headers(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.api_key}"} if self.api_key else {}

    def _parse(self, response: httpx.Response, n: int) -> list[list[float]]:
        try:
            rows = response.json()["data"]
            vectors = [row["embedding"] for row in sorted(rows, key=lambda r: r.get("index", 0))]
        except (ValueError, KeyError, TypeError) as exc:
            raise EmbeddingError(f"{self.url}: malformed response (expected {{'data': [{{'embedding': [...]}}]}}): "
                                 f"{response.text[:200]!r}") from exc
        if len(vectors) != n or not all(isinstance(v, list) and v for v in vectors):
            raise EmbeddingError(f"{self.url}: asked for {n} embeddings, got {len(vectors)} usable ones")
        return vectors

    def _judge(self, response: httpx.Response | None, exc: Exception | None, n: int) -> list[list[float]] | EmbeddingError:
        """Vectors on success; else the error, raised at once when retrying cannot help."""
        if exc is not None:
            return EmbeddingError(f"{self.url}: {type(exc).__name__}: {exc}")
        if response.status_code == 200:
            return self._parse(response, n)
        failure = EmbeddingError(f"{self.url}: HTTP {response.status_code}: {response.text[:200]!r}")
        if response.status_code not in RETRYABLE_STATUS:
            raise failure
        return failure

    def _embed(self, texts: list[str]) -> list[list[float]]:
        if self._client is None:
            self._client = httpx.Client(timeout=self.timeout)
        for attempt in range(self.max_retries + 1):
            response, exc = None, None
            try:
                response = self._client.post(self.url, json={"model": self.model_name, "input": texts}, headers=self._headers())
            except httpx.TransportError as error:
                exc = error
            outcome = self._judge(response, exc, len(texts))
            if not isinstance(outcome, EmbeddingError):
                return outcome
            if attempt < self.max_retries:
                time.sleep(self.backoff * 2**attempt)
        raise EmbeddingError(f"{outcome} (after {self.max_retries + 1} attempts)")

    async def _aembed(self, texts: list[str]) -> list[list[float]]:
        if self._aclient is None:
            self._aclient = httpx.AsyncClient(timeout=self.timeout)
        for attempt in range(self.max_retries + 1):
            response, exc = None, None
            try:
                response = await self._aclient.post(self.url, json={"model": self.model_name, "input": texts}, headers=self._headers())
            except httpx.TransportError as error:
                exc = error
            outcome = self._judge(response, exc, len(texts))
            if not isinstance(outcome, EmbeddingError):
                return outcome
            if attempt < self.max_retries:
                await asyncio.sleep(self.backoff * 2**attempt)
        raise EmbeddingError(f"{outcome} (after {self.max_retries + 1} attempts)")

    def _get_query_embedding(self, query: str) -> list[float]:
        return self._embed([self.query_prefix + query])[0]

    async def _aget_query_embedding(self, query: str) -> list[float]:
        return (await self._aembed([self.query_prefix + query]))[0]

    def _get_text_embedding(self, text: str) -> list[float]:
        return self._embed([self.document_prefix + text])[0]

    def _get_text_embeddings(self, texts: list[str]) -> list[list[float]]:
        return self._embed([self.document_prefix + t for t in texts])

    async def _aget_text_embeddings(self, texts: list[str]) -> list[list[float]]:
        return await self._aembed([self.document_prefix + t for t in texts])

    async def _aget_text_embedding(self, text: str) -> list[float]:
        return (await self._aembed([self.document_prefix + text]))[0]
