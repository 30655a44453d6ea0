"""The trainer contract: what every trainer is given, the preparation it does and the judgement it passes.

The built-in trainers (the full fine-tune :func:`~ace_llamaindex.train.training.train`, the query adapter
:func:`~ace_llamaindex.train.adapter.train_adapter` behind its plugin ``adapter_trainer``, and ``--method auto``
:func:`~ace_llamaindex.train.method_selection.select_method`) take the same call, :class:`TrainerCall`, and go the
same way: :func:`setup` (the options checked, the data there, room to train, the champion's history read, the
validation queries held out with the champion's joining them) gives a :class:`Round`; the trainer trains its
candidates; :func:`judge` evaluates them against the base and the champion on the same queries (a
:class:`Judgement`); :meth:`Round.record` fills the card with what every trainer records, and :meth:`Round.result`
makes the :class:`~ace_llamaindex.train.common.TrainResult`. What candidates there are, which one is chosen and how
it is written stay each trainer's own."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ..data.dataset import QADataset
from ..data.examples import TrainingExample
from ..embeddings.encoding import CachedEncoder, Encoder
from ..errors import OptionError
from ..records.card import TrainingCard
from ..records.gate import GateResult
from ..records.plan import ServingPlan
from ..records.verdict import Verdict
from .champion import Champion, History, champion_history, data_reference, history_refs, split_with_champion
from .common import TrainConfig, TrainResult, check_base_encoder, ensure_room_to_train, plan_validation
from .promotion import Selection, select, unseen_query_ids, validation_dataset
from .validation_split import ValidationSplit

if TYPE_CHECKING:
    from .adapter import AdapterConfig


@dataclass
class TrainerCall:
    """The call every trainer plugin is given (the ``register_trainers`` hookspec), typed: the training examples,
    the output folder, the options as given (None: the defaults), the data's fingerprint for the card, the real
    corpus for validation when known (id -> text), the index engine, the base model's encoder (None: opened from
    ``config.base_model``), validation examples to use instead of holding some out, the champion (what serves now)
    and the file the examples came from (named in the card for replay)."""

    examples: list[TrainingExample]
    output_dir: Path
    config: TrainConfig | None = None
    data_fingerprint: str | None = None
    corpus: dict[str, str] | None = None
    engine: str = "auto"
    base_encoder: Encoder | None = None
    validation: list[TrainingExample] | None = None
    champion: Champion | None = None
    training_data: str | Path | None = None


def open_base(given: Encoder | None, config: TrainConfig) -> Encoder:
    """The base model's encoder: ``given`` (vectors cached by mining, or an endpoint), else ``config.base_model``'s,
    cached on disk."""
    return given or CachedEncoder(config.base_model, max_seq_length=config.max_seq_length, show_progress=False,
                                  trust_remote_code=config.trust_remote_code)


@dataclass
class Judgement:
    """Candidates judged on a round's validation queries (``val_set``, over the real corpus when known) against
    ``base`` and the champion: the :class:`~ace_llamaindex.train.promotion.Selection` (each candidate's gates and
    the one chosen by the gate's rule)."""

    val_set: QADataset
    base: Encoder
    selection: Selection

    @property
    def against_champion(self) -> bool:
        """Whether a champion other than the base was judged against (then it decides, not the base)."""
        return self.selection.against_champion is not None


@dataclass
class Round:
    """One trainer's run once :func:`setup` has prepared it: the call, the options it trains with (validated, its
    defaults filled in: a ``TrainConfig``, or the adapter's ``AdapterConfig``), the champion's history (None without
    a champion) and the validation split."""

    call: TrainerCall
    options: TrainConfig | AdapterConfig
    history: History | None
    split: ValidationSplit

    @property
    def everything(self) -> list[TrainingExample]:
        """The examples and the champion's replayed ones: every text the validation corpus is made of."""
        return [*self.call.examples, *(self.history.replay if self.history else [])]

    @property
    def checkpoints(self) -> Path:
        """Where a fine-tune keeps its checkpoints: ``<output_dir>.checkpoints``."""
        return self.call.output_dir.with_name(self.call.output_dir.name + ".checkpoints")

    def promotes(self, deciding: GateResult | None, replaces: bool) -> bool:
        """Whether a trainer of one model writes it: no validation queries to judge it by (``deciding`` None), the
        gate called it better, ``force``, or nothing to replace (``replaces``: a model is at the output folder)."""
        return deciding is None or deciding.verdict == Verdict.BETTER or self.options.force or not replaces

    def choose_fusion(self, judged: Judgement, encoder: Encoder):
        """The fusion for ``encoder`` chosen on the judged validation queries (``FusionChoice``), its prior from the
        base on the training queries (which the base never saw)."""
        from ..evaluate.fusion_selection import select_fusion

        prior = (validation_dataset(self.split.train, self.call.examples, self.call.corpus), judged.base)
        return select_fusion(judged.val_set, encoder, engine=self.call.engine, prior=prior)

    def data_refs(self, continued: bool = False) -> list[dict[str, str]]:
        """The training data a card names: the file the examples came from, and the champion's when the candidate
        written continued the champion (trained on its replayed examples)."""
        given = [data_reference(self.call.training_data)] if self.call.training_data else []
        return given + (history_refs(self.call.champion) if continued else [])

    def record(self, card: TrainingCard, judged: Judgement | None, name: str,
               trained: Iterable[TrainingExample]) -> TrainingCard:
        """Fill ``card`` with what every trainer records: candidate ``name``'s gate against the base, the queries
        it trained on (``trained``) and validated on, and the champion with the comparison that decided (None
        ``judged``, no validation queries: not measured)."""
        selection = judged.selection if judged else None
        card.record_gate(selection.against_base[name] if selection else None)
        card.record_queries((e.query for e in trained), (e.query for e in self.split.val))
        champion = self.call.champion
        return card.record_champion(champion.to_dict() if champion is not None else None,
                                    self.history.note if self.history else None,
                                    selection.deciding(name) if selection else None)

    def result(self, card: TrainingCard, gate: GateResult | None, fusion: Any,
               plan: ServingPlan | None) -> TrainResult:
        """The trainer's result: the output folder, its card, the deciding gate, the fusion, and what serving needs
        (``plan`` with its ``HERE`` resolved to the output folder; None: the base stays)."""
        out = self.call.output_dir
        return TrainResult(model_dir=out, card=card, gate=gate, fusion=fusion, promoted=card.promoted,
                           serving=plan.resolved(out).to_dict() if plan else None)


def setup(call: TrainerCall, options: TrainConfig | AdapterConfig, fine_tunes: bool = False,
          needs_validation: str | None = None) -> Round:
    """The preparation every trainer does first: ``options`` valid, examples given, the champion's history read and
    the validation split made (held out among the queries the champion did not train on, its own validation queries
    joining); a split without validation queries refused with ``needs_validation`` when given (a trainer that
    chooses on them); for a trainer that fine-tunes (``fine_tunes``, ``options`` a ``TrainConfig``), the given base
    encoder checked to be ``options.base_model`` and the output's filesystem to have room for a model and a
    checkpoint."""
    options.validate()
    if not call.examples:
        raise OptionError("no training examples")
    history = champion_history(call.champion) if call.champion is not None else None
    split = split_with_champion(call.examples, history, lambda rows: plan_validation(
        rows, options.val_fraction, options.seed, options.seen_share or 0.0, call.validation))
    if needs_validation and not split.val:
        raise OptionError(needs_validation)
    if fine_tunes:
        check_base_encoder(call.base_encoder, options)
        ensure_room_to_train(options, call.output_dir)
    return Round(call, options, history, split)


def judge(r: Round, base: Encoder, candidates: Mapping[str, Encoder], base_model: str | None) -> Judgement:
    """Evaluate ``candidates`` (cheapest first) on the round's validation queries against ``base`` and the champion
    (unless the champion is ``base_model`` itself, no adapter: then the base gate is the champion's), by the gate's
    rule (:func:`~ace_llamaindex.train.promotion.select`: the unseen-document queries decide, weighed by
    ``seen_share``)."""
    val_set = validation_dataset(r.split.val, r.everything, r.call.corpus)
    champion = r.call.champion
    champion_encoder = None if champion is None or champion.is_plain(base_model) else champion.encoder(base)
    selection = select(val_set, unseen_query_ids(val_set, r.split.unseen), base, candidates, champion_encoder,
                       engine=r.call.engine, seen_weight=r.options.seen_share or 0.0)
    return Judgement(val_set, base, selection)
