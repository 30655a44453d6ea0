"""Fine-tune a sentence-transformers model on mined examples with MultipleNegativesRankingLoss.

Everything heavy is sentence-transformers' own: ``SentenceTransformerTrainer``, MNRL (CachedMNRL for batches
larger than memory allows), the no-duplicates batch sampler (several queries sharing one positive in a batch
would teach the model that the positive is wrong), and ``InformationRetrievalEvaluator`` on a held-out
validation split each epoch, with the best epoch kept. What this module adds: a budget that fits the data, the
split, the promotion gate (:mod:`~ace_llamaindex.train.promotion`), the fusion choice saved with the model
(:mod:`~ace_llamaindex.evaluate.fusion_selection`), atomic saving, resuming, and a training card that ties a model to its
data and configuration.

The budget rule (the defaults): learning rate 5e-5 (the setting behind the SciFact and StackFAQ gains; 2e-5 moved
nothing on small sets); at least ``MIN_STEPS`` optimizer steps, so a small dataset gets several epochs and a large
one a single pass (``epochs = clamp(ceil(MIN_STEPS / steps_per_epoch), 1, MAX_AUTO_EPOCHS)``), validated every
epoch, best epoch kept, stopping after 2 epochs without gain; validation on at least 100 queries (a quarter of
them for small sets), so the gate and the fusion choice have statistical power.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import math
import shutil
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from ..atomic import write_json
from ..data.examples import TrainingExample
from ..embeddings.encoding import longest_tokens, release_memory
from ..embeddings.models import open_model
from ..errors import OptionError
from . import distributed

log = logging.getLogger(__name__)
from .common import (  # noqa: F401 - shared by every trainer; imported from here too
    MIN_VAL_QUERIES,
    PRECISIONS,
    TrainConfig,
    TrainResult,
    _holds_model,
    check_base_encoder,
    detect_device,
    ensure_room_to_train,
    export_all,
    plan_validation,
    save_model,
    shared_result,
    split_by_query,
    validation_count,
)

MIN_STEPS = 25          # optimizer steps a run gets at least (1 epoch of SciFact/StackFAQ at batch 32 is 26-28)
MAX_AUTO_EPOCHS = 10
AUTO_PATIENCE = 2       # early stopping when epochs are chosen automatically
FULL_DEFAULTS = {"batch_size": 32, "learning_rate": 5e-5, "warmup_ratio": 0.1}


def full_defaults(config: TrainConfig) -> TrainConfig:
    """``config`` with the full fine-tune's defaults filled in where it says ``None``."""
    from dataclasses import replace

    return replace(config, **{k: v for k, v in FULL_DEFAULTS.items() if getattr(config, k) is None})


def auto_epochs(n_train: int, batch_size: int) -> int:
    """Epochs that give at least ``MIN_STEPS`` optimizer steps, between 1 and ``MAX_AUTO_EPOCHS``."""
    steps_per_epoch = max(1, math.ceil(n_train / batch_size))
    return max(1, min(MAX_AUTO_EPOCHS, math.ceil(MIN_STEPS / steps_per_epoch)))


def cpu_has_native_bf16() -> bool:
    """Whether this CPU computes bf16 natively (AVX512-BF16 or AMX). Elsewhere bf16 is emulated and slower."""
    try:
        flags = Path("/proc/cpuinfo").read_text()
    except OSError:  # not Linux: no cheap way to tell, stay with fp32
        return False
    return any(flag in flags.split() for flag in ("avx512_bf16", "amx_bf16"))


def choose_precision(requested: str, device: str) -> str:
    """``auto``: bf16 mixed precision (fp32 master weights, the trainer's ``bf16=True``) where the hardware runs
    bf16 natively: CUDA with bf16 support, or a CPU with AVX512-BF16/AMX (~1.45x faster steps on a 2-core EPYC);
    fp32 elsewhere (MPS, older CPUs). The promotion gate still judges the result."""
    if requested != "auto":
        return requested
    if device.startswith("cuda"):
        import torch

        return "bf16" if torch.cuda.is_bf16_supported() else "fp32"
    return "bf16" if device == "cpu" and cpu_has_native_bf16() else "fp32"


