"""Fine-tune a sentence-transformers model on mined examples with MultipleNegativesRankingLoss.

Everything heavy is sentence-transformers' own: ``SentenceTransformerTrainer``, MNRL (CachedMNRL for batches
larger than memory allows), the no-duplicates batch sampler (several queries sharing one positive in a batch
would teach the model that the positive is wrong), and ``InformationRetrievalEvaluator`` on a held-out
validation split each epoch, with the best epoch kept. What this module adds: the split, atomic saving,
resuming, and a training card that ties a model to its data and configuration.
"""

from __future__ import annotations

import json
import logging
import random
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from .atomic import atomic_directory, write_json
from .errors import OptionError
from .mining import TrainingExample
from .models import DEFAULT_MODEL, open_model

log = logging.getLogger(__name__)
CARD_NAME = "ace_training_card.json"


@dataclass
class TrainConfig:
    """Training options. ``cached_loss=None`` picks CachedMNRL when ``batch_size > mini_batch_size``."""

    base_model: str = DEFAULT_MODEL
    epochs: int = 1
    batch_size: int = 32
    learning_rate: float = 2e-5
    warmup_ratio: float = 0.1
    max_seq_length: int | None = None
    num_negatives: int | None = None       # use at most this many hard negatives per example (None: all)
    val_fraction: float = 0.1               # queries held out for the per-epoch IR evaluator (0: no validation)
    early_stopping_patience: int | None = None
    cached_loss: bool | None = None
    mini_batch_size: int = 32
    seed: int = 42
    device: str | None = None               # None: CUDA, then MPS, then CPU
    resume: bool = False                    # continue from the last checkpoint in <output>.checkpoints
    extra: dict[str, Any] = field(default_factory=dict)  # passed through to SentenceTransformerTrainingArguments

    def validate(self) -> None:
        for name in ("epochs", "batch_size", "mini_batch_size"):
            if getattr(self, name) < 1:
                raise OptionError(f"{name} must be at least 1, got {getattr(self, name)}")
        if self.batch_size < 2:
            raise OptionError("batch_size must be at least 2: MNRL needs in-batch negatives")
        if not 0 < self.learning_rate < 1:
            raise OptionError(f"learning_rate must be between 0 and 1, got {self.learning_rate}")
        if not 0 <= self.val_fraction < 1:
            raise OptionError(f"val_fraction must be in [0, 1), got {self.val_fraction}")
        if self.early_stopping_patience is not None and self.val_fraction == 0:
            raise OptionError("early stopping needs a validation split (val_fraction > 0)")


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


def split_by_query(examples: list[TrainingExample], val_fraction: float, seed: int) -> tuple[list[TrainingExample], list[TrainingExample]]:
    """Hold out whole queries (all their examples), so validation never sees a training query."""
    queries = sorted({e.query for e in examples})
    if val_fraction == 0 or len(queries) < 4:
        return examples, []
    random.Random(seed).shuffle(queries)
    held = set(queries[: max(2, round(len(queries) * val_fraction))])
    return [e for e in examples if e.query not in held], [e for e in examples if e.query in held]


def to_hf_dataset(examples: list[TrainingExample], num_negatives: int | None = None):
    """A ``datasets.Dataset`` with columns anchor, positive, negative_1..n (the n-tuple format MNRL takes).

    Every row needs the same number of columns, so n is the smallest negative count (capped by ``num_negatives``).
    """
    from datasets import Dataset

    n = min(len(e.negatives) for e in examples)
    if num_negatives is not None:
        n = min(n, num_negatives)
    columns: dict[str, list[str]] = {"anchor": [e.query for e in examples], "positive": [e.positive for e in examples]}
    for j in range(n):
        columns[f"negative_{j + 1}"] = [e.negatives[j] for e in examples]
    return Dataset.from_dict(columns)


def ir_evaluator(val: list[TrainingExample], name: str = "val"):
    """An ``InformationRetrievalEvaluator`` over the validation queries, whose corpus is every text they mention."""
    from sentence_transformers.sentence_transformer.evaluation import InformationRetrievalEvaluator

    corpus: dict[str, str] = {}
    ids: dict[str, str] = {}

    def doc_id(text: str) -> str:
        if text not in ids:
            ids[text] = f"d{len(ids)}"
            corpus[ids[text]] = text
        return ids[text]

    queries: dict[str, str] = {}
    relevant: dict[str, set[str]] = {}
    qids: dict[str, str] = {}
    for e in val:
        qid = qids.setdefault(e.query, f"q{len(qids)}")
        queries[qid] = e.query
        relevant.setdefault(qid, set()).add(doc_id(e.positive))
        for neg in e.negatives:
            doc_id(neg)
    return InformationRetrievalEvaluator(queries, corpus, relevant, name=name, write_csv=False,
                                         accuracy_at_k=[1, 5, 10], precision_recall_at_k=[1, 5, 10])


@dataclass
class TrainResult:
    """Where the model went and what the validation said."""

    model_dir: Path
    card: dict[str, Any]


