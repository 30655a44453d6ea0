"""AceQdrantVectorStore as LlamaIndex uses a vector store: ingestion with de-duplication, the index, deletes."""

from __future__ import annotations

import pytest
from llama_index.core import Document, StorageContext, VectorStoreIndex
from llama_index.core.ingestion import DocstoreStrategy, IngestionPipeline
from llama_index.core.node_parser import SentenceSplitter
from llama_index.core.postprocessor import SimilarityPostprocessor
from llama_index.core.schema import QueryBundle
from llama_index.core.storage.docstore import SimpleDocumentStore
from llama_index.core.vector_stores.types import FilterOperator, MetadataFilter, MetadataFilters

from ace_llamaindex import FineTunedEmbedding
from ace_llamaindex.serve.vector_store import AceQdrantVectorStore


@pytest.fixture(scope="module")
def embed():
    return FineTunedEmbedding()


def documents(demo, n=30):
    ids = sorted(demo.corpus)[:n]
    return [Document(id_=f"doc-{i}", text=demo.corpus[i], metadata={"memory": i, "weight": 0.5 + k % 2}) for k, i in enumerate(ids)]


@pytest.mark.parametrize("engine", ["local", "edge"])
def test_ingestion_pipeline_lifecycle(demo, embed, engine, tmp_path):
    if engine == "edge":
        pytest.importorskip("qdrant_edge")
    store = AceQdrantVectorStore("mem", embed_model=embed, engine=engine, path=str(tmp_path / "q"))
    pipeline = IngestionPipeline(transformations=[SentenceSplitter(chunk_size=64, chunk_overlap=0), embed], vector_store=store,
                                 docstore=SimpleDocumentStore(), docstore_strategy=DocstoreStrategy.UPSERTS)
    docs = documents(demo)
    pipeline.run(documents=docs)
    count = store.client.count()
    assert count >= len(docs)
    pipeline.run(documents=docs)  # the same documents again: nothing changes
    assert store.client.count() == count
    changed = Document(id_=docs[0].id_, text="Completely new text about the deploy freeze window.", metadata=docs[0].metadata)
    pipeline.run(documents=[changed, *docs[1:]])  # a changed document replaces its old chunks
    chunks = store.get_nodes(filters=MetadataFilters(filters=[MetadataFilter(key="memory", value=docs[0].metadata["memory"])]))
    assert [c.get_content() for c in chunks] == ["Completely new text about the deploy freeze window."]

    index = VectorStoreIndex.from_vector_store(store, embed_model=embed)
    query = demo.queries[next(q for q in sorted(demo.queries) if demo.relevant_docs[q][0] == docs[5].metadata["memory"])]
    top = index.as_retriever(similarity_top_k=3).retrieve(query)
    assert top[0].node.ref_doc_id == docs[5].id_  # retrieved nodes carry their ref_doc_id
    doomed = store.get_nodes(filters=MetadataFilters(filters=[MetadataFilter(key="memory", value=docs[5].metadata["memory"])]))
    before = store.client.count()
    index.delete_ref_doc(docs[5].id_)  # removes exactly that document's chunks
    assert store.client.count() == before - len(doomed) and doomed
    assert all(n.node.ref_doc_id != docs[5].id_ for n in index.as_retriever(similarity_top_k=10).retrieve(query))


def test_modes_scores_and_filters(demo, embed):
    store = AceQdrantVectorStore("modes", embed_model=embed)
    index = VectorStoreIndex.from_documents(documents(demo, 60), storage_context=StorageContext.from_defaults(vector_store=store),
                                            embed_model=embed)
    qid = next(q for q in sorted(demo.queries) if demo.relevant_docs[q][0] in sorted(demo.corpus)[:60] and demo.difficulty(q) == "easy")
    want = demo.relevant_docs[qid][0]
    for mode in ("default", "sparse", "hybrid"):
        hits = index.as_retriever(vector_store_query_mode=mode, similarity_top_k=5, alpha=0.7 if mode == "hybrid" else None).retrieve(demo.queries[qid])
        assert want in [h.node.metadata["memory"] for h in hits], mode
    hybrid = index.as_retriever(vector_store_query_mode="hybrid", similarity_top_k=5).retrieve(demo.queries[qid])
    assert all(0 <= h.score <= 1 for h in hybrid), [h.score for h in hybrid]  # plain RRF, scaled: 1 = first in both lists
    kept = SimilarityPostprocessor(similarity_cutoff=0.3).postprocess_nodes(hybrid)
    assert want in [h.node.metadata["memory"] for h in kept]
    only = MetadataFilters(filters=[MetadataFilter(key="weight", value=1.5, operator=FilterOperator.EQ)])  # a float ==
    hits = index.as_retriever(similarity_top_k=10, filters=only).retrieve(demo.queries[qid])
    assert hits and all(h.node.metadata["weight"] == 1.5 for h in hits)
    # A query bundle's own embedding is used (HyDE-style transforms).
    other = embed.get_query_embedding(demo.corpus[want])
    hits = index.as_retriever(similarity_top_k=1).retrieve(QueryBundle("unrelated words", embedding=other))
    assert hits[0].node.metadata["memory"] == want
