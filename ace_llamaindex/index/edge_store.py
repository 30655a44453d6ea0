"""The same :class:`~ace_llamaindex.index.store.CorpusIndex`, on Qdrant Edge: the Qdrant engine itself, in-process.

qdrant-client's embedded local mode searches by brute force in Python (a BM25 query over 5k documents takes
~250 ms here); Qdrant Edge (``pip install ace-llamaindex[edge]``) runs Qdrant's own indexes in the process, with
the same data model: named dense vectors, sparse vectors with the IDF modifier. Requests are built once, as
qdrant-client models (nearest-vector queries: hybrid fusion runs in ``CorpusIndex``), and translated here, so both
engines answer the same queries.
Qdrant Edge is beta; this module is the only place that knows its API.
"""

from __future__ import annotations

import atexit
import contextlib
import json
import logging
import re
import shutil
import tempfile
import weakref
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from typing import Any

from qdrant_client import models

from ..atomic import write_json
from ..errors import OptionError
from .bm25 import BM25Encoder
from .store import POINTER_SUFFIX, SPARSE_NAME, VERSION_MARK, CorpusIndex, check_collection_name

log = logging.getLogger(__name__)

META_FILE = "ace_collection.json"
# POINTER_SUFFIX: <path>/<alias>.alias.json: {"collection": the shard folder the alias serves} (in store.py: the
# collection name's length limit counts it)
# Held (flock) inside a shard folder while a process creates the shard, until its META_FILE is written: a folder without
# META_FILE whose lock nobody holds is a creation killed midway, removed by the next create. (The kernel drops the lock
# when its process dies, kill -9 included.)
CREATING_LOCK = ".ace_creating.lock"
# What a killed creation can leave in a shard folder: Edge's own files, and write_json's temporary copy of META_FILE
_PARTIAL_SHARD = {"edge_config.json", "segments", "wal", CREATING_LOCK}


def _read_pointer(path: Path) -> str | None:
    if not path.is_file():
        return None
    try:
        return str(json.loads(path.read_text())["collection"])
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise OptionError(f"{path}: unreadable alias pointer ({exc}); point it again with `ace rollout` or `ace rollback`") from None


def _edge():
    try:
        import qdrant_edge
    except ImportError:
        raise OptionError("engine 'edge' needs Qdrant Edge: pip install 'ace-llamaindex[edge]'") from None
    return qdrant_edge


def edge_available() -> bool:
    try:
        import qdrant_edge  # noqa: F401
    except ImportError:
        return False
    return True


# Qdrant Edge maps sparse files and writes into them (32 MiB each: two WAL segments, payloads, BM25, one per dense
# vector, ids and a few small ones; 165 MB apparent for a 20-document shard, measured). On a filesystem that cannot
# back those pages the process dies with SIGBUS instead of an error, so the room is checked before opening.
EDGE_FILE_BYTES = 32 * 2**20
MARGIN_BYTES = 16 * 2**20


def preallocated_bytes(n_dense: int) -> int:
    """What a new shard with ``n_dense`` named vectors will map: the WAL, payloads, BM25, ids, one per vector."""
    return EDGE_FILE_BYTES * (5 + n_dense)


def unfilled_bytes(root: Path) -> int:
    """The holes of an existing shard's sparse files: bytes Edge may write into without the filesystem's room."""
    holes = 0
    for file in root.rglob("*"):
        if file.is_file():
            stat = file.stat()
            holes += max(0, stat.st_size - stat.st_blocks * 512)
    return holes


def ensure_room(root: Path, needed: int) -> None:
    """Refuse, in one line, a shard the filesystem cannot back (Edge would die with SIGBUS writing into it)."""
    where = root if root.exists() else next((p for p in root.parents if p.exists()), Path("."))
    free = shutil.disk_usage(where).free
    if free < needed + MARGIN_BYTES:
        raise OptionError(f"{root}: Qdrant Edge maps {(needed + MARGIN_BYTES) / 1e6:.0f} MB of files here and the "
                          f"filesystem has {free / 1e6:.0f} MB free; free some space or use another --qdrant-path")


def edge_holds(path: Path, collection: str) -> bool:
    """Whether ``path`` holds ``collection`` (or an alias of that name) as a Qdrant Edge shard of ours."""
    return (path / collection / META_FILE).is_file() or (path / f"{collection}{POINTER_SUFFIX}").is_file()


