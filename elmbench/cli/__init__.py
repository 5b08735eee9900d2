"""The `elmbench` command line: a thin click group; each command lives in its own module.

Command modules must import torch, mlx, lm_eval, pandas and matplotlib inside command bodies only.
"""

from __future__ import annotations

import importlib
import sys
from typing import Any, NoReturn

import click

from elmbench import __version__
from elmbench.errors import ElmbenchError

# Each module exposes `COMMANDS`, a list of click commands; add a module here to add its commands.
COMMAND_MODULES = (
    "elmbench.cli.info",
    "elmbench.cli.throughput",
    "elmbench.cli.accuracy",
    "elmbench.cli.profile",
)


def fail(err: ElmbenchError) -> NoReturn:
    """Print `error: <one line>` on stderr and exit with the error's code, never a traceback."""
    click.echo(f"error: {' '.join(str(err).split())}", err=True)
    sys.exit(err.exit_code)


class ElmbenchGroup(click.Group):
    """A group that turns domain errors from any subcommand (its options included) into `fail`."""

    def invoke(self, ctx: click.Context) -> Any:
        """Run the subcommand; an ElmbenchError becomes a one-line message and its exit code."""
        try:
            return super().invoke(ctx)
        except ElmbenchError as err:
            fail(err)


@click.group(
    cls=ElmbenchGroup,
    context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100},
)
@click.version_option(__version__, "--version", prog_name="elmbench")
def cli() -> None:
    """Benchmark, profile and evaluate Apple's OpenELM models on PyTorch and MLX."""


for _module in COMMAND_MODULES:
    for _command in importlib.import_module(_module).COMMANDS:
        cli.add_command(_command)


def main() -> None:
    """Entry point of the `elmbench` console script."""
    from elmbench.backends import mlx_blas

    mlx_blas.allow_restart()  # MLX work in this process may restart it with OpenBLAS
    try:
        cli.main(prog_name="elmbench")
    except ElmbenchError as err:  # raised outside any subcommand, e.g. by the group itself
        fail(err)
