"""Each option declared once (issue #30): a TrainConfig / MiningOptions field's declaration (ace_llamaindex.options)
makes its CLI option, its range check and its docs; every TrainConfig field is used or refused by every trainer and
``--method auto`` honours or refuses every option of its candidates. Fast: no model is loaded (the trainers' code is
read, not run)."""

from __future__ import annotations

import dataclasses
import inspect
import math
import re
import textwrap
import typing

import pytest
from click.testing import CliRunner

from ace_llamaindex import cli as cli_module
from ace_llamaindex.cli import _training_help, cli
from ace_llamaindex.errors import EmbeddingError, OptionError
from ace_llamaindex.mine.mining import MiningOptions
from ace_llamaindex.options import declared, default, flag, label, undeclared, value_type
from ace_llamaindex.train import method_selection
from ace_llamaindex.train.adapter import (
    ADAPTER_ACCEPTS,
    ADAPTER_FIELDS,
    ADAPTER_REFUSES,
    AdapterConfig,
    adapter_config,
    adapter_trainer,
)
from ace_llamaindex.train.common import (
    BASE_ENCODER,
    CARD,
    EVERY,
    EXPORT_TARGETS,
    FINE_TUNES,
    REFUSED,
    USED,
    WINNER,
    TrainConfig,
)
from ace_llamaindex.train.training import FULL_DEFAULTS

TRAIN = declared(TrainConfig)
MINE = declared(MiningOptions)
ROLE_WORDS = {BASE_ENCODER, REFUSED, USED, CARD, EVERY, FINE_TUNES, WINNER}


def _kind(cls, name: str) -> type:
    return value_type(typing.get_type_hints(cls)[name])


def _other_values(cls, name: str) -> list:
    """Valid values of field ``name`` other than its default (every one, for a choice)."""
    spec, kind, value = declared(cls)[name], _kind(cls, name), default(cls, name)
    if kind is bool:
        return [v for v in (True, False) if v != value]
    if kind is list:
        return [[spec.choices[0]]] if spec.choices else [["x"]]
    if kind is dict:
        return [{"x": 1}]
    if spec.choices:
        return [c for c in spec.choices if c != value]
    if kind is int:
        return [int(spec.minimum or 0) + 2]
    if kind is float:
        low, high = spec.minimum, spec.maximum
        return [(low + high) / 2 if low is not None and high is not None else (low or 0) + 0.25]
    if kind is str:
        return ["cpu" if name == "device" else f"some-{name}"]
    return []


def _bad_values(cls, name: str) -> list:
    """Values outside field ``name``'s declared range or choices."""
    spec, kind = declared(cls)[name], _kind(cls, name)
    if spec.choices:
        return [["nope"]] if kind is list else ["nope"]
    bad = []
    if spec.minimum is not None:
        bad.append(spec.minimum if spec.min_open else spec.minimum - 1)
    if spec.maximum is not None:
        bad.append(spec.maximum if spec.max_open else spec.maximum + 1)
    if kind is float:
        bad.append(math.nan)
    return [int(b) if kind is int else float(b) for b in bad] if kind in (int, float) else bad


def _dedented(obj) -> str:
    return textwrap.dedent(inspect.getsource(obj))


def _role(name: str, who: str) -> str:
    return TRAIN[name].roles[who]


# ---- every field is declared, with a flag or the reason it has none -----------------------------------------------

@pytest.mark.parametrize("cls", [TrainConfig, MiningOptions, AdapterConfig])
def test_every_field_is_declared_with_a_flag_or_the_reason_it_has_none(cls):
    assert undeclared(cls) == [], f"{cls.__name__} fields declared without option(...): {undeclared(cls)}"
    for name, spec in declared(cls).items():
        assert flag(name, spec) or len(spec.no_flag or "") > 10, f"{name}: a flag, or no_flag saying why"
        assert not flag(name, spec) or spec.help or spec.choices, f"{name}: an option with no help"


