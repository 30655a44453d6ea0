"""One Qdrant collection holding a corpus: one named dense vector per embedding model, plus BM25 sparse vectors.

Keeping one named vector per model is what makes fallback safe: a query vector from model A is only ever
searched against document vectors from model A. Search runs through Qdrant's Query API, so it behaves the same in
embedded local mode and against a server or cluster. Hybrid fusion (RRF, DBSF, convex) is computed here over each
list's top ``prefetch_limit``, ranked by score then point id: inside the engine, exact ties of a list reach the fusion in
an order that changes from process to process (``benchmarks/bench_hybrid_ties.py``), and so would the fused ranking.
"""

from __future__ import annotations

import atexit
import contextlib
import logging
import re
import uuid
import weakref
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from qdrant_client import QdrantClient, models
from tqdm.auto import tqdm

from ..errors import OptionError
from .bm25 import BM25Encoder
from .fusion import DEFAULT_RRF_K, FUSION_METHODS, convex_scores, rrf_scores

log = logging.getLogger(__name__)

SPARSE_NAME = "bm25"
_NAMESPACE = uuid.UUID("5b1d0c4e-9d55-4a8e-9a43-ace11a3a1d3b")
MODES = ("dense", "bm25", "hybrid")
BULK_WRITE = 10_000  # documents in one upsert from which search indexes are built right away


def point_id(doc_id: str) -> str:
    """Qdrant point ids must be ints or UUIDs; a document id maps to a stable UUID."""
    return str(uuid.uuid5(_NAMESPACE, doc_id))


@dataclass
class Hit:
    """One search result."""

    doc_id: str
    score: float
    text: str = ""
    payload: dict[str, Any] = field(default_factory=dict)


@dataclass
class HybridParams:
    """How dense and BM25 results are fused.

    ``method``: ``rrf`` (Qdrant's weighted RRF formula: ``rrf_k``, ``dense_weight``/``sparse_weight``), ``dbsf``
    (Qdrant's distribution-based score fusion, qdrant-client's implementation) or ``convex`` (``alpha * dense + (1 -
    alpha) * bm25`` over theoretically min-max normalised scores, Bruch et al. 2023). Each is fused in Python over the
    ``prefetch_limit`` candidates of each list, ties in point-id order; every score is in [0, 1]."""

    rrf_k: int = DEFAULT_RRF_K
    dense_weight: float = 1.0
    sparse_weight: float = 1.0
    prefetch_limit: int = 100
    method: str = "rrf"
    alpha: float = 0.5

    def __post_init__(self) -> None:
        if self.method not in FUSION_METHODS:
            raise OptionError(f"fusion method must be one of {FUSION_METHODS}, got {self.method!r}")
        if not 0 <= self.alpha <= 1:
            raise OptionError(f"alpha must be in [0, 1], got {self.alpha}")
        if self.rrf_k < 1:
            raise OptionError(f"rrf_k must be at least 1, got {self.rrf_k}")

    def describe(self) -> str:
        if self.method == "convex":
            return f"convex(alpha={self.alpha:g})"
        if self.method == "dbsf":
            return "dbsf"
        weights = "" if self.dense_weight == self.sparse_weight == 1 else f",w={self.dense_weight:g}/{self.sparse_weight:g}"
        return f"rrf(k={self.rrf_k}{weights})"


def _fused_score_scale(hybrid: HybridParams) -> float:
    """Scale a fused score into [0, 1]: 1 means first in every list. RRF's best score is
    ``sum_i 1 / (1 / w_i + k - 1)``; DBSF sums one normalised score in [0, 1] per list (two lists)."""
    if hybrid.method == "dbsf":
        return 0.5
    best = sum(1.0 / (1.0 / w + hybrid.rrf_k - 1) for w in (hybrid.dense_weight, hybrid.sparse_weight) if w > 0)
    return 1.0 / best if best else 1.0


def _ranked(points: Sequence[Any]) -> dict[str, float]:
    """A list's scores by point id, best first and exact ties in point-id order (the engine's order of ties is not
    the same in every process)."""
    return dict(sorted(((str(p.id), float(p.score)) for p in points), key=lambda item: (-item[1], item[0])))


def _fuse(raw: Mapping[str, dict[str, float]], hybrid: HybridParams) -> dict[str, float]:
    """The fused score of every candidate in [0, 1]: convex; Qdrant's weighted RRF scaled by its best; or DBSF
    (qdrant-client's own, as its local mode runs it) halved."""
    if hybrid.method == "convex":
        return convex_scores(list(raw["dense"].items()), list(raw["bm25"].items()), hybrid.alpha)
    if hybrid.method == "dbsf":
        from qdrant_client.hybrid.fusion import distribution_based_score_fusion

        lists = [[models.ScoredPoint(id=pid, version=0, score=score) for pid, score in raw[name].items()]
                 for name in ("dense", "bm25")]
        fused = {str(p.id): p.score for p in distribution_based_score_fusion(lists, limit=sum(map(len, lists)))}
    else:
        fused = rrf_scores([list(raw["dense"]), list(raw["bm25"])], k=hybrid.rrf_k,
                           weights=[hybrid.dense_weight, hybrid.sparse_weight])
    scale = _fused_score_scale(hybrid)
    return {pid: min(1.0, score * scale) for pid, score in fused.items()}


