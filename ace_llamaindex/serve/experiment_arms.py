"""How a query is served while an online experiment runs: the champion's and the challenger's results, interleaved
or split, and what the feedback log records so the experiment can be judged (:mod:`ace_llamaindex.deploy.experiment`).

- **interleave** — team-draft interleaving (Radlinski, Kurup & Joachims, 2008): the two rankings take turns, the team
  with fewer picks (a coin flip on a tie) adding its best result not yet shown; each shown result records its team
  and the record how many first results both rankings share (``shared_prefix``); a query's credit goes to the team
  whose results below that prefix users accepted more often (:mod:`ace_llamaindex.evaluate.interleaving`).
- **split** — each unit (the user or session: :func:`experiment_session`, or ``user_id=`` on the retriever or the
  vector store; else the query) is served by one model, the challenger for a sticky share of units: a hash of the
  unit and the experiment id, so a user keeps its model and raising the share (5% -> 25% -> 50%) only moves units to
  the challenger. The record logs the unit (``session``, hashed) so the split is analysed per user.

A challenger that fails is never shown and its query stays in its arm (intention to treat, ``served_by``).

In both modes only a ``share`` of units takes part (interleave: the rest sees the champion alone). The experiment
lives in the challenger collection's metadata (``ace_experiment``) and the alias ``<collection>__challenger``; a
retriever or vector store opened on the collection reads both for each query, so a running application takes part
without code changes.
"""

from __future__ import annotations

import contextvars
import hashlib
import logging
import random
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from typing import Any, NamedTuple, TypeVar

from ..records.experiment import ExperimentRecord
from .serving_record import EXPERIMENT_KEY, challenger_alias

log = logging.getLogger(__name__)
T = TypeVar("T")
MODES = ("interleave", "split")
CHAMPION, CHALLENGER = "champion", "challenger"
_SESSION: contextvars.ContextVar[str | None] = contextvars.ContextVar("ace_experiment_session", default=None)


class Challenger(NamedTuple):
    """A running experiment as a collection records it: the challenger's collection, its metadata (its serving plan
    and vector too) and the experiment."""

    collection: str
    metadata: dict[str, Any]
    record: ExperimentRecord


def running_challenger(index, collection: str, serving: str) -> Challenger | None:
    """The experiment running on ``collection``, whose alias serves ``serving`` now, or None: no challenger alias,
    or one a promotion killed before its cleanup left pointing at what serves."""
    target = index.alias_target(challenger_alias(collection))
    if target is None or target == serving:
        return None
    metadata = index.sibling(target).metadata()
    data = metadata.get(EXPERIMENT_KEY)
    return Challenger(target, metadata, ExperimentRecord.from_dict(data)) if data else None


@contextmanager
def experiment_session(session_id: str) -> Iterator[None]:
    """Queries in this block belong to ``session_id`` (a user or a session): a split keeps them on one model."""
    token = _SESSION.set(str(session_id))
    try:
        yield
    finally:
        _SESSION.reset(token)


def current_session() -> str | None:
    return _SESSION.get()


def bucket(unit: str, experiment_id: str) -> float:
    """A number in [0, 1) fixed for a unit within one experiment (the first 8 bytes of a SHA-256)."""
    digest = hashlib.sha256(f"{experiment_id}:{unit}".encode()).digest()
    return int.from_bytes(digest[:8], "big") / 2**64


def takes_part(record: ExperimentRecord, unit: str) -> bool:
    """Whether this unit is in the experiment (interleave) or served by the challenger (split)."""
    return bucket(unit, record.id) < record.share


def team_draft(champion: Sequence[str], challenger: Sequence[str], k: int, seed: str) -> list[tuple[str, str]]:
    """Team-draft interleaving of two rankings into ``k`` results: (doc id, team) best first. ``seed`` (the query id)
    makes the coin flips reproducible."""
    rng = random.Random(seed)
    lists = {CHAMPION: list(champion), CHALLENGER: list(challenger)}
    picks = {CHAMPION: 0, CHALLENGER: 0}
    shown: list[tuple[str, str]] = []
    seen: set[str] = set()
    while len(shown) < k:
        available = {team: next((d for d in ranked if d not in seen), None) for team, ranked in lists.items()}
        teams = [t for t in (CHAMPION, CHALLENGER) if available[t] is not None]
        if not teams:
            break
        if len(teams) == 2 and picks[CHAMPION] == picks[CHALLENGER]:
            team = teams[rng.random() < 0.5]
        elif len(teams) == 2:
            team = min(teams, key=lambda t: picks[t])
        else:
            team = teams[0]
        doc = available[team]
        seen.add(doc)
        picks[team] += 1
        shown.append((doc, team))
    return shown


