"""llama-index-finetuning's engine vs the drop-in (``ace_llamaindex.finetuning``): the same script, same data, same
base model, scored on the dataset's test split (never trained on).

    python benchmarks/bench_li_engine.py scifact

The script is LlamaIndex's fine-tuning guide: a train and a validation ``EmbeddingQAFinetuneDataset`` (here the
dataset's train split, its validation queries asking about other documents than the training queries, as the
guide's two node sets do), ``SentenceTransformersFinetuneEngine(train_dataset, model_id=..., model_output_path=...,
val_dataset=val_dataset)``, ``finetune()``, ``get_finetuned_model()``.

The deprecated package does not import on today's stack (``mistralai`` ImportError), so its engine's behaviour is
re-created from its published source, pinned: llama-index-finetuning 0.4.1,
``llama_index/finetuning/embeddings/sentence_transformer.py`` — one (query, first relevant document) pair per
query, ``DataLoader(batch_size=10)`` (unshuffled), ``MultipleNegativesRankingLoss``, ``model.fit(epochs=2,
warmup_steps=10% of the steps, evaluator=InformationRetrievalEvaluator(val), evaluation_steps=50)``. Each engine
trains in its own process (wall time and peak RSS are that process's); the parent scores base, the LI engine and
the drop-in's ``get_finetuned_model()`` plan in one evaluation with paired-bootstrap intervals.
Writes benchmarks/results/li-engine-<dataset>.{json,md}.
"""

from __future__ import annotations

import argparse
import json
import resource
import shutil
import subprocess
import sys
import time
from pathlib import Path

from common import RESULTS, dataset_dir, save

MODEL_ID = "sentence-transformers/all-MiniLM-L6-v2"  # what a LlamaIndex user writes; resolves to the bundled copy
VAL_FRACTION = 0.2


def li_engine(train_path: Path, val_path: Path, out: Path) -> dict:
    """llama-index-finetuning 0.4.1's SentenceTransformersFinetuneEngine(train, model_id, out, val_dataset=val)
    followed by finetune(): its defaults, on today's sentence-transformers."""
    from sentence_transformers import InputExample, SentenceTransformer, losses
    from sentence_transformers.evaluation import InformationRetrievalEvaluator
    from torch.utils.data import DataLoader

    from ace_llamaindex.embeddings.models import resolve_model
    from ace_llamaindex.finetuning import EmbeddingQAFinetuneDataset

    train, val = EmbeddingQAFinetuneDataset.from_json(train_path), EmbeddingQAFinetuneDataset.from_json(val_path)
    model = SentenceTransformer(resolve_model(MODEL_ID))
    examples = [InputExample(texts=[q, train.corpus[train.relevant_docs[qid][0]]]) for qid, q in train.queries.items()]
    loader = DataLoader(examples, batch_size=10)
    epochs = 2
    evaluator = InformationRetrievalEvaluator(val.queries, val.corpus, val.relevant_docs)
    model.fit(train_objectives=[(loader, losses.MultipleNegativesRankingLoss(model))], epochs=epochs,
              warmup_steps=int(len(loader) * epochs * 0.1), output_path=str(out), show_progress_bar=False,
              evaluator=evaluator, evaluation_steps=50)
    return {"serving": {"model": str(out), "adapter": None, "reindex": True}, "examples": len(examples)}


def drop_in(train_path: Path, val_path: Path, out: Path) -> dict:
    """The guide's script with the import changed to ``ace_llamaindex.finetuning``."""
    from ace_llamaindex.finetuning import EmbeddingQAFinetuneDataset, SentenceTransformersFinetuneEngine

    train_dataset = EmbeddingQAFinetuneDataset.from_json(train_path)
    val_dataset = EmbeddingQAFinetuneDataset.from_json(val_path)
    engine = SentenceTransformersFinetuneEngine(train_dataset, model_id=MODEL_ID, model_output_path=str(out),
                                                val_dataset=val_dataset, show_progress_bar=False)
    engine.finetune()
    engine.get_finetuned_model()  # what the script does next; must work
    card = engine.card
    serving = engine.result.serving if engine.result.promoted else {"model": MODEL_ID, "adapter": None, "reindex": False}
    return {"serving": serving, "method": card.method_name, "promoted": engine.result.promoted,
            "gate": card.gate, "candidates": card.candidates}


