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
from ..records.card import TrainingCard, run_fields
from ..records.gate import GateResult
from ..records.plan import HERE, ServingPlan
from . import distributed
from .adapter import AdapterConfig, fit_adapter, save_adapter
from .champion import continuable_adapter, continuable_model, continual_examples
from .common import AUTO_NEEDS_VALIDATION, TrainConfig, TrainResult, save_model, shared_result
from .contract import Judgement, Round, TrainerCall, judge, open_base, setup
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
class _Candidates:
    """Every candidate built, which training rows each learnt from (for the card), and the adapters' seconds."""

    candidates: list[Candidate]
    trained_on: dict[str, list[TrainingExample]]
    adapter_seconds: tuple[float, float]  # the adapter on the base, the adapter on the fine-tune


@dataclass
class _Choice:
    """The gate's verdicts on every candidate and what it made of them."""

    judged: Judgement
    verdicts: dict[str, GateResult]
    chosen: Candidate | None
    forced: bool
    gate_of: str              # the chosen candidate, or (none chosen) the one that came closest


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

    The steps: :func:`_plan_round` (the trainer contract's setup, the continual split), the fine-tunes (every process
    under a launcher), then rank 0 alone: :func:`_build_candidates`, :func:`_judge`, the fusion for the winner,
    :func:`_card`, :func:`_write`."""
    r, continual = _plan_round(TrainerCall(examples, Path(output_dir), config, data_fingerprint, corpus, engine,
                                           base_encoder, validation, champion, training_data))
    full_config = full_defaults(r.options)
    # The fine-tunes first: under a launcher (torchrun, accelerate launch) every process trains them together; the
    # adapters, the interpolations, the judging and the writing are rank 0's alone (distributed.on_main).
    tuned = fine_tune(r.split, full_config, r.checkpoints, run_fingerprint(examples, full_config))
    resumed = None
    if r.options.continual and (start := continuable_model(champion)) is not None:
        cont_config = replace(full_config, base_model=start)
        resumed = fine_tune(continual, cont_config, r.checkpoints.with_name(r.checkpoints.name + "-continued"),
                            run_fingerprint(continual.train, cont_config))

    def choose_and_write() -> TrainResult:
        config = r.options
        base = open_base(base_encoder, config)
        built = _build_candidates(r, base, tuned, resumed, continual)
        choice = _judge(r, built.candidates, base)
        fusion, plan = None, None
        if choice.chosen:
            fusion = r.choose_fusion(choice.judged, choice.chosen.encoder)
            # in the card, HERE (".") is the output folder itself (see ServingPlan.resolved)
            plan = ServingPlan(HERE if choice.chosen.reindex else (getattr(base, "model_name", None) or config.base_model),
                               HERE if choice.chosen.adapter else None, choice.chosen.reindex)
        card = _card(r, full_config, tuned, built, choice, fusion, plan)
        _write(r, choice, card, fusion)
        log.info("method auto: %s", card.choice["reason"])
        return r.result(card, choice.verdicts[choice.gate_of], fusion, plan)

    return distributed.on_main(choose_and_write, "training the adapters, judging the candidates and writing the winner",
                               shared=shared_result)


def _plan_round(call: TrainerCall) -> tuple[Round, ValidationSplit | None]:
    """The trainer contract's setup (options, data, the split with the champion's queries, refused without
    validation queries: auto chooses on them; the candidates include fine-tunes of ``base_model``), and the
    champion's continual split (its replayed examples joined the training rows) when there is a champion."""
    r = setup(call, call.config or TrainConfig(), fine_tunes=True, needs_validation=AUTO_NEEDS_VALIDATION)
    split = r.split
    continual = ValidationSplit(continual_examples(split.train, r.history, split.val), split.val, split.unseen) \
        if r.history is not None else None
    return r, continual


def _build_candidates(r: Round, base: Encoder, tuned, resumed, continual: ValidationSplit | None) -> _Candidates:
    """The adapters (on the base, continued from the champion's, on the fine-tune), the interpolations, the
    fine-tune(s): each with its encoder for the gate and its writer, cheapest to serve first."""
    config, split, corpus, examples = r.options, r.split, r.call.corpus, r.call.examples
    adapter_options = AdapterConfig(val_fraction=config.val_fraction, seed=config.seed, num_negatives=config.num_negatives)
    on_base = fit_adapter(split, examples, base, adapter_options, corpus=corpus)
    candidates = [Candidate("adapter", AdaptedEncoder(base, on_base.adapter, label="adapter"), False,
                            _adapter_writer(on_base.adapter, on_base.info, base_identity(base)), adapter=True)]
    trained_on = {"adapter": split.train}
    if config.continual and (init := continuable_adapter(r.call.champion, base)) is not None:
        cont = fit_adapter(continual, r.everything, base, adapter_options, init=init, corpus=corpus)
        candidates.append(Candidate("adapter (continued)", AdaptedEncoder(base, cont.adapter, label="adapter (continued)"),
                                    False, _adapter_writer(cont.adapter, cont.info, base_identity(base)), adapter=True))
        trained_on["adapter (continued)"] = continual.train
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
        trained_on["full (continued)"] = continual.train
    on_full = fit_adapter(split, examples, full, adapter_options, corpus=corpus)
    candidates.append(Candidate("full+adapter", AdaptedEncoder(full, on_full.adapter, label="full+adapter"), True,
                                _model_writer(tuned.model, on_full.adapter, on_full.info), adapter=True))
    return _Candidates(candidates, trained_on, (on_base.info["train_seconds"], on_full.info["train_seconds"]))


