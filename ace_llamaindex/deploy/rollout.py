"""Roll a new model out to a serving collection without downtime, and back.

``rollout(model, collection)`` embeds every document already in the collection with the new model, from the stored
texts, into a fresh collection ``<collection>__v<N>`` (BM25 and the fallback's vectors are copied, not recomputed),
checks it (the point count, and a sample of searches: each document's own vector finds it first, and BM25 answers
exactly as in the old collection), then switches the serving name in one atomic step: a Qdrant collection alias in
local mode or on a server, a pointer file (replaced with ``os.replace``) for Qdrant Edge. The previous collection
is kept for :func:`rollback`; older versions are removed at the next rollout.

Each collection records what serves it (``ace_serving``: the model folder and adapter; ``ace_vector``; and
``ace_previous``), so a :class:`~ace_llamaindex.serve.retriever.HybridQdrantRetriever` opened through the alias resolves
it for each query and embeds with that collection's model: a query sees the old pair or the new pair, never a mix.
A rollout or rollback killed at any point leaves a collection serving, and the next command continues. The next
rollout of the same build (the same model and adapter weights, :func:`~ace_llamaindex.serve.serving_record.plan_identity`,
over the same serving collection, with the same vectors and BM25 settings) resumes the version the killed one left,
embedding only what it lacks: the version records that build (``ace_resume``) and, after each batch is written, a
checkpoint: the documents written, the last point id (Qdrant scrolls by point id, and batches are written in that order)
and a fingerprint of those documents' ids and payloads. The source's points up to the checkpoint are read again (no
model) and must give the same fingerprint; points past it (a batch written, its checkpoint not) are kept when they
are the source's next points with the same payloads (else the version is not resumed). Another build, a changed
source, or ``resume=False`` removes the version instead, and the rollout starts from the first document. A version that
was complete but never switched to is resumed with nothing to embed: checked and switched. The one step that is two on
a Qdrant that keeps aliases and collections in one namespace (local mode, a server) is a first rollout's: the plain
collection must be dropped before an alias of its name can exist. The new collection is marked complete
(``ace_version_of``) before that drop, so a rollout killed between the two leaves the alias to be recreated, pointing
at the newest complete version, by whoever opens the name next
(:meth:`~ace_llamaindex.index.store.CorpusIndex.recover_alias`).

Every point where a rollout or rollback changes what is on disk calls :func:`step` with its name (:data:`STEPS`): a
test or a fault drill kills the process exactly there with ``ACE_ROLLOUT_KILL_AT=<step>`` (``kill -9`` itself), or sets
:data:`step_hook`.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import re
import signal
import time
from collections.abc import Callable
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from itertools import islice
from pathlib import Path
from typing import Any

import numpy as np
from qdrant_client import models
from tqdm.auto import tqdm

from ..atomic import disk_full
from ..data.dataset import QADataset
from ..data.loading import load_dataset
from ..errors import OptionError
from ..index.store import VERSION_MARK, VERSION_OF_KEY, CorpusIndex, cluster_options
from ..records.fields import options_given
from ..records.plan import ServingPlan
from ..serve.served_model import model_embedding
from ..serve.serving_record import (
    EXPERIMENT_KEY,
    PREVIOUS_KEY,
    SERVING_KEY,
    VECTOR_KEY,
    challenger_alias,
    collection_plan,
    plan_identity,
    serving_target,
)
from .evidence import promotion_evidence

log = logging.getLogger(__name__)
CHECK_SAMPLE = 20

KILL_AT_ENV = "ACE_ROLLOUT_KILL_AT"
# Where a rollout or rollback has just changed what is on disk, in the order a rollout reaches them (each only where it
# applies): a stale version removed (each); the plain collection copied to <name>__v0 (a first rollout on local mode or
# a server); the serving record written into the plain collection (a first rollout on Edge); an Edge shard's files
# created, its metadata not yet written (Edge, inside create); the new collection created; a batch written (each); the
# new collection checked and marked complete; the plain collection dropped, its alias not yet created (a first rollout
# on local mode or a server); the alias switched (a rollout's or a rollback's).
STEPS = ("removed-stale", "copied-v0", "recorded-serving", "created-shard", "created-new", "wrote-batch", "checked",
         "dropped-plain", "switched")
step_hook: Callable[[str], None] | None = None  # called with each step's name (tests)


def step(name: str) -> None:
    """A rollout or rollback reached the step ``name`` (one of :data:`STEPS`): call :data:`step_hook`, and kill this
    process (SIGKILL, nothing cleaned up) when ``ACE_ROLLOUT_KILL_AT`` names this step."""
    if step_hook is not None:
        step_hook(name)
    if os.environ.get(KILL_AT_ENV) == name:
        log.warning("%s=%s: killing this process (kill -9) here", KILL_AT_ENV, name)
        os.kill(os.getpid(), getattr(signal, "SIGKILL", signal.SIGTERM))


def _recover(location, collection: str) -> None:
    """Recreate the alias a first rollout killed between dropping the plain collection and creating the alias did not
    (an engine whose aliases are collections; see CorpusIndex.recover_alias)."""
    recover = getattr(location, "recover_alias", None)
    if recover is not None:
        recover(collection)


def refuse_during_experiment(location, collection: str) -> None:
    """An online experiment's challenger is not replaced under it: refuse while one runs on ``collection``. A challenger
    alias left by a killed promotion (it points at what serves) or at a removed collection is cleaned up instead."""
    challenger = location.alias_target(challenger_alias(collection))
    if challenger is None:
        return
    if challenger == serving_target(location, collection) or challenger not in location.collection_names():
        location.remove_alias(challenger_alias(collection))
        return
    raise OptionError(f"an online experiment runs on {collection!r} (challenger {challenger!r}): end it first "
                      "(`ace experiment stop`)")


@dataclass
class RolloutReport:
    """What a rollout did (or, with ``dry_run``, would do)."""

    alias: str
    previous: str
    collection: str
    documents: int
    encode_seconds: float
    seconds_per_1000: float
    copied_vectors: list[str] = field(default_factory=list)
    encoded_vectors: list[str] = field(default_factory=list)
    checks: dict[str, Any] = field(default_factory=dict)
    dry_run: bool = False
    removed: list[str] = field(default_factory=list)
    evidence: dict[str, Any] = field(default_factory=dict)  # why the model may replace what serves (deploy.evidence)
    resumed: int = 0  # documents already in the version this rollout continued (0: built from the start)
    embedded: int = 0  # documents this run embedded and wrote (with dry_run: none)
    workers: int = 1  # encoding processes
    cluster: dict[str, int] = field(default_factory=dict)  # a server's shards and replicas for the new version
    notes: list[str] = field(default_factory=list)  # what else happened, in words (a version not resumed, and why)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def version_name(alias: str, n: int) -> str:
    return f"{alias}{VERSION_MARK}{n}"


def _versions(index, alias: str) -> dict[int, str]:
    pattern = re.compile(rf"{re.escape(alias)}{VERSION_MARK}(\d+)")
    return {int(m.group(1)): name for name in index.collection_names() if (m := pattern.fullmatch(name))}


def _serving_plan(model: str | Path) -> dict[str, Any]:
    from ..embeddings.models import resolve_model
    from ..serve.served_model import read_serving

    if Path(model).is_dir():
        plan = read_serving(model)
        return {k: (str(Path(v).resolve()) if k in ("model", "adapter") and v and Path(v).exists() else v)
                for k, v in plan.items()}
    return ServingPlan(resolve_model(str(model))).to_dict()


def _embed_text(payload: dict[str, Any], text_field: str) -> str:
    """The text a document was embedded from: a LlamaIndex node's content with its embed metadata, else the text."""
    if "_node_content" in payload:
        from llama_index.core.schema import MetadataMode
        from llama_index.core.vector_stores.utils import metadata_dict_to_node

        node = metadata_dict_to_node(payload, text=str(payload.get(text_field, "")))
        return node.get_content(metadata_mode=MetadataMode.EMBED)
    return str(payload.get(text_field, ""))


