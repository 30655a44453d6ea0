"""The production loop in Python: the functions the ``ace`` commands run, named and shaped like them.

- ``ace mine --from-feedback LOG --collection C``: :func:`mine_feedback` ``(LOG, collection=C, ...)``
- ``ace mine DATASET``: :func:`mine_training_data` ``(DATASET, ...)``
- ``ace train DATA -o OUT --collection C``: :func:`train_model` ``(DATA, OUT, collection=C, ...)``
- ``ace rollout OUT --collection C``: :func:`rollout` ``(OUT, C, ...)``
- ``ace rollback --collection C``: :func:`rollback` ``(C, ...)``

Each is importable from :mod:`ace_llamaindex`. A collection is named (``collection=``) and found by ``qdrant_path=``
/ ``qdrant_url=``, or given open as ``index=`` (an embedded Qdrant folder is one process's: a serving process passes
its own, ``retriever.index``). What the commands print as they go reaches ``notify`` (default: this module's logger);
refusals are :class:`~ace_llamaindex.errors.OptionError` (or another ``AceError``), raised before any work::

    from ace_llamaindex import mine_feedback, rollout, train_model
    from ace_llamaindex.records.verdict import Verdict

    mined = mine_feedback("feedback.jsonl", "data.json", collection="memories", index=retriever.index)
    result = train_model(mined.path, "model", collection="memories", index=retriever.index, method="adapter")
    if result.gate is not None and result.gate.verdict == Verdict.BETTER:
        rollout("model", "memories", index=retriever.index)
"""

from __future__ import annotations

import copy
import logging
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from .deploy.rollout import rollback, rollout
from .errors import OptionError
from .records.fields import options_given

if TYPE_CHECKING:
    from .data.dataset import QADataset
    from .data.examples import TrainingExample
    from .mine.mining import MiningOptions
    from .train.training import TrainConfig, TrainResult

__all__ = ["MineResult", "MiningCollection", "mine_feedback", "mine_training_data", "rollback", "rollout", "train_model"]

log = logging.getLogger(__name__)
Notify = Callable[[str], None]


@dataclass
class MineResult:
    """What a mining run wrote: the training data at ``path`` (its ``examples``), the queries they were mined for
    (``dataset``) and, from a feedback log, the held-out most recent queries (``test``, written to ``test_path``), the
    log's ``counts`` and the measured ``seen_share`` (with where it came from, ``seen_share_source``)."""

    path: Path
    examples: list[TrainingExample]
    dataset: QADataset
    options: MiningOptions
    test: QADataset | None = None
    test_path: Path | None = None
    counts: dict[str, int] | None = None
    seen_share: float | None = None
    seen_share_source: str | None = None


@dataclass(frozen=True)
class MiningCollection:
    """The existing collection a mining run searches (the current system): ``collection`` found at ``qdrant_path``
    (an embedded folder) or ``qdrant_url`` (a server), searched in its dense vector ``vector_name`` (default: the
    one its serving record names), its documents' texts and corpus ids in the payload keys ``text_field`` and
    ``id_field``. No collection (the default): mining builds a throwaway index of the dataset."""

    collection: str | None = None
    qdrant_path: str | Path | None = None
    qdrant_url: str | None = None
    vector_name: str | None = None
    text_field: str = "text"
    id_field: str = "doc_id"

    @classmethod
    def given(cls, source: MiningCollection | None, keywords: dict[str, Any]) -> MiningCollection:
        """``source`` (default: no collection) with ``keywords`` replacing its fields; a keyword that is no field
        is a ``TypeError``, as for any function."""
        return options_given(cls, source, keywords, "mine_training_data")


def _say(notify: Notify | None, message: str) -> None:
    (notify or log.info)(message)