def to_hf_dataset(examples: list[TrainingExample], num_negatives: int | None = None):
    """Columns anchor, positive, negative_1..n (the n-tuple format MNRL takes); see :func:`training_datasets`."""
    return training_datasets(examples, num_negatives)[0]


def training_datasets(examples: list[TrainingExample], num_negatives: int | None = None):
    """``(dataset, counts)``: anchor, positive, negative_1..n with n the *largest* negative count (capped by
    ``num_negatives``), so one short example no longer strips hard negatives from every other.

    Every row needs the same columns: an example with fewer negatives repeats its own (counted as ``padded``);
    examples with none go to a second, pair-only dataset trained with in-batch negatives (``in_batch_only``);
    then a ``DatasetDict`` of both is returned, which the trainer samples batch by batch."""
    from datasets import Dataset, DatasetDict

    counts = [len(e.negatives) for e in examples]
    n = max(counts) if counts else 0
    if num_negatives is not None:
        n = min(n, num_negatives)
    with_neg = [e for e in examples if e.negatives]
    without = [e for e in examples if not e.negatives]
    padded = sum(1 for e in with_neg if len(e.negatives) < n)

    def table(rows: list[TrainingExample], width: int) -> Dataset:
        columns: dict[str, list[str]] = {"anchor": [e.query for e in rows], "positive": [e.positive for e in rows]}
        for j in range(width):
            columns[f"negative_{j + 1}"] = [e.negatives[j % len(e.negatives)] for e in rows]
        return Dataset.from_dict(columns)

    info = {"negatives_per_example": n, "padded": padded, "in_batch_only": len(without)}
    if not without or n == 0:
        return table(examples if n == 0 else with_neg, n), info
    if not with_neg:
        return table(without, 0), info
    return DatasetDict({"hard_negatives": table(with_neg, n), "in_batch_only": table(without, 0)}), info


def ir_evaluator(val: list[TrainingExample], name: str = "val"):
    """An ``InformationRetrievalEvaluator`` over the validation queries, whose corpus is every text they mention."""
    from sentence_transformers.sentence_transformer.evaluation import InformationRetrievalEvaluator

    from .promotion import validation_dataset

    ds = validation_dataset(val, val)
    return InformationRetrievalEvaluator(ds.queries, ds.corpus, {q: set(d) for q, d in ds.relevant_docs.items()}, name=name,
                                         write_csv=False, accuracy_at_k=[1, 5, 10], precision_recall_at_k=[1, 5, 10])


def _warmup(ratio: float) -> dict[str, float]:
    """Transformers v5 takes the warmup ratio as a float ``warmup_steps``; v4 has ``warmup_ratio``."""
    import transformers

    return {"warmup_steps": ratio} if int(transformers.__version__.split(".")[0]) >= 5 else {"warmup_ratio": ratio}


