"""ace-llamaindex: fine-tune embeddings on your own retrieval logs and serve them in LlamaIndex.

Every name below is imported on first use (PEP 562), so ``from ace_llamaindex import HybridQdrantRetriever`` loads
the serving code and nothing of training, mining, evaluation or deployment.
"""

from __future__ import annotations

import importlib
import sys
import types
from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"

# name -> the module that defines it (relative to this package)
_EXPORTS: dict[str, str] = {
    "QADataset": ".data.dataset",
    "load_dataset": ".data.loading",
    "rollback": ".deploy.rollout",
    "rollout": ".deploy.rollout",
    "start_experiment": ".deploy.experiment",
    "experiment_status": ".deploy.experiment",
    "stop_experiment": ".deploy.experiment",
    "set_share": ".deploy.experiment",
    "experiment_session": ".serve.experiment_arms",
    "CachedEncoder": ".embeddings.encoding",
    "LlamaIndexEncoder": ".embeddings.encoding",
    "TrainingCard": ".records.card",
    "read_card": ".records.card",
    "System": ".evaluate.evaluate",
    "evaluate": ".evaluate.evaluate",
    "standard_systems": ".evaluate.evaluate",
    "select_fusion": ".evaluate.fusion_selection",
    "markdown_report": ".evaluate.reporting",
    "BM25Encoder": ".index.bm25",
    "convex_scores": ".index.fusion",
    "rrf_fusion": ".index.fusion",
    "FusionChoice": ".index.fusion_choice",
    "load_fusion": ".index.fusion_choice",
    "mine_feedback": ".loop",
    "mine_training_data": ".loop",
    "train_model": ".loop",
    "load_feedback": ".mine.feedback_dataset",
    "HardNegativeMiner": ".mine.mining",
    "MiningOptions": ".mine.mining",
    "load_training_data": ".mine.mining",
    "save_training_data": ".mine.mining",
    "hookimpl": ".plugins.hookspecs",
    "AdapterEmbedding": ".serve.adapter_embedding",
    "FineTunedEmbedding": ".serve.embedding",
    "FeedbackHandler": ".serve.feedback",
    "FeedbackLog": ".serve.feedback",
    "record_feedback": ".serve.feedback",
    "OpenAICompatibleEmbedding": ".serve.http_embedding",
    "HybridQdrantRetriever": ".serve.retriever",
    "AceQdrantVectorStore": ".serve.vector_store",
    "AdapterConfig": ".train.adapter",
    "train_adapter": ".train.adapter",
    "TrainConfig": ".train.training",
    "train": ".train.training",
}

__all__ = [
    "AceQdrantVectorStore", "AdapterConfig", "AdapterEmbedding", "BM25Encoder", "train_adapter", "CachedEncoder", "FineTunedEmbedding", "FusionChoice", "convex_scores", "load_fusion", "select_fusion", "HardNegativeMiner", "HybridQdrantRetriever", "LlamaIndexEncoder",
    "MiningOptions", "OpenAICompatibleEmbedding", "QADataset", "System", "TrainConfig", "evaluate", "load_dataset",
    "load_training_data", "markdown_report", "rrf_fusion", "save_training_data", "standard_systems", "train",
    "FeedbackHandler", "FeedbackLog", "record_feedback", "load_feedback", "rollout", "rollback",
    "hookimpl", "mine_feedback", "mine_training_data", "train_model",
    "start_experiment", "experiment_status", "stop_experiment", "set_share", "experiment_session",
    "TrainingCard", "read_card",
]

if TYPE_CHECKING:
    from .data.dataset import QADataset
    from .data.loading import load_dataset
    from .deploy.experiment import experiment_status, set_share, start_experiment, stop_experiment
    from .deploy.rollout import rollback, rollout
    from .embeddings.encoding import CachedEncoder, LlamaIndexEncoder
    from .evaluate.evaluate import System, evaluate, standard_systems
    from .evaluate.fusion_selection import select_fusion
    from .evaluate.reporting import markdown_report
    from .index.bm25 import BM25Encoder
    from .index.fusion import convex_scores, rrf_fusion
    from .index.fusion_choice import FusionChoice, load_fusion
    from .loop import mine_feedback, mine_training_data, train_model
    from .mine.feedback_dataset import load_feedback
    from .mine.mining import HardNegativeMiner, MiningOptions, load_training_data, save_training_data
    from .plugins.hookspecs import hookimpl
    from .records.card import TrainingCard, read_card
    from .serve.adapter_embedding import AdapterEmbedding
    from .serve.embedding import FineTunedEmbedding
    from .serve.experiment_arms import experiment_session
    from .serve.feedback import FeedbackHandler, FeedbackLog, record_feedback
    from .serve.http_embedding import OpenAICompatibleEmbedding
    from .serve.retriever import HybridQdrantRetriever
    from .serve.vector_store import AceQdrantVectorStore
    from .train.adapter import AdapterConfig, train_adapter
    from .train.training import TrainConfig, train


def __getattr__(name: str) -> Any:
    """Import an exported name's module on first use, and keep the name here."""
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(module, __name__), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))


class _Package(types.ModuleType):
    """``train`` and ``evaluate`` are exported functions and also subpackages. Importing a subpackage binds it on its
    parent; here that binding is skipped for these names, so ``ace_llamaindex.train`` stays the function (as when
    this package imported everything eagerly), whichever was imported first."""

    def __setattr__(self, name: str, value: Any) -> None:
        if name in _EXPORTS and isinstance(value, types.ModuleType):
            return
        super().__setattr__(name, value)


sys.modules[__name__].__class__ = _Package
