"""Feedback capture: what the retriever served, and which results users accepted or rejected.

A feedback log is append-only JSON lines, one record per line:

- ``{"type": "served", "query_id", "query", "results": [{"doc_id", "score", "rank"}], "vector", "model",
  "fusion", "collection", "ts"}`` (during an online experiment also each result's ``team`` and an ``experiment``
  object, :mod:`~ace_llamaindex.serve.experiment_arms`) — written by :class:`~ace_llamaindex.serve.retriever.HybridQdrantRetriever` and
  :class:`~ace_llamaindex.serve.vector_store.AceQdrantVectorStore` when given ``feedback_log=``;
- ``{"type": "judgement", "query_id", "doc_id", "relevant", "ts"}`` — :func:`record_feedback`, or
  :class:`FeedbackHandler`, which marks the source nodes a LlamaIndex response used.

Each record is one ``write(2)`` of a whole line on an ``O_APPEND`` descriptor under an exclusive ``flock``, so
several processes (or threads) appending to one log never interleave or lose a line, and a process killed with
``kill -9`` leaves every line it finished (the kernel holds the data once ``write`` returns). No URL, API key or
environment value is ever written: a record holds the query, document ids, scores and model names.
Hand-written because no library does append-only multi-process JSON lines with these guarantees in a few lines.
"""

from __future__ import annotations

import fcntl
import json
import logging
import os
import stat
import threading
import time
import uuid
from collections.abc import Callable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

from ..errors import DatasetError, OptionError

log = logging.getLogger(__name__)
QUERY_ID = "ace_query_id"  # node metadata key: the id to judge a served result by
Sink = Callable[[dict[str, Any]], None]
_WARNED: set[str] = set()  # logs already warned about: a log that cannot be written is one warning, not one a query
_WARN_LOCK = threading.Lock()


class FeedbackLog:
    """An append-only JSON-lines file several processes may write to at once. ``fsync=True`` also survives a power
    loss (each line is then flushed to the disk; a kill never loses a finished line either way).

    A log that cannot be written (a read-only file or folder, a folder that vanished, a full disk) never fails the
    query that served the results: one warning per log (again after it was written once more), every record not
    written counted in :attr:`lost`, and serving goes on. ``strict=True`` (``ace feedback``, :func:`record_feedback`
    given a path) raises a :class:`~ace_llamaindex.errors.DatasetError` naming the file instead."""

    def __init__(self, path: str | Path, fsync: bool = False, *, strict: bool = False) -> None:
        self.path, self.fsync, self.strict = Path(path), fsync, strict
        self.lost = 0  # records that could not be written
        if self.path.is_dir():
            raise OptionError(f"feedback_log={str(self.path)!r} is a folder; pass a file path (e.g. feedback.jsonl)")
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
        except OSError as exc:  # the first write fails the same way: strict callers get the error then, serving warns
            log.debug("feedback log folder %s: %s", self.path.parent, exc)

    def __call__(self, record: dict[str, Any]) -> None:
        line = (json.dumps(record, ensure_ascii=False, separators=(",", ":")) + "\n").encode()
        try:
            self._append(line)
        except OSError as exc:
            self._lost(exc)
            return
        if _WARNED and str(self.path) in _WARNED:  # written again: the next outage is a warning of its own
            with _WARN_LOCK:
                _WARNED.discard(str(self.path))
            log.warning("feedback log %s is written again (%d records lost before)", self.path, self.lost)

    def _append(self, line: bytes) -> None:
        fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o666)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            written = os.write(fd, line)
            if written != len(line):  # a full disk part-way: never leave half a line behind
                os.ftruncate(fd, os.fstat(fd).st_size - written)
                raise OSError(28, "No space left on device", str(self.path))
            if self.fsync:
                os.fsync(fd)
        finally:
            os.close(fd)  # closing releases the lock

    def _lost(self, exc: OSError) -> None:
        reason = exc.strerror or str(exc)
        if self.strict:
            raise DatasetError(self.path, "file", f"a writable feedback log ({reason}); nothing was recorded") from None
        with _WARN_LOCK:
            self.lost += 1
            warn = str(self.path) not in _WARNED  # once per log, however many objects (a retriever, a handler) write it
            _WARNED.add(str(self.path))
        if warn:
            log.warning("feedback log %s cannot be written (%s): queries are still answered, but what they served and "
                        "its judgements are not recorded (counted in FeedbackLog.lost)", self.path, reason)

    def __repr__(self) -> str:
        return f"FeedbackLog({str(self.path)!r})"