# Activation memory of a training step, per sequence: ACTIVATION_BYTES x layers x length x (hidden + heads x length)
# (hidden states and, growing with the square of the length, attention maps, with their gradients). Calibrated
# here: MNRL at batch 32 with 5 hard negatives on 256-token SciFact abstracts (224 MiniLM sequences: 6 layers,
# 384 hidden, 12 heads) peaked at 20.6 GB RSS on a CPU.
ACTIVATION_BYTES = 18
# A CachedMNRL step on a CPU rises above its mini-batch's activations by what glibc keeps of the blocks earlier
# mini-batches freed (blocks under its mmap threshold, which climbs to 32 MB, stay in the heap). On 256-token SciFact
# abstracts, fp32 (benchmarks/results/step-rise-scifact.json), the step rose up to 1.03x, 1.15x, 1.42x what the plan
# counted (estimate + headroom) at mini-batch 2, 4, 8, and 0.95x at 16 (its 50 MB attention maps are mapped and go
# back); bf16 at 8 as much (train-speed-memory-scifact.json). So on a CPU a mini-batch counts at this factor: the most
# those runs needed and a margin. Smaller mini-batches trained as fast there; giving freed blocks from 1 MB up back
# to the system met the estimate at 0.63x the speed (step-rise-scifact-mmap.json).
CPU_MINI_BATCH_FACTOR = 1.7
DEFAULT_MAX_MEMORY_GB = 2.0  # the peak a default CPU run aims at (--max-memory; issue #40)
FREE_SHARE = 0.8             # the default budget never exceeds this share of the memory free when training starts
HEADROOM_GB = 0.3            # besides the step: tokenized batches, the evaluator's encoding, allocator slack
# What `ace train` holds when it plans its step (measured: 0.64-0.73 GB, the model and the tokenized data loaded).
# The default budget gives a step at least what it gets in such a fresh process: a caller that already holds the
# 2 GB (a notebook, a test run, a server training in-process) cannot be brought under it by training slower, and
# shrinking the cached loss's mini-batch to a few texts per forward pass made its training 3-8x slower for nothing.
FRESH_PROCESS_GB = 0.75
_DEDICATED = False  # the process trains and does nothing else (`ace train`): everything it holds counts


@contextlib.contextmanager
def dedicated_process():
    """While inside, this process exists to train (``ace train`` runs its training inside): the default budget
    counts everything the process holds, not at most :data:`FRESH_PROCESS_GB` (on SciFact ``ace train`` held 0.88 GB
    when it planned, so that floor handed its step 0.13 GB the 2 GB did not have)."""
    global _DEDICATED
    before, _DEDICATED = _DEDICATED, True
    try:
        yield
    finally:
        _DEDICATED = before
OPTIMIZER_COPIES = 3         # gradients and AdamW's two moments, each the size of the weights (fp32)


MMAP_THRESHOLD_BYTES = 64 * 1024  # allocations from this size up are mapped, and unmapped when freed (glibc)


def return_freed_memory(device: str) -> bool:
    """On a CPU with glibc, serve large allocations (activations, their gradients) from their own memory maps, which
    go back to the system when freed. glibc's default threshold climbs to the size of the largest block freed (up to
    32 MB), after which freed activations stay in the heap as fragments the next step cannot always reuse: the demo's
    whole ``ace train`` run peaked at 2.10 GB with the default, 1.71 GB with a fixed 64 KiB threshold, but every
    fresh map is faulted in again and training ran about half as fast (docs: Training memory). So a fine-tune does
    this only when even its smallest step exceeds the budget. Process-wide, set once; a no-op (False) elsewhere."""
    import ctypes
    import ctypes.util
    import sys

    if not device.startswith("cpu") or not sys.platform.startswith("linux"):
        return False
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        return bool(libc.mallopt(-3, MMAP_THRESHOLD_BYTES))  # -3: M_MMAP_THRESHOLD (malloc.h)
    except (OSError, AttributeError):  # not glibc (musl, another allocator): leave it as it is
        return False


def _resident_bytes() -> int:
    import psutil

    return psutil.Process().memory_info().rss


def _free_bytes() -> int:
    import psutil

    return psutil.virtual_memory().available