def test_every_trainconfig_field_says_how_each_trainer_takes_it():
    for name, spec in TRAIN.items():
        assert set(spec.roles) == {"adapter", "full", "auto"}, name
        assert spec.roles["auto"] in {EVERY, FINE_TUNES, WINNER, CARD}, (name, spec.roles["auto"])
        full = spec.roles["full"]
        assert full in (USED, CARD) or (full not in ROLE_WORDS and len(full) > 20), f"{name}: full={full!r} says no why"


def test_the_flags_are_the_ones_the_command_always_had():
    flags = {flag(n, s) for n, s in TRAIN.items()} - {None}
    assert flags == {"--base-model", "--epochs", "--batch-size", "--learning-rate", "--warmup-ratio", "--max-seq-length",
                     "--train-negatives", "--val-fraction", "--seen-share", "--early-stopping", "--cached-loss",
                     "--mini-batch-size", "--max-memory", "--device", "--precision", "--export", "--resume", "--keep-checkpoints",
                     "--force", "--continual"}
    assert {n for n, s in TRAIN.items() if flag(n, s) is None} == {"seen_share_source", "seed", "trust_remote_code", "extra"}
    assert cli_module.EXPORTS == list(EXPORT_TARGETS)  # `ace export --backend` offers what `ace train --export` does


# ---- (a) the adapter: carries each option into AdapterConfig, uses it for its base encoder, or refuses it ----------

ADAPTER_CASES = [(n, v) for n in TRAIN for v in _other_values(TrainConfig, n)]


@pytest.mark.parametrize(("name", "value"), ADAPTER_CASES, ids=[f"{n}={v}" for n, v in ADAPTER_CASES])
def test_the_adapter_carries_or_refuses_every_option(name, value):
    config = TrainConfig(**{name: value})
    role = _role(name, "adapter")
    if role == REFUSED and value is not False and value not in ADAPTER_ACCEPTS.get(name, ()):  # --no-cached-loss asks nothing
        with pytest.raises(OptionError, match=f"--method adapter cannot use {re.escape(label(name, TRAIN[name]))}"):
            adapter_config(config)
    elif role in (REFUSED, BASE_ENCODER):  # a value the adapter honours as it is (fp32, no cached loss), or the base's
        adapter_config(config)  # (what the base encoder does with it: test_the_adapter_trains_over_the_base_asked_for)
    else:
        assert getattr(adapter_config(config), role) == value, f"{name} is not carried into AdapterConfig.{role}"


def test_the_adapter_trains_over_the_base_asked_for(tiny_rows, tmp_path, tuned_model_dir):
    """The options the adapter's frozen base encoder takes (BASE_ENCODER) change the vectors it trains on."""
    import numpy as np

    from ace_llamaindex.embeddings.query_adapter import ADAPTER_FILE

    assert {n for n in TRAIN if _role(n, "adapter") == BASE_ENCODER} == {"base_model", "max_seq_length", "trust_remote_code"}

    def weights(**options):
        out = tmp_path / f"a{len(list(tmp_path.iterdir()))}"
        result = adapter_trainer(tiny_rows, out, TrainConfig(epochs=2, val_fraction=0.0, **options))
        return result.card, np.load(out / ADAPTER_FILE)["W"]

    card, default = weights()
    short_card, short = weights(max_seq_length=4)  # queries cut to 4 tokens: other vectors, another map
    other_card, other = weights(base_model=str(tuned_model_dir))
    assert not np.allclose(default, short) and not np.allclose(default, other)
    assert other_card.base["model"] == str(tuned_model_dir) and card.base["model"] != str(tuned_model_dir)


def test_the_adapter_tables_follow_the_declarations():
    adapter_fields = {f.name for f in dataclasses.fields(AdapterConfig)}
    assert set(ADAPTER_FIELDS.values()) <= adapter_fields
    assert len(set(ADAPTER_FIELDS.values())) == len(ADAPTER_FIELDS), "two options become one AdapterConfig field"
    for name, target in ADAPTER_FIELDS.items():  # the same kind of value
        assert _kind(TrainConfig, name) is _kind(AdapterConfig, target), (name, target)
    assert set(ADAPTER_FIELDS) | set(ADAPTER_REFUSES) | {n for n in TRAIN if _role(n, "adapter") == BASE_ENCODER} == set(TRAIN)
    assert set(ADAPTER_ACCEPTS) <= set(ADAPTER_REFUSES)


