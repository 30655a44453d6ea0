"""``--method auto`` (the default): pick the method that generalises on this data, with the gate's own evidence.

Candidates, cheapest to serve first: a query adapter on the base (no re-indexing), weight interpolations of base
and fine-tuned (``theta = a * theta_ft + (1 - a) * theta_base``; WiSE-FT, Wortsman et al. 2022; LM-Cocktail, Xiao
et al. 2023: no extra training, loses less outside the training distribution), the full fine-tune, and an adapter on
top of the full fine-tune. All are trained on the same training queries and judged on the same validation queries
by the same rule (:func:`~ace_llamaindex.train.promotion.judge`: the unseen-document queries decide). The first candidate
that is better than the base with confidence is taken; a costlier one replaces it only when it is better than it
with confidence too (a tie goes to the cheaper). None better: the base stays, nothing is written.
"""

from __future__ import annotations

import copy
import logging
import shutil
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Callable

from ..atomic import atomic_directory
from ..data.examples import TrainingExample
from ..embeddings.encoding import CachedEncoder, Encoder
from ..embeddings.models import open_model
from ..embeddings.query_adapter import AdaptedEncoder, base_identity
from ..errors import OptionError
from ..records.card import TrainingCard, run_fields
from ..records.gate import GateResult
from ..records.plan import HERE, ServingPlan
from . import distributed
from .adapter import AdapterConfig, fit_adapter, save_adapter
from .champion import (
    champion_history,
    continuable_adapter,
    continuable_model,
    continual_examples,
    data_reference,
    history_refs,
    split_with_champion,
)
from .common import (
    TrainConfig,
    TrainResult,
    check_base_encoder,
    ensure_room_to_train,
    plan_validation,
    save_model,
    shared_result,
)
from .promotion import select, unseen_query_ids, validation_dataset
from .training import fine_tune, full_defaults, peak_memory, run_fingerprint
from .validation_split import ValidationSplit

log = logging.getLogger(__name__)
# Weights of the fine-tuned model in the interpolations (WiSE-FT's middle and one nearer the fine-tune). Each costs
# one encoding of the validation corpus (~4 min for SciFact's 5,183 abstracts on 2 CPU cores), so a few.
ALPHAS = (0.5, 0.75)


@dataclass
class Candidate:
    """One way to serve: its encoder on the validation queries, whether documents must be embedded again, and how
    to write it into an output folder (``write(folder, card, fusion)``)."""

    name: str
    encoder: Encoder
    reindex: bool
    write: Callable[..., None]
    adapter: bool = False


def interpolate(base_model: str, tuned, alpha: float, trust_remote_code: bool = False):
    """A copy of ``tuned`` with weights ``alpha * tuned + (1 - alpha) * base`` (same architecture, no training)."""
    import torch

    base_state = open_model(base_model, device="cpu", trust_remote_code=trust_remote_code).state_dict()
    merged = copy.deepcopy(tuned)
    with torch.no_grad():
        state = {k: (alpha * v + (1 - alpha) * base_state[k].to(v.device, v.dtype)) if v.is_floating_point() else v
                 for k, v in tuned.state_dict().items()}
    merged.load_state_dict(state)
    return merged


def _model_writer(model, adapter=None, adapter_info=None):
    """``model``: a SentenceTransformer, or a function that builds it (an interpolation, built again to be written)."""
    def write(folder: Path, card: TrainingCard, fusion=None) -> None:
        built = model if hasattr(model, "save") else model()
        # the adapter over this folder's own model ("."): its card is the adapter's own run
        extra = (lambda d: save_adapter(adapter, d, TrainingCard(method="adapter", base={"model": "."},
                                                                 **run_fields(adapter_info)))) if adapter else None
        save_model(built, folder, card, fusion, extra=extra)
    return write


def _adapter_writer(adapter, info, base):
    def write(folder: Path, card: TrainingCard, fusion=None) -> None:
        # the run's card, over the adapter's base, with what the adapter's own run recorded (kind, learning curve)
        adapter_card = replace(card, base=base, details={**run_fields(info)["details"], **card.details})
        with atomic_directory(folder) as scratch:
            save_adapter(adapter, scratch, adapter_card)
            if fusion:
                fusion.save(scratch)
    return write


