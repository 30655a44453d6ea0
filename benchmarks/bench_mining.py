"""`ace mine` (dense miner over embedded Qdrant) vs sentence-transformers' `mine_hard_negatives`, same model, same
options, same run, both from a cold start (corpus encoded by each). Also counts false negatives: mined negatives
that are labelled positives of a query sharing a positive with the anchor, or duplicates of one.

    python benchmarks/bench_mining.py scifact [--split train]
"""

from __future__ import annotations

import argparse
import tempfile

from common import dataset_dir, save, timed

from ace_llamaindex.data.beir import load_beir
from ace_llamaindex.embeddings.encoding import CachedEncoder
from ace_llamaindex.embeddings.models import load_model, resolve_model
from ace_llamaindex.mine.mining import HardNegativeMiner, MiningOptions, excluded_documents


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("dataset")
    parser.add_argument("--split", default="train")
    parser.add_argument("--negatives", type=int, default=5)
    parser.add_argument("--range-max", type=int, default=50)
    parser.add_argument("--relative-margin", type=float, default=0.05)
    parser.add_argument("--engine", default="auto", choices=["auto", "local", "edge"])
    args = parser.parse_args()
    ds = load_beir(dataset_dir(args.dataset), args.split)
    excluded = excluded_documents(ds)
    load_model(resolve_model(None))  # load once, outside both timings
    timings: dict[str, float] = {}

    with tempfile.TemporaryDirectory() as cache, timed(timings, "ours"):
        encoder = CachedEncoder(cache_dir=cache, batch_size=32)
        options = MiningOptions(num_negatives=args.negatives, range_max=args.range_max, relative_margin=args.relative_margin,
                                fill_random=False)
        ours = HardNegativeMiner("dense", encoder, options=options, engine=args.engine).mine(ds)
    ours_bad = sum(d in excluded[e.metadata["query_id"]] for e in ours for d in e.metadata["negative_ids"])
    ours_total = sum(len(e.negatives) for e in ours)

    from datasets import Dataset
    from sentence_transformers.util import mine_hard_negatives

    pairs = [(q, d) for q in ds.queries for d in ds.relevant_docs[q]]
    peer_input = Dataset.from_dict({"anchor": [ds.queries[q] for q, _ in pairs], "positive": [ds.corpus[d] for _, d in pairs]})
    with timed(timings, "sentence-transformers mine_hard_negatives"):
        peer = mine_hard_negatives(peer_input, load_model(resolve_model(None)), corpus=list(ds.corpus.values()),
                                   num_negatives=args.negatives, range_max=args.range_max, relative_margin=args.relative_margin,
                                   sampling_strategy="top", output_format="labeled-list", batch_size=32, verbose=False)
    ids_of_text: dict[str, set[str]] = {}
    for d, t in ds.corpus.items():
        ids_of_text.setdefault(t, set()).add(d)
    qid_of_text = {t: q for q, t in ds.queries.items()}
    peer_bad = peer_total = 0
    for row in peer:
        qid = qid_of_text[row["anchor"]]
        for text, label in zip(row["positive"], row["labels"], strict=True):  # labeled-list: the documents column keeps its name
            if label == 0:
                peer_total += 1
                peer_bad += bool(ids_of_text.get(text, set()) & excluded[qid])
    result = {
        "dataset": args.dataset, "split": args.split, "queries": len(ds.queries), "documents": len(ds.corpus),
        "options": {"num_negatives": args.negatives, "range_max": args.range_max, "relative_margin": args.relative_margin},
        "seconds": timings, "speed_ratio_ours_over_peer": round(timings["ours"] / timings["sentence-transformers mine_hard_negatives"], 3),
        "ours": {"negatives": ours_total, "false_negatives": ours_bad},
        "peer": {"negatives": peer_total, "false_negatives": peer_bad},
    }
    result["engine"] = args.engine
    save(f"mining-{args.dataset}-{args.split}-{args.engine}", result)
    print(result)


if __name__ == "__main__":
    main()