def as_sink(feedback_log: str | Path | Sink | None) -> Sink | None:
    """``feedback_log=``: a path (a :class:`FeedbackLog`), a callable receiving each record, or None (off)."""
    if feedback_log is None or callable(feedback_log):
        return feedback_log
    if isinstance(feedback_log, (str, Path)):
        return FeedbackLog(feedback_log)
    raise OptionError(f"feedback_log must be a file path or a callable, got {type(feedback_log).__name__}")


def new_query_id() -> str:
    return uuid.uuid4().hex


def served_record(query_id: str, query: str, results: Sequence[tuple[str, float]], *, vector: str | None,
                  model: str | None, fusion: str, collection: str, teams: Sequence[str] | None = None,
                  experiment: dict[str, Any] | None = None) -> dict[str, Any]:
    """The record of one served query: ``results`` as (doc_id, score) best first. While an online experiment runs,
    ``teams`` names the model that placed each result (interleaving) and ``experiment`` says which experiment and arm
    (:func:`~ace_llamaindex.serve.experiment_arms.experiment_fields`)."""
    shown = [{"doc_id": d, "score": round(float(s), 6), "rank": r} for r, (d, s) in enumerate(results, 1)]
    for result, team in zip(shown, teams or (), strict=False):
        result["team"] = team
    record = {"type": "served", "query_id": query_id, "query": query, "results": shown, "vector": vector,
              "model": model, "fusion": fusion, "collection": collection, "ts": time.time()}
    if experiment is not None:
        record["experiment"] = experiment
    return record


def record_feedback(feedback_log: str | Path | Sink, query_id: str, doc_id: str, relevant: bool) -> None:
    """Record a user's judgement of one served result (``query_id`` from the node's ``ace_query_id`` metadata)."""
    if not isinstance(relevant, bool):
        raise OptionError(f"relevant must be True or False, got {relevant!r}")
    if not query_id or not doc_id:
        raise OptionError("record_feedback needs the query_id and the doc_id of a served result")
    sink = FeedbackLog(feedback_log, strict=True) if isinstance(feedback_log, (str, Path)) else as_sink(feedback_log)
    sink({"type": "judgement", "query_id": str(query_id), "doc_id": str(doc_id), "relevant": relevant,
                           "ts": time.time()})


def read_log(path: str | Path) -> Iterator[tuple[int, dict[str, Any]]]:
    """(line number, record) for each line; a bad line is an error naming it (a torn last line, left by a power
    loss without ``fsync``, is skipped with a warning)."""
    path = Path(path)
    if path.exists() and (stat.S_ISCHR(path.stat().st_mode) or stat.S_ISBLK(path.stat().st_mode)):
        raise DatasetError(path, "file", "a feedback log file, not a device")  # /dev/zero would be read forever
    try:
        lines = path.read_bytes().split(b"\n")
    except OSError as exc:
        raise DatasetError(path, "file", f"a readable feedback log ({exc.strerror or exc})") from None
    last = len(lines) - (1 if lines and lines[-1] == b"" else 0)
    for number, raw in enumerate(lines[:last], 1):
        if not raw.strip():
            continue
        try:
            record = json.loads(raw)
            if not isinstance(record, dict) or record.get("type") not in ("served", "judgement"):
                raise ValueError("not a served or judgement record")
        except ValueError as exc:
            if number == last and not raw.endswith(b"}"):
                log.warning("%s: line %d is incomplete (an interrupted write); skipped", path, number)
                continue
            raise DatasetError(path, f"line {number}", f"a JSON record with type 'served' or 'judgement' ({exc})") from None
        problem = _record_problem(record)
        if problem:
            raise DatasetError(path, f"line {number}", f"{record['type']} record: {problem}")
        yield number, record


