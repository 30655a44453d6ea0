"""Each option declared once (issue #30): a TrainConfig / MiningOptions field's declaration (ace_llamaindex.options)
makes its CLI option, its range check and its docs; every TrainConfig field is used or refused by every trainer and
``--method auto`` honours or refuses every option of its candidates. Fast: no model is loaded (the trainers' code is
read, not run)."""

from __future__ import annotations

import ast
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
from ace_llamaindex.errors import OptionError
from ace_llamaindex.mine.mining import MiningOptions
from ace_llamaindex.options import declared, default, flag, label, undeclared, value_type
from ace_llamaindex.train import method_selection, training
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


def _reads(source: str, names=("config",)) -> set[str]:
    """The attributes of ``names`` that ``source`` reads (``config.epochs``: ``epochs``)."""
    return {node.attr for node in ast.walk(ast.parse(source))
            if isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name) and node.value.id in names}


def _calls(source: str, function: str) -> list[ast.Call]:
    return [node for node in ast.walk(ast.parse(source)) if isinstance(node, ast.Call)
            and isinstance(node.func, ast.Name) and node.func.id == function]


def _dedented(obj) -> str:
    return textwrap.dedent(inspect.getsource(obj))


def _role(name: str, who: str) -> str:
    return TRAIN[name].roles[who]


# ---- every field is declared, with a flag or the reason it has none -----------------------------------------------

@pytest.mark.parametrize("cls", [TrainConfig, MiningOptions])
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
                     "--mini-batch-size", "--device", "--precision", "--export", "--resume", "--keep-checkpoints",
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
        adapter_config(config)
        if role == BASE_ENCODER:
            assert name in _reads(_dedented(adapter_trainer)), f"adapter_trainer does not use config.{name}"
    else:
        assert getattr(adapter_config(config), role) == value, f"{name} is not carried into AdapterConfig.{role}"


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


# ---- (b) the full fine-tune uses every option (train.training reads it), or the declaration says why not -----------

def test_the_full_fine_tune_uses_every_option():
    source = inspect.getsource(training)
    reads = _reads(source)
    for name in TRAIN:
        role = _role(name, "full")
        if role == USED:
            assert name in reads, f"train.training never reads config.{name}: use it, or declare full=<why not>"
        elif role == CARD:  # recorded in the card: the whole config is
            assert any(c.args and isinstance(c.args[0], ast.Name) and c.args[0].id == "config"
                       for c in _calls(_dedented(training.train), "asdict"))
    assert reads <= set(TRAIN) | {"validate"}, f"unknown options read: {reads - set(TRAIN)}"


def test_the_full_defaults_are_options_whose_none_means_the_methods_own():
    for name, value in FULL_DEFAULTS.items():
        assert default(TrainConfig, name) is None and _role(name, "auto") == FINE_TUNES, name
        TrainConfig(**{name: value}).validate()


# ---- (c) --method auto honours or refuses every option of its candidates -------------------------------------------

def test_auto_honours_every_option_of_its_candidates():
    source = _dedented(method_selection.select_method)
    reads = _reads(source, ("config",))
    adapters = _calls(source, "AdapterConfig")
    assert adapters, "select_method no longer makes its adapters' AdapterConfig here: update this test"
    to_adapters = {kw.value.attr: kw.arg for c in adapters for kw in c.keywords
                   if isinstance(kw.value, ast.Attribute) and isinstance(kw.value.value, ast.Name)
                   and kw.value.value.id == "config"}
    assert any(isinstance(a, ast.Name) and a.id == "full_config" for c in _calls(source, "fine_tune") for a in c.args), \
        "the fine-tune candidates no longer get full_config (every option, the full fine-tune's defaults filled in)"
    for name in TRAIN:
        role = _role(name, "auto")
        if role in (EVERY, WINNER):
            assert name in reads, f"--method auto never reads config.{name}"
        if role == FINE_TUNES:  # the fine-tunes take it (test_the_full_fine_tune_uses_every_option); the adapters not
            assert _role(name, "full") == USED and name not in to_adapters, name
        if role == CARD:
            assert any(c.args and isinstance(c.args[0], ast.Name) and c.args[0].id == "full_config"
                       for c in _calls(source, "asdict"))
        if _role(name, "adapter") == REFUSED:  # what the adapter refuses, auto gives to the fine-tunes (or the winner)
            assert role in (FINE_TUNES, WINNER), name
    for option_name, adapter_name in to_adapters.items():  # what auto passes its adapters is theirs to take
        assert ADAPTER_FIELDS.get(option_name) == adapter_name and _role(option_name, "auto") == EVERY, option_name
    assert reads <= set(TRAIN) | {"validate"}, f"unknown options read: {reads - set(TRAIN)}"


def test_auto_says_why_an_export_was_not_done():
    assert "exports_skipped" in _dedented(method_selection.select_method)  # an adapter over the base: no model folder


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


def test_the_python_api_docs_list_every_option():
    for cls in (TrainConfig, MiningOptions):
        for name in declared(cls):
            assert f"``{name}``" in cls.__doc__, name
