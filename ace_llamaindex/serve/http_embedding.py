"""An OpenAI-compatible ``/embeddings`` client as a LlamaIndex ``BaseEmbedding`` (LM Studio, Ollama, vLLM,
infinity, TEI...). Short timeouts and a bounded number of retries with exponential backoff, so that as a
fallback it fails fast and clearly instead of hanging a request for a minute."""

from __future__ import annotations

import json
import logging
import math
import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import httpx
from llama_index.core.base.embeddings.base import BaseEmbedding
from pydantic import Field, PrivateAttr, SecretStr
from tenacity import AsyncRetrying, Retrying, retry_if_exception_type, stop_after_attempt, wait_exponential

from ..errors import EmbeddingError

log = logging.getLogger(__name__)
RETRYABLE_STATUS = {408, 425, 429, 500, 502, 503, 504}


def redact_url(url: str) -> str:
    """``url`` with any password (``user:SECRET@``) replaced by ``***``: safe for errors, logs and repr."""
    from urllib.parse import urlsplit, urlunsplit

    try:
        parts = urlsplit(url)
    except ValueError:
        return "<unparseable url>"
    if parts.password is None:
        return url
    netloc = f"{parts.username}:***@{parts.hostname}" + (f":{parts.port}" if parts.port else "")
    return urlunsplit(parts._replace(netloc=netloc))


class _Retryable(EmbeddingError):
    """A failure another attempt may fix (408, 429, 5xx)."""