def _is_text(value: Any) -> bool:
    return isinstance(value, str) and bool(value)


def _record_problem(record: Mapping[str, Any]) -> str | None:
    """What is wrong with one record's fields (None: nothing), in the words of the error."""
    if not _is_text(record.get("query_id")):
        return f"field 'query_id' must be a non-empty string, got {record.get('query_id')!r}"
    if record["type"] == "judgement":
        if not _is_text(record.get("doc_id")):
            return f"field 'doc_id' must be a non-empty string (the judged document), got {record.get('doc_id')!r}"
        if not isinstance(record.get("relevant"), bool):
            return f"field 'relevant' must be true or false (a JSON boolean), got {record.get('relevant')!r}"
        return None
    if not isinstance(record.get("query"), str):
        return f"field 'query' must be the query text (a string), got {record.get('query')!r}"
    if not isinstance(record.get("ts"), (int, float)) or isinstance(record.get("ts"), bool):
        return f"field 'ts' must be a number (seconds since 1970), got {record.get('ts')!r}"
    results = record.get("results")
    if not isinstance(results, list):
        return f"field 'results' must be a list of {{doc_id, score, rank}}, got {results!r}"
    for i, result in enumerate(results):
        if not isinstance(result, dict) or not _is_text(result.get("doc_id")) or not isinstance(result.get("rank"), int) \
                or isinstance(result.get("rank"), bool):
            return f"field 'results[{i}]' must be {{doc_id: a string, rank: an integer, ...}}, got {result!r}"
    return None


class FeedbackHandler:
    """A LlamaIndex instrumentation handler: every response's source nodes (what the answer was built from) are
    recorded as accepted. ``FeedbackHandler.attach(log)`` adds it to the root dispatcher.

    Only nodes served by an ace retriever or vector store with ``feedback_log`` carry a query id; others are
    ignored."""

    @staticmethod
    def attach(feedback_log: str | Path | Sink) -> Any:
        from llama_index.core.instrumentation import get_dispatcher

        handler = _handler_class()(sink=as_sink(feedback_log))
        get_dispatcher().add_event_handler(handler)
        return handler


def _handler_class() -> type:
    from llama_index.core.instrumentation.event_handlers import BaseEventHandler
    from llama_index.core.instrumentation.events.synthesis import SynthesizeEndEvent

    class _Handler(BaseEventHandler):
        sink: Any = None

        @classmethod
        def class_name(cls) -> str:
            return "AceFeedbackHandler"

        def handle(self, event: Any, **kwargs: Any) -> None:
            if not isinstance(event, SynthesizeEndEvent):
                return
            for source in getattr(event.response, "source_nodes", None) or []:
                query_id = (source.node.metadata or {}).get(QUERY_ID)
                if query_id:
                    record_feedback(self.sink, query_id, source.node.node_id, True)

    return _Handler


def judgements(records: Iterator[tuple[int, Mapping[str, Any]]]) -> tuple[dict[str, dict], dict[str, dict[str, bool]]]:
    """(served records by query id, judgements by query id: doc id -> relevant, the latest judgement winning)."""
    served: dict[str, dict] = {}
    judged: dict[str, dict[str, bool]] = {}
    for _, record in records:
        if record["type"] == "served":
            served[record["query_id"]] = dict(record)
        else:
            judged.setdefault(record["query_id"], {})[record["doc_id"]] = bool(record["relevant"])
    return served, judged