def mine_training_data(dataset: QADataset | str | Path | None = None, output: str | Path = "training_data.json", *,
                       source: MiningCollection | None = None, feedback: str | Path | None = None, index: Any = None,
                       miner: str = "dense", model: str | None = None, options: MiningOptions | None = None,
                       engine: str = "auto", test_fraction: float = 0.2, show_progress: bool = True,
                       notify: Notify | None = None, **keywords: Any) -> MineResult:
    """Mine hard negatives and write training data to ``output``: what ``ace mine`` does.

    From ``dataset`` (a :class:`~ace_llamaindex.data.dataset.QADataset`, a path any loader reads, or None for the
    shipped demo), or from a ``feedback`` log (see :func:`mine_feedback`), never both. ``source``: a
    :class:`MiningCollection`, the existing collection (the current system) to mine over; each of its fields may also
    be given as a keyword (``collection=``, ``qdrant_path=``, ``qdrant_url=``, ``vector_name=``, ``text_field=``,
    ``id_field=``), which replaces the field. The collection is found at ``qdrant_path``/``qdrant_url``, or given open
    as ``index`` (the collection itself, e.g. ``retriever.index``, which is searched as it is); its
    serving record says which model and vector to mine with unless ``model`` (the current system's model; default
    the bundled base) or ``vector_name`` says. ``miner``: a registered miner (``dense``, ``bm25``, ``hybrid``...);
    ``options``: :class:`~ace_llamaindex.mine.mining.MiningOptions` (default: ``ace mine``'s defaults). ``engine``: the
    engine of the throwaway index when no collection is given. Raises :class:`~ace_llamaindex.errors.OptionError` (a
    collection that is not there, a vector of another model...) before any work."""
    from .atomic import check_output
    from .data.dataset import QADataset
    from .embeddings.encoding import CachedEncoder
    from .mine.mining import MiningOptions, save_training_data
    from .plugins.manager import get

    where = MiningCollection.given(source, keywords)
    collection, qdrant_path, qdrant_url = where.collection, where.qdrant_path, where.qdrant_url
    vector_name, text_field, id_field = where.vector_name, where.text_field, where.id_field
    output = check_output(output)
    if feedback and dataset:
        raise OptionError("give DATASET or --from-feedback, not both")
    if feedback and not collection:
        raise OptionError("--from-feedback needs --collection (with --qdrant-path or --qdrant-url): the collection the "
                          "logged results came from holds the documents' texts")
    if index is not None and not collection:
        raise OptionError("index= is where collection= is: name the collection too")
    options = options or MiningOptions()
    options.validate()
    encoder = CachedEncoder(model, show_progress=show_progress)  # loads the model on first use: a miner that needs none never does
    extra: dict[str, Any] = {"engine": engine}
    if collection:
        from .index.engines import open_index
        from .index.store import shown_url
        from .records.plan import ServingPlan
        from .serve.serving_record import SERVING_KEY, collection_plan, serving_target

        if index is None:
            if not qdrant_url and not qdrant_path:
                raise OptionError(f"--collection {collection!r}: say where it is (--qdrant-path FOLDER or --qdrant-url URL)")
            if not qdrant_url and not Path(qdrant_path).is_dir():
                raise OptionError(f"no index at {qdrant_path!r} (--qdrant-path); run `ace index` first")
            index = open_index(collection, path=qdrant_path, url=qdrant_url, engine=engine, text_field=text_field, id_field=id_field)
        if not index.exists():
            where = (f"at the Qdrant server {shown_url(qdrant_url)}" if qdrant_url
                     else f"in the embedded Qdrant folder {qdrant_path!r} (--qdrant-path)" if qdrant_path else "in the index given")
            raise OptionError(f"no collection {collection!r} {where}")
        serving = collection_plan(index.sibling(serving_target(index, collection)))
        if serving and model is None:  # the collection's documents and queries are that model's, not the base's
            from .serve.served_model import serving_encoder

            recorded = str(ServingPlan.from_dict(serving).model)
            if Path(recorded).is_absolute() and not Path(recorded).exists():
                raise OptionError(f"collection {collection!r} is served by {recorded} (its {SERVING_KEY} record), which "
                                  "is not here; pass --model with that model (a copy of it) to mine with it")
            encoder = serving_encoder(serving, CachedEncoder(recorded, show_progress=show_progress))
            adapter = ServingPlan.from_dict(serving).adapter
            adapter = f" with the query adapter {adapter}" if adapter else ""
            _say(notify, f"mining with {recorded}{adapter}: what collection {collection!r} is served by (its "
                         f"{SERVING_KEY} record; --model to choose another)")
        searches_dense = getattr(get("miners", miner), "dense", True)  # a sparse-only miner needs no dense vector
        using = vector_name or (_collection_vector(index, encoder, collection, model, serving) if searches_dense else None)
        extra = {"index": index, "using": using}
    if not show_progress:
        extra["show_progress"] = False
    make_miner = get("miners", miner)
    if not feedback:
        from .data.loading import load_dataset

        ds = dataset if isinstance(dataset, QADataset) else load_dataset(dataset)
        examples = make_miner(encoder=encoder, options=options, **extra).mine(ds)
        save_training_data(examples, output, source=ds.source, options=options)
        return MineResult(output, examples, ds, options)
    from .mine.feedback_dataset import load_feedback, with_rejected_negatives

    corpus = {doc_id: text for doc_id, text, _ in extra["index"].iter_documents()}
    data = load_feedback(feedback, corpus)
    ds, test = data.recent_split(test_fraction)
    examples = make_miner(encoder=encoder, options=options, **extra).mine(ds)
    examples = with_rejected_negatives(examples, data, corpus, options.num_negatives)
    share, where = data.seen_share(test_fraction or 0.2)
    _say(notify, f"seen share {share:.0%} ({where}); `ace train` weighs the gate so unless given --seen-share")
    counts = ", ".join(f"{v} {k}" for k, v in data.counts.items() if v)
    _say(notify, f"feedback: {counts}; {len(ds.queries)} queries for training")
    test_path = None
    if test is not None:
        test_path = output.with_suffix(".test.json")
        test.save(test_path)
        _say(notify, f"{len(test.queries)} most recent queries held out -> {test_path} (ace eval {test_path} ...)")
    save_training_data(examples, output, source=ds.source, options=options, seen_share={"value": share, "source": where})
    return MineResult(output, examples, ds, options, test, test_path, dict(data.counts), share, where)