def memory_budget(device: str, max_memory: float | None = None, model=None) -> dict[str, Any]:
    """What a training step's activations may take, in bytes (``activations``), and where that came from.

    On a CPU or MPS the whole process counts: ``max_memory`` GB (``--max-memory``; default
    :data:`DEFAULT_MAX_MEMORY_GB`, or :data:`FREE_SHARE` of the free memory when less is free, shared by the training
    processes on this machine) less what the process holds already (its RSS, the model loaded), the optimizer state
    to come (gradients and AdamW moments: 3x the weights) and :data:`HEADROOM_GB`; under the default, in a process
    that does more than train (outside :func:`dedicated_process`), never less than a fresh ``ace train`` process would get
    (:data:`FRESH_PROCESS_GB`). ``ACE_TRAIN_MEMORY_GB``, when set
    and no ``max_memory`` is given, is the activations' budget itself (the rule before ``--max-memory``). On CUDA:
    ``max_memory`` GB of the GPU, default half of it (one GPU per process)."""
    import os

    if device.startswith("cuda"):
        import torch

        total = torch.cuda.get_device_properties(torch.device(device)).total_memory
        budget = max_memory * 1e9 if max_memory else 0.5 * total
        return {"activations": budget, "max_memory_gb": round(budget / 1e9, 2),
                "source": "--max-memory" if max_memory else "half the GPU"}
    processes = distributed.local_world_size()
    if max_memory is None and os.environ.get("ACE_TRAIN_MEMORY_GB"):
        return {"activations": float(os.environ["ACE_TRAIN_MEMORY_GB"]) * 1e9 / processes,
                "source": "ACE_TRAIN_MEMORY_GB (activations)", "max_memory_gb": None}
    if max_memory is not None:
        limit, source = max_memory * 1e9, "--max-memory"
    else:
        free = FREE_SHARE * _free_bytes() / processes
        limit, source = (DEFAULT_MAX_MEMORY_GB * 1e9, "default") if free >= DEFAULT_MAX_MEMORY_GB * 1e9 else \
            (free, f"{FREE_SHARE:.0%} of the free memory")
    resident = _resident_bytes()
    weights = sum(p.numel() * 4 for p in model.parameters()) if model is not None else 0
    # under the default, what an in-process caller holds counts no more than a fresh `ace train` process would
    held = min(resident, FRESH_PROCESS_GB * 1e9) if source == "default" and not _DEDICATED else resident
    activations = limit - held - OPTIMIZER_COPIES * weights - HEADROOM_GB * 1e9
    return {"activations": max(0.0, activations), "max_memory_gb": round(limit / 1e9, 2), "source": source,
            "resident_gb": round(resident / 1e9, 2), "optimizer_gb": round(OPTIMIZER_COPIES * weights / 1e9, 2)}