def test_several_refused_options_are_one_line():
    with pytest.raises(OptionError) as err:
        adapter_config(TrainConfig(device="cuda", exports=["onnx"], precision="bf16"))
    assert "--device, --precision, --export" in str(err.value) and "\n" not in str(err.value)


# ---- (b) the full fine-tune does what each option says: trained at two values on tiny data, the run differs so --------
# (a trainer that reads an option and ignores it fails its row). Shared settings keep each run to a few steps.

TINY = {"epochs": 1, "batch_size": 4, "learning_rate": 1e-3, "max_seq_length": 16, "val_fraction": 0.0, "seed": 1,
        "precision": "fp32", "cached_loss": False}


@pytest.fixture(scope="module")
def tiny_rows():
    """16 (query, memory, another memory) rows of the shipped team memories, two queries per memory (so validation
    can hold out queries about documents a training query has): 4 steps an epoch at batch 4."""
    import json as _json

    from ace_llamaindex.data.examples import TrainingExample
    from ace_llamaindex.data.loading import DEMO_DATASET

    raw = _json.loads(DEMO_DATASET.read_text())
    text = {m["id"]: m["text"] for m in raw["memories"]}
    ids = list(text)[::37][:8]
    tests = [t for i in ids for t in [t for t in raw["tests"] if t["expected_memory_id"] == i][:2]]
    return [TrainingExample(t["query"], text[t["expected_memory_id"]],
                            [text[ids[(ids.index(t["expected_memory_id"]) + 1) % len(ids)]]]) for t in tests]


@dataclasses.dataclass
class Run:
    info: dict
    model: object
    delta: float      # sum |weight - bundled base weight| over every parameter
    forwards: int     # forward passes of the transformer during training
    checkpoints: list
    texts: int = 0    # texts those passes encoded (sentence-transformers may encode every column in one pass)
    autocast: int = 0  # of those passes, the ones run under bf16 autocast (mixed precision)


@pytest.fixture(scope="module")
def fine_tuned(tiny_rows, tmp_path_factory):
    """``fine_tuned(**options)``: the full fine-tune of the tiny rows with TINY + options (cached per options)."""
    import torch

    from ace_llamaindex.embeddings.models import DEFAULT_MODEL, open_model
    from ace_llamaindex.train.training import fine_tune, full_defaults, plan_validation, run_fingerprint

    bundled = {k: v.clone() for k, v in open_model(DEFAULT_MODEL, device="cpu").state_dict().items()}
    runs: dict = {}

    def run(folder=None, **options) -> Run:
        key = (str(folder), tuple(sorted((k, repr(v)) for k, v in options.items())))
        if key not in runs:
            config = full_defaults(TrainConfig(**{**TINY, **options}))
            split = plan_validation(tiny_rows, config.val_fraction, config.seed)
            checkpoints = folder or tmp_path_factory.mktemp("run") / "out.checkpoints"
            counter = {"n": 0, "texts": 0, "autocast": 0}
            original = torch.nn.Module.__call__

            def counting(module, *args, **kwargs):
                if type(module).__name__ == "Transformer" and module.training:
                    counter["n"] += 1
                    counter["texts"] += len(args[0]["input_ids"]) if args and "input_ids" in args[0] else 0
                    counter["autocast"] += torch.is_autocast_enabled("cpu") and torch.get_autocast_dtype("cpu") == torch.bfloat16
                return original(module, *args, **kwargs)

            with pytest.MonkeyPatch.context() as mp:
                mp.setattr(torch.nn.Module, "__call__", counting)
                tuned = fine_tune(split, config, checkpoints, run_fingerprint(tiny_rows, config))
            state = tuned.model.state_dict()
            delta = float(sum((state[k].float().cpu() - v.float()).abs().sum() for k, v in bundled.items()
                              if v.is_floating_point()))
            runs[key] = Run(tuned.info, tuned.model, delta, counter["n"],
                            sorted(p.name for p in checkpoints.glob("checkpoint-*")) if checkpoints.exists() else [],
                            counter["texts"], counter["autocast"])
        return runs[key]

    return run


