"""Online experiments: the challenger is measured on live traffic before every user gets it.

``start_experiment(model, collection)`` builds the challenger's collection beside the champion's with the rollout
machinery (:func:`~ace_llamaindex.deploy.rollout.rollout` with ``switch=False``: checked, the alias untouched), records
the experiment in its metadata and points the alias ``<collection>__challenger`` at it. From then on every
:class:`~ace_llamaindex.serve.retriever.HybridQdrantRetriever` and
:class:`~ace_llamaindex.serve.vector_store.AceQdrantVectorStore` opened on the collection serves the experiment
(interleaved or split, :mod:`~ace_llamaindex.serve.experiment_arms`) and logs each shown result's team.

``experiment_status(collection)`` reads the feedback log and judges with the mixture sequential test
(:mod:`~ace_llamaindex.evaluate.sequential`), which keeps wrong verdicts at or below ``alpha`` however often it is
read: interleaving credits each judged query to the team whose results users accepted more often below the
rankings' shared prefix (+1 challenger, -1 champion, 0 a tie; the query is the unit); a split compares the nDCG@10 of
what each arm showed against what users accepted (0 when nothing was), over every query it served (a failed
challenger query included: intention to treat), per user (a cluster-robust variance) within each ramp phase (the
phases combined by inverse variance). A sample-ratio check (is the challenger's share of units the share asked for?)
and two guardrails (the challenger's error rate; its typical latency beside the champion's) are sequential tests with
their own alpha and minimum counts (:mod:`~ace_llamaindex.evaluate.sequential`). With ``auto`` (or ``act=True``) a
clear verdict acts: a better challenger is promoted (the alias switch of a rollout; the champion's collection is kept
for :func:`~ace_llamaindex.deploy.rollout.rollback`), a worse one, one that tripped a guardrail or the sample-ratio
check, or one still level after ``max_queries`` is removed, the champion untouched. No verdict on the effect comes
before ``min_runtime`` seconds of logged traffic.

Kill safety: starting, promoting and ending are each one atomic alias operation followed by cleanup; a query reads
both aliases once and is served by one vector space per arm. Killed after a promotion's switch, the challenger alias
points at what serves and is ignored (and removed by the next command); killed after an end's alias removal, the
challenger's collection is a stale version the next rollout removes. The status is computed from the log alone, so a
restarted process picks the experiment up where the log is.
"""

from __future__ import annotations

import dataclasses
import math
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np

from ..errors import OptionError
from ..evaluate.interleaving import team_draft_credit
from ..evaluate.metrics import ndcg_at
from ..evaluate.sequential import (
    SequentialDelta,
    clustered_two_sample,
    combine_strata,
    error_rate_exceeds,
    exceeds,
    latency_exceeds,
    one_sample,
    queries_needed,
    sample_ratio_mismatch,
    sample_ratio_mismatch_phases,
    stratum_weight,
)
from ..records.experiment import START_OPTIONS, ArmStats, Decision, ExperimentRecord, ExperimentStatus, check_options
from ..records.verdict import Verdict, interval
from ..serve.experiment_arms import CHALLENGER, CHAMPION, running_challenger
from ..serve.feedback import judgements, read_log
from ..serve.serving_record import EXPERIMENT_KEY, challenger_alias, collection_plan, serving_target
from .rollout import RolloutOptions, rollout, step, switch_to

# the steps an experiment passes besides a rollout's (deploy.rollout.STEPS): kill tests name each
EXPERIMENT_STEPS = ("experiment-recorded", "experiment-started", "experiment-ramped", "experiment-ended",
                    "removed-challenger")
MIN_UNITS = 30  # judged queries (interleave) or served queries per arm (split) before any verdict
MIN_ERRORS = 50  # queries the challenger was asked before its error rate can stop an experiment
MIN_LATENCIES = 200  # latencies per arm before p99s are compared (p99 of fewer is about one measurement: one hiccup)
_NDCG10 = ndcg_at(10)


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


