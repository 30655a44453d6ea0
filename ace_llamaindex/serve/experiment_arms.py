"""How a query is served while an online experiment runs: the champion's and the challenger's results, interleaved
or split, and what the feedback log records so the experiment can be judged (:mod:`ace_llamaindex.deploy.experiment`).

- **interleave** — team-draft interleaving (Radlinski, Kurup & Joachims, 2008): the two rankings take turns, the team
  with fewer picks (a coin flip on a tie) adding its best result not yet shown; each shown result records its team,
  and a query's credit goes to the team whose results users accepted more often.
- **split** — each unit (the session id of :func:`experiment_session`, else the query) is served by one model, the
  challenger for a sticky share of units: a hash of the unit and the experiment id, so a session keeps its model and
  raising the share (5% -> 25% -> 50%) only moves units to the challenger.

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
import time
import uuid
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field, fields
from typing import Any, NamedTuple, TypeVar

from ..errors import OptionError
from .serving_record import EXPERIMENT_KEY, challenger_alias

log = logging.getLogger(__name__)
T = TypeVar("T")
MODES = ("interleave", "split")
CHAMPION, CHALLENGER = "champion", "challenger"
_SESSION: contextvars.ContextVar[str | None] = contextvars.ContextVar("ace_experiment_session", default=None)


@dataclass
class ExperimentRecord:
    """An online experiment between the model serving a collection (the champion) and a challenger."""

    collection: str
    champion: str  # the collection that served when the experiment started
    challenger: str  # the challenger's collection (built by a rollout that did not switch)
    mode: str = "interleave"
    share: float = 1.0  # units taking part (interleave) or served by the challenger (split)
    alpha: float = 0.05  # the highest rate of wrong verdicts, however often the status is read
    min_effect: float | None = None  # the smallest effect worth detecting (None: the mode's default)
    max_queries: int = 20_000  # judged queries (interleave) or served queries (split) before "no clear difference"
    auto: bool = False  # promote or end by itself when the status is read and the verdict is clear
    latency_ratio: float = 2.0  # guardrail: the challenger's p99 latency at most this times the champion's
    max_error_rate: float = 0.01  # guardrail: the challenger's error rate at most the champion's plus this
    feedback_log: str | None = None
    id: str = field(default_factory=lambda: uuid.uuid4().hex[:12])
    started: float = field(default_factory=time.time)
    champion_plan: dict[str, Any] = field(default_factory=dict)
    challenger_plan: dict[str, Any] = field(default_factory=dict)
    offline_evidence: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        check_options(self.mode, self.share, self.alpha, self.min_effect, self.max_queries, self.latency_ratio,
                      self.max_error_rate)

    @property
    def effect(self) -> float:
        """The smallest effect worth detecting: 0.1 of interleaving credit (55% of decided queries won), or 0.02
        nDCG@10 of what users accepted in a split (as large as the gains fine-tuning brings on held-out queries)."""
        return self.min_effect if self.min_effect is not None else (0.1 if self.mode == "interleave" else 0.02)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> ExperimentRecord:
        known = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in data.items() if k in known})


def check_options(mode: str, share: float, alpha: float, min_effect: float | None, max_queries: int,
                  latency_ratio: float, max_error_rate: float) -> None:
    """One line naming the option and what was expected."""
    problems = [
        (mode not in MODES, f"mode must be one of {MODES}, got {mode!r}"),
        (not 0 < share <= 1, f"share must be in (0, 1], got {share}"),
        (mode == "split" and share >= 1, "share must be below 1 in a split (the champion's arm needs queries too), "
                                         f"got {share}"),
        (not 0 < alpha < 0.5, f"alpha must be in (0, 0.5), got {alpha}"),
        (min_effect is not None and min_effect <= 0, f"min_effect must be positive, got {min_effect}"),
        (max_queries < 1, f"max_queries must be at least 1, got {max_queries}"),
        (latency_ratio < 1, f"latency_ratio must be at least 1, got {latency_ratio}"),
        (not 0 <= max_error_rate < 1, f"max_error_rate must be in [0, 1), got {max_error_rate}"),
    ]
    for bad, message in problems:
        if bad:
            raise OptionError(message)


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


def experiment_fields(record: ExperimentRecord, *, arm: str | None, latency_ms: dict[str, float],
                      error: str | None = None) -> dict[str, Any]:
    """What a served record carries about the experiment (``"experiment"`` in :mod:`~ace_llamaindex.serve.feedback`):
    its id and mode, the arm that served (split; None when interleaved), each arm's latency, and an arm's error."""
    fields_ = {"id": record.id, "mode": record.mode, "arm": arm,
               "latency_ms": {k: round(v, 3) for k, v in latency_ms.items()}}
    if error:
        fields_["error"] = error
    return fields_


def serve_query(record: ExperimentRecord, query_id: str, champion: Callable[[], tuple[list[T], float]],
                challenger: Callable[[], tuple[list[T], float]], key: Callable[[T], str],
                k: int) -> tuple[list[T], list[str] | None, dict[str, Any] | None]:
    """Serve one query of the experiment: (results shown, each result's team when interleaved, the served record's
    ``experiment`` fields; None when the query is not part of the experiment). ``champion``/``challenger`` rank the
    query with their model and return (results best first, milliseconds); ``key`` gives a result's document id.

    A challenger that fails is not shown: the champion answers and the failure is recorded (a guardrail)."""
    inside = takes_part(record, current_session() or query_id)
    if not inside and record.mode == "interleave":
        return champion()[0], None, None
    wanted = [CHAMPION, CHALLENGER] if record.mode == "interleave" else [CHALLENGER if inside else CHAMPION]
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
                ranked[CHAMPION], latency[CHAMPION] = champion()
            error = f"challenger: {' '.join(str(exc).split())[:200]}"
            return ranked[CHAMPION], None, experiment_fields(record, arm=CHAMPION, latency_ms=latency, error=error)
    if record.mode == "split":
        return ranked[wanted[0]], None, experiment_fields(record, arm=wanted[0], latency_ms=latency)
    by_id = {arm: {key(r): r for r in results} for arm, results in ranked.items()}
    shown = team_draft([key(r) for r in ranked[CHAMPION]], [key(r) for r in ranked[CHALLENGER]], k, query_id)
    return ([by_id[team][doc] for doc, team in shown], [team for _, team in shown],
            experiment_fields(record, arm=None, latency_ms=latency))