def _steps(run: Run) -> int:
    return run.info["optimizer_steps"]


# (option, value, the options both runs share besides TINY, what must differ from the run without the option)
FULL_ROWS = [
    ("epochs", 2, {}, lambda run, base: _steps(run) == 2 * _steps(base)),
    ("batch_size", 2, {}, lambda run, base: _steps(run) == 2 * _steps(base)),
    ("learning_rate", 1e-9, {}, lambda run, base: run.delta < base.delta / 100),
    ("warmup_ratio", 0.9, {}, lambda run, base: run.delta < 0.9 * base.delta),
    ("max_seq_length", 8, {}, lambda run, base: run.model.max_seq_length == 8 and base.model.max_seq_length == 16
     and run.info["memory_plan"]["longest_tokens"]["document"] <= 8),
    ("num_negatives", 0, {}, lambda run, base: run.info["negatives"]["negatives_per_example"] == 0
     and 0 < run.texts < base.texts),
    ("mini_batch_size", 1, {"cached_loss": True}, lambda run, base: run.forwards > base.forwards),
    # the cached loss embeds every column twice (without, then with gradients): more forward passes than plain MNRL
    ("cached_loss", True, {}, lambda run, base: run.info["memory_plan"]["cached"] and run.forwards > 2 * base.forwards),
    # a budget too small for plain MNRL's step: the cached loss, one row per forward pass; a large one: plain MNRL
    ("max_memory", 0.5, {"cached_loss": None, "max_memory": 64.0},
     lambda run, base: run.info["memory_plan"]["cached"] and not base.info["memory_plan"]["cached"]
     and run.forwards > 2 * base.forwards),
    # bf16 mixed precision: the transformer's training passes run under bf16 autocast; fp32: none does
    ("precision", "bf16", {}, lambda run, base: run.info["precision"] == "bf16" and run.autocast == run.forwards > 0
     and base.autocast == 0),
    ("seed", 2, {}, lambda run, base: run.delta != base.delta),
    ("keep_checkpoints", True, {}, lambda run, base: run.checkpoints and not base.checkpoints),
    ("early_stopping_patience", 1, {"val_fraction": 0.25, "epochs": 4, "learning_rate": 1e-12},
     lambda run, base: _steps(run) < _steps(base)),  # nothing improves: stops after 2 of 4 epochs
    ("extra", {"max_steps": 1}, {}, lambda run, base: _steps(run) == 1 and _steps(base) > 1),
]


def test_every_option_the_full_fine_tune_uses_has_a_behaviour_row():
    rows = {name for name, *_ in FULL_ROWS} | {name for name, *_ in TRAIN_ROWS} | {"base_model", "resume", "device",
                                                                                   "trust_remote_code"}
    assert rows == {name for name in TRAIN if _role(name, "full") == USED}, "an option the full fine-tune uses, untested"


@pytest.mark.parametrize(("name", "value", "shared", "differs"), FULL_ROWS, ids=[r[0] for r in FULL_ROWS])
def test_the_full_fine_tune_does_what_the_option_says(fine_tuned, name, value, shared, differs):
    base, run = fine_tuned(**shared), fine_tuned(**{**shared, name: value})
    assert differs(run, base), (name, value, run.info, run.delta, run.forwards, base.delta, base.forwards)


def test_the_base_model_is_the_one_trained(fine_tuned, tuned_model_dir):
    # at a learning rate of 1e-9 the weights stay where they started: the bundled model's, or the given folder's
    assert fine_tuned(learning_rate=1e-9, base_model=str(tuned_model_dir)).delta > 1000 * fine_tuned(learning_rate=1e-9).delta


def test_resume_continues_the_runs_checkpoint(fine_tuned, tmp_path):
    folder = tmp_path / "out.checkpoints"
    first = fine_tuned(folder, epochs=2, keep_checkpoints=True)
    assert first.checkpoints
    resumed = fine_tuned(folder, epochs=3, keep_checkpoints=True, resume=True)
    assert resumed.info["resumed_from_checkpoint"] and resumed.info["resumed_from_checkpoint"].endswith(first.checkpoints[-1])
    assert _steps(resumed) == 3 * _steps(first) // 2  # epoch 3 on top of the two it resumed