def _warmup(ratio: float) -> dict[str, float]:
    """Transformers v5 takes the warmup ratio as a float ``warmup_steps``; v4 has ``warmup_ratio``."""
    import transformers

    return {"warmup_steps": ratio} if int(transformers.__version__.split(".")[0]) >= 5 else {"warmup_ratio": ratio}


def _loss(model, config: TrainConfig):
    from sentence_transformers.sentence_transformer.losses import (
        CachedMultipleNegativesRankingLoss,
        MultipleNegativesRankingLoss,
    )

    cached = config.cached_loss if config.cached_loss is not None else config.batch_size > config.mini_batch_size
    if cached:
        return CachedMultipleNegativesRankingLoss(model, mini_batch_size=config.mini_batch_size)
    return MultipleNegativesRankingLoss(model)


def train(examples: list[TrainingExample], output_dir: str | Path, config: TrainConfig | None = None,
          data_fingerprint: str | None = None) -> TrainResult:
    """Fine-tune ``config.base_model`` on ``examples`` and write a full sentence-transformers model to ``output_dir``.

    The model is built in a scratch folder and swapped in at the end; if training is interrupted, a model that
    was already at ``output_dir`` is left untouched. Checkpoints go to ``<output_dir>.checkpoints`` so a run
    can resume (``config.resume=True``).
    """
    from sentence_transformers import SentenceTransformerTrainer, SentenceTransformerTrainingArguments
    from sentence_transformers.sentence_transformer.training_args import BatchSamplers
    from transformers import EarlyStoppingCallback

    config = config or TrainConfig()
    config.validate()
    if not examples:
        raise OptionError("no training examples")
    output_dir = Path(output_dir)
    checkpoints = output_dir.with_name(output_dir.name + ".checkpoints")
    device = detect_device(config.device)
    train_rows, val_rows = split_by_query(examples, config.val_fraction, config.seed)
    if len(train_rows) < 2:
        raise OptionError(f"only {len(train_rows)} training example(s) after the validation split; need at least 2")

    model = open_model(config.base_model, device=device)
    if config.max_seq_length:
        model.max_seq_length = config.max_seq_length
    evaluator = ir_evaluator(val_rows) if val_rows else None
    metric = "eval_val_cosine_ndcg@10"
    baseline = evaluator(model) if evaluator else {}

    args = SentenceTransformerTrainingArguments(
        output_dir=str(checkpoints),
        num_train_epochs=config.epochs,
        per_device_train_batch_size=config.batch_size,
        per_device_eval_batch_size=config.batch_size,
        learning_rate=config.learning_rate,
        **_warmup(config.warmup_ratio),
        batch_sampler=BatchSamplers.NO_DUPLICATES,
        eval_strategy="epoch" if evaluator else "no",
        save_strategy="epoch",
        save_total_limit=2,
        load_best_model_at_end=bool(evaluator),
        metric_for_best_model=metric if evaluator else None,
        greater_is_better=True,
        logging_steps=max(1, len(train_rows) // config.batch_size // 4),
        report_to="none",
        seed=config.seed,
        use_cpu=device == "cpu",
        disable_tqdm=False,
        **config.extra,
    )
    callbacks = [EarlyStoppingCallback(config.early_stopping_patience)] if config.early_stopping_patience else []
    trainer = SentenceTransformerTrainer(
        model=model,
        args=args,
        train_dataset=to_hf_dataset(train_rows, config.num_negatives),
        loss=_loss(model, config),
        evaluator=evaluator,
        callbacks=callbacks,
    )
    resume = config.resume and checkpoints.exists() and any(checkpoints.glob("checkpoint-*"))
    started = time.time()
    trainer.train(resume_from_checkpoint=True if resume else None)
    seconds = time.time() - started

    history = [
        {"epoch": h.get("epoch"), **{k.removeprefix("eval_val_"): v for k, v in h.items() if k.startswith("eval_val_")}}
        for h in trainer.state.log_history
        if metric in h
    ]
    card = {
        "base_model": config.base_model,
        "config": asdict(config),
        "device": device,
        "data_fingerprint": data_fingerprint,
        "train_examples": len(train_rows),
        "val_examples": len(val_rows),
        "train_seconds": round(seconds, 1),
        "resumed_from_checkpoint": bool(resume),
        "validation_before": {k.removeprefix("val_"): v for k, v in baseline.items()},
        "validation_per_epoch": history,
        "best_checkpoint": trainer.state.best_model_checkpoint,
        "best_metric": trainer.state.best_metric,
    }
    with atomic_directory(output_dir) as scratch:
        trainer.model.save(str(scratch))
        write_json(scratch / CARD_NAME, card)
    return TrainResult(model_dir=output_dir, card=card)


def read_card(model_dir: str | Path) -> dict[str, Any] | None:
    """The training card of a model we trained, or None."""
    path = Path(model_dir) / CARD_NAME
    return json.loads(path.read_text()) if path.exists() else None