@dataclass
class RolloutOptions:
    """How a rollout runs (each option is described in :func:`rollout`'s docstring). ``ace rollout`` and
    ``start_experiment`` build one; ``rollout(model, collection, path=..., force=True)`` builds one from its keywords."""

    path: str | Path | None = None
    url: str | None = None
    api_key: str | None = None
    engine: str = "auto"
    previous_model: str | Path | None = None
    fallback: Any = None
    dry_run: bool = False
    batch_size: int = 64
    show_progress: bool = True
    force: bool = False
    on_batch: Callable[[int], None] | None = None
    heldout: Any = None
    switch: bool = True
    workers: int = 1
    resume: bool = True
    shard_number: int | None = None
    replication_factor: int | None = None
    write_consistency_factor: int | None = None

    @classmethod
    def given(cls, options: RolloutOptions | None, keywords: dict[str, Any]) -> RolloutOptions:
        """``options`` (default: every default) with ``keywords`` replacing its fields; a keyword that is no option
        is a ``TypeError``, as for any function."""
        return options_given(cls, options, keywords, "rollout")


def rollout(model: str | Path, collection: str, options: RolloutOptions | None = None, *, index=None,
            **keywords: Any) -> RolloutReport:
    """Serve ``collection`` (an alias) with ``model`` (a folder ``ace train`` wrote, or any model name).

    ``options``: a :class:`RolloutOptions`; each of its fields may also be given as a keyword (``force=True``), which
    replaces the field. ``index``: an open :class:`~ace_llamaindex.index.store.CorpusIndex` at the location (an
    embedded folder is one process's: pass the serving process's own, e.g. ``retriever.index``); else opened from
    ``path``/``url``.
    ``previous_model``: what serves the current collection when it does not say (one indexed by ``ace index``;
    default the bundled base model), recorded so a rollback serves it again. ``dry_run``: count, time a sample,
    change nothing (the report still says whether the rollout would be refused, and why).

    A model not shown better than what the collection serves now is refused unless ``force``: by its training card's
    comparison with that champion, or (a first rollout) with its base, or by judging both on ``heldout`` (a
    :class:`~ace_llamaindex.data.dataset.QADataset` or a dataset path, e.g. the ``training_data.test.json`` that
    ``ace mine --from-feedback`` writes); see :mod:`~ace_llamaindex.deploy.evidence`. ``switch=False`` builds and
    checks the new collection but leaves the alias as it is (an online experiment's challenger,
    :mod:`~ace_llamaindex.deploy.experiment`).

    ``resume`` (default): a version an earlier rollout of the same model over the same serving collection left
    (killed midway, or built and never switched) is continued from its checkpoint, embedding only what it lacks
    (``resume=False`` removes it and starts again). ``workers``: encode with that many processes (one per GPU, else CPU
    processes; :mod:`~ace_llamaindex.embeddings.workers`). ``shard_number``, ``replication_factor``,
    ``write_consistency_factor``: how the new version is spread over a Qdrant cluster (``url=`` only; default: the
    serving collection's own settings)."""
    from ..embeddings.models import DEFAULT_MODEL
    from ..embeddings.workers import encoding_workers, worker_devices
    from ..index.engines import open_index
    from ..serve.spaces import embedding_spaces, named_vector

    options = RolloutOptions.given(options, keywords)
    heldout = options.heldout
    if options.batch_size < 1:
        raise OptionError(f"batch_size must be at least 1, got {options.batch_size}")
    worker_devices(options.workers)  # a number of workers this machine cannot run: one line, before anything
    location = index or open_index(collection, path=options.path, url=options.url, api_key=options.api_key,
                                   engine=options.engine)
    cluster = cluster_options(location, shard_number=options.shard_number, replication_factor=options.replication_factor,
                              write_consistency_factor=options.write_consistency_factor)
    _recover(location, collection)
    refuse_during_experiment(location, collection)
    current_name = serving_target(location, collection)
    current = location.sibling(current_name)
    if not current.exists():
        raise OptionError(f"collection {collection!r} does not exist here; index it first (`ace index`)")
    plan = _serving_plan(model)
    previous_serving = collection_plan(current)
    if not previous_serving:  # an `ace index` collection: what serves it is previous_model, or assumed the base model
        previous_serving = _serving_plan(options.previous_model or DEFAULT_MODEL)
        said = model_embedding(previous_serving)  # its vectors' name, without loading it
        said_vector = named_vector(said, embedding_spaces(said)[0][0])
        if current.dense_vectors() and said_vector not in current.dense_vectors():
            if options.previous_model is None:
                raise OptionError(f"collection {collection!r} records no model serving it, and its dense vectors "
                                  f"{sorted(current.dense_vectors())} are not the base model's ({said_vector}): pass "
                                  "--previous-model (previous_model=) with the model that indexed it, so a rollback "
                                  "can serve it again")
            # it would be recorded as what serves the collection, and served by a rollback: it must be what indexed it
            raise OptionError(f"--previous-model (previous_model=) {options.previous_model}: collection {collection!r} "
                              f"holds no vectors of it ({said_vector}; it has {sorted(current.dense_vectors())}); pass the "
                              "model that indexed it")
    if heldout is not None and not isinstance(heldout, QADataset):
        heldout = load_dataset(heldout)
    evidence = promotion_evidence(model, plan, previous_serving, collection, heldout, options.engine)
    if not evidence.allowed and not options.force and not options.dry_run:
        raise OptionError(f"rollout refused: {evidence.reason} (force=True / --force to roll it out anyway)")
    embed = model_embedding(plan, options.fallback)
    spaces = embedding_spaces(embed)
    have = current.dense_vectors()
    targets = {named_vector(embed, label): (i, m) for i, (label, m) in enumerate(spaces)}
    # the fallback's space (same model, same vectors) is copied; so are the documents' vectors of a plan that says the
    # documents do not change (a query adapter over the serving model)
    copied = [n for n, (i, _) in targets.items() if n in have and (i > 0 or not ServingPlan.from_dict(plan).reindex)]
    encoded = [n for n in targets if n not in copied]
    total = current.count()
    versions = _versions(location, collection)
    keep = {current_name, current.metadata().get(PREVIOUS_KEY)}
    plain = current_name == collection and location.alias_target(collection) is None and location.ALIASES_ARE_COLLECTIONS
    # what a version built now is built from (a first rollout on local mode or a server copies the plain collection to
    # <name>__v0 first), and everything that makes two builds of it the same: what a version records to be resumed
    identity = {"plan": plan_identity(plan), "source": version_name(collection, 0) if plain else current_name,
                "vectors": sorted(targets), "encoded": encoded, "copied": copied,
                "bm25": {k: v for k, v in current.metadata().items() if k.startswith("bm25")},
                "cluster": cluster or current.cluster_settings()}
    report = RolloutReport(collection, current_name, version_name(collection, max(versions, default=0) + 1), total, 0.0,
                           0.0, copied, encoded, dry_run=options.dry_run, evidence=evidence.to_dict(),
                           workers=options.workers, cluster=identity["cluster"])
    checkpoint = None
    if options.resume:
        checkpoint = _resumable(location, versions, keep, identity, current, report)
    elif any(_resume_record(location.sibling(v)) for n, v in versions.items() if v not in keep):
        report.notes.append("resume=False: the version an earlier rollout left is removed and this one starts again")
    if checkpoint is not None:
        report.collection, report.resumed = checkpoint["collection"], int(checkpoint["written"])
    remaining = max(0, total - report.resumed)

    with encoding_workers(options.workers) as pool:
        if options.dry_run:
            sample = list(islice(current.iter_points(64 * max(1, options.workers)), 64 * max(1, options.workers)))
            texts = [_embed_text(p[1], current.text_field) for p in sample]
            for name in encoded:  # warm up first: the model loads, the workers start (timed apart)
                targets[name][1].get_text_embedding_batch(texts[:4 * options.workers])
            started = time.perf_counter()
            for name in encoded:
                targets[name][1].get_text_embedding_batch(texts)
            per_doc = (time.perf_counter() - started) / max(1, len(sample))
            starting = pool.started_seconds if pool is not None else 0.0
            report.encode_seconds = round(starting + per_doc * remaining, 1)
            report.seconds_per_1000 = round(per_doc * 1000, 2)
            if pool is not None:
                report.notes.append(f"starting {options.workers} worker processes took {starting:.0f} s (counted in the "
                                    "estimate)")
            return report
        # a new version's model loads and embeds a document before anything is written (its vectors' sizes): a model
        # that cannot load is refused with every collection, and its metadata, as it was (a resumed version's model
        # is the one that built its first part: its sizes are in it already)
        sizes = _vector_sizes(current, targets, copied, encoded, have) if checkpoint is None else {}
        build = RolloutBuild(location=location, alias=collection, current=current, current_name=current_name,
                             previous_serving=previous_serving, plain=plain, plan=plan, embed=embed, spaces=spaces,
                             targets=targets, copied=copied, encoded=encoded, have=have, identity=identity,
                             versions=versions, keep=keep, checkpoint=checkpoint, sizes=sizes)
        _build(build, report, batch_size=options.batch_size, show_progress=options.show_progress,
               on_batch=options.on_batch)
    step("checked")
    if options.switch:
        switch_to(location, collection, report.collection)
        log.info("%s now serves %s (previous: %s)", collection, report.collection, report.previous)
    return report