def test_the_device_asked_for_is_the_one_used(tiny_rows, tmp_path):
    import torch

    from ace_llamaindex.train.training import fine_tune, full_defaults, plan_validation

    if torch.cuda.is_available():
        pytest.skip("this row asks for CUDA where there is none")
    config = full_defaults(TrainConfig(**{**TINY, "device": "cuda"}))
    with pytest.raises(EmbeddingError, match="CUDA"):  # asked for CUDA: opened there, and refused
        fine_tune(plan_validation(tiny_rows, 0.0, 1), config, tmp_path / "c", "fingerprint")


def test_trust_remote_code_reaches_every_model_opened(tiny_rows, tmp_path, monkeypatch):
    from ace_llamaindex.train import training as full

    opened = []
    real = full.open_model
    monkeypatch.setattr(full, "open_model", lambda *a, **k: opened.append(k.get("trust_remote_code")) or real(*a, **k))
    config = full_defaults_of(trust_remote_code=True, max_steps=1)
    full.fine_tune(full.plan_validation(tiny_rows, 0.0, 1), config, tmp_path / "c", "fingerprint")
    assert opened == [True]


def full_defaults_of(max_steps: int | None = None, **options) -> TrainConfig:
    from ace_llamaindex.train.training import full_defaults

    return full_defaults(TrainConfig(**{**TINY, **options, **({"extra": {"max_steps": max_steps}} if max_steps else {})}))


# the options `train` (not the fine-tune itself) takes: the split, the gate, what is written; tiny runs of train()
TRAIN_ROWS = [
    ("val_fraction", 0.25, {}, lambda card, base: card.val_examples > 0 and base.val_examples == 0),
    ("seen_share", 0.75, {"val_fraction": 0.25},  # validation holds out 3 of 4 queries about seen documents, not 1
     lambda card, base: card.gate["seen_documents"] > base.gate["seen_documents"]),
    ("force", True, {"learning_rate": 1e-12, "val_fraction": 0.25}, lambda card, base: card.promoted and not base.promoted),
    ("exports", ["onnx"], {}, lambda card, base: card.exported == ["onnx"] and base.exported == []),
]


@pytest.mark.parametrize(("name", "value", "shared", "differs"), TRAIN_ROWS, ids=[r[0] for r in TRAIN_ROWS])
def test_train_does_what_the_option_says(tiny_rows, tmp_path, tuned_model_dir, monkeypatch, name, value, shared, differs):
    import shutil

    from ace_llamaindex.train import training as full

    exported: list = []
    monkeypatch.setattr(full, "export_all", lambda folder, targets, check=None: exported.extend(targets))
    cards = []
    for options in (shared, {**shared, name: value}):
        out = tmp_path / f"m{len(cards)}"
        if name == "force":  # a model already there: only a better one, or --force, replaces it
            shutil.copytree(tuned_model_dir, out)
        exported.clear()
        result = full.train(tiny_rows, out, TrainConfig(**{**TINY, **options}))
        result.card.exported = list(exported)
        cards.append(result.card)
    assert differs(cards[1], cards[0]), (name, value, cards[1].gate, cards[0].gate)


# ---- (c) --method auto hands every option to what it trains: its fine-tunes get them (and (b) shows the fine-tune
# does what each says); the split and the adapters get theirs. Run up to the fine-tune, which records and stops.

class _Stop(Exception):
    pass


def _auto_until_the_fine_tune(rows, tmp_path, monkeypatch, config: TrainConfig, base_encoder=None) -> dict:
    seen: dict = {}

    def recording(split, full_config, checkpoints, fingerprint):
        seen.update(split=split, config=full_config)
        raise _Stop

    monkeypatch.setattr(method_selection, "fine_tune", recording)
    with pytest.raises(_Stop):
        method_selection.select_method(rows, tmp_path / "auto", config, base_encoder=base_encoder)
    return seen


AUTO_OPTIONS = [(n, v) for n in TRAIN if _role(n, "auto") in (FINE_TUNES, EVERY) and _role(n, "full") == USED
                and n != "base_model" for v in _other_values(TrainConfig, n)]


