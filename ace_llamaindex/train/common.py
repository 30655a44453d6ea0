"""What every trainer shares: the options (:class:`TrainConfig`), the result (:class:`TrainResult`), the device,
the validation split, room to train, and saving a model atomically. The full fine-tune is
:mod:`~ace_llamaindex.train.training`; the query adapter :mod:`~ace_llamaindex.train.adapter`; ``--method auto``
:mod:`~ace_llamaindex.train.method_selection`."""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..atomic import atomic_directory
from ..data.examples import TrainingExample
from ..embeddings.models import DEFAULT_MODEL
from ..errors import OptionError
from ..options import check, documented, option
from ..records.card import CARD_NAME, TrainingCard

log = logging.getLogger(__name__)
MIN_VAL_QUERIES = 100   # validation queries wanted for the gate (a quarter of the queries on small sets)
PRECISIONS = ("auto", "fp32", "bf16")
EXPORT_TARGETS = ("onnx", "onnx-int8", "openvino", "openvino-int8")
# --method auto's refusal of data that leaves no validation queries (it chooses on them): by its processes and, before
# it starts them, by the launcher (distributed.check_before_launch)
AUTO_NEEDS_VALIDATION = ("--method auto chooses on validation queries and this data leaves none (val_fraction 0, or "
                         "fewer than 4 queries); use --method full or --method adapter")


# How each trainer takes a TrainConfig option (its field's roles; tests/test_train_options.py checks the code agrees):
# "adapter": the AdapterConfig field it becomes, BASE_ENCODER (the adapter's frozen base encoder uses it) or REFUSED
# (the adapter refuses it when given: train.adapter.ADAPTER_REFUSES); "full": USED (train.training reads it), CARD
# (recorded in the card's config) or why the full fine-tune has no use for it; "auto": EVERY (every candidate: the
# split, the gate, the base, the writing), FINE_TUNES (the fine-tune candidates; the adapter candidates keep their
# own defaults, as --method's help says), WINNER (done to the chosen candidate where it can be) or CARD.
BASE_ENCODER, REFUSED, USED, CARD, EVERY, FINE_TUNES, WINNER = (
    "base encoder", "refused", "used", "card", "every candidate", "fine-tunes", "winner")


def _option(help: str = "", *, adapter: str, full: str = USED, auto: str = EVERY, **declared: Any) -> dict:
    """A TrainConfig field's metadata: the option (:func:`~ace_llamaindex.options.option`) and how each trainer takes it."""
    return option(help, roles={"adapter": adapter, "full": full, "auto": auto}, **declared)


