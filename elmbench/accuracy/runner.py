"""Run an accuracy suite through lm-evaluation-harness and turn its results into records.

One lm-eval call per (norm variant, few-shot count); MMLU subjects are aggregated weighted by
size as lm-eval's `mmlu` group does; published values and deltas go beside the measured ones.
"""

from __future__ import annotations

import hashlib
import os
import tempfile
from collections.abc import Callable, Iterable
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from elmbench.accuracy.suites import AccuracySuite, AccuracyTask
from elmbench.accuracy.taskdata import EVAL_SPLIT_SOURCE, LOCAL_TASKS, MMLU_SUBJECTS
from elmbench.backends import ModelSpec
from elmbench.errors import ElmbenchError

Record = dict[str, Any]


@dataclass(frozen=True)
class AccuracyPlan:
    """Everything an accuracy run needs besides the suite."""

    backend: str
    spec: ModelSpec
    norms: tuple[str, ...]
    tokenizer: str
    data_dir: Path | None = None
    tasks: tuple[str, ...] = ()  # labels or lm-eval names; empty: the whole suite
    limit: int | None = None
    batch_size: int | str = 1  # rows per forward, or "auto" (ElmLM._batches)
    share_prefix: bool = True  # each document's choices in one packed row (ElmLM)
    allow_random: bool = False
    cache_dir: Path | None = None  # lm-eval request cache: an interrupted run continues
    weights_name: str | None = None  # --weights as given (a path or an HF id), for the paper model
    model_label: str | None = None  # the model's name in records (default: its config's)


def weights_identity(path: str | None, seed: int) -> dict[str, Any]:
    """Path and sha256 of the weights (all files of a folder), or the random seed."""
    if path is None:
        return {"weights": f"random(seed={seed})", "weights_sha256": None, "random_weights": True}
    root = Path(path)
    files = sorted(p for p in root.rglob("*") if p.is_file()) if root.is_dir() else [root]
    digest = hashlib.sha256()
    for file in files:
        if file.suffix in (".safetensors", ".pt", ".pth", ".json", ".bin"):
            digest.update(file.name.encode())
            with file.open("rb") as f:
                while chunk := f.read(1 << 20):
                    digest.update(chunk)
    return {"weights": str(path), "weights_sha256": digest.hexdigest(), "random_weights": False}


def cache_name(plan: AccuracyPlan, norm: str, shots: int) -> str:
    """The request cache of one model, dtype, kernels, norm and shot count (lm-eval keys its
    answers by request text alone, so each combination needs its own)."""
    spec = plan.spec
    model = (plan.model_label or spec.model or "model").replace("/", "_")
    return f"lm_eval_cache_{model}_{spec.dtype}_{spec.kernels}_{norm}_{shots}shot"


def init_data_parallel() -> int:
    """Join the process group `accelerate launch` (or torchrun) set up; returns the world size."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world > 1:
        import torch.distributed as dist

        if not dist.is_initialized():
            dist.init_process_group(backend="gloo")  # gathers are small host objects
    return world


def selected_tasks(suite: AccuracySuite, names: Iterable[str]) -> list[AccuracyTask]:
    """The suite's tasks, or those named (by label or lm-eval name)."""
    names = list(names)
    return [suite.task(n) for n in names] if names else list(suite.tasks)


def run_accuracy(
    suite: AccuracySuite,
    plan: AccuracyPlan,
    on_record: Callable[[Record], None] = lambda r: None,
    lm_class: type | None = None,
) -> list[Record]:
    """Evaluate every selected task for every norm; each record is handed to `on_record` at once.

    `lm_class` replaces the adapter class (a subclass of ElmLM, e.g. one that measures speed).
    """
    if plan.spec.weights is None and not plan.allow_random:
        raise ElmbenchError(
            "accuracy needs trained weights: give --weights PATH (HF folder, "
            "CoreNet .pt or MLX folder); --allow-random only tests the pipeline"
        )
    from elmbench.accuracy.tokenizer import load_tokenizer

    init_data_parallel()
    tokenizer = load_tokenizer(plan.tokenizer)
    tasks = selected_tasks(suite, plan.tasks)
    records: list[Record] = []
    for norm in plan.norms:
        for record in _run_norm(suite, plan, norm, tasks, tokenizer, lm_class):
            records.append(record)
            on_record(record)
    return records