def _judge(r: Round, candidates: list[Candidate], base: Encoder) -> _Choice:
    """Every candidate against the base (and the champion, when one serves) on the validation queries (the trainer
    contract's :func:`~ace_llamaindex.train.contract.judge`); the chosen one, or with ``--force`` the largest gain
    where the gate decides."""
    judged = judge(r, base, {c.name: c.encoder for c in candidates}, r.options.base_model)
    selection = judged.selection
    verdicts = selection.against_champion or selection.against_base
    chosen = next((c for c in candidates if c.name == selection.chosen), None)
    forced = chosen is None and r.options.force
    if forced:  # --force: the candidate with the largest gain where the gate decides, better or not
        chosen = max(candidates, key=lambda c: _decisive_delta(verdicts[c.name]))
    gate_of = chosen.name if chosen else max(verdicts, key=lambda n: _decisive_delta(verdicts[n]))
    return _Choice(judged, verdicts, chosen, forced, gate_of)


def _card(r: Round, full_config: TrainConfig, tuned, built: _Candidates, choice: _Choice, fusion,
          plan: ServingPlan | None) -> TrainingCard:
    """The training card of the run: the choice and why, every candidate's gate, the fine-tune's record."""
    config, split, chosen, selection = r.options, r.split, choice.chosen, choice.judged.selection
    against_champion = choice.judged.against_champion
    stays = "the champion stays" if against_champion else "the base model stays"
    device = tuned.info["device"]
    card = TrainingCard(
        method="auto", chosen=chosen.name if chosen else "base",
        choice={"steps": selection.steps, "forced": choice.forced,
                "reason": "; ".join(selection.steps) if chosen and not choice.forced else
                ("--force: the largest gain on the deciding queries, not better with confidence" if choice.forced else
                 f"no candidate is better than the {'champion' if against_champion else 'base'} with "
                 f"confidence: {stays}")},
        base_model=config.base_model, config={**asdict(full_config), "epochs": tuned.info["epochs"]},
        data_fingerprint=r.call.data_fingerprint, train_examples=len(split.train), val_examples=len(split.val),
        data_checks=split.checks, device=device, precision=tuned.info["precision"], memory_plan=tuned.info["memory_plan"],
        train_seconds=round(tuned.info["train_seconds"] + built.adapter_seconds[0] + built.adapter_seconds[1], 1),
        details={"full_fine_tune": {k: tuned.info[k] for k in ("validation_before", "validation_per_epoch",
                                                               "best_metric", "negatives", "optimizer_steps")}},
        data_parallel=tuned.info.get("data_parallel"), peak_memory=peak_memory(device),
        gate_of=choice.gate_of,  # the chosen candidate, or (none chosen) the one that came closest
        promoted=chosen is not None, serving=plan.to_dict() if plan else None,
        fusion=fusion.to_dict() if fusion else None,
        training_data=r.data_refs(continued=choice.gate_of in built.trained_on and choice.gate_of != "adapter"))
    for c in built.candidates:
        card.record_candidate(c.name, choice.verdicts[c.name], c.reindex,
                              selection.against_base[c.name] if against_champion else None)
    return r.record(card, choice.judged, choice.gate_of, built.trained_on.get(choice.gate_of, split.train))


def _write(r: Round, choice: _Choice, card: TrainingCard, fusion) -> None:
    """The winner into the output folder (or the card beside it, not promoted), checkpoints removed, exports."""
    config, chosen, output_dir = r.options, choice.chosen, r.call.output_dir
    if chosen:
        chosen.write(output_dir, card, fusion)
    else:
        card.save(output_dir.with_name(output_dir.name + ".not-promoted.json"))
    if not config.keep_checkpoints:
        shutil.rmtree(r.checkpoints, ignore_errors=True)
        shutil.rmtree(r.checkpoints.with_name(r.checkpoints.name + "-continued"), ignore_errors=True)
    if chosen and config.exports and chosen.reindex:  # a model folder was written: export it as `--method full` does
        from .common import export_all

        export_all(output_dir, config.exports, choice.judged.val_set)
    elif chosen and config.exports:  # an adapter over the base: the folder holds the adapter, no model to export
        card.exports_skipped = (
            f"--export {', '.join(config.exports)}: nothing exported: the chosen {chosen.name!r} is a query adapter over "
            f"the base model {config.base_model}, so {output_dir} holds no model to export (export the base model's "
            "folder with `ace export`, or train with --method full)")
        log.warning(card.exports_skipped)


select_method.data_parallel = True  # runs under torchrun / accelerate launch (see distributed)


def _decisive_delta(g: GateResult) -> float:
    subset = g.subset("unseen documents")
    value = subset.delta if subset is not None and subset.measured else g.delta
    return value if value is not None else float("-inf")