@documented
@dataclass
class TrainConfig:
    """Training options, each declared once here: its help, its ``ace train`` flag and its range (the command's options
    and :meth:`validate` are made from them). ``None`` means the method's own default (the full fine-tune's are
    ``train.training.FULL_DEFAULTS``; the adapter's :class:`~ace_llamaindex.train.adapter.AdapterConfig`'s).
    ``cached_loss=None`` picks CachedMNRL when the plain loss would not fit the memory budget (see ``plan_memory``)."""

    base_model: str = field(default=DEFAULT_MODEL, metadata=_option(
        "Model to fine-tune (default: bundled all-MiniLM-L6-v2); folder or HF id.", show_default=False, adapter=BASE_ENCODER))
    epochs: int | None = field(default=None, metadata=_option(
        "Default: enough epochs for at least 25 optimizer steps (1 to 10), validated each epoch, best kept, stopping "
        "after 2 epochs without gain", minimum=1, adapter="epochs", auto=FINE_TUNES))
    batch_size: int | None = field(default=None, metadata=_option(
        "Examples per optimizer step (per process when data-parallel).", minimum=2,
        reason="MNRL needs in-batch negatives", adapter="batch_size", auto=FINE_TUNES))
    learning_rate: float | None = field(default=None, metadata=_option(
        "The optimizer's learning rate.", minimum=0, maximum=1, min_open=True, max_open=True, adapter="learning_rate",
        auto=FINE_TUNES))
    warmup_ratio: float | None = field(default=None, metadata=_option(
        "Share of the steps over which the learning rate warms up.", minimum=0, maximum=1, max_open=True,
        adapter=REFUSED, auto=FINE_TUNES))
    max_seq_length: int | None = field(default=None, metadata=_option(
        "Tokens per text; longer texts are cut (default: the model's).", minimum=1, adapter=BASE_ENCODER))
    num_negatives: int | None = field(default=None, metadata=_option(
        "Use at most this many hard negatives per example.", flag="--train-negatives", minimum=0, adapter="num_negatives"))
    val_fraction: float | None = field(default=None, metadata=_option(
        "Queries held out for validation and the promotion gate (default: 10%, but at least 100 or a quarter of the "
        "queries), three quarters of them about documents no training query has.", minimum=0, maximum=1, max_open=True,
        adapter="val_fraction"))
    seen_share: float | None = field(default=None, metadata=_option(
        "Share of future queries expected to ask about documents training queries had: the gate weighs "
        "seen/unseen-document validation queries so (default: 0, new documents decide; `ace pipeline`: its test "
        "queries' share).", minimum=0, maximum=1, adapter="seen_share"))
    seen_share_source: str | None = field(default=None, metadata=_option(
        "Where seen_share came from (e.g. measured in a feedback log), for the card.",
        no_flag="set with seen_share by `ace pipeline` and the loop, where it was measured", adapter="seen_share_source",
        full=CARD, auto=CARD))
    early_stopping_patience: int | None = field(default=None, metadata=_option(
        "Patience in epochs", flag="--early-stopping", minimum=1, adapter="patience", auto=FINE_TUNES))
    cached_loss: bool | None = field(default=None, metadata=_option(
        "CachedMNRL (GradCache): the same loss in bounded memory (default: when the plain loss would not fit "
        "--max-memory).", negatable=True, adapter=REFUSED, auto=FINE_TUNES))
    mini_batch_size: int | None = field(default=None, metadata=_option(
        "Rows per forward pass with the cached loss (default: the most that fit the budget).", minimum=1,
        adapter=REFUSED, auto=FINE_TUNES))
    max_memory: float | None = field(default=None, metadata=_option(
        "Peak memory of a training process in GB: the loss and its mini-batch are fitted to it, and training says "
        "what it chose (default: 2 on a CPU, less when less is free; half the GPU on CUDA).", minimum=0, min_open=True,
        adapter=REFUSED, auto=FINE_TUNES))
    device: str | None = field(default=None, metadata=_option(
        "cpu, cuda, mps (default: auto).", adapter=REFUSED, auto=FINE_TUNES))
    precision: str = field(default="auto", metadata=_option(
        "auto: bf16 mixed precision where the hardware runs it natively (CUDA with bf16, CPUs with AVX512-BF16/AMX), "
        "else fp32.", choices=PRECISIONS, adapter=REFUSED, auto=FINE_TUNES))
    exports: list[str] = field(default_factory=list, metadata=_option(
        "After training, export for fast CPU inference (checked on the validation queries); repeatable.", flag="--export",
        choices=EXPORT_TARGETS, adapter=REFUSED, auto=WINNER))
    resume: bool = field(default=False, metadata=_option(
        "Continue from the last checkpoint of this same run (same data, options, base model).", adapter=REFUSED,
        auto=FINE_TUNES))
    keep_checkpoints: bool = field(default=False, metadata=_option(
        "Keep OUTPUT.checkpoints after a finished run (removed by default).", adapter=REFUSED, auto=FINE_TUNES))
    force: bool = field(default=False, metadata=_option(
        "Replace an existing model even when the gate does not call the new one better.", adapter="force"))
    continual: bool = field(default=True, metadata=_option(
        "With a champion (--champion/--collection): also train candidates that continue it (its adapter or weights) on "
        "the new data plus the data it was trained on (replay), judged by the same rule.", negatable=True,
        adapter="continual", full="not used: --method full trains one model, from the base (continual candidates are "
        "--method auto's and adapter's)"))
    seed: int = field(default=42, metadata=_option(
        no_flag="--seed is the command's own (`ace train`; `ace pipeline`'s seeds the mining too)", adapter="seed"))
    trust_remote_code: bool = field(default=False, metadata=_option(
        "Run code shipped with the base model, wherever it is opened.",
        no_flag="Python API only: the command line never runs code a model ships", adapter=BASE_ENCODER))
    extra: dict[str, Any] = field(default_factory=dict, metadata=_option(
        "Passed through to SentenceTransformerTrainingArguments.", no_flag="Python API only", adapter=REFUSED,
        auto=FINE_TUNES))

    def validate(self) -> None:
        """Each option within its declared range (one line naming it), then what the options ask of each other."""
        check(self)
        if self.early_stopping_patience is not None and self.val_fraction == 0:
            raise OptionError("early stopping needs a validation split (val_fraction > 0)")


def validation_count(n_queries: int, val_fraction: float | None) -> int:
    """How many queries to hold out: ``val_fraction`` of them, or (auto) 10% but at least 100 or a quarter."""
    if n_queries < 4 or val_fraction == 0:
        return 0
    if val_fraction is not None:
        return max(2, round(n_queries * val_fraction))
    return max(2, round(0.1 * n_queries), min(MIN_VAL_QUERIES, round(0.25 * n_queries)))


def detect_device(requested: str | None = None) -> str:
    """The device to train on: the requested one, else CUDA, MPS, CPU."""
    if requested:
        return requested
    import torch

    if torch.cuda.is_available():
        return "cuda"
    if getattr(torch.backends, "mps", None) and torch.backends.mps.is_available():
        return "mps"
    return "cpu"