SIDES = {"li-engine": li_engine, "ace-drop-in": drop_in}


def run_side(side: str, work: Path) -> dict:
    """Train one engine in a child process; its wall time and peak RSS."""
    started = time.perf_counter()
    # cwd: model.fit writes its checkpoints/ folder into the working directory
    done = subprocess.run([sys.executable, str(Path(__file__).resolve()), "--side", side, str(work.resolve())], text=True,
                          cwd=work)
    if done.returncode:
        raise SystemExit(f"{side} failed (exit {done.returncode})")
    info = json.loads((work / f"{side}.json").read_text())
    info["wall_seconds"] = round(time.perf_counter() - started, 1)
    return info


def child(side: str, work: Path) -> None:
    info = SIDES[side](work / "train_dataset.json", work / "val_dataset.json", work / side)
    info["peak_rss_gb"] = round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1e6, 2)
    (work / f"{side}.json").write_text(json.dumps(info))


def score(test_set, sides: dict[str, dict]) -> dict:
    from ace_llamaindex.embeddings.encoding import CachedEncoder
    from ace_llamaindex.embeddings.models import resolve_model
    from ace_llamaindex.evaluate.evaluate import System, evaluate
    from ace_llamaindex.serve.served_model import serving_encoder

    base = CachedEncoder(resolve_model(MODEL_ID), show_progress=False, cache_dir=False)
    systems = [System("base", "dense", base)] + [
        System(name, "dense", serving_encoder(info["serving"], base)) for name, info in sides.items()]
    names = list(sides)
    comparisons = [("base", n) for n in names] + [(names[0], names[1])]
    return evaluate(test_set, systems, comparisons=comparisons, show_progress=False).data


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("datasets", nargs="*")
    parser.add_argument("--side", choices=sorted(SIDES), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.side:
        return child(args.side, Path(args.datasets[0]))
    from ace_llamaindex.data.beir import load_beir

    for name in args.datasets:
        folder = dataset_dir(name)
        work = RESULTS / f".li-engine-{name}-run"
        shutil.rmtree(work, ignore_errors=True)
        work.mkdir(parents=True)
        train, val = load_beir(folder, "train").split(VAL_FRACTION, seed=0, by="document")
        train.save(work / "train_dataset.json")
        val.save(work / "val_dataset.json")
        sides = {side: run_side(side, work) for side in SIDES}
        data = score(load_beir(folder, "test"), sides)
        data.pop("per_query")
        data["benchmark"] = {"dataset": name, "train_queries": len(train.queries), "val_queries": len(val.queries),
                             "sides": sides}
        save(f"li-engine-{name}", data)
        (RESULTS / f"li-engine-{name}.md").write_text(table(data))
        print(table(data), flush=True)


def table(data: dict) -> str:
    overall, sides = data["overall"], data["benchmark"]["sides"]
    deltas = {c["candidate"]: c for c in data["comparisons"] if c["baseline"] == "base" and c["metric"] == "ndcg@10"}
    rows = [f"| base | {overall['base']['ndcg@10']:.3f} | | | |"]
    for name, info in sides.items():
        d = deltas[name]
        ci = f"{d['delta']:+.3f} [{d['ci95'][0]:+.3f}, {d['ci95'][1]:+.3f}]"
        what = info.get("method") or "full fine-tune, 2 epochs"
        rows.append(f"| {name} ({what}) | {overall[name]['ndcg@10']:.3f} | {ci} | {info['wall_seconds'] / 60:.1f} min | "
                    f"{info['peak_rss_gb']} GB |")
    return ("| engine | test nDCG@10 | vs base (95% CI) | wall time | peak RSS |\n|---|---|---|---|---|\n"
            + "\n".join(rows) + "\n")


if __name__ == "__main__":
    main()
