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
A rollout or rollback killed at any point leaves a collection serving, and the next command continues: the partial
collection is removed by the next rollout. The one step that is two on a Qdrant that keeps aliases and collections in one
namespace (local mode, a server) is a first rollout's: the plain collection must be dropped before an alias of its name
can exist. The new collection is marked complete (``ace_version_of``) before that drop, so a rollout killed between the
two leaves the alias to be recreated, pointing at the newest complete version, by whoever opens the name next
(:meth:`~ace_llamaindex.index.store.CorpusIndex.recover_alias`).

Every point where a rollout or rollback changes what is on disk calls :func:`step` with its name (:data:`STEPS`): a
test or a fault drill kills the process exactly there with ``ACE_ROLLOUT_KILL_AT=<step>`` (``kill -9`` itself), or sets
:data:`step_hook`.
"""

from __future__ import annotations

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
from ..index.store import VERSION_OF_KEY
from ..serve.serving_record import (
    PREVIOUS_KEY,
    SERVING_KEY,
    VECTOR_KEY,
    challenger_alias,
    model_embedding,
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

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def version_name(alias: str, n: int) -> str:
    return f"{alias}__v{n}"


def _versions(index, alias: str) -> dict[int, str]:
    pattern = re.compile(rf"{re.escape(alias)}__v(\d+)")
    return {int(m.group(1)): name for name in index.collection_names() if (m := pattern.fullmatch(name))}


def _serving_plan(model: str | Path) -> dict[str, Any]:
    from ..embeddings.models import resolve_model
    from ..serve.served_model import read_serving

    if Path(model).is_dir():
        plan = read_serving(model)
        return {k: (str(Path(v).resolve()) if k in ("model", "adapter") and v and Path(v).exists() else v)
                for k, v in plan.items()}
    return {"model": resolve_model(str(model)), "adapter": None, "reindex": True}


def _embed_text(payload: dict[str, Any], text_field: str) -> str:
    """The text a document was embedded from: a LlamaIndex node's content with its embed metadata, else the text."""
    if "_node_content" in payload:
        from llama_index.core.schema import MetadataMode
        from llama_index.core.vector_stores.utils import metadata_dict_to_node

        node = metadata_dict_to_node(payload, text=str(payload.get(text_field, "")))
        return node.get_content(metadata_mode=MetadataMode.EMBED)
    return str(payload.get(text_field, ""))


