"""Fine-tune on a BEIR train split, evaluate on its test split, side by side with BM25, the base model,
base hybrid, and sentence-transformers' own recipe (mine_hard_negatives + MNRL) under the same budget.

    python benchmarks/bench_finetune.py scifact --quick     # shorter max_seq_length for training (~45 min on 2 CPU cores)
    python benchmarks/bench_finetune.py stackfaq-threads

Writes benchmarks/results/finetune-<dataset>[-quick].{json,md}. Never trains on the test split.
"""

from __future__ import annotations

import argparse
import shutil

from common import CACHE, RESULTS, dataset_dir, save, timed

from ace_llamaindex.data.beir import load_beir
from ace_llamaindex.embeddings.encoding import CachedEncoder
from ace_llamaindex.embeddings.models import resolve_model
from ace_llamaindex.evaluate.evaluate import System, evaluate
from ace_llamaindex.evaluate.fusion_selection import select_fusion
from ace_llamaindex.evaluate.reporting import markdown_report
from ace_llamaindex.mine.mining import HardNegativeMiner, MiningOptions
from ace_llamaindex.train.training import TrainConfig, detect_device, split_by_query, train


def st_recipe(train_set, out_dir, num_negatives, batch_size, epochs, max_seq_length, seed, timings):
    """sentence-transformers' documented recipe: mine_hard_negatives (relative_margin 0.05) + MNRL."""
    from datasets import Dataset
    from sentence_transformers import SentenceTransformer, SentenceTransformerTrainer, SentenceTransformerTrainingArguments
    from sentence_transformers.sentence_transformer.losses import MultipleNegativesRankingLoss
    from sentence_transformers.sentence_transformer.training_args import BatchSamplers
    from sentence_transformers.util import mine_hard_negatives

    model = SentenceTransformer(resolve_model(None))
    pairs = [(train_set.queries[q], train_set.corpus[d]) for q in train_set.queries for d in train_set.relevant_docs[q]]
    pairs_ds = Dataset.from_dict({"anchor": [a for a, _ in pairs], "positive": [p for _, p in pairs]})
    with timed(timings, "st_recipe: mine_hard_negatives"):
        mined = mine_hard_negatives(pairs_ds, model, corpus=list(train_set.corpus.values()), num_negatives=num_negatives,
                                    relative_margin=0.05, sampling_strategy="top", output_format="n-tuple", batch_size=64,
                                    verbose=False)
    if max_seq_length:
        model.max_seq_length = max_seq_length
    args = SentenceTransformerTrainingArguments(output_dir=str(out_dir) + ".ckpt", num_train_epochs=epochs,
                                                per_device_train_batch_size=batch_size, batch_sampler=BatchSamplers.NO_DUPLICATES,
                                                save_strategy="no", report_to="none", seed=seed, use_cpu=detect_device() == "cpu",
                                                logging_steps=5)
    trainer = SentenceTransformerTrainer(model=model, args=args, train_dataset=mined, loss=MultipleNegativesRankingLoss(model))
    with timed(timings, "st_recipe: train"):
        trainer.train()
    model.max_seq_length = SentenceTransformer(resolve_model(None)).max_seq_length
    model.save(str(out_dir))
    shutil.rmtree(str(out_dir) + ".ckpt", ignore_errors=True)
    return len(mined)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("dataset")
    parser.add_argument("--quick", action="store_true", help="train with max_seq_length 128 (both recipes)")
    parser.add_argument("--epochs", type=int, default=1)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--negatives", type=int, default=5)
    parser.add_argument("--learning-rate", type=float, default=5e-5)
    parser.add_argument("--miner", default="hybrid")
    parser.add_argument("--seed", type=int, default=42)
    parser.add_argument("--skip-st", action="store_true")
    parser.add_argument("--suffix", default="", help="appended to the result file name")
    parser.add_argument("--engine", default="edge", choices=["local", "edge"], help="edge: Qdrant in-process (fast BM25)")
    args = parser.parse_args()

    folder = dataset_dir(args.dataset)
    train_set, test_set = load_beir(folder, "train"), load_beir(folder, "test")
    seq = 128 if args.quick else None
    tag = f"finetune-{args.dataset}{'-quick' if args.quick else ''}{'-' + args.suffix if args.suffix else ''}"
    work = RESULTS / f".{tag}-models"
    timings: dict[str, float] = {}
    base = CachedEncoder(cache_dir=CACHE)

    # --- ours: mine over Qdrant with guards, train with validation, tune fusion weights on held-out train queries
    options = MiningOptions(num_negatives=args.negatives, relative_margin=0.05, range_max=50, seed=args.seed)
    with timed(timings, f"ours: mine ({args.miner})"):
        examples = HardNegativeMiner(args.miner, base, options=options, engine=args.engine).mine(train_set)
    train_rows, val_rows = split_by_query(examples, 0.1, args.seed)
    val_queries = {e.metadata["query_id"] for e in val_rows}
    config = TrainConfig(epochs=args.epochs, batch_size=args.batch_size, learning_rate=args.learning_rate,
                         max_seq_length=seq, val_fraction=0.1, seed=args.seed)
    with timed(timings, "ours: train"):
        result = train(examples, work / "ours", config, data_fingerprint=train_set.fingerprint())
    ours = CachedEncoder(str(result.model_dir), cache_dir=False)
    with timed(timings, "ours: choose the fusion on held-out train queries"):
        fusion = select_fusion(train_set.subset(val_queries), ours, engine=args.engine)

    systems = [System("bm25", "bm25"), System("base", "dense", base), System("base+hybrid", "hybrid", base)]
    n_st = None
    if not args.skip_st:
        n_st = st_recipe(train_set, work / "st", args.negatives, args.batch_size, args.epochs, seq, args.seed, timings)
        st = CachedEncoder(str(work / "st"), cache_dir=False)
        systems += [System("st-recipe", "dense", st), System("st-recipe+hybrid", "hybrid", st)]
    systems += [System("ours", "dense", ours), System("ours+hybrid", "hybrid", ours),
                System("ours+hybrid(tuned)", fusion.mode, None if fusion.mode == "bm25" else ours, fusion.params)]
    comparisons = [("base", "ours"), ("st-recipe", "ours"), ("st-recipe+hybrid", "ours+hybrid"), ("base+hybrid", "ours+hybrid(tuned)"),
                   ("st-recipe+hybrid", "ours+hybrid(tuned)"), ("ours", "ours+hybrid(tuned)"), ("bm25", "ours+hybrid(tuned)")]
    names = {s.name for s in systems}
    with timed(timings, "evaluate all systems"):
        report = evaluate(test_set, systems, comparisons=[c for c in comparisons if set(c) <= names], engine=args.engine)
    data = report.data
    data.pop("per_query")
    data["benchmark"] = {"dataset": args.dataset, "quick": args.quick, "epochs": args.epochs, "batch_size": args.batch_size,
                         "negatives": args.negatives, "learning_rate": args.learning_rate, "miner": args.miner,
                         "train_max_seq_length": seq, "engine": args.engine, "our_examples": len(examples), "st_examples": n_st,
                         "fusion": fusion.to_dict(), "training_card": result.card.to_dict(), "timings_seconds": timings}
    save(tag, data)
    (RESULTS / f"{tag}.md").write_text(markdown_report(data) + "\n### Wall clock (s)\n\n" +
                                       "\n".join(f"- {k}: {v}" for k, v in timings.items()) + "\n")
    print(markdown_report(data))
    print(timings)


if __name__ == "__main__":
    main()
