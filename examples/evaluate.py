"""Helper script: baseline vs fine-tuned on held-out queries, with reports (what `ace eval` does).

    python examples/evaluate.py [DATASET] [MODEL_DIR]
"""

from __future__ import annotations

import sys

from ace_llamaindex import CachedEncoder, evaluate, load_dataset, markdown_report, standard_systems


def main() -> None:
    dataset = load_dataset(sys.argv[1] if len(sys.argv) > 1 else None)
    model = sys.argv[2] if len(sys.argv) > 2 else "models/ace-finetuned"
    _, held_out = dataset.split(0.25)  # the same split examples/finetune.py trained without
    report = evaluate(held_out, standard_systems(CachedEncoder(), CachedEncoder(model, cache_dir=False)))
    print(markdown_report(report.data))


if __name__ == "__main__":
    main()
