"""The champion: the model that serves now, which every challenger must beat before it may replace it.

In a loop every round after the first has one. A candidate better than the *base* is not enough: the model already
serving may be better still (a second round trained on less data beat the base by +0.26 and lost 0.145 nDCG@10 to
the serving model). So training judges every candidate against the champion with the same paired bootstrap on the
same validation queries, and a rollout refuses a model not shown better than what the collection serves.

A champion is read from a serving collection (its ``ace_serving`` record, see
:mod:`~ace_llamaindex.serve.serving_record`) or from a folder ``ace train`` wrote. Its training card names the data
it was trained on (path and hash), so a new round can *replay* it (learning without forgetting: continuing the
champion on new data alone forgets what it learnt) and can judge candidates on the champion's own validation
queries too.
"""

from __future__ import annotations

import hashlib
import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..data.examples import TrainingExample
from ..errors import OptionError
from ..records.card import TrainingCard, read_card, text_hash
from ..records.plan import ServingPlan, describe_plan
from ..serve.served_model import read_serving, serving_encoder
from ..serve.serving_record import collection_plan, plan_identity, serving_target

log = logging.getLogger(__name__)


@dataclass
class Champion:
    """What serves now: its serving plan (``{"model", "adapter", "reindex"}``), where it was found, and its training
    card when ``ace train`` wrote it (None for the base or a model trained elsewhere)."""

    serving: dict[str, Any]
    source: str
    card: TrainingCard | None = None
    folder: Path | None = None
    identity: dict[str, str | None] = field(init=False)

    def __post_init__(self) -> None:
        self.identity = plan_identity(self.serving)

    def is_plain(self, model: str) -> bool:
        """Whether the champion is ``model`` itself (no adapter): then "better than the champion" is the base gate."""
        return self.identity == plan_identity(ServingPlan(model).to_dict())

    def describe(self) -> str:
        return f"{describe_plan(self.serving)} ({self.source})"

    def to_dict(self) -> dict[str, Any]:
        return {"source": self.source, "serving": self.serving, "identity": self.identity,
                "method": self.card.method_name if self.card else None}

    def encoder(self, base, max_seq_length: int | None = None):
        """The champion's encoder for the gate: its document model (``base`` when it keeps the base's documents),
        queries through its adapter when it has one."""
        return serving_encoder(self.serving, base, max_seq_length=max_seq_length)


def champion_from_folder(folder: str | Path) -> Champion:
    """The champion in a folder ``ace train`` wrote (or any sentence-transformers model folder)."""
    folder = Path(folder)
    if not folder.is_dir():
        raise OptionError(f"--champion {folder}: no such folder (a model or adapter folder `ace train` wrote)")
    return Champion(read_serving(folder), f"folder {folder}", read_card(folder), folder)


def champion_from_collection(collection: str, *, index=None, path: str | Path | None = None, url: str | None = None,
                             engine: str = "auto", previous_model: str | None = None) -> Champion:
    """The champion a serving collection records (``ace_serving``); a collection indexed by ``ace index`` without a
    rollout records nothing: ``previous_model`` (default the bundled base) serves it."""
    from ..embeddings.models import DEFAULT_MODEL, resolve_model
    from ..index.engines import open_index

    if index is None:
        if path is None and url is None:
            raise OptionError(f"--collection {collection!r}: say where it is (--qdrant-path or --qdrant-url)")
        if url is None and not Path(path).is_dir():
            raise OptionError(f"--qdrant-path {path}: no index there; run `ace index` first")
        index = open_index(collection, path=path, url=url, engine=engine)
    target = serving_target(index, collection)
    current = index.sibling(target)
    if not current.exists():
        raise OptionError(f"no collection {collection!r} at {url or path}; index it first (`ace index`)")
    plan = collection_plan(current)
    where = f"collection {collection!r}" + (f" -> {target!r}" if target != collection else "")
    if not plan:
        return Champion(ServingPlan(resolve_model(previous_model or DEFAULT_MODEL)).to_dict(), where)
    recorded = ServingPlan.from_dict(plan)
    folder = next((Path(p) for p in (recorded.adapter, recorded.model) if p and Path(str(p)).is_dir() and read_card(p)),
                  None)
    return Champion(dict(plan), where, read_card(folder) if folder else None, folder)


def data_reference(path: str | Path) -> dict[str, str]:
    """How a card names its training data: the file's absolute path and content hash (for replay in a later round)."""
    path = Path(path)
    return {"path": str(path.resolve()), "sha256": hashlib.sha256(path.read_bytes()).hexdigest()[:16]}


@dataclass
class History:
    """What the champion learnt from, recovered through its card: the training examples to replay, its validation
    examples, and a note saying what was found (a missing file is a note, not a failure)."""

    replay: list[TrainingExample] = field(default_factory=list)
    validation: list[TrainingExample] = field(default_factory=list)
    trained_on: set[str] = field(default_factory=set)  # hashes of the champion's training queries
    note: str = "no champion history"