@dataclass
class _Round:
    """What every step of one ``--method auto`` run reads: the options, the data split, the champion."""

    config: TrainConfig
    full_config: TrainConfig
    examples: list[TrainingExample]
    split: ValidationSplit
    continual: ValidationSplit | None  # the champion's continual rows (its replayed examples joined), if any
    history: object | None             # champion.ChampionHistory
    champion: object | None
    corpus: dict[str, str] | None
    output_dir: Path

    @property
    def checkpoints(self) -> Path:
        return self.output_dir.with_name(self.output_dir.name + ".checkpoints")


@dataclass
class _Candidates:
    """Every candidate built, which training rows each learnt from (for the card), and the adapters' seconds."""

    candidates: list[Candidate]
    trained_on: dict[str, list[TrainingExample]]
    adapter_seconds: tuple[float, float]  # the adapter on the base, the adapter on the fine-tune


@dataclass
class _Choice:
    """The gate's verdicts on every candidate and what it made of them."""

    selection: object         # promotion.Selection
    verdicts: dict[str, GateResult]
    chosen: Candidate | None
    forced: bool
    gate_of: str              # the chosen candidate, or (none chosen) the one that came closest
    against_champion: bool


def select_method(examples: list[TrainingExample], output_dir: str | Path, config: TrainConfig | None = None,
                  data_fingerprint: str | None = None, corpus: dict[str, str] | None = None, engine: str = "auto",
                  base_encoder: Encoder | None = None, validation: list[TrainingExample] | None = None,
                  champion=None, training_data: str | Path | None = None) -> TrainResult:
    """The ``auto`` trainer plugin: train every candidate, judge them on the validation queries, write the winner to
    ``output_dir`` (with ``fusion.json`` chosen for it). Full-fine-tune options (epochs, learning rate, batch size...)
    apply to the fine-tune candidates; the adapters use their own defaults.

    ``champion`` (:class:`~ace_llamaindex.train.champion.Champion`, what serves now): candidates must be better than
    it, not only than the base; continual candidates start from it (its adapter, or its fine-tuned weights) and
    train on the new examples plus its replayed ones; its own validation queries join the gate's. ``training_data``:
    the file ``examples`` came from, named in the card (path + hash) so a later round can replay it.

    The steps: :func:`_plan_round` (checks, split), the fine-tunes (every process under a launcher), then rank 0
    alone: :func:`_build_candidates`, :func:`_judge`, the fusion for the winner, :func:`_card`, :func:`_write`."""
    from ..evaluate.fusion_selection import select_fusion

    r = _plan_round(examples, output_dir, config, base_encoder, validation, champion, corpus)
    # The fine-tunes first: under a launcher (torchrun, accelerate launch) every process trains them together; the
    # adapters, the interpolations, the judging and the writing are rank 0's alone (distributed.on_main).
    tuned = fine_tune(r.split, r.full_config, r.checkpoints, run_fingerprint(examples, r.full_config))
    resumed = None
    if r.config.continual and (start := continuable_model(champion)) is not None:
        cont_config = replace(r.full_config, base_model=start)
        resumed = fine_tune(r.continual, cont_config, r.checkpoints.with_name(r.checkpoints.name + "-continued"),
                            run_fingerprint(r.continual.train, cont_config))

    def choose_and_write() -> TrainResult:
        config = r.config
        base = base_encoder or CachedEncoder(config.base_model, max_seq_length=config.max_seq_length, show_progress=False,
                                             trust_remote_code=config.trust_remote_code)
        everything = [*examples, *(r.history.replay if r.history else [])]
        val_set = validation_dataset(r.split.val, everything, corpus)
        built = _build_candidates(r, base, tuned, resumed, everything)
        choice = _judge(r, built.candidates, val_set, base, engine)
        fusion, plan = None, None
        if choice.chosen:
            prior = (validation_dataset(r.split.train, examples, corpus), base)
            fusion = select_fusion(val_set, choice.chosen.encoder, engine=engine, prior=prior)
            # in the card, HERE (".") is the output folder itself (see ServingPlan.resolved)
            plan = ServingPlan(HERE if choice.chosen.reindex else (getattr(base, "model_name", None) or config.base_model),
                               HERE if choice.chosen.adapter else None, choice.chosen.reindex)
        card = _card(r, tuned, built, choice, fusion, plan, data_fingerprint, training_data)
        _write(r, choice, card, fusion, val_set)
        log.info("method auto: %s", card.choice["reason"])
        return TrainResult(model_dir=r.output_dir, card=card, gate=choice.verdicts[choice.gate_of], fusion=fusion,
                           promoted=choice.chosen is not None,
                           serving=plan.resolved(r.output_dir).to_dict() if plan else None)

    return distributed.on_main(choose_and_write, "training the adapters, judging the candidates and writing the winner",
                               shared=shared_result)


