"""BM25 as Qdrant sparse vectors, with no model download.

Qdrant's ``Modifier.IDF`` multiplies each query term by its IDF at search time but does no term-frequency
saturation or length normalisation (see DESIGN.md §5), so the document side of BM25 is computed here:
``w(t, d) = tf * (k1 + 1) / (tf + k1 * (1 - b + b * |d| / avgdl))``, and a query term weighs 1 (times its count).
With a collection whose sparse vector has ``modifier=IDF``, the dot product is exactly Okapi BM25.

Ties are broken deterministically: documents with the same matching terms and length would score exactly
alike, and Qdrant Edge orders such ties differently in every process, so reports would change from run to run.
Each document's weights are scaled by ``1 + TIE_BREAK * u`` with ``u`` in [0, 1) from a hash of its text: every
engine (local mode, Edge, a server) then ranks former ties the same way, and no score moves by more than 1e-4
relative. (Our search results also order any remaining exact tie by document id.)

Written by hand because the libraries that do this (fastembed's ``Qdrant/bm25``) download their tokenizer data
from a hub at run time. Terms are hashed (CRC32) into the uint32 index space, so the vocabulary needs no state.
"""

from __future__ import annotations

import re
import zlib
from collections import Counter
from collections.abc import Iterable, Sequence
from functools import lru_cache

import snowballstemmer

# A short English stop list: removing only the most frequent function words keeps BM25 robust.
STOPWORDS = frozenset(
    """a an and are as at be but by for from has have he her his i if in into is it its me my no not of on or our
    she so than that the their them then there these they this those to was we were what when where which who
    will with you your do does did can could should would how about""".split()
)
# Word characters, plus the combining marks \w leaves out (Thai/Lao/Myanmar/Khmer vowel signs, Latin diacritics).
_TOKEN = re.compile(r"[\w\u0300-\u036f\u0e00-\u0eff\u1000-\u109f\u1780-\u17ff]+", re.UNICODE)
# Scripts written without spaces between words (Han, kana, Thai, Lao, Myanmar, Khmer): a run of them is one \w+
# match, so a query could only ever match a whole run. Such runs are indexed as overlapping character bigrams (as
# Lucene's CJKAnalyzer does), a lone character as itself.
_UNSPACED = re.compile(r"[\u3040-\u30ff\u3400-\u4dbf\u4e00-\u9fff\uf900-\ufaff\u0e00-\u0eff\u1000-\u109f\u1780-\u17ff]+")
_stemmer = snowballstemmer.stemmer("english")


@lru_cache(maxsize=200_000)
def _stem(word: str) -> str:
    return _stemmer.stemWord(word)


def _bigrams(run: str) -> list[str]:
    return [run] if len(run) == 1 else [run[i:i + 2] for i in range(len(run) - 1)]


def tokenize(text: str) -> list[str]:
    """Lowercase word tokens, English stop words removed, Snowball-stemmed; runs of unspaced scripts (CJK, Thai...)
    become character bigrams."""
    tokens: list[str] = []
    for word in _TOKEN.findall(text.lower()):
        if _UNSPACED.search(word):
            for part in re.split(f"({_UNSPACED.pattern})", word):
                if part:
                    tokens += _bigrams(part) if _UNSPACED.fullmatch(part) else ([_stem(part)] if part not in STOPWORDS else [])
        elif word not in STOPWORDS:
            tokens.append(_stem(word))
    return tokens


@lru_cache(maxsize=200_000)
def term_index(term: str) -> int:
    """The sparse-vector index of a term (stable across processes and machines)."""
    return zlib.crc32(term.encode("utf-8"))


SparseVector = tuple[list[int], list[float]]
TIE_BREAK = 1e-4  # relative: ~800 float32 steps apart, far below any meaningful BM25 gap


def tie_breaker(text: str) -> float:
    """A factor in [1, 1 + TIE_BREAK), fixed by the text, that separates otherwise equal BM25 scores."""
    return 1.0 + TIE_BREAK * zlib.crc32(text.encode("utf-8")) / 2**32


class BM25Encoder:
    """Encode documents and queries as BM25 sparse vectors for a Qdrant collection with ``Modifier.IDF``.

    ``avgdl`` (average document length in tokens) comes from :meth:`fit` over the corpus; until then it is the
    running mean of the documents encoded so far, so incremental indexing works without a fit.
    """

    def __init__(self, k1: float = 1.2, b: float = 0.75, avgdl: float | None = None) -> None:
        if k1 < 0 or not 0 <= b <= 1:
            raise ValueError(f"BM25 needs k1 >= 0 and 0 <= b <= 1, got k1={k1}, b={b}")
        self.k1, self.b, self.avgdl = k1, b, avgdl
        self._seen_tokens = 0
        self._seen_docs = 0

    def fit(self, texts: Iterable[str]) -> BM25Encoder:
        """Set ``avgdl`` from a corpus."""
        lengths = [len(tokenize(t)) for t in texts]
        self.avgdl = max(1.0, sum(lengths) / max(1, len(lengths)))
        return self

    def _avgdl(self) -> float:
        if self.avgdl is not None:
            return self.avgdl
        return max(1.0, self._seen_tokens / max(1, self._seen_docs))

    def encode_document(self, text: str) -> SparseVector:
        tokens = tokenize(text)
        self._seen_tokens += len(tokens)
        self._seen_docs += 1
        norm = self.k1 * (1 - self.b + self.b * len(tokens) / self._avgdl())
        scale = (self.k1 + 1) * tie_breaker(text)
        return _merge((term_index(t), tf * scale / (tf + norm)) for t, tf in Counter(tokens).items())

    @staticmethod
    def encode_query(text: str) -> SparseVector:
        return _merge((term_index(t), float(tf)) for t, tf in Counter(tokenize(text)).items())

    # ---- the shapes LlamaIndex's QdrantVectorStore(sparse_doc_fn=..., sparse_query_fn=...) takes ----------
    def sparse_doc_fn(self, texts: Sequence[str]) -> tuple[list[list[int]], list[list[float]]]:
        """Batch document encoder for ``QdrantVectorStore(enable_hybrid=True, sparse_doc_fn=...)``."""
        return _unzip(self.encode_document(t) for t in texts)

    def sparse_query_fn(self, texts: Sequence[str]) -> tuple[list[list[int]], list[list[float]]]:
        """Batch query encoder for ``QdrantVectorStore(enable_hybrid=True, sparse_query_fn=...)``."""
        return _unzip(self.encode_query(t) for t in texts)


def _merge(pairs: Iterable[tuple[int, float]]) -> SparseVector:
    """Sum weights of terms whose hashes collide, so indices are unique as Qdrant requires."""
    acc: dict[int, float] = {}
    for idx, weight in pairs:
        acc[idx] = acc.get(idx, 0.0) + weight
    return list(acc), list(acc.values())


def _unzip(vectors: Iterable[SparseVector]) -> tuple[list[list[int]], list[list[float]]]:
    indices, values = [], []
    for idx, val in vectors:
        indices.append(idx)
        values.append(val)
    return indices, values
