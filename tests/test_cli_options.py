"""Each CLI option is declared once: an option name several commands take means the same thing everywhere (the same
type, default and help), except the names below, whose meaning differs by command on purpose (each with why)."""

from __future__ import annotations

import click
import pytest

from ace_llamaindex.cli import cli

# name -> why it is not one declaration
ROLES = {
    "--collection": "a serving collection (index, search, rollout, experiment) vs an existing one read (mine, train)",
    "--qdrant-path": "as --collection",
    "--qdrant-url": "as --collection",
    "--batch-size": "a training batch (train, pipeline) vs documents per rollout batch",
    "--force": "replace a model the gate did not call better (train) vs roll out one not shown better (rollout)",
    "--resume": "a training checkpoint vs a killed rollout's version",
    "--mode": "how a collection is searched (index, search) vs how an experiment serves (experiment start)",
    "--model": "the current system's model (mine, pipeline) vs the model served or tuned",
    "--output": "what each command writes",
    "-o": "what each command writes",
    "--test-fraction": "the most recent share of a feedback log (mine) vs held-out queries (pipeline)",
    "--fallback-url": "the serving fallback (index, search) vs the one whose space a rollout embeds",
    "--fallback-model": "as --fallback-url",
    "--feedback-log": "the log written (search) vs the log an experiment reads",
    "--format": "a dataset format (dataset commands) vs an export format",
    "--split": "as --format",
}


def _options() -> dict[str, list[tuple[str, click.Option]]]:
    found: dict[str, list[tuple[str, click.Option]]] = {}

    def walk(command: click.Command, path: str) -> None:
        if isinstance(command, click.Group):
            for name, sub in command.commands.items():
                walk(sub, f"{path} {name}".strip())
            return
        for param in command.params:
            if isinstance(param, click.Option):
                for opt in param.opts:
                    found.setdefault(opt, []).append((path, param))

    walk(cli, "")
    return found


def _meaning(option: click.Option) -> tuple:
    return type(option.type).__name__, repr(option.type), str(option.default), option.help, option.is_flag


SHARED = sorted(name for name, uses in _options().items() if len(uses) > 1)


@pytest.mark.parametrize("name", SHARED)
def test_an_option_several_commands_take_is_declared_once(name):
    uses = _options()[name]
    meanings = {_meaning(option) for _, option in uses}
    if name in ROLES:
        assert len(meanings) > 1, f"{name} is now one declaration: drop it from ROLES"
    else:
        assert len(meanings) == 1, f"{name} differs between {[path for path, _ in uses]}: {meanings}"


def test_the_options_the_issue_named_are_single_declarations():
    for name in ("--engine", "--max-queries", "--json", "--workers"):
        assert name in SHARED and name not in ROLES


def test_the_endpoint_options_make_one_endpoint():
    """Issue #39: ``ace train`` and ``ace eval`` declare the endpoint once (``cli_endpoint.endpoint_options``), each
    naming its model and URL flags; the command receives one :class:`Endpoint`."""
    from click.testing import CliRunner

    from ace_llamaindex.cli_endpoint import Endpoint, endpoint_options

    got = []

    @click.command()
    @endpoint_options(model=("--local", "l"), url=("--url", "u"), model_name=("--name", "n"))
    @click.option("--other", default=0, type=int)
    def command(endpoint, other):
        got.append((endpoint, other))

    args = ["--local", "m", "--url", "http://h/v1", "--name", "e", "--query-prefix", "q: ", "--document-prefix", "d: ",
            "--other", "3"]
    assert CliRunner().invoke(command, args).exit_code == 0
    assert got[-1] == (Endpoint("m", "http://h/v1", "e", "q: ", "d: "), 3)
    assert CliRunner().invoke(command, []).exit_code == 0 and got[-1] == (Endpoint(), 0)
    assert [p.opts[0] for p in command.params] == ["--local", "--url", "--name", "--query-prefix", "--document-prefix",
                                                   "--other"]
    # both commands: the same prefix options, each its own model flags
    flags = {name: [p.opts[0] for p in cli.commands[name].params] for name in ("train", "eval")}
    assert "--baseline" in flags["eval"] and "--baseline" not in flags["train"]
    for name in ("train", "eval"):
        assert flags[name].index("--document-prefix") == flags[name].index("--query-prefix") + 1
