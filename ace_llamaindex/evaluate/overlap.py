"""Which evaluation queries a fine-tuned model has already seen (its training card lists their hashes)."""

from __future__ import annotations

from ..data.dataset import QADataset
from ..errors import OptionError
from ..records.card import TrainingCard, text_hash


def training_overlap(dataset: QADataset, card: TrainingCard) -> set[str]:
    """Query ids of ``dataset`` whose text was among the model's training or validation queries."""
    seen = card.seen_queries
    return {qid for qid, text in dataset.queries.items() if text_hash(text) in seen}


def without_queries(dataset: QADataset, seen: set[str]) -> QADataset:
    """The dataset without the queries in ``seen``; an error if none would be left."""
    keep = [q for q in dataset.queries if q not in seen]
    if not keep:
        raise OptionError("every query was in the model's training or validation data; give queries it has not seen")
    return dataset.subset(keep)
