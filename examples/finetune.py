"""Helper script: mine hard negatives and fine-tune, from Python (what `ace mine` + `ace train` do).

    python examples/finetune.py [DATASET] [OUTPUT_DIR]
"""

from __future__ import annotations

import sys

from ace_llamaindex import CachedEncoder, HardNegativeMiner, MiningOptions, TrainConfig, load_dataset, save_training_data, train


def main() -> None:
    dataset = load_dataset(sys.argv[1] if len(sys.argv) > 1 else None)
    out = sys.argv[2] if len(sys.argv) > 2 else "models/ace-finetuned"
    train_set, _held_out = dataset.split(0.25)  # keep queries aside for examples/evaluate.py
    miner = HardNegativeMiner("hybrid", CachedEncoder(), options=MiningOptions(num_negatives=5, relative_margin=0.05))
    examples = miner.mine(train_set)
    save_training_data(examples, f"{out}.training_data.json", source=dataset.source)
    result = train(examples, out, TrainConfig(epochs=3, batch_size=32, learning_rate=5e-5, val_fraction=0.15,
                                              early_stopping_patience=1))
    print(f"model -> {result.model_dir}; best validation nDCG@10 {result.card.details['best_metric']}")


if __name__ == "__main__":
    main()