@dataclass
class RolloutBuild:
    """What :func:`rollout` settled before its first write, for :func:`_build` to write the new version from: where
    (the location and the serving alias), from what (the collection serving now), what the version holds (the new
    serving plan, its vectors: embedded or copied), and how far an earlier run of this same build got (``checkpoint``).
    The same on every engine: Qdrant Edge, local mode and a server differ only in ``location`` (and ``plain``).
    ``_build`` never changes its fields (it rebinds its own ``current``, ``current_name`` and ``checkpoint``)."""

    location: CorpusIndex  # the open index at the location (Edge, local mode or a server): ``sibling`` opens the others
    alias: str  # the serving name (``rollout``'s ``collection``)
    current: CorpusIndex  # the collection serving now: the documents, their BM25 and copied vectors are read from it
    current_name: str
    previous_serving: dict[str, Any]  # the serving plan of ``current`` (recorded into it, or its copy, if it lacks one)
    plain: bool  # a first rollout where aliases are collections: ``current`` is copied to ``<alias>__v0`` first
    plan: dict[str, Any]  # the new serving plan
    embed: Any  # the new plan's embedding (``model_embedding``)
    spaces: list[tuple[str, Any]]  # its vector spaces, (label, model): the first is the one a query is embedded in
    targets: dict[str, tuple[int, Any]]  # the new version's dense vectors: name -> (space index, model)
    copied: list[str]  # dense vectors copied from ``current`` as they are
    encoded: list[str]  # dense vectors embedded with the new model
    have: dict[str, int]  # ``current``'s dense vectors and their sizes
    identity: dict[str, Any]  # what makes two builds the same (recorded in the version under ``ace_resume``)
    versions: dict[int, str]  # the alias's versions here: number -> collection name
    keep: set[str | None]  # versions not removed (what serves, and what it replaced)
    checkpoint: dict[str, Any] | None  # where an earlier run of this build stopped (``_resumable``); None: from the start
    sizes: dict[str, int]  # a new version's dense vectors' sizes (encoded ones measured by embedding a document); {}: resumed


