"""What every trainer shares: the options (:class:`TrainConfig`), the result (:class:`TrainResult`), the device,
the validation split, room to train, and saving a model atomically. The full fine-tune is
:mod:`~ace_llamaindex.train.training`; the query adapter :mod:`~ace_llamaindex.train.adapter`; ``--method auto``
:mod:`~ace_llamaindex.train.method_selection`."""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..atomic import atomic_directory, write_json
from ..data.examples import TrainingExample
from ..embeddings.card import CARD_NAME
from ..embeddings.models import DEFAULT_MODEL
from ..errors import OptionError

log = logging.getLogger(__name__)
MIN_VAL_QUERIES = 100   # validation queries wanted for the gate (a quarter of the queries on small sets)
PRECISIONS = ("auto", "fp32", "bf16")


@dataclass
class TrainConfig:
    """Training options. ``None`` means the method's own default (the full fine-tune's are ``FULL_DEFAULTS``;
    the adapter's are :class:`~ace_llamaindex.train.adapter.AdapterConfig`'s). ``cached_loss=None`` picks CachedMNRL
    when the plain loss would not fit the memory budget (see :func:`plan_memory`)."""

    base_model: str = DEFAULT_MODEL
    epochs: int | None = None               # None: enough epochs for MIN_STEPS optimizer steps (see module doc)
    batch_size: int | None = None           # full fine-tune: 32
    learning_rate: float | None = None      # full fine-tune: 5e-5
    warmup_ratio: float | None = None       # full fine-tune: 0.1
    max_seq_length: int | None = None
    num_negatives: int | None = None       # use at most this many hard negatives per example (None: all)
    val_fraction: float | None = None       # queries held out for validation and the gate (None: auto; 0: none)
    # The share of future queries expected to ask about documents training queries had. None (0): new documents,
    # the unseen-document validation queries decide. `ace pipeline` sets it to its test queries' share.
    seen_share: float | None = None
    seen_share_source: str | None = None    # where seen_share came from (e.g. measured in a feedback log), for the card
    early_stopping_patience: int | None = None  # None: AUTO_PATIENCE when epochs are automatic
    force: bool = False                     # write the model even when the gate does not call it better
    continual: bool = True                  # with a champion: also candidates that continue it on new + replayed data
    cached_loss: bool | None = None
    mini_batch_size: int | None = None      # None: as large as the memory budget allows (see plan_memory)
    seed: int = 42
    device: str | None = None               # None: CUDA, then MPS, then CPU
    trust_remote_code: bool = False         # run code shipped with the base model, wherever it is opened
    precision: str = "auto"                 # auto | fp32 | bf16 (auto: bf16 where the hardware has it, see choose_precision)
    resume: bool = False                    # continue from the last checkpoint in <output>.checkpoints (same run only)
    keep_checkpoints: bool = False          # keep <output>.checkpoints after a finished run
    exports: list[str] = field(default_factory=list)  # after promotion: onnx, onnx-int8, openvino, openvino-int8
    extra: dict[str, Any] = field(default_factory=dict)  # passed through to SentenceTransformerTrainingArguments

    def validate(self) -> None:
        for name in ("epochs", "batch_size", "mini_batch_size", "max_seq_length"):
            value = getattr(self, name)
            if value is not None and value < 1:
                raise OptionError(f"{name} must be at least 1, got {value}")
        if self.batch_size is not None and self.batch_size < 2:
            raise OptionError("batch_size must be at least 2: MNRL needs in-batch negatives")
        if self.learning_rate is not None and not 0 < self.learning_rate < 1:
            raise OptionError(f"learning_rate must be between 0 and 1, got {self.learning_rate}")
        if self.warmup_ratio is not None and not 0 <= self.warmup_ratio < 1:
            raise OptionError(f"warmup_ratio must be in [0, 1), got {self.warmup_ratio}")
        for name in ("num_negatives", "early_stopping_patience"):
            value = getattr(self, name)
            if value is not None and value < 0:
                raise OptionError(f"{name} must be at least 0, got {value}")
        if self.seen_share is not None and not 0 <= self.seen_share <= 1:
            raise OptionError(f"seen_share must be in [0, 1], got {self.seen_share}")
        if self.val_fraction is not None and not 0 <= self.val_fraction < 1:
            raise OptionError(f"val_fraction must be in [0, 1), got {self.val_fraction}")
        bad = sorted(set(self.exports) - {"onnx", "onnx-int8", "openvino", "openvino-int8"})
        if bad:
            raise OptionError(f"exports must be among onnx, onnx-int8, openvino, openvino-int8; got {bad}")
        if self.precision not in PRECISIONS:
            raise OptionError(f"precision must be one of {PRECISIONS}, got {self.precision!r}")
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
    card: dict[str, Any]
    gate: Any = None      # promotion.GateResult, or None without validation queries
    fusion: Any = None    # fusion_selection.FusionChoice, or None without validation queries
    promoted: bool = True
    # What serving needs: {"model": folder or id whose documents vectors are searched, "adapter": folder of a query
    # adapter or None, "reindex": whether the documents must be embedded again} (a serve.serving_record.ServingPlan
    # as a dict); None: the base model stays.
    serving: dict[str, Any] | None = None

    @property
    def outcome(self):
        """Promoted, the base stays, or an older model kept (:func:`~ace_llamaindex.train.outcome.outcome`)."""
        from .outcome import outcome

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


def save_model(model, output_dir: Path, card: dict[str, Any], fusion=None, extra=None) -> None:
    """Write the model, its card, its fusion and ``extra(folder)``'s files into ``output_dir``, atomically."""
    with atomic_directory(output_dir) as scratch:
        model.save(str(scratch))
        write_json(scratch / CARD_NAME, card)
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