def plan_memory(model, rows: list[TrainingExample], config: TrainConfig, negatives: int, device: str) -> dict[str, Any]:
    """Pick the loss so that a step fits the memory budget without changing what is learnt: plain MNRL when its
    activations fit, else CachedMNRL (GradCache: the same loss and gradients, activations bounded by the
    mini-batch, about a third more compute) with the largest mini-batch that fits. Explicit options win."""
    hf = getattr(model[0], "auto_model", None)
    cfg = getattr(hf, "config", None)
    layers, hidden, heads = (getattr(cfg, "num_hidden_layers", 12), getattr(cfg, "hidden_size", 768),
                             getattr(cfg, "num_attention_heads", 12))

    def per_sequence(length: int) -> float:
        return ACTIVATION_BYTES * layers * length * (hidden + heads * length)

    # a (mini-)batch is padded to its longest text, and with random batches most hold one of the longest
    q_len = longest_tokens(model, [e.query for e in rows])
    d_len = longest_tokens(model, [t for e in rows for t in (e.positive, *e.negatives)])
    plain = config.batch_size * (per_sequence(q_len) + (1 + negatives) * per_sequence(d_len))
    limits = memory_budget(device, config.max_memory, model)
    budget = limits["activations"]
    cached = config.cached_loss if config.cached_loss is not None else plain > budget
    # plain MNRL's bytes per sequence were calibrated on its own step; a mini-batch's on a CPU carry the heap's share
    per_text = per_sequence(d_len) * (CPU_MINI_BATCH_FACTOR if device.startswith("cpu") else 1.0)
    mini = config.mini_batch_size or max(1, min(config.batch_size, int(budget // per_text)))
    step = mini * per_text if cached else plain
    plan = {"loss": "CachedMultipleNegativesRankingLoss" if cached else "MultipleNegativesRankingLoss",
            "cached": bool(cached), "mini_batch_size": mini if cached else None,
            "estimated_step_gb": round(step / 1e9, 2), "plain_step_gb": round(plain / 1e9, 2),
            "budget_gb": round(budget / 1e9, 2), "longest_tokens": {"query": q_len, "document": d_len},
            **{k: v for k, v in limits.items() if k != "activations"}}
    plan["fits"] = step <= budget
    return plan


def describe_plan(plan: dict[str, Any]) -> str:
    """One line saying what the memory plan chose and why (``ace train`` logs it; the card keeps the plan)."""
    limit = f"{plan['max_memory_gb']} GB ({plan['source']})" if plan.get("max_memory_gb") else plan["source"]
    held = f", {plan['resident_gb']} GB held + {plan['optimizer_gb']} GB optimizer state" if "resident_gb" in plan else ""
    loss = (f"CachedMNRL, mini-batch {plan['mini_batch_size']}" if plan["cached"] else "MNRL (plain)")
    line = (f"memory: budget {limit}{held}: {plan['budget_gb']} GB for a step's activations; {loss} "
            f"(estimated step {plan['estimated_step_gb']} GB, plain MNRL {plan['plain_step_gb']} GB)")
    if not plan["fits"]:
        line += ": even this exceeds the budget; expect a higher peak (raise --max-memory or lower --max-seq-length)"
    return line


def _loss(model, plan: dict[str, Any], gather: bool = False):
    """MNRL, or CachedMNRL per ``plan``; ``gather``: in-batch negatives from every process (data-parallel runs)."""
    from sentence_transformers.sentence_transformer.losses import (
        CachedMultipleNegativesRankingLoss,
        MultipleNegativesRankingLoss,
    )

    if plan["cached"]:
        return CachedMultipleNegativesRankingLoss(model, mini_batch_size=plan["mini_batch_size"], gather_across_devices=gather)
    return MultipleNegativesRankingLoss(model, gather_across_devices=gather)


def peak_memory(device: str) -> dict[str, float]:
    """Peak resident memory of this process (GB), and the peak CUDA allocation on a GPU."""
    import resource
    import sys

    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # KiB on Linux, bytes on macOS
    peak = {"rss_gb": round(rss / (1e9 if sys.platform == "darwin" else 1e6), 2)}
    if device.startswith("cuda"):
        import torch

        peak["cuda_gb"] = round(torch.cuda.max_memory_allocated() / 1e9, 2)
    return peak


@dataclass
class FineTuned:
    """A model just trained (in memory) and what its run recorded."""

    model: Any
    info: dict[str, Any]


def fine_tune(split, config: TrainConfig, checkpoints: Path, fingerprint: str) -> FineTuned:
    """Train ``config.base_model`` on ``split.train`` (validated each epoch on ``split.val``, best epoch kept);
    ``config`` has its defaults filled in (:func:`full_defaults`). Nothing is written but checkpoints.

    Under a launcher (torchrun, accelerate launch: :mod:`~ace_llamaindex.train.distributed`) every process calls it
    with the same data: DDP, ``config.batch_size`` per process. The no-duplicates sampler draws global batches of
    ``config.batch_size`` x processes, each split among the processes, and MNRL gathers the in-batch negatives of all
    of them: a step sees what one process's step with the global batch sees. Every process returns the same model."""
    try:
        import datasets  # noqa: F401 - sentence-transformers' trainer needs it: the [train] extra
    except ImportError:
        raise OptionError("training needs the [train] extra: pip install 'ace-llamaindex[train]'") from None
    from sentence_transformers import SentenceTransformerTrainer, SentenceTransformerTrainingArguments
    from sentence_transformers.sentence_transformer.training_args import BatchSamplers
    from transformers import EarlyStoppingCallback

    from .allocator import TrimHeapEachStep, bound_primitive_cache

    bound_primitive_cache()  # before the first bf16 step, when oneDNN reads it
    train_rows, val_rows = split.train, split.val
    if len(train_rows) < 2:
        raise OptionError(f"only {len(train_rows)} training example(s) after the validation split; need at least 2")
    processes = distributed.world_size()
    global_batch = config.batch_size * processes
    distributed.check_global_batch(len(train_rows), config.batch_size, processes)  # (ace train --nproc: checked before)
    device = distributed.start(detect_device(config.device))
    distributed.same_everywhere(fingerprint, "the training data, options and base model")
    precision = choose_precision(config.precision, device)
    epochs = config.epochs or auto_epochs(len(train_rows), global_batch)
    checkpointing = epochs > 1 or config.keep_checkpoints or config.resume
    patience = config.early_stopping_patience
    if patience is None and config.epochs is None and val_rows and epochs > AUTO_PATIENCE:
        patience = AUTO_PATIENCE

    model = open_model(config.base_model, device=device, trust_remote_code=config.trust_remote_code)
    if config.max_seq_length:
        model.max_seq_length = config.max_seq_length
    evaluator = ir_evaluator(val_rows) if val_rows else None
    metric = "eval_val_cosine_ndcg@10"
    baseline = evaluator(model) if evaluator and distributed.is_main() else {}  # only rank 0 writes the card
    train_dataset, negatives_info = training_datasets(train_rows, config.num_negatives)
    if negatives_info["padded"] or negatives_info["in_batch_only"]:
        log.warning("%d example(s) had fewer than %d hard negatives (their own repeated); %d had none (in-batch "
                    "negatives only)", negatives_info["padded"], negatives_info["negatives_per_example"],
                    negatives_info["in_batch_only"])
    memory = plan_memory(model, train_rows, config, negatives_info["negatives_per_example"], device)
    if not memory["fits"]:  # even the smallest step exceeds the budget: memory before speed
        memory["freed_memory_returned"] = return_freed_memory(device)
    log.warning("%s", describe_plan(memory))
    # Several processes: the sampler draws each global batch without duplicates (a text twice in a batch is a false
    # negative) and accelerate splits it among the processes (split_batches: every process holds a part of the same
    # batch, of the same dataset); the loss gathers every process's embeddings, so it sees the whole global batch.
    gather = processes > 1
    parallel = {"ddp_backend": distributed.backend_for(device), "accelerator_config": {"split_batches": True},
                "dataloader_drop_last": True} if gather else {}  # (sentence-transformers would set drop_last, and warn)

    args = SentenceTransformerTrainingArguments(
        output_dir=str(checkpoints),
        num_train_epochs=epochs,
        per_device_train_batch_size=global_batch,  # split among the processes (split_batches) when several
        per_device_eval_batch_size=config.batch_size,
        learning_rate=config.learning_rate,
        **_warmup(config.warmup_ratio),
        batch_sampler=BatchSamplers.NO_DUPLICATES,
        eval_strategy="epoch" if evaluator else "no",
        # A one-epoch run has no earlier epoch to fall back to or resume from: writing a checkpoint (model +
        # optimizer, ~270 MB for MiniLM) would only cost time, unless asked to keep them.
        save_strategy="epoch" if checkpointing else "no",
        save_total_limit=2,
        load_best_model_at_end=bool(evaluator) and checkpointing,
        metric_for_best_model=metric if evaluator else None,
        greater_is_better=True,
        logging_steps=max(1, len(train_rows) // global_batch // 4),
        report_to="none",
        seed=config.seed,
        use_cpu=device == "cpu",
        **parallel,
        bf16=precision == "bf16",
        disable_tqdm=False,
        **config.extra,
    )
    callbacks = [TrimHeapEachStep(), *([EarlyStoppingCallback(patience)] if patience and evaluator else [])]
    trainer = SentenceTransformerTrainer(model=model, args=args, train_dataset=train_dataset,
                                         loss=_loss(model, memory, gather), evaluator=evaluator, callbacks=callbacks)
    resume = distributed.on_main(lambda: _prepare_checkpoints(checkpoints, fingerprint, config.resume), "preparing checkpoints")
    if resume:
        log.warning("resuming from %s", resume)
    started = time.time()
    trainer.train(resume_from_checkpoint=str(resume) if resume else None)
    seconds = time.time() - started
    distributed.barrier()  # every process is done with the checkpoints before rank 0 goes on (and removes them)
    history = [
        {"epoch": h.get("epoch"), **{k.removeprefix("eval_val_"): v for k, v in h.items() if k.startswith("eval_val_")}}
        for h in trainer.state.log_history
        if metric in h
    ]
    info = {"epochs": epochs, "early_stopping_patience": patience, "device": device, "precision": precision,
            "negatives": negatives_info, "memory_plan": memory, "train_seconds": round(seconds, 1),
            "resumed_from_checkpoint": str(resume) if resume else None,
            "validation_before": {k.removeprefix("val_"): v for k, v in baseline.items()},
            "validation_per_epoch": history, "best_checkpoint": trainer.state.best_model_checkpoint,
            "best_metric": trainer.state.best_metric, "optimizer_steps": trainer.state.global_step}
    if processes > 1:
        info["data_parallel"] = distributed.note(config.batch_size, gather)
    model = trainer.model
    del trainer, evaluator, train_dataset  # the optimizer state, the loss's caches, the data: before the candidates
    release_memory()
    return FineTuned(model, info)


def train(examples: list[TrainingExample], output_dir: str | Path, config: TrainConfig | None = None,
          data_fingerprint: str | None = None, corpus: dict[str, str] | None = None,
          engine: str = "auto", base_encoder: Any = None, validation: list[TrainingExample] | None = None,
          champion: Any = None, training_data: str | Path | None = None) -> TrainResult:
    """Fine-tune ``config.base_model`` on ``examples`` and write a full sentence-transformers model to ``output_dir``.

    After training, the promotion gate compares the model with its base on the validation queries (over
    ``corpus`` when given, else over every text in the training data), deciding on the queries about documents no
    training query had; a model the gate does not call better never replaces an existing model at ``output_dir``
    unless ``config.force``. The fusion chosen on the same queries is written beside the model (``fusion.json``).
    The model is built in a scratch folder and swapped in at the end; an interrupted run leaves the previous model
    untouched. Checkpoints go to ``<output_dir>.checkpoints`` so a run can resume (``config.resume=True``).
    ``base_encoder``: the base model's encoder for the gate (default: ``config.base_model``, cached on disk);
    ``validation``: the validation examples to use instead of holding out queries of ``examples``.
    ``champion`` (:class:`~ace_llamaindex.train.champion.Champion`, what serves now): the model must be better than
    it too, judged on the same queries (its own validation queries included); ``training_data``: the file
    ``examples`` came from, named in the card so a later round can replay it. The setup and the judging are the
    trainer contract's (:mod:`~ace_llamaindex.train.contract`).
    """
    from ..embeddings.encoding import CachedEncoder
    from ..records.card import TrainingCard, run_fields
    from ..records.plan import HERE, ServingPlan
    from .contract import TrainerCall, judge, open_base, setup

    r = setup(TrainerCall(examples, Path(output_dir), config, data_fingerprint, corpus, engine, base_encoder, validation,
                          champion, training_data), full_defaults(config or TrainConfig()), fine_tunes=True)
    config, split, output_dir = r.options, r.split, r.call.output_dir
    tuned = fine_tune(split, config, r.checkpoints, run_fingerprint(examples, config))

    def judge_and_write() -> TrainResult:  # rank 0 alone under a launcher; the others wait (distributed.on_main)
        judged, verdict, fusion = None, None, None
        if split.val:
            tuned_encoder = CachedEncoder.from_model(tuned.model, label="finetuned")
            judged = judge(r, open_base(base_encoder, config), {"finetuned": tuned_encoder}, config.base_model)
            verdict = judged.selection.deciding("finetuned")
            fusion = r.choose_fusion(judged, tuned_encoder)
            log.info("%s", verdict.sentence())
        promoted = r.promotes(verdict, _holds_model(output_dir))
        info = dict(tuned.info)
        epochs, patience = info.pop("epochs"), info.pop("early_stopping_patience")
        plan = ServingPlan(HERE)  # HERE: this folder
        card = TrainingCard(
            method="full", base_model=config.base_model,
            config={**asdict(config), "epochs": epochs, "early_stopping_patience": patience},
            data_fingerprint=data_fingerprint, train_examples=len(split.train), val_examples=len(split.val),
            data_checks=split.checks, **run_fields(info), peak_memory=peak_memory(info["device"]), promoted=promoted,
            serving=plan.to_dict(), fusion=fusion.to_dict() if fusion else None, training_data=r.data_refs())
        r.record(card, judged, "finetuned", split.train)
        if promoted:
            save_model(tuned.model, output_dir, card, fusion)
        if not config.keep_checkpoints:
            shutil.rmtree(r.checkpoints, ignore_errors=True)
        if promoted:
            export_all(output_dir, config.exports, judged.val_set if judged else None)
        return r.result(card, verdict, fusion, plan)

    return distributed.on_main(judge_and_write, "judging and writing the model", shared=shared_result)


train.data_parallel = True  # runs under torchrun / accelerate launch (see distributed)


RUN_FILE = "ace_run.json"
# Not part of a run's identity: how it is resumed or kept, where it runs, and how long it goes on (a run may be
# extended by more epochs).
_NOT_IN_FINGERPRINT = {"resume", "keep_checkpoints", "force", "device", "epochs", "early_stopping_patience"}


def run_fingerprint(examples: list[TrainingExample], config: TrainConfig) -> str:
    """What makes a run the same run: its data, its configuration and the base model's weights."""
    from ..embeddings.models import model_fingerprint

    digest = hashlib.sha256()
    for e in examples:
        digest.update(json.dumps([e.query, e.positive, e.negatives]).encode())
    settings = {k: v for k, v in asdict(config).items() if k not in _NOT_IN_FINGERPRINT}
    if distributed.world_size() > 1:  # the batch is per process: more processes, another run (and its checkpoints)
        settings["world_size"] = distributed.world_size()
    digest.update(json.dumps(settings, sort_keys=True, default=str).encode())
    digest.update(model_fingerprint(config.base_model).encode())
    return digest.hexdigest()[:16]


def _prepare_checkpoints(folder: Path, fingerprint: str, resume: bool) -> Path | None:
    """The checkpoint to resume from: only one of this very run (``ace_run.json``); a mismatch is refused. A checkpoint
    cut short while it was written (``kill -9``, power loss: no readable ``trainer_state.json``, which the trainer
    writes last, or no model weights) is removed with a warning and the run resumes from the last complete one."""
    import re

    def step(path: Path) -> int:
        return int(path.name.rpartition("-")[2])

    def complete(path: Path) -> bool:
        try:
            json.loads((path / "trainer_state.json").read_text())
        except (OSError, ValueError):
            return False
        return any(path.rglob("*.safetensors")) or any(path.rglob("pytorch_model*.bin"))

    found = sorted((p for p in folder.iterdir() if p.is_dir() and re.fullmatch(r"checkpoint-\d+", p.name)), key=step) \
        if folder.is_dir() else []
    if resume and found:
        stamp = folder / RUN_FILE
        theirs = json.loads(stamp.read_text()).get("fingerprint") if stamp.exists() else None
        if theirs != fingerprint:
            raise OptionError(f"--resume: the checkpoints in {folder} belong to another run (different data, options or "
                              "base model); delete that folder or train without --resume")
        cut = [p for p in found if not complete(p)]
        kept = [p for p in found if p not in cut]
        if cut:
            log.warning("--resume: skipped and removed %d incomplete checkpoint(s) in %s (cut short while being written: "
                        "no trainer_state.json or no model weights): %s; %s", len(cut), folder,
                        ", ".join(p.name for p in cut),
                        f"resuming from {kept[-1].name}" if kept else "no complete checkpoint is left: training from the start")
            for p in cut:
                shutil.rmtree(p, ignore_errors=True)
        if kept:
            return kept[-1]
    shutil.rmtree(folder, ignore_errors=True)  # stale checkpoints of another run are never picked up by accident
    write_json(folder / RUN_FILE, {"fingerprint": fingerprint})
    return None


