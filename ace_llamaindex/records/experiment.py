"""An online experiment as its collection records it (:class:`ExperimentRecord`: each option declared once, with its
check, flag and help) and the verdict on it now (:class:`ExperimentStatus`), served by
:mod:`~ace_llamaindex.serve.experiment_arms` and judged by :mod:`~ace_llamaindex.deploy.experiment`."""

from __future__ import annotations

import time
import uuid
from dataclasses import asdict, dataclass, field, fields
from enum import StrEnum
from typing import Any

from ..errors import OptionError
from ..options import check, declared, documented, flag, option

MODES = ("interleave", "split")
_BUILT = "set by `ace experiment start`"


@documented
@dataclass
class ExperimentRecord:
    """An online experiment between the model serving a collection (the champion) and a challenger. Each option is
    declared once, here: its check (one line naming it), its ``ace experiment start`` flag and help."""

    collection: str = field(metadata=option("The collection served.", no_flag="given by --collection"))
    champion: str = field(metadata=option("The collection that served when the experiment started.", no_flag=_BUILT))
    challenger: str = field(metadata=option("The challenger's collection (built by a rollout that did not switch).",
                                            no_flag=_BUILT))
    mode: str = field(default="interleave", metadata=option(
        "interleave: each result list mixes both models (team draft; each query is a unit); split: each user (or "
        "query without one) sees one model.", choices=MODES))
    share: float = field(default=1.0, metadata=option(
        "Units taking part (interleave; default 1) or served by the challenger (split; default 0.5).", minimum=0,
        maximum=1, min_open=True, show_default=False))
    alpha: float = field(default=0.05, metadata=option(
        "The highest rate of wrong verdicts, however often the status is read.", minimum=0, maximum=0.5, min_open=True,
        max_open=True))
    min_effect: float | None = field(default=None, metadata=option(
        "The smallest effect worth detecting (default 0.1 interleaving credit, 0.02 nDCG@10 in a split).", minimum=0,
        min_open=True))
    max_queries: int = field(default=20_000, metadata=option(
        "Served queries (interleaved lists, or split queries) before 'no clear difference' ends it.", flag="--horizon",
        minimum=1))
    min_runtime: float = field(default=0.0, metadata=option(
        "Seconds from the start (to the last served query in the log) before any verdict on the effect or the "
        "horizon: a whole day or week of traffic, not only its first hours. Guardrails and the sample-ratio check "
        "act before it.", minimum=0))
    auto: bool = field(default=False, metadata=option(
        "Promote or end by itself when the status is read and the verdict is clear."))
    latency_ratio: float = field(default=2.0, metadata=option(
        "Guardrail: the challenger's typical latency (geometric mean, embedding + search) at most this times the "
        "champion's, by a sequential test at --guardrail-alpha.", minimum=1))
    max_error_rate: float = field(default=0.01, metadata=option(
        "Guardrail: the share of queries where the challenger may fail, by a sequential test at --guardrail-alpha.",
        minimum=0, maximum=1, max_open=True))
    guardrail_alpha: float = field(default=0.01, metadata=option(
        "The highest rate at which a guardrail ends a challenger that is within its limits.", minimum=0, maximum=0.5,
        min_open=True, max_open=True))
    srm_alpha: float = field(default=0.001, metadata=option(
        "The sample-ratio check's alpha: how rarely it may end an experiment whose assignment is sound.", minimum=0,
        maximum=0.5, min_open=True, max_open=True))
    feedback_log: str | None = field(default=None, metadata=option(
        "The log the application writes (feedback_log=); `status` reads it."))
    id: str = field(default_factory=lambda: uuid.uuid4().hex[:12], metadata=option("The experiment's id.",
                                                                                     no_flag=_BUILT))
    started: float = field(default_factory=time.time, metadata=option("When it started (seconds since 1970).",
                                                                         no_flag=_BUILT))
    champion_plan: dict[str, Any] = field(default_factory=dict, metadata=option("The champion's serving plan.",
                                                                                no_flag=_BUILT))
    challenger_plan: dict[str, Any] = field(default_factory=dict, metadata=option("The challenger's serving plan.",
                                                                                  no_flag=_BUILT))
    offline_evidence: dict[str, Any] = field(default_factory=dict, metadata=option(
        "The rollout's offline evidence.", no_flag=_BUILT))
    phases: list[list[float]] = field(default_factory=list, metadata=option(
        "The ramp's phases, [start time, share] each: the status compares arms within a phase.",
        no_flag="set by `ace experiment ramp`"))

    def __post_init__(self) -> None:
        check(self)
        if self.mode == "split" and self.share >= 1:
            raise OptionError(f"share must be below 1 in a split (the champion's arm needs queries too), got {self.share}")
        if not self.phases:
            self.phases = [[self.started, self.share]]

    @property
    def effect(self) -> float:
        """The smallest effect worth detecting: 0.1 of interleaving credit (55% of decided queries won), or 0.02
        nDCG@10 of what users accepted in a split (as large as the gains fine-tuning brings on held-out queries)."""
        return self.min_effect if self.min_effect is not None else (0.1 if self.mode == "interleave" else 0.02)

    def phase_of(self, ts: float) -> int:
        """The ramp phase a query served at ``ts`` belongs to (0: before the first change of the share)."""
        return max(0, sum(1 for start, _ in self.phases[1:] if ts >= start))

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> ExperimentRecord:
        known = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in data.items() if k in known})