_OPEN_CLIENTS: weakref.WeakSet = weakref.WeakSet()


@atexit.register
def _close_open_clients() -> None:
    """Close embedded clients a script left open while Python can still run their close(): qdrant-client's own
    finalizer runs during interpreter teardown and prints an ImportError traceback."""
    for client in list(_OPEN_CLIENTS):
        with contextlib.suppress(Exception):
            client.close()


def make_client(path: str | None = None, url: str | None = None, api_key: str | None = None) -> QdrantClient:
    """Embedded local Qdrant (``path`` folder, or in memory when both are None), or a server/cluster by ``url``."""
    if url:
        return _remote_client(url, api_key)
    if not path:
        return QdrantClient(":memory:")
    if Path(path).exists() and not Path(path).is_dir():
        raise OptionError(f"{path}: is a file; the embedded Qdrant folder must be a directory (pass another --qdrant-path)")
    try:
        client = QdrantClient(path=path)
        _OPEN_CLIENTS.add(client)
        return client
    except RuntimeError as exc:  # portalocker: the folder is locked by another client
        if "already accessed" in str(exc) or "lock" in str(exc).lower():
            raise OptionError(f"{path}: embedded Qdrant folder is in use by another client or process (one at a time; "
                              "use a Qdrant server for shared access)") from None
        raise
    except PermissionError as exc:
        raise OptionError(f"{path}: no permission to use this folder for the embedded Qdrant ({exc.strerror})") from None
    except OSError as exc:
        raise OptionError(f"{path}: cannot use this folder for the embedded Qdrant ({exc.strerror or exc})") from None
    except Exception as exc:  # noqa: BLE001 - sqlite3.DatabaseError, pickle errors: a corrupt storage file
        raise OptionError(f"{path}: the embedded Qdrant storage is unreadable ({type(exc).__name__}: {exc}); restore it "
                          "or delete the folder and index again") from None


def shown_url(url: str) -> str:
    """``url`` as messages show it: a password (``user:SECRET@``) becomes ``***`` and the query (``?api-key=...``) is
    dropped. (serve.http_embedding.redact_url does the same for endpoints; the layers keep index below serve.)"""
    from urllib.parse import urlsplit, urlunsplit

    try:
        parts = urlsplit(url)
        port = parts.port
    except ValueError:
        return "<unparseable url>"
    netloc = parts.netloc
    if parts.password is not None:
        netloc = f"{parts.username}:***@{parts.hostname}" + (f":{port}" if port else "")
    return urlunsplit(parts._replace(netloc=netloc, query=""))


def _remote_client(url: str, api_key: str | None) -> QdrantClient:
    """A client for the Qdrant server at ``url``, checked reachable now: qdrant-client connects lazily, so a wrong
    --qdrant-url would otherwise fail at the first search as a long httpx traceback (and its background version check
    would print a second warning). One line names the URL (password redacted) and why."""
    import importlib.metadata

    from qdrant_client.common.version_check import is_compatible

    where = f"cannot reach Qdrant at {shown_url(url)}"
    try:
        client = QdrantClient(url=url, api_key=api_key, check_compatibility=False)
    except Exception as exc:  # noqa: BLE001 - a malformed URL: ValueError, TypeError from qdrant-client or httpx
        raise OptionError(f"{where}: not a usable URL ({_reason(exc, url, api_key)}); pass e.g. --qdrant-url "
                          "http://localhost:6333") from None
    try:
        server = client.info().version
    except Exception as exc:  # noqa: BLE001 - refused, DNS, timeout, TLS, not a Qdrant server: all one line
        with contextlib.suppress(Exception):
            client.close()
        raise OptionError(f"{where}: {_reason(exc, url, api_key)}; check --qdrant-url and that the server is running") from None
    with contextlib.suppress(Exception):
        mine = importlib.metadata.version("qdrant-client")
        if not is_compatible(mine, server):
            log.warning("Qdrant server %s at %s and qdrant-client %s differ by more than one minor version; some "
                        "calls may fail", server, shown_url(url), mine)
    return client