def _vector_sizes(current, targets: dict[str, tuple[int, Any]], copied: list[str], encoded: list[str],
                  have: dict[str, int]) -> dict[str, int]:
    """The size of each dense vector of the new version: a copied one's as ``current`` has it, an encoded one's by
    embedding ``current``'s first document with its model (which loads it: a model that cannot load fails here)."""
    sizes = {n: int(have[n]) for n in copied}
    first = list(islice(current.iter_points(1), 1))
    text = _embed_text(first[0][1], current.text_field) if first else ""
    for name in encoded:
        sizes[name] = len(targets[name][1].get_text_embedding_batch([text])[0])
    return sizes


def _build(build: RolloutBuild, report: RolloutReport, *, batch_size: int, show_progress: bool,
           on_batch: Callable[[int], None] | None) -> None:
    """The rollout's writes, up to a checked and complete version ``report.collection`` (the switch is the caller's)."""
    from ..serve.spaces import named_vector

    location, collection, plain = build.location, build.alias, build.plain
    current, current_name, checkpoint = build.current, build.current_name, build.checkpoint  # rebound below
    targets, copied, encoded, identity = build.targets, build.copied, build.encoded, build.identity
    resuming = checkpoint["collection"] if checkpoint is not None else None
    # a first rollout's copy of the plain collection is made again below (it must be what serves now)
    fresh = {resuming, version_name(collection, 0) if plain else None}
    stale_versions = (name for name in build.versions.values() if name not in build.keep and name not in fresh)
    for stale in stale_versions:  # killed or old
        try:
            location.sibling(stale).delete()
            report.removed.append(stale)
        except OptionError as exc:  # in use by another process: left for the next rollout
            log.warning("kept %s: %s", stale, exc)
            continue
        step("removed-stale")
    for abandoned in getattr(location, "remove_abandoned", lambda alias: [])(collection):  # Edge: half-made shards
        report.removed.append(abandoned)
        step("removed-stale")
    if plain:
        with _removed_on_full_disk(location, version_name(collection, 0), current_name):
            current_name = _copy_collection(location, current, version_name(collection, 0), build.previous_serving,
                                            show_progress, collection)
        current = location.sibling(current_name)
        report.previous = current_name
        step("copied-v0")
    elif collection_plan(current) is None:
        current.set_metadata({SERVING_KEY: build.previous_serving})
        step("recorded-serving")

    started = time.perf_counter()
    new_name = report.collection
    new = location.sibling(new_name)
    header = {SERVING_KEY: build.plan, VECTOR_KEY: named_vector(build.embed, build.spaces[0][0]),
              PREVIOUS_KEY: current_name, "ace_rolled_out_at": time.time()}
    with _removed_on_full_disk(location, new_name, current_name):
        if checkpoint is None:
            checkpoint = {"written": 0, "last_id": None, "chain": ""}
            new.cluster = dict(identity["cluster"])  # a server's shards and replicas: given, or the serving collection's
            new.on_step = step  # an engine whose create is more than one write (Edge: the shard, then its metadata) says so
            try:
                new.create(build.sizes, {**{k: v for k, v in current.metadata().items() if k.startswith("bm25")}, **header,
                                   RESUME_KEY: {**identity, **_progress(checkpoint)}})
            finally:
                new.on_step = None
            step("created-new")
        else:  # what serves it now (folders may have moved), and what it replaces
            new.set_metadata(header)
            log.info("resuming %s: %d of %d documents are in it already", new_name, checkpoint["written"],
                        report.documents)
        bar = tqdm(total=report.documents, initial=min(checkpoint["written"], report.documents),
                   desc=f"rollout into {new_name}", unit="doc", disable=not show_progress)
        batch: list[tuple[str, dict, dict]] = []
        state = dict(checkpoint)

        def flush() -> None:
            texts = [_embed_text(p, current.text_field) for _, p, _ in batch]
            fresh = {n: targets[n][1].get_text_embedding_batch(texts) for n in encoded}
            points = []
            for i, (pid, payload, vectors) in enumerate(batch):
                vector = {n: vectors[n] for n in copied if n in vectors}
                if "bm25" in vectors:
                    vector["bm25"] = vectors["bm25"]
                vector.update({n: list(map(float, fresh[n][i])) for n in encoded})
                points.append(models.PointStruct(id=pid, vector=vector, payload=payload))
            new.write_points(points)
            # the checkpoint, once the batch is in: a run killed before it writes this batch again
            state.update(written=state["written"] + len(batch), last_id=_raw_id(batch[-1][0]),
                         chain=_chain(state["chain"], batch))
            new.set_metadata({RESUME_KEY: {**identity, **_progress(state)}})
            report.embedded += len(batch)
            bar.update(len(batch))
            if on_batch:
                on_batch(state["written"])
            batch.clear()
            step("wrote-batch")

        for point in _points_after(current, checkpoint, batch_size):
            batch.append(point)
            if len(batch) >= batch_size:
                flush()
        if batch:
            flush()
        bar.close()
        new.optimize()
        report.encode_seconds = round(time.perf_counter() - started, 1)
        report.seconds_per_1000 = round(report.encode_seconds / report.embedded * 1000, 2) if report.embedded else 0.0
        report.checks = check_rollout(current, new, next(iter(targets)))
    new.set_metadata({VERSION_OF_KEY: collection})  # complete: what a killed switch below is finished with