def rollout(model: str | Path, collection: str, *, index=None, path: str | Path | None = None, url: str | None = None,
            api_key: str | None = None, engine: str = "auto", previous_model: str | Path | None = None, fallback=None,
            dry_run: bool = False, batch_size: int = 64, show_progress: bool = True, force: bool = False,
            on_batch: Callable[[int], None] | None = None, heldout=None, switch: bool = True) -> RolloutReport:
    """Serve ``collection`` (an alias) with ``model`` (a folder ``ace train`` wrote, or any model name).

    ``index``: an open :class:`~ace_llamaindex.index.store.CorpusIndex` at the location (an embedded folder is one
    process's: pass the serving process's own, e.g. ``retriever.index``); else opened from ``path``/``url``.
    ``previous_model``: what serves the current collection when it does not say (one indexed by ``ace index``;
    default the bundled base model), recorded so a rollback serves it again. ``dry_run``: count, time a sample,
    change nothing (the report still says whether the rollout would be refused, and why).

    A model not shown better than what the collection serves now is refused unless ``force``: by its training card's
    comparison with that champion, or (a first rollout) with its base, or by judging both on ``heldout`` (a
    :class:`~ace_llamaindex.data.dataset.QADataset` or a dataset path, e.g. the ``training_data.test.json`` that
    ``ace mine --from-feedback`` writes); see :mod:`~ace_llamaindex.deploy.evidence`. ``switch=False`` builds and
    checks the new collection but leaves the alias as it is (an online experiment's challenger,
    :mod:`~ace_llamaindex.deploy.experiment`)."""
    from ..embeddings.models import DEFAULT_MODEL
    from ..index.engines import open_index
    from ..serve.spaces import embedding_spaces, named_vector

    if batch_size < 1:
        raise OptionError(f"batch_size must be at least 1, got {batch_size}")
    location = index or open_index(collection, path=path, url=url, api_key=api_key, engine=engine)
    _recover(location, collection)
    refuse_during_experiment(location, collection)
    current_name = serving_target(location, collection)
    current = location.sibling(current_name)
    if not current.exists():
        raise OptionError(f"collection {collection!r} does not exist here; index it first (`ace index`)")
    plan = _serving_plan(model)
    previous_serving = current.metadata().get(SERVING_KEY)
    if not previous_serving:  # an `ace index` collection: what serves it is previous_model, or assumed the base model
        previous_serving = _serving_plan(previous_model or DEFAULT_MODEL)
        assumed = model_embedding(previous_serving) if previous_model is None else None
        assumed_vector = named_vector(assumed, embedding_spaces(assumed)[0][0]) if assumed is not None else None
        if assumed_vector and current.dense_vectors() and assumed_vector not in current.dense_vectors():
            raise OptionError(f"collection {collection!r} records no model serving it, and its dense vectors "
                              f"{sorted(current.dense_vectors())} are not the base model's ({assumed_vector}): pass "
                              "--previous-model (previous_model=) with the model that indexed it, so a rollback can "
                              "serve it again")
    if heldout is not None and not isinstance(heldout, QADataset):
        heldout = load_dataset(heldout)
    evidence = promotion_evidence(model, plan, previous_serving, collection, heldout, engine)
    if not evidence.allowed and not force and not dry_run:
        raise OptionError(f"rollout refused: {evidence.reason} (force=True / --force to roll it out anyway)")
    embed = model_embedding(plan, fallback)
    spaces = embedding_spaces(embed)
    have = current.dense_vectors()
    targets = {named_vector(embed, label): (i, m) for i, (label, m) in enumerate(spaces)}
    # the fallback's space (same model, same vectors) is copied; so are the documents' vectors of a plan that says the
    # documents do not change (a query adapter over the serving model)
    copied = [n for n, (i, _) in targets.items() if n in have and (i > 0 or plan.get("reindex") is False)]
    encoded = [n for n in targets if n not in copied]
    total = current.count()
    versions = _versions(location, collection)
    new_name = version_name(collection, max(versions, default=0) + 1)

    sample = list(islice(current.iter_points(64), 64))
    started = time.perf_counter()
    for name in encoded:
        targets[name][1].get_text_embedding_batch([_embed_text(p[1], current.text_field) for p in sample])
    per_doc = (time.perf_counter() - started) / max(1, len(sample))
    report = RolloutReport(collection, current_name, new_name, total, round(per_doc * total, 1),
                           round(per_doc * 1000, 2), copied, encoded, dry_run=dry_run, evidence=evidence.to_dict())
    if dry_run:
        return report

    keep = {current_name, current.metadata().get(PREVIOUS_KEY)}
    for stale in (name for name in versions.values() if name not in keep):  # a killed rollout's or an old version
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
    plain = current_name == collection and location.alias_target(collection) is None and location.ALIASES_ARE_COLLECTIONS
    if plain:
        with _removed_on_full_disk(location, version_name(collection, 0), current_name):
            current_name = _copy_collection(location, current, version_name(collection, 0), previous_serving,
                                            show_progress, collection)
        current = location.sibling(current_name)
        report.previous = current_name
        step("copied-v0")
    elif SERVING_KEY not in current.metadata():
        current.set_metadata({SERVING_KEY: previous_serving})
        step("recorded-serving")

    started = time.perf_counter()
    new = location.sibling(new_name)
    sizes = {n: int(have[n]) for n in copied}
    first = list(islice(current.iter_points(1), 1))
    for name in encoded:
        sizes[name] = len(targets[name][1].get_text_embedding_batch([_embed_text(first[0][1], current.text_field)])[0])
    meta = current.metadata()
    with _removed_on_full_disk(location, new_name, current_name):
        new.on_step = step  # an engine whose create is more than one write (Edge: the shard, then its metadata) says so
        try:
            new.create(sizes, {**{k: v for k, v in meta.items() if k.startswith("bm25")}, SERVING_KEY: plan,
                               VECTOR_KEY: named_vector(embed, spaces[0][0]), PREVIOUS_KEY: current_name,
                               "ace_rolled_out_at": time.time()})
        finally:
            new.on_step = None
        step("created-new")
        bar = tqdm(total=total, desc=f"rollout into {new_name}", unit="doc", disable=not show_progress)
        batch: list[tuple[str, dict, dict]] = []
        done = 0

        def flush() -> None:
            nonlocal done
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
            done += len(batch)
            bar.update(len(batch))
            if on_batch:
                on_batch(done)
            batch.clear()
            step("wrote-batch")

        for point in current.iter_points(batch_size):
            batch.append(point)
            if len(batch) >= batch_size:
                flush()
        if batch:
            flush()
        bar.close()
        new.optimize()
        report.encode_seconds = round(time.perf_counter() - started, 1)
        report.seconds_per_1000 = round(report.encode_seconds / max(1, total) * 1000, 2)
        report.checks = check_rollout(current, new, next(iter(targets)))
    new.set_metadata({VERSION_OF_KEY: collection})  # complete: what a killed switch below is finished with
    step("checked")
    if switch:
        switch_to(location, collection, new_name)
        log.info("%s now serves %s (previous: %s)", collection, new_name, current_name)
    return report


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
