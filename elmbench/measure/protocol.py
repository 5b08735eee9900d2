"""The measurement protocol: warm-up, then repetitions until a minimum count AND a minimum time
(and, on demand, until the median is known to a chosen precision, under a time cap); cases can
run one after another or interleaved, a repetition of each in turn.

Every timed region is bracketed by the device sync; sections (prefill, decode) are timed inside a
repetition with the same clock and sync. `Timing` keeps every raw value, in seconds.
"""

from __future__ import annotations

import math
import re
import time
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

from elmbench.errors import ConfigError
from elmbench.measure.stats import LEVEL, Summary
from elmbench.records.codec import to_json
from elmbench.records.types import ProtocolInfo

TOTAL = "total"  # the section that spans each whole repetition
SEQUENTIAL, INTERLEAVED = "sequential", "interleaved"
ORDERS = (SEQUENTIAL, INTERLEAVED)
_SECTION_NAME = re.compile(r"[a-z][a-z0-9_]*")
_FSUM_SLACK_S = 1e-9  # float rounding must not cost a repetition when the sum meets min_seconds


@dataclass(frozen=True)
class Protocol:
    """How long to measure: warm-up calls, then at least this many repetitions and seconds.

    With `precision_pct`, repetitions go on past the minimums until the 95% interval of every
    timed section's median is within +-precision_pct of it, or until `max_seconds` of measured
    time (the cap that always comes with it) or `max_repetitions`.
    """

    warmup: int = 2
    min_repetitions: int = 5
    min_seconds: float = 5.0
    max_repetitions: int = 1000  # safety cap; reaching it is reported in `Timing.stopped_by`
    max_cv: float = 0.10  # coefficient of variation above which a timing is flagged unstable
    precision_pct: float | None = None
    max_seconds: float | None = None

    def __post_init__(self) -> None:
        problems = []
        if self.warmup < 0:
            problems.append(f"warmup must be >= 0 (found {self.warmup})")
        if self.min_repetitions < 1:
            problems.append(f"min_repetitions must be >= 1 (found {self.min_repetitions})")
        if not self.min_seconds >= 0:
            problems.append(f"min_seconds must be >= 0 (found {self.min_seconds})")
        if self.max_repetitions < self.min_repetitions:
            problems.append(
                f"max_repetitions ({self.max_repetitions}) must be >= min_repetitions "
                f"({self.min_repetitions})"
            )
        if not self.max_cv > 0:
            problems.append(f"max_cv must be > 0 (found {self.max_cv})")
        if self.precision_pct is not None and not self.precision_pct > 0:
            problems.append(f"precision must be > 0% (found {self.precision_pct})")
        if self.max_seconds is not None and not self.max_seconds >= self.min_seconds:
            problems.append(
                f"max_seconds ({self.max_seconds}) must be >= min_seconds ({self.min_seconds})"
            )
        if problems:
            raise ConfigError("measurement protocol: " + "; ".join(problems))


class Timer:
    """Times named sections inside one repetition: `with timer.section("prefill"): ...`."""

    def __init__(self, clock: Callable[[], float], sync: Callable[[], object]) -> None:
        self._clock, self._sync = clock, sync
        self.sections: dict[str, float] = {}

    @contextmanager
    def section(self, name: str) -> Iterator[None]:
        """Sync, start the clock, run the body, sync, stop; a repeated name adds up."""
        _check_section(name)
        self._sync()
        start = self._clock()
        yield
        self._sync()
        self.sections[name] = self.sections.get(name, 0.0) + self._clock() - start