def start_experiment(model: str | Path, collection: str = "ace_memories", *, index=None, path: str | Path | None = None,
                     url: str | None = None, api_key: str | None = None, engine: str = "auto",
                     previous_model: str | Path | None = None, fallback=None, batch_size: int = 64,
                     show_progress: bool = True, **options: Any) -> ExperimentRecord:
    """Start an online experiment on ``collection`` between what serves it and ``model`` (a folder ``ace train``
    wrote, or any model name). ``options``: the experiment's options (``mode``, ``share``, ``alpha``, ``min_effect``,
    ``max_queries``, ``min_runtime``, ``auto``, ``latency_ratio``, ``max_error_rate``, ``guardrail_alpha``,
    ``srm_alpha``, ``feedback_log``), each declared once on :class:`~ace_llamaindex.records.experiment.ExperimentRecord`
    with its default and range. ``share``: the units taking part (interleave, default all) or served by the challenger
    (split, default half; a canary starts lower and :func:`set_share` raises it). ``auto``: a clear verdict acts
    when the status is read.

    A split's unit is the user: the session/user id of
    :func:`~ace_llamaindex.serve.experiment_arms.experiment_session` or ``user_id=`` (retriever, vector store); a
    query served without one is its own unit (the log says so, and so does the status)."""
    unknown = sorted(set(options) - set(START_OPTIONS))
    if unknown:
        raise TypeError(f"start_experiment() got an unexpected keyword argument {unknown[0]!r}")
    feedback_log = options.pop("feedback_log", None)
    mode = options.setdefault("mode", "interleave")
    if options.get("share") is None:
        options["share"] = 1.0 if mode == "interleave" else 0.5
    check_options(**options)
    location = _location(collection, index, path, url, api_key, engine)
    report = rollout(model, collection, RolloutOptions(switch=False, force=True, previous_model=previous_model,
                                                       fallback=fallback, batch_size=batch_size,
                                                       show_progress=show_progress), index=location)
    champion = serving_target(location, collection)
    record = ExperimentRecord(
        collection, champion, report.collection, **options,
        feedback_log=str(Path(feedback_log).resolve()) if feedback_log else None,
        champion_plan=collection_plan(location.sibling(report.previous)) or {},
        challenger_plan=collection_plan(location.sibling(report.collection)) or {},
        offline_evidence=report.evidence)
    location.sibling(report.collection).set_metadata({EXPERIMENT_KEY: record.to_dict()})
    step("experiment-recorded")
    location.switch_alias(challenger_alias(collection), report.collection)
    step("experiment-started")
    return record


def set_share(collection: str, share: float, *, allow_lower: bool = False, index=None, path=None, url=None,
              api_key=None, engine: str = "auto") -> ExperimentRecord:
    """Change the share of a running experiment (a canary's 5% -> 25% -> 50%); units keep their arm when it grows.
    Each change starts a ramp phase (recorded with its time): the status compares the arms within each phase, so
    traffic that drifts while the share changes cannot bias it. Lowering the share moves users back to the champion
    and is refused unless ``allow_lower=True``."""
    location = _location(collection, index, path, url, api_key, engine)
    running = _running(location, collection)
    if share < running.share and not allow_lower:
        raise OptionError(f"share {share:g} is below the running share {running.share:g}: lowering it moves users "
                          "from the challenger back to the champion; pass --allow-lower (allow_lower=True) to do it")
    if share == running.share:
        return running
    record = dataclasses.replace(running, share=share, phases=[*running.phases, [time.time(), share]])  # checked
    location.sibling(record.challenger).set_metadata({EXPERIMENT_KEY: record.to_dict()})
    step("experiment-ramped")
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
class Observation(NamedTuple):
    """One analysed unit of the test: a query (split: its arm and nDCG@10; interleave: arm None and its credit), the
    randomisation unit it belongs to (the logged session, else the query) and its ramp phase."""

    arm: str | None
    value: float
    unit: str
    phase: int