def champion_history(champion: Champion | None) -> History:
    """The champion's training and validation examples, from the data its card names (path + hash)."""
    from ..mine.mining import load_training_data

    card = champion.card if champion else None
    trained_on = set(card.training_queries) if card else set()
    refs = history_refs(champion)  # named by the card: with refs there is a card
    if not refs:
        return History(trained_on=trained_on, note="the champion's card names no training data: nothing to replay")
    examples, notes = [], []
    for ref in refs:
        path = Path(ref["path"])
        if not path.is_file():
            notes.append(f"the champion's training data {path} is missing: not replayed")
        elif data_reference(path)["sha256"] != ref.get("sha256"):
            notes.append(f"the champion's training data {path} changed since it was trained (hash differs): not replayed")
        else:
            examples += load_training_data(path)
    validated = set(card.validation_queries)
    unique = {(e.query, e.positive): e for e in examples}.values()
    replay = [e for e in unique if text_hash(e.query) in trained_on]
    validation = [e for e in unique if text_hash(e.query) in validated]
    notes.insert(0, f"replaying {len(replay)} of the champion's training examples; {len({e.query for e in validation})} of "
                 "its validation queries join the gate")
    return History(replay, validation, trained_on, "; ".join(notes))


def split_with_champion(examples: list[TrainingExample], history: History | None, plan):
    """The validation split of a round with a champion: ``plan(rows)`` (the trainer's
    :func:`~ace_llamaindex.train.training.plan_validation`) holds out validation queries only among those the champion
    did not train on (a log that accumulates holds many it did), the rest train; then
    :func:`with_champion_history` adds the champion's own validation queries. Without a champion: ``plan(examples)``."""
    from ..mine.mining import drop_positive_negatives

    if history is None:
        return plan(examples)
    fresh = [e for e in examples if text_hash(e.query) not in history.trained_on]
    known, _ = drop_positive_negatives([e for e in examples if text_hash(e.query) in history.trained_on])
    split = plan(fresh)
    split.train = [*split.train, *known]
    split.checks["queries the champion trained on (kept for training)"] = len({e.query for e in known})
    return with_champion_history(split, history)


def with_champion_history(split, history: History):
    """``split`` made fair to champion and challenger: the champion's own validation queries join the validation
    set (so a candidate that forgets what the champion learnt is not "better"), and validation queries the champion
    trained on move to training (neither side has then seen a validation query). Which are unseen is recomputed."""
    from .validation_split import ValidationSplit, unseen_queries

    train_queries = {e.query for e in split.train}
    val = [e for e in split.val if text_hash(e.query) not in history.trained_on]
    moved = [e for e in split.val if text_hash(e.query) in history.trained_on]
    val += [e for e in history.validation if e.query not in train_queries and e.query not in {v.query for v in val}]
    train = split.train + moved
    checks = {**split.checks, "validation queries the champion trained on (moved to training)": len({e.query for e in moved}),
              "champion validation queries added": len({e.query for e in val} - {e.query for e in split.val})}
    # unseen: about documents neither this round's training queries nor the champion's had
    return ValidationSplit(train, val, unseen_queries([*train, *history.replay], val), checks)


def continual_examples(new: list[TrainingExample], history: History, validation: list[TrainingExample]) -> list[TrainingExample]:
    """A continual candidate's training data: the new examples and the champion's replayed ones, none of them a
    validation query, each (query, positive) pair once."""
    held_out = {e.query for e in validation}
    seen: set[tuple[str, str]] = set()
    out = []
    for e in [*new, *history.replay]:
        if e.query in held_out or (e.query, e.positive) in seen:
            continue
        seen.add((e.query, e.positive))
        out.append(e)
    return out


def continuable_adapter(champion: Champion | None, base):
    """The champion's :class:`~ace_llamaindex.embeddings.query_adapter.QueryAdapter` when the champion is a query
    adapter over this very base (same weights fingerprint), so a continual candidate can start from it; else None."""
    from ..embeddings.query_adapter import QueryAdapter, base_identity

    plan = ServingPlan.from_dict(champion.serving) if champion is not None else None
    if plan is None or not plan.adapter or plan.reindex:
        return None
    adapter, card = QueryAdapter.load(plan.adapter)
    trained_on = card.base_fingerprint
    return adapter if trained_on and trained_on == base_identity(base).get("fingerprint") else None


def continuable_model(champion: Champion | None) -> str | None:
    """The champion's fine-tuned weights (a model folder ``ace train`` wrote), which a continual fine-tune starts from."""
    plan = ServingPlan.from_dict(champion.serving) if champion is not None else None
    if plan is None or not plan.reindex or champion.card is None:
        return None
    model = Path(str(plan.model))
    return str(model) if (model / "modules.json").is_file() else None


def history_refs(champion: Champion | None) -> list[dict[str, str]]:
    """The training data the champion's card names (a continual candidate's card names them too, and its own)."""
    return list(champion.card.training_data) if champion is not None and champion.card else []
