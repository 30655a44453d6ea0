"""A query-side adapter: improve any embedding without re-indexing, trained in seconds on frozen vectors.

Document vectors stay exactly the base model's (from the cache, the index, or an endpoint), so nothing is
re-embedded; only queries pass through a small transform ``q' = normalise(q W + b)`` (linear, initialised to the
identity, so step 0 is the base model; optionally a residual MLP). It is trained with the same contrastive loss as
full fine-tuning (in-batch plus the mined hard negatives, temperature 0.05 as MNRL's scale 20) on vectors computed
once, validated every epoch with the best epoch kept, and then passes the same promotion gate.

Written by hand rather than with llama-index-finetuning's ``EmbeddingAdapterFinetuneEngine``: that package is
deprecated and no longer imports with current llama-index-core, and it trained without hard negatives or a gate.
"""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np

from ..atomic import atomic_directory
from ..data.examples import TrainingExample
from ..embeddings.encoding import Encoder
from ..embeddings.query_adapter import ADAPTER_CARD, ADAPTER_FILE, AdaptedEncoder, QueryAdapter, base_identity
from ..errors import OptionError
from ..options import check, declared, default, documented, flag, label, option
from ..records.card import TrainingCard
from .common import BASE_ENCODER, REFUSED, TrainConfig


def _as_train(name: str) -> dict[str, Any]:
    """The declaration of an AdapterConfig field that ``ace train`` sets from the TrainConfig option ``name``."""
    given = flag(name, declared(TrainConfig)[name])
    return {"no_flag": f"given as TrainConfig.{name}" + (f" (`ace train {given}`)" if given else "")}


_API_ONLY = {"no_flag": "Python API only (train_adapter; `ace train --method adapter` keeps the default)"}


@documented
@dataclass
class AdapterConfig:
    """Adapter training options, each declared once here: its help and its range (:meth:`validate` is made from
    them); ``ace train --method adapter`` sets those a :class:`~ace_llamaindex.train.common.TrainConfig` option
    becomes (:func:`adapter_config`)."""

    kind: str = field(default="linear", metadata=option(
        "linear: q' = normalise(q W + b); mlp: the linear map plus a residual MLP.", choices=("linear", "mlp"),
        **_API_ONLY))
    epochs: int = field(default=100, metadata=option(
        "Passes over the frozen vectors, validated each epoch, the best kept.", minimum=1, **_as_train("epochs")))
    batch_size: int = field(default=64, metadata=option(
        "Examples per step.", minimum=1, **_as_train("batch_size")))
    learning_rate: float = field(default=1e-4, metadata=option(
        "Adam moves every entry of W by about this much a step: keep the map near the identity.", minimum=0,
        maximum=1, min_open=True, max_open=True, **_as_train("learning_rate")))
    temperature: float = field(default=0.05, metadata=option(
        "The contrastive loss's temperature (MNRL's scale 20).", minimum=0, min_open=True, **_API_ONLY))
    identity_weight: float = field(default=1e-2, metadata=option(
        "Pulls W towards the identity: a small data set cannot wander far.", **_API_ONLY))
    patience: int = field(default=10, metadata=option(
        "Epochs without a validation gain before training stops.", minimum=1, **_as_train("early_stopping_patience")))
    num_negatives: int | None = field(default=None, metadata=option(
        "Use at most this many hard negatives per example (None: all).", **_as_train("num_negatives")))
    seen_share: float = field(default=0.0, metadata=option(
        "As TrainConfig.seen_share: how the gate weighs seen/unseen-document validation queries.",
        **_as_train("seen_share")))
    seen_share_source: str | None = field(default=None, metadata=option(
        "Where seen_share came from, for the card.", **_as_train("seen_share_source")))
    bias: bool = field(default=True, metadata=option(
        "Learn the bias b (False: q' = normalise(q W)).", **_API_ONLY))
    val_fraction: float | None = field(default=None, metadata=option(
        "Queries held out for validation and the gate (None: as TrainConfig's default).", **_as_train("val_fraction")))
    seed: int = field(default=42, metadata=option("Seeds the validation split, the initialisation and the batch order.", **_as_train("seed")))
    force: bool = field(default=False, metadata=option(
        "Replace an existing adapter even when the gate does not call the new one better.", **_as_train("force")))
    continual: bool = field(default=True, metadata=option(
        "As TrainConfig.continual: with a champion, also train a candidate continuing its adapter.",
        **_as_train("continual")))

    def validate(self) -> None:
        """Each option within its declared range or choices: one line naming it (``adapter epochs must be at least
        1, got 0``)."""
        try:
            check(self)
        except OptionError as exc:
            raise OptionError(f"adapter {exc}") from None