def shared_prefix(champion: Sequence[str], challenger: Sequence[str], k: int) -> int:
    """How many of the first ``k`` results both rankings share in the same order: a team draft shows exactly these
    first, each credited to a team by a coin flip (clicks on them say nothing about which model is better)."""
    n = 0
    for a, b in zip(champion[:k], challenger[:k], strict=False):
        if a != b:
            break
        n += 1
    return n


def session_key(session_id: str | None, experiment_id: str) -> str | None:
    """What a served record logs of the session/user id: a hash within the experiment (the analysis only needs to
    tell users apart; the log never holds the application's own user ids)."""
    if session_id is None:
        return None
    return hashlib.sha256(f"{experiment_id}:session:{session_id}".encode()).hexdigest()[:16]


def experiment_fields(record: ExperimentRecord, *, arm: str | None, latency_ms: dict[str, float],
                      error: str | None = None, session: str | None = None, shared: int | None = None,
                      served_by: str | None = None) -> dict[str, Any]:
    """What a served record carries about the experiment (``"experiment"`` in :mod:`~ace_llamaindex.serve.feedback`):
    its id and mode, the arm the unit was assigned (split; None when interleaved), the unit's ``session`` (a hash of
    the session/user id; None: the query is its own unit), each arm's latency, ``shared_prefix`` (interleaved: how
    many first results both rankings share) and, when the challenger failed, the ``error`` and ``served_by`` (the
    champion, whose results were shown)."""
    fields_ = {"id": record.id, "mode": record.mode, "arm": arm, "session": session,
               "latency_ms": {k: round(v, 3) for k, v in latency_ms.items()}}
    if shared is not None:
        fields_["shared_prefix"] = shared
    if error:
        fields_["error"] = error
        fields_["served_by"] = served_by or CHAMPION
    return fields_


def answered_by(experiment: dict[str, Any] | None) -> str | None:
    """The arm whose collection answered a served query: ``served_by`` when the challenger failed, else its arm."""
    if not experiment:
        return None
    return experiment.get("served_by") or experiment.get("arm")


def serve_query(record: ExperimentRecord, query_id: str, champion: Callable[[], tuple[list[T], float]],
                challenger: Callable[[], tuple[list[T], float]], key: Callable[[T], str],
                k: int, session: str | None = None) -> tuple[list[T], list[str] | None, dict[str, Any] | None]:
    """Serve one query of the experiment: (results shown, each result's team when interleaved, the served record's
    ``experiment`` fields; None when the query is not part of the experiment). ``champion``/``challenger`` rank the
    query with their model and return (results best first, milliseconds, each timed the same way: embedding and
    search); ``key`` gives a result's document id. ``session``: the user or session id (default: the one of
    :func:`experiment_session`; none: the query is its own unit).

    A challenger that fails is not shown: the champion answers and the failure is recorded (a guardrail). The query
    stays in the arm it was assigned (intention to treat): a split's challenger query served by the champion's
    fallback still counts for the challenger, and an interleaved one credits what users accepted to the champion."""
    session = session if session is not None else current_session()
    inside = takes_part(record, session or query_id)
    if not inside and record.mode == "interleave":
        return champion()[0], None, None
    unit = session_key(session, record.id)
    assigned = None if record.mode == "interleave" else (CHALLENGER if inside else CHAMPION)
    wanted = [CHAMPION, CHALLENGER] if record.mode == "interleave" else [assigned]
    ranked: dict[str, list[T]] = {}
    latency: dict[str, float] = {}
    for arm in wanted:
        try:
            ranked[arm], latency[arm] = (champion if arm == CHAMPION else challenger)()
        except Exception as exc:  # noqa: BLE001 - a failing challenger is measured (a guardrail), never shown
            if arm == CHAMPION:
                raise
            log.warning("online experiment %s: the challenger failed (%s); the champion answers", record.id, exc)
            if CHAMPION not in ranked:
                ranked[CHAMPION], _ = champion()  # the fallback's time is not the champion arm's latency
            error = f"challenger: {' '.join(str(exc).split())[:200]}"
            return ranked[CHAMPION], None, experiment_fields(record, arm=assigned, latency_ms=latency, error=error,
                                                             session=unit)
    if record.mode == "split":
        return ranked[assigned], None, experiment_fields(record, arm=assigned, latency_ms=latency, session=unit)
    by_id = {arm: {key(r): r for r in results} for arm, results in ranked.items()}
    champion_ids, challenger_ids = [key(r) for r in ranked[CHAMPION]], [key(r) for r in ranked[CHALLENGER]]
    shown = team_draft(champion_ids, challenger_ids, k, query_id)
    return ([by_id[team][doc] for doc, team in shown], [team for _, team in shown],
            experiment_fields(record, arm=None, latency_ms=latency, session=unit,
                              shared=shared_prefix(champion_ids, challenger_ids, k)))