# ---- resuming: a version records what it is built from and how far it got ------------------------------------------
RESUME_KEY = "ace_resume"


def _resume_record(version) -> dict[str, Any] | None:
    try:
        record = version.metadata().get(RESUME_KEY)
    except Exception:  # noqa: BLE001 - an unreadable version is not resumed (the stale loop removes it)
        return None
    return record if isinstance(record, dict) else None


def _progress(state: dict[str, Any]) -> dict[str, Any]:
    return {"written": state["written"], "last_id": state["last_id"], "chain": state["chain"]}


def _raw_id(pid: str) -> str | int:
    """A point id as Qdrant takes it back (an unsigned integer, else a UUID string)."""
    return int(pid) if pid.isdigit() else pid


def _chain(chain: str, points: list[tuple[str, dict, dict]]) -> str:
    """The checkpoint's fingerprint of every source point written so far (id and payload), in scroll order."""
    digest = bytes.fromhex(chain)
    for pid, payload, _ in points:
        digest = hashlib.sha256(digest + pid.encode() + b"\0" +
                                json.dumps(payload, sort_keys=True, default=str).encode()).digest()
    return digest.hex()


def _points_after(source, checkpoint: dict[str, Any], batch_size: int, with_vectors: bool = True):
    """The source's points after the checkpoint's last one, in scroll order (all of them from a fresh start)."""
    last = checkpoint.get("last_id")
    for point in source.iter_points(batch_size, offset=last, with_vectors=with_vectors):
        if last is not None and point[0] == str(last):
            continue
        yield point


