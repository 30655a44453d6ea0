"""Drop-ins for ``llama-index-finetuning``'s engines: the same script, one import changed, a better model.

``SentenceTransformersFinetuneEngine`` and ``EmbeddingAdapterFinetuneEngine`` take the deprecated package's
parameters by the same names and meanings; ``finetune()`` then runs this project's job (hard negatives mined with
the base model, ``--method auto`` or the adapter, the promotion gate, the fusion choice) and
``get_finetuned_model()`` returns a LlamaIndex embedding of what was chosen. A parameter that cannot mean the same
thing here is refused with one line saying what to use instead, never ignored.

    from ace_llamaindex.finetuning import EmbeddingQAFinetuneDataset, SentenceTransformersFinetuneEngine
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

from llama_index.core.base.embeddings.base import BaseEmbedding

from .data.dataset import QADataset
from .data.examples import TrainingExample
from .embeddings.models import DEFAULT_MODEL
from .errors import OptionError
from .mine.mining import HardNegativeMiner, MiningOptions
from .plugins.manager import get
from .records.card import TrainingCard
from .train.training import TrainConfig, TrainResult

log = logging.getLogger(__name__)
_UNSET: Any = object()  # a parameter the caller did not pass (so its deprecated default is not a request)


class EmbeddingQAFinetuneDataset(QADataset):
    """LlamaIndex's finetuning dataset (``queries``, ``corpus``, ``relevant_docs``, ``mode``), as
    ``generate_qa_embedding_pairs(...).save_json()`` writes it; ``from_json`` / ``save_json`` as there."""

    @classmethod
    def from_json(cls, path: str | Path) -> EmbeddingQAFinetuneDataset:
        from .data.dataset import load_llamaindex_json

        ds = load_llamaindex_json(path)
        return cls(ds.queries, ds.corpus, ds.relevant_docs, query_meta=ds.query_meta, mode=ds.mode, source=str(path))

    def save_json(self, path: str | Path) -> None:
        self.save(path)


def as_dataset(data: Any, what: str = "dataset") -> QADataset:
    """Our dataset from an ``EmbeddingQAFinetuneDataset`` (either package's, duck-typed) or a ``QADataset``."""
    if isinstance(data, QADataset):
        return data
    if all(hasattr(data, a) for a in ("queries", "corpus", "relevant_docs")):
        return QADataset.from_llamaindex(data)
    raise OptionError(f"{what} must be an EmbeddingQAFinetuneDataset (queries, corpus, relevant_docs) or a QADataset, "
                      f"got {type(data).__name__}")


def _refuse(engine: str, given: dict[str, str]) -> None:
    if given:
        raise OptionError(f"{engine}: " + "; ".join(f"{name}: {why}" for name, why in given.items()))


def _first_docs_only(ds: QADataset) -> QADataset:
    """llama-index-finetuning's ``use_all_docs=False``: each query trains on its first relevant document only."""
    return QADataset(ds.queries, ds.corpus, {q: docs[:1] for q, docs in ds.relevant_docs.items()},
                     query_meta=ds.query_meta, mode=ds.mode, source=ds.source)


def _validation_examples(ds: QADataset) -> list[TrainingExample]:
    return [TrainingExample(ds.queries[q], ds.corpus[d], []) for q in ds.queries for d in ds.relevant_docs.get(q, [])
            if d in ds.corpus]


class _Engine:
    """What both engines share: mining, training by a named method, the result and its embedding."""

    name = "engine"

    def _mine(self, dataset: QADataset, encoder, seed: int) -> list[TrainingExample]:
        return HardNegativeMiner("dense", encoder, options=MiningOptions(seed=seed),
                                 show_progress=self.show_progress_bar).mine(dataset)

    def _check_output(self) -> None:
        """Before mining and training: can ``model_output_path`` be written? (as ``ace train`` checks ``-o``)"""
        from .atomic import check_output

        try:
            check_output(self.model_output_path, "dir")
        except OptionError as exc:
            raise OptionError(f"{self.name}: model_output_path {exc}") from None

    @property
    def card(self) -> TrainingCard:
        """The training card of the last ``finetune()``: the method chosen, every candidate's gate, the fusion."""
        if getattr(self, "result", None) is None:
            raise OptionError(f"{self.name}: call finetune() first")
        return self.result.card


class SentenceTransformersFinetuneEngine(_Engine):
    """``llama_index.finetuning.SentenceTransformersFinetuneEngine``, with this project's job underneath.

    Same parameters and meanings; differences: ``model_id`` defaults to the bundled all-MiniLM-L6-v2 (the hub is
    not assumed), ``batch_size`` / ``epochs`` default to this project's validated budget unless given, training
    mines hard negatives first, and ``method`` (``auto`` by default: adapter, fine-tune, interpolations) picks what
    serves. ``val_dataset`` is the promotion gate's validation set (seen and unseen documents reported apart)."""

    name = "SentenceTransformersFinetuneEngine"

    def __init__(self, dataset: Any, model_id: str = DEFAULT_MODEL, model_output_path: str = "exp_finetune",
                 batch_size: int | None = None, val_dataset: Any = None, loss: Any = None, epochs: int | None = None,
                 show_progress_bar: bool = True, evaluation_steps: Any = _UNSET, use_all_docs: bool = False,
                 trust_remote_code: bool = False, device: Any = None, save_checkpoints: bool = False,
                 resume_from_checkpoint: bool = False, checkpoint_save_steps: Any = _UNSET,
                 checkpoint_save_total_limit: Any = _UNSET, *, method: str = "auto", champion: str | Path | None = None,
                 **unknown: Any) -> None:
        if unknown:
            raise OptionError(f"{self.name} got unknown argument(s) {sorted(unknown)}")
        refused = {}
        if loss is not None and type(loss).__name__ not in ("MultipleNegativesRankingLoss", "CachedMultipleNegativesRankingLoss"):
            refused["loss"] = (f"{type(loss).__name__} is not what ace trains with (MultipleNegativesRankingLoss with mined "
                               "hard negatives, cached when memory needs it); pass loss=None")
        if evaluation_steps is not _UNSET:
            refused["evaluation_steps"] = "ace validates once per epoch and keeps the best epoch; drop evaluation_steps"
        if checkpoint_save_steps is not _UNSET:
            refused["checkpoint_save_steps"] = "ace checkpoints once per epoch; drop checkpoint_save_steps"
        if checkpoint_save_total_limit is not _UNSET:
            refused["checkpoint_save_total_limit"] = "ace keeps the last two checkpoints; drop checkpoint_save_total_limit"
        _refuse(self.name, refused)
        dataset = as_dataset(dataset)
        self.dataset = dataset if use_all_docs else _first_docs_only(dataset)
        self.val_dataset = as_dataset(val_dataset, "val_dataset") if val_dataset is not None else None
        self.model_id, self.model_output_path, self.method = model_id, str(model_output_path), method
        self.champion = champion  # ace's own: a folder `ace train` wrote that the new model must beat (see train.champion)
        self.show_progress_bar, self.use_all_docs = show_progress_bar, use_all_docs
        self.config = TrainConfig(base_model=model_id, batch_size=batch_size, epochs=epochs, device=None if device is None
                                  else str(device), trust_remote_code=trust_remote_code, keep_checkpoints=save_checkpoints,
                                  resume=resume_from_checkpoint)
        self.config.validate()
        self.result: TrainResult | None = None

    def finetune(self, **train_kwargs: Any) -> None:
        """Mine hard negatives with ``model_id``, train (``method``), gate and write to ``model_output_path``."""
        from .embeddings.encoding import CachedEncoder

        if train_kwargs:
            raise OptionError(f"{self.name}.finetune() got unknown argument(s) {sorted(train_kwargs)}")
        self._check_output()
        encoder = CachedEncoder(self.model_id, show_progress=self.show_progress_bar,
                                trust_remote_code=self.config.trust_remote_code)
        examples = self._mine(self.dataset, encoder, self.config.seed)
        val = _validation_examples(self.val_dataset) if self.val_dataset is not None else None
        self.result = get("trainers", self.method)(examples, Path(self.model_output_path), self.config,
                                                   data_fingerprint=self.dataset.fingerprint(), corpus=self.dataset.corpus,
                                                   base_encoder=encoder, validation=val, **self._champion())

    def _champion(self) -> dict[str, Any]:
        from .train.champion import champion_from_folder

        return {"champion": champion_from_folder(self.champion)} if self.champion is not None else {}

    def get_finetuned_model(self, **model_kwargs: Any) -> BaseEmbedding:
        """The chosen model as a LlamaIndex embedding (``FineTunedEmbedding``, with its adapter when one was chosen);
        the base model when no method was better (and a warning says so)."""
        from .records.plan import ServingPlan
        from .serve.embedding import FineTunedEmbedding
        from .serve.served_model import serving_embedding

        if self.result is None:
            raise OptionError(f"{self.name}: call finetune() first")
        from .records.outcome import Outcome, outcome

        serving = self.result.serving
        if serving is None or outcome(self.result) is not Outcome.PROMOTED:
            log.warning("%s: no method was better than %s on validation; returning the base model", self.name, self.model_id)
            serving = ServingPlan(self.model_id).to_dict()
        return serving_embedding(serving, lambda name: FineTunedEmbedding(
            name, trust_remote_code=self.config.trust_remote_code, **model_kwargs))


class EmbeddingAdapterFinetuneEngine(_Engine):
    """``llama_index.finetuning.EmbeddingAdapterFinetuneEngine``: a query adapter over any LlamaIndex embedding
    (documents untouched, no re-indexing), trained with mined hard negatives and gated. ``adapter_model`` other
    than the default linear layer, checkpoints and devices other than the CPU are refused (the adapter trains in
    seconds on a CPU); ``bias`` and ``dim`` mean what they meant."""

    name = "EmbeddingAdapterFinetuneEngine"

    def __init__(self, dataset: Any, embed_model: BaseEmbedding, batch_size: int | None = None, epochs: int | None = None,
                 adapter_model: Any = None, dim: int | None = None, device: Any = None,
                 model_output_path: str = "model_output", model_checkpoint_path: Any = None,
                 checkpoint_save_steps: Any = _UNSET, verbose: bool = False, bias: bool = False, **train_kwargs: Any) -> None:
        refused = {}
        if train_kwargs:
            refused["arguments"] = f"unknown {sorted(train_kwargs)}"
        if adapter_model is not None:
            refused["adapter_model"] = "ace trains its own linear adapter (identity start); pass adapter_model=None"
        if model_checkpoint_path is not None or checkpoint_save_steps is not _UNSET:
            refused["model_checkpoint_path"] = "an adapter trains in seconds and keeps its best epoch; drop checkpoints"
        if device not in (None, "cpu"):
            refused["device"] = "the adapter trains on the CPU over cached vectors; pass device=None"
        _refuse(self.name, refused)
        self.dataset, self.embed_model = as_dataset(dataset), embed_model
        self.model_output_path, self.show_progress_bar, self.bias, self.dim = str(model_output_path), verbose, bias, dim
        self.config = TrainConfig(batch_size=batch_size, epochs=epochs)
        self.config.validate()
        self.result: TrainResult | None = None

    def _encoder(self):
        from .embeddings.encoding import CachedEncoder, LlamaIndexEncoder
        from .serve.embedding import FineTunedEmbedding

        if isinstance(self.embed_model, FineTunedEmbedding):  # a local model: vectors cached on disk, batched
            return CachedEncoder(self.embed_model.model_path, show_progress=self.show_progress_bar,
                                 trust_remote_code=self.embed_model.trust_remote_code)
        return LlamaIndexEncoder(self.embed_model)

    def finetune(self, **train_kwargs: Any) -> None:
        """Mine hard negatives with ``embed_model``, train the adapter, gate it, write it to ``model_output_path``."""
        from dataclasses import replace

        from .embeddings.query_adapter import base_identity
        from .records.gate import GateResult
        from .records.plan import ServingPlan
        from .train.adapter import adapter_config, train_adapter

        if train_kwargs:
            raise OptionError(f"{self.name}.finetune() got unknown argument(s) {sorted(train_kwargs)}")
        self._check_output()
        encoder = self._encoder()
        if self.dim is not None:
            actual = len(self.embed_model.get_text_embedding("hello world"))
            if actual != self.dim:
                raise OptionError(f"{self.name}: dim={self.dim} but embed_model gives {actual}-d vectors")
        examples = self._mine(self.dataset, encoder, self.config.seed)
        card = train_adapter(examples, encoder, self.model_output_path, replace(adapter_config(self.config), bias=self.bias),
                             base_info={**base_identity(self.embed_model), "data_fingerprint": self.dataset.fingerprint()},
                             corpus=self.dataset.corpus)
        self.result = TrainResult(Path(self.model_output_path), card, GateResult.from_dict(card.gate),
                                  promoted=card.promoted,
                                  serving=ServingPlan(None, self.model_output_path, reindex=False).to_dict())

    def get_finetuned_model(self, **model_kwargs: Any) -> BaseEmbedding:
        """``embed_model`` with the trained query adapter (documents untouched)."""
        from .serve.adapter_embedding import AdapterEmbedding

        if self.result is None:
            raise OptionError(f"{self.name}: call finetune() first")
        from .records.outcome import Outcome, outcome

        if outcome(self.result) is not Outcome.PROMOTED:
            log.warning("%s: the adapter was not better on validation; returning embed_model as it is", self.name)
            return self.embed_model
        return AdapterEmbedding(self.embed_model, self.model_output_path, **model_kwargs)


__all__ = ["EmbeddingAdapterFinetuneEngine", "EmbeddingQAFinetuneDataset", "SentenceTransformersFinetuneEngine", "as_dataset"]
