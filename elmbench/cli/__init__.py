"""The `elmbench` command line: a thin click group; each command lives in its own module.

Command modules must import torch, mlx, lm_eval, pandas and matplotlib inside command bodies only.
"""

from __future__ import annotations

import importlib
import signal
import sys
from collections.abc import Sequence
from typing import Any, NoReturn

import click

from elmbench import __version__
from elmbench.errors import ElmbenchError

# Each module exposes `COMMANDS`, a list of click commands; add a module here to add its commands.
COMMAND_MODULES = (
    "elmbench.cli.throughput",
    "elmbench.cli.profile",
    "elmbench.cli.accuracy",
    "elmbench.cli.info",
    "elmbench.cli.report",
)


def fail(err: ElmbenchError) -> NoReturn:
    """Print `error: <one line>` on stderr and exit with the error's code, never a traceback."""
    click.echo(f"error: {' '.join(str(err).split())}", err=True)
    sys.exit(err.exit_code)


class ElmbenchGroup(click.Group):
    """The command group: commands listed in the order a user needs them, summaries whole, and
    every user mistake (a domain error, or click's own usage error) one `error:` line."""

    def list_commands(self, ctx: click.Context) -> list[str]:
        """Commands in the order they were added (the order of COMMAND_MODULES), not sorted."""
        return list(self.commands)

    def format_commands(self, ctx: click.Context, formatter: click.HelpFormatter) -> None:
        """Each command with the whole first line of its docstring."""
        rows = []
        for name in self.list_commands(ctx):
            command = self.commands[name]
            if not command.hidden:
                rows.append((name, (command.help or "").strip().splitlines()[0]))
        with formatter.section("Commands"):
            formatter.write_dl(rows)

    def invoke(self, ctx: click.Context) -> Any:
        """Run the subcommand; an ElmbenchError becomes a one-line message and its exit code."""
        try:
            return super().invoke(ctx)
        except ElmbenchError as err:
            fail(err)

    def main(  # type: ignore[override]
        self,
        args: Sequence[str] | None = None,
        prog_name: str | None = None,
        standalone_mode: bool = True,
        **kwargs: Any,
    ) -> Any:
        """As click's, but a usage error (unknown option, bad value) is one `error:` line too."""
        if not standalone_mode:
            return super().main(args, prog_name, standalone_mode=False, **kwargs)
        try:
            code = super().main(args, prog_name, standalone_mode=False, **kwargs)
        except click.UsageError as err:
            where = err.ctx.command_path if err.ctx is not None else "elmbench"
            fail(ElmbenchError(f"{err.format_message()} (see: {where} --help)"))
        except click.exceptions.Abort:  # Ctrl-C outside a run (a run says how to resume it)
            click.echo("interrupted (SIGINT) before any run started; nothing was written", err=True)
            sys.exit(128 + signal.SIGINT)
        except ElmbenchError as err:  # raised outside any subcommand, e.g. by the group itself
            fail(err)
        sys.exit(code if isinstance(code, int) else 0)


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
    cli.main(prog_name="elmbench")