def open_edge(collection: str, *, path: str | None = None, url: str | None = None, api_key: str | None = None,
              **kwargs: Any) -> EdgeCorpusIndex:
    """The ``edge`` engine (see :mod:`~ace_llamaindex.index.engines`): a shard folder per collection under ``path``. A
    shard this process already has open is shared (Edge lets one opener hold a shard)."""
    check_collection_name(collection)
    if path and kwargs.get("bm25") is None and kwargs.get("text_field", "text") == "text" \
            and kwargs.get("id_field", "doc_id") == "doc_id":
        target = _read_pointer(Path(path) / f"{collection}{POINTER_SUFFIX}") or collection
        opened = _OPEN.get(str(Path(path) / target))
        if opened is not None and opened.shard is not None:
            return opened
    return EdgeCorpusIndex(path, collection, **kwargs)


class EdgeCorpusIndex(CorpusIndex):
    """A corpus in a Qdrant Edge shard: one folder per collection under ``path`` (a temporary one if None)."""

    ALIASES_ARE_COLLECTIONS = False  # the alias is a pointer file beside the shard folders
    on_step: Callable[[str], None] | None = None  # told "created-shard" between a shard's files and its metadata

    def __init__(self, path: str | Path | None = None, collection: str = "ace_memories", bm25: BM25Encoder | None = None,
                 text_field: str = "text", id_field: str = "doc_id", follow_alias: bool = True) -> None:
        """``collection`` may be an alias written by a rollout: the shard it points at is opened."""
        check_collection_name(collection, made=True)  # before its pointer file's name is made
        if path and follow_alias:
            collection = _read_pointer(Path(path) / f"{collection}{POINTER_SUFFIX}") or collection
        super().__init__(client=None, collection=collection, bm25=bm25, text_field=text_field, id_field=id_field)
        self.q = _edge()
        self._tmp = None if path else tempfile.mkdtemp(prefix="ace-edge-")
        self.root = Path(path or self._tmp) / collection
        self.shard = None
        if (self.root / META_FILE).exists():
            ensure_room(self.root, unfilled_bytes(self.root))
            self.shard = self._open(lambda: self.q.EdgeShard.load(str(self.root)))
        if self._tmp:
            _TEMP_DIRS.add(self._tmp)
        _OPEN[str(self.root)] = self

    def _open(self, opener):
        """Open or create the shard; a folder another process holds is one clear error (Edge locks its WAL)."""
        try:
            return opener()
        except Exception as exc:  # noqa: BLE001 - Edge raises its own OSError-like types
            if "WouldBlock" in str(exc) or "lock" in str(exc).lower():
                raise OptionError(f"{self.root}: Qdrant Edge folder is in use by another process (one process per "
                                  "folder; use a Qdrant server for shared access)") from None
            if "segment data" in str(exc) or "already exists" in str(exc):  # another process created it meanwhile
                raise OptionError(f"{self.root}: Qdrant Edge folder is in use by another process (it is creating this "
                                  "collection right now; run again when it has finished)") from None
            raise OptionError(f"{self.root}: the Qdrant Edge folder is unreadable ({str(exc)[:160]}); restore it or "
                              "delete it and index again") from None

    # ---- engine calls ----------------------------------------------------------------------------------------
    def exists(self) -> bool:
        return self.shard is not None

    def delete(self) -> None:
        if self.shard is not None:
            self.shard.close()
            self.shard = None
        shutil.rmtree(self.root, ignore_errors=True)

    def close(self) -> None:
        if getattr(self, "shard", None) is not None:
            self.shard.close()
            self.shard = None

    def _meta(self) -> dict[str, Any]:
        path = self.root / META_FILE
        if not path.exists():
            return {}
        try:
            return json.loads(path.read_text())
        except (OSError, ValueError) as exc:
            raise OptionError(f"{path}: unreadable ({exc}); delete the folder {self.root} and index again") from None

    def dense_vectors(self) -> dict[str, int]:
        return dict(self._meta().get("dense", {}))

    def _stored_metadata(self) -> dict[str, Any]:
        return dict(self._meta().get("metadata", {}))

    def _create(self, dense: Mapping[str, int], metadata: dict[str, Any]) -> None:
        q = self.q
        ensure_room(self.root, preallocated_bytes(len(dense)))
        self.root.mkdir(parents=True, exist_ok=True)
        config = q.EdgeConfig(
            vectors={n: q.EdgeVectorParams(size=d, distance=q.Distance.Cosine) for n, d in dense.items()},
            sparse_vectors={SPARSE_NAME: q.EdgeSparseVectorParams(modifier=q.Modifier.Idf)},
        )
        with _creating(self.root):
            _remove_partial_shard(self.root)
            self.shard = self._open(lambda: q.EdgeShard.create(str(self.root), config))
            if self.on_step is not None:
                self.on_step("created-shard")
            write_json(self.root / META_FILE, {"dense": dict(dense), "metadata": metadata})

    def _write(self, points: list[models.PointStruct]) -> None:
        q = self.q
        converted = [q.Point(id=p.id, vector={name: self._vector(v) for name, v in p.vector.items()}, payload=p.payload)
                     for p in points]
        self.shard.update(q.UpdateOperation.upsert_points(converted))
        self.shard.flush()

    def optimize(self) -> None:
        """Run Edge's segment optimizers (HNSW for dense vectors once a segment passes the indexing threshold):
        without it a large shard is searched by brute force."""
        if self.shard is not None:
            self.shard.optimize()

    def _query(self, requests: list[models.QueryRequest]) -> list[list[Any]]:
        edge_requests = [self._request_to_edge(r) for r in requests]
        if len(edge_requests) == 1:
            return [self.shard.query(edge_requests[0])]
        return list(self.shard.query_batch(self.q.QueryBatchRequest(edge_requests)))

    def _retrieve(self, point_ids: list[str]) -> list[Any]:
        return list(self.shard.retrieve(point_ids, with_payload=True, with_vector=False))

    def _delete_points(self, selector: models.Filter | list[str]) -> None:
        op = (self.q.UpdateOperation.delete_points(selector) if isinstance(selector, list)
              else self.q.UpdateOperation.delete_points_by_filter(self._filter(selector)))
        self.shard.update(op)
        self.shard.flush()

    def count(self) -> int:
        return self.shard.count(self.q.CountRequest(exact=True)) if self.shard is not None else 0

    def _scroll(self, batch_size: int, scroll_filter: models.Filter | None = None) -> Iterator[Any]:
        offset = None
        while True:
            points, offset = self.shard.scroll(self.q.ScrollRequest(offset=offset, limit=batch_size, with_payload=True,
                                                                    filter=self._filter(scroll_filter)))
            yield from points
            if offset is None:
                return

    # ---- rollouts: the alias is a pointer file beside the shard folders, replaced atomically -------------------
    def _pointer(self, name: str) -> Path:
        return self.root.parent / f"{name}{POINTER_SUFFIX}"

    def alias_target(self, name: str) -> str | None:
        return _read_pointer(self._pointer(name))

    def switch_alias(self, name: str, target: str) -> None:
        write_json(self._pointer(name), {"collection": target})

    def remove_alias(self, name: str) -> None:
        self._pointer(name).unlink(missing_ok=True)

    def recover_alias(self, name: str) -> str | None:
        """Nothing to recover: the pointer is replaced in one step and a shard is never dropped to make room for it."""
        return None

    def remove_abandoned(self, alias: str) -> list[str]:
        """Remove the versions of ``alias`` (``<alias>__v<N>`` folders) whose creation was killed before their metadata
        was written, and return their names; one being created by a live process (it holds the lock) is left alone.
        (They are not collections, so a rollout's stale versions do not include them.)"""
        base = self.root.parent
        version = re.compile(rf"{re.escape(alias)}{VERSION_MARK}\d+")
        removed = []
        for folder in sorted(base.iterdir()) if base.is_dir() else []:
            if not (folder.is_dir() and version.fullmatch(folder.name)) or (folder / META_FILE).exists():
                continue
            try:
                with _creating(folder):
                    if not _remove_partial_shard(folder):
                        continue
                    shutil.rmtree(folder)
            except OptionError:  # a live creation
                continue
            removed.append(folder.name)
        return removed

    def collection_names(self) -> list[str]:
        base = self.root.parent
        return sorted(p.name for p in base.iterdir() if (p / META_FILE).is_file()) if base.is_dir() else []

    def sibling(self, collection: str) -> EdgeCorpusIndex:
        """The shard ``collection`` beside this one; the one this process already has open, if any (Edge locks a
        shard to one opener)."""
        opened = _OPEN.get(str(self.root.parent / collection))
        if opened is not None and (opened.shard is not None or not (opened.root / META_FILE).exists()):
            return opened
        return EdgeCorpusIndex(self.root.parent, collection, BM25Encoder(k1=self.bm25.k1, b=self.bm25.b),
                               text_field=self.text_field, id_field=self.id_field, follow_alias=False)

    def set_metadata(self, extra: Mapping[str, Any]) -> None:
        meta = self._meta()
        write_json(self.root / META_FILE, {**meta, "metadata": {**meta.get("metadata", {}), **extra}})

    def iter_points(self, batch_size: int = 256, *, offset: str | int | None = None,
                    with_vectors: bool = True) -> Iterator[tuple[str, dict[str, Any], dict[str, Any]]]:
        while True:
            points, offset = self.shard.scroll(self.q.ScrollRequest(offset=offset, limit=batch_size, with_payload=True,
                                                                    with_vector=with_vectors))
            for p in points:
                vectors = {name: models.SparseVector(indices=list(v.indices), values=list(v.values))
                           if hasattr(v, "indices") else list(v) for name, v in (p.vector or {}).items()}
                yield str(p.id), dict(p.payload or {}), vectors
            if offset is None:
                return

    # ---- translation from qdrant-client models ---------------------------------------------------------------
    def _vector(self, v: Any) -> Any:
        if isinstance(v, models.SparseVector):
            return self.q.SparseVector(indices=list(v.indices), values=list(v.values))
        return list(v)

    def _nearest(self, query: Any, using: str | None) -> Any:
        return self.q.Query.Nearest(self._vector(query), using=using)

    def _request_to_edge(self, r: models.QueryRequest) -> Any:
        return self.q.QueryRequest(limit=r.limit, query=self._nearest(r.query, r.using), prefetches=None,
                                   filter=self._filter(r.filter), score_threshold=r.score_threshold,
                                   with_payload=bool(r.with_payload))

    def _filter(self, f: models.Filter | None) -> Any:
        if f is None:
            return None
        convert = lambda conds: [self._condition(c) for c in conds] if conds else None  # noqa: E731
        return self.q.Filter(must=convert(f.must), should=convert(f.should), must_not=convert(f.must_not))

    def _condition(self, c: Any) -> Any:
        q = self.q
        if isinstance(c, models.Filter):
            return self._filter(c)
        if isinstance(c, models.HasIdCondition):
            return q.HasIdCondition(point_ids=set(c.has_id))
        if isinstance(c, models.IsEmptyCondition):
            return q.IsEmptyCondition(key=c.is_empty.key)
        if isinstance(c, models.FieldCondition):
            if c.range is not None:
                r = c.range
                return q.FieldCondition(key=c.key, range=q.RangeFloat(gte=r.gte, gt=r.gt, lte=r.lte, lt=r.lt))
            m = c.match
            if isinstance(m, models.MatchValue):
                return q.FieldCondition(key=c.key, match=q.MatchValue(m.value))
            if isinstance(m, models.MatchAny):
                return q.FieldCondition(key=c.key, match=q.MatchAny(list(m.any)))
            if isinstance(m, models.MatchExcept):
                return q.Filter(must_not=[q.FieldCondition(key=c.key, match=q.MatchAny(list(m.except_)))])
            if isinstance(m, models.MatchText):
                return q.FieldCondition(key=c.key, match=q.MatchText(m.text))
        raise OptionError(f"filter condition {c!r} is not supported on the edge engine")

    def __del__(self) -> None:
        try:
            self.close()
        except Exception:  # noqa: BLE001, S110 - never raise from a finaliser
            pass
        finally:
            if getattr(self, "_tmp", None):
                shutil.rmtree(self._tmp, ignore_errors=True)
                _TEMP_DIRS.discard(self._tmp)