# the options an experiment is started with (each has an ``ace experiment start`` flag; the rest the start sets)
START_OPTIONS = tuple(name for name, spec in declared(ExperimentRecord).items() if flag(name, spec) is not None)


def check_options(**options: Any) -> None:
    """Check experiment options (``mode``, ``share``, ``alpha``...) as a record would: one line naming the option
    and what was expected."""
    ExperimentRecord("-", "-", "-", **options)


@dataclass
class ArmStats:
    """What one arm served: queries, queries with an accepted result, mean nDCG@10 of what it showed against what
    users accepted (split), p99 latency, and errors (the challenger failed and the champion answered)."""

    served: int = 0
    accepted: int = 0
    ndcg10: float | None = None
    latency_p99_ms: float | None = None
    errors: int = 0


class Decision(StrEnum):
    """What an experiment's verdict says to do now: go on, promote the challenger, or end it (the champion stays)."""

    CONTINUE = "continue"
    PROMOTE = "promote"
    END = "end"

    @classmethod
    def read(cls, value: Any, field_name: str = "decision") -> Decision:
        """The member ``value`` spells; anything else is one :class:`~ace_llamaindex.errors.OptionError` line naming
        ``field_name`` and the allowed words."""
        try:
            return cls(value)
        except ValueError:
            allowed = ", ".join(repr(m.value) for m in cls)
            raise OptionError(f"{field_name} must be a decision ({allowed}), got {value!r}") from None


@dataclass
class ExperimentStatus:
    """The verdict on an experiment now, from its log: ``continue`` (with ``needed`` more units expected), ``promote``,
    ``end`` (worse, a guardrail, or no difference at the horizon); ``acted`` says what was done about it."""

    record: ExperimentRecord
    decision: Decision  # continue | promote | end (Decision.read)
    reason: str
    units: int  # judged queries (interleave) or served queries (split)
    unit_name: str
    delta: dict[str, Any]
    needed: int | None
    arms: dict[str, ArmStats]
    wins: int = 0
    losses: int = 0
    ties: int = 0
    acted: str | None = None
    trajectory: list[tuple[int, float, float, float]] = field(default_factory=list)  # (units, delta, low, high)
    srm: dict[str, Any] = field(default_factory=dict)  # the sample-ratio check (a SequentialDelta; decided: mismatch)
    notes: list[str] = field(default_factory=list)  # what the reader should know (units without a session, phases)

    def __post_init__(self) -> None:
        self.decision = Decision.read(self.decision)

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["record"] = self.record.to_dict()
        return data
