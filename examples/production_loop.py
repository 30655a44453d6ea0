"""The production loop end to end, on the embedded default (Qdrant Edge in a folder, the bundled model):

serve -> log -> judge -> mine from the log -> train -> gate -> roll out -> roll back.

    python examples/production_loop.py                 # the shipped team memories, --method auto
    python examples/production_loop.py --method adapter   # the query adapter only: under a minute

The "users" are the dataset's labels, acting as users do: each one looks at the five memories shown, uses the one
that answers the question (accepted) and dismisses the others (rejected). When none of the five answers it, the user
does not give up: they find the right memory elsewhere (browsing the runbook, asking a colleague) and tell the log
which one it was: ``retriever.record_feedback(query_id, doc_id, True)`` for a memory that was not shown. Without
that, the log only knows what the serving model already found: the queries it failed on (425 of the 900 here) have
no accepted memory and are dropped, and the gate could not tell the trained model from the base. In your
application, call ``retriever.record_feedback(query_id, doc_id, relevant)`` when a user uses or dismisses a result
or names the right one ("this is the page I needed"), or attach ``FeedbackHandler`` to mark what your query
engine's answers were built from.

A quarter of the memories is never asked about in the log: the future. The example measures how often the top
result answers their queries before the rollout, after it, and after the rollback (exactly as before). Training
judges every candidate against what the collection serves now (its champion: here the base model), weighing the
gate towards memories nobody asked about (``seen_share=0``: the future is new memories); the rollout refuses a
model not shown better than what serves, by that comparison in the training card (``deploy/evidence.py``). Nothing
better: nothing is rolled out.

Each step is a public function of ``ace_llamaindex``, the one the ``ace`` command of the same step runs:
``mine_feedback`` (``ace mine --from-feedback``), ``train_model`` (``ace train --collection``), ``rollout`` and
``rollback`` (``ace rollout``, ``ace rollback``). Here they are given the serving process's own open index
(``retriever.index``): an embedded Qdrant folder is one process's.
"""

from __future__ import annotations

import argparse
import os
import shutil
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


def main(argv: list[str] | None = None) -> dict:
    """Run the loop; returns what happened (``gate``, ``rolled_out``, ``rolled_back``, top-1 counts on the future
    memories ``before`` / ``after`` the rollout and ``after_rollback``, ``restored``: the rollback served exactly the
    results served before)."""
    from llama_index.core.schema import TextNode

    from ace_llamaindex import (
        FineTunedEmbedding,
        HybridQdrantRetriever,
        TrainConfig,
        load_dataset,
        mine_feedback,
        rollback,
        rollout,
        train_model,
    )

    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--dataset", default=None, help="a dataset path (default: the shipped team memories)")
    parser.add_argument("--out", default="runs/loop", type=Path)
    parser.add_argument("--method", default="auto")
    args = parser.parse_args(argv)
    memories = load_dataset(args.dataset)
    shutil.rmtree(args.out, ignore_errors=True)  # a fresh run each time
    log = args.out / "feedback.jsonl"
    happened = {"gate": None, "rolled_out": False, "rolled_back": False}

    # 1. serve: today's model over the team's memories, logging what it shows
    retriever = HybridQdrantRetriever(FineTunedEmbedding(), path=str(args.out / "qdrant"), collection="memories",
                                      similarity_top_k=5, feedback_log=log)
    retriever.add_nodes([TextNode(id_=k, text=v) for k, v in memories.corpus.items()], show_progress=False)
    traffic, future = memories.split(0.25, seed=0, by="document")  # future: memories nobody has asked about yet
    # 2. judge: users accept what answers them and dismiss the rest; when nothing shown answers, they find the right
    # memory elsewhere and say which it was
    found_elsewhere = 0
    for qid, results in zip(traffic.queries, retriever.batch_retrieve(list(traffic.queries.values())), strict=True):
        query_id, answers = results[0].node.metadata["ace_query_id"], set(traffic.relevant_docs[qid])
        for node in results:
            retriever.record_feedback(query_id, node.node.node_id, node.node.node_id in answers)
        if not answers & {node.node.node_id for node in results}:
            found_elsewhere += 1
            retriever.record_feedback(query_id, traffic.relevant_docs[qid][0], True)  # a memory that was not shown
    print(f"served {len(traffic.queries)} queries; for {found_elsewhere} of them no memory shown answered, and the user "
          "named the right one")
    # 3. mine from the log: `ace mine --from-feedback LOG --collection memories --test-fraction 0` (every judged
    # query trains; the future memories are the test here)
    mined = mine_feedback(log, args.out / "training_data.json", collection="memories", index=retriever.index,
                          test_fraction=0, show_progress=False)
    print(f"log: {mined.counts}; {len(mined.examples)} training examples, "
          f"{sum(s == 'feedback' for e in mined.examples for s in e.metadata['negative_sources'])} negatives users rejected")
    # 4. train and gate against what the collection serves: `ace train DATA -o OUT --collection memories --seen-share 0`
    result = train_model(mined.path, args.out / "model", method=args.method, config=TrainConfig(seen_share=0.0),
                         collection="memories", index=retriever.index)
    card = result.card
    happened["gate"] = card.gate["verdict"]
    print(f"gate: {card.gate['verdict']} (method {card.method_name})")
    if card.gate["verdict"] != "better":
        print("nothing was better than the serving model: nothing to roll out")
        return happened

    def top1(rows) -> tuple[list[tuple[str, ...]], int]:
        """Each future query's top results (ids), and how many have an answer first."""
        ids = [tuple(n.node.node_id for n in row) for row in rows]
        right = sum(bool(row) and row[0] in future.relevant_docs[q] for q, row in zip(future.queries, ids, strict=True))
        return ids, right

    asked = list(future.queries.values())
    before, happened["before"] = top1(retriever.batch_retrieve(asked))
    # 5. roll out without downtime: the same retriever object serves the new model from its next query
    report = rollout(args.out / "model", "memories", index=retriever.index, show_progress=False)
    happened["rolled_out"] = True
    after, happened["after"] = top1(retriever.batch_retrieve(asked))
    print(f"rollout: {report.documents} memories into {report.collection!r} in {report.encode_seconds} s, checks "
          f"{report.checks}; evidence: {report.evidence['reason']}")
    n = len(asked)
    print(f"future memories ({n} queries nobody asked before): top result right {happened['before']}/{n} before "
          f"({report.previous!r}), {happened['after']}/{n} after ({report.collection!r})")
    # 6. roll back (`ace rollback --collection memories`): the previous collection serves again, exactly
    left, back_to = rollback("memories", index=retriever.index)
    happened["rolled_back"] = True
    again, happened["after_rollback"] = top1(retriever.batch_retrieve(asked))
    happened["restored"] = again == before
    print(f"rollback: {left!r} -> {back_to!r}; top result right {happened['after_rollback']}/{n}; the results served "
          f"before the rollout are served again: {happened['restored']}")
    return happened


if __name__ == "__main__":
    main()