def _plan_round(examples, output_dir, config, base_encoder, validation, champion, corpus) -> _Round:
    """Check the options and the data, hold out the validation queries (the champion's joining them)."""
    config = config or TrainConfig()
    config.validate()
    if not examples:
        raise OptionError("no training examples")
    history = champion_history(champion) if champion is not None else None
    split = split_with_champion(examples, history, lambda rows: plan_validation(rows, config.val_fraction, config.seed,
                                                                             config.seen_share or 0.0, validation))
    if not split.val:
        raise OptionError("--method auto chooses on validation queries and this data leaves none (val_fraction 0, or "
                          "fewer than 4 queries); use --method full or --method adapter")
    check_base_encoder(base_encoder, config)  # the candidates include fine-tunes of config.base_model
    output_dir = Path(output_dir)
    ensure_room_to_train(config, output_dir)
    continual = ValidationSplit(continual_examples(split.train, history, split.val), split.val, split.unseen) \
        if history is not None else None
    return _Round(config, full_defaults(config), examples, split, continual, history, champion, corpus, output_dir)


def _build_candidates(r: _Round, base: Encoder, tuned, resumed, everything: list[TrainingExample]) -> _Candidates:
    """The adapters (on the base, continued from the champion's, on the fine-tune), the interpolations, the
    fine-tune(s): each with its encoder for the gate and its writer, cheapest to serve first."""
    config, split, corpus = r.config, r.split, r.corpus
    adapter_options = AdapterConfig(val_fraction=config.val_fraction, seed=config.seed, num_negatives=config.num_negatives)
    on_base = fit_adapter(split, r.examples, base, adapter_options, corpus=corpus)
    candidates = [Candidate("adapter", AdaptedEncoder(base, on_base.adapter, label="adapter"), False,
                            _adapter_writer(on_base.adapter, on_base.info, base_identity(base)), adapter=True)]
    trained_on = {"adapter": split.train}
    if config.continual and (init := continuable_adapter(r.champion, base)) is not None:
        cont = fit_adapter(r.continual, everything, base, adapter_options, init=init, corpus=corpus)
        candidates.append(Candidate("adapter (continued)", AdaptedEncoder(base, cont.adapter, label="adapter (continued)"),
                                    False, _adapter_writer(cont.adapter, cont.info, base_identity(base)), adapter=True))
        trained_on["adapter (continued)"] = r.continual.train
    full = CachedEncoder.from_model(tuned.model, label="full")
    for alpha in ALPHAS:  # built when encoding (and again if written), never held beside the others (issue #40)
        def merged(alpha=alpha):
            return interpolate(config.base_model, tuned.model, alpha, config.trust_remote_code)
        candidates.append(Candidate(f"interpolate({alpha})", CachedEncoder.from_factory(merged, label=f"interpolate({alpha})"),
                                    True, _model_writer(merged)))
    candidates.append(Candidate("full", full, True, _model_writer(tuned.model)))
    if resumed is not None:
        candidates.append(Candidate("full (continued)", CachedEncoder.from_model(resumed.model, label="full (continued)"),
                                    True, _model_writer(resumed.model)))
        trained_on["full (continued)"] = r.continual.train
    on_full = fit_adapter(split, r.examples, full, adapter_options, corpus=corpus)
    candidates.append(Candidate("full+adapter", AdaptedEncoder(full, on_full.adapter, label="full+adapter"), True,
                                _model_writer(tuned.model, on_full.adapter, on_full.info), adapter=True))
    return _Candidates(candidates, trained_on, (on_base.info["train_seconds"], on_full.info["train_seconds"]))


def _judge(r: _Round, candidates: list[Candidate], val_set, base: Encoder, engine: str) -> _Choice:
    """Every candidate against the base (and the champion, when one serves) on the validation queries; the chosen
    one, or with ``--force`` the largest gain where the gate decides."""
    config, champion = r.config, r.champion
    champion_encoder = None if champion is None or champion.is_plain(config.base_model) else champion.encoder(base)
    selection = select(val_set, unseen_query_ids(val_set, r.split.unseen), base, {c.name: c.encoder for c in candidates},
                       champion_encoder, engine=engine, seen_weight=config.seen_share or 0.0)
    verdicts = selection.against_champion or selection.against_base
    chosen = next((c for c in candidates if c.name == selection.chosen), None)
    forced = chosen is None and config.force
    if forced:  # --force: the candidate with the largest gain where the gate decides, better or not
        chosen = max(candidates, key=lambda c: _decisive_delta(verdicts[c.name]))
    gate_of = chosen.name if chosen else max(verdicts, key=lambda n: _decisive_delta(verdicts[n]))
    return _Choice(selection, verdicts, chosen, forced, gate_of, champion_encoder is not None)