def _roll_forward(version, source, checkpoint: dict[str, Any]) -> int | None:
    """Points a killed run wrote after its last checkpoint (a batch written, its checkpoint not): when they are the
    source's next points, with the same payloads, they were embedded by this same build, so the checkpoint moves over
    them (their number is returned). None when they are not (the source changed there): the version is not resumed.
    (Deleting them instead would leave Qdrant Edge's BM25 statistics counting them until its next vacuum.)"""
    last = checkpoint.get("last_id")
    past = [(pid, payload) for pid, payload, _ in version.iter_points(256, offset=last, with_vectors=False)
            if last is None or pid != str(last)]
    if not past:
        return 0
    following = _points_after(source, checkpoint, 256, with_vectors=False)
    matched = []
    for pid, payload in past:
        point = next(following, None)
        if point is None or point[0] != pid or _normal(point[1]) != _normal(payload):
            return None
        matched.append(point)
    checkpoint.update(written=checkpoint["written"] + len(matched), last_id=_raw_id(matched[-1][0]),
                      chain=_chain(checkpoint["chain"], matched))
    return len(matched)


def _resumable(location, versions: dict[int, str], keep: set, identity: dict[str, Any], source,
               report: RolloutReport) -> dict[str, Any] | None:
    """The newest version left by an earlier rollout of this same build (same model and adapter weights, same
    serving collection, same vectors and BM25 settings) whose checkpoint still matches the source, and its
    checkpoint; None when there is none. One that does not match is left to the stale loop (removed), with a note."""
    for n in sorted(versions, reverse=True):
        name = versions[n]
        if name in keep:
            continue
        version = location.sibling(name)
        record = _resume_record(version)
        if record is None or EXPERIMENT_KEY in version.metadata():
            continue
        differs = [k for k in ("plan", "source", "vectors", "encoded", "copied", "bm25", "cluster")
                   if _normal(record.get(k)) != _normal(identity[k])]
        if differs:
            report.notes.append(f"{name} was built for another rollout ({', '.join(differs)} differ): removed, not resumed")
            continue
        if set(version.dense_vectors()) != set(identity["vectors"]):
            report.notes.append(f"{name} lacks the vectors it should hold: removed, not resumed")
            continue
        checkpoint = {"collection": name, "written": int(record.get("written") or 0), "last_id": record.get("last_id"),
                      "chain": str(record.get("chain") or "")}
        if not _source_unchanged(source, checkpoint):
            report.notes.append(f"{name}: the documents it was built from have changed since (added, removed or "
                                "edited before its checkpoint): removed, not resumed")
            continue
        rolled = _roll_forward(version, source, checkpoint)
        if rolled is None:
            report.notes.append(f"{name}: the documents it holds past its checkpoint are not the serving collection's "
                                "next ones any more: removed, not resumed")
            continue
        if rolled:
            report.notes.append(f"{name}: {rolled} documents written after its last checkpoint are kept (the same "
                                "documents, embedded by the same model)")
        return checkpoint
    return None