def _reason(exc: BaseException, url: str, api_key: str | None) -> str:
    """The innermost cause of a connection failure, in words (``[Errno 111] Connection refused``), secrets removed."""
    from qdrant_client.http.exceptions import UnexpectedResponse

    if isinstance(exc, UnexpectedResponse):
        text = f"HTTP {exc.status_code} {exc.reason_phrase}".strip()
        if exc.status_code in (401, 403):
            text += " (check the API key)"
    else:
        for _ in range(10):  # ResponseHandlingException(source=httpx.ConnectError(...)) <- httpcore <- OSError
            inner = getattr(exc, "source", None) or exc.__cause__
            if not isinstance(inner, BaseException):
                break
            exc = inner
        text = str(exc) or type(exc).__name__
    text = text.replace(url, shown_url(url))
    if api_key:
        text = text.replace(api_key, "***")
    return " ".join(text.split())


# The names made from a collection name: a rollout's versions <name>__v<N> (collections: a folder on every engine),
# an online experiment's alias <name>__challenger, and the Qdrant Edge engine's alias pointer file <alias>.alias.json
# (an alias of either name), which is written atomically through a temporary copy beside it (atomic.write_bytes:
# mkstemp's ".<file>." prefix, 8 random characters, ".tmp").
VERSION_MARK = "__v"
CHALLENGER_SUFFIX = "__challenger"
POINTER_SUFFIX = ".alias.json"
MAX_FILE_NAME = 255  # bytes in one file or folder name (NAME_MAX on Linux and macOS); a Qdrant server's names too
_LAST_VERSION = 10**9 - 1  # room kept for a rollout's version number (a billion rollouts of one collection)


def derived_names(name: str) -> list[str]:
    """Every collection, folder and file name the code makes of the collection name ``name`` (rollouts,
    experiments, each engine's files), the longest last."""
    aliases = [name, f"{name}{CHALLENGER_SUFFIX}"]
    pointers = [f"{alias}{POINTER_SUFFIX}" for alias in aliases]
    made = [*aliases, f"{name}{VERSION_MARK}{_LAST_VERSION}", *pointers, *(f".{p}.{'x' * 8}.tmp" for p in pointers)]
    return sorted(made, key=len)


# The longest collection name whose every derived name fits in one file name: what `ace index`, `ace rollout` and
# `ace experiment start` need on every engine (Edge's temporary challenger pointer is the longest: 37 more characters)
MAX_COLLECTION_NAME = MAX_FILE_NAME - len(derived_names("")[-1])
_SAFE_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]*")
_MADE = re.compile(rf"(.+?)(?:{VERSION_MARK}\d+|{CHALLENGER_SUFFIX})")


def check_collection_name(name: str, *, made: bool = False) -> str:
    """A collection name that is safe as a folder name: letters, digits, ``_ . -``, no ``..`` and no separators
    (embedded engines store a collection in a folder of that name, so ``../x`` would write outside the path), and
    short enough for every name made of it (:data:`MAX_COLLECTION_NAME`, :func:`derived_names`). ``made``: a name
    the code may have made of one (a rollout's version, an experiment's alias: what an index opens beside another)
    passes when the name it was made of does."""
    if not isinstance(name, str) or not _SAFE_NAME.fullmatch(name) or ".." in name:
        raise OptionError(f"collection name {name!r} (--collection): use letters, digits, '_', '.' and '-' (starting "
                          f"with a letter or digit, no '..', at most {MAX_COLLECTION_NAME} characters)")
    made_of = _MADE.fullmatch(name) if made else None
    given = made_of.group(1) if made_of else name  # the name a version or an experiment's alias was made of
    if len(given) > MAX_COLLECTION_NAME:
        raise OptionError(f"collection name {given[:24]!r}... (--collection) has {len(given)} characters; at most "
                          f"{MAX_COLLECTION_NAME}: the names made of it (its rollout versions, its experiment alias and "
                          f"their files, e.g. {derived_names('<name>')[-1]!r}) must fit in {MAX_FILE_NAME} bytes")
    return name


def open_local(collection: str, *, path: str | None = None, url: str | None = None, api_key: str | None = None,
               **kwargs: Any) -> CorpusIndex:
    """The ``local`` engine (see :mod:`~ace_llamaindex.index.engines`): qdrant-client, embedded or a server by ``url``."""
    index = CorpusIndex(make_client(path=path, url=url, api_key=api_key), collection, **kwargs)
    index.recover_alias(collection)  # a first rollout killed between dropping the collection and creating its alias
    return index


# A rollout's collection <alias>__v<N> records, once complete, the alias it is a version of (CorpusIndex.recover_alias)
VERSION_OF_KEY = "ace_version_of"

# How a collection is spread over a Qdrant cluster (qdrant-client's create_collection arguments), and their CLI options
CLUSTER_KEYS = ("shard_number", "replication_factor", "write_consistency_factor")
CLUSTER_FLAGS = {"shard_number": "--shards", "replication_factor": "--replication-factor",
                 "write_consistency_factor": "--write-consistency"}


def cluster_flags(given: Mapping[str, Any]) -> str:
    """The options given, as the CLI spells them (``--shards 3, --replication-factor 2``)."""
    return ", ".join(f"{CLUSTER_FLAGS[k]} {v}" for k, v in given.items())


