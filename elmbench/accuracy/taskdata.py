"""Offline task data: lm-eval task overrides that read local JSONL instead of the Hugging Face Hub.

Each override `include:`s lm-eval's own stock YAML and changes only where the data is and which
splits exist, so prompts, targets, metrics and few-shot logic stay lm-eval's (see the layout of
docs/accuracy.md).
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from elmbench.errors import ElmbenchError

DATA_ENV = "ELMBENCH_DATA"
EVAL_SPLIT_SOURCE = "evaluation split (no train split offline)"  # few_shot_source of records
MMLU_SUBJECTS = 57  # the subjects of lm-eval's `mmlu` group, which the published value covers


@dataclass(frozen=True)
class LocalTask:
    """Where one task's stock YAML is, which local files it reads and which splits it has."""

    stock_yaml: str  # relative to lm_eval/tasks
    files: dict[str, str]  # split -> path relative to the data dir
    splits: dict[str, str | None]  # training/validation/test/fewshot split overrides
    # The stock task draws few-shot examples from a training split that the local data lacks,
    # so offline they come from the evaluation split (lm-eval leaves the current document out).
    few_shot_from_eval_split: bool = False


def _eval_split(
    stock: str, split: str, path: str, test_null: bool = False, stock_train: bool = True
) -> LocalTask:
    splits: dict[str, str | None] = {"training_split": None}
    if split == "test":
        splits.update(validation_split=None, test_split="test")
    else:
        splits["validation_split"] = split
        if test_null:
            splits["test_split"] = None
    return LocalTask(stock, {split: path}, splits, few_shot_from_eval_split=stock_train)


LOCAL_TASKS: dict[str, LocalTask] = {
    "arc_challenge": _eval_split("arc/arc_challenge.yaml", "test", "arc_challenge/test.jsonl"),
    "arc_easy": _eval_split("arc/arc_easy.yaml", "test", "arc_easy/test.jsonl"),
    "boolq": _eval_split("super_glue/boolq/default.yaml", "validation", "boolq/validation.jsonl"),
    "piqa": _eval_split("piqa/piqa.yaml", "validation", "piqa/validation.jsonl", test_null=True),
    "winogrande": _eval_split(
        "winogrande/default.yaml", "validation", "winogrande/validation.jsonl"
    ),
    "truthfulqa_mc1": _eval_split(
        "truthfulqa/truthfulqa_mc1.yaml",
        "validation",
        "truthfulqa_mc/validation.jsonl",
        test_null=True,
        stock_train=False,
    ),
    "truthfulqa_mc2": _eval_split(
        "truthfulqa/truthfulqa_mc2.yaml",
        "validation",
        "truthfulqa_mc/validation.jsonl",
        test_null=True,
        stock_train=False,
    ),
    "crows_pairs_english": LocalTask(
        "crows_pairs/crows_pairs_english.yaml",
        {"test": "crows_pairs_english/test.jsonl"},
        {"test_split": "test"},
    ),
    "hellaswag": _eval_split(
        "hellaswag/hellaswag.yaml", "validation", "hellaswag/validation.jsonl", test_null=True
    ),
    "sciq": _eval_split("sciq/sciq.yaml", "test", "sciq/test.jsonl"),
    "race": LocalTask("race/race.yaml", {"test": "race/test.jsonl"}, {"test_split": "test"}),
}


def local_task(name: str) -> LocalTask:
    """The override of a task, MMLU subjects included (`mmlu_<subject>`)."""
    if name in LOCAL_TASKS:
        return LOCAL_TASKS[name]
    if name.startswith("mmlu_"):
        subject = name[len("mmlu_") :]
        return LocalTask(
            f"mmlu/default/{name}.yaml",
            {"test": f"mmlu/{subject}/test.jsonl", "dev": f"mmlu/{subject}/dev.jsonl"},
            {"test_split": "test", "fewshot_split": "dev"},
        )
    raise ElmbenchError(
        f"task '{name}' has no offline layout; offline tasks: "
        f"{', '.join(sorted(LOCAL_TASKS))}, mmlu, mmlu_<subject>"
    )


def data_dir(option: str | None) -> Path | None:
    """--data-dir, else $ELMBENCH_DATA, else None (the Hub)."""
    value = option or os.environ.get(DATA_ENV)
    if not value:
        return None
    path = Path(value).expanduser().resolve()
    if not path.is_dir():
        raise ElmbenchError(f"data directory '{value}' does not exist")
    return path


def expand_tasks(tasks: list[str], data: Path) -> list[str]:
    """Replace the `mmlu` group by the subjects present in the data dir."""
    out: list[str] = []
    for task in tasks:
        if task == "mmlu":
            subjects = (
                sorted(p.name for p in (data / "mmlu").iterdir() if p.is_dir())
                if (data / "mmlu").is_dir()
                else []
            )
            if not subjects:
                raise ElmbenchError(
                    f"task 'mmlu' needs its data: expected {data}/mmlu/<subject>/"
                    "test.jsonl and dev.jsonl for the 57 subjects"
                )
            out.extend(f"mmlu_{s}" for s in subjects)
        else:
            out.append(task)
    return out


def write_overrides(tasks: list[str], data: Path, folder: Path) -> Path:
    """Write one override YAML per task into `folder` (lm-eval's include_path); check the data."""
    import lm_eval.tasks

    stock_root = Path(os.path.dirname(lm_eval.tasks.__file__))
    folder.mkdir(parents=True, exist_ok=True)
    for task in tasks:
        spec = local_task(task)
        for rel in spec.files.values():
            if not (data / rel).is_file():
                raise ElmbenchError(f"task '{task}' has no local data: expected {data / rel}")
        lines = [
            f"include: {stock_root / spec.stock_yaml}",
            f"task: {task}",
            "dataset_path: json",
            "dataset_name: null",
            "dataset_kwargs:",
            "  data_files:",
        ]
        lines += [f"    {split}: {data / rel}" for split, rel in spec.files.items()]
        lines += [
            f"{key}: {'null' if value is None else value}" for key, value in spec.splits.items()
        ]
        (folder / f"{task}.yaml").write_text("\n".join(lines) + "\n")
    return folder
