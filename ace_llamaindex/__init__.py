"""ace-llamaindex: fine-tune embeddings on your own retrieval logs and serve them in LlamaIndex."""

from .data.dataset import QADataset
from .data.loading import load_dataset
from .deploy.rollout import rollback, rollout
from .embeddings.encoding import CachedEncoder, LlamaIndexEncoder
from .evaluate.evaluate import System, evaluate, standard_systems
from .evaluate.fusion_selection import select_fusion
from .evaluate.reporting import markdown_report
from .index.bm25 import BM25Encoder
from .index.fusion import convex_scores, rrf_fusion
from .index.fusion_choice import FusionChoice, load_fusion
from .mine.feedback_dataset import load_feedback
from .mine.mining import HardNegativeMiner, MiningOptions, load_training_data, save_training_data
from .serve.adapter_embedding import AdapterEmbedding
from .serve.embedding import FineTunedEmbedding
from .serve.feedback import FeedbackHandler, FeedbackLog, record_feedback
from .serve.http_embedding import OpenAICompatibleEmbedding
from .serve.retriever import HybridQdrantRetriever
from .serve.vector_store import AceQdrantVectorStore
from .train.adapter import AdapterConfig, train_adapter
from .train.training import TrainConfig, train

__version__ = "0.1.0"
__all__ = [
    "AceQdrantVectorStore", "AdapterConfig", "AdapterEmbedding", "BM25Encoder", "train_adapter", "CachedEncoder", "FineTunedEmbedding", "FusionChoice", "convex_scores", "load_fusion", "select_fusion", "HardNegativeMiner", "HybridQdrantRetriever", "LlamaIndexEncoder",
    "MiningOptions", "OpenAICompatibleEmbedding", "QADataset", "System", "TrainConfig", "evaluate", "load_dataset",
    "load_training_data", "markdown_report", "rrf_fusion", "save_training_data", "standard_systems", "train",
    "FeedbackHandler", "FeedbackLog", "record_feedback", "load_feedback", "rollout", "rollback",
]