@dataclass(frozen=True)
class Timing:
    """Every raw value per section, with statistics, stability and the protocol that made them."""

    protocol: Protocol
    sections: dict[str, tuple[float, ...]]  # TOTAL first; one value per repetition
    warmup_s: tuple[float, ...] = ()  # the warm-up calls (compile time shows here), excluded
    stopped_by: str = "minimums"  # minimums | precision | max_repetitions | max_seconds
    order: str = "sequential"  # sequential | interleaved: how the run ordered its cases
    _stats: dict[str, Summary] = field(default_factory=dict, init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        for name, values in self.sections.items():
            self._stats[name] = Summary.of(values)

    @property
    def repetitions(self) -> int:
        """Number of measured repetitions."""
        return len(self.sections[TOTAL])

    @property
    def measured_s(self) -> float:
        """Summed measured time of all repetitions."""
        return math.fsum(self.sections[TOTAL])

    def stats(self, section: str = TOTAL) -> Summary:
        """Statistics of one section (seconds)."""
        if section not in self._stats:
            raise KeyError(f"no section '{section}'; timed sections: {', '.join(self.sections)}")
        return self._stats[section]

    def raw_s(self, section: str = TOTAL) -> tuple[float, ...]:
        """The raw values of one section, in repetition order."""
        self.stats(section)
        return self.sections[section]

    def stable(self, section: str | None = None) -> bool:
        """Whether the section (default: every section) varies by at most `protocol.max_cv`."""
        names = [section] if section is not None else list(self.sections)
        return all(
            (cv := self.stats(n).cv) is not None and cv <= self.protocol.max_cv for n in names
        )

    @property
    def warnings(self) -> list[str]:
        """One line per unstable section, and one when a cap cut the measurement short.

        A run that reached its precision target is not flagged for its spread: the interval of
        each median, not the coefficient of variation, says how well it is known.
        """
        out = []
        limit = f"{self.protocol.max_cv:.0%}"
        for name in self.sections:
            st = self.stats(name)
            if self.stopped_by == "precision":
                continue
            if st.cv is None:
                out.append(
                    f"timing of '{name}' has {st.n} repetition(s): its variation is unknown; "
                    "use at least 2 repetitions"
                )
            elif st.cv > self.protocol.max_cv:
                out.append(
                    f"unstable timing: '{name}' varies by {st.cv:.1%} (coefficient of variation) "
                    f"over {st.n} repetitions, above the {limit} limit; close other programs, "
                    "check power and thermal settings, or measure for longer"
                )
        if self.stopped_by == "max_repetitions":
            out.append(
                f"stopped at the {self.protocol.max_repetitions}-repetition cap after "
                f"{self.measured_s:.3g} s"
            )
        if self.stopped_by == "max_seconds" and self.protocol.precision_pct is not None:
            reached = ", ".join(
                f"{name} +-{pct:.1f}%" if pct is not None else f"{name} unknown"
                for name, pct in self.precision_reached().items()
            )
            out.append(
                f"precision +-{self.protocol.precision_pct:g}% not reached within the "
                f"{self.protocol.max_seconds:g} s cap (reached: {reached})"
            )
        return out

    def precision_reached(self) -> dict[str, float | None]:
        """Half-width of each timed section's 95% interval of the median, in % of the median."""
        return {
            name: self._stats[name].ci_half_width_pct
            if self._stats[name].ci_level >= LEVEL
            else None
            for name in _precision_sections(self.sections)
        }

    def info(self) -> ProtocolInfo:
        """The protocol asked for and what it took: for every record of the case."""
        p = self.protocol
        return ProtocolInfo(
            warmup=p.warmup,
            min_repetitions=p.min_repetitions,
            min_seconds=p.min_seconds,
            max_repetitions=p.max_repetitions,
            max_cv=p.max_cv,
            repetitions=self.repetitions,
            measured_s=self.measured_s,
            stopped_by=self.stopped_by,
            warmup_raw_s=self.warmup_s,
            precision_pct=p.precision_pct,
            max_seconds=p.max_seconds,
            order=self.order,
        )

    def to_record(self) -> dict[str, Any]:
        """JSON-safe form for a worker's message: the protocol, warnings and raw sections."""
        return {
            "protocol": to_json(self.info(), "protocol", []),
            "warnings": self.warnings,
            "sections_raw_s": {name: list(values) for name, values in self.sections.items()},
        }


def _precision_sections(sections: Mapping[str, object]) -> list[str]:
    """The sections the precision target applies to: every timed one, else the total."""
    named = [name for name in sections if name != TOTAL]
    return named or [TOTAL]


def _precise(sections: Mapping[str, list[float]], target_pct: float) -> bool:
    for name in _precision_sections(sections):
        st = Summary.of(sections[name])
        pct = st.ci_half_width_pct
        if st.ci_level < LEVEL or pct is None or pct > target_pct:
            return False
    return True


class Session:
    """One case's protocol, a repetition at a time: `warm_up()`, then `step()` until it returns
    True. `run_protocol` drives one session; an interleaved run drives several in turn, so that
    repetition r of every case runs before repetition r + 1 of any."""

    def __init__(
        self,
        fn: Callable[[Timer], object],
        protocol: Protocol | None = None,
        clock: Callable[[], float] = time.perf_counter,
        sync: Callable[[], object] = lambda: None,
        on_repetition: Callable[[int, float], object] | None = None,
        order: str = SEQUENTIAL,
    ) -> None:
        if order not in ORDERS:
            raise ConfigError(f"order '{order}': allowed: {', '.join(ORDERS)}")
        self.fn, self.clock, self.sync = fn, clock, sync
        self.protocol = protocol or Protocol()
        self.on_repetition = on_repetition
        self.order = order
        self.warmup_s: list[float] = []
        self.sections: dict[str, list[float]] = {TOTAL: []}
        self.stopped_by: str | None = None

    @property
    def done(self) -> bool:
        """Whether the protocol is met (or a cap reached)."""
        return self.stopped_by is not None

    def warm_up(self) -> None:
        """The protocol's warm-up calls, timed and kept apart from the repetitions."""
        for _ in range(self.protocol.warmup):
            self.sync()
            start = self.clock()
            self.fn(Timer(self.clock, self.sync))
            self.sync()
            self.warmup_s.append(self.clock() - start)

    def step(self) -> bool:
        """One measured repetition; True once the protocol says to stop."""
        if self.done:
            return True
        sections = self.sections
        timer = Timer(self.clock, self.sync)
        self.sync()
        start = self.clock()
        extra = self.fn(timer)
        self.sync()
        elapsed = self.clock() - start
        done = len(sections[TOTAL])  # repetitions before this one
        _add(sections, TOTAL, elapsed, done)
        for name, seconds in {**timer.sections, **_extra(extra, timer.sections)}.items():
            _add(sections, name, seconds, done)
        done += 1
        _check_aligned(sections, done)
        measured = math.fsum(sections[TOTAL])
        if self.on_repetition is not None:
            self.on_repetition(done, measured)
        self.stopped_by = _stop(self.protocol, sections, done, measured)
        return self.done

    def timing(self) -> Timing:
        """Every raw value so far, with the protocol and why it stopped."""
        return Timing(
            self.protocol,
            {name: tuple(values) for name, values in self.sections.items()},
            tuple(self.warmup_s),
            self.stopped_by or "minimums",
            self.order,
        )


def run_protocol(
    fn: Callable[[Timer], object],
    protocol: Protocol | None = None,
    clock: Callable[[], float] = time.perf_counter,
    sync: Callable[[], object] = lambda: None,
    on_repetition: Callable[[int, float], object] | None = None,
) -> Timing:
    """Warm up, then time `fn(timer)` until the protocol is met (or a cap); returns every value.

    `fn` may time sections with `timer.section(name)` and may return a Mapping of extra section
    seconds it measured itself (any other return value is ignored). `on_repetition(done,
    measured_s)` is called after each repetition, for progress displays.
    """
    session = Session(fn, protocol, clock, sync, on_repetition)
    session.warm_up()
    while not session.step():
        pass
    return session.timing()


def _stop(
    protocol: Protocol, sections: Mapping[str, list[float]], done: int, measured: float
) -> str | None:
    """Why measuring stops after `done` repetitions (None: go on)."""
    enough = done >= protocol.min_repetitions and (measured + _FSUM_SLACK_S >= protocol.min_seconds)
    if enough and protocol.precision_pct is None:
        return "minimums"
    if enough and _precise(sections, protocol.precision_pct or 0.0):
        return "precision"
    if done >= protocol.max_repetitions:
        return "max_repetitions"
    if enough and protocol.max_seconds is not None and measured >= protocol.max_seconds:
        return "max_seconds"
    return None


def _check_section(name: str) -> None:
    if name == TOTAL or not _SECTION_NAME.fullmatch(name):
        raise ConfigError(
            f"section name '{name}' must be lower_snake_case and not '{TOTAL}' "
            "(it becomes a record key such as prefill_median_s)"
        )


def _extra(extra: object, timed: Mapping[str, float]) -> dict[str, float]:
    if not isinstance(extra, Mapping):
        return {}
    for name in extra:
        _check_section(name)
        if name in timed:
            raise ConfigError(f"section '{name}' was both timed and returned by the function")
    return {name: float(seconds) for name, seconds in extra.items()}


def _add(sections: dict[str, list[float]], name: str, seconds: float, done: int) -> None:
    values = sections.setdefault(name, [])
    _check_count(name, len(values), done)
    values.append(seconds)


def _check_aligned(sections: Mapping[str, list[float]], done: int) -> None:
    """Every section appears in every repetition, so values stay aligned by repetition."""
    for name, values in sections.items():
        _check_count(name, len(values), done)


def _check_count(name: str, count: int, expected: int) -> None:
    if count != expected:
        raise ConfigError(
            f"section '{name}' was timed in {count} of {expected} repetitions; "
            "time the same sections in every repetition"
        )