@contextlib.contextmanager
def _creating(root: Path) -> Iterator[None]:
    """Hold the creation lock of the shard folder ``root``; another process holding it is creating that shard now (one
    clear error)."""
    import fcntl

    with open(root / CREATING_LOCK, "a") as lock:
        try:
            fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            raise OptionError(f"{root}: Qdrant Edge folder is in use by another process (it is creating this collection "
                              "right now; run again when it has finished)") from None
        try:
            yield
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)


def _remove_partial_shard(root: Path) -> bool:
    """With the creation lock held: a folder holding only a shard's files and no META_FILE is a creation killed before
    its metadata was written (its process held the lock while alive); remove those files and say so. A folder with
    anything else in it is left for Edge to judge."""
    if (root / META_FILE).exists():
        return False
    entries = [p for p in root.iterdir() if p.name != CREATING_LOCK]
    if not all(p.name in _PARTIAL_SHARD or (p.name.startswith(f".{META_FILE}.") and p.name.endswith(".tmp"))
               for p in entries):
        return False
    if entries:
        log.warning("%s: removing a shard whose creation was killed before its metadata was written", root)
    for entry in entries:
        if entry.is_dir() and not entry.is_symlink():
            shutil.rmtree(entry)
        else:
            entry.unlink()
    return True


# The shards this process has open, by folder: a rollout and a retriever in one process share them.
_OPEN: weakref.WeakValueDictionary = weakref.WeakValueDictionary()

# Temporary shards left by an interrupted run are removed at exit (the CLI turns SIGTERM into a normal exit).
_TEMP_DIRS: set[str] = set()


@atexit.register
def _remove_temp_dirs() -> None:
    for path in list(_TEMP_DIRS):
        shutil.rmtree(path, ignore_errors=True)
