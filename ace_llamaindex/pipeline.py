"""The whole job in one call: split, mine on the train queries, fine-tune, evaluate on held-out queries, report."""

from __future__ import annotations

from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from .data.dataset import QADataset
from .embeddings.encoding import CachedEncoder
from .errors import OptionError
from .evaluate.evaluate import EvalReport, compared_systems, evaluate
from .evaluate.reporting import write_reports
from .index.fusion_choice import load_fusion
from .mine.mining import MiningOptions, save_training_data
from .plugins.manager import components, get
from .records.card import TrainingCard
from .records.outcome import Outcome, outcome
from .serve.served_model import serving_encoder
from .train import distributed
from .train.training import TrainConfig


@dataclass
class PipelineResult:
    training_data: Path
    model_dir: Path
    report: EvalReport
    reports: dict[str, Path]
    card: TrainingCard | None = None  # the training card (also in the report, as data)


def seen_document_rate(train_set: QADataset, test_set: QADataset) -> float:
    """The share of ``test_set``'s queries whose relevant documents a ``train_set`` query also has."""
    trained = {d for q in train_set.queries for d in train_set.relevant_docs.get(q, [])}
    hits = [bool(set(test_set.relevant_docs.get(q, [])) & trained) for q in test_set.queries]
    return round(sum(hits) / len(hits), 3) if hits else 0.0


def run_pipeline(
    dataset: QADataset,
    out_dir: str | Path,
    *,
    miner: str = "dense",
    trainer: str = "auto",
    mining: MiningOptions | None = None,
    training: TrainConfig | None = None,
    test_fraction: float = 0.25,
    seed: int = 42,
    show_progress: bool = True,
    reporters: list[str] | None = None,
    engine: str = "auto",
    test_set: QADataset | None = None,
    split_by: str = "document",
    champion: Any = None,
) -> PipelineResult:
    """Hold out ``test_fraction`` of the queries (or use ``test_set``, e.g. a BEIR test split), mine + train on the
    rest, and compare base vs fine-tuned on the held-out queries (the corpus is shared, as a memory bank is).
    ``split_by="document"`` (default) holds out whole documents with all their queries, so the test measures
    memories no training query touched; ``"query"`` holds out random queries.

    Training holds out its own validation queries: they decide the best epoch, the promotion gate and the hybrid
    fusion saved with the model (``fusion.json``); the report shows that fusion on the test queries beside plain
    RRF, so it is visible whether BM25 helps. ``champion`` (:class:`~ace_llamaindex.train.champion.Champion`, the model
    serving now): candidates must beat it too, and continual candidates start from it."""
    out_dir = Path(out_dir)
    training = training or TrainConfig(seed=seed)
    mining = mining or MiningOptions(seed=seed)
    training.validate()  # fail before minutes of mining, not after
    mining.validate()
    if distributed.world_size() > 1:
        raise OptionError(f"the pipeline mines, trains and evaluates in one process, so it cannot run on "
                          f"{distributed.world_size()} (torchrun, accelerate launch): run `ace mine`, then `ace train` "
                          "on several processes (--nproc N), then `ace eval`")
    if test_set is None:
        try:
            train_set, test_set = dataset.split(test_fraction, seed, by=split_by)
        except ValueError as exc:
            raise OptionError(f"{dataset.source}: {exc}") from None
    else:
        train_set = dataset
    if training.seen_share is None:  # weigh the gate as the test is made: its share of queries about seen documents
        training = replace(training, seen_share=seen_document_rate(train_set, test_set))
    base = CachedEncoder(training.base_model, max_seq_length=training.max_seq_length, show_progress=show_progress,
                         trust_remote_code=training.trust_remote_code)
    examples = get("miners", miner)(encoder=base, options=mining, show_progress=show_progress, engine=engine).mine(train_set)
    data_path = save_training_data(examples, out_dir / "training_data.json", source=dataset.source, options=mining)
    result = get("trainers", trainer)(examples, out_dir / "model", training, data_fingerprint=train_set.fingerprint(),
                                      corpus=train_set.corpus, engine=engine, base_encoder=base, training_data=data_path,
                                      **({"champion": champion} if champion is not None else {}))
    if outcome(result) is Outcome.KEPT:  # an older model is at out_dir/model and was kept
        raise OptionError(f"{result.gate.sentence() if result.gate else 'not better'}; the model at {result.model_dir} was "
                          "kept (use --force to replace it)")
    finetuned = serving_encoder(result.serving, base, training.max_seq_length, show_progress) \
        if outcome(result) is Outcome.PROMOTED else None
    metrics: dict[str, Any] = {n: c.obj for n, c in components("metrics").items()}
    fusion = load_fusion(result.model_dir) if finetuned is not None else None
    systems, comparisons = compared_systems(base, finetuned, fusion=fusion)
    report = evaluate(test_set, systems, metrics=metrics, show_progress=show_progress, engine=engine, comparisons=comparisons)
    report.data["training_card"] = result.card.to_dict()
    report.data["fusion"] = fusion.to_dict() if fusion else None
    return PipelineResult(data_path, result.model_dir, report, write_reports(report, out_dir, reporters), result.card)