def mine_feedback(log: str | Path, output: str | Path = "training_data.json", *, collection: str, index: Any = None,
                  qdrant_path: str | Path | None = None, qdrant_url: str | None = None, test_fraction: float = 0.2,
                  **kwargs: Any) -> MineResult:
    """Training data from a feedback log: what ``ace mine --from-feedback LOG --collection C`` does.

    ``log``: what the retriever or vector store wrote (``feedback_log=``); accepted results are positives, rejected
    ones shown above them hard negatives, topped up by the miner over ``collection`` (the collection the logged
    results came from: it holds the documents' texts; at ``qdrant_path``/``qdrant_url``, or open as ``index``).
    The most recent ``test_fraction`` of the judged queries is held out and written next to ``output``
    (``.test.json``, for ``ace eval`` or ``rollout(heldout=...)``); 0 trains on all of them. The share of recent
    queries about documents earlier ones had is measured and written with the data, and :func:`train_model` weighs
    its gate by it unless ``TrainConfig.seen_share`` is given. ``kwargs``: as :func:`mine_training_data`
    (``miner``, ``model``, ``options``, ``vector_name``, ``show_progress``, ``notify``...)."""
    return mine_training_data(None, output, feedback=log, collection=collection, index=index, qdrant_path=qdrant_path,
                              qdrant_url=qdrant_url, test_fraction=test_fraction, **kwargs)


def train_model(training_data: str | Path, output: str | Path = "models/ace-finetuned", *, method: str = "auto",
                config: TrainConfig | None = None, champion: str | Path | None = None, collection: str | None = None,
                index: Any = None, qdrant_path: str | Path | None = None, qdrant_url: str | None = None,
                base_encoder: Any = None, notify: Notify | None = None) -> TrainResult:
    """Train on ``training_data`` (a file :func:`mine_training_data` or ``ace mine`` wrote) and write what the gate
    promotes to ``output``: what ``ace train`` does. (:func:`ace_llamaindex.train` is one trainer, the full fine-tune,
    with no file, champion or gate choice around it.)

    ``method``: a registered trainer (``auto``: adapter, full fine-tune and their mixes, the best the gate calls
    better; ``full``; ``adapter``). ``config``: :class:`~ace_llamaindex.train.training.TrainConfig` (not modified);
    its ``seen_share`` left None takes the share the data measured (a feedback log). The champion, the model serving
    now, which every candidate must also beat: a ``champion`` folder ``ace train`` wrote, or the serving
    ``collection`` (at ``qdrant_path``/``qdrant_url``, or open as ``index``), whose documents then validate the gate.
    ``base_encoder``: the base model's encoder when it is not ``config.base_model`` (an endpoint:
    ``LlamaIndexEncoder(OpenAICompatibleEmbedding(...))``; the adapter trains over it, a fine-tune refuses it).
    Returns the :class:`~ace_llamaindex.train.training.TrainResult` (``promoted``, ``gate``, ``serving``, ``card``)."""
    from .atomic import check_output
    from .mine.mining import load_training_data, training_metadata
    from .plugins.manager import get
    from .train import distributed
    from .train.training import TrainConfig, detect_device

    output = check_output(output, "dir")
    trainer = get("trainers", method)
    main_rank = distributed.is_main()  # under a launcher rank 0 alone prints, judges and writes
    examples = load_training_data(training_data)
    config = copy.copy(config) if config is not None else TrainConfig()
    distributed.check_trainer(trainer, method)  # the adapter trains in one process: refused under a launcher
    distributed.start(detect_device(config.device))  # under torchrun: join the other processes (else nothing)
    measured = training_metadata(training_data).get("seen_share")
    if config.seen_share is None and isinstance(measured, dict) and measured.get("value") is not None:
        config.seen_share, config.seen_share_source = float(measured["value"]), measured.get("source")
        if main_rank:
            _say(notify, f"seen share {config.seen_share:.0%}: {config.seen_share_source}")
    elif config.seen_share is not None and config.seen_share_source is None:
        config.seen_share_source = "--seen-share"
    # rank 0 reads the champion (an embedded Qdrant folder opens in one process at a time) and passes it on; the
    # corpus serves the gate, which is rank 0's
    found, corpus = distributed.on_main(lambda: _champion(champion, collection, qdrant_path, qdrant_url, index),
                                        "reading the champion", shared=lambda found: (found[0], None))
    extra: dict[str, Any] = {"training_data": training_data, **({"champion": found} if found else {}),
                             **({"corpus": corpus} if corpus else {})}
    if found and main_rank:
        _say(notify, f"champion: {found.describe()}")
    if base_encoder is not None:  # every trainer gets it; one that fine-tunes weights refuses an endpoint (TrainResult says why)
        extra["base_encoder"] = base_encoder
    return trainer(examples, output, config, **extra)


