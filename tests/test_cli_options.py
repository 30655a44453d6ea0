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