class OpenAICompatibleEmbedding(BaseEmbedding):
    """POST ``{base_url}/embeddings`` with ``{"model", "input"}``; read ``data[*].embedding`` in ``index`` order."""

    base_url: str = Field(description="Server URL up to the API prefix, e.g. http://localhost:1234/v1")
    model_name: str = Field(default="text-embedding", description="Model name the server knows")
    api_key: SecretStr | None = Field(default=None, exclude=True, repr=False,
                                      description="Sent as a Bearer token when set; never shown in repr, logs or to_json")
    timeout: float = Field(default=10.0, description="Seconds per request, overall: a server that trickles bytes is cut off too")
    max_retries: int = Field(default=2, description="Retries after the first attempt, for timeouts, 429 and 5xx")
    backoff: float = Field(default=0.5, description="First retry delay in seconds; doubles each retry")
    query_prefix: str = Field(default="", description="Prepended to queries (nomic: 'search_query: ')")
    document_prefix: str = Field(default="", description="Prepended to documents (nomic: 'search_document: ')")
    _client: httpx.Client | None = PrivateAttr(default=None)
    _aclient: httpx.AsyncClient | None = PrivateAttr(default=None)
    _dimension: int | None = PrivateAttr(default=None)

    @classmethod
    def class_name(cls) -> str:
        return "OpenAICompatibleEmbedding"

    @property
    def url(self) -> str:
        """The endpoint as shown in messages: a password in the URL (``http://user:SECRET@host``) is redacted."""
        return redact_url(self.endpoint)

    @property
    def endpoint(self) -> str:
        return self.base_url.rstrip("/") + "/embeddings"

    def __repr__(self) -> str:
        return f"OpenAICompatibleEmbedding(base_url={redact_url(self.base_url)!r}, model_name={self.model_name!r})"

    def _body(self, texts: list[str]) -> dict[str, Any]:
        return {"model": self.model_name, "input": texts}

    def _headers(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.api_key.get_secret_value()}"} if self.api_key else {}

    def _parse(self, body: bytes, n: int) -> list[list[float]]:
        """Vectors in ``index`` order, each a non-empty list of finite numbers, all of one length (the same
        length as earlier answers: a server that changes model mid-flight is an error, not a silent new space)."""
        text = body.decode("utf-8", "replace")
        try:
            rows = json.loads(text)["data"]
            indices = [row.get("index", i) for i, row in enumerate(rows)]
            vectors = [row["embedding"] for _, row in sorted(zip(indices, rows, strict=True), key=lambda p: p[0])]
        except (ValueError, KeyError, TypeError, AttributeError) as exc:
            raise EmbeddingError(f"{self.url}: malformed response (expected {{'data': [{{'embedding': [...]}}]}}): "
                                 f"{text[:200]!r}") from exc
        if sorted(indices) != list(range(len(rows))):
            raise EmbeddingError(f"{self.url}: response indices must be 0..{len(rows) - 1}, each once; got "
                                 f"{indices[:20]} (vectors would go to the wrong texts)")
        if len(vectors) != n:
            raise EmbeddingError(f"{self.url}: asked for {n} embeddings, got {len(vectors)}")
        for i, v in enumerate(vectors):
            if not isinstance(v, list) or not v or not all(isinstance(x, (int, float)) and not isinstance(x, bool)
                                                          and math.isfinite(x) for x in v):
                raise EmbeddingError(f"{self.url}: embedding {i} is not a list of finite numbers (got {str(v)[:80]})")
        dims = {len(v) for v in vectors} | ({self._dimension} if self._dimension else set())
        if len(dims) > 1:
            raise EmbeddingError(f"{self.url}: embeddings of different lengths {sorted(dims)} from model {self.model_name!r}")
        self._dimension = dims.pop()
        return vectors

    def _vectors(self, status: int, body: bytes, n: int) -> list[list[float]]:
        """The vectors of a response; a 408/429/5xx raises a retryable error, any other status a final one."""
        if status == 200:
            return self._parse(body, n)
        error = _Retryable if status in RETRYABLE_STATUS else EmbeddingError
        raise error(f"{self.url}: HTTP {status}: {body[:200].decode('utf-8', 'replace')!r}")

    def _deadline_passed(self, started: float) -> None:
        # httpx's timeouts bound each read, not the whole response: a server trickling one byte per second
        # would never trip them. This bounds the whole call.
        if time.monotonic() - started > self.timeout:
            raise _Retryable(f"{self.url}: no complete response within {self.timeout} s")

    def _retrying(self) -> dict[str, Any]:
        """tenacity's policy, shared by the sync and async paths: timeouts, connection errors and retryable
        statuses are tried again with exponential backoff (backoff, 2 * backoff, ...)."""
        return {"stop": stop_after_attempt(self.max_retries + 1), "wait": wait_exponential(multiplier=self.backoff),
                "retry": retry_if_exception_type((_Retryable, httpx.TransportError)), "reraise": True}

    @contextmanager
    def _last_failure(self) -> Iterator[None]:
        """Report the failure that ended the retries as one clear error."""
        try:
            yield
        except (_Retryable, httpx.TransportError) as exc:
            detail = str(exc) if isinstance(exc, _Retryable) else f"{self.url}: {type(exc).__name__}: {exc}"
            raise EmbeddingError(f"{detail} (after {self.max_retries + 1} attempts)") from exc

    def _embed(self, texts: list[str]) -> list[list[float]]:
        self._client = self._client or httpx.Client(timeout=self.timeout)
        with self._last_failure():
            for attempt in Retrying(**self._retrying()):
                with attempt:
                    started, chunks = time.monotonic(), []
                    with self._client.stream("POST", self.endpoint, json=self._body(texts), headers=self._headers()) as response:
                        for chunk in response.iter_bytes():
                            chunks.append(chunk)
                            self._deadline_passed(started)
                    return self._vectors(response.status_code, b"".join(chunks), len(texts))
        raise AssertionError("unreachable: tenacity re-raises the last failure")

    async def _aembed(self, texts: list[str]) -> list[list[float]]:
        self._aclient = self._aclient or httpx.AsyncClient(timeout=self.timeout)
        with self._last_failure():
            async for attempt in AsyncRetrying(**self._retrying()):
                with attempt:
                    started, chunks = time.monotonic(), []
                    async with self._aclient.stream("POST", self.endpoint, json=self._body(texts), headers=self._headers()) as response:
                        async for chunk in response.aiter_bytes():
                            chunks.append(chunk)
                            self._deadline_passed(started)
                    return self._vectors(response.status_code, b"".join(chunks), len(texts))
        raise AssertionError("unreachable: tenacity re-raises the last failure")

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