def _champion(folder, collection, qdrant_path, qdrant_url, index=None):
    """The champion ``ace train`` judges against (a folder, a serving collection, or None) and, from a collection, its
    documents (id -> text): the gate then validates over the real corpus, not only the texts the training data holds."""
    from .index.engines import open_index
    from .serve.serving_record import serving_target
    from .train.champion import champion_from_collection, champion_from_folder

    if folder and collection:
        raise OptionError("give --champion FOLDER or --collection (the serving collection), not both")
    if (qdrant_path or qdrant_url) and not collection:
        raise OptionError("--qdrant-path/--qdrant-url say where --collection is; give --collection too")
    if index is not None and not collection:
        raise OptionError("index= is where collection= is: name the collection too")
    if folder:
        return champion_from_folder(folder), None
    if not collection:
        return None, None
    if index is None:
        path = None if qdrant_url else (qdrant_path or "qdrant_data")
        if path is not None and not Path(path).is_dir():
            raise OptionError(f"--qdrant-path {path}: no index there; run `ace index` first")
        index = open_index(collection, path=path, url=qdrant_url)
    champion = champion_from_collection(collection, index=index)
    target = index.sibling(serving_target(index, collection))
    return champion, {doc_id: text for doc_id, text, _ in target.iter_documents()}


def _collection_vector(index, encoder, collection: str, model: str | None, serving: dict | None) -> str | None:
    """The named vector to mine with in an existing collection, searched with ``encoder``'s query vectors: the one
    the model of those queries wrote (``model``: --model; None: the model ``serving``, the collection's serving
    record, names, else the base model). A collection whose vectors another model made is refused in one line:
    searching them with these queries would mine wrong negatives without a sound."""
    from .embeddings.models import DEFAULT_MODEL, vector_name
    from .records.plan import ServingPlan
    from .serve.served_model import model_embedding
    from .serve.serving_record import SERVING_KEY, VECTOR_KEY, serving_target
    from .serve.spaces import embedding_spaces, named_vector

    target = index.sibling(serving_target(index, collection))
    have, recorded = target.dense_vectors(), target.metadata().get(VECTOR_KEY)
    if not have:
        return None  # the miner's default; a dense miner that finds no such vector says which the collection has
    plan = serving if serving and model is None else ServingPlan(model or DEFAULT_MODEL).to_dict()
    embed = model_embedding(plan)
    own = named_vector(embed, embedding_spaces(embed)[0][0])
    if serving and model is None:
        if recorded in have:
            return recorded
        if own in have:
            return own
        raise OptionError(f"collection {collection!r} is served by {ServingPlan.from_dict(serving).model} (its "
                          f"{SERVING_KEY} record) but "
                          f"holds no vector of it ({own}; it has {sorted(have)}); pass --vector-name to search one anyway")
    if own in have:
        return own
    if vector_name(encoder.label) in have:  # the name the miner's own index gives the model
        return vector_name(encoder.label)
    if serving:  # --model given, and the collection is served by another model: its vectors are that model's
        served = ServingPlan.from_dict(serving).model
        raise OptionError(f"collection {collection!r} is served by {served} (its {SERVING_KEY} record), "
                          f"not by --model {model}: its vectors {sorted(have)} are not that model's; mine with --model "
                          f"{served} (or without --model)")
    if model is not None and len(have) == 1:  # a collection another tool wrote: --model says what made its vectors
        return next(iter(have))
    if model is None:
        raise OptionError(f"collection {collection!r} holds the dense vectors {sorted(have)}, none of them the base "
                          f"model's ({own}), and records no model serving it: pass --model with the model that indexed it "
                          "(or --vector-name to search one anyway)")
    return None  # the miner's default; a dense miner that finds no such vector says which the collection has
