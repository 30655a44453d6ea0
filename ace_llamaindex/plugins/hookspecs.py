"""Hook specifications: the plugin author's manual.

A plugin is a module (or object) with functions marked ``@hookimpl``, listed under the ``ace_llamaindex``
entry-point group of its distribution::

    [project.entry-points.ace_llamaindex]
    my_plugin = "my_package.plugin"

Each ``register_*`` hook receives a ``register(name, component, description="")`` callable. Components are then
chosen by name (``ace mine --miner NAME``, ``ace eval --metric NAME``...). A name registered twice keeps the
later one, so a plugin can replace a built-in on purpose. Built-ins use these same hooks.
"""

from __future__ import annotations

import pluggy

hookspec = pluggy.HookspecMarker("ace_llamaindex")
hookimpl = pluggy.HookimplMarker("ace_llamaindex")


@hookspec
def register_loaders(register):
    """Register dataset loaders: a :class:`ace_llamaindex.plugins.Loader` (``sniff(path) -> bool`` and
    ``load(path, **options) -> QADataset``)."""


@hookspec
def register_miners(register):
    """Register hard-negative miners: a factory ``(encoder, options: MiningOptions, index=None,
    show_progress=True, **kwargs) -> obj`` where ``obj.mine(dataset) -> list[TrainingExample]``. ``kwargs`` may
    carry ``engine`` ("local" or "edge") and ``using`` (the named dense vector the collection serves: a factory
    with the attribute ``dense = False``, one that searches sparse vectors alone, gets ``using=None``); ignore what you
    do not use."""


@hookspec
def register_trainers(register):
    """Register trainers (``ace train --method NAME``): ``(examples, output_dir, config: TrainConfig,
    data_fingerprint=None, corpus=None, engine="auto", base_encoder=None, validation=None, champion=None,
    training_data=None) -> TrainResult``, the call :class:`~ace_llamaindex.train.contract.TrainerCall` types.
    ``corpus`` (id -> text) is the real corpus for validation when known; ``base_encoder`` the base model's encoder
    (vectors cached by mining); ``validation`` examples to validate on instead of holding some out; ``champion``
    what serves now, which a candidate must beat; ``training_data`` the file the examples came from. A trainer may
    ignore ``corpus``, ``base_encoder`` and ``engine``, but must refuse a ``TrainConfig`` option it cannot use
    (``OptionError``). ``TrainResult.promoted`` says whether anything was written; ``TrainResult.serving`` what
    serving needs (``{"model", "adapter", "reindex"}``; None: the base stays), so no caller knows trainers by name."""


@hookspec
def register_metrics(register):
    """Register per-query ranking metrics: ``(ranked_doc_ids, relevant_ids: set) -> float``."""


@hookspec
def register_reporters(register):
    """Register report writers: ``(report: dict, path) -> Path``; the name is also the file suffix (``json``)."""


@hookspec
def register_engines(register):
    """Register index engines: an :class:`ace_llamaindex.index.engines.Engine` (``open(collection, path=, url=,
    api_key=, **kwargs) -> CorpusIndex``, ``available()``, ``holds(path, collection)``, ``serves_url``)."""


@hookspec
def register_commands(cli):
    """Add subcommands to the ``ace`` click group."""
