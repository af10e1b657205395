"""The README names every environment variable DSM reads, so that its list cannot drift from the code: each
setting's `DSM_<NAME>` (from `StorageConfig`'s fields), each `envvar` of a `dsm` command's option (walked
through click's command tree), and every `DSM_*` name the source and the tests read with os.environ."""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Iterator
from pathlib import Path

import click

from dsm.cli import main
from dsm.config import StorageConfig

ROOT = Path(__file__).parents[1]


def command_envvars(command: click.Command) -> Iterator[str]:
    for param in command.params:
        names = param.envvar if isinstance(param.envvar, (list, tuple)) else [param.envvar]
        yield from (str(name) for name in names if name)
    if isinstance(command, click.Group):
        for sub in command.commands.values():
            yield from command_envvars(sub)


def test_every_environment_variable_is_in_the_readme() -> None:
    readme = ROOT.joinpath("README.md").read_text()
    settings = {"DSM_" + f.name.upper() for f in dataclasses.fields(StorageConfig)}
    options = set(command_envvars(main))
    assert {"DSM_NODE_URL", "DSM_ENDPOINTS", "DSM_HTTP_TOKEN", "DSM_CA_FILE"} <= options
    read = set()
    for path in [*ROOT.joinpath("src").rglob("*.py"), *ROOT.joinpath("tests").rglob("*.py")]:
        read |= set(re.findall(r"environ(?:\.get\(|\[)\"(DSM_[A-Z0-9_]+)\"", path.read_text()))
    missing = sorted(name for name in settings | options | read if f"`{name}`" not in readme)
    assert not missing, f"README.md does not name these environment variables (as `NAME`): {missing}"