def _card(r: _Round, tuned, built: _Candidates, choice: _Choice, fusion, plan: ServingPlan | None,
          data_fingerprint: str | None, training_data: str | Path | None) -> TrainingCard:
    """The training card of the run: the choice and why, every candidate's gate, the fine-tune's record."""
    config, split, chosen, selection = r.config, r.split, choice.chosen, choice.selection
    stays = "the champion stays" if choice.against_champion else "the base model stays"
    device = tuned.info["device"]
    card = TrainingCard(
        method="auto", chosen=chosen.name if chosen else "base",
        choice={"steps": selection.steps, "forced": choice.forced,
                "reason": "; ".join(selection.steps) if chosen and not choice.forced else
                ("--force: the largest gain on the deciding queries, not better with confidence" if choice.forced else
                 f"no candidate is better than the {'champion' if choice.against_champion else 'base'} with "
                 f"confidence: {stays}")},
        base_model=config.base_model, config={**asdict(r.full_config), "epochs": tuned.info["epochs"]},
        data_fingerprint=data_fingerprint, train_examples=len(split.train), val_examples=len(split.val),
        data_checks=split.checks, device=device, precision=tuned.info["precision"], memory_plan=tuned.info["memory_plan"],
        train_seconds=round(tuned.info["train_seconds"] + built.adapter_seconds[0] + built.adapter_seconds[1], 1),
        details={"full_fine_tune": {k: tuned.info[k] for k in ("validation_before", "validation_per_epoch",
                                                               "best_metric", "negatives", "optimizer_steps")}},
        data_parallel=tuned.info.get("data_parallel"), peak_memory=peak_memory(device),
        gate_of=choice.gate_of,  # the chosen candidate, or (none chosen) the one that came closest
        promoted=chosen is not None, serving=plan.to_dict() if plan else None,
        fusion=fusion.to_dict() if fusion else None,
        training_data=([data_reference(training_data)] if training_data else [])
        + (history_refs(r.champion) if choice.gate_of in built.trained_on and choice.gate_of != "adapter" else []))
    for c in built.candidates:
        card.record_candidate(c.name, choice.verdicts[c.name], c.reindex,
                              selection.against_base[c.name] if choice.against_champion else None)
    card.record_gate(selection.against_base[choice.gate_of])
    card.record_queries((e.query for e in built.trained_on.get(choice.gate_of, split.train)), (e.query for e in split.val))
    card.record_champion(r.champion.to_dict() if r.champion is not None else None,
                         r.history.note if r.history else None, choice.verdicts[choice.gate_of])
    return card


def _write(r: _Round, choice: _Choice, card: TrainingCard, fusion, val_set) -> None:
    """The winner into the output folder (or the card beside it, not promoted), checkpoints removed, exports."""
    config, chosen, output_dir = r.config, choice.chosen, r.output_dir
    if chosen:
        chosen.write(output_dir, card, fusion)
    else:
        card.save(output_dir.with_name(output_dir.name + ".not-promoted.json"))
    if not config.keep_checkpoints:
        shutil.rmtree(r.checkpoints, ignore_errors=True)
        shutil.rmtree(r.checkpoints.with_name(r.checkpoints.name + "-continued"), ignore_errors=True)
    if chosen and config.exports and chosen.reindex:  # a model folder was written: export it as `--method full` does
        from .common import export_all

        export_all(output_dir, config.exports, val_set)
    elif chosen and config.exports:  # an adapter over the base: the folder holds the adapter, no model to export
        card.exports_skipped = (
            f"--export {', '.join(config.exports)}: nothing exported: the chosen {chosen.name!r} is a query adapter over "
            f"the base model {config.base_model}, so {output_dir} holds no model to export (export the base model's "
            "folder with `ace export`, or train with --method full)")
        log.warning(card.exports_skipped)


select_method.data_parallel = True  # runs under torchrun / accelerate launch (see distributed)


def _decisive_delta(g: GateResult) -> float:
    subset = g.subsets.get("unseen documents") or {}
    value = subset.get("delta") if subset.get("delta") is not None else g.delta
    return value if value is not None else float("-inf")

