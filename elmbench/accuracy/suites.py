"""Accuracy suites: lm-eval tasks, shots and metrics with the paper's published numbers."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from elmbench.errors import ElmbenchError

PAPER_MODELS = (
    "OpenELM-270M",
    "OpenELM-270M-Instruct",
    "OpenELM-450M",
    "OpenELM-450M-Instruct",
    "OpenELM-1_1B",
    "OpenELM-1_1B-Instruct",
    "OpenELM-3B",
    "OpenELM-3B-Instruct",
)
_TASK_KEYS = {"label", "task", "shots", "metrics", "metric_note", "published"}
_SUITE_KEYS = {"description", "kind", "source", "average", "published_average", "tasks"}


@dataclass(frozen=True)
class AccuracyTask:
    """One column of a paper table: the lm-eval task, its shots, metrics and published values."""

    label: str
    task: str
    shots: int
    metrics: tuple[str, ...]
    metric_note: str
    published: dict[str, float]

    @property
    def metric_known(self) -> bool:
        """False where the paper's acc/acc_norm choice is unknown (both are then reported)."""
        return len(self.metrics) == 1


@dataclass(frozen=True)
class AccuracySuite:
    """A paper table as an evaluation plan."""

    name: str
    description: str
    source: str
    tasks: tuple[AccuracyTask, ...]
    published_average: dict[str, float]
    kind: str = "accuracy"

    def task(self, label_or_name: str) -> AccuracyTask:
        """A task by its label (ARC-c) or lm-eval name (arc_challenge)."""
        for t in self.tasks:
            if label_or_name in (t.label, t.task):
                return t
        from elmbench.errors import UnknownNameError

        known = [name for t in self.tasks for name in (t.label, t.task)]
        raise UnknownNameError("task", label_or_name, known, where=f"suite '{self.name}'")


def parse_accuracy_suite(name: str, data: dict[str, Any], where: str) -> AccuracySuite:
    """Validate a parsed accuracy suite; errors name the file, the key and the value."""
    unknown = set(data) - _SUITE_KEYS
    if unknown:
        raise ElmbenchError(
            f"{where}: unknown key '{sorted(unknown)[0]}'; allowed keys: "
            f"{', '.join(sorted(_SUITE_KEYS))}"
        )
    tasks_data = data.get("tasks")
    if not isinstance(tasks_data, list) or not tasks_data:
        raise ElmbenchError(f"{where}: key 'tasks' must be a non-empty list of tasks")
    tasks = []
    for i, t in enumerate(tasks_data):
        at = f"{where}: tasks[{i}]"
        if not isinstance(t, dict) or not {"label", "task", "shots", "metrics"} <= set(t):
            raise ElmbenchError(f"{at} needs label, task, shots and metrics")
        extra = set(t) - _TASK_KEYS
        if extra:
            raise ElmbenchError(
                f"{at}: unknown key '{sorted(extra)[0]}'; allowed: {', '.join(sorted(_TASK_KEYS))}"
            )
        if not isinstance(t["shots"], int) or t["shots"] < 0:
            raise ElmbenchError(f"{at}: key 'shots' must be an integer >= 0; found {t['shots']!r}")
        metrics = t["metrics"] if isinstance(t["metrics"], list) else [t["metrics"]]
        published = {str(k): float(v) for k, v in (t.get("published") or {}).items()}
        tasks.append(
            AccuracyTask(
                str(t["label"]),
                str(t["task"]),
                t["shots"],
                tuple(map(str, metrics)),
                str(t.get("metric_note", "")),
                published,
            )
        )
    averages = {str(k): float(v) for k, v in (data.get("published_average") or {}).items()}
    return AccuracySuite(
        name, str(data.get("description", "")), str(data.get("source", "")), tuple(tasks), averages
    )
