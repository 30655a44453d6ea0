"""The production loop end to end, on the embedded default (Qdrant Edge in a folder, the bundled model):

serve -> log -> judge -> mine from the log -> train -> gate -> roll out (and back, if you must).

    python examples/production_loop.py                 # the shipped team memories, --method auto
    python examples/production_loop.py --method adapter --dataset ace_llamaindex/data/agent_memories.json

The "users" here are the dataset's labels: a shown memory is accepted when it answers the query, rejected
otherwise. In your application, call ``retriever.record_feedback(query_id, doc_id, relevant)`` when a user uses or
dismisses a result, or attach ``FeedbackHandler`` to mark what your query engine's answers were built from.
"""

from __future__ import annotations

import argparse
import os
import shutil
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


def main() -> None:
    from llama_index.core.schema import TextNode

    from ace_llamaindex import FineTunedEmbedding, HybridQdrantRetriever
    from ace_llamaindex.data.loading import DEMO_DATASET, load_dataset
    from ace_llamaindex.deploy.rollout import rollout
    from ace_llamaindex.embeddings.encoding import CachedEncoder
    from ace_llamaindex.mine.feedback_dataset import load_feedback, with_rejected_negatives
    from ace_llamaindex.mine.mining import HardNegativeMiner, MiningOptions
    from ace_llamaindex.plugins.manager import get
    from ace_llamaindex.serve.feedback import QUERY_ID
    from ace_llamaindex.serve.spaces import named_vector
    from ace_llamaindex.train.training import TrainConfig

    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--dataset", default=str(DEMO_DATASET))
    parser.add_argument("--out", default="runs/loop", type=Path)
    parser.add_argument("--method", default="auto")
    args = parser.parse_args()
    memories = load_dataset(args.dataset)
    shutil.rmtree(args.out, ignore_errors=True)  # a fresh run each time
    log = args.out / "feedback.jsonl"

    # 1. serve: today's model over the team's memories, logging what it shows
    retriever = HybridQdrantRetriever(FineTunedEmbedding(), path=str(args.out / "qdrant"), collection="memories",
                                      similarity_top_k=5, feedback_log=log)
    retriever.add_nodes([TextNode(id_=k, text=v) for k, v in memories.corpus.items()], show_progress=False)
    traffic, future = memories.split(0.25, seed=0, by="document")  # future: memories nobody has asked about yet
    # 2. judge: users accept what answers them and dismiss the rest
    for qid, results in zip(traffic.queries, retriever.batch_retrieve(list(traffic.queries.values())), strict=True):
        for node in results:
            retriever.record_feedback(node.node.metadata[QUERY_ID], node.node.node_id,
                                      node.node.node_id in traffic.relevant_docs[qid])
    # 3. mine from the log (what `ace mine --from-feedback` does)
    corpus = {doc_id: text for doc_id, text, _ in retriever.index.iter_documents()}
    feedback = load_feedback(log, corpus)
    base = CachedEncoder(show_progress=False)
    options = MiningOptions()
    miner = HardNegativeMiner("dense", base, index=retriever.index, options=options, show_progress=False,
                              using=named_vector(retriever.embed_model, retriever.embed_model.model_name))
    examples = with_rejected_negatives(miner.mine(feedback.dataset), feedback, corpus, options.num_negatives)
    print(f"log: {feedback.counts}; {len(examples)} training examples, "
          f"{sum(s == 'feedback' for e in examples for s in e.metadata['negative_sources'])} negatives users rejected")
    # 4. train and gate (what `ace train` does)
    result = get("trainers", args.method)(examples, args.out / "model", TrainConfig(), corpus=corpus, base_encoder=base)
    card = result.card
    print(f"gate: {card['gate']['verdict']} (method {card.get('chosen', card.get('method'))})")
    if card["gate"]["verdict"] != "better":
        print("nothing was better than the serving model: nothing to roll out")
        return
    # 5. roll out without downtime: the same retriever object serves the new model from its next query
    asked = next(iter(future.queries.values()))
    before = retriever.retrieve(asked)
    report = rollout(args.out / "model", "memories", index=retriever.index, show_progress=False)
    after = retriever.retrieve(asked)
    print(f"rollout: {report.documents} memories into {report.collection!r} in {report.encode_seconds} s, checks "
          f"{report.checks}; previous {report.previous!r} kept (`ace rollback --collection memories`)")
    print(f"{asked!r}\n  before: {[n.node.node_id for n in before[:3]]} ({before[0].node.metadata['ace_served_by']})\n"
          f"  after:  {[n.node.node_id for n in after[:3]]} ({after[0].node.metadata['ace_served_by']})\n"
          f"  answer: {future.relevant_docs[next(iter(future.queries))]}")


if __name__ == "__main__":
    main()