def _torch_adapter(dim: int, kind: str):
    import torch

    class Adapter(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.W = torch.nn.Parameter(torch.eye(dim))
            self.b = torch.nn.Parameter(torch.zeros(dim))
            if kind == "mlp":
                self.W1 = torch.nn.Parameter(torch.randn(dim, dim) * 0.01)
                self.b1 = torch.nn.Parameter(torch.zeros(dim))
                self.W2 = torch.nn.Parameter(torch.zeros(dim, dim))  # starts as the identity map too

        def forward(self, q):
            out = q @ self.W + self.b
            if kind == "mlp":
                out = out + torch.relu(q @ self.W1 + self.b1) @ self.W2
            return torch.nn.functional.normalize(out, dim=-1)

    return Adapter()


def contrastive_loss(queries, docs, positives, negatives, temperature: float):
    """In-batch plus hard-negative cross-entropy (MNRL's): row i's target is document ``positives[i]``, the
    candidates are every row's positive then ``negatives`` (indices into ``docs``). A query's own document met again
    among the candidates (two queries of one document in a batch) is masked, not counted as a negative, as the
    full fine-tune's no-duplicates batches avoid it."""
    import torch

    ids = torch.cat([positives, negatives])
    logits = queries @ docs[ids].T / temperature
    rows = torch.arange(len(positives))
    duplicate = ids[None, :] == positives[:, None]
    duplicate[rows, rows] = False
    return torch.nn.functional.cross_entropy(logits.masked_fill(duplicate, float("-inf")), rows)


def _quick_ndcg(adapter: QueryAdapter, queries: np.ndarray, docs: np.ndarray, positives: list[set[int]]) -> float:
    """nDCG@10 over the validation corpus, exact (brute force): cheap for the per-epoch choice of the best epoch."""
    scores = adapter(queries) @ docs.T
    top = np.argsort(-scores, axis=1)[:, :10]
    total = 0.0
    for row, rel in zip(top, positives, strict=True):
        dcg = sum(1 / np.log2(r + 2) for r, d in enumerate(row) if d in rel)
        ideal = sum(1 / np.log2(r + 2) for r in range(min(len(rel), 10)))
        total += dcg / ideal
    return total / max(1, len(positives))


@dataclass
class FittedAdapter:
    """An adapter just trained (not yet written) and its run's record."""

    adapter: QueryAdapter
    info: dict[str, Any]


def fit_adapter(split, examples: list[TrainingExample], base: Encoder, config: AdapterConfig,
                init: QueryAdapter | None = None, corpus: dict[str, str] | None = None) -> FittedAdapter:
    """Train a query adapter for ``base`` on ``split.train``; the best epoch on ``split.val`` is kept (validated over
    ``corpus`` when given, as the gate is). ``init``: an adapter to continue (the champion's), instead of the identity."""
    import torch

    from .promotion import validation_dataset

    train_rows, val_rows = split.train, split.val
    if len(train_rows) < 2:
        raise OptionError(f"only {len(train_rows)} training example(s) after the validation split; need at least 2")
    started = time.time()
    texts = sorted({t for e in examples for t in (e.positive, *e.negatives)})
    doc_vecs = base.encode_documents(texts)
    row = {t: i for i, t in enumerate(texts)}
    queries = base.encode_queries([e.query for e in train_rows])
    k = max((len(e.negatives) for e in train_rows), default=0)
    if config.num_negatives is not None:
        k = min(k, config.num_negatives)
    pos = torch.tensor([row[e.positive] for e in train_rows])
    neg = torch.tensor([[row[e.negatives[j % len(e.negatives)]] if e.negatives else row[e.positive] for j in range(k)]
                        for e in train_rows]) if k else None
    has_neg = torch.tensor([bool(e.negatives) for e in train_rows])
    docs_t, queries_t = torch.from_numpy(doc_vecs), torch.from_numpy(queries)

    val_set = validation_dataset(val_rows, examples, corpus) if val_rows else None
    if val_set:
        val_texts = list(val_set.corpus.values())
        val_docs = base.encode_documents(val_texts)
        val_q = base.encode_queries(list(val_set.queries.values()))
        index_of = {d: i for i, d in enumerate(val_set.corpus)}
        val_pos = [{index_of[d] for d in val_set.relevant_docs[q]} for q in val_set.queries]

    torch.manual_seed(config.seed)
    model = _torch_adapter(doc_vecs.shape[1], config.kind if init is None else init.kind)
    if init is not None:
        if init.dimension != doc_vecs.shape[1]:
            raise OptionError(f"the adapter to continue maps {init.dimension} dimensions; this base has {doc_vecs.shape[1]}")
        with torch.no_grad():
            for name, param in model.named_parameters():
                if name in init.weights:
                    param.copy_(torch.from_numpy(init.weights[name]))
    if not config.bias:
        model.b.requires_grad_(False)
    optimizer = torch.optim.Adam([p for p in model.parameters() if p.requires_grad], lr=config.learning_rate)
    eye = torch.eye(doc_vecs.shape[1])
    snapshot = lambda: {n: p.detach().numpy().copy() for n, p in model.named_parameters()}  # noqa: E731
    best, best_score, history, stale = snapshot(), -1.0, [], 0
    if val_set:
        best_score = _quick_ndcg(QueryAdapter(best, config.kind), val_q, val_docs, val_pos)
        history.append({"epoch": 0, "ndcg@10": round(best_score, 4)})
    generator = torch.Generator().manual_seed(config.seed)
    for epoch in range(1, config.epochs + 1):
        order = torch.randperm(len(train_rows), generator=generator)
        for start in range(0, len(order), config.batch_size):
            idx = order[start:start + config.batch_size]
            negatives = neg[idx][has_neg[idx]].reshape(-1) if neg is not None else pos[idx][:0]
            loss = contrastive_loss(model(queries_t[idx]), docs_t, pos[idx], negatives, config.temperature)
            loss = loss + config.identity_weight * ((model.W - eye) ** 2).sum()
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
        if not val_set:
            best = snapshot()
            continue
        score = _quick_ndcg(QueryAdapter(snapshot(), config.kind), val_q, val_docs, val_pos)
        history.append({"epoch": epoch, "ndcg@10": round(score, 4)})
        if score > best_score + 1e-6:
            best, best_score, stale = snapshot(), score, 0
        else:
            stale += 1
            if stale >= config.patience:
                break
    info = {"kind": config.kind if init is None else init.kind, "continued": init is not None, "dimension": int(doc_vecs.shape[1]), "config": asdict(config),
            "train_examples": len(train_rows), "val_examples": len(val_rows), "train_seconds": round(time.time() - started, 2),
            "device": "cpu", "validation_per_epoch": history}
    return FittedAdapter(QueryAdapter(best, config.kind), info)


def save_adapter(adapter: QueryAdapter, folder: Path, card: TrainingCard) -> None:
    """Write the adapter's weights and card into ``folder`` (a folder of its own, or beside a model's files)."""
    np.savez(folder / ADAPTER_FILE, **adapter.weights)
    card.save(folder / ADAPTER_CARD)


def train_adapter(examples: list[TrainingExample], base: Encoder, output_dir: str | Path, config: AdapterConfig | None = None,
                  base_info: dict[str, Any] | None = None, engine: str = "auto", corpus: dict[str, str] | None = None,
                  validation: list[TrainingExample] | None = None, champion=None,
                  training_data: str | Path | None = None) -> TrainingCard:
    """Train a query adapter for ``base`` on ``examples``; gate it on held-out queries; write it atomically.

    ``champion`` (:class:`~ace_llamaindex.train.champion.Champion`, the model serving now): the adapter must be better
    than it, not only than the base; when the champion is itself an adapter over this base, a second candidate
    continues it on the new examples plus the champion's replayed ones, and the better of the two by the same rule
    is kept. ``training_data``: the file ``examples`` came from, named in the card so a later round can replay it.
    The setup and the judging are the trainer contract's (:mod:`~ace_llamaindex.train.contract`).
    Returns the adapter's card (``promoted``: whether the folder was written)."""
    from ..records.card import run_fields
    from .champion import continuable_adapter, continual_examples
    from .contract import TrainerCall, judge, setup

    r = setup(TrainerCall(examples, Path(output_dir), None, None, corpus, engine, base, validation, champion, training_data),
              config or AdapterConfig())
    config, split = r.options, r.split
    fitted = {"adapter": fit_adapter(split, examples, base, config, corpus=corpus)}
    trained_on = {"adapter": split.train}
    continued = continuable_adapter(champion, base) if config.continual else None
    if continued is not None:
        rows = continual_examples(split.train, r.history, split.val)
        fitted["adapter (continued)"] = fit_adapter(type(split)(rows, split.val, split.unseen), r.everything,
                                                    base, config, init=continued, corpus=corpus)
        trained_on["adapter (continued)"] = rows
    judged, name = None, "adapter"
    if split.val:
        judged = judge(r, base, {n: AdaptedEncoder(base, f.adapter, label=n) for n, f in fitted.items()}, _base_model(base))
        selection = judged.selection
        # none better: the candidate that came closest, so the card says by how much it fell short
        name = selection.chosen or max(fitted, key=lambda n: _or_lowest(selection.deciding(n).delta))
    promoted = r.promotes(judged.selection.deciding(name) if judged else None,
                          (r.call.output_dir / ADAPTER_CARD).exists())
    several = judged is not None and len(fitted) > 1
    card = TrainingCard(
        method="adapter", chosen=name, **run_fields(fitted[name].info), base=base_info or {"label": base.label},
        data_checks=split.checks, promoted=promoted, training_data=r.data_refs(continued=name == "adapter (continued)"),
        choice={"steps": selection.steps, "reason": "; ".join(selection.steps) or "none better than the champion"}
        if several else None)
    r.record(card, judged, name, trained_on[name])
    for n in fitted if several else ():
        card.record_candidate(n, selection.deciding(n), reindex=False)
    if promoted:
        with atomic_directory(r.call.output_dir) as scratch:
            save_adapter(fitted[name].adapter, scratch, card)
    return card


def _or_lowest(delta: float | None) -> float:
    # no measurement, or exactly 0 on every query (a continued adapter that never left the champion): not a challenger
    return delta if delta else float("-inf")


def _base_model(base: Encoder) -> str | None:
    return base_identity(base).get("model")


# How the adapter takes each TrainConfig option is declared on its field (its "adapter" role, train.common): the
# AdapterConfig field it becomes, the base encoder's (base_model, max_seq_length, trust_remote_code), or refused: an
# adapter trains a small map on frozen vectors, in fp32, in seconds, and has no use for the rest.
# (An option declared without a role is refused: never silently ignored.)
ADAPTER_ROLES = {name: spec.roles.get("adapter", REFUSED) for name, spec in declared(TrainConfig).items()}
ADAPTER_FIELDS = {name: role for name, role in ADAPTER_ROLES.items() if role not in (REFUSED, BASE_ENCODER)}
ADAPTER_REFUSES = {name: label(name, spec) for name, spec in declared(TrainConfig).items() if ADAPTER_ROLES[name] == REFUSED}
ADAPTER_ACCEPTS = {"precision": ("fp32",)}  # a refused option's values the adapter honours besides its default


def _given(config: Any, name: str) -> bool:
    """Was the refused option ``name`` given (not its default, nor ``False``: --no-cached-loss asks nothing)?"""
    value = getattr(config, name)
    return value != default(TrainConfig, name) and value is not False and value not in ADAPTER_ACCEPTS.get(name, ())


def adapter_config(config: Any) -> AdapterConfig:
    """The adapter's options from a ``TrainConfig``: what both understand is honoured (:data:`ADAPTER_FIELDS`), the
    rest refused (:data:`ADAPTER_REFUSES`) in one line naming the flags."""
    config.validate()
    unusable = [flag for name, flag in ADAPTER_REFUSES.items() if _given(config, name)]
    if unusable:
        raise OptionError(f"--method adapter cannot use {', '.join(unusable)}: it trains a small map on frozen vectors "
                          "(fp32, seconds, nothing to checkpoint or export); drop them or use --method full")
    return AdapterConfig(**{target: getattr(config, name) for name, target in ADAPTER_FIELDS.items()
                            if getattr(config, name) is not None})


def adapter_trainer(examples: list[TrainingExample], output_dir: str | Path, config: Any = None, data_fingerprint: str | None = None,
                    corpus: dict[str, str] | None = None, engine: str = "auto", base_encoder: Encoder | None = None,
                    validation: list[TrainingExample] | None = None, champion=None, training_data: str | Path | None = None):
    """The ``adapter`` trainer plugin: same call as the sentence-transformers trainer, same ``TrainResult``.
    ``base_encoder``: the frozen base (default: ``config.base_model``, cached on disk); an endpoint works too."""
    from ..records.plan import ServingPlan
    from .common import TrainConfig, TrainResult
    from .contract import open_base
    from .promotion import deciding_gate

    config = config or TrainConfig()
    options = adapter_config(config)
    base = open_base(base_encoder, config)
    card = train_adapter(examples, base, output_dir, options,
                         base_info={**base_identity(base), "data_fingerprint": data_fingerprint}, engine=engine, corpus=corpus,
                         validation=validation, champion=champion, training_data=training_data)
    serving = ServingPlan(getattr(base, "model_name", None) or config.base_model, str(output_dir), reindex=False).to_dict()
    card = replace(card, serving=serving)
    return TrainResult(model_dir=Path(output_dir), card=card, gate=deciding_gate(card), fusion=None,
                       promoted=card.promoted, serving=serving)