@dataclass
class Observed:
    """What the log says about one experiment: the analysed queries, the served records per arm (latencies), each
    arm's counts, the sample-ratio check, the queries a split served without a session, the last query's time."""

    units: list[Observation]
    by_arm: dict[str, list[dict]]
    stats: dict[str, ArmStats]
    srm: SequentialDelta
    no_session: int = 0
    asked: int = 0  # queries the challenger was asked (its error rate's denominator)
    last_ts: float | None = None


def _rows(record: ExperimentRecord, log_path: Path):
    served, judged = judgements(read_log(log_path))
    rows = sorted((r for r in served.values() if (r.get("experiment") or {}).get("id") == record.id),
                  key=lambda r: r["ts"])
    return rows, judged


def _read(record: ExperimentRecord, log_path: Path) -> Observed:
    rows, judged = _rows(record, log_path)
    units: list[Observation] = []
    by_arm: dict[str, list[dict]] = {CHAMPION: [], CHALLENGER: []}
    stats = {CHAMPION: ArmStats(), CHALLENGER: ArmStats()}
    first_seen: dict[str, tuple[int, str | None]] = {}  # unit -> (phase, arm) when first served (split)
    first_team = [0, 0]  # interleaved lists whose first result is the challenger's, of all interleaved lists
    no_session = asked = 0
    for r in rows:
        info = r["experiment"]
        for arm in info.get("latency_ms") or {}:
            by_arm.setdefault(arm, []).append(info)
        unit = info.get("session") or f"query:{r['query_id']}"
        phase = record.phase_of(r["ts"])
        shown = [x["doc_id"] for x in r["results"]]
        accepted = {d for d, ok in judged.get(r["query_id"], {}).items() if ok}
        failed = bool(info.get("error"))
        stats[CHALLENGER].errors += int(failed)
        if record.mode == "interleave":
            asked += 1
            # intention to treat: a list the challenger failed to take part in showed the champion's results only
            teams = [CHAMPION if failed else x.get("team") for x in r["results"]]
            if teams and not failed:
                first_team[0] += int(teams[0] == CHALLENGER)
                first_team[1] += 1
            for arm in (CHAMPION, CHALLENGER):
                stats[arm].served += 1
                stats[arm].accepted += int(any(t == arm and d in accepted for d, t in zip(shown, teams, strict=True)))
            credit = team_draft_credit(teams, [d in accepted for d in shown], 0 if failed else info.get("shared_prefix", 0))
            if credit is not None:
                units.append(Observation(None, float(credit), unit, phase))
            continue
        arm = info.get("arm")
        if arm not in stats:
            continue
        asked += int(arm == CHALLENGER)
        no_session += int(not info.get("session"))
        first_seen.setdefault(unit, (phase, arm))
        # intention to treat: a challenger query the champion answered after a failure stays in the challenger's arm
        stats[arm].served += 1
        stats[arm].accepted += int(bool(accepted & set(shown)))
        units.append(Observation(arm, _NDCG10(shown, accepted), unit, phase))
    if record.mode == "interleave":
        srm = sample_ratio_mismatch(first_team[0], first_team[1], 0.5, record.srm_alpha)
    else:
        counts = [[0, 0, share] for _, share in record.phases]
        for phase, arm in first_seen.values():
            counts[phase][0] += int(arm == CHALLENGER)
            counts[phase][1] += 1
        srm = sample_ratio_mismatch_phases([tuple(c) for c in counts], record.srm_alpha)
    return Observed(units, by_arm, stats, srm, no_session, asked, rows[-1]["ts"] if rows else None)


def _observations(record: ExperimentRecord, log_path: Path):
    """(analysed queries in the order served, served records' experiment fields per arm, each arm's counts)."""
    seen = _read(record, log_path)
    return seen.units, seen.by_arm, seen.stats