@pytest.mark.parametrize(("name", "value"), AUTO_OPTIONS, ids=[f"{n}={v}" for n, v in AUTO_OPTIONS])
def test_auto_hands_every_option_to_its_fine_tunes(tiny_rows, tmp_path, monkeypatch, name, value):
    options = {"val_fraction": 0.25, name: value}
    seen = _auto_until_the_fine_tune(tiny_rows, tmp_path, monkeypatch, TrainConfig(**options))
    assert getattr(seen["config"], name) == value, f"--method auto does not give its fine-tunes {name}={value!r}"
    for other in FULL_DEFAULTS:  # the full fine-tune's own defaults filled in where the option says None
        assert getattr(seen["config"], other) == (value if other == name else FULL_DEFAULTS[other]), other


def test_auto_splits_as_the_options_say(tiny_rows, tmp_path, monkeypatch):
    def split(**options):
        return _auto_until_the_fine_tune(tiny_rows, tmp_path, monkeypatch, TrainConfig(**options))["split"]

    assert len(split(val_fraction=0.25).val) == 4 and len(split(val_fraction=0.5).val) == 8
    seen_docs = lambda s: sum(e.positive in {t.positive for t in s.train} for e in s.val)  # noqa: E731
    assert seen_docs(split(val_fraction=0.25, seen_share=0.75)) > seen_docs(split(val_fraction=0.25, seen_share=0.0))
    assert {e.query for e in split(val_fraction=0.25, seed=1).val} != {e.query for e in split(val_fraction=0.25, seed=2).val}


def test_auto_trains_its_fine_tunes_from_the_base_model_asked_for(tiny_rows, tmp_path, monkeypatch, tuned_model_dir):
    seen = _auto_until_the_fine_tune(tiny_rows, tmp_path, monkeypatch,
                                     TrainConfig(val_fraction=0.25, base_model=str(tuned_model_dir)))
    assert seen["config"].base_model == str(tuned_model_dir)


def test_auto_hands_its_adapters_their_options(tiny_rows, tmp_path, monkeypatch):
    """The adapter candidates get what the adapter takes (AdapterConfig fields auto passes them), read where they train."""
    from ace_llamaindex.train.training import FineTuned

    given: list = []

    def fine_tune(split, full_config, checkpoints, fingerprint):  # no training: the adapters come first after it
        return FineTuned(None, {"device": "cpu", "train_seconds": 0.0})

    def fit_adapter(split, examples, base, config, init=None, corpus=None):
        given.append(config)
        raise _Stop

    monkeypatch.setattr(method_selection, "fine_tune", fine_tune)
    monkeypatch.setattr(method_selection, "fit_adapter", fit_adapter)
    with pytest.raises(_Stop):
        method_selection.select_method(tiny_rows, tmp_path / "auto", TrainConfig(val_fraction=0.25, seed=7, num_negatives=0))
    assert (given[0].seed, given[0].num_negatives, given[0].val_fraction) == (7, 0, 0.25)


# ---- (d) the command: one option per flagged field, mapped to its field; a bad value is one clear line -------------

def _command(name: str):
    return cli.commands[name]


def _args(cls, name: str, value) -> list[str]:
    spec = declared(cls)[name]
    opt = flag(name, spec)
    if isinstance(value, bool):
        return [opt if value else f"--no-{opt[2:]}"]
    if isinstance(value, list):
        return [part for v in value for part in (opt, str(v))]
    return [opt, str(value)]


@pytest.mark.parametrize("command", ["train", "pipeline"])
def test_the_help_lists_every_generated_flag(command):
    result = CliRunner().invoke(cli, [command, "--help"], terminal_width=200)
    assert result.exit_code == 0, result.output
    for name, spec in TRAIN.items():
        if (opt := flag(name, spec)) is not None:
            assert opt in result.output, opt
            if spec.negatable:
                assert f"--no-{opt[2:]}" in result.output
    for name, spec in MINE.items():
        if command == "pipeline" and (opt := flag(name, spec)) is not None:
            assert opt in result.output, opt