def cluster_options(index, **given: int | None) -> dict[str, int]:
    """The cluster settings given (None left out), checked, for a collection ``index`` will create: one clear error
    for a bad value, or for any value on an embedded engine (it has no shards or replicas: they would mean nothing;
    ``index=None``: an embedded location not opened yet)."""
    given = {k: v for k, v in given.items() if v is not None}
    check_cluster(given)
    serves = getattr(index, "serves_cluster", None)
    if given and not (serves is not None and serves()):
        engine = f" ({type(index).__name__})" if index is not None else ""
        raise OptionError(f"{cluster_flags(given)}: shards and replicas are a Qdrant server's (--qdrant-url); an "
                          f"embedded engine{engine} (--qdrant-path) has neither, so they would mean nothing")
    return given


def check_cluster(given: Mapping[str, Any]) -> None:
    """Each a whole number of at least 1, and no write waiting for more replicas than a shard has."""
    for key, value in given.items():
        if key not in CLUSTER_KEYS:
            raise OptionError(f"unknown cluster setting {key!r}; known: {', '.join(CLUSTER_KEYS)}")
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise OptionError(f"{CLUSTER_FLAGS[key]} must be a whole number of at least 1, got {value!r}")
    wcf, rf = given.get("write_consistency_factor"), given.get("replication_factor")
    if wcf is not None and rf is not None and wcf > rf:
        raise OptionError(f"--write-consistency {wcf} is more than --replication-factor {rf}: a write would wait for "
                          "replicas that do not exist")


def local_holds(path: Path, collection: str) -> bool:
    """Whether ``path`` is an embedded qdrant-client folder holding ``collection``: a collection, a rollout's alias (in
    ``meta.json``), or a rollout's versions of it (``<collection>__v<N>``, left without the alias by a killed rollout)."""
    import json

    if (path / "collection" / collection).is_dir():
        return True
    try:
        aliases = json.loads((path / "meta.json").read_text()).get("aliases") or {}
    except (OSError, ValueError, AttributeError):
        return False
    version = re.compile(rf"{re.escape(collection)}{VERSION_MARK}\d+")
    return collection in aliases or ((path / "collection").is_dir()
                                     and any(version.fullmatch(p.name) for p in (path / "collection").iterdir()))


