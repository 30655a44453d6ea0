"""The fine-tuned model in LlamaIndex's own pipeline: IngestionPipeline -> AceQdrantVectorStore -> VectorStoreIndex
-> query engine. Re-running ingests nothing twice (the docstore de-duplicates); a changed memory replaces its chunks.

    python examples/vector_store.py [MODEL_DIR] "how do I roll back a deploy?"

Without an LLM configured the engine returns the retrieved memories (NoText synthesizer).
"""

from __future__ import annotations

import os
import sys

from llama_index.core import Document, VectorStoreIndex
from llama_index.core.ingestion import DocstoreStrategy, IngestionPipeline
from llama_index.core.llms import MockLLM
from llama_index.core.node_parser import SentenceSplitter
from llama_index.core.response_synthesizers.no_text import NoText
from llama_index.core.storage.docstore import SimpleDocumentStore

from ace_llamaindex import AceQdrantVectorStore, FineTunedEmbedding, load_dataset


def main() -> None:
    model = sys.argv[1] if len(sys.argv) > 2 else "runs/demo/model"
    question = sys.argv[-1] if len(sys.argv) > 1 else "how do I roll back a bad deploy?"
    if not os.path.isdir(model):
        print(f"{model} not found (run `make demo` first); using the bundled base model")
        model = "bundled:all-MiniLM-L6-v2"
    embed = FineTunedEmbedding(model_name=model)
    # default mode = the fusion saved with the model (fusion.json), dense without one
    store = AceQdrantVectorStore("memories", embed_model=embed)  # path="qdrant_data" to persist, url=... for a server
    memories = load_dataset()
    documents = [Document(id_=k, text=v) for k, v in memories.corpus.items()]
    pipeline = IngestionPipeline(transformations=[SentenceSplitter(), embed], vector_store=store,
                                 docstore=SimpleDocumentStore(), docstore_strategy=DocstoreStrategy.UPSERTS)
    pipeline.run(documents=documents)
    pipeline.run(documents=documents)  # nothing new: nothing written
    print(f"{store.client.count()} chunks for {len(documents)} documents; default mode: {store.fusion.summary()}")

    index = VectorStoreIndex.from_vector_store(store, embed_model=embed)
    engine = index.as_query_engine(llm=MockLLM(), similarity_top_k=3, response_synthesizer=NoText(llm=MockLLM()))
    for node in engine.query(question).source_nodes:
        print(f"[{node.score:.3f}] {node.node.ref_doc_id}: {node.node.get_content()}")


if __name__ == "__main__":
    main()
