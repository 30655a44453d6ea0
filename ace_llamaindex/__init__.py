"""ace-llamaindex: fine-tune embeddings on your own retrieval logs and serve them in LlamaIndex."""

from .dataset import QADataset
from .embedding import FineTunedEmbedding
from .encoding import CachedEncoder, LlamaIndexEncoder
from .evaluate import System, evaluate, standard_systems
from .feedback import FeedbackHandler, FeedbackLog, record_feedback
from .feedback_dataset import load_feedback
from .fusion import convex_scores, rrf_fusion
from .fusion_choice import FusionChoice, load_fusion
from .fusion_selection import select_fusion
from .adapter import AdapterConfig, train_adapter
from .adapter_embedding import AdapterEmbedding
from .bm25 import BM25Encoder
from .http_embedding import OpenAICompatibleEmbedding
from .loading import load_dataset
from .mining import HardNegativeMiner, MiningOptions, load_training_data, save_training_data
from .reporting import markdown_report
from .retriever import HybridQdrantRetriever
from .rollout import rollback, rollout
from .training import TrainConfig, train
from .vector_store import AceQdrantVectorStore

__version__ = "0.1.0"
__all__ = [
    "AceQdrantVectorStore", "AdapterConfig", "AdapterEmbedding", "BM25Encoder", "train_adapter", "CachedEncoder", "FineTunedEmbedding", "FusionChoice", "convex_scores", "load_fusion", "select_fusion", "HardNegativeMiner", "HybridQdrantRetriever", "LlamaIndexEncoder",
    "MiningOptions", "OpenAICompatibleEmbedding", "QADataset", "System", "TrainConfig", "evaluate", "load_dataset",
    "load_training_data", "markdown_report", "rrf_fusion", "save_training_data", "standard_systems", "train",
    "FeedbackHandler", "FeedbackLog", "record_feedback", "load_feedback", "rollout", "rollback",
]