def _run_norm(
    suite: AccuracySuite,
    plan: AccuracyPlan,
    norm: str,
    tasks: list[AccuracyTask],
    tokenizer: Any,
    lm_class: type | None,
) -> Iterable[Record]:
    import lm_eval
    from lm_eval.tasks import TaskManager

    from elmbench.accuracy.adapter import ElmLM
    from elmbench.accuracy.papermodel import checkpoint_names, paper_model
    from elmbench.accuracy.taskdata import expand_tasks, write_overrides
    from elmbench.backends import create_backend

    spec = replace(plan.spec, norm=norm)
    backend = create_backend(plan.backend, spec)
    lm = (lm_class or ElmLM)(
        backend, tokenizer, batch_size=plan.batch_size, share_prefix=plan.share_prefix
    )
    paper = paper_model(
        backend.config, spec.model, checkpoint_names(plan.weights_name, spec.weights)
    )
    identity = weights_identity(spec.weights, spec.seed)
    common = {
        "backend": plan.backend,
        "kernels": spec.kernels,
        "device": spec.device,
        "dtype": spec.dtype,
        "norm": norm,
        "model": plan.model_label or backend.config.name,
        "paper_model": paper.name,
        "paper_model_from": paper.source,
        **identity,
        "tokenizer": tokenizer.identity,
        "lm_eval_version": lm_eval.__version__,
        "suite": suite.name,
    }
    blas = backend.describe().get("blas")
    if blas is not None:  # MLX: the BLAS its CPU products ran on
        common["blas"] = blas
    by_shots: dict[int, list[AccuracyTask]] = {}
    for task in tasks:
        by_shots.setdefault(task.shots, []).append(task)
    # lm-eval reads the task overrides from this folder; it goes when the last group is done.
    with tempfile.TemporaryDirectory(prefix="elmbench-tasks-") as tmp:
        include = Path(tmp)
        for shots, group in by_shots.items():
            names = {t.task: [t.task] for t in group}
            manager = None
            if plan.data_dir is not None:
                names = {t.task: expand_tasks([t.task], plan.data_dir) for t in group}
                write_overrides([n for ns in names.values() for n in ns], plan.data_dir, include)
                # Every task comes from the overrides: skip indexing lm-eval's stock task files.
                manager = TaskManager(include_path=str(include), include_defaults=False)
            cache = (
                None
                if plan.cache_dir is None
                else str(plan.cache_dir / cache_name(plan, norm, shots))
            )
            result = lm_eval.simple_evaluate(
                model=lm,
                tasks=[n for ns in names.values() for n in ns],
                num_fewshot=shots,
                task_manager=manager,
                limit=plan.limit,
                log_samples=False,
                bootstrap_iters=1000,
                use_cache=cache,
                random_seed=0,
                numpy_random_seed=0,
                torch_random_seed=0,
                fewshot_random_seed=0,
            )
            if result is None:  # a non-zero rank under data parallelism: rank 0 writes
                continue
            for task in group:
                yield from _task_records(
                    task, names[task.task], result, shots, common, offline=plan.data_dir is not None
                )


def _task_records(
    task: AccuracyTask,
    subtasks: list[str],
    result: dict[str, Any],
    shots: int,
    common: Record,
    offline: bool,
) -> Iterable[Record]:
    rows = [(result["results"][s], result["n-samples"][s]["effective"]) for s in subtasks]
    total = sum(n for _, n in rows)
    version = {s: result["versions"].get(s) for s in subtasks}
    for metric in task.metrics:
        key = f"{metric},none"
        if any(key not in r for r, _ in rows):
            raise ElmbenchError(f"lm-eval reported no '{metric}' for task '{task.task}'")
        value = sum(float(r[key]) * n for r, n in rows) / total
        stderrs = [r.get(f"{metric}_stderr,none") for r, _ in rows]
        stderr = None
        if all(isinstance(s, (int, float)) for s in stderrs):
            stderr = (
                sum((float(s) * n / total) ** 2 for s, (_, n) in zip(stderrs, rows, strict=True))
                ** 0.5
            )
        published = task.published.get(common["paper_model"])
        value_pct = 100.0 * value
        yield {
            **common,
            "status": "ok",
            "task": task.task,
            "label": task.label,
            "metric": metric,
            "value": value,
            "value_pct": value_pct,
            "stderr_pct": None if stderr is None else 100.0 * stderr,
            "samples": total,
            "shots": shots,
            "task_version": version[subtasks[0]] if len(subtasks) == 1 else version,
            "metric_known": task.metric_known,
            "metric_note": task.metric_note,
            "published_pct": published,
            "delta_pct": None if published is None else value_pct - published,
            "few_shot_source": _few_shot_source(task, shots, offline),
            **_subjects(task, subtasks),
        }


def _few_shot_source(task: AccuracyTask, shots: int, offline: bool) -> str:
    """Where the few-shot examples came from: the stock split, or the evaluation split offline."""
    local = LOCAL_TASKS.get(task.task)
    if shots and offline and local is not None and local.few_shot_from_eval_split:
        return EVAL_SPLIT_SOURCE
    return "stock lm-eval split"


def _subjects(task: AccuracyTask, subtasks: list[str]) -> Record:
    """For MMLU: how many of its subjects were evaluated (a data folder may hold only some)."""
    if task.task != "mmlu":
        return {}
    done = MMLU_SUBJECTS if subtasks == ["mmlu"] else len(subtasks)  # ["mmlu"]: the whole group
    return {"subjects": done, "subjects_total": MMLU_SUBJECTS}