def plan_validation(examples: list[TrainingExample], val_fraction: float | None, seed: int, seen_share: float = 0.0,
                    validation: list[TrainingExample] | None = None):
    """Hold out whole queries for validation and the gate, mostly about documents no training query has
    (:func:`~ace_llamaindex.train.validation_split.split_for_validation`); how many: :func:`validation_count`. The share
    of seen-document queries follows ``seen_share`` (the expected mix), between a quarter and three quarters."""
    from ..mine.mining import drop_positive_negatives
    from .validation_split import split_for_validation

    examples, poisoned = drop_positive_negatives(examples)
    if poisoned:
        log.warning("dropped %d hard negative(s) identical to their example's positive", poisoned)
    if validation is not None:  # the caller's own validation set (e.g. llama-index-finetuning's val_dataset)
        from .validation_split import ValidationSplit, unseen_queries

        split = ValidationSplit(examples, list(validation), unseen_queries(examples, validation))
    else:
        n_val = validation_count(len({e.query for e in examples}), val_fraction)
        split = split_for_validation(examples, n_val, seed, seen_share=min(0.75, max(0.25, seen_share)))
    split.checks["negatives_equal_to_positive"] = poisoned
    return split


def split_by_query(examples: list[TrainingExample], val_fraction: float | None, seed: int) -> tuple[list[TrainingExample], list[TrainingExample]]:
    """``(train, validation)`` rows of :func:`plan_validation`: validation never sees a training query."""
    split = plan_validation(examples, val_fraction, seed)
    return split.train, split.val


@dataclass
class TrainResult:
    """Where the model went (``promoted``: whether it was written) and what the validation said."""

    model_dir: Path
    card: TrainingCard    # a trainer plugin may give its card as a dict: it is read as a TrainingCard
    gate: Any = None      # records.gate.GateResult, or None without validation queries
    fusion: Any = None    # fusion_selection.FusionChoice, or None without validation queries
    promoted: bool = True
    # What serving needs: {"model": folder or id whose documents vectors are searched, "adapter": folder of a query
    # adapter or None, "reindex": whether the documents must be embedded again} (a records.plan.ServingPlan
    # as a dict); None: the base model stays.
    serving: dict[str, Any] | None = None

    def __post_init__(self) -> None:
        self.card = TrainingCard.from_dict(self.card, f"the training card of {self.model_dir}")

    @property
    def outcome(self):
        """Promoted, the base stays, or an older model kept (:func:`~ace_llamaindex.records.outcome.outcome`)."""
        from ..records.outcome import outcome

        return outcome(self)


def shared_result(result: TrainResult) -> TrainResult:
    """What the other processes of a data-parallel run return: rank 0's result without its live objects (the
    gate and the fusion, which stay in rank 0; the card has them as plain data)."""
    from dataclasses import replace

    return replace(result, gate=None, fusion=None)


def check_base_encoder(base_encoder: Any, config: TrainConfig) -> None:
    """A fine-tune trains the weights of ``config.base_model``, so a given base encoder must be that model: an
    endpoint (or another model) has no weights here to fine-tune, and the gate would compare against the wrong base."""
    from ..embeddings.models import content_fingerprint
    from ..embeddings.query_adapter import base_identity

    if base_encoder is not None and base_identity(base_encoder).get("fingerprint") != content_fingerprint(config.base_model):
        raise OptionError(f"the base encoder {getattr(base_encoder, 'label', base_encoder)!r} is not the model "
                          f"{config.base_model!r} a fine-tune trains (an endpoint has no weights to fine-tune): use "
                          "--method adapter, which trains over any encoder")


def ensure_room_to_train(config: TrainConfig, output_dir: Path) -> None:
    """A model is written beside the old one, and a checkpoint holds weights and optimizer state (3x the weights):
    refuse before training when the output's filesystem cannot hold them."""
    from ..atomic import ensure_free_space, folder_bytes
    from ..embeddings.models import resolve_model

    weights = folder_bytes(resolve_model(config.base_model))
    ensure_free_space(output_dir, weights * 4 + 16 * 2**20, "training (the new model and a checkpoint)")


def save_model(model, output_dir: Path, card: TrainingCard, fusion=None, extra=None) -> None:
    """Write the model, its card, its fusion and ``extra(folder)``'s files into ``output_dir``, atomically."""
    with atomic_directory(output_dir) as scratch:
        model.save(str(scratch))
        card.save(scratch / CARD_NAME)
        if fusion:
            fusion.save(scratch)
        if extra:
            extra(scratch)


def export_all(output_dir: Path, exports: list[str], check=None) -> None:
    """The exports asked for (``onnx``, ``openvino-int8``...), checked on ``check``'s queries."""
    from .exports import export_model

    for target in exports:
        backend, _, quantize = target.partition("-")
        export_model(output_dir, backend, quantize or None, check=check)


def _holds_model(path: Path) -> bool:
    """Is there a sentence-transformers model at ``path`` (one a new model would replace)?"""
    return (path / "modules.json").is_file() or (path / "config.json").is_file()