def _normal(value: Any) -> Any:
    """A value as it comes back from a collection's metadata (JSON: tuples are lists)."""
    return json.loads(json.dumps(value, sort_keys=True, default=str))


def _source_unchanged(source, checkpoint: dict[str, Any]) -> bool:
    """Whether the source's points up to the checkpoint's last one are those the version was built from (read
    without vectors: a pass over payloads, no model)."""
    written, last = checkpoint["written"], checkpoint["last_id"]
    if written == 0:
        return True
    if last is None:
        return False
    chain, seen = "", 0
    batch: list[tuple[str, dict, dict]] = []
    for point in source.iter_points(256, with_vectors=False):
        batch.append(point)
        seen += 1
        if point[0] == str(last) or seen >= written:
            chain = _chain(chain, batch)
            return seen == written and point[0] == str(last) and chain == checkpoint["chain"]
        if len(batch) >= 256:
            chain, batch = _chain(chain, batch), []
    return False


def switch_to(location, collection: str, version: str) -> None:
    """Serve ``collection`` (an alias) from the complete ``version``: one atomic alias switch; a first rollout's plain
    collection is dropped first (Qdrant keeps aliases and collections in one namespace). Killed in between, the next
    opener points the alias at the newest complete version (:meth:`~ace_llamaindex.index.store.CorpusIndex.recover_alias`)."""
    if location.ALIASES_ARE_COLLECTIONS and location.alias_target(collection) is None \
            and collection in location.collection_names():
        location.sibling(collection).delete()
        step("dropped-plain")
    location.switch_alias(collection, version)
    step("switched")


