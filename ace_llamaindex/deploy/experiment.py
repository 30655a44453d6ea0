"""Online experiments: the challenger is measured on live traffic before every user gets it.

``start_experiment(model, collection)`` builds the challenger's collection beside the champion's with the rollout
machinery (:func:`~ace_llamaindex.deploy.rollout.rollout` with ``switch=False``: checked, the alias untouched), records
the experiment in its metadata and points the alias ``<collection>__challenger`` at it. From then on every
:class:`~ace_llamaindex.serve.retriever.HybridQdrantRetriever` and
:class:`~ace_llamaindex.serve.vector_store.AceQdrantVectorStore` opened on the collection serves the experiment
(interleaved or split, :mod:`~ace_llamaindex.serve.experiment_arms`) and logs each shown result's team.

``experiment_status(collection)`` reads the feedback log and judges with the mixture sequential test
(:mod:`~ace_llamaindex.evaluate.sequential`), which keeps wrong verdicts at or below ``alpha`` however often it is
read: interleaving credits each judged query to the team whose results users accepted more often (+1 challenger, -1
champion, 0 a tie); a split compares the nDCG@10 of what each arm showed against what users accepted (0 when nothing
was), over every query it served. Guardrails: the challenger's p99 latency and error rate beside the champion's.
With ``auto`` (or ``act=True``) a clear verdict acts: a better challenger is promoted (the alias switch of a rollout;
the champion's collection is kept for :func:`~ace_llamaindex.deploy.rollout.rollback`), a worse one, one that
tripped a guardrail, or one still level after ``max_queries`` is removed, the champion untouched.

Kill safety: starting, promoting and ending are each one atomic alias operation followed by cleanup; a query reads
both aliases once and is served by one vector space per arm. Killed after a promotion's switch, the challenger alias
points at what serves and is ignored (and removed by the next command); killed after an end's alias removal, the
challenger's collection is a stale version the next rollout removes. The status is computed from the log alone, so a
restarted process picks the experiment up where the log is.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import OptionError
from ..evaluate.metrics import ndcg_at
from ..evaluate.sequential import SequentialDelta, one_sample, queries_needed, two_sample
from ..evaluate.stats import Verdict, interval
from ..serve.experiment_arms import CHALLENGER, CHAMPION, ExperimentRecord, check_options, running_challenger
from ..serve.feedback import judgements, read_log
from ..serve.serving_record import EXPERIMENT_KEY, SERVING_KEY, challenger_alias, serving_target
from .rollout import rollout, step, switch_to

MIN_UNITS = 30  # judged queries (interleave) or served queries per arm (split) before any verdict
MIN_ERRORS = 50  # queries the challenger was asked before its error rate can stop an experiment
MIN_LATENCIES = 200  # latencies per arm before p99s are compared (p99 of fewer is about one measurement: one hiccup)
_NDCG10 = ndcg_at(10)


@dataclass
class ArmStats:
    """What one arm served: queries, queries with an accepted result, mean nDCG@10 of what it showed against what
    users accepted (split), p99 latency, and errors (the challenger failed and the champion answered)."""

    served: int = 0
    accepted: int = 0
    ndcg10: float | None = None
    latency_p99_ms: float | None = None
    errors: int = 0


@dataclass
class ExperimentStatus:
    """The verdict on an experiment now, from its log: ``continue`` (with ``needed`` more units expected), ``promote``,
    ``end`` (worse, a guardrail, or no difference at the horizon); ``acted`` says what was done about it."""

    record: ExperimentRecord
    decision: str  # continue | promote | end
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

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["record"] = self.record.to_dict()
        return data


def _location(collection: str, index, path, url, api_key, engine):
    from ..index.engines import open_index

    return index or open_index(collection, path=path, url=url, api_key=api_key, engine=engine)


def running_experiment(location, collection: str) -> ExperimentRecord | None:
    """The experiment running on ``collection`` at ``location`` (an open index), or None."""
    found = running_challenger(location, collection, serving_target(location, collection))
    return found.record if found else None


def _running(location, collection: str) -> ExperimentRecord:
    record = running_experiment(location, collection)
    if record is None:
        raise OptionError(f"no online experiment runs on {collection!r}; start one with `ace experiment start MODEL`")
    return record


def start_experiment(model: str | Path, collection: str = "ace_memories", *, mode: str = "interleave",
                     share: float | None = None, alpha: float = 0.05, min_effect: float | None = None,
                     max_queries: int = 20_000, auto: bool = False, latency_ratio: float = 2.0,
                     max_error_rate: float = 0.01, feedback_log: str | Path | None = None, index=None,
                     path: str | Path | None = None, url: str | None = None, api_key: str | None = None,
                     engine: str = "auto", previous_model: str | Path | None = None, fallback=None, batch_size: int = 64,
                     show_progress: bool = True) -> ExperimentRecord:
    """Start an online experiment on ``collection`` between what serves it and ``model`` (a folder ``ace train``
    wrote, or any model name). ``share``: the units taking part (interleave, default all) or served by the challenger
    (split, default half; a canary starts lower and :func:`set_share` raises it). ``auto``: a clear verdict acts
    when the status is read. The other options: :class:`~ace_llamaindex.serve.experiment_arms.ExperimentRecord`."""
    share = share if share is not None else (1.0 if mode == "interleave" else 0.5)
    check_options(mode, share, alpha, min_effect, max_queries, latency_ratio, max_error_rate)
    location = _location(collection, index, path, url, api_key, engine)
    report = rollout(model, collection, index=location, switch=False, force=True, previous_model=previous_model,
                     fallback=fallback, batch_size=batch_size, show_progress=show_progress)
    champion = serving_target(location, collection)
    record = ExperimentRecord(
        collection, champion, report.collection, mode=mode, share=share, alpha=alpha, min_effect=min_effect,
        max_queries=max_queries, auto=auto, latency_ratio=latency_ratio, max_error_rate=max_error_rate,
        feedback_log=str(Path(feedback_log).resolve()) if feedback_log else None,
        champion_plan=location.sibling(report.previous).metadata().get(SERVING_KEY) or {},
        challenger_plan=location.sibling(report.collection).metadata().get(SERVING_KEY) or {},
        offline_evidence=report.evidence)
    location.sibling(report.collection).set_metadata({EXPERIMENT_KEY: record.to_dict()})
    step("experiment-recorded")
    location.switch_alias(challenger_alias(collection), report.collection)
    step("experiment-started")
    return record


def set_share(collection: str, share: float, *, index=None, path=None, url=None, api_key=None,
              engine: str = "auto") -> ExperimentRecord:
    """Change the share of a running experiment (a canary's 5% -> 25% -> 50%); units keep their arm when it grows."""
    location = _location(collection, index, path, url, api_key, engine)
    record = dataclasses.replace(_running(location, collection), share=share)  # checked as a new record is
    location.sibling(record.challenger).set_metadata({EXPERIMENT_KEY: record.to_dict()})
    return record


def stop_experiment(collection: str, *, promote: bool, index=None, path=None, url=None, api_key=None,
                    engine: str = "auto") -> str:
    """End the experiment: ``promote=True`` serves the challenger (the champion's collection is kept for a
    rollback), ``False`` removes the challenger (the champion untouched). Returns what serves now."""
    location = _location(collection, index, path, url, api_key, engine)
    record = _running(location, collection)
    if promote:
        switch_to(location, collection, record.challenger)
        location.remove_alias(challenger_alias(collection))
        step("experiment-ended")
        return record.challenger
    location.remove_alias(challenger_alias(collection))
    step("experiment-ended")
    location.sibling(record.challenger).delete()
    step("removed-challenger")
    return serving_target(location, collection)


# ---- the verdict --------------------------------------------------------------------------------------------------
def _observations(record: ExperimentRecord, log_path: Path):
    """Per unit, in the order served: (arm or None, value, ts); per arm, the served records (for guardrails)."""
    served, judged = judgements(read_log(log_path))
    rows = sorted((r for r in served.values() if (r.get("experiment") or {}).get("id") == record.id),
                  key=lambda r: r["ts"])
    units: list[tuple[str | None, float]] = []
    by_arm: dict[str, list[dict]] = {CHAMPION: [], CHALLENGER: []}
    stats = {CHAMPION: ArmStats(), CHALLENGER: ArmStats()}
    for r in rows:
        info = r["experiment"]
        for arm in info.get("latency_ms") or {}:
            by_arm.setdefault(arm, []).append(info)
        if info.get("error"):
            stats[CHALLENGER].errors += 1
            continue
        shown = [x["doc_id"] for x in r["results"]]
        accepted = {d for d, ok in judged.get(r["query_id"], {}).items() if ok}
        if record.mode == "interleave":
            teams = {x["doc_id"]: x.get("team") for x in r["results"]}
            got = [teams[d] for d in accepted if d in teams]
            for arm in (CHAMPION, CHALLENGER):
                stats[arm].served += 1
                stats[arm].accepted += int(arm in got)
            if got:
                units.append((None, float(np.sign(got.count(CHALLENGER) - got.count(CHAMPION)))))
        else:
            arm = info.get("arm")
            if arm not in stats:
                continue
            stats[arm].served += 1
            stats[arm].accepted += int(bool(accepted & set(shown)))
            units.append((arm, _NDCG10(shown, accepted)))
    return units, by_arm, stats


def _test(record: ExperimentRecord, units: list[tuple[str | None, float]]) -> tuple[SequentialDelta, float]:
    """The sequential test on these units, and one unit's variance (for the queries still needed)."""
    tau, alpha = record.effect, record.alpha
    if record.mode == "interleave":
        values = np.asarray([v for _, v in units])
        return one_sample(values, tau, alpha), float(values.var(ddof=1)) if values.size > 1 else 1.0
    a = np.asarray([v for arm, v in units if arm == CHAMPION])
    b = np.asarray([v for arm, v in units if arm == CHALLENGER])
    var = lambda x: float(x.var(ddof=1)) if x.size > 1 else 0.25  # noqa: E731 - a bounded metric's largest variance
    # one served query's share of the estimate's variance, the traffic split as it is
    unit_var = var(a) / max(1 - record.share, 1e-9) + var(b) / record.share
    return two_sample(a, b, tau, alpha), unit_var


def _guardrail(record: ExperimentRecord, by_arm: dict[str, list[dict]], stats: dict[str, ArmStats]) -> str | None:
    for arm, infos in by_arm.items():
        lat = [i["latency_ms"][arm] for i in infos if arm in (i.get("latency_ms") or {})]
        stats.setdefault(arm, ArmStats()).latency_p99_ms = round(float(np.percentile(lat, 99)), 3) if lat else None
    champion, challenger = stats[CHAMPION], stats[CHALLENGER]
    measured = min(len(by_arm.get(CHAMPION, [])), len(by_arm.get(CHALLENGER, [])))
    if measured >= MIN_LATENCIES and champion.latency_p99_ms and challenger.latency_p99_ms \
            and challenger.latency_p99_ms > record.latency_ratio * champion.latency_p99_ms:
        return (f"guardrail: the challenger's p99 latency {challenger.latency_p99_ms:.1f} ms is over {record.latency_ratio}x "
                f"the champion's {champion.latency_p99_ms:.1f} ms")
    asked = len(by_arm.get(CHALLENGER, [])) + challenger.errors
    if asked >= MIN_ERRORS and challenger.errors / asked > record.max_error_rate:
        return (f"guardrail: the challenger failed on {challenger.errors} of {asked} queries "
                f"({challenger.errors / asked:.1%} > {record.max_error_rate:.1%})")
    return None


def _trajectory(record: ExperimentRecord, units: list[tuple[str | None, float]], points: int = 100):
    marks = sorted({max(1, round(len(units) * (i + 1) / points)) for i in range(points)}) if units else []
    return [(n, round(d.delta, 5), round(d.ci_low, 5), round(d.ci_high, 5))
            for n in marks if n >= 2 and math.isfinite((d := _test(record, units[:n])[0]).ci_low)]


def judge_experiment(record: ExperimentRecord, log_path: str | Path) -> ExperimentStatus:
    """The status of ``record`` from the feedback log at ``log_path`` (nothing changed)."""
    units, by_arm, stats = _observations(record, Path(log_path))
    delta, unit_var = _test(record, units)
    n = len(units)
    per_arm = [sum(1 for arm, _ in units if arm == a) for a in (CHAMPION, CHALLENGER)]
    enough = n >= MIN_UNITS if record.mode == "interleave" else min(per_arm) >= MIN_UNITS
    unit_name = "judged queries" if record.mode == "interleave" else "served queries"
    shown = interval(delta.delta, (delta.ci_low, delta.ci_high))
    what = "interleaving credit" if record.mode == "interleave" else "nDCG@10 of accepted results"
    needed = None
    guard = _guardrail(record, by_arm, stats)
    if guard:
        decision, reason = "end", guard
    elif enough and delta.decided:
        better = delta.delta > 0
        decision = "promote" if better else "end"
        reason = (f"the challenger is {Verdict.BETTER if better else Verdict.WORSE}: {what} {shown} on {n} {unit_name} "
                  f"(always-valid {1 - record.alpha:.0%} interval)")
    elif n >= record.max_queries:
        decision, reason = "end", (f"no clear difference after {n} {unit_name} ({what} {shown}); the champion stays")
    else:
        decision = "continue"
        needed = max(queries_needed(unit_var, max(abs(delta.delta), record.effect), record.effect, record.alpha)
                     - n, MIN_UNITS - min(per_arm) if record.mode == "split" else MIN_UNITS - n, 1)
        needed = min(needed, max(record.max_queries - n, 1))
        reason = f"no verdict yet: {what} {shown} on {n} {unit_name}; about {needed} more expected"
    wins = sum(1 for _, v in units if v > 0) if record.mode == "interleave" else 0
    losses = sum(1 for _, v in units if v < 0) if record.mode == "interleave" else 0
    return ExperimentStatus(record, decision, reason, n, unit_name, asdict(delta), needed, stats, wins, losses,
                            n - wins - losses if record.mode == "interleave" else 0,
                            trajectory=_trajectory(record, units))


def experiment_status(collection: str = "ace_memories", *, feedback_log: str | Path | None = None,
                      act: bool | None = None, index=None, path=None, url=None, api_key=None,
                      engine: str = "auto") -> ExperimentStatus:
    """Judge the experiment on ``collection`` from its feedback log (``feedback_log``, else the one given at start);
    with ``act`` (default: the experiment's ``auto``) a clear verdict is carried out."""
    location = _location(collection, index, path, url, api_key, engine)
    record = _running(location, collection)
    log_path = feedback_log or record.feedback_log
    if not log_path:
        raise OptionError("the experiment was started without a feedback log: pass --feedback-log (feedback_log=) with "
                          "the log the application writes")
    status = judge_experiment(record, log_path)
    if (record.auto if act is None else act) and status.decision != "continue":
        now = stop_experiment(collection, promote=status.decision == "promote", index=location)
        status.acted = f"{'promoted' if status.decision == 'promote' else 'ended'}: {collection!r} serves {now!r}"
    return status


def plot_status(status: ExperimentStatus, path: str | Path) -> Path:
    """A PNG of the estimated difference over units with its always-valid interval (needs matplotlib)."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        raise OptionError("a plot needs matplotlib: pip install 'ace-llamaindex[report]'") from None
    import io

    from ..atomic import write_bytes

    n, d, lo, hi = (list(x) for x in zip(*status.trajectory, strict=True)) if status.trajectory else ([], [], [], [])
    fig, ax = plt.subplots(figsize=(7, 4))
    ax.fill_between(n, lo, hi, alpha=0.25, label=f"always-valid {1 - status.record.alpha:.0%} interval")
    ax.plot(n, d, label="challenger - champion")
    ax.axhline(0, color="black", linewidth=0.8)
    ax.set_xlabel(status.unit_name)
    ax.set_ylabel("interleaving credit" if status.record.mode == "interleave" else "nDCG@10 difference")
    ax.set_title(f"experiment {status.record.id} on {status.record.collection}: {status.decision}")
    ax.legend(loc="best")
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=120, bbox_inches="tight")
    plt.close(fig)
    return write_bytes(path, buffer.getvalue())
