"""The one error family of elmbench: the CLI turns each into a one-line message and exit code."""

from __future__ import annotations

import difflib
from collections.abc import Iterable


class ElmbenchError(Exception):
    """A user-facing error: its message is one line that says what is wrong and what is allowed."""

    exit_code = 2


class UnknownNameError(ElmbenchError):
    """A name (model, norm, device, suite, ...) that is not in its registry."""

    def __init__(
        self,
        kind: str,
        name: str,
        valid: Iterable[str],
        aliases: dict[str, str] | None = None,
        where: str = "",
    ) -> None:
        """`where`, when given, goes first: what holds the names (a suite, a file)."""
        self.kind, self.name, self.valid = kind, name, sorted(valid)
        # Match against every accepted spelling, suggest the canonical name it belongs to.
        spellings = {v.lower(): v for v in self.valid}
        spellings.update({a.lower(): v for a, v in (aliases or {}).items()})
        close = difflib.get_close_matches(name.lower(), spellings, n=1, cutoff=0.5)
        hint = f" Did you mean '{spellings[close[0]]}'?" if close else ""
        prefix = f"{where}: " if where else ""
        super().__init__(
            f"{prefix}unknown {kind} '{name}'.{hint} Valid {kind}s: {', '.join(self.valid)}"
        )


class CheckpointError(ElmbenchError):
    """A checkpoint that cannot be loaded: names the file, the key, the expected and found value."""

    def __init__(
        self,
        path: object,
        problem: str,
        key: str | None = None,
        expected: object = None,
        found: object = None,
    ) -> None:
        self.path, self.problem, self.key = str(path), problem, key
        self.expected, self.found = expected, found
        parts = [f"{self.path}: {problem}"]
        if key is not None:
            parts.append(f"key '{key}'")
        if expected is not None or found is not None:
            parts.append(f"expected {expected}, found {found}")
        super().__init__("; ".join(parts))


class UnavailableError(ElmbenchError):
    """A variant, backend or device that exists but cannot run on this machine."""

    def __init__(self, what: str, reason: str, hint: str = "") -> None:
        self.what, self.reason, self.hint = what, reason, hint
        message = f"{what} is not available here: {reason}"
        if hint:
            message += f". {hint}"
        super().__init__(message)


class ConfigError(ElmbenchError):
    """A configuration value that is out of range or contradicts another."""


class NonFiniteError(ElmbenchError):
    """A model that computed NaN or infinite values: the case it was measuring fails with this."""