def test_the_help_shows_each_methods_default_from_where_it_is_written(monkeypatch):
    spec = TRAIN["learning_rate"]
    assert "Default: 5e-5 (adapter: 1e-4)." in _training_help("learning_rate", spec)
    monkeypatch.setitem(FULL_DEFAULTS, "learning_rate", 2.5e-5)
    assert "Default: 2.5e-5 (adapter: 1e-4)." in _training_help("learning_rate", spec)
    assert _training_help("warmup_ratio", TRAIN["warmup_ratio"]).endswith("Default: 0.1 (full fine-tune only).")
    assert _training_help("batch_size", TRAIN["batch_size"]).endswith(
        f"Default: {FULL_DEFAULTS['batch_size']} (adapter: {AdapterConfig().batch_size}).")


FLAGGED = [(n, v) for n in TRAIN if flag(n, TRAIN[n]) for v in _other_values(TrainConfig, n)]


@pytest.mark.parametrize(("name", "value"), FLAGGED, ids=[f"{n}={v}" for n, v in FLAGGED])
def test_every_training_option_reaches_its_field(name, value, tmp_path):
    for command in ("train", "pipeline"):
        ctx = _command(command).make_context(command, [*_args(TrainConfig, name, value),
                                                       *([str(tmp_path / "data.json")] if command == "train" else [])])
        config = cli_module._training(ctx.params, 7)
        assert getattr(config, name) == value and config.seed == 7, (command, name)
        assert {f.name: getattr(config, f.name) for f in dataclasses.fields(config) if f.name not in (name, "seed")} \
            == {f.name: default(TrainConfig, f.name) for f in dataclasses.fields(config) if f.name not in (name, "seed")}


MINED = [(n, v) for n in MINE if flag(n, MINE[n]) for v in _other_values(MiningOptions, n)]


@pytest.mark.parametrize(("name", "value"), MINED, ids=[f"{n}={v}" for n, v in MINED])
def test_every_mining_option_reaches_its_field(name, value):
    ctx = _command("mine").make_context("mine", _args(MiningOptions, name, value))
    options = cli_module._mining(ctx.params)
    assert getattr(options, name) == value


def test_no_option_is_given_means_the_dataclass_defaults(tmp_path):
    ctx = _command("train").make_context("train", [str(tmp_path / "data.json")])
    assert cli_module._training(ctx.params, 42) == TrainConfig()
    assert cli_module._mining(_command("mine").make_context("mine", []).params) == MiningOptions()


BAD_TRAIN = [(n, v) for n in TRAIN if flag(n, TRAIN[n]) for v in _bad_values(TrainConfig, n)]


@pytest.mark.parametrize(("name", "value"), BAD_TRAIN, ids=[f"{n}={v}" for n, v in BAD_TRAIN])
def test_a_bad_value_is_one_clear_line(name, value, tmp_path):
    opt = flag(name, TRAIN[name])
    args = [str(tmp_path / "data.json"), *_args(TrainConfig, name, value)]
    result = CliRunner().invoke(cli, ["train", *args])
    assert result.exit_code == 2, result.output
    error = [line for line in result.output.splitlines() if line.startswith("Error:")]
    assert len(error) == 1 and f"Invalid value for '{opt}'" in error[0], result.output
    with pytest.raises(OptionError, match=rf"^{name} must be [^\n]*$"):  # the Python API: the same range, one line
        TrainConfig(**{name: value}).validate()


BAD_MINE = [(n, v) for n in MINE if flag(n, MINE[n]) for v in _bad_values(MiningOptions, n)]


@pytest.mark.parametrize(("name", "value"), BAD_MINE, ids=[f"{n}={v}" for n, v in BAD_MINE])
def test_a_bad_mining_value_is_one_clear_line(name, value):
    opt = flag(name, MINE[name])
    result = CliRunner().invoke(cli, ["mine", *_args(MiningOptions, name, value)])
    error = [line for line in result.output.splitlines() if line.startswith("Error:")]
    assert result.exit_code == 2 and len(error) == 1 and f"Invalid value for '{opt}'" in error[0], result.output
    with pytest.raises(OptionError, match=rf"^{name} must be [^\n]*$"):
        MiningOptions(**{name: value}).validate()