class CorpusIndex:
    """A corpus in one Qdrant collection, searchable dense, BM25 or hybrid, in batches."""

    ALIASES_ARE_COLLECTIONS = True  # Qdrant keeps aliases and collections in one namespace

    def __init__(self, client: QdrantClient, collection: str = "ace_memories", bm25: BM25Encoder | None = None,
                 text_field: str = "text", id_field: str = "doc_id") -> None:
        """``text_field``/``id_field`` name the payload keys holding a point's text and document id, so an
        existing collection written by another tool can be searched (and mined) as it is."""
        self.client = client
        self.collection = check_collection_name(collection, made=True)  # opened by a user's name, or beside it
        self.bm25 = bm25 or BM25Encoder()
        self.text_field, self.id_field = text_field, id_field
        self.cluster: dict[str, int] = {}  # shard_number, replication_factor, write_consistency_factor for _create

    # ---- the engine: every call that touches Qdrant itself (EdgeCorpusIndex overrides these) ---------------
    def exists(self) -> bool:
        return self.client.collection_exists(self.collection) or self.recover_alias(self.collection) is not None

    def close(self) -> None:
        """Release the engine (an embedded folder is locked while open)."""
        self.client.close()

    def optimize(self) -> None:
        """Build the engine's search indexes for what was written (a no-op where the engine does it by itself)."""

    def delete(self) -> None:
        """Drop the collection if it exists."""
        if self.exists():
            self.client.delete_collection(self.collection)

    def dense_vectors(self) -> dict[str, int]:
        """Named dense vectors in the collection and their sizes."""
        if not self.exists():
            return {}
        vectors = self.client.get_collection(self.collection).config.params.vectors
        return {name: params.size for name, params in (vectors or {}).items()} if isinstance(vectors, dict) else {}

    def _stored_metadata(self) -> dict[str, Any]:
        return (self.client.get_collection(self.collection).config.metadata or {}) if self.exists() else {}

    def _create(self, dense: Mapping[str, int], metadata: dict[str, Any]) -> None:
        self.client.create_collection(
            self.collection,
            vectors_config={n: models.VectorParams(size=d, distance=models.Distance.COSINE) for n, d in dense.items()},
            sparse_vectors_config={SPARSE_NAME: models.SparseVectorParams(modifier=models.Modifier.IDF)},
            metadata=metadata,
            **self.cluster,
        )

    def _write(self, points: list[models.PointStruct]) -> None:
        self.client.upsert(self.collection, points=points, wait=True)

    def _query(self, requests: list[models.QueryRequest]) -> list[list[Any]]:
        return [r.points for r in self.client.query_batch_points(self.collection, requests=requests)]

    def _retrieve(self, point_ids: list[str]) -> list[Any]:
        """Points (with payload, without vectors) by point id; missing ids are left out."""
        return self.client.retrieve(self.collection, ids=point_ids, with_payload=True, with_vectors=False)

    def _delete_points(self, selector: models.Filter | list[str]) -> None:
        chosen = models.PointIdsList(points=selector) if isinstance(selector, list) else models.FilterSelector(filter=selector)
        self.client.delete(self.collection, points_selector=chosen, wait=True)

    def count(self) -> int:
        """Points in the collection (0 when it does not exist)."""
        return self.client.count(self.collection, exact=True).count if self.exists() else 0

    def _scroll(self, batch_size: int, scroll_filter: models.Filter | None = None) -> Iterator[Any]:
        offset = None
        while True:
            points, offset = self.client.scroll(self.collection, limit=batch_size, offset=offset, with_payload=True,
                                                scroll_filter=scroll_filter)
            yield from points
            if offset is None:
                return

    # ---- rollouts: aliases, sibling collections, whole points (see ace_llamaindex.serve.rollout) --------------------
    def alias_target(self, name: str) -> str | None:
        """The collection the alias ``name`` points at (a Qdrant collection alias), or None."""
        return next((a.collection_name for a in self.client.get_aliases().aliases if a.alias_name == name), None)

    def switch_alias(self, name: str, target: str) -> None:
        """Point the alias ``name`` at ``target`` in one atomic operation (a plain collection of that name is
        dropped first: Qdrant keeps aliases and collections in one namespace)."""
        ops: list[Any] = []
        if self.alias_target(name) is not None:
            ops.append(models.DeleteAliasOperation(delete_alias=models.DeleteAlias(alias_name=name)))
        elif self.client.collection_exists(name):
            self.client.delete_collection(name)
        ops.append(models.CreateAliasOperation(create_alias=models.CreateAlias(collection_name=target, alias_name=name)))
        self.client.update_collection_aliases(change_aliases_operations=ops)

    def remove_alias(self, name: str) -> None:
        """Remove the alias ``name`` (one atomic operation; nothing when there is none)."""
        if self.alias_target(name) is not None:
            self.client.update_collection_aliases(change_aliases_operations=[
                models.DeleteAliasOperation(delete_alias=models.DeleteAlias(alias_name=name))])

    def collection_names(self) -> list[str]:
        """Every collection at this location."""
        return [c.name for c in self.client.get_collections().collections]

    def recover_alias(self, name: str) -> str | None:
        """Finish a first rollout killed between dropping the plain collection ``name`` and creating the alias of that
        name (Qdrant keeps both in one namespace, so that switch is two steps): when ``name`` is neither a collection
        nor an alias, point the alias at the newest complete version of it (``<name>__v<N>`` marked with
        ``VERSION_OF_KEY``, which a rollout writes before the drop) and return that version; else None, changing nothing."""
        if self.alias_target(name) is not None or self.client.collection_exists(name):
            return None
        pattern = re.compile(rf"{re.escape(name)}{VERSION_MARK}(\d+)")
        versions = sorted(((int(m.group(1)), c) for c in self.collection_names() if (m := pattern.fullmatch(c))),
                          reverse=True)
        for _, version in versions:
            if (self.client.get_collection(version).config.metadata or {}).get(VERSION_OF_KEY) != name:
                continue  # a killed rollout's partial collection
            try:
                self.client.update_collection_aliases(change_aliases_operations=[models.CreateAliasOperation(
                    create_alias=models.CreateAlias(collection_name=version, alias_name=name))])
            except Exception as exc:  # noqa: BLE001 - another process recovered it first; a key that cannot write
                if self.alias_target(name) is None:
                    log.warning("%r is neither a collection nor an alias (a rollout was killed switching it) and could "
                                "not be pointed at %r: %s", name, version, exc)
                return self.alias_target(name)
            log.warning("%r was neither a collection nor an alias (a rollout was killed switching it): it serves %r, "
                        "its newest complete version, again", name, version)
            return version
        return None

    def sibling(self, collection: str) -> CorpusIndex:
        """Another collection at the same location, through the same engine (and client)."""
        return CorpusIndex(self.client, collection, BM25Encoder(k1=self.bm25.k1, b=self.bm25.b),
                           text_field=self.text_field, id_field=self.id_field)

    def metadata(self) -> dict[str, Any]:
        """The collection's metadata (BM25 statistics, and what a rollout recorded)."""
        return dict(self._stored_metadata())

    def set_metadata(self, extra: Mapping[str, Any]) -> None:
        """Merge ``extra`` into the collection's metadata."""
        self.client.update_collection(self.collection, metadata={**self.metadata(), **extra})

    def create(self, dense: Mapping[str, int], metadata: Mapping[str, Any]) -> None:
        """Create the collection with the given named vectors and metadata (it must not exist)."""
        if self.exists():
            raise OptionError(f"collection {self.collection!r} already exists")
        self._create(dense, dict(metadata))

    def iter_points(self, batch_size: int = 256, *, offset: str | int | None = None,
                    with_vectors: bool = True) -> Iterator[tuple[str, dict[str, Any], dict[str, Any]]]:
        """(point id, payload, vectors by name: dense lists and BM25 as a ``SparseVector``) for every point, in
        Qdrant's scroll order (by point id); from the point ``offset`` on (included) when given. ``with_vectors=False``:
        an empty dict instead of the vectors (reading payloads only)."""
        while True:
            points, offset = self.client.scroll(self.collection, limit=batch_size, offset=offset, with_payload=True,
                                                with_vectors=with_vectors)
            for p in points:
                yield str(p.id), dict(p.payload or {}), dict(p.vector or {})
            if offset is None:
                return

    def write_points(self, points: list[models.PointStruct]) -> None:
        """Write whole points (vectors already computed)."""
        self._write(points)

    # ---- a Qdrant server or cluster: how a new collection is spread ----------------------------------------------
    def serves_cluster(self) -> bool:
        """Whether this index talks to a Qdrant server or cluster (by URL), where collections have shards and
        replicas; an embedded engine has neither."""
        from qdrant_client.local.qdrant_local import QdrantLocal

        return self.client is not None and not isinstance(getattr(self.client, "_client", None), QdrantLocal)

    def set_cluster(self, shard_number: int | None = None, replication_factor: int | None = None,
                    write_consistency_factor: int | None = None) -> dict[str, int]:
        """How the collection is spread when this index creates it (None: the server's default: a shard per node,
        one replica, a write acknowledged by one replica). Given to an embedded engine, where they mean nothing, they
        are one clear error; given for a collection that exists already, they do not change it (a warning says so:
        ``ace rollout`` builds a new version with them). Returns what will be used."""
        given = cluster_options(self, shard_number=shard_number, replication_factor=replication_factor,
                                write_consistency_factor=write_consistency_factor)
        if given and self.exists():
            have = self.cluster_settings()
            differ = {k: (have.get(k), v) for k, v in given.items() if have.get(k) != v}
            if differ:
                log.warning("collection %r exists already (%s); %s apply to new collections only (`ace rollout` builds "
                            "a new version with them)", self.collection,
                            ", ".join(f"{k}={have_v}" for k, (have_v, _) in differ.items()), cluster_flags(given))
        self.cluster = given
        return dict(given)

    def cluster_settings(self) -> dict[str, int]:
        """The collection's shard number, replication factor and write consistency factor, on a server (what a
        rollout's new version copies); {} on an embedded engine or when it does not exist."""
        if not self.serves_cluster() or not self.exists():
            return {}
        params = self.client.get_collection(self.collection).config.params
        found = {k: getattr(params, k, None) for k in CLUSTER_KEYS}
        return {k: int(v) for k, v in found.items() if v is not None}

    # ---- schema --------------------------------------------------------------------------------------------
    def ensure(self, dense: Mapping[str, int]) -> None:
        """Create the collection (BM25 with IDF modifier + the given named dense vectors), or check it."""
        if not self.exists():
            self._create(dense, {"bm25_avgdl": self.bm25.avgdl, "bm25_k1": self.bm25.k1, "bm25_b": self.bm25.b})
            return
        have = self.dense_vectors()
        for name, size in dense.items():
            if name in have and have[name] != size:
                raise OptionError(f"collection {self.collection!r}: vector {name!r} has size {have[name]}, model gives {size}")
        if set(dense) - set(have):
            # Qdrant cannot add a named vector to an existing collection: rebuild it with all vectors.
            raise OptionError(
                f"collection {self.collection!r} has dense vectors {sorted(have)}; {sorted(set(dense) - set(have))} "
                "is new. Index into a new collection (or delete this one) so every model's vectors are present."
            )

    # ---- writing -------------------------------------------------------------------------------------------
    def upsert(
        self,
        doc_ids: Sequence[str],
        texts: Sequence[str],
        dense: Mapping[str, np.ndarray],
        payloads: Sequence[dict[str, Any]] | None = None,
        batch_size: int = 256,
        show_progress: bool = True,
        sparse: bool = True,
        optimize: bool | None = None,
    ) -> None:
        """Write documents with their dense vectors (one array per named vector) and BM25 vectors
        (``sparse=False`` skips BM25, for an index that will only be searched dense).

        BM25's average document length is fitted on the first batch written and kept in the collection's
        metadata, so documents added later (or by another process) are weighted the same way. ``optimize``: build
        the engine's search indexes afterwards (default: for a bulk write of ``BULK_WRITE`` documents or more; small
        incremental writes are searched as they are, and :meth:`optimize` can be called after a series of them)."""
        if sparse and self.bm25.avgdl is None:
            stored = self._stored_metadata()
            if stored.get("bm25_avgdl"):
                self.bm25.avgdl = float(stored["bm25_avgdl"])
            else:
                self.bm25.fit(texts)
        self.ensure({name: int(v.shape[1]) for name, v in dense.items()})
        bar = tqdm(total=len(doc_ids), desc=f"indexing into {self.collection}", unit="doc", disable=not show_progress)
        for start in range(0, len(doc_ids), batch_size):
            points = []
            for i in range(start, min(start + batch_size, len(doc_ids))):
                indices, values = self.bm25.encode_document(texts[i]) if sparse else ([], [])
                vector: dict[str, Any] = {name: v[i].tolist() for name, v in dense.items()}
                if indices:
                    vector[SPARSE_NAME] = models.SparseVector(indices=indices, values=values)
                payload = {**(payloads[i] if payloads else {}), "doc_id": doc_ids[i], "text": texts[i]}
                points.append(models.PointStruct(id=point_id(doc_ids[i]), vector=vector, payload=payload))
            self._write(points)
            bar.update(len(points))
        bar.close()
        if optimize or (optimize is None and len(doc_ids) >= BULK_WRITE):
            self.optimize()

    # ---- searching -----------------------------------------------------------------------------------------
    def _request(
        self,
        mode: str,
        vector: np.ndarray | None,
        text: str | None,
        using: str | None,
        limit: int,
        query_filter: models.Filter | None,
        score_threshold: float | None,
        with_payload: bool = True,
    ) -> models.QueryRequest:
        sparse = None
        if mode != "dense":
            indices, values = self.bm25.encode_query(text or "")
            sparse = models.SparseVector(indices=indices, values=values)
        if mode == "dense":
            return models.QueryRequest(query=vector.tolist(), using=using, limit=limit, filter=query_filter,
                                       with_payload=with_payload, score_threshold=score_threshold)
        # bm25 (a hybrid search asks for each list on its own and fuses them: _fused_search)
        return models.QueryRequest(query=sparse, using=SPARSE_NAME, limit=limit, filter=query_filter,
                                   with_payload=with_payload, score_threshold=score_threshold)

    def search(
        self,
        mode: str,
        *,
        vectors: np.ndarray | None = None,
        texts: Sequence[str] | None = None,
        using: str | None = None,
        limit: int = 10,
        query_filter: models.Filter | None = None,
        hybrid: HybridParams | None = None,
        score_threshold: float | None = None,
        batch_size: int = 64,
        show_progress: bool = False,
    ) -> list[list[Hit]]:
        """Batch search: one list of hits per query. ``dense`` needs vectors and ``using`` (the named vector),
        ``bm25`` needs texts, ``hybrid`` needs both."""
        if mode not in MODES:
            raise OptionError(f"search mode must be one of {MODES}, got {mode!r}")
        if mode != "bm25" and (vectors is None or using is None):
            raise OptionError(f"{mode} search needs query vectors and the named vector to search (using=)")
        if mode != "dense" and texts is None:
            raise OptionError(f"{mode} search needs the query texts")
        n = len(vectors) if vectors is not None else len(texts)
        hybrid = hybrid or HybridParams()
        if mode == "hybrid":
            return self._fused_search(vectors, texts, using, limit, query_filter, hybrid, score_threshold, batch_size,
                                      show_progress)
        results: list[list[Hit]] = []
        for start in tqdm(range(0, n, batch_size), desc=f"{mode} search", disable=not show_progress):
            stop = min(start + batch_size, n)
            requests = [
                self._request(mode, None if vectors is None else vectors[i], None if texts is None else texts[i],
                              using, limit, query_filter, score_threshold)
                for i in range(start, stop)
            ]
            for points in self._query_or_explain(requests):
                hits = [self._hit(p) for p in points]
                # Exact ties in document-id order: engines (Qdrant Edge above all) order them arbitrarily.
                results.append(sorted(hits, key=lambda h: (-h.score, h.doc_id)))
        return results

    def _fused_search(self, vectors, texts, using, limit, query_filter, hybrid, score_threshold, batch_size,
                      show_progress) -> list[list[Hit]]:
        """RRF, DBSF or the convex combination over each list's top ``prefetch_limit``, fused here. Both lists are fetched by
        point id only (payloads are most of a query's cost), ranked by score then point id, and fused on ids;
        payloads are fetched for the fused top ``limit`` alone. Why not inside Qdrant: exact ties of a list (BM25
        ties the tie-breaker cannot separate in float32) reach the engine's RRF in an order that changes from process
        to process (and RRF is rank-based; DBSF's cut at ``limit`` among tied scores also moved), and the convex
        combination is a formula query, which needs a server (neither local mode nor Edge
        runs them). With <= 100 candidates per list the fusion costs microseconds. Scores are in [0, 1] (RRF's and
        DBSF's scaled, :func:`_fused_score_scale`); ``score_threshold`` applies to them. A convex hit keeps its
        raw scores in ``payload['ace_scores']``."""
        depth = max(limit, hybrid.prefetch_limit)
        results: list[list[Hit]] = []
        for start in tqdm(range(0, len(vectors), batch_size), desc="hybrid search", disable=not show_progress):
            stop = min(start + batch_size, len(vectors))
            requests = [self._request(mode, vectors[i], texts[i], using, depth, query_filter, None, with_payload=False)
                        for i in range(start, stop) for mode in ("dense", "bm25")]
            answers = self._query_or_explain(requests)
            fused_rows = []
            for d_points, s_points in zip(answers[0::2], answers[1::2], strict=True):
                raw = {"dense": _ranked(d_points), "bm25": _ranked(s_points)}
                fused = _fuse(raw, hybrid)
                top = sorted(fused, key=lambda pid: (-fused[pid], pid))[:limit]
                if score_threshold is not None:
                    top = [pid for pid in top if fused[pid] >= score_threshold]
                fused_rows.append((top, fused, raw))
            wanted = sorted({pid for top, _, _ in fused_rows for pid in top})
            points = {str(p.id): p for p in self._retrieve(wanted)} if wanted else {}
            for top, fused, raw in fused_rows:
                row = []
                for pid in top:
                    if pid not in points:  # deleted between the two calls
                        continue
                    h = self._hit(points[pid])
                    h.score = fused[pid]
                    if hybrid.method == "convex":
                        h.payload["ace_scores"] = {"dense": raw["dense"].get(pid), "bm25": raw["bm25"].get(pid),
                                                   "fused": fused[pid]}
                    row.append(h)
                results.append(sorted(row, key=lambda h: (-h.score, h.doc_id)))
        return results

    def _query_or_explain(self, requests: list[models.QueryRequest]) -> list[list[Any]]:
        """Run the requests; a missing collection or vector becomes one clear error instead of the engine's."""
        try:
            return self._query(requests)
        except Exception:  # noqa: BLE001 - engine errors (ValueError, UnexpectedResponse, ...) vary by engine
            if not self.exists():
                raise OptionError(f"collection {self.collection!r} does not exist; index documents into it first") from None
            wanted = {r.using for r in requests}
            missing = sorted(w for w in wanted if w and w != SPARSE_NAME and w not in self.dense_vectors())
            if missing:
                have = sorted(self.dense_vectors())
                same_model = [h for h in have if missing[0].startswith(h + "-")]  # the model's torch space, held
                hint = (f" The model now serves an export whose vectors are a space of their own "
                        f"({missing[0][len(same_model[0]) + 1:]}, see `ace export`): index the documents again, or pass "
                        "backend='torch' (or an export in torch's space) to search the vectors this collection holds."
                        if same_model else "")
                raise OptionError(f"collection {self.collection!r} has no dense vector {missing[0]!r}; it has {have}.{hint}") from None
            raise

    # ---- the document lifecycle (used by the LlamaIndex vector store) ---------------------------------------------
    def delete_documents(self, doc_ids: Sequence[str] | None = None, where: models.Filter | None = None) -> None:
        """Delete points by document id, or every point matching ``where``."""
        if not self.exists():
            return
        if doc_ids:
            self._delete_points([point_id(d) for d in doc_ids])
        if where is not None:
            self._delete_points(where)

    def get_documents(self, doc_ids: Sequence[str] | None = None, where: models.Filter | None = None) -> list[Hit]:
        """Documents by id (in the order asked; missing ones left out) and/or matching ``where``."""
        if not self.exists():
            return []
        conditions: list[Any] = [where] if where is not None else []
        if doc_ids:
            conditions.append(models.HasIdCondition(has_id=[point_id(d) for d in doc_ids]))
        hits = [self._hit(p) for p in self._scroll(256, models.Filter(must=conditions) if conditions else None)]
        if doc_ids:
            order = {d: i for i, d in enumerate(doc_ids)}
            hits.sort(key=lambda h: order.get(h.doc_id, len(order)))
        return hits

    def iter_documents(self, batch_size: int = 256) -> Iterator[tuple[str, str, dict[str, Any]]]:
        """Yield (doc_id, text, payload) for every point."""
        for p in self._scroll(batch_size):
            hit = self._hit(p)
            yield hit.doc_id, hit.text, hit.payload

    def _hit(self, point: Any) -> Hit:
        payload = dict(point.payload or {})
        return Hit(doc_id=str(payload.get(self.id_field, point.id)), score=float(getattr(point, "score", 0.0) or 0.0),
                   text=str(payload.get(self.text_field, "")), payload=payload)
