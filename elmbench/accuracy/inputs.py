"""What `elmbench accuracy` checks before anything runs: the suite, the weights and tokenizer
(local paths, or the Hugging Face Hub where it is reachable), and the task data.
"""

from __future__ import annotations

import difflib
import functools
import os
import re
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

from elmbench.errors import ElmbenchError

if TYPE_CHECKING:
    from elmbench.accuracy.suites import AccuracySuite, AccuracyTask

PAPER_TOKENIZER = "meta-llama/Llama-2-7b-hf"  # the LLaMA-2 tokenizer the paper used (gated)
_HF_ID = re.compile(r"[A-Za-z0-9][\w.-]*/[\w.-]+")


def hub_offline() -> bool:
    """Whether the user has told Hugging Face libraries not to use the network."""
    return os.environ.get("HF_HUB_OFFLINE") == "1"


def load_accuracy_suite(name: str) -> AccuracySuite:
    """An accuracy suite by name (zero_shot, openllm, llm360) or YAML path."""
    from elmbench.accuracy.suites import AccuracySuite
    from elmbench.suites import list_suites, load_suite, suite_path

    suite = load_suite(suite_path(name))
    if not isinstance(suite, AccuracySuite):
        accuracy = [p.stem for p in list_suites() if "kind: accuracy" in p.read_text()]
        raise ElmbenchError(
            f"suite '{name}' is a {suite.kind} suite, not an accuracy suite; accuracy suites: "
            f"{', '.join(accuracy)}"
        )
    return suite


def official_weights(model: str) -> str:
    """The Hugging Face id of a preset's released weights (`1_1b` -> apple/OpenELM-1_1B)."""
    from elmbench.config import get_config

    cfg = get_config(model)
    if not cfg.official_name.startswith("OpenELM-"):
        raise ElmbenchError(
            f"'{model}' has no released weights; give --weights PATH, or --allow-random to test "
            "the pipeline with random weights"
        )
    return f"apple/{cfg.official_name}"


def weights_path(weights: str | None, tokenizer: str | None = None) -> str | None:
    """A local weights path as given, or a Hugging Face id fetched to the local cache."""
    if weights is None or Path(weights).expanduser().exists():
        return None if weights is None else str(Path(weights).expanduser())
    if weights.startswith((".", "/", "~")) or not _HF_ID.fullmatch(weights):
        raise ElmbenchError(
            f"weights path '{weights}' does not exist; give an HF folder, a CoreNet .pt file, an "
            "MLX folder or a Hugging Face id such as apple/OpenELM-1_1B"
        )
    from huggingface_hub import snapshot_download

    try:
        return str(
            snapshot_download(
                weights,
                allow_patterns=["*.json", "*.safetensors"],
                local_files_only=hub_offline(),
            )
        )
    except Exception as exc:  # hub errors have many types; all mean "not available here"
        first = (str(exc).splitlines() or [type(exc).__name__])[0]
        local_tokenizer = tokenizer is not None and Path(tokenizer).expanduser().exists()
        tokenizer_hint = (
            "" if local_tokenizer else " and --tokenizer PATH (LLaMA-2's tokenizer.model)"
        )
        raise ElmbenchError(
            f"weights '{weights}' cannot be had from the Hugging Face Hub ({first}); give "
            f"--weights PATH (a local copy of {weights}){tokenizer_hint}"
        ) from None


def check_task_data(tasks: Sequence[AccuracyTask], data: Path | None) -> None:
    """Every task's local files exist (offline), or the Hub may be used (online)."""
    from elmbench.accuracy.taskdata import expand_tasks, local_task

    if data is None:
        if os.environ.get("HF_DATASETS_OFFLINE") == "1" or hub_offline():
            raise ElmbenchError(
                "the Hugging Face Hub is offline (HF_DATASETS_OFFLINE/HF_HUB_OFFLINE) and no task "
                "data folder is given: use --data-dir DIR or set ELMBENCH_DATA"
            )
        return
    for task in tasks:
        for name in expand_tasks([task.task], data):
            for rel in local_task(name).files.values():
                if not (data / rel).is_file():
                    raise ElmbenchError(f"task '{name}' has no local data: expected {data / rel}")


def check_task_names(tasks: Sequence[AccuracyTask], where: str) -> None:
    """Every task is one that lm-eval knows (as its task index lists it), else one clear line."""
    known = lm_eval_tasks()
    for task in tasks:
        if task.task in known:
            continue
        import lm_eval

        close = difflib.get_close_matches(task.task, known, n=1, cutoff=0.6)
        hint = f" Did you mean '{close[0]}'?" if close else ""
        raise ElmbenchError(
            f"{where}: task '{task.task}' ({task.label}) is not a task of lm-eval "
            f"{lm_eval.__version__}.{hint} `lm-eval ls tasks` lists them"
        )


@functools.cache
def lm_eval_tasks() -> frozenset[str]:
    """The task, group and tag names lm-eval's task index knows (built once: it takes seconds)."""
    from lm_eval.tasks import TaskManager

    return frozenset(TaskManager().all_tasks)


def absolute(value: str | None) -> str | None:
    """An existing local path made absolute; anything else (a Hugging Face id) as given."""
    if value is None or not Path(value).expanduser().exists():
        return value
    return str(Path(value).expanduser().resolve())
