"""Drop the fine-tuned model and the hybrid retriever into a LlamaIndex query engine.

    python examples/query_engine.py [MODEL_DIR] "how do I roll back a deploy?"

Without an LLM configured, the engine returns the retrieved memories (NoText synthesizer). Set
OPENAI_API_KEY (and pip install llama-index-llms-openai) to get a synthesized answer instead.
Set ACE_BASELINE_URL (an OpenAI-compatible /v1 endpoint) to enable the fallback embedding.
"""

from __future__ import annotations

import os
import sys

from llama_index.core.llms import MockLLM
from llama_index.core.query_engine import RetrieverQueryEngine
from llama_index.core.response_synthesizers.no_text import NoText
from llama_index.core.schema import TextNode

from ace_llamaindex import FineTunedEmbedding, HybridQdrantRetriever, OpenAICompatibleEmbedding, load_dataset


def main() -> None:
    model = sys.argv[1] if len(sys.argv) > 2 else "runs/demo/model"
    question = sys.argv[-1] if len(sys.argv) > 1 else "how do I roll back a bad deploy?"
    if not os.path.isdir(model):
        print(f"{model} not found (run `make demo` first); using the bundled base model")
        model = "bundled:all-MiniLM-L6-v2"
    fallback = None
    if os.environ.get("ACE_BASELINE_URL"):
        fallback = OpenAICompatibleEmbedding(base_url=os.environ["ACE_BASELINE_URL"],
                                             model_name=os.environ.get("ACE_BASELINE_MODEL", "text-embedding"))
    embed = FineTunedEmbedding(model, fallback=fallback)
    retriever = HybridQdrantRetriever(embed, path=None, similarity_top_k=3)  # path="qdrant_data" to persist
    memories = load_dataset()  # the shipped demo memories
    retriever.add_nodes([TextNode(id_=k, text=v) for k, v in memories.corpus.items()], show_progress=False)

    if os.environ.get("OPENAI_API_KEY"):
        engine = RetrieverQueryEngine.from_args(retriever)
    else:
        engine = RetrieverQueryEngine(retriever=retriever, response_synthesizer=NoText(llm=MockLLM()))
    response = engine.query(question)
    if str(response).strip() and str(response) != "None":
        print(response)
    for node in response.source_nodes:
        print(f"[{node.score:.4f}] ({node.node.metadata['ace_served_by']}) {node.node.text}")


if __name__ == "__main__":
    main()