def _test(record: ExperimentRecord, units: list[Observation]) -> tuple[SequentialDelta, float]:
    """The sequential test on these units, and one query's share of the estimate's variance (for the queries still
    needed). Interleaving: the mean credit per judged query (the query is the unit). A split: per ramp phase, the
    difference of the arms' per-query nDCG@10 with a variance clustered by user (:func:`clustered_two_sample`), the
    phases combined by their sizes (:func:`combine_strata`)."""
    tau, alpha = record.effect, record.alpha
    if record.mode == "interleave":
        values = np.asarray([u.value for u in units])
        return one_sample(values, tau, alpha), float(values.var(ddof=1)) if values.size > 1 else 1.0
    phases: dict[int, dict[str, dict[str, list[float]]]] = {}
    for u in units:
        phases.setdefault(u.phase, {CHAMPION: {}, CHALLENGER: {}})[u.arm].setdefault(u.unit, []).append(u.value)
    strata = [arms for _, arms in sorted(phases.items())]
    parts = [clustered_two_sample([np.asarray(v) for v in arms[CHAMPION].values()],
                                  [np.asarray(v) for v in arms[CHALLENGER].values()], tau, alpha) for arms in strata]
    weights = [stratum_weight(*(sum(map(len, arms[a].values())) for a in (CHAMPION, CHALLENGER))) for arms in strata]
    delta = combine_strata(parts, weights, tau, alpha)
    # one served query's share of the estimate's variance (0.25: a bounded metric's largest, before there is data)
    unit_var = delta.variance * len(units) if math.isfinite(delta.variance) else 0.25 / min(record.share, 1 - record.share)
    return delta, unit_var


def _guardrail(record: ExperimentRecord, by_arm: dict[str, list[dict]], stats: dict[str, ArmStats],
               asked: int | None = None) -> str | None:
    """The guardrail that tripped, in words, or None: the challenger's error rate over ``max_error_rate``, or its
    typical latency over ``latency_ratio`` times the champion's, each by a sequential test at ``guardrail_alpha``
    (:func:`~ace_llamaindex.evaluate.sequential.error_rate_exceeds`, :func:`~ace_llamaindex.evaluate.sequential.latency_exceeds`)."""
    latencies = {}
    for arm, infos in by_arm.items():
        lat = [i["latency_ms"][arm] for i in infos if arm in (i.get("latency_ms") or {})]
        latencies[arm] = lat
        stats.setdefault(arm, ArmStats()).latency_p99_ms = round(float(np.percentile(lat, 99)), 3) if lat else None
    challenger = stats[CHALLENGER]
    if asked is None:
        asked = len(by_arm.get(CHALLENGER, [])) + challenger.errors
    errors = error_rate_exceeds(challenger.errors, asked, record.max_error_rate, record.guardrail_alpha, MIN_ERRORS)
    if exceeds(errors):
        return (f"guardrail: the challenger failed on {challenger.errors} of {asked} queries "
                f"({challenger.errors / asked:.1%}; its rate is above {record.max_error_rate:.1%} at "
                f"alpha {record.guardrail_alpha:g}, always-valid interval "
                f"[{errors.ci_low + record.max_error_rate:.2%}, {errors.ci_high + record.max_error_rate:.2%}])")
    slow = latency_exceeds(latencies.get(CHAMPION, []), latencies.get(CHALLENGER, []), record.latency_ratio,
                           record.guardrail_alpha, MIN_LATENCIES)
    if exceeds(slow):
        times = math.exp(slow.delta) * record.latency_ratio
        return (f"guardrail: the challenger's typical latency is {times:.2f}x the champion's, over "
                f"{record.latency_ratio:g}x at alpha {record.guardrail_alpha:g} (p99 {challenger.latency_p99_ms:.1f} "
                f"vs {stats[CHAMPION].latency_p99_ms:.1f} ms)")
    return None


def _trajectory(record: ExperimentRecord, units: list[Observation], points: int = 100):
    marks = sorted({max(1, round(len(units) * (i + 1) / points)) for i in range(points)}) if units else []
    return [(n, round(d.delta, 5), round(d.ci_low, 5), round(d.ci_high, 5))
            for n in marks if n >= 2 and math.isfinite((d := _test(record, units[:n])[0]).ci_low)]