@contextmanager
def _removed_on_full_disk(location, partial: str, serving: str):
    """A full disk while ``partial`` is written: remove it and say so in one line; what serves is untouched."""
    try:
        yield
    except Exception as exc:
        if not disk_full(exc):
            raise
        try:
            location.sibling(partial).delete()
        except Exception as cleanup:  # noqa: BLE001 - the next rollout removes it
            log.warning("could not remove the partial %s now (%s); the next rollout will", partial, cleanup)
        raise OptionError(f"no space left on the device while writing {partial!r} ({' '.join(str(exc).split())}); it was "
                          f"removed and {serving!r} still serves: free some space and roll out again") from None


def _copy_collection(location, source, name: str, serving: dict[str, Any], show_progress: bool, alias: str) -> str:
    """Copy ``source`` (vectors as they are) into ``name``: the previous version a first rollout keeps (marked
    complete, as a version of ``alias``, once every point is in)."""
    copy = location.sibling(name)
    if copy.exists():
        copy.delete()
    copy.cluster = source.cluster_settings()  # a server's shards and replicas, as the source has them
    copy.create(source.dense_vectors(), {**source.metadata(), SERVING_KEY: serving})
    batch = []
    for pid, payload, vectors in tqdm(source.iter_points(256), total=source.count(), desc=f"keeping {source.collection} "
                                      f"as {name}", unit="doc", disable=not show_progress):
        batch.append(models.PointStruct(id=pid, vector=vectors, payload=payload))
        if len(batch) >= 256:
            copy.write_points(batch)
            batch = []
    if batch:
        copy.write_points(batch)
    copy.optimize()
    copy.set_metadata({VERSION_OF_KEY: alias})
    return name


def check_rollout(old, new, primary: str) -> dict[str, Any]:
    """Refuse (and drop) the new collection unless it has every document and searches answer as they should."""
    checks: dict[str, Any] = {"documents": [old.count(), new.count()]}
    problem = None if checks["documents"][0] == checks["documents"][1] else "the new collection is missing documents"
    sample = list(islice(new.iter_points(CHECK_SAMPLE), CHECK_SAMPLE))
    texts = [str(p[1].get(new.text_field, "")) for p in sample]
    if sample and problem is None:
        vectors = np.asarray([p[2][primary] for p in sample], dtype=np.float32)
        hits = new.search("dense", vectors=vectors, texts=texts, using=primary, limit=1)
        # its own vector first, or one identical to it (a duplicated document)
        found = sum(bool(h) and (h[0].doc_id == str(p[1].get(new.id_field)) or h[0].score > 1 - 1e-4)
                    for h, p in zip(hits, sample, strict=True))
        checks["own vector first"] = f"{found}/{len(sample)}"
        # scores, not ids: documents tied on BM25 may come back in another order
        old_bm25 = [[h.score for h in row] for row in old.search("bm25", texts=texts, limit=10)]
        new_bm25 = [[h.score for h in row] for row in new.search("bm25", texts=texts, limit=10)]
        same = sum(len(a) == len(b) and np.allclose(a, b, rtol=1e-4) for a, b in zip(old_bm25, new_bm25, strict=True))
        checks["bm25 as before"] = f"{same}/{len(sample)}"
        if found < len(sample):
            problem = "documents are not found by their own new vectors"
        elif same < len(sample):
            problem = "BM25 answers differently from the serving collection"
    if problem:
        new.delete()
        raise OptionError(f"rollout refused: {problem} ({checks}); the alias still serves {old.collection!r}")
    return checks


def rollback(collection: str, *, index=None, path: str | Path | None = None, url: str | None = None,
             api_key: str | None = None, engine: str = "auto") -> tuple[str, str]:
    """Serve ``collection`` from the collection the current one replaced; (from, to)."""
    from ..index.engines import open_index

    location = index or open_index(collection, path=path, url=url, api_key=api_key, engine=engine)
    _recover(location, collection)
    refuse_during_experiment(location, collection)
    current = serving_target(location, collection)
    previous = location.sibling(current).metadata().get(PREVIOUS_KEY)
    if not previous or not location.sibling(previous).exists():
        raise OptionError(f"{collection!r} serves {current!r}, which replaced no collection that is still here; "
                          "nothing to roll back to")
    location.switch_alias(collection, previous)
    step("switched")
    return current, previous