ADAPTER = declared(AdapterConfig)
BAD_ADAPTER = [(n, v) for n in ADAPTER for v in _bad_values(AdapterConfig, n)]


@pytest.mark.parametrize(("name", "value"), BAD_ADAPTER, ids=[f"{n}={v}" for n, v in BAD_ADAPTER])
def test_a_bad_adapter_value_is_one_line_from_its_declaration(name, value):
    """Issue #39: AdapterConfig declares its ranges as TrainConfig does; validate() is made from them."""
    with pytest.raises(OptionError, match=rf"^adapter {name} must be [^\n]*$"):
        AdapterConfig(**{name: value}).validate()


def test_the_adapter_checks_what_it_checked_before():
    assert {n for n, _ in BAD_ADAPTER} == {"kind", "epochs", "batch_size", "learning_rate", "temperature", "patience",
                                          "identity_weight", "seen_share", "val_fraction"}  # the last three: finite
    for name, value, message in [("kind", "deep", "adapter kind must be one of ('linear', 'mlp'), got 'deep'"),
                                 ("epochs", 0, "adapter epochs must be at least 1, got 0"),
                                 ("learning_rate", 1.0, "adapter learning_rate must be between 0 and 1, got 1.0"),
                                 ("temperature", 0.0, "adapter temperature must be above 0, got 0.0")]:
        with pytest.raises(OptionError) as caught:
            AdapterConfig(**{name: value}).validate()
        assert str(caught.value) == message
    AdapterConfig(kind="mlp", epochs=1, batch_size=1, patience=1, learning_rate=0.5, temperature=1.0).validate()
    for name in ADAPTER:  # every valid value passes
        for value in _other_values(AdapterConfig, name):
            AdapterConfig(**{name: value}).validate()


def test_each_adapter_field_names_the_option_it_comes_from():
    for train_name, target in ADAPTER_FIELDS.items():
        assert f"TrainConfig.{train_name}" in ADAPTER[target].no_flag, (train_name, target)
        # what `ace train` accepts for the option, the adapter accepts
        lows = TRAIN[train_name].minimum, ADAPTER[target].minimum
        assert lows[1] is None or (lows[0] is not None and lows[0] >= lows[1]), (train_name, lows)
    for name in set(ADAPTER) - set(ADAPTER_FIELDS.values()):
        assert "Python API only" in ADAPTER[name].no_flag, name


def test_the_python_api_docs_list_every_option():
    for cls in (TrainConfig, MiningOptions, AdapterConfig):
        for name in declared(cls):
            assert f"``{name}``" in cls.__doc__, name


# ---- (e) the default: `ace train` with no --method runs --method auto end to end --------------------------------------

def test_ace_train_without_method_runs_auto_and_the_card_says_what_the_gate_chose(tmp_path):
    import json

    from ace_llamaindex.data.loading import SMALL_DATASET
    from ace_llamaindex.records.card import read_card

    runner = CliRunner()
    data = tmp_path / "data.json"
    mined = runner.invoke(cli, ["mine", str(SMALL_DATASET), "--num-negatives", "1", "-o", str(data)])
    assert mined.exit_code == 0, mined.output
    out = tmp_path / "model"
    result = runner.invoke(cli, ["train", str(data), "-o", str(out), "--epochs", "1", "--batch-size", "16",
                                 "--max-seq-length", "64"])  # no --method: the default
    assert result.exit_code == 0, result.output
    card = read_card(out) if out.exists() else None
    written = json.loads(out.with_name("model.not-promoted.json").read_text()) if card is None else card.to_dict()
    assert written["method"] == "auto", written
    assert set(written["candidates"]) == {"adapter", "interpolate(0.5)", "interpolate(0.75)", "full", "full+adapter"}
    # one short epoch on these 184 queries: no candidate is better with confidence, so the base stays and nothing is
    # written but the card beside where the model would have gone
    assert written["chosen"] == "base" and written["promoted"] is False and not out.exists(), written["choice"]
    assert written["choice"]["reason"] == "no candidate is better than the base with confidence: the base model stays"
    assert all(c["gate"]["verdict"] != "better" for c in written["candidates"].values()), written["candidates"]