def judge_experiment(record: ExperimentRecord, log_path: str | Path) -> ExperimentStatus:
    """The status of ``record`` from the feedback log at ``log_path`` (nothing changed)."""
    seen = _read(record, Path(log_path))
    units, stats = seen.units, seen.stats
    delta, unit_var = _test(record, units)
    n = len(units)
    per_arm = [sum(1 for u in units if u.arm == a) for a in (CHAMPION, CHALLENGER)]
    enough = n >= MIN_UNITS if record.mode == "interleave" else min(per_arm) >= MIN_UNITS
    unit_name = "judged queries" if record.mode == "interleave" else "served queries"
    shown = interval(delta.delta, (delta.ci_low, delta.ci_high))
    what = "interleaving credit" if record.mode == "interleave" else "nDCG@10 of accepted results"
    ran = (seen.last_ts - record.started) if seen.last_ts is not None else 0.0
    # the horizon counts served queries: interleaved lists where nothing below the shared prefix was accepted (two
    # rankings that agree) judge nothing, and an experiment between equal rankings must still end
    served = seen.asked if record.mode == "interleave" else n
    notes = []
    if record.mode == "split" and seen.no_session:
        notes.append(f"{seen.no_session} of {n} served queries carried no session (experiment_session or user_id=): "
                     "each of them is its own unit")
    if len(record.phases) > 1:
        notes.append(f"{len(record.phases)} ramp phases (shares {', '.join(f'{s:g}' for _, s in record.phases)}), "
                     "compared within each phase")
    needed = None
    guard = _guardrail(record, seen.by_arm, stats, seen.asked)
    if seen.srm.decided:
        expected = "first picks by the challenger (a fair coin)" if record.mode == "interleave" else "challenger units"
        observed = seen.srm.delta + (0.5 if record.mode == "interleave" else record.share)
        decision, reason = Decision.END, (f"sample ratio mismatch: the share of {expected} is {observed:.1%}, not what the "
                                   f"assignment gives (always-valid test at alpha {record.srm_alpha:g}); the log "
                                   "cannot be trusted: find what drops or duplicates served records")
    elif guard:
        decision, reason = Decision.END, guard
    elif ran < record.min_runtime and (served >= record.max_queries or (enough and delta.decided)):
        decision = Decision.CONTINUE
        reason = (f"no verdict before the minimum run time ({ran:.0f} of {record.min_runtime:g} s): {what} {shown} on "
                  f"{n} {unit_name}")
    elif enough and delta.decided:
        better = delta.delta > 0
        decision = Decision.PROMOTE if better else Decision.END
        reason = (f"the challenger is {Verdict.BETTER if better else Verdict.WORSE}: {what} {shown} on {n} {unit_name} "
                  f"(always-valid {1 - record.alpha:.0%} interval)")
    elif served >= record.max_queries:
        decision, reason = Decision.END, (f"no clear difference after {served} served queries ({n} {unit_name}; {what} "
                                   f"{shown}); the champion stays")
    else:
        decision = Decision.CONTINUE
        needed = max(queries_needed(unit_var, max(abs(delta.delta), record.effect), record.effect, record.alpha)
                     - n, MIN_UNITS - min(per_arm) if record.mode == "split" else MIN_UNITS - n, 1)
        needed = min(needed, max(record.max_queries - served, 1))
        reason = f"no verdict yet: {what} {shown} on {n} {unit_name}; about {needed} more expected"
        if ran < record.min_runtime:
            reason += f" (and no verdict before {record.min_runtime:g} s of run time; {ran:.0f} s so far)"
    wins = sum(1 for u in units if u.value > 0) if record.mode == "interleave" else 0
    losses = sum(1 for u in units if u.value < 0) if record.mode == "interleave" else 0
    return ExperimentStatus(record, decision, reason, n, unit_name, asdict(delta), needed, stats, wins, losses,
                            n - wins - losses if record.mode == "interleave" else 0,
                            trajectory=_trajectory(record, units), srm=asdict(seen.srm), notes=notes)


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
    if (record.auto if act is None else act) and status.decision is not Decision.CONTINUE:
        promote = status.decision is Decision.PROMOTE
        now = stop_experiment(collection, promote=promote, index=location)
        status.acted = f"{'promoted' if promote else 'ended'}: {collection!r} serves {now!r}"
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
