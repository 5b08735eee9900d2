"""Interrupted runs (Ctrl-C, SIGTERM): every finished case stays in the run folder, and one line
on stderr gives the exact command that resumes the run. The exit status is 128 + the signal.
"""

from __future__ import annotations

import shlex
import signal
import sys
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from types import FrameType

import click


class Terminated(KeyboardInterrupt):
    """SIGTERM, raised where the run is, so that it unwinds as Ctrl-C does (locks released)."""

    def __init__(self, signum: int) -> None:
        super().__init__(signal.Signals(signum).name)
        self.signum = signum


@dataclass
class RunRef:
    """The command being run and, once it exists, its run folder."""

    command: str
    path: Path | None = None

    def resume_command(self) -> str:
        """The command line that finishes the run."""
        where = shlex.quote(str(Path(self.path or ".").resolve()))
        return f"elmbench {self.command} --resume {where}"


def _terminate(signum: int, frame: FrameType | None) -> None:
    raise Terminated(signum)


@contextmanager
def resumable(command: str) -> Iterator[RunRef]:
    """Run a measuring command's body: an interrupt prints how to resume and exits 128 + signal.

    The body sets `path` on the yielded RunRef as soon as the run folder exists.
    """
    ref = RunRef(command)
    main = threading.current_thread() is threading.main_thread()
    previous = signal.signal(signal.SIGTERM, _terminate) if main else None
    try:
        yield ref
    except KeyboardInterrupt as exc:
        signum = exc.signum if isinstance(exc, Terminated) else signal.SIGINT
        name = signal.Signals(signum).name
        if ref.path is None:
            click.echo(
                f"interrupted ({name}) before the run started; nothing was written", err=True
            )
        else:
            click.echo(
                f"interrupted ({name}): the finished cases are kept in {ref.path}; resume with: "
                f"{ref.resume_command()}",
                err=True,
            )
        sys.exit(128 + signum)
    finally:
        if previous is not None:
            signal.signal(signal.SIGTERM, previous)
